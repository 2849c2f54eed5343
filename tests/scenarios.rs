//! Scenarios end to end in-process: the real operator (kube client, watches,
//! reconcile loop) on the fake API server, demo model servers on loopback
//! addresses standing in for pods, real scraping. Each scenario asserts on
//! what a user sees: status, Events, Deployments' sizes and HTTPRoutes.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use modeldeploy::rollout::requests::{Request, RequestAction};
use modeldeploy_demo::{Behaviour, FEATURE_EDGES};
use serde_json::{Value, json};
use statrs::distribution::{ContinuousCDF, Normal};
use support::story::{
    Member, StatusLog, Story, WAIT, canary_spec, condition, event_message, events, ip_by_version,
};
use support::{PodHealth, eventually, free_port, reconciles_done};

fn v2(behaviour: Behaviour) -> Behaviour {
    Behaviour {
        version: "2.0.0".into(),
        ..behaviour
    }
}

fn check<'a>(s: &'a Value, name: &str) -> &'a Value {
    s["analysis"]["checks"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["name"] == name))
        .unwrap_or_else(|| panic!("no check {name} in {s}"))
}

fn last_history(s: &Value) -> Value {
    s["history"].as_array().unwrap().last().unwrap().clone()
}

fn outcomes(s: &Value) -> Vec<String> {
    s["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| format!("{}:{}", h["revision"], h["outcome"].as_str().unwrap()))
        .collect()
}

fn is_true(s: &Value, type_: &str) -> bool {
    condition(s, type_).is_some_and(|c| c["status"] == "True")
}

// --- 1. A canary whose pods are unhealthy is rolled back at once. ----------

/// Checks that could never decide (a million samples needed, a hundred
/// failures in a row): only the pods' own state can roll this canary back.
fn patient_spec(port: u16) -> Value {
    json!({"spec": {
        "replicas": 2,
        "model": {"port": port},
        "rollout": {
            "strategy": "canary",
            "steps": [{"setWeight": 50}, {"pause": {}}],
            "analysis": {
                "interval": "1s", "failureLimit": 100, "inconclusiveLimit": 1000,
                "minSamples": 1_000_000,
                "restarts": {"max": 2},
                "checks": [{"name": "errors", "errorRate": {"max": 0.01}}]
            }
        }
    }})
}

/// Waits for the canary's Deployment at 0 replicas and stable's at 2.
async fn canary_gone_stable_whole(story: &Story) {
    eventually(
        "the canary scaled to zero, stable at full size",
        WAIT,
        || {
            (story.replicas_of("2.0.0") == Some(0) && story.replicas_of("1.0.0") == Some(2))
                .then_some(())
        },
    )
    .await;
}

/// v1 Stable under [`patient_spec`]; v2's pods will report `health`.
async fn stable_with_unhealthy_v2(name: &str, health: PodHealth) -> Story {
    let port = free_port();
    Story::stable(
        name,
        port,
        patient_spec(port),
        &[
            Member::new("127.0.0.2", Behaviour::default()),
            Member::new("127.0.0.3", v2(Behaviour::default())),
        ],
        ip_by_version,
        move |d| {
            if d["metadata"]["labels"]["modeldeploy.io/version"] == "2.0.0" {
                health
            } else {
                PodHealth::Ready
            }
        },
    )
    .await
}

/// v2's pods report `health`; the rollback must come from the pods check
/// alone, and the status write that says RolledBack takes the canary's
/// traffic away in the same update. Returns the RolledBack event's message.
async fn unhealthy_canary_is_rolled_back_at_once(name: &str, health: PodHealth) -> String {
    let story = stable_with_unhealthy_v2(name, health).await;
    let log = StatusLog::start(&story.server, name);
    story.release("2.0.0").await;
    let s = story
        .until("rolled back", |s| s["phase"] == "RolledBack")
        .await;
    assert_eq!(s["stable"]["version"], "1.0.0");
    assert_eq!(s["rolledBack"]["version"], "2.0.0");
    assert!(is_true(&s, "Degraded"), "{s}");
    let h = last_history(&s);
    assert_eq!(
        (h["revision"].as_i64(), h["outcome"].as_str()),
        (Some(2), Some("RolledBack"))
    );
    assert!(
        h["reason"]
            .as_str()
            .unwrap()
            .contains("check restarts failed, canary pods are unhealthy"),
        "{h}"
    );
    // Not the analysis: no check failed, let alone failureLimit times.
    let analysis = &s["analysis"];
    assert!(
        analysis["failedInARow"].as_i64().unwrap_or(0) < 100,
        "{analysis}"
    );
    assert!(
        analysis["checks"]
            .as_array()
            .into_iter()
            .flatten()
            .all(|c| c["verdict"] != "Fail"),
        "{analysis}"
    );

    // The one status update that says RolledBack also takes all traffic away.
    let written = eventually("the RolledBack status seen by a watch", WAIT, || {
        log.all().into_iter().find(|s| s["phase"] == "RolledBack")
    })
    .await;
    assert!(
        written["canary"].is_null() || written["canary"]["weight"] == 0,
        "canary traffic in the RolledBack update: {written}"
    );
    assert!(is_true(&written, "Degraded"), "{written}");
    assert!(
        log.all()
            .iter()
            .all(|s| s["phase"] != "RolledBack" || s["canary"].is_null()),
        "a RolledBack status with a canary: {:?}",
        log.all()
    );

    let event = story.event("RolledBack").await;
    assert_eq!(event["type"], "Warning");
    canary_gone_stable_whole(&story).await;
    story.op.stop().await.unwrap();
    event_message(&event)
}

/// An events API that keeps refusing (503 on every create) holds no decision
/// back: the crash-looping canary is rolled back and scaled away all the
/// same. Once events are taken again, each event of the rollout is recorded,
/// once, though the transitions that carried them were replaced meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollback_does_not_wait_for_an_events_api_that_keeps_refusing() {
    let story = stable_with_unhealthy_v2("unheard", PodHealth::CrashLoopBackOff).await;
    let recorded_before = story.server.list("events", "default").len();
    story
        .server
        .fail_next(u32::MAX, Some("create"), Some("events"), 503);
    story.release("2.0.0").await;
    story
        .until("rolled back", |s| s["phase"] == "RolledBack")
        .await;
    canary_gone_stable_whole(&story).await;
    assert_eq!(
        story.server.list("events", "default").len(),
        recorded_before,
        "no event got through the fault"
    );
    // What the rollback tells besides the event does not wait for it.
    eventually("the rollback counted", WAIT, || {
        let counted = story
            .op
            .metrics
            .rollbacks
            .with_label_values(&["default", "unheard"])
            .get();
        (counted == 1).then_some(())
    })
    .await;

    story.server.clear_faults();
    story.event("RolledBack").await;
    story.event("RolloutStarted").await;
    let op = story.op;
    reconciles_done(&op).await;
    let rollbacks = op
        .metrics
        .rollbacks
        .with_label_values(&["default", "unheard"]);
    assert_eq!(rollbacks.get(), 1, "counted once");
    op.stop().await.unwrap();
    let mut told: Vec<(String, String)> = story
        .server
        .list("events", "default")
        .iter()
        .map(|e| (e["reason"].as_str().unwrap().to_string(), event_message(e)))
        .collect();
    let all = told.len();
    told.sort();
    told.dedup();
    assert_eq!(told.len(), all, "an event recorded twice: {told:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_looping_canary_is_rolled_back_at_once() {
    let message =
        unhealthy_canary_is_rolled_back_at_once("crashloop", PodHealth::CrashLoopBackOff).await;
    assert!(message.contains("CrashLoopBackOff"), "{message}");
    assert!(message.contains("revision 2 (version 2.0.0)"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_restarting_more_than_restarts_max_is_rolled_back_at_once() {
    let message = unhealthy_canary_is_rolled_back_at_once("restarts", PodHealth::Restarting).await;
    // The restarts check: the count against the tolerated maximum.
    assert!(message.contains("container restarts"), "{message}");
    assert!(message.contains("at most 2 tolerated"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oom_killed_canary_is_rolled_back_at_once() {
    let message = unhealthy_canary_is_rolled_back_at_once("oom", PodHealth::OomKilled).await;
    assert!(message.contains("OOMKilled"), "{message}");
}

// --- 2. Drift. ---------------------------------------------------------------

fn drift_spec(port: u16, name: &str, check: Value) -> Value {
    json!({"spec": {
        "replicas": 2,
        "model": {"port": port},
        "drift": {"reference": {"configMapRef": {"name": format!("{name}-reference"), "key": "reference.json"}}},
        "rollout": {
            "strategy": "canary",
            "steps": [{"setWeight": 50}, {"analysis": {"passes": 3}}],
            "analysis": {
                "interval": "1s", "failureLimit": 2, "minSamples": 200,
                "checks": [check]
            }
        }
    }})
}

/// The training distribution of every input: a standard normal, bucketed at
/// the demo server's histogram edges.
fn normal_reference() -> Value {
    let n = Normal::new(0.0, 1.0).unwrap();
    let mut counts = Vec::new();
    let mut below = 0.0;
    for edge in FEATURE_EDGES {
        counts.push((n.cdf(edge) - below) * 100_000.0);
        below = n.cdf(edge);
    }
    counts.push((1.0 - below) * 100_000.0);
    let feature = json!({"edges": FEATURE_EDGES, "counts": counts});
    json!({"features": {"f0": feature, "f1": feature, "f2": feature, "f3": feature}})
}

/// v1 Stable, then 2.0.0 served by `canary` whose callers send inputs shifted
/// by `feature_shift`; returns the story once the rollout has ended.
async fn drift_story(
    name: &str,
    check: Value,
    canary: Behaviour,
    feature_shift: f64,
) -> (Story, Value) {
    let port = free_port();
    let story = Story::stable(
        name,
        port,
        drift_spec(port, name, check),
        &[
            Member::new("127.0.0.2", Behaviour::default()),
            Member {
                feature_shift,
                ..Member::new("127.0.0.3", v2(canary))
            },
        ],
        ip_by_version,
        |_| PodHealth::Ready,
    )
    .await;
    story.server.upsert(
        "configmaps",
        json!({"metadata": {"name": format!("{name}-reference"), "namespace": "default"},
               "data": {"reference.json": normal_reference().to_string()}}),
    );
    story.release("2.0.0").await;
    let s = story
        .until("the rollout ends", |s| {
            s["phase"] == "RolledBack"
                || (s["phase"] == "Stable" && s["stable"]["version"] == "2.0.0")
        })
        .await;
    (story, s)
}

fn prediction_check() -> Value {
    json!({"name": "outputs", "predictionDrift": {"method": "js", "max": 0.1}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_with_shifted_predictions_is_rolled_back() {
    let shifted = Behaviour {
        prediction_shift: 2.0,
        ..Default::default()
    };
    let (story, s) = drift_story("outshift", prediction_check(), shifted, 0.0).await;
    assert_eq!(s["phase"], "RolledBack", "{s}");
    assert_eq!(s["stable"]["version"], "1.0.0");
    let outputs = check(&s, "outputs");
    assert_eq!(outputs["verdict"], "Fail", "{outputs}");
    let score = outputs["value"].as_f64().unwrap();
    assert!(score > 0.1, "{outputs}");
    assert_eq!(outputs["threshold"], 0.1);
    let reason = last_history(&s)["reason"].as_str().unwrap().to_string();
    assert!(reason.contains("outputs: value"), "{reason}");
    let message = event_message(&story.event("RolledBack").await);
    assert!(
        message.contains("outputs: value") && message.contains("vs threshold 0.1000"),
        "{message}"
    );
    assert!(
        message.contains(&format!("{score:.4}")),
        "{score} in {message}"
    );
    story.op.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_with_the_same_predictions_is_promoted() {
    let (story, s) = drift_story("outsame", prediction_check(), Behaviour::default(), 0.0).await;
    assert_eq!(s["phase"], "Stable", "{s}");
    assert_eq!(last_history(&s)["outcome"], "Promoted");
    let outputs = check(&s, "outputs");
    assert_eq!(outputs["verdict"], "Pass", "{outputs}");
    assert!(outputs["value"].as_f64().unwrap() <= 0.1, "{outputs}");
    assert!(outputs["samples"].as_i64().unwrap() >= 200, "{outputs}");
    story.op.stop().await.unwrap();
}

fn input_check() -> Value {
    json!({"name": "inputs", "inputDrift": {"method": "psi", "max": 0.25}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_receiving_drifted_inputs_is_rolled_back_with_data_drift() {
    let (story, s) = drift_story("inshift", input_check(), Behaviour::default(), 1.0).await;
    assert_eq!(s["phase"], "RolledBack", "{s}");
    let inputs = check(&s, "inputs");
    assert_eq!(inputs["verdict"], "Fail", "{inputs}");
    let max = s["drift"]["maxScore"].as_f64().unwrap();
    assert!(max > 0.25, "{s}");
    let worst = &s["drift"]["features"][0];
    assert_eq!(worst["method"], "psi");
    assert!(worst["name"].as_str().unwrap().starts_with('f'), "{worst}");
    let drift = condition(&s, "DataDrift").unwrap();
    assert_eq!(
        (drift["status"].as_str(), drift["reason"].as_str()),
        (Some("True"), Some("InputDrift")),
        "{drift}"
    );
    let message = event_message(&story.event("RolledBack").await);
    assert!(
        message.contains("inputs: value") && message.contains("vs threshold 0.2500"),
        "{message}"
    );
    story.op.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_receiving_reference_like_inputs_is_promoted() {
    let (story, s) = drift_story("insame", input_check(), Behaviour::default(), 0.0).await;
    assert_eq!(s["phase"], "Stable", "{s}");
    assert_eq!(last_history(&s)["outcome"], "Promoted");
    assert_eq!(check(&s, "inputs")["verdict"], "Pass");
    let max = s["drift"]["maxScore"].as_f64().unwrap();
    assert!(max <= 0.25, "{s}");
    let drift = condition(&s, "DataDrift").unwrap();
    assert_eq!(drift["status"], "False", "{drift}");
    story.op.stop().await.unwrap();
}

// --- 3. A/B tests. -------------------------------------------------------------

fn ab_spec(port: u16, traffic: Value, split: Value, min_samples: i64, max_duration: &str) -> Value {
    let mut ab = json!({
        "minSamples": min_samples, "maxDuration": max_duration,
        "objective": {"metric": "accuracy", "goal": "maximize", "confidence": 0.99}
    });
    support::merge(&mut ab, split);
    json!({"spec": {
        "replicas": 2,
        "model": {"port": port},
        "rollout": {
            "strategy": "abTest",
            "traffic": traffic,
            "scaleDownDelay": "0s",
            "abTest": ab,
            "analysis": {
                "interval": "1s", "minSamples": 100,
                "checks": [{"name": "errors", "errorRate": {"max": 0.01}}]
            }
        }
    }})
}

/// The feedback labels are `f0 > 0`: a scorer that reads only f0 is always
/// right, the default one about 80 % of the time.
fn accurate() -> Behaviour {
    v2(Behaviour {
        weights: vec![3.0, 0.0, 0.0, 0.0],
        ..Default::default()
    })
}

fn route(story: &Story) -> Value {
    story
        .server
        .get("httproutes", "default", &story.name)
        .unwrap_or(Value::Null)
}

fn backends(rule: &Value) -> Vec<(String, i64)> {
    rule["backendRefs"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|b| {
            (
                b["name"].as_str().unwrap().to_string(),
                b["weight"].as_i64().unwrap(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clearly_better_candidate_wins_the_ab_test_behind_a_gateway() {
    let port = free_port();
    let name = "abwin";
    let traffic = json!({"router": "gatewayAPI",
        "gatewayAPI": {"parentRefs": [{"name": "public", "namespace": "gateways"}],
                       "hostnames": ["scorer.example"]}});
    let story = Story::stable(
        name,
        port,
        ab_spec(
            port,
            traffic,
            json!({"match": [{"headers": {"x-model-variant": "b"}}]}),
            600,
            "10m",
        ),
        &[
            Member::new("127.0.0.2", Behaviour::default()),
            Member::new("127.0.0.3", accurate()),
        ],
        ip_by_version,
        |_| PodHealth::Ready,
    )
    .await;
    story.release("2.0.0").await;

    // While the test runs, requests with the header go to the candidate.
    let running = story
        .until("the A/B test running", |s| s["canary"]["revision"] == 2)
        .await;
    let canary_hash = running["canary"]["hash"].as_str().unwrap().to_string();
    let r = eventually("the HTTPRoute with the match", WAIT, || {
        let r = route(&story);
        (r["spec"]["rules"].as_array().map(Vec::len) == Some(2)).then_some(r)
    })
    .await;
    assert_eq!(r["spec"]["parentRefs"][0]["name"], "public");
    assert_eq!(r["spec"]["hostnames"], json!(["scorer.example"]));
    let rules = &r["spec"]["rules"];
    assert_eq!(
        rules[0]["matches"],
        json!([{"headers": [{"type": "Exact", "name": "x-model-variant", "value": "b"}]}])
    );
    assert_eq!(backends(&rules[0]), vec![(format!("{name}-canary"), 1)]);
    assert_eq!(backends(&rules[1]), vec![(format!("{name}-stable"), 1)]);
    assert!(
        rules[1]["matches"].as_array().is_none_or(Vec::is_empty),
        "{r}"
    );
    let canary_svc = story
        .server
        .get("services", "default", &format!("{name}-canary"))
        .unwrap();
    assert_eq!(
        canary_svc["spec"]["selector"]["modeldeploy.io/hash"],
        canary_hash.as_str()
    );

    let s = story
        .until("the candidate promoted", |s| {
            s["phase"] == "Stable" && s["stable"]["version"] == "2.0.0"
        })
        .await;
    let ab = &s["abTest"];
    assert_eq!(ab["winner"], "candidate", "{ab}");
    assert!(ab["pValue"].as_f64().unwrap() < 0.01, "{ab}");
    let effect = ab["effect"].as_f64().unwrap();
    assert!(
        (0.1..=0.3).contains(&effect),
        "accuracy 1.0 vs about 0.8: {ab}"
    );
    assert!(ab["samples"]["stable"].as_i64().unwrap() >= 600, "{ab}");
    assert!(ab["samples"]["candidate"].as_i64().unwrap() >= 600, "{ab}");
    assert_eq!(outcomes(&s), vec!["1:Deployed", "2:Promoted"]);
    let decided = event_message(&story.event("ABTestDecided").await);
    assert!(decided.contains("revision 2 won the A/B test"), "{decided}");

    // All traffic to the promoted revision; the old one scales down.
    let r = eventually("the HTTPRoute back to one rule", WAIT, || {
        let r = route(&story);
        (r["spec"]["rules"].as_array().map(Vec::len) == Some(1)).then_some(r)
    })
    .await;
    let rule = &r["spec"]["rules"][0];
    assert!(rule["matches"].as_array().is_none_or(Vec::is_empty), "{r}");
    assert_eq!(
        backends(rule),
        vec![
            (format!("{name}-stable"), 100),
            (format!("{name}-canary"), 0)
        ]
    );
    let stable_svc = story
        .server
        .get("services", "default", &format!("{name}-stable"))
        .unwrap();
    assert_eq!(
        stable_svc["spec"]["selector"]["modeldeploy.io/hash"],
        canary_hash.as_str()
    );
    eventually("v1 scaled down", WAIT, || {
        (story.replicas_of("1.0.0") == Some(0)).then_some(())
    })
    .await;
    story.op.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_identical_candidate_ends_at_max_duration_and_stable_stays() {
    let port = free_port();
    let story = Story::stable(
        "abtie",
        port,
        ab_spec(
            port,
            json!({"router": "replicas"}),
            json!({"weight": 50}),
            100,
            "10s",
        ),
        &[
            Member::new("127.0.0.2", Behaviour::default()),
            Member::new("127.0.0.3", v2(Behaviour::default())),
        ],
        ip_by_version,
        |_| PodHealth::Ready,
    )
    .await;
    story.release("2.0.0").await;
    // Half the pods each while the test runs.
    story
        .until("the split at 50%", |s| s["canary"]["weight"] == 50)
        .await;
    assert_eq!(
        (story.replicas_of("1.0.0"), story.replicas_of("2.0.0")),
        (Some(1), Some(1))
    );
    let s = story
        .until("the test ended", |s| s["phase"] == "RolledBack")
        .await;
    assert_eq!(s["stable"]["version"], "1.0.0");
    let ab = &s["abTest"];
    assert_eq!(ab["winner"], "none", "{ab}");
    assert!(ab["pValue"].as_f64().unwrap() >= 0.01, "{ab}");
    // It had the data to decide, and found no difference.
    assert!(ab["samples"]["candidate"].as_i64().unwrap() >= 100, "{ab}");
    assert!(ab["samples"]["stable"].as_i64().unwrap() >= 100, "{ab}");
    let h = last_history(&s);
    assert_eq!(h["outcome"], "RolledBack");
    assert!(
        h["reason"]
            .as_str()
            .unwrap()
            .contains("undecided after 10s"),
        "{h}"
    );
    assert!(events(&story.server, "ABTestDecided").is_empty());
    eventually("the candidate scaled to zero", WAIT, || {
        (story.replicas_of("2.0.0") == Some(0) && story.replicas_of("1.0.0") == Some(2))
            .then_some(())
    })
    .await;
    story.op.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worse_candidate_loses_a_weighted_ab_test_and_the_route_returns_to_stable() {
    let port = free_port();
    let name = "ablose";
    let traffic = json!({"router": "gatewayAPI",
        "gatewayAPI": {"parentRefs": [{"name": "public"}]}});
    // Reads f0 backwards: every prediction is wrong.
    let backwards = v2(Behaviour {
        weights: vec![-3.0, 0.0, 0.0, 0.0],
        ..Default::default()
    });
    let story = Story::stable(
        name,
        port,
        ab_spec(port, traffic, json!({"weight": 30}), 600, "10m"),
        &[
            Member::new("127.0.0.2", Behaviour::default()),
            Member::new("127.0.0.3", backwards),
        ],
        ip_by_version,
        |_| PodHealth::Ready,
    )
    .await;
    story.release("2.0.0").await;
    let r = eventually("the HTTPRoute split 70/30", WAIT, || {
        let r = route(&story);
        (backends(&r["spec"]["rules"][0])
            == vec![
                (format!("{name}-stable"), 70),
                (format!("{name}-canary"), 30),
            ])
        .then_some(r)
    })
    .await;
    assert_eq!(r["spec"]["rules"].as_array().unwrap().len(), 1, "{r}");
    // The gateway router keeps stable at full size beside the candidate.
    assert_eq!(story.replicas_of("1.0.0"), Some(2));

    let s = story
        .until("the candidate rolled back", |s| s["phase"] == "RolledBack")
        .await;
    assert_eq!(s["stable"]["version"], "1.0.0");
    let ab = &s["abTest"];
    assert_eq!(ab["winner"], "stable", "{ab}");
    assert!(ab["effect"].as_f64().unwrap() < -0.5, "{ab}");
    assert!(ab["pValue"].as_f64().unwrap() < 0.01, "{ab}");
    let h = last_history(&s);
    assert!(
        h["reason"]
            .as_str()
            .unwrap()
            .contains("the stable revision is better"),
        "{h}"
    );
    assert!(is_true(&s, "Degraded"), "{s}");
    let r = eventually("all traffic back on stable", WAIT, || {
        let r = route(&story);
        (backends(&r["spec"]["rules"][0])
            == vec![
                (format!("{name}-stable"), 100),
                (format!("{name}-canary"), 0),
            ])
        .then_some(r)
    })
    .await;
    assert_eq!(r["spec"]["rules"].as_array().unwrap().len(), 1, "{r}");
    eventually("the candidate scaled to zero", WAIT, || {
        (story.replicas_of("2.0.0") == Some(0)).then_some(())
    })
    .await;
    story.op.stop().await.unwrap();
}

// --- 4. The guard after promotion. ---------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_guard_rolls_back_a_promoted_revision_that_turns_bad() {
    let port = free_port();
    let name = "guarded";
    let errors = json!([{"name": "errors", "errorRate": {"max": 0.05}}]);
    let spec = json!({"spec": {
        "replicas": 2,
        "model": {"port": port},
        "rollout": {
            "strategy": "canary",
            "steps": [{"setWeight": 50}, {"analysis": {"passes": 2}}],
            "scaleDownDelay": "0s",
            "analysis": {"interval": "1s", "failureLimit": 2, "minSamples": 100, "checks": errors}
        },
        "guard": {"window": "10m", "interval": "1s", "failureLimit": 2, "checks": errors}
    }});
    // v2's pods answer on 127.0.0.3 until `bad`; pods made after that (say,
    // rescheduled onto a broken node) answer on 127.0.0.4, half with errors.
    let bad = Arc::new(AtomicBool::new(false));
    let flag = bad.clone();
    let story = Story::stable(
        name,
        port,
        spec,
        &[
            Member::new("127.0.0.2", Behaviour::default()),
            Member::new("127.0.0.3", v2(Behaviour::default())),
            Member::new(
                "127.0.0.4",
                v2(Behaviour {
                    error_rate: 0.5,
                    seed: 9,
                    ..Default::default()
                }),
            ),
        ],
        move |d| match d["metadata"]["labels"]["modeldeploy.io/version"].as_str()? {
            "2.0.0" if flag.load(Ordering::SeqCst) => Some("127.0.0.4".into()),
            _ => ip_by_version(d),
        },
        |_| PodHealth::Ready,
    )
    .await;
    story.release("2.0.0").await;
    let s = story
        .until("v2 promoted and guarded", |s| {
            s["stable"]["version"] == "2.0.0"
                && s["phase"] == "Stable"
                && s["guard"]["revision"] == 2
        })
        .await;
    assert_eq!(last_history(&s)["outcome"], "Promoted");
    eventually("v1 scaled to zero", WAIT, || {
        (story.replicas_of("1.0.0") == Some(0)).then_some(())
    })
    .await;

    // The promoted revision's pod is replaced and the new one fails.
    bad.store(true, Ordering::SeqCst);
    let v2_deployment = support::story::deployments_of(&story.server, name)
        .into_iter()
        .find(|d| d["metadata"]["labels"]["modeldeploy.io/version"] == "2.0.0")
        .unwrap();
    let pod = format!(
        "{}-pod",
        v2_deployment["metadata"]["name"].as_str().unwrap()
    );
    assert!(story.server.delete("pods", "default", &pod));

    let s = story
        .until("rolled back by the guard", |s| s["phase"] == "RolledBack")
        .await;
    assert_eq!(s["stable"]["version"], "1.0.0");
    assert_eq!(s["stable"]["revision"], 1);
    assert_eq!(s["rolledBack"]["version"], "2.0.0");
    assert!(s["guard"].is_null(), "{s}");
    assert!(is_true(&s, "Degraded"), "{s}");
    assert_eq!(
        outcomes(&s),
        vec!["1:Deployed", "2:Promoted", "2:RolledBack"]
    );
    let reason = last_history(&s)["reason"].as_str().unwrap().to_string();
    assert!(
        reason.contains("guard") && reason.contains("errors: value"),
        "{reason}"
    );
    let event = story.event("RolledBack").await;
    assert_eq!(event["type"], "Warning");
    let message = event_message(&event);
    assert!(
        message.contains("guard")
            && message.contains("errors: value")
            && message.contains("vs threshold 0.0500")
            && message.contains("revision 1 serves again"),
        "{message}"
    );
    // Traffic back on v1: its Deployment at full size again, v2 at zero.
    eventually("v1 back at full size and v2 drained", WAIT, || {
        (story.replicas_of("1.0.0") == Some(2) && story.replicas_of("2.0.0") == Some(0))
            .then_some(())
    })
    .await;
    story.op.stop().await.unwrap();
}

// --- 5. A newer revision arrives mid-rollout. -----------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_revision_mid_rollout_supersedes_the_canary() {
    let port = free_port();
    let name = "superseded";
    let story = Story::stable(
        name,
        port,
        canary_spec(port, json!([{"setWeight": 50}, {"pause": {}}])),
        &[
            Member::new("127.0.0.2", Behaviour::default()),
            Member::new("127.0.0.3", v2(Behaviour::default())),
            Member::new(
                "127.0.0.4",
                Behaviour {
                    version: "3.0.0".into(),
                    ..Default::default()
                },
            ),
        ],
        ip_by_version,
        |_| PodHealth::Ready,
    )
    .await;
    story.release("2.0.0").await;
    story
        .until("v2 paused at 50%", |s| {
            s["phase"] == "Paused" && s["canary"]["revision"] == 2 && s["canary"]["weight"] == 50
        })
        .await;
    story.release("3.0.0").await;
    let s = story
        .until("v3 paused at 50%", |s| {
            s["phase"] == "Paused" && s["canary"]["revision"] == 3 && s["canary"]["weight"] == 50
        })
        .await;
    assert_eq!(s["canary"]["version"], "3.0.0");
    assert_eq!(outcomes(&s), vec!["1:Deployed", "2:Superseded"]);
    let superseded = event_message(&story.event("Superseded").await);
    assert!(
        superseded.contains("revision 2 is abandoned"),
        "{superseded}"
    );
    eventually("v2 without pods, v3 and v1 sharing the fleet", WAIT, || {
        (story.replicas_of("2.0.0") == Some(0)
            && story.replicas_of("3.0.0") == Some(1)
            && story.replicas_of("1.0.0") == Some(1))
        .then_some(())
    })
    .await;

    // The newest revision finishes its rollout.
    let api = story.api();
    let promote = Request::new(modeldeploy::cli::request_id(), RequestAction::Promote);
    modeldeploy::cli::send_request(&api, name, &promote)
        .await
        .unwrap();
    let s = story
        .until("v3 promoted", |s| {
            s["phase"] == "Stable" && s["stable"]["version"] == "3.0.0"
        })
        .await;
    assert_eq!(
        outcomes(&s),
        vec!["1:Deployed", "2:Superseded", "3:Promoted"]
    );
    story.op.stop().await.unwrap();
}
