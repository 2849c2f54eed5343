//! What the CRD schema and CEL rules cannot check: quantities compared with each
//! other, durations as numbers, and the raw Kubernetes objects in `template`.
//! The result carries the parsed values, so nothing downstream parses again.

use std::time::Duration;

use k8s_openapi::api::core::v1::{
    Affinity, PodSecurityContext, SecurityContext, TopologySpreadConstraint, Volume, VolumeMount,
};
use serde::de::DeserializeOwned;

use super::presets::Names;
use super::quantity::parse_quantity;
use super::spec::{
    AbTestSpec, CanaryStep, Check, DriftCheck, DriftMethod, ErrorRateCheck, LatencyCheck,
    MetricCheck, MetricsPreset, ModelDeploymentSpec, ObjectiveMetric, PodOverrides, QualityCheck,
    RolloutSpec, Router,
};

/// A spec the operator refuses, naming the field at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct InvalidSpec {
    pub field: String,
    pub message: String,
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> InvalidSpec {
    InvalidSpec {
        field: field.into(),
        message: message.into(),
    }
}

/// Durations and raw pod fields of a spec, parsed once.
#[derive(Debug, Clone)]
pub struct ValidSpec {
    /// Which series mean traffic, errors, latency, inputs and outcomes.
    pub names: Names,
    pub metrics_interval: Duration,
    pub analysis_interval: Duration,
    pub progress_deadline: Duration,
    pub scale_down_delay: Duration,
    /// One entry per `rollout.steps` item: the pause duration, when it is a timed pause.
    pub pause_durations: Vec<Option<Duration>>,
    pub guard_window: Option<Duration>,
    pub guard_interval: Option<Duration>,
    pub ab_max_duration: Option<Duration>,
    pub pod: RawPodFields,
    /// The PodDisruptionBudget to keep, if any.
    pub budget: Option<super::Budget>,
    /// `rollout.gates`, decoded.
    pub gates: super::gates::ValidGates,
    /// Who `spec.networkPolicy` lets in besides the operator; `None`: no
    /// NetworkPolicy.
    pub network_peers: Option<Vec<k8s_openapi::api::networking::v1::NetworkPolicyPeer>>,
}

/// The `template` fields the CRD carries as raw objects, decoded into their
/// Kubernetes types.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RawPodFields {
    pub affinity: Option<Affinity>,
    pub topology_spread_constraints: Vec<TopologySpreadConstraint>,
    pub volumes: Vec<Volume>,
    pub volume_mounts: Vec<VolumeMount>,
    pub pod_security_context: Option<PodSecurityContext>,
    pub security_context: Option<SecurityContext>,
}

/// Smallest interval accepted for scraping and analysis: below it the operator
/// would hammer pods and the API server.
const MIN_INTERVAL: Duration = Duration::from_secs(1);

/// Parse a Go-style duration (`300ms`, `2m`, `1h30m`) as `metav1.Duration` does.
pub fn parse_duration(field: &str, value: &str) -> Result<Duration, InvalidSpec> {
    if value.starts_with('-') {
        return Err(invalid(field, format!("{value:?} must not be negative")));
    }
    let seconds = duration_seconds(value).ok_or_else(|| {
        invalid(
            field,
            format!("{value:?} is not a duration such as 30s, 2m or 1h30m"),
        )
    })?;
    if seconds > MAX_DURATION_SECONDS {
        return Err(invalid(
            field,
            format!(
                "{value:?} is longer than {}h",
                MAX_DURATION_SECONDS / 3600.0
            ),
        ));
    }
    Ok(Duration::from_secs_f64(seconds))
}

/// Longer than any rollout waits (ten years): refused, and far from where
/// the arithmetic of durations overflows.
const MAX_DURATION_SECONDS: f64 = 87_600.0 * 3600.0;

/// Seconds in a Go-style duration (`1h30m`, `1.5s`, `250ms`): one or more
/// numbers, each with a unit. Summed in floating point, so no input can
/// overflow; `None` if it does not parse.
fn duration_seconds(value: &str) -> Option<f64> {
    const UNITS: [(&str, f64); 6] = [
        ("ns", 1e-9),
        ("us", 1e-6),
        ("ms", 1e-3),
        ("h", 3600.0),
        ("m", 60.0),
        ("s", 1.0),
    ];
    let mut rest = value;
    let mut total = 0.0;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let number = &rest[..number_len];
        if number.is_empty() || number.starts_with('.') || number.ends_with('.') {
            return None;
        }
        let amount: f64 = number.parse().ok()?;
        rest = &rest[number_len..];
        let (unit, scale) = UNITS.iter().find(|(u, _)| rest.starts_with(u))?;
        rest = &rest[unit.len()..];
        total += amount * scale;
    }
    total.is_finite().then_some(total)
}

fn parse_interval(field: &str, value: &str) -> Result<Duration, InvalidSpec> {
    let d = parse_duration(field, value)?;
    if d < MIN_INTERVAL {
        return Err(invalid(field, format!("{value:?} is shorter than 1s")));
    }
    Ok(d)
}

pub fn validate(spec: &ModelDeploymentSpec) -> Result<ValidSpec, InvalidSpec> {
    validate_model(spec)?;
    validate_resources(spec)?;
    let pod = decode_raw_pod_fields(spec.template.as_ref())?;
    let metrics_interval = parse_interval("spec.metrics.interval", &spec.metrics.interval)?;
    let preset = spec.metrics.preset;
    let names = Names::resolve(preset, &spec.metrics.names).map_err(|message| InvalidSpec {
        field: "spec.metrics.names.errors.matches".into(),
        message,
    })?;

    let rollout = spec.rollout.clone().unwrap_or_default();
    let analysis_interval =
        parse_interval("spec.rollout.analysis.interval", &rollout.analysis.interval)?;
    let progress_deadline =
        parse_interval("spec.rollout.progressDeadline", &rollout.progress_deadline)?;
    let scale_down_delay =
        parse_duration("spec.rollout.scaleDownDelay", &rollout.scale_down_delay)?;
    let pause_durations = validate_steps(&rollout.steps)?;
    validate_mirror_steps(&rollout)?;
    validate_checks(
        "spec.rollout.analysis.checks",
        &rollout.analysis.checks,
        &names,
        preset,
    )?;
    let (guard_window, guard_interval) = match &spec.guard {
        Some(g) => {
            if g.checks.is_empty() {
                // Nothing to judge: the guard would never roll back.
                return Err(invalid("spec.guard.checks", "must list at least one check"));
            }
            validate_checks("spec.guard.checks", &g.checks, &names, preset)?;
            (
                Some(parse_duration("spec.guard.window", &g.window)?),
                Some(parse_interval("spec.guard.interval", &g.interval)?),
            )
        }
        None => (None, None),
    };
    let ab_max_duration = validate_ab_test(rollout.ab_test.as_ref(), &names, preset)?;
    let budget = super::disruption::budget(spec.disruption.as_ref())?;
    let gates = super::gates::validate(rollout.gates.as_ref())?;
    let network_peers = super::network::peers(spec.network_policy.as_ref())?;

    Ok(ValidSpec {
        names,
        metrics_interval,
        analysis_interval,
        progress_deadline,
        scale_down_delay,
        pause_durations,
        guard_window,
        guard_interval,
        ab_max_duration,
        pod,
        budget,
        gates,
        network_peers,
    })
}

/// Steps set one kind each and never lower the weight; returns each step's
/// timed pause, if it is one.
fn validate_steps(steps: &[CanaryStep]) -> Result<Vec<Option<Duration>>, InvalidSpec> {
    let mut pause_durations = Vec::with_capacity(steps.len());
    let mut last_weight = 0;
    for (i, step) in steps.iter().enumerate() {
        let kinds = [
            step.set_weight.is_some(),
            step.pause.is_some(),
            step.analysis.is_some(),
            step.set_mirror.is_some(),
        ];
        if kinds.iter().filter(|k| **k).count() != 1 {
            return Err(invalid(
                format!("spec.rollout.steps[{i}]"),
                "each step sets exactly one of setWeight, pause or analysis (or setMirror, for shadow traffic)",
            ));
        }
        if let Some(w) = step.set_weight {
            if !(0..=100).contains(&w) {
                return Err(invalid(
                    format!("spec.rollout.steps[{i}].setWeight"),
                    format!("{w} is outside 0..100"),
                ));
            }
            if w < last_weight {
                return Err(invalid(
                    format!("spec.rollout.steps[{i}].setWeight"),
                    format!(
                        "{w} is lower than the previous step's {last_weight}: weights must not decrease"
                    ),
                ));
            }
            last_weight = w;
        }
        let pause = match step.pause.as_ref().and_then(|p| p.duration.as_deref()) {
            Some(d) => Some(parse_duration(
                &format!("spec.rollout.steps[{i}].pause.duration"),
                d,
            )?),
            None => None,
        };
        pause_durations.push(pause);
    }
    Ok(pause_durations)
}

/// Shadow traffic needs a router that can copy requests, and goes to a
/// revision that serves no one yet: before the first `setWeight` above 0.
fn validate_mirror_steps(rollout: &RolloutSpec) -> Result<(), InvalidSpec> {
    let mut serving = false;
    for (i, step) in rollout.steps.iter().enumerate() {
        serving |= step.set_weight.is_some_and(|w| w > 0);
        let Some(mirror) = &step.set_mirror else {
            continue;
        };
        let field = format!("spec.rollout.steps[{i}].setMirror");
        if rollout.traffic.router != Router::GatewayApi {
            return Err(invalid(
                field,
                "shadow traffic needs spec.rollout.traffic.router: gatewayAPI; the replicas router cannot copy requests, use gatewayAPI",
            ));
        }
        if !(1..=100).contains(&mirror.percent) {
            return Err(invalid(
                format!("{field}.percent"),
                format!("{} is outside 1..100", mirror.percent),
            ));
        }
        if serving {
            return Err(invalid(
                field,
                "a shadow copies requests to a revision that serves none: put setMirror before the first setWeight above 0",
            ));
        }
    }
    Ok(())
}

/// The objective must be one the metrics can feed; returns `maxDuration`.
fn validate_ab_test(
    ab: Option<&AbTestSpec>,
    names: &Names,
    preset: MetricsPreset,
) -> Result<Option<Duration>, InvalidSpec> {
    let Some(ab) = ab else {
        return Ok(None);
    };
    let field = "spec.rollout.abTest.objective.metric";
    match ab.objective.metric {
        ObjectiveMetric::ErrorRate => needs_errors(field, names, preset)?,
        ObjectiveMetric::Latency => needs_latency(field, names, preset)?,
        _ => {}
    }
    Ok(Some(parse_duration(
        "spec.rollout.abTest.maxDuration",
        &ab.max_duration,
    )?))
}

fn validate_model(spec: &ModelDeploymentSpec) -> Result<(), InvalidSpec> {
    if spec.model.image.trim().is_empty() {
        return Err(invalid("spec.model.image", "must not be empty"));
    }
    if spec.model.version.is_empty() {
        return Err(invalid("spec.model.version", "must not be empty"));
    }
    if spec.replicas < 0 {
        return Err(invalid("spec.replicas", "must not be negative"));
    }
    for (i, env) in spec.model.env.iter().enumerate() {
        if env.name == "MODEL_URI" && spec.model.storage_uri.is_some() {
            return Err(invalid(
                format!("spec.model.env[{i}].name"),
                "MODEL_URI is set from spec.model.storageUri; set one or the other",
            ));
        }
    }
    Ok(())
}

/// The checks of one list (`spec.rollout.analysis.checks` or
/// `spec.guard.checks`): each of a shape evaluation can judge, fed by the
/// metrics, under its own name.
fn validate_checks(
    field: &str,
    checks: &[Check],
    names: &Names,
    preset: MetricsPreset,
) -> Result<(), InvalidSpec> {
    for (i, check) in checks.iter().enumerate() {
        let at = format!("{field}[{i}]");
        if check.name.trim().is_empty() {
            return Err(invalid(format!("{at}.name"), "must not be empty"));
        }
        // Status lines and custom series are keyed by name.
        if let Some(first) = checks.iter().take(i).position(|c| c.name == check.name) {
            return Err(invalid(
                format!("{at}.name"),
                format!(
                    "{:?} is also the name of {field}[{first}]; check names must be unique",
                    check.name
                ),
            ));
        }
        validate_check(&at, check, names, preset)?;
    }
    Ok(())
}

/// A check the metrics cannot feed would stay Inconclusive forever and hold
/// every rollout: refuse it up front, naming what to set.
fn validate_check(
    field: &str,
    check: &Check,
    names: &Names,
    preset: MetricsPreset,
) -> Result<(), InvalidSpec> {
    match check_kind(field, check)? {
        CheckKind::ErrorRate(_) => needs_errors(&join(field, "errorRate"), names, preset),
        CheckKind::Latency(_) => needs_latency(&join(field, "latency"), names, preset),
        CheckKind::PredictionDrift(_)
        | CheckKind::InputDrift(_)
        | CheckKind::Quality(_)
        | CheckKind::Metric(_) => Ok(()),
    }
}

/// The one kind a check sets, with its parameters checked: the only shapes
/// evaluation judges. [`check_kind`] builds it for validation and evaluation
/// alike, so the two cannot disagree.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum CheckKind<'a> {
    ErrorRate(ErrorRateLimit),
    Latency(LatencyLimit),
    PredictionDrift(&'a DriftCheck),
    InputDrift(&'a DriftCheck),
    Quality(&'a QualityCheck),
    Metric(MetricLimit<'a>),
}

/// `errorRate`: at least one limit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ErrorRateLimit {
    Max(f64),
    RatioToStable(f64),
    Both { max: f64, ratio_to_stable: f64 },
}

/// `latency`: a quantile within (0, 1) and a maximum above zero.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LatencyLimit {
    pub quantile: f64,
    pub max: Duration,
}

/// `metric`: a series and at least one bound.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MetricLimit<'a> {
    pub query: &'a str,
    pub bounds: Bounds,
}

/// Acceptable values of a custom series.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Bounds {
    Min(f64),
    Max(f64),
    Between { min: f64, max: f64 },
}

const KINDS: &str = "errorRate, latency, predictionDrift, inputDrift, quality or metric";

/// `field.leaf`, or `leaf` alone when the path is relative to the check.
fn join(field: &str, leaf: &str) -> String {
    if field.is_empty() {
        leaf.to_string()
    } else {
        format!("{field}.{leaf}")
    }
}

/// The kind `check` sets and its parameters, or what is wrong with them.
/// `field` is the check's path (`spec.guard.checks[0]`); with an empty path
/// the fields are named relative to the check (`errorRate.max`).
pub fn check_kind<'a>(field: &str, check: &'a Check) -> Result<CheckKind<'a>, InvalidSpec> {
    let at = |leaf: &str| join(field, leaf);
    let set = [
        check.error_rate.as_ref().map(|e| {
            let kind = error_rate_limit(&at("errorRate"), e).map(CheckKind::ErrorRate);
            ("errorRate", kind)
        }),
        check.latency.as_ref().map(|l| {
            let kind = latency_limit(&at("latency"), l).map(CheckKind::Latency);
            ("latency", kind)
        }),
        check.prediction_drift.as_ref().map(|d| {
            let kind = drift_check(&at("predictionDrift"), d, false);
            ("predictionDrift", kind.map(CheckKind::PredictionDrift))
        }),
        check.input_drift.as_ref().map(|d| {
            let kind = drift_check(&at("inputDrift"), d, true);
            ("inputDrift", kind.map(CheckKind::InputDrift))
        }),
        check.quality.as_ref().map(|q| {
            let kind = quality_check(&at("quality"), q).map(CheckKind::Quality);
            ("quality", kind)
        }),
        check.metric.as_ref().map(|m| {
            let kind = metric_limit(&at("metric"), m).map(CheckKind::Metric);
            ("metric", kind)
        }),
    ];
    let mut kinds = set.into_iter().flatten();
    let whole = if field.is_empty() { "check" } else { field };
    match (kinds.next(), kinds.next()) {
        (Some((_, kind)), None) => kind,
        (None, _) => Err(invalid(
            whole,
            format!("sets no kind; set exactly one of {KINDS}"),
        )),
        (Some((a, _)), Some((b, _))) => Err(invalid(
            whole,
            format!("sets both {a} and {b}; set exactly one of {KINDS}"),
        )),
    }
}

/// `x` is a number no smaller than `low`.
fn at_least(x: f64, low: f64) -> bool {
    x.is_finite() && x >= low
}

fn fraction(field: String, x: f64) -> Result<f64, InvalidSpec> {
    if at_least(x, 0.0) && x <= 1.0 {
        Ok(x)
    } else {
        Err(invalid(field, format!("{x} is not a fraction within 0..1")))
    }
}

fn error_rate_limit(field: &str, e: &ErrorRateCheck) -> Result<ErrorRateLimit, InvalidSpec> {
    let max = e.max.map(|m| fraction(join(field, "max"), m)).transpose()?;
    if let Some(r) = e.max_ratio_to_stable
        && !at_least(r, 1.0)
    {
        return Err(invalid(
            join(field, "maxRatioToStable"),
            format!("{r} is below 1: the canary would fail for matching stable's error rate"),
        ));
    }
    match (max, e.max_ratio_to_stable) {
        (Some(max), Some(ratio_to_stable)) => Ok(ErrorRateLimit::Both {
            max,
            ratio_to_stable,
        }),
        (Some(max), None) => Ok(ErrorRateLimit::Max(max)),
        (None, Some(ratio)) => Ok(ErrorRateLimit::RatioToStable(ratio)),
        (None, None) => Err(invalid(
            field,
            "sets neither max nor maxRatioToStable; set max (the highest error rate, 0..1), maxRatioToStable (at least 1), or both",
        )),
    }
}

fn latency_limit(field: &str, l: &LatencyCheck) -> Result<LatencyLimit, InvalidSpec> {
    if !(l.quantile > 0.0 && l.quantile < 1.0) {
        return Err(invalid(
            join(field, "quantile"),
            format!(
                "{} is outside (0, 1); 0.99 is the 99th percentile",
                l.quantile
            ),
        ));
    }
    let max = parse_duration(&join(field, "max"), &l.max)?;
    if max.is_zero() {
        return Err(invalid(join(field, "max"), "must be above 0"));
    }
    Ok(LatencyLimit {
        quantile: l.quantile,
        max,
    })
}

/// The highest score a method can give, for the bounded ones: a `max` at or
/// above it could never fail.
fn highest_score(method: DriftMethod) -> Option<f64> {
    match method {
        DriftMethod::Js => Some(std::f64::consts::LN_2.sqrt()),
        DriftMethod::Ks | DriftMethod::ChiSquared => Some(1.0),
        DriftMethod::Psi | DriftMethod::Wasserstein => None,
    }
}

fn drift_check<'a>(
    field: &str,
    d: &'a DriftCheck,
    input: bool,
) -> Result<&'a DriftCheck, InvalidSpec> {
    if !at_least(d.max, 0.0) {
        return Err(invalid(
            join(field, "max"),
            format!("{} must be a number not below 0", d.max),
        ));
    }
    if let Some(top) = highest_score(d.method)
        && d.max >= top
    {
        return Err(invalid(
            join(field, "max"),
            format!(
                "{} is not below {top}, the highest score of method {}: the check could never fail",
                d.max,
                wire_name(d.method)
            ),
        ));
    }
    if !input && !d.features.is_empty() {
        return Err(invalid(
            join(field, "features"),
            "only inputDrift reads features; predictionDrift compares the prediction histograms",
        ));
    }
    if let Some(i) = d.features.iter().position(|f| f.trim().is_empty()) {
        return Err(invalid(
            format!("{}[{i}]", join(field, "features")),
            "must name a feature",
        ));
    }
    Ok(d)
}

fn quality_check<'a>(field: &str, q: &'a QualityCheck) -> Result<&'a QualityCheck, InvalidSpec> {
    fraction(join(field, "min"), q.min)?;
    if q.positive_class.as_deref().is_some_and(|p| p.is_empty()) {
        return Err(invalid(
            join(field, "positiveClass"),
            "must not be empty; leave it out to average over all classes",
        ));
    }
    Ok(q)
}

fn metric_limit<'a>(field: &str, m: &'a MetricCheck) -> Result<MetricLimit<'a>, InvalidSpec> {
    if m.query.trim().is_empty() {
        return Err(invalid(join(field, "query"), "must name a series"));
    }
    for (leaf, x) in [("min", m.min), ("max", m.max)] {
        if let Some(x) = x
            && !x.is_finite()
        {
            return Err(invalid(join(field, leaf), format!("{x} is not a number")));
        }
    }
    let bounds = match (m.min, m.max) {
        (Some(min), Some(max)) if min > max => {
            return Err(invalid(
                join(field, "min"),
                format!("{min} is above max {max}: every value would fail"),
            ));
        }
        (Some(min), Some(max)) => Bounds::Between { min, max },
        (Some(min), None) => Bounds::Min(min),
        (None, Some(max)) => Bounds::Max(max),
        (None, None) => {
            return Err(invalid(
                field,
                "sets neither min nor max; set the lowest acceptable value, the highest, or both",
            ));
        }
    };
    Ok(MetricLimit {
        query: &m.query,
        bounds,
    })
}

/// An enum value as the spec spells it (`chiSquared`, `kserve`).
fn wire_name<T: serde::Serialize + std::fmt::Debug>(value: T) -> String {
    serde_json::to_value(&value)
        .ok()
        .and_then(|v| v.as_str().map(String::from))
        .unwrap_or_else(|| format!("{value:?}"))
}

fn needs_errors(field: &str, names: &Names, preset: MetricsPreset) -> Result<(), InvalidSpec> {
    if let super::presets::Traffic::CountOnly { .. } = names.traffic {
        return Err(invalid(
            field,
            format!(
                "the {} preset counts requests but not errors; set spec.metrics.names.errors (a label and a pattern of the request counter) or use another check",
                wire_name(preset)
            ),
        ));
    }
    Ok(())
}

fn needs_latency(field: &str, names: &Names, preset: MetricsPreset) -> Result<(), InvalidSpec> {
    if names.latency.is_none() {
        return Err(invalid(
            field,
            format!(
                "the {} preset has no latency histogram; set spec.metrics.names.latency to the server's latency histogram (seconds)",
                wire_name(preset)
            ),
        ));
    }
    Ok(())
}

/// Resource names the kubelet treats as overcommittable; everything else
/// (GPUs and other extended resources) must request exactly its limit.
const OVERCOMMITTABLE: [&str; 3] = ["cpu", "memory", "ephemeral-storage"];

fn validate_resources(spec: &ModelDeploymentSpec) -> Result<(), InvalidSpec> {
    let res = &spec.resources;
    if res.limits.is_empty() {
        return Err(invalid(
            "spec.resources.limits",
            "must name at least one resource",
        ));
    }
    let mut limits = std::collections::BTreeMap::new();
    for (name, q) in &res.limits {
        let field = format!("spec.resources.limits.{name}");
        let value = parse_quantity(&q.0).map_err(|e| invalid(&field, e))?;
        if value <= 0.0 {
            return Err(invalid(&field, format!("{:?} must be above zero", q.0)));
        }
        limits.insert(name.as_str(), value);
    }
    for (name, q) in &res.requests {
        let field = format!("spec.resources.requests.{name}");
        let request = parse_quantity(&q.0).map_err(|e| invalid(&field, e))?;
        let overcommittable = OVERCOMMITTABLE.contains(&name.as_str());
        match limits.get(name.as_str()) {
            Some(&limit) if request > limit => {
                return Err(invalid(
                    &field,
                    format!(
                        "{:?} exceeds the limit {:?}",
                        q.0,
                        res.limits.get(name).map(|l| l.0.as_str()).unwrap_or("")
                    ),
                ));
            }
            Some(&limit) if !overcommittable && request != limit => {
                return Err(invalid(
                    &field,
                    format!("{name} cannot be overcommitted: request must equal the limit"),
                ));
            }
            None if !overcommittable => {
                return Err(invalid(
                    format!("spec.resources.limits.{name}"),
                    format!("{name} is requested, so it needs a limit equal to the request"),
                ));
            }
            _ => {}
        }
    }
    Ok(())
}

fn decode<T: DeserializeOwned>(
    field: &str,
    value: Option<&serde_json::Value>,
) -> Result<Option<T>, InvalidSpec> {
    value
        .map(|v| serde_json::from_value(v.clone()).map_err(|e| invalid(field, e.to_string())))
        .transpose()
}

fn decode_raw_pod_fields(template: Option<&PodOverrides>) -> Result<RawPodFields, InvalidSpec> {
    let Some(t) = template else {
        return Ok(RawPodFields::default());
    };
    Ok(RawPodFields {
        affinity: decode("spec.template.affinity", t.affinity.as_ref())?,
        topology_spread_constraints: decode(
            "spec.template.topologySpreadConstraints",
            t.topology_spread_constraints.as_ref(),
        )?
        .unwrap_or_default(),
        volumes: decode("spec.template.volumes", t.volumes.as_ref())?.unwrap_or_default(),
        volume_mounts: decode("spec.template.volumeMounts", t.volume_mounts.as_ref())?
            .unwrap_or_default(),
        pod_security_context: decode(
            "spec.template.podSecurityContext",
            t.pod_security_context.as_ref(),
        )?,
        security_context: decode("spec.template.securityContext", t.security_context.as_ref())?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::spec::*;
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
    use serde_json::json;

    fn spec() -> ModelDeploymentSpec {
        serde_json::from_value(json!({
            "model": {"version": "1.0.0", "image": "example/model:1"},
            "resources": {
                "requests": {"cpu": "500m", "memory": "1Gi"},
                "limits": {"cpu": "2", "memory": "2Gi"}
            }
        }))
        .unwrap()
    }

    fn refused(spec: &ModelDeploymentSpec) -> InvalidSpec {
        validate(spec).expect_err("spec should be refused")
    }

    #[test]
    fn checks_the_preset_cannot_feed_are_refused_with_what_to_set() {
        let with = |preset: &str, check: serde_json::Value, names: serde_json::Value| {
            let mut s = spec();
            s.metrics = serde_json::from_value(json!({"preset": preset, "names": names})).unwrap();
            s.rollout = Some(
                serde_json::from_value(json!({
                    "strategy": "canary",
                    "steps": [{"setWeight": 50}],
                    "analysis": {"checks": [check]}
                }))
                .unwrap(),
            );
            validate(&s)
        };
        let latency = json!({"name": "p99", "latency": {"quantile": 0.99, "max": "1s"}});
        let errors = json!({"name": "errors", "errorRate": {"max": 0.01}});
        let e = with("triton", latency.clone(), json!({})).unwrap_err();
        assert_eq!(e.field, "spec.rollout.analysis.checks[0].latency");
        assert!(e.message.contains("triton") && e.message.contains("spec.metrics.names.latency"));
        let e = with("kserve", errors.clone(), json!({})).unwrap_err();
        assert_eq!(e.field, "spec.rollout.analysis.checks[0].errorRate");
        assert!(e.message.contains("kserve") && e.message.contains("spec.metrics.names.errors"));
        // Naming the series makes them acceptable.
        with("triton", latency, json!({"latency": "my_latency_seconds"})).unwrap();
        with(
            "kserve",
            errors.clone(),
            json!({"errors": {"label": "code", "matches": "5.."}}),
        )
        .unwrap();
        with("default", errors, json!({})).unwrap();
    }

    fn check(v: serde_json::Value) -> Check {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn check_kind_reads_the_limits_evaluation_judges() {
        let both = check(json!({"name": "e", "errorRate": {"max": 0.01, "maxRatioToStable": 2}}));
        assert_eq!(
            check_kind("", &both).unwrap(),
            CheckKind::ErrorRate(ErrorRateLimit::Both {
                max: 0.01,
                ratio_to_stable: 2.0
            })
        );
        let ratio = check(json!({"name": "e", "errorRate": {"maxRatioToStable": 1.5}}));
        assert_eq!(
            check_kind("", &ratio).unwrap(),
            CheckKind::ErrorRate(ErrorRateLimit::RatioToStable(1.5))
        );
        let p99 = check(json!({"name": "l", "latency": {"quantile": 0.99, "max": "300ms"}}));
        assert_eq!(
            check_kind("", &p99).unwrap(),
            CheckKind::Latency(LatencyLimit {
                quantile: 0.99,
                max: Duration::from_millis(300)
            })
        );
        let min = check(json!({"name": "m", "metric": {"query": "q", "min": 1}}));
        let CheckKind::Metric(m) = check_kind("", &min).unwrap() else {
            panic!("a metric check");
        };
        assert_eq!(m.bounds, Bounds::Min(1.0));
        // The largest maxima that can still fail are accepted.
        for (method, max) in [
            ("js", 0.83),
            ("ks", 0.999),
            ("chiSquared", 0.999),
            ("psi", 50.0),
        ] {
            let d = check(json!({"name": "d", "inputDrift": {"method": method, "max": max}}));
            assert!(check_kind("", &d).is_ok(), "{method} {max}");
        }
    }

    #[test]
    fn check_kind_names_fields_under_the_given_path_or_relative_to_the_check() {
        let empty = check(json!({"name": "e", "errorRate": {}}));
        assert_eq!(check_kind("", &empty).unwrap_err().field, "errorRate");
        assert_eq!(
            check_kind("spec.guard.checks[2]", &empty)
                .unwrap_err()
                .field,
            "spec.guard.checks[2].errorRate"
        );
        let none = check(json!({"name": "x"}));
        assert_eq!(check_kind("", &none).unwrap_err().field, "check");
        assert_eq!(
            check_kind("spec.guard.checks[0]", &none).unwrap_err().field,
            "spec.guard.checks[0]"
        );
        // Two kinds are refused even when one of them is malformed.
        let two = check(json!({"name": "x", "errorRate": {}, "metric": {"query": "q", "max": 1}}));
        let e = check_kind("", &two).unwrap_err();
        assert!(e.message.contains("sets both errorRate and metric"), "{e}");
    }

    #[test]
    fn a_minimal_spec_gets_defaults() {
        let v = validate(&spec()).unwrap();
        assert_eq!(v.metrics_interval, Duration::from_secs(10));
        assert_eq!(v.analysis_interval, Duration::from_secs(30));
        assert_eq!(v.progress_deadline, Duration::from_secs(600));
        assert!(v.pause_durations.is_empty());
    }

    #[test]
    fn a_request_above_its_limit_is_refused() {
        let mut s = spec();
        s.resources
            .requests
            .insert("memory".into(), Quantity("3Gi".into()));
        let e = refused(&s);
        assert_eq!(e.field, "spec.resources.requests.memory");
        assert!(e.message.contains("exceeds the limit"), "{e}");
    }

    #[test]
    fn gpus_must_request_their_limit() {
        let mut s = spec();
        s.resources
            .limits
            .insert("nvidia.com/gpu".into(), Quantity("2".into()));
        s.resources
            .requests
            .insert("nvidia.com/gpu".into(), Quantity("1".into()));
        assert_eq!(refused(&s).field, "spec.resources.requests.nvidia.com/gpu");
        s.resources.limits.remove("nvidia.com/gpu");
        assert_eq!(refused(&s).field, "spec.resources.limits.nvidia.com/gpu");
        s.resources
            .limits
            .insert("nvidia.com/gpu".into(), Quantity("1".into()));
        assert!(validate(&s).is_ok());
    }

    #[test]
    fn a_malformed_quantity_names_its_field() {
        let mut s = spec();
        s.resources
            .limits
            .insert("cpu".into(), Quantity("two".into()));
        let e = refused(&s);
        assert_eq!(e.field, "spec.resources.limits.cpu");
        assert!(e.message.contains("not a Kubernetes quantity"));
    }

    #[test]
    fn empty_limits_are_refused_even_without_the_schema() {
        let mut s = spec();
        s.resources.limits.clear();
        assert_eq!(refused(&s).field, "spec.resources.limits");
    }

    #[test]
    fn intervals_below_a_second_are_refused() {
        let mut s = spec();
        s.metrics.interval = "100ms".into();
        let e = refused(&s);
        assert_eq!(e.field, "spec.metrics.interval");
        s.metrics.interval = "ten seconds".into();
        assert!(refused(&s).message.contains("not a duration"));
    }

    #[test]
    fn steps_are_checked_even_if_cel_was_skipped() {
        let mut s = spec();
        s.rollout = Some(RolloutSpec {
            steps: vec![
                CanaryStep {
                    set_weight: Some(50),
                    ..Default::default()
                },
                CanaryStep {
                    set_weight: Some(20),
                    ..Default::default()
                },
            ],
            ..Default::default()
        });
        assert_eq!(refused(&s).field, "spec.rollout.steps[1].setWeight");
        s.rollout.as_mut().unwrap().steps[1] = CanaryStep {
            pause: Some(PauseStep {
                duration: Some("forever".into()),
            }),
            ..Default::default()
        };
        assert_eq!(refused(&s).field, "spec.rollout.steps[1].pause.duration");
        s.rollout.as_mut().unwrap().steps[1] = CanaryStep::default();
        assert_eq!(refused(&s).field, "spec.rollout.steps[1]");
    }

    #[test]
    fn a_mirror_step_needs_the_gateway_api_router_and_no_live_traffic_yet() {
        let mirror = |percent| CanaryStep {
            set_mirror: Some(MirrorStep { percent }),
            ..Default::default()
        };
        let weight = |w| CanaryStep {
            set_weight: Some(w),
            ..Default::default()
        };
        let mut s = spec();
        s.rollout = Some(RolloutSpec {
            steps: vec![weight(0), mirror(100), weight(50)],
            ..Default::default()
        });
        let e = refused(&s);
        assert_eq!(e.field, "spec.rollout.steps[1].setMirror");
        assert!(
            e.message
                .contains("spec.rollout.traffic.router: gatewayAPI"),
            "{e}"
        );
        let rollout = s.rollout.as_mut().unwrap();
        rollout.traffic = crate::api::TrafficSpec {
            router: Router::GatewayApi,
            gateway_api: Some(crate::api::GatewayApiSpec {
                parent_refs: Vec::new(),
                hostnames: Vec::new(),
            }),
        };
        assert!(validate(&s).is_ok());
        s.rollout.as_mut().unwrap().steps = vec![weight(10), mirror(100)];
        assert!(refused(&s).message.contains("before the first setWeight"));
        s.rollout.as_mut().unwrap().steps = vec![mirror(0)];
        assert_eq!(refused(&s).field, "spec.rollout.steps[0].setMirror.percent");
        s.rollout.as_mut().unwrap().steps = vec![CanaryStep {
            set_mirror: Some(MirrorStep { percent: 50 }),
            set_weight: Some(10),
            ..Default::default()
        }];
        assert_eq!(refused(&s).field, "spec.rollout.steps[0]");
    }

    #[test]
    fn raw_pod_fields_must_be_valid_kubernetes_objects() {
        let mut s = spec();
        s.template = Some(PodOverrides {
            volumes: Some(json!([{"name": "cache", "emptyDir": {"sizeLimit": "1Gi"}}])),
            affinity: Some(json!({"nodeAffinity": "everywhere"})),
            ..Default::default()
        });
        let e = refused(&s);
        assert_eq!(e.field, "spec.template.affinity");
        s.template.as_mut().unwrap().affinity = None;
        let v = validate(&s).unwrap();
        assert_eq!(v.pod.volumes[0].name, "cache");
    }

    #[test]
    fn model_uri_cannot_be_set_twice() {
        let mut s = spec();
        s.model.storage_uri = Some("s3://m/1".into());
        s.model.env = vec![k8s_openapi::api::core::v1::EnvVar {
            name: "MODEL_URI".into(),
            value: Some("s3://other".into()),
            ..Default::default()
        }];
        assert_eq!(refused(&s).field, "spec.model.env[0].name");
    }
}

#[cfg(test)]
mod duration_tests {
    use super::*;

    #[test]
    fn go_style_durations_parse_and_huge_ones_are_refused_not_panicked_on() {
        let d = |v: &str| parse_duration("spec.x", v);
        assert_eq!(d("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(d("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(d("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(d("0s").unwrap(), Duration::ZERO);
        for bad in ["", "10", "s", "1x", "1.s", ".5s", "1h 30m", "-1s"] {
            let e = d(bad).unwrap_err();
            assert_eq!(e.field, "spec.x", "{bad:?}");
        }
        // What the fuzzer found: numbers past what nanoseconds can hold.
        for huge in [
            "2000000000000000000m",
            "50000000000000000000s",
            "999999h999999h999999h999999h",
        ] {
            let e = d(huge).unwrap_err();
            assert!(e.message.contains("longer than"), "{huge}: {e}");
        }
    }
}
