//! Canary stories end to end in-process: the operator on the fake API
//! server, demo model servers on loopback addresses standing in for pods, real
//! scraping, windows and checks.

mod support;

use std::sync::Arc;
use std::time::Duration;

use kube::api::{Api, Patch, PatchParams, PostParams};
use modeldeploy::api::ModelDeployment;
use modeldeploy_demo::Behaviour;
use serde_json::{Value, json};
use support::fake_apiserver::FakeApiServer;
use support::story::{
    StatusLog, Story, WAIT, canary_spec, fleet, ip_by_version, stable_story, start_story, status,
};
use support::{
    deployment_controller, eventually, free_port, model_deployment, pod_controller, start_operator,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_good_canary_is_promoted_step_by_step() {
    let port = free_port();
    let (server, op, _c, _f) = start_story(
        "good",
        port,
        json!([{"setWeight": 50}, {"analysis": {"passes": 2}}]),
        Behaviour {
            version: "2.0.0".into(),
            ..Default::default()
        },
    )
    .await;
    let s = eventually("v2 promoted", WAIT, || {
        let s = status(&server, "good");
        (s["stable"]["version"] == "2.0.0" && s["phase"] == "Stable").then_some(s)
    })
    .await;
    let history = s["history"].as_array().unwrap();
    assert_eq!(history.last().unwrap()["outcome"], "Promoted");
    let checks = s["analysis"]["checks"].as_array().unwrap();
    assert!(checks.iter().all(|c| c["verdict"] == "Pass"), "{checks:?}");
    assert!(checks[0]["samples"].as_i64().unwrap() >= 100);
    op.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_with_errors_is_rolled_back() {
    let port = free_port();
    let (server, op, _c, _f) = start_story(
        "bad",
        port,
        json!([{"setWeight": 50}, {"pause": {}}]),
        Behaviour {
            version: "2.0.0".into(),
            error_rate: 0.05,
            seed: 9,
            ..Default::default()
        },
    )
    .await;
    let s = eventually("rolled back", WAIT, || {
        let s = status(&server, "bad");
        (s["phase"] == "RolledBack").then_some(s)
    })
    .await;
    assert_eq!(s["stable"]["version"], "1.0.0");
    let reason = s["history"].as_array().unwrap().last().unwrap()["reason"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(reason.contains("errors"), "{reason}");
    let failing = s["analysis"]["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "errors")
        .unwrap()
        .clone();
    assert_eq!(failing["verdict"], "Fail");
    op.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_metrics_at_all_pauses_instead_of_promoting() {
    let port = free_port();
    let server = Arc::new(FakeApiServer::start().await);
    let _dc = deployment_controller(&server, |_| true);
    let _pc = pod_controller(&server, ip_by_version);
    // Only v1 has a server: the canary's pods answer nothing.
    let _fleet = fleet(port, &[("127.0.0.2", Behaviour::default())]).await;
    let op = start_operator(&server, "op", false);
    let api: Api<ModelDeployment> = Api::namespaced(server.client(), "default");
    let mut spec = canary_spec(port, json!([{"setWeight": 50}, {"analysis": {}}]));
    spec["spec"]["rollout"]["analysis"]["inconclusiveLimit"] = json!(3);
    let md: ModelDeployment =
        serde_json::from_value(model_deployment("silent", "1.0.0", spec)).unwrap();
    api.create(&PostParams::default(), &md).await.unwrap();
    eventually("v1 stable", WAIT, || {
        (status(&server, "silent")["phase"] == "Stable").then_some(())
    })
    .await;
    api.patch(
        "silent",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"model": {"version": "2.0.0"}}})),
    )
    .await
    .unwrap();
    let s = eventually("paused", WAIT, || {
        let s = status(&server, "silent");
        (s["phase"] == "Paused").then_some(s)
    })
    .await;
    assert_eq!(s["canary"]["paused"], "Inconclusive");
    assert_eq!(
        s["stable"]["version"], "1.0.0",
        "never promoted without data"
    );
    let msg = s["analysis"]["checks"][0]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(msg.contains("requests") || msg.contains("pod"), "{msg}");
    op.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_restarted_mid_rollout_finishes_it_without_repeating_a_step() {
    let port = free_port();
    let (server, op, _c, _f) = start_story(
        "restart",
        port,
        json!([{"setWeight": 50}, {"analysis": {"passes": 3}}]),
        Behaviour {
            version: "2.0.0".into(),
            ..Default::default()
        },
    )
    .await;
    eventually("the canary at 50%", WAIT, || {
        let s = status(&server, "restart");
        (s["canary"]["step"] == 1).then_some(())
    })
    .await;
    op.stop().await.unwrap();
    let before = status(&server, "restart");
    let op = start_operator(&server, "op-2", false);
    let s = eventually("promoted after the restart", WAIT, || {
        let s = status(&server, "restart");
        (s["stable"]["version"] == "2.0.0" && s["phase"] == "Stable").then_some(s)
    })
    .await;
    let outcomes: Vec<&str> = s["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(
        outcomes,
        vec!["Deployed", "Promoted"],
        "one promotion, nothing repeated"
    );
    assert_eq!(before["canary"]["revision"], 2);
    let started: Vec<Value> = server
        .list("events", "default")
        .into_iter()
        .filter(|e| e["reason"] == "RolloutStarted")
        .collect();
    assert_eq!(started.len(), 1, "the rollout was not started twice");
    op.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_and_retry_through_the_plugins_code_path() {
    use modeldeploy::rollout::requests::{Request, RequestAction, applicable};
    let port = free_port();
    let (server, op, _c, _f) = start_story(
        "steer",
        port,
        json!([{"setWeight": 50}, {"pause": {}}]),
        Behaviour {
            version: "2.0.0".into(),
            ..Default::default()
        },
    )
    .await;
    eventually("paused at the pause step", WAIT, || {
        (status(&server, "steer")["phase"] == "Paused").then_some(())
    })
    .await;
    let api: Api<ModelDeployment> = Api::namespaced(server.client(), "default");
    let md = api.get("steer").await.unwrap();
    let hash = modeldeploy::resources::revision_hash(&md.spec);
    // The plugin asks the same function the operator uses before sending.
    assert!(applicable(md.status.as_ref().unwrap(), &hash, &RequestAction::Retry).is_err());
    let abort = Request::new(modeldeploy::cli::request_id(), RequestAction::Abort);
    modeldeploy::cli::send_request(&api, "steer", &abort)
        .await
        .unwrap();
    eventually("aborted", WAIT, || {
        let s = status(&server, "steer");
        (s["phase"] == "RolledBack" && s["lastRequest"] == abort.id.as_str()).then_some(())
    })
    .await;
    // The annotation stays (GitOps leaves it alone) but runs only once.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(status(&server, "steer")["phase"], "RolledBack");
    let retry = Request::new(
        format!("{}-retry", modeldeploy::cli::request_id()),
        RequestAction::Retry,
    );
    modeldeploy::cli::send_request(&api, "steer", &retry)
        .await
        .unwrap();
    let s = eventually("retried", WAIT, || {
        let s = status(&server, "steer");
        (s["lastRequest"] == retry.id.as_str() && s["canary"]["revision"] == 2).then_some(s)
    })
    .await;
    assert_ne!(s["phase"], "RolledBack");
    op.stop().await.unwrap();
}

/// Restart the operator each time the rollout reaches a state it had not been
/// in (each step, promoting, the guard, the previous revision's scale-down),
/// and check the outcome is the one an uninterrupted operator reaches, with
/// nothing done twice. Returns the final status, every status the API server
/// stored in between, the events, and the states restarted in.
async fn restarted_at_every_phase(
    canary: Behaviour,
) -> (Value, Vec<Value>, Vec<Value>, Vec<String>) {
    let port = free_port();
    let steps = json!([
        {"setWeight": 25}, {"pause": {"duration": "2s"}},
        {"setWeight": 50}, {"analysis": {"passes": 2}}, {"setWeight": 75}
    ]);
    let Story {
        server,
        op,
        controllers: _c,
        fleet: _f,
        ..
    } = stable_story("phases", port, steps, canary).await;
    // The release is made while no operator runs, so that the loop below
    // looks from the rollout's first state on: on a loaded machine a running
    // operator could roll a bad canary back before the first look.
    op.stop().await.unwrap();
    let log = StatusLog::start(&server, "phases");
    let api: Api<ModelDeployment> = Api::namespaced(server.client(), "default");
    api.patch(
        "phases",
        &PatchParams::default(),
        // States last long enough to be seen and restarted in on a loaded
        // machine: a restart (stop, start, caches listing) takes seconds there,
        // and a 1 s scale-down delay was sometimes over before the next look.
        &Patch::Merge(json!({"spec": {
            "model": {"version": "2.0.0", "image": "example/scorer:2.0.0"},
            "guard": {"window": "8s", "interval": "1s",
                      "checks": [{"name": "errors", "errorRate": {"max": 0.01}}]},
            "rollout": {"scaleDownDelay": "5s"}
        }})),
    )
    .await
    .unwrap();
    let op = start_operator(&server, "op-0", false);
    let key = |s: &Value| {
        format!(
            "{}|step {}|promoting {}|paused {}|guard {}|scale-down {}",
            s["phase"],
            s["canary"]["step"],
            s["canary"]["promoting"],
            s["canary"]["paused"],
            s["guard"].is_object(),
            s["previousScaleDownAt"].is_string()
        )
    };
    let mut seen = std::collections::BTreeSet::new();
    let mut op = Some(op);
    let mut restarts = 0;
    let deadline = tokio::time::Instant::now() + WAIT * 2;
    let last = loop {
        let s = status(&server, "phases");
        let done = s["canary"].is_null()
            && s["guard"].is_null()
            && s["previousScaleDownAt"].is_null()
            && (s["phase"] == "RolledBack"
                || (s["phase"] == "Stable" && s["stable"]["version"] == "2.0.0"));
        if done {
            break s;
        }
        if seen.insert(key(&s)) {
            op.take().unwrap().stop().await.unwrap();
            restarts += 1;
            op = Some(start_operator(&server, &format!("op-{restarts}"), false));
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the rollout did not finish; last status {s}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    op.take().unwrap().stop().await.unwrap();
    let events: Vec<Value> = server
        .list("events", "default")
        .into_iter()
        .filter(|e| e["regarding"]["name"] == "phases")
        .collect();
    (last, log.all(), events, seen.into_iter().collect())
}

/// How often `reason` was recorded: a recorder folds repeats into one Event
/// with a series count.
fn occurrences(events: &[Value], reason: &str) -> i64 {
    events
        .iter()
        .filter(|e| e["reason"] == reason)
        .map(|e| e["series"]["count"].as_i64().unwrap_or(1))
        .sum()
}

fn outcomes(s: &Value) -> Vec<String> {
    s["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["outcome"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarts_at_every_phase_change_nothing_in_a_promotion() {
    let (s, statuses, events, seen) = restarted_at_every_phase(Behaviour {
        version: "2.0.0".into(),
        ..Default::default()
    })
    .await;
    assert_eq!(outcomes(&s), ["Deployed", "Promoted"], "{s}");
    for reason in ["RolloutStarted", "Promoted", "GuardPassed"] {
        assert_eq!(occurrences(&events, reason), 1, "{reason}: {events:#?}");
    }
    // The canary's step never went back, and every step was passed through.
    let steps: Vec<i64> = statuses
        .iter()
        .filter_map(|s| s["canary"]["step"].as_i64())
        .collect();
    assert!(steps.windows(2).all(|w| w[0] <= w[1]), "{steps:?}");
    // (After the last step the canary is promoted, possibly in the same write.)
    assert!(steps.last().is_some_and(|s| *s >= 4), "{steps:?}");
    // Restarted while progressing, while guarded, and while the previous
    // revision waited to scale down.
    for state in ["Progressing", "guard true", "scale-down true"] {
        assert!(seen.iter().any(|k| k.contains(state)), "{state}: {seen:#?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarts_at_every_phase_change_nothing_in_a_rollback() {
    let (s, _, events, seen) = restarted_at_every_phase(Behaviour {
        version: "2.0.0".into(),
        error_rate: 0.2,
        ..Default::default()
    })
    .await;
    assert!(seen.iter().any(|k| k.contains("Progressing")), "{seen:?}");
    assert_eq!(s["phase"], "RolledBack", "{s}");
    assert_eq!(s["stable"]["version"], "1.0.0");
    assert_eq!(outcomes(&s), ["Deployed", "RolledBack"], "{s}");
    for reason in ["RolloutStarted", "RolledBack"] {
        assert_eq!(occurrences(&events, reason), 1, "{reason}: {events:#?}");
    }
}
