//! Parsing throughput on the `shared/bench/gen_payload.py` payload
//! (`tests/fixtures/metrics_payload.txt`), side by side:
//! our parser (all families, borrowed and owned; the operator's filter) and
//! the `prometheus-parse` crate. Python's parser: `benches/parse_python.py`.
//! Results: docs/benchmarks.md, `## Parsing`.

use std::hint::black_box;
use std::io;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use modeldeploy::exposition::{FamilyFilter, Options, parse, parse_owned};

const PAYLOAD: &str = include_str!("../tests/fixtures/metrics_payload.txt");

/// The families the operator reads by default (DESIGN.md metric convention).
const OPERATOR_FAMILIES: [&str; 5] = [
    "model_requests_total",
    "model_request_duration_seconds",
    "model_input_feature",
    "model_prediction",
    "model_prediction_outcomes_total",
];

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("parse");
    g.throughput(Throughput::Bytes(PAYLOAD.len() as u64));

    let all = FamilyFilter::all();
    g.bench_function("modeldeploy/all", |b| {
        b.iter(|| {
            // Read what a consumer reads: value and every label pair.
            let mut acc = 0.0;
            let mut labels = 0usize;
            parse(black_box(PAYLOAD), &all, |s| {
                acc += s.value;
                for (n, v) in s.labels.iter() {
                    labels += n.len() + v.len();
                }
            })
            .expect("payload parses");
            black_box((acc, labels))
        })
    });

    g.bench_function("modeldeploy/all_owned", |b| {
        b.iter(|| parse_owned(black_box(PAYLOAD), &all, &Options::default()).expect("parses"))
    });

    let operator = FamilyFilter::new(OPERATOR_FAMILIES);
    g.bench_function("modeldeploy/operator_filter", |b| {
        b.iter(|| {
            let mut acc = 0.0;
            let mut labels = 0usize;
            parse(black_box(PAYLOAD), &operator, |s| {
                acc += s.value;
                for (n, v) in s.labels.iter() {
                    labels += n.len() + v.len();
                }
            })
            .expect("payload parses");
            black_box((acc, labels))
        })
    });

    g.bench_function("prometheus-parse", |b| {
        b.iter(|| {
            // The crate's API takes owned lines, as from `BufRead::lines`.
            let lines = black_box(PAYLOAD)
                .lines()
                .map(|l| Ok::<_, io::Error>(l.to_owned()));
            prometheus_parse::Scrape::parse(lines).expect("crate parses")
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
