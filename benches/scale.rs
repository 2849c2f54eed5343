//! DESIGN.md's scale target: 1,000 ModelDeployments and 3,000 pods, operator
//! resident memory under 64 MiB, every object reconciled within 10 s of a
//! change; and the idle-cost target: zero writes at rest.
//!
//! The real operator binary (`target/release/modeldeploy`, built by `cargo
//! bench` for this bench) runs as a child process against the in-process fake
//! API server of `tests/support/fake_apiserver.rs` (the real HTTP API), through
//! a kubeconfig file, with leader election off. This process also plays the
//! Deployment controller and the kubelet: every Deployment reports its
//! replicas available and gets that many Ready pods (written past the API, so
//! never counted as the operator's requests).
//!
//! Phases:
//! 1. 1,000 ModelDeployments (10 namespaces, 3 replicas each) exist before the
//!    operator starts; time until every one is `Stable` with
//!    `observedGeneration` current (it creates 1,000 Deployments and Services,
//!    the fake kubelet adds 3,000 pods).
//! 2. At rest for 60 s, with every ModelDeployment and Deployment touched
//!    (an unrelated label / annotation) to force a reconcile of each: writes
//!    counted by the fake server must be 0.
//! 3. A new model version on 100 objects, then on all 1,000 at once: per
//!    object, the time from its spec change until `observedGeneration` shows
//!    the new generation (the operator acted on it) and until it is `Stable`
//!    on the new version (rollout done, including the fake kubelet's delay).
//!
//! Memory: VmRSS sampled every 100 ms and VmHWM from `/proc/<pid>/status`.
//!
//! Run: `cargo bench --bench scale` (`-- --quick`: 30 s at rest).
//! Results: docs/benchmarks.md, `## Scale`.

#[path = "../tests/support/fake_apiserver.rs"]
mod fake_apiserver;

use std::collections::HashMap;
use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use fake_apiserver::FakeApiServer;
use serde_json::{Value, json};

/// ModelDeployments; `SCALE_OBJECTS` overrides it (to see how memory grows).
fn objects() -> usize {
    std::env::var("SCALE_OBJECTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000)
}
const NAMESPACES: usize = 10;
const REPLICAS: i64 = 3;
const TIMEOUT: Duration = Duration::from_secs(600);
/// How often this process looks at the store (kubelet, progress).
const TICK: Duration = Duration::from_millis(100);

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("scale: run with `cargo bench --bench scale`");
        return;
    }
    let quick = std::env::args().any(|a| a == "--quick");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(run(quick));
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn name_of(i: usize) -> (String, String) {
    (format!("team-{}", i % NAMESPACES), format!("model-{i:04}"))
}

fn manifest(ns: &str, name: &str, version: &str) -> Value {
    json!({
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
    })
}

/// Open sockets of a process (its connections to the API server, listeners).
fn sockets(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|dir| {
            dir.filter_map(Result::ok)
                .filter(|e| {
                    std::fs::read_link(e.path())
                        .is_ok_and(|t| t.to_string_lossy().starts_with("socket:"))
                })
                .count()
        })
        .unwrap_or(0)
}

/// Memory of a process from /proc, in KiB.
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

/// The Deployment controller and kubelet: status and Ready pods for every
/// Deployment, written through the store (not counted as API requests).
fn kubelet(server: Arc<FakeApiServer>, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        // Pods this kubelet made, by (namespace, deployment) -> count.
        let mut pods: HashMap<(String, String), i64> = HashMap::new();
        let mut ip: u32 = 0;
        while !stop.load(Ordering::SeqCst) {
            for d in server.list("deployments", "") {
                let ns = d["metadata"]["namespace"].as_str().unwrap_or_default();
                let name = d["metadata"]["name"].as_str().unwrap_or_default();
                let replicas = d["spec"]["replicas"].as_i64().unwrap_or(1);
                let key = (ns.to_string(), name.to_string());
                let have = pods.get(&key).copied().unwrap_or(0);
                for i in have..replicas {
                    ip += 1;
                    let labels = &d["spec"]["template"]["metadata"]["labels"];
                    server.upsert(
                        "pods",
                        json!({
                            "metadata": {"name": format!("{name}-{i}"), "namespace": ns, "labels": labels},
                            "spec": {"containers": [{"name": "model", "image": "demo"}]},
                            "status": {"phase": "Running",
                                       "podIP": format!("10.{}.{}.{}", (ip >> 16) & 255, (ip >> 8) & 255, ip & 255),
                                       "startTime": "2026-01-01T00:00:00Z",
                                       "conditions": [{"type": "Ready", "status": "True"}],
                                       "containerStatuses": [{"name": "model", "ready": true, "restartCount": 0,
                                                              "image": "demo", "imageID": "", "state": {"running": {}}}]}
                        }),
                    );
                }
                for i in replicas..have {
                    server.delete("pods", ns, &format!("{name}-{i}"));
                }
                pods.insert(key, replicas);
                let want = json!({
                    "observedGeneration": d["metadata"]["generation"],
                    "replicas": replicas,
                    "updatedReplicas": replicas,
                    "readyReplicas": replicas,
                    "availableReplicas": replicas,
                });
                let current = &d["status"];
                if ["observedGeneration", "replicas", "availableReplicas"]
                    .iter()
                    .any(|k| current[*k] != want[*k])
                {
                    server.patch_status("deployments", ns, name, want);
                }
            }
            tokio::time::sleep(TICK).await;
        }
    })
}

/// The operator built with this bench, or `SCALE_OPERATOR_BIN` (another
/// build, to compare a change).
fn operator_binary() -> String {
    std::env::var("SCALE_OPERATOR_BIN")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_modeldeploy").to_string())
}

struct Operator {
    child: Child,
    metrics_port: u16,
    log: std::path::PathBuf,
}

impl Operator {
    fn start(server: &FakeApiServer, dir: &std::path::Path) -> Self {
        let kubeconfig = dir.join("kubeconfig");
        std::fs::write(
            &kubeconfig,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {}\nusers:\n- name: fake\n  user: {{}}\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n    namespace: default\ncurrent-context: fake\n",
                server.url()
            ),
        )
        .expect("kubeconfig");
        let metrics_port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let log = dir.join("operator.log");
        // `SCALE_OPERATOR_PREFIX="heaptrack -o /tmp/op"` runs the operator
        // under a profiler (its RSS figures are then the wrapper's).
        let prefix: Vec<String> = std::env::var("SCALE_OPERATOR_PREFIX")
            .unwrap_or_default()
            .split_whitespace()
            .map(String::from)
            .collect();
        let mut command = match prefix.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(operator_binary());
                c
            }
            None => Command::new(operator_binary()),
        };
        // Its own process group, so a wrapper and the operator stop together.
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        let child = command
            .args([
                "operator",
                "--leader-election",
                "false",
                "--metrics-addr",
                &format!("127.0.0.1:{metrics_port}"),
                "--log-level",
                "warn",
            ])
            .env("KUBECONFIG", &kubeconfig)
            .env_remove("KUBERNETES_SERVICE_HOST")
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("start the operator binary");
        Self {
            child,
            metrics_port,
            log,
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `modeldeploy_reconcile_total` from the operator's own /metrics.
    async fn reconciles(&self) -> Option<f64> {
        let client = modeldeploy::http_client_builder().build().ok()?;
        let text = client
            .get(format!("http://127.0.0.1:{}/metrics", self.metrics_port))
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        text.lines()
            .find(|l| l.starts_with("modeldeploy_reconcile_total "))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    }

    fn stop(&mut self) -> (Option<u64>, String) {
        let hwm = proc_kib(self.pid(), "VmHWM:");
        // SAFETY: sending SIGTERM to our own child process.
        unsafe {
            libc::kill(-(self.child.id() as libc::pid_t), libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        (hwm, std::fs::read_to_string(&self.log).unwrap_or_default())
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        // A panicking bench must not leave the operator running.
        if let Ok(None) = self.child.try_wait() {
            // SAFETY: the process group this bench created for its child.
            unsafe {
                libc::kill(-(self.child.id() as libc::pid_t), libc::SIGKILL);
            }
            let _ = self.child.wait();
        }
    }
}

/// RSS sampler: peak and last VmRSS, in KiB.
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
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        Self { stop, samples }
    }

    /// Peak and mean VmRSS between two instants.
    fn between(&self, from: Instant, to: Instant) -> (u64, u64) {
        let samples = self.samples.lock().expect("lock");
        let v: Vec<u64> = samples
            .iter()
            .filter(|(t, _)| *t >= from && *t <= to)
            .map(|(_, k)| *k)
            .collect();
        let peak = v.iter().copied().max().unwrap_or(0);
        let mean = if v.is_empty() {
            0
        } else {
            v.iter().sum::<u64>() / v.len() as u64
        };
        (peak, mean)
    }
}

impl Drop for RssSampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// Is this object reconciled for `generation`: (operator acted, Stable on `version`).
fn state(md: &Value, generation: i64, version: &str) -> (bool, bool) {
    let s = &md["status"];
    let acted = s["observedGeneration"].as_i64() == Some(generation)
        && md["metadata"]["generation"].as_i64() == Some(generation);
    let stable = acted && s["phase"] == "Stable" && s["stable"]["version"] == version;
    (acted, stable)
}

/// Wait until every object in `changed` (key -> change instant) is Stable on
/// `version` at its current generation; latencies to "acted" and to "Stable".
async fn wait_all(
    server: &FakeApiServer,
    changed: &HashMap<(String, String), (Instant, i64)>,
    version: &str,
) -> (Vec<Duration>, Vec<Duration>, Duration) {
    let started = Instant::now();
    let mut acted: HashMap<(String, String), Duration> = HashMap::new();
    let mut stable: HashMap<(String, String), Duration> = HashMap::new();
    while stable.len() < changed.len() && started.elapsed() < TIMEOUT {
        let now = Instant::now();
        for md in server.list("modeldeployments", "") {
            let key = (
                md["metadata"]["namespace"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                md["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            );
            let Some((at, generation)) = changed.get(&key) else {
                continue;
            };
            let (a, s) = state(&md, *generation, version);
            if a {
                acted.entry(key.clone()).or_insert(now - *at);
            }
            if s {
                stable.entry(key).or_insert(now - *at);
            }
        }
        tokio::time::sleep(TICK).await;
    }
    if stable.len() < changed.len() {
        eprintln!(
            "TIMED OUT: {} of {} objects never reconciled (acted: {})",
            changed.len() - stable.len(),
            changed.len(),
            acted.len()
        );
    }
    let mut a: Vec<Duration> = acted.into_values().collect();
    let mut s: Vec<Duration> = stable.into_values().collect();
    a.sort();
    s.sort();
    (a, s, started.elapsed())
}

fn pct(v: &[Duration], p: f64) -> String {
    if v.is_empty() {
        return "-".into();
    }
    let i = ((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1;
    format!("{:.2}", v[i].as_secs_f64())
}

/// Change the model version of `keys` (through the store: a GitOps tool's write).
fn change(
    server: &FakeApiServer,
    keys: &[(String, String)],
    version: &str,
) -> HashMap<(String, String), (Instant, i64)> {
    let mut out = HashMap::new();
    for (ns, name) in keys {
        let mut md = server
            .get("modeldeployments", ns, name)
            .expect("object exists");
        md["spec"]["model"]["version"] = json!(version);
        md["spec"]["model"]["image"] = json!(format!("registry.example/{name}:{version}"));
        md["spec"]["model"]["storageUri"] = json!(format!("s3://models/{name}/{version}"));
        let at = Instant::now();
        let written = server.upsert("modeldeployments", md);
        let generation = written["metadata"]["generation"].as_i64().unwrap_or(0);
        out.insert((ns.clone(), name.clone()), (at, generation));
    }
    out
}

fn counts_line(server: &FakeApiServer) -> String {
    server
        .counts()
        .iter()
        .map(|((verb, r), n)| format!("{verb} {r}: {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

const WRITTEN: [&str; 7] = [
    "modeldeployments",
    "deployments",
    "services",
    "events",
    "httproutes",
    "configmaps",
    "pods",
];

/// CPU seconds (user + system) a process has used, from /proc/<pid>/stat.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which ends with ')'): utime is the 12th, stime the 13th.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<f64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0.0))
        .collect();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (f.get(11).unwrap_or(&0.0) + f.get(12).unwrap_or(&0.0)) / hz
}

async fn run(quick: bool) {
    #[allow(non_snake_case)]
    let OBJECTS = objects();
    let rest = if quick { 30 } else { 60 };
    println!(
        "scale: {OBJECTS} ModelDeployments in {NAMESPACES} namespaces, {REPLICAS} replicas each; operator {}",
        operator_binary()
    );
    println!("load average at start: {}", load_average());
    let dir = std::env::temp_dir().join(format!("modeldeploy-scale-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let server = Arc::new(FakeApiServer::start().await);
    let keys: Vec<(String, String)> = (0..OBJECTS).map(name_of).collect();
    for (ns, name) in &keys {
        server.upsert("modeldeployments", manifest(ns, name, "1.0.0"));
    }
    let stop = Arc::new(AtomicBool::new(false));
    let kubelet_task = kubelet(server.clone(), stop.clone());

    // Phase 1: from operator start to every object Stable.
    let initial: HashMap<(String, String), (Instant, i64)> = {
        let t0 = Instant::now();
        keys.iter().map(|k| (k.clone(), (t0, 1))).collect()
    };
    let mut op = Operator::start(&server, &dir);
    let rss = RssSampler::start(op.pid());
    let t_start = Instant::now();
    let (acted, stable, took) = wait_all(&server, &initial, "1.0.0").await;
    let t_synced = Instant::now();
    let pods = server.list("pods", "").len();
    let deployments = server.list("deployments", "").len();
    println!();
    println!(
        "## Phase 1: start with {OBJECTS} objects (load {})",
        load_average()
    );
    println!(
        "all Stable after {:.1} s ({} acted, {} Stable; first acted {} s, median {} s); {deployments} Deployments, {pods} pods; requests: {}",
        took.as_secs_f64(),
        acted.len(),
        stable.len(),
        pct(&acted, 0.0),
        pct(&acted, 0.5),
        counts_line(&server)
    );
    let (peak1, _) = rss.between(t_start, t_synced);
    let sizes: Vec<String> = ["modeldeployments", "deployments", "services", "pods"]
        .iter()
        .map(|kind| {
            let all = server.list(kind, "");
            let bytes: usize = all.iter().map(|o| o.to_string().len()).sum();
            format!("{kind} {} B", bytes / all.len().max(1))
        })
        .collect();
    println!("mean JSON size per object: {}", sizes.join(", "));
    let cpu1 = cpu_seconds(op.pid());
    let self_pid = std::process::id();
    let reconciles1 = op.reconciles().await.unwrap_or(f64::NAN);
    let bench_cpu1 = cpu_seconds(self_pid);

    // Phase 2: at rest, with forced reconciles.
    tokio::time::sleep(Duration::from_secs(3)).await;
    server.reset_counts();
    let reconciles_before = op.reconciles().await.unwrap_or(f64::NAN);
    let rest_from = Instant::now();
    tokio::time::sleep(Duration::from_secs(5)).await;
    for (ns, name) in &keys {
        let mut md = server.get("modeldeployments", ns, name).expect("exists");
        md["metadata"]["labels"] = json!({"touched": "yes"});
        server.upsert("modeldeployments", md);
    }
    for mut d in server.list("deployments", "") {
        d["metadata"]["annotations"]["touched-by"] = json!("someone");
        server.upsert("deployments", d);
    }
    tokio::time::sleep(Duration::from_secs(rest - 5)).await;
    let rest_to = Instant::now();
    let reconciles_after = op.reconciles().await.unwrap_or(f64::NAN);
    let writes = server.writes(&WRITTEN);
    let (peak2, mean2) = rss.between(rest_from, rest_to);
    let steady = proc_kib(op.pid(), "VmRSS:").unwrap_or(0);
    let sockets_at_rest = sockets(op.pid());
    println!();
    println!("## Phase 2: {rest} s at rest (load {})", load_average());
    println!(
        "reconciles in the period: {}; writes: {writes}; requests: {}",
        reconciles_after - reconciles_before,
        counts_line(&server)
    );

    // Phase 3: new versions on 100, then on all.
    let mut rows = Vec::new();
    for (version, n) in [("2.0.0", OBJECTS / 10), ("3.0.0", OBJECTS)] {
        tokio::time::sleep(Duration::from_secs(3)).await;
        server.reset_counts();
        let (cpu_before, bench_before) = (cpu_seconds(op.pid()), cpu_seconds(self_pid));
        let rec_before = op.reconciles().await.unwrap_or(f64::NAN);
        let from = Instant::now();
        let changed = change(&server, &keys[..n], version);
        let spread = from.elapsed();
        let (acted, stable, took) = wait_all(&server, &changed, version).await;
        let (peak, _) = rss.between(from, Instant::now());
        println!();
        println!(
            "## Phase 3: version {version} on {n} objects (changes written in {:.2} s; load {})",
            spread.as_secs_f64(),
            load_average()
        );
        println!(
            "all Stable after {:.1} s; requests: {}",
            took.as_secs_f64(),
            counts_line(&server)
        );
        let cpu = cpu_seconds(op.pid()) - cpu_before;
        let bench_cpu = cpu_seconds(self_pid) - bench_before;
        let rec = op.reconciles().await.unwrap_or(f64::NAN) - rec_before;
        println!(
            "operator CPU {cpu:.1} s, bench process (fake API server + kubelet) CPU {bench_cpu:.1} s, reconciles {rec}"
        );
        rows.push((n, acted, stable, peak, load_average(), cpu, bench_cpu, rec));
    }
    let final_rss = proc_kib(op.pid(), "VmRSS:").unwrap_or(0);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let settled_rss = proc_kib(op.pid(), "VmRSS:").unwrap_or(0);
    let deployments_end = server.list("deployments", "").len();
    let pods_end = server.list("pods", "").len();
    drop(rss);
    let (hwm, log) = op.stop();
    stop.store(true, Ordering::SeqCst);
    let _ = kubelet_task.await;

    println!();
    println!("## Results");
    println!();
    println!(
        "| what | objects | acted p50 / p99 / max s | Stable p50 / p99 / max s | peak VmRSS in phase MiB | operator CPU s | fake server + kubelet CPU s | reconciles |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    println!(
        "| start: operator start -> reconciled | {} | {} / {} / {} | {} / {} / {} | {:.1} | {cpu1:.1} | {bench_cpu1:.1} | {reconciles1} |",
        OBJECTS,
        pct(&acted, 0.5),
        pct(&acted, 0.99),
        pct(&acted, 1.0),
        pct(&stable, 0.5),
        pct(&stable, 0.99),
        pct(&stable, 1.0),
        mib(peak1)
    );
    for (n, acted, stable, peak, load, cpu, bench_cpu, rec) in &rows {
        println!(
            "| new version on {n} objects: change -> reconciled (load {load}) | {n} | {} / {} / {} | {} / {} / {} | {:.1} | {cpu:.1} | {bench_cpu:.1} | {rec} |",
            pct(acted, 0.5),
            pct(acted, 0.99),
            pct(acted, 1.0),
            pct(stable, 0.5),
            pct(stable, 0.99),
            pct(stable, 1.0),
            mib(*peak)
        );
    }
    println!();
    println!("| memory | MiB |");
    println!("|---|---:|");
    println!(
        "| VmRSS at rest, {OBJECTS} objects / {deployments} Deployments / {pods} pods: mean / peak | {:.1} / {:.1} |",
        mib(mean2),
        mib(peak2)
    );
    println!(
        "| VmRSS at rest after phase 1 (end of rest period) | {:.1} |",
        mib(steady)
    );
    println!(
        "| VmRSS after all rollouts ({deployments_end} Deployments, {pods_end} pods): at once / 5 s later | {:.1} / {:.1} |",
        mib(final_rss),
        mib(settled_rss)
    );
    println!(
        "| VmHWM (peak over the whole run) | {:.1} |",
        mib(hwm.unwrap_or(0))
    );
    println!();
    println!("| at rest ({rest} s, every object touched) | value |");
    println!("|---|---:|");
    println!("| reconciles | {} |", reconciles_after - reconciles_before);
    println!("| open sockets of the operator at the end of the period | {sockets_at_rest} |");
    println!("| writes (create/update/patch/apply/delete) | {writes} |");
    let warnings = log.lines().filter(|l| l.contains("WARN")).count();
    let errors = log.lines().filter(|l| l.contains("ERROR")).count();
    println!();
    println!(
        "operator log: {warnings} WARN, {errors} ERROR lines ({} kept); load average at end: {}",
        dir.join("operator.log").display(),
        load_average()
    );
    for l in log
        .lines()
        .filter(|l| l.contains("WARN") || l.contains("ERROR"))
        .take(5)
    {
        println!("  {l}");
    }
    let _ = std::io::stdout().flush();
    std::fs::write(dir.join("operator.log"), log).ok();
}
