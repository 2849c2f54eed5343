//! The rollout state machine: (spec, status, observations, now) -> decision.
//! No I/O. The same inputs always give the same decision, and feeding a
//! decision's status back in changes nothing, so a restarted operator resumes
//! where it was and an object at rest causes no writes.
//!
//! Without `spec.rollout`, a new revision replaces the running one: its
//! Deployment starts at full size next to the old one, and once it is available
//! the old one scales to zero. A revision that is not available within the
//! progress deadline is rolled back.

pub mod conditions;

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

use crate::api::{
    CanaryStatus, HistoryEntry, InvalidSpec, ModelDeploymentSpec, ModelDeploymentStatus, Outcome,
    Phase, RevisionStatus, ValidSpec,
};
use crate::resources::{RevisionWorkload, revision_hash};

/// What the operator sees of one revision's Deployment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ObservedRevision {
    pub revision: i64,
    pub version: String,
    pub image: String,
    pub replicas: i32,
    pub available_replicas: i32,
    /// The Deployment controller has seen the newest Deployment spec.
    pub up_to_date: bool,
    /// The Deployment controller reports `ProgressDeadlineExceeded`.
    pub deadline_exceeded: bool,
}

/// Owned Deployments by revision hash.
pub type Observed = BTreeMap<String, ObservedRevision>;

pub struct Input<'a> {
    pub spec: &'a ModelDeploymentSpec,
    pub valid: &'a ValidSpec,
    pub generation: Option<i64>,
    pub status: &'a ModelDeploymentStatus,
    pub observed: &'a Observed,
    pub now: Timestamp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoteKind {
    Normal,
    Warning,
}

/// Something a person would want to see in `kubectl describe`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    pub kind: NoteKind,
    pub reason: &'static str,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// Every revision Deployment that should exist, with its size. Owned
    /// Deployments not listed here are deleted.
    pub workloads: Vec<RevisionWorkload>,
    pub status: ModelDeploymentStatus,
    pub notes: Vec<Note>,
    /// When to look again even if nothing changes (deadlines, timed steps).
    pub requeue_after: Option<Duration>,
}

/// How often a revision in progress is looked at when no watch event arrives.
const PROGRESS_POLL: Duration = Duration::from_secs(30);

fn available(obs: Option<&ObservedRevision>, replicas: i32) -> bool {
    obs.is_some_and(|o| o.up_to_date && o.replicas == replicas && o.available_replicas >= replicas)
}

fn history_entry(
    rev: &RevisionStatus,
    outcome: Outcome,
    reason: String,
    now: &Time,
) -> HistoryEntry {
    HistoryEntry {
        revision: rev.revision,
        version: rev.version.clone(),
        image: rev.image.clone(),
        at: now.clone(),
        outcome,
        reason,
    }
}

fn push_history(status: &mut ModelDeploymentStatus, entry: HistoryEntry, limit: i32) {
    status.history.push(entry);
    let limit = usize::try_from(limit.max(1)).unwrap_or(1);
    if status.history.len() > limit {
        let excess = status.history.len() - limit;
        status.history.drain(..excess);
    }
}

fn elapsed(since: Option<&Time>, now: Timestamp) -> Duration {
    since
        .and_then(|t| Duration::try_from(now.duration_since(t.0)).ok())
        .unwrap_or_default()
}

/// Decide what should run and what the status says.
pub fn decide(input: &Input<'_>) -> Decision {
    let Input {
        spec,
        valid,
        generation,
        status: old,
        observed,
        now,
    } = *input;
    let now_time = Time(now);
    let mut status = old.clone();
    let mut notes = Vec::new();
    let mut requeue_after = None;
    status.observed_generation = generation;

    let hash = revision_hash(spec);
    let target = RevisionStatus {
        revision: revision_number(&hash, old, observed),
        version: spec.model.version.clone(),
        image: spec.model.image.clone(),
        hash: hash.clone(),
    };
    status.latest_revision = status.latest_revision.max(target.revision);
    let replicas = spec.replicas;

    match old.stable.clone() {
        // The first revision: it is the stable one from the start.
        None => {
            status.stable = Some(target.clone());
        }
        Some(stable) if stable.hash == hash => {
            status.canary = None;
            status.rolled_back = None;
        }
        Some(_) if old.rolled_back.as_ref().is_some_and(|r| r.hash == hash) => {
            // Keep serving the previous revision until the spec moves on.
            status.canary = None;
        }
        Some(stable) => {
            let canary = match &old.canary {
                Some(c) if c.hash == hash => c.clone(),
                superseded => {
                    if let Some(c) = superseded {
                        let rev = RevisionStatus {
                            revision: c.revision,
                            version: c.version.clone(),
                            image: c.image.clone(),
                            hash: c.hash.clone(),
                        };
                        push_history(
                            &mut status,
                            history_entry(
                                &rev,
                                Outcome::Superseded,
                                format!("revision {} arrived before it finished", target.revision),
                                &now_time,
                            ),
                            spec.revision_history_limit,
                        );
                    }
                    notes.push(Note {
                        kind: NoteKind::Normal,
                        reason: "RevisionStarted",
                        message: format!(
                            "revision {} (version {}) starts replacing revision {} (version {})",
                            target.revision, target.version, stable.revision, stable.version
                        ),
                    });
                    CanaryStatus {
                        revision: target.revision,
                        version: target.version.clone(),
                        image: target.image.clone(),
                        hash: hash.clone(),
                        weight: 0,
                        step: 0,
                        step_started_at: Some(now_time.clone()),
                        started_at: Some(now_time.clone()),
                    }
                }
            };
            let obs = observed.get(&hash);
            let waited = elapsed(canary.started_at.as_ref(), now);
            if available(obs, replicas) {
                push_history(
                    &mut status,
                    history_entry(
                        &target,
                        Outcome::Replaced,
                        format!("replaced revision {}", stable.revision),
                        &now_time,
                    ),
                    spec.revision_history_limit,
                );
                notes.push(Note {
                    kind: NoteKind::Normal,
                    reason: "Replaced",
                    message: format!(
                        "revision {} (version {}) is available and serves all traffic; revision {} scales down",
                        target.revision, target.version, stable.revision
                    ),
                });
                status.previous = Some(stable);
                status.stable = Some(target.clone());
                status.canary = None;
            } else if waited >= valid.progress_deadline || obs.is_some_and(|o| o.deadline_exceeded)
            {
                let reason = format!(
                    "revision {} was not available within the progress deadline of {}s",
                    target.revision,
                    valid.progress_deadline.as_secs()
                );
                push_history(
                    &mut status,
                    history_entry(&target, Outcome::RolledBack, reason.clone(), &now_time),
                    spec.revision_history_limit,
                );
                notes.push(Note {
                    kind: NoteKind::Warning,
                    reason: "RolledBack",
                    message: format!("{reason}; revision {} keeps serving", stable.revision),
                });
                status.rolled_back = Some(target.clone());
                status.canary = None;
            } else {
                let ready_new = obs.map_or(0, |o| o.available_replicas);
                let ready_old = observed
                    .get(&stable.hash)
                    .map_or(0, |o| o.available_replicas);
                let total = ready_new + ready_old;
                let weight = if total == 0 {
                    0
                } else {
                    ready_new * 100 / total
                };
                status.canary = Some(CanaryStatus { weight, ..canary });
                let left = valid.progress_deadline.saturating_sub(waited);
                requeue_after = Some(left.min(PROGRESS_POLL));
            }
        }
    }

    let workloads = workloads(spec, &status, observed, replicas);
    let stable = status.stable.clone().unwrap_or_default();
    let stable_ready = available(observed.get(&stable.hash), replicas);
    let first_revision = status.history.is_empty();

    // Phase and conditions follow from the state reached above.

    let c = &mut status.conditions;
    if status.canary.is_some() {
        status.phase = Some(Phase::Progressing);
        status.message = Some(format!(
            "revision {} is starting; revision {} serves",
            target.revision, stable.revision
        ));
        conditions::set(
            c,
            conditions::PROGRESSING,
            true,
            "NewRevision",
            format!("revision {} is rolling out", target.revision),
            generation,
            &now_time,
        );
    } else if let Some(rb) = status.rolled_back.clone() {
        status.phase = Some(Phase::RolledBack);
        status.message = Some(format!(
            "revision {} (version {}) was rolled back; revision {} serves",
            rb.revision, rb.version, stable.revision
        ));
        conditions::set(
            c,
            conditions::PROGRESSING,
            false,
            "RolledBack",
            format!("revision {} was rolled back", rb.revision),
            generation,
            &now_time,
        );
        conditions::set(
            c,
            conditions::DEGRADED,
            true,
            "RolledBack",
            format!(
                "revision {} (version {}) was rolled back",
                rb.revision, rb.version
            ),
            generation,
            &now_time,
        );
    } else if stable_ready {
        if first_revision && old.phase != Some(Phase::Stable) {
            push_history(
                &mut status,
                history_entry(
                    &stable,
                    Outcome::Deployed,
                    "first revision is available".into(),
                    &now_time,
                ),
                spec.revision_history_limit,
            );
            notes.push(Note {
                kind: NoteKind::Normal,
                reason: "Deployed",
                message: format!(
                    "revision {} (version {}) is available with {replicas} replicas",
                    stable.revision, stable.version
                ),
            });
        }
        status.phase = Some(Phase::Stable);
        status.message = Some(format!(
            "revision {} (version {}) serves all traffic",
            stable.revision, stable.version
        ));
        let c = &mut status.conditions;
        conditions::set(
            c,
            conditions::PROGRESSING,
            false,
            "Stable",
            format!("revision {} is stable", stable.revision),
            generation,
            &now_time,
        );
        conditions::set(
            c,
            conditions::DEGRADED,
            false,
            "Stable",
            "",
            generation,
            &now_time,
        );
    } else if old.stable.is_none()
        || old.phase == Some(Phase::Pending)
        || old.phase.is_none()
        || old.phase == Some(Phase::Failed)
    {
        let deadline_missed = observed
            .get(&stable.hash)
            .is_some_and(|o| o.deadline_exceeded);
        if deadline_missed {
            status.phase = Some(Phase::Failed);
            status.message = Some(format!(
                "revision {} was not available within the progress deadline; its pods keep trying",
                stable.revision
            ));
            if old.phase != Some(Phase::Failed) {
                notes.push(Note {
                    kind: NoteKind::Warning,
                    reason: "ProgressDeadlineExceeded",
                    message: format!(
                        "revision {} (version {}) is not available",
                        stable.revision, stable.version
                    ),
                });
            }
        } else {
            status.phase = Some(Phase::Pending);
            status.message = Some(format!(
                "revision {} (version {}) is starting",
                stable.revision, stable.version
            ));
            requeue_after = Some(PROGRESS_POLL);
        }
        conditions::set(
            c,
            conditions::PROGRESSING,
            !deadline_missed,
            if deadline_missed {
                "ProgressDeadlineExceeded"
            } else {
                "NewRevision"
            },
            format!("revision {} is starting", stable.revision),
            generation,
            &now_time,
        );
        conditions::set(
            c,
            conditions::DEGRADED,
            deadline_missed,
            if deadline_missed {
                "ProgressDeadlineExceeded"
            } else {
                "Starting"
            },
            "",
            generation,
            &now_time,
        );
    } else {
        // Stable revision lost pods after it was available: keep the phase,
        // Ready says the rest.
        status.phase = old.phase.or(Some(Phase::Stable));
    }

    let stable_obs = observed.get(&stable.hash);
    let (ready, reason, message) = if stable_ready {
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
    conditions::set(
        &mut status.conditions,
        conditions::READY,
        ready,
        reason,
        message,
        generation,
        &now_time,
    );

    Decision {
        workloads,
        status,
        notes,
        requeue_after,
    }
}

/// A revision keeps its number while its Deployment exists; a new one gets the next.
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

/// Deployments to keep: stable and canary sized, the rest at zero up to the
/// history limit, newest first.
fn workloads(
    spec: &ModelDeploymentSpec,
    status: &ModelDeploymentStatus,
    observed: &Observed,
    replicas: i32,
) -> Vec<RevisionWorkload> {
    let mut out = Vec::new();
    let mut push = |hash: &str, revision: i64, version: &str, replicas: i32| {
        if !out.iter().any(|w: &RevisionWorkload| w.hash == hash) {
            out.push(RevisionWorkload {
                hash: hash.to_string(),
                revision,
                version: version.to_string(),
                replicas,
            });
        }
    };
    if let Some(s) = &status.stable {
        push(&s.hash, s.revision, &s.version, replicas);
    }
    if let Some(c) = &status.canary {
        push(&c.hash, c.revision, &c.version, replicas);
    }
    let mut older: Vec<_> = observed.iter().collect();
    older.sort_by_key(|(_, o)| std::cmp::Reverse(o.revision));
    let keep = usize::try_from(spec.revision_history_limit.max(0)).unwrap_or(0);
    for (hash, o) in older
        .into_iter()
        .filter(|(h, _)| !out_contains(status, h))
        .take(keep)
    {
        push(hash, o.revision, &o.version, 0);
    }
    out
}

fn out_contains(status: &ModelDeploymentStatus, hash: &str) -> bool {
    status.stable.as_ref().is_some_and(|s| s.hash == hash)
        || status.canary.as_ref().is_some_and(|c| c.hash == hash)
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
    status
}

#[cfg(test)]
mod tests;
