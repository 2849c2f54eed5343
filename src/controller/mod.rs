//! Thin glue between the cluster and the pure parts: read the object and what
//! it owns from the watch caches, validate, decide, apply what changed, write
//! the status when it changed, and tell a person what happened.

pub mod collect;
mod observe;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{FutureExt, StreamExt};
use k8s_openapi::api::apps::v1::{ControllerRevision, Deployment};
use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec, Service};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::core::error_boundary::{DeserializeGuard, InvalidObject};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use serde_json::json;
use tracing::{Instrument, info, info_span, warn};

use crate::api::{ModelDeployment, ModelDeploymentStatus, labels, validate};
use crate::resources::{self, APPLIED_HASH};
use crate::rollout::{self, Input, NoteKind};
use crate::telemetry::{Metrics, Readiness};

/// The one field manager for everything the operator writes.
pub const FIELD_MANAGER: &str = crate::api::OPERATOR_NAME;
/// How often an object at rest is looked at anyway (it causes no writes).
const RESYNC: Duration = Duration::from_secs(300);
const MAX_BACKOFF: Duration = Duration::from_secs(300);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("object has no {0}")]
    MissingField(&'static str),
    #[error(
        "spec.rollout.traffic.router is gatewayAPI but the cluster has no HTTPRoute (gateway.networking.k8s.io/v1) API: install the Gateway API CRDs"
    )]
    GatewayApiMissing,
}

impl Error {
    /// A static, low-cardinality category for metric labels and event reasons.
    pub fn category(&self) -> &'static str {
        match self {
            Error::Kube(kube::Error::Api(s)) if s.code == 409 => "conflict",
            Error::Kube(kube::Error::Api(s)) if s.code == 404 => "not_found",
            Error::Kube(kube::Error::Api(s)) if s.code == 403 || s.code == 401 => "forbidden",
            Error::Kube(kube::Error::Api(s)) if s.code == 422 || s.code == 400 => "rejected",
            Error::Kube(kube::Error::Api(s)) if s.code >= 500 => "server_error",
            Error::Kube(kube::Error::Api(_)) => "api_other",
            // An answer our types cannot read: a bug to fix, not a network blip.
            Error::Kube(kube::Error::SerdeError(_)) => "decode",
            Error::Kube(_) => "transport",
            Error::MissingField(_) => "malformed_object",
            Error::GatewayApiMissing => "gateway_api_missing",
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What the controller watches: an object that does not decode (say, written
/// by a newer operator version) is reported on its own instead of breaking the
/// watch for every other ModelDeployment.
pub type Watched = DeserializeGuard<ModelDeployment>;

/// The status this operator wrote last, per object, until the watch cache
/// catches up: a reconcile that reads the object before its own status write
/// has arrived must not redo a transition (a second promotion, a second history entry).
#[derive(Clone)]
struct WrittenStatus {
    /// Versions of the object that come before this write: the one it was
    /// decided on and those of this operator's earlier writes the cache may
    /// still show on its way to this one.
    older: Vec<String>,
    /// The version this write made.
    made: String,
    /// The watch has delivered `made` (or relisted since): from then on a
    /// version that is neither `made` nor in `older` came after it.
    delivered: bool,
    status: ModelDeploymentStatus,
}

impl WrittenStatus {
    /// Whether this write is newer than the cached version `seen`: one of
    /// ours before it, or another writer's that the watch delivered first.
    fn ahead_of(&self, seen: &str) -> bool {
        seen != self.made && (self.older.iter().any(|o| o == seen) || !self.delivered)
    }
}

/// Note that the main watch delivered `version` of an object, or relisted.
fn watch_delivered(ctx: &Context, key: Option<(&ObjectRef<ModelDeployment>, Option<&str>)>) {
    let mut written = lock(&ctx.written);
    match key {
        Some((key, version)) => {
            if let Some(w) = written.get_mut(key)
                && version == Some(w.made.as_str())
            {
                w.delivered = true;
            }
        }
        // A relist shows every object as it is now, after all our writes.
        None => written.values_mut().for_each(|w| w.delivered = true),
    }
}

/// Older versions remembered per object: enough for a cache several of our
/// own writes behind.
const MAX_OLDER_VERSIONS: usize = 16;

/// The versions that come before a new write of ours: those before the
/// previous write, the previous write's own, and the one this write was
/// decided on; the newest [`MAX_OLDER_VERSIONS`] of them.
fn versions_before<V: PartialEq>(mut known: Vec<V>, previous_write: Option<V>, seen: V) -> Vec<V> {
    known.extend(previous_write);
    known.push(seen);
    known.dedup();
    let excess = known.len().saturating_sub(MAX_OLDER_VERSIONS);
    known.drain(..excess);
    known
}

pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    pub metrics: Metrics,
    deployments: Store<Deployment>,
    /// Each revision's stored pod template.
    revisions: Store<ControllerRevision>,
    services: Store<Service>,
    pods: Store<Pod>,
    scraper: crate::metrics::scrape::Scraper,
    notifier: Option<crate::notify::Notifier>,
    prometheus: Option<crate::metrics::prometheus::PromClient>,
    windows: Mutex<collect::WindowMap>,
    /// Which watches have listed once; nothing is decided before all have.
    synced: SyncTracker,
    /// The stable revision each object's captured drift reference describes.
    captured: Mutex<HashMap<ObjectRef<ModelDeployment>, String>>,
    /// When each object last tried to capture its stable inputs.
    capture_tried: Mutex<HashMap<ObjectRef<ModelDeployment>, Instant>>,
    /// The last apply to each child, by (kind, namespace, name).
    applied: Mutex<HashMap<(String, String, String), Applied>>,
    written: Mutex<HashMap<ObjectRef<ModelDeployment>, WrittenStatus>>,
    failures: Mutex<HashMap<ObjectRef<Watched>, u32>>,
    /// Undecodable objects already reported, by resourceVersion.
    reported_undecodable: Mutex<HashMap<ObjectRef<Watched>, String>>,
}

/// What to watch and how to report.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Namespaces to watch; empty means all.
    pub namespaces: Vec<String>,
    /// Reported as the events' reporting instance (the pod name).
    pub instance: String,
    /// Prometheus for `spec.metrics.source: prometheus`; from the operator's
    /// configuration only, never from a ModelDeployment.
    pub prometheus_url: Option<String>,
    pub scrape: crate::metrics::scrape::ScrapeConfig,
    /// Rollout transitions go here too, when a webhook is configured.
    pub notifier: Option<crate::notify::Notifier>,
    /// Reconciles running at once (0: no limit). Each holds API connections
    /// and cache snapshots, so this bounds memory under a burst of changes.
    pub max_concurrent_reconciles: u16,
}

/// Ask the API server for the CRD before anything else, so a missing CRD or an
/// unreachable cluster is one clear message instead of a stream of watch errors.
pub async fn preflight(client: &Client, settings: &Settings) -> std::result::Result<(), String> {
    let api: Api<ModelDeployment> = match settings.namespaces.first() {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    match api.list(&ListParams::default().limit(1)).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Err(
            "the ModelDeployment CRD is not installed: run `modeldeploy crd | kubectl apply -f -` \
             (or install the Helm chart)"
                .into(),
        ),
        Err(kube::Error::Api(s)) if s.code == 403 => Err(format!(
            "not allowed to list ModelDeployments ({}): check the operator's RBAC",
            s.message
        )),
        Err(e) => Err(format!("cannot reach the Kubernetes API server: {e}")),
    }
}

/// How often a replica that is not ready yet says which watch it waits for.
const SYNC_REPORT_EVERY: Duration = Duration::from_secs(10);

/// Run the controllers (one per watched namespace, or one for all) until
/// `shutdown` resolves.
pub async fn run(
    client: Client,
    settings: Settings,
    metrics: Metrics,
    readiness: Readiness,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) {
    let shutdown = shutdown.shared();
    let scopes: Vec<Option<String>> = if settings.namespaces.is_empty() {
        vec![None]
    } else {
        settings.namespaces.iter().cloned().map(Some).collect()
    };
    let remaining = Arc::new(std::sync::atomic::AtomicUsize::new(scopes.len()));
    let runs = scopes.into_iter().map(|ns| {
        let readiness = readiness.clone();
        let remaining = remaining.clone();
        run_scope(
            client.clone(),
            ns,
            settings.clone(),
            metrics.clone(),
            shutdown.clone(),
            move || {
                if remaining.fetch_sub(1, std::sync::atomic::Ordering::SeqCst) == 1 {
                    readiness.ready();
                }
            },
        )
    });
    futures::future::join_all(runs).await;
}

/// Tells when every watch of a controller has listed once. Not
/// `Store::wait_until_ready`: its one-shot channel keeps a single waker, so
/// waiting on it beside the Controller (which waits on the same store) can
/// leave one of the two asleep forever.
#[derive(Clone)]
struct SyncTracker(Arc<Mutex<SyncState>>);

struct SyncState {
    unsynced: Vec<&'static str>,
    on_synced: Option<Box<dyn FnOnce() + Send>>,
}

impl SyncTracker {
    fn new<const N: usize>(
        kinds: [&'static str; N],
        on_synced: impl FnOnce() + Send + 'static,
    ) -> Self {
        Self(Arc::new(Mutex::new(SyncState {
            unsynced: kinds.to_vec(),
            on_synced: Some(Box::new(on_synced)),
        })))
    }

    /// For `.inspect` on a reflector's stream: the end of its first list
    /// (the store holds it by then) marks `kind` synced.
    fn marker<K, E>(
        &self,
        kind: &'static str,
    ) -> impl Fn(&Result<watcher::Event<K>, E>) + use<K, E> {
        let tracker = self.clone();
        move |event| {
            if matches!(event, Ok(watcher::Event::InitDone)) {
                tracker.mark(kind);
            }
        }
    }

    fn mark(&self, kind: &'static str) {
        let done = {
            let mut state = lock(&self.0);
            state.unsynced.retain(|k| *k != kind);
            if state.unsynced.is_empty() {
                state.on_synced.take()
            } else {
                None
            }
        };
        if let Some(done) = done {
            done();
        }
    }

    fn unsynced(&self) -> Vec<&'static str> {
        lock(&self.0).unsynced.clone()
    }

    fn all_synced(&self) -> bool {
        lock(&self.0).unsynced.is_empty()
    }

    /// A replica that stays unready says which watch it still waits for.
    async fn report_while_unsynced(self) {
        let mut waited = Duration::ZERO;
        loop {
            tokio::time::sleep(SYNC_REPORT_EVERY).await;
            let unsynced = self.unsynced();
            if unsynced.is_empty() || Arc::strong_count(&self.0) == 1 {
                return;
            }
            waited += SYNC_REPORT_EVERY;
            warn!(
                waited_seconds = waited.as_secs(),
                ?unsynced,
                "still waiting for the watch caches to sync"
            );
        }
    }
}

fn scoped<K>(client: &Client, ns: Option<&str>) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    K::DynamicType: Default,
{
    match ns {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

async fn run_scope(
    client: Client,
    ns: Option<String>,
    settings: Settings,
    metrics: Metrics,
    shutdown: impl std::future::Future<Output = ()> + Clone + Send + Sync + 'static,
    on_synced: impl FnOnce() + Send + 'static,
) {
    let mdeps: Api<Watched> = scoped(&client, ns.as_deref());
    let deploy_api: Api<Deployment> = scoped(&client, ns.as_deref());
    let service_api: Api<Service> = scoped(&client, ns.as_deref());
    let revision_api: Api<ControllerRevision> = scoped(&client, ns.as_deref());
    // Only objects this operator made: keeps the caches small on busy clusters.
    let owned = watcher::Config::default().labels(&format!("{}=modeldeploy", labels::MANAGED_BY));

    let synced = SyncTracker::new(
        [
            "modeldeployments",
            "deployments",
            "controllerrevisions",
            "services",
            "pods",
        ],
        on_synced,
    );
    let (deployments, deploy_writer) = reflector::store();
    // Caches keep only what decisions read: no managed fields anywhere, no
    // pod specs (pods are read for their labels and status), and no pod
    // templates of Deployments (a revision's template is its ControllerRevision's).
    let deploy_stream = reflector::reflector(
        deploy_writer,
        watcher(deploy_api, owned.clone()).modify(|d| {
            d.managed_fields_mut().clear();
            if let Some(spec) = d.spec.as_mut() {
                spec.template.spec = None;
            }
        }),
    )
    .default_backoff()
    .inspect(synced.marker("deployments"))
    .touched_objects();
    let (revisions, revision_writer) = reflector::store();
    let revision_stream = reflector::reflector(
        revision_writer,
        watcher(revision_api, owned.clone()).modify(|r| r.managed_fields_mut().clear()),
    )
    .default_backoff()
    .inspect(synced.marker("controllerrevisions"))
    .touched_objects();
    let (services, service_writer) = reflector::store();
    let service_stream = reflector::reflector(
        service_writer,
        watcher(service_api, owned.clone()).modify(|s| s.managed_fields_mut().clear()),
    )
    .default_backoff()
    .inspect(synced.marker("services"))
    .touched_objects();
    // Pods belong to ReplicaSets, not to the ModelDeployment: map them back by
    // label, so a crash-looping canary pod is seen at once.
    let pod_api: Api<Pod> = scoped(&client, ns.as_deref());
    let (pods, pod_writer) = reflector::store();
    let pod_stream = reflector::reflector(
        pod_writer,
        watcher(pod_api, owned).modify(|p| {
            p.managed_fields_mut().clear();
            p.spec = None;
        }),
    )
    .default_backoff()
    .inspect(synced.marker("pods"))
    .touched_objects();

    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: crate::api::OPERATOR_NAME.into(),
            instance: Some(settings.instance.clone()),
        },
    );
    let prometheus = settings.prometheus_url.as_deref().and_then(|url| {
        crate::metrics::prometheus::PromClient::new(url, settings.scrape.timeout)
            .map_err(|e| warn!(error = %e, "ignoring the Prometheus address"))
            .ok()
    });
    let ctx = Arc::new(Context {
        client,
        recorder,
        metrics,
        deployments: deployments.clone(),
        revisions: revisions.clone(),
        services: services.clone(),
        pods: pods.clone(),
        scraper: crate::metrics::scrape::Scraper::new(settings.scrape.clone()),
        notifier: settings.notifier.clone(),
        prometheus,
        windows: Mutex::default(),
        synced: synced.clone(),
        captured: Mutex::default(),
        capture_tried: Mutex::default(),
        applied: Mutex::default(),
        written: Mutex::default(),
        failures: Mutex::default(),
        reported_undecodable: Mutex::default(),
    });

    // The main watch is ours (not the Controller's) so deletions are seen:
    // a deleted object's metric series go with it.
    let (main_store, main_writer) = reflector::store();
    let forget = ctx.clone();
    let main_stream = reflector::reflector(
        main_writer,
        watcher(mdeps, watcher::Config::default().any_semantic()),
    )
    .default_backoff()
    .inspect({
        let ctx = ctx.clone();
        move |event| match event {
            Ok(watcher::Event::Apply(md) | watcher::Event::InitApply(md)) => {
                let key =
                    ObjectRef::new(&md.name_any()).within(&md.namespace().unwrap_or_default());
                watch_delivered(&ctx, Some((&key, md.resource_version().as_deref())));
            }
            Ok(watcher::Event::InitDone) => watch_delivered(&ctx, None),
            _ => {}
        }
    })
    .inspect(move |event| {
        if let Ok(watcher::Event::Delete(md)) = event {
            let (ns, name) = (md.namespace().unwrap_or_default(), md.name_any());
            forget.metrics.forget(&ns, &name);
            let key = ObjectRef::<ModelDeployment>::new(&name).within(&ns);
            lock(&forget.captured).remove(&key);
            lock(&forget.capture_tried).remove(&key);
            lock(&forget.windows).remove(&key);
            lock(&forget.written).remove(&key);
            lock(&forget.failures).remove(&ObjectRef::new(&name).within(&ns));
            // Children are named after their object (`<name>`, `<name>-...`).
            lock(&forget.applied).retain(|(_, child_ns, child), _| {
                *child_ns != ns || (child != &name && !child.starts_with(&format!("{name}-")))
            });
        }
    })
    .inspect(synced.marker("modeldeployments"))
    .touched_objects();
    let controller = Controller::for_stream(main_stream, main_store.clone()).with_config(
        kube::runtime::controller::Config::default()
            .concurrency(settings.max_concurrent_reconciles),
    );
    tokio::spawn(synced.clone().report_while_unsynced());

    let running = controller
        .owns_stream(deploy_stream)
        .owns_stream(revision_stream)
        .owns_stream(service_stream)
        .watches_stream(pod_stream, |pod: Pod| {
            let name = pod.labels().get(labels::NAME)?.clone();
            Some(ObjectRef::new(&name).within(&pod.namespace()?))
        })
        .graceful_shutdown_on(shutdown.clone())
        .run(reconcile, error_policy, ctx)
        .for_each(|res| async move {
            match res {
                Ok(_) => {}
                // A deleted object's last event: nothing left to reconcile.
                Err(kube::runtime::controller::Error::ObjectNotFound(obj)) => {
                    tracing::debug!(object = %obj, "object is gone");
                }
                // Reconcile errors were reported by error_policy; objects that
                // fail to deserialize land here too, and the watch goes on.
                Err(e) => warn!(error = %e, "reconcile loop"),
            }
        });
    // A graceful shutdown waits for the main store to be ready, but it also
    // stops the watch that would fill it: asked to stop before that first
    // list is in, the Controller would wait forever. Reconciles decide
    // nothing before every watch has listed, so there is nothing to wait for.
    let stopped_while_syncing = async move {
        shutdown.await;
        if synced.all_synced() {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        _ = running => {}
        _ = stopped_while_syncing => {
            info!("stopped before the watches synced");
        }
    }
}

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

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

async fn reconcile_inner(md: &ModelDeployment, ctx: &Context) -> Result<Action> {
    let ns = md
        .namespace()
        .ok_or(Error::MissingField("metadata.namespace"))?;
    let name = md.name_any();
    if md.meta().deletion_timestamp.is_some() {
        // Children go with their owner through garbage collection.
        ctx.metrics.forget(&ns, &name);
        lock(&ctx.written).remove(&ObjectRef::from_obj(md));
        return Ok(Action::await_change());
    }
    let status = current_status(md, ctx);
    let now = Timestamp::now();
    let generation = md.meta().generation;

    let valid = match validate(&md.spec) {
        Ok(v) => v,
        Err(invalid) => {
            let next = rollout::invalid_spec(&status, &invalid, generation, now);
            if next != status {
                write_status(md, ctx, &next).await?;
                publish(
                    md,
                    ctx,
                    EventType::Warning,
                    "InvalidSpec",
                    &invalid.to_string(),
                )
                .await;
            }
            set_phase_metric(ctx, md, &next);
            // Nothing to retry until the object changes.
            return Ok(Action::await_change());
        }
    };

    let owned: Vec<Arc<Deployment>> = ctx.deployments.state_filter(|d| is_owned_by(d, md));
    let stored: Vec<Arc<ControllerRevision>> = ctx.revisions.state_filter(|r| is_owned_by(r, md));
    let observed = observe::revisions(&owned, &stored);
    let request = pending_request(md);
    let canary_pods_failure = canary_health(md, ctx, &status, &valid, now);
    // Before analysis, so a rollout judges input drift against the current stable.
    let capture = match collect::capture_stable_reference(ctx, md, &valid, &status).await {
        Ok(c) => c,
        Err(e) => {
            warn!(error = %e, "cannot capture the stable revision's input distribution");
            collect::Capture::Waiting
        }
    };
    let analysis = if rollout::analysis_due(&md.spec, &valid, &status, now) {
        collect::analyze(ctx, md, &status, &valid, now).await
    } else {
        None
    };
    let decision = rollout::decide(&Input {
        spec: &md.spec,
        valid: &valid,
        generation,
        status: &status,
        observed: &observed,
        analysis: analysis.as_ref(),
        canary_pods_failure: canary_pods_failure.as_deref(),
        request: request.as_ref(),
        now,
    });

    apply_if_changed(
        ctx,
        &ns,
        resources::service(md),
        ctx.services
            .get(&ObjectRef::new(&name).within(&ns))
            .as_deref(),
    )
    .await?;
    let mut keep = Vec::with_capacity(decision.workloads.len());
    for w in &decision.workloads {
        let name = resources::deployment_name(&md.name_any(), &w.hash);
        if let Some(template) = revision_template(ctx, md, &valid, w, &stored, &owned).await? {
            let desired = resources::deployment(md, &template, w, valid.progress_deadline);
            let current = owned.iter().find(|d| d.name_any() == name);
            apply_if_changed(ctx, &ns, desired, current.map(|d| d.as_ref())).await?;
        }
        keep.push(name);
    }
    route_traffic(md, ctx, &ns, &decision).await?;
    // A revision beyond the history limit goes with its stored template.
    delete_stale(ctx, &ns, &owned, &keep).await?;
    delete_stale(ctx, &ns, &stored, &keep).await?;

    if decision.status != status {
        write_status(md, ctx, &decision.status).await?;
        for note in &decision.notes {
            let kind = match note.kind {
                NoteKind::Normal => EventType::Normal,
                NoteKind::Warning => EventType::Warning,
            };
            publish(md, ctx, kind, note.reason, &note.message).await;
            if note.reason == rollout::ROLLED_BACK {
                ctx.metrics.count_rollback(&ns, &name);
            }
        }
        if let Some(notifier) = &ctx.notifier {
            // The version the transition is about: the rollout's (also when
            // this decision ended it), else the stable one it started from
            // (which the guard may just have rolled back).
            let version = decision
                .status
                .canary
                .as_ref()
                .or(status.canary.as_ref())
                .map(|c| c.version.as_str())
                .or(status.stable.as_ref().map(|s| s.version.as_str()));
            for n in crate::notify::from_notes(&ns, &name, version, &decision.notes) {
                notifier.send(n);
            }
        }
    }
    set_phase_metric(ctx, md, &decision.status);
    if decision.status.canary.is_none() && decision.status.guard.is_none() {
        collect::forget(ctx, md);
    }
    let mut requeue = decision.requeue_after.unwrap_or(RESYNC);
    if capture == collect::Capture::Waiting {
        requeue = requeue.min(valid.analysis_interval);
    }
    Ok(Action::requeue(requeue))
}

/// The pod template of one revision, from its ControllerRevision. A revision
/// seen for the first time is rendered from the spec that names it and stored;
/// a Deployment made before templates were stored is adopted as it runs.
/// Nothing else ever renders a template, so a spec change never reaches the
/// pods of an existing revision.
async fn revision_template(
    ctx: &Context,
    md: &ModelDeployment,
    valid: &crate::api::ValidSpec,
    w: &resources::RevisionWorkload,
    stored: &[Arc<ControllerRevision>],
    deployments: &[Arc<Deployment>],
) -> Result<Option<PodTemplateSpec>> {
    let name = resources::deployment_name(&md.name_any(), &w.hash);
    if let Some(cr) = stored.iter().find(|r| r.name_any() == name) {
        return match resources::stored_template(cr) {
            Ok(t) => Ok(Some(t)),
            Err(why) => {
                warn!(%why, "leaving the revision's Deployment as it is");
                Ok(None)
            }
        };
    }
    let ns = md
        .namespace()
        .ok_or(Error::MissingField("metadata.namespace"))?;
    let template = if w.hash == resources::revision_hash(&md.spec) {
        resources::pod_template(md, valid, w)
    } else if deployments.iter().any(|d| d.name_any() == name) {
        // The cache keeps no templates: read the running one.
        let api: Api<Deployment> = Api::namespaced(ctx.client.clone(), &ns);
        match api.get_opt(&name).await?.and_then(|d| d.spec) {
            Some(spec) => spec.template,
            None => return Ok(None),
        }
    } else {
        // Neither stored nor running, and not what the spec names: nothing
        // to build it from (a rollback target pruned by hand).
        warn!(revision = w.revision, "no stored template for the revision");
        return Ok(None);
    };
    let api: Api<ControllerRevision> = Api::namespaced(ctx.client.clone(), &ns);
    let cr = resources::controller_revision(md, w, &template);
    match api.create(&PostParams::default(), &cr).await {
        Ok(_) => Ok(Some(template)),
        // Stored already, and the cache has not seen it yet: the next
        // reconcile builds from what is stored.
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Delete the owned objects of one kind that are not kept.
async fn delete_stale<K>(ctx: &Context, ns: &str, owned: &[Arc<K>], keep: &[String]) -> Result<()>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + serde::de::DeserializeOwned
        + Clone
        + std::fmt::Debug,
    K::DynamicType: Default,
{
    let api: Api<K> = Api::namespaced(ctx.client.clone(), ns);
    for stale in owned.iter().filter(|o| !keep.contains(&o.name_any())) {
        info!(kind = %K::kind(&K::DynamicType::default()), name = %stale.name_any(), "deleting a revision beyond the history limit");
        match api
            .delete(&stale.name_any(), &DeleteParams::background())
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// An object that does not decode: say so once per version of it, touch nothing.
async fn report_undecodable(
    guard: &Watched,
    invalid: &InvalidObject,
    ctx: &Context,
) -> Result<Action> {
    let key = ObjectRef::from_obj(guard);
    let version = guard.resource_version().unwrap_or_default();
    let first = lock(&ctx.reported_undecodable).insert(key, version.clone()) != Some(version);
    if first {
        warn!(error = %invalid.error, "cannot decode the object; leaving it and its children as they are");
        let reference = guard.object_ref(&());
        let note = format!("cannot decode the object: {}", invalid.error);
        let event = event(EventType::Warning, "InvalidSpec", &note);
        if let Err(e) = ctx.recorder.publish(&event, &reference).await {
            warn!(error = %e, "cannot record event");
        }
    }
    Ok(Action::await_change())
}

/// With the Gateway API router: a Service per variant and the weighted HTTPRoute.
async fn route_traffic(
    md: &ModelDeployment,
    ctx: &Context,
    ns: &str,
    decision: &rollout::Decision,
) -> Result<()> {
    use crate::resources::gateway::{self, HTTPRoute};
    let Some(rollout_spec) = md.spec.rollout.as_ref() else {
        return Ok(());
    };
    let Some(gw) = rollout_spec.traffic.gateway_api.as_ref() else {
        return Ok(());
    };
    if rollout_spec.traffic.router != crate::api::Router::GatewayApi {
        return Ok(());
    }
    let Some(stable) = decision.status.stable.as_ref() else {
        return Ok(());
    };
    let canary_hash = decision
        .status
        .canary
        .as_ref()
        .map_or(stable.hash.as_str(), |c| c.hash.as_str());
    for (variant, hash) in [
        (gateway::STABLE, stable.hash.as_str()),
        (gateway::CANARY, canary_hash),
    ] {
        let desired = gateway::variant_service(md, variant, hash);
        let key = ObjectRef::new(&desired.name_any()).within(ns);
        apply_if_changed(ctx, ns, desired, ctx.services.get(&key).as_deref()).await?;
    }
    let matches = rollout_spec
        .ab_test
        .as_ref()
        .and_then(|ab| ab.matches.clone())
        .unwrap_or_default();
    let route = gateway::http_route(md, gw, decision.canary_weight, &matches);
    let api: Api<HTTPRoute> = Api::namespaced(ctx.client.clone(), ns);
    let current = api.get_opt(&md.name_any()).await?;
    // Read live, not from a cache: nothing to remember about earlier applies.
    lock(&ctx.applied).remove(&(
        HTTPRoute::kind(&()).to_string(),
        ns.to_string(),
        md.name_any(),
    ));
    // A 404 on apply means the HTTPRoute kind itself is unknown to the cluster.
    match apply_if_changed(ctx, ns, route, current.as_ref()).await {
        Err(Error::Kube(kube::Error::Api(s))) if s.code == 404 => Err(Error::GatewayApiMissing),
        other => other,
    }
}

/// Why the canary's pods are unhealthy, straight from pod status.
fn canary_health(
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
fn pending_request(md: &ModelDeployment) -> Option<rollout::Request> {
    let raw = md.annotations().get(rollout::requests::ANNOTATION)?;
    match rollout::Request::parse(raw) {
        Ok(r) => Some(r),
        Err(e) => {
            warn!(error = %e, "ignoring the request annotation");
            None
        }
    }
}

fn set_phase_metric(ctx: &Context, md: &ModelDeployment, status: &ModelDeploymentStatus) {
    if let (Some(ns), Some(phase)) = (md.namespace(), status.phase) {
        ctx.metrics.set_phase(&ns, &md.name_any(), phase.as_str());
        ctx.metrics
            .canary_weight
            .with_label_values(&[&ns, &md.name_any()])
            .set(i64::from(status.canary.as_ref().map_or(0, |c| c.weight)));
    }
}

/// The object's status, or the one this operator wrote last if the watch cache
/// has not caught up with that write yet.
fn current_status(md: &ModelDeployment, ctx: &Context) -> ModelDeploymentStatus {
    let key = ObjectRef::from_obj(md);
    let mut written = lock(&ctx.written);
    let seen = md.resource_version().unwrap_or_default();
    match written.get(&key) {
        // The cache is behind our write: ours, or another writer's version
        // the watch delivered before it.
        Some(w) if w.ahead_of(&seen) => w.status.clone(),
        // The cache holds our write, or something newer than it.
        Some(_) => {
            written.remove(&key);
            md.status.clone().unwrap_or_default()
        }
        None => md.status.clone().unwrap_or_default(),
    }
}

fn is_owned_by<K: Resource>(d: &K, md: &ModelDeployment) -> bool {
    let uid = md.uid();
    d.owner_references()
        .iter()
        .any(|o| o.controller == Some(true) && Some(&o.uid) == uid.as_ref())
}

/// Server-side apply, skipped when the object already carries the same applied
/// hash (and, for Deployments, the same size): an object at rest is not written.
async fn apply_if_changed<K>(ctx: &Context, ns: &str, desired: K, current: Option<&K>) -> Result<()>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + serde::Serialize
        + serde::de::DeserializeOwned
        + Clone
        + std::fmt::Debug,
    K::DynamicType: Default,
{
    let hash = |o: &K| o.annotations().get(APPLIED_HASH).cloned();
    let name = desired.name_any();
    let key = (
        K::kind(&K::DynamicType::default()).to_string(),
        ns.to_string(),
        name.clone(),
    );
    let seen = current.and_then(|c| c.resource_version());
    {
        // Once the cache shows our last apply or anything after it, the cache
        // is the truth again (a child deleted since must be made again); and
        // no cache lags for minutes.
        let mut applied = lock(&ctx.applied);
        if applied
            .get(&key)
            .is_some_and(|a| !a.before.contains(&seen) || a.at.elapsed() > APPLIED_MEMORY)
        {
            applied.remove(&key);
        }
    }
    if let Some(current) = current
        && hash(current).is_some()
        && hash(current) == hash(&desired)
        && same_replicas(current, &desired)
    {
        return Ok(());
    }
    let content = AppliedContent {
        hash: hash(&desired).unwrap_or_default(),
        replicas: replicas_of(&desired),
    };
    if lock(&ctx.applied)
        .get(&key)
        .is_some_and(|a| a.covers(&content, seen.as_deref()))
    {
        // The cache has not caught up with our own write of this content yet.
        return Ok(());
    }
    let api: Api<K> = Api::namespaced(ctx.client.clone(), ns);
    let made = api
        .patch(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&desired),
        )
        .await?
        .resource_version();
    let mut applied = lock(&ctx.applied);
    let previous = applied.remove(&key);
    if let Some(made) = made {
        applied.insert(key, Applied::after(previous, content, seen, made));
    }
    Ok(())
}

/// What this operator last applied to one child.
#[derive(Debug, Clone, PartialEq)]
struct AppliedContent {
    hash: String,
    replicas: Option<serde_json::Value>,
}

/// The last apply to one child and the versions of it that came before, so
/// a watch cache still showing one of those is known to lag behind that
/// apply (and is not answered with the same apply again), while a child that
/// someone else changed or deleted since is applied again.
#[derive(Debug, Clone)]
struct Applied {
    content: AppliedContent,
    /// Versions before the apply; `None`: the child did not exist yet.
    before: Vec<Option<String>>,
    made: String,
    at: Instant,
}

/// How long an apply is remembered at most.
const APPLIED_MEMORY: Duration = Duration::from_secs(60);
/// How long a child this operator created may be missing from the cache.
const NEW_CHILD_GRACE: Duration = Duration::from_secs(5);

impl Applied {
    fn after(
        previous: Option<Applied>,
        content: AppliedContent,
        seen: Option<String>,
        made: String,
    ) -> Self {
        let before = match previous {
            Some(p) => versions_before(p.before, Some(Some(p.made)), seen),
            None => versions_before(Vec::new(), None, seen),
        };
        Self {
            content,
            before,
            made,
            at: Instant::now(),
        }
    }

    fn covers(&self, content: &AppliedContent, seen: Option<&str>) -> bool {
        // A cache shows a new child within moments; still nothing after that
        // means it was deleted since, and it is made again.
        let absence_is_lag = seen.is_some() || self.at.elapsed() < NEW_CHILD_GRACE;
        self.content == *content
            && absence_is_lag
            && self.before.iter().any(|b| b.as_deref() == seen)
    }
}

fn replicas_of<K: serde::Serialize>(o: &K) -> Option<serde_json::Value> {
    serde_json::to_value(o)
        .ok()
        .and_then(|v| v.pointer("/spec/replicas").cloned())
}

/// Someone may scale a revision's Deployment by hand; the operator owns its size.
fn same_replicas<K: serde::Serialize>(current: &K, desired: &K) -> bool {
    replicas_of(current) == replicas_of(desired)
}

async fn write_status(
    md: &ModelDeployment,
    ctx: &Context,
    status: &ModelDeploymentStatus,
) -> Result<()> {
    let ns = md
        .namespace()
        .ok_or(Error::MissingField("metadata.namespace"))?;
    let api: Api<ModelDeployment> = Api::namespaced(ctx.client.clone(), &ns);
    let patch = json!({
        "apiVersion": ModelDeployment::api_version(&()),
        "kind": ModelDeployment::kind(&()),
        "status": status,
    });
    let written = api
        .patch_status(
            &md.name_any(),
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await?;
    if let (Some(before), Some(made)) = (md.resource_version(), written.resource_version())
        && made != before
    {
        let key = ObjectRef::from_obj(md);
        let mut all = lock(&ctx.written);
        // A write decided on a stale cache still knows the versions before
        // the previous write: the cache may show any of them next.
        let older = match all.remove(&key) {
            Some(previous) => versions_before(previous.older, Some(previous.made), before),
            None => versions_before(Vec::new(), None, before),
        };
        all.insert(
            key,
            WrittenStatus {
                older,
                made,
                delivered: false,
                status: status.clone(),
            },
        );
    }
    Ok(())
}

/// Events are best effort: a failure to record one is logged, never retried
/// into a reconcile error.
async fn publish(
    md: &ModelDeployment,
    ctx: &Context,
    type_: EventType,
    reason: &str,
    message: &str,
) {
    let event = event(type_, reason, message);
    if let Err(e) = ctx.recorder.publish(&event, &md.object_ref(&())).await {
        warn!(error = %e, reason, "cannot record event");
    }
}

/// Every event the operator records: the note truncated, action `Reconcile`.
fn event(type_: EventType, reason: &str, message: &str) -> Event {
    Event {
        type_,
        reason: reason.into(),
        note: Some(truncate(message, 1000)),
        action: "Reconcile".into(),
        secondary: None,
    }
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn a_status_write_stays_ahead_of_the_cache_until_the_watch_passes_it() {
        let mut w = WrittenStatus {
            older: vec!["6".into()],
            made: "8".into(),
            delivered: false,
            status: ModelDeploymentStatus::default(),
        };
        assert!(w.ahead_of("6"), "the version it was decided on");
        assert!(w.ahead_of("7"), "another writer's, delivered before ours");
        assert!(!w.ahead_of("8"), "the cache shows our write");
        w.delivered = true;
        assert!(w.ahead_of("6"));
        assert!(!w.ahead_of("9"), "another writer's, after ours");
    }

    #[test]
    fn a_lagging_cache_is_not_answered_with_the_same_apply() {
        let content = |hash: &str, replicas: i64| AppliedContent {
            hash: hash.into(),
            replicas: Some(serde_json::json!(replicas)),
        };
        // Created (the cache had nothing), then scaled: the cache may show
        // nothing, or the created version, until it shows the scaled one.
        let first = Applied::after(None, content("a", 2), None, "10".into());
        assert!(first.covers(&content("a", 2), None));
        let second = Applied::after(Some(first), content("a", 3), Some("10".into()), "11".into());
        assert!(second.covers(&content("a", 3), None));
        assert!(second.covers(&content("a", 3), Some("10")));
        // Different content, or a version that is not ours: apply.
        assert!(!second.covers(&content("a", 2), Some("10")));
        assert!(!second.covers(&content("b", 3), Some("10")));
        assert!(
            !second.covers(&content("a", 3), Some("12")),
            "changed by someone else"
        );
        // The cache at our own write compares as usual (not covered here).
        assert!(!second.covers(&content("a", 3), Some("11")));
    }

    #[test]
    fn synced_once_every_watch_listed_once() {
        let calls = Arc::new(AtomicUsize::new(0));
        let counted = calls.clone();
        let tracker = SyncTracker::new(["a", "b"], move || {
            counted.fetch_add(1, Ordering::SeqCst);
        });
        let a = tracker.marker::<Pod, watcher::Error>("a");
        let b = tracker.marker::<Pod, watcher::Error>("b");
        a(&Ok(watcher::Event::Init));
        a(&Ok(watcher::Event::InitDone));
        assert_eq!(tracker.unsynced(), ["b"]);
        b(&Ok(watcher::Event::InitApply(Pod::default())));
        assert_eq!(calls.load(Ordering::SeqCst), 0, "b is still listing");
        b(&Ok(watcher::Event::InitDone));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        // A re-list after a desync does not report readiness again.
        a(&Ok(watcher::Event::InitDone));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }
}
