//! Leader election and shards on a real API server, with its audit log as the
//! witness of who wrote what: each operator process runs as its own
//! ServiceAccount (same RBAC), so every write names the replica or shard that
//! made it.
//!
//! - Two replicas of one operator: only the Lease holder writes; the leader
//!   is SIGKILLed mid-rollout (twice), the standby takes the Lease within the
//!   lease duration plus the standby's retry period, and the rollout finishes
//!   once. The takeover times are printed (`TAKEOVER ...`).
//! - Two shards (label selectors `modeldeploy.io/shard=a` and `=b`, a Lease
//!   each) watching the same namespaces: each writes only its own
//!   ModelDeployment's objects, both promote, and killing shard A does not
//!   stop shard B.
//! - A ModelDeployment relabelled from shard C to shard D mid-rollout: D
//!   finishes the rollout from its status, once, and C stops writing.

mod support;

use std::sync::atomic::Ordering;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use modeldeploy::api::ModelDeployment;
use serde_json::{Value, json};
use support::envtest::{ControlPlane, Options, control_plane_with};
use support::kubelet::LoadOptions;
use support::real_operator::{OperatorOptions, RealOperator};
use support::real_story::*;

const LEASE_SECONDS: i64 = 15;
/// How long after the lease expires a standby may take to notice: its retry
/// period (the lease manager's grace, a third of the duration) plus a second
/// for a loaded machine.
const RETRY_ALLOWANCE_SECONDS: i64 = LEASE_SECONDS / 3 + 1;
const WRITES: [&str; 5] = ["create", "update", "patch", "delete", "deletecollection"];

fn audited() -> Option<&'static ControlPlane> {
    control_plane_with(Options {
        audit: true,
        ..Options::default()
    })
}

fn user_of(op: &RealOperator) -> String {
    format!(
        "system:serviceaccount:{}:{}",
        op.namespace(),
        op.service_account()
    )
}

/// One write the audit log recorded.
struct Write {
    user: String,
    namespace: String,
    /// `verb resource/name`, for the failure message.
    what: String,
    at: Timestamp,
}

/// Every write of a service account the audit log holds so far.
fn writes(cp: &ControlPlane) -> Vec<Write> {
    let text = |v: &Value| v.as_str().unwrap_or_default().to_string();
    cp.audit_events()
        .iter()
        .filter(|e| e["stage"] == "ResponseComplete")
        .filter(|e| WRITES.contains(&e["verb"].as_str().unwrap_or_default()))
        .map(|e| Write {
            user: text(&e["user"]["username"]),
            namespace: text(&e["objectRef"]["namespace"]),
            what: format!(
                "{} {}/{}",
                text(&e["verb"]),
                text(&e["objectRef"]["resource"]),
                text(&e["objectRef"]["name"])
            ),
            at: e["requestReceivedTimestamp"]
                .as_str()
                .and_then(|t| t.parse().ok())
                .expect("an audit event has requestReceivedTimestamp"),
        })
        .collect()
}

/// v1 of `scorer` in `ns` with these labels, stable under load, released by
/// `op` (already started and ready).
async fn stable_story(
    cp: &'static ControlPlane,
    ns: &str,
    op: RealOperator,
    labels: Value,
) -> Story {
    let steps = json!([{"setWeight": 25}, {"analysis": {"passes": 2}},
                       {"setWeight": 50}, {"analysis": {"passes": 2}}]);
    let api: Api<ModelDeployment> = Api::namespaced(cp.admin().await, ns);
    let md = serde_json::from_value(json!({
        "apiVersion": "modeldeploy.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": NAME, "namespace": ns, "labels": labels},
        "spec": {
            "model": model("1.0.0", &[]),
            "replicas": 4,
            "resources": {"requests": {"cpu": "100m", "memory": "64Mi"},
                          "limits": {"cpu": "1", "memory": "256Mi"}},
            "rollout": canary(errors_check(), steps),
        }
    }))
    .unwrap();
    api.create(&PostParams::default(), &md).await.unwrap();
    let mut story = Story {
        cp,
        ns: ns.to_string(),
        op,
        api,
        replicas: 4,
        revisions: [("1.0.0".to_string(), vec![])].into(),
        load: None,
        routed: false,
        capacity: Capacity::watch(cp, ns),
    };
    story.until("v1 stable", |s| s["phase"] == "Stable").await;
    story.wait_for_pods(&["1.0.0"]).await;
    story.capacity.armed.store(true, Ordering::SeqCst);
    story.start_load(LoadOptions::rps(40.0)).await;
    story
}

/// The Lease's holder, and when it was acquired.
async fn holder(cp: &ControlPlane, ns: &str, lease: &str) -> Option<(String, Timestamp)> {
    let leases: Api<Lease> = Api::namespaced(cp.admin().await, ns);
    let spec = leases.get_opt(lease).await.ok()??.spec?;
    Some((spec.holder_identity?, spec.acquire_time?.0))
}

async fn until_held_by(cp: &ControlPlane, ns: &str, lease: &str, who: &str) -> Timestamp {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some((holder, acquired)) = holder(cp, ns, lease).await
            && holder == who
        {
            return acquired;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{who} never held the Lease {ns}/{lease}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The first write of `user` in `ns` (not to its Lease) at or after `since`.
async fn first_write_after(cp: &ControlPlane, user: &str, ns: &str, since: Timestamp) -> Timestamp {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let first = writes(cp)
            .into_iter()
            .filter(|w| w.user == user && w.namespace == ns && w.at >= since)
            .map(|w| w.at)
            .min();
        if let Some(at) = first {
            return at;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{user} wrote nothing in {ns} after taking over"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn seconds(from: Timestamp, to: Timestamp) -> f64 {
    (to.as_millisecond() - from.as_millisecond()) as f64 / 1000.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_lease_holder_writes_and_a_standby_finishes_the_rollout_once() {
    let Some(cp) = audited() else {
        return;
    };
    cp.install_crds().await;
    let ns = cp.namespace("failover").await;
    let options = OperatorOptions {
        leader_election: true,
        identity: "replica-0".into(),
        args: vec![format!("--lease-duration-seconds={LEASE_SECONDS}")],
        ..OperatorOptions::watching(&[&ns])
    };
    let Some(first) = RealOperator::start(cp, options).await else {
        return;
    };
    first.wait_ready(WAIT).await;
    until_held_by(cp, first.namespace(), "modeldeploy-leader", "replica-0").await;
    let second = first
        .replica_as(cp, "replica-1", "modeldeploy-standby")
        .await;
    second.wait_ready(WAIT).await;
    let lease_ns = first.namespace().to_string();
    let mut story = stable_story(cp, &ns, first, json!({})).await;
    story.release("2.0.0", &[]).await;

    // Kill the leader at step 1 (replica-0) and at step 3 (replica-1, the
    // new leader; replica-0 came back as the standby).
    let mut leader_is_first = true;
    let mut measured = Vec::new();
    let (mut last_kill, mut final_leader) = (Timestamp::MIN, String::new());
    for step in [1, 3] {
        story
            .until(&format!("step {step}"), |s| {
                s["canary"]["step"].as_i64().unwrap_or(0) >= step
            })
            .await;
        let (leader, standby) = if leader_is_first {
            (&story.op, &second)
        } else {
            (&second, &story.op)
        };
        let (leader_user, standby_user) = (user_of(leader), user_of(standby));
        final_leader = standby_user.clone();
        let standby_name = if leader_is_first {
            "replica-1"
        } else {
            "replica-0"
        };
        let leases: Api<Lease> = Api::namespaced(cp.admin().await, &lease_ns);
        let renewed = leases
            .get("modeldeploy-leader")
            .await
            .unwrap()
            .spec
            .unwrap()
            .renew_time;
        let killed_at = Timestamp::now();
        leader.kill();
        let acquired = until_held_by(cp, &lease_ns, "modeldeploy-leader", standby_name).await;
        let wrote = first_write_after(cp, &standby_user, &ns, killed_at).await;
        let (to_acquire, to_write) = (seconds(killed_at, acquired), seconds(killed_at, wrote));
        // The Lease runs out LEASE_SECONDS after its last renewal, which is
        // up to a renewal period before the kill.
        let expiry = renewed.map(|r| seconds(killed_at, r.0) + LEASE_SECONDS as f64);
        println!(
            "TAKEOVER kill->acquire {to_acquire:.1}s kill->first write {to_write:.1}s \
             (lease expired {:.1}s after the kill)",
            expiry.unwrap_or(f64::NAN)
        );
        measured.push((to_acquire, to_write));
        assert!(
            to_acquire <= (LEASE_SECONDS + RETRY_ALLOWANCE_SECONDS) as f64,
            "the standby took {to_acquire}s to take over a {LEASE_SECONDS}s lease"
        );
        // Since the last takeover only the holder wrote.
        assert_only_writer(cp, &ns, &leader_user, last_kill, killed_at);
        last_kill = killed_at;
        if leader_is_first {
            story.op.restart();
            story.op.wait_ready(WAIT).await;
        } else {
            second.restart();
            second.wait_ready(WAIT).await;
        }
        leader_is_first = !leader_is_first;
    }
    story
        .assert_promoted_once(&format!("took over in {measured:?}"))
        .await;
    assert_only_writer(cp, &ns, &final_leader, last_kill, Timestamp::now());
    let users: std::collections::BTreeSet<_> = writes(cp)
        .into_iter()
        .filter(|w| w.namespace == ns)
        .map(|w| w.user)
        .collect();
    let replicas = [user_of(&story.op), user_of(&second)].into();
    assert_eq!(users, replicas, "only the two replicas wrote");
}

/// Every write in `ns` received in `[from, to)` was `user`'s.
fn assert_only_writer(cp: &ControlPlane, ns: &str, user: &str, from: Timestamp, to: Timestamp) {
    let window = writes(cp);
    let window: Vec<_> = window
        .iter()
        .filter(|w| w.namespace == ns && w.at >= from && w.at < to)
        .collect();
    assert!(
        window.iter().any(|w| w.user == user),
        "the holder {user} wrote nothing from {from} to {to}"
    );
    for w in window {
        assert!(
            w.user == user,
            "{} wrote {} at {} while {user} held the Lease",
            w.user,
            w.what,
            w.at
        );
    }
}

/// A shard's operator: its selector and its own Lease, watching `namespaces`.
async fn shard(cp: &ControlPlane, name: &str, namespaces: &[&str]) -> Option<RealOperator> {
    let options = OperatorOptions {
        leader_election: true,
        identity: format!("shard-{name}-0"),
        args: vec![
            format!("--selector=modeldeploy.io/shard={name}"),
            format!("--lease-name=modeldeploy-leader-{name}"),
            format!("--lease-duration-seconds={LEASE_SECONDS}"),
        ],
        ..OperatorOptions::watching(namespaces)
    };
    let op = RealOperator::start(cp, options).await?;
    op.wait_ready(WAIT).await;
    until_held_by(
        cp,
        op.namespace(),
        &format!("modeldeploy-leader-{name}"),
        &format!("shard-{name}-0"),
    )
    .await;
    Some(op)
}

async fn promoted(story: &Story, version: &str) {
    story
        .until(&format!("{version} promoted in {}", story.ns), |s| {
            s["phase"] == "Stable" && s["stable"]["version"] == version
        })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_shards_each_roll_out_only_their_own_and_survive_each_other() {
    let Some(cp) = audited() else {
        return;
    };
    cp.install_crds().await;
    let (ns_a, ns_b) = (cp.namespace("shard-a").await, cp.namespace("shard-b").await);
    let both = [ns_a.as_str(), ns_b.as_str()];
    let Some(op_a) = shard(cp, "a", &both).await else {
        return;
    };
    let op_b = shard(cp, "b", &both).await.unwrap();
    let (user_a, user_b) = (user_of(&op_a), user_of(&op_b));
    assert_ne!(user_a, user_b);
    let mut a = stable_story(cp, &ns_a, op_a, json!({"modeldeploy.io/shard": "a"})).await;
    let mut b = stable_story(cp, &ns_b, op_b, json!({"modeldeploy.io/shard": "b"})).await;
    a.release("2.0.0", &[]).await;
    b.release("2.0.0", &[]).await;
    tokio::join!(promoted(&a, "2.0.0"), promoted(&b, "2.0.0"));

    // Shard A dies; B goes on with its own, and nobody touches A's.
    a.op.kill();
    let a_generation = a.api.get(NAME).await.unwrap().metadata.generation;
    a.release("3.0.0", &[]).await;
    b.release("3.0.0", &[]).await;
    promoted(&b, "3.0.0").await;
    b.wait_for_pods(&["3.0.0"]).await;
    b.assert_pods_run_their_revisions();
    let s = a.status().await;
    assert_eq!(s["stable"]["version"], "2.0.0", "{s:#}");
    assert_eq!(s["observedGeneration"], json!(a_generation), "{s:#}");

    let writes = writes(cp);
    let in_ns = |user: &str, ns: &str| {
        writes
            .iter()
            .filter(|w| w.user == user && w.namespace == ns)
            .count()
    };
    assert!(in_ns(&user_a, &ns_a) > 0 && in_ns(&user_b, &ns_b) > 0);
    for w in &writes {
        assert!(
            !(w.user == user_a && w.namespace == ns_b),
            "shard A wrote B's {}",
            w.what
        );
        assert!(
            !(w.user == user_b && w.namespace == ns_a),
            "shard B wrote A's {}",
            w.what
        );
    }
    assert_eq!(b.events("Promoted").await.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_relabelled_mid_rollout_moves_to_the_other_shard_which_finishes_it_once() {
    let Some(cp) = audited() else {
        return;
    };
    cp.install_crds().await;
    let ns = cp.namespace("move").await;
    let Some(op_c) = shard(cp, "c", &[&ns]).await else {
        return;
    };
    let op_d = shard(cp, "d", &[&ns]).await.unwrap();
    let (user_c, user_d) = (user_of(&op_c), user_of(&op_d));
    let mut story = stable_story(cp, &ns, op_c, json!({"modeldeploy.io/shard": "c"})).await;
    story.release("2.0.0", &[]).await;
    story
        .until("step 1", |s| s["canary"]["step"].as_i64().unwrap_or(0) >= 1)
        .await;
    let moved_at = Timestamp::now();
    story
        .api
        .patch(
            NAME,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(
                json!({"metadata": {"labels": {"modeldeploy.io/shard": "d"}}}),
            ),
        )
        .await
        .unwrap();
    let s = story
        .until("v2 promoted by shard d", |s| {
            s["phase"] == "Stable" && s["stable"]["version"] == "2.0.0"
        })
        .await;
    assert_eq!(history(&s), ["Deployed", "Promoted"]);
    assert_eq!(story.events("Promoted").await.len(), 1);
    let steps = story.events("StepCompleted").await;
    for i in 1..=4 {
        let n = steps
            .iter()
            .filter(|m| m.contains(&format!("step {i}/4 done")))
            .count();
        assert_eq!(n, 1, "step {i} completed {n} times: {steps:#?}");
    }
    story.wait_for_pods(&["2.0.0"]).await;
    story.assert_pods_run_their_revisions();
    story.assert_capacity_kept();
    // A reconcile of shard c already running when the label moved may still
    // finish its writes; none starts later than this after the move.
    let in_flight = Timestamp::from_millisecond(moved_at.as_millisecond() + 5_000).unwrap();
    let writes = writes(cp);
    let of = |user: &str| -> Vec<&Write> {
        writes
            .iter()
            .filter(|w| w.user == user && w.namespace == ns)
            .collect()
    };
    let (by_c, by_d) = (of(&user_c), of(&user_d));
    assert!(
        by_d.iter().any(|w| w.at > moved_at),
        "shard d never took over"
    );
    assert!(
        !by_d.iter().any(|w| w.at < moved_at),
        "shard d wrote before the move"
    );
    if let Some(w) = by_c.iter().find(|w| w.at > in_flight) {
        panic!(
            "shard c wrote {} at {} after the move at {moved_at}",
            w.what, w.at
        );
    }
}

/// A malformed selector stops the start with one line naming the flag,
/// before the cluster is even asked (here there is none to ask).
#[tokio::test]
async fn a_malformed_selector_is_refused_at_start_naming_the_flag() {
    let client =
        kube::Client::try_from(kube::Config::new("http://127.0.0.1:9".parse().unwrap())).unwrap();
    let config = modeldeploy::operator::OperatorConfig {
        selector: "modeldeploy.io/shard in (a".into(),
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
    assert!(message.starts_with("--selector: "), "{message}");
    assert!(message.contains("unclosed '('"), "{message}");
    assert!(!message.contains('\n'), "{message}");
}
