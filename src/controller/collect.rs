//! Reading a rollout's variants when an analysis run is due: scrape the Ready
//! pods of each revision (or ask Prometheus), keep per-pod windows since the
//! rollout started, and judge the checks. Windows live in memory: after an
//! operator restart they start again, which only makes the judgement wait
//! for fresh evidence.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::reflector::ObjectRef;

use crate::analysis::AnalysisRun;
use crate::analysis::checks::Reference;
use crate::analysis::collect_plan::{self, Evidence, Plan};
use crate::analysis::window::{CounterWindow, SeriesKey, VariantData};
use crate::api::{Check, MetricsSource, ModelDeployment, ModelDeploymentStatus, ValidSpec};
use crate::exposition::{self, FamilyFilter, Options, OwnedSample};
use crate::metrics::prometheus::{self as prom, PromClient, RevisionSelector};
use crate::metrics::scrape::Target;
use crate::resources::deployment_name;

use super::Context;

/// Series kept per pod: enough for 100 features of 20 buckets and the rest.
pub const MAX_SERIES_PER_POD: usize = 4_000;

/// Windows of one rollout (or one guard period).
pub struct Windows {
    judged_hash: String,
    baseline_hash: String,
    judged: CounterWindow,
    baseline: CounterWindow,
    started: Timestamp,
}

// Decided in the pure module; the benchmarks name it here.
pub use collect_plan::window_start;

fn ready_pods(ctx: &Context, md: &ModelDeployment, hash: &str) -> Vec<Arc<Pod>> {
    ctx.pods
        .state_filter(|p| collect_plan::is_read(p, md, hash))
}

/// Scrape one revision's Ready pods into its window. Samples are read where
/// they lie in the scraped text; only those named in `keep` (gauges that
/// custom checks read as they are) are copied out and returned.
/// Where each pod's metrics are read, and when each pod started.
fn targets_of(
    md: &ModelDeployment,
    pods: &[Arc<Pod>],
    problems: &mut Vec<String>,
) -> (Vec<Target>, Vec<Option<i64>>) {
    let mut targets = Vec::new();
    let mut starts = Vec::new();
    for p in pods {
        let status = p.status.as_ref();
        let ip = status
            .and_then(|s| s.pod_ip.as_deref())
            .and_then(|ip| ip.parse().ok());
        let (Some(ip), Some(uid)) = (ip, p.uid()) else {
            continue;
        };
        let port = match crate::resources::declared_metrics_port(p) {
            Ok(port) => port,
            Err(e) => {
                problems.push(e);
                continue;
            }
        };
        match Target::new(uid, ip, port, &md.spec.metrics.path) {
            Ok(t) => {
                targets.push(t);
                starts.push(
                    status
                        .and_then(|s| s.start_time.as_ref())
                        .map(|t| t.0.as_second()),
                );
            }
            Err(e) => problems.push(e.to_string()),
        }
    }
    (targets, starts)
}

async fn scrape_into(
    ctx: &Context,
    md: &ModelDeployment,
    pods: &[Arc<Pod>],
    filter: &FamilyFilter,
    keep: &[String],
    window: &mut CounterWindow,
    problems: &mut Vec<String>,
) -> Vec<OwnedSample> {
    let (targets, starts) = targets_of(md, pods, problems);
    let mut latest = Vec::new();
    for ((target, start), result) in targets
        .iter()
        .zip(starts)
        .zip(ctx.scraper.fetch_all(&targets).await)
    {
        let text = match result {
            Ok(text) => text,
            Err(e) => {
                ctx.metrics
                    .scrape_errors
                    .with_label_values(&[e.reason()])
                    .inc();
                problems.push(format!("pod {}: {e}", target.url()));
                continue;
            }
        };
        let mut samples = Vec::new();
        match exposition::parse_with(&text, filter, &Options::default(), |s| samples.push(s)) {
            Ok(_) => {
                if let Some(why) = collect_plan::answered_by_another(start, &samples) {
                    problems.push(format!("pod {}: {why}", target.url()));
                    continue;
                }
                if let Err(why) = window.observe_whole(&target.pod_uid, start, &samples) {
                    problems.push(format!("pod {}: {why}", target.url()));
                    continue;
                }
                latest.extend(
                    samples
                        .into_iter()
                        .filter(|s| keep.iter().any(|k| k == s.name))
                        .map(OwnedSample::from),
                );
            }
            Err(e) => {
                ctx.metrics
                    .scrape_errors
                    .with_label_values(&["parse"])
                    .inc();
                problems.push(format!("pod {}: cannot parse metrics: {e}", target.url()));
            }
        }
    }
    if pods.is_empty() {
        problems.push("no Ready pods".into());
    }
    latest
}

async fn from_pods(
    ctx: &Context,
    md: &ModelDeployment,
    valid: &ValidSpec,
    plan: &Plan<'_>,
    start: Timestamp,
    now: Timestamp,
) -> (VariantData, VariantData) {
    let key = ObjectRef::from_obj(md);
    let mut windows = take_windows(ctx, &key, plan, start);
    // Custom series, read as they are (gauges) or as windows (counters).
    let custom = collect_plan::custom_families(plan.checks);
    let mut families = valid.names.families();
    families.extend(custom.iter().cloned());
    // Whose process answers (a gauge: no window counts it).
    families.push(collect_plan::PROCESS_START.to_string());
    let filter = FamilyFilter::new(families);
    let scraped = scrape_variants(ctx, md, plan, &filter, &custom, &mut windows).await;
    let elapsed = Duration::try_from(now.duration_since(windows.started)).unwrap_or_default();
    let judged_totals = windows.judged.totals();
    let mut judged = VariantData::from_totals(&valid.names, &judged_totals);
    judged.problems = scraped.judged_problems;
    collect_plan::insert_custom_values(
        &mut judged,
        plan.checks,
        &judged_totals,
        &scraped.latest,
        elapsed,
    );
    let mut baseline = VariantData::from_totals(&valid.names, &windows.baseline.totals());
    baseline.problems = scraped.baseline_problems;
    super::lock(&ctx.windows).insert(key, windows);
    (judged, baseline)
}

/// The plan's windows, taken out of the context while they are filled: the
/// ones kept from earlier runs when they still compare the same revisions,
/// else new ones beginning at `start`.
fn take_windows(
    ctx: &Context,
    key: &ObjectRef<ModelDeployment>,
    plan: &Plan<'_>,
    start: Timestamp,
) -> Windows {
    let baseline_hash = plan.baseline.clone().unwrap_or_default();
    let mut all = super::lock(&ctx.windows);
    match all.remove(key) {
        Some(w) if w.judged_hash == plan.judged && w.baseline_hash == baseline_hash => w,
        _ => Windows {
            judged_hash: plan.judged.clone(),
            baseline_hash,
            judged: CounterWindow::new(start.as_second(), MAX_SERIES_PER_POD),
            baseline: CounterWindow::new(start.as_second(), MAX_SERIES_PER_POD),
            started: start,
        },
    }
}

/// What scraping both variants into their windows left to read besides.
struct Scraped {
    /// The judged revision's samples of the custom gauges.
    latest: Vec<OwnedSample>,
    judged_problems: Vec<String>,
    baseline_problems: Vec<String>,
}

/// Scrape the judged revision's Ready pods, then the baseline's, into their
/// windows, and time the whole.
async fn scrape_variants(
    ctx: &Context,
    md: &ModelDeployment,
    plan: &Plan<'_>,
    filter: &FamilyFilter,
    custom: &[String],
    windows: &mut Windows,
) -> Scraped {
    let mut judged_problems = Vec::new();
    let mut baseline_problems = Vec::new();
    let started = std::time::Instant::now();
    let judged_pods = ready_pods(ctx, md, &plan.judged);
    let latest = scrape_into(
        ctx,
        md,
        &judged_pods,
        filter,
        custom,
        &mut windows.judged,
        &mut judged_problems,
    )
    .await;
    if let Some(hash) = &plan.baseline {
        let pods = ready_pods(ctx, md, hash);
        scrape_into(
            ctx,
            md,
            &pods,
            filter,
            &[],
            &mut windows.baseline,
            &mut baseline_problems,
        )
        .await;
    }
    ctx.metrics
        .scrape_duration
        .with_label_values(&[] as &[&str])
        .observe(started.elapsed().as_secs_f64());
    Scraped {
        latest,
        judged_problems,
        baseline_problems,
    }
}

async fn from_prometheus(
    client: &PromClient,
    metrics: &crate::telemetry::Metrics,
    md: &ModelDeployment,
    valid: &ValidSpec,
    plan: &Plan<'_>,
    window: Duration,
) -> (VariantData, VariantData) {
    let ns = md.namespace().unwrap_or_default();
    let name = md.name_any();
    let read = |hash: String| {
        let sel = RevisionSelector {
            namespace: ns.clone(),
            deployment: deployment_name(&name, &hash),
        };
        read_revision(client, metrics, valid, sel, window)
    };
    let mut judged = read(plan.judged.clone()).await;
    query_custom(client, plan.checks, &mut judged).await;
    let baseline = match &plan.baseline {
        Some(h) => read(h.clone()).await,
        None => VariantData::default(),
    };
    (judged, baseline)
}

/// One revision's series from Prometheus, increases over `window`.
pub async fn read_revision(
    client: &PromClient,
    metrics: &crate::telemetry::Metrics,
    valid: &ValidSpec,
    sel: RevisionSelector,
    window: Duration,
) -> VariantData {
    let mut totals: BTreeMap<SeriesKey, f64> = BTreeMap::new();
    let mut problems = Vec::new();
    for (series, q) in revision_queries(valid, &sel, window) {
        match client.query(&q).await {
            Ok(samples) => {
                for s in samples {
                    let key = SeriesKey {
                        name: series.clone(),
                        labels: s.labels.into_iter().collect(),
                    };
                    *totals.entry(key).or_insert(0.0) += s.value;
                }
            }
            Err(e) => {
                metrics.scrape_errors.with_label_values(&[e.reason()]).inc();
                problems.push(e.to_string());
            }
        }
    }
    problems.dedup();
    VariantData::from_totals(&valid.names, &totals).with_problems(problems)
}

/// The PromQL for one revision, each with the series name its answer is
/// filed under: every family's increase, and every histogram's buckets.
fn revision_queries(
    valid: &ValidSpec,
    sel: &RevisionSelector,
    window: Duration,
) -> Vec<(String, String)> {
    let mut queries: Vec<(String, String)> = Vec::new();
    // Grouping by every label the checks read keeps the answer small.
    let mut grouping = vec!["actual", "predicted", "feature", "value"];
    if let crate::api::presets::Traffic::Labelled { label, .. } = &valid.names.traffic {
        grouping.push(label.as_str());
    }
    for family in valid.names.families() {
        queries.push((
            family.clone(),
            prom::grouped_increase(&family, sel, &grouping, window),
        ));
    }
    for bucketed in valid
        .names
        .latency
        .iter()
        .chain([&valid.names.features, &valid.names.predictions])
    {
        queries.push((
            format!("{bucketed}_bucket"),
            prom::bucket_increase(bucketed, sel, &["feature"], window),
        ));
    }
    queries
}

/// Custom checks ask Prometheus their own query; the first answer counts.
async fn query_custom(client: &PromClient, checks: &[Check], judged: &mut VariantData) {
    for c in checks {
        if let Some(m) = &c.metric {
            match client.query(&m.query).await {
                Ok(samples) => {
                    if let Some(s) = samples.first() {
                        judged.custom.insert(c.name.clone(), s.value);
                    }
                }
                Err(e) => judged.problems.push(format!("check {}: {e}", c.name)),
            }
        }
    }
}

/// The drift reference: the user's ConfigMap, or the one captured from stable.
async fn reference(ctx: &Context, md: &ModelDeployment) -> Result<Option<Reference>, String> {
    let Some(drift) = &md.spec.drift else {
        return Ok(None);
    };
    let ns = md.namespace().unwrap_or_default();
    let (name, key) = match &drift.reference.config_map_ref {
        Some(r) => (r.name.clone(), r.key.clone()),
        None => (
            captured_reference_name(&md.name_any()),
            CAPTURED_KEY.to_string(),
        ),
    };
    let api: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &ns);
    let Some(cm) = api.get_opt(&name).await.map_err(|e| e.to_string())? else {
        // A captured reference deleted by someone is captured again.
        super::lock(&ctx.captured).remove(&ObjectRef::from_obj(md));
        return Ok(None);
    };
    let Some(doc) = cm.data.as_ref().and_then(|d| d.get(&key)) else {
        return Err(format!("ConfigMap {name} has no key {key}"));
    };
    Reference::parse(doc)
        .map(Some)
        .map_err(|e| format!("ConfigMap {name} key {key}: {e}"))
}

pub const CAPTURED_KEY: &str = "reference.json";

/// Annotation on the captured reference: the stable revision (hash) it describes.
pub const CAPTURED_REVISION: &str = "modeldeploy.io/captured-revision";

/// With `source: prometheus`, the stable's inputs over this long are captured.
const CAPTURE_RANGE: Duration = Duration::from_secs(3600);

/// What became of `drift.reference.fromStable` in this reconcile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Capture {
    /// Not asked for, or nothing is stable yet.
    NotWanted,
    /// The ConfigMap already describes the current stable revision.
    Current,
    /// The stable revision's distribution was just written.
    Written,
    /// The stable revision has not seen enough inputs yet: try again later.
    Waiting,
}

/// Keep the captured drift reference in step with the stable revision: once a
/// revision is stable (first deployment or promotion), its input distribution
/// (every feature histogram, summed over its Ready pods) is written to the
/// ConfigMap `<name>-drift-reference`, owned by the ModelDeployment, so it
/// survives operator restarts and goes with the object. One write per revision.
pub async fn capture_stable_reference(
    ctx: &Context,
    md: &ModelDeployment,
    valid: &ValidSpec,
    status: &ModelDeploymentStatus,
) -> Result<Capture, kube::Error> {
    let from_stable = collect_plan::captures_from_stable(md);
    let (true, Some(stable)) = (from_stable, status.stable.as_ref()) else {
        return Ok(Capture::NotWanted);
    };
    let key = ObjectRef::from_obj(md);
    if super::lock(&ctx.captured).get(&key) == Some(&stable.hash) {
        return Ok(Capture::Current);
    }
    // Waiting for data: scrape for it once per analysis interval, not on
    // every pod event.
    let now = std::time::Instant::now();
    if super::lock(&ctx.capture_tried)
        .get(&key)
        .is_some_and(|t| now.duration_since(*t) < valid.analysis_interval)
    {
        return Ok(Capture::Waiting);
    }
    super::lock(&ctx.capture_tried).insert(key.clone(), now);
    let ns = md.namespace().unwrap_or_default();
    let name = captured_reference_name(&md.name_any());
    let api: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &ns);
    if let Some(cm) = api.get_opt(&name).await? {
        if cm.annotations().get(CAPTURED_REVISION) == Some(&stable.hash) {
            super::lock(&ctx.captured).insert(key, stable.hash.clone());
            return Ok(Capture::Current);
        }
        let ours = cm
            .owner_references()
            .iter()
            .any(|o| Some(&o.uid) == md.uid().as_ref());
        if !ours {
            // Someone else's ConfigMap by that name: never take it over (the
            // owner reference would have it deleted with this object).
            tracing::warn!(configmap = %name, "not capturing the drift reference: a ConfigMap of that name exists and is not this ModelDeployment's");
            return Ok(Capture::NotWanted);
        }
    }
    let data = stable_inputs(ctx, md, valid, &stable.hash).await;
    let min = collect_plan::capture_min_samples(md);
    let Some(reference) = collect_plan::enough_to_capture(data.features, min) else {
        return Ok(Capture::Waiting);
    };
    let cm = crate::resources::captured_drift_reference(
        md,
        &name,
        CAPTURED_KEY,
        CAPTURED_REVISION,
        &stable.hash,
        &reference.to_json(),
    );
    api.patch(
        &name,
        &kube::api::PatchParams::apply(super::FIELD_MANAGER).force(),
        &kube::api::Patch::Apply(&cm),
    )
    .await?;
    tracing::info!(revision = %stable.hash, features = reference.features.len(), "captured the stable revision's input distribution");
    super::lock(&ctx.capture_tried).remove(&key);
    super::lock(&ctx.captured).insert(key, stable.hash.clone());
    Ok(Capture::Written)
}

/// The stable revision's inputs: everything its Ready pods counted since they
/// started (or, from Prometheus, over [`CAPTURE_RANGE`]).
async fn stable_inputs(
    ctx: &Context,
    md: &ModelDeployment,
    valid: &ValidSpec,
    hash: &str,
) -> VariantData {
    let plan = Plan {
        judged: hash.to_string(),
        baseline: None,
        checks: &[],
        min_samples: 0,
    };
    match (md.spec.metrics.source, &ctx.prometheus) {
        (MetricsSource::Prometheus, Some(client)) => {
            from_prometheus(client, &ctx.metrics, md, valid, &plan, CAPTURE_RANGE)
                .await
                .0
        }
        (MetricsSource::Prometheus, None) => VariantData::default(),
        (MetricsSource::Pods, _) => {
            // A window that began before every pod counts each from zero.
            let mut since_start = CounterWindow::new(i64::MIN, MAX_SERIES_PER_POD);
            let filter = FamilyFilter::new(vec![valid.names.features.clone()]);
            let pods = ready_pods(ctx, md, hash);
            let mut problems = Vec::new();
            scrape_into(
                ctx,
                md,
                &pods,
                &filter,
                &[],
                &mut since_start,
                &mut problems,
            )
            .await;
            VariantData::from_totals(&valid.names, &since_start.totals())
        }
    }
}

pub fn captured_reference_name(md_name: &str) -> String {
    format!("{md_name}-drift-reference")
}

/// Judge the checks of the current rollout (or guard) now.
pub async fn analyze(
    ctx: &Context,
    md: &ModelDeployment,
    status: &ModelDeploymentStatus,
    valid: &ValidSpec,
    now: Timestamp,
) -> Option<AnalysisRun> {
    let plan = collect_plan::plan(md, status)?;
    let (judged, baseline) = read_variants(ctx, md, status, valid, &plan, now).await;
    let reference = match reference(ctx, md).await {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(error = %e, "drift reference unavailable");
            None
        }
    };
    let evidence = Evidence {
        judged,
        baseline,
        reference,
    };
    let run = collect_plan::judge(md, status, valid, &plan, &evidence, now);
    ctx.metrics
        .record_run(&md.namespace().unwrap_or_default(), &md.name_any(), &run);
    Some(run)
}

/// Both variants of the plan, from the source the spec names.
async fn read_variants(
    ctx: &Context,
    md: &ModelDeployment,
    status: &ModelDeploymentStatus,
    valid: &ValidSpec,
    plan: &Plan<'_>,
    now: Timestamp,
) -> (VariantData, VariantData) {
    match (md.spec.metrics.source, &ctx.prometheus) {
        (MetricsSource::Prometheus, Some(client)) => {
            let window = collect_plan::prometheus_window(status, valid, now);
            from_prometheus(client, &ctx.metrics, md, valid, plan, window).await
        }
        (MetricsSource::Prometheus, None) => {
            let missing = VariantData {
                problems: vec!["spec.metrics.source is prometheus but the operator has no Prometheus address (--prometheus-url)".into()],
                ..Default::default()
            };
            (missing.clone(), missing)
        }
        (MetricsSource::Pods, _) => {
            let start = window_start(status, now);
            from_pods(ctx, md, valid, plan, start, now).await
        }
    }
}

/// Windows of objects that no longer roll out anything are dropped.
pub fn forget(ctx: &Context, md: &ModelDeployment) {
    super::lock(&ctx.windows).remove(&ObjectRef::from_obj(md));
}

pub type WindowMap = HashMap<ObjectRef<ModelDeployment>, Windows>;
