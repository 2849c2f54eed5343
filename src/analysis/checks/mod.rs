//! Every configured check judged on one window: the canary's data, the
//! stable revision's data over the same window, and the drift reference.
//! Missing data is Inconclusive with the reason, never an error and never a
//! Pass; too few requests is Inconclusive too.
//!
//! A check is read into its kind by [`check_kind`], the function validation
//! uses, and each kind is judged by its own module. A shape validation would
//! refuse (a spec that skipped it) is Inconclusive, naming the field.

mod drift_score;
mod error_rate;
mod input_drift;
mod latency;
mod metric;
mod prediction_drift;
mod quality;
mod reference;
#[cfg(test)]
mod testing;

use k8s_openapi::jiff::Timestamp;

use crate::analysis::AnalysisRun;
use crate::api::validate::{CheckKind, InvalidSpec, check_kind};
use crate::api::{Check, CheckStatus, CheckVerdict, DriftStatus, MultipleTestingCorrection};

use super::error_rate::SequentialConfig;
use super::window::VariantData;

pub use drift_score::score;
pub use reference::Reference;

/// Drift statuses list at most this many features (the worst ones).
pub const MAX_REPORTED_FEATURES: usize = 20;

pub struct Judge<'a> {
    pub canary: &'a VariantData,
    pub stable: &'a VariantData,
    pub reference: Option<&'a Reference>,
    pub correction: MultipleTestingCorrection,
    pub min_samples: u64,
    pub sequential: SequentialConfig,
}

/// What judging one check gives.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub status: CheckStatus,
    /// A Fail on evidence strong enough to roll back at once.
    pub decisive: bool,
    /// Per-feature drift, from an `inputDrift` check.
    pub drift: Option<DriftStatus>,
}

impl From<CheckStatus> for Outcome {
    fn from(status: CheckStatus) -> Self {
        Self {
            status,
            decisive: false,
            drift: None,
        }
    }
}

/// One analysis run, with the per-feature drift it saw.
pub fn evaluate(checks: &[Check], judge: &Judge<'_>, at: Timestamp) -> AnalysisRun {
    let mut results = Vec::with_capacity(checks.len());
    let mut decisive = false;
    let mut drift_status = None;
    for check in checks {
        let outcome = evaluate_one(check, judge);
        decisive |= outcome.decisive && outcome.status.verdict == CheckVerdict::Fail;
        if outcome.drift.is_some() {
            drift_status = outcome.drift;
        }
        results.push(outcome.status);
    }
    AnalysisRun {
        at,
        checks: results,
        decisive,
        drift: drift_status,
        ab: None,
    }
}

/// One check judged by its kind, once the canary has served enough requests.
pub fn evaluate_one(check: &Check, judge: &Judge<'_>) -> Outcome {
    let s = Subject {
        name: &check.name,
        judge,
        requests: judge.canary.requests.map_or(0, whole),
    };
    let kind = match check_kind("", check) {
        Ok(kind) => kind,
        Err(e) => return s.inconclusive(None, s.requests, not_judged(&e)).into(),
    };
    if let Some(thin) = s.too_little_traffic() {
        return thin.into();
    }
    match kind {
        CheckKind::ErrorRate(limit) => error_rate::judge(&s, limit),
        CheckKind::Latency(limit) => latency::judge(&s, limit).into(),
        CheckKind::PredictionDrift(d) => prediction_drift::judge(&s, d).into(),
        CheckKind::InputDrift(d) => input_drift::judge(&s, d),
        CheckKind::Quality(q) => quality::judge(&s, q).into(),
        CheckKind::Metric(m) => metric::judge(&s, m).into(),
    }
}

fn not_judged(e: &InvalidSpec) -> String {
    format!("not judged: {e} (the spec was not validated)")
}

/// One check being judged: its name, the data, and the canary's requests.
struct Subject<'a> {
    name: &'a str,
    judge: &'a Judge<'a>,
    requests: u64,
}

impl Subject<'_> {
    /// Inconclusive when the canary has no request series or too few requests.
    fn too_little_traffic(&self) -> Option<CheckStatus> {
        let j = self.judge;
        let problems = if j.canary.problems.is_empty() {
            String::new()
        } else {
            format!(" ({})", j.canary.problems.join("; "))
        };
        if j.canary.requests.is_none() {
            let why = format!("no request series from the canary{problems}");
            return Some(self.inconclusive(None, 0, why));
        }
        (self.requests < j.min_samples).then(|| {
            let why = format!(
                "{} requests in the window, {} needed{problems}",
                self.requests, j.min_samples
            );
            self.inconclusive(None, self.requests, why)
        })
    }

    fn inconclusive(
        &self,
        threshold: Option<f64>,
        samples: u64,
        why: impl Into<String>,
    ) -> CheckStatus {
        CheckStatus {
            name: self.name.into(),
            value: None,
            threshold,
            verdict: CheckVerdict::Inconclusive,
            samples: i64::try_from(samples).unwrap_or(i64::MAX),
            message: Some(why.into()),
        }
    }

    fn judged(
        &self,
        value: f64,
        threshold: f64,
        samples: u64,
        fail: bool,
        message: String,
    ) -> CheckStatus {
        CheckStatus {
            name: self.name.into(),
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
}

/// A count as a whole number; anything not a positive number is 0.
fn whole(x: f64) -> u64 {
    if x.is_finite() && x > 0.0 {
        x.round() as u64
    } else {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{checks, hist, judge, variant};
    use super::*;
    use crate::analysis::histogram::Histogram;
    use serde_json::json;
    use std::collections::BTreeMap;

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
    fn a_shape_validation_refuses_is_inconclusive_before_any_data_is_read() {
        let cs = checks(json!([
            {"name": "empty", "errorRate": {}},
            {"name": "nothing"},
            {"name": "unbounded", "metric": {"query": "queue_depth"}}
        ]));
        let none = VariantData::default();
        let c = variant(3000.0, 3.0);
        for data in [&none, &c] {
            let run = evaluate(&cs, &judge(data, data, None), Timestamp::UNIX_EPOCH);
            let messages: Vec<&str> = run
                .checks
                .iter()
                .map(|c| {
                    assert_eq!(c.verdict, CheckVerdict::Inconclusive, "{c:?}");
                    c.message.as_deref().unwrap_or_default()
                })
                .collect();
            assert!(
                messages[0].contains("errorRate: sets neither"),
                "{messages:?}"
            );
            assert!(messages[1].contains("check: sets no kind"), "{messages:?}");
            assert!(messages[2].contains("metric: sets neither"), "{messages:?}");
        }
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
}
