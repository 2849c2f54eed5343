//! Gates: checks that are not metrics. A gate runs before the new revision
//! gets any traffic (`preRollout`) or before it is promoted
//! (`prePromotion`), as a Kubernetes Job from a template (Argo Rollouts'
//! pre-promotion analysis with a Job metric, Flagger's pre-rollout hooks) or
//! as a webhook (Flagger's confirm-rollout hook). No I/O: the types, their
//! status, and what the schema cannot check.

use std::time::Duration;

use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::spec::DURATION_RULE;
use super::validate::{InvalidSpec, parse_duration};

/// Gates of a rollout; each runs once per rollout of a revision.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct GatesSpec {
    /// Must pass before the new revision gets any pods or traffic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pre_rollout: Option<Gate>,
    /// Must pass before the new revision is promoted (after the last step).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pre_promotion: Option<Gate>,
}

/// One gate: exactly one of `job` or `webhook`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.job) != has(self.webhook)").message("spec.rollout.gates: each gate sets exactly one of job or webhook"))]
pub struct Gate {
    /// A Job in the ModelDeployment's namespace: it passes when the Job
    /// completes, and fails the rollout when the Job fails or runs past
    /// `activeDeadlineSeconds`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<JobGate>,
    /// A POST with the rollout's context; a 2xx answer passes. The URL's host
    /// must be allowed by the operator's `--webhook-allow`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<WebhookGate>,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct JobGate {
    /// Seconds the Job may run; past it the Job fails, and so does the gate.
    #[serde(default = "default_job_deadline")]
    #[schemars(range(min = 1, max = 86400))]
    pub active_deadline_seconds: i64,
    /// Pod failures the Job retries before it fails.
    #[serde(default)]
    #[schemars(range(min = 0, max = 10))]
    pub backoff_limit: i32,
    /// A core/v1 PodTemplateSpec. `restartPolicy` defaults to `Never` and
    /// `serviceAccountName` to `spec.template.serviceAccountName`; every
    /// container gets `MODEL_NAME`, `MODEL_VERSION`, `REVISION`,
    /// `MODEL_SERVICE`, `MODEL_SERVICE_PORT` and `GATE` in its env.
    #[schemars(schema_with = "raw_object")]
    pub template: serde_json::Value,
}

fn default_job_deadline() -> i64 {
    600
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct WebhookGate {
    /// `http://` or `https://` URL; redirects are never followed.
    #[x_kube(validation = Rule::new("self.startsWith('http://') || self.startsWith('https://')").message("spec.rollout.gates.*.webhook.url must start with http:// or https://"))]
    #[schemars(length(min = 1, max = 2048))]
    pub url: String,
    /// Timeout of one call (at most 60s).
    #[serde(default = "default_webhook_timeout")]
    #[x_kube(validation = Rule::new(DURATION_RULE).message("spec.rollout.gates.*.webhook.timeout must be a duration such as 10s"))]
    #[schemars(length(max = 32))]
    pub timeout: String,
    /// Failed calls retried before the gate fails, a few seconds apart.
    #[serde(default = "default_webhook_retries")]
    #[schemars(range(min = 0, max = 10))]
    pub retries: i32,
}

fn default_webhook_timeout() -> String {
    "10s".into()
}
fn default_webhook_retries() -> i32 {
    2
}

fn raw_object(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true
    })
}

/// Where in a rollout a gate runs.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum GateKind {
    PreRollout,
    PrePromotion,
}

impl GateKind {
    /// As the spec and the Job's `GATE` env name it.
    pub fn as_str(self) -> &'static str {
        match self {
            GateKind::PreRollout => "preRollout",
            GateKind::PrePromotion => "prePromotion",
        }
    }

    /// The field of the gate in the spec.
    pub fn field(self) -> String {
        format!("spec.rollout.gates.{}", self.as_str())
    }
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum GatePhase {
    /// Waiting for the Job or the webhook.
    Running,
    Passed,
}

/// One gate of the rollout in progress. A failed gate rolls back, so it is
/// told in the history and the `RolledBack` event rather than here.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GateStatus {
    pub gate: GateKind,
    pub phase: GatePhase,
    /// The Job running a job gate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<String>,
    /// Calls made to a webhook gate so far.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub attempts: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_attempt: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

fn is_zero(n: &i32) -> bool {
    *n == 0
}

/// A gate as the operator runs it: the Job's pod template decoded, the
/// webhook's timeout parsed.
#[derive(Debug, Clone, PartialEq)]
pub enum ValidGate {
    Job {
        template: Box<PodTemplateSpec>,
        active_deadline_seconds: i64,
        backoff_limit: i32,
    },
    Webhook {
        url: String,
        timeout: Duration,
        retries: i32,
    },
}

/// Both gates, checked.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ValidGates {
    pub pre_rollout: Option<ValidGate>,
    pub pre_promotion: Option<ValidGate>,
}

impl ValidGates {
    pub fn get(&self, kind: GateKind) -> Option<&ValidGate> {
        match kind {
            GateKind::PreRollout => self.pre_rollout.as_ref(),
            GateKind::PrePromotion => self.pre_promotion.as_ref(),
        }
    }
}

/// Longest webhook timeout: a gate call holds a reconcile.
const MAX_WEBHOOK_TIMEOUT: Duration = Duration::from_secs(60);

fn invalid(field: String, message: impl Into<String>) -> InvalidSpec {
    InvalidSpec {
        field,
        message: message.into(),
    }
}

/// What the schema cannot check: the Job's pod template decodes and has a
/// container, a webhook's URL and timeout are usable.
pub fn validate(gates: Option<&GatesSpec>) -> Result<ValidGates, InvalidSpec> {
    let Some(gates) = gates else {
        return Ok(ValidGates::default());
    };
    Ok(ValidGates {
        pre_rollout: validate_gate(GateKind::PreRollout, gates.pre_rollout.as_ref())?,
        pre_promotion: validate_gate(GateKind::PrePromotion, gates.pre_promotion.as_ref())?,
    })
}

fn validate_gate(kind: GateKind, gate: Option<&Gate>) -> Result<Option<ValidGate>, InvalidSpec> {
    let Some(gate) = gate else {
        return Ok(None);
    };
    let field = kind.field();
    match (&gate.job, &gate.webhook) {
        (Some(job), None) => validate_job(&format!("{field}.job"), job).map(Some),
        (None, Some(hook)) => validate_webhook(&format!("{field}.webhook"), hook).map(Some),
        _ => Err(invalid(field, "sets exactly one of job or webhook")),
    }
}

fn validate_job(field: &str, job: &JobGate) -> Result<ValidGate, InvalidSpec> {
    if !(1..=86400).contains(&job.active_deadline_seconds) {
        return Err(invalid(
            format!("{field}.activeDeadlineSeconds"),
            format!("{} is outside 1..86400", job.active_deadline_seconds),
        ));
    }
    if !(0..=10).contains(&job.backoff_limit) {
        return Err(invalid(
            format!("{field}.backoffLimit"),
            format!("{} is outside 0..10", job.backoff_limit),
        ));
    }
    let template: PodTemplateSpec = serde_json::from_value(job.template.clone()).map_err(|e| {
        invalid(
            format!("{field}.template"),
            format!("is not a pod template: {e}"),
        )
    })?;
    let model_label = template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.as_ref())
        .and_then(|l| l.keys().find(|k| k.starts_with("modeldeploy.io/")));
    if let Some(label) = model_label {
        return Err(invalid(
            format!("{field}.template.metadata.labels"),
            format!(
                "{label:?}: modeldeploy.io/ labels would make the gate's pods look like model pods"
            ),
        ));
    }
    let containers = template.spec.as_ref().map_or(0, |s| s.containers.len());
    if containers == 0 {
        return Err(invalid(
            format!("{field}.template.spec.containers"),
            "must list at least one container",
        ));
    }
    let containers = template.spec.iter().flat_map(|s| s.containers.iter());
    for (i, c) in containers.enumerate() {
        if c.image.as_deref().is_none_or(|i| i.trim().is_empty()) {
            return Err(invalid(
                format!("{field}.template.spec.containers[{i}].image"),
                "must be set",
            ));
        }
    }
    if let Some(policy) = template
        .spec
        .as_ref()
        .and_then(|s| s.restart_policy.as_deref())
        .filter(|p| !matches!(*p, "Never" | "OnFailure"))
    {
        return Err(invalid(
            format!("{field}.template.spec.restartPolicy"),
            format!("{policy:?}: a Job's pods restart Never or OnFailure"),
        ));
    }
    Ok(ValidGate::Job {
        template: Box::new(template),
        active_deadline_seconds: job.active_deadline_seconds,
        backoff_limit: job.backoff_limit,
    })
}

fn validate_webhook(field: &str, hook: &WebhookGate) -> Result<ValidGate, InvalidSpec> {
    let url = url::Url::parse(&hook.url)
        .map_err(|e| invalid(format!("{field}.url"), format!("is not a URL: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(invalid(
            format!("{field}.url"),
            "must be an http:// or https:// URL with a host",
        ));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(invalid(
            format!("{field}.url"),
            "must not carry credentials",
        ));
    }
    let timeout = parse_duration(&format!("{field}.timeout"), &hook.timeout)?;
    if timeout.is_zero() || timeout > MAX_WEBHOOK_TIMEOUT {
        return Err(invalid(
            format!("{field}.timeout"),
            format!("{:?} is outside (0s, 60s]", hook.timeout),
        ));
    }
    if !(0..=10).contains(&hook.retries) {
        return Err(invalid(
            format!("{field}.retries"),
            format!("{} is outside 0..10", hook.retries),
        ));
    }
    Ok(ValidGate::Webhook {
        url: hook.url.clone(),
        timeout,
        retries: hook.retries,
    })
}

/// A host pattern of the operator's `--webhook-allow`: `host`, `host:port`,
/// or `*.domain` (any subdomain, not the domain itself), compared without
/// case. A ModelDeployment can only make the operator call hosts a pattern
/// allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPattern {
    host: String,
    port: Option<u16>,
}

impl HostPattern {
    pub fn parse(pattern: &str) -> Result<Self, String> {
        let p = pattern.trim().to_ascii_lowercase();
        let (host, port) = match p.rsplit_once(':') {
            Some((h, port)) => {
                let port = port
                    .parse::<u16>()
                    .map_err(|_| format!("{pattern:?}: the port is not a number"))?;
                (h.to_string(), Some(port))
            }
            None => (p.clone(), None),
        };
        let bare = host.strip_prefix("*.").unwrap_or(&host);
        let ok = !bare.is_empty()
            && !bare.contains('*')
            && bare
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-');
        if !ok {
            return Err(format!(
                "{pattern:?} is not a host pattern (host, host:port or *.domain)"
            ));
        }
        Ok(Self { host, port })
    }

    fn allows(&self, host: &str, port: Option<u16>) -> bool {
        let host = host.to_ascii_lowercase();
        let host_ok = match self.host.strip_prefix("*.") {
            Some(domain) => host
                .strip_suffix(domain)
                .is_some_and(|sub| sub.len() > 1 && sub.ends_with('.')),
            None => host == self.host,
        };
        host_ok && self.port.is_none_or(|p| Some(p) == port)
    }
}

/// Every webhook gate's URL must match one of `allow`; anything else is
/// refused as InvalidSpec naming the field.
pub fn check_webhooks_allowed(
    gates: &ValidGates,
    allow: &[HostPattern],
) -> Result<(), InvalidSpec> {
    for kind in [GateKind::PreRollout, GateKind::PrePromotion] {
        let Some(ValidGate::Webhook { url, .. }) = gates.get(kind) else {
            continue;
        };
        let field = format!("{}.webhook.url", kind.field());
        let parsed = url::Url::parse(url).map_err(|e| invalid(field.clone(), e.to_string()))?;
        let host = parsed.host_str().unwrap_or_default();
        if !allow
            .iter()
            .any(|p| p.allows(host, parsed.port_or_known_default()))
        {
            let why = if allow.is_empty() {
                "the operator allows no webhook hosts (its --webhook-allow is empty)".to_string()
            } else {
                format!("host {host:?} is not allowed by the operator's --webhook-allow")
            };
            return Err(invalid(field, why));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn gates(v: serde_json::Value) -> GatesSpec {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn a_job_gate_needs_a_container_and_a_job_restart_policy() {
        let ok = gates(json!({"preRollout": {"job": {"template": {"spec": {
            "containers": [{"name": "c", "image": "i"}]}}}}}));
        let v = validate(Some(&ok)).unwrap();
        assert!(matches!(
            v.pre_rollout,
            Some(ValidGate::Job {
                active_deadline_seconds: 600,
                backoff_limit: 0,
                ..
            })
        ));
        let empty =
            gates(json!({"preRollout": {"job": {"template": {"spec": {"containers": []}}}}}));
        let e = validate(Some(&empty)).unwrap_err();
        assert_eq!(
            e.field,
            "spec.rollout.gates.preRollout.job.template.spec.containers"
        );
        let always = gates(json!({"prePromotion": {"job": {"template": {"spec": {
            "restartPolicy": "Always", "containers": [{"name": "c", "image": "i"}]}}}}}));
        let e = validate(Some(&always)).unwrap_err();
        assert_eq!(
            e.field,
            "spec.rollout.gates.prePromotion.job.template.spec.restartPolicy"
        );
        let no_image = gates(json!({"preRollout": {"job": {"template": {"spec": {
            "containers": [{"name": "c", "image": "i"}, {"name": "d"}]}}}}}));
        assert_eq!(
            validate(Some(&no_image)).unwrap_err().field,
            "spec.rollout.gates.preRollout.job.template.spec.containers[1].image"
        );
        let bad = gates(json!({"preRollout": {"job": {"template": {"spec": {"containers": 3}}}}}));
        let e = validate(Some(&bad)).unwrap_err();
        assert_eq!(e.field, "spec.rollout.gates.preRollout.job.template");
    }

    #[test]
    fn a_gate_sets_exactly_one_kind() {
        let both = gates(json!({"preRollout": {
            "job": {"template": {"spec": {"containers": [{"name": "c"}]}}},
            "webhook": {"url": "http://a"}}}));
        assert_eq!(
            validate(Some(&both)).unwrap_err().field,
            "spec.rollout.gates.preRollout"
        );
        let none = gates(json!({"prePromotion": {}}));
        assert_eq!(
            validate(Some(&none)).unwrap_err().field,
            "spec.rollout.gates.prePromotion"
        );
    }

    #[test]
    fn webhook_urls_timeouts_and_retries_are_bounded() {
        for (hook, field) in [
            (json!({"url": "ftp://a/x"}), "url"),
            (json!({"url": "http://user:pw@a/x"}), "url"),
            (json!({"url": "not a url"}), "url"),
            (json!({"url": "http://a", "timeout": "2m"}), "timeout"),
            (json!({"url": "http://a", "timeout": "0s"}), "timeout"),
            (json!({"url": "http://a", "retries": 11}), "retries"),
        ] {
            let g = gates(json!({"prePromotion": {"webhook": hook}}));
            assert_eq!(
                validate(Some(&g)).unwrap_err().field,
                format!("spec.rollout.gates.prePromotion.webhook.{field}"),
                "{hook}"
            );
        }
    }

    #[test]
    fn only_allow_listed_hosts_are_called() {
        let g = validate(Some(&gates(json!({
            "preRollout": {"webhook": {"url": "https://gate.ci.example.com/check"}},
            "prePromotion": {"webhook": {"url": "http://127.0.0.1:9000/confirm"}}}))))
        .unwrap();
        let allow = |ps: &[&str]| -> Vec<HostPattern> {
            ps.iter().map(|p| HostPattern::parse(p).unwrap()).collect()
        };
        assert!(check_webhooks_allowed(&g, &allow(&["*.example.com", "127.0.0.1:9000"])).is_ok());
        let e =
            check_webhooks_allowed(&g, &allow(&["*.example.com", "127.0.0.1:9001"])).unwrap_err();
        assert_eq!(e.field, "spec.rollout.gates.prePromotion.webhook.url");
        let e = check_webhooks_allowed(&g, &allow(&["example.com", "127.0.0.1"])).unwrap_err();
        assert_eq!(e.field, "spec.rollout.gates.preRollout.webhook.url");
        let e = check_webhooks_allowed(&g, &[]).unwrap_err();
        assert!(e.message.contains("--webhook-allow"), "{e}");
        // `*.` needs a real subdomain: no suffix tricks.
        let p = HostPattern::parse("*.example.com").unwrap();
        assert!(p.allows("a.example.com", Some(443)));
        assert!(!p.allows("evilexample.com", Some(443)));
        assert!(!p.allows("example.com", Some(443)));
        assert!(HostPattern::parse("a*b.com").is_err());
        assert!(HostPattern::parse("host:port").is_err());
        assert!(HostPattern::parse("").is_err());
    }
}
