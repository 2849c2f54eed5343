//! Gate stories on a real API server: the real CRD, the Deployment, ReplicaSet
//! and Job controllers of kube-controller-manager, the operator binary under
//! the chart's RBAC plus the Jobs rule gates need, and the test kubelet
//! running model pods and gate Job pods as processes. Every story asserts
//! what runs (pods of each version, the gate's Job and its pod's env), not
//! only what `status` says.

mod support;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::StatusCode;
use k8s_openapi::api::batch::v1::Job;
use kube::api::{Api, Patch, PatchParams, PostParams};
use modeldeploy::api::ModelDeployment;
use serde_json::{Value, json};
use support::envtest::{ControlPlane, control_plane};
use support::kubelet::RunningPod;
use support::real_operator::{OperatorOptions, RealOperator};

/// Generous: CI machines are loaded. Nothing asserts on speed.
const WAIT: Duration = Duration::from_secs(180);
const DEMO: &str = "/usr/local/bin/modeldeploy-demo";

/// A namespace watched by the operator binary, which may also make gate Jobs
/// there and read their pods' logs.
struct Stage {
    cp: &'static ControlPlane,
    ns: String,
    op: RealOperator,
    api: Api<ModelDeployment>,
}

impl Stage {
    async fn new(prefix: &str, args: Vec<String>) -> Option<Stage> {
        let cp = control_plane()?;
        cp.install_crds().await;
        let ns = cp.namespace(prefix).await;
        let mut options = OperatorOptions::watching(&[&ns]);
        options.args = args;
        let op = RealOperator::start(cp, options).await?;
        op.wait_ready(WAIT).await;
        let api = Api::namespaced(cp.admin().await, &ns);
        Some(Stage { cp, ns, op, api })
    }

    /// `name` at v1 (stable, pods up), then the spec names v2.
    async fn release_v2(&self, name: &str, gates: Value) {
        self.stable_v1(name, gates).await;
        self.api
            .patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"model": model("2.0.0")}})),
            )
            .await
            .unwrap();
    }

    /// `name` at v1, stable with its pods up.
    async fn stable_v1(&self, name: &str, gates: Value) {
        let md: ModelDeployment = serde_json::from_value(json!({
            "apiVersion": "modeldeploy.io/v1alpha1",
            "kind": "ModelDeployment",
            "metadata": {"name": name, "namespace": self.ns},
            "spec": {
                "model": model("1.0.0"),
                "replicas": 2,
                "resources": {"requests": {"cpu": "100m", "memory": "64Mi"},
                              "limits": {"cpu": "1", "memory": "256Mi"}},
                "rollout": {
                    "steps": [{"setWeight": 50}],
                    "scaleDownDelay": "1s",
                    "progressDeadline": "2m",
                    "analysis": {"interval": "2s"},
                    "gates": gates,
                },
            }
        }))
        .unwrap();
        self.api.create(&PostParams::default(), &md).await.unwrap();
        self.until(name, "v1 stable", |s| s["phase"] == "Stable")
            .await;
        self.until_serving(name, "1.0.0").await;
    }

    async fn status(&self, name: &str) -> Value {
        let md = self.api.get(name).await.unwrap();
        serde_json::to_value(md.status.unwrap_or_default()).unwrap()
    }

    async fn until(&self, name: &str, what: &str, check: impl Fn(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let s = self.status(name).await;
            if check(&s) {
                return s;
            }
            if tokio::time::Instant::now() >= deadline {
                self.op.print_log_tail(60);
                panic!("{name}: timed out waiting for {what}; status: {s:#}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The model's Ready pods with a process, by version.
    fn serving(&self, name: &str) -> BTreeMap<String, usize> {
        let mut out = BTreeMap::new();
        for p in self.model_pods(name).into_iter().filter(|p| p.ready) {
            *out.entry(p.env["MODEL_VERSION"].clone()).or_default() += 1;
        }
        out
    }

    fn model_pods(&self, name: &str) -> Vec<RunningPod> {
        self.cp
            .kubelet()
            .running(&self.ns)
            .into_iter()
            .filter(|p| !p.status_only)
            .filter(|p| p.labels.get("modeldeploy.io/name").map(String::as_str) == Some(name))
            .collect()
    }

    /// Waits until exactly `replicas` pods of `version` serve `name`, and
    /// nothing else.
    async fn until_serving(&self, name: &str, version: &str) {
        let want = BTreeMap::from([(version.to_string(), 2)]);
        support::envtest::poll(&format!("{name}: only {version} serving"), WAIT, || {
            let done = self.serving(name) == want;
            async move { done.then_some(()) }
        })
        .await;
    }

    /// The gate's Job (from the admin's view).
    async fn job(&self, name: &str) -> Option<Job> {
        let jobs: Api<Job> = Api::namespaced(self.cp.admin().await, &self.ns);
        jobs.get_opt(name).await.unwrap()
    }

    /// The process env of the gate Job's pod.
    fn job_pod_env(&self, job: &str) -> Option<BTreeMap<String, String>> {
        let pod = self
            .cp
            .kubelet()
            .pods(&self.ns)
            .into_iter()
            .find(|p| p.labels.get("job-name").map(String::as_str) == Some(job))?;
        let launches = self.cp.kubelet().launches(&self.ns, &pod.name);
        launches.first().map(|l| l.env.clone())
    }
}

fn model(version: &str) -> Value {
    json!({
        "version": version,
        "image": format!("modeldeploy-demo:{version}"),
        "command": [DEMO],
        "args": ["serve"],
        "port": 8080,
    })
}

/// A job gate running the demo binary with `args` (the test kubelet runs
/// it as a process; its exit code decides the Job).
fn job_gate(args: &[&str]) -> Value {
    json!({"job": {"activeDeadlineSeconds": 120, "template": {"spec": {
        "containers": [{"name": "gate", "image": "modeldeploy-demo:gate",
                        "command": [DEMO], "args": args}]}}}})
}

fn history_reason(s: &Value) -> String {
    s["history"]
        .as_array()
        .and_then(|h| h.last())
        .map(|h| h["reason"].as_str().unwrap_or_default().to_string())
        .unwrap_or_default()
}

fn hash_of(s: &Value, key: &str) -> String {
    s[key]["hash"].as_str().unwrap_or_default().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pre_promotion_jobs_decide_promotion_or_rollback() {
    let Some(stage) = Stage::new("gates-job", vec![]).await else {
        return;
    };
    // Exits 1 with a message on stderr: the Job fails.
    let failing = job_gate(&["serve", "--error-rate", "2"]);
    let passing = job_gate(&["--version"]);
    tokio::join!(
        stage.release_v2("bad", json!({"prePromotion": failing})),
        stage.release_v2("good", json!({"prePromotion": passing})),
    );

    let s = stage
        .until("bad", "rolled back by its gate", |s| {
            s["phase"] == "RolledBack"
        })
        .await;
    let reason = history_reason(&s);
    let bad_hash = s["rolledBack"]["hash"].as_str().unwrap().to_string();
    let bad_job = format!("bad-{bad_hash}-pre-promote");
    assert!(
        reason.contains("prePromotion gate failed") && reason.contains(&bad_job),
        "{reason}"
    );
    eprintln!("bad: rolled back because {reason}");
    stage.until_serving("bad", "1.0.0").await;
    let job = stage.job(&bad_job).await.expect("the failed Job is kept");
    assert_eq!(
        job.metadata.owner_references.as_ref().unwrap()[0].kind,
        "ModelDeployment"
    );
    // `kubectl modeldeploy retry` runs the gate again, with a new Job.
    stage
        .api
        .patch(
            "bad",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {
                "modeldeploy.io/request": r#"{"id":"retry-1","action":"retry"}"#}}})),
        )
        .await
        .unwrap();
    stage
        .until("bad", "rolled back again after the retry", |s| {
            s["history"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|h| h["outcome"] == "RolledBack")
                .count()
                == 2
        })
        .await;
    let again = stage.job(&bad_job).await.expect("the retry's Job");
    assert_ne!(
        again.metadata.uid, job.metadata.uid,
        "a new Job for the retry"
    );
    stage.until_serving("bad", "1.0.0").await;

    let s = stage
        .until("good", "promoted after its gate", |s| {
            s["phase"] == "Stable" && s["stable"]["version"] == "2.0.0"
        })
        .await;
    stage.until_serving("good", "2.0.0").await;
    let good_job = format!("good-{}-pre-promote", hash_of(&s, "stable"));
    let job = stage.job(&good_job).await.expect("the gate's Job");
    let succeeded = job.status.and_then(|st| st.succeeded).unwrap_or(0);
    assert_eq!(succeeded, 1);
    let env = stage.job_pod_env(&good_job).expect("the Job's pod ran");
    assert_eq!(env["MODEL_VERSION"], "2.0.0");
    assert_eq!(env["REVISION"], "2");
    assert_eq!(env["MODEL_SERVICE"], "good");
    assert_eq!(env["GATE"], "prePromotion");

    // Gate Jobs go with their revision: keep one old revision, release two
    // more, and revision 2 (with its Job) is pruned.
    for version in ["3.0.0", "4.0.0"] {
        stage
            .api
            .patch(
                "good",
                &PatchParams::default(),
                &Patch::Merge(
                    json!({"spec": {"revisionHistoryLimit": 1, "model": model(version)}}),
                ),
            )
            .await
            .unwrap();
        stage
            .until("good", &format!("{version} promoted"), |s| {
                s["phase"] == "Stable" && s["stable"]["version"] == version
            })
            .await;
    }
    support::envtest::poll("revision 2's gate Job deleted", WAIT, || async {
        stage.job(&good_job).await.is_none().then_some(())
    })
    .await;
    let s = stage.status("good").await;
    let newest = format!("good-{}-pre-promote", hash_of(&s, "stable"));
    assert!(
        stage.job(&newest).await.is_some(),
        "the serving revision keeps its Job"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pre_rollout_job_holds_traffic_until_it_succeeds() {
    let Some(stage) = Stage::new("gates-pre", vec![]).await else {
        return;
    };
    // Runs about 10 s, then exits 0.
    let slow = job_gate(&[
        "load",
        "--target",
        "http://127.0.0.1:1",
        "--rps",
        "1",
        "--duration-seconds",
        "10",
        "--feedback",
        "false",
    ]);
    stage
        .release_v2("scorer", json!({"preRollout": slow}))
        .await;
    let s = stage
        .until("scorer", "the preRollout gate running", |s| {
            s["canary"]["gates"][0]["phase"] == "Running"
        })
        .await;
    let job = format!("scorer-{}-pre-rollout", hash_of(&s, "canary"));
    assert!(
        s["message"]
            .as_str()
            .unwrap()
            .contains("before it gets any traffic"),
        "{s:#}"
    );
    let made = stage.job(&job).await;
    let uid = match made {
        Some(j) => j.metadata.uid,
        None => {
            support::envtest::poll("the gate's Job", WAIT, || async {
                stage.job(&job).await.map(|j| j.metadata.uid)
            })
            .await
        }
    };
    // A restarted operator finds the Job it made instead of making another.
    stage.op.restart();
    stage.op.wait_ready(WAIT).await;
    // Until the Job completes: no pod of v2, no weight.
    let mut looked = 0;
    loop {
        let complete = stage
            .job(&job)
            .await
            .and_then(|j| j.status)
            .and_then(|st| st.succeeded)
            .unwrap_or(0)
            > 0;
        if complete {
            break;
        }
        let s = stage.status("scorer").await;
        assert_eq!(s["canary"]["weight"], 0, "{s:#}");
        let v2 = stage
            .model_pods("scorer")
            .iter()
            .filter(|p| p.env.get("MODEL_VERSION").map(String::as_str) == Some("2.0.0"))
            .count();
        assert_eq!(v2, 0, "a v2 pod ran before the gate passed");
        looked += 1;
        assert!(looked < 900, "the gate's Job never completed");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(looked > 5, "the gate held for a while ({looked} looks)");
    let jobs: Api<Job> = Api::namespaced(stage.cp.admin().await, &stage.ns);
    let all = jobs.list(&Default::default()).await.unwrap().items;
    assert_eq!(all.len(), 1, "one Job for the gate");
    assert_eq!(all[0].metadata.uid, uid, "the same Job after the restart");
    let env = stage.job_pod_env(&job).expect("the Job's pod ran");
    assert_eq!(env["GATE"], "preRollout");
    stage
        .until("scorer", "promoted after the gate", |s| {
            s["phase"] == "Stable" && s["stable"]["version"] == "2.0.0"
        })
        .await;
    stage.until_serving("scorer", "2.0.0").await;
}

/// A webhook receiver on loopback answering `code` after `delay`, keeping
/// what it is sent.
async fn receiver(code: StatusCode, delay: Duration) -> (String, Arc<Mutex<Vec<Value>>>) {
    let got = Arc::new(Mutex::new(Vec::new()));
    let kept = got.clone();
    let app = axum::Router::new().route(
        "/gate",
        axum::routing::post(move |axum::Json(body): axum::Json<Value>| {
            let kept = kept.clone();
            async move {
                kept.lock().unwrap().push(body);
                tokio::time::sleep(delay).await;
                code
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/gate", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (url, got)
}

fn webhook(url: &str, extra: Value) -> Value {
    let mut hook = json!({"url": url, "timeout": "1s", "retries": 1});
    support::merge(&mut hook, extra);
    json!({"webhook": hook})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_gates_pass_on_2xx_and_roll_back_otherwise() {
    let (ok, ok_got) = receiver(StatusCode::OK, Duration::ZERO).await;
    let (fail, fail_got) = receiver(StatusCode::INTERNAL_SERVER_ERROR, Duration::ZERO).await;
    let (slow, _) = receiver(StatusCode::OK, Duration::from_secs(5)).await;
    let host = |url: &str| url.split('/').nth(2).unwrap().to_string();
    let allow = format!(
        "--webhook-allow={},{},{}",
        host(&ok),
        host(&fail),
        host(&slow)
    );
    let Some(stage) = Stage::new("gates-hook", vec![allow]).await else {
        return;
    };
    tokio::join!(
        stage.release_v2("pass", json!({"prePromotion": webhook(&ok, json!({}))})),
        stage.release_v2("fail", json!({"preRollout": webhook(&fail, json!({}))})),
        stage.release_v2("slow", json!({"preRollout": webhook(&slow, json!({}))})),
    );
    stage
        .until("pass", "promoted", |s| {
            s["phase"] == "Stable" && s["stable"]["version"] == "2.0.0"
        })
        .await;
    let sent = ok_got.lock().unwrap().clone();
    let body = sent.iter().find(|b| b["name"] == "pass").expect("called");
    assert_eq!(body["gate"], "prePromotion");
    assert_eq!(body["version"], "2.0.0");
    assert_eq!(body["revision"], 2);
    assert_eq!(body["namespace"], stage.ns.as_str());

    let s = stage
        .until("fail", "rolled back", |s| s["phase"] == "RolledBack")
        .await;
    assert!(history_reason(&s).contains("500"), "{s:#}");
    assert_eq!(fail_got.lock().unwrap().len(), 2, "one call and one retry");
    stage.until_serving("fail", "1.0.0").await;

    let s = stage
        .until("slow", "rolled back", |s| s["phase"] == "RolledBack")
        .await;
    assert!(
        history_reason(&s).contains("did not answer within 1s"),
        "{s:#}"
    );
    stage.until_serving("slow", "1.0.0").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_host_that_is_not_allowed_is_an_invalid_spec() {
    let Some(stage) = Stage::new("gates-deny", vec!["--webhook-allow=*.example.com".into()]).await
    else {
        return;
    };
    stage.stable_v1("denied", json!({})).await;
    // A metadata address: exactly what a spec must never make the operator call.
    stage
        .api
        .patch(
            "denied",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"spec": {"model": model("2.0.0"), "rollout": {"gates": {
                "preRollout": {"webhook": {"url": "http://169.254.169.254/latest"}}}}}}),
            ),
        )
        .await
        .unwrap();
    let s = stage
        .until("denied", "refused", |s| {
            s["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["type"] == "Ready" && c["reason"] == "InvalidSpec")
        })
        .await;
    let ready = s["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Ready")
        .unwrap();
    let message = ready["message"].as_str().unwrap();
    assert!(
        message.contains("spec.rollout.gates.preRollout.webhook.url")
            && message.contains("--webhook-allow"),
        "{message}"
    );
    // Whatever ran keeps running, and v2 never started.
    assert_eq!(
        stage.serving("denied"),
        BTreeMap::from([("1.0.0".to_string(), 2)])
    );
    assert!(s.get("canary").is_none_or(|c| c.is_null()), "{s:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gate_shapes_are_refused_at_admission() {
    let Some(cp) = control_plane() else { return };
    cp.install_crds().await;
    let ns = cp.namespace("gates-cel").await;
    let api: Api<ModelDeployment> = Api::namespaced(cp.admin().await, &ns);
    let job = job_gate(&["--version"])["job"].clone();
    for (name, gate, expected) in [
        (
            "both",
            json!({"job": job, "webhook": {"url": "http://a.example/x"}}),
            "each gate sets exactly one of job or webhook",
        ),
        (
            "neither",
            json!({}),
            "each gate sets exactly one of job or webhook",
        ),
        (
            "scheme",
            json!({"webhook": {"url": "ftp://a.example/x"}}),
            "must start with http:// or https://",
        ),
        (
            "timeout",
            json!({"webhook": {"url": "http://a.example/x", "timeout": "soon"}}),
            "must be a duration",
        ),
    ] {
        let md: ModelDeployment = serde_json::from_value(json!({
            "apiVersion": "modeldeploy.io/v1alpha1",
            "kind": "ModelDeployment",
            "metadata": {"name": name, "namespace": ns},
            "spec": {
                "model": model("1.0.0"),
                "resources": {"requests": {"cpu": "100m"}, "limits": {"cpu": "1"}},
                "rollout": {"steps": [{"setWeight": 50}], "gates": {"preRollout": gate}},
            }
        }))
        .unwrap();
        match api.create(&PostParams::default(), &md).await {
            Err(kube::Error::Api(s)) => {
                assert_eq!(s.code, 422, "{name}: {}", s.message);
                assert!(s.message.contains(expected), "{name}: {}", s.message);
            }
            other => panic!("{name}: the API server accepted it: {other:?}"),
        }
    }
}
