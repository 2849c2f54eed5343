//! The rollout state machine: (spec, status, observations, now) -> decision.
//! No I/O. The same inputs always give the same decision, and feeding a
//! decision's status back in changes nothing, so a restarted operator resumes
//! where it was and an object at rest causes no writes.
//!
//! Every new revision goes through the same path:
//! - with `rollout.strategy: canary`, Argo-style steps shift traffic to it
//!   while analysis judges it, then it is promoted;
//! - without `spec.rollout`, it is promoted at once: it starts at full size
//!   beside the old revision, which scales down once the new one is available;
//! - either way, a revision that does not become available within the progress
//!   deadline, fails its analysis, or crash-loops is rolled back, and is not
//!   tried again until the spec changes or a retry is requested.
//!
//! After a promotion the previous revision is kept for `scaleDownDelay`, and
//! the guard (if configured) keeps judging the new one for `guard.window`.

pub mod announce;
pub mod conditions;
mod engine;
pub mod gates;
mod guard;
pub mod requests;
mod strategies;
pub mod weights;

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

pub use crate::analysis::AnalysisRun;
use crate::api::EventKind;
use crate::api::{
    AnalysisStatus, CheckVerdict, HistoryEntry, InvalidSpec, ModelDeploymentSpec,
    ModelDeploymentStatus, Outcome, Phase, RevisionStatus, ValidSpec,
};
use crate::resources::{RevisionWorkload, revision_hash};
pub use requests::{Request, RequestAction};

/// What the operator sees of one revision's Deployment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ObservedRevision {
    pub revision: i64,
    pub version: String,
    pub image: String,
    pub replicas: i32,
    pub available_replicas: i32,
    /// The Deployment controller reports `ProgressDeadlineExceeded`.
    pub deadline_exceeded: bool,
    /// The Deployment controller has not seen the Deployment's latest
    /// change yet (`observedGeneration` < `generation`): its counts may be
    /// of an earlier size.
    pub lagging: bool,
}

/// Owned Deployments by revision hash.
pub type Observed = BTreeMap<String, ObservedRevision>;

/// Everything the decision depends on.
pub struct Input<'a> {
    /// The ModelDeployment's name.
    pub name: &'a str,
    pub spec: &'a ModelDeploymentSpec,
    pub valid: &'a ValidSpec,
    pub generation: Option<i64>,
    pub status: &'a ModelDeploymentStatus,
    pub observed: &'a Observed,
    /// The newest analysis run of the canary (or, after promotion, of the
    /// guarded revision), if one was made; runs already recorded are ignored.
    pub analysis: Option<&'a AnalysisRun>,
    /// Why the canary's pods are unhealthy (restarts, CrashLoopBackOff,
    /// OOMKilled, image pull errors), if they are.
    pub canary_pods_failure: Option<&'a str>,
    /// A `kubectl modeldeploy` request; one already carried out is ignored.
    pub request: Option<&'a Request>,
    /// What the controller saw of the gate the status says is running.
    pub gate: Option<&'a gates::GateSeen>,
    pub now: Timestamp,
}

/// The event reason of every rollback, of a canary or by the guard.
pub const ROLLED_BACK: &str = "RolledBack";

/// Something a person would want to see in `kubectl describe`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    pub kind: EventKind,
    pub reason: &'static str,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// Every revision Deployment that should exist, with its size. Owned
    /// Deployments not listed here are deleted.
    pub workloads: Vec<RevisionWorkload>,
    /// Percent of traffic the canary should get from a weighted router.
    pub canary_weight: i32,
    pub status: ModelDeploymentStatus,
    pub notes: Vec<Note>,
    /// When to look again even if nothing changes (deadlines, timed steps,
    /// the next analysis run).
    pub requeue_after: Option<Duration>,
}

/// How often a revision in progress is looked at when no watch event arrives.
const PROGRESS_POLL: Duration = Duration::from_secs(30);

/// The working state of one decision.
struct Draft<'a> {
    input: &'a Input<'a>,
    status: ModelDeploymentStatus,
    notes: Vec<Note>,
    requeue: Option<Duration>,
    now: Time,
}

impl Draft<'_> {
    fn note(&mut self, kind: EventKind, reason: &'static str, message: String) {
        self.notes.push(Note {
            kind,
            reason,
            message,
        });
    }

    fn requeue_within(&mut self, d: Duration) {
        let d = d.max(Duration::from_secs(1));
        self.requeue = Some(self.requeue.map_or(d, |r| r.min(d)));
    }

    fn history(&mut self, rev: &RevisionStatus, outcome: Outcome, reason: String) {
        self.status.history.push(HistoryEntry {
            revision: rev.revision,
            version: rev.version.clone(),
            image: rev.image.clone(),
            at: self.now.clone(),
            outcome,
            reason,
        });
        let limit = usize::try_from(self.input.spec.revision_history_limit.max(1)).unwrap_or(1);
        let excess = self.status.history.len().saturating_sub(limit);
        self.status.history.drain(..excess);
    }

    fn elapsed_since(&self, t: Option<&Time>) -> Duration {
        elapsed(t, self.input.now)
    }
}

fn elapsed(since: Option<&Time>, now: Timestamp) -> Duration {
    since
        .and_then(|t| Duration::try_from(now.duration_since(t.0)).ok())
        .unwrap_or_default()
}

/// The revision's Deployment asks for `replicas` pods, that many are
/// available, and its controller has seen its latest change. What acts on
/// pods asks this: shifting traffic, promoting, and whether the pods of a
/// revision that stops serving may go at once. Counts from before a change
/// are not trusted there: a revision scaled to 0 and straight back (a
/// rollback just after a promotion) still reports its old pods until the
/// controller catches up.
pub(crate) fn available(obs: Option<&ObservedRevision>, replicas: i32) -> bool {
    reported_available(obs, replicas) && obs.is_some_and(|o| !o.lagging)
}

/// [`available`] without waiting for the controller to catch up: for what
/// status says at rest and for giving up on a revision. The generation also
/// moves when anyone changes a Deployment's annotations, which changes
/// nothing that runs; requiring the controller to have seen that flapped
/// `Ready` and wrote status at rest on a real API server, and could roll
/// back a canary whose pods were all there. A revision's template never
/// changes once stored, so `replicas`, compared here, is the only spec
/// change the counts can be behind on.
pub(crate) fn reported_available(obs: Option<&ObservedRevision>, replicas: i32) -> bool {
    obs.is_some_and(|o| o.replicas == replicas && o.available_replicas >= replicas)
}

/// Decide what should run and what the status says.
pub fn decide(input: &Input<'_>) -> Decision {
    let mut d = Draft {
        input,
        status: input.status.clone(),
        notes: Vec::new(),
        requeue: None,
        now: Time(input.now),
    };
    d.status.observed_generation = input.generation;

    let hash = revision_hash(input.spec);
    let target = RevisionStatus {
        revision: revision_number(&hash, input.status, input.observed),
        version: input.spec.model.version.clone(),
        image: input.spec.model.image.clone(),
        hash: hash.clone(),
    };
    d.status.latest_revision = d.status.latest_revision.max(target.revision);

    requests::apply(&mut d, &target);

    match d.status.stable.clone() {
        // The first revision is the stable one from the start.
        None => d.status.stable = Some(target.clone()),
        Some(stable) if stable.hash == hash => {
            // The spec went back to the stable revision mid-rollout.
            abandon_rollout(&mut d, &stable, stable.revision);
            d.status.rolled_back = None;
        }
        Some(stable)
            if d.status
                .rolled_back
                .as_ref()
                .is_some_and(|r| r.hash == hash) =>
        {
            // Keep serving the previous revision until the spec moves on or a
            // retry is requested.
            abandon_rollout(&mut d, &stable, target.revision);
        }
        Some(stable) => engine::progress(&mut d, &stable, &target),
    }

    guard::watch(&mut d);
    record_drift(&mut d);
    note_new_drift(&mut d);
    scale_down_previous(&mut d);
    summarize(&mut d);
    if input.spec.replicas == 0
        && d.status.canary.is_some()
        && let Some(m) = d.status.message.as_mut()
    {
        m.push_str(weights::KEPT_FOR_ROLLOUT);
    }
    d.status.replicas = input.observed.values().map(|o| o.available_replicas).sum();
    d.status.selector = Some(crate::api::labels::selector(input.name));
    announce::record(input.status, &mut d.status, &d.notes, &d.now);

    let workloads = weights::workloads(input.spec, &d.status, input.observed, input.now);
    let canary_weight = d.status.canary.as_ref().map_or(0, |c| c.weight);
    Decision {
        workloads,
        canary_weight,
        status: d.status,
        notes: d.notes,
        requeue_after: d.requeue,
    }
}

/// A rollout still out when the spec goes back to revision `back_to` is
/// recorded as superseded, and lets go of its pods once stable is whole.
fn abandon_rollout(d: &mut Draft<'_>, stable: &RevisionStatus, back_to: i64) {
    if let Some(c) = d.status.canary.take() {
        let abandoned = c.revision_status();
        engine::keep_capacity_while_draining(d, &abandoned, stable);
        d.history(
            &abandoned,
            Outcome::Superseded,
            format!("the spec went back to revision {back_to}"),
        );
    }
}

/// Is an analysis run due now? The controller asks before reading metrics;
/// the decision then records the run so it is not counted twice.
pub fn analysis_due(
    spec: &ModelDeploymentSpec,
    valid: &ValidSpec,
    status: &ModelDeploymentStatus,
    now: Timestamp,
) -> bool {
    if let Some(c) = &status.canary {
        // A paused canary still takes traffic, so it is still judged; a
        // shadow is judged on the copies it gets.
        if c.weight == 0 && c.mirror == 0 {
            return false;
        }
        let last = status.analysis.as_ref().and_then(|a| a.last_time.as_ref());
        return last.is_none() || elapsed(last, now) >= valid.analysis_interval;
    }
    if let (Some(g), Some(interval)) = (&status.guard, valid.guard_interval) {
        if spec.guard.is_none() {
            return false;
        }
        let last = g.analysis.last_time.as_ref();
        return last.is_none() || elapsed(last, now) >= interval;
    }
    false
}

/// Count a run into the analysis status, once. Returns its verdict when it is new.
fn record_run(analysis: &mut AnalysisStatus, run: &AnalysisRun) -> Option<CheckVerdict> {
    if analysis.last_time.as_ref().is_some_and(|t| t.0 >= run.at) {
        return None;
    }
    let verdict = run.verdict();
    analysis.checks = run.checks.clone();
    analysis.last_time = Some(Time(run.at));
    match verdict {
        CheckVerdict::Pass => {
            analysis.passed_in_a_row += 1;
            analysis.failed_in_a_row = 0;
            analysis.inconclusive_in_a_row = 0;
        }
        CheckVerdict::Fail => {
            analysis.failed_in_a_row += 1;
            analysis.passed_in_a_row = 0;
            analysis.inconclusive_in_a_row = 0;
        }
        CheckVerdict::Inconclusive => {
            analysis.inconclusive_in_a_row += 1;
            analysis.passed_in_a_row = 0;
            analysis.failed_in_a_row = 0;
        }
    }
    Some(verdict)
}

/// The newest run's input drift goes to status, with the `DataDrift` condition.
fn record_drift(d: &mut Draft<'_>) {
    let Some(run) = d.input.analysis else {
        return;
    };
    let Some(drift) = run.drift.clone() else {
        return;
    };
    let drifted = d
        .input
        .spec
        .rollout
        .iter()
        .flat_map(|r| r.analysis.checks.iter())
        .chain(d.input.spec.guard.iter().flat_map(|g| g.checks.iter()))
        .filter(|c| c.input_drift.is_some())
        .any(|c| {
            run.checks
                .iter()
                .any(|r| r.name == c.name && r.verdict == CheckVerdict::Fail)
        });
    let message = match drift.features.first() {
        Some(f) if drifted => format!(
            "input feature {} drifted: {} {:.4}",
            f.name, f.method, f.score
        ),
        _ => "inputs match the reference".to_string(),
    };
    let reason = if drifted { "InputDrift" } else { "NoDrift" };
    conditions::set(
        &mut d.status.conditions,
        conditions::DATA_DRIFT,
        drifted,
        reason,
        message,
        d.input.generation,
        &d.now,
    );
    d.status.drift = Some(drift);
}

/// A drift check (input or prediction) that fails in this run but did not in
/// the run before is worth telling people about, once.
fn note_new_drift(d: &mut Draft<'_>) {
    let Some(run) = d.input.analysis else {
        return;
    };
    let spec = d.input.spec;
    let drift_checks: Vec<&crate::api::Check> = spec
        .rollout
        .iter()
        .flat_map(|r| r.analysis.checks.iter())
        .chain(spec.guard.iter().flat_map(|g| g.checks.iter()))
        .filter(|c| c.input_drift.is_some() || c.prediction_drift.is_some())
        .collect();
    let previous = d
        .input
        .status
        .analysis
        .iter()
        .chain(d.input.status.guard.iter().map(|g| &g.analysis));
    let failed_before = |name: &str| {
        previous
            .clone()
            .flat_map(|a| a.checks.iter())
            .any(|c| c.name == name && c.verdict == CheckVerdict::Fail)
    };
    let newly: Vec<String> = run
        .checks
        .iter()
        .filter(|c| c.verdict == CheckVerdict::Fail)
        .filter(|c| drift_checks.iter().any(|s| s.name == c.name))
        .filter(|c| !failed_before(&c.name))
        .map(|c| {
            let value = c.value.map_or("-".into(), |v| format!("{v:.4}"));
            let threshold = c.threshold.map_or("-".into(), |v| format!("{v}"));
            format!("check {} scored {value} (max {threshold})", c.name)
        })
        .collect();
    if !newly.is_empty() {
        d.note(EventKind::Warning, DRIFT_DETECTED, newly.join("; "));
    }
}

/// Reason of the event when a drift check starts failing.
pub const DRIFT_DETECTED: &str = "DriftDetected";

/// After a promotion the previous revision keeps its pods for `scaleDownDelay`.
fn scale_down_previous(d: &mut Draft<'_>) {
    if let Some(at) = d.status.previous_scale_down_at.clone() {
        if d.input.now >= at.0 {
            d.status.previous_scale_down_at = None;
        } else {
            let left = Duration::try_from(at.0.duration_since(d.input.now)).unwrap_or_default();
            d.requeue_within(left);
        }
    }
}

/// Phase, message and conditions follow from the state reached.
fn summarize(d: &mut Draft<'_>) {
    let stable = d.status.stable.clone().unwrap_or_default();
    let (phase, message) = if let Some(c) = d.status.canary.clone() {
        summarize_rollout(d, &c, &stable)
    } else if let Some(rb) = d.status.rolled_back.clone() {
        summarize_rolled_back(d, &rb, &stable)
    } else {
        summarize_settled(d, &stable)
    };
    d.status.phase = Some(phase);
    d.status.message = Some(message);
    summarize_ready(d, &stable);
}

/// Set the `Progressing` and `Degraded` conditions together.
fn set_progress(
    d: &mut Draft<'_>,
    progressing: bool,
    reason: &str,
    message: String,
    degraded: bool,
    degraded_reason: &str,
    degraded_message: String,
) {
    let (generation, now) = (d.input.generation, d.now.clone());
    let cs = &mut d.status.conditions;
    conditions::set(
        cs,
        conditions::PROGRESSING,
        progressing,
        reason,
        message,
        generation,
        &now,
    );
    // The same two facts under the names kstatus reads (Flux's health
    // checks, kubectl wait, cli-utils): Reconciling while a revision rolls
    // out, Stalled once one was rolled back or missed its deadline, so a
    // GitOps health check reports the rollback instead of a healthy object.
    conditions::set(
        cs,
        conditions::RECONCILING,
        progressing,
        reason,
        message_of(cs, conditions::PROGRESSING),
        generation,
        &now,
    );
    conditions::set(
        cs,
        conditions::DEGRADED,
        degraded,
        degraded_reason,
        degraded_message,
        generation,
        &now,
    );
    conditions::set(
        cs,
        conditions::STALLED,
        degraded,
        degraded_reason,
        message_of(cs, conditions::DEGRADED),
        generation,
        &now,
    );
}

fn message_of(
    cs: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition],
    type_: &str,
) -> String {
    conditions::get(cs, type_)
        .map(|c| c.message.clone())
        .unwrap_or_default()
}

/// A revision is rolling out: progressing, paused or promoting.
fn summarize_rollout(
    d: &mut Draft<'_>,
    c: &crate::api::CanaryStatus,
    stable: &RevisionStatus,
) -> (Phase, String) {
    let progressing = format!(
        "revision {} (version {}) is rolling out",
        c.revision, c.version
    );
    set_progress(
        d,
        true,
        "NewRevision",
        progressing,
        false,
        "Progressing",
        String::new(),
    );
    if let Some(reason) = c.paused {
        let why = match reason {
            crate::api::PauseReason::Step => gates::approval(d.input.name),
            crate::api::PauseReason::UserRequest => {
                "paused by `kubectl modeldeploy pause`".to_string()
            }
            crate::api::PauseReason::Inconclusive => format!(
                "analysis lacked data {} times in a row; `kubectl modeldeploy resume` to keep judging, `promote` or `abort` to decide",
                d.status
                    .analysis
                    .as_ref()
                    .map_or(0, |a| a.inconclusive_in_a_row)
            ),
        };
        let message = format!(
            "revision {} is paused at step {} with {}% of traffic: {why}",
            c.revision, c.step, c.weight
        );
        (Phase::Paused, message)
    } else if let Some(message) = gates::waiting(c) {
        (Phase::Progressing, message)
    } else if c.promoting {
        let message = format!(
            "revision {} passed its rollout and scales up to take over from revision {}",
            c.revision, stable.revision
        );
        (Phase::Promoting, message)
    } else if c.mirror > 0 && c.weight == 0 {
        let message = format!(
            "revision {} at step {} is shadowed: it gets a copy of {}% of requests and its answers are dropped; revision {} serves all traffic",
            c.revision, c.step, c.mirror, stable.revision
        );
        (Phase::Progressing, message)
    } else {
        let message = format!(
            "revision {} at step {} with {}% of traffic; revision {} serves the rest",
            c.revision, c.step, c.weight, stable.revision
        );
        (Phase::Progressing, message)
    }
}

/// The newest revision was rolled back; stable serves while the spec names it.
fn summarize_rolled_back(
    d: &mut Draft<'_>,
    rb: &RevisionStatus,
    stable: &RevisionStatus,
) -> (Phase, String) {
    let why = d
        .status
        .history
        .iter()
        .rev()
        .find(|h| h.revision == rb.revision && h.outcome == Outcome::RolledBack)
        .map(|h| h.reason.clone())
        .unwrap_or_default();
    set_progress(
        d,
        false,
        "RolledBack",
        format!("revision {} was rolled back", rb.revision),
        true,
        "RolledBack",
        format!(
            "revision {} (version {}) was rolled back: {why}",
            rb.revision, rb.version
        ),
    );
    let message = format!(
        "revision {} (version {}) was rolled back; revision {} serves. Change the spec or run `kubectl modeldeploy retry`",
        rb.revision, rb.version, stable.revision
    );
    (Phase::RolledBack, message)
}

/// No rollout: stable serves, or the first revision is still starting (or
/// missed its deadline).
fn summarize_settled(d: &mut Draft<'_>, stable: &RevisionStatus) -> (Phase, String) {
    let replicas = d.input.spec.replicas;
    let stable_obs = d.input.observed.get(&stable.hash);
    let stable_ready = reported_available(stable_obs, replicas);
    let first_revision = d.status.history.is_empty();
    if stable_ready || (d.input.status.phase == Some(Phase::Stable) && !first_revision) {
        if stable_ready && first_revision {
            d.history(
                stable,
                Outcome::Deployed,
                "first revision is available".into(),
            );
            d.note(
                EventKind::Normal,
                "Deployed",
                format!(
                    "revision {} (version {}) is available with {replicas} replicas",
                    stable.revision, stable.version
                ),
            );
        }
        let progressing = format!("revision {} is stable", stable.revision);
        set_progress(
            d,
            false,
            "Stable",
            progressing,
            false,
            "Stable",
            String::new(),
        );
        return (Phase::Stable, serving(stable, replicas));
    }
    let deadline_missed = stable_obs.is_some_and(|o| o.deadline_exceeded);
    if deadline_missed && d.input.status.phase != Some(Phase::Failed) {
        d.note(
            EventKind::Warning,
            "ProgressDeadlineExceeded",
            format!(
                "revision {} (version {}) is not available",
                stable.revision, stable.version
            ),
        );
    }
    let starting = format!("revision {} is starting", stable.revision);
    if deadline_missed {
        let reason = "ProgressDeadlineExceeded";
        set_progress(d, false, reason, starting, true, reason, String::new());
        let message = format!(
            "revision {} was not available within the progress deadline; its pods keep trying",
            stable.revision
        );
        return (Phase::Failed, message);
    }
    d.requeue_within(PROGRESS_POLL);
    set_progress(
        d,
        true,
        "NewRevision",
        starting,
        false,
        "NewRevision",
        String::new(),
    );
    let message = format!(
        "revision {} (version {}) is starting",
        stable.revision, stable.version
    );
    (Phase::Pending, message)
}

fn serving(stable: &RevisionStatus, replicas: i32) -> String {
    let what = if replicas == 0 {
        "is scaled to zero: no pods run"
    } else {
        "serves all traffic"
    };
    format!(
        "revision {} (version {}) {what}",
        stable.revision, stable.version
    )
}

/// `Ready` says whether stable has all its pods available.
fn summarize_ready(d: &mut Draft<'_>, stable: &RevisionStatus) {
    let replicas = d.input.spec.replicas;
    let stable_obs = d.input.observed.get(&stable.hash);
    let (ready, reason, message) = if replicas == 0 {
        (
            true,
            "ScaledToZero",
            format!(
                "spec.replicas is 0: revision {} runs no pods",
                stable.revision
            ),
        )
    } else if reported_available(stable_obs, replicas) {
        (
            true,
            "Available",
            format!(
                "revision {} has {replicas} available replicas",
                stable.revision
            ),
        )
    } else {
        (
            false,
            "Unavailable",
            format!(
                "revision {} has {} of {replicas} replicas available",
                stable.revision,
                stable_obs.map_or(0, |o| o.available_replicas)
            ),
        )
    };
    let (generation, now) = (d.input.generation, d.now.clone());
    conditions::set(
        &mut d.status.conditions,
        conditions::READY,
        ready,
        reason,
        message,
        generation,
        &now,
    );
}

/// A revision keeps its number while it is known; a new one gets the next.
fn revision_number(hash: &str, status: &ModelDeploymentStatus, observed: &Observed) -> i64 {
    let known = [
        status.stable.as_ref(),
        status.previous.as_ref(),
        status.rolled_back.as_ref(),
    ];
    if let Some(r) = known.into_iter().flatten().find(|r| r.hash == hash) {
        return r.revision;
    }
    if let Some(c) = status.canary.as_ref().filter(|c| c.hash == hash) {
        return c.revision;
    }
    if let Some(o) = observed.get(hash) {
        return o.revision;
    }
    status.latest_revision + 1
}

/// The status for a spec the operator refuses: nothing running is touched.
pub fn invalid_spec(
    old: &ModelDeploymentStatus,
    error: &InvalidSpec,
    generation: Option<i64>,
    now: Timestamp,
) -> ModelDeploymentStatus {
    let mut status = old.clone();
    status.observed_generation = generation;
    if status.stable.is_none() {
        status.phase = Some(Phase::Failed);
    }
    status.message = Some(format!("invalid spec: {error}"));
    conditions::set(
        &mut status.conditions,
        conditions::READY,
        false,
        "InvalidSpec",
        error.to_string(),
        generation,
        &Time(now),
    );
    let note = Note {
        kind: EventKind::Warning,
        reason: "InvalidSpec",
        message: error.to_string(),
    };
    announce::record(old, &mut status, &[note], &Time(now));
    status
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod canary_tests;

#[cfg(test)]
mod gates_tests;
