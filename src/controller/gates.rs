//! Gates, the I/O: make and read the Job of the gate the status says is
//! running, call a webhook gate, and delete a revision's gate Jobs with the
//! revision. What the outcome means is decided in `rollout::gates`.
//!
//! A gate's Job is made only once the status that starts the gate has been
//! written, under a name fixed by the revision and the gate, so an operator
//! restarted at any point finds the Job it made instead of making another.

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;

use super::*;
use crate::api::gates::{HostPattern, ValidGate, check_webhooks_allowed};
use crate::api::{GateKind, GateStatus};
use crate::resources::gate_job::{self, GateContext, ROLLOUT_STARTED, job_name};
use crate::rollout::gates::{GateOutcome, GateSeen, revision_service, running, webhook_call_due};

/// The longest error body or log line carried into a status message.
const MAX_DETAIL: usize = 300;

/// A spec whose webhook gates call hosts the operator does not allow is
/// refused as invalid.
pub(super) fn allowed(
    valid: crate::api::ValidSpec,
    allow: &[HostPattern],
) -> Result<crate::api::ValidSpec, crate::api::InvalidSpec> {
    check_webhooks_allowed(&valid.gates, allow).map(|()| valid)
}

/// What the running gate says now, if a gate runs.
pub(super) async fn observe(
    md: &ModelDeployment,
    ctx: &Context,
    status: &ModelDeploymentStatus,
    valid: &crate::api::ValidSpec,
    now: Timestamp,
) -> Option<GateSeen> {
    let g = running(status)?;
    let outcome = match valid.gates.get(g.gate)? {
        ValidGate::Job { .. } => job_outcome(md, ctx, status, valid, g).await,
        ValidGate::Webhook { url, timeout, .. } => {
            if !webhook_call_due(valid, status, now) {
                return None;
            }
            call_webhook(md, status, g, url, *timeout).await
        }
    };
    Some(GateSeen {
        gate: g.gate,
        outcome,
        at: now,
    })
}

/// Make the gate's Job if it is missing, else read how it ended.
async fn job_outcome(
    md: &ModelDeployment,
    ctx: &Context,
    status: &ModelDeploymentStatus,
    valid: &crate::api::ValidSpec,
    g: &GateStatus,
) -> GateOutcome {
    let (Some(ns), Some(canary)) = (md.namespace(), status.canary.as_ref()) else {
        return GateOutcome::Running("no namespace or rollout".into());
    };
    let name = job_name(&md.name_any(), &canary.hash, g.gate);
    let started = canary
        .started_at
        .as_ref()
        .map(|t| t.0.to_string())
        .unwrap_or_default();
    let api: Api<Job> = Api::namespaced(ctx.client.clone(), &ns);
    let job = match api.get_opt(&name).await {
        Ok(job) => job,
        Err(e) => return GateOutcome::Running(format!("cannot read Job {name}: {e}")),
    };
    let Some(job) = job else {
        let service = revision_service(&md.spec, &md.name_any());
        let cx = GateContext {
            kind: g.gate,
            hash: &canary.hash,
            revision: canary.revision,
            version: &canary.version,
            service: &service,
            rollout_started: &started,
        };
        let Some(desired) = valid
            .gates
            .get(g.gate)
            .and_then(|gate| gate_job::gate_job(md, gate, &cx))
        else {
            return GateOutcome::Running("not a job gate".into());
        };
        return match api.create(&PostParams::default(), &desired).await {
            Ok(_) => {
                info!(job = %name, gate = g.gate.as_str(), "created the gate's Job");
                GateOutcome::Running(format!("Job {name} was created"))
            }
            // A template the API server refuses will not get better by waiting.
            Err(kube::Error::Api(s)) if s.code == 422 || s.code == 400 => {
                GateOutcome::Failed(format!("the API server refused Job {name}: {}", s.message))
            }
            Err(e) => GateOutcome::Running(format!("cannot create Job {name}: {e}")),
        };
    };
    if !is_owned_by(&job, md) {
        return GateOutcome::Failed(format!(
            "a Job named {name} exists and is not this ModelDeployment's"
        ));
    }
    if job.annotations().get(ROLLOUT_STARTED) != Some(&started) {
        // From an earlier rollout of the same revision (before a retry).
        let _ = api.delete(&name, &DeleteParams::background()).await;
        return GateOutcome::Running(format!(
            "Job {name} of an earlier rollout is being replaced"
        ));
    }
    job_state(ctx, &ns, &name, &job).await
}

/// A Job's conditions as a gate outcome; a failure carries the last line
/// its pod logged.
async fn job_state(ctx: &Context, ns: &str, name: &str, job: &Job) -> GateOutcome {
    let conditions = job
        .status
        .as_ref()
        .and_then(|s| s.conditions.clone())
        .unwrap_or_default();
    let holds = |t: &str| {
        conditions
            .iter()
            .find(|c| c.type_ == t && c.status == "True")
    };
    if holds("Complete").is_some() {
        return GateOutcome::Passed(format!("Job {name} succeeded"));
    }
    if let Some(failed) = holds("Failed") {
        let reason = failed.reason.as_deref().unwrap_or("Failed");
        let message = failed.message.as_deref().unwrap_or_default();
        let line = last_log_line(ctx, ns, name).await;
        return GateOutcome::Failed(format!(
            "Job {name} failed ({reason}: {message}); last log line: {line}"
        ));
    }
    let active = job.status.as_ref().and_then(|s| s.active).unwrap_or(0);
    GateOutcome::Running(format!("Job {name} runs ({active} active pods)"))
}

/// The last line a failed pod of the Job logged: its termination message
/// (a kubelet puts the log's tail there with `FallbackToLogsOnError`), else
/// the log itself (`pods/log`).
async fn last_log_line(ctx: &Context, ns: &str, job: &str) -> String {
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
    let listed = pods
        .list(&ListParams::default().labels(&format!("job-name={job}")))
        .await;
    let mut pods = match listed {
        Ok(l) => l.items,
        Err(e) => return format!("(cannot list the Job's pods: {e})"),
    };
    pods.sort_by_key(|p| p.metadata.creation_timestamp.clone());
    let Some(pod) = pods.last() else {
        return "(the Job has no pods left)".into();
    };
    let (container, message) = failed_container(pod);
    if let Some(line) = message.as_deref().and_then(last_line) {
        return line;
    }
    let params = kube::api::LogParams {
        container,
        tail_lines: Some(5),
        ..Default::default()
    };
    match Api::<Pod>::namespaced(ctx.client.clone(), ns)
        .logs(&pod.name_any(), &params)
        .await
    {
        Ok(log) => last_line(&log).unwrap_or_else(|| "(the log is empty or cannot be read)".into()),
        Err(e) => format!("(cannot read the log of pod {}: {e})", pod.name_any()),
    }
}

/// The container that failed (the first one if none says so) and its
/// termination message.
fn failed_container(pod: &Pod) -> (Option<String>, Option<String>) {
    let statuses = pod
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.clone())
        .unwrap_or_default();
    let terminated = |c: &k8s_openapi::api::core::v1::ContainerStatus| {
        c.state.as_ref().and_then(|s| s.terminated.clone())
    };
    let failed = statuses
        .iter()
        .find(|c| terminated(c).is_some_and(|t| t.exit_code != 0))
        .or(statuses.first());
    match failed {
        Some(c) => (Some(c.name.clone()), terminated(c).and_then(|t| t.message)),
        None => (None, None),
    }
}

fn last_line(text: &str) -> Option<String> {
    text.lines()
        .rev()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .map(|l| truncate(l, MAX_DETAIL))
}

fn truncate(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s.to_string(),
    }
}

/// One POST of the rollout's context; 2xx passes. Redirects are not
/// followed: the URL that was allowed is the only one called.
async fn call_webhook(
    md: &ModelDeployment,
    status: &ModelDeploymentStatus,
    g: &GateStatus,
    url: &str,
    timeout: Duration,
) -> GateOutcome {
    let canary = status.canary.as_ref();
    let body = json!({
        "namespace": md.namespace(),
        "name": md.name_any(),
        "gate": g.gate.as_str(),
        "phase": status.phase.map(|p| p.as_str()),
        "revision": canary.map(|c| c.revision),
        "version": canary.map(|c| c.version.clone()),
        "image": canary.map(|c| c.image.clone()),
        "weight": canary.map(|c| c.weight),
        "stable": status.stable.as_ref().map(|s| json!({"revision": s.revision, "version": s.version})),
    });
    let client = match crate::http_client_builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(timeout)
        .build()
    {
        Ok(c) => c,
        Err(e) => return GateOutcome::CallFailed(format!("no HTTP client: {e}")),
    };
    match client.post(url).json(&body).send().await {
        Ok(r) if r.status().is_success() => {
            GateOutcome::Passed(format!("the webhook answered {}", r.status()))
        }
        Ok(r) => {
            let code = r.status();
            let text = r.text().await.unwrap_or_default();
            let detail = last_line(&text).unwrap_or_default();
            GateOutcome::CallFailed(format!("the webhook answered {code} {detail}"))
        }
        Err(e) if e.is_timeout() => GateOutcome::CallFailed(format!(
            "the webhook did not answer within {}s",
            timeout.as_secs_f64()
        )),
        Err(e) => GateOutcome::CallFailed(format!("the webhook call failed: {e}")),
    }
}

/// A revision beyond the history limit takes its gate Jobs with it. Only
/// while the spec has gates: an operator without the Jobs rule (a chart
/// without it) then sends no Job request at all for objects without gates;
/// Jobs left after gates are removed from the spec go with the object.
pub(super) async fn prune_jobs(
    ctx: &Context,
    md: &ModelDeployment,
    ns: &str,
    deployments: &[Arc<Deployment>],
    keep: &[String],
) {
    if md.spec.rollout.as_ref().is_none_or(|r| r.gates.is_none()) {
        return;
    }
    let api: Api<Job> = Api::namespaced(ctx.client.clone(), ns);
    for gone in deployments.iter().filter(|d| !keep.contains(&d.name_any())) {
        let Some(hash) = gone.labels().get(labels::HASH) else {
            continue;
        };
        for kind in [GateKind::PreRollout, GateKind::PrePromotion] {
            let name = job_name(&md.name_any(), hash, kind);
            match api.delete(&name, &DeleteParams::background()).await {
                Ok(_) => info!(job = %name, "deleted a gate Job with its revision"),
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => {
                    warn!(job = %name, error = %e, "cannot delete a gate Job of a pruned revision")
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_failed_containers_termination_message_gives_the_last_line() {
        let pod: Pod = serde_json::from_value(json!({"status": {"containerStatuses": [
            {"name": "sidecar", "image": "s", "imageID": "", "ready": false, "restartCount": 0,
             "state": {"terminated": {"exitCode": 0, "message": "bye"}}},
            {"name": "eval", "image": "e", "imageID": "", "ready": false, "restartCount": 0,
             "state": {"terminated": {"exitCode": 1,
                       "message": "loading holdout\nf1 0.81 below 0.85\n\n"}}}
        ]}}))
        .unwrap();
        let (container, message) = failed_container(&pod);
        assert_eq!(container.as_deref(), Some("eval"));
        assert_eq!(
            message.as_deref().and_then(last_line).as_deref(),
            Some("f1 0.81 below 0.85")
        );
        assert_eq!(failed_container(&Pod::default()), (None, None));
        let long = "x".repeat(MAX_DETAIL + 50);
        assert_eq!(last_line(&long).unwrap().chars().count(), MAX_DETAIL + 3);
    }
}
