//! `drift.reference.fromStable` end to end: the stable revision's input
//! distribution is captured into a ConfigMap the ModelDeployment owns, once
//! per revision, and a canary whose inputs moved is judged against it.

mod support;

use std::sync::Arc;
use std::time::Duration;

use kube::api::{Api, Patch, PatchParams, PostParams};
use modeldeploy::analysis::checks::Reference;
use modeldeploy::api::ModelDeployment;
use modeldeploy_demo::{self as demo, Behaviour};
use serde_json::json;
use support::fake_apiserver::FakeApiServer;
use support::story::{Member, WAIT, fleet_of, ip_by_version, status};
use support::{
    deployment_controller, eventually, free_port, model_deployment, pod_controller, start_operator,
};

fn version(v: &str) -> Behaviour {
    Behaviour {
        version: v.into(),
        ..Behaviour::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stable_distribution_is_captured_once_and_a_shifted_canary_is_rolled_back() {
    let port = free_port();
    let server = Arc::new(FakeApiServer::start().await);
    let _dc = deployment_controller(&server, |_| true);
    let _pc = pod_controller(&server, ip_by_version);
    // The canary's users send inputs one standard deviation higher.
    let canary = Member {
        feature_shift: 1.0,
        ..Member::new("127.0.0.3", version("2.0.0"))
    };
    let _fleet = fleet_of(port, &[Member::new("127.0.0.2", version("1.0.0")), canary]).await;
    let _op = start_operator(&server, "op", false);

    let manifest = model_deployment(
        "scorer",
        "1.0.0",
        json!({"spec": {
            "replicas": 2,
            "model": {"port": port},
            "drift": {"reference": {"fromStable": true}},
            "rollout": {
                "strategy": "canary",
                "steps": [{"setWeight": 50}, {"pause": {"duration": "30s"}}],
                "analysis": {
                    "interval": "1s", "failureLimit": 2, "minSamples": 100,
                    "checks": [{"name": "inputs", "inputDrift": {"method": "psi", "max": 0.2}}]
                }
            }
        }}),
    );
    let api: Api<ModelDeployment> = Api::namespaced(server.client(), "default");
    let md: ModelDeployment = serde_json::from_value(manifest).unwrap();
    api.create(&PostParams::default(), &md).await.unwrap();
    eventually("v1 stable", WAIT, || {
        (status(&server, "scorer")["phase"] == "Stable").then_some(())
    })
    .await;
    let stable_hash = status(&server, "scorer")["stable"]["hash"]
        .as_str()
        .unwrap()
        .to_string();

    // Captured once the stable has served minSamples inputs per feature.
    let cm = eventually("the captured reference", WAIT, || {
        server.get("configmaps", "default", "scorer-drift-reference")
    })
    .await;
    assert_eq!(
        cm["metadata"]["annotations"]["modeldeploy.io/captured-revision"],
        stable_hash.as_str()
    );
    let owner = &cm["metadata"]["ownerReferences"][0];
    assert_eq!(owner["kind"], "ModelDeployment");
    assert_eq!(owner["name"], "scorer");
    assert_eq!(owner["controller"], true);
    let reference = Reference::parse(cm["data"]["reference.json"].as_str().unwrap()).unwrap();
    assert_eq!(reference.features.len(), 4, "{reference:?}");
    for (name, histogram) in &reference.features {
        let finite: Vec<f64> = histogram
            .upper_bounds()
            .iter()
            .copied()
            .filter(|b| b.is_finite())
            .collect();
        assert_eq!(finite, demo::FEATURE_EDGES, "feature {name}");
        assert!(histogram.total() >= 100.0, "feature {name}");
    }

    // At rest the reference is not written again, though the pods keep counting.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(server.writes(&["configmaps"]), 1);

    // A canary whose inputs moved fails input drift against the captured stable.
    api.patch(
        "scorer",
        &PatchParams::default(),
        &Patch::Merge(
            json!({"spec": {"model": {"version": "2.0.0", "image": "example/scorer:2.0.0"}}}),
        ),
    )
    .await
    .unwrap();
    let rolled_back = eventually("rolled back", WAIT, || {
        let s = status(&server, "scorer");
        (s["phase"] == "RolledBack").then_some(s)
    })
    .await;
    let inputs = rolled_back["analysis"]["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "inputs")
        .cloned()
        .unwrap();
    assert_eq!(inputs["verdict"], "Fail", "{inputs}");
    assert!(inputs["value"].as_f64().unwrap() > 0.2, "{inputs}");
    assert_eq!(rolled_back["stable"]["hash"], stable_hash.as_str());
    // The reference still describes the stable revision that kept serving.
    let cm = server
        .get("configmaps", "default", "scorer-drift-reference")
        .unwrap();
    assert_eq!(
        cm["metadata"]["annotations"]["modeldeploy.io/captured-revision"],
        stable_hash.as_str()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn someone_elses_configmap_of_that_name_is_never_taken_over() {
    let port = free_port();
    let server = Arc::new(FakeApiServer::start().await);
    let _dc = deployment_controller(&server, |_| true);
    let _pc = pod_controller(&server, ip_by_version);
    let _fleet = fleet_of(port, &[Member::new("127.0.0.2", version("1.0.0"))]).await;
    let theirs = json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "mine-drift-reference", "namespace": "default"},
        "data": {"reference.json": "{\"features\": {}}"}
    });
    server.upsert("configmaps", theirs);
    let _op = start_operator(&server, "op", false);
    let manifest = model_deployment(
        "mine",
        "1.0.0",
        json!({"spec": {
            "model": {"port": port},
            "drift": {"reference": {"fromStable": true}},
            "rollout": {"strategy": "canary", "steps": [{"setWeight": 50}],
                        "analysis": {"interval": "1s", "minSamples": 100}}
        }}),
    );
    let api: Api<ModelDeployment> = Api::namespaced(server.client(), "default");
    let md: ModelDeployment = serde_json::from_value(manifest).unwrap();
    api.create(&PostParams::default(), &md).await.unwrap();
    eventually("Stable", WAIT, || {
        (status(&server, "mine")["phase"] == "Stable").then_some(())
    })
    .await;
    // Enough time for several capture attempts with data available.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let cm = server
        .get("configmaps", "default", "mine-drift-reference")
        .unwrap();
    assert!(cm["metadata"]["ownerReferences"].is_null(), "{cm}");
    assert_eq!(cm["data"]["reference.json"], "{\"features\": {}}");
    assert_eq!(server.writes(&["configmaps"]), 0);
}
