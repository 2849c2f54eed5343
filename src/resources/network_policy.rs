//! The NetworkPolicy over the model's pods (`spec.networkPolicy`): one per
//! ModelDeployment, selecting the pods of every revision, letting in the
//! peers the user names and the operator, on the model and metrics ports.

use std::collections::BTreeMap;

use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort,
    NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;

use super::{base_labels, owned_meta, stamp};
use crate::api::{ModelDeployment, labels};

/// The label every namespace carries with its own name (Kubernetes 1.21+).
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// Where the operator's pods run, so the policy lets them scrape the model.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct OperatorPeer {
    /// The operator's namespace (`POD_NAMESPACE`).
    pub namespace: String,
    /// Labels of the operator's pods (`--operator-pod-labels`); empty: every
    /// pod of its namespace.
    pub pod_labels: BTreeMap<String, String>,
}

impl OperatorPeer {
    fn peer(&self) -> NetworkPolicyPeer {
        NetworkPolicyPeer {
            namespace_selector: Some(LabelSelector {
                match_labels: Some(BTreeMap::from([(
                    NAMESPACE_NAME_LABEL.to_string(),
                    self.namespace.clone(),
                )])),
                ..Default::default()
            }),
            pod_selector: Some(LabelSelector {
                match_labels: (!self.pod_labels.is_empty()).then(|| self.pod_labels.clone()),
                ..Default::default()
            }),
            ip_block: None,
        }
    }
}

/// The container ports every revision's pods name (see `container_ports`):
/// by name, so each revision's own numbers count, also while a rollout
/// changes `model.port` or `metrics.port`.
const PORT_NAMES: [&str; 2] = ["http", "metrics"];

/// The NetworkPolicy letting `peers` and the operator call the model's pods,
/// named like the ModelDeployment.
pub fn network_policy(
    md: &ModelDeployment,
    peers: &[NetworkPolicyPeer],
    operator: &OperatorPeer,
) -> NetworkPolicy {
    let mut from = peers.to_vec();
    from.push(operator.peer());
    let ports = PORT_NAMES
        .iter()
        .map(|name| NetworkPolicyPort {
            port: Some(IntOrString::String(name.to_string())),
            protocol: Some("TCP".into()),
            end_port: None,
        })
        .collect();
    stamp(NetworkPolicy {
        metadata: owned_meta(md, md.name_any(), base_labels(md)),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector {
                match_labels: Some(BTreeMap::from([(labels::NAME.to_string(), md.name_any())])),
                ..Default::default()
            }),
            policy_types: Some(vec!["Ingress".into()]),
            ingress: Some(vec![NetworkPolicyIngressRule {
                from: Some(from),
                ports: Some(ports),
            }]),
            egress: None,
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::network;

    fn md() -> ModelDeployment {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "modeldeploy.io/v1alpha1", "kind": "ModelDeployment",
            "metadata": {"name": "scorer", "namespace": "ml", "uid": "u-1"},
            "spec": {"model": {"version": "1", "image": "i", "port": 9000},
                     "resources": {"requests": {"cpu": "1"}, "limits": {"cpu": "1"}},
                     "networkPolicy": {"from": [
                        {"namespaceSelector": {"matchLabels": {"team": "web"}}}]}}
        }))
        .unwrap()
    }

    fn operator() -> OperatorPeer {
        OperatorPeer {
            namespace: "modeldeploy-system".into(),
            pod_labels: BTreeMap::from([("app.kubernetes.io/name".into(), "modeldeploy".into())]),
        }
    }

    #[test]
    fn the_policy_selects_every_revision_lets_in_the_peers_and_the_operator() {
        let md = md();
        let peers = network::peers(md.spec.network_policy.as_ref())
            .unwrap()
            .unwrap();
        let np = network_policy(&md, &peers, &operator());
        let spec = np.spec.as_ref().unwrap();
        let selected = spec
            .pod_selector
            .as_ref()
            .unwrap()
            .match_labels
            .as_ref()
            .unwrap();
        assert_eq!(
            selected,
            &BTreeMap::from([(labels::NAME.into(), "scorer".into())])
        );
        assert_eq!(
            spec.policy_types.as_deref(),
            Some(&["Ingress".to_string()][..])
        );
        assert!(spec.egress.is_none(), "egress is left alone");
        let rule = &spec.ingress.as_ref().unwrap()[0];
        let from = rule.from.as_ref().unwrap();
        assert_eq!(from.len(), 2);
        assert_eq!(from[0], peers[0]);
        let op = &from[1];
        assert_eq!(
            op.namespace_selector
                .as_ref()
                .unwrap()
                .match_labels
                .as_ref()
                .unwrap()[NAMESPACE_NAME_LABEL],
            "modeldeploy-system"
        );
        assert_eq!(
            op.pod_selector
                .as_ref()
                .unwrap()
                .match_labels
                .as_ref()
                .unwrap()["app.kubernetes.io/name"],
            "modeldeploy"
        );
        let ports: Vec<_> = rule
            .ports
            .as_ref()
            .unwrap()
            .iter()
            .map(|p| p.port.clone())
            .collect();
        assert_eq!(
            ports,
            [
                Some(IntOrString::String("http".into())),
                Some(IntOrString::String("metrics".into()))
            ]
        );
        assert_eq!(np.metadata.owner_references.as_ref().unwrap()[0].uid, "u-1");
        assert_eq!(np.metadata.namespace.as_deref(), Some("ml"));
        assert_eq!(np.labels()[labels::MANAGED_BY], "modeldeploy");
    }

    #[test]
    fn without_operator_labels_the_whole_operator_namespace_is_let_in() {
        let md = md();
        let op = OperatorPeer {
            namespace: "ops".into(),
            pod_labels: BTreeMap::new(),
        };
        let np = network_policy(&md, &[], &op);
        let from = np.spec.unwrap().ingress.unwrap()[0].from.clone().unwrap();
        assert_eq!(from.len(), 1, "only the operator");
        assert_eq!(from[0].pod_selector, Some(LabelSelector::default()));
    }

    #[test]
    fn the_applied_hash_follows_the_peers() {
        let md = md();
        let hash = |np: &NetworkPolicy| np.annotations()[super::super::APPLIED_HASH].clone();
        let a = network_policy(&md, &[], &operator());
        let b = network_policy(&md, &[], &operator());
        assert_eq!(hash(&a), hash(&b));
        let peers = network::peers(md.spec.network_policy.as_ref())
            .unwrap()
            .unwrap();
        assert_ne!(hash(&a), hash(&network_policy(&md, &peers, &operator())));
    }
}
