//! Data shared by the checks' unit tests.

use std::collections::BTreeMap;

use crate::analysis::error_rate::SequentialConfig;
use crate::analysis::histogram::Histogram;
use crate::analysis::window::VariantData;
use crate::api::{Check, CheckStatus, CheckVerdict, MultipleTestingCorrection};

use super::{Judge, Reference, Subject};

pub fn checks(v: serde_json::Value) -> Vec<Check> {
    serde_json::from_value(v).unwrap()
}

pub fn hist(counts: &[f64]) -> Histogram {
    let mut bounds: Vec<f64> = (1..counts.len()).map(|i| i as f64).collect();
    bounds.push(f64::INFINITY);
    Histogram::from_bucket_counts(bounds, counts).unwrap()
}

/// A variant that served `requests` with `errors`, fast, with balanced
/// predictions, one input feature and mostly right outcomes.
pub fn variant(requests: f64, errors: f64) -> VariantData {
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

/// The reference `variant`'s feature matches.
pub fn reference() -> Reference {
    Reference {
        features: BTreeMap::from([("f0".into(), hist(&[250.0, 500.0, 250.0]))]),
    }
}

pub fn judge<'a>(
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

/// The subject a kind's judge sees for check `name`.
pub fn subject<'a>(name: &'a str, judge: &'a Judge<'a>) -> Subject<'a> {
    Subject {
        name,
        judge,
        requests: judge.canary.requests.map_or(0, super::whole),
    }
}

#[track_caller]
pub fn assert_verdict(status: &CheckStatus, verdict: CheckVerdict, message_has: &str) {
    assert_eq!(status.verdict, verdict, "{status:?}");
    let message = status.message.as_deref().unwrap_or_default();
    assert!(message.contains(message_has), "{status:?}");
}
