//! The `replicas` router: no dependency, traffic follows pod counts. Every
//! revision's pods sit behind the one Service `<name>`, so a revision's share
//! of traffic is its share of available pods. Canary pods are added before
//! stable pods go (see `rollout::weights`), and a revision that stops serving
//! drains, because its pods are part of the fleet's capacity.
//!
//! RBAC: nothing beyond the Service every ModelDeployment has.

use super::{ApiResource, Child, PodsUp, Split, TrafficRouter};
use crate::api::ModelDeployment;

pub struct Replicas;

impl TrafficRouter for Replicas {
    fn name(&self) -> &'static str {
        "replicas"
    }

    /// The nearest share of the fleet (the split is approximate by nature),
    /// at least one pod.
    fn canary_pods(&self, replicas: i32, set_weight: i32) -> i32 {
        let n = (i64::from(replicas) * i64::from(set_weight.min(100)) + 50) / 100;
        i32::try_from(n)
            .unwrap_or(replicas)
            .clamp(1, replicas.max(1))
    }

    /// The rest, and at least one pod while the canary's weight is under 100:
    /// `replicas: 1` runs one pod of each.
    fn stable_pods(&self, replicas: i32, set_weight: i32, canary_pods: i32) -> i32 {
        if set_weight >= 100 || replicas == 0 {
            0
        } else {
            (replicas - canary_pods).max(1)
        }
    }

    fn carried_weight(&self, _wanted: i32, _current: i32, pods: &PodsUp) -> i32 {
        let total = pods.canary_available + pods.stable_available;
        if total == 0 {
            0
        } else {
            pods.canary_available * 100 / total
        }
    }

    fn drains(&self) -> bool {
        true
    }

    fn children(&self, _md: &ModelDeployment, _split: Split<'_>) -> Vec<Child> {
        Vec::new()
    }

    fn writes(&self) -> &'static [ApiResource] {
        &[]
    }

    fn missing_api(&self) -> &'static str {
        "the replicas router needs nothing beyond core Services"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_replica_runs_one_pod_of_each_and_shares_follow_pods() {
        let r = Replicas;
        assert_eq!(r.canary_pods(1, 10), 1);
        assert_eq!(r.stable_pods(1, 10, 1), 1);
        assert_eq!(r.canary_pods(4, 25), 1);
        assert_eq!(r.stable_pods(4, 25, 1), 3);
        assert_eq!(r.canary_pods(10, 100), 10);
        assert_eq!(r.stable_pods(10, 100, 10), 0);
        let up = PodsUp {
            canary_available: 1,
            stable_available: 1,
            canary_complete: true,
        };
        assert_eq!(
            r.carried_weight(10, 0, &up),
            50,
            "the share actually reached"
        );
    }
}
