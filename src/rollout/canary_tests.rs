//! Canary stories and invariants, with a tiny stand-in for the Deployment
//! controller: every workload reaches its size unless told otherwise.

use std::collections::BTreeSet;

use super::*;
use crate::api::{CheckStatus, CheckVerdict, ModelDeploymentSpec, PauseReason, validate};
use proptest::prelude::*;
use serde_json::{Value, json};

fn canary_spec(version: &str, extra: Value) -> ModelDeploymentSpec {
    let mut v = json!({
        "model": {"version": version, "image": format!("example/model:{version}")},
        "replicas": 10,
        "resources": {"requests": {"cpu": "1"}, "limits": {"cpu": "1"}},
        "rollout": {
            "strategy": "canary",
            "steps": [
                {"setWeight": 20},
                {"pause": {"duration": "60s"}},
                {"setWeight": 50},
                {"analysis": {}},
                {"setWeight": 80}
            ],
            "scaleDownDelay": "30s",
            "analysis": {
                "interval": "30s", "failureLimit": 3, "inconclusiveLimit": 4,
                "checks": [{"name": "errors", "errorRate": {"max": 0.01}}]
            }
        },
        "guard": {"window": "10m", "interval": "30s", "failureLimit": 2,
                  "checks": [{"name": "errors", "errorRate": {"max": 0.02}}]}
    });
    merge(&mut v, extra);
    serde_json::from_value(v).unwrap()
}

fn merge(base: &mut Value, extra: Value) {
    match (base, extra) {
        (Value::Object(b), Value::Object(e)) => {
            for (k, v) in e {
                merge(b.entry(k).or_insert(Value::Null), v);
            }
        }
        (b, e) => *b = e,
    }
}

fn run_with(verdict: CheckVerdict, at: Timestamp) -> AnalysisRun {
    AnalysisRun {
        at,
        checks: vec![CheckStatus {
            name: "errors".into(),
            value: Some(match verdict {
                CheckVerdict::Fail => 0.05,
                _ => 0.001,
            }),
            threshold: Some(0.01),
            verdict,
            samples: 3000,
            message: None,
        }],
        decisive: false,
        drift: None,
        ab: None,
    }
}

struct Sim {
    spec: ModelDeploymentSpec,
    status: ModelDeploymentStatus,
    observed: Observed,
    t: i64,
    /// Revisions whose pods never become available.
    broken: BTreeSet<String>,
    /// Pods asked for become available one decision later (scaling down is
    /// immediate), as with a real Deployment controller.
    slow: bool,
    notes: Vec<Note>,
    last: Option<Decision>,
}

impl Sim {
    fn now(&self) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + self.t).unwrap()
    }

    /// A stable v1 at rest.
    fn settled(spec: ModelDeploymentSpec) -> Self {
        let mut sim = Sim {
            spec,
            status: ModelDeploymentStatus::default(),
            observed: Observed::new(),
            t: 0,
            broken: BTreeSet::new(),
            slow: false,
            notes: Vec::new(),
            last: None,
        };
        sim.tick(None, None, None);
        sim.tick(None, None, None);
        assert_eq!(sim.status.phase, Some(Phase::Stable));
        sim
    }

    fn tick(
        &mut self,
        run: Option<AnalysisRun>,
        pods: Option<&str>,
        request: Option<&Request>,
    ) -> &Decision {
        let valid = validate(&self.spec).unwrap();
        let d = decide(&Input {
            name: "scorer",
            spec: &self.spec,
            valid: &valid,
            generation: Some(1),
            status: &self.status,
            observed: &self.observed,
            analysis: run.as_ref(),
            canary_pods_failure: pods,
            request,
            gate: None,
            now: self.now(),
        });
        // Deciding again on its own output changes nothing.
        let again = decide(&Input {
            name: "scorer",
            spec: &self.spec,
            valid: &valid,
            generation: Some(1),
            status: &d.status,
            observed: &self.observed,
            analysis: run.as_ref(),
            canary_pods_failure: None,
            request,
            gate: None,
            now: self.now(),
        });
        assert_eq!(
            again.status, d.status,
            "a second decision changed the status"
        );
        let before = std::mem::take(&mut self.observed);
        self.observed = d
            .workloads
            .iter()
            .map(|w| {
                let up = !self.broken.contains(&w.hash);
                let asked_before = before.get(&w.hash).map_or(0, |o| o.replicas);
                let came_up = if self.slow {
                    w.replicas.min(asked_before)
                } else {
                    w.replicas
                };
                (
                    w.hash.clone(),
                    ObservedRevision {
                        revision: w.revision,
                        version: w.version.clone(),
                        image: format!("example/model:{}", w.version),
                        replicas: w.replicas,
                        available_replicas: if up { came_up } else { 0 },
                        deadline_exceeded: false,
                        lagging: false,
                    },
                )
            })
            .collect();
        self.status = d.status.clone();
        self.notes.extend(d.notes.iter().cloned());
        self.last = Some(d);
        self.last.as_ref().unwrap()
    }

    /// Time passes by one analysis interval, with one run of the given verdict.
    fn interval(&mut self, verdict: CheckVerdict) -> &Decision {
        self.t += 30;
        let due = {
            let valid = validate(&self.spec).unwrap();
            analysis_due(&self.spec, &valid, &self.status, self.now())
        };
        let run = due.then(|| run_with(verdict, self.now()));
        self.tick(run, None, None)
    }

    /// Start rolling out `spec` and let its first pods come up.
    fn start(&mut self, spec: ModelDeploymentSpec) {
        self.spec = spec;
        self.tick(None, None, None);
        self.t += 5;
        self.tick(None, None, None);
    }

    fn sizes(&self) -> BTreeMap<i64, i32> {
        self.last
            .as_ref()
            .unwrap()
            .workloads
            .iter()
            .map(|w| (w.revision, w.replicas))
            .collect()
    }

    fn reasons(&self) -> Vec<&'static str> {
        self.notes.iter().map(|n| n.reason).collect()
    }
}

#[test]
fn a_good_canary_is_promoted_step_by_step() {
    let mut sim = Sim::settled(canary_spec("1.0.0", json!({})));
    sim.spec = canary_spec("2.0.0", json!({}));
    sim.tick(None, None, None);
    assert_eq!(sim.status.phase, Some(Phase::Progressing));
    assert_eq!(
        sim.sizes(),
        BTreeMap::from([(1, 10), (2, 2)]),
        "canary pods first, stable whole until they are available"
    );
    sim.tick(None, None, None);
    assert_eq!(
        sim.sizes(),
        BTreeMap::from([(1, 8), (2, 2)]),
        "20% of 10 pods once the canary's are available"
    );
    let mut weights = Vec::new();
    for _ in 0..20 {
        sim.interval(CheckVerdict::Pass);
        if let Some(c) = &sim.status.canary {
            weights.push(c.set_weight);
        }
        if sim.status.phase == Some(Phase::Stable) {
            break;
        }
    }
    weights.dedup();
    assert_eq!(weights, vec![20, 50, 80], "steps in order");
    assert_eq!(sim.status.stable.as_ref().unwrap().revision, 2);
    assert_eq!(
        sim.status.history.last().unwrap().outcome,
        Outcome::Promoted
    );
    assert!(sim.reasons().contains(&"Promoting") && sim.reasons().contains(&"Promoted"));
    // The old revision keeps its pods for scaleDownDelay, then lets go.
    assert_eq!(sim.sizes()[&1], 10);
    sim.interval(CheckVerdict::Pass);
    sim.interval(CheckVerdict::Pass);
    assert_eq!(sim.sizes()[&1], 0);
    assert!(
        sim.status.guard.is_some(),
        "the guard watches the promoted revision"
    );
}

#[test]
fn failed_checks_in_a_row_roll_back_and_cut_canary_traffic_at_once() {
    let mut sim = Sim::settled(canary_spec("1.0.0", json!({})));
    sim.start(canary_spec("2.0.0", json!({})));
    sim.interval(CheckVerdict::Fail);
    sim.interval(CheckVerdict::Fail);
    assert_eq!(sim.status.phase, Some(Phase::Progressing));
    let d = sim.interval(CheckVerdict::Fail);
    assert_eq!(d.status.phase, Some(Phase::RolledBack));
    assert_eq!(d.canary_weight, 0);
    let sizes = sim.sizes();
    assert_eq!(
        (sizes[&1], sizes[&2]),
        (10, 2),
        "stable back to full size; the canary's pods go once stable's are available"
    );
    sim.tick(None, None, None);
    let sizes = sim.sizes();
    assert_eq!((sizes[&1], sizes[&2]), (10, 0));
    assert!(sim.status.draining.is_none());
    let rb = sim.notes.iter().find(|n| n.reason == "RolledBack").unwrap();
    assert_eq!(rb.kind, EventKind::Warning);
    assert!(
        rb.message
            .contains("errors: value 0.0500 vs threshold 0.0100"),
        "{}",
        rb.message
    );
    assert!(conditions::is_true(
        &sim.status.conditions,
        conditions::DEGRADED
    ));
}

#[test]
fn drift_turning_bad_is_noted_once() {
    let drifty = json!({"rollout": {"analysis": {"checks": [
        {"name": "errors", "errorRate": {"max": 0.01}},
        {"name": "inputs", "inputDrift": {"method": "psi", "max": 0.2}}
    ]}}});
    let mut sim = Sim::settled(canary_spec("1.0.0", drifty.clone()));
    sim.start(canary_spec("2.0.0", drifty));
    let run = |sim: &Sim, score: f64| {
        let mut r = run_with(CheckVerdict::Pass, sim.now());
        r.checks.push(CheckStatus {
            name: "inputs".into(),
            value: Some(score),
            threshold: Some(0.2),
            verdict: if score > 0.2 {
                CheckVerdict::Fail
            } else {
                CheckVerdict::Pass
            },
            samples: 3000,
            message: None,
        });
        r
    };
    let drift_notes = |sim: &Sim| {
        sim.reasons()
            .iter()
            .filter(|r| **r == DRIFT_DETECTED)
            .count()
    };
    for score in [0.05, 0.31, 0.35] {
        sim.t += 30;
        let r = run(&sim, score);
        sim.tick(Some(r), None, None);
    }
    assert_eq!(drift_notes(&sim), 1, "{:?}", sim.reasons());
    let note = sim
        .notes
        .iter()
        .find(|n| n.reason == DRIFT_DETECTED)
        .unwrap();
    assert_eq!(note.kind, EventKind::Warning);
    assert!(
        note.message
            .contains("check inputs scored 0.3100 (max 0.2)"),
        "{}",
        note.message
    );
}

#[test]
fn a_decisive_failure_rolls_back_in_one_interval() {
    let mut sim = Sim::settled(canary_spec("1.0.0", json!({})));
    sim.spec = canary_spec("2.0.0", json!({}));
    sim.tick(None, None, None);
    sim.t += 30;
    let mut run = run_with(CheckVerdict::Fail, sim.now());
    run.decisive = true;
    sim.tick(Some(run), None, None);
    assert_eq!(sim.status.phase, Some(Phase::RolledBack));
}

#[test]
fn crash_looping_canary_pods_roll_back_without_waiting_for_data() {
    let mut sim = Sim::settled(canary_spec("1.0.0", json!({})));
    sim.spec = canary_spec("2.0.0", json!({}));
    sim.tick(None, None, None);
    sim.t += 5;
    sim.tick(None, Some("container model in CrashLoopBackOff"), None);
    assert_eq!(sim.status.phase, Some(Phase::RolledBack));
    assert!(
        sim.status
            .history
            .last()
            .unwrap()
            .reason
            .contains("CrashLoopBackOff")
    );
}

#[test]
fn a_canary_that_never_gets_ready_is_rolled_back_at_the_deadline() {
    let mut sim = Sim::settled(canary_spec(
        "1.0.0",
        json!({"rollout": {"progressDeadline": "2m"}}),
    ));
    sim.spec = canary_spec("2.0.0", json!({"rollout": {"progressDeadline": "2m"}}));
    sim.broken.insert(revision_hash(&sim.spec));
    sim.tick(None, None, None);
    for _ in 0..3 {
        sim.interval(CheckVerdict::Inconclusive);
        assert_eq!(sim.status.phase, Some(Phase::Progressing));
    }
    sim.interval(CheckVerdict::Inconclusive);
    assert_eq!(sim.status.phase, Some(Phase::RolledBack));
}

/// A canary rollout whose analysis found no data `inconclusiveLimit` times.
fn paused_for_lack_of_data() -> Sim {
    let mut sim = Sim::settled(canary_spec("1.0.0", json!({})));
    sim.spec = canary_spec("2.0.0", json!({}));
    sim.tick(None, None, None);
    for _ in 0..12 {
        sim.interval(CheckVerdict::Inconclusive);
    }
    assert_eq!(sim.status.phase, Some(Phase::Paused));
    sim
}

#[test]
fn no_data_pauses_and_never_promotes() {
    let mut sim = paused_for_lack_of_data();
    let c = sim.status.canary.clone().unwrap();
    assert_eq!(c.paused, Some(PauseReason::Inconclusive));
    assert_eq!(
        (c.step, c.set_weight),
        (2, 50),
        "held at the setWeight 50 step: {c:?}"
    );
    assert!(sim.reasons().contains(&"AnalysisInconclusive"));
    // A resume starts the count again.
    sim.t += 1;
    sim.tick(None, None, Some(&Request::new("r1", RequestAction::Resume)));
    assert_eq!(sim.status.phase, Some(Phase::Progressing));
    assert_eq!(
        sim.status.analysis.as_ref().unwrap().inconclusive_in_a_row,
        0
    );
}

#[test]
fn a_pause_for_lack_of_data_ends_when_passing_evidence_arrives() {
    let mut sim = paused_for_lack_of_data();
    // Still no data: still paused. Then a run with data that passes.
    sim.interval(CheckVerdict::Inconclusive);
    assert_eq!(sim.status.phase, Some(Phase::Paused));
    sim.interval(CheckVerdict::Pass);
    assert_eq!(sim.status.phase, Some(Phase::Progressing));
    assert!(sim.reasons().contains(&"AnalysisResumed"));
    for _ in 0..10 {
        sim.interval(CheckVerdict::Pass);
    }
    assert_eq!(sim.status.stable.as_ref().unwrap().version, "2.0.0");
    // A pause a person asked for is not lifted by passing runs.
    let mut sim = Sim::settled(canary_spec("1.0.0", json!({})));
    sim.spec = canary_spec("2.0.0", json!({}));
    sim.tick(None, None, None);
    sim.t += 1;
    sim.tick(None, None, Some(&Request::new("p1", RequestAction::Pause)));
    for _ in 0..5 {
        sim.interval(CheckVerdict::Pass);
    }
    assert_eq!(sim.status.phase, Some(Phase::Paused));
    assert_eq!(
        sim.status.canary.as_ref().unwrap().paused,
        Some(PauseReason::UserRequest)
    );
}

#[test]
fn inconclusive_can_be_a_rollback_by_policy() {
    let extra = json!({"rollout": {"analysis": {"inconclusivePolicy": "rollback"}}});
    let mut sim = Sim::settled(canary_spec("1.0.0", extra.clone()));
    sim.start(canary_spec("2.0.0", extra));
    for _ in 0..4 {
        sim.interval(CheckVerdict::Inconclusive);
    }
    assert_eq!(sim.status.phase, Some(Phase::RolledBack));
}

#[test]
fn the_last_step_waits_for_a_passing_run_before_promotion() {
    let extra = json!({"rollout": {"steps": [{"setWeight": 50}]}});
    let mut sim = Sim::settled(canary_spec("1.0.0", extra.clone()));
    sim.spec = canary_spec("2.0.0", extra);
    sim.tick(None, None, None);
    sim.interval(CheckVerdict::Inconclusive);
    sim.interval(CheckVerdict::Inconclusive);
    assert_ne!(sim.status.phase, Some(Phase::Promoting));
    assert!(!sim.status.canary.as_ref().unwrap().promoting);
    sim.interval(CheckVerdict::Pass);
    assert_eq!(sim.status.phase, Some(Phase::Promoting));
}

#[test]
fn an_untimed_pause_waits_for_promote() {
    let extra =
        json!({"rollout": {"steps": [{"setWeight": 30}, {"pause": {}}, {"setWeight": 60}]}});
    let mut sim = Sim::settled(canary_spec("1.0.0", extra.clone()));
    sim.spec = canary_spec("2.0.0", extra);
    sim.tick(None, None, None);
    for _ in 0..5 {
        sim.interval(CheckVerdict::Pass);
    }
    assert_eq!(sim.status.phase, Some(Phase::Paused));
    assert_eq!(
        sim.status.canary.as_ref().unwrap().paused,
        Some(PauseReason::Step)
    );
    let promote = Request::new("p1", RequestAction::Promote);
    sim.t += 1;
    sim.tick(None, None, Some(&promote));
    assert_eq!(sim.status.phase, Some(Phase::Progressing));
    assert_eq!(sim.status.canary.as_ref().unwrap().set_weight, 60);
    // The same request again is not carried out twice.
    let requests = |sim: &Sim| sim.notes.iter().filter(|n| n.reason == "Request").count();
    assert_eq!(requests(&sim), 1);
    sim.t += 1;
    sim.tick(None, None, Some(&promote));
    assert_eq!(requests(&sim), 1);
    assert_eq!(sim.status.last_request.as_deref(), Some("p1"));
}

#[test]
fn a_paused_canary_is_still_judged_and_rolled_back() {
    let extra = json!({"rollout": {"steps": [{"setWeight": 30}, {"pause": {}}]}});
    let mut sim = Sim::settled(canary_spec("1.0.0", extra.clone()));
    sim.start(canary_spec("2.0.0", extra));
    sim.interval(CheckVerdict::Pass);
    assert_eq!(sim.status.phase, Some(Phase::Paused));
    for _ in 0..3 {
        sim.interval(CheckVerdict::Fail);
    }
    assert_eq!(sim.status.phase, Some(Phase::RolledBack));
}

fn ab_spec(version: &str) -> ModelDeploymentSpec {
    let mut spec = canary_spec(version, json!({}));
    let r = spec.rollout.as_mut().unwrap();
    r.strategy = crate::api::Strategy::AbTest;
    r.steps.clear();
    r.ab_test = Some(
        serde_json::from_value(json!({
            "weight": 50, "minSamples": 1000, "maxDuration": "10m",
            "objective": {"metric": "errorRate", "goal": "minimize"}
        }))
        .unwrap(),
    );
    spec
}

fn ab_run(at: Timestamp, winner: Option<crate::analysis::abtest::Winner>) -> AnalysisRun {
    let mut run = run_with(CheckVerdict::Pass, at);
    run.ab = Some(crate::analysis::abtest::Comparison {
        samples_stable: 5000,
        samples_candidate: 5000,
        effect: Some(-0.01),
        p_value: Some(if winner.is_some() { 1e-4 } else { 0.4 }),
        winner,
        message: "test".into(),
    });
    run
}

#[test]
fn an_ab_test_promotes_the_winner_and_records_the_statistics() {
    let mut sim = Sim::settled(ab_spec("1.0.0"));
    sim.start(ab_spec("2.0.0"));
    assert_eq!(
        sim.sizes(),
        BTreeMap::from([(1, 5), (2, 5)]),
        "a fixed 50/50 split"
    );
    sim.t += 30;
    sim.tick(Some(ab_run(sim.now(), None)), None, None);
    assert_eq!(sim.status.phase, Some(Phase::Progressing));
    sim.t += 30;
    sim.tick(
        Some(ab_run(
            sim.now(),
            Some(crate::analysis::abtest::Winner::Candidate),
        )),
        None,
        None,
    );
    assert_eq!(sim.status.phase, Some(Phase::Promoting));
    let ab = sim.status.ab_test.clone().unwrap();
    assert_eq!(ab.winner.as_deref(), Some("candidate"));
    assert_eq!(ab.p_value, Some(1e-4));
    sim.t += 5;
    sim.tick(None, None, None);
    assert_eq!(sim.status.stable.as_ref().unwrap().revision, 2);
}

#[test]
fn an_ab_test_keeps_stable_when_it_wins_or_nothing_is_decided() {
    let mut sim = Sim::settled(ab_spec("1.0.0"));
    sim.start(ab_spec("2.0.0"));
    sim.t += 30;
    sim.tick(
        Some(ab_run(
            sim.now(),
            Some(crate::analysis::abtest::Winner::Stable),
        )),
        None,
        None,
    );
    assert_eq!(sim.status.phase, Some(Phase::RolledBack));
    assert_eq!(sim.status.stable.as_ref().unwrap().revision, 1);

    let mut sim = Sim::settled(ab_spec("1.0.0"));
    sim.start(ab_spec("2.0.0"));
    for _ in 0..25 {
        sim.t += 30;
        let now = sim.now();
        sim.tick(Some(ab_run(now, None)), None, None);
    }
    assert_eq!(sim.status.phase, Some(Phase::RolledBack));
    assert_eq!(
        sim.status.ab_test.as_ref().unwrap().winner.as_deref(),
        Some("none")
    );
    assert!(
        sim.status
            .history
            .last()
            .unwrap()
            .reason
            .contains("undecided")
    );
    // The next test starts without the last one's numbers.
    sim.start(ab_spec("3.0.0"));
    assert_eq!(sim.status.phase, Some(Phase::Progressing));
    assert_eq!(sim.status.ab_test, None);
}

#[test]
fn abort_then_retry() {
    let mut sim = Sim::settled(canary_spec("1.0.0", json!({})));
    sim.spec = canary_spec("2.0.0", json!({}));
    sim.tick(None, None, None);
    sim.t += 1;
    sim.tick(None, None, Some(&Request::new("a", RequestAction::Abort)));
    assert_eq!(sim.status.phase, Some(Phase::RolledBack));
    assert_eq!(sim.sizes()[&2], 0);
    sim.t += 60;
    sim.tick(None, None, None);
    assert_eq!(
        sim.status.phase,
        Some(Phase::RolledBack),
        "not retried on its own"
    );
    sim.t += 1;
    sim.tick(None, None, Some(&Request::new("b", RequestAction::Retry)));
    assert_eq!(sim.status.phase, Some(Phase::Progressing));
    let c = sim.status.canary.as_ref().unwrap();
    assert_eq!((c.revision, c.step), (2, 0));
}

#[test]
fn a_new_version_mid_rollout_restarts_it() {
    let mut sim = Sim::settled(canary_spec("1.0.0", json!({})));
    sim.spec = canary_spec("2.0.0", json!({}));
    sim.tick(None, None, None);
    for _ in 0..4 {
        sim.interval(CheckVerdict::Pass);
    }
    assert!(sim.status.canary.as_ref().unwrap().step >= 2);
    let had = sim.sizes()[&2];
    let stable_had = sim.sizes()[&1];
    assert!(had > 0 && stable_had < 10);
    sim.spec = canary_spec("3.0.0", json!({}));
    sim.t += 1;
    sim.tick(None, None, None);
    let c = sim.status.canary.as_ref().unwrap();
    assert_eq!((c.revision, c.step, c.set_weight), (3, 0, 20));
    assert_eq!(
        (sim.sizes()[&1], sim.sizes()[&2]),
        (10, had.min(10 - stable_had)),
        "the abandoned canary keeps its pods until stable is whole again"
    );
    sim.tick(None, None, None);
    assert_eq!(sim.sizes()[&2], 0, "then it lets go");
    assert_eq!(
        sim.status.history.last().unwrap().outcome,
        Outcome::Superseded
    );
}

/// v1 at rest, then v2 released with every analysis passing until it is
/// promoted (Stable); both specs merged with `extra`.
fn promoted(extra: Value) -> Sim {
    let mut sim = Sim::settled(canary_spec("1.0.0", extra.clone()));
    sim.spec = canary_spec("2.0.0", extra);
    sim.tick(None, None, None);
    while sim.status.phase != Some(Phase::Stable) {
        sim.interval(CheckVerdict::Pass);
    }
    sim
}

/// v2 promoted, v1 scaled down after the delay, then two failed guard
/// checks: rolled back to v1.
fn rolled_back_by_the_guard() -> Sim {
    let mut sim = promoted(json!({}));
    for _ in 0..4 {
        sim.interval(CheckVerdict::Pass);
    }
    assert_eq!(sim.sizes()[&1], 0, "previous scaled down after the delay");
    sim.interval(CheckVerdict::Fail);
    assert_eq!(sim.status.phase, Some(Phase::Stable));
    sim.interval(CheckVerdict::Fail);
    assert_eq!(sim.status.phase, Some(Phase::RolledBack));
    sim
}

#[test]
fn the_guard_rolls_back_to_the_previous_revision() {
    let mut sim = rolled_back_by_the_guard();
    assert_eq!(sim.status.stable.as_ref().unwrap().revision, 1);
    assert_eq!(sim.status.rolled_back.as_ref().unwrap().revision, 2);
    let rb = sim.status.history.last().unwrap();
    assert!(rb.reason.contains("guard"), "{}", rb.reason);
    // The bad revision keeps its pods until the restored one is available.
    assert_eq!(sim.sizes(), BTreeMap::from([(1, 10), (2, 10)]));
    sim.t += 5;
    sim.tick(None, None, None);
    assert_eq!(sim.sizes()[&2], 0);
    assert!(sim.status.draining.is_none());
}

/// The revision the guard restores was scaled to 0 and is asked for all its
/// pods again at once: until its Deployment controller catches up, its
/// status still shows the pods it had before. Those are not trusted: the bad
/// revision keeps its pods until the restored one's are counted afresh.
#[test]
fn a_restored_revision_is_not_whole_on_counts_its_controller_has_not_caught_up_with() {
    let mut sim = rolled_back_by_the_guard();
    assert_eq!(sim.sizes(), BTreeMap::from([(1, 10), (2, 10)]));
    let restored = sim.status.stable.as_ref().unwrap().hash.clone();
    let stale = |sim: &mut Sim, available: i32, lagging: bool| {
        let o = sim.observed.get_mut(&restored).unwrap();
        o.replicas = 10;
        o.available_replicas = available;
        o.lagging = lagging;
    };
    // Scaled 10 -> 0 -> 10 before the controller saw either change.
    stale(&mut sim, 10, true);
    sim.t += 5;
    sim.tick(None, None, None);
    assert_eq!(sim.sizes()[&2], 10, "the bad revision's pods went first");
    assert!(sim.status.draining.is_some());
    // The controller caught up: the pods had gone.
    stale(&mut sim, 0, false);
    sim.t += 5;
    sim.tick(None, None, None);
    assert_eq!(sim.sizes()[&2], 10);
    // Back at full size.
    stale(&mut sim, 10, false);
    sim.t += 5;
    sim.tick(None, None, None);
    assert_eq!(sim.sizes()[&2], 0);
    assert!(sim.status.draining.is_none());
}

/// Rolled back by the guard while the previous revision still has all its
/// pods (within scaleDownDelay): they count at once, unless its Deployment
/// controller has not caught up with a change yet (its counts may be of
/// pods that are gone); then the bad revision keeps its pods until it has.
#[test]
fn a_revision_restored_within_the_scale_down_delay_counts_only_once_its_controller_caught_up() {
    for lagging in [false, true] {
        let mut sim = promoted(json!({"rollout": {"scaleDownDelay": "10m"}}));
        sim.interval(CheckVerdict::Fail);
        let previous = sim.status.previous.as_ref().unwrap().hash.clone();
        assert_eq!(sim.sizes()[&1], 10, "still within scaleDownDelay");
        sim.observed.get_mut(&previous).unwrap().lagging = lagging;
        sim.interval(CheckVerdict::Fail);
        assert_eq!(sim.status.phase, Some(Phase::RolledBack));
        assert_eq!(sim.status.draining.is_some(), lagging, "lagging: {lagging}");
        assert_eq!(sim.sizes()[&2], if lagging { 10 } else { 0 });
    }
}

#[test]
fn the_guard_ends_after_its_window() {
    let mut sim = promoted(json!({}));
    for _ in 0..25 {
        sim.interval(CheckVerdict::Pass);
    }
    assert!(sim.status.guard.is_none());
    assert!(sim.reasons().contains(&"GuardPassed"));
}

#[test]
fn the_gateway_router_keeps_stable_whole_and_moves_weight_when_the_canary_is_ready() {
    let extra = json!({"rollout": {"traffic": {"router": "gatewayAPI",
        "gatewayAPI": {"parentRefs": [{"name": "gw"}]}}}});
    let mut sim = Sim::settled(canary_spec("1.0.0", extra.clone()));
    sim.spec = canary_spec("2.0.0", extra);
    let d = sim.tick(None, None, None);
    assert_eq!(d.canary_weight, 0, "no traffic before the canary is ready");
    assert_eq!(sim.sizes(), BTreeMap::from([(1, 10), (2, 2)]));
    sim.t += 5;
    let d = sim.tick(None, None, None);
    assert_eq!(d.canary_weight, 20);
}

#[test]
fn rollback_to_an_older_revision_by_request() {
    let mut sim = Sim::settled(canary_spec("1.0.0", json!({})));
    sim.spec = canary_spec("2.0.0", json!({}));
    sim.tick(None, None, None);
    while sim.status.phase != Some(Phase::Stable) {
        sim.interval(CheckVerdict::Pass);
    }
    sim.t += 1;
    sim.tick(
        None,
        None,
        Some(&Request::new(
            "x",
            RequestAction::RollbackTo { revision: 1 },
        )),
    );
    assert_eq!(sim.status.stable.as_ref().unwrap().revision, 1);
    assert_eq!(sim.status.phase, Some(Phase::RolledBack));
    sim.t += 1;
    sim.tick(None, None, None);
    assert_eq!(sim.sizes()[&2], 0);
    assert_eq!(sim.sizes()[&1], 10);
}

#[test]
fn requests_round_trip_through_the_annotation() {
    for action in [
        RequestAction::Promote,
        RequestAction::PromoteFull,
        RequestAction::Pause,
        RequestAction::Resume,
        RequestAction::Abort,
        RequestAction::Retry,
        RequestAction::RollbackTo { revision: 3 },
    ] {
        let r = Request::new("id-1", action);
        assert_eq!(Request::parse(&r.to_annotation()).unwrap(), r);
    }
    assert!(Request::parse("promote").is_err());
    assert!(Request::parse(r#"{"id":"","action":"promote"}"#).is_err());
    assert!(Request::parse(r#"{"id":"1","action":"explode"}"#).is_err());
}

#[derive(Debug, Clone)]
enum Event {
    Interval(Option<CheckVerdict>, bool),
    PodsFail,
    Break,
    Req(u8),
    NewVersion,
}

fn event() -> impl Strategy<Value = Event> {
    prop_oneof![
        6 => (prop_oneof![Just(None), Just(Some(CheckVerdict::Pass)), Just(Some(CheckVerdict::Fail)), Just(Some(CheckVerdict::Inconclusive))], any::<bool>())
            .prop_map(|(v, decisive)| Event::Interval(v, decisive)),
        1 => Just(Event::PodsFail),
        1 => Just(Event::Break),
        1 => (0u8..7).prop_map(Event::Req),
        1 => Just(Event::NewVersion),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Invariants of every decision along random rollouts.
    #[test]
    fn rollout_invariants(events in proptest::collection::vec(event(), 1..40), gateway in any::<bool>()) {
        let extra = if gateway {
            json!({"rollout": {"traffic": {"router": "gatewayAPI", "gatewayAPI": {"parentRefs": [{"name": "gw"}]}}}})
        } else {
            json!({})
        };
        let mut sim = Sim::settled(canary_spec("1.0.0", extra.clone()));
        let mut version = 2;
        sim.spec = canary_spec("2.0.0", extra.clone());
        for (i, ev) in events.into_iter().enumerate() {
            let before = sim.status.clone();
            let mut run = None;
            let mut pods = None;
            let mut req = None;
            sim.t += 30;
            match ev {
                Event::Interval(v, decisive) => {
                    let valid = validate(&sim.spec).unwrap();
                    if let Some(v) = v.filter(|_| analysis_due(&sim.spec, &valid, &sim.status, sim.now())) {
                        let mut r = run_with(v, sim.now());
                        r.decisive = decisive && v == CheckVerdict::Fail;
                        run = Some(r);
                    }
                }
                Event::PodsFail => pods = Some("OOMKilled"),
                Event::Break => { sim.broken.insert(revision_hash(&sim.spec)); }
                Event::Req(k) => {
                    let action = match k {
                        0 => RequestAction::Promote,
                        1 => RequestAction::PromoteFull,
                        2 => RequestAction::Pause,
                        3 => RequestAction::Resume,
                        4 => RequestAction::Abort,
                        5 => RequestAction::Retry,
                        _ => RequestAction::RollbackTo { revision: 1 },
                    };
                    req = Some(Request::new(format!("req-{i}"), action));
                }
                Event::NewVersion => {
                    version += 1;
                    sim.spec = canary_spec(&format!("{version}.0.0"), extra.clone());
                }
            }
            let failing = run.as_ref().map(|r| r.verdict() == CheckVerdict::Fail && (r.decisive || before.analysis.as_ref().map_or(0, |a| a.failed_in_a_row) + 1 >= 3)).unwrap_or(false);
            let had_canary = before.canary.is_some();
            let d = sim.tick(run.clone(), pods, req.as_ref()).clone();

            // Weights stay in 0..=100, and the canary never asks for more than its step allows.
            prop_assert!((0..=100).contains(&d.canary_weight));
            if let Some(c) = &d.status.canary {
                prop_assert!((0..=100).contains(&c.weight) && (0..=100).contains(&c.set_weight));
                let allowed = sim.spec.rollout.as_ref().unwrap().steps.iter()
                    .take(usize::try_from(c.step).unwrap() + 1)
                    .filter_map(|s| s.set_weight).max().unwrap_or(0);
                prop_assert!(c.promoting || c.set_weight <= allowed, "set_weight {} above step allowance {}", c.set_weight, allowed);
            }
            // A reached failure limit takes canary traffic to zero in the same decision.
            if had_canary && failing && before.canary.as_ref().is_some_and(|c| c.paused.is_none()) && req.is_none() {
                prop_assert_eq!(d.canary_weight, 0);
                prop_assert!(d.status.canary.is_none());
            }
            // Promotion never follows a failed or inconclusive judgement.
            let promoted_now = d.status.history.len() >= before.history.len()
                && d.status.history.last().is_some_and(|h| h.outcome == Outcome::Promoted)
                && d.status.history.last() != before.history.last();
            if promoted_now {
                let last = before.analysis.as_ref().map(|a| a.checks.clone()).unwrap_or_default();
                let forced = before.canary.as_ref().is_some_and(|c| c.promoting) || req.is_some();
                prop_assert!(forced || (!last.is_empty() && last.iter().all(|c| c.verdict == CheckVerdict::Pass)));
            }
            // Sizes never go negative and the canary never doubles the fleet on the replicas router.
            for w in &d.workloads {
                prop_assert!(w.replicas >= 0 && w.replicas <= sim.spec.replicas);
            }
        }
    }
}

/// Available pods of every revision, as the Deployment controller reports them.
fn available_pods(sim: &Sim) -> i32 {
    sim.observed.values().map(|o| o.available_replicas).sum()
}

/// Rolls `to` out on a fleet of `replicas` whose pods take a decision to come
/// up; returns the fewest available pods seen after the first revision was up.
fn fewest_available_during_rollout(replicas: i32, verdict: CheckVerdict) -> (i32, Sim) {
    let sized = |v: &str| canary_spec(v, json!({"replicas": replicas}));
    let mut sim = Sim::settled(sized("1.0.0"));
    sim.slow = true;
    for _ in 0..3 {
        sim.tick(None, None, None);
    }
    assert_eq!(available_pods(&sim), replicas);
    sim.spec = sized("2.0.0");
    let mut fewest = i32::MAX;
    for _ in 0..40 {
        sim.interval(verdict);
        fewest = fewest.min(available_pods(&sim));
        let done = sim.status.canary.is_none() && sim.status.draining.is_none();
        if done && matches!(sim.status.phase, Some(Phase::Stable | Phase::RolledBack)) {
            break;
        }
    }
    (fewest, sim)
}

#[test]
fn capacity_never_drops_below_replicas_on_the_replicas_router() {
    for replicas in [1, 4, 10] {
        let (fewest, sim) = fewest_available_during_rollout(replicas, CheckVerdict::Pass);
        assert_eq!(sim.status.phase, Some(Phase::Stable), "replicas {replicas}");
        assert_eq!(sim.status.stable.as_ref().unwrap().revision, 2);
        assert!(
            fewest >= replicas,
            "replicas {replicas}: {fewest} available at one point"
        );
        let (fewest, sim) = fewest_available_during_rollout(replicas, CheckVerdict::Fail);
        assert_eq!(
            sim.status.phase,
            Some(Phase::RolledBack),
            "replicas {replicas}"
        );
        assert!(
            fewest >= replicas,
            "replicas {replicas}, rolled back: {fewest} available at one point"
        );
        assert_eq!(
            sim.sizes()[&2],
            0,
            "the rolled-back revision let go of its pods"
        );
    }
}

#[test]
fn one_replica_runs_one_pod_of_each_revision() {
    let mut sim = Sim::settled(canary_spec("1.0.0", json!({"replicas": 1})));
    sim.start(canary_spec("2.0.0", json!({"replicas": 1})));
    assert_eq!(sim.sizes(), BTreeMap::from([(1, 1), (2, 1)]));
    let c = sim.status.canary.as_ref().unwrap();
    assert_eq!(
        (c.set_weight, c.weight),
        (20, 50),
        "the share actually reached"
    );
}

#[test]
fn a_canary_that_never_becomes_available_leaves_stable_whole() {
    let mut sim = Sim::settled(canary_spec("1.0.0", json!({})));
    sim.spec = canary_spec("2.0.0", json!({}));
    sim.broken.insert(revision_hash(&sim.spec));
    for _ in 0..3 {
        sim.interval(CheckVerdict::Inconclusive);
        assert_eq!(sim.sizes()[&1], 10);
        assert_eq!(sim.status.canary.as_ref().unwrap().weight, 0);
    }
}

#[test]
fn a_spec_that_goes_back_mid_rollout_keeps_capacity_while_stable_regrows() {
    let sized = |v: &str| canary_spec(v, json!({"replicas": 10}));
    let mut sim = Sim::settled(sized("1.0.0"));
    sim.slow = true;
    for _ in 0..3 {
        sim.tick(None, None, None);
    }
    sim.spec = sized("2.0.0");
    while sim
        .status
        .canary
        .as_ref()
        .is_none_or(|c| c.set_weight < 50 || c.weight < 50)
    {
        sim.interval(CheckVerdict::Pass);
    }
    sim.spec = sized("1.0.0");
    let mut fewest = i32::MAX;
    for _ in 0..5 {
        sim.t += 1;
        sim.tick(None, None, None);
        fewest = fewest.min(available_pods(&sim));
    }
    assert!(fewest >= 10, "{fewest} available at one point");
    assert_eq!(
        sim.sizes()[&2],
        0,
        "the abandoned revision let go of its pods"
    );
    assert!(sim.status.draining.is_none());
    assert_eq!(
        sim.status.history.last().unwrap().outcome,
        Outcome::Superseded
    );
}

#[test]
fn a_scale_change_mid_rollout_moves_both_shares_and_keeps_the_step() {
    let mut sim = Sim::settled(canary_spec("1.0.0", json!({})));
    sim.start(canary_spec("2.0.0", json!({})));
    assert_eq!(sim.sizes(), BTreeMap::from([(1, 8), (2, 2)]));
    let step = sim.status.canary.as_ref().unwrap().step;
    // `kubectl scale` or an HPA doubles the fleet.
    sim.spec.replicas = 20;
    sim.tick(None, None, None);
    sim.tick(None, None, None);
    assert_eq!(sim.sizes(), BTreeMap::from([(1, 16), (2, 4)]), "20% of 20");
    assert_eq!(sim.status.canary.as_ref().unwrap().step, step, "same step");
    assert!(sim.status.replicas >= 20, "available pods across revisions");
    assert_eq!(
        sim.status.selector.as_deref(),
        Some("modeldeploy.io/name=scorer")
    );
    // And down to 5: the canary keeps at least one pod.
    sim.spec.replicas = 5;
    sim.tick(None, None, None);
    assert_eq!(sim.sizes(), BTreeMap::from([(1, 4), (2, 1)]));
    assert_eq!(sim.status.canary.as_ref().unwrap().step, step);
    assert_eq!(
        sim.status.history.len(),
        1,
        "nothing rolled back or restarted"
    );
    for _ in 0..20 {
        sim.interval(CheckVerdict::Pass);
    }
    assert_eq!(sim.status.stable.as_ref().unwrap().version, "2.0.0");
    assert_eq!(sim.sizes()[&2], 5);
}

#[test]
fn scaled_to_zero_at_rest_runs_nothing_and_says_so() {
    let mut sim = Sim::settled(canary_spec("1.0.0", json!({})));
    sim.spec.replicas = 0;
    sim.tick(None, None, None);
    assert_eq!(sim.sizes(), BTreeMap::from([(1, 0)]));
    assert_eq!(sim.status.replicas, 10, "what was available when deciding");
    sim.tick(None, None, None);
    assert_eq!(sim.status.phase, Some(Phase::Stable));
    assert_eq!(sim.status.replicas, 0);
    assert!(
        sim.status
            .message
            .as_deref()
            .unwrap()
            .contains("scaled to zero"),
        "{:?}",
        sim.status.message
    );
    let ready = conditions::get(&sim.status.conditions, conditions::READY).unwrap();
    assert_eq!(ready.reason, "ScaledToZero");
}

#[test]
fn scaled_to_zero_mid_rollout_keeps_a_pod_per_revision_until_it_ends() {
    let mut sim = Sim::settled(canary_spec("1.0.0", json!({})));
    sim.start(canary_spec("2.0.0", json!({})));
    sim.spec.replicas = 0;
    sim.tick(None, None, None);
    assert_eq!(
        sim.sizes(),
        BTreeMap::from([(1, 1), (2, 1)]),
        "the analysis needs canary pods, and stable one to fall back to"
    );
    assert!(
        sim.status
            .message
            .as_deref()
            .unwrap()
            .contains("spec.replicas is 0"),
        "{:?}",
        sim.status.message
    );
    for _ in 0..20 {
        sim.interval(CheckVerdict::Pass);
    }
    assert_eq!(sim.status.stable.as_ref().unwrap().version, "2.0.0");
    assert_eq!(
        sim.sizes()[&2],
        0,
        "scaled to zero once the rollout is over"
    );
    // A new version while at zero starts its rollout with one pod each.
    sim.start(canary_spec("3.0.0", json!({"replicas": 0})));
    assert_eq!(sim.status.phase, Some(Phase::Progressing));
    assert_eq!(sim.sizes()[&3], 1);
}

/// A shadow on the gateway router: copies of half the requests, judged twice,
/// then live traffic.
fn shadow_spec(version: &str) -> ModelDeploymentSpec {
    canary_spec(
        version,
        json!({"rollout": {
            "traffic": {"router": "gatewayAPI", "gatewayAPI": {"parentRefs": [{"name": "gw"}]}},
            "steps": [{"setMirror": {"percent": 50}}, {"analysis": {"passes": 2}},
                      {"setWeight": 50}, {"analysis": {}}]
        }}),
    )
}

/// The route the controller would apply for the last decision.
fn route_now(sim: &Sim) -> crate::routers::gateway_api::HTTPRoute {
    let d = sim.last.as_ref().unwrap();
    let stable = d.status.stable.as_ref().unwrap();
    let mut md = crate::api::ModelDeployment::new("scorer", sim.spec.clone());
    md.metadata.namespace = Some("ns".into());
    let split = crate::routers::Split {
        stable_hash: &stable.hash,
        canary_hash: d.status.canary.as_ref().map_or(&stable.hash, |c| &c.hash),
        canary_weight: d.canary_weight,
        mirror_percent: d.status.canary.as_ref().map_or(0, |c| c.mirror),
    };
    crate::routers::for_spec(&sim.spec)
        .children(&md, split)
        .into_iter()
        .find_map(|c| match c {
            crate::routers::Child::HttpRoute(r) => Some(*r),
            crate::routers::Child::Service(_) => None,
        })
        .unwrap()
}

/// (stable weight, canary weight, mirrored percent) of the route.
fn route_shares(sim: &Sim) -> (i32, i32, Option<i32>) {
    let route = route_now(sim);
    let rule = &route.spec.rules[0];
    let mirror = rule
        .filters
        .iter()
        .find_map(|f| f.request_mirror.as_ref())
        .map(|m| {
            assert_eq!(m.backend_ref.name, "scorer-canary");
            m.percent.unwrap_or(100)
        });
    (
        rule.backend_refs[0].weight,
        rule.backend_refs[1].weight,
        mirror,
    )
}

#[test]
fn a_bad_shadow_never_takes_live_traffic_and_is_rolled_back() {
    let mut sim = Sim::settled(shadow_spec("1.0.0"));
    sim.spec = shadow_spec("2.0.0");
    sim.tick(None, None, None);
    assert_eq!(
        sim.sizes(),
        BTreeMap::from([(1, 10), (2, 5)]),
        "the shadow runs the pods half the traffic needs; stable stays whole"
    );
    let c = sim.status.canary.clone().unwrap();
    assert_eq!((c.set_mirror, c.mirror, c.weight), (50, 0, 0));
    assert_eq!(
        route_shares(&sim),
        (100, 0, None),
        "no copies before its pods are up"
    );
    sim.tick(None, None, None);
    let c = sim.status.canary.clone().unwrap();
    assert_eq!((c.mirror, c.weight, c.step), (50, 0, 1), "setMirror done");
    assert_eq!(route_shares(&sim), (100, 0, Some(50)));
    assert!(
        sim.status.message.as_deref().unwrap().contains("shadowed"),
        "{:?}",
        sim.status.message
    );
    let mut seen = Vec::new();
    while sim.status.phase == Some(Phase::Progressing) && seen.len() < 10 {
        let d = sim.interval(CheckVerdict::Fail);
        seen.push((d.canary_weight, route_shares(&sim)));
    }
    assert_eq!(sim.status.phase, Some(Phase::RolledBack));
    assert_eq!(seen.len(), 3, "failureLimit 3 runs, judged on the copies");
    assert!(
        seen.iter()
            .all(|(w, (stable, canary, _))| (*w, *stable, *canary) == (0, 100, 0)),
        "a shadow never takes live traffic: {seen:?}"
    );
    assert_eq!(seen.last().unwrap().1, (100, 0, None), "copies end");
    assert_eq!(sim.sizes()[&2], 0, "no pods kept: it served no one");
    assert_eq!(sim.sizes()[&1], 10);
    let last = sim.status.history.last().unwrap();
    assert_eq!(last.outcome, Outcome::RolledBack);
    assert!(
        last.reason
            .contains("as a shadow: it answered no user request"),
        "{}",
        last.reason
    );
}

#[test]
fn a_good_shadow_goes_on_to_live_traffic_and_is_promoted() {
    let mut sim = Sim::settled(shadow_spec("1.0.0"));
    sim.start(shadow_spec("2.0.0"));
    assert_eq!(route_shares(&sim), (100, 0, Some(50)));
    sim.interval(CheckVerdict::Pass);
    assert_eq!(
        sim.status.canary.as_ref().unwrap().step,
        1,
        "one pass of two"
    );
    sim.interval(CheckVerdict::Pass);
    let c = sim.status.canary.clone().unwrap();
    assert_eq!(
        (c.step, c.set_weight, c.weight, c.set_mirror, c.mirror),
        (3, 50, 50, 0, 0),
        "setWeight ends the copies; the shadow's pods already carry 50%"
    );
    assert_eq!(
        route_shares(&sim),
        (50, 50, None),
        "live traffic, no copies"
    );
    for _ in 0..10 {
        sim.interval(CheckVerdict::Pass);
        if sim.status.phase == Some(Phase::Stable) {
            break;
        }
    }
    assert_eq!(sim.status.stable.as_ref().unwrap().version, "2.0.0");
    assert_eq!(
        sim.status.history.last().unwrap().outcome,
        Outcome::Promoted
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(100))]

    /// Along random shadow rollouts (verdicts, crashing or missing pods,
    /// requests): copies go only to a revision that serves no live traffic,
    /// never beyond the step's share, and never before its pods are all up.
    #[test]
    fn a_shadow_never_serves_while_it_gets_copies(events in proptest::collection::vec(event(), 1..30)) {
        let mut sim = Sim::settled(shadow_spec("1.0.0"));
        sim.slow = true;
        sim.spec = shadow_spec("2.0.0");
        for (i, ev) in events.into_iter().enumerate() {
            sim.t += 30;
            let (mut run, mut pods, mut req) = (None, None, None);
            match ev {
                Event::Interval(Some(v), decisive) => {
                    let valid = validate(&sim.spec).unwrap();
                    if analysis_due(&sim.spec, &valid, &sim.status, sim.now()) {
                        let mut r = run_with(v, sim.now());
                        r.decisive = decisive && v == CheckVerdict::Fail;
                        run = Some(r);
                    }
                }
                Event::Interval(None, _) => {}
                Event::PodsFail => pods = Some("OOMKilled"),
                Event::Break => { sim.broken.insert(revision_hash(&sim.spec)); }
                Event::Req(k) => {
                    let action = [RequestAction::Promote, RequestAction::Pause, RequestAction::Resume, RequestAction::Abort, RequestAction::Retry][usize::from(k % 5)].clone();
                    req = Some(Request::new(format!("req-{i}"), action));
                }
                Event::NewVersion => sim.spec = shadow_spec(&format!("{}.0.0", i + 3)),
            }
            let seen = sim.observed.clone();
            let copying = sim.status.canary.as_ref().filter(|c| c.mirror > 0).map(|c| c.hash.clone());
            let d = sim.tick(run, pods, req.as_ref()).clone();
            if let Some(c) = &d.status.canary {
                prop_assert!(c.mirror == 0 || (c.weight == 0 && d.canary_weight == 0), "{c:?}");
                prop_assert!(c.mirror <= c.set_mirror, "{c:?}");
                // Copies start once the pods the decision saw are all up.
                let up = seen.get(&c.hash).map_or(0, |o| o.available_replicas);
                prop_assert!(c.mirror == 0 || copying.as_ref() == Some(&c.hash) || up >= weights::canary_replicas(&sim.spec, c), "{c:?}");
            }
        }
    }
}

#[test]
fn kstatus_reads_reconciling_while_rolling_out_and_stalled_after_a_rollback() {
    let is = |sim: &Sim, t: &str| conditions::is_true(&sim.status.conditions, t);
    let mut sim = Sim::settled(canary_spec("1.0.0", json!({})));
    assert!(!is(&sim, conditions::RECONCILING) && !is(&sim, conditions::STALLED));
    sim.start(canary_spec("2.0.0", json!({})));
    assert!(is(&sim, conditions::RECONCILING) && !is(&sim, conditions::STALLED));
    for _ in 0..3 {
        sim.interval(CheckVerdict::Fail);
    }
    assert_eq!(sim.status.phase, Some(Phase::RolledBack));
    assert!(!is(&sim, conditions::RECONCILING));
    assert!(
        is(&sim, conditions::STALLED),
        "a GitOps health check sees the rollback"
    );
    let stalled = conditions::get(&sim.status.conditions, conditions::STALLED).unwrap();
    assert_eq!(stalled.reason, "RolledBack");
}
