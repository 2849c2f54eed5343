//! One reconcile, read top to bottom: observe, validate, decide, apply,
//! write the status, tell.

use super::*;

pub async fn reconcile(guard: Arc<Watched>, ctx: Arc<Context>) -> Result<Action> {
    let ns = guard
        .namespace()
        .ok_or(Error::MissingField("metadata.namespace"))?;
    let name = guard.name_any();
    let span = info_span!("reconcile", namespace = %ns, name = %name);
    async move {
        // Until every cache has listed once, a decision would see no pods or
        // Deployments (an empty analysis, a revision looking absent).
        if !ctx.synced.all_synced() {
            return Ok(Action::requeue(Duration::from_secs(1)));
        }
        let started = Instant::now();
        ctx.metrics.reconciles.inc();
        let result = match &guard.0 {
            Ok(md) => reconcile_inner(md, &ctx).await,
            Err(invalid) => report_undecodable(&guard, invalid, &ctx).await,
        };
        ctx.metrics
            .duration
            .with_label_values(&[] as &[&str])
            .observe(started.elapsed().as_secs_f64());
        if result.is_ok() {
            lock(&ctx.failures).remove(&ObjectRef::from_obj(guard.as_ref()));
        }
        result
    }
    .instrument(span)
    .await
}

pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

pub(super) async fn reconcile_inner(md: &ModelDeployment, ctx: &Context) -> Result<Action> {
    if md.meta().deletion_timestamp.is_some() {
        // Children go with their owner through garbage collection.
        forget_object(ctx, md);
        return Ok(Action::await_change());
    }
    let status = current_status(md, ctx);
    // What could not be told before, or after a restart, what an earlier
    // life wrote but may not have told. It never holds the decision back.
    let mut telling = announce(md, ctx, &status, &[]).await;
    let now = Timestamp::now();
    let valid = match validate(&md.spec).and_then(|v| gates::allowed(v, &ctx.webhook_allow)) {
        Ok(v) => v,
        Err(invalid) => {
            return refuse(md, ctx, &status, &invalid, now, telling)
                .await
                .map(|t| retry_telling(None, t));
        }
    };
    if let Some(taken) = super::claim::name_taken(md, ctx, &valid).await? {
        let telling = refuse(md, ctx, &status, &taken, now, telling).await?;
        return Ok(retry_telling(
            Some(super::claim::NAME_TAKEN_RECHECK),
            telling,
        ));
    }
    let seen = observe(md, ctx, &status, &valid, now).await;
    let decision = rollout::decide(&Input {
        name: &md.name_any(),
        spec: &md.spec,
        valid: &valid,
        generation: md.meta().generation,
        status: &status,
        observed: &seen.revisions,
        analysis: seen.analysis.as_ref(),
        canary_pods_failure: seen.canary_pods_failure.as_deref(),
        request: seen.request.as_ref(),
        gate: seen.gate.as_ref(),
        now,
    });
    apply_decision(md, ctx, &valid, &decision, &seen).await?;
    if decision.status != status {
        // Replaces what was told before: the new transition carries what was not.
        telling = write_and_tell(md, ctx, &status, decision.status.clone()).await?;
    }
    set_phase_metric(ctx, md, &decision.status);
    if decision.status.canary.is_none() && decision.status.guard.is_none() {
        collect::forget(ctx, md);
    }
    let mut requeue = decision.requeue_after.unwrap_or(RESYNC);
    if seen.capture == collect::Capture::Waiting {
        requeue = requeue.min(valid.analysis_interval);
    }
    if let Telling::TryAgainIn(retry) = telling {
        requeue = requeue.min(retry);
    }
    Ok(Action::requeue(requeue))
}

/// Write `next` over `current` and tell its transition, carrying the events
/// of `current`'s that are not told yet (see [`carry_untold`]).
async fn write_and_tell(
    md: &ModelDeployment,
    ctx: &Context,
    current: &ModelDeploymentStatus,
    mut next: ModelDeploymentStatus,
) -> Result<Telling> {
    let carried = carry_untold(md, ctx, current, &mut next);
    write_status(md, ctx, &next).await?;
    Ok(announce(md, ctx, &next, &carried).await)
}

/// Reconcile again after `recheck` (none: at the next change), or sooner if
/// an event waits to be told.
fn retry_telling(recheck: Option<Duration>, telling: Telling) -> Action {
    let retry = match telling {
        Telling::Done => None,
        Telling::TryAgainIn(retry) => Some(retry),
    };
    recheck
        .into_iter()
        .chain(retry)
        .min()
        .map_or_else(Action::await_change, Action::requeue)
}

/// A deleted object's metric series and remembered writes go with it.
fn forget_object(ctx: &Context, md: &ModelDeployment) {
    ctx.metrics
        .forget(&md.namespace().unwrap_or_default(), &md.name_any());
    lock(&ctx.written).remove(&ObjectRef::from_obj(md));
}

/// A spec the operator refuses: say why in status and an event, touch
/// nothing running, and wait for the next change.
async fn refuse(
    md: &ModelDeployment,
    ctx: &Context,
    status: &ModelDeploymentStatus,
    invalid: &crate::api::InvalidSpec,
    now: Timestamp,
    telling: Telling,
) -> Result<Telling> {
    let next = rollout::invalid_spec(status, invalid, md.meta().generation, now);
    let telling = if next == *status {
        telling
    } else {
        write_and_tell(md, ctx, status, next.clone()).await?
    };
    set_phase_metric(ctx, md, &next);
    Ok(telling)
}

/// Everything the decision reads from the cluster and the pods.
pub(super) struct Seen {
    deployments: Vec<Arc<Deployment>>,
    stored: Vec<Arc<ControllerRevision>>,
    revisions: rollout::Observed,
    request: Option<rollout::Request>,
    canary_pods_failure: Option<String>,
    gate: Option<crate::rollout::gates::GateSeen>,
    capture: collect::Capture,
    analysis: Option<crate::analysis::AnalysisRun>,
}

async fn observe(
    md: &ModelDeployment,
    ctx: &Context,
    status: &ModelDeploymentStatus,
    valid: &crate::api::ValidSpec,
    now: Timestamp,
) -> Seen {
    let deployments: Vec<Arc<Deployment>> = ctx.deployments.state_filter(|d| is_owned_by(d, md));
    let stored: Vec<Arc<ControllerRevision>> = ctx.revisions.state_filter(|r| is_owned_by(r, md));
    let revisions = observe::revisions(&deployments, &stored);
    // Before analysis, so a rollout judges input drift against the current stable.
    let capture = match collect::capture_stable_reference(ctx, md, valid, status).await {
        Ok(c) => c,
        Err(e) => {
            warn!(error = %e, "cannot capture the stable revision's input distribution");
            collect::Capture::Waiting
        }
    };
    let analysis = if rollout::analysis_due(&md.spec, valid, status, now) {
        collect::analyze(ctx, md, status, valid, now).await
    } else {
        None
    };
    let gate = gates::observe(md, ctx, status, valid, now).await;
    Seen {
        gate,
        request: pending_request(md),
        canary_pods_failure: canary_health(md, ctx, status, valid, now),
        deployments,
        stored,
        revisions,
        capture,
        analysis,
    }
}

/// The model Service, every revision's Deployment from its stored template,
/// the router's children, and pruning beyond the history limit.
async fn apply_decision(
    md: &ModelDeployment,
    ctx: &Context,
    valid: &crate::api::ValidSpec,
    decision: &rollout::Decision,
    seen: &Seen,
) -> Result<()> {
    let ns = md
        .namespace()
        .ok_or(Error::MissingField("metadata.namespace"))?;
    let service = ctx
        .services
        .get(&ObjectRef::new(&md.name_any()).within(&ns));
    apply_if_changed(ctx, &ns, resources::service(md), service.as_deref()).await?;
    keep_budget(md, ctx, &ns, valid).await?;
    keep_network_policy(md, ctx, &ns, valid).await?;
    let mut keep = Vec::with_capacity(decision.workloads.len());
    for w in &decision.workloads {
        let name = resources::deployment_name(&md.name_any(), &w.hash);
        let template = revision_template(ctx, md, valid, w, &seen.stored, &seen.deployments);
        if let Some(template) = template.await? {
            let desired = resources::deployment(md, &template, w, valid.progress_deadline);
            let current = seen.deployments.iter().find(|d| d.name_any() == name);
            apply_if_changed(ctx, &ns, desired, current.map(|d| d.as_ref())).await?;
        }
        keep.push(name);
    }
    route_traffic(md, ctx, &ns, decision).await?;
    // A revision beyond the history limit goes with its stored template.
    delete_stale(ctx, &ns, &seen.deployments, &keep).await?;
    gates::prune_jobs(ctx, md, &ns, &seen.deployments, &keep).await;
    delete_stale(ctx, &ns, &seen.stored, &keep).await
}

/// Why the canary's pods are unhealthy, straight from pod status.
pub(super) fn canary_health(
    md: &ModelDeployment,
    ctx: &Context,
    status: &ModelDeploymentStatus,
    valid: &crate::api::ValidSpec,
    now: Timestamp,
) -> Option<String> {
    let canary = status.canary.as_ref()?;
    let pods: Vec<Arc<Pod>> = ctx
        .pods
        .state_filter(|p| labels::in_revision(&p.metadata, md, &canary.hash));
    let refs: Vec<&Pod> = pods.iter().map(|p| p.as_ref()).collect();
    let max = md
        .spec
        .rollout
        .as_ref()
        .map_or(crate::api::RestartsCheck::default().max, |r| {
            r.analysis.restarts.max
        });
    crate::analysis::pods::unhealthy(&refs, max, valid.progress_deadline, now)
}

/// The `kubectl modeldeploy` request on the object, if it carries a readable one.
pub(super) fn pending_request(md: &ModelDeployment) -> Option<rollout::Request> {
    let raw = md.annotations().get(rollout::requests::ANNOTATION)?;
    match rollout::Request::parse(raw) {
        Ok(r) => Some(r),
        Err(e) => {
            warn!(error = %e, "ignoring the request annotation");
            None
        }
    }
}

/// Transient errors retry with a per-object exponential backoff; a conflict
/// (someone else wrote first) retries almost at once.
pub fn error_policy(md: Arc<Watched>, error: &Error, ctx: Arc<Context>) -> Action {
    let category = error.category();
    ctx.metrics.failures.with_label_values(&[category]).inc();
    let mut failures = lock(&ctx.failures);
    let n = failures
        .entry(ObjectRef::from_obj(md.as_ref()))
        .or_insert(0);
    *n = n.saturating_add(1);
    let delay = if category == "conflict" {
        Duration::from_millis(200)
    } else {
        Duration::from_millis(500u64.saturating_mul(1 << (*n).min(10))).min(MAX_BACKOFF)
    };
    warn!(
        namespace = md.namespace().unwrap_or_default(),
        name = %md.name_any(),
        category,
        error = %error,
        retry_in_ms = delay.as_millis() as u64,
        "reconcile failed"
    );
    Action::requeue(delay)
}
