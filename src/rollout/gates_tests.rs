//! Gate stories on the pure engine: pending gates hold, passing ones let the
//! rollout go on, failing ones roll back.

use super::gates::{GateOutcome, GateSeen, running, webhook_call_due};
use super::*;
use crate::api::{CheckStatus, CheckVerdict, GateKind, GatePhase, validate};
use serde_json::{Value, json};

fn spec(version: &str, gates: Value) -> ModelDeploymentSpec {
    serde_json::from_value(json!({
        "model": {"version": version, "image": format!("example/model:{version}")},
        "replicas": 4,
        "resources": {"requests": {"cpu": "1"}, "limits": {"cpu": "1"}},
        "rollout": {
            "steps": [{"setWeight": 50}],
            "analysis": {"interval": "30s",
                         "checks": [{"name": "errors", "errorRate": {"max": 0.01}}]},
            "gates": gates,
        }
    }))
    .unwrap()
}

fn job_gate() -> Value {
    json!({"job": {"template": {"spec": {"containers": [{"name": "c", "image": "i"}]}}}})
}

fn webhook_gate(retries: i32) -> Value {
    json!({"webhook": {"url": "http://gate.example/check", "retries": retries}})
}

struct Sim {
    spec: ModelDeploymentSpec,
    status: ModelDeploymentStatus,
    observed: Observed,
    t: i64,
    notes: Vec<Note>,
}

impl Sim {
    fn now(&self) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + self.t).unwrap()
    }

    /// v1 stable, then the spec names v2 with these gates.
    fn rolling_out(gates: Value) -> Self {
        let mut sim = Sim {
            spec: spec("1.0.0", gates.clone()),
            status: ModelDeploymentStatus::default(),
            observed: Observed::new(),
            t: 0,
            notes: Vec::new(),
        };
        sim.tick(None, false);
        sim.tick(None, false);
        assert_eq!(sim.status.phase, Some(Phase::Stable));
        sim.spec = spec("2.0.0", gates);
        sim.tick(None, false);
        sim
    }

    /// One decision a few seconds on; every workload reaches its size.
    fn tick(&mut self, gate: Option<GateOutcome>, passing_run: bool) -> Decision {
        self.t += 5;
        let valid = validate(&self.spec).unwrap();
        let seen = gate.map(|outcome| GateSeen {
            gate: running(&self.status)
                .map(|g| g.gate)
                .expect("a running gate"),
            outcome,
            at: self.now(),
        });
        let run = (passing_run && analysis_due(&self.spec, &valid, &self.status, self.now())).then(
            || AnalysisRun {
                at: self.now(),
                checks: vec![CheckStatus {
                    name: "errors".into(),
                    value: Some(0.0),
                    threshold: Some(0.01),
                    verdict: CheckVerdict::Pass,
                    samples: 1000,
                    message: None,
                }],
                decisive: false,
                drift: None,
                ab: None,
            },
        );
        let input = |status| Input {
            name: "scorer",
            spec: &self.spec,
            valid: &valid,
            generation: Some(1),
            status,
            observed: &self.observed,
            analysis: run.as_ref(),
            canary_pods_failure: None,
            request: None,
            gate: seen.as_ref(),
            now: self.now(),
        };
        let d = decide(&input(&self.status));
        let again = decide(&input(&d.status));
        assert_eq!(again.status, d.status, "deciding again changed the status");
        self.observed = d
            .workloads
            .iter()
            .map(|w| {
                let o = ObservedRevision {
                    revision: w.revision,
                    version: w.version.clone(),
                    replicas: w.replicas,
                    available_replicas: w.replicas,
                    ..Default::default()
                };
                (w.hash.clone(), o)
            })
            .collect();
        self.status = d.status.clone();
        self.notes.extend(d.notes.iter().cloned());
        d
    }

    fn canary_pods(&self, d: &Decision) -> i32 {
        let hash = &self.status.canary.as_ref().unwrap().hash;
        d.workloads
            .iter()
            .find(|w| &w.hash == hash)
            .map_or(0, |w| w.replicas)
    }
}

#[test]
fn a_pre_rollout_gate_holds_the_revision_at_zero_pods_until_it_passes() {
    let mut sim = Sim::rolling_out(json!({"preRollout": job_gate()}));
    let g = running(&sim.status).expect("the gate runs");
    assert_eq!(g.gate, GateKind::PreRollout);
    assert_eq!(
        g.job.as_deref(),
        Some(
            format!(
                "scorer-{}-pre-rollout",
                sim.status.canary.as_ref().unwrap().hash
            )
            .as_str()
        )
    );
    for _ in 0..5 {
        let d = sim.tick(Some(GateOutcome::Running("Job runs".into())), false);
        assert_eq!(sim.canary_pods(&d), 0, "no pods before the gate passes");
        assert_eq!(d.canary_weight, 0);
        assert!(d.requeue_after.is_some_and(|r| r <= gates::GATE_POLL));
        let message = sim.status.message.clone().unwrap();
        assert!(
            message.contains("preRollout gate before it gets any traffic"),
            "{message}"
        );
    }
    let d = sim.tick(Some(GateOutcome::Passed("Job succeeded".into())), false);
    assert!(
        sim.canary_pods(&d) > 0,
        "the first step starts once the gate passed"
    );
    assert!(running(&sim.status).is_none());
    assert_eq!(
        sim.status.canary.as_ref().unwrap().gates[0].phase,
        GatePhase::Passed
    );
    assert!(sim.notes.iter().any(|n| n.reason == "GatePassed"));
    sim.tick(None, false);
    let d = sim.tick(None, false);
    assert_eq!(
        d.canary_weight, 50,
        "stable gave up pods once canary's were up"
    );
}

#[test]
fn a_failed_gate_rolls_back_with_the_reason() {
    let mut sim = Sim::rolling_out(json!({"preRollout": job_gate()}));
    sim.tick(
        Some(GateOutcome::Failed(
            "Job j failed (BackoffLimitExceeded: ...); last log line: schema mismatch".into(),
        )),
        false,
    );
    assert_eq!(sim.status.phase, Some(Phase::RolledBack));
    let last = sim.status.history.last().unwrap();
    assert_eq!(last.outcome, Outcome::RolledBack);
    assert!(
        last.reason.contains("preRollout gate failed") && last.reason.contains("schema mismatch"),
        "{}",
        last.reason
    );
    let event = sim.notes.iter().find(|n| n.reason == ROLLED_BACK).unwrap();
    assert!(
        event.message.contains("schema mismatch"),
        "{}",
        event.message
    );
}

#[test]
fn a_pre_promotion_gate_holds_the_promotion_until_it_passes() {
    let mut sim = Sim::rolling_out(json!({"prePromotion": job_gate()}));
    assert!(running(&sim.status).is_none(), "no gate before the steps");
    for _ in 0..12 {
        sim.t += 30;
        sim.tick(None, true);
        if running(&sim.status).is_some() {
            break;
        }
    }
    let g = running(&sim.status).expect("the gate starts after the last step");
    assert_eq!(g.gate, GateKind::PrePromotion);
    let c = sim.status.canary.clone().unwrap();
    assert!(!c.promoting);
    assert_eq!(c.weight, 50, "the canary keeps its last step's traffic");
    for _ in 0..3 {
        sim.t += 30;
        sim.tick(Some(GateOutcome::Running("Job runs".into())), true);
        assert!(!sim.status.canary.as_ref().unwrap().promoting);
        assert_eq!(sim.status.phase, Some(Phase::Progressing));
    }
    sim.tick(Some(GateOutcome::Passed("Job succeeded".into())), false);
    assert!(sim.status.canary.as_ref().unwrap().promoting);
    sim.tick(None, false);
    assert_eq!(sim.status.stable.as_ref().unwrap().version, "2.0.0");
    assert_eq!(
        sim.status.history.last().unwrap().outcome,
        Outcome::Promoted
    );
}

#[test]
fn a_pre_promotion_failure_rolls_back_and_stable_serves() {
    let mut sim = Sim::rolling_out(json!({"prePromotion": job_gate()}));
    while running(&sim.status).is_none() {
        sim.t += 30;
        sim.tick(None, true);
        assert!(sim.t < 1000);
    }
    let d = sim.tick(
        Some(GateOutcome::Failed(
            "Job j failed (DeadlineExceeded: ...)".into(),
        )),
        false,
    );
    assert_eq!(sim.status.phase, Some(Phase::RolledBack));
    assert_eq!(d.canary_weight, 0);
    assert_eq!(sim.status.stable.as_ref().unwrap().version, "1.0.0");
}

#[test]
fn webhook_calls_are_retried_a_bounded_number_of_times() {
    let mut sim = Sim::rolling_out(json!({"preRollout": webhook_gate(2)}));
    let valid = validate(&sim.spec).unwrap();
    assert!(webhook_call_due(&valid, &sim.status, sim.now()));
    sim.tick(Some(GateOutcome::CallFailed("answered 500".into())), false);
    assert_eq!(running(&sim.status).unwrap().attempts, 1);
    assert!(
        !webhook_call_due(&valid, &sim.status, sim.now()),
        "retries are spaced"
    );
    sim.t += 5;
    assert!(webhook_call_due(&valid, &sim.status, sim.now()));
    sim.tick(Some(GateOutcome::CallFailed("timed out".into())), false);
    assert_eq!(sim.status.phase, Some(Phase::Progressing));
    sim.tick(Some(GateOutcome::CallFailed("answered 503".into())), false);
    assert_eq!(sim.status.phase, Some(Phase::RolledBack));
    let reason = &sim.status.history.last().unwrap().reason;
    assert!(
        reason.contains("webhook failed 3 times: answered 503"),
        "{reason}"
    );
}

#[test]
fn a_webhook_that_answers_2xx_passes() {
    let mut sim = Sim::rolling_out(json!({"preRollout": webhook_gate(0)}));
    let d = sim.tick(Some(GateOutcome::Passed("answered 200 OK".into())), false);
    assert!(sim.canary_pods(&d) > 0);
}

#[test]
fn a_job_gate_that_never_reports_fails_after_its_deadline() {
    let mut sim = Sim::rolling_out(json!({"preRollout": {"job": {
        "activeDeadlineSeconds": 60,
        "template": {"spec": {"containers": [{"name": "c", "image": "i"}]}}}}}));
    sim.tick(
        Some(GateOutcome::Running("cannot create Job: forbidden".into())),
        false,
    );
    sim.t += 200;
    sim.tick(None, false);
    assert_eq!(sim.status.phase, Some(Phase::RolledBack));
    let reason = &sim.status.history.last().unwrap().reason;
    assert!(
        reason.contains("did not finish within 180s") && reason.contains("forbidden"),
        "{reason}"
    );
}

#[test]
fn a_pause_without_duration_says_it_waits_for_approval_and_who_gives_it() {
    let mut sim = Sim::rolling_out(json!({}));
    sim.spec = {
        let mut s = spec("2.0.0", json!({}));
        s.rollout
            .as_mut()
            .unwrap()
            .steps
            .push(crate::api::CanaryStep {
                pause: Some(crate::api::PauseStep { duration: None }),
                ..Default::default()
            });
        s
    };
    for _ in 0..6 {
        sim.t += 30;
        sim.tick(None, true);
    }
    assert_eq!(sim.status.phase, Some(Phase::Paused));
    let message = sim.status.message.clone().unwrap();
    assert!(
        message.contains("waiting for approval")
            && message.contains("patch ModelDeployments")
            && message.contains("kubectl modeldeploy promote scorer"),
        "{message}"
    );
}
