//! Turn owned ControllerRevisions and Deployments into what the rollout
//! decision needs to know.

use std::sync::Arc;

use k8s_openapi::api::apps::v1::{ControllerRevision, Deployment};
use kube::ResourceExt;

use crate::api::labels;
use crate::resources::{stored_template, template_image};
use crate::rollout::{Observed, ObservedRevision};

/// Every known revision: those with a stored template (a ControllerRevision),
/// with or without a Deployment, and Deployments made before revisions were
/// stored (adopted on the next apply).
pub fn revisions(deployments: &[Arc<Deployment>], stored: &[Arc<ControllerRevision>]) -> Observed {
    let mut observed: Observed = stored
        .iter()
        .filter_map(|cr| {
            let hash = cr.labels().get(labels::HASH)?.clone();
            let image = stored_template(cr)
                .ok()
                .and_then(|t| template_image(&t).map(str::to_string))
                .unwrap_or_default();
            Some((
                hash,
                ObservedRevision {
                    revision: cr.revision,
                    version: cr
                        .labels()
                        .get(labels::VERSION)
                        .cloned()
                        .unwrap_or_default(),
                    image,
                    // No Deployment (yet): nothing runs.
                    replicas: 0,
                    ..Default::default()
                },
            ))
        })
        .collect();
    for d in deployments {
        let l = d.labels();
        let Some(hash) = l.get(labels::HASH) else {
            continue;
        };
        let entry = match observed.get_mut(hash) {
            Some(known) => known,
            None => {
                let Some(revision) = l.get(labels::REVISION).and_then(|r| r.parse().ok()) else {
                    continue;
                };
                observed.entry(hash.clone()).or_insert(ObservedRevision {
                    revision,
                    version: l.get(labels::VERSION).cloned().unwrap_or_default(),
                    ..Default::default()
                })
            }
        };
        size_of(d, entry);
    }
    observed
}

fn size_of(d: &Deployment, o: &mut ObservedRevision) {
    let status = d.status.as_ref();
    o.deadline_exceeded = status
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| {
            cs.iter().any(|c| {
                c.type_ == "Progressing"
                    && c.status == "False"
                    && c.reason.as_deref() == Some("ProgressDeadlineExceeded")
            })
        });
    o.replicas = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    o.available_replicas = status.and_then(|s| s.available_replicas).unwrap_or(0);
    o.lagging = status.and_then(|s| s.observed_generation) < d.metadata.generation;
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn deployment(
        generation: i64,
        observed: i64,
        replicas: i32,
        available: i32,
    ) -> Arc<Deployment> {
        Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": "m-abc", "generation": generation, "labels": {
                    labels::HASH: "abc", labels::REVISION: "1", labels::VERSION: "1.0.0"}},
                "spec": {"replicas": replicas, "selector": {}, "template": {}},
                "status": {"observedGeneration": observed, "availableReplicas": available}
            }))
            .unwrap(),
        )
    }

    /// `kubectl annotate` (or a GitOps tool's tracking annotation) moves a
    /// Deployment's generation; until its controller catches up, status
    /// still says the pods that serve are all there (`Ready` does not
    /// flap), but nothing that removes pods elsewhere relies on the counts.
    #[test]
    fn a_revision_whose_deployment_its_controller_has_not_caught_up_with_is_reported_not_relied_on()
    {
        let seen = revisions(&[deployment(2, 1, 3, 3)], &[]);
        assert!(
            crate::rollout::reported_available(seen.get("abc"), 3),
            "{seen:?}"
        );
        assert!(!crate::rollout::available(seen.get("abc"), 3), "{seen:?}");
        let caught_up = revisions(&[deployment(2, 2, 3, 3)], &[]);
        assert!(crate::rollout::available(caught_up.get("abc"), 3));
    }

    #[test]
    fn a_revision_short_of_pods_or_asked_for_another_size_is_not_available() {
        let short = revisions(&[deployment(1, 1, 3, 2)], &[]);
        assert!(!crate::rollout::available(short.get("abc"), 3));
        // Scaled up to 5: the 3 available are not enough yet.
        let scaling = revisions(&[deployment(2, 1, 5, 3)], &[]);
        assert!(!crate::rollout::available(scaling.get("abc"), 5));
        // The Deployment still asks for 3 where the spec wants 5.
        let behind = revisions(&[deployment(1, 1, 3, 3)], &[]);
        assert!(!crate::rollout::available(behind.get("abc"), 5));
    }
}
