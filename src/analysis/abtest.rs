//! A/B objective: which variant is better, and how sure.
//!
//! - `errorRate` and `accuracy` are proportions: two-sided two-proportion
//!   z-test with the pooled variance; the effect is candidate minus stable.
//! - `latency` compares mean latency estimated from the histograms (each
//!   bucket's mass at its midpoint, the `+Inf` bucket at the last finite edge):
//!   Welch's z-test on the means; the effect is in seconds.
//! - `f1` needs per-request labels to get a variance; with only the outcome
//!   counters it is reported but never declared significant (use `accuracy`
//!   for a decision).
//!
//! A winner is declared when both variants have `minSamples` and the p-value
//! is below `1 - confidence`; the better side follows `goal`.

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

fn two_sided(z: f64) -> f64 {
    let n = Normal::new(0.0, 1.0).expect("standard normal");
    2.0 * n.sf(z.abs())
}

/// (successes-or-events, trials) for proportion objectives.
fn proportion(metric: ObjectiveMetric, v: &VariantData) -> Option<(f64, f64)> {
    match metric {
        ObjectiveMetric::ErrorRate => Some((v.errors?, v.requests?)),
        ObjectiveMetric::Accuracy | ObjectiveMetric::F1 => {
            let m = ConfusionMatrix::from_counts(
                v.outcomes
                    .iter()
                    .map(|(a, p, c)| (a.as_str(), p.as_str(), *c)),
            )
            .ok()?;
            let correct: f64 = m.labels().iter().map(|l| m.count(l, l)).sum();
            Some((correct, m.total()))
        }
        ObjectiveMetric::Latency => None,
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

pub fn compare(
    metric: ObjectiveMetric,
    goal: Goal,
    confidence: f64,
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
    let (effect, p) = match metric {
        ObjectiveMetric::Latency => {
            let (Some((ms, vs, ns)), Some((mc, vc, nc))) = (
                stable.latency.as_ref().and_then(moments),
                candidate.latency.as_ref().and_then(moments),
            ) else {
                c.message = "no latency histogram for both variants".into();
                return c;
            };
            let se = (vs / ns + vc / nc).sqrt();
            let p = if se > 0.0 {
                two_sided((mc - ms) / se)
            } else if mc == ms {
                1.0
            } else {
                0.0
            };
            (mc - ms, p)
        }
        _ => {
            let (Some((xs, ns)), Some((xc, nc))) =
                (proportion(metric, stable), proportion(metric, candidate))
            else {
                c.message = "the objective's series are missing for a variant".into();
                return c;
            };
            if metric != ObjectiveMetric::ErrorRate {
                c.samples_stable = ns as u64;
                c.samples_candidate = nc as u64;
            }
            if ns <= 0.0 || nc <= 0.0 {
                c.message = "no samples yet".into();
                return c;
            }
            let (ps, pc) = (xs / ns, xc / nc);
            let pooled = (xs + xc) / (ns + nc);
            let se = (pooled * (1.0 - pooled) * (1.0 / ns + 1.0 / nc)).sqrt();
            let p = if se > 0.0 {
                two_sided((pc - ps) / se)
            } else {
                1.0
            };
            (pc - ps, p)
        }
    };
    c.effect = Some(effect);
    c.p_value = Some(p);
    if c.samples_stable < min_samples || c.samples_candidate < min_samples {
        c.message = format!(
            "{} and {} samples, {min_samples} each needed",
            c.samples_stable, c.samples_candidate
        );
        return c;
    }
    if metric == ObjectiveMetric::F1 {
        c.message = "F1 has no variance from outcome counters; reported, not decided".into();
        return c;
    }
    if p < 1.0 - confidence && effect != 0.0 {
        let candidate_better = match goal {
            Goal::Minimize => effect < 0.0,
            Goal::Maximize => effect > 0.0,
        };
        c.winner = Some(if candidate_better {
            Winner::Candidate
        } else {
            Winner::Stable
        });
        c.message = format!("significant at {confidence}: effect {effect:.5}, p={p:.2e}");
    } else {
        c.message = format!("no significant difference yet: effect {effect:.5}, p={p:.3}");
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
            0.95,
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
            0.95,
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
            0.95,
            10_000,
            &v(500.0, 50.0),
            &v(500.0, 5.0),
        );
        assert_eq!(few.winner, None);
        let same = compare(
            ObjectiveMetric::ErrorRate,
            Goal::Minimize,
            0.95,
            10_000,
            &v(20_000.0, 200.0),
            &v(20_000.0, 205.0),
        );
        assert_eq!(same.winner, None);
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
            0.95,
            10_000,
            &s,
            &c,
        );
        assert_eq!(r.winner, Some(Winner::Candidate));
        assert!(r.effect.unwrap() < 0.0);
    }
}
