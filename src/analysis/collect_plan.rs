//! The decisions of an analysis run, apart from the reading the controller
//! does (`src/controller/collect.rs`): which revision is judged against which
//! and by which checks, which pods are read and over which window, what a
//! custom check's query reads, when a captured drift reference is complete,
//! and the judgement of what was read. Values in, values out.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;

use crate::analysis::AnalysisRun;
use crate::analysis::abtest::{self, Comparison};
use crate::analysis::checks::{self, Judge, Reference};
use crate::analysis::error_rate::SequentialConfig;
use crate::analysis::histogram::Histogram;
use crate::analysis::window::{SeriesKey, VariantData};
use crate::api::{
    Check, DEFAULT_MIN_SAMPLES, ModelDeployment, ModelDeploymentStatus, Strategy, ValidSpec, labels,
};
use crate::exposition::{OwnedSample, Sample};

/// Which revision is judged against which, and by which checks.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan<'a> {
    pub judged: String,
    pub baseline: Option<String>,
    pub checks: &'a [Check],
    pub min_samples: u64,
}

/// During a rollout the canary is judged against the stable revision by the
/// analysis checks; after a promotion, while the guard watches, the stable
/// revision against the previous one by the guard's checks. Otherwise there
/// is nothing to judge.
pub fn plan<'a>(md: &'a ModelDeployment, status: &ModelDeploymentStatus) -> Option<Plan<'a>> {
    let stable = status.stable.as_ref()?;
    if let Some(c) = &status.canary {
        let rollout = md.spec.rollout.as_ref()?;
        return Some(Plan {
            judged: c.hash.clone(),
            baseline: Some(stable.hash.clone()),
            checks: &rollout.analysis.checks,
            min_samples: u64::try_from(rollout.analysis.min_samples).unwrap_or(0),
        });
    }
    let guard = md.spec.guard.as_ref()?;
    status.guard.as_ref()?;
    Some(Plan {
        judged: stable.hash.clone(),
        baseline: status.previous.as_ref().map(|p| p.hash.clone()),
        checks: &guard.checks,
        min_samples: md
            .spec
            .rollout
            .as_ref()
            .map_or(DEFAULT_MIN_SAMPLES, |r| r.analysis.min_samples)
            .try_into()
            .unwrap_or(0),
    })
}

/// Where a window of per-pod counter deltas begins. During a rollout it is
/// the canary's start, so the canary's pods (all started since) count every
/// request they served, even those before the first analysis run or an
/// operator restart; older pods count from their first observation. Otherwise
/// (the guard) it is now.
pub fn window_start(status: &ModelDeploymentStatus, now: Timestamp) -> Timestamp {
    status
        .canary
        .as_ref()
        .and_then(|c| c.started_at.as_ref())
        .map_or(now, |t| t.0.min(now))
}

/// How long the rollout has run, when there is one.
pub fn canary_age(status: &ModelDeploymentStatus, now: Timestamp) -> Option<Duration> {
    status
        .canary
        .as_ref()
        .and_then(|c| c.started_at.as_ref())
        .map(|t| Duration::try_from(now.duration_since(t.0)).unwrap_or_default())
}

/// How far back Prometheus is asked: the rollout so far (the guard: one
/// analysis interval), never less than one scrape interval.
pub fn prometheus_window(
    status: &ModelDeploymentStatus,
    valid: &ValidSpec,
    now: Timestamp,
) -> Duration {
    canary_age(status, now)
        .unwrap_or(valid.analysis_interval)
        .max(valid.metrics_interval)
}

/// The pods a revision is read from: its own, Ready, and not being deleted.
pub fn is_read(pod: &Pod, md: &ModelDeployment, hash: &str) -> bool {
    labels::in_revision(&pod.metadata, md, hash)
        && pod.metadata.deletion_timestamp.is_none()
        && pod.status.as_ref().is_some_and(|s| {
            s.conditions
                .iter()
                .flatten()
                .any(|c| c.type_ == "Ready" && c.status == "True")
        })
}

/// The metric family a custom check's query names: `name` in
/// `name{label="value",...}`.
pub fn custom_family(query: &str) -> &str {
    query.split('{').next().unwrap_or_default().trim()
}

/// The families the custom checks read.
pub fn custom_families(checks: &[Check]) -> Vec<String> {
    checks
        .iter()
        .filter_map(|c| c.metric.as_ref())
        .map(|m| custom_family(&m.query).to_string())
        .collect()
}

/// A custom series from the pods: `name{label="value",...}`; counters
/// (`_total`) as a per-second rate over the window, gauges as the mean over pods.
pub fn custom_value(
    query: &str,
    totals: &BTreeMap<SeriesKey, f64>,
    latest: &[OwnedSample],
    elapsed: Duration,
) -> Option<f64> {
    let name = custom_family(query);
    let matchers = query
        .split_once('{')
        .map_or("", |(_, rest)| rest.trim_end().trim_end_matches('}'));
    let wanted: Vec<(String, String)> = matchers
        .split(',')
        .filter_map(|m| {
            let (k, v) = m.split_once('=')?;
            Some((k.trim().to_string(), v.trim().trim_matches('"').to_string()))
        })
        .collect();
    let matches = |labels: &[(String, String)]| {
        wanted
            .iter()
            .all(|(k, v)| labels.iter().any(|(lk, lv)| lk == k && lv == v))
    };
    if name.ends_with("_total") {
        let mut found = false;
        let sum: f64 = totals
            .iter()
            .filter(|(k, _)| k.name == name && matches(&k.labels))
            .map(|(_, v)| {
                found = true;
                *v
            })
            .sum();
        return found.then(|| sum / elapsed.as_secs_f64().max(1.0));
    }
    let values: Vec<f64> = latest
        .iter()
        .filter(|s| s.name == name && matches(&s.labels))
        .map(|s| s.value)
        .collect();
    (!values.is_empty()).then(|| values.iter().sum::<f64>() / values.len() as f64)
}

/// Each custom check's value, where the pods' series give one, by check name.
pub fn insert_custom_values(
    data: &mut VariantData,
    checks: &[Check],
    totals: &BTreeMap<SeriesKey, f64>,
    latest: &[OwnedSample],
    elapsed: Duration,
) {
    for c in checks {
        if let Some(m) = &c.metric
            && let Some(v) = custom_value(&m.query, totals, latest, elapsed)
        {
            data.custom.insert(c.name.clone(), v);
        }
    }
}

/// Whether the drift reference is the stable revision's own inputs, captured
/// by the operator (`drift.reference.fromStable`).
pub fn captures_from_stable(md: &ModelDeployment) -> bool {
    md.spec.drift.as_ref().is_some_and(|d| {
        d.reference.config_map_ref.is_none() && d.reference.from_stable == Some(true)
    })
}

/// Observations every feature needs before its distribution is worth keeping.
pub fn capture_min_samples(md: &ModelDeployment) -> f64 {
    md.spec
        .rollout
        .as_ref()
        .map_or(DEFAULT_MIN_SAMPLES, |r| r.analysis.min_samples)
        .max(1) as f64
}

/// A reference only once every feature the stable exposes has `min` observations:
/// a half-filled reference would make the next canary look drifted.
pub fn enough_to_capture(features: BTreeMap<String, Histogram>, min: f64) -> Option<Reference> {
    if features.is_empty() || features.values().any(|h| h.total() < min) {
        return None;
    }
    Some(Reference { features })
}

/// What an analysis run read: both variants, and the drift reference if any.
#[derive(Debug, Clone, Default)]
pub struct Evidence {
    pub judged: VariantData,
    pub baseline: VariantData,
    pub reference: Option<Reference>,
}

/// Judge the plan's checks on the evidence, and during an A/B test compare
/// the variants on its objective.
pub fn judge(
    md: &ModelDeployment,
    status: &ModelDeploymentStatus,
    valid: &ValidSpec,
    plan: &Plan<'_>,
    evidence: &Evidence,
    now: Timestamp,
) -> AnalysisRun {
    let judge = Judge {
        canary: &evidence.judged,
        stable: &evidence.baseline,
        reference: evidence.reference.as_ref(),
        correction: md
            .spec
            .drift
            .as_ref()
            .map(|d| d.correction)
            .unwrap_or_default(),
        min_samples: plan.min_samples,
        sequential: SequentialConfig::default(),
    };
    let mut run = checks::evaluate(plan.checks, &judge, now);
    if let Some(ab) = ab_comparison(md, status, valid, evidence, now) {
        run.ab = Some(ab);
    }
    run
}

/// The A/B objective compared at this look, when an A/B test is running.
fn ab_comparison(
    md: &ModelDeployment,
    status: &ModelDeploymentStatus,
    valid: &ValidSpec,
    evidence: &Evidence,
    now: Timestamp,
) -> Option<Comparison> {
    let rollout = md.spec.rollout.as_ref()?;
    let ab = rollout.ab_test.as_ref()?;
    if status.canary.is_none() || rollout.strategy != Strategy::AbTest {
        return None;
    }
    let ran = canary_age(status, now).unwrap_or_default();
    let alpha = abtest::look_alpha(
        ab.objective.confidence,
        ran,
        valid.analysis_interval,
        valid.ab_max_duration.unwrap_or(ran),
    );
    Some(abtest::compare(
        ab.objective.metric,
        ab.objective.goal,
        alpha,
        u64::try_from(ab.min_samples).unwrap_or(0),
        &evidence.baseline,
        &evidence.judged,
    ))
}

/// The standard metric of Prometheus clients: when the answering process
/// started, in Unix seconds. Read from every scraped pod that exposes it.
pub const PROCESS_START: &str = "process_start_time_seconds";

/// How much earlier than its pod a pod's process may seem to have started
/// (the pod's start time is in whole seconds; both come from its node).
const START_SLACK_SECONDS: f64 = 5.0;

/// Whether an answer came from some other process than the pod's own: one
/// that started before the pod existed (an address now served by an older
/// pod, a proxy answering for others). Such an answer is not read; the
/// reason names both times. Without the metric, or the pod's start time,
/// nothing can be told and the answer is read.
pub fn answered_by_another(pod_started: Option<i64>, samples: &[Sample<'_>]) -> Option<String> {
    let pod_started = pod_started? as f64;
    let process_started = samples
        .iter()
        .find(|s| s.name == PROCESS_START && s.value.is_finite())?
        .value;
    (process_started < pod_started - START_SLACK_SECONDS).then(|| {
        format!(
            "answered by a process that started at {process_started:.0} (Unix seconds), \
             {:.0} s before the pod did: another pod's metrics, not read",
            pod_started - process_started
        )
    })
}

#[cfg(test)]
mod answered_by_another_tests {
    use super::*;
    use crate::exposition::{FamilyFilter, parse};

    fn told(pod_started: Option<i64>, text: &str) -> Option<String> {
        let filter = FamilyFilter::new([PROCESS_START, "model_requests_total"]);
        let mut samples = Vec::new();
        parse(text, &filter, |s| samples.push(s)).unwrap();
        answered_by_another(pod_started, &samples)
    }

    const POD_STARTED: i64 = 1_800_000_000;

    fn process_started(at: f64) -> String {
        format!(
            "# TYPE process_start_time_seconds gauge\nprocess_start_time_seconds {at}\n\
             # TYPE model_requests_total counter\nmodel_requests_total{{code=\"200\"}} 7\n"
        )
    }

    #[test]
    fn a_process_older_than_its_pod_is_another_pods() {
        let why = told(Some(POD_STARTED), &process_started(1_799_990_000.0)).unwrap();
        assert!(why.contains("10000 s before the pod"), "{why}");
        assert!(why.contains("another pod's metrics"), "{why}");
    }

    #[test]
    fn the_pods_own_process_started_with_or_after_it() {
        for at in [1_800_000_000.4, 1_800_000_120.0, 1_799_999_996.0] {
            assert_eq!(told(Some(POD_STARTED), &process_started(at)), None, "{at}");
        }
    }

    #[test]
    fn without_the_metric_or_the_pods_start_nothing_is_told() {
        let plain = "# TYPE model_requests_total counter\nmodel_requests_total 1\n";
        assert_eq!(told(Some(POD_STARTED), plain), None);
        assert_eq!(told(None, &process_started(1.0)), None);
        assert_eq!(told(Some(POD_STARTED), &process_started(f64::NAN)), None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{CanaryStatus, GuardStatus, RevisionStatus, validate};
    use crate::exposition::MetricType;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use serde_json::json;

    fn md(extra: serde_json::Value) -> ModelDeployment {
        let mut spec = json!({
            "model": {"version": "1.0.0", "image": "example/model:1.0.0"},
            "replicas": 2,
            "resources": {"requests": {"cpu": "1"}, "limits": {"cpu": "1"}}
        });
        if let (Some(s), Some(e)) = (spec.as_object_mut(), extra.as_object()) {
            s.extend(e.clone());
        }
        ModelDeployment::new("scorer", serde_json::from_value(spec).unwrap())
    }

    fn rollout(min_samples: i64) -> serde_json::Value {
        json!({"rollout": {
            "steps": [{"setWeight": 50}],
            "analysis": {"minSamples": min_samples, "checks": [
                {"name": "errors", "errorRate": {"max": 0.01}},
                {"name": "queue", "metric": {"query": " queue_depth {pool=\"a\"}", "max": 5.0}}
            ]}
        }})
    }

    fn at(second: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + second).unwrap()
    }

    fn revision(hash: &str) -> RevisionStatus {
        RevisionStatus {
            hash: hash.into(),
            ..Default::default()
        }
    }

    fn rolling_out(started: Option<i64>) -> ModelDeploymentStatus {
        ModelDeploymentStatus {
            stable: Some(revision("old")),
            canary: Some(CanaryStatus {
                hash: "new".into(),
                started_at: started.map(|s| Time(at(s))),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn a_rollout_judges_the_canary_against_stable_by_the_analysis_checks() {
        let md = md(rollout(300));
        let plan = plan(&md, &rolling_out(Some(0))).unwrap();
        assert_eq!(plan.judged, "new");
        assert_eq!(plan.baseline.as_deref(), Some("old"));
        assert_eq!(plan.checks.len(), 2);
        assert_eq!(plan.min_samples, 300);
    }

    #[test]
    fn the_guard_judges_stable_against_the_previous_revision_only_while_it_watches() {
        let mut extra = rollout(300);
        extra["guard"] = json!({"checks": [{"name": "errors", "errorRate": {"max": 0.02}}]});
        let md = md(extra);
        let mut status = ModelDeploymentStatus {
            stable: Some(revision("new")),
            previous: Some(revision("old")),
            ..Default::default()
        };
        assert_eq!(plan(&md, &status), None, "the guard is not watching");
        status.guard = Some(GuardStatus::default());
        let plan = plan(&md, &status).unwrap();
        assert_eq!(
            (plan.judged.as_str(), plan.baseline.as_deref()),
            ("new", Some("old"))
        );
        assert_eq!(plan.checks[0].name, "errors");
        assert_eq!(plan.min_samples, 300, "the rollout's minSamples");
    }

    #[test]
    fn nothing_is_judged_without_a_stable_revision_or_a_rollout_spec() {
        let mut status = rolling_out(Some(0));
        assert_eq!(plan(&md(json!({})), &status), None);
        status.stable = None;
        assert_eq!(plan(&md(rollout(1)), &status), None);
    }

    #[test]
    fn windows_start_with_the_canary_and_never_in_the_future() {
        assert_eq!(window_start(&rolling_out(Some(10)), at(100)), at(10));
        assert_eq!(window_start(&rolling_out(Some(500)), at(100)), at(100));
        assert_eq!(window_start(&rolling_out(None), at(100)), at(100));
        assert_eq!(
            canary_age(&rolling_out(Some(10)), at(100)),
            Some(Duration::from_secs(90))
        );
        assert_eq!(
            canary_age(&rolling_out(Some(500)), at(100)),
            Some(Duration::ZERO)
        );
        assert_eq!(canary_age(&ModelDeploymentStatus::default(), at(100)), None);
    }

    #[test]
    fn prometheus_is_asked_for_the_rollout_so_far_but_at_least_one_scrape_interval() {
        let md = md(rollout(1));
        let valid = validate(&md.spec).unwrap();
        let window = |status: &ModelDeploymentStatus| prometheus_window(status, &valid, at(1000));
        assert_eq!(window(&rolling_out(Some(400))), Duration::from_secs(600));
        assert_eq!(window(&rolling_out(Some(1000))), valid.metrics_interval);
        assert_eq!(
            window(&ModelDeploymentStatus::default()),
            valid.analysis_interval.max(valid.metrics_interval)
        );
    }

    fn key(name: &str, labels: &[(&str, &str)]) -> SeriesKey {
        SeriesKey {
            name: name.into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    fn gauge(name: &str, labels: &[(&str, &str)], value: f64) -> OwnedSample {
        OwnedSample {
            family: name.into(),
            name: name.into(),
            kind: MetricType::Gauge,
            labels: key(name, labels).labels,
            value,
            timestamp: None,
        }
    }

    #[test]
    fn a_custom_query_names_its_family_before_the_braces() {
        assert_eq!(custom_family(" queue_depth {pool=\"a\"}"), "queue_depth");
        assert_eq!(custom_family("queue_depth"), "queue_depth");
        assert_eq!(
            custom_families(
                md(rollout(1))
                    .spec
                    .rollout
                    .unwrap()
                    .analysis
                    .checks
                    .as_slice()
            ),
            ["queue_depth"]
        );
    }

    #[test]
    fn a_custom_counter_is_a_rate_over_the_window_of_the_matching_series() {
        let totals = BTreeMap::from([
            (key("jobs_total", &[("pool", "a"), ("code", "200")]), 60.0),
            (key("jobs_total", &[("pool", "a"), ("code", "500")]), 30.0),
            (key("jobs_total", &[("pool", "b")]), 1000.0),
        ]);
        let minute = Duration::from_secs(60);
        let value = |q| custom_value(q, &totals, &[], minute);
        assert_eq!(value("jobs_total{pool=\"a\"}"), Some(1.5));
        assert_eq!(
            value("jobs_total{ pool = \"a\" , code=\"500\" }"),
            Some(0.5)
        );
        assert_eq!(value("jobs_total"), Some(1090.0 / 60.0));
        assert_eq!(value("jobs_total{pool=\"c\"}"), None);
        assert_eq!(
            custom_value("jobs_total{pool=\"b\"}", &totals, &[], Duration::ZERO),
            Some(1000.0),
            "a window under a second counts as one second"
        );
    }

    #[test]
    fn a_custom_gauge_is_the_mean_over_the_pods_that_have_it() {
        let latest = [
            gauge("queue_depth", &[("pool", "a")], 2.0),
            gauge("queue_depth", &[("pool", "a")], 4.0),
            gauge("queue_depth", &[("pool", "b")], 100.0),
        ];
        let value = |q| custom_value(q, &BTreeMap::new(), &latest, Duration::from_secs(60));
        assert_eq!(value("queue_depth{pool=\"a\"}"), Some(3.0));
        assert_eq!(value("queue_depth{pool=\"z\"}"), None);
        assert_eq!(value("other"), None);

        let checks = md(rollout(1)).spec.rollout.unwrap().analysis.checks;
        let mut data = VariantData::default();
        insert_custom_values(
            &mut data,
            &checks,
            &BTreeMap::new(),
            &latest,
            Duration::ZERO,
        );
        assert_eq!(data.custom, BTreeMap::from([("queue".to_string(), 3.0)]));
    }

    #[test]
    fn a_reference_is_captured_only_when_every_feature_has_enough_observations() {
        let histogram = |total: f64| {
            Histogram::new(vec![1.0, f64::INFINITY], vec![total / 2.0, total]).unwrap()
        };
        let features = |a, b| {
            BTreeMap::from([
                ("a".to_string(), histogram(a)),
                ("b".to_string(), histogram(b)),
            ])
        };
        assert_eq!(enough_to_capture(BTreeMap::new(), 1.0), None);
        assert_eq!(enough_to_capture(features(500.0, 199.0), 200.0), None);
        let captured = enough_to_capture(features(500.0, 200.0), 200.0).unwrap();
        assert_eq!(captured.features.len(), 2);

        assert_eq!(capture_min_samples(&md(rollout(0))), 1.0);
        assert_eq!(capture_min_samples(&md(rollout(300))), 300.0);
        assert_eq!(
            capture_min_samples(&md(json!({}))),
            DEFAULT_MIN_SAMPLES as f64
        );
    }

    #[test]
    fn only_from_stable_without_a_config_map_captures() {
        let from = |reference| md(json!({"drift": {"reference": reference}}));
        assert!(captures_from_stable(&from(json!({"fromStable": true}))));
        assert!(!captures_from_stable(&from(json!({"fromStable": false}))));
        assert!(!captures_from_stable(&from(
            json!({"configMapRef": {"name": "r", "key": "k"}})
        )));
        assert!(!captures_from_stable(&md(json!({}))));
    }

    #[test]
    fn a_revision_is_read_from_its_own_ready_pods_that_are_not_going_away() {
        let mut md = md(json!({}));
        md.metadata.namespace = Some("risk".into());
        let pod = |hash: &str, ready: &str, deleting: bool| {
            let mut p: Pod = serde_json::from_value(json!({
                "metadata": {"namespace": "risk", "labels": {
                    "modeldeploy.io/name": "scorer", "modeldeploy.io/hash": hash}},
                "status": {"conditions": [{"type": "Ready", "status": ready}]}
            }))
            .unwrap();
            if deleting {
                p.metadata.deletion_timestamp = Some(Time(at(0)));
            }
            p
        };
        assert!(is_read(&pod("new", "True", false), &md, "new"));
        assert!(!is_read(&pod("old", "True", false), &md, "new"));
        assert!(!is_read(&pod("new", "False", false), &md, "new"));
        assert!(!is_read(&pod("new", "True", true), &md, "new"));
        let mut elsewhere = pod("new", "True", false);
        elsewhere.metadata.namespace = Some("other".into());
        assert!(!is_read(&elsewhere, &md, "new"));
        let mut no_status = pod("new", "True", false);
        no_status.status = None;
        assert!(!is_read(&no_status, &md, "new"));
    }

    fn traffic(requests: f64, errors: f64) -> VariantData {
        VariantData {
            requests: Some(requests),
            errors: Some(errors),
            ..Default::default()
        }
    }

    #[test]
    fn an_ab_test_compares_the_objective_and_a_canary_rollout_does_not() {
        let ab = json!({"rollout": {
            "strategy": "abTest",
            "abTest": {"minSamples": 100, "maxDuration": "1h",
                       "objective": {"metric": "errorRate", "goal": "minimize"}},
            "analysis": {"checks": []}
        }});
        let evidence = Evidence {
            judged: traffic(10_000.0, 10.0),
            baseline: traffic(10_000.0, 500.0),
            reference: None,
        };
        let status = rolling_out(Some(0));
        let judged = |md: &ModelDeployment| {
            let valid = validate(&md.spec).unwrap();
            let plan = plan(md, &status).unwrap();
            judge(md, &status, &valid, &plan, &evidence, at(1800))
        };
        let run = judged(&md(ab));
        let comparison = run.ab.expect("an A/B test compares");
        assert_eq!(comparison.winner, Some(abtest::Winner::Candidate));
        assert_eq!(comparison.samples_candidate, 10_000);
        assert_eq!(judged(&md(rollout(1))).ab, None);
    }
}
