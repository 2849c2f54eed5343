//! A small, real model server for the examples, the end-to-end suite and the
//! scenario tests: a logistic scorer over numeric features that exposes
//! `/metrics` in the modeldeploy convention, with switches that make a
//! version bad on purpose (errors, latency, shifted predictions, crashes,
//! slow start), and a load generator that also sends feedback labels.
//!
//! Its own crate, so that the operator library does not carry it; the
//! operator's tests use it, and `cli` is the `modeldeploy-demo` binary.

pub mod cli;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry, TextEncoder,
};
use serde::{Deserialize, Serialize};

/// Input feature histogram edges: standardised features live around 0.
pub const FEATURE_EDGES: [f64; 20] = [
    -3.0, -2.6842, -2.3684, -2.0526, -1.7368, -1.4211, -1.1053, -0.7895, -0.4737, -0.1579, 0.1579,
    0.4737, 0.7895, 1.1053, 1.4211, 1.7368, 2.0526, 2.3684, 2.6842, 3.0,
];

/// How a server instance behaves; every field has a flag and an env var in
/// the binary.
#[derive(Debug, Clone)]
pub struct Behaviour {
    pub version: String,
    /// Fraction of prediction requests answered with HTTP 500.
    pub error_rate: f64,
    /// Added to every prediction request.
    pub latency: Duration,
    /// Added to the logit: shifts the prediction distribution.
    pub prediction_shift: f64,
    /// Exit the process after this many prediction requests.
    pub crash_after: Option<u64>,
    /// Not ready (503 on /healthz) for this long after start.
    pub slow_start: Duration,
    /// Feature weights of the logistic scorer.
    pub weights: Vec<f64>,
    pub bias: f64,
    /// Seed of the error-injection stream, so tests are repeatable.
    pub seed: u64,
    /// Serve `POST /fault {"errorRate": x}`, which changes the error rate of
    /// the running server: a version that turns bad after it was promoted.
    pub allow_faults: bool,
    /// When the serving process started (Unix seconds), exported as
    /// `process_start_time_seconds` like a Prometheus client library does.
    /// The binary sets it; a server inside a test process is no process of
    /// its own and leaves it out.
    pub process_start: Option<f64>,
}

impl Default for Behaviour {
    fn default() -> Self {
        Self {
            version: "1.0.0".into(),
            error_rate: 0.0,
            latency: Duration::ZERO,
            prediction_shift: 0.0,
            crash_after: None,
            slow_start: Duration::ZERO,
            weights: vec![0.8, -0.5, 0.3, 0.1],
            bias: 0.0,
            seed: 1,
            allow_faults: false,
            process_start: None,
        }
    }
}

struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    latency: HistogramVec,
    features: HistogramVec,
    predictions: HistogramVec,
    outcomes: IntCounterVec,
}

impl Metrics {
    fn new(process_start: Option<f64>) -> Self {
        let registry = Registry::new();
        if let Some(at) = process_start {
            let gauge = prometheus::Gauge::new(
                "process_start_time_seconds",
                "Start time of the process since unix epoch in seconds.",
            )
            .expect("valid metric");
            gauge.set(at);
            let _ = registry.register(Box::new(gauge));
        }
        let requests = IntCounterVec::new(
            Opts::new("model_requests_total", "Prediction requests by HTTP code."),
            &["code"],
        )
        .expect("valid metric");
        let latency = HistogramVec::new(
            HistogramOpts::new("model_request_duration_seconds", "Prediction latency.").buckets(
                vec![
                    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                ],
            ),
            &[],
        )
        .expect("valid metric");
        let features = HistogramVec::new(
            HistogramOpts::new("model_input_feature", "Input feature values.")
                .buckets(FEATURE_EDGES.to_vec()),
            &["feature"],
        )
        .expect("valid metric");
        let predictions = HistogramVec::new(
            HistogramOpts::new("model_prediction", "Prediction scores.")
                .buckets((1..=20).map(|i| f64::from(i) / 20.0).collect()),
            &[],
        )
        .expect("valid metric");
        let outcomes = IntCounterVec::new(
            Opts::new(
                "model_prediction_outcomes_total",
                "Delayed labels vs predictions.",
            ),
            &["actual", "predicted"],
        )
        .expect("valid metric");
        for c in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(latency.clone()),
            Box::new(features.clone()),
            Box::new(predictions.clone()),
            Box::new(outcomes.clone()),
        ] {
            let _ = registry.register(c);
        }
        Self {
            registry,
            requests,
            latency,
            features,
            predictions,
            outcomes,
        }
    }
}

struct Server {
    behaviour: Behaviour,
    /// The error rate now (f64 bits): the behaviour's, until a fault changes it.
    error_rate: AtomicU64,
    metrics: Metrics,
    started: Instant,
    served: AtomicU64,
    rng: AtomicU64,
}

impl Server {
    /// A tiny lock-free pseudo-random stream (splitmix64): deterministic per seed.
    fn next_unit(&self) -> f64 {
        let x = self
            .rng
            .fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed)
            .wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[derive(Debug, Serialize, Deserialize)]
pub struct PredictRequest {
    pub features: Vec<f64>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct PredictResponse {
    pub score: f64,
    pub label: String,
    pub version: String,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Feedback {
    pub actual: String,
    pub predicted: String,
}

pub fn router(behaviour: Behaviour) -> Router {
    let seed = behaviour.seed;
    let allow_faults = behaviour.allow_faults;
    let state = Arc::new(Server {
        error_rate: AtomicU64::new(behaviour.error_rate.to_bits()),
        metrics: Metrics::new(behaviour.process_start),
        behaviour,
        started: Instant::now(),
        served: AtomicU64::new(0),
        rng: AtomicU64::new(seed),
    });
    let router = Router::new()
        .route("/predict", post(predict))
        .route("/feedback", post(feedback))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics));
    let router = if allow_faults {
        router.route("/fault", post(fault))
    } else {
        router
    };
    router.with_state(state)
}

/// A fault injected into a running server.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Fault {
    pub error_rate: f64,
}

async fn fault(State(s): State<Arc<Server>>, axum::Json(f): axum::Json<Fault>) -> StatusCode {
    if !(0.0..=1.0).contains(&f.error_rate) {
        return StatusCode::UNPROCESSABLE_ENTITY;
    }
    tracing::warn!(error_rate = f.error_rate, "fault injected");
    s.error_rate.store(f.error_rate.to_bits(), Ordering::SeqCst);
    StatusCode::NO_CONTENT
}

async fn predict(
    State(s): State<Arc<Server>>,
    axum::Json(req): axum::Json<PredictRequest>,
) -> axum::response::Response {
    let start = Instant::now();
    let b = &s.behaviour;
    let n = s.served.fetch_add(1, Ordering::SeqCst) + 1;
    if b.crash_after.is_some_and(|limit| n > limit) {
        tracing::error!(served = n, "crashing on purpose (--crash-after)");
        std::process::exit(3);
    }
    if !b.latency.is_zero() {
        tokio::time::sleep(b.latency).await;
    }
    for (i, x) in req.features.iter().enumerate() {
        s.metrics
            .features
            .with_label_values(&[&format!("f{i}")])
            .observe(*x);
    }
    let error_rate = f64::from_bits(s.error_rate.load(Ordering::SeqCst));
    let failed = error_rate > 0.0 && s.next_unit() < error_rate;
    let response = if failed {
        s.metrics.requests.with_label_values(&["500"]).inc();
        (StatusCode::INTERNAL_SERVER_ERROR, "injected failure").into_response()
    } else {
        let logit: f64 = b.bias
            + b.prediction_shift
            + req
                .features
                .iter()
                .zip(&b.weights)
                .map(|(x, w)| x * w)
                .sum::<f64>();
        let score = 1.0 / (1.0 + (-logit).exp());
        s.metrics
            .predictions
            .with_label_values(&[] as &[&str])
            .observe(score);
        s.metrics.requests.with_label_values(&["200"]).inc();
        axum::Json(PredictResponse {
            score,
            label: if score >= 0.5 { "1" } else { "0" }.into(),
            version: b.version.clone(),
        })
        .into_response()
    };
    s.metrics
        .latency
        .with_label_values(&[] as &[&str])
        .observe(start.elapsed().as_secs_f64());
    response
}

async fn feedback(State(s): State<Arc<Server>>, axum::Json(f): axum::Json<Feedback>) -> StatusCode {
    s.metrics
        .outcomes
        .with_label_values(&[&f.actual, &f.predicted])
        .inc();
    StatusCode::NO_CONTENT
}

async fn healthz(State(s): State<Arc<Server>>) -> impl IntoResponse {
    if s.started.elapsed() < s.behaviour.slow_start {
        (StatusCode::SERVICE_UNAVAILABLE, "loading the model")
    } else {
        (StatusCode::OK, "ok")
    }
}

async fn metrics(State(s): State<Arc<Server>>) -> impl IntoResponse {
    let mut buf = Vec::new();
    let _ = TextEncoder::new().encode(&s.metrics.registry.gather(), &mut buf);
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        buf,
    )
}

/// A server running in this process, for tests: stops when dropped.
pub struct Running {
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

/// Serve on `addr` (port 0 picks one) in the background.
pub async fn spawn(addr: SocketAddr, behaviour: Behaviour) -> std::io::Result<Running> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let _ = axum::serve(listener, router(behaviour))
            .with_graceful_shutdown(async {
                let _ = rx.await;
            })
            .await;
    });
    Ok(Running {
        addr,
        stop: Some(tx),
    })
}

/// Serve until `shutdown` resolves (the binary's path).
pub async fn serve(
    addr: SocketAddr,
    behaviour: Behaviour,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    if behaviour.crash_after == Some(0) {
        tracing::error!("crashing at start on purpose (--crash-after 0)");
        std::process::exit(3);
    }
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(addr = %listener.local_addr()?, version = %behaviour.version, "demo model server");
    axum::serve(listener, router(behaviour))
        .with_graceful_shutdown(shutdown)
        .await
}

/// Steady load against a model service, with feedback labels.
#[derive(Debug, Clone)]
pub struct Load {
    pub target: String,
    pub rps: f64,
    pub duration: Option<Duration>,
    /// Added to every generated feature: drifted inputs.
    pub feature_shift: f64,
    pub features: usize,
    /// Send the true label after each prediction.
    pub feedback: bool,
    pub seed: u64,
}

/// The load generator's HTTP client. reqwest is built without a default
/// TLS provider (the operator picks ring), so install ring here as well.
fn http_client() -> reqwest::Client {
    static CRYPTO: std::sync::Once = std::sync::Once::new();
    CRYPTO.call_once(|| {
        // Fails only when a provider is already installed, which is fine.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
    reqwest::Client::builder().build().unwrap_or_default()
}

/// Run the load; returns (requests sent, non-2xx answers).
pub async fn load(cfg: Load) -> (u64, u64) {
    let client = http_client();
    let interval = Duration::from_secs_f64(1.0 / cfg.rps.max(0.001));
    let mut ticker = tokio::time::interval(interval);
    let started = Instant::now();
    let mut state = cfg.seed.max(1);
    let mut next = move || {
        // xorshift64*: cheap repeatable features for a load generator.
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        (state.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
    };
    let (mut sent, mut failed) = (0u64, 0u64);
    loop {
        if cfg.duration.is_some_and(|d| started.elapsed() >= d) {
            return (sent, failed);
        }
        ticker.tick().await;
        // A standard normal from two uniforms (Box-Muller).
        let features: Vec<f64> = (0..cfg.features)
            .map(|_| {
                let (u1, u2) = (next().max(1e-12), next());
                (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
                    + cfg.feature_shift
            })
            .collect();
        let truth = if features.first().copied().unwrap_or(0.0) > 0.0 {
            "1"
        } else {
            "0"
        };
        sent += 1;
        let resp = client
            .post(format!("{}/predict", cfg.target))
            .json(&PredictRequest { features })
            .send()
            .await;
        match resp {
            Ok(r) if r.status().is_success() => {
                if cfg.feedback
                    && let Ok(p) = r.json::<PredictResponse>().await
                {
                    let _ = client
                        .post(format!("{}/feedback", cfg.target))
                        .json(&Feedback {
                            actual: truth.into(),
                            predicted: p.label,
                        })
                        .send()
                        .await;
                }
            }
            _ => failed += 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn serves_predictions_and_metrics_in_the_convention() {
        let server = spawn("127.0.0.1:0".parse().unwrap(), Behaviour::default())
            .await
            .unwrap();
        let target = format!("http://{}", server.addr);
        let (sent, failed) = load(Load {
            target: target.clone(),
            rps: 500.0,
            duration: Some(Duration::from_millis(200)),
            feature_shift: 0.0,
            features: 4,
            feedback: true,
            seed: 7,
        })
        .await;
        assert!(sent > 10 && failed == 0, "sent {sent}, failed {failed}");
        let body = reqwest::get(format!("{target}/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        for family in [
            "model_requests_total{code=\"200\"}",
            "model_request_duration_seconds_bucket",
            "model_input_feature_bucket{feature=\"f0\"",
            "model_prediction_bucket",
            "model_prediction_outcomes_total{actual=",
        ] {
            assert!(body.contains(family), "{family} missing from\n{body}");
        }
    }

    #[tokio::test]
    async fn an_error_rate_makes_that_share_of_requests_fail() {
        let server = spawn(
            "127.0.0.1:0".parse().unwrap(),
            Behaviour {
                error_rate: 0.5,
                ..Default::default()
            },
        )
        .await
        .unwrap();
        // Rounds until enough requests were answered: a loaded machine sends
        // fewer per round, and the share needs a sample, not a deadline.
        let (mut sent, mut failed) = (0, 0);
        for seed in 3.. {
            let (s, f) = load(Load {
                target: format!("http://{}", server.addr),
                rps: 1000.0,
                duration: Some(Duration::from_millis(300)),
                feature_shift: 0.0,
                features: 4,
                feedback: false,
                seed,
            })
            .await;
            (sent, failed) = (sent + s, failed + f);
            if sent > 200 {
                break;
            }
        }
        let share = failed as f64 / sent as f64;
        assert!(sent > 50 && (0.3..0.7).contains(&share), "{failed}/{sent}");
    }
}
