//! Error-rate checks judged again at every analysis interval, on counts
//! cumulated since the canary started.
//!
//! Why not "success rate >= 99 % per interval": at 1 request/s to the canary
//! and a 0.5 % baseline error rate, one error in an interval of 30 requests
//! already reads as 96.7 %, so identical versions fail most rollouts (see
//! `tests/analysis_simulation.rs`). Here a check fails only on statistical
//! evidence, and the same data looked at up to `max_looks` times is covered by
//! a Bonferroni split of the overall false-failure budget `alpha`:
//!
//! - `errorRate.max = m`: exact one-sided binomial test of `H0: p <= m`;
//!   Fail when `P(X >= errors | requests, m) < alpha / max_looks`.
//!   Pass when the 80 % Clopper–Pearson upper bound of the rate is at most
//!   `m` (enough evidence the rate is acceptable); otherwise Inconclusive.
//! - `errorRate.maxRatioToStable = r`: conditional test. Given all errors
//!   `E = e_canary + e_stable`, under `p_canary = r * p_stable` the canary's
//!   share is Binomial(E, r n_c / (r n_c + n_s)); Fail when that tail
//!   probability is below `alpha / max_looks` *and* the canary's rate is
//!   significantly above the absolute floor (0.1 %), so two tiny rates (say
//!   0.02 % vs 0.005 %) never fail on their ratio alone; zero stable errors
//!   need no special case. Pass when the canary's rate is at most
//!   `r * stable + floor`.
//! - A failure whose p-value is below `decisive_alpha` (1e-6) is decisive:
//!   the rollout rolls back at once instead of waiting for `failureLimit`
//!   failed runs in a row.
//!
//! Fewer than `min_samples` requests (canary, and stable for the ratio) is
//! Inconclusive, never Pass or Fail.

use statrs::distribution::{Beta, Binomial, ContinuousCDF, DiscreteCDF};

use crate::api::{CheckStatus, CheckVerdict};

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SequentialConfig {
    /// False-failure budget of a whole rollout, per check.
    pub alpha: f64,
    /// Looks the budget is split over (about the analysis runs of a rollout).
    pub max_looks: u32,
    /// Evidence this strong rolls back at once.
    pub decisive_alpha: f64,
    /// Confidence of the upper bound that grants a Pass.
    pub pass_confidence: f64,
    /// Absolute error rate below which a ratio to stable never fails.
    pub ratio_floor: f64,
    pub min_samples: u64,
}

impl Default for SequentialConfig {
    fn default() -> Self {
        Self {
            alpha: 0.01,
            max_looks: 20,
            decisive_alpha: 1e-6,
            pass_confidence: 0.8,
            ratio_floor: 0.001,
            min_samples: 200,
        }
    }
}

impl SequentialConfig {
    fn per_look(&self) -> f64 {
        self.alpha / f64::from(self.max_looks.max(1))
    }
}

/// Requests and errors of one variant since the canary started.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Counts {
    pub requests: f64,
    pub errors: f64,
}

impl Counts {
    /// Whole counts, errors never above requests (counters can be scraped
    /// mid-update, and rates of increase are fractional).
    fn whole(self) -> (u64, u64) {
        let n = if self.requests.is_finite() {
            self.requests.max(0.0).round() as u64
        } else {
            0
        };
        let e = if self.errors.is_finite() {
            self.errors.max(0.0).round() as u64
        } else {
            0
        };
        (n, e.min(n))
    }

    pub fn rate(self) -> Option<f64> {
        let (n, e) = self.whole();
        (n > 0).then(|| e as f64 / n as f64)
    }
}

/// A judgement with whether its evidence is decisive.
#[derive(Debug, Clone, PartialEq)]
pub struct Judgement {
    pub status: CheckStatus,
    pub decisive: bool,
}

/// `P(X >= k)` for `X ~ Binomial(n, p)`.
fn upper_tail(k: u64, n: u64, p: f64) -> f64 {
    if k == 0 {
        return 1.0;
    }
    if p <= 0.0 {
        return 0.0;
    }
    if p >= 1.0 {
        return 1.0;
    }
    Binomial::new(p, n).map_or(1.0, |b| b.sf(k - 1))
}

/// One-sided Clopper–Pearson upper bound of a rate at `confidence`.
fn upper_bound(errors: u64, n: u64, confidence: f64) -> f64 {
    if n == 0 || errors >= n {
        return 1.0;
    }
    Beta::new(errors as f64 + 1.0, (n - errors) as f64).map_or(1.0, |b| b.inverse_cdf(confidence))
}

fn status(
    name: &str,
    value: Option<f64>,
    threshold: f64,
    samples: u64,
    verdict: CheckVerdict,
    message: String,
) -> CheckStatus {
    CheckStatus {
        name: name.into(),
        value,
        threshold: Some(threshold),
        verdict,
        samples: i64::try_from(samples).unwrap_or(i64::MAX),
        message: Some(message),
    }
}

/// `errorRate.max`.
pub fn max_rate(name: &str, canary: Counts, max: f64, cfg: &SequentialConfig) -> Judgement {
    let (n, e) = canary.whole();
    let rate = canary.rate();
    if n < cfg.min_samples {
        return Judgement {
            status: status(
                name,
                rate,
                max,
                n,
                CheckVerdict::Inconclusive,
                format!("{n} requests, {} needed", cfg.min_samples),
            ),
            decisive: false,
        };
    }
    let p_fail = upper_tail(e, n, max);
    if p_fail < cfg.per_look() {
        return Judgement {
            status: status(
                name,
                rate,
                max,
                n,
                CheckVerdict::Fail,
                format!("{e} errors in {n} requests: above {max} with p={p_fail:.2e}"),
            ),
            decisive: p_fail < cfg.decisive_alpha,
        };
    }
    let bound = upper_bound(e, n, cfg.pass_confidence);
    let (verdict, message) = if bound <= max {
        (CheckVerdict::Pass, format!("{e} errors in {n} requests"))
    } else {
        (
            CheckVerdict::Inconclusive,
            format!(
                "{e} errors in {n} requests: not yet enough evidence either way (upper bound {bound:.4})"
            ),
        )
    };
    Judgement {
        status: status(name, rate, max, n, verdict, message),
        decisive: false,
    }
}

/// `errorRate.maxRatioToStable`.
pub fn ratio_to_stable(
    name: &str,
    canary: Counts,
    stable: Counts,
    ratio: f64,
    cfg: &SequentialConfig,
) -> Judgement {
    let (nc, ec) = canary.whole();
    let (ns, es) = stable.whole();
    let value = match (canary.rate(), stable.rate()) {
        (Some(c), Some(s)) if s > 0.0 => Some(c / s),
        (Some(0.0), Some(_)) => Some(0.0),
        _ => None,
    };
    if nc < cfg.min_samples || ns < cfg.min_samples {
        return Judgement {
            status: status(
                name,
                value,
                ratio,
                nc,
                CheckVerdict::Inconclusive,
                format!(
                    "canary {nc} and stable {ns} requests, {} each needed",
                    cfg.min_samples
                ),
            ),
            decisive: false,
        };
    }
    let share = ratio * nc as f64 / (ratio * nc as f64 + ns as f64);
    let p_ratio = upper_tail(ec, ec + es, share);
    let p_floor = upper_tail(ec, nc, cfg.ratio_floor);
    let p_fail = p_ratio.max(p_floor);
    let (rc, rs) = (ec as f64 / nc as f64, es as f64 / ns as f64);
    if p_fail < cfg.per_look() {
        return Judgement {
            status: status(
                name,
                value,
                ratio,
                nc,
                CheckVerdict::Fail,
                format!("canary {rc:.4} vs stable {rs:.4}: above {ratio}x with p={p_fail:.2e}"),
            ),
            decisive: p_fail < cfg.decisive_alpha,
        };
    }
    let verdict = if rc <= ratio * rs + cfg.ratio_floor {
        CheckVerdict::Pass
    } else {
        CheckVerdict::Inconclusive
    };
    Judgement {
        status: status(
            name,
            value,
            ratio,
            nc,
            verdict,
            format!("canary {rc:.4} vs stable {rs:.4}"),
        ),
        decisive: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn c(requests: f64, errors: f64) -> Counts {
        Counts { requests, errors }
    }

    #[test]
    fn too_few_requests_is_inconclusive() {
        let j = max_rate("e", c(100.0, 50.0), 0.01, &SequentialConfig::default());
        assert_eq!(j.status.verdict, CheckVerdict::Inconclusive);
    }

    #[test]
    fn a_clearly_bad_canary_fails_decisively() {
        let j = max_rate("e", c(3000.0, 150.0), 0.01, &SequentialConfig::default());
        assert_eq!(j.status.verdict, CheckVerdict::Fail);
        assert!(j.decisive);
        assert_eq!(j.status.value, Some(0.05));
    }

    #[test]
    fn a_good_canary_passes_with_enough_requests() {
        let j = max_rate("e", c(3000.0, 3.0), 0.01, &SequentialConfig::default());
        assert_eq!(j.status.verdict, CheckVerdict::Pass);
        // Just above the threshold is not yet evidence of failure.
        let j = max_rate("e", c(300.0, 4.0), 0.01, &SequentialConfig::default());
        assert_eq!(j.status.verdict, CheckVerdict::Inconclusive);
    }

    #[test]
    fn ratio_to_stable_needs_both_a_ratio_and_a_floor() {
        let cfg = SequentialConfig::default();
        let bad = ratio_to_stable("r", c(3000.0, 150.0), c(30000.0, 30.0), 1.5, &cfg);
        assert_eq!(bad.status.verdict, CheckVerdict::Fail);
        // 0.03 % vs 0.003 %: ten times more, but under the 0.1 % floor.
        let tiny = ratio_to_stable("r", c(100000.0, 30.0), c(1000000.0, 30.0), 1.5, &cfg);
        assert_ne!(tiny.status.verdict, CheckVerdict::Fail);
        let same = ratio_to_stable("r", c(3000.0, 3.0), c(30000.0, 30.0), 1.5, &cfg);
        assert_eq!(same.status.verdict, CheckVerdict::Pass);
        let no_stable_errors = ratio_to_stable("r", c(3000.0, 0.0), c(30000.0, 0.0), 1.5, &cfg);
        assert_eq!(no_stable_errors.status.verdict, CheckVerdict::Pass);
    }

    proptest! {
        /// Odd inputs never panic and always give a verdict.
        #[test]
        fn never_panics(n in -10.0f64..1e7, e in -10.0f64..1e7, m in 0.0f64..1.0, r in 1.0f64..10.0, nan in any::<bool>()) {
            let n = if nan { f64::NAN } else { n };
            let _ = max_rate("e", c(n, e), m, &SequentialConfig::default());
            let _ = ratio_to_stable("r", c(n, e), c(e, n), r, &SequentialConfig::default());
        }
    }
}
