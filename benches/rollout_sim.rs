//! Whole-rollout simulation: seeded canary rollouts driven through the real
//! pure pipeline, many times, to measure false rollbacks, time to rollback
//! and time to promotion against the DESIGN.md targets.
//!
//! Per tick (10 s, the default `metrics.interval`) the simulation:
//! 1. lets the Ready pods of each revision serve traffic: the total request
//!    rate is split by Ready pods (the `replicas` router: the canary's share
//!    of pods is its share of traffic), errors are Binomial, latencies are a
//!    log-normal distribution counted into histogram buckets (Multinomial);
//!    every pod keeps cumulative Prometheus counters;
//! 2. reconciles like `controller::reconcile`: asks `rollout::analysis_due`;
//!    when due, "scrapes" every Ready pod's samples into per-rollout
//!    `CounterWindow`s that start at the first run (as
//!    `controller::collect::from_pods` does), builds `VariantData::from_totals`
//!    and judges `analysis::checks::evaluate`; then `rollout::decide`;
//! 3. applies the decision with a stand-in for the Deployment controller: pods
//!    are created and deleted to the decided sizes and are Ready one tick
//!    after they are created.
//!
//! `controller::collect::analyze` itself needs a kube `Context` (client,
//! pod reflector, scraper), and its window handling (`plan`, `from_pods`) is
//! private, so those ~40 lines are mirrored here; everything that judges and
//! decides is the library's own code.
//!
//! `cargo bench --bench rollout_sim` (release build; about a minute on 2 cores).
//! `ROLLOUT_SIM_SEEDS=200` for a quick run.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use k8s_openapi::jiff::Timestamp;
use modeldeploy::analysis::checks::{self, Judge};
use modeldeploy::analysis::error_rate::SequentialConfig;
use modeldeploy::analysis::window::{CounterWindow, VariantData};
use modeldeploy::api::{
    ModelDeploymentSpec, ModelDeploymentStatus, MultipleTestingCorrection, Outcome, PauseReason,
    Phase, ValidSpec, validate,
};
use modeldeploy::controller::collect::MAX_SERIES_PER_POD;
use modeldeploy::exposition::{MetricType, OwnedSample};
use modeldeploy::rollout::{self, AnalysisRun, Input, Observed, ObservedRevision};
use serde_json::json;

/// Simulation tick: traffic is generated and the object reconciled this often.
const TICK_S: i64 = 10;
/// `spec.rollout.analysis.interval`.
const INTERVAL_S: i64 = 30;
const REPLICAS: i32 = 20;
/// Histogram buckets of `model_request_duration_seconds` (seconds).
const BUCKETS: [f64; 12] = [
    0.025, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5,
];
/// Stable latency: log-normal with median 80 ms and p99 200 ms.
const LAT_MEDIAN_S: f64 = 0.080;
const LAT_P99_S: f64 = 0.200;
const Z99: f64 = 2.326_347_874_040_841;

fn spec(version: &str) -> ModelDeploymentSpec {
    serde_json::from_value(json!({
        "model": {"version": version, "image": format!("example/model:{version}")},
        "replicas": REPLICAS,
        "resources": {"requests": {"cpu": "1"}, "limits": {"cpu": "1"}},
        "rollout": {
            "strategy": "canary",
            "steps": [
                {"setWeight": 5}, {"analysis": {}},
                {"setWeight": 10}, {"analysis": {}},
                {"setWeight": 25}, {"analysis": {}},
                {"setWeight": 50}, {"analysis": {}}
            ],
            "analysis": {
                "interval": format!("{INTERVAL_S}s"),
                "failureLimit": 3,
                "inconclusiveLimit": 10,
                "minSamples": 200,
                "checks": [
                    {"name": "errors", "errorRate": {"max": 0.01}},
                    {"name": "vs-stable", "errorRate": {"maxRatioToStable": 1.5}},
                    {"name": "p99", "latency": {"quantile": 0.99, "max": "300ms"}}
                ]
            }
        }
    }))
    .expect("the simulated spec deserializes")
}

// ---------------------------------------------------------------- randomness

/// splitmix64, as in tests/analysis_simulation.rs.
struct Rng(u64);

impl Rng {
    fn new(seed: u64, stream: u64) -> Self {
        Rng(seed.wrapping_mul(0x2545_F491_4F6C_DD1D) ^ stream.wrapping_mul(0x9E37_79B9))
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn normal(&mut self) -> f64 {
        let u1 = self.unit().max(1e-300);
        let u2 = self.unit();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }

    /// Binomial(n, p): exact inversion while the mean is below 30, else the
    /// normal approximation (continuity-rounded, clamped).
    fn binomial(&mut self, n: u64, p: f64) -> u64 {
        if n == 0 || p <= 0.0 {
            return 0;
        }
        if p >= 1.0 {
            return n;
        }
        if p > 0.5 {
            return n - self.binomial(n, 1.0 - p);
        }
        let mean = n as f64 * p;
        if mean < 30.0 {
            let q = 1.0 - p;
            let u = self.unit();
            let mut pmf = q.powf(n as f64);
            let mut cdf = pmf;
            let mut k = 0;
            while u > cdf && k < n {
                pmf *= (n - k) as f64 / (k + 1) as f64 * p / q;
                k += 1;
                cdf += pmf;
                if k as f64 > mean && pmf < 1e-17 {
                    break;
                }
            }
            k
        } else {
            let sd = (mean * (1.0 - p)).sqrt();
            (mean + sd * self.normal()).round().clamp(0.0, n as f64) as u64
        }
    }

    /// Multinomial(n, probs) by conditional binomials.
    fn multinomial(&mut self, n: u64, probs: &[f64], out: &mut [u64]) {
        let mut left = n;
        let mut mass = 1.0;
        for (i, &p) in probs.iter().enumerate() {
            if i + 1 == probs.len() || left == 0 {
                out[i] = if i + 1 == probs.len() { left } else { 0 };
                continue;
            }
            let x = self.binomial(left, (p / mass).clamp(0.0, 1.0));
            out[i] = x;
            left -= x;
            mass -= p;
        }
    }
}

fn normal_cdf(z: f64) -> f64 {
    0.5 * statrs::function::erf::erfc(-z / std::f64::consts::SQRT_2)
}

/// Per-bucket probabilities (the last is `+Inf`) of the log-normal latency,
/// scaled by `scale` (2.0 doubles every quantile, p99 included).
fn latency_probs(scale: f64) -> Vec<f64> {
    let mu = (LAT_MEDIAN_S * scale).ln();
    let sigma = (LAT_P99_S / LAT_MEDIAN_S).ln() / Z99;
    let mut prev = 0.0;
    let mut out: Vec<f64> = BUCKETS
        .iter()
        .map(|&b| {
            let c = normal_cdf((b.ln() - mu) / sigma);
            let p = c - prev;
            prev = c;
            p
        })
        .collect();
    out.push(1.0 - prev);
    out
}

// ---------------------------------------------------------------- the model

#[derive(Clone, Copy, PartialEq)]
enum Fault {
    /// The canary behaves like stable throughout.
    None,
    /// Bad from the moment it takes traffic.
    FromStart,
    /// Good until the rollout starts its `setWeight: w` step.
    AtWeight(i32),
}

#[derive(Clone, Copy)]
struct Scenario {
    name: &'static str,
    /// Requests per second of the whole service, split by Ready pods.
    total_rps: f64,
    stable_errors: f64,
    bad_errors: f64,
    /// Latency scale of the bad canary (1.0: same as stable).
    bad_latency: f64,
    fault: Fault,
    horizon_s: i64,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum End {
    Promoted,
    RolledBack,
    Unfinished,
}

#[derive(Clone, Debug)]
struct RunResult {
    seed: u64,
    end: End,
    /// Seconds since the spec changed.
    end_t: i64,
    /// When the decision first said `Promoting`.
    promoting_t: Option<i64>,
    /// When the rollout first paused for lack of data.
    paused_t: Option<i64>,
    /// When the canary turned bad.
    fault_t: Option<i64>,
    reason: String,
    runs: u32,
}

struct Pod {
    uid: String,
    hash: String,
    started: i64,
    ready_at: i64,
    ok: u64,
    errors: u64,
    /// Non-cumulative bucket counts, the last `+Inf`.
    buckets: [u64; BUCKETS.len() + 1],
}

impl Pod {
    fn samples(&self) -> Vec<OwnedSample> {
        let counter = |code: &str, v: u64| OwnedSample {
            family: "model_requests_total".into(),
            name: "model_requests_total".into(),
            kind: MetricType::Counter,
            labels: vec![("code".into(), code.into())],
            value: v as f64,
            timestamp: None,
        };
        let mut out = vec![counter("200", self.ok), counter("503", self.errors)];
        let mut cum = 0;
        for (i, c) in self.buckets.iter().enumerate() {
            cum += c;
            let le = BUCKETS.get(i).map_or("+Inf".to_string(), |b| b.to_string());
            out.push(OwnedSample {
                family: "model_request_duration_seconds".into(),
                name: "model_request_duration_seconds_bucket".into(),
                kind: MetricType::Histogram,
                labels: vec![("le".into(), le)],
                value: cum as f64,
                timestamp: None,
            });
        }
        out
    }
}

/// The windows `controller::collect` keeps per rollout.
struct Windows {
    judged_hash: String,
    baseline_hash: String,
    judged: CounterWindow,
    baseline: CounterWindow,
}

struct World {
    spec: ModelDeploymentSpec,
    valid: ValidSpec,
    status: ModelDeploymentStatus,
    /// Decided size of every revision Deployment: hash -> (revision, version, replicas).
    desired: BTreeMap<String, (i64, String, i32)>,
    pods: Vec<Pod>,
    next_uid: u64,
    windows: Option<Windows>,
    t: i64,
    rng: Rng,
    /// Fractional requests carried to the next tick, per variant.
    carry: [f64; 2],
    split_offset: usize,
    trace: bool,
}

fn now_of(t: i64) -> Timestamp {
    Timestamp::from_second(1_700_000_000 + t).expect("in range")
}

impl World {
    fn observed(&self) -> Observed {
        self.desired
            .iter()
            .map(|(hash, (revision, version, replicas))| {
                let ready = self
                    .pods
                    .iter()
                    .filter(|p| &p.hash == hash && p.ready_at <= self.t)
                    .count() as i32;
                (
                    hash.clone(),
                    ObservedRevision {
                        revision: *revision,
                        version: version.clone(),
                        image: format!("example/model:{version}"),
                        replicas: *replicas,
                        available_replicas: ready,
                        deadline_exceeded: false,
                        // Counts come from the pods themselves here.
                        lagging: false,
                    },
                )
            })
            .collect()
    }

    /// The stand-in Deployment controller: pods to the decided sizes; a new
    /// pod is Ready one tick later; scale-down removes unready, then newest.
    fn apply(&mut self, workloads: &[modeldeploy::resources::RevisionWorkload]) {
        self.desired = workloads
            .iter()
            .map(|w| (w.hash.clone(), (w.revision, w.version.clone(), w.replicas)))
            .collect();
        let desired = &self.desired;
        self.pods.retain(|p| desired.contains_key(&p.hash));
        for (hash, (_, _, replicas)) in self.desired.clone() {
            let want = usize::try_from(replicas).unwrap_or(0);
            let mut have: Vec<usize> = (0..self.pods.len())
                .filter(|&i| self.pods[i].hash == hash)
                .collect();
            while have.len() < want {
                self.next_uid += 1;
                self.pods.push(Pod {
                    uid: format!("pod-{}", self.next_uid),
                    hash: hash.clone(),
                    started: self.t,
                    ready_at: self.t + TICK_S,
                    ok: 0,
                    errors: 0,
                    buckets: [0; BUCKETS.len() + 1],
                });
                have.push(self.pods.len() - 1);
            }
            if have.len() > want {
                // Unready first, then the newest.
                have.sort_by_key(|&i| (self.pods[i].ready_at > self.t, self.pods[i].started));
                let mut drop: Vec<usize> = have[want..].to_vec();
                drop.sort_unstable_by(|a, b| b.cmp(a));
                for i in drop {
                    self.pods.swap_remove(i);
                }
            }
        }
    }

    /// One tick of traffic on the Ready pods.
    fn serve(&mut self, sc: &Scenario, canary_hash: &str, bad: bool, probs: &[Vec<f64>; 2]) {
        let ready: Vec<usize> = (0..self.pods.len())
            .filter(|&i| self.pods[i].ready_at <= self.t)
            .collect();
        let n_canary = ready
            .iter()
            .filter(|&&i| self.pods[i].hash == canary_hash)
            .count();
        let n_all = ready.len();
        if n_all == 0 {
            return;
        }
        self.split_offset = self.split_offset.wrapping_add(1);
        for variant in 0..2 {
            let is_canary = variant == 1;
            let pods: Vec<usize> = ready
                .iter()
                .copied()
                .filter(|&i| (self.pods[i].hash == canary_hash) == is_canary)
                .collect();
            if pods.is_empty() {
                continue;
            }
            let share = if is_canary {
                n_canary
            } else {
                n_all - n_canary
            } as f64
                / n_all as f64;
            let want = sc.total_rps * share * TICK_S as f64 + self.carry[variant];
            let n = want.floor() as u64;
            self.carry[variant] = want - n as f64;
            let bad_now = is_canary && bad;
            let p_err = if bad_now {
                sc.bad_errors
            } else {
                sc.stable_errors
            };
            let errors = self.rng.binomial(n, p_err);
            let latency = &probs[usize::from(bad_now)];
            let mut buckets = [0u64; BUCKETS.len() + 1];
            self.rng.multinomial(n, latency, &mut buckets);
            let k = pods.len() as u64;
            let off = self.split_offset;
            let part = |total: u64, j: usize| -> u64 {
                let j = ((j + off) % pods.len()) as u64;
                total / k + u64::from(j < total % k)
            };
            for (j, &i) in pods.iter().enumerate() {
                let pod = &mut self.pods[i];
                pod.ok += part(n - errors, j);
                pod.errors += part(errors, j);
                for (b, &c) in buckets.iter().enumerate() {
                    pod.buckets[b] += part(c, j);
                }
            }
        }
    }

    /// `controller::collect::analyze` for pods as the source, minus the I/O.
    fn analyze(&mut self) -> Option<AnalysisRun> {
        let stable = self.status.stable.as_ref()?;
        let canary = self.status.canary.as_ref()?;
        let rollout = self.spec.rollout.as_ref()?;
        let now = now_of(self.t);
        let start = modeldeploy::controller::collect::window_start(&self.status, now);
        let w = match self.windows.take() {
            Some(w) if w.judged_hash == canary.hash && w.baseline_hash == stable.hash => w,
            _ => Windows {
                judged_hash: canary.hash.clone(),
                baseline_hash: stable.hash.clone(),
                judged: CounterWindow::new(start.as_second(), MAX_SERIES_PER_POD),
                baseline: CounterWindow::new(start.as_second(), MAX_SERIES_PER_POD),
            },
        };
        let mut w = w;
        for p in self.pods.iter().filter(|p| p.ready_at <= self.t) {
            let started = Some(now_of(p.started).as_second());
            if p.hash == w.judged_hash {
                w.judged.observe(&p.uid, started, &p.samples());
            } else if p.hash == w.baseline_hash {
                w.baseline.observe(&p.uid, started, &p.samples());
            }
        }
        let judged = VariantData::from_totals(&self.valid.names, &w.judged.totals());
        let baseline = VariantData::from_totals(&self.valid.names, &w.baseline.totals());
        let judge = Judge {
            canary: &judged,
            stable: &baseline,
            reference: None,
            correction: MultipleTestingCorrection::default(),
            min_samples: u64::try_from(rollout.analysis.min_samples).unwrap_or(0),
            sequential: SequentialConfig::default(),
        };
        let run = checks::evaluate(&rollout.analysis.checks, &judge, now);
        if self.trace {
            let verdicts: Vec<String> = run
                .checks
                .iter()
                .map(|c| {
                    format!(
                        "{}={:?}({})",
                        c.name,
                        c.verdict,
                        c.message.as_deref().unwrap_or_default()
                    )
                })
                .collect();
            eprintln!(
                "t={} w={} step={} run: {}",
                self.t,
                canary.weight,
                canary.step,
                verdicts.join("; ")
            );
        }
        self.windows = Some(w);
        Some(run)
    }

    fn reconcile(&mut self) -> (rollout::Decision, bool) {
        let observed = self.observed();
        let now = now_of(self.t);
        let analysis = if rollout::analysis_due(&self.spec, &self.valid, &self.status, now) {
            self.analyze()
        } else {
            None
        };
        let d = rollout::decide(&Input {
            name: "sim",
            spec: &self.spec,
            valid: &self.valid,
            generation: Some(1),
            status: &self.status,
            observed: &observed,
            analysis: analysis.as_ref(),
            canary_pods_failure: None,
            request: None,
            gate: None,
            now,
        });
        self.apply(&d.workloads);
        self.status = d.status.clone();
        if self.status.canary.is_none() && self.status.guard.is_none() {
            self.windows = None;
        }
        (d, analysis.is_some())
    }
}

fn simulate(sc: &Scenario, seed: u64, trace: Option<u64>) -> RunResult {
    let v1 = spec("1.0.0");
    let mut world = World {
        valid: validate(&v1).expect("valid spec"),
        spec: v1,
        status: ModelDeploymentStatus::default(),
        desired: BTreeMap::new(),
        pods: Vec::new(),
        next_uid: 0,
        windows: None,
        t: -10 * TICK_S,
        rng: Rng::new(seed, 1),
        carry: [0.0; 2],
        split_offset: 0,
        trace: trace == Some(seed),
    };
    let probs = [latency_probs(1.0), latency_probs(sc.bad_latency)];
    // The first revision settles.
    while world.t < 0 {
        world.reconcile();
        world.t += TICK_S;
    }
    assert_eq!(world.status.phase, Some(Phase::Stable));
    // Revision 2 starts rolling out at t = 0.
    world.spec = spec("2.0.0");
    world.valid = validate(&world.spec).expect("valid spec");
    world.reconcile();
    let canary_hash = world
        .status
        .canary
        .as_ref()
        .expect("a canary started")
        .hash
        .clone();
    let mut r = RunResult {
        seed,
        end: End::Unfinished,
        end_t: sc.horizon_s,
        promoting_t: None,
        paused_t: None,
        fault_t: None,
        reason: String::new(),
        runs: 0,
    };
    let mut canary_took_traffic = false;
    while world.t < sc.horizon_s {
        // Has the fault struck? It acts on traffic from this tick on.
        if r.fault_t.is_none() {
            let c = world.status.canary.as_ref();
            let struck = match sc.fault {
                Fault::None => false,
                Fault::FromStart => canary_took_traffic,
                Fault::AtWeight(w) => c.is_some_and(|c| c.set_weight >= w),
            };
            if struck {
                r.fault_t = Some(world.t);
            }
        }
        world.serve(sc, &canary_hash, r.fault_t.is_some(), &probs);
        world.t += TICK_S;
        let (d, ran) = world.reconcile();
        r.runs += u32::from(ran);
        canary_took_traffic |= d.canary_weight > 0
            || world
                .pods
                .iter()
                .any(|p| p.hash == canary_hash && p.ready_at <= world.t);
        if let Some(c) = &world.status.canary {
            if c.promoting && r.promoting_t.is_none() {
                r.promoting_t = Some(world.t);
            }
            if c.paused == Some(PauseReason::Inconclusive) && r.paused_t.is_none() {
                r.paused_t = Some(world.t);
            }
        }
        if let Some(h) = world
            .status
            .history
            .iter()
            .rev()
            .find(|h| h.version == "2.0.0")
        {
            match h.outcome {
                Outcome::Promoted => r.end = End::Promoted,
                Outcome::RolledBack => r.end = End::RolledBack,
                _ => {}
            }
            if r.end != End::Unfinished {
                r.end_t = world.t;
                r.reason = h.reason.clone();
                assert_eq!(d.canary_weight, 0, "the rollout ended");
                break;
            }
        }
    }
    r
}

// ---------------------------------------------------------------- statistics

/// Wilson score interval at 95 %.
fn wilson(k: usize, n: usize) -> (f64, f64) {
    if n == 0 {
        return (0.0, 1.0);
    }
    let z = 1.959_963_984_540_054_f64;
    let n = n as f64;
    let p = k as f64 / n;
    let denom = 1.0 + z * z / n;
    let centre = (p + z * z / (2.0 * n)) / denom;
    let half = z * ((p * (1.0 - p) / n) + z * z / (4.0 * n * n)).sqrt() / denom;
    ((centre - half).max(0.0), (centre + half).min(1.0))
}

/// Nearest-rank quantile.
fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn dist(mut xs: Vec<f64>) -> String {
    if xs.is_empty() {
        return "-".into();
    }
    xs.sort_by(f64::total_cmp);
    format!(
        "{:.2} / {:.2} / {:.2}",
        quantile(&xs, 0.5),
        quantile(&xs, 0.95),
        xs[xs.len() - 1]
    )
}

fn pct(k: usize, n: usize) -> String {
    let (lo, hi) = wilson(k, n);
    format!(
        "{k}/{n} = {:.2} % [{:.2}, {:.2}]",
        100.0 * k as f64 / n.max(1) as f64,
        100.0 * lo,
        100.0 * hi
    )
}

fn run_all(sc: &Scenario, seeds: &[u64], trace: Option<u64>) -> Vec<RunResult> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let chunk = seeds.len().div_ceil(threads).max(1);
    std::thread::scope(|s| {
        let handles: Vec<_> = seeds
            .chunks(chunk)
            .map(|part| {
                s.spawn(move || {
                    part.iter()
                        .map(|&seed| simulate(sc, seed, trace))
                        .collect::<Vec<RunResult>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("a simulation thread panicked"))
            .collect::<Vec<RunResult>>()
    })
}

fn intervals(s: i64) -> f64 {
    s as f64 / INTERVAL_S as f64
}

fn main() {
    // `cargo bench` passes `--bench`; without it (`cargo test --benches`)
    // this is a smoke run of a few seeds. A filter argument is not supported.
    let bench = std::env::args().any(|a| a == "--bench");
    let n_seeds: u64 = std::env::var("ROLLOUT_SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(if bench { 2_000 } else { 10 });
    let seeds: Vec<u64> = (0..n_seeds).collect();
    let hour = 3600;
    let good = |name, total_rps, horizon_s| Scenario {
        name,
        total_rps,
        stable_errors: 0.001,
        bad_errors: 0.001,
        bad_latency: 1.0,
        fault: Fault::None,
        horizon_s,
    };
    let bad = |name, total_rps, fault| Scenario {
        name,
        total_rps,
        stable_errors: 0.001,
        bad_errors: 0.05,
        bad_latency: 1.0,
        fault,
        horizon_s: hour,
    };
    let slow = |name, total_rps| Scenario {
        name,
        total_rps,
        stable_errors: 0.001,
        bad_errors: 0.001,
        bad_latency: 2.0,
        fault: Fault::FromStart,
        horizon_s: hour,
    };
    let scenarios = [
        good("identical, 2000 req/s total", 2000.0, hour),
        good("identical, 100 req/s total", 100.0, hour),
        good("identical, 40 req/s total", 40.0, hour),
        good("identical, 2 req/s total", 2.0, hour),
        bad("5% errors from start, 2000 req/s", 2000.0, Fault::FromStart),
        bad("5% errors from start, 100 req/s", 100.0, Fault::FromStart),
        bad(
            "5% errors from 25% step, 2000 req/s",
            2000.0,
            Fault::AtWeight(25),
        ),
        bad(
            "5% errors from 25% step, 100 req/s",
            100.0,
            Fault::AtWeight(25),
        ),
        slow("p99 doubled from start, 2000 req/s", 2000.0),
        slow("p99 doubled from start, 100 req/s", 100.0),
    ];
    println!(
        "whole-rollout simulation: {n_seeds} seeds (0..{n_seeds}) per scenario, analysis every {INTERVAL_S}s, tick {TICK_S}s, {REPLICAS} replicas"
    );
    println!(
        "steps 5/10/25/50 % each followed by an analysis step, then promotion; checks errorRate.max 0.01, maxRatioToStable 1.5, p99 <= 300ms; stable 0.1 % errors, p99 200 ms"
    );
    println!();
    let mut table = String::new();
    let _ = writeln!(
        table,
        "| scenario | canary req/s at 5 % | rolled back [95 % CI] | promoted | paused (inconclusive) | unfinished at 1 h | to promotion, intervals (median / p95 / max) | fault to rollback, intervals (median / p95 / max) | rolled back within 2 intervals |"
    );
    let _ = writeln!(
        table,
        "| --- | ---: | --- | ---: | ---: | ---: | --- | --- | ---: |"
    );
    let mut notes = Vec::new();
    for sc in &scenarios {
        let started = std::time::Instant::now();
        let trace = std::env::var("ROLLOUT_SIM_TRACE").ok().and_then(|t| {
            let (name, seed) = t.rsplit_once(':')?;
            (name == sc.name).then(|| seed.parse().ok()).flatten()
        });
        let rs = run_all(sc, &seeds, trace);
        let n = rs.len();
        let rolled = rs.iter().filter(|r| r.end == End::RolledBack).count();
        let promoted = rs.iter().filter(|r| r.end == End::Promoted).count();
        let ever_promoting = rs.iter().filter(|r| r.promoting_t.is_some()).count();
        let paused = rs.iter().filter(|r| r.paused_t.is_some()).count();
        let unfinished = rs.iter().filter(|r| r.end == End::Unfinished).count();
        let to_promo: Vec<f64> = rs
            .iter()
            .filter(|r| r.end == End::Promoted)
            .filter_map(|r| r.promoting_t.map(intervals))
            .collect();
        let to_rb: Vec<f64> = rs
            .iter()
            .filter(|r| r.end == End::RolledBack)
            .filter_map(|r| r.fault_t.map(|f| intervals(r.end_t - f)))
            .collect();
        let faulty = rs.iter().filter(|r| r.fault_t.is_some()).count();
        let within2 = rs
            .iter()
            .filter(|r| {
                r.end == End::RolledBack && r.fault_t.is_some_and(|f| r.end_t - f <= 2 * INTERVAL_S)
            })
            .count();
        let canary_rps = sc.total_rps * 0.05;
        let _ = writeln!(
            table,
            "| {} | {canary_rps} | {} | {promoted} | {paused} | {unfinished} | {} | {} | {} |",
            sc.name,
            pct(rolled, n),
            dist(to_promo),
            dist(to_rb),
            if sc.fault == Fault::None {
                "-".to_string()
            } else {
                pct(within2, faulty)
            }
        );
        println!(
            "{:<42} {:>6.1}s  rolled back {rolled:>4}  promoted {promoted:>4}  ever promoting {ever_promoting:>4}  paused {paused:>4}  unfinished {unfinished:>4}  runs/rollout {:.1}",
            sc.name,
            started.elapsed().as_secs_f64(),
            rs.iter().map(|r| f64::from(r.runs)).sum::<f64>() / n as f64
        );
        if let Some(r) = rs.iter().find(|r| r.paused_t.is_some()) {
            notes.push(format!(
                "{}: {paused} paused for lack of data, e.g. seed {} at {:.1} intervals (fault at {:?}s, end {:?})",
                sc.name,
                r.seed,
                intervals(r.paused_t.unwrap_or_default()),
                r.fault_t,
                r.end
            ));
        }
        if sc.fault == Fault::None {
            for r in rs.iter().filter(|r| r.end == End::RolledBack).take(5) {
                notes.push(format!(
                    "{}: seed {} rolled back at {:.1} intervals: {}",
                    sc.name,
                    r.seed,
                    intervals(r.end_t),
                    r.reason
                ));
            }
        } else {
            if ever_promoting > 0 {
                let r = rs
                    .iter()
                    .find(|r| r.promoting_t.is_some())
                    .expect("counted");
                notes.push(format!(
                    "{}: {ever_promoting} bad canaries reached Promoting, e.g. seed {} (fault at {:?}s, promoting at {:?}s)",
                    sc.name, r.seed, r.fault_t, r.promoting_t
                ));
            }
            if let Some(r) = rs
                .iter()
                .filter(|r| r.end == End::RolledBack)
                .filter_map(|r| Some((r, r.end_t - r.fault_t?)))
                .max_by_key(|(_, d)| *d)
                .map(|(r, _)| r)
            {
                notes.push(format!(
                    "{}: slowest rollback seed {}: fault at {:?}s, rolled back at {}s: {}",
                    sc.name, r.seed, r.fault_t, r.end_t, r.reason
                ));
            }
        }
    }
    println!();
    print!("{table}");
    println!();
    for n in notes {
        println!("- {n}");
    }
}
