//! End-to-end scenarios against the cluster of the current kubeconfig (kind
//! by `e2e/run.sh`, or any other real cluster with the operator installed).
//! Ignored by default: `cargo test --test e2e -- --ignored`. The image under
//! test comes from `E2E_IMAGE` and must hold `modeldeploy-demo`.

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use modeldeploy::api::ModelDeployment;
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(300);

fn image() -> String {
    std::env::var("E2E_IMAGE").unwrap_or_else(|_| "modeldeploy:e2e".into())
}

async fn client_and_namespace(name: &str) -> Option<(kube::Client, String)> {
    let client = match kube::Client::try_default().await {
        Ok(c) => c,
        Err(e) => {
            println!("SKIPPED: no cluster reachable ({e})");
            return None;
        }
    };
    let ns = api_namespace(name);
    let api: Api<Namespace> = Api::all(client.clone());
    let _ = api.delete(&ns, &DeleteParams::default()).await;
    for _ in 0..60 {
        if api.get_opt(&ns).await.ok().flatten().is_none() {
            break;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let namespace: Namespace = serde_json::from_value(json!({"metadata": {"name": ns}})).unwrap();
    api.create(&PostParams::default(), &namespace)
        .await
        .expect("namespace");
    Some((client, ns))
}

/// A demo model server as the model, with its own load generator as a sidecar
/// so traffic reaches every revision.
fn manifest(name: &str, version: &str, args: &[&str], rollout: Value) -> ModelDeployment {
    let mut serve = vec!["serve".to_string(), format!("--model-version={version}")];
    serve.extend(args.iter().map(|a| a.to_string()));
    serde_json::from_value(json!({
        "apiVersion": "modeldeploy.io/v1alpha1", "kind": "ModelDeployment",
        "metadata": {"name": name},
        "spec": {
            "model": {"version": version, "image": image(), "port": 8080,
                      "command": ["/usr/local/bin/modeldeploy-demo"], "args": serve},
            "replicas": 2,
            "resources": {"requests": {"cpu": "50m", "memory": "32Mi"}, "limits": {"cpu": "500m", "memory": "128Mi"}},
            "template": {"readinessProbe": {"httpGet": {"path": "/healthz", "port": 8080}, "periodSeconds": 2}},
            "rollout": rollout
        }
    }))
    .unwrap()
}

async fn wait_for(
    api: &Api<ModelDeployment>,
    name: &str,
    what: &str,
    check: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Ok(md) = api.get(name).await {
            let status = serde_json::to_value(&md.status).unwrap_or(Value::Null);
            if check(&status) {
                return status;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// Steady traffic from inside the cluster to the model Service.
async fn start_load(client: &kube::Client, ns: &str, service: &str) {
    let load: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "load"},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "load"}},
            "template": {"metadata": {"labels": {"app": "load"}}, "spec": {"containers": [{
                "name": "load", "image": image(), "command": ["/usr/local/bin/modeldeploy-demo"],
                "args": ["load", format!("--target=http://{service}:8080"), "--rps=40"]
            }]}}}
    }))
    .unwrap();
    let api: Api<Deployment> = Api::namespaced(client.clone(), ns);
    api.create(&PostParams::default(), &load)
        .await
        .expect("load generator");
}

#[tokio::test]
#[ignore = "needs a cluster with the operator installed: e2e/run.sh"]
async fn first_deployment_becomes_ready_with_its_limits() {
    let Some((client, ns)) = client_and_namespace("first").await else {
        return;
    };
    let api: Api<ModelDeployment> = Api::namespaced(client.clone(), &ns);
    let mut md = manifest("scorer", "1.0.0", &[], Value::Null);
    md.spec.rollout = None;
    api.create(&PostParams::default(), &md).await.unwrap();
    wait_for(&api, "scorer", "Stable", |s| s["phase"] == "Stable").await;
    let deployments: Api<Deployment> = Api::namespaced(client, &ns);
    let list = deployments
        .list(&ListParams::default().labels("modeldeploy.io/name=scorer"))
        .await
        .unwrap();
    let limits = list.items[0]
        .spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap()
        .containers[0]
        .resources
        .as_ref()
        .unwrap()
        .limits
        .clone()
        .unwrap();
    assert_eq!(limits["memory"].0, "128Mi");
}

/// Version 1 stable under load, then version 2 (with `bad_args`) rolling out
/// by `steps`.
async fn start_canary(
    name: &str,
    bad_args: &[&str],
    steps: Value,
) -> Option<(kube::Client, Api<ModelDeployment>)> {
    let (client, ns) = client_and_namespace(name).await?;
    let api: Api<ModelDeployment> = Api::namespaced(client.clone(), &ns);
    let rollout = json!({
        "strategy": "canary",
        "steps": steps,
        "analysis": {"interval": "10s", "minSamples": 100, "failureLimit": 2,
            "checks": [{"name": "errors", "errorRate": {"max": 0.01}},
                       {"name": "outputs", "predictionDrift": {"method": "js", "max": 0.1}}]}
    });
    api.create(
        &PostParams::default(),
        &manifest(name, "1.0.0", &[], rollout.clone()),
    )
    .await
    .unwrap();
    start_load(&client, &ns, name).await;
    wait_for(&api, name, "v1 stable", |s| s["phase"] == "Stable").await;
    let mut args = vec!["serve".to_string(), "--model-version=2.0.0".to_string()];
    args.extend(bad_args.iter().map(|a| a.to_string()));
    api.patch(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"model": {"version": "2.0.0", "args": args}}})),
    )
    .await
    .unwrap();
    Some((client, api))
}

/// Until every Ready pod of `name` runs `version`: its label, its
/// `--model-version` argument, and none of `bad_args` (what the pods run,
/// not only what status says).
async fn serving_pods_run(
    client: &kube::Client,
    ns: &str,
    name: &str,
    version: &str,
    bad_args: &[&str],
) {
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(client.clone(), ns);
    let selector = format!("modeldeploy.io/name={name}");
    let want = format!("--model-version={version}");
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let list = pods
            .list(&ListParams::default().labels(&selector))
            .await
            .unwrap();
        let ready: Vec<_> = list
            .items
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .filter(|p| {
                p.status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
            })
            .collect();
        let wrong: Vec<String> = ready
            .iter()
            .filter(|p| {
                let labelled = p
                    .metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get("modeldeploy.io/version"));
                let args = p
                    .spec
                    .as_ref()
                    .and_then(|s| s.containers.iter().find(|c| c.name == "model"))
                    .and_then(|c| c.args.clone())
                    .unwrap_or_default();
                labelled.map(String::as_str) != Some(version)
                    || !args.contains(&want)
                    || bad_args.iter().any(|b| args.iter().any(|a| a == b))
            })
            .filter_map(|p| p.metadata.name.clone())
            .collect();
        if !ready.is_empty() && wrong.is_empty() {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "pods serving something other than {version}: {wrong:?}"
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

async fn rollout_end(api: &Api<ModelDeployment>, name: &str) -> Value {
    wait_for(api, name, "the rollout to end", |s| {
        s["phase"] == "RolledBack" || (s["phase"] == "Stable" && s["stable"]["version"] == "2.0.0")
    })
    .await
}

async fn canary_story(name: &str, bad_args: &[&str]) -> Option<Value> {
    let steps = json!([{"setWeight": 50}, {"analysis": {"passes": 3}}]);
    let (client, api) = start_canary(name, bad_args, steps).await?;
    let s = rollout_end(&api, name).await;
    // Promoted: v2's pods serve; rolled back: v1's, without the bad switches.
    let version = s["stable"]["version"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let ns = api_namespace(name);
    let forbidden: &[&str] = if version == "1.0.0" { bad_args } else { &[] };
    serving_pods_run(&client, &ns, name, &version, forbidden).await;
    Some(s)
}

fn api_namespace(name: &str) -> String {
    format!("e2e-{name}")
}

#[tokio::test]
#[ignore = "needs a cluster with the operator installed: e2e/run.sh"]
async fn a_good_canary_is_promoted() {
    let Some(s) = canary_story("good", &[]).await else {
        return;
    };
    assert_eq!(s["phase"], "Stable", "{s}");
}

#[tokio::test]
#[ignore = "needs a cluster with the operator installed: e2e/run.sh"]
async fn a_canary_with_errors_is_rolled_back() {
    let Some(s) = canary_story("errors", &["--error-rate=0.2"]).await else {
        return;
    };
    assert_eq!(s["phase"], "RolledBack", "{s}");
    assert_eq!(s["stable"]["version"], "1.0.0");
}

#[tokio::test]
#[ignore = "needs a cluster with the operator installed: e2e/run.sh"]
async fn a_canary_with_drifted_predictions_is_rolled_back() {
    let Some(s) = canary_story("drift", &["--prediction-shift=2.5"]).await else {
        return;
    };
    assert_eq!(s["phase"], "RolledBack", "{s}");
}

#[tokio::test]
#[ignore = "needs a cluster with the operator installed: e2e/run.sh"]
async fn an_operator_killed_mid_rollout_finishes_it_once() {
    let steps = json!([
        {"setWeight": 25}, {"pause": {"duration": "40s"}},
        {"setWeight": 50}, {"analysis": {"passes": 2}}
    ]);
    let Some((client, api)) = start_canary("restart", &[], steps).await else {
        return;
    };
    wait_for(&api, "restart", "the canary taking traffic", |s| {
        s["canary"]["weight"].as_i64().unwrap_or(0) > 0
    })
    .await;
    // Every operator pod at once: the Deployment brings new ones, which must
    // pick the rollout up from status alone.
    let namespace =
        std::env::var("E2E_OPERATOR_NAMESPACE").unwrap_or_else(|_| "modeldeploy-system".into());
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(client, &namespace);
    let killed = pods
        .delete_collection(
            &DeleteParams::default().grace_period(0),
            &ListParams::default().labels("app.kubernetes.io/name=modeldeploy"),
        )
        .await
        .expect("deleting the operator pods");
    assert!(
        killed.left().is_some_and(|l| !l.items.is_empty()),
        "no operator pods found in {namespace}"
    );
    let s = rollout_end(&api, "restart").await;
    assert_eq!(s["phase"], "Stable", "{s}");
    let history = s["history"].as_array().unwrap();
    let promotions = history
        .iter()
        .filter(|h| h["revision"] == 2 && h["outcome"] == "Promoted")
        .count();
    assert_eq!(promotions, 1, "promoted once: {s}");
    assert!(history.iter().all(|h| h["outcome"] != "RolledBack"), "{s}");
}
