//! `spec.networkPolicy` on a real API server: the operator binary under the
//! chart's RBAC keeps a NetworkPolicy over the model's pods through a canary
//! rollout, and deletes it when the user removes the field.
//!
//! No CNI runs here, so nothing enforces a NetworkPolicy: what this proves is
//! the object the API server stored (its selector against the pods of both
//! revisions, its peers, its ports, its owner) and its lifecycle, not that
//! traffic is refused.

mod support;

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams, PostParams};
use modeldeploy::api::ModelDeployment;
use serde_json::{Value, json};
use support::envtest::poll;
use support::kubelet::LoadOptions;
use support::real_operator::{OperatorOptions, RealOperator};
use support::real_story::*;

/// The operator's pods' labels, as the chart's Deployment tells it
/// (OPERATOR_POD_LABELS); its namespace is the chart's release namespace
/// (POD_NAMESPACE). The operator here is a process, not a pod: only the
/// policy's peer is checked.
const OPERATOR_POD_LABELS: &str =
    "app.kubernetes.io/name=modeldeploy,app.kubernetes.io/instance=netpol";

/// [`Story::stable`] with the operator told its pod labels,
/// and `spec.networkPolicy` set from the start.
async fn stable_behind_a_policy(network_policy: Value) -> Option<Story> {
    let cp = support::envtest::control_plane()?;
    cp.install_crds().await;
    let ns = cp.namespace("netpol").await;
    let options = OperatorOptions {
        env: vec![("OPERATOR_POD_LABELS".into(), OPERATOR_POD_LABELS.into())],
        ..OperatorOptions::watching(&[&ns])
    };
    let op = RealOperator::start(cp, options).await?;
    op.wait_ready(WAIT).await;
    let api: Api<ModelDeployment> = Api::namespaced(cp.admin().await, &ns);
    let md: ModelDeployment = serde_json::from_value(json!({
        "apiVersion": "modeldeploy.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": NAME, "namespace": ns},
        "spec": {
            "model": model("1.0.0", &[]),
            "replicas": 2,
            "resources": {"requests": {"cpu": "100m", "memory": "64Mi"},
                          "limits": {"cpu": "1", "memory": "256Mi"}},
            "rollout": canary(errors_check(), two_steps()),
            "networkPolicy": network_policy,
        }
    }))
    .unwrap();
    api.create(&PostParams::default(), &md).await.unwrap();
    let capacity = Capacity::watch(cp, &ns);
    let mut story = Story {
        cp,
        ns,
        op,
        api,
        replicas: 2,
        revisions: BTreeMap::from([("1.0.0".to_string(), vec![])]),
        load: None,
        routed: false,
        capacity,
    };
    story.until("v1 stable", |s| s["phase"] == "Stable").await;
    story.wait_for_pods(&["1.0.0"]).await;
    story.capacity.armed.store(true, Ordering::SeqCst);
    story.start_load(LoadOptions::rps(40.0)).await;
    Some(story)
}

/// Whether the policy's pod selector (matchLabels only, as the operator
/// writes it) selects a pod with these labels.
fn selects(policy: &NetworkPolicy, pod_labels: &BTreeMap<String, String>) -> bool {
    let selector = policy.spec.as_ref().unwrap().pod_selector.as_ref().unwrap();
    assert!(selector.match_expressions.is_none());
    selector
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| pod_labels.get(k) == Some(v))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_policy_covers_every_revision_lets_in_the_operator_and_goes_with_the_field() {
    let from = json!([
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "gateways"}}},
        {"podSelector": {"matchLabels": {"app": "web"}},
         "namespaceSelector": {"matchExpressions": [
            {"key": "team", "operator": "In", "values": ["ml", "web"]}]}},
    ]);
    let Some(mut story) = stable_behind_a_policy(json!({"from": from})).await else {
        return;
    };
    let policies: Api<NetworkPolicy> = Api::namespaced(story.cp.admin().await, &story.ns);
    let policies = &policies;
    let stored = poll("the NetworkPolicy", WAIT, || async move {
        policies.get_opt(NAME).await.ok()?
    })
    .await;
    let md = story.api.get(NAME).await.unwrap();

    // Owned by the ModelDeployment (garbage-collected with it), written by
    // the operator's one field manager.
    let owner = &stored.owner_references()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.controller),
        ("ModelDeployment", Some(true))
    );
    assert_eq!(Some(&owner.uid), md.metadata.uid.as_ref());
    assert_eq!(
        stored.labels()["app.kubernetes.io/managed-by"],
        "modeldeploy"
    );
    assert!(
        stored
            .managed_fields()
            .iter()
            .any(|m| m.manager.as_deref() == Some("modeldeploy")
                && m.operation.as_deref() == Some("Apply")),
        "{:?}",
        stored.managed_fields()
    );

    // Ingress only, from the user's peers and the operator, on the ports
    // every revision's pods name.
    let spec = serde_json::to_value(stored.spec.as_ref().unwrap()).unwrap();
    assert_eq!(spec["policyTypes"], json!(["Ingress"]));
    assert!(
        spec.get("egress").is_none(),
        "egress is left alone: {spec:#}"
    );
    let rules = spec["ingress"].as_array().unwrap();
    assert_eq!(rules.len(), 1, "{spec:#}");
    let mut expected_from = from.as_array().unwrap().clone();
    expected_from.push(json!({
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": story.op.namespace()}},
        "podSelector": {"matchLabels": {
            "app.kubernetes.io/name": "modeldeploy", "app.kubernetes.io/instance": "netpol"}},
    }));
    assert_eq!(rules[0]["from"], Value::Array(expected_from), "{spec:#}");
    assert_eq!(
        rules[0]["ports"],
        json!([{"port": "http", "protocol": "TCP"}, {"port": "metrics", "protocol": "TCP"}])
    );
    // The ports are names: the model pods carry them.
    let template = story.template_of("1.0.0").await;
    assert!(template.contains(r#""name":"http""#), "{template}");

    // A canary: the pods of both revisions serve, and the policy selects
    // every one of them; nothing about it was written again.
    story.release("2.0.0", &[]).await;
    story
        .until("the canary takes traffic", |s| {
            s["canary"]["weight"].as_i64().unwrap_or(0) > 0
        })
        .await;
    let (cp, ns) = (story.cp, story.ns.clone());
    let serving_both = poll("pods of both revisions serving", WAIT, || {
        let pods = serving(cp, &ns);
        let versions: std::collections::BTreeSet<String> = pods
            .iter()
            .map(|p| p.labels["modeldeploy.io/version"].clone())
            .collect();
        async move { (versions.len() == 2).then_some(pods) }
    })
    .await;
    let during = policies.get(NAME).await.unwrap();
    for pod in &serving_both {
        assert!(
            selects(&during, &pod.labels),
            "pod {} {:?} not selected",
            pod.name,
            pod.labels
        );
    }
    assert_eq!(
        during.resource_version(),
        stored.resource_version(),
        "the policy was rewritten during the rollout"
    );
    story.assert_pods_run_their_revisions();

    // The rollout promotes with the policy in place.
    let s = story
        .until("v2 promoted", |s| {
            s["phase"] == "Stable" && s["stable"]["version"] == "2.0.0"
        })
        .await;
    assert_eq!(history(&s), ["Deployed", "Promoted"]);
    for pod in story.wait_for_pods(&["2.0.0"]).await {
        assert!(
            selects(&during, &pod.labels),
            "pod {} not selected",
            pod.name
        );
    }
    story.assert_capacity_kept();

    // Deleted by hand, it comes back (the operator watches its policies).
    let uid = stored.uid();
    policies.delete(NAME, &Default::default()).await.unwrap();
    poll("the NetworkPolicy made again", WAIT, || {
        let uid = uid.clone();
        async move {
            let p = policies.get_opt(NAME).await.ok()??;
            (p.uid() != uid).then_some(())
        }
    })
    .await;

    // The user removes the field: the policy is deleted, the model serves on.
    story
        .api
        .patch(
            NAME,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"networkPolicy": null}})),
        )
        .await
        .unwrap();
    poll("the NetworkPolicy deleted", WAIT, || async move {
        policies.get_opt(NAME).await.ok()?.is_none().then_some(())
    })
    .await;
    let s = story.status().await;
    assert_eq!(s["phase"], "Stable", "{s:#}");
    story.wait_for_pods(&["2.0.0"]).await;
    story.assert_pods_run_their_revisions();
}
