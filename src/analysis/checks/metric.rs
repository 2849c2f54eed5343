//! `metric`: a custom series against a minimum, a maximum, or both.

use crate::api::CheckStatus;
use crate::api::validate::{Bounds, MetricLimit};

use super::Subject;

pub(super) fn judge(s: &Subject<'_>, m: MetricLimit<'_>) -> CheckStatus {
    let threshold = threshold(m.bounds);
    match s.judge.canary.custom.get(s.name) {
        Some(&v) => s.judged(
            v,
            threshold,
            s.requests,
            outside(m.bounds, v),
            String::new(),
        ),
        None => s.inconclusive(
            Some(threshold),
            s.requests,
            format!("series {} not found", m.query),
        ),
    }
}

/// The bound reported in status: the maximum when there is one.
fn threshold(b: Bounds) -> f64 {
    match b {
        Bounds::Max(max) | Bounds::Between { max, .. } => max,
        Bounds::Min(min) => min,
    }
}

fn outside(b: Bounds, v: f64) -> bool {
    match b {
        Bounds::Min(min) => v < min,
        Bounds::Max(max) => v > max,
        Bounds::Between { min, max } => v < min || v > max,
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{assert_verdict, judge, subject, variant};
    use super::*;
    use crate::api::CheckVerdict;

    fn run(value: Option<f64>, bounds: Bounds) -> CheckStatus {
        let mut c = variant(3000.0, 0.0);
        if let Some(v) = value {
            c.custom.insert("queue".into(), v);
        }
        let j = judge(&c, &c, None);
        let limit = MetricLimit {
            query: "queue_depth",
            bounds,
        };
        super::judge(&subject("queue", &j), limit)
    }

    #[test]
    fn values_inside_the_bounds_pass_and_outside_fail() {
        let between = Bounds::Between {
            min: 1.0,
            max: 10.0,
        };
        assert_eq!(run(Some(5.0), between).verdict, CheckVerdict::Pass);
        assert_eq!(run(Some(11.0), between).verdict, CheckVerdict::Fail);
        assert_eq!(run(Some(0.5), between).verdict, CheckVerdict::Fail);
        assert_eq!(run(Some(0.5), between).threshold, Some(10.0));
        assert_eq!(run(Some(0.5), Bounds::Min(1.0)).verdict, CheckVerdict::Fail);
        assert_eq!(run(Some(0.5), Bounds::Min(1.0)).threshold, Some(1.0));
        assert_eq!(
            run(Some(50.0), Bounds::Max(10.0)).verdict,
            CheckVerdict::Fail
        );
        assert_eq!(
            run(Some(5.0), Bounds::Max(10.0)).verdict,
            CheckVerdict::Pass
        );
    }

    #[test]
    fn a_missing_series_is_inconclusive_naming_the_query() {
        let o = run(None, Bounds::Max(10.0));
        assert_verdict(
            &o,
            CheckVerdict::Inconclusive,
            "series queue_depth not found",
        );
    }
}
