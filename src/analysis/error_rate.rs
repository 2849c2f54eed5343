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

use statrs::function::gamma::ln_gamma;

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
            min_samples: crate::api::DEFAULT_MIN_SAMPLES.unsigned_abs(),
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
    binomial_sf(k as f64, n as f64, p)
}

/// Whether the one-sided Clopper–Pearson upper bound of the rate at
/// `confidence` is at most `max`: the same as `P(X <= errors | n, max) <= 1 - confidence`.
fn bounded_below(errors: u64, n: u64, max: f64, confidence: f64) -> bool {
    n > 0 && binomial_cdf(errors as f64, n as f64, max) <= 1.0 - confidence
}

// Exact binomial tails through the regularized incomplete beta function,
// with enough continued-fraction terms for millions of requests (statrs'
// `beta_reg` stops after 140 terms and is wrong at those sizes).
/// `P(X >= k)` for `X ~ Binomial(n, p)`; `n`, `k` whole numbers. Total:
/// out-of-range input gives the natural limit, and NaN or infinite input
/// gives 1, which is no evidence of anything in the tests above.
fn binomial_sf(k: f64, n: f64, p: f64) -> f64 {
    if !(k.is_finite() && n.is_finite()) || p.is_nan() || k <= 0.0 {
        return 1.0;
    }
    if k > n {
        return 0.0;
    }
    if p <= 0.0 {
        return 0.0;
    }
    if p >= 1.0 {
        return 1.0;
    }
    let v = reg_inc_beta(k, n - k + 1.0, p);
    if v.is_nan() { 1.0 } else { v }
}

/// `P(X <= k)` for `X ~ Binomial(n, p)`. Total, as [`binomial_sf`].
fn binomial_cdf(k: f64, n: f64, p: f64) -> f64 {
    if !(k.is_finite() && n.is_finite()) || p.is_nan() || k >= n {
        return 1.0;
    }
    if k < 0.0 {
        return 0.0;
    }
    if p <= 0.0 {
        return 1.0;
    }
    if p >= 1.0 {
        return 0.0;
    }
    let v = reg_inc_beta(n - k, k + 1.0, 1.0 - p);
    if v.is_nan() { 1.0 } else { v }
}

/// Regularized incomplete beta `I_x(a, b)` for `a, b > 0`, `0 < x < 1`, by
/// the continued fraction (modified Lentz).
///
/// Written here rather than taken from `statrs::function::beta::beta_reg`
/// because that one stops after 140 terms and returns an unconverged value
/// when `a` or `b` is large (millions of requests need about `sqrt(max(a,
/// b))` terms). When even the raised limit is not enough, it falls back to a
/// normal approximation of the binomial, which is excellent at such sizes.
fn reg_inc_beta(a: f64, b: f64, x: f64) -> f64 {
    if !(a > 0.0 && b > 0.0) || x.is_nan() {
        return f64::NAN;
    }
    if x <= 0.0 {
        return 0.0;
    }
    if x >= 1.0 {
        return 1.0;
    }
    if x > (a + 1.0) / (a + b + 2.0) {
        return 1.0 - reg_inc_beta(b, a, 1.0 - x);
    }
    let ln_front = ln_gamma(a + b) - ln_gamma(a) - ln_gamma(b) + a * x.ln() + b * (-x).ln_1p();
    let front = ln_front.exp() / a;
    if front == 0.0 {
        return 0.0;
    }
    const TINY: f64 = 1e-300;
    const EPS: f64 = 1e-15;
    let max_terms = (1000.0 + 20.0 * a.max(b).sqrt()).min(2e6) as u64;
    let mut c = 1.0;
    let mut d = 1.0 - (a + b) * x / (a + 1.0);
    if d.abs() < TINY {
        d = TINY;
    }
    d = 1.0 / d;
    let mut h = d;
    for m in 1..=max_terms {
        let m = m as f64;
        let m2 = 2.0 * m;
        for aa in [
            m * (b - m) * x / ((a + m2 - 1.0) * (a + m2)),
            -(a + m) * (a + b + m) * x / ((a + m2) * (a + m2 + 1.0)),
        ] {
            d = 1.0 + aa * d;
            if d.abs() < TINY {
                d = TINY;
            }
            c = 1.0 + aa / c;
            if c.abs() < TINY {
                c = TINY;
            }
            d = 1.0 / d;
            h *= d * c;
        }
        // The last factor's distance from 1 measures convergence.
        if (d * c - 1.0).abs() <= EPS {
            return (front * h).clamp(0.0, 1.0);
        }
    }
    // Not converged: normal approximation of I_x(a, b) = P(Bin(a+b-1, x) >= a).
    let n = a + b - 1.0;
    let mean = n * x;
    let sd = (n * x * (1.0 - x)).sqrt();
    if sd == 0.0 {
        return if mean >= a { 1.0 } else { 0.0 };
    }
    normal_sf((a - 0.5 - mean) / sd)
}

/// Standard normal survival function, through `statrs`.
fn normal_sf(z: f64) -> f64 {
    0.5 * statrs::function::erf::erfc(z / std::f64::consts::SQRT_2)
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
    let (verdict, message) = if bounded_below(e, n, max, cfg.pass_confidence) {
        (CheckVerdict::Pass, format!("{e} errors in {n} requests"))
    } else {
        (
            CheckVerdict::Inconclusive,
            format!("{e} errors in {n} requests: not yet enough evidence either way"),
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

    #[test]
    fn millions_of_requests_are_judged_exactly() {
        let cfg = SequentialConfig::default();
        // An hour at 1,000 req/s right at the limit: no evidence of failure.
        let at = max_rate("e", c(3_600_000.0, 36_000.0), 0.01, &cfg);
        assert_ne!(at.status.verdict, CheckVerdict::Fail);
        // 3 % above the limit at that size is clear evidence.
        let above = max_rate("e", c(3_600_000.0, 37_100.0), 0.01, &cfg);
        assert_eq!(above.status.verdict, CheckVerdict::Fail);
        let below = max_rate("e", c(3_600_000.0, 30_000.0), 0.01, &cfg);
        assert_eq!(below.status.verdict, CheckVerdict::Pass);
        assert!((binomial_sf(1.0, 10.0, 0.1) - (1.0 - 0.9f64.powi(10))).abs() < 1e-12);
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
