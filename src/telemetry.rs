//! The operator's own observability: `/metrics`, `/healthz`, `/readyz` on one
//! port, and the log setup.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus::{
    Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

use crate::analysis::checks::MAX_REPORTED_FEATURES;

/// Prefix of the operator's own metric names (`modeldeploy_reconcile_total`).
/// The same word as [`crate::api::OPERATOR_NAME`] but its own decision:
/// dashboards and alerts name these series, and they need not follow a
/// change of the operator's field manager or label value.
pub const METRICS_PREFIX: &str = "modeldeploy";

/// Metrics of the reconcile loop. Labels are static categories, or the
/// namespace/name of a ModelDeployment (bounded by the objects watched; their
/// series are removed when the object goes away).
#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    pub reconciles: IntCounter,
    pub failures: IntCounterVec,
    pub duration: HistogramVec,
    pub phase: IntGaugeVec,
    pub canary_weight: IntGaugeVec,
    pub check_value: GaugeVec,
    pub check_outcome: IntGaugeVec,
    pub drift_max_score: GaugeVec,
    pub drift_score: GaugeVec,
    pub rollbacks: IntCounterVec,
    pub scrape_errors: IntCounterVec,
    pub scrape_duration: HistogramVec,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new_custom(Some(METRICS_PREFIX.into()), None)
            .unwrap_or_else(|_| Registry::new());
        let (reconciles, failures, duration) = reconcile_metrics(&registry);
        let (check_value, check_outcome) = check_metrics(&registry);
        let (scrape_errors, scrape_duration) = scrape_metrics(&registry);
        let phase = register(
            &registry,
            IntGaugeVec::new(
                Opts::new(
                    "phase",
                    "1 for the current phase of each ModelDeployment, 0 for the others.",
                ),
                &["namespace", "name", "phase"],
            ),
        );
        let object = ["namespace", "name"];
        let canary_weight = register(
            &registry,
            IntGaugeVec::new(
                Opts::new("canary_weight", "Percent of traffic the canary receives."),
                &object,
            ),
        );
        let drift_max_score = register(
            &registry,
            GaugeVec::new(
                Opts::new(
                    "drift_max_score",
                    "Highest input drift score of the latest run.",
                ),
                &object,
            ),
        );
        let drift_score = register(
            &registry,
            GaugeVec::new(
                Opts::new(
                    "drift_score",
                    "Input drift score per feature of the latest run (the highest-scoring features only).",
                ),
                &["namespace", "name", "feature"],
            ),
        );
        let rollbacks = register(
            &registry,
            IntCounterVec::new(
                Opts::new(
                    "rollbacks_total",
                    "Rollbacks this operator made, of a canary or of a promoted revision the guard rejected.",
                ),
                &object,
            ),
        );
        Self {
            registry,
            reconciles,
            failures,
            duration,
            phase,
            canary_weight,
            check_value,
            check_outcome,
            drift_max_score,
            drift_score,
            rollbacks,
            scrape_errors,
            scrape_duration,
        }
    }

    /// Check values and verdicts of a run. Bounded: check names come from the
    /// spec (at most 32 per object), objects from the watched namespaces.
    pub fn record_run(&self, namespace: &str, name: &str, run: &crate::analysis::AnalysisRun) {
        for c in &run.checks {
            let labels = [namespace, name, c.name.as_str()];
            if let Some(v) = c.value.filter(|v| v.is_finite()) {
                self.check_value.with_label_values(&labels).set(v);
            }
            let outcome = match c.verdict {
                crate::api::CheckVerdict::Pass => 1,
                crate::api::CheckVerdict::Inconclusive => 0,
                crate::api::CheckVerdict::Fail => -1,
            };
            self.check_outcome.with_label_values(&labels).set(outcome);
        }
        if let Some(drift) = &run.drift {
            if let Some(score) = drift.max_score {
                self.drift_max_score
                    .with_label_values(&[namespace, name])
                    .set(score);
            }
            self.record_feature_drift(namespace, name, &drift.features);
        }
    }

    /// One series per feature, for the highest-scoring features only, so an
    /// object with thousands of features cannot flood the registry.
    fn record_feature_drift(
        &self,
        namespace: &str,
        name: &str,
        features: &[crate::api::FeatureDrift],
    ) {
        let mut top: Vec<&crate::api::FeatureDrift> =
            features.iter().filter(|f| f.score.is_finite()).collect();
        top.sort_by(|a, b| {
            b.score
                .total_cmp(&a.score)
                .then_with(|| a.name.cmp(&b.name))
        });
        top.truncate(MAX_REPORTED_FEATURES);
        for stale in labels_of(&self.drift_score, namespace, name, "feature") {
            if !top.iter().any(|f| f.name == stale) {
                let _ = self
                    .drift_score
                    .remove_label_values(&[namespace, name, stale.as_str()]);
            }
        }
        for f in top {
            self.drift_score
                .with_label_values(&[namespace, name, f.name.as_str()])
                .set(f.score);
        }
    }

    /// A rollback happened (of a canary, or of a revision the guard rejected).
    pub fn count_rollback(&self, namespace: &str, name: &str) {
        self.rollbacks.with_label_values(&[namespace, name]).inc();
    }

    pub fn set_phase(&self, namespace: &str, name: &str, phase: &str) {
        for p in crate::api::Phase::ALL {
            let value = i64::from(p.as_str() == phase);
            self.phase
                .with_label_values(&[namespace, name, p.as_str()])
                .set(value);
        }
    }

    pub fn forget(&self, namespace: &str, name: &str) {
        for p in crate::api::Phase::ALL {
            let _ = self
                .phase
                .remove_label_values(&[namespace, name, p.as_str()]);
        }
        let _ = self.canary_weight.remove_label_values(&[namespace, name]);
        let _ = self.drift_max_score.remove_label_values(&[namespace, name]);
        let _ = self.rollbacks.remove_label_values(&[namespace, name]);
        for feature in labels_of(&self.drift_score, namespace, name, "feature") {
            let _ = self
                .drift_score
                .remove_label_values(&[namespace, name, feature.as_str()]);
        }
        for check in labels_of(&self.check_outcome, namespace, name, "check") {
            let labels = [namespace, name, check.as_str()];
            let _ = self.check_value.remove_label_values(&labels);
            let _ = self.check_outcome.remove_label_values(&labels);
        }
    }

    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let encoder = TextEncoder::new();
        if encoder.encode(&self.registry.gather(), &mut buf).is_err() {
            return String::new();
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}

/// A metric defined once, registered in the operator's registry.
fn register<C>(registry: &Registry, defined: prometheus::Result<C>) -> C
where
    C: prometheus::core::Collector + Clone + 'static,
{
    let metric = defined.expect("valid metric definition");
    // Registering fresh collectors in a fresh registry cannot clash.
    let _ = registry.register(Box::new(metric.clone()));
    metric
}

/// The reconcile loop's count, failures by category and duration.
fn reconcile_metrics(registry: &Registry) -> (IntCounter, IntCounterVec, HistogramVec) {
    let reconciles = register(
        registry,
        IntCounter::new("reconcile_total", "Reconciles run."),
    );
    let failures = register(
        registry,
        IntCounterVec::new(
            Opts::new(
                "reconcile_failures_total",
                "Reconciles that failed, by error category.",
            ),
            &["category"],
        ),
    );
    let duration = register(
        registry,
        HistogramVec::new(
            HistogramOpts::new("reconcile_duration_seconds", "Time spent in one reconcile.")
                .buckets(vec![
                    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
                ]),
            &[],
        ),
    );
    (reconciles, failures, duration)
}

/// Each analysis check's latest value and verdict.
fn check_metrics(registry: &Registry) -> (GaugeVec, IntGaugeVec) {
    let value = register(
        registry,
        GaugeVec::new(
            Opts::new("check_value", "Latest value of each analysis check."),
            &["namespace", "name", "check"],
        ),
    );
    let outcome = register(
        registry,
        IntGaugeVec::new(
            Opts::new(
                "check_outcome",
                "Latest verdict of each analysis check: 1 pass, 0 inconclusive, -1 fail.",
            ),
            &["namespace", "name", "check"],
        ),
    );
    (value, outcome)
}

/// How reading the serving pods (or Prometheus) goes: errors and duration.
fn scrape_metrics(registry: &Registry) -> (IntCounterVec, HistogramVec) {
    let errors = register(
        registry,
        IntCounterVec::new(
            Opts::new(
                "scrape_errors_total",
                "Failed pod scrapes and Prometheus queries, by reason.",
            ),
            &["reason"],
        ),
    );
    let duration = register(
        registry,
        HistogramVec::new(
            HistogramOpts::new(
                "scrape_duration_seconds",
                "Time to read every pod of one ModelDeployment for one analysis run.",
            )
            .buckets(vec![0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]),
            &[],
        ),
    );
    (errors, duration)
}

/// Values of `label` on the series of one object: per-object series whose
/// third label varies (check names, features) are found this way.
fn labels_of(
    collector: &dyn prometheus::core::Collector,
    namespace: &str,
    name: &str,
    label: &str,
) -> Vec<String> {
    collector
        .collect()
        .iter()
        .flat_map(|family| family.get_metric().iter())
        .filter_map(|m| {
            let get = |k: &str| {
                m.get_label()
                    .iter()
                    .find(|l| l.name() == k)
                    .map(|l| l.value().to_string())
            };
            (get("namespace").as_deref() == Some(namespace) && get("name").as_deref() == Some(name))
                .then(|| get(label))
                .flatten()
        })
        .collect()
}

/// What `/readyz` reports.
#[derive(Clone, Default)]
pub struct Readiness(Arc<AtomicU8>);

const STARTING: u8 = 0;
const STANDBY: u8 = 1;
const READY: u8 = 2;

impl Readiness {
    /// Waiting for the leader lease: ready to take over, so a rollout of the
    /// operator's own Deployment is not held up by the standby replica.
    pub fn standby(&self) {
        self.0.store(STANDBY, Ordering::SeqCst);
    }
    /// Leading, with every watch synced.
    pub fn ready(&self) {
        self.0.store(READY, Ordering::SeqCst);
    }
    pub fn starting(&self) {
        self.0.store(STARTING, Ordering::SeqCst);
    }
    pub fn state(&self) -> &'static str {
        match self.0.load(Ordering::SeqCst) {
            STANDBY => "standby",
            READY => "ready",
            _ => "starting",
        }
    }
}

#[derive(Clone)]
struct ServerState {
    metrics: Metrics,
    readiness: Readiness,
}

pub fn router(metrics: Metrics, readiness: Readiness) -> Router {
    Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz_handler))
        .with_state(ServerState { metrics, readiness })
}

async fn metrics_handler(State(s): State<ServerState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        s.metrics.render(),
    )
}

async fn readyz_handler(State(s): State<ServerState>) -> impl IntoResponse {
    match s.readiness.state() {
        "starting" => (StatusCode::SERVICE_UNAVAILABLE, "starting"),
        other => (StatusCode::OK, other),
    }
}

/// Serve the telemetry endpoints until `shutdown` resolves.
pub async fn serve_on(
    listener: tokio::net::TcpListener,
    metrics: Metrics,
    readiness: Readiness,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "serving /metrics, /healthz and /readyz");
    }
    axum::serve(listener, router(metrics, readiness))
        .with_graceful_shutdown(shutdown)
        .await
}

/// Logs as JSON or text; the level comes from `RUST_LOG`, or the given default.
pub fn init_logging(default_level: &str, json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::AnalysisRun;
    use crate::api::{DriftStatus, FeatureDrift};

    fn run_with_features(n: usize) -> AnalysisRun {
        let features = (0..n)
            .map(|i| FeatureDrift {
                name: format!("f{i:03}"),
                method: "psi".into(),
                score: i as f64,
                p_value: None,
            })
            .collect();
        AnalysisRun {
            at: k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
            checks: vec![],
            decisive: false,
            drift: Some(DriftStatus {
                features,
                max_score: Some(n as f64 - 1.0),
            }),
            ab: None,
        }
    }

    fn feature_series(m: &Metrics) -> Vec<String> {
        let mut v = labels_of(&m.drift_score, "ns", "md", "feature");
        v.sort();
        v
    }

    #[test]
    fn feature_drift_series_are_capped_to_the_highest_scores_and_replaced() {
        let m = Metrics::new();
        m.record_run("ns", "md", &run_with_features(500));
        let series = feature_series(&m);
        assert_eq!(series.len(), MAX_REPORTED_FEATURES);
        assert_eq!(series.first().map(String::as_str), Some("f480"));
        assert_eq!(series.last().map(String::as_str), Some("f499"));

        // A later run with other features drops the series of the old ones.
        m.record_run("ns", "md", &run_with_features(3));
        assert_eq!(feature_series(&m), ["f000", "f001", "f002"]);
        assert!(
            m.render()
                .contains(r#"modeldeploy_drift_score{feature="f002",name="md",namespace="ns"} 2"#)
        );
    }

    #[test]
    fn forgetting_an_object_drops_all_its_series() {
        let m = Metrics::new();
        m.record_run("ns", "md", &run_with_features(2));
        m.record_run("ns", "other", &run_with_features(1));
        m.count_rollback("ns", "md");
        m.set_phase("ns", "md", "RolledBack");
        assert!(
            m.render()
                .contains(r#"modeldeploy_rollbacks_total{name="md",namespace="ns"} 1"#)
        );
        m.forget("ns", "md");
        let text = m.render();
        assert!(!text.contains(r#"name="md""#), "{text}");
        assert!(
            text.contains(
                r#"modeldeploy_drift_score{feature="f000",name="other",namespace="ns"} 0"#
            )
        );
    }
}
