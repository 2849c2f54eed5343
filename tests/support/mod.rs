//! Shared test support: the fake API server and story helpers.
// Each test crate uses a different part of this module.
#![allow(dead_code)]
pub mod envtest;
pub mod fake_apiserver;
pub mod kubelet;
pub mod real_operator;
pub mod real_story;
pub mod story;
pub mod tools;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use fake_apiserver::FakeApiServer;
use modeldeploy::operator::{self, LeaderElection, OperatorConfig, Stopped};
use modeldeploy::telemetry::{Metrics, Readiness};
use serde_json::{Value, json};

/// Plays the Deployment controller and the kubelet: every Deployment reports
/// its pods available unless `available` says otherwise. Stops when dropped.
pub struct DeploymentController {
    stop: Arc<AtomicBool>,
}

impl Drop for DeploymentController {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

pub fn deployment_controller(
    server: &Arc<FakeApiServer>,
    available: impl Fn(&Value) -> bool + Send + 'static,
) -> DeploymentController {
    let stop = Arc::new(AtomicBool::new(false));
    let (server, flag) = (server.clone(), stop.clone());
    tokio::spawn(async move {
        while !flag.load(Ordering::SeqCst) {
            for d in server.list("deployments", "") {
                let replicas = d["spec"]["replicas"].as_i64().unwrap_or(1);
                let up = if available(&d) { replicas } else { 0 };
                let want = json!({
                    "observedGeneration": d["metadata"]["generation"],
                    "replicas": replicas,
                    "updatedReplicas": replicas,
                    "readyReplicas": up,
                    "availableReplicas": up,
                });
                let current = &d["status"];
                if ["observedGeneration", "replicas", "availableReplicas"]
                    .iter()
                    .any(|k| current[*k] != want[*k])
                {
                    let ns = d["metadata"]["namespace"].as_str().unwrap_or_default();
                    let name = d["metadata"]["name"].as_str().unwrap_or_default();
                    server.patch_status("deployments", ns, name, want);
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    DeploymentController { stop }
}

/// An operator running in this process against the fake server.
pub struct RunningOperator {
    pub readiness: Readiness,
    pub metrics: Metrics,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    pub task: tokio::task::JoinHandle<Result<Stopped, String>>,
}

impl RunningOperator {
    pub async fn stop(mut self) -> Result<Stopped, String> {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        tokio::time::timeout(Duration::from_secs(30), &mut self.task)
            .await
            .expect("operator stops")
            .expect("operator task")
    }
}

pub fn start_operator(
    server: &FakeApiServer,
    identity: &str,
    leader_election: bool,
) -> RunningOperator {
    start_operator_with(server, identity, leader_election, |_| {})
}

/// [`start_operator`] with the configuration adjusted by `adjust`.
pub fn start_operator_with(
    server: &FakeApiServer,
    identity: &str,
    leader_election: bool,
    adjust: impl FnOnce(&mut OperatorConfig),
) -> RunningOperator {
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let readiness = Readiness::default();
    let metrics = Metrics::new();
    let config = OperatorConfig {
        namespaces: vec![],
        metrics_addr: None,
        leader_election: leader_election.then(|| LeaderElection {
            lease_name: "modeldeploy-leader".into(),
            lease_namespace: "default".into(),
            lease_duration: Duration::from_secs(3),
        }),
        identity: identity.into(),
        ..Default::default()
    };
    let mut config = config;
    adjust(&mut config);
    let client = operator::client_with_retries(server.config()).expect("operator client");
    let task = tokio::spawn(operator::run(
        client,
        config,
        metrics.clone(),
        readiness.clone(),
        async move {
            let _ = rx.await;
        },
    ));
    RunningOperator {
        readiness,
        metrics,
        stop: Some(tx),
        task,
    }
}

/// Poll `check` until it returns `Some`, or fail the test with `what`.
pub async fn eventually<T>(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> Option<T>,
) -> T {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A ModelDeployment manifest as a user would apply it.
pub fn model_deployment(name: &str, version: &str, extra: Value) -> Value {
    let mut v = json!({
        "apiVersion": "modeldeploy.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "model": {"version": version, "image": format!("example/scorer:{version}"), "port": 8080,
                      "storageUri": format!("s3://models/scorer/{version}")},
            "replicas": 3,
            "resources": {"requests": {"cpu": "500m", "memory": "1Gi"},
                          "limits": {"cpu": "2", "memory": "2Gi"}}
        }
    });
    merge(&mut v, extra);
    v
}

pub fn merge(base: &mut Value, extra: Value) {
    match (base, extra) {
        (Value::Object(b), Value::Object(e)) => {
            for (k, v) in e {
                merge(b.entry(k).or_insert(Value::Null), v);
            }
        }
        (b, e) => *b = e,
    }
}

/// How the kubelet reports the model container of a revision's pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PodHealth {
    /// Running and Ready, no restarts.
    Ready,
    /// The container keeps exiting: not Ready, waiting in `CrashLoopBackOff`,
    /// its restart count going up every [`RESTART_EVERY`].
    CrashLoopBackOff,
    /// Running and Ready again after the kernel killed it for memory: the last
    /// state is terminated with reason `OOMKilled`, one restart.
    OomKilled,
    /// Running and Ready between restarts, its restart count going up every
    /// [`RESTART_EVERY`] (a server that dies now and then).
    Restarting,
}

/// How often a restarting container restarts in [`pod_controller_with`].
pub const RESTART_EVERY: Duration = Duration::from_millis(300);

fn pod_status(ip: &str, health: PodHealth, restarts: i64) -> Value {
    let started = k8s_openapi::jiff::Timestamp::now()
        .round(k8s_openapi::jiff::Unit::Second)
        .unwrap()
        .to_string();
    let ready = health != PodHealth::CrashLoopBackOff;
    let (state, last_state) = match health {
        PodHealth::Ready => (json!({"running": {}}), json!({})),
        PodHealth::CrashLoopBackOff => (
            json!({"waiting": {"reason": "CrashLoopBackOff",
                               "message": "back-off restarting failed container model"}}),
            json!({"terminated": {"reason": "Error", "exitCode": 3}}),
        ),
        PodHealth::OomKilled => (
            json!({"running": {}}),
            json!({"terminated": {"reason": "OOMKilled", "exitCode": 137}}),
        ),
        PodHealth::Restarting => (
            json!({"running": {}}),
            json!({"terminated": {"reason": "Error", "exitCode": 3}}),
        ),
    };
    json!({"phase": "Running", "podIP": ip, "startTime": started,
           "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}],
           "containerStatuses": [{"name": "model", "ready": ready, "restartCount": restarts,
                                  "image": "demo", "imageID": "",
                                  "state": state, "lastState": last_state}]})
}

/// Plays the ReplicaSet controller and the kubelet for pods: one Ready pod per
/// Deployment with replicas, at the IP `ip_for` gives its revision (a local
/// model server listens there), none for Deployments at zero.
pub fn pod_controller(
    server: &Arc<FakeApiServer>,
    ip_for: impl Fn(&Value) -> Option<String> + Send + 'static,
) -> DeploymentController {
    pod_controller_with(server, ip_for, |_| PodHealth::Ready)
}

/// [`pod_controller`] with the container state `health` gives each
/// Deployment's pod; restart counts of restarting containers keep going up.
pub fn pod_controller_with(
    server: &Arc<FakeApiServer>,
    ip_for: impl Fn(&Value) -> Option<String> + Send + 'static,
    health: impl Fn(&Value) -> PodHealth + Send + 'static,
) -> DeploymentController {
    let stop = Arc::new(AtomicBool::new(false));
    let (server, flag) = (server.clone(), stop.clone());
    tokio::spawn(async move {
        // When each pod (by uid) was created, to count its restarts.
        let mut born: std::collections::HashMap<String, tokio::time::Instant> =
            std::collections::HashMap::new();
        while !flag.load(Ordering::SeqCst) {
            for d in server.list("deployments", "") {
                let ns = d["metadata"]["namespace"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                let name = format!("{}-pod", d["metadata"]["name"].as_str().unwrap_or_default());
                let replicas = d["spec"]["replicas"].as_i64().unwrap_or(0);
                let existing = server.get("pods", &ns, &name);
                let health = health(&d);
                match (replicas > 0, existing, ip_for(&d)) {
                    (true, None, Some(ip)) => {
                        let restarts = i64::from(health == PodHealth::OomKilled);
                        let pod = server.upsert(
                            "pods",
                            json!({
                                "metadata": {"name": name, "namespace": ns,
                                             "labels": d["spec"]["template"]["metadata"]["labels"]},
                                // As a ReplicaSet does: the pod is its template.
                                "spec": d["spec"]["template"]["spec"],
                                "status": pod_status(&ip, health, restarts)
                            }),
                        );
                        if let Some(uid) = pod["metadata"]["uid"].as_str() {
                            born.insert(uid.to_string(), tokio::time::Instant::now());
                        }
                    }
                    (true, Some(pod), _)
                        if matches!(
                            health,
                            PodHealth::CrashLoopBackOff | PodHealth::Restarting
                        ) =>
                    {
                        let uid = pod["metadata"]["uid"].as_str().unwrap_or_default();
                        let age = born.get(uid).map_or(Duration::ZERO, |t| t.elapsed());
                        let restarts = i64::try_from(age.as_millis() / RESTART_EVERY.as_millis())
                            .unwrap_or(i64::MAX);
                        let status = &pod["status"]["containerStatuses"][0];
                        if status["restartCount"].as_i64() != Some(restarts) {
                            server.patch_status(
                                "pods",
                                &ns,
                                &name,
                                json!({"containerStatuses": [{
                                    "name": "model", "ready": status["ready"],
                                    "restartCount": restarts, "image": "demo", "imageID": "",
                                    "state": status["state"], "lastState": status["lastState"]}]}),
                            );
                        }
                    }
                    (false, Some(_), _) => {
                        server.delete("pods", &ns, &name);
                    }
                    _ => {}
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    DeploymentController { stop }
}

/// A port for a test to listen on: no other test of this process got it,
/// nothing listens on it on any address now, and it lies below the usual
/// ephemeral range (32768 and up), so neither an outgoing connection nor
/// another `bind(0)` can take it before the test binds it. Fleets bind the
/// same port on several loopback addresses, which a port the kernel picked
/// for 127.0.0.1 alone did not promise (a CI run failed on it).
pub fn free_port() -> u16 {
    use std::sync::atomic::AtomicU32;
    const LOWEST: u32 = 20_000;
    const SPAN: u32 = 12_000;
    static HANDED_OUT: AtomicU32 = AtomicU32::new(0);
    // Two test processes at once start far apart.
    let start = std::process::id().wrapping_mul(7_919) % SPAN;
    for _ in 0..SPAN {
        let n = HANDED_OUT.fetch_add(1, Ordering::Relaxed);
        let port = (LOWEST + (start + n) % SPAN) as u16;
        if std::net::TcpListener::bind(("0.0.0.0", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in {LOWEST}..{}", LOWEST + SPAN);
}

/// Waits until as many reconciles have finished (the duration histogram
/// counts those) as had started when called. One object's reconciles run one
/// at a time, so everything they write has then landed.
pub async fn reconciles_done(op: &RunningOperator) {
    reconciles_finished(&op.metrics, story::WAIT).await;
}

/// [`reconciles_done`] for any operator's metrics, waiting up to `within`.
pub async fn reconciles_finished(metrics: &Metrics, within: Duration) {
    let started = metrics.reconciles.get();
    eventually("the reconciles under way to finish", within, || {
        let finished = metrics
            .duration
            .with_label_values(&[] as &[&str])
            .get_sample_count();
        (finished >= started).then_some(())
    })
    .await;
}
