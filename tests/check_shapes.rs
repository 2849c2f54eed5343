//! Check shapes the CRD schema refuses, fed straight to the operator as if
//! the schema had been skipped (an old CRD, a client that bypassed it, a
//! direct call): validation refuses each naming the field, in
//! `spec.rollout.analysis.checks` and in `spec.guard.checks` alike, and
//! evaluation of the same, unvalidated spec judges it Inconclusive, naming
//! the field, instead of panicking.

use std::collections::BTreeMap;

use k8s_openapi::jiff::Timestamp;
use modeldeploy::analysis::checks::{Judge, Reference, evaluate};
use modeldeploy::analysis::error_rate::SequentialConfig;
use modeldeploy::analysis::histogram::Histogram;
use modeldeploy::analysis::window::VariantData;
use modeldeploy::api::{CheckVerdict, ModelDeploymentSpec, MultipleTestingCorrection, validate};
use serde_json::{Value, json};

/// A check shape, the field validation names (relative to the check) and a
/// part of its message.
const BAD: &[(&str, &str, &str)] = &[
    (
        r#"{"errorRate": {}}"#,
        "errorRate",
        "neither max nor maxRatioToStable",
    ),
    (
        r#"{"errorRate": {"max": 1.5}}"#,
        "errorRate.max",
        "fraction",
    ),
    (
        r#"{"errorRate": {"max": -0.1}}"#,
        "errorRate.max",
        "fraction",
    ),
    (
        r#"{"errorRate": {"maxRatioToStable": 0.5}}"#,
        "errorRate.maxRatioToStable",
        "below 1",
    ),
    (r#"{}"#, "", "sets no kind"),
    (
        r#"{"errorRate": {"max": 0.01}, "latency": {"quantile": 0.99, "max": "1s"}}"#,
        "",
        "sets both errorRate and latency",
    ),
    (
        r#"{"latency": {"quantile": 0.99, "max": ""}}"#,
        "latency.max",
        "not a duration",
    ),
    (
        r#"{"latency": {"quantile": 0.99, "max": "soon"}}"#,
        "latency.max",
        "not a duration",
    ),
    (
        r#"{"latency": {"quantile": 0.99, "max": "0s"}}"#,
        "latency.max",
        "above 0",
    ),
    (
        r#"{"latency": {"quantile": 0, "max": "1s"}}"#,
        "latency.quantile",
        "outside (0, 1)",
    ),
    (
        r#"{"latency": {"quantile": 1, "max": "1s"}}"#,
        "latency.quantile",
        "outside (0, 1)",
    ),
    (
        r#"{"latency": {"quantile": 99, "max": "1s"}}"#,
        "latency.quantile",
        "outside (0, 1)",
    ),
    (
        r#"{"inputDrift": {"method": "psi", "max": -1}}"#,
        "inputDrift.max",
        "not below 0",
    ),
    (
        r#"{"inputDrift": {"method": "ks", "max": 1}}"#,
        "inputDrift.max",
        "could never fail",
    ),
    (
        r#"{"inputDrift": {"method": "chiSquared", "max": 1.5}}"#,
        "inputDrift.max",
        "method chiSquared",
    ),
    (
        r#"{"predictionDrift": {"method": "js", "max": 0.9}}"#,
        "predictionDrift.max",
        "js",
    ),
    (
        r#"{"predictionDrift": {"method": "js", "max": 0.1, "features": ["f0"]}}"#,
        "predictionDrift.features",
        "only inputDrift",
    ),
    (
        r#"{"inputDrift": {"method": "psi", "max": 0.2, "features": [""]}}"#,
        "inputDrift.features[0]",
        "feature",
    ),
    (
        r#"{"quality": {"metric": "f1", "min": 2}}"#,
        "quality.min",
        "fraction",
    ),
    (
        r#"{"quality": {"metric": "f1", "min": 0.9, "positiveClass": ""}}"#,
        "quality.positiveClass",
        "empty",
    ),
    (
        r#"{"metric": {"query": "queue_depth"}}"#,
        "metric",
        "neither min nor max",
    ),
    (
        r#"{"metric": {"query": " ", "max": 1}}"#,
        "metric.query",
        "series",
    ),
    (
        r#"{"metric": {"query": "queue_depth", "min": 5, "max": 1}}"#,
        "metric.min",
        "above max",
    ),
];

fn spec(analysis_checks: Value, guard_checks: Value) -> ModelDeploymentSpec {
    serde_json::from_value(json!({
        "model": {"version": "1.0.0", "image": "example/model:1"},
        "resources": {"requests": {"cpu": "1"}, "limits": {"cpu": "1"}},
        "rollout": {
            "strategy": "canary",
            "steps": [{"setWeight": 50}],
            "analysis": {"checks": analysis_checks}
        },
        "guard": {"checks": guard_checks}
    }))
    .expect("the shape deserializes: only the schema and validation refuse it")
}

/// A check named `bad` with the shape's kind fields.
fn named(shape: &str) -> Value {
    let mut v: Value = serde_json::from_str(shape).unwrap();
    v["name"] = json!("bad");
    v
}

fn good() -> Value {
    json!({"name": "errors", "errorRate": {"max": 0.01}})
}

fn other() -> Value {
    json!({"name": "p99", "latency": {"quantile": 0.99, "max": "1s"}})
}

fn field(list: &str, i: usize, leaf: &str) -> String {
    if leaf.is_empty() {
        format!("{list}[{i}]")
    } else {
        format!("{list}[{i}].{leaf}")
    }
}

#[test]
fn validation_refuses_every_shape_naming_the_field_in_both_lists() {
    for (shape, leaf, says) in BAD {
        let e = validate(&spec(json!([good(), named(shape)]), json!([good()]))).unwrap_err();
        assert_eq!(
            e.field,
            field("spec.rollout.analysis.checks", 1, leaf),
            "{shape}: {e}"
        );
        assert!(e.message.contains(says), "{shape}: {e}");
        let e = validate(&spec(
            json!([good()]),
            json!([good(), other(), named(shape)]),
        ))
        .unwrap_err();
        assert_eq!(e.field, field("spec.guard.checks", 2, leaf), "{shape}: {e}");
        assert!(e.message.contains(says), "{shape}: {e}");
    }
    validate(&spec(json!([good()]), json!([good()]))).expect("the good check is accepted");
}

#[test]
fn names_must_be_unique_and_a_guard_must_judge_something() {
    let e = validate(&spec(json!([good()]), json!([good(), good()]))).unwrap_err();
    assert_eq!(e.field, "spec.guard.checks[1].name");
    assert!(e.message.contains("spec.guard.checks[0]"), "{e}");
    let e = validate(&spec(json!([good(), good()]), json!([good()]))).unwrap_err();
    assert_eq!(e.field, "spec.rollout.analysis.checks[1].name");
    let e = validate(&spec(json!([good()]), json!([]))).unwrap_err();
    assert_eq!(e.field, "spec.guard.checks");
    let e = validate(&spec(
        json!([{"name": "", "errorRate": {"max": 0.01}}]),
        json!([good()]),
    ))
    .unwrap_err();
    assert_eq!(e.field, "spec.rollout.analysis.checks[0].name");
}

/// Data on which every well-formed check could be judged.
fn healthy() -> VariantData {
    let bounds = vec![1.0, 2.0, f64::INFINITY];
    let h = |c: &[f64]| Histogram::from_bucket_counts(bounds.clone(), c).unwrap();
    VariantData {
        requests: Some(3000.0),
        errors: Some(3.0),
        latency: Some(h(&[2900.0, 100.0, 0.0])),
        predictions: Some(h(&[1500.0, 1500.0, 0.0])),
        features: BTreeMap::from([("f0".into(), h(&[25.0, 50.0, 25.0]))]),
        outcomes: vec![
            ("1".into(), "1".into(), 300.0),
            ("0".into(), "0".into(), 300.0),
        ],
        custom: BTreeMap::from([("bad".into(), 3.0)]),
        ..Default::default()
    }
}

#[test]
fn evaluation_of_an_unvalidated_spec_is_inconclusive_naming_the_field() {
    let data = healthy();
    let reference = Reference {
        features: data.features.clone(),
    };
    let judge = Judge {
        canary: &data,
        stable: &data,
        reference: Some(&reference),
        correction: MultipleTestingCorrection::BenjaminiHochberg,
        min_samples: 200,
        sequential: SequentialConfig::default(),
    };
    for (shape, leaf, says) in BAD {
        let s = spec(json!([good(), named(shape)]), json!([named(shape)]));
        let rollout = s.rollout.as_ref().unwrap();
        let guard = s.guard.as_ref().unwrap();
        for checks in [&rollout.analysis.checks, &guard.checks] {
            let run = evaluate(checks, &judge, Timestamp::UNIX_EPOCH);
            let bad = run.checks.iter().find(|c| c.name == "bad").unwrap();
            assert_eq!(bad.verdict, CheckVerdict::Inconclusive, "{shape}: {bad:?}");
            let message = bad.message.as_deref().unwrap_or_default();
            let named = if leaf.is_empty() { "check" } else { leaf };
            assert!(
                message.contains(&format!("{named}: ")),
                "{shape}: {message}"
            );
            assert!(message.contains(says), "{shape}: {message}");
            assert!(!run.decisive, "{shape}");
        }
    }
    // The good check beside them is judged as usual.
    let run = evaluate(
        &spec(json!([good(), named(BAD[0].0)]), json!([good()]))
            .rollout
            .unwrap()
            .analysis
            .checks,
        &judge,
        Timestamp::UNIX_EPOCH,
    );
    assert_eq!(run.checks[0].verdict, CheckVerdict::Pass, "{run:?}");
}

#[test]
fn unknown_kinds_methods_and_metrics_are_refused_when_read() {
    for (shape, says) in [
        (
            json!({"name": "q", "quality": {"metric": "auc", "min": 0.9}}),
            "unknown variant `auc`",
        ),
        (
            json!({"name": "d", "inputDrift": {"method": "kl", "max": 0.1}}),
            "unknown variant `kl`",
        ),
        (
            json!({"name": "l", "latency": {"quantile": 0.99}}),
            "missing field `max`",
        ),
    ] {
        let e = serde_json::from_value::<ModelDeploymentSpec>(json!({
            "model": {"version": "1.0.0", "image": "example/model:1"},
            "resources": {"requests": {"cpu": "1"}, "limits": {"cpu": "1"}},
            "guard": {"checks": [shape]}
        }))
        .unwrap_err();
        let e = e.to_string();
        assert!(e.contains(says), "{e}");
    }
}
