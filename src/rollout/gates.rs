//! Gates (`spec.rollout.gates`), decided: a `preRollout` gate holds the new
//! revision at zero pods and zero traffic until it passes, a `prePromotion`
//! gate holds the promotion; either failing rolls back. The controller runs
//! the Job or calls the webhook of the gate the status says is running, and
//! reports what it saw as a [`GateSeen`]; everything else is decided here.

use std::time::Duration;

use k8s_openapi::jiff::Timestamp;

use crate::api::gates::ValidGate;
use crate::api::{
    CanaryStatus, GateKind, GatePhase, GateStatus, ModelDeploymentSpec, ModelDeploymentStatus,
    Router, ValidSpec,
};
use crate::resources::gate_job::job_name;
use crate::routers::gateway_api::{CANARY, variant_service_name};

use super::{Draft, EventKind, elapsed};

/// How often a running gate is looked at.
pub const GATE_POLL: Duration = Duration::from_secs(3);
/// Time between two calls of a webhook gate whose call failed.
pub const WEBHOOK_RETRY_EVERY: Duration = Duration::from_secs(5);

/// What the controller saw of the gate the status says is running.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GateSeen {
    pub gate: GateKind,
    pub outcome: GateOutcome,
    /// When it was seen; a webhook call counts once.
    pub at: Timestamp,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GateOutcome {
    /// The Job is made or runs; the text says how far it is.
    Running(String),
    Passed(String),
    /// The Job failed or ran past its deadline: the gate fails at once.
    Failed(String),
    /// One webhook call failed; the gate fails once its retries are spent.
    CallFailed(String),
}

/// The gate of the rollout in progress that waits for its Job or webhook.
pub fn running(status: &ModelDeploymentStatus) -> Option<&GateStatus> {
    status
        .canary
        .as_ref()?
        .gates
        .iter()
        .find(|g| g.phase == GatePhase::Running)
}

/// Whether the running webhook gate is to be called now: at once, then
/// [`WEBHOOK_RETRY_EVERY`] after a failed call.
pub fn webhook_call_due(valid: &ValidSpec, status: &ModelDeploymentStatus, now: Timestamp) -> bool {
    running(status).is_some_and(|g| {
        matches!(valid.gates.get(g.gate), Some(ValidGate::Webhook { .. }))
            && (g.last_attempt.is_none()
                || elapsed(g.last_attempt.as_ref(), now) >= WEBHOOK_RETRY_EVERY)
    })
}

/// The Service a gate's Job reaches the revision through: with the
/// `gatewayAPI` router the canary variant's Service (the new revision's
/// pods only), with `replicas` the model Service (every revision's pods).
pub fn revision_service(spec: &ModelDeploymentSpec, md_name: &str) -> String {
    let router = spec.rollout.as_ref().map(|r| r.traffic.router);
    if router == Some(Router::GatewayApi) {
        variant_service_name(md_name, CANARY)
    } else {
        md_name.to_string()
    }
}

fn passed(c: &CanaryStatus, kind: GateKind) -> bool {
    c.gates
        .iter()
        .any(|g| g.gate == kind && g.phase == GatePhase::Passed)
}

/// Count what the controller saw, then hold the revision at zero traffic
/// while its `preRollout` gate has not passed (`Ok(true)`). A failed gate
/// is the reason to roll back.
pub(super) fn judge(d: &mut Draft<'_>, c: &mut CanaryStatus) -> Result<bool, String> {
    if let Some(seen) = d.input.gate {
        record(d, c, seen)?;
    }
    overdue(d, c)?;
    if d.input.valid.gates.pre_rollout.is_some() && !passed(c, GateKind::PreRollout) {
        start(d, c, GateKind::PreRollout);
        return Ok(true);
    }
    Ok(false)
}

/// Called by a strategy about to promote: true while a `prePromotion` gate
/// has not passed (it is started if it was not).
pub(super) fn hold_promotion(d: &mut Draft<'_>, c: &mut CanaryStatus) -> bool {
    if d.input.valid.gates.pre_promotion.is_none() || passed(c, GateKind::PrePromotion) {
        return false;
    }
    start(d, c, GateKind::PrePromotion);
    true
}

fn start(d: &mut Draft<'_>, c: &mut CanaryStatus, kind: GateKind) {
    d.requeue_within(GATE_POLL);
    if c.gates.iter().any(|g| g.gate == kind) {
        return;
    }
    let job = matches!(d.input.valid.gates.get(kind), Some(ValidGate::Job { .. }))
        .then(|| job_name(d.input.name, &c.hash, kind));
    let what = match &job {
        Some(name) => format!("Job {name}"),
        None => "its webhook".to_string(),
    };
    d.note(
        EventKind::Normal,
        "GateStarted",
        format!(
            "revision {} waits for its {} gate: {what}",
            c.revision,
            kind.as_str()
        ),
    );
    c.gates.push(GateStatus {
        gate: kind,
        phase: GatePhase::Running,
        job,
        attempts: 0,
        last_attempt: None,
        started_at: Some(d.now.clone()),
        message: None,
    });
}

fn record(d: &mut Draft<'_>, c: &mut CanaryStatus, seen: &GateSeen) -> Result<(), String> {
    let retries = match d.input.valid.gates.get(seen.gate) {
        Some(ValidGate::Webhook { retries, .. }) => *retries,
        _ => 0,
    };
    let Some(g) = c
        .gates
        .iter_mut()
        .find(|g| g.gate == seen.gate && g.phase == GatePhase::Running)
    else {
        return Ok(());
    };
    let kind = seen.gate.as_str();
    match &seen.outcome {
        GateOutcome::Running(m) => g.message = Some(m.clone()),
        GateOutcome::Failed(m) => return Err(format!("{kind} gate failed: {m}")),
        GateOutcome::CallFailed(m) => {
            if g.last_attempt.as_ref().is_some_and(|t| t.0 >= seen.at) {
                return Ok(());
            }
            g.attempts += 1;
            g.last_attempt = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                seen.at,
            ));
            g.message = Some(m.clone());
            if g.attempts > retries {
                return Err(format!(
                    "{kind} gate failed: its webhook failed {} times: {m}",
                    g.attempts
                ));
            }
        }
        GateOutcome::Passed(m) => {
            g.phase = GatePhase::Passed;
            g.message = Some(m.clone());
            let revision = c.revision;
            if seen.gate == GateKind::PreRollout {
                // The first step's time starts now, not while the gate ran.
                c.step_started_at = Some(d.now.clone());
            }
            d.note(
                EventKind::Normal,
                "GatePassed",
                format!("revision {revision} passed its {kind} gate: {m}"),
            );
        }
    }
    Ok(())
}

/// A Job gate fails by its own `activeDeadlineSeconds`; one that cannot even
/// be made or read (RBAC, quota) fails a while after that deadline.
fn overdue(d: &Draft<'_>, c: &CanaryStatus) -> Result<(), String> {
    let Some(g) = c.gates.iter().find(|g| g.phase == GatePhase::Running) else {
        return Ok(());
    };
    let Some(ValidGate::Job {
        active_deadline_seconds,
        ..
    }) = d.input.valid.gates.get(g.gate)
    else {
        return Ok(());
    };
    let limit =
        Duration::from_secs(u64::try_from(*active_deadline_seconds).unwrap_or(0)) + JOB_GRACE;
    if g.started_at.is_some() && d.elapsed_since(g.started_at.as_ref()) > limit {
        let last = g.message.as_deref().unwrap_or("no word from the Job");
        return Err(format!(
            "{} gate failed: its Job did not finish within {}s ({last})",
            g.gate.as_str(),
            limit.as_secs()
        ));
    }
    Ok(())
}

/// How long past its deadline a Job gate may still be unfinished: the Job
/// controller marks a Job failed at its deadline, so this only ends gates
/// whose Job cannot be made or read.
const JOB_GRACE: Duration = Duration::from_secs(120);

/// What a rollout held by a `pause` step without duration says: a manual
/// approval gate, and who may approve it. `kubectl modeldeploy promote`
/// writes a request annotation, so whoever may patch the ModelDeployment may
/// approve (and `abort` to reject).
pub fn approval(name: &str) -> String {
    format!(
        "{WAITING_FOR_APPROVAL}: anyone allowed to patch ModelDeployments in this namespace approves with `kubectl modeldeploy promote {name}` (or rejects with `kubectl modeldeploy abort {name}`)"
    )
}

/// How status and the plugin name a manual approval gate.
pub const WAITING_FOR_APPROVAL: &str = "waiting for approval";

/// The status message while a gate holds the rollout.
pub(super) fn waiting(c: &CanaryStatus) -> Option<String> {
    let g = c.gates.iter().find(|g| g.phase == GatePhase::Running)?;
    let what = match &g.job {
        Some(job) => format!("Job {job}"),
        None if g.attempts > 0 => format!("its webhook (call {} failed)", g.attempts),
        None => "its webhook".to_string(),
    };
    let traffic = match g.gate {
        GateKind::PreRollout => "before it gets any traffic".to_string(),
        GateKind::PrePromotion => format!("before promotion, with {}% of traffic", c.weight),
    };
    let detail = g
        .message
        .as_deref()
        .map(|m| format!(": {m}"))
        .unwrap_or_default();
    Some(format!(
        "revision {} waits for its {} gate {traffic}: {what}{detail}",
        c.revision,
        g.gate.as_str()
    ))
}
