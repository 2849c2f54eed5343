//! The `gatewayAPI` router: stable keeps all its pods, the canary gets enough
//! pods to carry its share, and an HTTPRoute splits traffic exactly between a
//! Service per variant (or sends matching requests to the new revision). The
//! route moves only once the canary's pods can carry its weight. For shadow
//! traffic (`setMirror`) the route keeps all traffic on stable and copies a
//! share of it to the canary with a `RequestMirror` filter.
//!
//! RBAC: HTTPRoutes in `gateway.networking.k8s.io`, besides Services.

mod route;

pub use route::*;

use super::{ApiResource, Child, PodsUp, Split, TrafficRouter};
use crate::api::ModelDeployment;

pub struct GatewayApi;

impl TrafficRouter for GatewayApi {
    fn name(&self) -> &'static str {
        "gatewayAPI"
    }

    /// Enough pods to carry the weight the route sends.
    fn canary_pods(&self, replicas: i32, set_weight: i32) -> i32 {
        let n = (i64::from(replicas) * i64::from(set_weight.min(100)) + 99) / 100;
        i32::try_from(n)
            .unwrap_or(replicas)
            .clamp(1, replicas.max(1))
    }

    fn stable_pods(&self, replicas: i32, _set_weight: i32, _canary_pods: i32) -> i32 {
        replicas
    }

    fn carried_weight(&self, wanted: i32, current: i32, pods: &PodsUp) -> i32 {
        if pods.canary_complete {
            wanted
        } else {
            current.min(wanted)
        }
    }

    fn drains(&self) -> bool {
        false
    }

    fn children(&self, md: &ModelDeployment, split: Split<'_>) -> Vec<Child> {
        let Some(rollout) = md.spec.rollout.as_ref() else {
            return Vec::new();
        };
        let Some(gateway) = rollout.traffic.gateway_api.as_ref() else {
            return Vec::new();
        };
        let matches = rollout
            .ab_test
            .as_ref()
            .and_then(|ab| ab.matches.clone())
            .unwrap_or_default();
        vec![
            Child::Service(Box::new(variant_service(md, STABLE, split.stable_hash))),
            Child::Service(Box::new(variant_service(md, CANARY, split.canary_hash))),
            Child::HttpRoute(Box::new(shadowed_route(
                md,
                gateway,
                split.canary_weight,
                &matches,
                split.mirror_percent,
            ))),
        ]
    }

    fn writes(&self) -> &'static [ApiResource] {
        &[ApiResource {
            group: "gateway.networking.k8s.io",
            resource: "httproutes",
        }]
    }

    fn canary_service(&self, md_name: &str) -> Option<String> {
        Some(variant_service_name(md_name, CANARY))
    }

    fn missing_api(&self) -> &'static str {
        "spec.rollout.traffic.router is gatewayAPI but the cluster has no HTTPRoute (gateway.networking.k8s.io/v1) API: install the Gateway API CRDs"
    }
}
