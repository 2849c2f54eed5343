//! The PodDisruptionBudget over the model's pods: one per ModelDeployment,
//! selecting the pods of every revision, so a node drain during a rollout
//! counts stable and canary pods together.

use std::collections::BTreeMap;

use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::ResourceExt;

use super::{base_labels, owned_meta, stamp};
use crate::api::{Budget, ModelDeployment, labels};

/// The budget `budget` asks for, named like the ModelDeployment.
pub fn disruption_budget(md: &ModelDeployment, budget: &Budget) -> PodDisruptionBudget {
    let (max_unavailable, min_available) = match budget {
        Budget::MaxUnavailable(v) => (Some(v.clone()), None),
        Budget::MinAvailable(v) => (None, Some(v.clone())),
    };
    stamp(PodDisruptionBudget {
        metadata: owned_meta(md, md.name_any(), base_labels(md)),
        spec: Some(PodDisruptionBudgetSpec {
            selector: Some(LabelSelector {
                match_labels: Some(BTreeMap::from([(labels::NAME.to_string(), md.name_any())])),
                ..Default::default()
            }),
            max_unavailable,
            min_available,
            // A pod that is not Ready (a crash-looping canary) never holds
            // up a node drain: it serves nothing the budget protects.
            unhealthy_pod_eviction_policy: Some("AlwaysAllow".into()),
        }),
        status: None,
    })
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

    use super::*;

    #[test]
    fn the_budget_selects_every_revision_and_is_owned() {
        let md: ModelDeployment = serde_json::from_value(serde_json::json!({
            "apiVersion": "modeldeploy.io/v1alpha1", "kind": "ModelDeployment",
            "metadata": {"name": "scorer", "namespace": "ml", "uid": "u-1"},
            "spec": {"model": {"version": "1", "image": "i"},
                     "resources": {"requests": {"cpu": "1"}, "limits": {"cpu": "1"}}}
        }))
        .unwrap();
        let pdb = disruption_budget(
            &md,
            &Budget::MinAvailable(IntOrString::String("50%".into())),
        );
        let spec = pdb.spec.as_ref().unwrap();
        assert_eq!(
            spec.selector
                .as_ref()
                .unwrap()
                .match_labels
                .as_ref()
                .unwrap()[labels::NAME],
            "scorer"
        );
        assert_eq!(
            spec.selector
                .as_ref()
                .unwrap()
                .match_labels
                .as_ref()
                .unwrap()
                .len(),
            1
        );
        assert_eq!(spec.min_available, Some(IntOrString::String("50%".into())));
        assert_eq!(spec.max_unavailable, None);
        assert_eq!(
            pdb.metadata.owner_references.as_ref().unwrap()[0].uid,
            "u-1"
        );
        assert_eq!(pdb.metadata.namespace.as_deref(), Some("ml"));
    }
}
