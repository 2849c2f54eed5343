//! Rollout stories shared by the in-process end-to-end tests: demo model
//! servers on loopback addresses standing in for pods, the fake API server
//! with the Deployment and pod controllers, and the real operator.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use modeldeploy::api::ModelDeployment;
use modeldeploy_demo::{self as demo, Behaviour, Load};
use serde_json::{Value, json};

use super::fake_apiserver::FakeApiServer;
use super::{
    DeploymentController, PodHealth, RunningOperator, deployment_controller, eventually,
    model_deployment, pod_controller_with, start_operator,
};

/// Generous: CI machines are loaded. Tests never assert on speed.
pub const WAIT: Duration = Duration::from_secs(60);

pub fn status(server: &FakeApiServer, name: &str) -> Value {
    server
        .get("modeldeployments", "default", name)
        .map(|o| o["status"].clone())
        .unwrap_or(Value::Null)
}

pub fn condition<'a>(status: &'a Value, type_: &str) -> Option<&'a Value> {
    status["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
}

pub fn deployments_of(server: &FakeApiServer, name: &str) -> Vec<Value> {
    server
        .list("deployments", "default")
        .into_iter()
        .filter(|d| d["metadata"]["labels"]["modeldeploy.io/name"] == name)
        .collect()
}

/// The replicas the operator asks of the Deployment running `version`.
pub fn replicas_of(server: &FakeApiServer, name: &str, version: &str) -> Option<i64> {
    deployments_of(server, name)
        .into_iter()
        .find(|d| d["metadata"]["labels"]["modeldeploy.io/version"] == version)
        .and_then(|d| d["spec"]["replicas"].as_i64())
}

pub async fn create(server: &FakeApiServer, manifest: Value) {
    let api: Api<ModelDeployment> = Api::namespaced(server.client(), "default");
    let md: ModelDeployment = serde_json::from_value(manifest).unwrap();
    api.create(&PostParams::default(), &md).await.unwrap();
}

pub fn events(server: &FakeApiServer, reason: &str) -> Vec<Value> {
    server
        .list("events", "default")
        .into_iter()
        .filter(|e| e["reason"] == reason)
        .collect()
}

/// An event's text, whichever Event API recorded it.
pub fn event_message(e: &Value) -> String {
    e["note"]
        .as_str()
        .or(e["message"].as_str())
        .unwrap_or_default()
        .to_string()
}

/// One model server standing in for the pods of a version, with steady load.
#[derive(Clone)]
pub struct Member {
    pub ip: &'static str,
    pub behaviour: Behaviour,
    /// Added to every input feature the load sends (drifted inputs).
    pub feature_shift: f64,
}

impl Member {
    pub fn new(ip: &'static str, behaviour: Behaviour) -> Self {
        Self {
            ip,
            behaviour,
            feature_shift: 0.0,
        }
    }
}

/// A model server per version on its own loopback address, with steady load.
pub struct Fleet {
    _servers: Vec<demo::Running>,
    _load: Vec<tokio::task::JoinHandle<(u64, u64)>>,
}

pub async fn fleet(port: u16, versions: &[(&'static str, Behaviour)]) -> Fleet {
    let members: Vec<Member> = versions
        .iter()
        .map(|(ip, b)| Member::new(ip, b.clone()))
        .collect();
    fleet_of(port, &members).await
}

pub async fn fleet_of(port: u16, members: &[Member]) -> Fleet {
    let mut servers = Vec::new();
    let mut load = Vec::new();
    for m in members {
        let addr: SocketAddr = format!("{}:{port}", m.ip).parse().unwrap();
        servers.push(demo::spawn(addr, m.behaviour.clone()).await.unwrap());
        load.push(tokio::spawn(demo::load(Load {
            target: format!("http://{addr}"),
            rps: 200.0,
            duration: Some(Duration::from_secs(90)),
            feature_shift: m.feature_shift,
            features: 4,
            feedback: true,
            seed: 3,
        })));
    }
    Fleet {
        _servers: servers,
        _load: load,
    }
}

/// Where each version's pods answer: 1.0.0 on 127.0.0.2, 2.0.0 on 127.0.0.3,
/// 3.0.0 on 127.0.0.4.
pub fn ip_by_version(d: &Value) -> Option<String> {
    match d["metadata"]["labels"]["modeldeploy.io/version"].as_str()? {
        "1.0.0" => Some("127.0.0.2".into()),
        "2.0.0" => Some("127.0.0.3".into()),
        "3.0.0" => Some("127.0.0.4".into()),
        _ => None,
    }
}

pub fn canary_spec(port: u16, steps: Value) -> Value {
    json!({"spec": {
        "replicas": 2,
        "model": {"port": port},
        "rollout": {
            "strategy": "canary",
            "steps": steps,
            "analysis": {
                "interval": "1s", "failureLimit": 2, "minSamples": 100,
                "checks": [
                    {"name": "errors", "errorRate": {"max": 0.01}},
                    {"name": "p99", "latency": {"quantile": 0.99, "max": "500ms"}}
                ]
            }
        }
    }})
}

/// Everything a story runs; dropping it stops the controllers and servers.
pub struct Story {
    pub server: Arc<FakeApiServer>,
    pub op: RunningOperator,
    pub controllers: Vec<DeploymentController>,
    pub fleet: Fleet,
    pub name: String,
}

impl Story {
    /// The operator, the controllers and the fleet, with `name` created at
    /// version 1.0.0 from `spec` and Stable. Pods of each Deployment report
    /// `health`; Deployments report available unless their pods crash-loop.
    pub async fn stable(
        name: &str,
        port: u16,
        spec: Value,
        members: &[Member],
        ip_for: impl Fn(&Value) -> Option<String> + Send + 'static,
        health: impl Fn(&Value) -> PodHealth + Send + Sync + 'static,
    ) -> Story {
        let server = Arc::new(FakeApiServer::start().await);
        let health = Arc::new(health);
        let available = health.clone();
        let controllers = vec![
            deployment_controller(&server, move |d| {
                available(d) != PodHealth::CrashLoopBackOff
            }),
            pod_controller_with(&server, ip_for, move |d| health(d)),
        ];
        let fleet = fleet_of(port, members).await;
        let op = start_operator(&server, "op", false);
        create(&server, model_deployment(name, "1.0.0", spec)).await;
        eventually("v1 stable", WAIT, || {
            (status(&server, name)["phase"] == "Stable").then_some(())
        })
        .await;
        Story {
            server,
            op,
            controllers,
            fleet,
            name: name.into(),
        }
    }

    pub fn api(&self) -> Api<ModelDeployment> {
        Api::namespaced(self.server.client(), "default")
    }

    /// Point the spec at a new model version (what `kubectl apply` would do).
    pub async fn release(&self, version: &str) {
        self.api()
            .patch(
                &self.name,
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"model": {
                    "version": version, "image": format!("example/scorer:{version}")}}})),
            )
            .await
            .unwrap();
    }

    pub fn status(&self) -> Value {
        status(&self.server, &self.name)
    }

    /// Wait until the status satisfies `done`, and return it.
    pub async fn until(&self, what: &str, done: impl Fn(&Value) -> bool) -> Value {
        eventually(what, WAIT, || {
            let s = self.status();
            done(&s).then_some(s)
        })
        .await
    }

    pub fn replicas_of(&self, version: &str) -> Option<i64> {
        replicas_of(&self.server, &self.name, version)
    }

    /// The newest event with `reason`, waiting for it.
    pub async fn event(&self, reason: &str) -> Value {
        eventually(&format!("a {reason} event"), WAIT, || {
            events(&self.server, reason).pop()
        })
        .await
    }
}

/// A rollout story like the ones in tests/rollouts.rs: v1 Stable with
/// [`canary_spec`], then the spec moves to 2.0.0 whose server behaves as
/// `canary`.
pub async fn start_story(
    name: &str,
    port: u16,
    steps: Value,
    canary: Behaviour,
) -> (
    Arc<FakeApiServer>,
    RunningOperator,
    Vec<DeploymentController>,
    Fleet,
) {
    let story = stable_story(name, port, steps, canary).await;
    story.release("2.0.0").await;
    (story.server, story.op, story.controllers, story.fleet)
}

/// [`start_story`] before the release: v1 Stable, a v2 server behaving as `canary`.
pub async fn stable_story(name: &str, port: u16, steps: Value, canary: Behaviour) -> Story {
    Story::stable(
        name,
        port,
        canary_spec(port, steps),
        &[
            Member::new("127.0.0.2", Behaviour::default()),
            Member::new("127.0.0.3", canary),
        ],
        ip_by_version,
        |_| PodHealth::Ready,
    )
    .await
}

/// Every status the API server stored for one ModelDeployment, in order, as
/// seen by a watch: lets a test check what a single status write contained.
pub struct StatusLog {
    seen: Arc<Mutex<Vec<Value>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for StatusLog {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl StatusLog {
    pub fn start(server: &FakeApiServer, name: &str) -> StatusLog {
        let api: Api<ModelDeployment> = Api::namespaced(server.client(), "default");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (log, name) = (seen.clone(), name.to_string());
        let task = tokio::spawn(async move {
            // With a backoff: a watcher retrying a failing request in a
            // tight loop never yields, and neither an abort nor the test
            // runtime's shutdown could stop it.
            let mut stream = watcher(api, watcher::Config::default())
                .default_backoff()
                .applied_objects()
                .boxed();
            while let Some(item) = stream.next().await {
                if let Ok(md) = item
                    && md.metadata.name.as_deref() == Some(name.as_str())
                {
                    let s = serde_json::to_value(&md.status).unwrap_or(Value::Null);
                    let mut log = log.lock().unwrap();
                    if log.last() != Some(&s) {
                        log.push(s);
                    }
                }
            }
        });
        StatusLog { seen, task }
    }

    pub fn all(&self) -> Vec<Value> {
        self.seen.lock().unwrap().clone()
    }
}
