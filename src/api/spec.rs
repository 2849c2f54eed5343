//! The `ModelDeployment` spec. Doc comments become the CRD's schema descriptions.
//!
//! What the API server can enforce lives here as schema bounds and CEL rules
//! (`x-kubernetes-validations`); what it cannot (quantities compared, durations
//! turned into numbers, raw pod fields) is checked by [`super::validate`].
//!
//! # Bounds
//!
//! The API server estimates the worst-case cost of every CEL rule when the CRD
//! is created, from the largest value the schema allows, multiplied by how
//! often the rule can run (the `maxItems` of the lists around it). A list,
//! map or string without a bound is sized from the 3 MiB request limit, and a
//! rule walking it (`isSorted()`, `exists_one()`, `matches()`) is then
//! estimated far beyond the budget: Kubernetes 1.24 refused the CRD for that.
//! So every list, map and string a user writes has a bound, chosen far above
//! real use:
//!
//! | what | bound |
//! | --- | --- |
//! | `rollout.steps` | 64 items |
//! | `analysis.checks`, `guard.checks` | 32 items |
//! | `abTest.match` | 8 items, 16 headers and 16 cookies each, values 4096 |
//! | `gatewayAPI.parentRefs`, `hostnames` | 16 items; names 253, kinds and namespaces 63 |
//! | drift `features` | 1000 items of 256 |
//! | check and version names, label values | 63 |
//! | Kubernetes object names, ConfigMap keys | 253 |
//! | `model.image` | 512 |
//! | `storageUri` | 2048 |
//! | `model.command` / `args` | 64 / 256 items of 4096 |
//! | `model.env` | 256 items |
//! | `resources.requests` / `limits` | 16 resources each |
//! | `template` labels, annotations, node selector | 64 entries; label values 63, annotation values 262144 (the API server's own limit for all annotations) |
//! | `template` tolerations, image pull secrets | 64 / 16 items |
//! | raw `volumes`, `volumeMounts`, `topologySpreadConstraints` | 128 / 128 / 16 items |
//! | durations | 32 |
//! | metric names, error label | 256 / 128; error pattern 256; custom query 4096 |
//! | inside core/v1 types (env vars, probes, tolerations) | lists 64 items, strings 32768 |
//!
//! Measured on a Kubernetes 1.36 API server (`tests/crd_real_server.rs` prints
//! the table): the costliest rule, unique check names (quadratic in `checks`),
//! is estimated at about 33,000 of the 10,000,000 a rule may cost; the check
//! name and pause duration patterns at about 8,400 each (a rule's cost counts
//! every list item it runs on); all rules together at about 73,000 of the
//! CRD's 100,000,000. The test fails when any of them comes within 100x of
//! its limit.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{EnvVar, LocalObjectReference, Probe, Toleration};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::status::ModelDeploymentStatus;

/// Go-style duration (`300ms`, `30s`, `2m`, `1h30m`), as `metav1.Duration` accepts.
pub const DURATION_RULE: &str = "self.matches('^([0-9]+(\\\\.[0-9]+)?(ns|us|ms|s|m|h))+$')";

/// A ModelDeployment releases one model server: a version, its resources and how a
/// new version must earn its traffic (canary steps or an A/B test), judged on the
/// serving pods' own metrics, with automatic promotion and rollback.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "modeldeploy.io",
    version = "v1alpha1",
    kind = "ModelDeployment",
    namespaced,
    shortname = "mdep",
    category = "all",
    status = "ModelDeploymentStatus",
    // `kubectl scale`, an HPA or KEDA set `spec.replicas`; the selector
    // covers the pods of every revision, which the HPA's metrics come from.
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.selector"
    ),
    printcolumn = r#"{"name":"Version","type":"string","jsonPath":".spec.model.version"}"#,
    printcolumn = r#"{"name":"Stable","type":"string","jsonPath":".status.stable.version"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Canary-Weight","type":"integer","jsonPath":".status.canary.weight"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    validation = Rule::new("self.metadata.name.size() <= 40").message("metadata.name must be at most 40 characters: the operator derives Deployment and Service names from it")
)]
#[serde(rename_all = "camelCase")]
pub struct ModelDeploymentSpec {
    /// The model server to run. A change here, in `resources` or in `template`
    /// creates a new revision and starts a rollout.
    pub model: ModelSpec,

    /// Pods of the stable revision. A canary takes its share out of this
    /// number. Also set through the scale subresource (`kubectl scale`, an
    /// HPA); 0 runs no pods while no rollout is out.
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 0, max = 1000))]
    pub replicas: i32,

    /// Compute resources of every serving container: requests and limits are both
    /// required (cpu, memory, nvidia.com/gpu, ...).
    pub resources: ResourceSpec,

    /// Optional pod overrides merged into every revision's pod template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<PodOverrides>,

    /// Where and how the serving pods' metrics are read.
    #[serde(default)]
    pub metrics: MetricsSpec,

    /// Reference distribution for input drift checks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drift: Option<DriftSpec>,

    /// How a new revision earns traffic. Without it, a new revision replaces the
    /// running one as soon as its pods are available.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<RolloutSpec>,

    /// Checks that keep running after a promotion; a breach rolls back to the
    /// previous revision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guard: Option<GuardSpec>,

    /// The PodDisruptionBudget over the model's pods; `maxUnavailable: 1`
    /// when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disruption: Option<super::DisruptionSpec>,

    /// A NetworkPolicy letting only the named namespaces and pods, and the
    /// operator, call the model's pods; none when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_policy: Option<super::NetworkPolicySpec>,

    /// How many old revisions (Deployments scaled to zero and history entries) to keep.
    #[serde(default = "default_revision_history_limit")]
    #[schemars(range(min = 1, max = 100))]
    pub revision_history_limit: i32,
}

fn default_replicas() -> i32 {
    1
}
fn default_revision_history_limit() -> i32 {
    10
}

/// The model server container.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ModelSpec {
    /// Model version, recorded in history and used as a label value.
    #[x_kube(validation = Rule::new("self.matches('^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$')").message("spec.model.version must be a valid label value: alphanumerics, '-', '_' or '.', starting and ending with an alphanumeric"))]
    #[schemars(length(min = 1, max = 63))]
    pub version: String,

    /// Container image of the model server.
    #[x_kube(validation = Rule::new("self.trim().size() > 0").message("spec.model.image must not be empty"))]
    #[schemars(length(min = 1, max = 512))]
    pub image: String,

    /// Port the model server listens on.
    #[serde(default = "default_model_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,

    /// Entrypoint override.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(max = 4096)))]
    pub command: Vec<String>,

    /// Arguments to the model server.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256), inner(length(max = 4096)))]
    pub args: Vec<String>,

    /// Environment variables of the model server container.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256), transform = bounded_inside)]
    pub env: Vec<EnvVar>,

    /// Where the model artefact lives; handed to the container as `MODEL_URI`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048))]
    pub storage_uri: Option<String>,
}

fn default_model_port() -> i32 {
    8080
}

/// Requests and limits, as in a container's `resources`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ResourceSpec {
    /// Resources the scheduler reserves for each serving container.
    #[x_kube(validation = Rule::new("self.size() > 0").message("spec.resources.requests must name at least one resource"))]
    #[schemars(transform = bounded_entries::<16>)]
    pub requests: BTreeMap<String, Quantity>,
    /// Upper bounds for each serving container; at least one is required so that a
    /// runaway model cannot starve its node.
    #[x_kube(validation = Rule::new("self.size() > 0").message("spec.resources.limits must name at least one resource"))]
    #[schemars(transform = bounded_entries::<16>)]
    pub limits: BTreeMap<String, Quantity>,
}

/// Pod-level overrides. Small, common fields are typed; large Kubernetes types
/// (affinity, volumes, security contexts) are carried as raw objects to keep the
/// CRD small enough for client-side `kubectl apply`, and are checked when the
/// operator builds the pod (an error names the field).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct PodOverrides {
    /// Extra labels on the pods (the operator's own labels win).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(transform = bounded_map::<64, 63>)]
    pub labels: BTreeMap<String, String>,
    /// Extra annotations on the pods.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(transform = bounded_map::<64, 262144>)]
    pub annotations: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub service_account_name: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(transform = bounded_map::<64, 63>)]
    pub node_selector: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), transform = bounded_inside)]
    pub tolerations: Vec<Toleration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub priority_class_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub runtime_class_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub termination_grace_period_seconds: Option<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16), transform = bounded_inside)]
    pub image_pull_secrets: Vec<LocalObjectReference>,
    /// Replaces the default readiness probe (a TCP connect to the model port,
    /// which every server answers; set an HTTP GET on the server's health path
    /// here to wait until the model is loaded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(transform = bounded_inside)]
    pub readiness_probe: Option<Probe>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(transform = bounded_inside)]
    pub liveness_probe: Option<Probe>,
    /// Model loading is slow: a startup probe keeps liveness from killing a loading pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(transform = bounded_inside)]
    pub startup_probe: Option<Probe>,
    /// A core/v1 Affinity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "raw_object")]
    pub affinity: Option<serde_json::Value>,
    /// core/v1 TopologySpreadConstraints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "raw_list::<16>")]
    pub topology_spread_constraints: Option<serde_json::Value>,
    /// core/v1 Volumes added to the pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "raw_list::<128>")]
    pub volumes: Option<serde_json::Value>,
    /// core/v1 VolumeMounts added to the model container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "raw_list::<128>")]
    pub volume_mounts: Option<serde_json::Value>,
    /// A core/v1 PodSecurityContext.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "raw_object")]
    pub pod_security_context: Option<serde_json::Value>,
    /// A core/v1 SecurityContext for the model container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "raw_object")]
    pub security_context: Option<serde_json::Value>,
}

/// `maxProperties` on a string map, `maxLength` on its values.
fn bounded_map<const ENTRIES: u64, const VALUE: u64>(schema: &mut schemars::Schema) {
    schema.insert("maxProperties".into(), ENTRIES.into());
    if let Some(values) = schema
        .get_mut("additionalProperties")
        .and_then(|v| v.as_object_mut())
        .filter(|v| v.get("type").and_then(|t| t.as_str()) == Some("string"))
    {
        values.insert("maxLength".into(), VALUE.into());
    }
}

/// `maxProperties` on a map whose values are not plain strings (quantities).
fn bounded_entries<const ENTRIES: u64>(schema: &mut schemars::Schema) {
    schema.insert("maxProperties".into(), ENTRIES.into());
}

/// Bounds inside a core/v1 type the operator does not define (env vars,
/// probes, tolerations): lists below the field get `maxItems` 64 and strings
/// `maxLength` 32768, unless already bounded. The field itself is bounded by
/// its own attribute.
pub(super) fn bounded_inside(schema: &mut schemars::Schema) {
    fn walk(node: &mut serde_json::Value, root: bool) {
        let Some(obj) = node.as_object_mut() else {
            return;
        };
        if !root {
            match obj.get("type").and_then(|t| t.as_str()) {
                Some("array") => {
                    obj.entry("maxItems").or_insert(64.into());
                }
                Some("string") if !obj.contains_key("enum") => {
                    obj.entry("maxLength").or_insert(32768.into());
                }
                _ => {}
            }
        }
        if let Some(props) = obj.get_mut("properties").and_then(|p| p.as_object_mut()) {
            for v in props.values_mut() {
                walk(v, false);
            }
        }
        for key in ["items", "additionalProperties"] {
            if let Some(v) = obj.get_mut(key) {
                walk(v, false);
            }
        }
        // `Option<T>` may wrap the field's own schema in `anyOf`: still the root.
        for key in ["anyOf", "oneOf", "allOf"] {
            if let Some(list) = obj.get_mut(key).and_then(|l| l.as_array_mut()) {
                for v in list {
                    walk(v, root);
                }
            }
        }
    }
    if let Some(obj) = schema.as_object_mut() {
        let mut node = serde_json::Value::Object(std::mem::take(obj));
        walk(&mut node, true);
        if let serde_json::Value::Object(bounded) = node {
            *obj = bounded;
        }
    }
}

fn raw_object(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true
    })
}

fn raw_list<const MAX_ITEMS: u64>(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "array",
        "maxItems": MAX_ITEMS,
        "items": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}
    })
}

/// Where metrics come from.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub enum MetricsSource {
    /// Scrape every Ready pod of each variant directly.
    #[default]
    Pods,
    /// PromQL against the Prometheus the operator is configured with.
    Prometheus,
}

/// Metric names of a known model server.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub enum MetricsPreset {
    /// The modeldeploy convention (`model_requests_total`, ...).
    #[default]
    Default,
    Kserve,
    Triton,
    Mlserver,
    Bentoml,
    Seldon,
}

/// How the serving pods are read.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MetricsSpec {
    /// Metrics port; defaults to `model.port`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<i32>,
    /// Metrics path on the pod. Only a plain path: the operator never fetches
    /// another host or URL because of a ModelDeployment.
    #[serde(default = "default_metrics_path")]
    #[x_kube(validation = Rule::new("self.matches('^/[A-Za-z0-9._~/-]*$') && !self.contains('//')").message("spec.metrics.path must be a plain absolute path such as /metrics (letters, digits, '.', '_', '~', single '/', '-')"))]
    #[schemars(length(max = 256))]
    pub path: String,
    /// How often pods are scraped.
    #[serde(default = "default_metrics_interval")]
    #[x_kube(validation = Rule::new(DURATION_RULE).message("spec.metrics.interval must be a duration such as 10s or 1m"))]
    #[schemars(length(max = 32))]
    pub interval: String,
    #[serde(default)]
    pub source: MetricsSource,
    #[serde(default)]
    pub preset: MetricsPreset,
    /// Per-metric overrides of the preset's names.
    #[serde(default, skip_serializing_if = "MetricNames::is_empty")]
    pub names: MetricNames,
}

impl Default for MetricsSpec {
    fn default() -> Self {
        Self {
            port: None,
            path: default_metrics_path(),
            interval: default_metrics_interval(),
            source: MetricsSource::default(),
            preset: MetricsPreset::default(),
            names: MetricNames::default(),
        }
    }
}

fn default_metrics_path() -> String {
    "/metrics".into()
}
fn default_metrics_interval() -> String {
    "10s".into()
}

/// Metric names; any left out come from the preset.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct MetricNames {
    /// Request counter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    pub requests: Option<String>,
    /// Which requests are errors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub errors: Option<ErrorSelector>,
    /// Request latency histogram (seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    pub latency: Option<String>,
    /// Numeric input feature histogram, labelled by `feature`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    pub features: Option<String>,
    /// Categorical input counter, labelled by `feature` and `value`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    pub categories: Option<String>,
    /// Prediction histogram.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    pub predictions: Option<String>,
    /// Outcome counter labelled by `actual` and `predicted`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    pub outcomes: Option<String>,
}

impl MetricNames {
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// Errors are the requests whose `label` matches the regular expression `matches`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ErrorSelector {
    #[schemars(length(min = 1, max = 128))]
    pub label: String,
    #[schemars(length(min = 1, max = 256))]
    pub matches: String,
}

/// Reference distribution for input drift: exactly one source.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DriftSpec {
    pub reference: DriftReference,
    /// Correction for testing many features at once.
    #[serde(default)]
    pub correction: MultipleTestingCorrection,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.configMapRef) != (has(self.fromStable) && self.fromStable)").message("spec.drift.reference needs exactly one of configMapRef or fromStable: true"))]
pub struct DriftReference {
    /// A ConfigMap key holding bucket edges and counts per feature (JSON).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map_ref: Option<ConfigMapKeyRef>,
    /// Capture the stable revision's input distribution when it is promoted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_stable: Option<bool>,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ConfigMapKeyRef {
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub enum MultipleTestingCorrection {
    None,
    Bonferroni,
    #[default]
    BenjaminiHochberg,
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub enum Strategy {
    /// Shift traffic step by step.
    #[default]
    Canary,
    /// Split traffic between two variants and promote the better one.
    AbTest,
}

/// How a new revision earns traffic.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.strategy != 'canary' || (has(self.steps) && size(self.steps) > 0)").message("spec.rollout.steps must list at least one step when strategy is canary"))]
#[x_kube(validation = Rule::new("self.strategy != 'abTest' || has(self.abTest)").message("spec.rollout.abTest is required when strategy is abTest"))]
#[x_kube(validation = Rule::new("!has(self.abTest) || !has(self.abTest.match) || self.traffic.router == 'gatewayAPI'").message("spec.rollout.abTest.match (header/cookie matching) needs spec.rollout.traffic.router: gatewayAPI; the replicas router can only split by weight"))]
#[x_kube(validation = Rule::new("self.traffic.router == 'gatewayAPI' || !has(self.steps) || !self.steps.exists(s, has(s.setMirror))").message("spec.rollout.steps[].setMirror (shadow traffic) needs spec.rollout.traffic.router: gatewayAPI; the replicas router cannot copy requests, use gatewayAPI"))]
pub struct RolloutSpec {
    #[serde(default)]
    pub strategy: Strategy,
    #[serde(default)]
    pub traffic: TrafficSpec,
    /// Canary steps, Argo Rollouts style: each item sets exactly one of
    /// `setWeight`, `pause`, `analysis` or `setMirror`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(validation = Rule::new("self.filter(s, has(s.setWeight)).map(s, s.setWeight).isSorted()").message("spec.rollout.steps: setWeight values must not decrease from one step to the next"))]
    #[schemars(length(max = 64))]
    pub steps: Vec<CanaryStep>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ab_test: Option<AbTestSpec>,
    #[serde(default)]
    pub analysis: AnalysisSpec,
    /// A canary whose pods are not all available within this time is rolled back.
    #[serde(default = "default_progress_deadline")]
    #[x_kube(validation = Rule::new(DURATION_RULE).message("spec.rollout.progressDeadline must be a duration such as 10m"))]
    #[schemars(length(max = 32))]
    pub progress_deadline: String,
    /// How long a rolled-back canary or a replaced stable keeps its pods before
    /// being scaled to zero.
    #[serde(default = "default_scale_down_delay")]
    #[x_kube(validation = Rule::new(DURATION_RULE).message("spec.rollout.scaleDownDelay must be a duration such as 30s"))]
    #[schemars(length(max = 32))]
    pub scale_down_delay: String,
    /// Jobs or webhooks that must pass before the new revision gets traffic
    /// (`preRollout`) or is promoted (`prePromotion`); see docs/gates.md.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gates: Option<super::gates::GatesSpec>,
}

impl Default for RolloutSpec {
    /// What applies when `spec.rollout` is left out: no steps, default timings.
    fn default() -> Self {
        Self {
            strategy: Strategy::Canary,
            traffic: TrafficSpec::default(),
            steps: Vec::new(),
            ab_test: None,
            analysis: AnalysisSpec::default(),
            progress_deadline: default_progress_deadline(),
            scale_down_delay: default_scale_down_delay(),
            gates: None,
        }
    }
}

fn default_progress_deadline() -> String {
    "10m".into()
}
fn default_scale_down_delay() -> String {
    "30s".into()
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub enum Router {
    /// One Service over both revisions; weight follows replica counts. Needs nothing.
    #[default]
    Replicas,
    /// Per-variant Services and a weighted Gateway API HTTPRoute.
    #[serde(rename = "gatewayAPI")]
    GatewayApi,
}

impl Router {
    pub const ALL: [Router; 2] = [Router::Replicas, Router::GatewayApi];
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.router != 'gatewayAPI' || has(self.gatewayAPI)").message("spec.rollout.traffic.gatewayAPI (parentRefs) is required when router is gatewayAPI"))]
pub struct TrafficSpec {
    #[serde(default)]
    pub router: Router,
    #[serde(
        default,
        rename = "gatewayAPI",
        skip_serializing_if = "Option::is_none"
    )]
    pub gateway_api: Option<GatewayApiSpec>,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct GatewayApiSpec {
    /// Gateways the HTTPRoute attaches to.
    #[x_kube(validation = Rule::new("self.size() > 0").message("spec.rollout.traffic.gatewayAPI.parentRefs must name at least one Gateway"))]
    #[schemars(length(max = 16))]
    pub parent_refs: Vec<ParentRef>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16), inner(length(max = 253)))]
    pub hostnames: Vec<String>,
}

/// A Gateway API `parentRef`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ParentRef {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub group: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 63))]
    pub kind: Option<String>,
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 63))]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub section_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<i32>,
}

/// One canary step.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("(has(self.setWeight) ? 1 : 0) + (has(self.pause) ? 1 : 0) + (has(self.analysis) ? 1 : 0) + (has(self.setMirror) ? 1 : 0) == 1").message("spec.rollout.steps[]: each step sets exactly one of setWeight, pause or analysis (or setMirror, for shadow traffic)"))]
pub struct CanaryStep {
    /// Percent of traffic the canary gets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 0 && self <= 100").message("spec.rollout.steps[].setWeight must be within 0..100"))]
    pub set_weight: Option<i32>,
    /// Wait: for a duration, or until promoted by hand when no duration is given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pause: Option<PauseStep>,
    /// Wait until the analysis passes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub analysis: Option<AnalysisStep>,
    /// Shadow traffic (gatewayAPI router only): copy this share of live
    /// requests to the new revision, whose answers are thrown away, while
    /// stable keeps serving all of them. A later `setWeight` ends the copy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub set_mirror: Option<MirrorStep>,
}

/// A `setMirror` step: the share of live requests copied to the new revision.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct MirrorStep {
    /// Percent of requests copied (1..100). The new revision runs as many pods
    /// as this share of traffic would need.
    #[x_kube(validation = Rule::new("self >= 1 && self <= 100").message("spec.rollout.steps[].setMirror.percent must be within 1..100"))]
    pub percent: i32,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct PauseStep {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new(DURATION_RULE).message("spec.rollout.steps[].pause.duration must be a duration such as 2m"))]
    #[schemars(length(max = 32))]
    pub duration: Option<String>,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct AnalysisStep {
    /// Consecutive passing analysis runs required before moving on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub passes: Option<i32>,
}

/// A/B test between the stable and the new revision.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!(has(self.weight) && has(self.match))").message("spec.rollout.abTest sets either weight or match, not both"))]
pub struct AbTestSpec {
    /// Percent of traffic to the new variant (default 50 when no match is given).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 0 && self <= 100").message("spec.rollout.abTest.weight must be within 0..100"))]
    pub weight: Option<i32>,
    /// Requests routed to the new variant by header or cookie (gatewayAPI router only).
    #[serde(default, rename = "match", skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 8))]
    pub matches: Option<Vec<HttpMatch>>,
    /// Requests each variant must serve before the objective is decided.
    #[serde(default = "default_ab_min_samples")]
    #[schemars(range(min = 1))]
    pub min_samples: i64,
    /// An undecided test ends after this long, keeping the stable revision.
    #[serde(default = "default_ab_max_duration")]
    #[x_kube(validation = Rule::new(DURATION_RULE).message("spec.rollout.abTest.maxDuration must be a duration such as 2h"))]
    #[schemars(length(max = 32))]
    pub max_duration: String,
    pub objective: Objective,
}

fn default_ab_min_samples() -> i64 {
    10_000
}
fn default_ab_max_duration() -> String {
    "2h".into()
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("(has(self.headers) ? size(self.headers) : 0) + (has(self.cookies) ? size(self.cookies) : 0) > 0").message("spec.rollout.abTest.match[] needs at least one header or cookie"))]
pub struct HttpMatch {
    /// Exact header values.
    #[serde(default)]
    #[schemars(transform = bounded_map::<16, 4096>)]
    pub headers: BTreeMap<String, String>,
    /// Exact cookie values.
    #[serde(default)]
    #[schemars(transform = bounded_map::<16, 4096>)]
    pub cookies: BTreeMap<String, String>,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Objective {
    pub metric: ObjectiveMetric,
    pub goal: Goal,
    /// Confidence required to declare a winner.
    #[serde(default = "default_confidence")]
    #[x_kube(validation = Rule::new("self >= 0.5 && self < 1.0").message("spec.rollout.abTest.objective.confidence must be within [0.5, 1)"))]
    pub confidence: f64,
}

fn default_confidence() -> f64 {
    0.95
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum ObjectiveMetric {
    ErrorRate,
    Latency,
    Accuracy,
    F1,
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum Goal {
    Minimize,
    Maximize,
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub enum InconclusivePolicy {
    /// Stop shifting traffic until a run has data and passes (or a person
    /// resumes, promotes or aborts).
    #[default]
    Pause,
    /// Treat a lack of evidence as a failure.
    Rollback,
}

/// How the canary is judged while it takes traffic.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.checks) || self.checks.all(c, self.checks.exists_one(d, d.name == c.name))").message("spec.rollout.analysis.checks: check names must be unique"))]
pub struct AnalysisSpec {
    #[serde(default = "default_analysis_interval")]
    #[x_kube(validation = Rule::new(DURATION_RULE).message("spec.rollout.analysis.interval must be a duration such as 30s"))]
    #[schemars(length(max = 32))]
    pub interval: String,
    /// Failed analysis runs in a row that roll back.
    #[serde(default = "default_failure_limit")]
    #[schemars(range(min = 1, max = 100))]
    pub failure_limit: i32,
    /// Runs in a row without enough data before `inconclusivePolicy` applies.
    #[serde(default = "default_inconclusive_limit")]
    #[schemars(range(min = 1, max = 1000))]
    pub inconclusive_limit: i32,
    #[serde(default)]
    pub inconclusive_policy: InconclusivePolicy,
    /// Requests a variant must serve in the window before a check counts.
    #[serde(default = "default_min_samples")]
    #[schemars(range(min = 1))]
    pub min_samples: i64,
    #[serde(default)]
    #[schemars(length(max = 32))]
    pub checks: Vec<Check>,
    /// Container restarts, CrashLoopBackOff or OOMKilled on canary pods roll back at once.
    #[serde(default)]
    pub restarts: RestartsCheck,
}

impl Default for AnalysisSpec {
    fn default() -> Self {
        Self {
            interval: default_analysis_interval(),
            failure_limit: default_failure_limit(),
            inconclusive_limit: default_inconclusive_limit(),
            inconclusive_policy: InconclusivePolicy::default(),
            min_samples: default_min_samples(),
            checks: Vec::new(),
            restarts: RestartsCheck::default(),
        }
    }
}

fn default_analysis_interval() -> String {
    "30s".into()
}
fn default_failure_limit() -> i32 {
    3
}
fn default_inconclusive_limit() -> i32 {
    10
}
/// Requests a variant must serve in a window before a check counts
/// (`analysis.minSamples`), also when there is no `rollout` section.
pub const DEFAULT_MIN_SAMPLES: i64 = 200;

fn default_min_samples() -> i64 {
    DEFAULT_MIN_SAMPLES
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RestartsCheck {
    /// Container restarts tolerated across all canary pods.
    #[serde(default = "default_max_restarts")]
    #[schemars(range(min = 0, max = 1000))]
    pub max: i32,
}

impl Default for RestartsCheck {
    fn default() -> Self {
        Self {
            max: default_max_restarts(),
        }
    }
}

fn default_max_restarts() -> i32 {
    2
}

/// One named check: exactly one kind is set.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("(has(self.errorRate) ? 1 : 0) + (has(self.latency) ? 1 : 0) + (has(self.predictionDrift) ? 1 : 0) + (has(self.inputDrift) ? 1 : 0) + (has(self.quality) ? 1 : 0) + (has(self.metric) ? 1 : 0) == 1").message("each check sets exactly one of errorRate, latency, predictionDrift, inputDrift, quality or metric"))]
pub struct Check {
    #[x_kube(validation = Rule::new("self.matches('^[a-z0-9]([-a-zA-Z0-9]*[a-zA-Z0-9])?$')").message("check name must be alphanumeric with '-' (it becomes a metric label value)"))]
    #[schemars(length(min = 1, max = 63))]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_rate: Option<ErrorRateCheck>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency: Option<LatencyCheck>,
    /// Canary predictions compared with stable predictions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prediction_drift: Option<DriftCheck>,
    /// Canary inputs compared with the reference distribution.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_drift: Option<DriftCheck>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quality: Option<QualityCheck>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metric: Option<MetricCheck>,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.max) || has(self.maxRatioToStable)").message("errorRate sets max, maxRatioToStable, or both"))]
pub struct ErrorRateCheck {
    /// Highest acceptable error rate (0..1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 0.0 && self <= 1.0").message("errorRate.max is a fraction within 0..1"))]
    pub max: Option<f64>,
    /// Highest acceptable canary error rate relative to stable's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 1.0").message("errorRate.maxRatioToStable must be at least 1"))]
    pub max_ratio_to_stable: Option<f64>,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct LatencyCheck {
    /// Quantile of the latency histogram, e.g. 0.99.
    #[x_kube(validation = Rule::new("self > 0.0 && self < 1.0").message("latency.quantile must be within (0, 1)"))]
    pub quantile: f64,
    /// Highest acceptable latency at that quantile.
    #[x_kube(validation = Rule::new(DURATION_RULE).message("latency.max must be a duration such as 300ms"))]
    #[schemars(length(max = 32))]
    pub max: String,
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum DriftMethod {
    /// Population stability index.
    Psi,
    /// Jensen-Shannon distance (natural log).
    Js,
    /// Two-sample Kolmogorov-Smirnov statistic.
    Ks,
    /// Chi-squared test p-value (categorical inputs); `max` is compared with 1 - p.
    ChiSquared,
    /// Wasserstein distance in units of the reference's standard deviation.
    Wasserstein,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DriftCheck {
    pub method: DriftMethod,
    /// Highest acceptable score.
    #[x_kube(validation = Rule::new("self >= 0.0").message("drift max must not be negative"))]
    pub max: f64,
    /// Only these features (input drift); all features when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 1000), inner(length(max = 256)))]
    pub features: Vec<String>,
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum QualityMetric {
    Accuracy,
    Precision,
    Recall,
    F1,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct QualityCheck {
    pub metric: QualityMetric,
    /// Lowest acceptable value (0..1).
    #[x_kube(validation = Rule::new("self >= 0.0 && self <= 1.0").message("quality.min is a fraction within 0..1"))]
    pub min: f64,
    /// Positive class for binary precision/recall/F1; macro-averaged over all
    /// classes when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    pub positive_class: Option<String>,
}

/// A custom series: a metric name with an optional label selector for the pods
/// source (`name{label="v"}`), or a PromQL expression for the prometheus source.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.min) || has(self.max)").message("metric check sets min, max, or both"))]
pub struct MetricCheck {
    #[schemars(length(min = 1, max = 4096))]
    pub query: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
}

/// Post-promotion watch.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct GuardSpec {
    /// How long after a promotion the guard keeps judging.
    #[serde(default = "default_guard_window")]
    #[x_kube(validation = Rule::new(DURATION_RULE).message("spec.guard.window must be a duration such as 30m"))]
    #[schemars(length(max = 32))]
    pub window: String,
    #[serde(default = "default_analysis_interval")]
    #[x_kube(validation = Rule::new(DURATION_RULE).message("spec.guard.interval must be a duration such as 30s"))]
    #[schemars(length(max = 32))]
    pub interval: String,
    #[serde(default = "default_failure_limit")]
    #[schemars(range(min = 1, max = 100))]
    pub failure_limit: i32,
    #[x_kube(validation = Rule::new("self.size() > 0").message("spec.guard.checks must list at least one check"))]
    #[schemars(length(max = 32))]
    pub checks: Vec<Check>,
}

fn default_guard_window() -> String {
    "30m".into()
}
