//! `strategy: canary`: Argo-style steps (`setWeight`, `pause`, `analysis`),
//! then promotion once the newest analysis run passed.

use crate::api::{CanaryStatus, CheckVerdict, PauseReason, RolloutSpec};

use super::super::{Draft, EventKind, weights};
use super::Strategy;

pub(crate) struct Canary;

impl Strategy for Canary {
    fn judged(&self) -> bool {
        true
    }

    fn advance(
        &self,
        d: &mut Draft<'_>,
        c: &mut CanaryStatus,
        rollout: Option<&RolloutSpec>,
    ) -> Result<(), String> {
        if let Some(rollout) = rollout
            && c.paused.is_none()
            && !c.promoting
        {
            advance_steps(d, c, rollout);
        }
        Ok(())
    }
}

/// Complete every step whose condition already holds; stop at the first that
/// does not, so deciding again on the result changes nothing.
fn advance_steps(d: &mut Draft<'_>, c: &mut CanaryStatus, rollout: &RolloutSpec) {
    let input = d.input;
    loop {
        let index = usize::try_from(c.step).unwrap_or(0);
        let Some(step) = rollout.steps.get(index) else {
            if ready_to_promote(d, rollout) && !super::super::gates::hold_promotion(d, c) {
                c.promoting = true;
                c.step_started_at = Some(d.now.clone());
                d.note(
                    EventKind::Normal,
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
            // Live traffic ends a shadow's copies at once.
            if c.set_weight != w || c.set_mirror != 0 {
                c.set_weight = w;
                (c.set_mirror, c.mirror) = (0, 0);
                c.step_started_at = Some(d.now.clone());
            }
            weights::reached(input.spec, c, input.observed, d.status.stable.as_ref())
        } else if let Some(m) = &step.set_mirror {
            mirror_step(d, c, m.percent)
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
            EventKind::Normal,
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

/// A `setMirror` step copies `percent` of requests to the canary while its
/// weight stays as it is (0: validation puts shadows before live traffic);
/// done once its pods carry the copies.
fn mirror_step(d: &mut Draft<'_>, c: &mut CanaryStatus, percent: i32) -> bool {
    if c.set_mirror != percent {
        c.set_mirror = percent;
        c.step_started_at = Some(d.now.clone());
    }
    let input = d.input;
    weights::reached(input.spec, c, input.observed, d.status.stable.as_ref())
}

fn describe_step(step: &crate::api::CanaryStep) -> String {
    if let Some(w) = step.set_weight {
        format!("setWeight {w}")
    } else if let Some(m) = &step.set_mirror {
        format!("setMirror {}%", m.percent)
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
