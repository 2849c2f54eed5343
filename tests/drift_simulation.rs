//! Seeded simulation of input drift checks as the operator runs them
//! (`analysis::checks::evaluate` against a reference): a 0.5 standard
//! deviation shift of one feature out of eight is flagged, and sampling noise
//! between identical distributions is not. The rates are printed; reproduce
//! with `cargo test --release --test drift_simulation -- --nocapture`.

use std::collections::BTreeMap;

use k8s_openapi::jiff::Timestamp;
use modeldeploy::analysis::checks::{Judge, Reference, evaluate};
use modeldeploy::analysis::error_rate::SequentialConfig;
use modeldeploy::analysis::histogram::Histogram;
use modeldeploy::analysis::window::VariantData;
use modeldeploy::api::{Check, CheckVerdict, MultipleTestingCorrection};
use modeldeploy_demo::FEATURE_EDGES;

const SEEDS: u64 = 300;
const FEATURES: usize = 8;
/// Inputs in the reference, and in the canary's window.
const REFERENCE_N: usize = 4_000;
const CANARY_N: usize = 1_000;

/// xorshift64* with Box-Muller normals: small, fast, seedable.
struct Rng(u64);

impl Rng {
    fn unit(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
    }

    fn normal(&mut self) -> f64 {
        let (u1, u2) = (self.unit().max(1e-300), self.unit());
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }
}

/// `n` draws of N(shift, 1) bucketed like the demo server's feature histograms.
fn histogram(rng: &mut Rng, n: usize, shift: f64) -> Histogram {
    let mut counts = vec![0.0; FEATURE_EDGES.len() + 1];
    for _ in 0..n {
        let x = rng.normal() + shift;
        let bucket = FEATURE_EDGES.partition_point(|edge| *edge < x);
        counts[bucket] += 1.0;
    }
    let mut bounds = FEATURE_EDGES.to_vec();
    bounds.push(f64::INFINITY);
    Histogram::from_bucket_counts(bounds, &counts).unwrap()
}

fn checks() -> Vec<Check> {
    serde_json::from_value(serde_json::json!([
        {"name": "psi", "inputDrift": {"method": "psi", "max": 0.1}},
        {"name": "js", "inputDrift": {"method": "js", "max": 0.1}},
        {"name": "ks", "inputDrift": {"method": "ks", "max": 0.1}},
        {"name": "wasserstein", "inputDrift": {"method": "wasserstein", "max": 0.25}}
    ]))
    .unwrap()
}

/// Per check, the share of seeds in which it failed.
fn flagged_rates(shift: f64) -> BTreeMap<String, f64> {
    let checks = checks();
    let mut failures: BTreeMap<String, u64> = BTreeMap::new();
    for seed in 0..SEEDS {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ (seed + 1).wrapping_mul(0xBF58_476D_1CE4_E5B9));
        let mut reference = Reference::default();
        let mut canary = VariantData {
            requests: Some(CANARY_N as f64),
            ..Default::default()
        };
        for f in 0..FEATURES {
            let name = format!("f{f}");
            reference
                .features
                .insert(name.clone(), histogram(&mut rng, REFERENCE_N, 0.0));
            let moved = if f == 3 { shift } else { 0.0 };
            canary
                .features
                .insert(name, histogram(&mut rng, CANARY_N, moved));
        }
        let stable = VariantData::default();
        let judge = Judge {
            canary: &canary,
            stable: &stable,
            reference: Some(&reference),
            correction: MultipleTestingCorrection::BenjaminiHochberg,
            min_samples: 100,
            sequential: SequentialConfig::default(),
        };
        let run = evaluate(&checks, &judge, Timestamp::UNIX_EPOCH);
        for c in &run.checks {
            let failed = failures.entry(c.name.clone()).or_default();
            if c.verdict == CheckVerdict::Fail {
                *failed += 1;
            }
        }
    }
    failures
        .into_iter()
        .map(|(name, n)| (name, n as f64 / SEEDS as f64))
        .collect()
}

#[test]
fn half_a_standard_deviation_on_one_feature_is_flagged_by_every_method() {
    let rates = flagged_rates(0.5);
    println!("0.5 sd shift of 1 of {FEATURES} features, flagged: {rates:?} ({SEEDS} seeds)");
    assert_eq!(rates.len(), 4);
    for (check, rate) in rates {
        assert!(rate >= 0.99, "{check} flagged the shift in only {rate}");
    }
}

#[test]
fn sampling_noise_between_identical_distributions_is_not_flagged() {
    let rates = flagged_rates(0.0);
    println!("identical distributions, flagged: {rates:?} ({SEEDS} seeds)");
    assert_eq!(rates.len(), 4);
    for (check, rate) in rates {
        assert!(rate <= 0.01, "{check} flagged identical inputs in {rate}");
    }
}
