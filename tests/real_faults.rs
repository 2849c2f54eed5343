//! Faults on a real API server (issue 13): each test runs a canary rollout,
//! breaks the control plane or the operator in the middle of it, and checks
//! that the outcome is the one without the fault: every step completed once,
//! one promotion (or one rollback), the history entries counted, the pods
//! running their revisions, capacity kept. The operator's requests per second
//! during and after each fault come from the API server's audit log, and a
//! hot loop (a burst far above what a healthy rollout sends) fails the test.
//!
//! Faults hit every test of the binary (one control plane per binary), so
//! the tests take turns.

mod support;

use std::time::Duration;

use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use support::envtest::{ControlPlane, Options, control_plane_with};
use support::real_story::*;

/// One fault at a time: they hit the whole control plane.
static ONE_FAULT_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// No second may see more of the operator's requests than this. Restarting
/// the operator peaks at 24-37 in a second (each start lists every watched
/// kind again); a retry loop without backoff sends hundreds.
const HOT_LOOP_PER_SECOND: usize = 80;
/// Nor may a fault window average more than this.
const HOT_LOOP_MEAN: f64 = 10.0;
const APISERVER_DOWN: Duration = Duration::from_secs(10);
const ETCD_DOWN: Duration = Duration::from_secs(30);
/// How long after a fault its "after" rate is measured.
const AFTER: Duration = Duration::from_secs(30);

fn plane() -> Option<&'static ControlPlane> {
    control_plane_with(Options {
        audit: true,
        ..Options::default()
    })
}

fn four_steps() -> Value {
    json!([{"setWeight": 25}, {"analysis": {"passes": 2}},
           {"setWeight": 50}, {"analysis": {"passes": 2}}])
}

/// A stable v1 on the audited control plane, and v2 released.
async fn rolling(prefix: &str, extra: Value, v2_env: &[(&str, &str)]) -> Option<Story> {
    plane()?;
    let mut story = Story::stable(prefix, 4, canary(errors_check(), four_steps()), extra).await?;
    story.release("2.0.0", v2_env).await;
    Some(story)
}

async fn until_step(story: &Story, step: i64) {
    story
        .until(&format!("step {step}"), |s| {
            s["canary"]["step"].as_i64().unwrap_or(0) >= step
        })
        .await;
}

/// The operator's requests as the audit log has them: when each was received
/// and the event itself. Watches are counted once, when they were sent.
fn operator_requests(story: &Story) -> Vec<(Timestamp, Value)> {
    let user = format!(
        "system:serviceaccount:{}:{}",
        story.op.namespace(),
        story.op.service_account()
    );
    story
        .cp
        .audit_events()
        .into_iter()
        .filter(|e| e["stage"] == "ResponseComplete" && e["user"]["username"] == user)
        .filter_map(|e| {
            let at = e["requestReceivedTimestamp"].as_str()?.parse().ok()?;
            Some((at, e))
        })
        .collect()
}

/// How long after `to` (the API server ready again) the last of the
/// operator's watches was open again: per watched resource, the first watch
/// the API server started answering after the fault began at `from` (audit
/// stage ResponseStarted). Panics naming a resource never watched again.
fn watches_back(story: &Story, from: Timestamp, to: Timestamp) -> Duration {
    let user = format!(
        "system:serviceaccount:{}:{}",
        story.op.namespace(),
        story.op.service_account()
    );
    let events = story.cp.audit_events();
    let mut latest = Duration::ZERO;
    for resource in modeldeploy::controller::WATCHED {
        let first = events
            .iter()
            .filter(|e| {
                e["stage"] == "ResponseStarted"
                    && e["verb"] == "watch"
                    && e["user"]["username"] == user
                    && e["objectRef"]["resource"] == resource
            })
            .filter_map(|e| e["stageTimestamp"].as_str()?.parse::<Timestamp>().ok())
            .filter(|at| *at >= from)
            .min()
            .unwrap_or_else(|| panic!("the operator's watch of {resource} never came back"));
        let after_ready = (first.as_millisecond() - to.as_millisecond()).max(0);
        latest = latest.max(Duration::from_millis(after_ready as u64));
    }
    latest
}

/// Requests per second over a window: the busiest second and the mean.
#[derive(Debug, Clone, Copy)]
struct Rate {
    max: usize,
    mean: f64,
    total: usize,
}

fn rate(requests: &[(Timestamp, Value)], from: Timestamp, to: Timestamp) -> Rate {
    let mut per_second = std::collections::BTreeMap::<i64, usize>::new();
    let mut total = 0;
    for (at, _) in requests.iter().filter(|(at, _)| *at >= from && *at < to) {
        *per_second.entry(at.as_second()).or_default() += 1;
        total += 1;
    }
    // A loop is sustained: a window shorter than 10 s is averaged over 10 s,
    // so a restart's burst of re-lists (bounded by `max`) is not one.
    let seconds = (to.as_millisecond() - from.as_millisecond()).max(10_000) as f64 / 1000.0;
    Rate {
        max: per_second.values().copied().max().unwrap_or(0),
        mean: total as f64 / seconds,
        total,
    }
}

/// A fault's window, reported and bounded: no hot loop during it or in the
/// [`AFTER`] window that follows.
struct Window {
    fault: &'static str,
    from: Timestamp,
    to: Timestamp,
    /// From the end of the fault to the operator's next status change.
    recovery: Duration,
}

fn assert_no_hot_loop(story: &Story, windows: &[Window]) {
    let requests = operator_requests(story);
    let span = k8s_openapi::jiff::SignedDuration::try_from(AFTER).unwrap();
    for w in windows {
        let during = rate(&requests, w.from, w.to);
        let after = rate(&requests, w.to, w.to + span);
        let codes = error_codes(&requests, w.from, w.to + span);
        println!(
            "FAULT-RATE {}: during {:.1}s max {}/s mean {:.2}/s ({} requests); after max {}/s mean {:.2}/s; \
             recovery {:.1}s; error answers {codes:?}",
            w.fault,
            (w.to.as_millisecond() - w.from.as_millisecond()) as f64 / 1000.0,
            during.max,
            during.mean,
            during.total,
            after.max,
            after.mean,
            w.recovery.as_secs_f64()
        );
        for (what, r) in [("during", during), ("after", after)] {
            assert!(
                r.max <= HOT_LOOP_PER_SECOND && r.mean <= HOT_LOOP_MEAN,
                "{}: a hot loop {what} the fault: {r:?}",
                w.fault
            );
        }
    }
}

/// How many of the operator's requests were answered with each error code.
fn error_codes(
    requests: &[(Timestamp, Value)],
    from: Timestamp,
    to: Timestamp,
) -> std::collections::BTreeMap<i64, usize> {
    let mut codes = std::collections::BTreeMap::new();
    for (_, e) in requests.iter().filter(|(at, _)| *at >= from && *at < to) {
        let code = e["responseStatus"]["code"].as_i64().unwrap_or(0);
        if code >= 400 {
            *codes.entry(code).or_default() += 1;
        }
    }
    codes
}

/// What changes when the rollout moves on.
fn progress(s: &Value) -> Value {
    json!([
        s["phase"],
        s["canary"]["step"],
        s["stable"]["version"],
        s["history"].as_array().map(Vec::len)
    ])
}

/// How long from now until the rollout moves on from `before`.
async fn time_to_next_change(story: &Story, before: &Value) -> Duration {
    let started = std::time::Instant::now();
    story
        .until("the rollout to move on after the fault", |s| {
            progress(s) != *before
        })
        .await;
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_server_killed_mid_rollout_changes_nothing() {
    let _turn = ONE_FAULT_AT_A_TIME.lock().await;
    let Some(story) = rolling("apiserver", json!({}), &[]).await else {
        return;
    };
    until_step(&story, 1).await;
    let cp = story.cp;
    let controllers = cp.component_pid("kube-controller-manager");
    let before = progress(&story.status().await);
    let from = Timestamp::now();
    cp.kill_apiserver();
    tokio::time::sleep(APISERVER_DOWN).await;
    let back_in = cp.start_apiserver().await;
    let to = Timestamp::now();
    println!(
        "kube-apiserver ready {:.1}s after its start",
        back_in.as_secs_f64()
    );
    assert!(
        story.op.is_running(),
        "the operator exited with the API server down"
    );
    assert_eq!(
        cp.component_pid("kube-controller-manager"),
        controllers,
        "kube-controller-manager did not survive the API server's restart"
    );
    let recovery = time_to_next_change(&story, &before).await;
    story.assert_promoted_once("").await;
    println!(
        "all seven watches open again {:.1}s after the API server was ready",
        watches_back(&story, from, to).as_secs_f64()
    );
    assert_no_hot_loop(
        &story,
        &[Window {
            fault: "kube-apiserver SIGKILLed for 10 s",
            from,
            to,
            recovery,
        }],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_stopped_for_30_seconds_mid_rollout_changes_nothing() {
    let _turn = ONE_FAULT_AT_A_TIME.lock().await;
    let Some(story) = rolling("etcd", json!({}), &[]).await else {
        return;
    };
    until_step(&story, 1).await;
    let cp = story.cp;
    let before = progress(&story.status().await);
    let from = Timestamp::now();
    cp.stop_etcd();
    tokio::time::sleep(ETCD_DOWN).await;
    let back_in = cp.start_etcd().await;
    let to = Timestamp::now();
    println!("etcd healthy {:.1}s after its start", back_in.as_secs_f64());
    assert!(
        cp.component_pid("kube-apiserver").is_some(),
        "kube-apiserver exited without etcd"
    );
    assert!(story.op.is_running(), "the operator exited with etcd down");
    let recovery = time_to_next_change(&story, &before).await;
    story.assert_promoted_once("").await;
    assert_no_hot_loop(
        &story,
        &[Window {
            fault: "etcd stopped for 30 s",
            from,
            to,
            recovery,
        }],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_resuming_from_a_compacted_revision_relists_and_changes_nothing() {
    let _turn = ONE_FAULT_AT_A_TIME.lock().await;
    let Some(story) = rolling("gone", json!({}), &[]).await else {
        return;
    };
    until_step(&story, 1).await;
    let cp = story.cp;
    let before = progress(&story.status().await);
    let from = Timestamp::now();
    // Writes elsewhere move etcd's revision past the operator's watches; the
    // compaction forgets the revisions they would resume from; the restart
    // breaks them and starts the watch cache afresh.
    let churn = cp.namespace("churn").await;
    let maps: Api<ConfigMap> = Api::namespaced(cp.admin().await, &churn);
    for i in 0..200 {
        let cm: ConfigMap =
            serde_json::from_value(json!({"metadata": {"name": format!("churn-{i}")}})).unwrap();
        maps.create(&PostParams::default(), &cm).await.unwrap();
    }
    let compacted = cp.compact_etcd().await;
    cp.kill_apiserver();
    cp.start_apiserver().await;
    let to = Timestamp::now();
    let recovery = time_to_next_change(&story, &before).await;
    story.assert_promoted_once("").await;
    // The fault happened: watches of the operator's were told their
    // revision is gone (410 arrives as an event inside a watch the audit log
    // records as 200, so it is read from the operator's log) and the
    // operator listed again (a watcher lists only at its start or after 410).
    let requests = operator_requests(&story);
    let relists = requests
        .iter()
        .filter(|(at, e)| *at >= from && e["verb"] == "list")
        .count();
    let gone = story
        .op
        .logs()
        .lines()
        .filter(|l| l.contains("watch failed") && l.contains("too old resource version"))
        .count();
    println!(
        "compacted at revision {compacted}: {gone} watches told 410 Gone, {relists} lists after it"
    );
    assert!(
        gone > 0,
        "no watch of the operator's got 410 Gone: the fault did not happen"
    );
    assert!(
        relists > 0,
        "the operator did not list again after 410 Gone"
    );
    println!(
        "all seven watches open again {:.1}s after the API server was ready",
        watches_back(&story, from, to).as_secs_f64()
    );
    assert_no_hot_loop(
        &story,
        &[Window {
            fault: "410 Gone (compaction + restart)",
            from,
            to,
            recovery,
        }],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_writer_storming_the_object_changes_nothing() {
    let _turn = ONE_FAULT_AT_A_TIME.lock().await;
    let Some(story) = rolling("storm", json!({}), &[]).await else {
        return;
    };
    until_step(&story, 1).await;
    // Another tool writes the object 20 times a second with its own field
    // manager: an annotation (no generation change).
    let api = story.api.clone();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stopped = stop.clone();
    let from = Timestamp::now();
    let storm = tokio::spawn(async move {
        let mut writes = 0u32;
        let mut tick = tokio::time::interval(Duration::from_millis(50));
        while !stopped.load(std::sync::atomic::Ordering::SeqCst) {
            tick.tick().await;
            let patch =
                json!({"metadata": {"annotations": {"example.com/storm": writes.to_string()}}});
            if api
                .patch(
                    NAME,
                    &PatchParams::apply("storm").force(),
                    &Patch::Apply(json!({
                    "apiVersion": "modeldeploy.io/v1alpha1", "kind": "ModelDeployment",
                    "metadata": patch["metadata"]})),
                )
                .await
                .is_ok()
            {
                writes += 1;
            }
        }
        writes
    });
    let before = progress(&story.status().await);
    let recovery = time_to_next_change(&story, &before).await;
    story
        .until("v2 promoted under the storm", |s| {
            s["phase"] == "Stable" && s["stable"]["version"] == "2.0.0"
        })
        .await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let writes = storm.await.unwrap();
    let to = Timestamp::now();
    story.assert_promoted_once("").await;
    let requests = operator_requests(&story);
    let own_writes = requests
        .iter()
        .filter(|(at, _)| *at >= from && *at < to)
        .filter(|(_, e)| ["patch", "update", "create"].contains(&e["verb"].as_str().unwrap_or("")))
        .count();
    println!("the storm wrote {writes} times; the operator wrote {own_writes} times meanwhile");
    assert!(writes >= 100, "the storm wrote only {writes} times");
    assert!(
        own_writes * 4 < writes as usize,
        "the operator answered the storm: {own_writes} writes for {writes} foreign ones"
    );
    assert_no_hot_loop(
        &story,
        &[Window {
            fault: "second writer, 20 writes/s",
            from,
            to,
            recovery,
        }],
    );
}

/// What tells one status state from the next: phase, step, guard, draining.
fn state(s: &Value) -> String {
    format!(
        "{} step {} guard {} draining {}",
        s["phase"].as_str().unwrap_or("-"),
        s["canary"]["step"],
        !s["guard"].is_null(),
        !s["draining"].is_null()
    )
}

/// Until `done`, SIGKILLs the operator at each status state it has not been
/// killed at yet, and starts it again. Returns the states killed at.
async fn kill_at_every_state(story: &Story, done: impl Fn(&Value) -> bool) -> Vec<String> {
    let mut killed_at: Vec<String> = Vec::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let s = story.status().await;
        let now = state(&s);
        if !killed_at.contains(&now) {
            story.op.kill();
            story.op.restart();
            story.op.wait_ready(WAIT).await;
            killed_at.push(now);
        } else if done(&s) {
            return killed_at;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "stuck at {killed_at:?}: {s:#}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_killed_at_every_state_of_a_promotion_promotes_once() {
    let _turn = ONE_FAULT_AT_A_TIME.lock().await;
    let guard = json!({"guard": {"window": "10m", "interval": "2s", "failureLimit": 2,
                                 "checks": [{"name": "errors", "errorRate": {"max": 0.01}}]}});
    let Some(story) = rolling("kill-promote", guard, &[]).await else {
        return;
    };
    let from = Timestamp::now();
    let killed_at = kill_at_every_state(&story, |s| {
        s["phase"] == "Stable" && s["stable"]["version"] == "2.0.0" && !s["guard"].is_null()
    })
    .await;
    let to = Timestamp::now();
    println!("killed at {killed_at:#?}");
    for want in ["step 1", "step 2", "step 3", "Stable step null guard true"] {
        assert!(
            killed_at.iter().any(|k| k.contains(want)),
            "never killed at {want}: {killed_at:?}"
        );
    }
    story.assert_promoted_once("").await;
    assert_no_hot_loop(
        &story,
        &[Window {
            fault: "operator SIGKILLed at every promotion state",
            from,
            to,
            recovery: Duration::ZERO,
        }],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_killed_at_every_state_of_a_rollback_rolls_back_once() {
    let _turn = ONE_FAULT_AT_A_TIME.lock().await;
    let Some(story) = rolling("kill-rollback", json!({}), &[("ERROR_RATE", "0.05")]).await else {
        return;
    };
    let from = Timestamp::now();
    let killed_at = kill_at_every_state(&story, |s| s["phase"] == "RolledBack").await;
    let to = Timestamp::now();
    println!("killed at {killed_at:#?}");
    assert!(
        killed_at.iter().any(|k| k.starts_with("RolledBack")),
        "never killed once rolled back: {killed_at:?}"
    );
    let s = story.status().await;
    assert_eq!(history(&s), ["Deployed", "RolledBack"], "{s:#}");
    assert_eq!(s["stable"]["version"], "1.0.0");
    assert_eq!(story.events("RolledBack").await.len(), 1);
    assert_eq!(story.events("Promoted").await.len(), 0);
    assert_eq!(story.events("RolloutStarted").await.len(), 1);
    story.wait_for_pods(&["1.0.0"]).await;
    story.assert_pods_run_their_revisions();
    story.assert_capacity_kept();
    assert_no_hot_loop(
        &story,
        &[Window {
            fault: "operator SIGKILLed at every rollback state",
            from,
            to,
            recovery: Duration::ZERO,
        }],
    );
}
