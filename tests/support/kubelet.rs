//! The test side plays the kubelet of the envtest control plane (there is no
//! kubelet and no scheduler there). It watches pods in all namespaces with
//! the admin client and, for every new pod:
//!
//! - gives it its own loopback address `127.B.x.y` (`B` from this process's
//!   id, never `127.0.0.1`; an address whose port is taken is skipped) and
//!   reports it Running like a kubelet: `podIP(s)`, `hostIP(s)` (127.0.0.1),
//!   `startTime`, the PodScheduled / Initialized / ContainersReady / Ready
//!   conditions and a status per container;
//! - **demo pods** (the first container's `command[0]` is
//!   `.../modeldeploy-demo`, or it has no command and its image repository
//!   ends with `modeldeploy-demo` or `modeldeploy`, as in
//!   `examples/canary-cpu.yaml`): starts the `modeldeploy-demo` binary of this
//!   build with `command[1..] + args`, the container's env (values,
//!   `fieldRef`, ConfigMap and Secret refs, `envFrom`; `$(VAR)` expanded as the
//!   kubelet does) and `LISTEN=<podIP>:<first containerPort>`, with a clean
//!   environment otherwise. The pod is Ready only once its readinessProbe
//!   (httpGet or tcpSocket, probed every 300 ms with the probe's thresholds;
//!   `periodSeconds` and `initialDelaySeconds` are not honoured) succeeds, or
//!   at once without a probe. An exit restarts it (restartPolicy Always, or
//!   OnFailure with a failure) after a back-off of 1 s doubling to 5 s, with
//!   `restartCount`, `lastState.terminated` and `CrashLoopBackOff` reported;
//!   otherwise the pod ends Succeeded (exit 0) or Failed, which is what the
//!   Job controller reads;
//! - **status-only pods** (any other image): Running and Ready at once, with
//!   no process at all (for scale tests). Their containers never exit.
//!
//! A deleted pod (the API server deletes unscheduled pods at once), or one
//! with a `deletionTimestamp`, has its process stopped (SIGTERM, SIGKILL after
//! 2 s); in the latter case the object is then deleted with grace period 0.
//! Liveness and startup probes, init containers and resource limits are not
//! played. Processes get `PR_SET_PDEATHSIG` from the harness runtime's worker
//! threads, which live as long as the test process.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Container, Pod, Probe, Secret, Service};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams, Preconditions};
use kube::core::{ApiResource, GroupVersionKind};
use kube::runtime::{WatchStreamExt, watcher};
use modeldeploy_demo::{Feedback, PredictRequest, PredictResponse};
use serde_json::{Value, json};
use tokio::sync::watch;

use super::envtest::die_with_parent;

/// How often readiness probes run.
const PROBE_EVERY: Duration = Duration::from_millis(300);
/// Restart back-off of a crashing container: starts here, doubles, capped.
const BACKOFF_START: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// A container that ran this long gets the short back-off again.
const BACKOFF_RESET: Duration = Duration::from_secs(10);
/// SIGTERM, then SIGKILL after at most this long.
const STOP_GRACE: Duration = Duration::from_secs(2);

/// The test-side kubelet. Cheap to clone.
#[derive(Clone)]
pub struct Kubelet {
    inner: Arc<Inner>,
}

struct Inner {
    runtime: tokio::runtime::Handle,
    client: kube::Client,
    pods: Mutex<HashMap<String, Arc<Slot>>>,
    ip_base: u8,
    next_ip: AtomicU32,
    log_dir: PathBuf,
}

/// Why a pod's task stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    No,
    /// The object is gone.
    Deleted,
    /// The object has a deletionTimestamp: stop, then delete it for good.
    Terminating,
}

struct Slot {
    namespace: String,
    name: String,
    uid: String,
    labels: Mutex<BTreeMap<String, String>>,
    state: Mutex<PodState>,
    stop: watch::Sender<Stop>,
    oom: AtomicBool,
}

#[derive(Debug, Clone, Default)]
struct PodState {
    ip: String,
    port: u16,
    image: String,
    status_only: bool,
    phase: String,
    ready: bool,
    restarts: i32,
    waiting: Option<String>,
    stopping: bool,
    launches: Vec<Launch>,
    pid: Option<u32>,
}

/// One start of a pod's process.
#[derive(Debug, Clone)]
pub struct Launch {
    pub argv: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub pid: u32,
}

/// What the kubelet runs for a pod (see [`Kubelet::running`]).
#[derive(Debug, Clone)]
pub struct RunningPod {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub labels: BTreeMap<String, String>,
    /// The pod's own loopback address, as in `status.podIP`.
    pub ip: String,
    /// The first container port (8080 without one).
    pub port: u16,
    pub ready: bool,
    /// Running, Succeeded or Failed (as reported).
    pub phase: String,
    /// Image of the first container, as in the spec.
    pub image: String,
    /// No process runs for it (not the demo server).
    pub status_only: bool,
    /// The process's arguments after the program (empty when status-only).
    pub argv: Vec<String>,
    /// The process's environment, LISTEN included (empty when status-only).
    pub env: BTreeMap<String, String>,
    pub pid: Option<u32>,
    pub restarts: i32,
    /// Why the container waits (`CrashLoopBackOff`), if it does.
    pub waiting: Option<String>,
}

impl RunningPod {
    /// `http://<ip>:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}:{}", self.ip, self.port)
    }
}

impl Kubelet {
    /// Starts watching pods on `runtime`; returns once the first list is in.
    pub(crate) async fn start(
        config: &kube::Config,
        runtime: &tokio::runtime::Handle,
        dir: &Path,
    ) -> Result<Kubelet, String> {
        let log_dir = dir.join("pods");
        std::fs::create_dir_all(&log_dir).map_err(|e| format!("{e}"))?;
        let client = kube::Client::try_from(config.clone()).map_err(|e| format!("{e}"))?;
        let inner = Arc::new(Inner {
            runtime: runtime.clone(),
            client,
            pods: Mutex::new(HashMap::new()),
            ip_base: u8::try_from(1 + std::process::id() % 254).unwrap_or(1),
            next_ip: AtomicU32::new(1),
            log_dir,
        });
        let (tx, rx) = tokio::sync::oneshot::channel();
        runtime.spawn(watch_pods(inner.clone(), tx));
        tokio::time::timeout(Duration::from_secs(60), rx)
            .await
            .map_err(|_| "the pod watch did not list in 60 s".to_string())?
            .map_err(|_| "the pod watch stopped".to_string())?;
        Ok(Kubelet { inner })
    }

    /// Pods of `namespace` with a live process, or status-only, and Running
    /// (not stopping): what a Service could send traffic to once Ready.
    pub fn running(&self, namespace: &str) -> Vec<RunningPod> {
        self.pods(namespace)
            .into_iter()
            .filter(|p| p.phase == "Running" && (p.status_only || p.pid.is_some()))
            .collect()
    }

    /// Every pod of `namespace` the kubelet plays (crash-looping, terminated
    /// and stopping ones too), by name.
    pub fn pods(&self, namespace: &str) -> Vec<RunningPod> {
        let slots: Vec<Arc<Slot>> = self
            .inner
            .pods
            .lock()
            .unwrap()
            .values()
            .filter(|s| s.namespace == namespace)
            .cloned()
            .collect();
        let mut out: Vec<RunningPod> = slots
            .iter()
            .filter_map(|s| {
                let st = s.state.lock().unwrap().clone();
                (!st.stopping && !st.ip.is_empty()).then(|| s.view(&st))
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// One pod by name, if the kubelet plays it.
    pub fn pod(&self, namespace: &str, name: &str) -> Option<RunningPod> {
        self.pods(namespace).into_iter().find(|p| p.name == name)
    }

    /// Every process start of a pod (argv, env, pid), oldest first.
    pub fn launches(&self, namespace: &str, name: &str) -> Vec<Launch> {
        self.slot(namespace, name)
            .map(|s| s.state.lock().unwrap().launches.clone())
            .unwrap_or_default()
    }

    /// What the pod's process wrote (stdout and stderr, all starts).
    pub fn logs(&self, namespace: &str, name: &str) -> String {
        std::fs::read_to_string(self.inner.log_path(namespace, name)).unwrap_or_default()
    }

    /// Kills the pod's process as the kernel's OOM killer would: it is
    /// reported terminated with reason `OOMKilled` (exit code 137) and
    /// restarted per its restart policy. False when no process runs.
    pub fn oom_kill(&self, namespace: &str, name: &str) -> bool {
        let Some(slot) = self.slot(namespace, name) else {
            return false;
        };
        let Some(pid) = slot.state.lock().unwrap().pid else {
            return false;
        };
        slot.oom.store(true, Ordering::SeqCst);
        // SAFETY: plain kill(2) of our own child.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) == 0 }
    }

    fn slot(&self, namespace: &str, name: &str) -> Option<Arc<Slot>> {
        self.inner
            .pods
            .lock()
            .unwrap()
            .values()
            .find(|s| {
                s.namespace == namespace && s.name == name && !s.state.lock().unwrap().stopping
            })
            .cloned()
    }

    /// Steady load on the Ready pods of `namespace` matching `selector`, as
    /// through a Service: round robin over the ready set, re-read on every
    /// request. `/predict`, then `/feedback` with the true label. Runs until
    /// the handle is dropped. Status-only pods (no process) are left out.
    pub async fn load(
        &self,
        namespace: &str,
        selector: &BTreeMap<String, String>,
        rps: f64,
    ) -> LoadHandle {
        self.load_with(namespace, selector, LoadOptions::rps(rps))
            .await
    }

    /// [`Kubelet::load`] with more options.
    pub async fn load_with(
        &self,
        namespace: &str,
        selector: &BTreeMap<String, String>,
        options: LoadOptions,
    ) -> LoadHandle {
        let route = Arc::new(Mutex::new(RouteTable {
            rules: vec![Rule {
                matches: vec![],
                backends: vec![Backend {
                    service: String::new(),
                    weight: 1,
                    selector: Some(selector.clone()),
                }],
                mirrors: vec![],
            }],
        }));
        self.start_load(namespace, route, None, options).await
    }

    /// Load through the Gateway API router: each request picks the rule of
    /// the HTTPRoute `route` (in `namespace`) its headers match (exact header
    /// matches; the rule with most matched headers wins; a rule without
    /// matches takes the rest), then a backend Service by the rule's weights,
    /// then a Ready pod of that Service's selector, round robin. The stored
    /// HTTPRoute and Services are re-read every second.
    pub async fn load_weighted(
        &self,
        namespace: &str,
        route: &str,
        options: LoadOptions,
    ) -> LoadHandle {
        let table = Arc::new(Mutex::new(RouteTable { rules: vec![] }));
        self.start_load(namespace, table, Some(route.to_string()), options)
            .await
    }

    async fn start_load(
        &self,
        namespace: &str,
        table: Arc<Mutex<RouteTable>>,
        route: Option<String>,
        options: LoadOptions,
    ) -> LoadHandle {
        let (stop, stop_rx) = watch::channel(false);
        let stats = Arc::new(Mutex::new(LoadStats::default()));
        if let Some(route) = route {
            let (read, first_read) = tokio::sync::oneshot::channel();
            self.inner.runtime.spawn(refresh_route(
                self.inner.client.clone(),
                namespace.to_string(),
                route,
                table.clone(),
                stop_rx.clone(),
                read,
            ));
            // Requests start once the route has been read (or after 10 s).
            let _ = tokio::time::timeout(Duration::from_secs(10), first_read).await;
        }
        self.inner.runtime.spawn(run_load(
            self.clone(),
            namespace.to_string(),
            table,
            options,
            stats.clone(),
            stop_rx,
        ));
        LoadHandle { stop, stats }
    }
}

impl Slot {
    fn view(&self, st: &PodState) -> RunningPod {
        let last = st.launches.last();
        RunningPod {
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            uid: self.uid.clone(),
            labels: self.labels.lock().unwrap().clone(),
            ip: st.ip.clone(),
            port: st.port,
            ready: st.ready,
            phase: st.phase.clone(),
            image: st.image.clone(),
            status_only: st.status_only,
            argv: last.map(|l| l.argv.clone()).unwrap_or_default(),
            env: last.map(|l| l.env.clone()).unwrap_or_default(),
            pid: st.pid,
            restarts: st.restarts,
            waiting: st.waiting.clone(),
        }
    }
}

impl Inner {
    fn log_path(&self, namespace: &str, name: &str) -> PathBuf {
        self.log_dir.join(format!("{namespace}_{name}.log"))
    }

    /// A loopback address of our own whose `port` is free.
    fn allocate_ip(&self, port: u16) -> Ipv4Addr {
        for _ in 0..65536 {
            let n = self.next_ip.fetch_add(1, Ordering::SeqCst);
            let (x, y) = (((n >> 8) & 0xff) as u8, (n & 0xff) as u8);
            if y == 0 || y == 255 {
                continue;
            }
            let ip = Ipv4Addr::new(127, self.ip_base, x, y);
            if std::net::TcpListener::bind((ip, port)).is_ok() {
                return ip;
            }
        }
        panic!("no free loopback address for port {port}");
    }

    /// A pod as the watch sees it: new ones get a task; known ones have
    /// their labels refreshed and are stopped once terminating.
    fn observe(self: &Arc<Self>, pod: Pod) {
        let Some(uid) = pod.metadata.uid.clone() else {
            return;
        };
        let existing = self.pods.lock().unwrap().get(&uid).cloned();
        if let Some(slot) = existing {
            *slot.labels.lock().unwrap() = pod.metadata.labels.clone().unwrap_or_default();
            if pod.metadata.deletion_timestamp.is_some() {
                slot.stop.send_if_modified(|s| {
                    let changed = *s == Stop::No;
                    if changed {
                        *s = Stop::Terminating;
                    }
                    changed
                });
            }
            return;
        }
        let phase = pod.status.as_ref().and_then(|s| s.phase.clone());
        if pod.metadata.deletion_timestamp.is_some()
            || matches!(phase.as_deref(), Some("Succeeded" | "Failed"))
        {
            return;
        }
        let (stop, stop_rx) = watch::channel(Stop::No);
        let slot = Arc::new(Slot {
            namespace: pod.metadata.namespace.clone().unwrap_or_default(),
            name: pod.metadata.name.clone().unwrap_or_default(),
            uid: uid.clone(),
            labels: Mutex::new(pod.metadata.labels.clone().unwrap_or_default()),
            state: Mutex::new(PodState::default()),
            stop,
            oom: AtomicBool::new(false),
        });
        self.pods.lock().unwrap().insert(uid, slot.clone());
        self.runtime
            .spawn(run_pod(self.clone(), slot, pod, stop_rx));
    }

    fn deleted(&self, uid: &str) {
        if let Some(slot) = self.pods.lock().unwrap().get(uid) {
            slot.stop.send_if_modified(|s| {
                let changed = *s != Stop::Deleted;
                *s = Stop::Deleted;
                changed
            });
        }
    }
}

async fn watch_pods(inner: Arc<Inner>, listed: tokio::sync::oneshot::Sender<()>) {
    let api: Api<Pod> = Api::all(inner.client.clone());
    // Paced like the operator's watches: kube's default (up to a minute
    // between tries, reset only after two quiet minutes) would keep this
    // stand-in kubelet blind long after an API server restart, and the
    // fault tests would measure the test kubelet instead of the operator.
    let mut events = watcher(api, watcher::Config::default())
        .backoff(modeldeploy::controller::watch_retry::WatchRetry::new())
        .boxed();
    let mut listed = Some(listed);
    let mut seen: HashSet<String> = HashSet::new();
    while let Some(event) = events.next().await {
        match event {
            Ok(watcher::Event::Init) => seen.clear(),
            Ok(watcher::Event::InitApply(pod)) => {
                if let Some(uid) = &pod.metadata.uid {
                    seen.insert(uid.clone());
                }
                inner.observe(pod);
            }
            Ok(watcher::Event::InitDone) => {
                // After a re-list: pods that vanished meanwhile are gone.
                let gone: Vec<String> = inner
                    .pods
                    .lock()
                    .unwrap()
                    .keys()
                    .filter(|uid| !seen.contains(*uid))
                    .cloned()
                    .collect();
                for uid in gone {
                    inner.deleted(&uid);
                }
                if let Some(tx) = listed.take() {
                    let _ = tx.send(());
                }
            }
            Ok(watcher::Event::Apply(pod)) => inner.observe(pod),
            Ok(watcher::Event::Delete(pod)) => {
                if let Some(uid) = &pod.metadata.uid {
                    inner.deleted(uid);
                }
            }
            Err(e) => eprintln!("envtest kubelet: pod watch: {e}"),
        }
    }
}

fn now() -> String {
    k8s_openapi::jiff::Timestamp::now()
        .round(k8s_openapi::jiff::Unit::Second)
        .unwrap_or_else(|_| k8s_openapi::jiff::Timestamp::now())
        .to_string()
}

/// The first container's state as the kubelet reports it.
#[derive(Debug, Clone)]
enum State {
    Waiting { reason: String, message: String },
    Running { started_at: String },
    Terminated(Terminated),
}

#[derive(Debug, Clone)]
struct Terminated {
    exit_code: i32,
    reason: String,
    started_at: String,
    finished_at: String,
}

impl Terminated {
    fn json(&self) -> Value {
        json!({"terminated": {"exitCode": self.exit_code, "reason": self.reason,
                              "startedAt": self.started_at, "finishedAt": self.finished_at}})
    }
}

/// Writes a pod's status the way the kubelet does (strategic merge patch of
/// the status subresource, guarded by the pod's uid).
struct StatusWriter {
    api: Api<Pod>,
    name: String,
    uid: String,
    ip: String,
    start_time: String,
    containers: Vec<(String, String)>,
    phase: String,
    ready: bool,
    ready_since: String,
    state: State,
    last_state: Option<Terminated>,
    restarts: i32,
}

impl StatusWriter {
    fn set_ready(&mut self, ready: bool) -> bool {
        if self.ready == ready {
            return false;
        }
        self.ready = ready;
        self.ready_since = now();
        true
    }

    /// Writes the status; false when the pod is gone (or is another pod now).
    async fn write(&self) -> bool {
        let cond = |type_: &str, ok: bool, since: &str, reason: Option<&str>| {
            // `null` removes a reason left from before (strategic merge
            // patches merge conditions by type, field by field).
            json!({"type": type_, "status": if ok { "True" } else { "False" },
                   "lastProbeTime": null, "lastTransitionTime": since,
                   "reason": reason, "message": null})
        };
        let not_ready_reason = match self.phase.as_str() {
            "Running" => Some("ContainersNotReady"),
            _ => Some("PodCompleted"),
        };
        let reason = (!self.ready).then_some(not_ready_reason).flatten();
        let mut statuses = Vec::new();
        for (i, (name, image)) in self.containers.iter().enumerate() {
            let image_id = format!("envtest-kubelet://{image}");
            let container_id = format!("envtest-kubelet://{}/{name}/{}", self.uid, self.restarts);
            if i == 0 {
                let (state, started) = match &self.state {
                    State::Waiting { reason, message } => (
                        json!({"waiting": {"reason": reason, "message": message}}),
                        false,
                    ),
                    State::Running { started_at } => {
                        (json!({"running": {"startedAt": started_at}}), true)
                    }
                    State::Terminated(t) => (t.json(), false),
                };
                statuses.push(json!({
                    "name": name, "image": image, "imageID": image_id, "containerID": container_id,
                    "ready": self.ready, "started": started, "restartCount": self.restarts,
                    "state": state,
                    "lastState": self.last_state.as_ref().map_or(json!({}), Terminated::json),
                }));
            } else {
                statuses.push(json!({
                    "name": name, "image": image, "imageID": image_id, "containerID": container_id,
                    "ready": self.phase == "Running", "started": true, "restartCount": 0,
                    "state": {"running": {"startedAt": self.start_time}}, "lastState": {},
                }));
            }
        }
        let patch = json!({
            "metadata": {"uid": self.uid},
            "status": {
                "phase": self.phase,
                "hostIP": "127.0.0.1", "hostIPs": [{"ip": "127.0.0.1"}],
                "podIP": self.ip, "podIPs": [{"ip": self.ip}],
                "startTime": self.start_time,
                "conditions": [
                    cond("PodScheduled", true, &self.start_time, None),
                    cond("Initialized", true, &self.start_time, None),
                    cond("ContainersReady", self.ready, &self.ready_since, reason),
                    cond("Ready", self.ready, &self.ready_since, reason),
                ],
                "containerStatuses": statuses,
            }
        });
        // Like a real kubelet, keep trying through an API server or etcd
        // outage (a fault test has them down for 30 s): a lost write would
        // leave the pod unready for good.
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        let mut delay = Duration::from_millis(100);
        loop {
            match self
                .api
                .patch_status(
                    &self.name,
                    &PatchParams::default(),
                    &Patch::Strategic(&patch),
                )
                .await
            {
                Ok(_) => return true,
                Err(kube::Error::Api(s)) if matches!(s.code, 404 | 409 | 422) => return false,
                Err(e) => {
                    if std::time::Instant::now() >= deadline {
                        eprintln!("envtest kubelet: status of {}: {e}", self.name);
                        return false;
                    }
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(1));
                }
            }
        }
    }
}

/// How to run a demo pod's process.
struct Plan {
    program: PathBuf,
    argv: Vec<String>,
    env: BTreeMap<String, String>,
    probe: Option<ProbeRule>,
    restart: String,
    grace: Duration,
}

enum ProbeSpec {
    Http {
        port: u16,
        path: String,
        headers: Vec<(String, String)>,
    },
    Tcp {
        port: u16,
    },
    /// exec and gRPC probes are taken as passing.
    Passing,
}

struct ProbeRule {
    spec: ProbeSpec,
    success: u32,
    failure: u32,
}

/// Whether the first container runs the demo server (see the module docs).
pub fn is_demo(container: &Container) -> bool {
    let base = |s: &str| s.rsplit('/').next().unwrap_or_default().to_string();
    if let Some(program) = container.command.as_ref().and_then(|c| c.first()) {
        return base(program) == "modeldeploy-demo";
    }
    let image = container.image.clone().unwrap_or_default();
    let image = image.split('@').next().unwrap_or_default();
    // Strip a tag: the last ':' after the last '/'.
    let repo = match image.rfind(':') {
        Some(i) if !image[i..].contains('/') => &image[..i],
        _ => image,
    };
    matches!(base(repo).as_str(), "modeldeploy-demo" | "modeldeploy")
}

async fn run_pod(inner: Arc<Inner>, slot: Arc<Slot>, pod: Pod, mut stop: watch::Receiver<Stop>) {
    let spec = pod.spec.clone().unwrap_or_default();
    let Some(first) = spec.containers.first().cloned() else {
        return;
    };
    let port = first
        .ports
        .as_ref()
        .and_then(|p| p.first())
        .and_then(|p| u16::try_from(p.container_port).ok())
        .unwrap_or(8080);
    let ip = inner.allocate_ip(port).to_string();
    let image = first.image.clone().unwrap_or_default();
    let started = now();
    let mut status = StatusWriter {
        api: Api::namespaced(inner.client.clone(), &slot.namespace),
        name: slot.name.clone(),
        uid: slot.uid.clone(),
        ip: ip.clone(),
        start_time: started.clone(),
        containers: spec
            .containers
            .iter()
            .map(|c| (c.name.clone(), c.image.clone().unwrap_or_default()))
            .collect(),
        phase: "Running".into(),
        ready: false,
        ready_since: started.clone(),
        state: State::Waiting {
            reason: "ContainerCreating".into(),
            message: String::new(),
        },
        last_state: None,
        restarts: 0,
    };
    {
        let mut st = slot.state.lock().unwrap();
        st.ip = ip.clone();
        st.port = port;
        st.image = image;
        st.phase = "Running".into();
    }
    let stopped = if is_demo(&first) {
        let plan = plan(&inner, &pod, &first, &ip, port).await;
        supervise(&inner, &slot, plan, &mut status, &mut stop).await
    } else {
        slot.state.lock().unwrap().status_only = true;
        status.state = State::Running {
            started_at: started,
        };
        status.set_ready(true);
        slot.state.lock().unwrap().ready = true;
        status.write().await;
        wait_stop(&mut stop).await
    };
    slot.state.lock().unwrap().stopping = true;
    if stopped == Stop::Terminating {
        let api: Api<Pod> = Api::namespaced(inner.client.clone(), &slot.namespace);
        let params = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions {
                uid: Some(slot.uid.clone()),
                resource_version: None,
            }),
            ..Default::default()
        };
        let _ = api.delete(&slot.name, &params).await;
    }
    inner.pods.lock().unwrap().remove(&slot.uid);
}

async fn wait_stop(stop: &mut watch::Receiver<Stop>) -> Stop {
    loop {
        let s = *stop.borrow_and_update();
        if s != Stop::No {
            return s;
        }
        if stop.changed().await.is_err() {
            return Stop::Deleted;
        }
    }
}

async fn plan(inner: &Inner, pod: &Pod, c: &Container, ip: &str, port: u16) -> Plan {
    let env = container_env(inner, pod, c, ip).await;
    let mut env = env;
    env.insert("LISTEN".into(), format!("{ip}:{port}"));
    let mut argv: Vec<String> = c.command.iter().flatten().skip(1).cloned().collect();
    argv.extend(c.args.iter().flatten().cloned());
    let argv = argv.iter().map(|a| expand(a, &env)).collect();
    let spec = pod.spec.clone().unwrap_or_default();
    let port_of = |p: &IntOrString| match p {
        IntOrString::Int(n) => u16::try_from(*n).unwrap_or(port),
        IntOrString::String(name) => c
            .ports
            .iter()
            .flatten()
            .find(|cp| cp.name.as_deref() == Some(name))
            .and_then(|cp| u16::try_from(cp.container_port).ok())
            .unwrap_or(port),
    };
    let probe = c.readiness_probe.as_ref().map(|p: &Probe| {
        let spec = if let Some(h) = &p.http_get {
            ProbeSpec::Http {
                port: port_of(&h.port),
                path: h.path.clone().unwrap_or_else(|| "/".into()),
                headers: h
                    .http_headers
                    .iter()
                    .flatten()
                    .map(|h| (h.name.clone(), h.value.clone()))
                    .collect(),
            }
        } else if let Some(t) = &p.tcp_socket {
            ProbeSpec::Tcp {
                port: port_of(&t.port),
            }
        } else {
            ProbeSpec::Passing
        };
        ProbeRule {
            spec,
            success: p.success_threshold.unwrap_or(1).max(1) as u32,
            failure: p.failure_threshold.unwrap_or(3).max(1) as u32,
        }
    });
    Plan {
        program: PathBuf::from(env!("CARGO_BIN_EXE_modeldeploy-demo")),
        argv,
        env,
        probe,
        restart: spec.restart_policy.unwrap_or_else(|| "Always".into()),
        grace: Duration::from_secs(
            spec.termination_grace_period_seconds
                .unwrap_or(30)
                .clamp(0, 2) as u64,
        )
        .min(STOP_GRACE),
    }
}

/// Runs a demo pod's process until the pod stops: probes, restarts,
/// terminal phases. Returns why it stopped.
async fn supervise(
    inner: &Inner,
    slot: &Slot,
    plan: Plan,
    status: &mut StatusWriter,
    stop: &mut watch::Receiver<Stop>,
) -> Stop {
    let mut backoff = BACKOFF_START;
    loop {
        if *stop.borrow() != Stop::No {
            return *stop.borrow();
        }
        let launched = Instant::now();
        let started_at = now();
        let exit = match spawn(inner, slot, &plan) {
            Err(e) => {
                // Like a container that cannot start: reported, retried.
                let log = inner.log_path(&slot.namespace, &slot.name);
                let _ = std::fs::write(&log, format!("envtest kubelet: cannot start: {e}\n"));
                Exit {
                    code: 128,
                    reason: "StartError".into(),
                }
            }
            Ok(mut child) => {
                status.state = State::Running {
                    started_at: started_at.clone(),
                };
                let ready_now = plan.probe.is_none();
                status.set_ready(ready_now);
                {
                    let mut st = slot.state.lock().unwrap();
                    st.ready = ready_now;
                    st.waiting = None;
                }
                status.write().await;
                match run_until_exit(&mut child, &plan, status, slot, stop).await {
                    Some(exit) => exit,
                    None => {
                        terminate(&mut child, plan.grace).await;
                        let mut st = slot.state.lock().unwrap();
                        st.pid = None;
                        st.ready = false;
                        return *stop.borrow();
                    }
                }
            }
        };
        let oom = slot.oom.swap(false, Ordering::SeqCst);
        let terminated = Terminated {
            exit_code: if oom { 137 } else { exit.code },
            reason: if oom {
                "OOMKilled".into()
            } else if exit.code == 0 {
                "Completed".into()
            } else {
                exit.reason
            },
            started_at,
            finished_at: now(),
        };
        status.set_ready(false);
        let finished = match plan.restart.as_str() {
            "Never" => true,
            "OnFailure" => terminated.exit_code == 0,
            _ => false,
        };
        if finished {
            status.phase = if terminated.exit_code == 0 {
                "Succeeded".into()
            } else {
                "Failed".into()
            };
            status.state = State::Terminated(terminated);
            {
                let mut st = slot.state.lock().unwrap();
                st.pid = None;
                st.ready = false;
                st.phase = status.phase.clone();
            }
            status.write().await;
            return wait_stop(stop).await;
        }
        if launched.elapsed() >= BACKOFF_RESET {
            backoff = BACKOFF_START;
        }
        status.restarts += 1;
        status.last_state = Some(terminated.clone());
        status.state = State::Waiting {
            reason: "CrashLoopBackOff".into(),
            message: format!(
                "back-off {}s restarting failed container={} pod={}",
                backoff.as_secs(),
                status.containers[0].0,
                slot.name
            ),
        };
        {
            let mut st = slot.state.lock().unwrap();
            st.pid = None;
            st.ready = false;
            st.restarts = status.restarts;
            st.waiting = Some("CrashLoopBackOff".into());
        }
        if !status.write().await {
            return wait_stop(stop).await;
        }
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            s = wait_stop(stop) => return s,
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

struct Exit {
    code: i32,
    reason: String,
}

fn spawn(inner: &Inner, slot: &Slot, plan: &Plan) -> std::io::Result<tokio::process::Child> {
    let log_path = inner.log_path(&slot.namespace, &slot.name);
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)?;
    let mut cmd = std::process::Command::new(&plan.program);
    cmd.args(&plan.argv)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOSTNAME", &slot.name)
        // Plain logs in the pod's log file.
        .env("NO_COLOR", "1")
        .envs(&plan.env)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    die_with_parent(&mut cmd);
    let mut cmd = tokio::process::Command::from(cmd);
    cmd.kill_on_drop(true);
    let child = cmd.spawn()?;
    let pid = child.id().unwrap_or_default();
    let mut st = slot.state.lock().unwrap();
    st.pid = Some(pid);
    st.launches.push(Launch {
        argv: plan.argv.clone(),
        env: plan.env.clone(),
        pid,
    });
    Ok(child)
}

/// Probes until the process exits (`Some`) or the pod stops (`None`).
async fn run_until_exit(
    child: &mut tokio::process::Child,
    plan: &Plan,
    status: &mut StatusWriter,
    slot: &Slot,
    stop: &mut watch::Receiver<Stop>,
) -> Option<Exit> {
    let http = modeldeploy::http_client_builder()
        .timeout(Duration::from_secs(1))
        .build()
        .unwrap_or_default();
    let mut ticker = tokio::time::interval(PROBE_EVERY);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (mut successes, mut failures) = (0u32, 0u32);
    loop {
        tokio::select! {
            exit = child.wait() => {
                return Some(match exit {
                    Ok(s) => {
                        use std::os::unix::process::ExitStatusExt;
                        Exit {
                            code: s.code().unwrap_or_else(|| 128 + s.signal().unwrap_or(9)),
                            reason: "Error".into(),
                        }
                    }
                    Err(_) => Exit { code: 128, reason: "Error".into() },
                });
            }
            s = wait_stop(stop) => {
                let _ = s;
                return None;
            }
            _ = ticker.tick() => {
                let Some(rule) = &plan.probe else { continue };
                let ok = probe(&http, &status.ip, &rule.spec).await;
                if ok {
                    successes += 1;
                    failures = 0;
                } else {
                    failures += 1;
                    successes = 0;
                }
                let want = if status.ready { failures < rule.failure } else { successes >= rule.success };
                if status.set_ready(want) {
                    slot.state.lock().unwrap().ready = want;
                    status.write().await;
                }
            }
        }
    }
}

async fn probe(http: &reqwest::Client, ip: &str, spec: &ProbeSpec) -> bool {
    match spec {
        ProbeSpec::Http {
            port,
            path,
            headers,
        } => {
            let mut req = http.get(format!("http://{ip}:{port}{path}"));
            for (k, v) in headers {
                req = req.header(k, v);
            }
            req.send().await.is_ok_and(|r| {
                let c = r.status().as_u16();
                (200..400).contains(&c)
            })
        }
        ProbeSpec::Tcp { port } => tokio::time::timeout(
            Duration::from_secs(1),
            tokio::net::TcpStream::connect((ip, *port)),
        )
        .await
        .is_ok_and(|r| r.is_ok()),
        ProbeSpec::Passing => true,
    }
}

/// SIGTERM, then SIGKILL after `grace`.
async fn terminate(child: &mut tokio::process::Child, grace: Duration) {
    if let Some(pid) = child.id() {
        // SAFETY: plain kill(2) of our own child.
        unsafe {
            libc::kill(pid as i32, libc::SIGTERM);
        }
    }
    if tokio::time::timeout(grace, child.wait()).await.is_err() {
        let _ = child.start_kill();
        let _ = child.wait().await;
    }
}

/// The container's environment as the kubelet builds it.
async fn container_env(
    inner: &Inner,
    pod: &Pod,
    c: &Container,
    ip: &str,
) -> BTreeMap<String, String> {
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let configmaps: Api<ConfigMap> = Api::namespaced(inner.client.clone(), &ns);
    let secrets: Api<Secret> = Api::namespaced(inner.client.clone(), &ns);
    let mut env = BTreeMap::new();
    for from in c.env_from.iter().flatten() {
        let prefix = from.prefix.clone().unwrap_or_default();
        if let Some(r) = &from.config_map_ref
            && let Ok(Some(cm)) = configmaps.get_opt(&r.name).await
        {
            for (k, v) in cm.data.unwrap_or_default() {
                env.insert(format!("{prefix}{k}"), v);
            }
        }
        if let Some(r) = &from.secret_ref
            && let Ok(Some(s)) = secrets.get_opt(&r.name).await
        {
            for (k, v) in s.data.unwrap_or_default() {
                env.insert(
                    format!("{prefix}{k}"),
                    String::from_utf8_lossy(&v.0).into_owned(),
                );
            }
        }
    }
    let field = |path: &str| -> Option<String> {
        let m = &pod.metadata;
        let from_map = |map: &Option<BTreeMap<String, String>>, key: &str| {
            map.as_ref().and_then(|m| m.get(key).cloned())
        };
        let key_of = |prefix: &str| {
            path.strip_prefix(prefix)
                .and_then(|r| r.strip_suffix("']"))
                .map(str::to_string)
        };
        match path {
            "metadata.name" => m.name.clone(),
            "metadata.namespace" => m.namespace.clone(),
            "metadata.uid" => m.uid.clone(),
            "spec.nodeName" => Some(String::new()),
            "spec.serviceAccountName" => pod.spec.as_ref()?.service_account_name.clone(),
            "status.podIP" | "status.podIPs" => Some(ip.to_string()),
            "status.hostIP" | "status.hostIPs" => Some("127.0.0.1".into()),
            _ => {
                if let Some(k) = key_of("metadata.labels['") {
                    from_map(&m.labels, &k)
                } else if let Some(k) = key_of("metadata.annotations['") {
                    from_map(&m.annotations, &k)
                } else {
                    None
                }
            }
        }
    };
    for e in c.env.iter().flatten() {
        let value = match &e.value_from {
            None => Some(expand(e.value.as_deref().unwrap_or_default(), &env)),
            Some(from) => {
                if let Some(f) = &from.field_ref {
                    field(&f.field_path)
                } else if let Some(r) = &from.config_map_key_ref {
                    configmaps
                        .get_opt(&r.name)
                        .await
                        .ok()
                        .flatten()
                        .and_then(|cm| cm.data?.get(&r.key).cloned())
                } else if let Some(r) = &from.secret_key_ref {
                    secrets
                        .get_opt(&r.name)
                        .await
                        .ok()
                        .flatten()
                        .and_then(|s| s.data?.get(&r.key).cloned())
                        .map(|v| String::from_utf8_lossy(&v.0).into_owned())
                } else {
                    // resourceFieldRef is not played.
                    None
                }
            }
        };
        if let Some(v) = value {
            env.insert(e.name.clone(), v);
        }
    }
    env
}

/// `$(VAR)` expansion as the kubelet does it: `$$` is a literal `$`, unknown
/// references stay as they are.
fn expand(s: &str, env: &BTreeMap<String, String>) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(body) = after.strip_prefix('(')
            && let Some(end) = body.find(')')
            && let Some(v) = env.get(&body[..end])
        {
            out.push_str(v);
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

// ---------------------------------------------------------------------------
// Load through "Services" and "HTTPRoutes" to the pods' processes.

/// Options of [`Kubelet::load_with`] and [`Kubelet::load_weighted`].
#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub rps: f64,
    /// Send `/feedback` with the true label after each answer.
    pub feedback: bool,
    /// Added to every generated feature (drifted inputs).
    pub feature_shift: f64,
    pub features: usize,
    /// Sent with every request (and matched against HTTPRoute header rules).
    pub headers: BTreeMap<String, String>,
    pub seed: u64,
}

impl LoadOptions {
    pub fn rps(rps: f64) -> Self {
        Self {
            rps,
            feedback: true,
            feature_shift: 0.0,
            features: 4,
            headers: BTreeMap::new(),
            seed: 7,
        }
    }
}

/// What a load saw so far.
#[derive(Debug, Clone, Default)]
pub struct LoadStats {
    /// Requests sent (including those that found no backend).
    pub sent: u64,
    /// Requests without a 2xx answer (including those without a backend).
    pub failed: u64,
    /// Requests that found no Ready pod to go to.
    pub no_backend: u64,
    /// Requests skipped because too many were in flight.
    pub skipped: u64,
    /// 2xx answers per pod name, by the `version` the pod answered with.
    pub answers: BTreeMap<String, BTreeMap<String, u64>>,
    /// Non-2xx answers and connection errors per pod name.
    pub errors: BTreeMap<String, u64>,
    /// Copies sent by an HTTPRoute `RequestMirror` filter: 2xx answers per
    /// pod name by version. Never in `answers`: no client sees them.
    pub mirrored: BTreeMap<String, BTreeMap<String, u64>>,
    /// Copies without a 2xx answer, per pod name.
    pub mirror_errors: BTreeMap<String, u64>,
}

impl LoadStats {
    /// Pods that answered at least once.
    pub fn pods(&self) -> BTreeSet<String> {
        self.answers.keys().cloned().collect()
    }

    /// 2xx answers in all.
    pub fn ok(&self) -> u64 {
        self.answers.values().flat_map(|v| v.values()).sum()
    }

    /// 2xx answers per version, over all pods.
    pub fn by_version(&self) -> BTreeMap<String, u64> {
        let mut out = BTreeMap::new();
        for v in self.answers.values() {
            for (version, n) in v {
                *out.entry(version.clone()).or_default() += n;
            }
        }
        out
    }
}

/// A running load; dropping it stops it.
pub struct LoadHandle {
    stop: watch::Sender<bool>,
    stats: Arc<Mutex<LoadStats>>,
}

impl LoadHandle {
    pub fn stats(&self) -> LoadStats {
        self.stats.lock().unwrap().clone()
    }

    /// Stops the load and returns what it saw.
    pub fn stop(self) -> LoadStats {
        let _ = self.stop.send(true);
        self.stats()
    }
}

impl Drop for LoadHandle {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

#[derive(Debug, Clone)]
struct Backend {
    service: String,
    weight: u64,
    /// The Service's selector; `None` while unknown (no pods).
    selector: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Clone)]
struct Rule {
    /// Any of these header sets (all exact matches) selects the rule; none
    /// at all matches every request.
    matches: Vec<Vec<(String, String)>>,
    backends: Vec<Backend>,
    /// `RequestMirror` filters: each copies `weight` percent of the rule's
    /// requests to its Service; the copy's answer is dropped.
    mirrors: Vec<Backend>,
}

#[derive(Debug, Clone)]
struct RouteTable {
    rules: Vec<Rule>,
}

impl RouteTable {
    /// The rule for a request with `headers`: the matching rule with most
    /// matched headers, first wins on ties.
    fn rule(&self, headers: &BTreeMap<String, String>) -> Option<&Rule> {
        let mut best: Option<(&Rule, usize)> = None;
        for r in &self.rules {
            let score = if r.matches.is_empty() {
                Some(0)
            } else {
                r.matches
                    .iter()
                    .filter(|m| {
                        m.iter().all(|(k, v)| {
                            headers
                                .iter()
                                .any(|(hk, hv)| hk.eq_ignore_ascii_case(k) && hv == v)
                        })
                    })
                    .map(Vec::len)
                    .max()
            };
            if let Some(s) = score
                && best.is_none_or(|(_, b)| s > b)
            {
                best = Some((r, s));
            }
        }
        best.map(|(r, _)| r)
    }
}

async fn refresh_route(
    client: kube::Client,
    namespace: String,
    route: String,
    table: Arc<Mutex<RouteTable>>,
    mut stop: watch::Receiver<bool>,
    read: tokio::sync::oneshot::Sender<()>,
) {
    let mut read = Some(read);
    let ar = ApiResource::from_gvk(&GroupVersionKind::gvk(
        "gateway.networking.k8s.io",
        "v1",
        "HTTPRoute",
    ));
    let routes: Api<DynamicObject> = Api::namespaced_with(client.clone(), &namespace, &ar);
    let services: Api<Service> = Api::namespaced(client, &namespace);
    loop {
        if let Ok(Some(r)) = routes.get_opt(&route).await {
            let mut rules = Vec::new();
            for rule in r.data["spec"]["rules"].as_array().into_iter().flatten() {
                let matches = rule["matches"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|m| {
                        m["headers"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .map(|h| {
                                (
                                    h["name"].as_str().unwrap_or_default().to_string(),
                                    h["value"].as_str().unwrap_or_default().to_string(),
                                )
                            })
                            .collect::<Vec<_>>()
                    })
                    .collect::<Vec<_>>();
                // A match without headers (a path match) matches everything.
                let matches = if matches.iter().any(Vec::is_empty) {
                    vec![]
                } else {
                    matches
                };
                let mut backends = Vec::new();
                for b in rule["backendRefs"].as_array().into_iter().flatten() {
                    let service = b["name"].as_str().unwrap_or_default().to_string();
                    let selector = services
                        .get_opt(&service)
                        .await
                        .ok()
                        .flatten()
                        .and_then(|s| s.spec?.selector);
                    backends.push(Backend {
                        service,
                        weight: b["weight"].as_u64().unwrap_or(1),
                        selector,
                    });
                }
                let mut mirrors = Vec::new();
                for f in rule["filters"].as_array().into_iter().flatten() {
                    if f["type"] != "RequestMirror" {
                        continue;
                    }
                    let m = &f["requestMirror"];
                    let service = m["backendRef"]["name"].as_str().unwrap_or_default();
                    // `percent`, or `fraction` (denominator 100 by default), or all.
                    let percent = m["percent"].as_u64().unwrap_or_else(|| {
                        let n = m["fraction"]["numerator"].as_u64();
                        let d = m["fraction"]["denominator"].as_u64().unwrap_or(100);
                        n.map_or(100, |n| n * 100 / d.max(1))
                    });
                    let selector = services
                        .get_opt(service)
                        .await
                        .ok()
                        .flatten()
                        .and_then(|s| s.spec?.selector);
                    mirrors.push(Backend {
                        service: service.to_string(),
                        weight: percent,
                        selector,
                    });
                }
                rules.push(Rule {
                    matches,
                    backends,
                    mirrors,
                });
            }
            *table.lock().unwrap() = RouteTable { rules };
            if let Some(tx) = read.take() {
                let _ = tx.send(());
            }
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = stop.changed() => return,
        }
    }
}

/// A Ready pod (with a process) of `b`'s Service, round robin per Service.
fn ready_pod(
    kubelet: &Kubelet,
    namespace: &str,
    b: &Backend,
    turn: &mut HashMap<String, usize>,
) -> Option<RunningPod> {
    let selector = b.selector.as_ref()?;
    let ready: Vec<RunningPod> = kubelet
        .running(namespace)
        .into_iter()
        .filter(|p| {
            p.ready && !p.status_only && selector.iter().all(|(k, v)| p.labels.get(k) == Some(v))
        })
        .collect();
    if ready.is_empty() {
        return None;
    }
    let i = turn.entry(b.service.clone()).or_default();
    *i = i.wrapping_add(1);
    Some(ready[*i % ready.len()].clone())
}

/// A mirrored copy of a request: its answer is only counted, never given to
/// the client, and no feedback follows (the client acted on stable's answer).
async fn send_copy(
    http: reqwest::Client,
    stats: Arc<Mutex<LoadStats>>,
    pod: RunningPod,
    features: Vec<f64>,
    headers: BTreeMap<String, String>,
) {
    let mut req = http
        .post(format!("{}/predict", pod.url()))
        .json(&PredictRequest { features });
    for (k, v) in &headers {
        req = req.header(k, v);
    }
    let answer = match req.send().await {
        Ok(r) if r.status().is_success() => r.json::<PredictResponse>().await.ok(),
        _ => None,
    };
    let mut s = stats.lock().unwrap();
    match answer {
        Some(p) => {
            *s.mirrored
                .entry(pod.name.clone())
                .or_default()
                .entry(p.version)
                .or_default() += 1;
        }
        None => *s.mirror_errors.entry(pod.name.clone()).or_default() += 1,
    }
}

/// A tiny repeatable generator (xorshift64*) for features and choices.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// A standard normal (Box-Muller), as `demo::load` sends.
    fn normal(&mut self) -> f64 {
        let (u1, u2) = (self.unit().max(1e-12), self.unit());
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }
}

async fn run_load(
    kubelet: Kubelet,
    namespace: String,
    table: Arc<Mutex<RouteTable>>,
    options: LoadOptions,
    stats: Arc<Mutex<LoadStats>>,
    mut stop: watch::Receiver<bool>,
) {
    let http = modeldeploy::http_client_builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap_or_default();
    let in_flight = Arc::new(tokio::sync::Semaphore::new(128));
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / options.rps.max(0.01)));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut rng = Rng(options.seed.max(1));
    let mut turn: HashMap<String, usize> = HashMap::new();
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.changed() => return,
        }
        let Ok(permit) = in_flight.clone().try_acquire_owned() else {
            stats.lock().unwrap().skipped += 1;
            continue;
        };
        // Rule, then backend by weight, then a Ready pod round robin.
        let (backend, mirrors) = {
            let t = table.lock().unwrap();
            let mirrors = t
                .rule(&options.headers)
                .map(|r| r.mirrors.clone())
                .unwrap_or_default();
            let backend = t.rule(&options.headers).and_then(|r| {
                let total: u64 = r.backends.iter().map(|b| b.weight).sum();
                if total == 0 {
                    return None;
                }
                let mut pick = rng.next_u64() % total;
                r.backends
                    .iter()
                    .find(|b| {
                        if pick < b.weight {
                            true
                        } else {
                            pick -= b.weight;
                            false
                        }
                    })
                    .cloned()
            });
            (backend, mirrors)
        };
        let target = backend.and_then(|b| ready_pod(&kubelet, &namespace, &b, &mut turn));
        let features: Vec<f64> = (0..options.features)
            .map(|_| rng.normal() + options.feature_shift)
            .collect();
        // The gateway copies a request it forwards, to each mirror by its share.
        for m in mirrors.iter().filter(|_| target.is_some()) {
            if rng.next_u64() % 100 < m.weight
                && let Some(pod) = ready_pod(&kubelet, &namespace, m, &mut turn)
            {
                tokio::spawn(send_copy(
                    http.clone(),
                    stats.clone(),
                    pod,
                    features.clone(),
                    options.headers.clone(),
                ));
            }
        }
        {
            let mut s = stats.lock().unwrap();
            s.sent += 1;
            if target.is_none() {
                s.no_backend += 1;
                s.failed += 1;
            }
        }
        let Some(pod) = target else { continue };
        let (http, stats, headers, feedback) = (
            http.clone(),
            stats.clone(),
            options.headers.clone(),
            options.feedback,
        );
        tokio::spawn(async move {
            let _permit = permit;
            let truth = if features.first().copied().unwrap_or(0.0) > 0.0 {
                "1"
            } else {
                "0"
            };
            let mut req = http
                .post(format!("{}/predict", pod.url()))
                .json(&PredictRequest { features });
            for (k, v) in &headers {
                req = req.header(k, v);
            }
            let answer = match req.send().await {
                Ok(r) if r.status().is_success() => r.json::<PredictResponse>().await.ok(),
                _ => None,
            };
            match answer {
                Some(p) => {
                    {
                        let mut s = stats.lock().unwrap();
                        *s.answers
                            .entry(pod.name.clone())
                            .or_default()
                            .entry(p.version.clone())
                            .or_default() += 1;
                    }
                    if feedback {
                        let _ = http
                            .post(format!("{}/feedback", pod.url()))
                            .json(&Feedback {
                                actual: truth.into(),
                                predicted: p.label,
                            })
                            .send()
                            .await;
                    }
                }
                None => {
                    let mut s = stats.lock().unwrap();
                    s.failed += 1;
                    *s.errors.entry(pod.name.clone()).or_default() += 1;
                }
            }
        });
    }
}
