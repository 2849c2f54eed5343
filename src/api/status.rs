//! The `ModelDeployment` status: all rollout state lives here, so a restarted
//! operator resumes where it was.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum Phase {
    /// Nothing serves yet: the first revision is starting.
    Pending,
    /// A new revision is being rolled out.
    Progressing,
    /// A rollout waits for a person (pause step, inconclusive analysis, `pause`).
    Paused,
    /// The new revision takes over all traffic.
    Promoting,
    /// One revision serves all traffic.
    Stable,
    /// The newest revision failed and the previous one serves; `spec` still names
    /// the failed one until it changes or a retry is requested.
    RolledBack,
    /// Nothing can serve: an invalid spec, or a first revision that never became ready.
    Failed,
}

impl Phase {
    pub const ALL: [Phase; 7] = [
        Phase::Pending,
        Phase::Progressing,
        Phase::Paused,
        Phase::Promoting,
        Phase::Stable,
        Phase::RolledBack,
        Phase::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Pending => "Pending",
            Phase::Progressing => "Progressing",
            Phase::Paused => "Paused",
            Phase::Promoting => "Promoting",
            Phase::Stable => "Stable",
            Phase::RolledBack => "RolledBack",
            Phase::Failed => "Failed",
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ModelDeploymentStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Human-readable summary of the current state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The revision serving (most of) the traffic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stable: Option<RevisionStatus>,
    /// The revision being rolled out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<CanaryStatus>,
    /// The revision before `stable`, kept for the guard and for rollbacks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<RevisionStatus>,
    /// The newest revision, rolled back: not tried again while the spec still
    /// names it, until a retry is requested.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rolled_back: Option<RevisionStatus>,
    /// A rolled-back revision that keeps its pods until the restored one is
    /// available again (a guard rollback), so capacity never drops to zero.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub draining: Option<RevisionStatus>,
    /// When the previous revision's pods are scaled to zero after a promotion.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_scale_down_at: Option<Time>,
    /// The post-promotion guard, while its window lasts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guard: Option<GuardStatus>,
    /// Id of the last `kubectl modeldeploy` request carried out, so each runs once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_request: Option<String>,
    /// Highest revision number handed out so far.
    #[serde(default)]
    pub latest_revision: i64,
    /// Available pods across every revision (the scale subresource's replicas).
    #[serde(default)]
    pub replicas: i32,
    /// Label selector of the pods of every revision, for the scale
    /// subresource (an HPA reads its metrics from these pods).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub analysis: Option<AnalysisStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drift: Option<DriftStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ab_test: Option<AbTestStatus>,
    /// Newest last; at most `revisionHistoryLimit` entries.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<HistoryEntry>,
    /// `Ready`, `Progressing`, `Degraded`, `DataDrift`, and kstatus's
    /// `Reconciling` (= `Progressing`) and `Stalled` (= `Degraded`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The newest transition's events, written with the status that records
    /// the transition, so that an operator stopped between the two still
    /// records each event once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transition: Option<Transition>,
}

/// One transition, as `kubectl describe` and the notifications tell it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Transition {
    /// Counts the object's transitions; names its events, so recording them
    /// again finds them recorded.
    pub sequence: i64,
    pub at: Time,
    /// The model version it is about.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    pub events: Vec<TransitionEvent>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TransitionEvent {
    #[serde(rename = "type")]
    pub kind: EventKind,
    pub reason: String,
    pub message: String,
}

/// The type of a Kubernetes event.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum EventKind {
    Normal,
    Warning,
}

/// One revision of the model: what `spec.model`, `resources` and `template` were.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RevisionStatus {
    pub revision: i64,
    pub version: String,
    pub image: String,
    /// Hash of the pod-relevant spec; names the revision's Deployment.
    pub hash: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CanaryStatus {
    pub revision: i64,
    pub version: String,
    pub image: String,
    pub hash: String,
    /// Percent of traffic the canary actually receives (with the replicas
    /// router: its share of available pods).
    pub weight: i32,
    /// Percent of traffic the current step asks for.
    #[serde(default)]
    pub set_weight: i32,
    /// Index of the current step in `spec.rollout.steps`.
    pub step: i32,
    /// When the current step began.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_started_at: Option<Time>,
    /// When the rollout of this revision began.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Time>,
    /// Why the rollout waits, while it waits for a person.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused: Option<PauseReason>,
    /// All steps are done: the canary scales to full size and takes over.
    #[serde(default)]
    pub promoting: bool,
    /// Percent of live requests the current `setMirror` step asks to copy
    /// to this revision (shadow traffic), until a `setWeight` step ends it.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub set_mirror: i32,
    /// Percent of live requests actually copied to this revision, once its
    /// pods can carry them; its answers are thrown away. Non-zero means the
    /// revision is shadowed.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub mirror: i32,
    /// The rollout's gates reached so far (`spec.rollout.gates`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gates: Vec<super::gates::GateStatus>,
}

fn is_zero(n: &i32) -> bool {
    *n == 0
}

impl CanaryStatus {
    /// The revision this canary rolls out.
    pub fn revision_status(&self) -> RevisionStatus {
        RevisionStatus {
            revision: self.revision,
            version: self.version.clone(),
            image: self.image.clone(),
            hash: self.hash.clone(),
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum PauseReason {
    /// A `pause` step without a duration.
    Step,
    /// `kubectl modeldeploy pause`.
    UserRequest,
    /// `inconclusiveLimit` analysis runs in a row lacked data.
    Inconclusive,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GuardStatus {
    /// The promoted revision the guard watches.
    pub revision: i64,
    /// The guard stops judging after this time.
    pub until: Option<Time>,
    #[serde(default)]
    pub analysis: AnalysisStatus,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AnalysisStatus {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub checks: Vec<CheckStatus>,
    #[serde(default)]
    pub failed_in_a_row: i32,
    #[serde(default)]
    pub inconclusive_in_a_row: i32,
    #[serde(default)]
    pub passed_in_a_row: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_time: Option<Time>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum CheckVerdict {
    Pass,
    Fail,
    Inconclusive,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CheckStatus {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold: Option<f64>,
    pub verdict: CheckVerdict,
    #[serde(default)]
    pub samples: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DriftStatus {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub features: Vec<FeatureDrift>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_score: Option<f64>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FeatureDrift {
    pub name: String,
    pub method: String,
    pub score: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p_value: Option<f64>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AbTestStatus {
    /// `stable`, `candidate`, or unset while undecided.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub winner: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p_value: Option<f64>,
    /// Candidate minus stable, in the objective's unit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub effect: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub samples: Option<AbSamples>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AbSamples {
    pub stable: i64,
    pub candidate: i64,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum Outcome {
    /// The first revision went live.
    Deployed,
    /// Replaced the previous revision directly (no rollout configured).
    Replaced,
    /// Passed its rollout and took all traffic.
    Promoted,
    /// Failed its rollout or the guard; the previous revision serves again.
    RolledBack,
    /// A newer revision arrived before this one finished.
    Superseded,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HistoryEntry {
    pub revision: i64,
    pub version: String,
    pub image: String,
    pub at: Time,
    pub outcome: Outcome,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
}
