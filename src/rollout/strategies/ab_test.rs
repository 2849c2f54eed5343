//! `strategy: abTest`: a fixed split until the objective is decided.

use crate::analysis::abtest::Winner;
use crate::api::{AbSamples, AbTestStatus, CanaryStatus, CheckVerdict, RolloutSpec};

use super::super::{Draft, EventKind};
use super::Strategy;

pub(crate) struct AbTest;

impl Strategy for AbTest {
    fn judged(&self) -> bool {
        true
    }

    fn advance(
        &self,
        d: &mut Draft<'_>,
        c: &mut CanaryStatus,
        rollout: Option<&RolloutSpec>,
    ) -> Result<(), String> {
        rollout.map_or(Ok(()), |r| ab_test(d, c, r))
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
            Some(Winner::Candidate) if safe && super::super::gates::hold_promotion(d, c) => {}
            Some(Winner::Candidate) if safe => {
                c.promoting = true;
                c.step_started_at = Some(d.now.clone());
                d.note(
                    EventKind::Normal,
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
