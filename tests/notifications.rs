//! Webhook notifications: rollout transitions reach a receiver as
//! Slack-compatible JSON, and a receiver that fails never holds a rollout up.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::http::StatusCode;
use kube::api::{Api, Patch, PatchParams, PostParams};
use modeldeploy::api::ModelDeployment;
use serde_json::{Value, json};
use support::fake_apiserver::FakeApiServer;
use support::story::status;
use support::{deployment_controller, eventually, model_deployment, start_operator_with};

const WAIT: Duration = Duration::from_secs(60);

/// A webhook receiver on loopback that keeps what it is sent and answers `code`.
async fn receiver(code: StatusCode) -> (String, Arc<Mutex<Vec<Value>>>) {
    let got = Arc::new(Mutex::new(Vec::new()));
    let kept = got.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |Json(body): Json<Value>| {
            let kept = kept.clone();
            async move {
                kept.lock().unwrap().push(body);
                code
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (url, got)
}

/// A canary whose version never becomes ready, so it is rolled back after its
/// progress deadline; returns the final status.
async fn failing_rollout(webhook: String) -> Value {
    let server = Arc::new(FakeApiServer::start().await);
    let _dc = deployment_controller(&server, |d| {
        d["metadata"]["labels"]["modeldeploy.io/version"] != "2.0.0"
    });
    let op = start_operator_with(&server, "op", false, |c| c.webhook_url = Some(webhook));
    let api: Api<ModelDeployment> = Api::namespaced(server.client(), "default");
    let md: ModelDeployment = serde_json::from_value(model_deployment(
        "hooked",
        "1.0.0",
        json!({"spec": {"rollout": {"strategy": "canary", "steps": [{"setWeight": 50}], "progressDeadline": "2s"}}}),
    ))
    .unwrap();
    api.create(&PostParams::default(), &md).await.unwrap();
    eventually("Stable", WAIT, || {
        (status(&server, "hooked")["phase"] == "Stable").then_some(())
    })
    .await;
    api.patch(
        "hooked",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"model": {"version": "2.0.0"}}})),
    )
    .await
    .unwrap();
    let s = eventually("RolledBack", WAIT, || {
        let s = status(&server, "hooked");
        (s["phase"] == "RolledBack").then_some(s)
    })
    .await;
    op.stop().await.unwrap();
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollout_transitions_are_posted_as_slack_compatible_json() {
    let (url, got) = receiver(StatusCode::OK).await;
    failing_rollout(url).await;
    let messages = eventually("the rollback message", WAIT, || {
        let got = got.lock().unwrap().clone();
        got.iter()
            .any(|m| m["reason"] == "RolledBack")
            .then_some(got)
    })
    .await;
    let started = messages
        .iter()
        .find(|m| m["reason"] == "RolloutStarted")
        .expect("a RolloutStarted message");
    assert_eq!(started["severity"], "info");
    assert_eq!(started["version"], "2.0.0");
    let rolled_back = messages
        .iter()
        .find(|m| m["reason"] == "RolledBack")
        .unwrap();
    assert_eq!(rolled_back["namespace"], "default");
    assert_eq!(rolled_back["name"], "hooked");
    assert_eq!(rolled_back["severity"], "warning");
    assert_eq!(rolled_back["version"], "2.0.0");
    let text = rolled_back["text"].as_str().unwrap();
    assert!(
        text.starts_with(":warning: ModelDeployment default/hooked: RolledBack: "),
        "{text}"
    );
    // Events that are not transitions stay out of the channel.
    assert!(messages.iter().all(|m| m["reason"] != "Deployed"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_receiver_does_not_hold_up_the_rollout() {
    let (url, got) = receiver(StatusCode::INTERNAL_SERVER_ERROR).await;
    let s = failing_rollout(url).await;
    assert_eq!(s["rolledBack"]["version"], "2.0.0");
    // It was tried, and kept failing.
    eventually("a delivery attempt", WAIT, || {
        (!got.lock().unwrap().is_empty()).then_some(())
    })
    .await;

    // Nothing listening at all: the same.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}/hook", l.local_addr().unwrap())
    };
    let s = failing_rollout(closed).await;
    assert_eq!(s["rolledBack"]["version"], "2.0.0");
}
