//! Shadow traffic in-process: the real operator on the fake API server, demo
//! model servers on loopback addresses standing in for pods, real scraping.
//! Here every server gets its own steady load whatever the route says, so
//! these stories check what the operator writes (the HTTPRoute's mirror
//! filter and weights, every status it stores) and how it judges; what users
//! get through the route is checked on the real API server
//! (`tests/real_shadow.rs`).

mod support;

use modeldeploy_demo::Behaviour;
use serde_json::{Value, json};
use support::story::{Member, StatusLog, Story, WAIT, canary_spec, deployments_of, ip_by_version};
use support::{PodHealth, eventually, free_port};

fn shadow_spec(port: u16) -> Value {
    let mut spec = canary_spec(
        port,
        json!([{"setMirror": {"percent": 100}}, {"analysis": {"passes": 2}},
               {"setWeight": 50}, {"pause": {}}]),
    );
    spec["spec"]["rollout"]["traffic"] = json!({"router": "gatewayAPI",
        "gatewayAPI": {"parentRefs": [{"name": "public", "namespace": "gateways"}]}});
    spec
}

/// The stored route's one rule: (backends with weights, mirror filters).
fn rule(story: &Story) -> (Vec<(String, i64)>, Vec<Value>) {
    let r = story
        .server
        .get("httproutes", "default", &story.name)
        .unwrap_or(Value::Null);
    let rules = r["spec"]["rules"].as_array().cloned().unwrap_or_default();
    assert!(rules.len() <= 1, "{r}");
    let Some(rule) = rules.first() else {
        return (Vec::new(), Vec::new());
    };
    let backends = rule["backendRefs"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|b| {
            (
                b["name"].as_str().unwrap().to_string(),
                b["weight"].as_i64().unwrap(),
            )
        })
        .collect();
    let filters = rule["filters"].as_array().cloned().unwrap_or_default();
    (backends, filters)
}

async fn story(name: &str, v2: Behaviour) -> Story {
    let port = free_port();
    Story::stable(
        name,
        port,
        shadow_spec(port),
        &[
            Member::new("127.0.0.2", Behaviour::default()),
            Member::new(
                "127.0.0.3",
                Behaviour {
                    version: "2.0.0".into(),
                    ..v2
                },
            ),
        ],
        ip_by_version,
        |_| PodHealth::Ready,
    )
    .await
}

fn all_live(name: &str, canary: i64) -> Vec<(String, i64)> {
    vec![
        (format!("{name}-stable"), 100 - canary),
        (format!("{name}-canary"), canary),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_shadow_is_rolled_back_without_ever_taking_traffic() {
    let name = "shadowbad";
    let story = story(
        name,
        Behaviour {
            error_rate: 0.3,
            ..Default::default()
        },
    )
    .await;
    let log = StatusLog::start(&story.server, name);
    story.release("2.0.0").await;
    let (backends, filters) = eventually("the mirror filter", WAIT, || {
        let r = rule(&story);
        (!r.1.is_empty()).then_some(r)
    })
    .await;
    assert_eq!(backends, all_live(name, 0), "stable keeps every request");
    assert_eq!(
        filters,
        [json!({"type": "RequestMirror", "requestMirror": {
            "backendRef": {"name": format!("{name}-canary"), "port": story_port(&story)},
            "percent": 100}})]
    );
    // The shadow carries all the copies: as many pods as stable.
    assert_eq!(story.replicas_of("2.0.0"), Some(2));
    assert_eq!(story.replicas_of("1.0.0"), Some(2));

    let s = story
        .until("rolled back", |s| s["phase"] == "RolledBack")
        .await;
    let reason = s["history"][1]["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("errors"), "{s}");
    let errors = s["analysis"]["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "errors")
        .unwrap();
    assert!(errors["value"].as_f64().unwrap() > 0.1, "{errors}");
    eventually("the mirror filter removed", WAIT, || {
        (rule(&story) == (all_live(name, 0), Vec::new())).then_some(())
    })
    .await;
    eventually("the shadow's pods gone", WAIT, || {
        (story.replicas_of("2.0.0") == Some(0)).then_some(())
    })
    .await;
    // The canary's Service stays on the rolled-back shadow: a gateway that
    // has not re-read the route yet must not copy requests to stable's pods.
    let shadow_hash = deployments_of(&story.server, name)
        .into_iter()
        .find(|d| d["metadata"]["labels"]["modeldeploy.io/version"] == "2.0.0")
        .map(|d| d["metadata"]["labels"]["modeldeploy.io/hash"].clone())
        .expect("the shadow's Deployment");
    let service = story
        .server
        .get("services", "default", &format!("{name}-canary"))
        .expect("the canary's Service");
    assert_eq!(
        service["spec"]["selector"]["modeldeploy.io/hash"], shadow_hash,
        "{service:#}"
    );
    let statuses = log.all();
    assert!(
        statuses
            .iter()
            .any(|s| s["canary"]["mirror"] == 100 && s["canary"]["weight"] == 0),
        "shadowed at some point"
    );
    assert!(
        statuses
            .iter()
            .all(|s| s["canary"]["weight"].as_i64().unwrap_or(0) == 0),
        "no status ever gave the shadow traffic"
    );
    story.op.stop().await.unwrap();
}

fn story_port(story: &Story) -> Value {
    story
        .server
        .get("modeldeployments", "default", &story.name)
        .unwrap()["spec"]["model"]["port"]
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_passing_shadow_ends_its_copies_when_live_traffic_starts() {
    let name = "shadowgood";
    let story = story(name, Behaviour::default()).await;
    story.release("2.0.0").await;
    eventually("the mirror filter", WAIT, || {
        (!rule(&story).1.is_empty()).then_some(())
    })
    .await;
    let s = story
        .until("paused at 50% after the shadow passed", |s| {
            s["canary"]["paused"] == "Step" && s["canary"]["weight"] == 50
        })
        .await;
    assert!(s["canary"].get("mirror").is_none(), "{s}");
    assert_eq!(
        rule(&story),
        (all_live(name, 50), Vec::new()),
        "live traffic, no copies"
    );
    assert_eq!(story.replicas_of("2.0.0"), Some(1));
    story.op.stop().await.unwrap();
}
