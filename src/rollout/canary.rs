//! A new revision earning its traffic: steps, analysis, promotion, rollback.

use std::time::Duration;

use crate::analysis::abtest::Winner;
use crate::api::{
    AbSamples, AbTestStatus, AnalysisStatus, CanaryStatus, CheckVerdict, InconclusivePolicy,
    Outcome, PauseReason, RevisionStatus, RolloutSpec, Strategy,
};

use super::{Draft, NoteKind, ROLLED_BACK, available, record_run, weights};

/// Move the rollout of `target` on as far as the observations allow.
pub(super) fn progress(d: &mut Draft<'_>, stable: &RevisionStatus, target: &RevisionStatus) {
    let input = d.input;
    let rollout = input.spec.rollout.as_ref();
    let mut c = match d.status.canary.clone() {
        Some(c) if c.hash == target.hash => c,
        superseded => start(d, superseded, stable, target, rollout.is_none()),
    };
    let replicas = input.spec.replicas;
    c.weight = weights::achieved(input.spec, &c, stable, input.observed);

    if let Some(why) = input.canary_pods_failure {
        return roll_back(
            d,
            &c,
            stable,
            format!("check restarts failed, canary pods are unhealthy: {why}"),
        );
    }
    let canary_size = weights::canary_replicas(input.spec, &c);
    let canary_obs = input.observed.get(&c.hash);
    let since_resize = d.elapsed_since(c.step_started_at.as_ref());
    if !available(canary_obs, canary_size)
        && (since_resize >= input.valid.progress_deadline
            || canary_obs.is_some_and(|o| o.deadline_exceeded))
    {
        return roll_back(
            d,
            &c,
            stable,
            format!(
                "{canary_size} canary pods were not available within the progress deadline of {}s",
                input.valid.progress_deadline.as_secs()
            ),
        );
    }

    if let (Some(rollout), Some(run)) = (rollout, input.analysis) {
        let analysis = d
            .status
            .analysis
            .get_or_insert_with(AnalysisStatus::default);
        match record_run(analysis, run) {
            Some(CheckVerdict::Fail)
                if run.decisive || analysis.failed_in_a_row >= rollout.analysis.failure_limit =>
            {
                let why = if run.decisive {
                    format!("analysis failed decisively: {}", run.failures())
                } else {
                    format!(
                        "analysis failed {} times in a row: {}",
                        analysis.failed_in_a_row,
                        run.failures()
                    )
                };
                return roll_back(d, &c, stable, why);
            }
            Some(CheckVerdict::Inconclusive)
                if analysis.inconclusive_in_a_row >= rollout.analysis.inconclusive_limit =>
            {
                let n = analysis.inconclusive_in_a_row;
                match rollout.analysis.inconclusive_policy {
                    InconclusivePolicy::Rollback => {
                        return roll_back(
                            d,
                            &c,
                            stable,
                            format!("analysis lacked data {n} times in a row"),
                        );
                    }
                    InconclusivePolicy::Pause if c.paused.is_none() => {
                        c.paused = Some(PauseReason::Inconclusive);
                        d.note(
                            NoteKind::Warning,
                            "AnalysisInconclusive",
                            format!(
                                "revision {} paused: analysis lacked data {n} times in a row",
                                c.revision
                            ),
                        );
                    }
                    InconclusivePolicy::Pause => {}
                }
            }
            // The pause was for want of evidence; evidence that passes ends it.
            Some(CheckVerdict::Pass) if c.paused == Some(PauseReason::Inconclusive) => {
                c.paused = None;
                d.note(
                    NoteKind::Normal,
                    "AnalysisResumed",
                    format!(
                        "revision {} resumed: the analysis has data now and it passed",
                        c.revision
                    ),
                );
            }
            _ => {}
        }
    }

    if let Some(rollout) = rollout
        && rollout.strategy == Strategy::AbTest
    {
        if let Err(why) = ab_test(d, &mut c, rollout) {
            return roll_back(d, &c, stable, why);
        }
    } else if let Some(rollout) = rollout
        && c.paused.is_none()
        && !c.promoting
    {
        advance_steps(d, &mut c, rollout);
    }

    if c.promoting {
        if available(input.observed.get(&c.hash), replicas) {
            return promote(d, &c, stable, rollout.is_some());
        }
        d.requeue_within(super::PROGRESS_POLL);
    }
    if c.weight > 0 {
        // The next analysis run, paused or not: the canary takes traffic.
        d.requeue_within(input.valid.analysis_interval);
    }
    if !available(canary_obs, canary_size) {
        d.requeue_within(
            super::PROGRESS_POLL.min(input.valid.progress_deadline.saturating_sub(since_resize)),
        );
    }
    d.status.canary = Some(c);
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
            NoteKind::Normal,
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
        NoteKind::Normal,
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
    }
}

/// An A/B test: a fixed split until the objective is decided. The candidate
/// wins -> promotion; stable wins or `maxDuration` passes undecided -> stable
/// stays (returned as the reason to end the test).
fn ab_test(d: &mut Draft<'_>, c: &mut CanaryStatus, rollout: &RolloutSpec) -> Result<(), String> {
    let Some(ab) = rollout.ab_test.as_ref() else {
        return Ok(());
    };
    if c.promoting {
        return Ok(());
    }
    let weight = ab.weight.unwrap_or(50);
    if c.set_weight != weight {
        c.set_weight = weight;
    }
    if let Some(run) = d.input.analysis
        && let Some(cmp) = &run.ab
        && d.status
            .analysis
            .as_ref()
            .and_then(|a| a.last_time.as_ref())
            .is_some_and(|t| t.0 == run.at)
    {
        let winner = cmp.winner.map(|w| match w {
            Winner::Candidate => "candidate".to_string(),
            Winner::Stable => "stable".to_string(),
        });
        d.status.ab_test = Some(AbTestStatus {
            winner: winner.clone(),
            p_value: cmp.p_value,
            effect: cmp.effect,
            samples: Some(AbSamples {
                stable: i64::try_from(cmp.samples_stable).unwrap_or(i64::MAX),
                candidate: i64::try_from(cmp.samples_candidate).unwrap_or(i64::MAX),
            }),
        });
        let safe = run.verdict() == CheckVerdict::Pass || rollout.analysis.checks.is_empty();
        match cmp.winner {
            Some(Winner::Candidate) if safe => {
                c.promoting = true;
                c.step_started_at = Some(d.now.clone());
                d.note(
                    NoteKind::Normal,
                    "ABTestDecided",
                    format!("revision {} won the A/B test: {}", c.revision, cmp.message),
                );
                return Ok(());
            }
            Some(Winner::Stable) => {
                return Err(format!(
                    "A/B test: the stable revision is better ({})",
                    cmp.message
                ));
            }
            _ => {}
        }
    }
    if let Some(max) = d.input.valid.ab_max_duration {
        let ran = d.elapsed_since(c.started_at.as_ref());
        if ran >= max {
            if let Some(s) = d.status.ab_test.as_mut() {
                s.winner = Some("none".into());
            }
            return Err(format!(
                "A/B test undecided after {}s; the stable revision stays",
                max.as_secs()
            ));
        }
        d.requeue_within(max - ran);
    }
    Ok(())
}

/// Complete every step whose condition already holds; stop at the first that
/// does not, so deciding again on the result changes nothing.
fn advance_steps(d: &mut Draft<'_>, c: &mut CanaryStatus, rollout: &RolloutSpec) {
    let input = d.input;
    loop {
        let index = usize::try_from(c.step).unwrap_or(0);
        let Some(step) = rollout.steps.get(index) else {
            if ready_to_promote(d, rollout) {
                c.promoting = true;
                c.step_started_at = Some(d.now.clone());
                d.note(
                    NoteKind::Normal,
                    "Promoting",
                    format!(
                        "revision {} passed all {} steps and scales up to take over",
                        c.revision,
                        rollout.steps.len()
                    ),
                );
            }
            return;
        };
        let done = if let Some(w) = step.set_weight {
            if c.set_weight != w {
                c.set_weight = w;
                c.step_started_at = Some(d.now.clone());
            }
            weights::reached(input.spec, c, input.observed, d.status.stable.as_ref())
        } else if step.pause.is_some() {
            match input.valid.pause_durations.get(index).copied().flatten() {
                Some(duration) => {
                    let waited = d.elapsed_since(c.step_started_at.as_ref());
                    if waited < duration {
                        d.requeue_within(duration - waited);
                    }
                    waited >= duration
                }
                None => {
                    c.paused = Some(PauseReason::Step);
                    return;
                }
            }
        } else {
            let needed = step.analysis.as_ref().and_then(|a| a.passes).unwrap_or(1);
            d.status
                .analysis
                .as_ref()
                .is_some_and(|a| a.passed_in_a_row >= needed)
        };
        if !done {
            return;
        }
        c.step += 1;
        c.step_started_at = Some(d.now.clone());
        if rollout
            .steps
            .get(index + 1)
            .is_some_and(|s| s.analysis.is_some())
        {
            // An analysis step wants passes made while it is the current step.
            if let Some(a) = d.status.analysis.as_mut() {
                a.passed_in_a_row = 0;
            }
        }
        d.note(
            NoteKind::Normal,
            "StepCompleted",
            format!(
                "revision {}: step {}/{} done ({}), canary at {}%",
                c.revision,
                index + 1,
                rollout.steps.len(),
                describe_step(step),
                c.weight
            ),
        );
    }
}

fn describe_step(step: &crate::api::CanaryStep) -> String {
    if let Some(w) = step.set_weight {
        format!("setWeight {w}")
    } else if let Some(p) = &step.pause {
        match &p.duration {
            Some(d) => format!("pause {d}"),
            None => "pause".into(),
        }
    } else {
        "analysis".into()
    }
}

/// Promotion needs the newest analysis run to have passed every check, when
/// there are checks: never on a failed, inconclusive or missing judgement.
fn ready_to_promote(d: &mut Draft<'_>, rollout: &RolloutSpec) -> bool {
    if rollout.analysis.checks.is_empty() {
        return true;
    }
    let passed = d.status.analysis.as_ref().is_some_and(|a| {
        !a.checks.is_empty() && a.checks.iter().all(|c| c.verdict == CheckVerdict::Pass)
    });
    if !passed {
        d.requeue_within(d.input.valid.analysis_interval);
    }
    passed
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
        NoteKind::Normal,
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
    d.history(&rev, Outcome::RolledBack, why.clone());
    d.note(
        NoteKind::Warning,
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
fn keep_capacity_while_draining(
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
