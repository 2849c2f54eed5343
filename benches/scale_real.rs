//! The scale targets of `benches/scale.rs` measured on a real API server:
//! 1,000 ModelDeployments and 3,000 pods, operator resident memory under
//! 64 MiB, every object reconciled within 10 s of a change, zero writes at
//! rest.
//!
//! The envtest control plane of `tests/support/envtest.rs` (etcd,
//! kube-apiserver, kube-controller-manager from `KUBEBUILDER_ASSETS`; without
//! them this bench prints one `SKIPPED:` line) with an audit log. The real
//! operator binary (`target/release/modeldeploy`, built by `cargo bench`) runs
//! as the Helm chart's ServiceAccount under the chart's RBAC, leader election
//! off, `--log-level warn` (`tests/support/real_operator.rs`). The real
//! Deployment and ReplicaSet controllers make the pods; the test kubelet
//! (`tests/support/kubelet.rs`) reports each one Running and Ready with a pod
//! IP and runs no process (the image is not the demo server's: a status-only
//! pod). The spec has no `rollout`, so no analysis runs and nothing is
//! scraped: a new version is rolled out by the Deployment and judged by its
//! availability only.
//!
//! Phases:
//! 1. The ModelDeployments (10 namespaces, 3 replicas each) exist before the
//!    operator starts: time until every one is `Stable` at generation 1.
//! 2. At rest for 60 s, every ModelDeployment (a label) and Deployment (an
//!    annotation) touched after 5 s: the operator's writes, counted from the
//!    API server's audit log (create / update / patch / delete by its
//!    ServiceAccount), must be 0.
//! 3. A new model version on 100 objects, then on all 1,000 at once: per
//!    object, the time from its change until `observedGeneration` shows it
//!    (acted) and until it is `Stable` on the new version.
//!
//! Memory: VmRSS every 100 ms, VmHWM, and at rest RssAnon / RssFile (the
//! binary's pages) from `/proc/<pid>/status`.
//!
//! Run: `cargo bench --bench scale_real` (`-- --quick`: 30 s at rest;
//! `SCALE_OBJECTS=N` for another count; `MALLOC_ARENA_MAX` and
//! `SCALE_OPERATOR_ENV="K=V ..."` are passed to the operator;
//! `SCALE_OPERATOR_PREFIX="heaptrack -o FILE"` runs it under a profiler,
//! `SCALE_OPERATOR_BIN` another build).
//! Results: docs/benchmarks.md, `## Scale`.

#[path = "../tests/support/mod.rs"]
#[allow(unused_imports)]
mod support;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::reflector;
use kube::runtime::{WatchStreamExt, watcher};
use modeldeploy::api::ModelDeployment;
use serde_json::json;
use support::envtest::{ControlPlane, Options, control_plane_with};
use support::real_operator::{OperatorOptions, install_chart_rbac};

fn objects() -> usize {
    std::env::var("SCALE_OBJECTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000)
}
const NAMESPACES: usize = 10;
const REPLICAS: i64 = 3;
const TIMEOUT: Duration = Duration::from_secs(900);
const TICK: Duration = Duration::from_millis(100);
/// Requests in flight when the bench itself writes objects.
const WRITERS: usize = 32;

type Key = (String, String);

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("scale_real: run with `cargo bench --bench scale_real`");
        return;
    }
    let quick = std::env::args().any(|a| a == "--quick");
    let Some(cp) = control_plane_with(Options {
        audit: true,
        ..Options::default()
    }) else {
        return;
    };
    println!("control plane started in {}", cp.startup_report());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(run(cp, quick));
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn manifest(ns: &str, name: &str, version: &str) -> ModelDeployment {
    serde_json::from_value(json!({
        "apiVersion": "modeldeploy.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "model": {"version": version, "image": format!("registry.example/{name}:{version}"),
                      "port": 8080, "storageUri": format!("s3://models/{name}/{version}")},
            "replicas": REPLICAS,
            "resources": {"requests": {"cpu": "500m", "memory": "1Gi"},
                          "limits": {"cpu": "2", "memory": "2Gi"}}
        }
    }))
    .expect("a valid ModelDeployment")
}

fn proc_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// CPU seconds (user + system) of a process, from /proc/<pid>/stat.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<f64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0.0))
        .collect();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (f.get(11).unwrap_or(&0.0) + f.get(12).unwrap_or(&0.0)) / hz
}

/// VmRSS of the operator every 100 ms.
struct RssSampler {
    stop: Arc<AtomicBool>,
    samples: Arc<std::sync::Mutex<Vec<(Instant, u64)>>>,
}

impl RssSampler {
    fn start(pid: u32) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let samples = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (s, out) = (stop.clone(), samples.clone());
        std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                if let Some(kib) = proc_kib(pid, "VmRSS:") {
                    out.lock().expect("lock").push((Instant::now(), kib));
                }
                std::thread::sleep(TICK);
            }
        });
        Self { stop, samples }
    }

    /// Peak and mean VmRSS between two instants, KiB.
    fn between(&self, from: Instant, to: Instant) -> (u64, u64) {
        let samples = self.samples.lock().expect("lock");
        let v: Vec<u64> = samples
            .iter()
            .filter(|(t, _)| *t >= from && *t <= to)
            .map(|(_, k)| *k)
            .collect();
        let peak = v.iter().copied().max().unwrap_or(0);
        let mean = v.iter().sum::<u64>() / (v.len().max(1) as u64);
        (peak, mean)
    }
}

impl Drop for RssSampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn pct(v: &[Duration], p: f64) -> String {
    if v.is_empty() {
        return "-".into();
    }
    let i = ((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1;
    format!("{:.2}", v[i].as_secs_f64())
}

fn key_of(md: &ModelDeployment) -> Key {
    (
        md.metadata.namespace.clone().unwrap_or_default(),
        md.metadata.name.clone().unwrap_or_default(),
    )
}

/// When the bench's watch first showed each object acted on a generation
/// (`observedGeneration` caught up) and Stable on a version at it: stamped
/// as the watch delivers, so an object acted on while the bench was still
/// writing the others is timed by its own change, not by the last write.
#[derive(Default)]
struct Milestones {
    acted: std::sync::Mutex<HashMap<(Key, i64), Instant>>,
    stable: std::sync::Mutex<HashMap<(Key, i64, String), Instant>>,
}

impl Milestones {
    fn saw(&self, md: &ModelDeployment) {
        let Some(s) = md.status.as_ref() else {
            return;
        };
        let generation = md.metadata.generation.unwrap_or(0);
        if s.observed_generation != Some(generation) {
            return;
        }
        let now = Instant::now();
        let key = key_of(md);
        self.acted
            .lock()
            .unwrap()
            .entry((key.clone(), generation))
            .or_insert(now);
        let stable =
            s.phase.as_ref().and_then(|p| serde_json::to_value(p).ok()) == Some(json!("Stable"));
        if let (true, Some(r)) = (stable, s.stable.as_ref()) {
            self.stable
                .lock()
                .unwrap()
                .entry((key, generation, r.version.clone()))
                .or_insert(now);
        }
    }
}

/// Waits until every changed object is Stable on `version` at the
/// generation its change made; latencies from each change to acted and to
/// Stable, sorted.
async fn wait_all(
    seen: &Milestones,
    changed: &HashMap<Key, (Instant, i64)>,
    version: &str,
) -> (Vec<Duration>, Vec<Duration>, Duration) {
    let started = Instant::now();
    let latencies = || {
        let acted = seen.acted.lock().unwrap();
        let stable = seen.stable.lock().unwrap();
        let mut a = Vec::new();
        let mut s = Vec::new();
        for (key, (at, generation)) in changed {
            if let Some(t) = acted.get(&(key.clone(), *generation)) {
                a.push(t.saturating_duration_since(*at));
            }
            if let Some(t) = stable.get(&(key.clone(), *generation, version.to_string())) {
                s.push(t.saturating_duration_since(*at));
            }
        }
        (a, s)
    };
    let (mut a, mut s) = latencies();
    while s.len() < changed.len() && started.elapsed() < TIMEOUT {
        tokio::time::sleep(TICK).await;
        (a, s) = latencies();
    }
    if s.len() < changed.len() {
        eprintln!(
            "TIMED OUT: {} of {} objects never Stable (acted: {})",
            changed.len() - s.len(),
            changed.len(),
            a.len()
        );
    }
    a.sort();
    s.sort();
    (a, s, started.elapsed())
}

/// What changed in the statuses the bench's watch saw while `recording`:
/// the top-level status fields (conditions by type) that changed, with a
/// count each, and the first few changes in full. Says why an object at rest
/// was written.
#[derive(Default)]
struct StatusChanges {
    recording: AtomicBool,
    last: std::sync::Mutex<HashMap<Key, serde_json::Value>>,
    fields: std::sync::Mutex<std::collections::BTreeMap<String, usize>>,
    examples: std::sync::Mutex<Vec<String>>,
}

impl StatusChanges {
    const EXAMPLES: usize = 6;

    fn saw(&self, md: &ModelDeployment) {
        let now = serde_json::to_value(&md.status).unwrap_or_default();
        let before = self.last.lock().unwrap().insert(key_of(md), now.clone());
        let Some(before) = before else { return };
        if !self.recording.load(Ordering::SeqCst) || before == now {
            return;
        }
        let changed = changed_fields(&before, &now);
        let mut fields = self.fields.lock().unwrap();
        for (field, _, _) in &changed {
            *fields.entry(field.clone()).or_insert(0) += 1;
        }
        let mut examples = self.examples.lock().unwrap();
        if examples.len() < Self::EXAMPLES {
            let (ns, name) = key_of(md);
            for (field, old, new) in changed {
                examples.push(format!("  {ns}/{name} {field}: {old} -> {new}"));
            }
        }
    }

    fn report(&self) -> String {
        let fields = self.fields.lock().unwrap();
        let counts: Vec<String> = fields.iter().map(|(f, n)| format!("{f}: {n}")).collect();
        let mut out = format!(
            "status fields changed at rest: {}",
            if counts.is_empty() {
                "none".into()
            } else {
                counts.join(", ")
            }
        );
        for e in self.examples.lock().unwrap().iter() {
            out.push('\n');
            out.push_str(e);
        }
        out
    }
}

/// (field, before, after) for each top-level status field that differs;
/// conditions are compared by type, without their times.
fn changed_fields(
    before: &serde_json::Value,
    now: &serde_json::Value,
) -> Vec<(String, String, String)> {
    let short = |v: Option<&serde_json::Value>| {
        let s = v.map_or("absent".to_string(), |v| v.to_string());
        s.chars().take(160).collect::<String>()
    };
    let condition = |v: &serde_json::Value, kind: &str| {
        v["conditions"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["type"] == kind))
            .map(|c| {
                json!([
                    c["status"],
                    c["reason"],
                    c["message"],
                    c["observedGeneration"]
                ])
            })
    };
    let mut keys: Vec<&String> = before
        .as_object()
        .into_iter()
        .chain(now.as_object())
        .flat_map(|o| o.keys())
        .collect();
    keys.sort();
    keys.dedup();
    let mut out = Vec::new();
    for key in keys {
        let (b, n) = (before.get(key), now.get(key));
        if b == n {
            continue;
        }
        if key != "conditions" {
            out.push((key.clone(), short(b), short(n)));
            continue;
        }
        let mut kinds: Vec<String> = [before, now]
            .iter()
            .flat_map(|v| v["conditions"].as_array().cloned().unwrap_or_default())
            .filter_map(|c| c["type"].as_str().map(String::from))
            .collect();
        kinds.sort();
        kinds.dedup();
        let mut any = false;
        for kind in kinds {
            let (cb, cn) = (condition(before, &kind), condition(now, &kind));
            if cb != cn {
                any = true;
                out.push((
                    format!("conditions[{kind}]"),
                    short(cb.as_ref()),
                    short(cn.as_ref()),
                ));
            }
        }
        if !any {
            out.push(("conditions (times only)".into(), short(b), short(n)));
        }
    }
    out
}

/// Writes by the operator's ServiceAccount in the audit log, by
/// "verb resource".
fn operator_writes(cp: &ControlPlane, user: &str, skip: usize) -> (usize, HashMap<String, usize>) {
    let events = cp.audit_events();
    let mut by = HashMap::new();
    for e in events.iter().skip(skip) {
        let verb = e["verb"].as_str().unwrap_or_default();
        if e["user"]["username"] != user
            || !matches!(
                verb,
                "create" | "update" | "patch" | "delete" | "deletecollection"
            )
        {
            continue;
        }
        let resource = e["objectRef"]["resource"].as_str().unwrap_or_default();
        let sub = e["objectRef"]["subresource"].as_str().unwrap_or_default();
        let what = if sub.is_empty() {
            format!("{verb} {resource}")
        } else {
            format!("{verb} {resource}/{sub}")
        };
        *by.entry(what).or_insert(0) += 1;
    }
    (events.len(), by)
}

fn writes_line(by: &HashMap<String, usize>) -> String {
    let mut v: Vec<_> = by.iter().map(|(k, n)| format!("{k}: {n}")).collect();
    v.sort();
    if v.is_empty() {
        "none".into()
    } else {
        v.join(", ")
    }
}

/// `modeldeploy_reconcile_total` from the operator's /metrics.
async fn reconciles(op: &Operator) -> f64 {
    let text = async {
        let client = modeldeploy::http_client_builder().build().ok()?;
        let r = client
            .get(format!("http://127.0.0.1:{}/metrics", op.metrics_port))
            .send()
            .await
            .ok()?;
        r.text().await.ok()
    }
    .await
    .unwrap_or_default();
    text.lines()
        .find(|l| l.starts_with("modeldeploy_reconcile_total "))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(f64::NAN)
}

/// Creates the objects, `WRITERS` at a time.
async fn create_all(client: &kube::Client, keys: &[Key]) {
    futures::stream::iter(keys.iter().cloned())
        .map(|(ns, name)| {
            let api: Api<ModelDeployment> = Api::namespaced(client.clone(), &ns);
            async move {
                api.create(&PostParams::default(), &manifest(&ns, &name, "1.0.0"))
                    .await
                    .map(|_| ())
            }
        })
        .buffer_unordered(WRITERS)
        .try_collect::<Vec<()>>()
        .await
        .expect("create the ModelDeployments");
}

/// A new model version on `keys` (a merge patch, as a GitOps tool writes):
/// the instant of each change and the generation it made.
async fn change(
    client: &kube::Client,
    keys: &[Key],
    version: &str,
) -> HashMap<Key, (Instant, i64)> {
    futures::stream::iter(keys.iter().cloned())
        .map(|(ns, name)| {
            let api: Api<ModelDeployment> = Api::namespaced(client.clone(), &ns);
            let patch = json!({"spec": {"model": {
                "version": version,
                "image": format!("registry.example/{name}:{version}"),
                "storageUri": format!("s3://models/{name}/{version}")}}});
            async move {
                let at = Instant::now();
                let md = api
                    .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                    .expect("change a version");
                ((ns, name), (at, md.metadata.generation.unwrap_or(0)))
            }
        })
        .buffer_unordered(WRITERS)
        .collect()
        .await
}

/// An unrelated label on every ModelDeployment and an annotation on every
/// Deployment: each makes the operator reconcile its object.
async fn touch_all(client: &kube::Client, keys: &[Key], namespaces: &[String]) {
    let label = json!({"metadata": {"labels": {"touched": "yes"}}});
    futures::stream::iter(keys.iter().cloned())
        .map(|(ns, name)| {
            let api: Api<ModelDeployment> = Api::namespaced(client.clone(), &ns);
            let label = &label;
            async move {
                api.patch(&name, &PatchParams::default(), &Patch::Merge(label))
                    .await
                    .expect("touch a ModelDeployment");
            }
        })
        .buffer_unordered(WRITERS)
        .collect::<Vec<()>>()
        .await;
    let note = json!({"metadata": {"annotations": {"touched-by": "someone"}}});
    for ns in namespaces {
        let api: Api<Deployment> = Api::namespaced(client.clone(), ns);
        let names: Vec<String> = api
            .list(&ListParams::default())
            .await
            .expect("list Deployments")
            .items
            .into_iter()
            .filter_map(|d| d.metadata.name)
            .collect();
        futures::stream::iter(names)
            .map(|name| {
                let (api, note) = (api.clone(), &note);
                async move {
                    api.patch(&name, &PatchParams::default(), &Patch::Merge(note))
                        .await
                        .expect("touch a Deployment");
                }
            })
            .buffer_unordered(WRITERS)
            .collect::<Vec<()>>()
            .await;
    }
}

async fn count_pods(client: &kube::Client) -> (usize, usize) {
    let pods: Api<Pod> = Api::all(client.clone());
    let list = pods.list(&ListParams::default()).await.expect("list pods");
    let ready = list
        .items
        .iter()
        .filter(|p| {
            p.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        })
        .count();
    (list.items.len(), ready)
}

/// The operator built with this bench (or `SCALE_OPERATOR_BIN`, another
/// build), optionally under `SCALE_OPERATOR_PREFIX` (a profiler such as
/// `heaptrack -o FILE`; RSS figures are then the wrapper's).
struct Operator {
    child: Child,
    metrics_port: u16,
    log: PathBuf,
}

impl Operator {
    fn start(kubeconfig: &Path, dir: &Path) -> Self {
        let binary = std::env::var("SCALE_OPERATOR_BIN")
            .unwrap_or_else(|_| env!("CARGO_BIN_EXE_modeldeploy").to_string());
        let prefix: Vec<String> = std::env::var("SCALE_OPERATOR_PREFIX")
            .unwrap_or_default()
            .split_whitespace()
            .map(String::from)
            .collect();
        let mut command = match prefix.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(&binary);
                c
            }
            None => Command::new(&binary),
        };
        // Its own process group, so a wrapper and the operator stop together.
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        let metrics_port = support::free_port();
        let log = dir.join("operator.log");
        let child = command
            .args([
                "operator",
                "--leader-election",
                "false",
                "--log-level",
                "warn",
            ])
            .arg(format!("--metrics-addr=127.0.0.1:{metrics_port}"))
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("KUBECONFIG", kubeconfig)
            .envs(operator_env())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("start the operator binary");
        println!(
            "operator: {binary} (pid {}), env {:?}",
            child.id(),
            operator_env()
        );
        Self {
            child,
            metrics_port,
            log,
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM to its process group, then its log.
    fn stop(&mut self) -> String {
        // SAFETY: signalling the process group this bench created.
        unsafe {
            libc::kill(-(self.child.id() as libc::pid_t), libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            // SAFETY: the process group this bench created for its child.
            unsafe {
                libc::kill(-(self.child.id() as libc::pid_t), libc::SIGKILL);
            }
            let _ = self.child.wait();
        }
    }
}

/// `MALLOC_ARENA_MAX` and `SCALE_OPERATOR_ENV="K=V ..."` for the operator.
fn operator_env() -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = Vec::new();
    if let Ok(v) = std::env::var("MALLOC_ARENA_MAX") {
        env.push(("MALLOC_ARENA_MAX".into(), v));
    }
    let extra = std::env::var("SCALE_OPERATOR_ENV").unwrap_or_default();
    for kv in extra.split_whitespace() {
        if let Some((k, v)) = kv.split_once('=') {
            env.push((k.into(), v.into()));
        }
    }
    env
}

struct Row {
    what: String,
    n: usize,
    acted: Vec<Duration>,
    stable: Vec<Duration>,
    peak_kib: u64,
    cpu: f64,
    reconciles: f64,
    writes: String,
    load: String,
}

fn print_row(r: &Row) {
    println!(
        "| {} (load {}) | {} | {} / {} / {} | {} / {} / {} | {:.1} | {:.1} | {} |",
        r.what,
        r.load,
        r.n,
        pct(&r.acted, 0.5),
        pct(&r.acted, 0.99),
        pct(&r.acted, 1.0),
        pct(&r.stable, 0.5),
        pct(&r.stable, 0.99),
        pct(&r.stable, 1.0),
        mib(r.peak_kib),
        r.cpu,
        r.reconciles
    );
    println!("|   writes by the operator: {} |", r.writes);
}

async fn run(cp: &'static ControlPlane, quick: bool) {
    let n_objects = objects();
    let rest = if quick { 30 } else { 60 };
    println!(
        "scale_real: {n_objects} ModelDeployments in {NAMESPACES} namespaces, {REPLICAS} replicas each; load average {}",
        load_average()
    );
    cp.install_crds().await;
    let admin = cp.admin().await;
    let mut namespaces = Vec::new();
    for _ in 0..NAMESPACES {
        namespaces.push(cp.namespace("team").await);
    }
    let keys: Vec<Key> = (0..n_objects)
        .map(|i| (namespaces[i % NAMESPACES].clone(), format!("model-{i:04}")))
        .collect();
    let created = Instant::now();
    create_all(&admin, &keys).await;
    println!(
        "created {n_objects} ModelDeployments in {:.1} s",
        created.elapsed().as_secs_f64()
    );
    let (store, writer) = reflector::store();
    // Changes of ModelDeployments the watch delivers: a write that changed
    // an object (not a no-op apply) shows here.
    let md_changes = Arc::new(AtomicUsize::new(0));
    let counter = md_changes.clone();
    let status_changes = Arc::new(StatusChanges::default());
    let recorder = status_changes.clone();
    let milestones = Arc::new(Milestones::default());
    let stamper = milestones.clone();
    let watch = watcher(
        Api::<ModelDeployment>::all(admin.clone()),
        Default::default(),
    )
    .reflect(writer)
    .applied_objects()
    .for_each(move |md| {
        counter.fetch_add(1, Ordering::SeqCst);
        if let Ok(md) = &md {
            recorder.saw(md);
            stamper.saw(md);
        }
        async {}
    });
    let watch = tokio::spawn(watch);
    store.wait_until_ready().await.expect("the bench's watch");

    let rbac = install_chart_rbac(cp, &OperatorOptions::default())
        .await
        .expect("helm is installed");
    let token = cp.token_for(&rbac.namespace, &rbac.service_account).await;
    let dir = cp.dir().join("scale-operator");
    std::fs::create_dir_all(&dir).expect("operator dir");
    let kubeconfig = dir.join("kubeconfig");
    cp.write_kubeconfig(&kubeconfig, &token);
    let user = format!(
        "system:serviceaccount:{}:{}",
        rbac.namespace, rbac.service_account
    );
    let audit_start = cp.audit_events().len();
    let mut op = Operator::start(&kubeconfig, &dir);
    let pid = op.pid();
    let rss = RssSampler::start(pid);
    let mut rows = Vec::new();

    // Phase 1: from the operator's start to every object Stable.
    let t0 = Instant::now();
    let initial: HashMap<Key, (Instant, i64)> = keys.iter().map(|k| (k.clone(), (t0, 1))).collect();
    let (acted, stable, took) = wait_all(&milestones, &initial, "1.0.0").await;
    let (mut seen, by) = operator_writes(cp, &user, audit_start);
    let (pods, ready) = count_pods(&admin).await;
    println!(
        "phase 1: all Stable after {:.1} s; {pods} pods ({ready} Ready)",
        took.as_secs_f64()
    );
    rows.push(Row {
        what: "start -> reconciled".into(),
        n: n_objects,
        acted,
        stable,
        peak_kib: rss.between(t0, Instant::now()).0,
        cpu: cpu_seconds(pid),
        reconciles: reconciles(&op).await,
        writes: writes_line(&by),
        load: load_average(),
    });

    // Phase 2: at rest, every object touched.
    tokio::time::sleep(Duration::from_secs(5)).await;
    seen = operator_writes(cp, &user, seen).0;
    let rec_before = reconciles(&op).await;
    let changes_before = md_changes.load(Ordering::SeqCst);
    let rest_from = Instant::now();
    status_changes.recording.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(5)).await;
    touch_all(&admin, &keys, &namespaces).await;
    let touched_in = rest_from.elapsed();
    tokio::time::sleep(Duration::from_secs(rest).saturating_sub(touched_in)).await;
    let rest_to = Instant::now();
    status_changes.recording.store(false, Ordering::SeqCst);
    let rest_reconciles = reconciles(&op).await - rec_before;
    // The touches' own changes are one per object.
    let rest_changes = md_changes.load(Ordering::SeqCst) - changes_before;
    let (after_rest, rest_writes) = operator_writes(cp, &user, seen);
    seen = after_rest;
    let (rest_peak, rest_mean) = rss.between(rest_from, rest_to);
    let rest_hwm = proc_kib(pid, "VmHWM:").unwrap_or(0);
    // File pages (the binary's code) are a fixed part of VmRSS; the rest is heap.
    let rest_file = proc_kib(pid, "RssFile:").unwrap_or(0);
    let rest_anon = proc_kib(pid, "RssAnon:").unwrap_or(0);
    println!(
        "phase 2: {rest} s at rest ({:.1} s to touch), {rest_reconciles} reconciles, writes: {}; ModelDeployment changes seen {rest_changes} ({n_objects} are the touches); VmRSS mean {:.1} MiB, peak {:.1}; load {}",
        touched_in.as_secs_f64(),
        writes_line(&rest_writes),
        mib(rest_mean),
        mib(rest_peak),
        load_average()
    );

    println!("{}", status_changes.report());

    // Phase 3: new versions on a tenth, then on all.
    for (version, n) in [("2.0.0", n_objects / 10), ("3.0.0", n_objects)] {
        tokio::time::sleep(Duration::from_secs(3)).await;
        let (cpu_before, rec_before) = (cpu_seconds(pid), reconciles(&op).await);
        let from = Instant::now();
        let changed = change(&admin, &keys[..n], version).await;
        let spread = from.elapsed();
        let (acted, stable, took) = wait_all(&milestones, &changed, version).await;
        let (now_seen, by) = operator_writes(cp, &user, seen);
        seen = now_seen;
        println!(
            "phase 3: version {version} on {n} (written in {:.2} s): all Stable after {:.1} s",
            spread.as_secs_f64(),
            took.as_secs_f64()
        );
        rows.push(Row {
            what: format!("version {version}: change -> reconciled"),
            n,
            acted,
            stable,
            peak_kib: rss.between(from, Instant::now()).0,
            cpu: cpu_seconds(pid) - cpu_before,
            reconciles: reconciles(&op).await - rec_before,
            writes: writes_line(&by),
            load: load_average(),
        });
    }
    tokio::time::sleep(Duration::from_secs(10)).await;
    let after_rss = proc_kib(pid, "VmRSS:").unwrap_or(0);
    let hwm = proc_kib(pid, "VmHWM:").unwrap_or(0);
    let (pods_end, ready_end) = count_pods(&admin).await;
    drop(rss);
    let log = op.stop();
    watch.abort();

    println!();
    println!("## Results (real API server)");
    println!();
    println!(
        "| phase | objects | acted p50 / p99 / max s | Stable p50 / p99 / max s | peak VmRSS MiB | operator CPU s | reconciles |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for r in &rows {
        print_row(r);
    }
    println!();
    println!(
        "| at rest, {n_objects} objects, {pods} pods: VmRSS mean / peak MiB | {:.1} / {:.1} |",
        mib(rest_mean),
        mib(rest_peak)
    );
    println!(
        "| VmHWM after the rest period, MiB | {:.1} |",
        mib(rest_hwm)
    );
    println!(
        "| at rest, end of the period: RssAnon / RssFile MiB | {:.1} / {:.1} |",
        mib(rest_anon),
        mib(rest_file)
    );
    println!(
        "| at rest: reconciles / operator writes | {rest_reconciles} / {} |",
        rest_writes.values().sum::<usize>()
    );
    println!(
        "| 10 s after the last rollout ({pods_end} pods, {ready_end} Ready): VmRSS / VmHWM MiB | {:.1} / {:.1} |",
        mib(after_rss),
        mib(hwm)
    );
    let warnings = log.lines().filter(|l| l.contains("WARN")).count();
    let errors = log.lines().filter(|l| l.contains("ERROR")).count();
    println!();
    println!(
        "operator log: {warnings} WARN, {errors} ERROR lines ({}); load average at end: {}",
        op.log.display(),
        load_average()
    );
    for l in log
        .lines()
        .filter(|l| l.contains("WARN") || l.contains("ERROR"))
        .take(5)
    {
        println!("  {l}");
    }
}
