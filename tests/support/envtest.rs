//! A real control plane for the tests that need a real API server (the
//! envtest convention of controller-runtime): etcd, `kube-apiserver` and
//! `kube-controller-manager` from `KUBEBUILDER_ASSETS`, started once per test
//! binary on loopback ports, with real authentication (a token file), RBAC,
//! service-account tokens (TokenRequest), and the controllers that matter
//! (Deployment, ReplicaSet, Job, garbage collector, namespace, service
//! account). There is no scheduler and no kubelet: [`Kubelet`] plays the
//! kubelet for every pod.
//!
//! Where the binaries are missing a test skips with one `SKIPPED:` line (or
//! fails when `MODELDEPLOY_REQUIRE_TOOLS=1`, as in CI), like the other real
//! tools in `tools.rs`.
//!
//! A binary may ask for an audit log ([`control_plane_with`] and
//! [`Options::audit`]): every request a service account sends, as the API
//! server saw and answered it.

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom};
#[cfg(target_os = "linux")]
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::core::GroupVersionKind;
use kube::discovery::{ApiCapabilities, ApiResource, Scope};
use serde_json::json;

use super::kubelet::Kubelet;

/// The admin token (group `system:masters`) in the API server's token file.
const ADMIN_TOKEN: &str = "envtest-admin-token";
/// Field manager of everything the harness applies.
pub const FIELD_MANAGER: &str = "envtest";
/// Generous bounds for a loaded 2-core CI machine; startup normally takes a
/// few seconds.
const ETCD_TIMEOUT: Duration = Duration::from_secs(30);
const APISERVER_TIMEOUT: Duration = Duration::from_secs(120);
const CONTROLLERS_TIMEOUT: Duration = Duration::from_secs(60);
/// How long [`ControlPlane::namespace`] and the installers wait for the
/// controllers or the API server.
const WAIT: Duration = Duration::from_secs(60);

/// The shared, real control plane of one test binary.
pub struct ControlPlane {
    dir: PathBuf,
    kubeconfig: PathBuf,
    server_url: String,
    config: kube::Config,
    runtime: tokio::runtime::Handle,
    kubelet: Kubelet,
    started_in: Duration,
    phases: Vec<(&'static str, Duration)>,
    namespaces: AtomicU64,
    crds: tokio::sync::OnceCell<()>,
    gateway_api: tokio::sync::OnceCell<()>,
    audit_log: Option<PathBuf>,
    /// The running components (etcd, kube-apiserver,
    /// kube-controller-manager), by name; they die with the thread that
    /// started them (`PR_SET_PDEATHSIG`), which never exits.
    components: Mutex<Vec<Component>>,
    /// Components a fault test stopped, kept to start them again as they were.
    stopped: Mutex<Vec<Component>>,
}

enum Outcome {
    Ready(Box<ControlPlane>),
    /// The binaries are not there: skip (or fail when tools are required).
    Missing(String),
    /// They are there but did not start: always a failure.
    Failed(String),
}

static PLANE: OnceLock<Outcome> = OnceLock::new();
static OPTIONS: OnceLock<Options> = OnceLock::new();

/// How the control plane of a test binary is started (one per binary: every
/// test of a binary must ask for the same).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Options {
    /// Write an audit log (JSON lines, level Metadata: user, verb, resource,
    /// namespace, name, response code) of every request sent by a service
    /// account; nothing of the admin's, the controllers' or the kubelet's.
    /// Read it with [`ControlPlane::audit_events`].
    pub audit: bool,
    /// Admission plugins to enable beyond the API server's defaults, e.g.
    /// `OwnerReferencesPermissionEnforcement` (on in OpenShift).
    pub admission_plugins: Vec<&'static str>,
}

/// Whether CI asked for every real tool (`MODELDEPLOY_REQUIRE_TOOLS=1`).
pub fn tools_required() -> bool {
    std::env::var_os("MODELDEPLOY_REQUIRE_TOOLS").is_some_and(|v| v != "0")
}

/// The tools convention: print one `SKIPPED:` line, or panic when CI requires
/// every tool.
pub fn skip(why: &str) {
    if tools_required() {
        panic!("{why}, and MODELDEPLOY_REQUIRE_TOOLS is set");
    }
    println!("SKIPPED: {why}");
}

/// The shared control plane of this test binary, started on first use: etcd +
/// kube-apiserver + kube-controller-manager from `KUBEBUILDER_ASSETS` (etcd
/// from there or `PATH`). Returns `None` after printing one line `SKIPPED: ...`
/// when they are missing; panics instead when `MODELDEPLOY_REQUIRE_TOOLS=1`.
pub fn control_plane() -> Option<&'static ControlPlane> {
    // A binary that started its plane with other options (an audit log) gets
    // that plane: shared helpers such as the real Story call this.
    control_plane_with(OPTIONS.get().cloned().unwrap_or_default())
}

/// [`control_plane`], started with `options`.
pub fn control_plane_with(options: Options) -> Option<&'static ControlPlane> {
    let chosen = OPTIONS.get_or_init(|| options.clone());
    assert_eq!(
        *chosen, options,
        "one control plane per test binary: its tests must ask for the same options"
    );
    match PLANE.get_or_init(|| start(options)) {
        Outcome::Ready(cp) => Some(cp),
        Outcome::Missing(why) => {
            skip(why);
            None
        }
        Outcome::Failed(why) => panic!("the envtest control plane did not start: {why}"),
    }
}

impl ControlPlane {
    /// A client with the admin token (`system:masters`). A new client per
    /// call: a client is bound to the tokio runtime that made it, and each
    /// `#[tokio::test]` has its own.
    pub async fn admin(&self) -> kube::Client {
        kube::Client::try_from(self.config.clone()).expect("admin client")
    }

    /// [`ControlPlane::admin`] without kube's default retries: a 429 (an
    /// eviction a disruption budget refuses) comes back at once instead of
    /// being retried with backoff for minutes.
    #[allow(dead_code)]
    pub async fn admin_without_retries(&self) -> kube::Client {
        let mut config = self.config.clone();
        config.default_retry = false;
        kube::Client::try_from(config).expect("admin client")
    }

    /// The admin kubeconfig file (for kubectl, helm and the operator binary).
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    pub fn server_url(&self) -> String {
        self.server_url.clone()
    }

    /// This binary's state directory (logs of etcd, the API server, the
    /// controller manager and the pods' processes).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// How long the control plane took to start (etcd to controllers ready).
    pub fn started_in(&self) -> Duration {
        self.started_in
    }

    /// How long each part of the start took, e.g. `etcd 0.4s, ...`.
    pub fn startup_report(&self) -> String {
        let parts: Vec<String> = self
            .phases
            .iter()
            .map(|(what, d)| format!("{what} {:.1}s", d.as_secs_f64()))
            .collect();
        format!(
            "{:.1}s: {}",
            self.started_in.as_secs_f64(),
            parts.join(", ")
        )
    }

    /// The harness runtime, which runs the kubelet and background load.
    pub fn runtime(&self) -> &tokio::runtime::Handle {
        &self.runtime
    }

    /// The test-side kubelet, already running.
    pub fn kubelet(&self) -> &Kubelet {
        &self.kubelet
    }

    /// A fresh namespace for one test, e.g. `promote-3`, whose `default`
    /// ServiceAccount exists (the ServiceAccount admission plugin refuses
    /// pods before it does).
    pub async fn namespace(&self, prefix: &str) -> String {
        let n = self.namespaces.fetch_add(1, Ordering::SeqCst) + 1;
        let prefix: String = prefix
            .to_ascii_lowercase()
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect();
        let prefix = prefix.trim_matches('-');
        let prefix = if prefix.is_empty() { "test" } else { prefix };
        let name = format!("{}-{n}", &prefix[..prefix.len().min(50)]);
        let client = self.admin().await;
        let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await
            .unwrap_or_else(|e| panic!("create namespace {name}: {e}"));
        let sas: Api<ServiceAccount> = Api::namespaced(client, &name);
        poll(
            &format!("the default ServiceAccount in {name}"),
            WAIT,
            || async { sas.get_opt("default").await.ok().flatten().map(|_| ()) },
        )
        .await;
        name
    }

    /// Applies the repository's `crds/*.yaml` once per binary (server-side
    /// apply) and waits until they are Established.
    pub async fn install_crds(&self) {
        self.crds
            .get_or_init(|| async {
                let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("crds");
                self.install_crd_dir(&dir).await;
            })
            .await;
    }

    /// Applies `../shared/gateway-api/*.yaml` (next to the repository) once
    /// per binary and waits until the CRDs are Established. Returns false
    /// after the skip line (or panics when tools are required) if the
    /// directory is missing.
    pub async fn install_gateway_api(&self) -> bool {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/gateway-api");
        if !dir.is_dir() {
            skip(&format!(
                "the Gateway API CRDs are not at {} (CI checks shared/ out next to the repository)",
                dir.display()
            ));
            return false;
        }
        self.gateway_api
            .get_or_init(|| async { self.install_crd_dir(&dir).await })
            .await;
        true
    }

    async fn install_crd_dir(&self, dir: &Path) {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
            .collect();
        files.sort();
        let client = self.admin().await;
        let mut names = Vec::new();
        for f in files {
            let text = std::fs::read_to_string(&f).unwrap();
            for obj in apply_yaml(&client, &text, None).await {
                if obj
                    .types
                    .as_ref()
                    .is_some_and(|t| t.kind == "CustomResourceDefinition")
                {
                    names.push(obj.metadata.name.clone().unwrap_or_default());
                }
            }
        }
        let crds: Api<CustomResourceDefinition> = Api::all(client);
        for name in names {
            poll(&format!("CRD {name} Established"), WAIT, || async {
                let crd = crds.get(&name).await.ok()?;
                crd.status?
                    .conditions?
                    .iter()
                    .any(|c| c.type_ == "Established" && c.status == "True")
                    .then_some(())
            })
            .await;
        }
    }

    /// A token of `service_account` in `namespace` minted by TokenRequest
    /// (the ServiceAccount is created when missing). Valid for a day.
    pub async fn token_for(&self, namespace: &str, service_account: &str) -> String {
        let client = self.admin().await;
        let sas: Api<ServiceAccount> = Api::namespaced(client, namespace);
        let sa: ServiceAccount =
            serde_json::from_value(json!({"metadata": {"name": service_account}})).unwrap();
        if sas.get_opt(service_account).await.ok().flatten().is_none()
            && let Err(e) = sas.create(&PostParams::default(), &sa).await
        {
            assert!(
                matches!(&e, kube::Error::Api(s) if s.code == 409),
                "create ServiceAccount {namespace}/{service_account}: {e}"
            );
        }
        let request = TokenRequest {
            spec: TokenRequestSpec {
                audiences: vec![],
                expiration_seconds: Some(24 * 3600),
                ..Default::default()
            },
            ..Default::default()
        };
        let token = sas
            .create_token_request(service_account, &PostParams::default(), &request)
            .await
            .unwrap_or_else(|e| panic!("TokenRequest for {namespace}/{service_account}: {e}"));
        token.status.expect("TokenRequest status").token
    }

    /// A client that authenticates as `service_account` in `namespace` with
    /// a TokenRequest-minted token (not admin): RBAC applies to it.
    pub async fn client_for(&self, namespace: &str, service_account: &str) -> kube::Client {
        let config = self.config_for(namespace, service_account).await;
        kube::Client::try_from(config).expect("service account client")
    }

    /// The client configuration of a service account (with a fresh token).
    pub async fn config_for(&self, namespace: &str, service_account: &str) -> kube::Config {
        let token = self.token_for(namespace, service_account).await;
        let mut config = self.config.clone();
        config.auth_info = kube::config::AuthInfo {
            token: Some(token.into()),
            ..Default::default()
        };
        config
    }

    /// Writes a kubeconfig for this API server that authenticates with
    /// `token` (for the operator binary, kubectl or helm as that identity).
    pub fn write_kubeconfig(&self, path: &Path, token: &str) {
        std::fs::write(
            path,
            kubeconfig_yaml(&self.server_url, &self.ca_file(), token),
        )
        .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    }

    /// The official kubectl `.ci/install-deps` installs (or one on PATH),
    /// set up for the admin kubeconfig. `None` after the skip line when
    /// there is none.
    pub fn kubectl(&self) -> Option<Command> {
        self.tool_command("kubectl")
    }

    /// The official helm `.ci/install-deps` installs (or one on PATH), set
    /// up for the admin kubeconfig (`helm install` works against this
    /// control plane). `None` after the skip line when there is none.
    pub fn helm(&self) -> Option<Command> {
        self.tool_command("helm")
    }

    fn tool_command(&self, name: &str) -> Option<Command> {
        let Some(path) = official_tool(name) else {
            skip(&format!(
                "{name} is not installed (`bash .ci/install-deps` installs it, and .ci/run puts it on PATH)"
            ));
            return None;
        };
        let home = self.dir.join("tool-home");
        let mut cmd = Command::new(path);
        cmd.env("KUBECONFIG", &self.kubeconfig)
            .env("HELM_CACHE_HOME", home.join("cache"))
            .env("HELM_CONFIG_HOME", home.join("config"))
            .env("HELM_DATA_HOME", home.join("data"));
        Some(cmd)
    }

    /// The audit log, when the control plane was started with
    /// [`Options::audit`].
    pub fn audit_log(&self) -> Option<&Path> {
        self.audit_log.as_deref()
    }

    /// The audit events logged so far (one per request, at the end of its
    /// answer), oldest first. Empty without [`Options::audit`].
    pub fn audit_events(&self) -> Vec<serde_json::Value> {
        let Some(path) = &self.audit_log else {
            return Vec::new();
        };
        let text = std::fs::read_to_string(path).unwrap_or_default();
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                serde_json::from_str(l)
                    .unwrap_or_else(|e| panic!("{}: an audit line: {e}: {l}", path.display()))
            })
            .collect()
    }

    fn ca_file(&self) -> PathBuf {
        self.dir.join("certs").join("apiserver.crt")
    }
}

/// Faults for the fault tests: a component SIGKILLed and started again as it
/// was (same binary, flags, ports, certificates, data directory), and etcd
/// compacted. Clients reconnect to the same address.
impl ControlPlane {
    /// The process id of a running component (`etcd`, `kube-apiserver`,
    /// `kube-controller-manager`); `None` when it is stopped or has exited.
    #[allow(dead_code)]
    pub fn component_pid(&self, name: &str) -> Option<u32> {
        let mut running = self.components.lock().unwrap();
        let component = running.iter_mut().find(|c| c.name == name)?;
        matches!(component.child.try_wait(), Ok(None)).then(|| component.child.id())
    }

    /// SIGKILLs kube-apiserver: no graceful shutdown, so watches break
    /// without a last bookmark, as when its node dies.
    #[allow(dead_code)]
    pub fn kill_apiserver(&self) {
        self.kill_component("kube-apiserver");
    }

    /// Starts kube-apiserver again as it was and waits until `/readyz` is
    /// ok. Returns how long that took.
    #[allow(dead_code)]
    pub async fn start_apiserver(&self) -> Duration {
        let started = Instant::now();
        let client = self.admin().await;
        self.start_component("kube-apiserver", APISERVER_TIMEOUT, || {
            let client = client.clone();
            async move {
                let req = http::Request::get("/readyz").body(Vec::new()).unwrap();
                client
                    .request_text(req)
                    .await
                    .is_ok_and(|t| t.trim() == "ok")
            }
        })
        .await;
        started.elapsed()
    }

    /// Stops etcd for real (SIGKILL; its data directory stays). SIGSTOP
    /// would keep its sockets open and turn the outage into timeouts only.
    #[allow(dead_code)]
    pub fn stop_etcd(&self) {
        self.kill_component("etcd");
    }

    /// Starts etcd again on the same data directory and ports and waits
    /// until it is healthy. Returns how long that took.
    #[allow(dead_code)]
    pub async fn start_etcd(&self) -> Duration {
        let started = Instant::now();
        let http = modeldeploy::http_client_builder()
            .timeout(Duration::from_secs(2))
            .build()
            .expect("http client");
        let health = format!("{}/health", self.etcd_url());
        self.start_component("etcd", ETCD_TIMEOUT, || async {
            match http.get(&health).send().await {
                Ok(r) => r.text().await.is_ok_and(|t| t.contains("true")),
                Err(_) => false,
            }
        })
        .await;
        started.elapsed()
    }

    /// Compacts etcd at its current revision (etcd's v3 JSON gateway) and
    /// returns that revision: a watch resuming from an older one gets 410
    /// Gone.
    #[allow(dead_code)]
    pub async fn compact_etcd(&self) -> i64 {
        let http = modeldeploy::http_client_builder()
            .timeout(Duration::from_secs(30))
            .build()
            .expect("http client");
        let url = self.etcd_url();
        // Any range answers with the store's revision in its header.
        let range: serde_json::Value = http
            .post(format!("{url}/v3/kv/range"))
            .json(&json!({"key": "AA==", "limit": 1}))
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .unwrap_or_else(|e| panic!("etcd range: {e}"))
            .json()
            .await
            .unwrap_or_else(|e| panic!("etcd range answer: {e}"));
        let revision: i64 = range["header"]["revision"]
            .as_str()
            .and_then(|r| r.parse().ok())
            .unwrap_or_else(|| panic!("etcd range answer without a revision: {range}"));
        http.post(format!("{url}/v3/kv/compaction"))
            .json(&json!({"revision": revision.to_string(), "physical": true}))
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .unwrap_or_else(|e| panic!("etcd compaction at {revision}: {e}"));
        revision
    }

    fn etcd_url(&self) -> String {
        let all = self.components.lock().unwrap();
        let stopped = self.stopped.lock().unwrap();
        all.iter()
            .chain(stopped.iter())
            .filter(|c| c.name == "etcd")
            .flat_map(|c| c.args.iter())
            .find_map(|a| a.strip_prefix("--listen-client-urls="))
            .expect("etcd's client URL")
            .to_string()
    }

    fn kill_component(&self, name: &str) {
        let mut running = self.components.lock().unwrap();
        let at = running
            .iter()
            .position(|c| c.name == name)
            .unwrap_or_else(|| panic!("{name} is not running"));
        let mut component = running.remove(at);
        let _ = component.child.kill();
        let _ = component.child.wait();
        self.stopped.lock().unwrap().push(component);
    }

    async fn start_component<F, Fut>(&self, name: &str, timeout: Duration, ready: F)
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let old = {
            let mut stopped = self.stopped.lock().unwrap();
            let at = stopped
                .iter()
                .position(|c| c.name == name)
                .unwrap_or_else(|| panic!("{name} was not stopped"));
            stopped.remove(at)
        };
        let mut component = start_again(old).unwrap_or_else(|e| panic!("{e}"));
        if let Err(e) = wait_for(&mut component, "ready again", timeout, ready).await {
            panic!("{}", boot_message(e));
        }
        self.components.lock().unwrap().push(component);
    }
}

/// Starts `old` again the same way, from a thread that never exits (the
/// child dies with the thread that spawned it: `PR_SET_PDEATHSIG`).
fn start_again(old: Component) -> Result<Component, String> {
    let dir = old
        .log
        .parent()
        .map(Path::to_path_buf)
        .ok_or("a component log without a directory")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name(format!("envtest-{}", old.name))
        .spawn(move || {
            let started = Component::start(old.name, &old.program, &old.args, &dir);
            let _ = tx.send(started.map_err(boot_message));
            loop {
                std::thread::park();
            }
        })
        .map_err(|e| format!("spawn a thread for {}: {e}", old.name))?;
    rx.recv()
        .map_err(|_| "the starting thread died".to_string())?
}

fn boot_message(e: BootError) -> String {
    match e {
        BootError::PortTaken(m) | BootError::Failed(m) => m,
    }
}

/// Where the official `name` (helm, kubectl) is: the cache dir
/// `.ci/install-deps` installs into (`$MODELDEPLOY_CACHE`, else
/// `${XDG_CACHE_HOME:-~/.cache}/modeldeploy`, then `tools/bin`), else PATH.
pub fn official_tool(name: &str) -> Option<PathBuf> {
    let probe: &[&str] = if name == "kubectl" {
        &["version", "--client"]
    } else {
        &["version"]
    };
    let runs = |p: &Path| {
        Command::new(p)
            .args(probe)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    let env = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    let cache = env("MODELDEPLOY_CACHE").or_else(|| {
        env("XDG_CACHE_HOME")
            .or_else(|| env("HOME").map(|h| h.join(".cache")))
            .map(|c| c.join("modeldeploy"))
    });
    if let Some(p) = cache.map(|c| c.join("tools/bin").join(name))
        && runs(&p)
    {
        return Some(p);
    }
    runs(Path::new(name)).then(|| PathBuf::from(name))
}

/// Server-side applies every document of `yaml` (any kind the API server
/// serves, custom resources included) as [`FIELD_MANAGER`], forcing
/// conflicts; namespaced objects without a namespace go to `namespace`.
/// Returns the applied objects.
pub async fn apply_yaml(
    client: &kube::Client,
    yaml: &str,
    namespace: Option<&str>,
) -> Vec<DynamicObject> {
    use serde::Deserialize;
    let mut applied = Vec::new();
    let mut kinds: BTreeMap<String, (ApiResource, ApiCapabilities)> = BTreeMap::new();
    for doc in serde_yaml::Deserializer::from_str(yaml) {
        let value = serde_json::Value::deserialize(doc).expect("a YAML document");
        if value.is_null() {
            continue;
        }
        let mut obj: DynamicObject = serde_json::from_value(value).expect("a Kubernetes object");
        let types = obj.types.clone().expect("apiVersion and kind");
        let gvk = GroupVersionKind::try_from(&types).expect("apiVersion");
        let key = format!("{}/{}", types.api_version, types.kind);
        if !kinds.contains_key(&key) {
            let found = poll(&format!("discovery of {key}"), WAIT, || async {
                kube::discovery::pinned_kind(client, &gvk).await.ok()
            })
            .await;
            kinds.insert(key.clone(), found);
        }
        let (ar, caps) = &kinds[&key];
        let name = obj.metadata.name.clone().expect("metadata.name");
        let api: Api<DynamicObject> = if caps.scope == Scope::Namespaced {
            let ns = obj
                .metadata
                .namespace
                .clone()
                .or(namespace.map(str::to_string))
                .unwrap_or_else(|| "default".into());
            obj.metadata.namespace = Some(ns.clone());
            Api::namespaced_with(client.clone(), &ns, ar)
        } else {
            Api::all_with(client.clone(), ar)
        };
        let out = api
            .patch(
                &name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&obj),
            )
            .await
            .unwrap_or_else(|e| panic!("apply {key} {name}: {e}"));
        applied.push(out);
    }
    applied
}

/// Polls `check` every 50 ms until it returns `Some`, or panics after
/// `timeout` naming `what`.
pub async fn poll<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Makes a child get SIGKILL when the thread that spawned it exits (the
/// harness thread never does; a test process's exit ends it too). Linux
/// only; elsewhere children are killed on drop or outlive a killed test.
#[cfg(target_os = "linux")]
pub fn die_with_parent(cmd: &mut Command) -> &mut Command {
    let parent = std::process::id();
    // SAFETY: prctl and getppid are async-signal-safe; nothing is allocated.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The parent may have died before prctl: then we were adopted.
            if u32::try_from(libc::getppid()).ok() != Some(parent) {
                return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        })
    }
}

#[cfg(not(target_os = "linux"))]
pub fn die_with_parent(cmd: &mut Command) -> &mut Command {
    cmd
}

/// The last `lines` lines of a log file (for failure messages).
pub fn tail(path: &Path, lines: usize) -> String {
    let Ok(mut f) = std::fs::File::open(path) else {
        return format!("({} is missing)", path.display());
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(64 * 1024)));
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn kubeconfig_yaml(server: &str, ca: &Path, token: &str) -> String {
    // The API server's self-signed serving certificate (written by
    // --cert-dir, with its CA in the same file) is trusted as the root, and
    // it names 127.0.0.1: TLS is verified, not skipped.
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: envtest
  cluster:
    server: {server}
    certificate-authority: {ca}
users:
- name: envtest
  user:
    token: {token}
contexts:
- name: envtest
  context: {{cluster: envtest, user: envtest, namespace: default}}
current-context: envtest
",
        ca = ca.display()
    )
}

/// Where the binaries are: (kube-apiserver dir, etcd path), or why not.
fn find_binaries() -> Result<(PathBuf, PathBuf), String> {
    let how = "`bash .ci/install-deps` unpacks them into \
               ~/.cache/modeldeploy/envtest/1.36.2, the KUBEBUILDER_ASSETS .ci/run sets; \
               or use controller-runtime's setup-envtest, or the server binaries of any \
               Kubernetes release; etcd from there, PATH or Debian's etcd-server";
    let Some(assets) = std::env::var_os("KUBEBUILDER_ASSETS").filter(|a| !a.is_empty()) else {
        return Err(format!(
            "real control plane: KUBEBUILDER_ASSETS is not set ({how})"
        ));
    };
    let assets = PathBuf::from(assets);
    for b in ["kube-apiserver", "kube-controller-manager"] {
        if !assets.join(b).is_file() {
            return Err(format!(
                "real control plane: {b} is not in KUBEBUILDER_ASSETS={} ({how})",
                assets.display()
            ));
        }
    }
    let etcd = if assets.join("etcd").is_file() {
        assets.join("etcd")
    } else {
        let on_path = std::env::var_os("PATH").and_then(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join("etcd"))
                .find(|e| e.is_file())
        });
        on_path.ok_or_else(|| format!("real control plane: etcd is not installed ({how})"))?
    };
    if Command::new("openssl")
        .arg("version")
        .stdout(Stdio::null())
        .status()
        .is_err()
    {
        return Err(
            "real control plane: openssl (for the service-account keys) is not installed \
                    (Debian package openssl; `bash .ci/install-deps` installs it)"
                .into(),
        );
    }
    Ok((assets, etcd))
}

fn start(options: Options) -> Outcome {
    let (assets, etcd) = match find_binaries() {
        Ok(found) => found,
        Err(why) => return Outcome::Missing(why),
    };
    remove_stale_dirs();
    let dir = std::env::temp_dir().join(format!(
        "modeldeploy-envtest-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0)
    ));
    if let Err(e) = std::fs::create_dir_all(&dir) {
        return Outcome::Failed(format!("create {}: {e}", dir.display()));
    }
    let (tx, rx) = std::sync::mpsc::channel();
    // One never-ending thread starts the components (PR_SET_PDEATHSIG fires
    // when the spawning *thread* exits) and owns the runtime of the kubelet
    // and of background load.
    let spawned = std::thread::Builder::new()
        .name("envtest".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .thread_name("envtest-rt")
                .enable_all()
                .build()
            {
                Ok(r) => r,
                Err(e) => {
                    let _ = tx.send(Outcome::Failed(format!("runtime: {e}")));
                    return;
                }
            };
            let handle = runtime.handle().clone();
            let outcome = runtime.block_on(boot(&assets, &etcd, dir, handle, &options));
            let _ = tx.send(outcome);
            loop {
                std::thread::park();
            }
        });
    if let Err(e) = spawned {
        return Outcome::Failed(format!("spawn the harness thread: {e}"));
    }
    rx.recv()
        .unwrap_or_else(|_| Outcome::Failed("the harness thread died".into()))
}

/// Removes state directories of earlier runs whose process is gone.
fn remove_stale_dirs() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        let Some(rest) = name.strip_prefix("modeldeploy-envtest-") else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<i32>().ok()) else {
            continue;
        };
        // SAFETY: kill with signal 0 only checks whether the process exists.
        let alive = unsafe { libc::kill(pid, 0) } == 0
            || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
        if !alive {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

async fn boot(
    assets: &Path,
    etcd: &Path,
    dir: PathBuf,
    runtime: tokio::runtime::Handle,
    options: &Options,
) -> Outcome {
    let started = Instant::now();
    // Ports are picked free but can be taken by someone else before a
    // component binds them: a component that lost its port is retried.
    let mut last = String::new();
    for attempt in 1..=3 {
        let attempt_dir = dir.join(format!("attempt-{attempt}"));
        match boot_once(assets, etcd, &attempt_dir, options).await {
            Ok((children, config, server_url, kubeconfig, mut phases)) => {
                let mark = Instant::now();
                let kubelet = match Kubelet::start(&config, &runtime, &attempt_dir).await {
                    Ok(k) => k,
                    Err(e) => return Outcome::Failed(format!("the kubelet did not start: {e}")),
                };
                phases.push(("kubelet", mark.elapsed()));
                return Outcome::Ready(Box::new(ControlPlane {
                    audit_log: options.audit.then(|| attempt_dir.join(AUDIT_LOG)),
                    dir: attempt_dir,
                    kubeconfig,
                    server_url,
                    config,
                    runtime,
                    kubelet,
                    started_in: started.elapsed(),
                    phases,
                    namespaces: AtomicU64::new(0),
                    crds: tokio::sync::OnceCell::new(),
                    gateway_api: tokio::sync::OnceCell::new(),
                    components: Mutex::new(children),
                    stopped: Mutex::new(Vec::new()),
                }));
            }
            Err(BootError::PortTaken(why)) => last = why,
            Err(BootError::Failed(why)) => return Outcome::Failed(why),
        }
    }
    Outcome::Failed(last)
}

enum BootError {
    PortTaken(String),
    Failed(String),
}

/// A started component: its process, log, and how it was started (to start
/// it again the same way after a fault).
struct Component {
    name: &'static str,
    child: Child,
    log: PathBuf,
    program: PathBuf,
    args: Vec<String>,
}

impl Component {
    fn start(
        name: &'static str,
        program: &Path,
        args: &[String],
        dir: &Path,
    ) -> Result<Self, BootError> {
        let log = dir.join(format!("{name}.log"));
        // Appended to: a component started again keeps its earlier log.
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .map_err(|e| BootError::Failed(format!("create {}: {e}", log.display())))?;
        let err = file
            .try_clone()
            .map_err(|e| BootError::Failed(format!("{e}")))?;
        let mut cmd = Command::new(program);
        cmd.args(args)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(err);
        let child = die_with_parent(&mut cmd)
            .spawn()
            .map_err(|e| BootError::Failed(format!("start {}: {e}", program.display())))?;
        Ok(Self {
            name,
            child,
            log,
            program: program.to_path_buf(),
            args: args.to_vec(),
        })
    }

    /// Fails (with the log's tail) when the process has exited.
    fn alive(&mut self) -> Result<(), BootError> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(self.failure(&format!("exited ({status})"))),
            Err(e) => Err(self.failure(&format!("cannot be waited for: {e}"))),
        }
    }

    fn failure(&self, what: &str) -> BootError {
        let tail = tail(&self.log, 30);
        let message = format!(
            "{} {what}; the last lines of {}:\n{tail}",
            self.name,
            self.log.display()
        );
        if tail.contains("address already in use") {
            BootError::PortTaken(message)
        } else {
            BootError::Failed(message)
        }
    }

    fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until `ready` says so while `component` stays up.
async fn wait_for<F, Fut>(
    component: &mut Component,
    what: &str,
    timeout: Duration,
    mut ready: F,
) -> Result<(), BootError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        component.alive()?;
        if ready().await {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(component.failure(&format!("was not {what} after {timeout:?}")));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

type Booted = (
    Vec<Component>,
    kube::Config,
    String,
    PathBuf,
    Vec<(&'static str, Duration)>,
);

/// The audit log's name in the state directory.
const AUDIT_LOG: &str = "audit.log";

/// Service accounts' requests at level Metadata; nothing else.
const AUDIT_POLICY: &str = "apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
  - level: Metadata
    userGroups: [\"system:serviceaccounts\"]
  - level: None
";

async fn boot_once(
    assets: &Path,
    etcd: &Path,
    dir: &Path,
    options: &Options,
) -> Result<Booted, BootError> {
    let failed = |what: String| BootError::Failed(what);
    std::fs::create_dir_all(dir).map_err(|e| failed(format!("create {}: {e}", dir.display())))?;
    let port = super::free_port;
    let (etcd_port, peer_port, api_port, kcm_port) = (port(), port(), port(), port());
    let mut phases = Vec::new();
    let mut mark = Instant::now();
    let mut phase = |what: &'static str| {
        phases.push((what, mark.elapsed()));
        mark = Instant::now();
    };

    // Service-account signing keys, so that TokenRequest works.
    let key = dir.join("sa.key");
    let public = dir.join("sa.pub");
    for args in [
        vec![
            "genrsa".into(),
            "-out".into(),
            key.display().to_string(),
            "2048".into(),
        ],
        vec![
            "rsa".into(),
            "-in".into(),
            key.display().to_string(),
            "-pubout".into(),
            "-out".into(),
            public.display().to_string(),
        ],
    ] {
        let out = Command::new("openssl")
            .args(&args)
            .output()
            .map_err(|e| failed(format!("openssl: {e}")))?;
        if !out.status.success() {
            return Err(failed(format!(
                "openssl {}: {}",
                args[0],
                String::from_utf8_lossy(&out.stderr)
            )));
        }
    }
    phase("keys");
    let tokens = dir.join("tokens.csv");
    std::fs::write(
        &tokens,
        format!("{ADMIN_TOKEN},admin,admin,system:masters\n"),
    )
    .map_err(|e| failed(format!("{e}")))?;

    let s = |v: &str| v.to_string();
    let d = |p: &Path| p.display().to_string();
    let mut extra_args = Vec::new();
    if !options.admission_plugins.is_empty() {
        extra_args.push(format!(
            "--enable-admission-plugins={}",
            options.admission_plugins.join(",")
        ));
    }
    if options.audit {
        let policy = dir.join("audit-policy.yaml");
        std::fs::write(&policy, AUDIT_POLICY).map_err(|e| failed(format!("{e}")))?;
        extra_args.extend([
            format!("--audit-policy-file={}", d(&policy)),
            format!("--audit-log-path={}", d(&dir.join(AUDIT_LOG))),
            s("--audit-log-format=json"),
            // Written as each request ends, so a test reads what was sent.
            s("--audit-log-mode=blocking"),
        ]);
    }
    let mut etcd = Component::start(
        "etcd",
        etcd,
        &[
            s("--name=envtest"),
            format!("--data-dir={}", d(&dir.join("etcd"))),
            format!("--listen-client-urls=http://127.0.0.1:{etcd_port}"),
            format!("--advertise-client-urls=http://127.0.0.1:{etcd_port}"),
            format!("--listen-peer-urls=http://127.0.0.1:{peer_port}"),
            format!("--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}"),
            format!("--initial-cluster=envtest=http://127.0.0.1:{peer_port}"),
            // A single member elects itself after one election timeout: keep
            // it short (0.8 s to healthy with the defaults, under 0.1 s so).
            s("--heartbeat-interval=10"),
            s("--election-timeout=50"),
        ],
        dir,
    )?;
    let http = modeldeploy::http_client_builder()
        .timeout(Duration::from_secs(2))
        .build()
        .map_err(|e| failed(format!("http client: {e}")))?;
    let health = format!("http://127.0.0.1:{etcd_port}/health");
    if let Err(e) = wait_for(&mut etcd, "healthy", ETCD_TIMEOUT, || async {
        match http.get(&health).send().await {
            Ok(r) => r.text().await.is_ok_and(|t| t.contains("true")),
            Err(_) => false,
        }
    })
    .await
    {
        etcd.kill();
        return Err(e);
    }

    phase("etcd");
    let certs = dir.join("certs");
    let mut apiserver = match Component::start(
        "kube-apiserver",
        &assets.join("kube-apiserver"),
        &[
            format!("--etcd-servers=http://127.0.0.1:{etcd_port}"),
            s("--bind-address=127.0.0.1"),
            s("--advertise-address=127.0.0.1"),
            format!("--secure-port={api_port}"),
            format!("--cert-dir={}", d(&certs)),
            format!("--token-auth-file={}", d(&tokens)),
            s("--authorization-mode=RBAC"),
            s("--service-account-issuer=https://kubernetes.default.svc"),
            format!("--service-account-key-file={}", d(&public)),
            format!("--service-account-signing-key-file={}", d(&key)),
            s("--service-cluster-ip-range=10.96.0.0/16"),
            s("--allow-privileged=true"),
            // Nothing scrapes it; one profiler less.
            s("--profiling=false"),
        ]
        .into_iter()
        .chain(extra_args)
        .collect::<Vec<_>>(),
        dir,
    ) {
        Ok(c) => c,
        Err(e) => {
            etcd.kill();
            return Err(e);
        }
    };
    let kill_all = |components: Vec<Component>| {
        for c in components {
            c.kill();
        }
    };
    // The serving certificate appears in --cert-dir at start.
    let ca = certs.join("apiserver.crt");
    if let Err(e) = wait_for(
        &mut apiserver,
        "writing its certificate",
        APISERVER_TIMEOUT,
        || {
            let ca = ca.clone();
            async move {
                std::fs::read_to_string(&ca)
                    .is_ok_and(|pem| pem.matches("END CERTIFICATE").count() >= 2)
            }
        },
    )
    .await
    {
        kill_all(vec![apiserver, etcd]);
        return Err(e);
    }
    let server_url = format!("https://127.0.0.1:{api_port}");
    let kubeconfig = dir.join("kubeconfig");
    std::fs::write(&kubeconfig, kubeconfig_yaml(&server_url, &ca, ADMIN_TOKEN))
        .map_err(|e| failed(format!("{e}")))?;
    let config = async {
        let kc = Kubeconfig::read_from(&kubeconfig).map_err(|e| format!("{e}"))?;
        kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
            .await
            .map_err(|e| format!("{e}"))
    }
    .await;
    let config = match config {
        Ok(c) => c,
        Err(e) => {
            kill_all(vec![apiserver, etcd]);
            return Err(failed(format!("the admin kubeconfig: {e}")));
        }
    };
    let client = kube::Client::try_from(config.clone()).map_err(|e| failed(format!("{e}")))?;
    if let Err(e) = wait_for(&mut apiserver, "ready (/readyz)", APISERVER_TIMEOUT, || {
        let client = client.clone();
        async move {
            let req = http::Request::get("/readyz").body(Vec::new()).unwrap();
            client
                .request_text(req)
                .await
                .is_ok_and(|t| t.trim() == "ok")
        }
    })
    .await
    {
        kill_all(vec![apiserver, etcd]);
        return Err(e);
    }

    phase("kube-apiserver");
    let mut kcm = match Component::start(
        "kube-controller-manager",
        &assets.join("kube-controller-manager"),
        &[
            format!("--kubeconfig={}", d(&kubeconfig)),
            format!("--service-account-private-key-file={}", d(&key)),
            format!("--root-ca-file={}", d(&ca)),
            s("--leader-elect=false"),
            s("--bind-address=127.0.0.1"),
            format!("--secure-port={kcm_port}"),
            s(
                "--controllers=*,-node-ipam-controller,-node-lifecycle-controller,-service-ca-certificate-publisher-controller",
            ),
            // Tests create many objects at once: do not throttle the
            // controllers' API calls to the defaults (20 qps), and sync in
            // parallel.
            s("--kube-api-qps=500"),
            s("--kube-api-burst=1000"),
            s("--concurrent-deployment-syncs=10"),
            s("--concurrent-replicaset-syncs=10"),
            s("--concurrent-job-syncs=10"),
            s("--concurrent-gc-syncs=20"),
            s("--concurrent-namespace-syncs=10"),
            s("--concurrent-serviceaccount-token-syncs=10"),
            s("--profiling=false"),
        ],
        dir,
    ) {
        Ok(c) => c,
        Err(e) => {
            kill_all(vec![apiserver, etcd]);
            return Err(e);
        }
    };
    // The service account controller works once `default` exists in `default`.
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), "default");
    if let Err(e) = wait_for(
        &mut kcm,
        "running its controllers",
        CONTROLLERS_TIMEOUT,
        || {
            let sas = sas.clone();
            async move { sas.get_opt("default").await.ok().flatten().is_some() }
        },
    )
    .await
    {
        kill_all(vec![kcm, apiserver, etcd]);
        return Err(e);
    }
    phase("kube-controller-manager");
    let children = vec![etcd, apiserver, kcm];
    Ok((children, config, server_url, kubeconfig, phases))
}
