//! The real operator binary on the envtest control plane, under exactly the
//! RBAC the Helm chart grants: `helm template` renders the chart's
//! ServiceAccount, ClusterRole and bindings (the real helm; a missing helm is
//! a skip, or a failure when tools are required), the admin applies them, and
//! the operator authenticates with a TokenRequest token of that
//! ServiceAccount. Its log goes to a file; the tail is printed when a test
//! panics while it runs.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use modeldeploy::operator::{self, LeaderElection, OperatorConfig};
use modeldeploy::telemetry::{Metrics, Readiness};

use super::RunningOperator;
use super::envtest::{ControlPlane, apply_yaml, die_with_parent, official_tool, skip, tail};

/// How a [`RealOperator`] is installed and started.
#[derive(Debug, Clone)]
pub struct OperatorOptions {
    /// Namespaces to watch (the chart's `watchNamespaces`: a RoleBinding in
    /// each). Empty watches all namespaces with a ClusterRoleBinding; the
    /// operator then also acts on other tests' objects in this binary.
    pub watch_namespaces: Vec<String>,
    /// Leader election through a Lease in the operator's namespace (the
    /// chart's `leaderElection.enabled`).
    pub leader_election: bool,
    /// `--identity` (the pod name in a cluster); also names its log file.
    pub identity: String,
    /// `--log-level` (RUST_LOG syntax).
    pub log_level: String,
    /// More `--set` values for `helm template`.
    pub helm_set: Vec<String>,
    /// More operator flags.
    pub args: Vec<String>,
    /// More environment for the operator process (it gets a clean one).
    pub env: Vec<(String, String)>,
}

impl Default for OperatorOptions {
    fn default() -> Self {
        Self {
            watch_namespaces: vec![],
            leader_election: false,
            identity: "modeldeploy-0".into(),
            log_level: "info,modeldeploy=debug".into(),
            helm_set: vec![],
            args: vec![],
            env: vec![],
        }
    }
}

impl OperatorOptions {
    /// Watching only `namespaces`.
    pub fn watching(namespaces: &[&str]) -> Self {
        Self {
            watch_namespaces: namespaces.iter().map(|n| n.to_string()).collect(),
            ..Self::default()
        }
    }
}

/// The chart's RBAC, applied: where the operator's identity lives.
#[derive(Debug, Clone)]
pub struct ChartRbac {
    /// The operator's namespace (the Helm release's namespace).
    pub namespace: String,
    pub release: String,
    pub service_account: String,
    /// The chart's RoleBindings and ClusterRoleBindings as applied, so that
    /// another ServiceAccount can be given the very same rights.
    pub bindings: Vec<serde_json::Value>,
}

/// Renders the chart's ServiceAccount and RBAC with the real helm into a new
/// namespace and applies them as admin. `None` after the skip line when helm
/// is missing.
pub async fn install_chart_rbac(cp: &ControlPlane, options: &OperatorOptions) -> Option<ChartRbac> {
    let Some(helm) = official_tool("helm") else {
        skip(
            "helm is not installed (`bash .ci/install-deps` installs it, and .ci/run puts it on PATH)",
        );
        return None;
    };
    cp.install_crds().await;
    let namespace = cp.namespace("operator").await;
    let release = namespace.clone();
    let chart = Path::new(env!("CARGO_MANIFEST_DIR")).join("charts/modeldeploy");
    let home = cp.dir().join("helm");
    let mut cmd = Command::new(&helm);
    cmd.arg("template")
        .arg(&release)
        .arg(&chart)
        .args(["--namespace", &namespace])
        .args(["--show-only", "templates/rbac.yaml"])
        .args(["--show-only", "templates/serviceaccount.yaml"])
        .args([
            "--set",
            &format!("leaderElection.enabled={}", options.leader_election),
        ])
        .env("HELM_CACHE_HOME", home.join("cache"))
        .env("HELM_CONFIG_HOME", home.join("config"))
        .env("HELM_DATA_HOME", home.join("data"));
    if !options.watch_namespaces.is_empty() {
        cmd.args([
            "--set",
            &format!("watchNamespaces={{{}}}", options.watch_namespaces.join(",")),
        ]);
    }
    for s in &options.helm_set {
        cmd.args(["--set", s]);
    }
    let out = cmd.output().expect("run helm");
    assert!(
        out.status.success(),
        "helm template failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let yaml = String::from_utf8(out.stdout).expect("helm prints UTF-8");
    let admin = cp.admin().await;
    let applied = apply_yaml(&admin, &yaml, Some(&namespace)).await;
    let service_account = applied
        .iter()
        .find(|o| o.types.as_ref().is_some_and(|t| t.kind == "ServiceAccount"))
        .and_then(|o| o.metadata.name.clone())
        .expect("the chart renders a ServiceAccount");
    let bindings = applied
        .iter()
        .filter(|o| {
            o.types
                .as_ref()
                .is_some_and(|t| t.kind.ends_with("RoleBinding"))
        })
        .map(|o| serde_json::to_value(o).expect("a binding as JSON"))
        .collect();
    Some(ChartRbac {
        namespace,
        release,
        service_account,
        bindings,
    })
}

/// The operator binary, running as the chart's ServiceAccount.
pub struct RealOperator {
    rbac: ChartRbac,
    options: OperatorOptions,
    dir: PathBuf,
    kubeconfig: PathBuf,
    log: PathBuf,
    metrics_addr: SocketAddr,
    argv: Vec<String>,
    child: Mutex<Option<Child>>,
    starts: Mutex<u32>,
}

impl RealOperator {
    /// Installs the CRDs and the chart's RBAC, then starts
    /// `modeldeploy operator` with a kubeconfig holding the ServiceAccount's
    /// token. Does not wait for it: see [`RealOperator::wait_ready`]. `None`
    /// after the skip line when helm is missing.
    pub async fn start(cp: &ControlPlane, options: OperatorOptions) -> Option<RealOperator> {
        let rbac = install_chart_rbac(cp, &options).await?;
        let dir = cp.dir().join("operators").join(&rbac.namespace);
        std::fs::create_dir_all(&dir).expect("operator dir");
        let token = cp.token_for(&rbac.namespace, &rbac.service_account).await;
        let kubeconfig = dir.join("kubeconfig");
        cp.write_kubeconfig(&kubeconfig, &token);
        let op = Self::process(rbac, options, dir, kubeconfig);
        op.spawn();
        Some(op)
    }

    fn process(
        rbac: ChartRbac,
        options: OperatorOptions,
        dir: PathBuf,
        kubeconfig: PathBuf,
    ) -> RealOperator {
        let metrics_addr: SocketAddr = format!("127.0.0.1:{}", super::free_port()).parse().unwrap();
        let mut argv = vec![
            "operator".to_string(),
            format!("--namespaces={}", options.watch_namespaces.join(",")),
            format!("--metrics-addr={metrics_addr}"),
            format!("--leader-election={}", options.leader_election),
            format!("--lease-namespace={}", rbac.namespace),
            format!("--identity={}", options.identity),
            format!("--log-level={}", options.log_level),
        ];
        argv.extend(options.args.iter().cloned());
        RealOperator {
            log: dir.join(format!("{}.log", options.identity)),
            rbac,
            options,
            dir,
            kubeconfig,
            metrics_addr,
            argv,
            child: Mutex::new(None),
            starts: Mutex::new(0),
        }
    }

    /// Another replica of the same installation (ServiceAccount, flags,
    /// Lease) with its own `identity`, metrics port and log, started now:
    /// for leader election.
    pub fn replica(&self, identity: &str) -> RealOperator {
        let options = OperatorOptions {
            identity: identity.to_string(),
            ..self.options.clone()
        };
        let op = Self::process(
            self.rbac.clone(),
            options,
            self.dir.clone(),
            self.kubeconfig.clone(),
        );
        op.spawn();
        op
    }

    /// [`RealOperator::replica`] running as its own ServiceAccount
    /// `service_account` (made now, bound to the same roles by copies of the
    /// chart's bindings), so the audit log tells the replicas apart.
    pub async fn replica_as(
        &self,
        cp: &ControlPlane,
        identity: &str,
        service_account: &str,
    ) -> RealOperator {
        let rbac = ChartRbac {
            service_account: service_account.to_string(),
            ..self.rbac.clone()
        };
        let yaml = self
            .rbac
            .bindings
            .iter()
            .map(|binding| {
                let mut copy = binding.clone();
                let name = copy["metadata"]["name"].as_str().unwrap_or_default();
                let mut metadata = serde_json::json!({"name": format!("{name}-{service_account}")});
                if let Some(ns) = copy["metadata"]["namespace"].as_str() {
                    metadata["namespace"] = ns.into();
                }
                copy["metadata"] = metadata;
                copy["subjects"] = serde_json::json!([{
                    "kind": "ServiceAccount",
                    "name": service_account,
                    "namespace": rbac.namespace,
                }]);
                serde_yaml::to_string(&copy).expect("a binding as YAML")
            })
            .collect::<Vec<_>>()
            .join("---\n");
        let token = cp.token_for(&rbac.namespace, service_account).await;
        apply_yaml(&cp.admin().await, &yaml, Some(&rbac.namespace)).await;
        let kubeconfig = self.dir.join(format!("{service_account}.kubeconfig"));
        cp.write_kubeconfig(&kubeconfig, &token);
        let options = OperatorOptions {
            identity: identity.to_string(),
            ..self.options.clone()
        };
        let op = Self::process(rbac, options, self.dir.clone(), kubeconfig);
        op.spawn();
        op
    }

    fn spawn(&self) {
        let mut starts = self.starts.lock().unwrap();
        *starts += 1;
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("operator log");
        use std::io::Write;
        let _ = writeln!(log, "---- envtest: start {} of the operator ----", *starts);
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_modeldeploy"));
        cmd.args(&self.argv)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("KUBECONFIG", &self.kubeconfig)
            .env("NO_COLOR", "1")
            .envs(self.options.env.iter().cloned())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("operator log"))
            .stderr(log);
        // Dies with the thread that started it (the test's), at the latest.
        die_with_parent(&mut cmd);
        let child = cmd.spawn().expect("start the operator binary");
        *self.child.lock().unwrap() = Some(child);
    }

    /// The operator's namespace (Lease, ServiceAccount).
    pub fn namespace(&self) -> &str {
        &self.rbac.namespace
    }

    pub fn service_account(&self) -> &str {
        &self.rbac.service_account
    }

    /// The kubeconfig the operator uses (its ServiceAccount token).
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// `http://127.0.0.1:<port>` serving /metrics, /healthz and /readyz.
    pub fn metrics_url(&self) -> String {
        format!("http://{}", self.metrics_addr)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.lock().unwrap().as_ref().map(Child::id)
    }

    /// Whether the process runs (false after it exited or was killed).
    pub fn is_running(&self) -> bool {
        let mut child = self.child.lock().unwrap();
        child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// SIGKILL, as a node failure or an OOM kill would.
    pub fn kill(&self) {
        if let Some(mut c) = self.child.lock().unwrap().take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM (a rolling update's stop), waiting up to `grace` for the
    /// exit; returns the exit code, or `None` when it had to be killed.
    pub fn terminate(&self, grace: Duration) -> Option<i32> {
        let mut c = self.child.lock().unwrap().take()?;
        // SAFETY: plain kill(2) of our own child.
        unsafe {
            libc::kill(c.id() as i32, libc::SIGTERM);
        }
        let deadline = std::time::Instant::now() + grace;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(s)) = c.try_wait() {
                return s.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = c.kill();
        let _ = c.wait();
        None
    }

    /// Kills the process (if it runs) and starts it again, same flags.
    pub fn restart(&self) {
        self.kill();
        self.spawn();
    }

    /// Everything the operator logged, all starts.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Prints the last `lines` lines of the operator's log.
    pub fn print_log_tail(&self, lines: usize) {
        eprintln!(
            "---- the last {lines} lines of {} ----\n{}\n----",
            self.log.display(),
            tail(&self.log, lines)
        );
    }

    /// What /readyz says now: `ready` (leading, watches synced), `standby`
    /// (waiting for the Lease) or `starting`; `None` when nothing answers.
    pub async fn readyz(&self) -> Option<String> {
        let http = modeldeploy::http_client_builder()
            .timeout(Duration::from_secs(2))
            .build()
            .ok()?;
        let r = http
            .get(format!("{}/readyz", self.metrics_url()))
            .send()
            .await
            .ok()?;
        r.text().await.ok().map(|t| t.trim().to_string())
    }

    /// Waits until /readyz answers 200 (`ready`, or `standby` with leader
    /// election), or panics with the log's tail.
    pub async fn wait_ready(&self, timeout: Duration) {
        let http = modeldeploy::http_client_builder()
            .timeout(Duration::from_secs(2))
            .build()
            .unwrap();
        let url = format!("{}/readyz", self.metrics_url());
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if http
                .get(&url)
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
            {
                return;
            }
            if !self.is_running() || tokio::time::Instant::now() >= deadline {
                self.print_log_tail(40);
                panic!(
                    "the operator was not ready within {timeout:?} (running: {})",
                    self.is_running()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A client with the operator's identity (for RBAC assertions).
    pub async fn client(&self, cp: &ControlPlane) -> kube::Client {
        cp.client_for(&self.rbac.namespace, &self.rbac.service_account)
            .await
    }
}

impl Drop for RealOperator {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.print_log_tail(60);
        }
        self.kill();
    }
}

/// The operator in this process (the library's `operator::run`), as the
/// chart's ServiceAccount on the real API server. Cheaper to start than the
/// binary and gives direct access to its metrics and readiness. `None` after
/// the skip line when helm is missing.
pub async fn in_process(cp: &ControlPlane, options: OperatorOptions) -> Option<RunningOperator> {
    let rbac = install_chart_rbac(cp, &options).await?;
    let config = cp.config_for(&rbac.namespace, &rbac.service_account).await;
    let client = operator::client_with_retries(config).expect("operator client");
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let readiness = Readiness::default();
    let metrics = Metrics::new();
    let config = OperatorConfig {
        namespaces: options.watch_namespaces.clone(),
        metrics_addr: None,
        leader_election: options.leader_election.then(|| LeaderElection {
            lease_name: "modeldeploy-leader".into(),
            lease_namespace: rbac.namespace.clone(),
            lease_duration: Duration::from_secs(15),
        }),
        identity: options.identity.clone(),
        ..Default::default()
    };
    let task = tokio::spawn(operator::run(
        client,
        config,
        metrics.clone(),
        readiness.clone(),
        async move {
            let _ = rx.await;
        },
    ));
    Some(RunningOperator {
        readiness,
        metrics,
        stop: Some(tx),
        task,
    })
}
