//! Input drift over 100 features x 20 buckets, on the path the operator runs:
//! `analysis::checks::evaluate` (what `controller::collect` calls every
//! analysis interval) with three `inputDrift` checks, PSI, JS and KS (with
//! p-values and the Benjamini–Hochberg correction), each scoring the features
//! one by one through `checks::score`. Below it, the parts: `checks::score`
//! alone, and the bare functions of `analysis::drift` on count slices.
//! The inputs are the `batch` case of `tests/fixtures/analysis_fixtures.json`,
//! the same arrays that `benches/drift_numpy.py` times.
//! Run: `cargo bench --bench drift`.

use std::collections::BTreeMap;
use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use k8s_openapi::jiff::Timestamp;
use modeldeploy::analysis::checks::{self, Judge, Reference};
use modeldeploy::analysis::drift::{
    chi_squared, jensen_shannon, kolmogorov_smirnov, psi, wasserstein,
};
use modeldeploy::analysis::error_rate::SequentialConfig;
use modeldeploy::analysis::histogram::Histogram;
use modeldeploy::analysis::window::VariantData;
use modeldeploy::api::{Check, CheckVerdict, DriftMethod, MultipleTestingCorrection};

struct Input {
    buckets: usize,
    upper_bounds: Vec<f64>,
    reference: Vec<f64>,
    observed: Vec<f64>,
}

fn input() -> Input {
    let json: serde_json::Value =
        serde_json::from_str(include_str!("../tests/fixtures/analysis_fixtures.json"))
            .expect("fixture JSON");
    let batch = &json["batch"];
    let floats = |v: &serde_json::Value| -> Vec<f64> {
        v.as_array()
            .expect("array")
            .iter()
            .map(|x| x.as_f64().unwrap_or(f64::INFINITY))
            .collect()
    };
    let rows = |key: &str| -> Vec<Vec<f64>> {
        batch[key]
            .as_array()
            .expect(key)
            .iter()
            .map(floats)
            .collect()
    };
    let (reference, observed) = (rows("reference"), rows("observed"));
    Input {
        buckets: reference[0].len(),
        upper_bounds: floats(&batch["upper_bounds"]),
        reference: reference.concat(),
        observed: observed.concat(),
    }
}

/// One histogram per feature, named `f0`, `f1`, ... as scraped.
fn histograms(inp: &Input, counts: &[f64]) -> BTreeMap<String, Histogram> {
    counts
        .chunks_exact(inp.buckets)
        .enumerate()
        .map(|(i, c)| {
            let h = Histogram::from_bucket_counts(inp.upper_bounds.clone(), c).expect("histogram");
            (format!("f{i}"), h)
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let inp = input();
    let k = inp.buckets;
    let f = inp.reference.len() / k;
    let mut g = c.benchmark_group(format!("drift_{f}x{k}"));

    // The operator's path.
    let reference = Reference {
        features: histograms(&inp, &inp.reference),
    };
    let canary = VariantData {
        requests: Some(10_000.0),
        errors: Some(0.0),
        features: histograms(&inp, &inp.observed),
        ..Default::default()
    };
    let stable = canary.clone();
    let judge = Judge {
        canary: &canary,
        stable: &stable,
        reference: Some(&reference),
        correction: MultipleTestingCorrection::BenjaminiHochberg,
        min_samples: 200,
        sequential: SequentialConfig::default(),
    };
    let drift_checks: Vec<Check> = serde_json::from_value(serde_json::json!([
        {"name": "psi", "inputDrift": {"method": "psi", "max": 0.25}},
        {"name": "js", "inputDrift": {"method": "js", "max": 0.1}},
        {"name": "ks", "inputDrift": {"method": "ks", "max": 0.1}},
    ]))
    .expect("checks");
    let run = checks::evaluate(&drift_checks, &judge, Timestamp::UNIX_EPOCH);
    assert_eq!(run.checks.len(), 3);
    assert!(
        run.checks
            .iter()
            .all(|c| c.verdict != CheckVerdict::Inconclusive),
        "every check judged: {:?}",
        run.checks
    );
    g.bench_function("operator_evaluate_psi_js_ks_p", |b| {
        b.iter(|| {
            checks::evaluate(
                black_box(&drift_checks),
                black_box(&judge),
                Timestamp::UNIX_EPOCH,
            )
        })
    });

    // Its scoring part: `checks::score` per feature and method.
    let pairs_h: Vec<(&Histogram, &Histogram)> = reference
        .features
        .values()
        .zip(canary.features.values())
        .collect();
    g.bench_function("checks_score_psi_js_ks_p", |b| {
        b.iter(|| {
            for (r, o) in &pairs_h {
                for m in [DriftMethod::Psi, DriftMethod::Js, DriftMethod::Ks] {
                    black_box(checks::score(m, r, black_box(o)).unwrap());
                }
            }
        })
    });

    // The bare statistics on count slices (no histogram, no status).
    let pairs = || {
        inp.reference
            .chunks_exact(k)
            .zip(inp.observed.chunks_exact(k))
    };
    g.bench_function("drift_fns_psi_js_ks_p", |b| {
        b.iter(|| {
            for (r, o) in pairs() {
                black_box(psi(r, black_box(o)).unwrap());
                black_box(jensen_shannon(r, black_box(o)).unwrap());
                black_box(kolmogorov_smirnov(r, black_box(o)).unwrap());
            }
        })
    });
    g.bench_function("drift_fns_chi_squared", |b| {
        b.iter(|| {
            for (r, o) in pairs() {
                black_box(chi_squared(r, black_box(o)).unwrap());
            }
        })
    });
    g.bench_function("drift_fns_wasserstein", |b| {
        b.iter(|| {
            for (r, o) in pairs() {
                black_box(wasserstein(&inp.upper_bounds, r, black_box(o)).unwrap());
            }
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
