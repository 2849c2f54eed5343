//! Thin glue between the cluster and the pure parts: read the object and what
//! it owns from the watch caches, validate, decide, apply what changed, write
//! the status when it changed, and tell a person what happened.

mod apply;
mod claim;
pub mod collect;
mod gates;
mod observe;
mod reconcile;
mod status;
mod sync;
mod tell;
pub mod watch_retry;

use apply::*;
use reconcile::lock;
pub use reconcile::{error_policy, reconcile};
use status::*;
use sync::*;
use tell::*;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{FutureExt, StreamExt};
use k8s_openapi::api::apps::v1::{ControllerRevision, Deployment};
use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::core::error_boundary::{DeserializeGuard, InvalidObject};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use serde_json::json;
use tracing::{Instrument, info, info_span, warn};

use crate::api::{EventKind, ModelDeployment, ModelDeploymentStatus, labels, validate};
use crate::resources::{self, APPLIED_HASH};
use crate::rollout::{self, Input};
use crate::routers::Child;
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
    /// The router's message saying which API is missing and how to get it.
    #[error("{0}")]
    RouterApiMissing(&'static str),
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
            Error::RouterApiMissing(_) => "router_api_missing",
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What the controller watches: an object that does not decode (say, written
/// by a newer operator version) is reported on its own instead of breaking the
/// watch for every other ModelDeployment.
pub type Watched = DeserializeGuard<ModelDeployment>;

pub struct Context {
    pub client: Client,
    /// This operator's pod, as the reporting instance of its events.
    instance: String,
    pub metrics: Metrics,
    deployments: Store<Deployment>,
    /// Each revision's stored pod template.
    revisions: Store<ControllerRevision>,
    services: Store<Service>,
    budgets: Store<PodDisruptionBudget>,
    network_policies: Store<NetworkPolicy>,
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
    /// The newest transition told per object (by uid and number).
    announced: Mutex<HashMap<ObjectRef<ModelDeployment>, Announced>>,
    /// Names of uncached children found free or the object's own.
    claimed: Mutex<HashMap<ObjectRef<ModelDeployment>, claim::Claimed>>,
    /// Hosts webhook gates may call.
    webhook_allow: Vec<crate::api::gates::HostPattern>,
    /// The operator's own pods, which every `spec.networkPolicy` lets in.
    operator_peer: resources::OperatorPeer,
}

/// What to watch and how to report.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Namespaces to watch; empty means all.
    pub namespaces: Vec<String>,
    /// The ModelDeployments of this shard; all when it selects everything.
    pub selector: kube::core::Selector,
    /// Reported as the events' reporting instance (the pod name).
    pub instance: String,
    /// Prometheus for `spec.metrics.source: prometheus`, with its credentials;
    /// from the operator's configuration only, never from a ModelDeployment.
    pub prometheus: Option<crate::metrics::prometheus::PromClient>,
    pub scrape: crate::metrics::scrape::ScrapeConfig,
    /// Rollout transitions go here too, when a webhook is configured.
    pub notifier: Option<crate::notify::Notifier>,
    /// Reconciles running at once (0: no limit). Each holds API connections
    /// and cache snapshots, so this bounds memory under a burst of changes.
    pub max_concurrent_reconciles: u16,
    /// Hosts webhook gates may call (`--webhook-allow`); none when empty.
    pub webhook_allow: Vec<crate::api::gates::HostPattern>,
    /// The operator's namespace and pod labels, let in by every
    /// `spec.networkPolicy` so the operator keeps scraping the model's pods.
    pub operator_peer: resources::OperatorPeer,
}

/// The caches the reconciles read, besides the ModelDeployments'.
struct Caches {
    deployments: Store<Deployment>,
    revisions: Store<ControllerRevision>,
    services: Store<Service>,
    budgets: Store<PodDisruptionBudget>,
    network_policies: Store<NetworkPolicy>,
    pods: Store<Pod>,
}

impl Context {
    fn new(
        client: Client,
        settings: &Settings,
        metrics: Metrics,
        caches: Caches,
        synced: SyncTracker,
    ) -> Self {
        Context {
            client,
            instance: settings.instance.clone(),
            metrics,
            deployments: caches.deployments,
            revisions: caches.revisions,
            services: caches.services,
            budgets: caches.budgets,
            network_policies: caches.network_policies,
            pods: caches.pods,
            scraper: crate::metrics::scrape::Scraper::new(settings.scrape.clone()),
            notifier: settings.notifier.clone(),
            prometheus: settings.prometheus.clone(),
            windows: Mutex::default(),
            synced,
            captured: Mutex::default(),
            capture_tried: Mutex::default(),
            applied: Mutex::default(),
            written: Mutex::default(),
            failures: Mutex::default(),
            reported_undecodable: Mutex::default(),
            announced: Mutex::default(),
            claimed: Mutex::default(),
            webhook_allow: settings.webhook_allow.clone(),
            operator_peer: settings.operator_peer.clone(),
        }
    }
}

/// A watch and cache of the children this operator made (`owned` selects
/// them by label), stripped by `strip`; listing once marks `kind` synced.
fn owned_cache<K>(
    api: Api<K>,
    owned: &watcher::Config,
    synced: &SyncTracker,
    kind: &'static str,
    strip: impl FnMut(&mut K) + Send + 'static,
) -> (
    Store<K>,
    impl futures::Stream<Item = Result<K, watcher::Error>> + Send + 'static,
)
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone + Default,
{
    let (store, writer) = reflector::store();
    let stream = reflector::reflector(writer, watcher(api, owned.clone()).modify(strip))
        .backoff(watch_retry::WatchRetry::new())
        .inspect(synced.marker(kind))
        .touched_objects();
    (store, watch_retry::errors_logged(stream, kind))
}

/// A deleted object leaves no metric series, windows, remembered writes or
/// failure counts behind.
fn forget_deleted(ctx: &Context, md: &Watched) {
    let (ns, name) = (md.namespace().unwrap_or_default(), md.name_any());
    ctx.metrics.forget(&ns, &name);
    let key = ObjectRef::<ModelDeployment>::new(&name).within(&ns);
    lock(&ctx.captured).remove(&key);
    lock(&ctx.capture_tried).remove(&key);
    lock(&ctx.windows).remove(&key);
    lock(&ctx.written).remove(&key);
    lock(&ctx.announced).remove(&key);
    lock(&ctx.claimed).remove(&key);
    lock(&ctx.failures).remove(&ObjectRef::new(&name).within(&ns));
    // Children are named after their object (`<name>`, `<name>-...`).
    lock(&ctx.applied).retain(|(_, child_ns, child), _| {
        *child_ns != ns || (child != &name && !child.starts_with(&format!("{name}-")))
    });
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

/// What each controller watches, by resource (plural) name: the
/// ModelDeployments and the children it made.
pub const WATCHED: [&str; 7] = [
    "modeldeployments",
    "deployments",
    "controllerrevisions",
    "services",
    "poddisruptionbudgets",
    "networkpolicies",
    "pods",
];

async fn run_scope(
    client: Client,
    ns: Option<String>,
    settings: Settings,
    metrics: Metrics,
    shutdown: impl std::future::Future<Output = ()> + Clone + Send + Sync + 'static,
    on_synced: impl FnOnce() + Send + 'static,
) {
    let synced = SyncTracker::new(WATCHED, on_synced);
    let (caches, children) = child_caches(&client, ns.as_deref(), &synced);
    let mdeps: Api<Watched> = scoped(&client, ns.as_deref());
    let ctx = Arc::new(Context::new(
        client,
        &settings,
        metrics,
        caches,
        synced.clone(),
    ));
    let (main_store, main_stream) = main_watch(mdeps, &settings.selector, &ctx, &synced);
    // No watch error reaches the Controller (watch_retry): its one backoff
    // over all watches would pause every watch for any one's error.
    let controller = Controller::for_stream(main_stream, main_store).with_config(
        kube::runtime::controller::Config::default()
            .concurrency(settings.max_concurrent_reconciles),
    );
    tokio::spawn(synced.clone().report_while_unsynced());

    let running = controller
        .owns_stream(children.deployments)
        .owns_stream(children.revisions)
        .owns_stream(children.services)
        .owns_stream(children.budgets)
        .owns_stream(children.network_policies)
        // Pods belong to ReplicaSets, not to the ModelDeployment: map them
        // back by label, so a crash-looping canary pod is seen at once.
        .watches_stream(children.pods, |pod: Pod| {
            let name = pod.labels().get(labels::NAME)?.clone();
            Some(ObjectRef::new(&name).within(&pod.namespace()?))
        })
        .graceful_shutdown_on(shutdown.clone())
        .run(reconcile, error_policy, ctx)
        .for_each(|res| async move { log_loop_error(res) });
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

type Watching<K> = futures::stream::BoxStream<'static, Result<K, watcher::Error>>;

/// The watches of the children, feeding [`Caches`] and waking their owner.
struct ChildStreams {
    deployments: Watching<Deployment>,
    revisions: Watching<ControllerRevision>,
    services: Watching<Service>,
    budgets: Watching<PodDisruptionBudget>,
    network_policies: Watching<NetworkPolicy>,
    pods: Watching<Pod>,
}

/// Caches of only the objects this operator made (keeps them small on busy
/// clusters), with only what decisions read: no managed fields anywhere, of
/// pod specs only the model container's ports (pods are read for their
/// labels, status and the port to scrape), and no pod
/// templates of Deployments (a revision's template is its ControllerRevision's).
fn child_caches(client: &Client, ns: Option<&str>, synced: &SyncTracker) -> (Caches, ChildStreams) {
    let owned = watcher::Config::default().labels(&format!("{}=modeldeploy", labels::MANAGED_BY));
    let (deployments, deploy_stream) = owned_cache(
        scoped(client, ns),
        &owned,
        synced,
        "deployments",
        |d: &mut Deployment| {
            d.managed_fields_mut().clear();
            if let Some(spec) = d.spec.as_mut() {
                spec.template.spec = None;
            }
        },
    );
    let (revisions, revision_stream) = owned_cache(
        scoped(client, ns),
        &owned,
        synced,
        "controllerrevisions",
        |r: &mut ControllerRevision| r.managed_fields_mut().clear(),
    );
    let (services, service_stream) = owned_cache(
        scoped(client, ns),
        &owned,
        synced,
        "services",
        |s: &mut Service| s.managed_fields_mut().clear(),
    );
    let (budgets, budget_stream) = owned_cache(
        scoped(client, ns),
        &owned,
        synced,
        "poddisruptionbudgets",
        |b: &mut PodDisruptionBudget| b.managed_fields_mut().clear(),
    );
    let (network_policies, network_policy_stream) = owned_cache(
        scoped(client, ns),
        &owned,
        synced,
        "networkpolicies",
        |n: &mut NetworkPolicy| n.managed_fields_mut().clear(),
    );
    let (pods, pod_stream) =
        owned_cache(scoped(client, ns), &owned, synced, "pods", |p: &mut Pod| {
            p.managed_fields_mut().clear();
            resources::keep_declared_ports(&mut p.spec);
        });
    let caches = Caches {
        deployments,
        revisions,
        services,
        budgets,
        network_policies,
        pods,
    };
    let streams = ChildStreams {
        deployments: deploy_stream.boxed(),
        revisions: revision_stream.boxed(),
        services: service_stream.boxed(),
        budgets: budget_stream.boxed(),
        network_policies: network_policy_stream.boxed(),
        pods: pod_stream.boxed(),
    };
    (caches, streams)
}

/// The watch of the ModelDeployments. It is ours (not the Controller's) so
/// that deletions are seen (a deleted object's metric series go with it) and
/// so that each delivered version is noted for [`WrittenStatus`].
/// Only the shard's objects (`selector`) are in its store, and the Controller
/// reconciles only what its store holds: a child event of another shard's
/// object finds nothing to reconcile. An object relabelled out of the shard
/// arrives as a deletion, so this shard forgets it and stops.
fn main_watch(
    mdeps: Api<Watched>,
    selector: &kube::core::Selector,
    ctx: &Arc<Context>,
    synced: &SyncTracker,
) -> (Store<Watched>, Watching<Watched>) {
    let (store, writer) = reflector::store();
    let ctx = ctx.clone();
    let mut config = watcher::Config::default().any_semantic();
    if !selector.selects_all() {
        config = config.labels_from(selector);
    }
    // Managed fields are never read and were about an eighth of the
    // operator's memory at rest with 1,000 objects (docs/benchmarks.md).
    let watch = watcher(mdeps, config).modify(|md: &mut Watched| md.managed_fields_mut().clear());
    let stream = reflector::reflector(writer, watch)
        .backoff(watch_retry::WatchRetry::new())
        .inspect(move |event| match event {
            Ok(watcher::Event::Apply(md) | watcher::Event::InitApply(md)) => {
                let key =
                    ObjectRef::new(&md.name_any()).within(&md.namespace().unwrap_or_default());
                watch_delivered(&ctx, Some((&key, md.resource_version().as_deref())));
            }
            Ok(watcher::Event::InitDone) => watch_delivered(&ctx, None),
            Ok(watcher::Event::Delete(md)) => forget_deleted(&ctx, md),
            _ => {}
        })
        .inspect(synced.marker("modeldeployments"))
        .touched_objects();
    let stream = watch_retry::errors_logged(stream, "modeldeployments").boxed();
    (store, stream)
}

fn log_loop_error<T>(res: Result<T, kube::runtime::controller::Error<Error, watcher::Error>>) {
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
}
