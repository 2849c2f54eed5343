//! The fake API server answers the real kube client the way a cluster would.

mod support;

use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::{Value, json};
use support::fake_apiserver::FakeApiServer;

fn cm(name: &str, data: serde_json::Value) -> ConfigMap {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": "default", "labels": {"app": name}},
        "data": data
    }))
    .unwrap()
}

#[tokio::test]
async fn create_get_list_delete_and_errors() {
    let server = FakeApiServer::start().await;
    let api: Api<ConfigMap> = Api::namespaced(server.client(), "default");
    api.create(&PostParams::default(), &cm("a", json!({"k": "v"})))
        .await
        .unwrap();
    let got = api.get("a").await.unwrap();
    assert_eq!(got.data.unwrap()["k"], "v");
    assert!(got.metadata.uid.is_some() && got.metadata.resource_version.is_some());

    let dup = api
        .create(&PostParams::default(), &cm("a", json!({})))
        .await
        .unwrap_err();
    assert!(matches!(dup, kube::Error::Api(s) if s.code == 409 && s.reason == "AlreadyExists"));
    let missing = api.get("nope").await.unwrap_err();
    assert!(matches!(missing, kube::Error::Api(s) if s.code == 404 && s.reason == "NotFound"));

    api.create(&PostParams::default(), &cm("b", json!({})))
        .await
        .unwrap();
    let only_b = api
        .list(&ListParams::default().labels("app=b"))
        .await
        .unwrap();
    assert_eq!(only_b.items.len(), 1);
    let not_a = api
        .list(&ListParams::default().labels("app notin (a)"))
        .await
        .unwrap();
    assert_eq!(not_a.items.len(), 1);
    api.delete("a", &DeleteParams::default()).await.unwrap();
    assert_eq!(
        api.list(&ListParams::default()).await.unwrap().items.len(),
        1
    );
}

#[tokio::test]
async fn server_side_apply_owns_removes_and_conflicts() {
    let server = FakeApiServer::start().await;
    let api: Api<ConfigMap> = Api::namespaced(server.client(), "default");
    let mine = PatchParams::apply("mine");
    api.patch(
        "c",
        &mine,
        &Patch::Apply(cm("c", json!({"x": "1", "y": "2"}))),
    )
    .await
    .unwrap();
    let first = api.get("c").await.unwrap();
    // Stopping to apply a field removes it.
    api.patch("c", &mine, &Patch::Apply(cm("c", json!({"x": "1"}))))
        .await
        .unwrap();
    let data = api.get("c").await.unwrap().data.unwrap();
    assert!(data.contains_key("x") && !data.contains_key("y"));
    // The same apply again changes nothing, not even the resourceVersion.
    let before = api.get("c").await.unwrap().metadata.resource_version;
    api.patch("c", &mine, &Patch::Apply(cm("c", json!({"x": "1"}))))
        .await
        .unwrap();
    assert_eq!(
        api.get("c").await.unwrap().metadata.resource_version,
        before
    );
    assert_ne!(before, first.metadata.resource_version);
    // Another manager setting x differently conflicts, unless forced.
    let theirs = PatchParams::apply("theirs");
    let err = api
        .patch("c", &theirs, &Patch::Apply(cm("c", json!({"x": "9"}))))
        .await
        .unwrap_err();
    assert!(matches!(err, kube::Error::Api(s) if s.code == 409 && s.reason == "Conflict"));
    api.patch(
        "c",
        &theirs.force(),
        &Patch::Apply(cm("c", json!({"x": "9"}))),
    )
    .await
    .unwrap();
    assert_eq!(api.get("c").await.unwrap().data.unwrap()["x"], "9");
}

#[tokio::test]
async fn merge_patch_and_status_subresource() {
    let server = FakeApiServer::start().await;
    let api: Api<Deployment> = Api::namespaced(server.client(), "default");
    let d: Deployment = serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "d", "namespace": "default"},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"a": "b"}},
                 "template": {"metadata": {"labels": {"a": "b"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}}}
    }))
    .unwrap();
    api.create(&PostParams::default(), &d).await.unwrap();
    assert_eq!(api.get("d").await.unwrap().metadata.generation, Some(1));
    api.patch(
        "d",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"replicas": 3}})),
    )
    .await
    .unwrap();
    let after = api.get("d").await.unwrap();
    assert_eq!(
        (after.spec.unwrap().replicas, after.metadata.generation),
        (Some(3), Some(2))
    );
    api.patch_status(
        "d",
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"availableReplicas": 3}, "spec": {"replicas": 9}})),
    )
    .await
    .unwrap();
    let s = api.get("d").await.unwrap();
    assert_eq!(s.status.unwrap().available_replicas, Some(3));
    assert_eq!(
        s.spec.unwrap().replicas,
        Some(3),
        "a status write leaves spec alone"
    );
    assert_eq!(s.metadata.generation, Some(2));
    // As the real registry: a Deployment's annotations move its generation,
    // its labels do not.
    let touch = |meta: Value| Patch::Merge(json!({ "metadata": meta }));
    api.patch(
        "d",
        &PatchParams::default(),
        &touch(json!({"labels": {"x": "y"}})),
    )
    .await
    .unwrap();
    assert_eq!(api.get("d").await.unwrap().metadata.generation, Some(2));
    api.patch(
        "d",
        &PatchParams::default(),
        &touch(json!({"annotations": {"x": "y"}})),
    )
    .await
    .unwrap();
    assert_eq!(api.get("d").await.unwrap().metadata.generation, Some(3));
}

#[tokio::test]
async fn watches_see_changes_and_recover_when_dropped() {
    let server = FakeApiServer::start().await;
    let api: Api<ConfigMap> = Api::namespaced(server.client(), "default");
    let mut stream = watcher(api.clone(), watcher::Config::default())
        .applied_objects()
        .boxed();
    api.create(&PostParams::default(), &cm("w", json!({"v": "1"})))
        .await
        .unwrap();
    let seen = tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(seen.metadata.name.as_deref(), Some("w"));
    server.drop_watches();
    api.patch(
        "w",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"v": "2"}})),
    )
    .await
    .unwrap();
    let next = loop {
        let o = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if o.data.as_ref().unwrap()["v"] == "2" {
            break o;
        }
    };
    assert_eq!(next.data.unwrap()["v"], "2");
    let mut raw = watcher(api.clone(), watcher::Config::default()).boxed();
    // A watcher lists when first polled: let it get through its initial list.
    while !matches!(raw.next().await, Some(Ok(watcher::Event::InitDone))) {}
    api.delete("w", &DeleteParams::default()).await.unwrap();
    let deleted = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(ev) = raw.next().await {
            if let Ok(watcher::Event::Delete(o)) = ev {
                return o;
            }
        }
        panic!("watch ended");
    })
    .await
    .unwrap();
    assert_eq!(deleted.metadata.name.as_deref(), Some("w"));
}

#[tokio::test]
async fn deleting_an_owner_collects_its_dependents() {
    let server = FakeApiServer::start().await;
    let api: Api<ConfigMap> = Api::namespaced(server.client(), "default");
    let owner = api
        .create(&PostParams::default(), &cm("owner", json!({})))
        .await
        .unwrap();
    let mut child = cm("child", json!({}));
    child.metadata.owner_references = Some(vec![
        k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
            api_version: "v1".into(),
            kind: "ConfigMap".into(),
            name: "owner".into(),
            uid: owner.metadata.uid.clone().unwrap(),
            controller: Some(true),
            ..Default::default()
        },
    ]);
    api.create(&PostParams::default(), &child).await.unwrap();
    api.delete("owner", &DeleteParams::background())
        .await
        .unwrap();
    assert!(api.get_opt("child").await.unwrap().is_none());

    // A dependent written after its owner is gone (a reconcile racing the
    // deletion) is collected too, whether created or applied.
    api.create(&PostParams::default(), &child).await.unwrap();
    assert!(api.get_opt("child").await.unwrap().is_none());
    api.patch(
        "child",
        &PatchParams::apply("test").force(),
        &Patch::Apply(&child),
    )
    .await
    .unwrap();
    assert!(api.get_opt("child").await.unwrap().is_none());
}

#[tokio::test]
async fn faults_and_request_counts() {
    let server = FakeApiServer::start().await;
    let api: Api<ConfigMap> = Api::namespaced(server.client(), "default");
    server.fail_next(1, Some("create"), Some("configmaps"), 500);
    let err = api
        .create(&PostParams::default(), &cm("f", json!({})))
        .await
        .unwrap_err();
    assert!(matches!(err, kube::Error::Api(s) if s.code == 500));
    api.create(&PostParams::default(), &cm("f", json!({})))
        .await
        .unwrap();
    api.get("f").await.unwrap();
    let counts = server.counts();
    assert_eq!(counts[&("create".to_string(), "configmaps".to_string())], 2);
    assert_eq!(counts[&("get".to_string(), "configmaps".to_string())], 1);
    assert_eq!(server.writes(&["configmaps"]), 2);
    server.reset_counts();
    assert_eq!(server.writes(&[]), 0);
}

#[tokio::test]
async fn a_cluster_without_the_crd_answers_404() {
    let server = FakeApiServer::start_without_crd().await;
    let api: Api<modeldeploy::api::ModelDeployment> = Api::all(server.client());
    let err = api.list(&ListParams::default()).await.unwrap_err();
    assert!(matches!(err, kube::Error::Api(s) if s.code == 404));
}
