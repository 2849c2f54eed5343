//! The operator against the fake API server, told as stories: the real kube
//! client, watches, leader election and reconcile loop run here.

mod support;

use std::sync::Arc;
use std::time::Duration;

use kube::api::{Api, DeleteParams, Patch, PatchParams};
use modeldeploy::api::ModelDeployment;
use modeldeploy::operator::Stopped;
use serde_json::json;
use support::fake_apiserver::FakeApiServer;
use support::story::{condition, create, deployments_of, events, status};
use support::{
    deployment_controller, eventually, model_deployment, reconciles_done, start_operator,
};

const WAIT: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_deployment_update_and_delete() {
    let server = Arc::new(FakeApiServer::start().await);
    let _dc = deployment_controller(&server, |_| true);
    let op = start_operator(&server, "op-1", false);
    create(&server, model_deployment("scorer", "1.0.0", json!({}))).await;

    // A Deployment with the declared limits, and a Service, both owned.
    let d = eventually("the first Deployment", WAIT, || {
        deployments_of(&server, "scorer").pop()
    })
    .await;
    let c = &d["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(
        c["resources"]["limits"],
        json!({"cpu": "2", "memory": "2Gi"})
    );
    assert_eq!(
        c["resources"]["requests"],
        json!({"cpu": "500m", "memory": "1Gi"})
    );
    assert!(
        c["env"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["name"] == "MODEL_URI" && e["value"] == "s3://models/scorer/1.0.0")
    );
    assert_eq!(d["metadata"]["labels"]["modeldeploy.io/revision"], "1");
    assert_eq!(
        d["metadata"]["ownerReferences"][0]["kind"],
        "ModelDeployment"
    );
    let svc = eventually("the Service", WAIT, || {
        server.get("services", "default", "scorer")
    })
    .await;
    assert_eq!(svc["spec"]["selector"]["modeldeploy.io/name"], "scorer");
    assert_eq!(svc["metadata"]["ownerReferences"][0]["name"], "scorer");

    // Ready once the Deployment is available.
    let s = eventually("Stable and Ready", WAIT, || {
        let s = status(&server, "scorer");
        (s["phase"] == "Stable" && condition(&s, "Ready").is_some_and(|c| c["status"] == "True"))
            .then_some(s)
    })
    .await;
    assert_eq!(s["stable"]["revision"], 1);
    assert_eq!(s["observedGeneration"], 1);
    assert_eq!(s["history"][0]["outcome"], "Deployed");
    eventually("a Deployed event", WAIT, || {
        events(&server, "Deployed").pop()
    })
    .await;

    // A new version replaces the old one.
    let api: Api<ModelDeployment> = Api::namespaced(server.client(), "default");
    api.patch(
        "scorer",
        &PatchParams::default(),
        &Patch::Merge(
            json!({"spec": {"model": {"version": "2.0.0", "image": "example/scorer:2.0.0"}}}),
        ),
    )
    .await
    .unwrap();
    let s = eventually("revision 2 stable", WAIT, || {
        let s = status(&server, "scorer");
        (s["stable"]["revision"] == 2 && s["phase"] == "Stable").then_some(s)
    })
    .await;
    assert_eq!(s["previous"]["revision"], 1);
    assert_eq!(
        s["history"].as_array().unwrap().last().unwrap()["outcome"],
        "Replaced"
    );
    eventually("the old revision scaled to zero", WAIT, || {
        let ds = deployments_of(&server, "scorer");
        let old = ds
            .iter()
            .find(|d| d["metadata"]["labels"]["modeldeploy.io/revision"] == "1")?;
        (ds.len() == 2 && old["spec"]["replicas"] == 0).then_some(())
    })
    .await;

    // Deleting the ModelDeployment takes its children with it.
    api.delete("scorer", &DeleteParams::background())
        .await
        .unwrap();
    eventually("children gone", WAIT, || {
        (deployments_of(&server, "scorer").is_empty()
            && server.get("services", "default", "scorer").is_none())
        .then_some(())
    })
    .await;
    assert_eq!(op.stop().await, Ok(Stopped::Shutdown));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_object_at_rest_causes_zero_writes() {
    let server = Arc::new(FakeApiServer::start().await);
    let _dc = deployment_controller(&server, |_| true);
    let op = start_operator(&server, "op-1", false);
    create(&server, model_deployment("idle", "1.0.0", json!({}))).await;
    eventually("Stable", WAIT, || {
        (status(&server, "idle")["phase"] == "Stable").then_some(())
    })
    .await;
    // The last events and status writes land within the reconcile that wrote them.
    reconciles_done(&op).await;
    server.reset_counts();
    let reconciles_before = op.metrics.reconciles.get();

    // Make it reconcile again and again without changing what it wants:
    // unrelated labels on it and on its Deployment (written past the API, so
    // not counted), and dropped watches.
    for i in 0..3 {
        let mut md = server.get("modeldeployments", "default", "idle").unwrap();
        md["metadata"]["labels"] = json!({"touch": i.to_string()});
        server.upsert("modeldeployments", md);
        let mut d = deployments_of(&server, "idle").pop().unwrap();
        d["metadata"]["annotations"]["touched-by"] = json!(format!("someone-{i}"));
        server.upsert("deployments", d);
        server.drop_watches();
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    eventually("more reconciles", WAIT, || {
        (op.metrics.reconciles.get() >= reconciles_before + 3).then_some(())
    })
    .await;
    reconciles_done(&op).await;
    assert_eq!(
        server.writes(&[
            "modeldeployments",
            "deployments",
            "services",
            "events",
            "httproutes",
            "poddisruptionbudgets"
        ]),
        0,
        "writes at rest: {:?}",
        server.counts()
    );
    op.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_spec_is_reported_once_and_waits_for_a_fix() {
    let server = Arc::new(FakeApiServer::start().await);
    let _dc = deployment_controller(&server, |_| true);
    let op = start_operator(&server, "op-1", false);
    // The schema cannot compare a request with its limit; the operator does.
    create(
        &server,
        model_deployment(
            "bad",
            "1.0.0",
            json!({"spec": {"resources": {"requests": {"memory": "4Gi"}}}}),
        ),
    )
    .await;
    let s = eventually("InvalidSpec", WAIT, || {
        let s = status(&server, "bad");
        condition(&s, "Ready")
            .filter(|c| c["reason"] == "InvalidSpec")
            .cloned()
    })
    .await;
    assert_eq!(s["status"], "False");
    assert!(
        s["message"]
            .as_str()
            .unwrap()
            .contains("spec.resources.requests.memory"),
        "{s}"
    );
    let warning = eventually("a Warning event", WAIT, || {
        events(&server, "InvalidSpec").pop()
    })
    .await;
    assert_eq!(warning["type"], "Warning");
    assert!(
        deployments_of(&server, "bad").is_empty(),
        "nothing is deployed from an invalid spec"
    );

    // No hot loop: it waits for a change.
    let before = op.metrics.reconciles.get();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        op.metrics.reconciles.get() <= before + 2,
        "reconciled {} times while waiting",
        op.metrics.reconciles.get() - before
    );
    assert_eq!(events(&server, "InvalidSpec").len(), 1, "reported once");

    // The fix is picked up.
    let api: Api<ModelDeployment> = Api::namespaced(server.client(), "default");
    api.patch(
        "bad",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"resources": {"requests": {"memory": "1Gi"}}}})),
    )
    .await
    .unwrap();
    eventually("Stable after the fix", WAIT, || {
        (status(&server, "bad")["phase"] == "Stable").then_some(())
    })
    .await;
    op.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_api_errors_are_retried() {
    let server = Arc::new(FakeApiServer::start().await);
    let _dc = deployment_controller(&server, |_| true);
    server.fail_next(3, Some("apply"), Some("deployments"), 500);
    let op = start_operator(&server, "op-1", false);
    create(&server, model_deployment("flaky", "1.0.0", json!({}))).await;
    eventually("Stable despite errors", WAIT, || {
        (status(&server, "flaky")["phase"] == "Stable").then_some(())
    })
    .await;
    let failures = op
        .metrics
        .failures
        .with_label_values(&["server_error"])
        .get();
    assert!(failures >= 1, "failures by category are counted");
    op.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_crd_is_one_clear_error() {
    let server = FakeApiServer::start_without_crd().await;
    let op = start_operator(&server, "op-1", false);
    let result = tokio::time::timeout(WAIT, op.task).await.unwrap().unwrap();
    let message = result.unwrap_err();
    assert!(message.contains("CRD is not installed"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_leader_acts_and_a_standby_takes_over() {
    // Lease renewals and takeovers are timer-driven: give a loaded machine room.
    const ELECTION_WAIT: Duration = Duration::from_secs(60);
    let server = Arc::new(FakeApiServer::start().await);
    let _dc = deployment_controller(&server, |_| true);
    // Both race for the empty lease.
    let a = start_operator(&server, "op-a", true);
    let b = start_operator(&server, "op-b", true);
    let leader = eventually("one leader", ELECTION_WAIT, || {
        let states = (a.readiness.state(), b.readiness.state());
        match states {
            ("ready", "standby") => Some("op-a"),
            ("standby", "ready") => Some("op-b"),
            _ => None,
        }
    })
    .await;
    let lease = server
        .get("leases", "default", "modeldeploy-leader")
        .unwrap();
    assert_eq!(lease["spec"]["holderIdentity"], leader);

    create(&server, model_deployment("led", "1.0.0", json!({}))).await;
    eventually("reconciled by the leader", ELECTION_WAIT, || {
        (status(&server, "led")["phase"] == "Stable").then_some(())
    })
    .await;
    let (leader_op, standby) = if leader == "op-a" { (a, b) } else { (b, a) };
    assert_eq!(
        standby.metrics.reconciles.get(),
        0,
        "the standby never reconciles"
    );

    // The leader stops and releases the lease: the standby takes over.
    assert_eq!(leader_op.stop().await, Ok(Stopped::Shutdown));
    eventually("the standby leads", ELECTION_WAIT, || {
        (standby.readiness.state() == "ready").then_some(())
    })
    .await;
    let api: Api<ModelDeployment> = Api::namespaced(server.client(), "default");
    api.patch(
        "led",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"model": {"version": "1.1.0"}}})),
    )
    .await
    .unwrap();
    eventually("the new leader reconciles", ELECTION_WAIT, || {
        (status(&server, "led")["stable"]["version"] == "1.1.0").then_some(())
    })
    .await;
    standby.stop().await.unwrap();
}

/// The lease is created on a first install; a throttled or unavailable API
/// server (two 503s on that create) makes the replica wait as a standby and
/// ask again, not exit. A lease it may not create (403) is an error at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_create_answered_503_is_tried_again_and_403_is_an_error() {
    let server = Arc::new(FakeApiServer::start().await);
    server.fail_next(2, Some("create"), Some("leases"), 503);
    let op = start_operator(&server, "op-a", true);
    eventually("leading after the 503s", Duration::from_secs(60), || {
        (op.readiness.state() == "ready").then_some(())
    })
    .await;
    assert!(!op.task.is_finished());
    assert_eq!(
        server.counts()[&("create".to_string(), "leases".to_string())],
        3,
        "two refused creates and the one that made it"
    );
    assert_eq!(op.stop().await, Ok(Stopped::Shutdown));

    let server = Arc::new(FakeApiServer::start().await);
    server.fail_next(1, Some("create"), Some("leases"), 403);
    let op = start_operator(&server, "op-b", true);
    let outcome = tokio::time::timeout(Duration::from_secs(30), op.task)
        .await
        .expect("the operator stops on a forbidden lease")
        .unwrap();
    let error = outcome.unwrap_err();
    assert!(
        error.contains("leader lease default/modeldeploy-leader"),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revision_that_never_gets_ready_is_rolled_back() {
    let server = Arc::new(FakeApiServer::start().await);
    // Version 2 never becomes available.
    let _dc = deployment_controller(&server, |d| {
        d["metadata"]["labels"]["modeldeploy.io/version"] != "2.0.0"
    });
    let op = start_operator(&server, "op-1", false);
    create(&server, model_deployment("stuck", "1.0.0", json!({"spec": {"rollout": {"strategy": "canary", "steps": [{"setWeight": 50}], "progressDeadline": "2s"}}}))).await;
    eventually("Stable", WAIT, || {
        (status(&server, "stuck")["phase"] == "Stable").then_some(())
    })
    .await;
    let api: Api<ModelDeployment> = Api::namespaced(server.client(), "default");
    api.patch(
        "stuck",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"model": {"version": "2.0.0"}}})),
    )
    .await
    .unwrap();
    let s = eventually("RolledBack", WAIT, || {
        let s = status(&server, "stuck");
        (s["phase"] == "RolledBack").then_some(s)
    })
    .await;
    assert_eq!(s["stable"]["revision"], 1);
    assert_eq!(s["rolledBack"]["version"], "2.0.0");
    assert!(condition(&s, "Degraded").is_some_and(|c| c["status"] == "True"));
    let rb = eventually("a RolledBack event", WAIT, || {
        events(&server, "RolledBack").pop()
    })
    .await;
    assert_eq!(rb["type"], "Warning");
    // The spec still names 2.0.0; the operator never edits it.
    let md = server.get("modeldeployments", "default", "stuck").unwrap();
    assert_eq!(md["spec"]["model"]["version"], "2.0.0");
    let canary = deployments_of(&server, "stuck")
        .into_iter()
        .find(|d| d["metadata"]["labels"]["modeldeploy.io/version"] == "2.0.0")
        .unwrap();
    assert_eq!(canary["spec"]["replicas"], 0);
    op.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_cluster_is_one_clear_error() {
    // A port nothing listens on.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let client = kube::Client::try_from(kube::Config::new(url.parse().unwrap())).unwrap();
    let config = modeldeploy::operator::OperatorConfig {
        namespaces: vec![],
        metrics_addr: None,
        leader_election: None,
        identity: "op".into(),
        ..Default::default()
    };
    let result = modeldeploy::operator::run(
        client,
        config,
        modeldeploy::telemetry::Metrics::new(),
        modeldeploy::telemetry::Readiness::default(),
        std::future::pending(),
    )
    .await;
    let message = result.unwrap_err();
    assert!(
        message.contains("cannot reach the Kubernetes API server"),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_health_and_readiness_are_served() {
    let server = Arc::new(FakeApiServer::start().await);
    let _dc = deployment_controller(&server, |_| true);
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let readiness = modeldeploy::telemetry::Readiness::default();
    let config = modeldeploy::operator::OperatorConfig {
        namespaces: vec!["default".into()],
        metrics_addr: Some(format!("127.0.0.1:{port}").parse().unwrap()),
        leader_election: None,
        identity: "op".into(),
        ..Default::default()
    };
    let task = tokio::spawn(modeldeploy::operator::run(
        server.client(),
        config,
        modeldeploy::telemetry::Metrics::new(),
        readiness.clone(),
        async move {
            let _ = rx.await;
        },
    ));
    create(&server, model_deployment("seen", "1.0.0", json!({}))).await;
    eventually("Stable", WAIT, || {
        (status(&server, "seen")["phase"] == "Stable").then_some(())
    })
    .await;
    let http = modeldeploy::http_client_builder().build().unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let get = |path: &'static str| {
        let (http, base) = (http.clone(), base.clone());
        async move {
            let r = http.get(format!("{base}{path}")).send().await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    assert_eq!(get("/healthz").await.0, 200);
    assert_eq!(get("/readyz").await, (200, "ready".to_string()));
    let (code, metrics) = get("/metrics").await;
    assert_eq!(code, 200);
    for series in [
        "modeldeploy_reconcile_total",
        "modeldeploy_reconcile_duration_seconds_bucket",
        "modeldeploy_phase{name=\"seen\",namespace=\"default\",phase=\"Stable\"} 1",
    ] {
        assert!(metrics.contains(series), "{series} missing:\n{metrics}");
    }
    let _ = tx.send(());
    assert_eq!(task.await.unwrap(), Ok(Stopped::Shutdown));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_stopped_before_its_watches_sync_stops() {
    let server = Arc::new(FakeApiServer::start().await);
    // Slow answers: the first lists are still in flight when the stop comes.
    server.set_delay(Duration::from_secs(2));
    let op = start_operator(&server, "op", false);
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    assert_eq!(op.readiness.state(), "starting");
    // A Controller asked to stop gracefully before its store is ready would
    // wait for that store forever; `stop` gives up after 30 s.
    assert_eq!(op.stop().await, Ok(Stopped::Shutdown));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_objects_at_once_are_each_deployed_once() {
    let server = Arc::new(FakeApiServer::start().await);
    let _dc = deployment_controller(&server, |_| true);
    let op = start_operator(&server, "op", false);
    const N: usize = 150;
    for i in 0..N {
        create(
            &server,
            model_deployment(&format!("m{i}"), "1.0.0", json!({})),
        )
        .await;
    }
    eventually("all Stable", WAIT, || {
        (0..N)
            .all(|i| status(&server, &format!("m{i}"))["phase"] == "Stable")
            .then_some(())
    })
    .await;
    // A cache behind the operator's own writes must not make it decide a
    // transition twice: one Deployed event (of count 1) and one history entry each.
    let deployed = || -> i64 {
        events(&server, "Deployed")
            .iter()
            .map(|e| e["series"]["count"].as_i64().unwrap_or(1))
            .sum()
    };
    eventually("a Deployed event each", WAIT, || {
        (deployed() >= N as i64).then_some(())
    })
    .await;
    // Time for a second decision to be told, were there one.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(deployed(), N as i64);
    for i in 0..N {
        let s = status(&server, &format!("m{i}"));
        assert_eq!(s["history"].as_array().map(Vec::len), Some(1), "{s}");
    }
    op.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployment_scaled_or_deleted_by_hand_is_put_back() {
    let server = Arc::new(FakeApiServer::start().await);
    let _dc = deployment_controller(&server, |_| true);
    let op = start_operator(&server, "op", false);
    create(
        &server,
        model_deployment("kept", "1.0.0", json!({"spec": {"replicas": 3}})),
    )
    .await;
    eventually("Stable", WAIT, || {
        (status(&server, "kept")["phase"] == "Stable").then_some(())
    })
    .await;
    let name = deployments_of(&server, "kept")[0]["metadata"]["name"]
        .as_str()
        .unwrap()
        .to_string();
    let api: Api<k8s_openapi::api::apps::v1::Deployment> =
        Api::namespaced(server.client(), "default");
    api.patch(
        &name,
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"replicas": 1}})),
    )
    .await
    .unwrap();
    eventually("scaled back to 3", WAIT, || {
        (server.get("deployments", "default", &name)?["spec"]["replicas"] == 3).then_some(())
    })
    .await;
    api.delete(&name, &Default::default()).await.unwrap();
    eventually("made again", WAIT, || {
        server.get("deployments", "default", &name).map(|_| ())
    })
    .await;
    op.stop().await.unwrap();
}

/// Old revisions beyond `revisionHistoryLimit` (besides the one serving, as
/// with a Deployment's ReplicaSets) lose their Deployment and their stored
/// template together; the kept ones keep both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_history_limit_prunes_deployments_and_stored_templates_together() {
    let server = Arc::new(FakeApiServer::start().await);
    let _dc = deployment_controller(&server, |_| true);
    let op = start_operator(&server, "op-1", false);
    create(
        &server,
        model_deployment(
            "pruned",
            "1.0.0",
            json!({"spec": {"revisionHistoryLimit": 2}}),
        ),
    )
    .await;
    let api: Api<ModelDeployment> = Api::namespaced(server.client(), "default");
    for v in ["1.0.0", "2.0.0", "3.0.0", "4.0.0"] {
        if v != "1.0.0" {
            api.patch(
                "pruned",
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"model": {"version": v, "image": format!("example/scorer:{v}")}}})),
            )
            .await
            .unwrap();
        }
        eventually(&format!("{v} stable"), WAIT, || {
            let s = status(&server, "pruned");
            (s["phase"] == "Stable" && s["stable"]["version"] == v).then_some(())
        })
        .await;
    }
    let names = |kind: &str| {
        let mut n: Vec<String> = server
            .list(kind, "default")
            .into_iter()
            .filter(|o| o["metadata"]["labels"]["modeldeploy.io/name"] == "pruned")
            .map(|o| {
                o["metadata"]["labels"]["modeldeploy.io/version"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect();
        n.sort();
        n
    };
    eventually("the serving revision and two old ones kept", WAIT, || {
        (names("deployments") == ["2.0.0", "3.0.0", "4.0.0"]).then_some(())
    })
    .await;
    eventually("their templates kept, the oldest pruned", WAIT, || {
        (names("controllerrevisions") == ["2.0.0", "3.0.0", "4.0.0"]).then_some(())
    })
    .await;
    op.stop().await.unwrap();
}

/// The window between writing a transition's status and recording its
/// events: an operator stopped there records them when it starts again, once
/// however often it restarts, and not at all once they would have expired.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transition_written_but_not_told_is_told_once_after_restarts() {
    let server = Arc::new(FakeApiServer::start().await);
    let _dc = deployment_controller(&server, |_| true);
    let op = start_operator(&server, "op-1", false);
    create(&server, model_deployment("told", "1.0.0", json!({}))).await;
    let s = eventually("Stable", WAIT, || {
        let s = status(&server, "told");
        (s["phase"] == "Stable").then_some(s)
    })
    .await;
    eventually("the Deployed event", WAIT, || {
        events(&server, "Deployed").pop()
    })
    .await;
    op.stop().await.unwrap();
    assert_eq!(s["transition"]["sequence"], 1, "{s}");
    assert_eq!(s["transition"]["events"][0]["reason"], "Deployed", "{s}");

    // As if the operator had stopped right after the status write.
    let forget_events = || {
        for e in server.list("events", "default") {
            let name = e["metadata"]["name"].as_str().unwrap();
            server.delete("events", "default", name);
        }
    };
    forget_events();
    for identity in ["op-2", "op-3"] {
        let op = start_operator(&server, identity, false);
        eventually("the Deployed event told again", WAIT, || {
            events(&server, "Deployed").pop()
        })
        .await;
        // Long enough for a second recording to land, were there one.
        tokio::time::sleep(Duration::from_millis(500)).await;
        op.stop().await.unwrap();
        assert_eq!(events(&server, "Deployed").len(), 1, "{identity}");
    }

    // A transition older than the events' lifetime is not told again.
    forget_events();
    let mut md = server.get("modeldeployments", "default", "told").unwrap();
    md["status"]["transition"]["at"] = json!("2020-01-01T00:00:00Z");
    server.upsert("modeldeployments", md);
    let op = start_operator(&server, "op-4", false);
    let reconciles = op.metrics.reconciles.get();
    eventually("a reconcile", WAIT, || {
        (op.metrics.reconciles.get() > reconciles).then_some(())
    })
    .await;
    reconciles_done(&op).await;
    op.stop().await.unwrap();
    assert!(events(&server, "Deployed").is_empty());
}

/// An event the API server cannot take now (here three 500s) is recorded
/// once it can, before anything newer: it is not lost with its transition.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_the_api_server_refused_for_now_is_recorded_later_once() {
    let server = Arc::new(FakeApiServer::start().await);
    let _dc = deployment_controller(&server, |_| true);
    server.fail_next(3, Some("create"), Some("events"), 500);
    let op = start_operator(&server, "op-1", false);
    create(&server, model_deployment("late", "1.0.0", json!({}))).await;
    eventually("the Deployed event, after the failures", WAIT, || {
        events(&server, "Deployed").pop()
    })
    .await;
    reconciles_done(&op).await;
    op.stop().await.unwrap();
    assert_eq!(events(&server, "Deployed").len(), 1);
    assert_eq!(status(&server, "late")["phase"], "Stable");
}

/// A Service of the ModelDeployment's name that someone else made is not
/// taken over: nothing is applied, the status names the object, and once it
/// is gone the model is deployed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_taken_by_someone_elses_service_is_refused_not_taken_over() {
    let server = Arc::new(FakeApiServer::start().await);
    let _dc = deployment_controller(&server, |_| true);
    let theirs = json!({
        "metadata": {"name": "taken", "namespace": "default", "labels": {"team": "web"}},
        "spec": {"selector": {"app": "web"}, "ports": [{"port": 80}]}
    });
    server.upsert("services", theirs.clone());
    let op = start_operator(&server, "op-1", false);
    create(&server, model_deployment("taken", "1.0.0", json!({}))).await;
    let s = eventually("InvalidSpec naming the Service", WAIT, || {
        let s = status(&server, "taken");
        let ready = condition(&s, "Ready")?;
        (ready["reason"] == "InvalidSpec").then(|| s.clone())
    })
    .await;
    let message = condition(&s, "Ready").unwrap()["message"].to_string();
    assert!(
        message.contains("metadata.name") && message.contains("Service named taken"),
        "{message}"
    );
    let service = server.get("services", "default", "taken").unwrap();
    assert_eq!(service["metadata"]["labels"], theirs["metadata"]["labels"]);
    assert!(
        service["metadata"]["ownerReferences"].is_null(),
        "{service}"
    );
    assert_eq!(service["spec"], theirs["spec"]);
    assert!(server.list("deployments", "default").is_empty());

    server.delete("services", "default", "taken");
    eventually(
        "deployed once the name is free",
        Duration::from_secs(90),
        || (status(&server, "taken")["phase"] == "Stable").then_some(()),
    )
    .await;
    let service = server.get("services", "default", "taken").unwrap();
    assert_eq!(service["metadata"]["ownerReferences"][0]["name"], "taken");
    op.stop().await.unwrap();
}

/// `x-stable` is both the Service of a ModelDeployment `x-stable` and the
/// gatewayAPI router's stable Service of `x`: the second to come is refused,
/// and the first keeps its Service.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_router_service_named_like_another_models_service_is_refused() {
    let server = Arc::new(FakeApiServer::start().await);
    let _dc = deployment_controller(&server, |_| true);
    let op = start_operator(&server, "op-1", false);
    create(&server, model_deployment("x-stable", "1.0.0", json!({}))).await;
    eventually("x-stable Stable", WAIT, || {
        (status(&server, "x-stable")["phase"] == "Stable").then_some(())
    })
    .await;
    let before = server.get("services", "default", "x-stable").unwrap();
    create(
        &server,
        model_deployment(
            "x",
            "1.0.0",
            json!({"spec": {"rollout": {"strategy": "canary", "steps": [{"setWeight": 50}],
                "traffic": {"router": "gatewayAPI",
                    "gatewayAPI": {"parentRefs": [{"name": "public"}]}}}}}),
        ),
    )
    .await;
    let s = eventually("x refused", WAIT, || {
        let s = status(&server, "x");
        let ready = condition(&s, "Ready")?;
        (ready["reason"] == "InvalidSpec").then(|| s.clone())
    })
    .await;
    let message = condition(&s, "Ready").unwrap()["message"].to_string();
    assert!(message.contains("Service named x-stable"), "{message}");
    reconciles_done(&op).await;
    op.stop().await.unwrap();
    let after = server.get("services", "default", "x-stable").unwrap();
    assert_eq!(
        after["metadata"]["resourceVersion"],
        before["metadata"]["resourceVersion"]
    );
    assert!(deployments_of(&server, "x").is_empty());
}

/// One disruption budget over the pods of every revision, one pod at a time
/// by default; a spec that opts out has its budget deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disruption_budget_covers_the_model_and_goes_when_opted_out() {
    let server = Arc::new(FakeApiServer::start().await);
    let _dc = deployment_controller(&server, |_| true);
    let op = start_operator(&server, "op-1", false);
    create(&server, model_deployment("budgeted", "1.0.0", json!({}))).await;
    let pdb = eventually("the budget", WAIT, || {
        server.get("poddisruptionbudgets", "default", "budgeted")
    })
    .await;
    assert_eq!(pdb["spec"]["maxUnavailable"], 1);
    assert_eq!(
        pdb["spec"]["selector"]["matchLabels"],
        json!({"modeldeploy.io/name": "budgeted"})
    );
    assert_eq!(pdb["metadata"]["ownerReferences"][0]["name"], "budgeted");

    let api: Api<ModelDeployment> = Api::namespaced(server.client(), "default");
    let patch = |d: serde_json::Value| Patch::Merge(json!({"spec": {"disruption": d}}));
    api.patch(
        "budgeted",
        &PatchParams::default(),
        &patch(json!({"minAvailable": "50%"})),
    )
    .await
    .unwrap();
    eventually("minAvailable", WAIT, || {
        let p = server.get("poddisruptionbudgets", "default", "budgeted")?;
        (p["spec"]["minAvailable"] == "50%" && p["spec"]["maxUnavailable"].is_null()).then_some(())
    })
    .await;
    api.patch(
        "budgeted",
        &PatchParams::default(),
        &patch(json!({"minAvailable": null, "budget": false})),
    )
    .await
    .unwrap();
    eventually("the budget deleted", WAIT, || {
        server
            .get("poddisruptionbudgets", "default", "budgeted")
            .is_none()
            .then_some(())
    })
    .await;
    op.stop().await.unwrap();
}
