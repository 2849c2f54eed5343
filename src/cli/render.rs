//! What `kubectl modeldeploy status` and `history` print, as pure functions
//! of the object, so the plugin's output is tested without a cluster.

use std::fmt::Write;

use crate::api::{
    AnalysisStatus, CheckVerdict, DriftStatus, ModelDeployment, ModelDeploymentStatus,
};
use crate::rollout::conditions;

fn verdict(v: CheckVerdict) -> &'static str {
    match v {
        CheckVerdict::Pass => "pass",
        CheckVerdict::Fail => "FAIL",
        CheckVerdict::Inconclusive => "inconclusive",
    }
}

fn number(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.4}"))
}

/// `kubectl modeldeploy status`: one section after the other, then the
/// history.
pub fn render_status(md: &ModelDeployment) -> String {
    let status = md.status.clone().unwrap_or_default();
    let name = md.metadata.name.as_deref().unwrap_or("?");
    let mut out = String::new();
    write_summary(&mut out, md, &status);
    write_revisions(&mut out, md, &status);
    write_gates(&mut out, md, &status);
    if let Some(a) = &status.analysis {
        write_analysis(&mut out, a);
    }
    if let Some(d) = &status.drift {
        write_drift(&mut out, d);
    }
    if let Some(ab) = &status.ab_test {
        let _ = writeln!(
            out,
            "A/B test:    winner {}, effect {}, p-value {}",
            ab.winner.as_deref().unwrap_or("undecided"),
            number(ab.effect),
            number(ab.p_value)
        );
    }
    write_conditions(&mut out, name, &status);
    out.push_str(&render_history(md));
    out
}

/// Name, phase, message and the version the spec asks for.
fn write_summary(out: &mut String, md: &ModelDeployment, status: &ModelDeploymentStatus) {
    let name = md.metadata.name.as_deref().unwrap_or("?");
    let ns = md.metadata.namespace.as_deref().unwrap_or("default");
    let _ = writeln!(out, "Name:        {ns}/{name}");
    let _ = writeln!(
        out,
        "Phase:       {}",
        status.phase.map_or("Unknown", |p| p.as_str())
    );
    if let Some(m) = &status.message {
        let _ = writeln!(out, "Message:     {m}");
    }
    let _ = writeln!(
        out,
        "Spec:        version {} ({})",
        md.spec.model.version, md.spec.model.image
    );
}

/// The stable revision, the canary's progress and a rolled-back revision.
fn write_revisions(out: &mut String, md: &ModelDeployment, status: &ModelDeploymentStatus) {
    if let Some(s) = &status.stable {
        let _ = writeln!(
            out,
            "Stable:      revision {} version {} ({})",
            s.revision, s.version, s.image
        );
    }
    if let Some(c) = &status.canary {
        let _ = writeln!(
            out,
            "Canary:      revision {} version {}, step {}/{}, weight {}% (step asks {}%){}{}{}",
            c.revision,
            c.version,
            c.step,
            step_count(md),
            c.weight,
            c.set_weight,
            shadowed(c),
            if c.promoting { ", promoting" } else { "" },
            c.paused
                .map_or(String::new(), |p| format!(", paused ({p:?})"))
        );
    }
    if let Some(rb) = &status.rolled_back {
        let name = md.metadata.name.as_deref().unwrap_or("?");
        let _ = writeln!(
            out,
            "Rolled back: revision {} version {} (kubectl modeldeploy retry {name} to try again)",
            rb.revision, rb.version
        );
    }
}

/// `, shadowed: ...` while the canary gets copies of live requests.
pub(super) fn shadowed(c: &crate::api::CanaryStatus) -> String {
    match (c.mirror, c.set_mirror) {
        (0, 0) => String::new(),
        (m, asked) if m == asked => {
            format!(", shadowed: gets a copy of {m}% of requests, answers dropped")
        }
        (m, asked) => format!(", shadowed: {m}% of requests copied (step asks {asked}%)"),
    }
}

/// The rollout's gates, and a manual approval it waits for with who may give it.
fn write_gates(out: &mut String, md: &ModelDeployment, status: &ModelDeploymentStatus) {
    let Some(c) = &status.canary else {
        return;
    };
    for g in &c.gates {
        let phase = match g.phase {
            crate::api::GatePhase::Running => "running",
            crate::api::GatePhase::Passed => "passed",
        };
        let what = g
            .job
            .as_ref()
            .map_or("webhook".to_string(), |j| format!("Job {j}"));
        let message = g
            .message
            .as_deref()
            .map(|m| format!(": {m}"))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "Gate:        {} {phase} ({what}){message}",
            g.gate.as_str()
        );
    }
    if c.paused == Some(crate::api::PauseReason::Step) {
        let name = md.metadata.name.as_deref().unwrap_or("?");
        let ns = md.metadata.namespace.as_deref().unwrap_or("default");
        let _ = writeln!(
            out,
            "Approval:    {}: anyone allowed to patch ModelDeployments in {ns} can run `kubectl modeldeploy promote {name} -n {ns}` (or `abort`)",
            crate::rollout::gates::WAITING_FOR_APPROVAL
        );
    }
}

/// How many steps the rollout has.
pub(super) fn step_count(md: &ModelDeployment) -> usize {
    md.spec.rollout.as_ref().map_or(0, |r| r.steps.len())
}

/// The runs in a row and one line per check.
fn write_analysis(out: &mut String, a: &AnalysisStatus) {
    if a.checks.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "Analysis:    {} failed / {} inconclusive / {} passed in a row",
        a.failed_in_a_row, a.inconclusive_in_a_row, a.passed_in_a_row
    );
    let _ = writeln!(
        out,
        "  {:<16} {:>12} {:>12} {:>10}  {:<12} note",
        "CHECK", "VALUE", "THRESHOLD", "SAMPLES", "VERDICT"
    );
    for c in &a.checks {
        let _ = writeln!(
            out,
            "  {:<16} {:>12} {:>12} {:>10}  {:<12} {}",
            c.name,
            number(c.value),
            number(c.threshold),
            c.samples,
            verdict(c.verdict),
            c.message.as_deref().unwrap_or("")
        );
    }
}

/// The highest drift score and the ten first features.
fn write_drift(out: &mut String, d: &DriftStatus) {
    if d.features.is_empty() {
        return;
    }
    let _ = writeln!(out, "Drift:       max score {}", number(d.max_score));
    for f in d.features.iter().take(10) {
        let _ = writeln!(out, "  {:<24} {:<12} {:.4}", f.name, f.method, f.score);
    }
}

/// The conditions, and where to look when the rollout is degraded.
fn write_conditions(out: &mut String, name: &str, status: &ModelDeploymentStatus) {
    for c in &status.conditions {
        let _ = writeln!(
            out,
            "Condition:   {}={} ({}) {}",
            c.type_, c.status, c.reason, c.message
        );
    }
    if conditions::is_true(&status.conditions, conditions::DEGRADED) {
        let _ = writeln!(
            out,
            "Hint:        kubectl modeldeploy history {name} shows why"
        );
    }
}

/// `kubectl modeldeploy history`.
pub fn render_history(md: &ModelDeployment) -> String {
    let mut out = String::new();
    let history = md
        .status
        .as_ref()
        .map(|s| s.history.as_slice())
        .unwrap_or_default();
    if history.is_empty() {
        return out;
    }
    let _ = writeln!(out, "History:");
    let _ = writeln!(
        out,
        "  {:<8} {:<12} {:<12} {:<26} reason",
        "REVISION", "VERSION", "OUTCOME", "AT"
    );
    for h in history {
        let _ = writeln!(
            out,
            "  {:<8} {:<12} {:<12} {:<26} {}",
            h.revision,
            h.version,
            format!("{:?}", h.outcome),
            h.at.0.to_string(),
            h.reason
        );
    }
    out
}

/// `kubectl modeldeploy history NAME --diff A B`: what changed in the pods
/// between two stored revisions, one line per changed field of the pod
/// template (`-` in A only, `+` in B only).
pub fn render_revision_diff(
    a: (i64, &k8s_openapi::api::core::v1::PodTemplateSpec),
    b: (i64, &k8s_openapi::api::core::v1::PodTemplateSpec),
) -> String {
    let flat = |t: &k8s_openapi::api::core::v1::PodTemplateSpec| {
        let mut out = std::collections::BTreeMap::new();
        flatten("", &serde_json::to_value(t).unwrap_or_default(), &mut out);
        out
    };
    let (left, right) = (flat(a.1), flat(b.1));
    let mut out = String::new();
    let _ = writeln!(out, "Revision {} -> revision {}:", a.0, b.0);
    let mut changed = 0;
    for path in left
        .keys()
        .chain(right.keys().filter(|k| !left.contains_key(*k)))
    {
        match (left.get(path), right.get(path)) {
            (Some(l), Some(r)) if l == r => {}
            (l, r) => {
                changed += 1;
                if let Some(l) = l {
                    let _ = writeln!(out, "  - {path}: {l}");
                }
                if let Some(r) = r {
                    let _ = writeln!(out, "  + {path}: {r}");
                }
            }
        }
    }
    if changed == 0 {
        let _ = writeln!(out, "  (the pod templates are the same)");
    }
    out
}

/// Leaves of a JSON document by path; list items by index, except named
/// items (containers, env, ports, volumes) by name, so an insertion does not
/// show every later item as changed.
fn flatten(
    path: &str,
    v: &serde_json::Value,
    out: &mut std::collections::BTreeMap<String, String>,
) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                flatten(&format!("{path}.{k}"), v, out);
            }
        }
        serde_json::Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                let key = item
                    .get("name")
                    .and_then(|n| n.as_str())
                    .map_or(i.to_string(), str::to_string);
                flatten(&format!("{path}[{key}]"), item, out);
            }
        }
        leaf => {
            out.insert(path.trim_start_matches('.').to_string(), leaf.to_string());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_revision_diff_names_each_changed_field() {
        let t =
            |image: &str, env: serde_json::Value| -> k8s_openapi::api::core::v1::PodTemplateSpec {
                serde_json::from_value(json!({"spec": {"containers": [
                {"name": "model", "image": image, "env": env}]}}))
                .unwrap()
            };
        let a = t("m:1", json!([{"name": "MODEL_VERSION", "value": "1"}]));
        let b = t(
            "m:2",
            json!([{"name": "MODEL_VERSION", "value": "2"}, {"name": "ERROR_RATE", "value": "0.05"}]),
        );
        let diff = render_revision_diff((1, &a), (2, &b));
        assert!(
            diff.contains("  - spec.containers[model].image: \"m:1\""),
            "{diff}"
        );
        assert!(
            diff.contains("  + spec.containers[model].image: \"m:2\""),
            "{diff}"
        );
        assert!(
            diff.contains("  + spec.containers[model].env[ERROR_RATE].value: \"0.05\""),
            "{diff}"
        );
        assert!(!diff.contains("env[MODEL_VERSION].name"), "{diff}");
        assert!(render_revision_diff((1, &a), (1, &a)).contains("the same"));
    }

    #[test]
    fn status_shows_phase_canary_checks_and_history() {
        let md: ModelDeployment = serde_json::from_value(json!({
            "apiVersion": "modeldeploy.io/v1alpha1", "kind": "ModelDeployment",
            "metadata": {"name": "scorer", "namespace": "risk"},
            "spec": {"model": {"version": "2.0.0", "image": "m:2"},
                     "resources": {"requests": {"cpu": "1"}, "limits": {"cpu": "1"}},
                     "rollout": {"steps": [{"setWeight": 20}, {"setWeight": 50}]}},
            "status": {
                "phase": "Progressing",
                "stable": {"revision": 1, "version": "1.0.0", "image": "m:1", "hash": "a"},
                "canary": {"revision": 2, "version": "2.0.0", "image": "m:2", "hash": "b",
                           "weight": 20, "setWeight": 20, "step": 1},
                "analysis": {"checks": [{"name": "errors", "value": 0.002, "threshold": 0.01,
                                          "verdict": "Pass", "samples": 3000}],
                             "passedInARow": 2},
                "history": [{"revision": 1, "version": "1.0.0", "image": "m:1",
                             "at": "2026-01-01T00:00:00Z", "outcome": "Deployed"}]
            }
        }))
        .unwrap();
        let out = render_status(&md);
        assert!(out.contains("Phase:       Progressing"), "{out}");
        assert!(out.contains("step 1/2, weight 20%"), "{out}");
        assert!(
            out.contains("errors")
                && out.contains("0.0020")
                && out.contains("0.0100")
                && out.contains("pass"),
            "{out}"
        );
        assert!(out.contains("Deployed"), "{out}");
        assert!(
            !out.contains("Approval:") && !out.contains("Gate:"),
            "{out}"
        );
    }

    #[test]
    fn status_shows_gates_and_a_pending_approval_with_who_may_give_it() {
        let md: ModelDeployment = serde_json::from_value(json!({
            "apiVersion": "modeldeploy.io/v1alpha1", "kind": "ModelDeployment",
            "metadata": {"name": "scorer", "namespace": "risk"},
            "spec": {"model": {"version": "2.0.0", "image": "m:2"},
                     "resources": {"requests": {"cpu": "1"}, "limits": {"cpu": "1"}},
                     "rollout": {"steps": [{"setWeight": 20}, {"pause": {}}]}},
            "status": {
                "phase": "Paused",
                "stable": {"revision": 1, "version": "1.0.0", "image": "m:1", "hash": "a"},
                "canary": {"revision": 2, "version": "2.0.0", "image": "m:2", "hash": "b",
                           "weight": 20, "setWeight": 20, "step": 1, "paused": "Step",
                           "gates": [{"gate": "preRollout", "phase": "Passed",
                                      "job": "scorer-b-pre-rollout",
                                      "message": "Job scorer-b-pre-rollout succeeded"}]}
            }
        }))
        .unwrap();
        let out = render_status(&md);
        assert!(
            out.contains("Gate:        preRollout passed (Job scorer-b-pre-rollout)"),
            "{out}"
        );
        assert!(
            out.contains("Approval:    waiting for approval: anyone allowed to patch ModelDeployments in risk can run `kubectl modeldeploy promote scorer -n risk`"),
            "{out}"
        );
    }

    #[test]
    fn status_shows_a_shadowed_revision() {
        let md: ModelDeployment = serde_json::from_value(json!({
            "apiVersion": "modeldeploy.io/v1alpha1", "kind": "ModelDeployment",
            "metadata": {"name": "scorer", "namespace": "risk"},
            "spec": {"model": {"version": "2.0.0", "image": "m:2"},
                     "resources": {"requests": {"cpu": "1"}, "limits": {"cpu": "1"}},
                     "rollout": {"steps": [{"setMirror": {"percent": 100}}, {"analysis": {}}]}},
            "status": {
                "phase": "Progressing",
                "stable": {"revision": 1, "version": "1.0.0", "image": "m:1", "hash": "a"},
                "canary": {"revision": 2, "version": "2.0.0", "image": "m:2", "hash": "b",
                           "weight": 0, "setWeight": 0, "step": 1,
                           "setMirror": 100, "mirror": 100}
            }
        }))
        .unwrap();
        let out = render_status(&md);
        assert!(
            out.contains("weight 0% (step asks 0%), shadowed: gets a copy of 100% of requests"),
            "{out}"
        );
        let mut starting = md.status.clone().unwrap().canary.unwrap();
        starting.mirror = 0;
        assert_eq!(
            shadowed(&starting),
            ", shadowed: 0% of requests copied (step asks 100%)"
        );
    }
}
