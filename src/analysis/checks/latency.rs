//! `latency`: a quantile of the canary's latency histogram against a maximum.

use crate::analysis::histogram::histogram_quantile;
use crate::api::CheckStatus;
use crate::api::validate::LatencyLimit;

use super::{Subject, whole};

pub(super) fn judge(s: &Subject<'_>, limit: LatencyLimit) -> CheckStatus {
    let max = limit.max.as_secs_f64();
    let Some(h) = &s.judge.canary.latency else {
        return s.inconclusive(
            Some(max),
            s.requests,
            "no latency histogram (this preset may not expose one)",
        );
    };
    match histogram_quantile(limit.quantile, h) {
        Some(q) if q.is_finite() => s.judged(
            q,
            max,
            whole(h.total()),
            q > max,
            format!("p{} {:.4}s", limit.quantile * 100.0, q),
        ),
        _ => s.inconclusive(
            Some(max),
            s.requests,
            "no latency observations in the window",
        ),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::testing::{assert_verdict, judge, subject, variant};
    use super::*;
    use crate::analysis::histogram::Histogram;
    use crate::api::CheckVerdict;

    fn p99(max_ms: u64) -> LatencyLimit {
        LatencyLimit {
            quantile: 0.99,
            max: Duration::from_millis(max_ms),
        }
    }

    #[test]
    fn a_quantile_under_the_maximum_passes_and_over_it_fails() {
        // 1% of requests between 0.3s and 1s: p99 is at 0.3s.
        let c = variant(3000.0, 0.0);
        let j = judge(&c, &c, None);
        let pass = super::judge(&subject("p99", &j), p99(1000));
        assert_verdict(&pass, CheckVerdict::Pass, "p99 0.3000s");
        assert_eq!(pass.threshold, Some(1.0));
        let mut slow = variant(3000.0, 0.0);
        slow.latency = Some(
            Histogram::from_bucket_counts(
                vec![0.1, 0.3, 1.0, f64::INFINITY],
                &[100.0, 100.0, 2800.0, 0.0],
            )
            .unwrap(),
        );
        let j = judge(&slow, &slow, None);
        let fail = super::judge(&subject("p99", &j), p99(300));
        assert_eq!(fail.verdict, CheckVerdict::Fail, "{fail:?}");
        assert!(fail.value.unwrap() > 0.3);
    }

    #[test]
    fn no_histogram_or_no_observations_is_inconclusive() {
        let mut c = variant(3000.0, 0.0);
        c.latency = None;
        let j = judge(&c, &c, None);
        let o = super::judge(&subject("p99", &j), p99(300));
        assert_verdict(&o, CheckVerdict::Inconclusive, "no latency histogram");
        c.latency =
            Some(Histogram::from_bucket_counts(vec![0.1, f64::INFINITY], &[0.0, 0.0]).unwrap());
        let j = judge(&c, &c, None);
        let o = super::judge(&subject("p99", &j), p99(300));
        assert_verdict(&o, CheckVerdict::Inconclusive, "no latency observations");
    }
}
