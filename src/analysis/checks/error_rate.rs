//! `errorRate`: the canary's error rate against a maximum, against stable's,
//! or both (the worse verdict counts).

use crate::analysis::error_rate::{Counts, Judgement, SequentialConfig, max_rate, ratio_to_stable};
use crate::api::CheckVerdict;
use crate::api::validate::ErrorRateLimit;

use super::{Outcome, Subject};

pub(super) fn judge(s: &Subject<'_>, limit: ErrorRateLimit) -> Outcome {
    let j = s.judge;
    let cfg = SequentialConfig {
        min_samples: j.min_samples,
        ..j.sequential
    };
    let Some(errors) = j.canary.errors else {
        let max = match limit {
            ErrorRateLimit::Max(max) | ErrorRateLimit::Both { max, .. } => Some(max),
            ErrorRateLimit::RatioToStable(_) => None,
        };
        return s
            .inconclusive(max, s.requests, "this metrics preset exposes no errors")
            .into();
    };
    let canary = Counts {
        requests: j.canary.requests.unwrap_or(0.0),
        errors,
    };
    let stable = Counts {
        requests: j.stable.requests.unwrap_or(0.0),
        errors: j.stable.errors.unwrap_or(0.0),
    };
    let judgement = match limit {
        ErrorRateLimit::Max(max) => max_rate(s.name, canary, max, &cfg),
        ErrorRateLimit::RatioToStable(ratio) => {
            ratio_to_stable(s.name, canary, stable, ratio, &cfg)
        }
        ErrorRateLimit::Both {
            max,
            ratio_to_stable: ratio,
        } => worse(
            max_rate(s.name, canary, max, &cfg),
            ratio_to_stable(s.name, canary, stable, ratio, &cfg),
        ),
    };
    Outcome {
        status: judgement.status,
        decisive: judgement.decisive,
        drift: None,
    }
}

/// The worse of two judgements; the first on a tie.
fn worse(first: Judgement, second: Judgement) -> Judgement {
    if rank(first.status.verdict) >= rank(second.status.verdict) {
        first
    } else {
        second
    }
}

fn rank(v: CheckVerdict) -> u8 {
    match v {
        CheckVerdict::Fail => 2,
        CheckVerdict::Inconclusive => 1,
        CheckVerdict::Pass => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{assert_verdict, judge, subject, variant};
    use super::*;

    fn run(canary: f64, errors: f64, limit: ErrorRateLimit) -> Outcome {
        let c = variant(canary, errors);
        let s = variant(30000.0, 30.0);
        let j = judge(&c, &s, None);
        judge_with(&j, limit)
    }

    fn judge_with(j: &super::super::Judge<'_>, limit: ErrorRateLimit) -> Outcome {
        super::judge(&subject("errors", j), limit)
    }

    #[test]
    fn a_low_rate_passes_a_high_one_fails_decisively() {
        let pass = run(3000.0, 3.0, ErrorRateLimit::Max(0.01));
        assert_verdict(&pass.status, CheckVerdict::Pass, "3 errors in 3000");
        let fail = run(3000.0, 150.0, ErrorRateLimit::Max(0.01));
        assert_verdict(&fail.status, CheckVerdict::Fail, "150 errors");
        assert!(fail.decisive);
    }

    #[test]
    fn the_ratio_to_stable_fails_a_canary_far_worse_than_stable() {
        let pass = run(3000.0, 3.0, ErrorRateLimit::RatioToStable(1.5));
        assert_eq!(pass.status.verdict, CheckVerdict::Pass, "{pass:?}");
        let fail = run(3000.0, 60.0, ErrorRateLimit::RatioToStable(1.5));
        assert_eq!(fail.status.verdict, CheckVerdict::Fail, "{fail:?}");
    }

    #[test]
    fn with_both_limits_the_worse_verdict_counts() {
        // 1.5% errors: within a 5% maximum, but 15 times stable's 0.1%.
        let both = ErrorRateLimit::Both {
            max: 0.05,
            ratio_to_stable: 1.5,
        };
        let o = run(3000.0, 45.0, both);
        assert_eq!(o.status.verdict, CheckVerdict::Fail, "{o:?}");
        assert!(o.status.message.unwrap().contains("stable"));
        assert_eq!(
            run(3000.0, 45.0, ErrorRateLimit::Max(0.05)).status.verdict,
            CheckVerdict::Pass
        );
    }

    #[test]
    fn no_error_series_is_inconclusive() {
        let mut c = variant(3000.0, 0.0);
        c.errors = None;
        let j = judge(&c, &c, None);
        let o = judge_with(&j, ErrorRateLimit::Max(0.01));
        assert_verdict(&o.status, CheckVerdict::Inconclusive, "exposes no errors");
        assert_eq!(o.status.threshold, Some(0.01));
        let o = judge_with(&j, ErrorRateLimit::RatioToStable(2.0));
        assert_eq!(o.status.threshold, None);
    }
}
