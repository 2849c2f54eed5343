//! A/B objective: which variant is better, and how sure.
//!
//! - `errorRate` and `accuracy` are proportions: two-sided two-proportion
//!   z-test with the pooled variance; the effect is candidate minus stable.
//! - `latency` compares mean latency estimated from the histograms (each
//!   bucket's mass at its midpoint, the `+Inf` bucket at the last finite edge):
//!   Welch's z-test on the means; the effect is in seconds.
//! - `f1` is macro-averaged F1 over the labels of the outcome counter; its
//!   variance comes from the delta method over the confusion matrix
//!   ([`ConfusionMatrix::macro_f1_with_variance`]), and the two variants are
//!   compared with a z-test on the difference.
//!
//! The comparison runs at every analysis interval on growing data, so a fixed
//! `p < 1 - confidence` would find a winner between identical variants far
//! more often than `1 - confidence` over a whole test. Each look instead gets
//! its share of the budget from an alpha-spending function over `maxDuration`
//! ([`look_alpha`]); the shares add up to `1 - confidence`, so by the union
//! bound the whole test keeps its stated error rate.
//!
//! A winner is declared when both variants have `minSamples` and this look's
//! p-value is below this look's share; the better side follows `goal`.

use statrs::distribution::{ContinuousCDF, Normal};

use crate::api::{Goal, ObjectiveMetric};

use super::histogram::Histogram;
use super::quality::ConfusionMatrix;
use super::window::VariantData;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Winner {
    Stable,
    Candidate,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Comparison {
    pub samples_stable: u64,
    pub samples_candidate: u64,
    /// Candidate minus stable, in the objective's unit.
    pub effect: Option<f64>,
    pub p_value: Option<f64>,
    /// Set when the difference is significant at the requested confidence.
    pub winner: Option<Winner>,
    pub message: String,
}

/// Significance level of the look made `elapsed` into a test that lasts
/// `horizon`, with looks every `interval`: the increase over the last interval
/// of the Pocock-type spending function `a(t) = alpha * ln(1 + (e - 1) t)`
/// (Lan and DeMets), `t` the share of `horizon` gone by and
/// `alpha = 1 - confidence`. Looks closer together than `interval` would
/// overspend, so the analysis schedule must keep them at least that far apart.
pub fn look_alpha(
    confidence: f64,
    elapsed: std::time::Duration,
    interval: std::time::Duration,
    horizon: std::time::Duration,
) -> f64 {
    let alpha = (1.0 - confidence).clamp(0.0, 1.0);
    let horizon = horizon.as_secs_f64();
    if horizon <= 0.0 {
        return alpha;
    }
    let share = |secs: f64| (secs / horizon).clamp(0.0, 1.0);
    let spent = |t: f64| alpha * (1.0 + (std::f64::consts::E - 1.0) * t).ln();
    let now = share(elapsed.as_secs_f64());
    let before = share(elapsed.as_secs_f64() - interval.as_secs_f64());
    spent(now) - spent(before)
}

fn two_sided(z: f64) -> f64 {
    let n = Normal::new(0.0, 1.0).expect("standard normal");
    2.0 * n.sf(z.abs())
}

/// (successes-or-events, trials) for proportion objectives.
fn proportion(metric: ObjectiveMetric, v: &VariantData) -> Option<(f64, f64)> {
    match metric {
        ObjectiveMetric::ErrorRate => Some((v.errors?, v.requests?)),
        ObjectiveMetric::Accuracy => {
            let m = ConfusionMatrix::from_counts(
                v.outcomes
                    .iter()
                    .map(|(a, p, c)| (a.as_str(), p.as_str(), *c)),
            )
            .ok()?;
            let correct: f64 = m.labels().iter().map(|l| m.count(l, l)).sum();
            Some((correct, m.total()))
        }
        ObjectiveMetric::Latency | ObjectiveMetric::F1 => None,
    }
}

fn confusion(v: &VariantData) -> Option<ConfusionMatrix> {
    ConfusionMatrix::from_counts(
        v.outcomes
            .iter()
            .map(|(a, p, c)| (a.as_str(), p.as_str(), *c)),
    )
    .ok()
}

/// p-value of a difference between two independent estimates with these variances.
fn z_test(difference: f64, variance: f64) -> f64 {
    if variance > 0.0 {
        two_sided(difference / variance.sqrt())
    } else if difference == 0.0 {
        1.0
    } else {
        0.0
    }
}

/// Mean and variance of a histogram, mass at bucket midpoints.
fn moments(h: &Histogram) -> Option<(f64, f64, f64)> {
    let counts = h.bucket_counts();
    let bounds = h.upper_bounds();
    let n: f64 = counts.iter().sum();
    if n <= 0.0 {
        return None;
    }
    let last_finite = bounds
        .iter()
        .copied()
        .filter(|b| b.is_finite())
        .fold(0.0, f64::max);
    let point = |i: usize| {
        let upper = bounds[i];
        let lower = if i == 0 {
            0.0f64.min(upper)
        } else {
            bounds[i - 1]
        };
        if upper.is_finite() {
            (lower + upper) / 2.0
        } else {
            last_finite
        }
    };
    let mean = counts
        .iter()
        .enumerate()
        .map(|(i, c)| c * point(i))
        .sum::<f64>()
        / n;
    let var = counts
        .iter()
        .enumerate()
        .map(|(i, c)| c * (point(i) - mean).powi(2))
        .sum::<f64>()
        / n;
    Some((mean, var, n))
}

/// Compare the variants; `alpha` is this look's significance level (see [`look_alpha`]).
pub fn compare(
    metric: ObjectiveMetric,
    goal: Goal,
    alpha: f64,
    min_samples: u64,
    stable: &VariantData,
    candidate: &VariantData,
) -> Comparison {
    let mut c = Comparison {
        samples_stable: stable.requests.map_or(0, |r| r.max(0.0) as u64),
        samples_candidate: candidate.requests.map_or(0, |r| r.max(0.0) as u64),
        effect: None,
        p_value: None,
        winner: None,
        message: String::new(),
    };
    let tested = match metric {
        ObjectiveMetric::Latency => latency_difference(&mut c, stable, candidate),
        ObjectiveMetric::F1 => f1_difference(&mut c, stable, candidate),
        _ => proportion_difference(&mut c, metric, stable, candidate),
    };
    match tested {
        Some((effect, p)) => decide(c, goal, alpha, min_samples, effect, p),
        None => c,
    }
}

// The differences below return (effect, p-value), or `None` with the reason
// in `c.message`; those whose objective counts its own samples (outcomes,
// not requests) put those counts in `c`.

/// Mean latency: Welch's z-test on the histograms' means.
fn latency_difference(
    c: &mut Comparison,
    stable: &VariantData,
    candidate: &VariantData,
) -> Option<(f64, f64)> {
    let (Some((ms, vs, ns)), Some((mc, vc, nc))) = (
        stable.latency.as_ref().and_then(moments),
        candidate.latency.as_ref().and_then(moments),
    ) else {
        c.message = "no latency histogram for both variants".into();
        return None;
    };
    Some((mc - ms, z_test(mc - ms, vs / ns + vc / nc)))
}

/// Macro F1 of the outcome counts, with delta-method variances.
fn f1_difference(
    c: &mut Comparison,
    stable: &VariantData,
    candidate: &VariantData,
) -> Option<(f64, f64)> {
    let (Some(ms), Some(mc)) = (confusion(stable), confusion(candidate)) else {
        c.message = "no outcome counts for both variants".into();
        return None;
    };
    c.samples_stable = ms.total() as u64;
    c.samples_candidate = mc.total() as u64;
    let ((fs, vs), (fc, vc)) = (ms.macro_f1_with_variance(), mc.macro_f1_with_variance());
    Some((fc - fs, z_test(fc - fs, vs + vc)))
}

/// A proportion (error rate, accuracy): two-proportion z-test, pooled variance.
fn proportion_difference(
    c: &mut Comparison,
    metric: ObjectiveMetric,
    stable: &VariantData,
    candidate: &VariantData,
) -> Option<(f64, f64)> {
    let (Some((xs, ns)), Some((xc, nc))) =
        (proportion(metric, stable), proportion(metric, candidate))
    else {
        c.message = "the objective's series are missing for a variant".into();
        return None;
    };
    if metric != ObjectiveMetric::ErrorRate {
        c.samples_stable = ns as u64;
        c.samples_candidate = nc as u64;
    }
    if ns <= 0.0 || nc <= 0.0 {
        c.message = "no samples yet".into();
        return None;
    }
    let (ps, pc) = (xs / ns, xc / nc);
    let pooled = (xs + xc) / (ns + nc);
    let se = (pooled * (1.0 - pooled) * (1.0 / ns + 1.0 / nc)).sqrt();
    let p = if se > 0.0 {
        two_sided((pc - ps) / se)
    } else {
        1.0
    };
    Some((pc - ps, p))
}

/// The verdict on a difference: a winner only with `min_samples` on both
/// sides and `p` below this look's `alpha`; the better side follows `goal`.
fn decide(
    mut c: Comparison,
    goal: Goal,
    alpha: f64,
    min_samples: u64,
    effect: f64,
    p: f64,
) -> Comparison {
    c.effect = Some(effect);
    c.p_value = Some(p);
    if c.samples_stable < min_samples || c.samples_candidate < min_samples {
        c.message = format!(
            "{} and {} samples, {min_samples} each needed",
            c.samples_stable, c.samples_candidate
        );
        return c;
    }
    if p < alpha && effect != 0.0 {
        let candidate_better = match goal {
            Goal::Minimize => effect < 0.0,
            Goal::Maximize => effect > 0.0,
        };
        c.winner = Some(if candidate_better {
            Winner::Candidate
        } else {
            Winner::Stable
        });
        c.message =
            format!("significant: effect {effect:.5}, p={p:.2e} below this look's {alpha:.2e}");
    } else {
        c.message = format!(
            "no significant difference yet: effect {effect:.5}, p={p:.3} (this look needs p < {alpha:.2e})"
        );
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(requests: f64, errors: f64) -> VariantData {
        VariantData {
            requests: Some(requests),
            errors: Some(errors),
            ..Default::default()
        }
    }

    #[test]
    fn a_clearly_lower_error_rate_wins_when_minimizing() {
        let c = compare(
            ObjectiveMetric::ErrorRate,
            Goal::Minimize,
            0.05,
            10_000,
            &v(20_000.0, 400.0),
            &v(20_000.0, 200.0),
        );
        assert_eq!(c.winner, Some(Winner::Candidate));
        assert!(c.p_value.unwrap() < 0.001);
        assert!((c.effect.unwrap() + 0.01).abs() < 1e-12);
        let worse = compare(
            ObjectiveMetric::ErrorRate,
            Goal::Minimize,
            0.05,
            10_000,
            &v(20_000.0, 200.0),
            &v(20_000.0, 400.0),
        );
        assert_eq!(worse.winner, Some(Winner::Stable));
    }

    #[test]
    fn no_winner_without_samples_or_significance() {
        let few = compare(
            ObjectiveMetric::ErrorRate,
            Goal::Minimize,
            0.05,
            10_000,
            &v(500.0, 50.0),
            &v(500.0, 5.0),
        );
        assert_eq!(few.winner, None);
        let same = compare(
            ObjectiveMetric::ErrorRate,
            Goal::Minimize,
            0.05,
            10_000,
            &v(20_000.0, 200.0),
            &v(20_000.0, 205.0),
        );
        assert_eq!(same.winner, None);
    }

    #[test]
    fn the_looks_spend_no_more_than_the_budget() {
        let minute = std::time::Duration::from_secs(60);
        let horizon = minute * 60;
        let shares: Vec<f64> = (1..=90)
            .map(|k| look_alpha(0.95, minute * k, minute, horizon))
            .collect();
        let total: f64 = shares.iter().sum();
        assert!((total - 0.05).abs() < 1e-12, "{total}");
        assert!(shares[..60].iter().all(|a| *a > 0.0));
        assert!(
            shares[60..].iter().all(|a| *a == 0.0),
            "nothing left after maxDuration"
        );
        // Pocock-like: early looks get somewhat more than late ones, never all.
        assert!(shares[0] > shares[59] && shares[0] < 0.05 / 20.0);
    }

    /// Identical variants compared at every interval of a long test: the share
    /// of tests that ever name a winner stays within the stated 5%, where
    /// testing each look at 0.05 would name one far more often.
    #[test]
    fn identical_variants_rarely_get_a_winner_over_many_looks() {
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut unit = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 11) as f64 / (1u64 << 53) as f64
        };
        let minute = std::time::Duration::from_secs(60);
        let (looks, tests, per_look, rate) = (30u32, 1_000, 200.0f64, 0.05f64);
        let (mut spent_winners, mut naive_winners) = (0, 0);
        for _ in 0..tests {
            let (mut a, mut b) = (v(0.0, 0.0), v(0.0, 0.0));
            let (mut spent_found, mut naive_found) = (false, false);
            for k in 1..=looks {
                for side in [&mut a, &mut b] {
                    // Errors per look: normal approximation of the binomial.
                    let (u1, u2) = (unit().max(1e-12), unit());
                    let z = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
                    let errors = (per_look * rate + z * (per_look * rate * (1.0 - rate)).sqrt())
                        .round()
                        .max(0.0);
                    side.requests = Some(side.requests.unwrap() + per_look);
                    side.errors = Some(side.errors.unwrap() + errors);
                }
                let alpha = look_alpha(0.95, minute * k, minute, minute * looks);
                let spent = compare(
                    ObjectiveMetric::ErrorRate,
                    Goal::Minimize,
                    alpha,
                    100,
                    &a,
                    &b,
                );
                let naive = compare(
                    ObjectiveMetric::ErrorRate,
                    Goal::Minimize,
                    0.05,
                    100,
                    &a,
                    &b,
                );
                spent_found |= spent.winner.is_some();
                naive_found |= naive.winner.is_some();
            }
            spent_winners += usize::from(spent_found);
            naive_winners += usize::from(naive_found);
        }
        let spent_rate = spent_winners as f64 / tests as f64;
        let naive_rate = naive_winners as f64 / tests as f64;
        eprintln!("false winners over {looks} looks: spent {spent_rate}, naive {naive_rate}");
        assert!(spent_rate <= 0.05, "{spent_rate}");
        assert!(naive_rate > 0.15, "{naive_rate}");
    }

    #[test]
    fn a_better_macro_f1_wins_and_an_equal_one_does_not() {
        let outcomes = |right: f64, wrong: f64| VariantData {
            outcomes: vec![
                ("0".into(), "0".into(), right),
                ("0".into(), "1".into(), wrong),
                ("1".into(), "1".into(), right),
                ("1".into(), "0".into(), wrong),
            ],
            ..Default::default()
        };
        let better = compare(
            ObjectiveMetric::F1,
            Goal::Maximize,
            0.01,
            1_000,
            &outcomes(4_000.0, 1_000.0),
            &outcomes(4_300.0, 700.0),
        );
        assert_eq!(better.winner, Some(Winner::Candidate), "{}", better.message);
        assert!((better.effect.unwrap() - 0.06).abs() < 1e-9);
        assert_eq!(better.samples_candidate, 10_000);
        let same = compare(
            ObjectiveMetric::F1,
            Goal::Maximize,
            0.01,
            1_000,
            &outcomes(4_000.0, 1_000.0),
            &outcomes(4_010.0, 990.0),
        );
        assert_eq!(same.winner, None, "{}", same.message);
    }

    #[test]
    fn two_sided_p_matches_the_normal_table() {
        assert!((two_sided(1.959964) - 0.05).abs() < 1e-6);
    }

    #[test]
    fn lower_latency_wins() {
        let h = |fast: f64, slow: f64| {
            Histogram::from_bucket_counts(
                vec![0.05, 0.1, 0.2, f64::INFINITY],
                &[fast, slow, 0.0, 0.0],
            )
            .unwrap()
        };
        let mut s = v(20_000.0, 0.0);
        s.latency = Some(h(10_000.0, 10_000.0));
        let mut c = v(20_000.0, 0.0);
        c.latency = Some(h(15_000.0, 5_000.0));
        let r = compare(
            ObjectiveMetric::Latency,
            Goal::Minimize,
            0.05,
            10_000,
            &s,
            &c,
        );
        assert_eq!(r.winner, Some(Winner::Candidate));
        assert!(r.effect.unwrap() < 0.0);
    }
}
