//! Drift statistics over 100 features x 20 buckets: the batch (PSI + JS + KS
//! with p-values) and each method alone. The inputs are the `batch` case of
//! `tests/fixtures/analysis_fixtures.json`, the same arrays that
//! `benches/drift_numpy.py` times. Run: `cargo bench --bench drift`.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use modeldeploy::analysis::drift::{
    DriftBatch, DriftScores, KsResult, chi_squared, jensen_shannon, kolmogorov_smirnov, psi,
    wasserstein,
};

struct Input {
    features: usize,
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
    let reference: Vec<Vec<f64>> = batch["reference"]
        .as_array()
        .expect("reference")
        .iter()
        .map(floats)
        .collect();
    let observed: Vec<Vec<f64>> = batch["observed"]
        .as_array()
        .expect("observed")
        .iter()
        .map(floats)
        .collect();
    Input {
        features: reference.len(),
        buckets: reference[0].len(),
        upper_bounds: floats(&batch["upper_bounds"]),
        reference: reference.concat(),
        observed: observed.concat(),
    }
}

fn bench(c: &mut Criterion) {
    let inp = input();
    let (f, k) = (inp.features, inp.buckets);
    let batch = DriftBatch::new(f, k, &inp.reference).expect("reference");
    let mut g = c.benchmark_group(format!("drift_{f}x{k}"));

    let mut out: Vec<Option<DriftScores>> = vec![None; f];
    g.bench_function("batch_psi_js_ks_p", |b| {
        b.iter(|| batch.score(black_box(&inp.observed), &mut out).unwrap())
    });
    let mut out_f: Vec<Option<f64>> = vec![None; f];
    g.bench_function("batch_psi", |b| {
        b.iter(|| {
            batch
                .score_psi(black_box(&inp.observed), &mut out_f)
                .unwrap()
        })
    });
    g.bench_function("batch_js", |b| {
        b.iter(|| {
            batch
                .score_js(black_box(&inp.observed), &mut out_f)
                .unwrap()
        })
    });
    let mut out_ks: Vec<Option<KsResult>> = vec![None; f];
    g.bench_function("batch_ks_p", |b| {
        b.iter(|| {
            batch
                .score_ks(black_box(&inp.observed), &mut out_ks)
                .unwrap()
        })
    });

    // Feature by feature through the single-feature functions (no precomputation).
    let pairs = || {
        inp.reference
            .chunks_exact(k)
            .zip(inp.observed.chunks_exact(k))
    };
    g.bench_function("per_feature_psi_js_ks_p", |b| {
        b.iter(|| {
            for (r, o) in pairs() {
                black_box(psi(r, black_box(o)).unwrap());
                black_box(jensen_shannon(r, black_box(o)).unwrap());
                black_box(kolmogorov_smirnov(r, black_box(o)).unwrap());
            }
        })
    });
    g.bench_function("per_feature_chi_squared", |b| {
        b.iter(|| {
            for (r, o) in pairs() {
                black_box(chi_squared(r, black_box(o)).unwrap());
            }
        })
    });
    g.bench_function("per_feature_wasserstein", |b| {
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
