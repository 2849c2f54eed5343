//! Every configured check judged on one window: the canary's data, the
//! stable revision's data over the same window, and the drift reference.
//! Missing data is Inconclusive with the reason, never an error and never a
//! Pass; too few requests is Inconclusive too.

use std::collections::BTreeMap;

use k8s_openapi::jiff::Timestamp;
use serde::Deserialize;

use crate::analysis::AnalysisRun;
use crate::api::{
    Check, CheckStatus, CheckVerdict, DriftMethod, DriftStatus, FeatureDrift,
    MultipleTestingCorrection, QualityMetric,
};

use super::drift;
use super::error_rate::{self, Counts, SequentialConfig};
use super::histogram::{Histogram, histogram_quantile};
use super::multiple_testing::{self, Correction};
use super::quality::ConfusionMatrix;
use super::window::VariantData;

/// Drift statuses list at most this many features (the worst ones).
pub const MAX_REPORTED_FEATURES: usize = 20;
/// Significance for test-based drift methods, after the correction.
const DRIFT_ALPHA: f64 = 0.05;

/// A reference distribution per input feature, as kept in a ConfigMap:
/// `{"features": {"f0": {"edges": [upper bounds...], "counts": [per bucket...]}}}`
/// with one more count than edges (the last bucket is `+Inf`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Reference {
    pub features: BTreeMap<String, Histogram>,
}

#[derive(Deserialize)]
struct ReferenceDoc {
    features: BTreeMap<String, ReferenceFeature>,
}

#[derive(Deserialize)]
struct ReferenceFeature {
    edges: Vec<f64>,
    counts: Vec<f64>,
}

impl Reference {
    pub fn parse(json: &str) -> Result<Self, String> {
        let doc: ReferenceDoc = serde_json::from_str(json).map_err(|e| {
            format!("not a reference document ({{\"features\": {{name: {{edges, counts}}}}}}): {e}")
        })?;
        let mut features = BTreeMap::new();
        for (name, f) in doc.features {
            if f.counts.len() != f.edges.len() + 1 {
                return Err(format!(
                    "feature {name}: {} counts for {} edges; expected one more count than edges (the +Inf bucket)",
                    f.counts.len(),
                    f.edges.len()
                ));
            }
            let mut bounds = f.edges.clone();
            bounds.push(f64::INFINITY);
            let h = Histogram::from_bucket_counts(bounds, &f.counts)
                .map_err(|e| format!("feature {name}: {e}"))?;
            features.insert(name, h);
        }
        Ok(Self { features })
    }

    /// The document for a captured distribution (`drift.reference.fromStable`).
    pub fn to_json(&self) -> String {
        let features: serde_json::Map<String, serde_json::Value> = self
            .features
            .iter()
            .map(|(name, h)| {
                let edges: Vec<f64> = h
                    .upper_bounds()
                    .iter()
                    .copied()
                    .filter(|b| b.is_finite())
                    .collect();
                (
                    name.clone(),
                    serde_json::json!({"edges": edges, "counts": h.bucket_counts()}),
                )
            })
            .collect();
        serde_json::json!({ "features": features }).to_string()
    }
}

pub struct Judge<'a> {
    pub canary: &'a VariantData,
    pub stable: &'a VariantData,
    pub reference: Option<&'a Reference>,
    pub correction: MultipleTestingCorrection,
    pub min_samples: u64,
    pub sequential: SequentialConfig,
}

/// One analysis run, with the per-feature drift it saw.
pub fn evaluate(checks: &[Check], judge: &Judge<'_>, at: Timestamp) -> AnalysisRun {
    let mut results = Vec::with_capacity(checks.len());
    let mut decisive = false;
    let mut drift_status = None;
    for check in checks {
        let (status, is_decisive, drift) = evaluate_one(check, judge);
        decisive |= is_decisive && status.verdict == CheckVerdict::Fail;
        if drift.is_some() {
            drift_status = drift;
        }
        results.push(status);
    }
    AnalysisRun {
        at,
        checks: results,
        decisive,
        drift: drift_status,
        ab: None,
    }
}

fn inconclusive(
    name: &str,
    threshold: Option<f64>,
    samples: u64,
    why: impl Into<String>,
) -> CheckStatus {
    CheckStatus {
        name: name.into(),
        value: None,
        threshold,
        verdict: CheckVerdict::Inconclusive,
        samples: i64::try_from(samples).unwrap_or(i64::MAX),
        message: Some(why.into()),
    }
}

fn judged(
    name: &str,
    value: f64,
    threshold: f64,
    samples: u64,
    fail: bool,
    message: String,
) -> CheckStatus {
    CheckStatus {
        name: name.into(),
        value: Some(value),
        threshold: Some(threshold),
        verdict: if fail {
            CheckVerdict::Fail
        } else {
            CheckVerdict::Pass
        },
        samples: i64::try_from(samples).unwrap_or(i64::MAX),
        message: (!message.is_empty()).then_some(message),
    }
}

fn whole(x: f64) -> u64 {
    if x.is_finite() && x > 0.0 {
        x.round() as u64
    } else {
        0
    }
}

fn evaluate_one(check: &Check, j: &Judge<'_>) -> (CheckStatus, bool, Option<DriftStatus>) {
    let name = check.name.as_str();
    let requests = j.canary.requests.map_or(0, whole);
    let problems = if j.canary.problems.is_empty() {
        String::new()
    } else {
        format!(" ({})", j.canary.problems.join("; "))
    };
    if j.canary.requests.is_none() {
        return (
            inconclusive(
                name,
                None,
                0,
                format!("no request series from the canary{problems}"),
            ),
            false,
            None,
        );
    }
    if requests < j.min_samples {
        return (
            inconclusive(
                name,
                None,
                requests,
                format!(
                    "{requests} requests in the window, {} needed{problems}",
                    j.min_samples
                ),
            ),
            false,
            None,
        );
    }
    if let Some(er) = &check.error_rate {
        let cfg = SequentialConfig {
            min_samples: j.min_samples,
            ..j.sequential
        };
        let Some(errors) = j.canary.errors else {
            return (
                inconclusive(
                    name,
                    er.max,
                    requests,
                    "this metrics preset exposes no errors",
                ),
                false,
                None,
            );
        };
        let canary = Counts {
            requests: j.canary.requests.unwrap_or(0.0),
            errors,
        };
        let mut worst: Option<error_rate::Judgement> = None;
        if let Some(max) = er.max {
            worst = Some(error_rate::max_rate(name, canary, max, &cfg));
        }
        if let Some(ratio) = er.max_ratio_to_stable {
            let stable = Counts {
                requests: j.stable.requests.unwrap_or(0.0),
                errors: j.stable.errors.unwrap_or(0.0),
            };
            let r = error_rate::ratio_to_stable(name, canary, stable, ratio, &cfg);
            worst = Some(match worst {
                Some(w) if rank(w.status.verdict) >= rank(r.status.verdict) => w,
                _ => r,
            });
        }
        let w = worst.expect("the schema requires max or maxRatioToStable");
        return (w.status, w.decisive, None);
    }
    if let Some(lat) = &check.latency {
        let max = crate::api::parse_duration("latency.max", &lat.max)
            .map_or(f64::INFINITY, |d| d.as_secs_f64());
        let Some(h) = &j.canary.latency else {
            return (
                inconclusive(
                    name,
                    Some(max),
                    requests,
                    "no latency histogram (this preset may not expose one)",
                ),
                false,
                None,
            );
        };
        return match histogram_quantile(lat.quantile, h) {
            Some(q) if q.is_finite() => (
                judged(
                    name,
                    q,
                    max,
                    whole(h.total()),
                    q > max,
                    format!("p{} {:.4}s", lat.quantile * 100.0, q),
                ),
                false,
                None,
            ),
            _ => (
                inconclusive(
                    name,
                    Some(max),
                    requests,
                    "no latency observations in the window",
                ),
                false,
                None,
            ),
        };
    }
    if let Some(d) = &check.prediction_drift {
        let (Some(c), Some(s)) = (&j.canary.predictions, &j.stable.predictions) else {
            return (
                inconclusive(
                    name,
                    Some(d.max),
                    requests,
                    "no prediction histogram from canary and stable",
                ),
                false,
                None,
            );
        };
        if whole(s.total()) < j.min_samples {
            return (
                inconclusive(
                    name,
                    Some(d.max),
                    whole(c.total()),
                    "too few stable predictions to compare with",
                ),
                false,
                None,
            );
        }
        return match score(d.method, s, c) {
            Ok((value, _)) => (
                judged(
                    name,
                    value,
                    d.max,
                    whole(c.total()),
                    value > d.max,
                    String::new(),
                ),
                false,
                None,
            ),
            Err(e) => (inconclusive(name, Some(d.max), requests, e), false, None),
        };
    }
    if let Some(d) = &check.input_drift {
        return input_drift(name, d, j, requests);
    }
    if let Some(q) = &check.quality {
        let m = match ConfusionMatrix::from_counts(
            j.canary
                .outcomes
                .iter()
                .map(|(a, p, v)| (a.as_str(), p.as_str(), *v)),
        ) {
            Ok(m) => m,
            Err(e) => {
                return (
                    inconclusive(name, Some(q.min), 0, format!("no outcomes: {e}")),
                    false,
                    None,
                );
            }
        };
        let n = whole(m.total());
        if n < j.min_samples {
            return (
                inconclusive(
                    name,
                    Some(q.min),
                    n,
                    format!("{n} labelled outcomes, {} needed", j.min_samples),
                ),
                false,
                None,
            );
        }
        let scores = match &q.positive_class {
            Some(p) => match m.class_scores(p) {
                Ok(s) => Some(s),
                Err(e) => {
                    return (
                        inconclusive(name, Some(q.min), n, e.to_string()),
                        false,
                        None,
                    );
                }
            },
            None => Some(m.macro_average()),
        };
        let value = match (q.metric, scores) {
            (QualityMetric::Accuracy, _) => m.accuracy(),
            (QualityMetric::Precision, Some(s)) => s.precision,
            (QualityMetric::Recall, Some(s)) => s.recall,
            (QualityMetric::F1, Some(s)) => s.f1,
            (_, None) => f64::NAN,
        };
        return (
            judged(name, value, q.min, n, value < q.min, String::new()),
            false,
            None,
        );
    }
    if let Some(m) = &check.metric {
        let threshold = m.max.or(m.min);
        return match j.canary.custom.get(name) {
            Some(&v) => {
                let fail = m.max.is_some_and(|x| v > x) || m.min.is_some_and(|x| v < x);
                (
                    judged(
                        name,
                        v,
                        threshold.unwrap_or(f64::NAN),
                        requests,
                        fail,
                        String::new(),
                    ),
                    false,
                    None,
                )
            }
            None => (
                inconclusive(
                    name,
                    threshold,
                    requests,
                    format!("series {} not found", m.query),
                ),
                false,
                None,
            ),
        };
    }
    (
        inconclusive(name, None, requests, "the check sets no kind"),
        false,
        None,
    )
}

fn rank(v: CheckVerdict) -> u8 {
    match v {
        CheckVerdict::Fail => 2,
        CheckVerdict::Inconclusive => 1,
        CheckVerdict::Pass => 0,
    }
}

/// A drift score between a reference and an observed histogram over the
/// same buckets: the method's score, and its p-value for test-based methods.
pub fn score(
    method: DriftMethod,
    reference: &Histogram,
    observed: &Histogram,
) -> Result<(f64, Option<f64>), String> {
    if reference.upper_bounds() != observed.upper_bounds() {
        return Err("reference and observed buckets differ".into());
    }
    let r = reference.bucket_counts();
    let o = observed.bucket_counts();
    let e = |e: drift::DriftError| e.to_string();
    Ok(match method {
        DriftMethod::Psi => (drift::psi(&r, &o).map_err(e)?, None),
        DriftMethod::Js => (drift::jensen_shannon(&r, &o).map_err(e)?, None),
        DriftMethod::Ks => {
            let k = drift::kolmogorov_smirnov(&r, &o).map_err(e)?;
            (k.statistic, Some(k.p_value))
        }
        DriftMethod::ChiSquared => {
            let c = drift::chi_squared(&r, &o).map_err(e)?;
            (1.0 - c.p_value, Some(c.p_value))
        }
        DriftMethod::Wasserstein => (
            drift::wasserstein(reference.upper_bounds(), &r, &o).map_err(e)?,
            None,
        ),
    })
}

fn method_name(m: DriftMethod) -> &'static str {
    match m {
        DriftMethod::Psi => "psi",
        DriftMethod::Js => "js",
        DriftMethod::Ks => "ks",
        DriftMethod::ChiSquared => "chiSquared",
        DriftMethod::Wasserstein => "wasserstein",
    }
}

fn input_drift(
    name: &str,
    d: &crate::api::DriftCheck,
    j: &Judge<'_>,
    requests: u64,
) -> (CheckStatus, bool, Option<DriftStatus>) {
    let Some(reference) = j.reference else {
        return (
            inconclusive(
                name,
                Some(d.max),
                requests,
                "no drift reference (spec.drift.reference) is available yet",
            ),
            false,
            None,
        );
    };
    let mut per_feature: Vec<(String, f64, Option<f64>)> = Vec::new();
    let mut skipped = Vec::new();
    if d.method == DriftMethod::ChiSquared {
        for (feature, values) in &j.canary.categories {
            if !d.features.is_empty() && !d.features.contains(feature) {
                continue;
            }
            let Some(r) = reference.features.get(feature) else {
                skipped.push(feature.clone());
                continue;
            };
            // Categorical references list values in bucket order as "edges" 0..k.
            let observed: Vec<f64> = (0..r.bucket_counts().len())
                .map(|i| values.get(&i.to_string()).copied().unwrap_or(0.0))
                .collect();
            if let Ok(c) = drift::chi_squared(&r.bucket_counts(), &observed) {
                per_feature.push((feature.clone(), 1.0 - c.p_value, Some(c.p_value)));
            }
        }
    } else {
        for (feature, observed) in &j.canary.features {
            if !d.features.is_empty() && !d.features.contains(feature) {
                continue;
            }
            let Some(r) = reference.features.get(feature) else {
                skipped.push(feature.clone());
                continue;
            };
            match score(d.method, r, observed) {
                Ok((s, p)) => per_feature.push((feature.clone(), s, p)),
                Err(_) => skipped.push(feature.clone()),
            }
        }
    }
    if per_feature.is_empty() {
        return (
            inconclusive(
                name,
                Some(d.max),
                requests,
                "no canary input feature matches the reference",
            ),
            false,
            None,
        );
    }
    // Test-based methods: a feature drifts only if significant after the
    // correction for testing many features at once.
    let significant: Vec<bool> = match per_feature
        .iter()
        .map(|(_, _, p)| *p)
        .collect::<Option<Vec<f64>>>()
    {
        Some(p) => {
            let correction = match j.correction {
                MultipleTestingCorrection::None => None,
                MultipleTestingCorrection::Bonferroni => Some(Correction::Bonferroni),
                MultipleTestingCorrection::BenjaminiHochberg => Some(Correction::BenjaminiHochberg),
            };
            match correction {
                Some(c) => multiple_testing::rejected(&p, DRIFT_ALPHA, c)
                    .unwrap_or_else(|_| vec![true; p.len()]),
                None => p.iter().map(|p| *p < DRIFT_ALPHA).collect(),
            }
        }
        None => vec![true; per_feature.len()],
    };
    let drifted: Vec<&str> = per_feature
        .iter()
        .zip(&significant)
        .filter(|((_, s, _), sig)| **sig && *s > d.max)
        .map(|((f, _, _), _)| f.as_str())
        .collect();
    let max_score = per_feature.iter().map(|(_, s, _)| *s).fold(0.0, f64::max);
    let mut features: Vec<FeatureDrift> = per_feature
        .iter()
        .map(|(f, s, p)| FeatureDrift {
            name: f.clone(),
            method: method_name(d.method).into(),
            score: *s,
            p_value: *p,
        })
        .collect();
    features.sort_by(|a, b| b.score.total_cmp(&a.score));
    features.truncate(MAX_REPORTED_FEATURES);
    let message = if drifted.is_empty() {
        format!("{} features within {}", per_feature.len(), d.max)
    } else {
        format!("drifted: {}", drifted.join(", "))
    };
    (
        judged(
            name,
            max_score,
            d.max,
            requests,
            !drifted.is_empty(),
            message,
        ),
        false,
        Some(DriftStatus {
            features,
            max_score: Some(max_score),
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn checks(v: serde_json::Value) -> Vec<Check> {
        serde_json::from_value(v).unwrap()
    }

    fn hist(counts: &[f64]) -> Histogram {
        let mut bounds: Vec<f64> = (1..counts.len()).map(|i| i as f64).collect();
        bounds.push(f64::INFINITY);
        Histogram::from_bucket_counts(bounds, counts).unwrap()
    }

    fn variant(requests: f64, errors: f64) -> VariantData {
        VariantData {
            requests: Some(requests),
            errors: Some(errors),
            latency: Some(
                Histogram::from_bucket_counts(
                    vec![0.1, 0.3, 1.0, f64::INFINITY],
                    &[requests * 0.9, requests * 0.09, requests * 0.01, 0.0],
                )
                .unwrap(),
            ),
            predictions: Some(hist(&[requests * 0.5, requests * 0.5])),
            features: BTreeMap::from([("f0".into(), hist(&[25.0, 50.0, 25.0]))]),
            outcomes: vec![
                ("1".into(), "1".into(), 300.0),
                ("0".into(), "0".into(), 280.0),
                ("1".into(), "0".into(), 20.0),
            ],
            ..Default::default()
        }
    }

    fn judge<'a>(
        canary: &'a VariantData,
        stable: &'a VariantData,
        reference: Option<&'a Reference>,
    ) -> Judge<'a> {
        Judge {
            canary,
            stable,
            reference,
            correction: MultipleTestingCorrection::BenjaminiHochberg,
            min_samples: 200,
            sequential: SequentialConfig::default(),
        }
    }

    #[test]
    fn a_healthy_canary_passes_every_kind_of_check() {
        let c = variant(3000.0, 3.0);
        let s = variant(30000.0, 30.0);
        let reference = Reference {
            features: BTreeMap::from([("f0".into(), hist(&[250.0, 500.0, 250.0]))]),
        };
        let cs = checks(json!([
            {"name": "errors", "errorRate": {"max": 0.01}},
            {"name": "vs-stable", "errorRate": {"maxRatioToStable": 1.5}},
            {"name": "p99", "latency": {"quantile": 0.99, "max": "1s"}},
            {"name": "outputs", "predictionDrift": {"method": "js", "max": 0.1}},
            {"name": "inputs", "inputDrift": {"method": "psi", "max": 0.25}},
            {"name": "quality", "quality": {"metric": "accuracy", "min": 0.9}}
        ]));
        let run = evaluate(&cs, &judge(&c, &s, Some(&reference)), Timestamp::UNIX_EPOCH);
        let drift = run.drift.clone();
        for check in &run.checks {
            assert_eq!(check.verdict, CheckVerdict::Pass, "{check:?}");
        }
        assert_eq!(drift.unwrap().features[0].name, "f0");
    }

    #[test]
    fn each_kind_fails_on_its_own_evidence() {
        let mut c = variant(3000.0, 150.0);
        c.latency = Some(
            Histogram::from_bucket_counts(
                vec![0.1, 0.3, 1.0, f64::INFINITY],
                &[100.0, 100.0, 2800.0, 0.0],
            )
            .unwrap(),
        );
        c.predictions = Some(hist(&[2900.0, 100.0]));
        c.features.insert("f0".into(), hist(&[5.0, 20.0, 75.0]));
        c.outcomes = vec![
            ("1".into(), "0".into(), 300.0),
            ("0".into(), "0".into(), 300.0),
        ];
        let s = variant(30000.0, 30.0);
        let reference = Reference {
            features: BTreeMap::from([("f0".into(), hist(&[250.0, 500.0, 250.0]))]),
        };
        let cs = checks(json!([
            {"name": "errors", "errorRate": {"max": 0.01}},
            {"name": "p99", "latency": {"quantile": 0.99, "max": "300ms"}},
            {"name": "outputs", "predictionDrift": {"method": "js", "max": 0.1}},
            {"name": "inputs", "inputDrift": {"method": "ks", "max": 0.1}},
            {"name": "quality", "quality": {"metric": "accuracy", "min": 0.9}}
        ]));
        let run = evaluate(&cs, &judge(&c, &s, Some(&reference)), Timestamp::UNIX_EPOCH);
        for check in &run.checks {
            assert_eq!(check.verdict, CheckVerdict::Fail, "{check:?}");
        }
        assert!(run.decisive, "5% errors against a 1% maximum is decisive");
    }

    #[test]
    fn missing_or_thin_data_is_inconclusive_never_pass() {
        let cs = checks(json!([
            {"name": "errors", "errorRate": {"max": 0.01}},
            {"name": "inputs", "inputDrift": {"method": "psi", "max": 0.25}},
            {"name": "custom", "metric": {"query": "queue_depth", "max": 10}}
        ]));
        let none = VariantData::default();
        let run = evaluate(&cs, &judge(&none, &none, None), Timestamp::UNIX_EPOCH);
        assert!(
            run.checks
                .iter()
                .all(|c| c.verdict == CheckVerdict::Inconclusive)
        );
        assert!(
            run.checks[0]
                .message
                .as_deref()
                .unwrap()
                .contains("no request series")
        );
        let thin = variant(50.0, 0.0);
        let run = evaluate(&cs, &judge(&thin, &thin, None), Timestamp::UNIX_EPOCH);
        assert!(
            run.checks
                .iter()
                .all(|c| c.verdict == CheckVerdict::Inconclusive),
            "{run:?}"
        );
        let c = variant(3000.0, 3.0);
        let run = evaluate(&cs, &judge(&c, &c, None), Timestamp::UNIX_EPOCH);
        assert_eq!(
            run.checks[1].verdict,
            CheckVerdict::Inconclusive,
            "no reference yet"
        );
        assert_eq!(
            run.checks[2].verdict,
            CheckVerdict::Inconclusive,
            "no custom series"
        );
    }

    #[test]
    fn references_round_trip_and_bad_documents_name_the_problem() {
        let doc = r#"{"features": {"f0": {"edges": [0, 1], "counts": [10, 20, 30]}}}"#;
        let r = Reference::parse(doc).unwrap();
        assert_eq!(r.features["f0"].bucket_counts(), vec![10.0, 20.0, 30.0]);
        assert_eq!(Reference::parse(&r.to_json()).unwrap(), r);
        let bad = Reference::parse(r#"{"features": {"f0": {"edges": [0, 1], "counts": [1, 2]}}}"#)
            .unwrap_err();
        assert!(bad.contains("feature f0"), "{bad}");
        assert!(Reference::parse("[]").is_err());
    }
}
