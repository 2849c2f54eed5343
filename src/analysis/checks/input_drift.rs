//! `inputDrift`: each canary input feature against the reference, with the
//! multiple-testing correction for test-based methods.

use std::collections::BTreeMap;

use crate::analysis::drift;
use crate::analysis::histogram::Histogram;
use crate::analysis::multiple_testing::{self, Correction};
use crate::api::{DriftCheck, DriftMethod, DriftStatus, FeatureDrift, MultipleTestingCorrection};

use super::drift_score::method_name;
use super::{MAX_REPORTED_FEATURES, Outcome, Reference, Subject, score};

/// Significance for test-based drift methods, after the correction.
const DRIFT_ALPHA: f64 = 0.05;

/// One feature's drift score, with its p-value for test-based methods.
#[derive(Debug, Clone, PartialEq)]
struct FeatureScore {
    feature: String,
    score: f64,
    p_value: Option<f64>,
}

pub(super) fn judge(s: &Subject<'_>, d: &DriftCheck) -> Outcome {
    let j = s.judge;
    let Some(reference) = j.reference else {
        let why = "no drift reference (spec.drift.reference) is available yet";
        return s.inconclusive(Some(d.max), s.requests, why).into();
    };
    let scores = if d.method == DriftMethod::ChiSquared {
        categorical_scores(d, reference, &j.canary.categories)
    } else {
        numeric_scores(d, reference, &j.canary.features)
    };
    if scores.is_empty() {
        let why = "no canary input feature matches the reference";
        return s.inconclusive(Some(d.max), s.requests, why).into();
    }
    let significant = significant(&scores, j.correction);
    let drifted: Vec<&str> = scores
        .iter()
        .zip(&significant)
        .filter(|(f, sig)| **sig && f.score > d.max)
        .map(|(f, _)| f.feature.as_str())
        .collect();
    let max_score = scores.iter().map(|f| f.score).fold(0.0, f64::max);
    let message = if drifted.is_empty() {
        format!("{} features within {}", scores.len(), d.max)
    } else {
        format!("drifted: {}", drifted.join(", "))
    };
    let fail = !drifted.is_empty();
    Outcome {
        status: s.judged(max_score, d.max, s.requests, fail, message),
        decisive: false,
        drift: Some(drift_status(&scores, d.method, max_score)),
    }
}

fn selected(d: &DriftCheck, feature: &str) -> bool {
    d.features.is_empty() || d.features.iter().any(|f| f == feature)
}

/// Chi-squared over categorical counters; features the reference lacks are skipped.
fn categorical_scores(
    d: &DriftCheck,
    reference: &Reference,
    categories: &BTreeMap<String, BTreeMap<String, f64>>,
) -> Vec<FeatureScore> {
    let mut scores = Vec::new();
    for (feature, values) in categories {
        let Some(r) = reference
            .features
            .get(feature)
            .filter(|_| selected(d, feature))
        else {
            continue;
        };
        // Categorical references list values in bucket order as "edges" 0..k.
        let observed: Vec<f64> = (0..r.bucket_counts().len())
            .map(|i| values.get(&i.to_string()).copied().unwrap_or(0.0))
            .collect();
        if let Ok(c) = drift::chi_squared(&r.bucket_counts(), &observed) {
            scores.push(FeatureScore {
                feature: feature.clone(),
                score: 1.0 - c.p_value,
                p_value: Some(c.p_value),
            });
        }
    }
    scores
}

/// The method's score per numeric feature; features the reference lacks or
/// whose buckets differ are skipped.
fn numeric_scores(
    d: &DriftCheck,
    reference: &Reference,
    features: &BTreeMap<String, Histogram>,
) -> Vec<FeatureScore> {
    features
        .iter()
        .filter(|(feature, _)| selected(d, feature))
        .filter_map(|(feature, observed)| {
            let r = reference.features.get(feature)?;
            let (score, p_value) = score(d.method, r, observed).ok()?;
            Some(FeatureScore {
                feature: feature.clone(),
                score,
                p_value,
            })
        })
        .collect()
}

/// Which features drift significantly. Test-based methods: only if
/// significant after the correction for testing many features at once;
/// distance methods (no p-values): every feature counts.
fn significant(scores: &[FeatureScore], correction: MultipleTestingCorrection) -> Vec<bool> {
    let Some(p) = scores
        .iter()
        .map(|f| f.p_value)
        .collect::<Option<Vec<f64>>>()
    else {
        return vec![true; scores.len()];
    };
    let correction = match correction {
        MultipleTestingCorrection::None => None,
        MultipleTestingCorrection::Bonferroni => Some(Correction::Bonferroni),
        MultipleTestingCorrection::BenjaminiHochberg => Some(Correction::BenjaminiHochberg),
    };
    match correction {
        Some(c) => {
            multiple_testing::rejected(&p, DRIFT_ALPHA, c).unwrap_or_else(|_| vec![true; p.len()])
        }
        None => p.iter().map(|p| *p < DRIFT_ALPHA).collect(),
    }
}

/// The worst features first, at most [`MAX_REPORTED_FEATURES`].
fn drift_status(scores: &[FeatureScore], method: DriftMethod, max_score: f64) -> DriftStatus {
    let mut features: Vec<FeatureDrift> = scores
        .iter()
        .map(|f| FeatureDrift {
            name: f.feature.clone(),
            method: method_name(method).into(),
            score: f.score,
            p_value: f.p_value,
        })
        .collect();
    features.sort_by(|a, b| b.score.total_cmp(&a.score));
    features.truncate(MAX_REPORTED_FEATURES);
    DriftStatus {
        features,
        max_score: Some(max_score),
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{assert_verdict, hist, judge, reference, subject, variant};
    use super::*;
    use crate::analysis::window::VariantData;
    use crate::api::CheckVerdict;

    fn drift(method: DriftMethod, max: f64, features: &[&str]) -> DriftCheck {
        DriftCheck {
            method,
            max,
            features: features.iter().map(|f| f.to_string()).collect(),
        }
    }

    fn run(canary: &VariantData, reference: Option<&Reference>, d: &DriftCheck) -> Outcome {
        let j = judge(canary, canary, reference);
        super::judge(&subject("inputs", &j), d)
    }

    #[test]
    fn matching_inputs_pass_and_shifted_ones_fail_naming_the_feature() {
        let r = reference();
        let psi = drift(DriftMethod::Psi, 0.25, &[]);
        let pass = run(&variant(3000.0, 0.0), Some(&r), &psi);
        assert_verdict(&pass.status, CheckVerdict::Pass, "1 features within 0.25");
        assert_eq!(pass.drift.unwrap().features[0].method, "psi");
        let mut shifted = variant(3000.0, 0.0);
        shifted
            .features
            .insert("f0".into(), hist(&[5.0, 20.0, 75.0]));
        shifted
            .features
            .insert("f1".into(), hist(&[25.0, 50.0, 25.0]));
        let fail = run(&shifted, Some(&r), &psi);
        assert_verdict(&fail.status, CheckVerdict::Fail, "drifted: f0");
        // f1 has no reference: skipped, not reported.
        assert_eq!(fail.drift.unwrap().features.len(), 1);
    }

    #[test]
    fn categorical_inputs_use_the_chi_squared_test() {
        let r = reference();
        let mut c = variant(3000.0, 0.0);
        let counts = |v: [f64; 3]| {
            BTreeMap::from([
                ("0".to_string(), v[0]),
                ("1".to_string(), v[1]),
                ("2".to_string(), v[2]),
            ])
        };
        c.categories
            .insert("f0".into(), counts([250.0, 500.0, 250.0]));
        let chi = drift(DriftMethod::ChiSquared, 0.99, &[]);
        assert_eq!(run(&c, Some(&r), &chi).status.verdict, CheckVerdict::Pass);
        c.categories
            .insert("f0".into(), counts([50.0, 200.0, 750.0]));
        let fail = run(&c, Some(&r), &chi);
        assert_eq!(fail.status.verdict, CheckVerdict::Fail, "{fail:?}");
        assert!(fail.drift.unwrap().features[0].p_value.unwrap() < 0.01);
    }

    #[test]
    fn without_a_reference_or_a_matching_feature_it_is_inconclusive() {
        let c = variant(3000.0, 0.0);
        let psi = drift(DriftMethod::Psi, 0.25, &[]);
        let o = run(&c, None, &psi);
        assert_verdict(&o.status, CheckVerdict::Inconclusive, "no drift reference");
        assert!(o.drift.is_none());
        let only_f9 = drift(DriftMethod::Psi, 0.25, &["f9"]);
        let o = run(&c, Some(&reference()), &only_f9);
        assert_verdict(
            &o.status,
            CheckVerdict::Inconclusive,
            "no canary input feature",
        );
    }

    #[test]
    fn insignificant_test_results_do_not_drift() {
        let scores = |p: &[f64]| -> Vec<FeatureScore> {
            p.iter()
                .map(|p| FeatureScore {
                    feature: "f".into(),
                    score: 0.5,
                    p_value: Some(*p),
                })
                .collect()
        };
        let p = scores(&[0.01, 0.04, 0.9]);
        assert_eq!(
            significant(&p, MultipleTestingCorrection::None),
            vec![true, true, false]
        );
        assert_eq!(
            significant(&p, MultipleTestingCorrection::Bonferroni),
            vec![true, false, false]
        );
        let mut distances = scores(&[0.5]);
        distances[0].p_value = None;
        assert_eq!(
            significant(&distances, MultipleTestingCorrection::Bonferroni),
            vec![true]
        );
    }
}
