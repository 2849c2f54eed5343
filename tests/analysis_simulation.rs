//! Seeded simulations of whole rollouts judged by the error-rate checks:
//! identical versions are rarely rolled back, at high and at low traffic,
//! while a clearly bad canary is rolled back within two intervals.
//! Reproduce the printed rates with
//! `cargo test --release --test analysis_simulation -- --nocapture`.

use modeldeploy::analysis::error_rate::{Counts, SequentialConfig, max_rate, ratio_to_stable};
use modeldeploy::api::CheckVerdict;

/// splitmix64: a small, fast, seedable generator.
struct Rng(u64);

impl Rng {
    fn unit(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Binomial(n, p) by inversion: errors per interval, not per request.
    fn binomial(&mut self, n: u64, p: f64) -> u64 {
        let u = self.unit();
        let q = 1.0 - p;
        let mut pmf = q.powf(n as f64);
        let mut cdf = pmf;
        let mut k = 0;
        while u > cdf && k < n {
            pmf *= (n - k) as f64 / (k + 1) as f64 * p / q;
            k += 1;
            cdf += pmf;
            if pmf < 1e-300 && cdf < u && k as f64 > n as f64 * p * 10.0 + 50.0 {
                break;
            }
        }
        k
    }
}

struct Traffic {
    canary_rps: f64,
    stable_rps: f64,
    canary_errors: f64,
    stable_errors: f64,
}

const INTERVAL_S: f64 = 30.0;
const INTERVALS: usize = 10;
const FAILURE_LIMIT: u32 = 3;

/// The interval at which the rollout rolls back (1-based), if it does.
fn rollout(seed: u64, t: &Traffic, cfg: &SequentialConfig) -> Option<usize> {
    let mut rng = Rng(seed.wrapping_mul(0x2545_F491_4F6C_DD1D) ^ 0xDEAD_BEEF);
    let (mut canary, mut stable) = (Counts::default(), Counts::default());
    let mut failed_in_a_row = 0;
    for i in 1..=INTERVALS {
        let nc = (t.canary_rps * INTERVAL_S) as u64;
        let ns = (t.stable_rps * INTERVAL_S) as u64;
        canary.requests += nc as f64;
        canary.errors += rng.binomial(nc, t.canary_errors) as f64;
        stable.requests += ns as f64;
        stable.errors += rng.binomial(ns, t.stable_errors) as f64;
        let a = max_rate("errors", canary, 0.01, cfg);
        let b = ratio_to_stable("vs-stable", canary, stable, 1.5, cfg);
        let failed = [&a, &b]
            .iter()
            .any(|j| j.status.verdict == CheckVerdict::Fail);
        let decisive = [&a, &b].iter().any(|j| j.decisive);
        failed_in_a_row = if failed { failed_in_a_row + 1 } else { 0 };
        if decisive || failed_in_a_row >= FAILURE_LIMIT {
            return Some(i);
        }
    }
    None
}

/// A fixed per-interval rule: success rate >= 99 % in each interval,
/// `limit` failed intervals in a row roll back.
fn naive_rollout(seed: u64, t: &Traffic, limit: u32) -> bool {
    let mut rng = Rng(seed.wrapping_mul(0x2545_F491_4F6C_DD1D) ^ 0xDEAD_BEEF);
    let mut in_a_row = 0;
    for _ in 0..INTERVALS {
        let n = (t.canary_rps * INTERVAL_S) as u64;
        let e = rng.binomial(n, t.canary_errors);
        let _ = rng.binomial((t.stable_rps * INTERVAL_S) as u64, t.stable_errors);
        let ok = n > 0 && (n - e) as f64 / n as f64 >= 0.99;
        in_a_row = if ok { 0 } else { in_a_row + 1 };
        if in_a_row >= limit {
            return true;
        }
    }
    false
}

const SEEDS: u64 = 1000;

fn rate(hits: usize) -> f64 {
    hits as f64 / SEEDS as f64
}

#[test]
fn identical_versions_are_rarely_rolled_back_at_high_traffic() {
    let t = Traffic {
        canary_rps: 100.0,
        stable_rps: 100.0,
        canary_errors: 0.001,
        stable_errors: 0.001,
    };
    let cfg = SequentialConfig::default();
    let rollbacks = (0..SEEDS)
        .filter(|&s| rollout(s, &t, &cfg).is_some())
        .count();
    println!(
        "high traffic, identical: {:.2}% rolled back",
        100.0 * rate(rollbacks)
    );
    assert!(rate(rollbacks) < 0.01, "{rollbacks} of {SEEDS}");
}

#[test]
fn identical_versions_are_rarely_rolled_back_at_low_traffic_where_a_fixed_rule_fails() {
    let t = Traffic {
        canary_rps: 1.0,
        stable_rps: 19.0,
        canary_errors: 0.005,
        stable_errors: 0.005,
    };
    let cfg = SequentialConfig::default();
    let ours = (0..SEEDS)
        .filter(|&s| rollout(s, &t, &cfg).is_some())
        .count();
    let naive_any = (0..SEEDS).filter(|&s| naive_rollout(s, &t, 1)).count();
    let naive_three = (0..SEEDS).filter(|&s| naive_rollout(s, &t, 3)).count();
    println!(
        "low traffic, identical: ours {:.2}%, fixed rule (1 failed interval) {:.1}%, fixed rule (3 in a row) {:.1}%",
        100.0 * rate(ours),
        100.0 * rate(naive_any),
        100.0 * rate(naive_three)
    );
    assert!(rate(ours) < 0.01, "{ours} of {SEEDS}");
    assert!(
        rate(naive_any) > 0.5,
        "the fixed rule fails identical versions most of the time: {naive_any}"
    );
    assert!(
        naive_three > ours,
        "even with 3 in a row the fixed rule does worse"
    );
}

#[test]
fn a_bad_canary_is_rolled_back_within_two_intervals() {
    let t = Traffic {
        canary_rps: 100.0,
        stable_rps: 100.0,
        canary_errors: 0.05,
        stable_errors: 0.001,
    };
    let cfg = SequentialConfig::default();
    let fast = (0..SEEDS)
        .filter(|&s| rollout(s, &t, &cfg).is_some_and(|i| i <= 2))
        .count();
    println!(
        "5% vs 0.1% at 100 req/s: {:.1}% rolled back within 2 intervals",
        100.0 * rate(fast)
    );
    assert!(rate(fast) >= 0.99, "{fast} of {SEEDS}");
}
