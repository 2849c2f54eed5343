//! Traffic routers: how a new revision's share of traffic is carried. Each
//! router is one module behind [`TrafficRouter`]; it owns its pod counts, the
//! weight it reports, the children it applies beside the revisions'
//! Deployments, the API those need and the RBAC rules that follows. The
//! rollout engine and the controller call the trait and never match on the
//! router. No I/O.
//!
//! Adding a router: a module here implementing [`TrafficRouter`], a variant
//! of `api::Router`, and its arm in [`for_spec`] (see docs/extending.md).

pub mod gateway_api;
pub mod replicas;

use k8s_openapi::api::core::v1::Service;

use crate::api::{ModelDeployment, ModelDeploymentSpec, Router};
use gateway_api::HTTPRoute;

/// An object a router applies beside the revisions' Deployments.
#[derive(Debug, Clone)]
pub enum Child {
    Service(Box<Service>),
    /// Read back live before applying: other controllers write routes too.
    HttpRoute(Box<HTTPRoute>),
}

/// What a router needs to know to render its children.
#[derive(Debug, Clone, Copy)]
pub struct Split<'a> {
    pub stable_hash: &'a str,
    /// The revision the canary's Service selects: see [`canary_service_hash`].
    pub canary_hash: &'a str,
    /// Percent of traffic the canary should get.
    pub canary_weight: i32,
    /// Percent of requests copied to the canary, whose answers are dropped
    /// (shadow traffic, `setMirror` steps); 0 for none. Only routers that can
    /// copy requests are allowed such steps (`api::validate`).
    pub mirror_percent: i32,
}

/// One API resource a router writes, for its RBAC rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApiResource {
    pub group: &'static str,
    pub resource: &'static str,
}

pub trait TrafficRouter: Sync {
    /// The name `spec.rollout.traffic.router` uses.
    fn name(&self) -> &'static str;

    /// Pods the canary runs for `set_weight` percent (1..=100) of `replicas`.
    fn canary_pods(&self, replicas: i32, set_weight: i32) -> i32;

    /// Pods stable runs once a step with `canary_pods` canary pods is reached.
    fn stable_pods(&self, replicas: i32, set_weight: i32, canary_pods: i32) -> i32;

    /// The canary's share of traffic actually carried: `wanted` once its pods
    /// can carry it; `current` is the share reported so far.
    fn carried_weight(&self, wanted: i32, current: i32, pods: &PodsUp) -> i32;

    /// Whether a revision that stops serving keeps its pods until the serving
    /// revisions are whole again (its pods are part of the fleet's capacity).
    fn drains(&self) -> bool;

    /// The objects it applies beside the revisions' Deployments.
    fn children(&self, md: &ModelDeployment, split: Split<'_>) -> Vec<Child>;

    /// The API resources it writes besides Deployments (its RBAC rules).
    fn writes(&self) -> &'static [ApiResource];

    /// Why its children cannot be applied when the cluster lacks their API.
    fn missing_api(&self) -> &'static str;

    /// The Service of its children that selects the canary's pods, if any.
    fn canary_service(&self, _md_name: &str) -> Option<String> {
        None
    }
}

/// The revision the canary's Service selects: the canary while there is one.
/// Without one it stays where it is (`selected_now`): traffic is withdrawn
/// from the canary by the route, and a gateway reads routes and Services at
/// different moments, so re-pointing the Service to stable in the same breath
/// would send copies and weighted requests of a route it has not re-read yet
/// to stable's pods. A new Service selects stable.
pub fn canary_service_hash<'a>(
    canary: Option<&'a str>,
    selected_now: Option<&'a str>,
    stable: &'a str,
) -> &'a str {
    canary.or(selected_now).unwrap_or(stable)
}

/// Pods of the two revisions, as the Deployment controller reports them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PodsUp {
    pub canary_available: i32,
    pub stable_available: i32,
    /// The canary has all the pods its current step asks for.
    pub canary_complete: bool,
}

/// The router a spec names (`replicas` without a rollout).
pub fn for_spec(spec: &ModelDeploymentSpec) -> &'static dyn TrafficRouter {
    for_router(
        spec.rollout
            .as_ref()
            .map(|r| r.traffic.router)
            .unwrap_or_default(),
    )
}

/// The one place a router name becomes its module.
pub fn for_router(router: Router) -> &'static dyn TrafficRouter {
    match router {
        Router::Replicas => &replicas::Replicas,
        Router::GatewayApi => &gateway_api::GatewayApi,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_canary_service_follows_a_canary_and_stays_when_it_goes() {
        // A rollout starts: the Service moves to the canary.
        assert_eq!(canary_service_hash(Some("c2"), Some("s1"), "s1"), "c2");
        // Rolled back: it stays on the canary the route still copies to.
        assert_eq!(canary_service_hash(None, Some("c2"), "s1"), "c2");
        // A new Service, or a promotion (the canary became stable).
        assert_eq!(canary_service_hash(None, None, "s1"), "s1");
        assert_eq!(canary_service_hash(None, Some("c2"), "c2"), "c2");
    }
}
