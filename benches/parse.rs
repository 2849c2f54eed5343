//! Prometheus text parsing on a model server's /metrics payload
//! (`../shared/bench/gen_payload.py`, committed as tests/fixtures/metrics_payload.txt):
//! this crate's parser, keeping everything and keeping what the checks read,
//! against the `prometheus-parse` crate on the same input.
//! Run: `cargo bench --bench parse`.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use modeldeploy::api::presets::Names;
use modeldeploy::metrics::parse::{FamilyFilter, Limits, parse};
use std::hint::black_box;

const PAYLOAD: &str = include_str!("../tests/fixtures/metrics_payload.txt");

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("parse");
    g.throughput(Throughput::Bytes(PAYLOAD.len() as u64));
    let all = FamilyFilter::all();
    let names = Names::resolve(Default::default(), &Default::default()).unwrap();
    let wanted = FamilyFilter::new(names.families());
    let limits = Limits::default();
    g.bench_function("modeldeploy, all families", |b| {
        b.iter(|| black_box(parse(black_box(PAYLOAD), &all, &limits).unwrap().len()))
    });
    g.bench_function("modeldeploy, families the checks read", |b| {
        b.iter(|| black_box(parse(black_box(PAYLOAD), &wanted, &limits).unwrap().len()))
    });
    g.bench_function("prometheus-parse crate", |b| {
        b.iter(|| {
            let lines = black_box(PAYLOAD).lines().map(|l| Ok(l.to_string()));
            black_box(
                prometheus_parse::Scrape::parse(lines)
                    .unwrap()
                    .samples
                    .len(),
            )
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
