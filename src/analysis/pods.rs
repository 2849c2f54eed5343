//! The `restarts` check: read straight from pod status, so a crash-looping or
//! OOM-killed canary is failed at once instead of waiting for metrics that
//! will never come (where other tools hang or call missing data an error).

use std::time::Duration;

use k8s_openapi::api::core::v1::{ContainerStatus, Pod};
use k8s_openapi::jiff::Timestamp;

/// Waiting reasons that never fix themselves while the revision stays the same.
const HOPELESS_WAITING: [&str; 6] = [
    "CrashLoopBackOff",
    "ImagePullBackOff",
    "ErrImagePull",
    "InvalidImageName",
    "CreateContainerConfigError",
    "CreateContainerError",
];

/// Why the given pods (all of one revision) are unhealthy, or `None`.
/// `max_restarts` is the total tolerated across them; `ready_deadline` is how
/// long a pod may run without becoming ready.
pub fn unhealthy(
    pods: &[&Pod],
    max_restarts: i32,
    ready_deadline: Duration,
    now: Timestamp,
) -> Option<String> {
    let mut restarts = 0i64;
    for pod in pods {
        let name = pod.metadata.name.as_deref().unwrap_or("?");
        let Some(status) = pod.status.as_ref() else {
            continue;
        };
        let containers = status
            .init_container_statuses
            .iter()
            .flatten()
            .chain(status.container_statuses.iter().flatten());
        for c in containers {
            restarts += i64::from(c.restart_count);
            if let Some(reason) = waiting_reason(c).filter(|r| HOPELESS_WAITING.contains(r)) {
                return Some(format!("pod {name}: container {} is in {reason}", c.name));
            }
            if terminated_reason(c) == Some("OOMKilled") {
                return Some(format!(
                    "pod {name}: container {} was OOMKilled (memory limit too low for this model?)",
                    c.name
                ));
            }
        }
        if status.phase.as_deref() == Some("Failed") {
            let why = status.reason.as_deref().unwrap_or("unknown reason");
            return Some(format!("pod {name} failed: {why}"));
        }
        let ready = status
            .conditions
            .iter()
            .flatten()
            .any(|c| c.type_ == "Ready" && c.status == "True");
        let started = status
            .start_time
            .as_ref()
            .or(pod.metadata.creation_timestamp.as_ref());
        if !ready
            && pod.metadata.deletion_timestamp.is_none()
            && let Some(started) = started
            && let Ok(age) = Duration::try_from(now.duration_since(started.0))
            && age > ready_deadline
        {
            return Some(format!(
                "pod {name} has not been ready for {}s",
                age.as_secs()
            ));
        }
    }
    (restarts > i64::from(max_restarts)).then(|| {
        format!(
            "{restarts} container restarts across {} pods (at most {max_restarts} tolerated)",
            pods.len()
        )
    })
}

fn waiting_reason(c: &ContainerStatus) -> Option<&str> {
    c.state.as_ref()?.waiting.as_ref()?.reason.as_deref()
}

fn terminated_reason(c: &ContainerStatus) -> Option<&str> {
    let state = c.state.as_ref().and_then(|s| s.terminated.as_ref());
    let last = c.last_state.as_ref().and_then(|s| s.terminated.as_ref());
    state.or(last)?.reason.as_deref()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(v: serde_json::Value) -> Pod {
        serde_json::from_value(v).unwrap()
    }

    fn now() -> Timestamp {
        "2026-01-01T00:10:00Z".parse().unwrap()
    }

    fn healthy(name: &str, restarts: i32) -> Pod {
        pod(json!({
            "metadata": {"name": name, "creationTimestamp": "2026-01-01T00:00:00Z"},
            "status": {"phase": "Running", "startTime": "2026-01-01T00:00:00Z",
                "conditions": [{"type": "Ready", "status": "True"}],
                "containerStatuses": [{"name": "model", "ready": true, "restartCount": restarts,
                    "image": "m", "imageID": "", "state": {"running": {}}}]}
        }))
    }

    const DEADLINE: Duration = Duration::from_secs(300);

    #[test]
    fn healthy_pods_pass() {
        let (a, b) = (healthy("a", 1), healthy("b", 1));
        assert_eq!(unhealthy(&[&a, &b], 2, DEADLINE, now()), None);
    }

    #[test]
    fn restarts_above_the_limit_fail() {
        let (a, b) = (healthy("a", 2), healthy("b", 1));
        let why = unhealthy(&[&a, &b], 2, DEADLINE, now()).unwrap();
        assert!(why.contains("3 container restarts"), "{why}");
    }

    #[test]
    fn crash_loops_and_oom_kills_fail_at_once() {
        let crash = pod(json!({
            "metadata": {"name": "c"},
            "status": {"containerStatuses": [{"name": "model", "ready": false, "restartCount": 0,
                "image": "m", "imageID": "",
                "state": {"waiting": {"reason": "CrashLoopBackOff"}}}]}
        }));
        assert!(
            unhealthy(&[&crash], 5, DEADLINE, now())
                .unwrap()
                .contains("CrashLoopBackOff")
        );
        let oom = pod(json!({
            "metadata": {"name": "o"},
            "status": {"containerStatuses": [{"name": "model", "ready": true, "restartCount": 1,
                "image": "m", "imageID": "", "state": {"running": {}},
                "lastState": {"terminated": {"reason": "OOMKilled", "exitCode": 137}}}]}
        }));
        assert!(
            unhealthy(&[&oom], 5, DEADLINE, now())
                .unwrap()
                .contains("OOMKilled")
        );
        let pull = pod(json!({
            "metadata": {"name": "p"},
            "status": {"containerStatuses": [{"name": "model", "ready": false, "restartCount": 0,
                "image": "m", "imageID": "", "state": {"waiting": {"reason": "ImagePullBackOff"}}}]}
        }));
        assert!(unhealthy(&[&pull], 5, DEADLINE, now()).is_some());
    }

    #[test]
    fn a_pod_not_ready_past_the_deadline_fails() {
        let slow = pod(json!({
            "metadata": {"name": "s", "creationTimestamp": "2026-01-01T00:00:00Z"},
            "status": {"phase": "Running", "startTime": "2026-01-01T00:00:00Z",
                "conditions": [{"type": "Ready", "status": "False"}]}
        }));
        assert!(
            unhealthy(&[&slow], 2, DEADLINE, now())
                .unwrap()
                .contains("not been ready")
        );
        assert_eq!(
            unhealthy(&[&slow], 2, Duration::from_secs(3600), now()),
            None
        );
    }
}
