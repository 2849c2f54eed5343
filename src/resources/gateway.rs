//! The `gatewayAPI` router: a Service per variant and an HTTPRoute that splits
//! traffic between them by weight, or sends matching requests to the new one.
//!
//! The `gateway-api` crate (0.22) is built on kube 4 / k8s-openapi 0.28, which
//! cannot share types with this operator's kube 5, so the few HTTPRoute fields
//! the operator writes are declared here. Server-side apply sends only these
//! fields; whatever other controllers set on the route is left alone.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Service;
use kube::{CustomResource, ResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::api::{GatewayApiSpec, HttpMatch, ModelDeployment, ParentRef, labels};

use super::{base_labels, model_service, owned_meta, stamp};

/// The fields of `gateway.networking.k8s.io/v1` HTTPRoute this operator owns.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "gateway.networking.k8s.io",
    version = "v1",
    kind = "HTTPRoute",
    namespaced
)]
#[serde(rename_all = "camelCase")]
pub struct HttpRouteSpec {
    /// The ModelDeployment's own `parentRefs`: the same shape as the Gateway API's.
    pub parent_refs: Vec<ParentRef>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hostnames: Vec<String>,
    pub rules: Vec<RouteRule>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RouteRule {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub matches: Vec<RouteMatch>,
    pub backend_refs: Vec<RouteBackend>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RouteMatch {
    pub headers: Vec<HeaderMatch>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HeaderMatch {
    #[serde(rename = "type")]
    pub type_: String,
    pub name: String,
    pub value: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RouteBackend {
    pub name: String,
    pub port: i32,
    pub weight: i32,
}

/// The two variants behind the route.
pub const STABLE: &str = "stable";
pub const CANARY: &str = "canary";

pub fn variant_service_name(md_name: &str, variant: &str) -> String {
    format!("{md_name}-{variant}")
}

/// A Service selecting exactly one revision's pods.
pub fn variant_service(md: &ModelDeployment, variant: &str, hash: &str) -> Service {
    let mut labels_ = base_labels(md);
    labels_.insert("modeldeploy.io/variant".into(), variant.into());
    let selector = BTreeMap::from([
        (labels::NAME.to_string(), md.name_any()),
        (labels::HASH.to_string(), hash.to_string()),
    ]);
    model_service(
        md,
        variant_service_name(&md.name_any(), variant),
        labels_,
        selector,
    )
}

/// A cookie has no match type of its own in the Gateway API: it is matched
/// inside the `Cookie` header.
fn cookie_pattern(name: &str, value: &str) -> String {
    format!(
        "(^|;\\s*){}={}(;|$)",
        regex::escape(name),
        regex::escape(value)
    )
}

/// The route: `canary_weight` percent to the canary, the rest to stable; with
/// `matches`, matching requests go to the canary and the rest to stable.
pub fn http_route(
    md: &ModelDeployment,
    gateway: &GatewayApiSpec,
    canary_weight: i32,
    matches: &[HttpMatch],
) -> HTTPRoute {
    let name = md.name_any();
    let port = md.spec.model.port;
    let backend = |variant: &str, weight: i32| RouteBackend {
        name: variant_service_name(&name, variant),
        port,
        weight,
    };
    let weight = canary_weight.clamp(0, 100);
    let mut rules = Vec::new();
    if !matches.is_empty() && weight > 0 {
        let route_matches = matches
            .iter()
            .map(|m| {
                let mut headers: Vec<HeaderMatch> = m
                    .headers
                    .iter()
                    .map(|(k, v)| HeaderMatch {
                        type_: "Exact".into(),
                        name: k.clone(),
                        value: v.clone(),
                    })
                    .collect();
                headers.extend(m.cookies.iter().map(|(k, v)| HeaderMatch {
                    type_: "RegularExpression".into(),
                    name: "Cookie".into(),
                    value: cookie_pattern(k, v),
                }));
                RouteMatch { headers }
            })
            .collect();
        rules.push(RouteRule {
            matches: route_matches,
            backend_refs: vec![backend(CANARY, 1)],
        });
        rules.push(RouteRule {
            matches: Vec::new(),
            backend_refs: vec![backend(STABLE, 1)],
        });
    } else {
        rules.push(RouteRule {
            matches: Vec::new(),
            backend_refs: vec![backend(STABLE, 100 - weight), backend(CANARY, weight)],
        });
    }
    let mut route = HTTPRoute::new(
        &name,
        HttpRouteSpec {
            parent_refs: gateway.parent_refs.clone(),
            hostnames: gateway.hostnames.clone(),
            rules,
        },
    );
    route.metadata = owned_meta(md, name, base_labels(md));
    stamp(route)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn md() -> ModelDeployment {
        let mut md = ModelDeployment::new(
            "scorer",
            serde_json::from_value(json!({
                "model": {"version": "1", "image": "m:1", "port": 9000},
                "resources": {"requests": {"cpu": "1"}, "limits": {"cpu": "1"}}
            }))
            .unwrap(),
        );
        md.metadata.namespace = Some("ns".into());
        md.metadata.uid = Some("u".into());
        md
    }

    fn gateway() -> GatewayApiSpec {
        GatewayApiSpec {
            parent_refs: vec![ParentRef {
                group: None,
                kind: None,
                name: "public".into(),
                namespace: Some("gateways".into()),
                section_name: None,
                port: None,
            }],
            hostnames: vec!["scorer.example.com".into()],
        }
    }

    #[test]
    fn weights_split_between_the_variant_services() {
        let route = http_route(&md(), &gateway(), 30, &[]);
        let rule = &route.spec.rules[0];
        let weights: Vec<_> = rule
            .backend_refs
            .iter()
            .map(|b| (b.name.as_str(), b.weight))
            .collect();
        assert_eq!(weights, vec![("scorer-stable", 70), ("scorer-canary", 30)]);
        assert_eq!(route.spec.parent_refs[0].name, "public");
        assert_eq!(
            route.metadata.owner_references.as_ref().unwrap()[0].name,
            "scorer"
        );
        let v = serde_json::to_value(&route).unwrap();
        assert_eq!(v["apiVersion"], "gateway.networking.k8s.io/v1");
        assert_eq!(v["spec"]["rules"][0]["backendRefs"][1]["weight"], 30);
    }

    #[test]
    fn header_and_cookie_matches_send_only_matching_requests_to_the_new_variant() {
        let m = HttpMatch {
            headers: BTreeMap::from([("x-model-variant".into(), "b".into())]),
            cookies: BTreeMap::from([("variant".into(), "b".into())]),
        };
        let route = http_route(&md(), &gateway(), 50, &[m]);
        assert_eq!(route.spec.rules.len(), 2);
        let first = &route.spec.rules[0];
        assert_eq!(first.backend_refs[0].name, "scorer-canary");
        let headers = &first.matches[0].headers;
        assert!(
            headers
                .iter()
                .any(|h| h.name == "x-model-variant" && h.type_ == "Exact")
        );
        let cookie = headers.iter().find(|h| h.name == "Cookie").unwrap();
        let re = regex::Regex::new(&cookie.value).unwrap();
        assert!(re.is_match("a=1; variant=b; c=2") && !re.is_match("variant=bb"));
        assert_eq!(route.spec.rules[1].backend_refs[0].name, "scorer-stable");
    }

    #[test]
    fn no_canary_traffic_means_no_match_rule() {
        let m = HttpMatch {
            headers: BTreeMap::from([("x".into(), "y".into())]),
            cookies: BTreeMap::new(),
        };
        let route = http_route(&md(), &gateway(), 0, &[m]);
        assert_eq!(route.spec.rules.len(), 1);
        assert_eq!(route.spec.rules[0].backend_refs[1].weight, 0);
    }

    #[test]
    fn a_variant_service_selects_one_revision() {
        let s = variant_service(&md(), CANARY, "abc123");
        let sel = s.spec.unwrap().selector.unwrap();
        assert_eq!(sel[labels::HASH], "abc123");
        assert_eq!(s.metadata.name.as_deref(), Some("scorer-canary"));
    }
}
