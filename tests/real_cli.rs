//! The `kubectl modeldeploy` binary against a real API server (envtest
//! tier): the namespace and context the kubectl flags choose, tables and
//! `-o json|yaml`, one-line errors, and `status --watch` following changes
//! until the object is deleted. No operator runs: the tests write status
//! themselves. Skips with one line where the control plane binaries are
//! missing (`bash .ci/install-deps`; CI sets MODELDEPLOY_REQUIRE_TOOLS=1).

mod support;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::time::{Duration, Instant};

use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use modeldeploy::api::ModelDeployment;
use serde_json::{Value, json};
use support::envtest::{ControlPlane, control_plane, die_with_parent, poll};

const WAIT: Duration = Duration::from_secs(60);

/// Two namespaces with ModelDeployments (`a`: `ranker` stable and `scorer`
/// rolling out 2.0.0; `b`: `scorer` stable on 3.1.0) and a kubeconfig with
/// a context for each (`team-a` current), plus `nowhere`, whose server does
/// not listen.
struct Fixture {
    a: String,
    b: String,
    kubeconfig: PathBuf,
    _dir: TempDir,
}

/// A directory removed when the test ends.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

async fn fixture(cp: &ControlPlane, prefix: &str) -> Fixture {
    cp.install_crds().await;
    let a = cp.namespace(&format!("{prefix}-a")).await;
    let b = cp.namespace(&format!("{prefix}-b")).await;
    let client = cp.admin().await;
    let stable = |version: &str| json!({"revision": 1, "version": version, "image": format!("m:{version}"), "hash": "h1"});
    create(
        &client,
        &a,
        "ranker",
        "1.4.0",
        json!({"phase": "Stable", "stable": stable("1.4.0")}),
    )
    .await;
    create(&client, &a, "scorer", "2.0.0", progressing(20, 1)).await;
    create(
        &client,
        &b,
        "scorer",
        "3.1.0",
        json!({"phase": "Stable", "stable": stable("3.1.0")}),
    )
    .await;
    let dir = std::env::temp_dir().join(format!("real-cli-{a}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let kubeconfig = dir.join("kubeconfig");
    std::fs::write(&kubeconfig, two_contexts(cp.kubeconfig(), &a, &b)).unwrap();
    Fixture {
        a,
        b,
        kubeconfig,
        _dir: TempDir(dir),
    }
}

/// `scorer` in namespace `a` halfway: 1.0.0 stable, 2.0.0 at `weight`.
fn progressing(weight: i32, step: i32) -> Value {
    json!({
        "phase": "Progressing",
        "stable": {"revision": 1, "version": "1.0.0", "image": "m:1.0.0", "hash": "h1"},
        "canary": {"revision": 2, "version": "2.0.0", "image": "m:2.0.0", "hash": "h2",
                   "weight": weight, "setWeight": weight, "step": step},
        "latestRevision": 2
    })
}

async fn create(client: &kube::Client, ns: &str, name: &str, version: &str, status: Value) {
    let api: Api<ModelDeployment> = Api::namespaced(client.clone(), ns);
    let md: ModelDeployment = serde_json::from_value(json!({
        "apiVersion": "modeldeploy.io/v1alpha1", "kind": "ModelDeployment",
        "metadata": {"name": name},
        "spec": {"model": {"version": version, "image": format!("m:{version}")},
                 "resources": {"requests": {"cpu": "100m"}, "limits": {"cpu": "100m"}},
                 "rollout": {"steps": [{"setWeight": 20}, {"setWeight": 50}]}}
    }))
    .unwrap();
    api.create(&PostParams::default(), &md)
        .await
        .unwrap_or_else(|e| panic!("create {ns}/{name}: {e}"));
    set_status(client, ns, name, status).await;
}

async fn set_status(client: &kube::Client, ns: &str, name: &str, status: Value) {
    let api: Api<ModelDeployment> = Api::namespaced(client.clone(), ns);
    api.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"status": status})),
    )
    .await
    .unwrap_or_else(|e| panic!("status of {ns}/{name}: {e}"));
}

/// The admin kubeconfig with the contexts `team-a` (namespace `a`, current),
/// `team-b` (namespace `b`) and `nowhere` (a server that does not listen).
fn two_contexts(admin: &Path, a: &str, b: &str) -> String {
    let mut kc: Value = serde_yaml::from_str(&std::fs::read_to_string(admin).unwrap()).unwrap();
    let user = kc["users"][0]["name"].clone();
    let cluster = kc["clusters"][0]["name"].clone();
    kc["clusters"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "nowhere", "cluster": {"server": "https://127.0.0.1:1"}}));
    kc["contexts"] = json!([
        {"name": "team-a", "context": {"cluster": cluster, "user": user, "namespace": a}},
        {"name": "team-b", "context": {"cluster": cluster, "user": user, "namespace": b}},
        {"name": "nowhere", "context": {"cluster": "nowhere", "user": user}},
    ]);
    kc["current-context"] = json!("team-a");
    serde_yaml::to_string(&kc).unwrap()
}

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Runs the plugin with `KUBECONFIG` set to `kubeconfig` (never the
/// machine's own).
fn plugin(kubeconfig: &Path, args: &[&str]) -> Run {
    let out = Command::new(env!("CARGO_BIN_EXE_kubectl-modeldeploy"))
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .output()
        .expect("the plugin runs");
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

impl Run {
    fn ok(self, what: &str) -> String {
        assert_eq!(self.code, Some(0), "{what}: {}", self.stderr);
        self.stdout
    }

    /// A failure on exactly one line of stderr, without a panic.
    fn one_line_error(self, code: i32) -> String {
        assert_eq!(self.code, Some(code), "{}{}", self.stdout, self.stderr);
        assert!(self.stdout.is_empty(), "{}", self.stdout);
        assert_eq!(self.stderr.lines().count(), 1, "{}", self.stderr);
        assert!(!self.stderr.contains("panicked"), "{}", self.stderr);
        self.stderr.trim_end().to_string()
    }
}

/// A table's lines without the AGE column, which moves between two runs.
fn without_age(table: &str) -> Vec<String> {
    table
        .lines()
        .map(|l| {
            l.rsplit_once(' ')
                .map_or(l, |(rest, _)| rest)
                .trim_end()
                .to_string()
        })
        .collect()
}

#[tokio::test]
async fn list_reads_the_namespace_and_context_the_kubectl_flags_choose() {
    let Some(cp) = control_plane() else { return };
    let f = fixture(cp, "cli-list").await;
    let kc = f.kubeconfig.as_path();

    // The current context's namespace: a.
    let table = plugin(kc, &["list"]).ok("list");
    let lines: Vec<&str> = table.lines().collect();
    assert!(
        lines[0].starts_with("NAME     PHASE         STABLE   CANARY"),
        "{table}"
    );
    assert!(lines[0].ends_with("AGE"), "{table}");
    assert_eq!(lines.len(), 3, "{table}");
    assert!(
        lines[1].starts_with("ranker   Stable        1.4.0    -"),
        "{table}"
    );
    assert!(
        lines[2].starts_with("scorer   Progressing   1.0.0    2.0.0 20% step 1/2"),
        "{table}"
    );
    let same = |other: &str| assert_eq!(without_age(other), without_age(&table));
    same(&plugin(kc, &["ls"]).ok("ls"));

    // --context picks b's context, -n beats the context's namespace.
    let b = plugin(kc, &["--context", "team-b", "list"]).ok("list in team-b");
    let b_rows: Vec<Vec<&str>> = b
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(b_rows.len(), 1, "{b}");
    assert_eq!(b_rows[0][..4], ["scorer", "Stable", "3.1.0", "-"], "{b}");
    let a_again = plugin(kc, &["list", "--context", "team-b", "-n", &f.a]).ok("-n a");
    same(&a_again);

    // --kubeconfig beats $KUBECONFIG.
    let missing = kc.with_file_name("no-such-kubeconfig");
    let flag = plugin(&missing, &["--kubeconfig", kc.to_str().unwrap(), "list"]);
    same(&flag.ok("--kubeconfig"));

    // -A: a NAMESPACE column, sorted by namespace then name.
    let all = plugin(kc, &["list", "-A"]).ok("list -A");
    assert!(all.starts_with("NAMESPACE"), "{all}");
    let ours: Vec<&str> = all
        .lines()
        .filter(|l| l.starts_with(&format!("{} ", f.a)) || l.starts_with(&format!("{} ", f.b)))
        .collect();
    assert_eq!(ours.len(), 3, "{all}");
    assert!(
        ours[0].contains(" ranker ") && ours[0].starts_with(&f.a),
        "{all}"
    );
    assert!(
        ours[1].contains(" scorer ") && ours[1].starts_with(&f.a),
        "{all}"
    );
    assert!(
        ours[2].contains(" scorer ") && ours[2].starts_with(&f.b),
        "{all}"
    );

    // An empty namespace: kubectl's message on stderr, success.
    let empty = plugin(kc, &["list", "-n", "nothing-here"]);
    assert_eq!(empty.code, Some(0));
    assert_eq!(empty.stdout, "");
    assert_eq!(
        empty.stderr,
        "No resources found in nothing-here namespace.\n"
    );
}

#[tokio::test]
async fn get_status_and_output_formats_print_the_object_of_the_chosen_namespace() {
    let Some(cp) = control_plane() else { return };
    let f = fixture(cp, "cli-get").await;
    let kc = f.kubeconfig.as_path();
    let table = plugin(kc, &["list"]).ok("list");
    let lines: Vec<&str> = table.lines().collect();

    // -o json: a List of whole objects, byte for byte as kubectl prints them.
    let json = plugin(kc, &["list", "-o", "json"]).ok("-o json");
    let Some(mut kubectl) = cp.kubectl() else {
        return;
    };
    let theirs = kubectl
        .args(["get", "modeldeployments", "-n", &f.a, "-o", "json"])
        .output()
        .unwrap();
    assert_eq!(json, String::from_utf8_lossy(&theirs.stdout));
    let list: Value = serde_json::from_str(&json).unwrap();
    assert_eq!(list["kind"], "List");
    let items = list["items"].as_array().unwrap();
    let names: Vec<&str> = items
        .iter()
        .map(|i| i["metadata"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["ranker", "scorer"]);
    for item in items {
        assert_eq!(item["apiVersion"], "modeldeploy.io/v1alpha1");
        assert_eq!(item["kind"], "ModelDeployment");
        assert_eq!(item["metadata"]["namespace"], f.a.as_str());
        assert!(item["metadata"].get("managedFields").is_none(), "{item}");
        assert!(item["metadata"]["uid"].is_string(), "{item}");
    }
    assert_eq!(items[1]["status"]["canary"]["weight"], 20);

    // get: one row, or the object; status: the text.
    let row = plugin(kc, &["get", "scorer"]).ok("get");
    assert_eq!(
        without_age(&row),
        [lines[0], lines[2]].map(|l| without_age(l).remove(0))
    );
    let yaml =
        plugin(kc, &["get", "scorer", "-o", "yaml", "--context", "team-b"]).ok("get -o yaml");
    let object: Value = serde_yaml::from_str(&yaml).unwrap();
    assert_eq!(object["metadata"]["namespace"], f.b.as_str());
    assert_eq!(object["status"]["stable"]["version"], "3.1.0");
    let status = plugin(kc, &["status", "scorer"]).ok("status");
    assert!(
        status.contains(&format!("Name:        {}/scorer", f.a)),
        "{status}"
    );
    assert!(status.contains("Phase:       Progressing"), "{status}");
    assert!(status.contains("step 1/2, weight 20%"), "{status}");
    let json_status: Value =
        serde_json::from_str(&plugin(kc, &["status", "scorer", "-o", "json"]).ok("status -o json"))
            .unwrap();
    assert_eq!(json_status["status"]["phase"], "Progressing");
}

#[tokio::test]
async fn bad_input_is_one_line_naming_the_flag_or_object_and_a_non_zero_exit() {
    let Some(cp) = control_plane() else { return };
    let f = fixture(cp, "cli-errors").await;
    let kc = f.kubeconfig.as_path();

    let missing = plugin(kc, &["status", "nosuch"]).one_line_error(1);
    assert_eq!(
        missing,
        format!(
            "error: ModelDeployment nosuch not found in namespace {}",
            f.a
        )
    );
    let missing = plugin(kc, &["get", "nosuch", "-o", "json", "-n", &f.b]).one_line_error(1);
    assert!(
        missing.contains("nosuch not found") && missing.contains(&f.b),
        "{missing}"
    );

    let format = plugin(kc, &["list", "-o", "xml"]).one_line_error(2);
    assert!(
        format.contains("'xml'") && format.contains("--output"),
        "{format}"
    );

    let unreachable = plugin(kc, &["--context", "nowhere", "list"]).one_line_error(1);
    assert!(
        unreachable.starts_with("error: cannot list ModelDeployments in namespace default: the cluster at https://127.0.0.1:1/ did not answer"),
        "{unreachable}"
    );

    let context = plugin(kc, &["--context", "staging", "list"]).one_line_error(1);
    assert_eq!(
        context,
        "error: --context staging: no such context in the kubeconfig (it has: team-a, team-b, nowhere)"
    );

    let file = kc.with_file_name("absent.yaml");
    let file_error =
        plugin(kc, &["list", "--kubeconfig", file.to_str().unwrap()]).one_line_error(1);
    assert!(
        file_error.starts_with("error: --kubeconfig ") && file_error.contains("absent.yaml"),
        "{file_error}"
    );
}

/// The plugin's stdout and stderr lines as they come.
struct Lines {
    child: Child,
    stdout: Receiver<String>,
    stderr: Receiver<String>,
    seen: String,
}

fn spawn(kubeconfig: &Path, args: &[&str]) -> Lines {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kubectl-modeldeploy"));
    cmd.args(args)
        .env("KUBECONFIG", kubeconfig)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = die_with_parent(&mut cmd)
        .spawn()
        .expect("the plugin starts");
    let forward = |pipe: Box<dyn std::io::Read + Send>| {
        let (tx, rx) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        rx
    };
    let stdout = forward(Box::new(child.stdout.take().unwrap()));
    let stderr = forward(Box::new(child.stderr.take().unwrap()));
    Lines {
        child,
        stdout,
        stderr,
        seen: String::new(),
    }
}

impl Lines {
    /// Waits for a stdout line containing `text`.
    fn expect(&mut self, text: &str) {
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            if let Ok(line) = self.stdout.recv_timeout(Duration::from_millis(200)) {
                self.seen.push_str(&line);
                self.seen.push('\n');
                if line.contains(text) {
                    return;
                }
            }
        }
        let stderr: Vec<String> = self.stderr.try_iter().collect();
        panic!(
            "no line with {text:?} in:\n{}\nstderr:\n{}",
            self.seen,
            stderr.join("\n")
        );
    }

    /// Waits for the exit; returns its code and stderr.
    fn exit(mut self, within: Duration) -> (Option<i32>, String) {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                // Its reader ends at the pipe's end, once every line is in.
                let mut stderr = Vec::new();
                while let Ok(line) = self
                    .stderr
                    .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                {
                    stderr.push(line);
                }
                return (status.code(), stderr.join("\n"));
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!(
                    "the plugin did not exit within {within:?}; stdout:\n{}",
                    self.seen
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

#[tokio::test]
async fn status_watch_prints_each_change_and_ends_when_the_object_is_deleted() {
    let Some(cp) = control_plane() else { return };
    let f = fixture(cp, "cli-watch").await;
    let client = cp.admin().await;

    let mut watch = spawn(&f.kubeconfig, &["status", "scorer", "--watch"]);
    watch.expect("Phase:       Progressing");
    watch.expect("step 1/2, weight 20%");
    set_status(&client, &f.a, "scorer", progressing(50, 2)).await;
    watch.expect("step 2/2, weight 50%");
    set_status(&client, &f.a, "scorer", json!({"phase": "Paused"})).await;
    watch.expect("Phase:       Paused");
    Api::<ModelDeployment>::namespaced(client.clone(), &f.a)
        .delete("scorer", &DeleteParams::default())
        .await
        .unwrap();
    let (code, stderr) = watch.exit(WAIT);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stderr.contains(&format!("ModelDeployment {}/scorer was deleted", f.a)),
        "{stderr}"
    );

    // -o yaml: the whole object again on a change, as a new document.
    let mut yaml = spawn(&f.kubeconfig, &["status", "ranker", "-w", "-o", "yaml"]);
    yaml.expect("phase: Stable");
    set_status(&client, &f.a, "ranker", json!({"phase": "Failed"})).await;
    yaml.expect("---");
    yaml.expect("phase: Failed");

    // --timeout ends a watch that sees no change.
    let started = Instant::now();
    let quiet = spawn(
        &f.kubeconfig,
        &["status", "scorer", "-w", "--timeout", "2s", "-n", &f.b],
    );
    let (code, stderr) = quiet.exit(WAIT);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(started.elapsed() >= Duration::from_secs(2));

    // Ctrl-C ends it too, quietly.
    let mut interrupted = spawn(&f.kubeconfig, &["status", "scorer", "-w", "-n", &f.b]);
    interrupted.expect("Phase:       Stable");
    // SAFETY: a plain signal to our own child.
    unsafe { libc::kill(interrupted.child.id() as i32, libc::SIGINT) };
    let (code, stderr) = interrupted.exit(WAIT);
    assert_eq!(code, Some(0), "{stderr}");
    drop(yaml);
}

impl Drop for Lines {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn a_request_waits_for_the_operator_by_watching_its_status() {
    let Some(cp) = control_plane() else { return };
    let f = fixture(cp, "cli-request").await;
    let client = cp.admin().await;
    let api: Api<ModelDeployment> = Api::namespaced(client.clone(), &f.a);

    let mut rollback = spawn(&f.kubeconfig, &["rollback", "ranker", "--to-revision", "7"]);
    // Play the operator: record the request the plugin sent as carried out.
    let id = poll("the request annotation", WAIT, || async {
        let md = api.get("ranker").await.ok()?;
        let annotation = md
            .metadata
            .annotations?
            .get("modeldeploy.io/request")?
            .clone();
        let request: Value = serde_json::from_str(&annotation).ok()?;
        assert_eq!(request["action"], "rollbackTo");
        assert_eq!(request["revision"], 7);
        request["id"].as_str().map(str::to_string)
    })
    .await;
    set_status(
        &client,
        &f.a,
        "ranker",
        json!({"lastRequest": id, "phase": "RolledBack"}),
    )
    .await;
    rollback.expect("Phase:       RolledBack");
    let (code, stderr) = rollback.exit(WAIT);
    assert_eq!(code, Some(0), "{stderr}");

    // A request that cannot apply is refused before anything is sent.
    let refused = plugin(&f.kubeconfig, &["pause", "ranker"]).one_line_error(1);
    assert_eq!(refused, "error: ranker: no rollout is in progress");
    let md = api.get("ranker").await.unwrap();
    let annotation = &md.metadata.annotations.unwrap()["modeldeploy.io/request"];
    assert!(annotation.contains(&id), "{annotation}");
}
