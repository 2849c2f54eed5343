//! `spec.networkPolicy`: a NetworkPolicy that limits who may call the model's
//! pods to the namespaces and pods the user names, plus the operator.

use std::collections::BTreeMap;

use k8s_openapi::api::networking::v1::NetworkPolicyPeer;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};
use kube::KubeSchema;
use serde::{Deserialize, Serialize};

use super::InvalidSpec;

/// Ingress to the model's pods (every revision) on their model and metrics
/// ports, from the peers in `from` and from the operator's own pods (it
/// scrapes the pods' metrics). Without `spec.networkPolicy` no NetworkPolicy
/// is made, and one made before is deleted. `from: []` (or `{}`) lets only
/// the operator in. Only a CNI that enforces NetworkPolicies makes it bite.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NetworkPolicySpec {
    /// Who may call the model, as in a NetworkPolicy's `ingress.from`: each
    /// entry a namespaceSelector, a podSelector (pods of this namespace), or
    /// both (those pods in those namespaces). Any entry matching lets a
    /// caller in.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub from: Vec<NetworkPeer>,
}

/// One source allowed to call the model.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.namespaceSelector) || has(self.podSelector)").message("spec.networkPolicy.from: each entry needs a namespaceSelector, a podSelector or both"))]
pub struct NetworkPeer {
    /// Namespaces whose pods may call (`{}`: every namespace). With a
    /// podSelector, only those pods in these namespaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(transform = super::spec::bounded_inside)]
    pub namespace_selector: Option<LabelSelector>,
    /// Pods that may call (`{}`: every pod); in the model's namespace unless
    /// a namespaceSelector is given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(transform = super::spec::bounded_inside)]
    pub pod_selector: Option<LabelSelector>,
}

/// The peers `spec.networkPolicy` lets in (the operator comes on top), or
/// `None` when there is to be no NetworkPolicy.
pub fn peers(
    spec: Option<&NetworkPolicySpec>,
) -> Result<Option<Vec<NetworkPolicyPeer>>, InvalidSpec> {
    let Some(spec) = spec else {
        return Ok(None);
    };
    let mut peers = Vec::with_capacity(spec.from.len());
    for (i, peer) in spec.from.iter().enumerate() {
        let field = format!("spec.networkPolicy.from[{i}]");
        if peer.namespace_selector.is_none() && peer.pod_selector.is_none() {
            return Err(InvalidSpec {
                field,
                message: "needs a namespaceSelector, a podSelector or both".into(),
            });
        }
        for (name, selector) in [
            ("namespaceSelector", &peer.namespace_selector),
            ("podSelector", &peer.pod_selector),
        ] {
            if let Some(s) = selector {
                check_selector(&format!("{field}.{name}"), s)?;
            }
        }
        peers.push(NetworkPolicyPeer {
            namespace_selector: peer.namespace_selector.clone(),
            pod_selector: peer.pod_selector.clone(),
            ip_block: None,
        });
    }
    Ok(Some(peers))
}

/// A label selector the API server would accept: valid keys and values,
/// known operators with the values each takes.
pub fn check_selector(field: &str, selector: &LabelSelector) -> Result<(), InvalidSpec> {
    let refuse = |at: String, message: String| InvalidSpec { field: at, message };
    for (key, value) in selector.match_labels.iter().flatten() {
        let at = format!("{field}.matchLabels");
        label_key(key).map_err(|m| refuse(at.clone(), format!("key {key:?} {m}")))?;
        label_value(value).map_err(|m| refuse(at, format!("value {value:?} of {key:?} {m}")))?;
    }
    for (i, req) in selector.match_expressions.iter().flatten().enumerate() {
        let at = format!("{field}.matchExpressions[{i}]");
        check_requirement(req).map_err(|m| refuse(at, m))?;
    }
    Ok(())
}

fn check_requirement(req: &LabelSelectorRequirement) -> Result<(), String> {
    label_key(&req.key).map_err(|m| format!("key {:?} {m}", req.key))?;
    let values = req.values.as_deref().unwrap_or_default();
    match req.operator.as_str() {
        "In" | "NotIn" if values.is_empty() => Err(format!(
            "operator {} needs at least one value",
            req.operator
        )),
        "In" | "NotIn" => values
            .iter()
            .try_for_each(|v| label_value(v).map_err(|m| format!("value {v:?} {m}"))),
        "Exists" | "DoesNotExist" if !values.is_empty() => {
            Err(format!("operator {} takes no values", req.operator))
        }
        "Exists" | "DoesNotExist" => Ok(()),
        other => Err(format!(
            "operator {other:?} is not one of In, NotIn, Exists, DoesNotExist"
        )),
    }
}

/// A label key: an optional DNS subdomain prefix and `/`, then a name of at
/// most 63 characters.
pub fn label_key(key: &str) -> Result<(), String> {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if let Some(p) = prefix {
        let subdomain = !p.is_empty()
            && p.len() <= 253
            && p.split('.').all(|part| {
                !part.is_empty()
                    && part
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                    && !part.starts_with('-')
                    && !part.ends_with('-')
            });
        if !subdomain {
            return Err("has a prefix that is not a DNS subdomain".into());
        }
    }
    if name.is_empty() {
        return Err("has an empty name".into());
    }
    label_value(name)
}

/// A label value: at most 63 alphanumerics, `-`, `_` or `.`, starting and
/// ending with an alphanumeric; empty is allowed.
pub fn label_value(value: &str) -> Result<(), String> {
    let ends = |c: Option<char>| c.is_none_or(|c| c.is_ascii_alphanumeric());
    let valid = value.len() <= 63
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && ends(value.chars().next())
        && ends(value.chars().last());
    if valid {
        Ok(())
    } else {
        Err("must be at most 63 alphanumerics, '-', '_' or '.', starting and ending with an alphanumeric".into())
    }
}

/// Labels written `key=value,key=value` (the operator's `--operator-pod-labels`).
pub fn parse_labels(text: &str) -> Result<BTreeMap<String, String>, String> {
    let mut labels = BTreeMap::new();
    for pair in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let Some((key, value)) = pair.split_once('=') else {
            return Err(format!("{pair:?} is not key=value"));
        };
        let (key, value) = (key.trim(), value.trim());
        label_key(key).map_err(|m| format!("label key {key:?} {m}"))?;
        label_value(value).map_err(|m| format!("label value {value:?} of {key:?} {m}"))?;
        labels.insert(key.to_string(), value.to_string());
    }
    Ok(labels)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(v: serde_json::Value) -> NetworkPolicySpec {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn absent_means_no_policy_and_empty_means_only_the_operator() {
        assert_eq!(peers(None).unwrap(), None);
        assert_eq!(
            peers(Some(&spec(serde_json::json!({})))).unwrap(),
            Some(vec![])
        );
    }

    #[test]
    fn selectors_pass_through_as_peers() {
        let got = peers(Some(&spec(serde_json::json!({"from": [
            {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "gateways"}}},
            {"podSelector": {"matchExpressions": [{"key": "app", "operator": "In", "values": ["web"]}]},
             "namespaceSelector": {}},
        ]}))))
        .unwrap()
        .unwrap();
        assert_eq!(got.len(), 2);
        assert!(got[0].pod_selector.is_none());
        assert_eq!(
            got[0]
                .namespace_selector
                .as_ref()
                .unwrap()
                .match_labels
                .as_ref()
                .unwrap()["kubernetes.io/metadata.name"],
            "gateways"
        );
        assert_eq!(got[1].namespace_selector, Some(LabelSelector::default()));
    }

    #[test]
    fn bad_selectors_name_the_field() {
        for (v, field) in [
            (
                serde_json::json!({"from": [{}]}),
                "spec.networkPolicy.from[0]",
            ),
            (
                serde_json::json!({"from": [{"podSelector": {"matchLabels": {"app": "-web"}}}]}),
                "spec.networkPolicy.from[0].podSelector.matchLabels",
            ),
            (
                serde_json::json!({"from": [{"podSelector": {}}, {"namespaceSelector": {"matchLabels": {"Bad_Prefix.io/x": "y"}}}]}),
                "spec.networkPolicy.from[1].namespaceSelector.matchLabels",
            ),
            (
                serde_json::json!({"from": [{"podSelector": {"matchExpressions": [{"key": "app", "operator": "In"}]}}]}),
                "spec.networkPolicy.from[0].podSelector.matchExpressions[0]",
            ),
            (
                serde_json::json!({"from": [{"podSelector": {"matchExpressions": [{"key": "app", "operator": "Exists", "values": ["x"]}]}}]}),
                "spec.networkPolicy.from[0].podSelector.matchExpressions[0]",
            ),
            (
                serde_json::json!({"from": [{"podSelector": {"matchExpressions": [{"key": "app", "operator": "Equals", "values": ["x"]}]}}]}),
                "spec.networkPolicy.from[0].podSelector.matchExpressions[0]",
            ),
        ] {
            let e = peers(Some(&spec(v.clone()))).unwrap_err();
            assert_eq!(e.field, field, "{v}: {}", e.message);
        }
    }

    #[test]
    fn operator_pod_labels_parse_or_say_what_is_wrong() {
        let l = parse_labels("app.kubernetes.io/name=modeldeploy, app.kubernetes.io/instance=md")
            .unwrap();
        assert_eq!(l.len(), 2);
        assert_eq!(l["app.kubernetes.io/instance"], "md");
        assert!(parse_labels("").unwrap().is_empty());
        assert!(parse_labels("app").unwrap_err().contains("key=value"));
        assert!(parse_labels("app=-x").unwrap_err().contains("label value"));
        assert!(parse_labels("/app=x").unwrap_err().contains("label key"));
    }
}
