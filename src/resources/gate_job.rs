//! The Job of a job gate (`spec.rollout.gates.*.job`), built from the gate's
//! pod template. No I/O: the controller creates what this returns, once.

use std::collections::BTreeMap;

use k8s_openapi::api::batch::v1::{Job, JobSpec};
use k8s_openapi::api::core::v1::EnvVar;
use kube::ResourceExt;

use crate::api::gates::ValidGate;
use crate::api::{GateKind, ModelDeployment, labels};

use super::{MANAGER_NAME, owned_meta};

/// Label on a gate's Job: which gate it runs.
pub const GATE_LABEL: &str = "modeldeploy.io/gate";
/// Annotation on a gate's Job: when the rollout it gates began. A Job left
/// from an earlier rollout of the same revision (before a retry) carries
/// another time, and is replaced instead of read.
pub const ROLLOUT_STARTED: &str = "modeldeploy.io/rollout-started";

/// The Job of one gate of one revision: `<deployment>-pre-rollout` or
/// `<deployment>-pre-promote`, at most 63 characters (a ModelDeployment's
/// name is at most 40), so a restarted operator finds the Job it made.
pub fn job_name(md_name: &str, hash: &str, kind: GateKind) -> String {
    let suffix = match kind {
        GateKind::PreRollout => "pre-rollout",
        GateKind::PrePromotion => "pre-promote",
    };
    format!("{}-{suffix}", super::deployment_name(md_name, hash))
}

/// What a gate's Job is told about the revision it gates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GateContext<'a> {
    pub kind: GateKind,
    pub hash: &'a str,
    pub revision: i64,
    pub version: &'a str,
    /// The Service that reaches the revision's pods (see docs/gates.md).
    pub service: &'a str,
    /// `status.canary.startedAt` of the rollout the gate belongs to.
    pub rollout_started: &'a str,
}

/// The Job for a job gate, owned by the ModelDeployment. Its pods run under
/// the model's service account unless the template names one, restart
/// `Never` unless it says `OnFailure`, and carry the rollout's context in
/// every container's env. They carry none of the model's labels, so no
/// Service sends them traffic and no analysis reads them.
pub fn gate_job(md: &ModelDeployment, gate: &ValidGate, cx: &GateContext<'_>) -> Option<Job> {
    let ValidGate::Job {
        template,
        active_deadline_seconds,
        backoff_limit,
    } = gate
    else {
        return None;
    };
    let name = job_name(&md.name_any(), cx.hash, cx.kind);
    let mut template = (**template).clone();
    let pod = template.spec.get_or_insert_with(Default::default);
    pod.restart_policy.get_or_insert_with(|| "Never".into());
    if pod.service_account_name.is_none() {
        pod.service_account_name = md
            .spec
            .template
            .as_ref()
            .and_then(|t| t.service_account_name.clone());
    }
    let env = context_env(md, cx);
    for c in &mut pod.containers {
        let list = c.env.get_or_insert_with(Vec::new);
        list.retain(|e| !env.iter().any(|ours| ours.name == e.name));
        list.extend(env.iter().cloned());
        // A real kubelet then copies the log's tail into the termination
        // message of a failed container, which the gate's failure reports.
        c.termination_message_policy
            .get_or_insert_with(|| "FallbackToLogsOnError".into());
    }
    let mut job_labels = BTreeMap::from([
        (labels::NAME.to_string(), md.name_any()),
        (labels::MANAGED_BY.to_string(), MANAGER_NAME.to_string()),
        (labels::HASH.to_string(), cx.hash.to_string()),
        (labels::REVISION.to_string(), cx.revision.to_string()),
        (GATE_LABEL.to_string(), cx.kind.as_str().to_string()),
    ]);
    job_labels.insert(labels::VERSION.to_string(), cx.version.to_string());
    let mut meta = owned_meta(md, name, job_labels);
    meta.annotations = Some(BTreeMap::from([(
        ROLLOUT_STARTED.to_string(),
        cx.rollout_started.to_string(),
    )]));
    Some(Job {
        metadata: meta,
        spec: Some(JobSpec {
            active_deadline_seconds: Some(*active_deadline_seconds),
            backoff_limit: Some(*backoff_limit),
            template,
            ..Default::default()
        }),
        status: None,
    })
}

fn context_env(md: &ModelDeployment, cx: &GateContext<'_>) -> Vec<EnvVar> {
    let var = |name: &str, value: String| EnvVar {
        name: name.into(),
        value: Some(value),
        value_from: None,
    };
    vec![
        var("MODEL_NAME", md.name_any()),
        var("MODEL_VERSION", cx.version.to_string()),
        var("REVISION", cx.revision.to_string()),
        var("MODEL_SERVICE", cx.service.to_string()),
        var("MODEL_SERVICE_PORT", md.spec.model.port.to_string()),
        var("GATE", cx.kind.as_str().to_string()),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::validate;
    use serde_json::json;

    fn md(gate_template: serde_json::Value) -> ModelDeployment {
        let spec = json!({
            "model": {"version": "2.0.0", "image": "m:2", "port": 9000},
            "resources": {"requests": {"cpu": "1"}, "limits": {"cpu": "1"}},
            "template": {"serviceAccountName": "model-sa"},
            "rollout": {"steps": [{"setWeight": 50}], "gates": {"prePromotion": {"job": {
                "activeDeadlineSeconds": 120, "template": gate_template}}}}
        });
        let mut md = ModelDeployment::new(
            "scorer-with-a-name-of-forty-characters-x",
            serde_json::from_value(spec).unwrap(),
        );
        md.metadata.namespace = Some("risk".into());
        md.metadata.uid = Some("uid-1".into());
        md
    }

    fn cx() -> GateContext<'static> {
        GateContext {
            kind: GateKind::PrePromotion,
            hash: "0123456789",
            revision: 2,
            version: "2.0.0",
            service: "scorer-canary",
            rollout_started: "2026-01-01T00:00:00Z",
        }
    }

    #[test]
    fn the_job_runs_the_template_with_the_rollout_context() {
        let md = md(
            json!({"spec": {"containers": [{"name": "eval", "image": "e:1",
            "env": [{"name": "REVISION", "value": "mine"}, {"name": "KEEP", "value": "1"}]}]}}),
        );
        let valid = validate(&md.spec).unwrap();
        let job = gate_job(&md, valid.gates.pre_promotion.as_ref().unwrap(), &cx()).unwrap();
        let name = job.metadata.name.clone().unwrap();
        assert_eq!(
            name,
            "scorer-with-a-name-of-forty-characters-x-0123456789-pre-promote"
        );
        assert!(name.len() <= 63, "a Job name is a label value");
        assert_eq!(job.owner_references()[0].uid, "uid-1");
        let spec = job.spec.unwrap();
        assert_eq!(spec.active_deadline_seconds, Some(120));
        assert_eq!(spec.backoff_limit, Some(0));
        let pod = spec.template.spec.unwrap();
        assert_eq!(pod.restart_policy.as_deref(), Some("Never"));
        assert_eq!(pod.service_account_name.as_deref(), Some("model-sa"));
        let env: BTreeMap<_, _> = pod.containers[0]
            .env
            .iter()
            .flatten()
            .map(|e| (e.name.as_str(), e.value.clone().unwrap_or_default()))
            .collect();
        assert_eq!(env["REVISION"], "2", "the operator's context wins");
        assert_eq!(env["KEEP"], "1");
        assert_eq!(env["MODEL_VERSION"], "2.0.0");
        assert_eq!(env["MODEL_SERVICE"], "scorer-canary");
        assert_eq!(env["MODEL_SERVICE_PORT"], "9000");
        assert_eq!(env["GATE"], "prePromotion");
        // No model labels on the pods: no Service traffic, no analysis.
        let pod_labels = spec.template.metadata.and_then(|m| m.labels);
        assert!(pod_labels.is_none_or(|l| !l.contains_key(labels::NAME)));
    }

    #[test]
    fn the_template_chooses_its_own_account_and_restart_policy() {
        let md = md(
            json!({"spec": {"serviceAccountName": "eval-sa", "restartPolicy": "OnFailure",
            "containers": [{"name": "eval", "image": "e:1"}]}}),
        );
        let valid = validate(&md.spec).unwrap();
        let job = gate_job(&md, valid.gates.pre_promotion.as_ref().unwrap(), &cx()).unwrap();
        let pod = job.spec.unwrap().template.spec.unwrap();
        assert_eq!(pod.service_account_name.as_deref(), Some("eval-sa"));
        assert_eq!(pod.restart_policy.as_deref(), Some("OnFailure"));
    }
}
