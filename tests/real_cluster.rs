//! The real-API-server tier proves its harness: a real kube-apiserver and
//! kube-controller-manager (envtest convention), the test-side kubelet
//! running the demo server as processes, and the operator binary under the
//! chart's RBAC. Skips with one line where the binaries are missing
//! (`bash .ci/install-deps`; CI sets MODELDEPLOY_REQUIRE_TOOLS=1 and fails
//! instead).

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use modeldeploy::api::ModelDeployment;
use serde_json::json;
use support::envtest::{control_plane, poll};
use support::kubelet::LoadOptions;
use support::real_operator::{OperatorOptions, RealOperator, install_chart_rbac};

const WAIT: Duration = Duration::from_secs(60);

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// A process exists (and is not a zombie we still hold).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|s| !s.split(") ").nth(1).is_some_and(|r| r.starts_with('Z')))
}

#[tokio::test]
async fn the_crd_installs_and_the_operator_runs_under_the_charts_rbac() {
    let started = Instant::now();
    let Some(cp) = control_plane() else { return };
    println!("control plane started in {}", cp.startup_report());
    cp.install_crds().await;
    let admin = cp.admin().await;
    let crd = Api::<CustomResourceDefinition>::all(admin.clone())
        .get("modeldeployments.modeldeploy.io")
        .await
        .unwrap();
    let established = crd.status.and_then(|s| s.conditions).is_some_and(|c| {
        c.iter()
            .any(|c| c.type_ == "Established" && c.status == "True")
    });
    assert!(established, "the CRD is Established");

    let ns = cp.namespace("rbac").await;
    let Some(rbac) = install_chart_rbac(cp, &OperatorOptions::watching(&[&ns])).await else {
        return;
    };
    let operator = cp.client_for(&rbac.namespace, &rbac.service_account).await;
    // Within its role: ModelDeployments of the watched namespace.
    Api::<ModelDeployment>::namespaced(operator.clone(), &ns)
        .list(&ListParams::default())
        .await
        .expect("the operator may list ModelDeployments where it watches");
    // Outside it: namespaces, and a namespace it does not watch.
    let err = Api::<Namespace>::all(operator.clone())
        .delete(&ns, &DeleteParams::default())
        .await
        .expect_err("the operator may not delete namespaces");
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 403),
        "{err}"
    );
    let err = Api::<ModelDeployment>::namespaced(operator, "default")
        .list(&ListParams::default())
        .await
        .expect_err("nor read outside the watched namespaces");
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 403),
        "{err}"
    );
    // The admin may, and the namespace controller finalizes the deletion.
    let spare = cp.namespace("spare").await;
    let namespaces = Api::<Namespace>::all(admin);
    let deleting = Instant::now();
    namespaces
        .delete(&spare, &DeleteParams::default())
        .await
        .expect("admin deletes namespaces");
    poll("the namespace gone", WAIT, || async {
        namespaces
            .get_opt(&spare)
            .await
            .ok()?
            .is_none()
            .then_some(())
    })
    .await;
    println!("namespace deleted in {:?}", deleting.elapsed());

    // The operator binary starts with that identity, is killed, restarts.
    let Some(op) = RealOperator::start(cp, OperatorOptions::watching(&[&ns])).await else {
        return;
    };
    op.wait_ready(WAIT).await;
    op.kill();
    assert!(!op.is_running());
    op.restart();
    op.wait_ready(WAIT).await;

    // The official kubectl reaches the API server with the admin kubeconfig.
    let Some(mut kubectl) = cp.kubectl() else {
        return;
    };
    let out = kubectl
        .args([
            "get",
            "crd",
            "modeldeployments.modeldeploy.io",
            "-o",
            "name",
        ])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "customresourcedefinition.apiextensions.k8s.io/modeldeployments.modeldeploy.io",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    println!("test took {:?}", started.elapsed());
}

#[tokio::test]
async fn a_deployment_of_demo_servers_runs_serves_scales_and_is_collected() {
    let started = Instant::now();
    let Some(cp) = control_plane() else { return };
    let ns = cp.namespace("demo").await;
    let admin = cp.admin().await;
    let kubelet = cp.kubelet();
    let selector = labels(&[("app", "scorer")]);
    let deployments: Api<Deployment> = Api::namespaced(admin.clone(), &ns);
    let deployment: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "scorer"},
        "spec": {
            "replicas": 3,
            "selector": {"matchLabels": selector},
            "template": {
                "metadata": {"labels": selector},
                "spec": {"containers": [{
                    "name": "model",
                    "image": "ghcr.io/modeldeploy/modeldeploy:0.1.0",
                    "command": ["/usr/local/bin/modeldeploy-demo"],
                    "args": ["serve"],
                    "ports": [{"name": "http", "containerPort": 8080}],
                    // Every pod answers with its own name as its version.
                    "env": [{"name": "MODEL_VERSION",
                             "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
                    "readinessProbe": {"tcpSocket": {"port": "http"}}
                }]}
            }
        }
    }))
    .unwrap();
    deployments
        .create(&PostParams::default(), &deployment)
        .await
        .unwrap();
    let available = |want: i32| {
        let deployments = deployments.clone();
        async move {
            let d = deployments.get("scorer").await.ok()?;
            let s = d.status?;
            (s.available_replicas.unwrap_or(0) == want
                && s.replicas.unwrap_or(0) == want
                && s.observed_generation == d.metadata.generation)
                .then_some(())
        }
    };
    poll("3 replicas available", WAIT, || available(3)).await;
    let pods = kubelet.running(&ns);
    assert_eq!(pods.len(), 3, "{pods:#?}");
    for p in &pods {
        assert!(p.ready && p.pid.is_some_and(alive), "{p:#?}");
        assert_eq!(p.argv, ["serve"]);
        assert_eq!(p.env["LISTEN"], format!("{}:8080", p.ip));
        assert_eq!(p.env["MODEL_VERSION"], p.name);
        assert!(p.ip.starts_with("127.") && p.ip != "127.0.0.1");
    }

    // Traffic as through a Service reaches every pod, each answering with
    // the version its environment names.
    let load = kubelet.load(&ns, &selector, 100.0).await;
    poll("answers from all 3 pods", WAIT, || {
        let n = load.stats().pods().len();
        async move { (n == 3).then_some(()) }
    })
    .await;
    let stats = load.stop();
    assert_eq!(stats.failed, 0, "{stats:#?}");
    for p in &pods {
        let versions: Vec<&String> = stats.answers[&p.name].keys().collect();
        assert_eq!(versions, [&p.env["MODEL_VERSION"]], "{stats:#?}");
    }

    // Scaling down stops the processes of the removed pods.
    deployments
        .patch(
            "scorer",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 1}})),
        )
        .await
        .unwrap();
    poll("1 replica available", WAIT, || available(1)).await;
    poll("2 processes stopped", WAIT, || {
        let stopped = pods.iter().filter(|p| !alive(p.pid.unwrap())).count();
        let running = kubelet.running(&ns).len();
        async move { (stopped == 2 && running == 1).then_some(()) }
    })
    .await;

    // Deleting the Deployment: the garbage collector removes its ReplicaSet
    // and pods; the last process stops.
    deployments
        .delete("scorer", &DeleteParams::background())
        .await
        .unwrap();
    poll("all processes stopped", WAIT, || {
        let none = kubelet.running(&ns).is_empty() && pods.iter().all(|p| !alive(p.pid.unwrap()));
        async move { none.then_some(()) }
    })
    .await;
    println!("test took {:?}", started.elapsed());
}

#[tokio::test]
async fn a_crashing_server_restarts_into_crash_loop_back_off() {
    let Some(cp) = control_plane() else { return };
    let ns = cp.namespace("crash").await;
    let pods: Api<Pod> = Api::namespaced(cp.admin().await, &ns);
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "crasher"},
        "spec": {"containers": [{
            "name": "model",
            "image": "ghcr.io/modeldeploy/modeldeploy-demo:0.1.0",
            "args": ["serve"],
            "env": [{"name": "CRASH_AFTER", "value": "0"}]
        }]}
    }))
    .unwrap();
    pods.create(&PostParams::default(), &pod).await.unwrap();
    let status = poll("2 restarts in CrashLoopBackOff", WAIT, || async {
        let p = pods.get("crasher").await.ok()?;
        let c = p.status?.container_statuses?.into_iter().next()?;
        let waiting = c.state.as_ref()?.waiting.as_ref()?.reason.clone();
        (c.restart_count >= 2 && waiting.as_deref() == Some("CrashLoopBackOff")).then_some(c)
    })
    .await;
    let last = status.last_state.unwrap().terminated.unwrap();
    assert_eq!((last.exit_code, last.reason.as_deref()), (3, Some("Error")));
    assert!(!status.ready);
    let seen = cp.kubelet().pod(&ns, "crasher").unwrap();
    assert!(seen.restarts >= 2 && !seen.ready, "{seen:#?}");
    assert!(cp.kubelet().launches(&ns, "crasher").len() >= 2);
    assert!(
        cp.kubelet()
            .logs(&ns, "crasher")
            .contains("crashing at start on purpose")
    );
}

#[tokio::test]
async fn a_job_pod_that_exits_zero_completes_the_job() {
    let Some(cp) = control_plane() else { return };
    let ns = cp.namespace("job").await;
    let jobs: Api<Job> = Api::namespaced(cp.admin().await, &ns);
    let job: Job = serde_json::from_value(json!({
        "metadata": {"name": "once"},
        "spec": {"backoffLimit": 0, "template": {"spec": {
            "restartPolicy": "Never",
            "containers": [{"name": "demo", "image": "ghcr.io/modeldeploy/modeldeploy:0.1.0",
                            "command": ["/usr/local/bin/modeldeploy-demo"], "args": ["--version"]}]
        }}}
    }))
    .unwrap();
    jobs.create(&PostParams::default(), &job).await.unwrap();
    poll("the Job Complete", WAIT, || async {
        let j = jobs.get("once").await.ok()?;
        j.status?
            .conditions?
            .iter()
            .any(|c| c.type_ == "Complete" && c.status == "True")
            .then_some(())
    })
    .await;
}

#[tokio::test]
async fn weighted_load_follows_the_httproute() {
    let Some(cp) = control_plane() else { return };
    if !cp.install_gateway_api().await {
        return;
    }
    let ns = cp.namespace("route").await;
    let mut yaml = String::new();
    for v in ["stable", "canary"] {
        yaml.push_str(&format!(
            "---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: {v}}}
spec:
  replicas: 1
  selector: {{matchLabels: {{variant: {v}}}}}
  template:
    metadata: {{labels: {{variant: {v}}}}}
    spec:
      containers:
      - {{name: model, image: ghcr.io/modeldeploy/modeldeploy-demo:0.1.0, args: [serve],
          env: [{{name: MODEL_VERSION, value: {v}}}]}}
---
apiVersion: v1
kind: Service
metadata: {{name: {v}}}
spec: {{selector: {{variant: {v}}}, ports: [{{port: 8080}}]}}
"
        ));
    }
    yaml.push_str(
        "---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: scorer}
spec:
  rules:
  - matches: [{headers: [{name: x-model-variant, value: b}]}]
    backendRefs: [{name: canary, port: 8080}]
  - backendRefs: [{name: stable, port: 8080, weight: 80}, {name: canary, port: 8080, weight: 20}]
",
    );
    support::envtest::apply_yaml(&cp.admin().await, &yaml, Some(&ns)).await;
    poll("both variants ready", WAIT, || {
        let n = cp.kubelet().running(&ns).iter().filter(|p| p.ready).count();
        async move { (n == 2).then_some(()) }
    })
    .await;
    let split = cp
        .kubelet()
        .load_weighted(&ns, "scorer", LoadOptions::rps(200.0))
        .await;
    let mut b = LoadOptions::rps(50.0);
    b.headers.insert("x-model-variant".into(), "b".into());
    let matched = cp.kubelet().load_weighted(&ns, "scorer", b).await;
    // Enough answers for the share to mean something, however slow the machine.
    poll("answers through both rules", WAIT, || {
        let enough = split.stats().ok() >= 300 && matched.stats().ok() >= 20;
        async move { enough.then_some(()) }
    })
    .await;
    let (split, matched) = (split.stop(), matched.stop());
    let by = split.by_version();
    let canary = *by.get("canary").unwrap_or(&0) as f64 / split.ok().max(1) as f64;
    assert!(split.ok() > 100 && split.failed == 0, "{split:#?}");
    assert!(
        (0.1..0.32).contains(&canary),
        "canary share {canary}: {by:?}"
    );
    assert_eq!(matched.by_version().keys().collect::<Vec<_>>(), ["canary"]);
}
