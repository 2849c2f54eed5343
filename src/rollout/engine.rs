//! The engine every strategy runs on: a new revision is started, its pods
//! and its analysis are judged, the strategy (`strategies`) moves it on, and
//! it is promoted or rolled back.

use std::time::Duration;

use crate::api::{
    AnalysisStatus, CanaryStatus, CheckVerdict, InconclusivePolicy, Outcome, PauseReason,
    RevisionStatus, RolloutSpec,
};

use super::{
    Draft, EventKind, ROLLED_BACK, available, record_run, reported_available, strategies, weights,
};

/// Move the rollout of `target` on as far as the observations allow: the
/// steps every strategy shares (health, deadline, judgement, promotion,
/// rollback) around the strategy's own.
pub(super) fn progress(d: &mut Draft<'_>, stable: &RevisionStatus, target: &RevisionStatus) {
    let strategy = strategies::for_spec(d.input.spec);
    let mut c = match d.status.canary.clone() {
        Some(c) if c.hash == target.hash => c,
        superseded => start(d, superseded, stable, target, !strategy.judged()),
    };
    c.weight = weights::achieved(d.input.spec, &c, stable, d.input.observed);
    c.mirror = weights::mirrored(d.input.spec, &c, d.input.observed);
    let rollout = d.input.spec.rollout.as_ref();
    let outcome = unhealthy(d, &c)
        .map_or(Ok(()), Err)
        .and_then(|()| rollout.map_or(Ok(()), |r| judge(d, &mut c, r)))
        .and_then(|()| super::gates::judge(d, &mut c))
        .and_then(|held| match held {
            // A preRollout gate keeps the revision at zero pods and traffic.
            true => Ok(()),
            false => strategy.advance(d, &mut c, rollout),
        });
    if let Err(why) = outcome {
        return roll_back(d, &c, stable, why);
    }
    // A step may have moved the shares: report what is carried now.
    c.weight = weights::achieved(d.input.spec, &c, stable, d.input.observed);
    c.mirror = weights::mirrored(d.input.spec, &c, d.input.observed);
    if c.promoting {
        if available(
            d.input.observed.get(&c.hash),
            weights::canary_replicas(d.input.spec, &c),
        ) {
            return promote(d, &c, stable, strategy.judged());
        }
        d.requeue_within(super::PROGRESS_POLL);
    }
    look_again(d, &c);
    d.status.canary = Some(c);
}

/// Why the new revision's pods rule it out: unhealthy pods, or pods not
/// available within the progress deadline.
fn unhealthy(d: &Draft<'_>, c: &CanaryStatus) -> Option<String> {
    let input = d.input;
    if let Some(why) = input.canary_pods_failure {
        return Some(format!(
            "check restarts failed, canary pods are unhealthy: {why}"
        ));
    }
    let size = weights::canary_replicas(input.spec, c);
    let observed = input.observed.get(&c.hash);
    let since_resize = d.elapsed_since(c.step_started_at.as_ref());
    let late = since_resize >= input.valid.progress_deadline
        || observed.is_some_and(|o| o.deadline_exceeded);
    (!reported_available(observed, size) && late).then(|| {
        format!(
            "{size} canary pods were not available within the progress deadline of {}s",
            input.valid.progress_deadline.as_secs()
        )
    })
}

/// Count the newest analysis run: too many failures roll back, too little
/// data pauses (or rolls back, by policy), passing evidence ends such a pause.
fn judge(d: &mut Draft<'_>, c: &mut CanaryStatus, rollout: &RolloutSpec) -> Result<(), String> {
    let Some(run) = d.input.analysis else {
        return Ok(());
    };
    let analysis = d
        .status
        .analysis
        .get_or_insert_with(AnalysisStatus::default);
    let limits = &rollout.analysis;
    match record_run(analysis, run) {
        Some(CheckVerdict::Fail) if run.decisive => {
            Err(format!("analysis failed decisively: {}", run.failures()))
        }
        Some(CheckVerdict::Fail) if analysis.failed_in_a_row >= limits.failure_limit => {
            Err(format!(
                "analysis failed {} times in a row: {}",
                analysis.failed_in_a_row,
                run.failures()
            ))
        }
        Some(CheckVerdict::Inconclusive)
            if analysis.inconclusive_in_a_row >= limits.inconclusive_limit =>
        {
            let n = analysis.inconclusive_in_a_row;
            match limits.inconclusive_policy {
                InconclusivePolicy::Rollback => {
                    Err(format!("analysis lacked data {n} times in a row"))
                }
                InconclusivePolicy::Pause if c.paused.is_none() => {
                    c.paused = Some(PauseReason::Inconclusive);
                    d.note(
                        EventKind::Warning,
                        "AnalysisInconclusive",
                        format!(
                            "revision {} paused: analysis lacked data {n} times in a row",
                            c.revision
                        ),
                    );
                    Ok(())
                }
                InconclusivePolicy::Pause => Ok(()),
            }
        }
        // The pause was for want of evidence; evidence that passes ends it.
        Some(CheckVerdict::Pass) if c.paused == Some(PauseReason::Inconclusive) => {
            c.paused = None;
            d.note(
                EventKind::Normal,
                "AnalysisResumed",
                format!(
                    "revision {} resumed: the analysis has data now and it passed",
                    c.revision
                ),
            );
            Ok(())
        }
        _ => Ok(()),
    }
}

/// When to look again with no watch event: the next analysis run while the
/// new revision takes traffic, and its pods' deadline while they start.
fn look_again(d: &mut Draft<'_>, c: &CanaryStatus) {
    let input = d.input;
    // A shadow is judged on the requests copied to it.
    if c.weight > 0 || c.mirror > 0 {
        d.requeue_within(input.valid.analysis_interval);
    }
    let size = weights::canary_replicas(input.spec, c);
    if !available(input.observed.get(&c.hash), size) {
        let since_resize = d.elapsed_since(c.step_started_at.as_ref());
        d.requeue_within(
            super::PROGRESS_POLL.min(input.valid.progress_deadline.saturating_sub(since_resize)),
        );
    }
}

fn start(
    d: &mut Draft<'_>,
    superseded: Option<CanaryStatus>,
    stable: &RevisionStatus,
    target: &RevisionStatus,
    replace: bool,
) -> CanaryStatus {
    if let Some(old) = superseded {
        keep_capacity_while_draining(d, &old.revision_status(), stable);
        d.history(
            &old.revision_status(),
            Outcome::Superseded,
            format!("revision {} arrived before it finished", target.revision),
        );
        d.note(
            EventKind::Normal,
            "Superseded",
            format!(
                "revision {} is abandoned: revision {} arrived",
                old.revision, target.revision
            ),
        );
    }
    let how = if replace {
        "replaces"
    } else {
        "starts a rollout next to"
    };
    d.note(
        EventKind::Normal,
        "RolloutStarted",
        format!(
            "revision {} (version {}) {how} revision {} (version {})",
            target.revision, target.version, stable.revision, stable.version
        ),
    );
    // A new rollout ends the guard of the previous promotion and starts a
    // fresh analysis record.
    d.status.guard = None;
    d.status.analysis = (!replace).then(AnalysisStatus::default);
    d.status.ab_test = None;
    CanaryStatus {
        revision: target.revision,
        version: target.version.clone(),
        image: target.image.clone(),
        hash: target.hash.clone(),
        weight: 0,
        set_weight: 0,
        step: 0,
        step_started_at: Some(d.now.clone()),
        started_at: Some(d.now.clone()),
        paused: None,
        promoting: replace,
        set_mirror: 0,
        mirror: 0,
        gates: Vec::new(),
    }
}

fn promote(d: &mut Draft<'_>, c: &CanaryStatus, stable: &RevisionStatus, judged: bool) {
    let new = c.revision_status();
    let (outcome, reason) = if judged {
        (
            Outcome::Promoted,
            format!("passed its rollout; replaced revision {}", stable.revision),
        )
    } else {
        (
            Outcome::Replaced,
            format!("replaced revision {}", stable.revision),
        )
    };
    d.history(&new, outcome, reason);
    d.note(
        EventKind::Normal,
        if judged { "Promoted" } else { "Replaced" },
        format!(
            "revision {} (version {}) serves all traffic; revision {} scales down",
            new.revision, new.version, stable.revision
        ),
    );
    let delay = d
        .input
        .spec
        .rollout
        .as_ref()
        .map(|_| d.input.valid.scale_down_delay)
        .unwrap_or(Duration::ZERO);
    d.status.previous_scale_down_at = (!delay.is_zero())
        .then(|| d.input.now.checked_add(delay).ok())
        .flatten()
        .map(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time);
    d.status.previous = Some(stable.clone());
    d.status.stable = Some(new.clone());
    d.status.canary = None;
    d.status.rolled_back = None;
    super::guard::arm(d, &new);
}

/// Canary traffic to zero at once; the stable revision serves everything.
pub(super) fn roll_back(d: &mut Draft<'_>, c: &CanaryStatus, stable: &RevisionStatus, why: String) {
    let rev = c.revision_status();
    // Say so when users were never affected: it only got copies.
    let why = if c.mirror > 0 && c.weight == 0 {
        format!("{why} (as a shadow: it answered no user request)")
    } else {
        why
    };
    d.history(&rev, Outcome::RolledBack, why.clone());
    d.note(
        EventKind::Warning,
        ROLLED_BACK,
        format!(
            "revision {} (version {}) rolled back: {why}; revision {} serves",
            rev.revision, rev.version, stable.revision
        ),
    );
    keep_capacity_while_draining(d, &rev, stable);
    d.status.rolled_back = Some(rev);
    d.status.canary = None;
}

/// With the replicas router a revision that stops serving holds its pods
/// until stable is back at full size (see `weights::draining_replicas`):
/// taking them at once would drop the fleet below `spec.replicas`.
pub(super) fn keep_capacity_while_draining(
    d: &mut Draft<'_>,
    leaving: &RevisionStatus,
    stable: &RevisionStatus,
) {
    let spec = d.input.spec;
    if weights::drains(spec)
        && d.status.draining.is_none()
        && !available(d.input.observed.get(&stable.hash), spec.replicas)
    {
        d.status.draining = Some(leaving.clone());
    }
}
