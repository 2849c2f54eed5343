//! Manual control (`kubectl modeldeploy promote|pause|resume|abort|retry|rollback`).
//!
//! A request travels as the annotation `modeldeploy.io/request` holding a small
//! JSON document with a unique id. GitOps tools leave an annotation they did
//! not write alone, and re-applying a manifest does not repeat it; the
//! operator records the id in `status.lastRequest`, so each request runs once.
//! The plugin builds requests with [`Request::new`] and the operator parses
//! them with [`Request::parse`]: one format, one place.

use serde::{Deserialize, Serialize};

use crate::api::{CanaryStatus, PauseReason, RevisionStatus};

use super::{Draft, EventKind, engine};

pub const ANNOTATION: &str = "modeldeploy.io/request";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "action")]
pub enum RequestAction {
    /// Finish the current step (or the pause) and go on.
    Promote,
    /// Skip the remaining steps and analysis: take over now.
    PromoteFull,
    Pause,
    Resume,
    /// Roll the canary back now.
    Abort,
    /// Try a rolled-back revision again.
    Retry,
    /// Serve an older revision (its stored template must still exist).
    RollbackTo {
        revision: i64,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    pub id: String,
    #[serde(flatten)]
    pub action: RequestAction,
}

impl Request {
    pub fn new(id: impl Into<String>, action: RequestAction) -> Self {
        Self {
            id: id.into(),
            action,
        }
    }

    pub fn parse(annotation: &str) -> Result<Self, String> {
        let r: Request = serde_json::from_str(annotation)
            .map_err(|e| format!("annotation {ANNOTATION} is not a modeldeploy request: {e}"))?;
        if r.id.is_empty() {
            return Err(format!("annotation {ANNOTATION} has an empty id"));
        }
        Ok(r)
    }

    pub fn to_annotation(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// Whether a request can do anything in this state, and if not, why. The
/// plugin asks before sending; the operator asks again before carrying it out.
pub fn applicable(
    status: &crate::api::ModelDeploymentStatus,
    spec_hash: &str,
    action: &RequestAction,
) -> Result<(), String> {
    let canary = status.canary.as_ref().filter(|c| c.hash == spec_hash);
    match action {
        RequestAction::Promote
        | RequestAction::PromoteFull
        | RequestAction::Pause
        | RequestAction::Abort
            if canary.is_none() =>
        {
            Err("no rollout is in progress".into())
        }
        RequestAction::Resume if canary.is_none_or(|c| c.paused.is_none()) => {
            Err("the rollout is not paused".into())
        }
        RequestAction::Retry
            if status
                .rolled_back
                .as_ref()
                .is_none_or(|r| r.hash != spec_hash) =>
        {
            Err("the revision the spec names was not rolled back".into())
        }
        RequestAction::RollbackTo { revision }
            if status
                .stable
                .as_ref()
                .is_some_and(|s| s.revision == *revision) =>
        {
            Err(format!("revision {revision} already serves"))
        }
        _ => Ok(()),
    }
}

/// Carry out a request once. Runs before the rollout moves on, so its effect
/// is seen in the same decision.
pub(super) fn apply(d: &mut Draft<'_>, target: &RevisionStatus) {
    let Some(request) = d.input.request else {
        return;
    };
    if d.status.last_request.as_deref() == Some(request.id.as_str()) {
        return;
    }
    d.status.last_request = Some(request.id.clone());
    if let Err(why) = applicable(&d.status, &target.hash, &request.action) {
        d.note(
            EventKind::Warning,
            "Request",
            format!("request {:?} ignored: {why}", request.action),
        );
        return;
    }
    let canary = d.status.canary.clone().filter(|c| c.hash == target.hash);
    let done = |what: String| (EventKind::Normal, what);
    let (kind, message) = match (&request.action, canary) {
        (RequestAction::Promote, Some(c)) => done(promote_one_step(d, c)),
        (RequestAction::PromoteFull, Some(mut c)) => {
            c.paused = None;
            c.promoting = true;
            c.step_started_at = Some(d.now.clone());
            d.status.canary = Some(c);
            done("full promotion requested: steps and analysis are skipped".into())
        }
        (RequestAction::Pause, Some(mut c)) => {
            c.paused = Some(PauseReason::UserRequest);
            d.status.canary = Some(c);
            done("paused by request".into())
        }
        (RequestAction::Resume, Some(c)) => done(resume(d, c)),
        (RequestAction::Abort, Some(c)) => {
            let stable = d.status.stable.clone().unwrap_or_default();
            engine::roll_back(d, &c, &stable, "aborted by request".into());
            return;
        }
        (RequestAction::Retry, _)
            if d.status
                .rolled_back
                .as_ref()
                .is_some_and(|r| r.hash == target.hash) =>
        {
            d.status.rolled_back = None;
            done(format!("revision {} will be tried again", target.revision))
        }
        (RequestAction::RollbackTo { revision }, _) => rollback_to(d, *revision, target),
        (action, _) => (
            EventKind::Warning,
            format!("request {action:?} does not apply in the current state; ignored"),
        ),
    };
    d.note(kind, "Request", message);
}

/// Finish the current step (or pause) by request: an inconclusive pause
/// starts counting inconclusive runs afresh.
fn promote_one_step(d: &mut Draft<'_>, mut c: CanaryStatus) -> String {
    if c.paused == Some(PauseReason::Inconclusive)
        && let Some(a) = d.status.analysis.as_mut()
    {
        a.inconclusive_in_a_row = 0;
    }
    c.paused = None;
    c.step += 1;
    c.step_started_at = Some(d.now.clone());
    let step = c.step;
    d.status.canary = Some(c);
    format!("step {step} reached by request")
}

/// End a pause by request: a step's pause goes on to the next step, an
/// inconclusive one starts counting inconclusive runs afresh.
fn resume(d: &mut Draft<'_>, mut c: CanaryStatus) -> String {
    match c.paused {
        Some(PauseReason::Step) => c.step += 1,
        Some(PauseReason::Inconclusive) => {
            if let Some(a) = d.status.analysis.as_mut() {
                a.inconclusive_in_a_row = 0;
            }
        }
        _ => {}
    }
    c.paused = None;
    c.step_started_at = Some(d.now.clone());
    d.status.canary = Some(c);
    "resumed by request".into()
}

fn rollback_to(d: &mut Draft<'_>, revision: i64, target: &RevisionStatus) -> (EventKind, String) {
    let stable = d.status.stable.clone().unwrap_or_default();
    if stable.revision == revision {
        return (
            EventKind::Warning,
            format!("revision {revision} already serves"),
        );
    }
    let found = d
        .input
        .observed
        .iter()
        .find(|(_, o)| o.revision == revision)
        .map(|(hash, o)| RevisionStatus {
            revision,
            version: o.version.clone(),
            image: o.image.clone(),
            hash: hash.clone(),
        });
    let Some(old) = found else {
        return (
            EventKind::Warning,
            format!(
                "revision {revision} is no longer stored (beyond revisionHistoryLimit); cannot roll back to it"
            ),
        );
    };
    if let Some(c) = d.status.canary.take() {
        d.history(
            &c.revision_status(),
            crate::api::Outcome::RolledBack,
            format!("rolled back to revision {revision} by request"),
        );
    }
    d.history(
        &stable,
        crate::api::Outcome::RolledBack,
        format!("rolled back to revision {revision} by request"),
    );
    if !super::available(d.input.observed.get(&old.hash), d.input.spec.replicas) {
        d.status.draining = Some(stable.clone());
    }
    d.status.stable = Some(old);
    d.status.previous = None;
    d.status.previous_scale_down_at = None;
    d.status.guard = None;
    // The spec still names its revision: hold it back until the spec changes.
    d.status.rolled_back = (target.revision != revision).then(|| target.clone());
    (
        EventKind::Warning,
        format!(
            "rolled back from revision {} to revision {revision} by request",
            stable.revision
        ),
    )
}
