//! The bodies of the fuzz targets, one function per target. The AFL++
//! binaries in `fuzz_targets/` call them, and `tests/fuzz_regressions.rs`
//! includes this file to replay the corpus and every finding kept under
//! `fuzz/regressions/<target>/` in a plain `cargo test`.
//!
//! Each target feeds untrusted input to the function the operator runs on
//! it, then goes on along the operator's own path as far as the input gets,
//! and asserts what must hold for any input. A panic anywhere is a finding.

use std::sync::OnceLock;

use modeldeploy::analysis::checks::{self, Judge, Reference};
use modeldeploy::analysis::error_rate::SequentialConfig;
use modeldeploy::analysis::window::{CounterWindow, VariantData};
use modeldeploy::api::presets::Names;
use modeldeploy::api::{
    Check, DriftMethod, MetricNames, MetricsPreset, ModelDeployment, ModelDeploymentSpec,
    ModelDeploymentStatus, MultipleTestingCorrection,
};
use modeldeploy::exposition::{FamilyFilter, Limits, Options, TextFormat, parse_with};
use modeldeploy::rollout::Request;

/// A target's body: takes any bytes, panics only on a finding.
pub type Target = fn(&[u8]);

/// The targets, by the name of their binary and their folders.
pub const TARGETS: [(&str, Target); 4] = [
    ("exposition", exposition),
    ("spec", spec),
    ("request", request),
    ("reference", reference),
];

/// Series kept per pod by the operator's windows (`controller::collect`).
const MAX_SERIES_PER_POD: usize = 4_000;

/// The checks of `examples/canary-cpu.yaml` plus one of each other kind,
/// judged on whatever a fuzzed scrape yields.
const CHECKS: &str = r#"[
  {"name": "errors", "errorRate": {"max": 0.01}},
  {"name": "vs-stable", "errorRate": {"maxRatioToStable": 1.5}},
  {"name": "p99", "latency": {"quantile": 0.99, "max": "300ms"}},
  {"name": "outputs", "predictionDrift": {"method": "js", "max": 0.1}},
  {"name": "inputs", "inputDrift": {"method": "psi", "max": 0.25}},
  {"name": "quality", "quality": {"metric": "f1", "min": 0.85}},
  {"name": "custom", "metric": {"query": "model_requests_total", "max": 1.0}}
]"#;

fn default_names() -> &'static Names {
    static NAMES: OnceLock<Names> = OnceLock::new();
    NAMES.get_or_init(|| {
        Names::resolve(MetricsPreset::Default, &MetricNames::default())
            .expect("the default preset resolves")
    })
}

fn example_checks() -> &'static [Check] {
    static PARSED: OnceLock<Vec<Check>> = OnceLock::new();
    PARSED.get_or_init(|| serde_json::from_str(CHECKS).expect("the example checks parse"))
}

fn judge<'a>(canary: &'a VariantData, stable: &'a VariantData) -> Judge<'a> {
    Judge {
        canary,
        stable,
        reference: None,
        correction: MultipleTestingCorrection::default(),
        min_samples: 0,
        sequential: SequentialConfig::default(),
    }
}

/// A scrape's text. The first byte picks the format, the filter (every
/// family, or the operator's) and the limits (default, or tiny ones that the
/// input can reach); the rest is the body. The samples go through the
/// operator's window (two scrapes of the same pod) into the variant data the
/// checks judge.
pub fn exposition(data: &[u8]) {
    let Some((&mode, body)) = data.split_first() else {
        return;
    };
    // The scraper refuses a body that is not UTF-8 before parsing.
    let Ok(text) = std::str::from_utf8(body) else {
        return;
    };
    let names = default_names();
    let filter = if mode & 1 == 0 {
        FamilyFilter::new(names.families())
    } else {
        FamilyFilter::all()
    };
    let options = Options {
        format: if mode & 2 == 0 {
            TextFormat::Prometheus
        } else {
            TextFormat::OpenMetrics
        },
        limits: if mode & 4 == 0 {
            Limits::default()
        } else {
            Limits {
                max_samples: 8,
                max_labels: 3,
            }
        },
    };
    let mut samples = Vec::new();
    let result = parse_with(text, &filter, &options, |s| {
        // The parser validated the label text: iterating it yields every label.
        assert_eq!(
            s.labels.iter().count(),
            s.labels.len(),
            "{:?}",
            s.labels.raw()
        );
        samples.push(s);
    });
    match result {
        Ok(visited) => assert_eq!(visited, samples.len()),
        Err(e) => {
            let lines = text.bytes().filter(|&b| b == b'\n').count() + 1;
            assert!((1..=lines).contains(&e.line()), "{e} of {lines} lines");
            // A scrape is used whole or not at all.
            return;
        }
    }
    let mut window = CounterWindow::new(0, MAX_SERIES_PER_POD);
    window.observe("pod-a", Some(1), &samples);
    window.observe("pod-a", Some(1), &samples);
    let totals = window.totals();
    for (series, total) in &totals {
        assert!(*total >= 0.0 || total.is_nan(), "{series:?}: {total}");
    }
    let canary = VariantData::from_totals(names, &totals);
    let stable = VariantData::default();
    checks::evaluate(
        example_checks(),
        &judge(&canary, &stable),
        Default::default(),
    );
}

/// A ModelDeployment spec as JSON. Whatever deserializes is validated; its
/// checks are judged whether or not validation passed (a spec that skipped
/// the CRD's schema must not panic the reconcile); a valid spec is rendered
/// into the objects the operator applies.
pub fn spec(data: &[u8]) {
    let Ok(spec) = serde_json::from_slice::<ModelDeploymentSpec>(data) else {
        return;
    };
    let valid = modeldeploy::api::validate(&spec);
    let some_traffic = VariantData {
        requests: Some(1_000.0),
        errors: Some(10.0),
        ..VariantData::default()
    };
    let judged = judge(&some_traffic, &some_traffic);
    let rollout_checks = spec.rollout.iter().flat_map(|r| &r.analysis.checks);
    let guard_checks = spec.guard.iter().flat_map(|g| &g.checks);
    for check in rollout_checks.chain(guard_checks) {
        checks::evaluate_one(check, &judged);
    }
    let Ok(valid) = valid else {
        return;
    };
    let hash = modeldeploy::resources::revision_hash(&spec);
    let md = ModelDeployment::new("fuzz", spec);
    let workload = modeldeploy::resources::RevisionWorkload {
        hash,
        revision: 1,
        version: md.spec.model.version.clone(),
        replicas: md.spec.replicas,
    };
    let template = modeldeploy::resources::pod_template(&md, &valid, &workload);
    modeldeploy::resources::deployment(&md, &template, &workload, valid.progress_deadline);
    modeldeploy::resources::service(&md);
}

/// The `modeldeploy.io/request` annotation. A request that parses survives
/// its own encoding, and asking whether it applies never panics.
pub fn request(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(request) = Request::parse(text) else {
        return;
    };
    assert_eq!(
        Request::parse(&request.to_annotation()),
        Ok(request.clone())
    );
    let _ = modeldeploy::rollout::requests::applicable(
        &ModelDeploymentStatus::default(),
        "0123456789",
        &request.action,
    );
}

/// The drift reference document kept in a ConfigMap. A reference that parses
/// is read back from its own encoding (the captured reference is written
/// with `to_json` and read with `parse`) with the very same bucket bounds,
/// which drift checks compare exactly with the model's `le` bounds, and the
/// same counts up to rounding; every drift method scores each feature
/// against itself without panicking.
pub fn reference(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(reference) = Reference::parse(text) else {
        return;
    };
    let json = reference.to_json();
    let again = Reference::parse(&json).expect("a reference reads its own document");
    assert!(
        reference.features.keys().eq(again.features.keys()),
        "{json}"
    );
    for (name, h) in &reference.features {
        let read = &again.features[name];
        assert_eq!(h.upper_bounds(), read.upper_bounds(), "{name} in {json}");
        // Counts are kept cumulative: per-bucket counts come back rounded.
        let tolerance = 1e-9 * h.total().max(1.0);
        for (a, b) in h.bucket_counts().iter().zip(read.bucket_counts()) {
            assert!((a - b).abs() <= tolerance, "{name}: {a} read back as {b}");
        }
    }
    let methods = [
        DriftMethod::Psi,
        DriftMethod::Js,
        DriftMethod::Ks,
        DriftMethod::ChiSquared,
        DriftMethod::Wasserstein,
    ];
    for h in reference.features.values() {
        for method in methods {
            let _ = checks::score(method, h, h);
        }
    }
}
