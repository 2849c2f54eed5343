//! The HTTPRoute the `gatewayAPI` router writes, and the Service per variant
//! it splits traffic between, by weight or by matching requests.
//!
//! # Why our own HTTPRoute types
//!
//! The maintained `gateway-api` crate (0.22, the latest release) is built on
//! kube 4 / k8s-openapi 0.28; this operator uses kube 5 / k8s-openapi 0.29, and
//! the two cannot share types. So the HTTPRoute fields the operator writes are
//! declared here. Server-side apply sends only these fields; whatever other
//! controllers or people set on the route is left alone.
//!
//! # Reading what a real API server returns
//!
//! The Gateway API CRDs default and prune: a rule without `matches` comes back
//! with `matches: [{path: {type: PathPrefix, value: /}}]`, a backendRef gains
//! `group: ""` and `kind: Service`, a parentRef `group` and `kind: Gateway`,
//! and other writers add fields (filters, timeouts, status) this operator does
//! not know. So every field here is optional or defaulted, unknown fields are
//! ignored, and empty collections are skipped when serializing (the rendered
//! JSON, and thus the applied hash, is what it was before these types became
//! tolerant). The fixtures under `tests/fixtures/gateway/` are real server
//! output and are decoded by the tests below.
//!
//! Server defaults never make a route look changed: the controller decides
//! whether to apply by comparing the `modeldeploy.io/applied-hash` annotation
//! stamped on the rendered object (see `crate::resources::stamp`) with the one on the
//! live object, never the specs themselves, and the server leaves annotations
//! as applied. [`HttpRouteSpec::with_server_defaults`] fills in the defaults
//! the way the server does, for comparing a read-back route with a rendered one.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Service;
use kube::{CustomResource, ResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::api::{GatewayApiSpec, HttpMatch, ModelDeployment, ParentRef, labels};

use crate::resources::{base_labels, model_service, owned_meta, stamp};

/// The fields of `gateway.networking.k8s.io/v1` HTTPRoute this operator owns.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[kube(
    group = "gateway.networking.k8s.io",
    version = "v1",
    kind = "HTTPRoute",
    namespaced
)]
#[serde(rename_all = "camelCase")]
pub struct HttpRouteSpec {
    /// The ModelDeployment's own `parentRefs`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parent_refs: Vec<RouteParentRef>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hostnames: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<RouteRule>,
}

/// A Gateway API `parentRef`: the shape of [`ParentRef`], every field optional.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RouteParentRef {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default)]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub section_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<i32>,
}

impl From<&ParentRef> for RouteParentRef {
    fn from(p: &ParentRef) -> Self {
        Self {
            group: p.group.clone(),
            kind: p.kind.clone(),
            name: p.name.clone(),
            namespace: p.namespace.clone(),
            section_name: p.section_name.clone(),
            port: p.port,
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RouteRule {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub matches: Vec<RouteMatch>,
    /// Rendered only for shadow traffic (a `RequestMirror` to the canary);
    /// filters other writers add decode with their `type` only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub filters: Vec<RouteFilter>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub backend_refs: Vec<RouteBackend>,
}

/// A rule's filter; of its kinds only `RequestMirror` is known here.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RouteFilter {
    #[serde(rename = "type", default)]
    pub type_: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_mirror: Option<RequestMirror>,
}

/// The filter type that copies requests; the answers of the copy are dropped.
pub const REQUEST_MIRROR: &str = "RequestMirror";

/// Copies `percent` of the rule's requests to `backend_ref` (Gateway API
/// v1.3 and later; `fraction` is the other way to say it, never rendered).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RequestMirror {
    #[serde(default)]
    pub backend_ref: MirrorBackend,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent: Option<i32>,
}

/// A mirror's `backendRef`: a [`RouteBackend`] without a weight.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MirrorBackend {
    /// Never rendered; the server defaults it to `""`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Never rendered; the server defaults it to `Service`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default)]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<i32>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RouteMatch {
    /// Never rendered by the operator; the server defaults it to `PathPrefix /`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathMatch>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<HeaderMatch>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PathMatch {
    #[serde(rename = "type", default = "path_prefix")]
    pub type_: String,
    #[serde(default = "root_path")]
    pub value: String,
}

impl Default for PathMatch {
    /// What the Gateway API defaults a match without a path to.
    fn default() -> Self {
        Self {
            type_: path_prefix(),
            value: root_path(),
        }
    }
}

fn path_prefix() -> String {
    "PathPrefix".into()
}
fn root_path() -> String {
    "/".into()
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HeaderMatch {
    #[serde(rename = "type", default = "exact")]
    pub type_: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub value: String,
}

fn exact() -> String {
    "Exact".into()
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RouteBackend {
    /// Never rendered (a core Service); the server defaults it to `""`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Never rendered; the server defaults it to `Service`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default)]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<i32>,
    /// Always rendered, 0 included (0 means no traffic); absent means 1.
    #[serde(default = "default_weight")]
    pub weight: i32,
}

fn default_weight() -> i32 {
    1
}

impl HttpRouteSpec {
    /// This spec as the API server stores it with the Gateway API's defaults
    /// filled in: parentRefs to a `gateway.networking.k8s.io` `Gateway`,
    /// backendRefs to a core (`""`) `Service`, and a rule without matches
    /// matching `PathPrefix /`. Comparing a read-back route with a rendered one
    /// takes this of both.
    pub fn with_server_defaults(&self) -> HttpRouteSpec {
        let mut spec = self.clone();
        for p in &mut spec.parent_refs {
            p.group
                .get_or_insert_with(|| "gateway.networking.k8s.io".into());
            p.kind.get_or_insert_with(|| "Gateway".into());
        }
        for rule in &mut spec.rules {
            if rule.matches.is_empty() {
                rule.matches.push(RouteMatch::default());
            }
            for m in &mut rule.matches {
                m.path.get_or_insert_with(PathMatch::default);
            }
            for b in &mut rule.backend_refs {
                b.group.get_or_insert_with(String::new);
                b.kind.get_or_insert_with(|| "Service".into());
            }
            for m in rule
                .filters
                .iter_mut()
                .filter_map(|f| f.request_mirror.as_mut())
            {
                m.backend_ref.group.get_or_insert_with(String::new);
                m.backend_ref.kind.get_or_insert_with(|| "Service".into());
            }
        }
        spec
    }
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
    shadowed_route(md, gateway, canary_weight, matches, 0)
}

/// A header and cookie match as the Gateway API writes it.
fn route_match(m: &HttpMatch) -> RouteMatch {
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
    RouteMatch {
        path: None,
        headers,
    }
}

/// The `RequestMirror` filter copying `percent` of a rule's requests to the
/// canary's Service.
fn mirror_to_canary(md: &ModelDeployment, percent: i32) -> RouteFilter {
    RouteFilter {
        type_: REQUEST_MIRROR.into(),
        request_mirror: Some(RequestMirror {
            backend_ref: MirrorBackend {
                name: variant_service_name(&md.name_any(), CANARY),
                port: Some(md.spec.model.port),
                ..MirrorBackend::default()
            },
            percent: Some(percent.clamp(0, 100)),
        }),
    }
}

/// [`http_route`], and with `mirror` above 0 every rule also copies that
/// percent of its requests to the canary (shadow traffic): the weights, and
/// so every answer users get, stay as they are.
pub fn shadowed_route(
    md: &ModelDeployment,
    gateway: &GatewayApiSpec,
    canary_weight: i32,
    matches: &[HttpMatch],
    mirror: i32,
) -> HTTPRoute {
    let name = md.name_any();
    let port = md.spec.model.port;
    let backend = |variant: &str, weight: i32| RouteBackend {
        group: None,
        kind: None,
        name: variant_service_name(&name, variant),
        namespace: None,
        port: Some(port),
        weight,
    };
    let weight = canary_weight.clamp(0, 100);
    let mut rules = Vec::new();
    if !matches.is_empty() && weight > 0 {
        rules.push(RouteRule {
            matches: matches.iter().map(route_match).collect(),
            filters: Vec::new(),
            backend_refs: vec![backend(CANARY, 1)],
        });
        rules.push(RouteRule {
            matches: Vec::new(),
            filters: Vec::new(),
            backend_refs: vec![backend(STABLE, 1)],
        });
    } else {
        rules.push(RouteRule {
            matches: Vec::new(),
            filters: Vec::new(),
            backend_refs: vec![backend(STABLE, 100 - weight), backend(CANARY, weight)],
        });
    }
    if mirror > 0 {
        for rule in &mut rules {
            rule.filters.push(mirror_to_canary(md, mirror));
        }
    }
    let mut route = HTTPRoute::new(
        &name,
        HttpRouteSpec {
            parent_refs: gateway
                .parent_refs
                .iter()
                .map(RouteParentRef::from)
                .collect(),
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
        md_in("ns")
    }

    fn md_in(namespace: &str) -> ModelDeployment {
        let mut md = ModelDeployment::new(
            "scorer",
            serde_json::from_value(json!({
                "model": {"version": "1", "image": "m:1", "port": 9000},
                "resources": {"requests": {"cpu": "1"}, "limits": {"cpu": "1"}}
            }))
            .unwrap(),
        );
        md.metadata.namespace = Some(namespace.into());
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
    fn a_shadow_keeps_every_request_on_stable_and_copies_a_share_to_the_canary() {
        let route = shadowed_route(&md(), &gateway(), 0, &[], 40);
        let v = serde_json::to_value(&route.spec).unwrap();
        assert_eq!(
            v["rules"],
            json!([{
                "filters": [{"type": "RequestMirror", "requestMirror": {
                    "backendRef": {"name": "scorer-canary", "port": 9000},
                    "percent": 40}}],
                "backendRefs": [
                    {"name": "scorer-stable", "port": 9000, "weight": 100},
                    {"name": "scorer-canary", "port": 9000, "weight": 0}]}])
        );
        // Without copies the route is the plain one, applied hash included.
        let plain = shadowed_route(&md(), &gateway(), 0, &[], 0);
        assert_eq!(
            serde_json::to_value(&plain).unwrap(),
            serde_json::to_value(http_route(&md(), &gateway(), 0, &[])).unwrap()
        );
        assert_ne!(
            route.annotations().get(crate::resources::APPLIED_HASH),
            plain.annotations().get(crate::resources::APPLIED_HASH),
            "starting or ending the copies is a change to apply"
        );
    }

    #[test]
    fn a_mirror_read_back_with_server_defaults_matches_the_rendered_one() {
        let rendered = shadowed_route(&md(), &gateway(), 0, &[], 100);
        let live: HTTPRoute = serde_json::from_value(json!({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
            "metadata": {"name": "scorer"},
            "spec": {"parentRefs": [{"group": "gateway.networking.k8s.io", "kind": "Gateway",
                                     "name": "public", "namespace": "gateways"}],
                     "hostnames": ["scorer.example.com"],
                     "rules": [{"matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
                                "filters": [{"type": "RequestMirror", "requestMirror": {
                                    "backendRef": {"group": "", "kind": "Service",
                                                   "name": "scorer-canary", "port": 9000},
                                    "percent": 100}}],
                                "backendRefs": [
                                    {"group": "", "kind": "Service", "name": "scorer-stable",
                                     "port": 9000, "weight": 100},
                                    {"group": "", "kind": "Service", "name": "scorer-canary",
                                     "port": 9000, "weight": 0}]}]}
        }))
        .unwrap();
        assert_eq!(
            live.spec.with_server_defaults(),
            rendered.spec.with_server_defaults()
        );
        // Other writers' filters decode by their type only.
        let edited = decode(EDITED);
        assert_eq!(
            edited.spec.rules[0].filters[0].type_,
            "RequestHeaderModifier"
        );
        assert!(edited.spec.rules[0].filters[0].request_mirror.is_none());
    }

    #[test]
    fn a_variant_service_selects_one_revision() {
        let s = variant_service(&md(), CANARY, "abc123");
        let sel = s.spec.unwrap().selector.unwrap();
        assert_eq!(sel[labels::HASH], "abc123");
        assert_eq!(s.metadata.name.as_deref(), Some("scorer-canary"));
    }

    /// Real API server output (kube-apiserver 1.36 with the Gateway API
    /// v1.6.1 standard CRDs, `kubectl get -o json --show-managed-fields`) for
    /// routes this module rendered for [`md_in`] and [`gateway`], applied with
    /// server-side apply (owner references removed: no owner existed there):
    /// the 30% canary (namespace `canary`, with a status from a gateway
    /// controller), the A/B test on a header and a cookie (`abtest`), and the
    /// canary route after another field manager added filters, timeouts, a
    /// path and a parent port (`edited`).
    const WEIGHTED: &str = include_str!("../../../tests/fixtures/gateway/weighted.json");
    const HEADER_MATCH: &str = include_str!("../../../tests/fixtures/gateway/header-match.json");
    const EDITED: &str = include_str!("../../../tests/fixtures/gateway/edited-by-others.json");

    fn ab_match() -> HttpMatch {
        HttpMatch {
            headers: BTreeMap::from([("x-model-variant".into(), "b".into())]),
            cookies: BTreeMap::from([("variant".into(), "b".into())]),
        }
    }

    fn decode(text: &str) -> HTTPRoute {
        serde_json::from_str(text).expect("real server output decodes")
    }

    #[test]
    fn a_weighted_route_read_back_from_a_real_server_decodes_to_what_was_rendered() {
        let live = decode(WEIGHTED);
        let rendered = http_route(&md_in("canary"), &gateway(), 30, &[]);
        assert_eq!(
            live.spec.with_server_defaults(),
            rendered.spec.with_server_defaults()
        );
        // The server added its defaults; the operator's comparison is by the
        // applied hash, which comes back as stamped.
        assert_eq!(
            live.spec.rules[0].matches[0].path,
            Some(PathMatch::default())
        );
        assert_eq!(
            live.spec.rules[0].backend_refs[0].kind.as_deref(),
            Some("Service")
        );
        assert_eq!(
            live.annotations().get(crate::resources::APPLIED_HASH),
            rendered.annotations().get(crate::resources::APPLIED_HASH)
        );
        let weights: Vec<_> = live.spec.rules[0]
            .backend_refs
            .iter()
            .map(|b| (b.name.as_str(), b.weight))
            .collect();
        assert_eq!(weights, vec![("scorer-stable", 70), ("scorer-canary", 30)]);
    }

    #[test]
    fn a_header_matched_route_read_back_from_a_real_server_decodes_to_what_was_rendered() {
        let live = decode(HEADER_MATCH);
        let rendered = http_route(&md_in("abtest"), &gateway(), 50, &[ab_match()]);
        assert_eq!(
            live.spec.with_server_defaults(),
            rendered.spec.with_server_defaults()
        );
        assert_eq!(
            live.annotations().get(crate::resources::APPLIED_HASH),
            rendered.annotations().get(crate::resources::APPLIED_HASH)
        );
        let first = &live.spec.rules[0];
        assert_eq!(first.backend_refs[0].name, "scorer-canary");
        assert!(
            first.matches[0]
                .headers
                .iter()
                .any(|h| h.name == "x-model-variant" && h.type_ == "Exact" && h.value == "b")
        );
        // The stable rule has no headers of its own: the server gave it the
        // path match only (the field that used to be required).
        assert!(live.spec.rules[1].matches[0].headers.is_empty());
    }

    #[test]
    fn fields_other_writers_add_are_ignored() {
        let live = decode(EDITED);
        let rule = &live.spec.rules[0];
        assert_eq!(rule.backend_refs.len(), 2);
        assert_eq!(rule.backend_refs[1].weight, 30);
        assert_eq!(
            rule.matches[0].path.as_ref().map(|p| p.value.as_str()),
            Some("/v1/predict")
        );
        assert_eq!(live.spec.parent_refs[0].port, Some(443));
    }

    #[test]
    fn a_sparse_route_decodes_with_the_gateway_api_defaults() {
        let live: HTTPRoute = serde_json::from_value(json!({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
            "metadata": {"name": "r"},
            "spec": {"rules": [{"matches": [{"headers": [{"name": "x", "value": "y"}]}],
                                "backendRefs": [{"name": "s"}]}, {}]}
        }))
        .unwrap();
        let rule = &live.spec.rules[0];
        assert_eq!(rule.matches[0].headers[0].type_, "Exact");
        assert_eq!(rule.backend_refs[0].weight, 1);
        assert_eq!(rule.backend_refs[0].port, None);
        assert!(live.spec.rules[1].backend_refs.is_empty());
        assert!(live.spec.parent_refs.is_empty());
        let bare: HTTPRoute = serde_json::from_value(json!({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
            "metadata": {"name": "r"}, "spec": {}
        }))
        .unwrap();
        assert_eq!(bare.spec, HttpRouteSpec::default());
    }

    /// Tolerant types must not change what is rendered: the applied hash of
    /// every existing route stays the same, so an upgrade writes nothing.
    #[test]
    fn the_rendered_spec_is_unchanged_by_the_tolerant_types() {
        let weighted = serde_json::to_value(http_route(&md(), &gateway(), 30, &[]).spec).unwrap();
        assert_eq!(
            weighted,
            json!({"parentRefs": [{"name": "public", "namespace": "gateways"}],
                   "hostnames": ["scorer.example.com"],
                   "rules": [{"backendRefs": [
                       {"name": "scorer-stable", "port": 9000, "weight": 70},
                       {"name": "scorer-canary", "port": 9000, "weight": 30}]}]})
        );
        let ab =
            serde_json::to_value(http_route(&md(), &gateway(), 50, &[ab_match()]).spec).unwrap();
        assert_eq!(
            ab["rules"],
            json!([{"matches": [{"headers": [
                        {"type": "Exact", "name": "x-model-variant", "value": "b"},
                        {"type": "RegularExpression", "name": "Cookie", "value": "(^|;\\s*)variant=b(;|$)"}]}],
                    "backendRefs": [{"name": "scorer-canary", "port": 9000, "weight": 1}]},
                   {"backendRefs": [{"name": "scorer-stable", "port": 9000, "weight": 1}]}])
        );
        let zero = serde_json::to_value(http_route(&md(), &gateway(), 0, &[]).spec).unwrap();
        assert_eq!(zero["rules"][0]["backendRefs"][1]["weight"], 0);
    }
}
