//! How many pods each revision runs, and how much traffic the canary gets:
//! the sizes engine over the spec's traffic router (`crate::routers`), which
//! decides the shares; this module adds what holds for every router (full
//! size while promoting, surge first, drains).

use k8s_openapi::jiff::Timestamp;

use crate::api::{CanaryStatus, ModelDeploymentSpec, ModelDeploymentStatus, RevisionStatus};
use crate::resources::RevisionWorkload;
use crate::routers::{self, PodsUp};

use super::{Observed, available};

/// Said in the status while a rollout runs on a spec scaled to zero.
pub const KEPT_FOR_ROLLOUT: &str =
    " (spec.replicas is 0: one pod per revision runs until the rollout ends, for its analysis)";

/// The pods shared between the revisions while a rollout is out: a spec
/// scaled to zero (by a person or an autoscaler) still runs one, because the
/// analysis needs the canary's answers and stable must keep a pod to fall
/// back to. Once the rollout is over, zero means zero.
fn fleet(spec: &ModelDeploymentSpec) -> i32 {
    spec.replicas.max(1)
}

/// Pods the canary runs at its current step: its weight's share of the fleet,
/// at least one while it has any weight, all of them while promoting. A
/// shadow runs as if it served the share copied to it: it carries that load.
pub fn canary_replicas(spec: &ModelDeploymentSpec, c: &CanaryStatus) -> i32 {
    if c.promoting {
        return fleet(spec);
    }
    let share = c.set_weight.max(c.set_mirror);
    if share <= 0 {
        return 0;
    }
    routers::for_spec(spec).canary_pods(fleet(spec), share)
}

/// The share of requests actually copied to a shadow: what its step asks
/// once its pods are all available (no copies to pods that are not there).
pub fn mirrored(spec: &ModelDeploymentSpec, c: &CanaryStatus, observed: &Observed) -> i32 {
    if c.promoting || c.set_mirror <= 0 {
        return 0;
    }
    if available(observed.get(&c.hash), canary_replicas(spec, c)) {
        c.set_mirror
    } else {
        c.mirror.min(c.set_mirror)
    }
}

/// Pods the stable revision runs once the current step is reached.
fn stable_target(spec: &ModelDeploymentSpec, c: &CanaryStatus) -> i32 {
    if c.promoting {
        return fleet(spec);
    }
    routers::for_spec(spec).stable_pods(fleet(spec), c.set_weight, canary_replicas(spec, c))
}

/// Pods the stable revision runs while a canary is out. Surge first: a stable
/// pod goes only once a canary pod of this step is available to take its
/// place, so available pods never fall below `spec.replicas` on the way, and
/// a canary that never becomes available leaves stable at full size.
pub fn stable_replicas(spec: &ModelDeploymentSpec, c: &CanaryStatus, observed: &Observed) -> i32 {
    let target = stable_target(spec, c);
    let canary_up = observed
        .get(&c.hash)
        .map_or(0, |o| o.available_replicas.min(canary_replicas(spec, c)));
    target.max(fleet(spec) - canary_up)
}

/// Pods a rolled-back or superseded revision keeps while the revisions that
/// serve are not yet at full size: no more than it has, and only as many as
/// they still lack. Once this is zero the drain is over.
pub fn draining_replicas(
    spec: &ModelDeploymentSpec,
    status: &ModelDeploymentStatus,
    observed: &Observed,
) -> i32 {
    let Some(draining) = &status.draining else {
        return 0;
    };
    // Counts the controller has not caught up with may be of pods that are
    // gone (see `available`): none are counted until it has.
    let up = |hash: Option<&str>| {
        hash.and_then(|h| observed.get(h))
            .filter(|o| !o.lagging)
            .map_or(0, |o| o.available_replicas)
    };
    let serving_up = up(status.stable.as_ref().map(|s| s.hash.as_str()))
        + up(status.canary.as_ref().map(|c| c.hash.as_str()));
    let has = observed.get(&draining.hash).map_or(0, |o| o.replicas);
    has.min(spec.replicas - serving_up).max(0)
}

/// Whether a revision that stops serving should keep its pods for a while.
pub fn drains(spec: &ModelDeploymentSpec) -> bool {
    routers::for_spec(spec).drains()
}

/// The canary's actual share of traffic.
pub fn achieved(
    spec: &ModelDeploymentSpec,
    c: &CanaryStatus,
    stable: &RevisionStatus,
    observed: &Observed,
) -> i32 {
    let up = |hash: &str| observed.get(hash).map_or(0, |o| o.available_replicas);
    let pods = PodsUp {
        canary_available: up(&c.hash),
        stable_available: up(&stable.hash),
        canary_complete: available(observed.get(&c.hash), canary_replicas(spec, c)),
    };
    let wanted = if c.promoting { 100 } else { c.set_weight };
    routers::for_spec(spec).carried_weight(wanted, c.weight, &pods)
}

/// The current setWeight step is reached: both revisions run at their sizes.
pub fn reached(
    spec: &ModelDeploymentSpec,
    c: &CanaryStatus,
    observed: &Observed,
    stable: Option<&RevisionStatus>,
) -> bool {
    let canary_ok = available(observed.get(&c.hash), canary_replicas(spec, c));
    let stable_ok = stable.is_none_or(|s| {
        observed
            .get(&s.hash)
            .is_some_and(|o| o.replicas == stable_target(spec, c))
    });
    canary_ok && stable_ok
}

/// Every revision Deployment that should exist and its size, newest first
/// after the serving ones; older ones at zero up to the history limit.
pub fn workloads(
    spec: &ModelDeploymentSpec,
    status: &ModelDeploymentStatus,
    observed: &Observed,
    now: Timestamp,
) -> Vec<RevisionWorkload> {
    let total = spec.replicas;
    let mut out: Vec<RevisionWorkload> = Vec::new();
    let mut push = |r: &RevisionStatus, replicas: i32| {
        if !out.iter().any(|w| w.hash == r.hash) {
            out.push(RevisionWorkload {
                hash: r.hash.clone(),
                revision: r.revision,
                version: r.version.clone(),
                replicas,
            });
        }
    };
    if let Some(s) = &status.stable {
        let n = status
            .canary
            .as_ref()
            .map_or(total, |c| stable_replicas(spec, c, observed));
        push(s, n);
    }
    if let Some(c) = &status.canary {
        push(&c.revision_status(), canary_replicas(spec, c));
    }
    if let Some(dr) = &status.draining {
        push(dr, draining_replicas(spec, status, observed));
    }
    if let Some(p) = &status.previous {
        let keep = status
            .previous_scale_down_at
            .as_ref()
            .is_some_and(|at| now < at.0);
        push(p, if keep { total } else { 0 });
    }
    let serving = out.len();
    let mut older: Vec<_> = observed
        .iter()
        .filter(|(h, _)| !out.iter().any(|w| &w.hash == *h))
        .collect();
    older.sort_by_key(|(_, o)| std::cmp::Reverse(o.revision));
    let keep = usize::try_from(spec.revision_history_limit.max(0)).unwrap_or(0);
    let room = keep.saturating_sub(serving.saturating_sub(1));
    for (hash, o) in older.into_iter().take(room) {
        out.push(RevisionWorkload {
            hash: hash.clone(),
            revision: o.revision,
            version: o.version.clone(),
            replicas: 0,
        });
    }
    out
}
