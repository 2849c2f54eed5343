use super::*;
use crate::api::{ModelDeploymentSpec, validate};
use proptest::prelude::*;
use serde_json::json;

fn spec(version: &str) -> ModelDeploymentSpec {
    serde_json::from_value(json!({
        "model": {"version": version, "image": format!("example/model:{version}")},
        "replicas": 3,
        "resources": {"requests": {"cpu": "1"}, "limits": {"cpu": "1"}},
        "revisionHistoryLimit": 3
    }))
    .unwrap()
}

fn at(second: i64) -> Timestamp {
    Timestamp::from_second(1_700_000_000 + second).unwrap()
}

fn run(
    spec: &ModelDeploymentSpec,
    status: &ModelDeploymentStatus,
    observed: &Observed,
    now: Timestamp,
) -> Decision {
    let valid = validate(spec).unwrap();
    decide(&Input {
        name: "scorer",
        spec,
        valid: &valid,
        generation: Some(1),
        status,
        observed,
        analysis: None,
        canary_pods_failure: None,
        request: None,
        gate: None,
        now,
    })
}

/// Plays the Deployment controller: every workload is observed at its size,
/// available or not.
fn observe(decision: &Decision, available: &[&str]) -> Observed {
    decision
        .workloads
        .iter()
        .map(|w| {
            let up = available.contains(&w.hash.as_str());
            (
                w.hash.clone(),
                ObservedRevision {
                    revision: w.revision,
                    version: w.version.clone(),
                    image: format!("example/model:{}", w.version),
                    replicas: w.replicas,
                    available_replicas: if up { w.replicas } else { 0 },
                    deadline_exceeded: false,
                    lagging: false,
                },
            )
        })
        .collect()
}

fn settled(spec: &ModelDeploymentSpec) -> (ModelDeploymentStatus, Observed) {
    let d = run(
        spec,
        &ModelDeploymentStatus::default(),
        &Observed::new(),
        at(0),
    );
    let obs = observe(&d, &[&revision_hash(spec)]);
    let d = run(spec, &d.status, &obs, at(10));
    let obs = observe(&d, &[&revision_hash(spec)]);
    (d.status, obs)
}

#[test]
fn a_first_revision_is_pending_until_available_then_stable() {
    let s = spec("1.0.0");
    let d = run(
        &s,
        &ModelDeploymentStatus::default(),
        &Observed::new(),
        at(0),
    );
    assert_eq!(d.status.phase, Some(Phase::Pending));
    assert_eq!(d.workloads.len(), 1);
    assert_eq!(d.workloads[0].replicas, 3);
    assert_eq!(d.workloads[0].revision, 1);
    assert!(!conditions::is_true(
        &d.status.conditions,
        conditions::READY
    ));
    assert!(d.notes.is_empty());

    let obs = observe(&d, &[&revision_hash(&s)]);
    let d = run(&s, &d.status, &obs, at(10));
    assert_eq!(d.status.phase, Some(Phase::Stable));
    assert!(conditions::is_true(&d.status.conditions, conditions::READY));
    assert_eq!(d.status.history.len(), 1);
    assert_eq!(d.status.history[0].outcome, Outcome::Deployed);
    assert_eq!(d.notes[0].reason, "Deployed");
    assert_eq!(d.status.stable.as_ref().unwrap().version, "1.0.0");
    assert_eq!(d.status.observed_generation, Some(1));
}

#[test]
fn at_rest_the_decision_repeats_itself_exactly() {
    let s = spec("1.0.0");
    let (status, obs) = settled(&s);
    let again = run(&s, &status, &obs, at(5_000));
    assert_eq!(again.status, status);
    assert!(again.notes.is_empty());
    assert_eq!(again.requeue_after, None);
}

#[test]
fn a_new_version_replaces_the_old_once_available() {
    let v1 = spec("1.0.0");
    let (status, obs) = settled(&v1);
    let v2 = spec("2.0.0");
    let h1 = revision_hash(&v1);
    let h2 = revision_hash(&v2);

    let d = run(&v2, &status, &obs, at(100));
    assert_eq!(d.status.phase, Some(Phase::Promoting));
    assert_eq!(d.notes[0].reason, "RolloutStarted");
    let canary = d.status.canary.clone().unwrap();
    assert_eq!((canary.revision, canary.hash.as_str()), (2, h2.as_str()));
    let sizes: BTreeMap<_, _> = d
        .workloads
        .iter()
        .map(|w| (w.hash.clone(), w.replicas))
        .collect();
    assert_eq!(sizes[&h1], 3, "the old revision keeps serving");
    assert_eq!(sizes[&h2], 3);
    assert!(d.requeue_after.is_some());

    // Not yet available: nothing changes but the clock.
    let obs2 = observe(&d, &[&h1]);
    let waiting = run(&v2, &d.status, &obs2, at(130));
    assert_eq!(waiting.status, d.status);
    assert!(waiting.notes.is_empty());

    let obs3 = observe(&d, &[&h1, &h2]);
    let done = run(&v2, &d.status, &obs3, at(160));
    assert_eq!(done.status.phase, Some(Phase::Stable));
    assert_eq!(done.status.stable.as_ref().unwrap().hash, h2);
    assert_eq!(done.status.previous.as_ref().unwrap().hash, h1);
    assert!(done.status.canary.is_none());
    assert_eq!(
        done.status.history.last().unwrap().outcome,
        Outcome::Replaced
    );
    let sizes: BTreeMap<_, _> = done
        .workloads
        .iter()
        .map(|w| (w.hash.clone(), w.replicas))
        .collect();
    assert_eq!(sizes[&h1], 0, "the old revision scales down");
    assert_eq!(sizes[&h2], 3);
    assert_eq!(done.notes[0].reason, "Replaced");
}

#[test]
fn a_revision_that_never_becomes_available_is_rolled_back_and_not_retried() {
    let v1 = spec("1.0.0");
    let (status, obs) = settled(&v1);
    let v2 = spec("2.0.0");
    let h2 = revision_hash(&v2);
    let d = run(&v2, &status, &obs, at(100));
    let stuck = observe(&d, &[&revision_hash(&v1)]);
    let late = run(&v2, &d.status, &stuck, at(100 + 601));
    assert_eq!(
        late.status.phase,
        Some(Phase::RolledBack),
        "{:?}",
        late.status.message
    );
    assert!(conditions::is_true(
        &late.status.conditions,
        conditions::DEGRADED
    ));
    assert!(conditions::is_true(
        &late.status.conditions,
        conditions::READY
    ));
    assert_eq!(late.notes[0].kind, EventKind::Warning);
    assert_eq!(
        late.status.history.last().unwrap().outcome,
        Outcome::RolledBack
    );
    assert_eq!(late.status.rolled_back.as_ref().unwrap().hash, h2);
    let sizes: BTreeMap<_, _> = late
        .workloads
        .iter()
        .map(|w| (w.hash.clone(), w.replicas))
        .collect();
    assert_eq!(sizes[&h2], 0);

    // The spec still names v2: it stays rolled back, quietly.
    let obs = observe(&late, &[&revision_hash(&v1)]);
    let again = run(&v2, &late.status, &obs, at(2_000));
    assert_eq!(again.status, late.status);
    assert!(again.notes.is_empty());

    // A new spec moves on.
    let v3 = spec("3.0.0");
    let next = run(&v3, &late.status, &obs, at(2_100));
    assert_eq!(next.status.phase, Some(Phase::Promoting));
    assert_eq!(next.status.canary.as_ref().unwrap().revision, 3);
}

#[test]
fn the_deployment_controllers_deadline_also_counts() {
    let v1 = spec("1.0.0");
    let (status, obs) = settled(&v1);
    let v2 = spec("2.0.0");
    let d = run(&v2, &status, &obs, at(100));
    let mut stuck = observe(&d, &[&revision_hash(&v1)]);
    stuck
        .get_mut(&revision_hash(&v2))
        .unwrap()
        .deadline_exceeded = true;
    let rb = run(&v2, &d.status, &stuck, at(110));
    assert_eq!(rb.status.phase, Some(Phase::RolledBack));
}

#[test]
fn a_newer_version_mid_replacement_supersedes_the_pending_one() {
    let v1 = spec("1.0.0");
    let (status, obs) = settled(&v1);
    let d = run(&spec("2.0.0"), &status, &obs, at(100));
    let v3 = spec("3.0.0");
    let obs2 = observe(&d, &[&revision_hash(&v1)]);
    let d3 = run(&v3, &d.status, &obs2, at(120));
    let canary = d3.status.canary.as_ref().unwrap();
    assert_eq!((canary.revision, canary.version.as_str()), (3, "3.0.0"));
    assert_eq!(
        d3.status.history.last().unwrap().outcome,
        Outcome::Superseded
    );
    assert_eq!(d3.status.history.last().unwrap().revision, 2);
    let sizes: BTreeMap<_, _> = d3
        .workloads
        .iter()
        .map(|w| (w.revision, w.replicas))
        .collect();
    assert_eq!(sizes[&2], 0, "the abandoned revision gets no pods");
    assert_eq!(sizes[&3], 3);
}

#[test]
fn old_revisions_beyond_the_history_limit_are_dropped() {
    let mut status = ModelDeploymentStatus::default();
    let mut obs = Observed::new();
    for v in 1..=6 {
        let s = spec(&format!("{v}.0.0"));
        let d = run(&s, &status, &obs, at(v * 1000));
        let h = revision_hash(&s);
        let o = observe(&d, &[h.as_str()]);
        let d = run(&s, &d.status, &o, at(v * 1000 + 10));
        obs = observe(&d, &[h.as_str()]);
        status = d.status;
    }
    // Stable plus three zero-sized older revisions.
    assert_eq!(obs.len(), 4);
    let revisions: Vec<_> = obs.values().map(|o| o.revision).collect();
    assert!(revisions.contains(&6) && revisions.contains(&3) && !revisions.contains(&2));
    assert!(status.history.len() <= 3);
}

#[test]
fn an_invalid_spec_keeps_what_runs_and_says_why() {
    let (status, _) = settled(&spec("1.0.0"));
    let err = InvalidSpec {
        field: "spec.resources.requests.cpu".into(),
        message: "exceeds the limit".into(),
    };
    let s = invalid_spec(&status, &err, Some(2), at(50));
    let ready = conditions::get(&s.conditions, conditions::READY).unwrap();
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", "InvalidSpec")
    );
    assert!(ready.message.contains("spec.resources.requests.cpu"));
    assert_eq!(s.stable, status.stable);
    assert_eq!(s.observed_generation, Some(2));
    assert_eq!(
        invalid_spec(&s, &err, Some(2), at(99)),
        s,
        "no churn while it stays invalid"
    );
}

proptest! {
    /// Feeding a decision's own status back in, with the same observations,
    /// changes nothing: no step repeated, no second history entry.
    #[test]
    fn deciding_again_on_its_own_output_changes_nothing(
        versions in proptest::collection::vec(1u8..4, 1..6),
        availability in proptest::collection::vec(any::<bool>(), 1..6),
        gaps in proptest::collection::vec(0i64..900, 1..6),
    ) {
        let mut status = ModelDeploymentStatus::default();
        let mut obs = Observed::new();
        let mut t = 0;
        for (i, v) in versions.iter().enumerate() {
            let s = spec(&format!("{v}.0.0"));
            t += gaps[i % gaps.len()];
            let d = run(&s, &status, &obs, at(t));
            let again = run(&s, &d.status, &obs, at(t));
            prop_assert_eq!(&again.status, &d.status);
            prop_assert!(again.notes.is_empty());
            for w in &d.workloads {
                prop_assert!(w.replicas == 0 || w.replicas == s.replicas);
            }
            let up: Vec<String> = d.workloads.iter()
                .filter(|_| availability[i % availability.len()])
                .map(|w| w.hash.clone()).collect();
            let up: Vec<&str> = up.iter().map(String::as_str).collect();
            obs = observe(&d, &up);
            status = d.status;
        }
    }
}
