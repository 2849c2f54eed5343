//! An in-process fake Kubernetes API server that speaks the real HTTP API, so
//! the real kube client, watchers, leader election and the operator's
//! reconcile loop run in `cargo test`.
//!
//! What it does: get, list (label and field selectors), watch (ADDED /
//! MODIFIED / DELETED after a resourceVersion, `410 Expired` for a version it
//! no longer remembers), create, update (with resourceVersion preconditions),
//! delete (finalizers, and garbage collection of dependents by owner uid,
//! including objects created after their owners were deleted),
//! merge patch, strategic merge patch (as a merge patch), JSON patch, and
//! server-side apply with per-manager field ownership: fields a manager stops
//! applying are removed, and applying a field another manager set to a
//! different value is a 409 Conflict unless forced. Status subresources keep
//! spec and status writes apart, `metadata.generation` follows spec changes
//! (and a Deployment's annotations), and a write that changes nothing bumps
//! no resourceVersion and emits no watch event. Errors come as
//! `metav1.Status` bodies. Faults can be injected and requests are counted
//! by verb and resource.
//!
//! What it does not emulate: authentication and RBAC, admission (webhooks,
//! OpenAPI schema validation, defaulting, CEL rules), strategic-merge list
//! keys (lists are replaced whole), field ownership inside lists (a list is
//! one field), pagination tokens (lists are returned whole), bookmarks,
//! protobuf, server-side dry run, the Deployment/ReplicaSet/kubelet
//! controllers (tests play them through the store helpers), and watch events
//! for objects that stop matching a label selector.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use serde_json::{Map, Value, json};
use tokio::sync::{broadcast, watch};

/// A kind the server knows.
#[derive(Clone, Debug)]
pub struct ResourceInfo {
    pub group: String,
    pub version: String,
    pub plural: String,
    pub kind: String,
    pub namespaced: bool,
    pub has_status: bool,
}

impl ResourceInfo {
    fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }
}

type ObjKey = (String, String, String); // (plural, namespace, name)

#[derive(Clone, Debug)]
struct Event {
    rv: u64,
    plural: String,
    namespace: String,
    type_: &'static str,
    object: Value,
}

#[derive(Clone, Debug)]
pub struct Fault {
    pub remaining: u32,
    pub verb: Option<String>,
    pub resource: Option<String>,
    pub code: u16,
}

#[derive(Default)]
struct Store {
    resources: BTreeMap<String, ResourceInfo>,
    objects: BTreeMap<ObjKey, Value>,
    /// Leaf field paths owned by each field manager, per object.
    owners: HashMap<ObjKey, BTreeMap<String, BTreeSet<String>>>,
    rv: u64,
    history: Vec<Event>,
    faults: Vec<Fault>,
    delay: Duration,
    counts: BTreeMap<(String, String), u64>,
    uid: u64,
}

const HISTORY: usize = 20_000;

/// The server; dropping it stops serving.
pub struct FakeApiServer {
    addr: SocketAddr,
    store: Arc<Mutex<Store>>,
    events: broadcast::Sender<Event>,
    watch_epoch: watch::Sender<u64>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

#[derive(Clone)]
struct Shared {
    store: Arc<Mutex<Store>>,
    events: broadcast::Sender<Event>,
    watch_epoch: watch::Receiver<u64>,
}

fn res(
    group: &str,
    version: &str,
    plural: &str,
    kind: &str,
    namespaced: bool,
    has_status: bool,
) -> ResourceInfo {
    ResourceInfo {
        group: group.into(),
        version: version.into(),
        plural: plural.into(),
        kind: kind.into(),
        namespaced,
        has_status,
    }
}

impl FakeApiServer {
    pub async fn start() -> Self {
        Self::start_with(true).await
    }

    /// Start without the ModelDeployment kind registered (a cluster without the CRD).
    pub async fn start_without_crd() -> Self {
        Self::start_with(false).await
    }

    async fn start_with(with_crd: bool) -> Self {
        let mut store = Store::default();
        let mut kinds = vec![
            res("", "v1", "pods", "Pod", true, true),
            res("", "v1", "services", "Service", true, true),
            res("", "v1", "configmaps", "ConfigMap", true, false),
            res("", "v1", "secrets", "Secret", true, false),
            res("", "v1", "events", "Event", true, false),
            res("", "v1", "namespaces", "Namespace", false, true),
            res("apps", "v1", "deployments", "Deployment", true, true),
            res(
                "apps",
                "v1",
                "controllerrevisions",
                "ControllerRevision",
                true,
                false,
            ),
            res("events.k8s.io", "v1", "events", "Event", true, false),
            res(
                "policy",
                "v1",
                "poddisruptionbudgets",
                "PodDisruptionBudget",
                true,
                true,
            ),
            res(
                "networking.k8s.io",
                "v1",
                "networkpolicies",
                "NetworkPolicy",
                true,
                false,
            ),
            res("coordination.k8s.io", "v1", "leases", "Lease", true, false),
            res(
                "gateway.networking.k8s.io",
                "v1",
                "httproutes",
                "HTTPRoute",
                true,
                true,
            ),
            res(
                "apiextensions.k8s.io",
                "v1",
                "customresourcedefinitions",
                "CustomResourceDefinition",
                false,
                true,
            ),
        ];
        if with_crd {
            kinds.push(res(
                "modeldeploy.io",
                "v1alpha1",
                "modeldeployments",
                "ModelDeployment",
                true,
                true,
            ));
        }
        for k in kinds {
            store
                .resources
                .insert(format!("{}/{}/{}", k.group, k.version, k.plural), k);
        }
        let store = Arc::new(Mutex::new(store));
        let (events, _) = broadcast::channel(65_536);
        let (watch_epoch, epoch_rx) = watch::channel(0u64);
        let shared = Shared {
            store: store.clone(),
            events: events.clone(),
            watch_epoch: epoch_rx,
        };
        let app = axum::Router::new().fallback(handle).with_state(shared);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (tx, rx) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = rx.await;
                })
                .await;
        });
        FakeApiServer {
            addr,
            store,
            events,
            watch_epoch,
            stop: Some(tx),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn config(&self) -> kube::Config {
        let mut config = kube::Config::new(self.url().parse().expect("url"));
        config.default_namespace = "default".into();
        config.read_timeout = Some(Duration::from_secs(300));
        config
    }

    pub fn client(&self) -> kube::Client {
        kube::Client::try_from(self.config()).expect("client")
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Requests by (verb, resource[/subresource]).
    pub fn counts(&self) -> BTreeMap<(String, String), u64> {
        self.lock().counts.clone()
    }

    pub fn reset_counts(&self) {
        self.lock().counts.clear();
    }

    /// Writes (create, update, patch, apply, delete), optionally only to some resources.
    pub fn writes(&self, resources: &[&str]) -> u64 {
        self.lock()
            .counts
            .iter()
            .filter(|((verb, r), _)| {
                WRITE_VERBS.contains(&verb.as_str())
                    && (resources.is_empty()
                        || resources
                            .iter()
                            .any(|x| r == x || r.starts_with(&format!("{x}/"))))
            })
            .map(|(_, n)| n)
            .sum()
    }

    /// Fail the next `n` requests matching the verb and resource (plural) with `code`.
    pub fn fail_next(&self, n: u32, verb: Option<&str>, resource: Option<&str>, code: u16) {
        self.lock().faults.push(Fault {
            remaining: n,
            verb: verb.map(String::from),
            resource: resource.map(String::from),
            code,
        });
    }

    /// Forget every injected fault not used up yet.
    pub fn clear_faults(&self) {
        self.lock().faults.clear();
    }

    pub fn set_delay(&self, d: Duration) {
        self.lock().delay = d;
    }

    /// Close every open watch stream; clients must watch again.
    pub fn drop_watches(&self) {
        self.watch_epoch.send_modify(|e| *e += 1);
    }

    // --- Store helpers for tests that play the kubelet or other controllers.
    // They are not counted as requests.

    pub fn get(&self, plural: &str, ns: &str, name: &str) -> Option<Value> {
        self.lock()
            .objects
            .get(&(plural.to_string(), ns.to_string(), name.to_string()))
            .cloned()
    }

    pub fn list(&self, plural: &str, ns: &str) -> Vec<Value> {
        self.lock()
            .objects
            .iter()
            .filter(|((p, n, _), _)| p == plural && (ns.is_empty() || n == ns))
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// Create or replace an object as another controller would.
    pub fn upsert(&self, plural: &str, object: Value) -> Value {
        let mut store = self.lock();
        let info = store.resource_by_plural(plural).expect("known resource");
        let ns = if info.namespaced {
            object["metadata"]["namespace"]
                .as_str()
                .unwrap_or("default")
                .to_string()
        } else {
            String::new()
        };
        let name = object["metadata"]["name"]
            .as_str()
            .expect("name")
            .to_string();
        let key = (plural.to_string(), ns, name);
        let mut obj = object;
        complete(&info, &mut obj, &key.1);
        let old = store.objects.get(&key).cloned();
        let obj = match old {
            Some(old) => {
                let mut merged = obj;
                for f in ["uid", "creationTimestamp"] {
                    merged["metadata"][f] = old["metadata"][f].clone();
                }
                merged
            }
            None => {
                store.uid += 1;
                obj["metadata"]["uid"] = json!(format!("uid-{}", store.uid));
                obj["metadata"]["creationTimestamp"] = json!(now());
                obj
            }
        };
        store.commit(&self.events, &key, obj).unwrap_or(Value::Null)
    }

    /// Merge `status` into an object's status, as its controller would.
    pub fn patch_status(&self, plural: &str, ns: &str, name: &str, status: Value) -> Option<Value> {
        let mut store = self.lock();
        let key = (plural.to_string(), ns.to_string(), name.to_string());
        let mut obj = store.objects.get(&key)?.clone();
        let mut current = obj.get("status").cloned().unwrap_or(json!({}));
        merge_patch(&mut current, &status);
        obj["status"] = current;
        store.commit(&self.events, &key, obj)
    }

    pub fn delete(&self, plural: &str, ns: &str, name: &str) -> bool {
        let mut store = self.lock();
        let key = (plural.to_string(), ns.to_string(), name.to_string());
        store.remove(&self.events, &key)
    }

    /// Wait until `predicate` holds for the object (or its absence), polling.
    pub async fn wait_for(
        &self,
        plural: &str,
        ns: &str,
        name: &str,
        timeout: Duration,
        predicate: impl Fn(Option<&Value>) -> bool,
    ) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let obj = self.get(plural, ns, name);
            if predicate(obj.as_ref()) {
                return obj.or(Some(Value::Null));
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

const WRITE_VERBS: [&str; 5] = ["create", "update", "patch", "apply", "delete"];

fn now() -> String {
    k8s_openapi::jiff::Timestamp::now()
        .round(k8s_openapi::jiff::Unit::Second)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

/// apiVersion, kind, and namespace on a stored object.
fn complete(info: &ResourceInfo, obj: &mut Value, ns: &str) {
    if !obj.is_object() {
        *obj = json!({});
    }
    obj["apiVersion"] = json!(info.api_version());
    obj["kind"] = json!(info.kind);
    if !obj["metadata"].is_object() {
        obj["metadata"] = json!({});
    }
    if info.namespaced {
        obj["metadata"]["namespace"] = json!(ns);
    }
}

impl Store {
    fn resource_by_plural(&self, plural: &str) -> Option<ResourceInfo> {
        self.resources
            .values()
            .find(|r| r.plural == plural)
            .cloned()
    }

    /// Store an object if it differs, with a new resourceVersion and a watch event.
    fn commit(
        &mut self,
        events: &broadcast::Sender<Event>,
        key: &ObjKey,
        mut obj: Value,
    ) -> Option<Value> {
        let old = self.objects.get(key).cloned();
        if let Some(old) = &old {
            let generation = old["metadata"]["generation"].as_i64().unwrap_or(1);
            obj["metadata"]["generation"] = json!(generation);
            if without_volatile(old) == without_volatile(&obj) {
                return Some(old.clone());
            }
            // As the real registry: a Deployment's annotations are copied
            // to its ReplicaSets, so changing them moves its generation too.
            let annotations_moved = key.0 == "deployments"
                && old["metadata"]["annotations"] != obj["metadata"]["annotations"];
            if spec_part(old) != spec_part(&obj) || annotations_moved {
                obj["metadata"]["generation"] = json!(generation + 1);
            }
        } else {
            obj["metadata"]["generation"] = json!(1);
        }
        self.rv += 1;
        obj["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        self.objects.insert(key.clone(), obj.clone());
        let event = Event {
            rv: self.rv,
            plural: key.0.clone(),
            namespace: key.1.clone(),
            type_: if old.is_some() { "MODIFIED" } else { "ADDED" },
            object: obj.clone(),
        };
        self.push_event(events, event);
        Some(obj)
    }

    /// The garbage collector's other half: an object created with owner
    /// references to owners that are all gone (say, re-applied by a reconcile
    /// that raced its owner's deletion) is deleted too.
    fn collect_if_orphaned(&mut self, events: &broadcast::Sender<Event>, key: &ObjKey) {
        let Some(owners) = self.objects.get(key).and_then(|o| {
            o["metadata"]["ownerReferences"]
                .as_array()
                .filter(|refs| !refs.is_empty())
                .cloned()
        }) else {
            return;
        };
        let alive = owners.iter().any(|r| {
            self.objects
                .values()
                .any(|o| o["metadata"]["uid"] == r["uid"])
        });
        if !alive {
            self.remove(events, key);
        }
    }

    fn push_event(&mut self, events: &broadcast::Sender<Event>, event: Event) {
        self.history.push(event.clone());
        if self.history.len() > HISTORY {
            let excess = self.history.len() - HISTORY;
            self.history.drain(..excess);
        }
        let _ = events.send(event);
    }

    /// Delete an object, honouring finalizers, and its dependents.
    fn remove(&mut self, events: &broadcast::Sender<Event>, key: &ObjKey) -> bool {
        let Some(obj) = self.objects.get(key).cloned() else {
            return false;
        };
        let finalizers = obj["metadata"]["finalizers"]
            .as_array()
            .is_some_and(|f| !f.is_empty());
        if finalizers {
            if obj["metadata"]["deletionTimestamp"].is_null() {
                let mut marked = obj;
                marked["metadata"]["deletionTimestamp"] = json!(now());
                self.commit(events, key, marked);
            }
            return true;
        }
        self.objects.remove(key);
        self.owners.remove(key);
        self.rv += 1;
        let mut gone = obj.clone();
        gone["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        self.push_event(
            events,
            Event {
                rv: self.rv,
                plural: key.0.clone(),
                namespace: key.1.clone(),
                type_: "DELETED",
                object: gone,
            },
        );
        // Background garbage collection of dependents.
        if let Some(uid) = obj["metadata"]["uid"].as_str() {
            let dependents: Vec<ObjKey> = self
                .objects
                .iter()
                .filter(|(_, o)| {
                    o["metadata"]["ownerReferences"]
                        .as_array()
                        .is_some_and(|refs| refs.iter().any(|r| r["uid"] == uid))
                })
                .map(|(k, _)| k.clone())
                .collect();
            for d in dependents {
                self.remove(events, &d);
            }
        }
        true
    }
}

/// The object without what the server itself changes on every write.
fn without_volatile(obj: &Value) -> Value {
    let mut o = obj.clone();
    if let Some(m) = o.get_mut("metadata").and_then(Value::as_object_mut) {
        m.remove("resourceVersion");
        m.remove("managedFields");
        m.remove("generation");
    }
    o
}

fn spec_part(obj: &Value) -> Value {
    let mut o = obj.clone();
    if let Some(m) = o.as_object_mut() {
        m.remove("metadata");
        m.remove("status");
    }
    o
}

// --- Requests ---------------------------------------------------------------

struct Target {
    info: ResourceInfo,
    namespace: String,
    name: Option<String>,
    subresource: Option<String>,
}

fn status_body(code: u16, reason: &str, message: impl Into<String>) -> Response {
    let body = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": message.into(), "reason": reason, "code": code
    });
    (
        StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        [("content-type", "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn ok_json(code: StatusCode, v: &Value) -> Response {
    (code, [("content-type", "application/json")], v.to_string()).into_response()
}

fn not_found_box(code: u16, reason: &str, message: impl Into<String>) -> Box<Response> {
    Box::new(status_body(code, reason, message))
}

fn parse_target(store: &Store, path: &str) -> Result<Target, Box<Response>> {
    let segs: Vec<&str> = path
        .trim_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    let (group, version, rest) = match segs.as_slice() {
        ["api", v, rest @ ..] => ("", *v, rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => {
            return Err(not_found_box(
                404,
                "NotFound",
                format!("the server could not find the requested resource {path}"),
            ));
        }
    };
    let (namespace, rest) = match rest {
        ["namespaces", ns, plural, tail @ ..] => (ns.to_string(), {
            let mut v = vec![*plural];
            v.extend_from_slice(tail);
            v
        }),
        other => (String::new(), other.to_vec()),
    };
    let Some(plural) = rest.first() else {
        return Err(not_found_box(
            404,
            "NotFound",
            "the server could not find the requested resource",
        ));
    };
    let key = format!("{group}/{version}/{plural}");
    let Some(info) = store.resources.get(&key).cloned() else {
        return Err(not_found_box(
            404,
            "NotFound",
            format!("the server could not find the requested resource ({key})"),
        ));
    };
    Ok(Target {
        info,
        namespace,
        name: rest.get(1).map(|s| s.to_string()),
        subresource: rest.get(2).map(|s| s.to_string()),
    })
}

fn query_map(uri: &Uri) -> HashMap<String, String> {
    uri.query().map(url_decode_pairs).unwrap_or_default()
}

fn url_decode_pairs(q: &str) -> HashMap<String, String> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

async fn handle(
    axum::extract::State(shared): axum::extract::State<Shared>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_string();
    if path == "/version" {
        return ok_json(
            StatusCode::OK,
            &json!({"major": "1", "minor": "33", "gitVersion": "v1.33.0-fake"}),
        );
    }
    let query = query_map(&uri);
    let content_type = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();

    let (target, verb, delay) = {
        let mut store = shared.store.lock().unwrap_or_else(|p| p.into_inner());
        let target = match parse_target(&store, &path) {
            Ok(t) => t,
            Err(r) => return *r,
        };
        let watching = query.get("watch").is_some_and(|w| w == "true" || w == "1");
        let verb = match (&method, target.name.is_some()) {
            (&Method::GET, false) if watching => "watch",
            (&Method::GET, false) => "list",
            (&Method::GET, true) => "get",
            (&Method::POST, _) => "create",
            (&Method::PUT, _) => "update",
            (&Method::PATCH, _) if content_type.starts_with("application/apply-patch") => "apply",
            (&Method::PATCH, _) => "patch",
            (&Method::DELETE, _) => "delete",
            _ => return status_body(405, "MethodNotAllowed", "method not allowed"),
        };
        let resource = match &target.subresource {
            Some(s) => format!("{}/{s}", target.info.plural),
            None => target.info.plural.clone(),
        };
        *store
            .counts
            .entry((verb.to_string(), resource))
            .or_insert(0) += 1;
        // Injected faults.
        let plural = target.info.plural.clone();
        if let Some(f) = store.faults.iter_mut().find(|f| {
            f.remaining > 0
                && f.verb.as_deref().is_none_or(|v| v == verb)
                && f.resource.as_deref().is_none_or(|r| r == plural)
        }) {
            f.remaining -= 1;
            let code = f.code;
            store.faults.retain(|f| f.remaining > 0);
            let reason = match code {
                409 => "Conflict",
                404 => "NotFound",
                500 => "InternalError",
                503 => "ServiceUnavailable",
                _ => "Unknown",
            };
            return status_body(code, reason, format!("injected fault for {verb} {plural}"));
        }
        (target, verb, store.delay)
    };
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }

    if verb == "watch" {
        return watch_response(&shared, &target, &query);
    }
    let mut store = shared.store.lock().unwrap_or_else(|p| p.into_inner());
    let body: Value = if body.is_empty() {
        Value::Null
    } else {
        match serde_json::from_slice(&body).or_else(|_| serde_yaml::from_slice::<Value>(&body)) {
            Ok(v) => v,
            Err(e) => {
                return status_body(400, "BadRequest", format!("cannot decode the body: {e}"));
            }
        }
    };
    let manager = query.get("fieldManager").cloned();
    match verb {
        "list" => list(&store, &target, &query),
        "get" => get(&store, &target),
        "create" => create(&mut store, &shared.events, &target, body, manager),
        "update" => update(&mut store, &shared.events, &target, body, manager),
        "apply" => apply(
            &mut store,
            &shared.events,
            &target,
            body,
            manager,
            query.get("force").is_some_and(|f| f == "true"),
        ),
        "patch" => patch(
            &mut store,
            &shared.events,
            &target,
            body,
            manager,
            &content_type,
        ),
        "delete" => {
            let key = key_of(&target);
            match store.objects.get(&key).cloned() {
                None => not_found(&target),
                Some(obj) => {
                    store.remove(&shared.events, &key);
                    ok_json(StatusCode::OK, &obj)
                }
            }
        }
        _ => status_body(405, "MethodNotAllowed", "method not allowed"),
    }
}

fn key_of(t: &Target) -> ObjKey {
    (
        t.info.plural.clone(),
        t.namespace.clone(),
        t.name.clone().unwrap_or_default(),
    )
}

fn not_found(t: &Target) -> Response {
    status_body(
        404,
        "NotFound",
        format!(
            "{}.{} \"{}\" not found",
            t.info.plural,
            t.info.group,
            t.name.clone().unwrap_or_default()
        ),
    )
}

fn get(store: &Store, t: &Target) -> Response {
    match store.objects.get(&key_of(t)) {
        Some(o) => ok_json(StatusCode::OK, o),
        None => not_found(t),
    }
}

fn list(store: &Store, t: &Target, query: &HashMap<String, String>) -> Response {
    let selector = query.get("labelSelector").map(|s| parse_selector(s));
    let fields = query.get("fieldSelector").cloned().unwrap_or_default();
    let items: Vec<Value> = store
        .objects
        .iter()
        .filter(|((p, ns, _), o)| {
            p == &t.info.plural
                && (t.namespace.is_empty() || &t.namespace == ns)
                && selector
                    .as_ref()
                    .is_none_or(|s| s.matches(&o["metadata"]["labels"]))
                && field_matches(&fields, o)
        })
        .map(|(_, o)| o.clone())
        .collect();
    ok_json(
        StatusCode::OK,
        &json!({
            "apiVersion": t.info.api_version(),
            "kind": format!("{}List", t.info.kind),
            "metadata": {"resourceVersion": store.rv.to_string()},
            "items": items
        }),
    )
}

fn field_matches(selector: &str, o: &Value) -> bool {
    selector.split(',').filter(|s| !s.is_empty()).all(|term| {
        let (k, v, negate) = if let Some((k, v)) = term.split_once("!=") {
            (k, v, true)
        } else if let Some((k, v)) = term.split_once("==") {
            (k, v, false)
        } else if let Some((k, v)) = term.split_once('=') {
            (k, v, false)
        } else {
            return true;
        };
        let actual = match k {
            "metadata.name" => o["metadata"]["name"].as_str(),
            "metadata.namespace" => o["metadata"]["namespace"].as_str(),
            _ => return true,
        };
        (actual == Some(v)) != negate
    })
}

/// Equality- and set-based label selectors.
struct Selector(Vec<Requirement>);

enum Requirement {
    Eq(String, String),
    NotEq(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
}

fn split_terms(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut depth = 0;
    let mut cur = String::new();
    for c in s.chars() {
        match c {
            '(' => {
                depth += 1;
                cur.push(c)
            }
            ')' => {
                depth -= 1;
                cur.push(c)
            }
            ',' if depth == 0 => out.push(std::mem::take(&mut cur)),
            c => cur.push(c),
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

fn parse_selector(s: &str) -> Selector {
    let set = |v: &str| -> Vec<String> {
        v.trim()
            .trim_start_matches('(')
            .trim_end_matches(')')
            .split(',')
            .map(|x| x.trim().to_string())
            .collect()
    };
    Selector(
        split_terms(s)
            .into_iter()
            .map(|t| {
                let t = t.trim().to_string();
                if let Some((k, v)) = t.split_once(" notin ") {
                    Requirement::NotIn(k.trim().into(), set(v))
                } else if let Some((k, v)) = t.split_once(" in ") {
                    Requirement::In(k.trim().into(), set(v))
                } else if let Some((k, v)) = t.split_once("!=") {
                    Requirement::NotEq(k.trim().into(), v.trim().into())
                } else if let Some((k, v)) = t.split_once("==") {
                    Requirement::Eq(k.trim().into(), v.trim().into())
                } else if let Some((k, v)) = t.split_once('=') {
                    Requirement::Eq(k.trim().into(), v.trim().into())
                } else if let Some(k) = t.strip_prefix('!') {
                    Requirement::NotExists(k.trim().into())
                } else {
                    Requirement::Exists(t)
                }
            })
            .collect(),
    )
}

impl Selector {
    fn matches(&self, labels: &Value) -> bool {
        let get = |k: &str| labels.get(k).and_then(Value::as_str);
        self.0.iter().all(|r| match r {
            Requirement::Eq(k, v) => get(k) == Some(v.as_str()),
            Requirement::NotEq(k, v) => get(k) != Some(v.as_str()),
            Requirement::In(k, vs) => get(k).is_some_and(|x| vs.iter().any(|v| v == x)),
            Requirement::NotIn(k, vs) => get(k).is_none_or(|x| !vs.iter().any(|v| v == x)),
            Requirement::Exists(k) => get(k).is_some(),
            Requirement::NotExists(k) => get(k).is_none(),
        })
    }
}

fn create(
    store: &mut Store,
    events: &broadcast::Sender<Event>,
    t: &Target,
    mut body: Value,
    manager: Option<String>,
) -> Response {
    if !body.is_object() {
        return status_body(400, "BadRequest", "the body must be an object");
    }
    let name = match body["metadata"]["name"].as_str() {
        Some(n) if !n.is_empty() => n.to_string(),
        _ => match body["metadata"]["generateName"].as_str() {
            Some(prefix) => {
                store.uid += 1;
                format!("{prefix}{:05x}", store.uid)
            }
            None => return status_body(422, "Invalid", "metadata.name: Required value"),
        },
    };
    let ns = if t.info.namespaced {
        body["metadata"]["namespace"]
            .as_str()
            .filter(|n| !n.is_empty())
            .map(String::from)
            .unwrap_or_else(|| t.namespace.clone())
    } else {
        String::new()
    };
    let key = (t.info.plural.clone(), ns.clone(), name.clone());
    if store.objects.contains_key(&key) {
        return status_body(
            409,
            "AlreadyExists",
            format!(
                "{}.{} \"{name}\" already exists",
                t.info.plural, t.info.group
            ),
        );
    }
    complete(&t.info, &mut body, &ns);
    body["metadata"]["name"] = json!(name);
    store.uid += 1;
    body["metadata"]["uid"] = json!(format!("uid-{}", store.uid));
    body["metadata"]["creationTimestamp"] = json!(now());
    if let Some(m) = body["metadata"].as_object_mut() {
        m.remove("resourceVersion");
    }
    let manager = manager.unwrap_or_else(|| "unknown".into());
    let paths = leaf_paths(&strip_system(&body));
    store
        .owners
        .entry(key.clone())
        .or_default()
        .insert(manager, paths);
    match store.commit(events, &key, body) {
        Some(o) => {
            store.collect_if_orphaned(events, &key);
            ok_json(StatusCode::CREATED, &o)
        }
        None => status_body(500, "InternalError", "commit failed"),
    }
}

/// Apply the status/main split of a subresource write onto the current object.
fn split_write(t: &Target, current: &Value, mut desired: Value) -> Value {
    if !t.info.has_status {
        return desired;
    }
    if t.subresource.as_deref() == Some("status") {
        let mut out = current.clone();
        out["status"] = desired.get("status").cloned().unwrap_or(Value::Null);
        if out["status"].is_null() {
            out.as_object_mut().map(|m| m.remove("status"));
        }
        out
    } else {
        match current.get("status") {
            Some(s) => desired["status"] = s.clone(),
            None => {
                desired.as_object_mut().map(|m| m.remove("status"));
            }
        }
        desired
    }
}

fn keep_system(current: &Value, desired: &mut Value) {
    for f in [
        "uid",
        "creationTimestamp",
        "name",
        "namespace",
        "deletionTimestamp",
    ] {
        if let Some(v) = current["metadata"].get(f) {
            desired["metadata"][f] = v.clone();
        }
    }
}

fn update(
    store: &mut Store,
    events: &broadcast::Sender<Event>,
    t: &Target,
    body: Value,
    manager: Option<String>,
) -> Response {
    let key = key_of(t);
    let Some(current) = store.objects.get(&key).cloned() else {
        return not_found(t);
    };
    if let Some(rv) = body["metadata"]["resourceVersion"].as_str()
        && current["metadata"]["resourceVersion"].as_str() != Some(rv)
    {
        return status_body(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} \"{}\": the object has been modified; please apply your changes to the latest version and try again",
                t.info.plural, key.2
            ),
        );
    }
    let mut desired = body;
    complete(&t.info, &mut desired, &key.1);
    keep_system(&current, &mut desired);
    let desired = split_write(t, &current, desired);
    take_ownership(
        store,
        &key,
        &current,
        &desired,
        manager.as_deref().unwrap_or("unknown"),
    );
    finish(store, events, &key, desired, t)
}

fn finish(
    store: &mut Store,
    events: &broadcast::Sender<Event>,
    key: &ObjKey,
    obj: Value,
    t: &Target,
) -> Response {
    match store.commit(events, key, obj) {
        Some(o) => {
            // Finalizers removed from an object being deleted: it goes now.
            if !o["metadata"]["deletionTimestamp"].is_null()
                && o["metadata"]["finalizers"]
                    .as_array()
                    .is_none_or(|f| f.is_empty())
            {
                store.remove(events, key);
            }
            ok_json(StatusCode::OK, &o)
        }
        None => not_found(t),
    }
}

fn patch(
    store: &mut Store,
    events: &broadcast::Sender<Event>,
    t: &Target,
    body: Value,
    manager: Option<String>,
    content_type: &str,
) -> Response {
    let key = key_of(t);
    let Some(current) = store.objects.get(&key).cloned() else {
        return not_found(t);
    };
    let mut desired = current.clone();
    if content_type.starts_with("application/json-patch") {
        if let Err(e) = json_patch(&mut desired, &body) {
            return status_body(
                422,
                "Invalid",
                format!("the JSON patch cannot be applied: {e}"),
            );
        }
    } else {
        merge_patch(&mut desired, &body);
    }
    complete(&t.info, &mut desired, &key.1);
    keep_system(&current, &mut desired);
    let desired = split_write(t, &current, desired);
    take_ownership(
        store,
        &key,
        &current,
        &desired,
        manager.as_deref().unwrap_or("unknown"),
    );
    finish(store, events, &key, desired, t)
}

/// An Update operation: the fields it changed now belong to its manager.
fn take_ownership(
    store: &mut Store,
    key: &ObjKey,
    current: &Value,
    desired: &Value,
    manager: &str,
) {
    let before = leaf_values(&strip_system(current));
    let after = leaf_values(&strip_system(desired));
    let owners = store.owners.entry(key.clone()).or_default();
    let changed: Vec<String> = after
        .iter()
        .filter(|(p, v)| before.get(*p) != Some(v))
        .map(|(p, _)| p.clone())
        .collect();
    let removed: Vec<String> = before
        .keys()
        .filter(|p| !after.contains_key(*p))
        .cloned()
        .collect();
    for set in owners.values_mut() {
        for p in changed.iter().chain(&removed) {
            set.remove(p);
        }
    }
    owners
        .entry(manager.to_string())
        .or_default()
        .extend(changed);
}

fn apply(
    store: &mut Store,
    events: &broadcast::Sender<Event>,
    t: &Target,
    body: Value,
    manager: Option<String>,
    force: bool,
) -> Response {
    let Some(manager) = manager.filter(|m| !m.is_empty()) else {
        return status_body(
            400,
            "BadRequest",
            "PATCH with application/apply-patch+yaml requires fieldManager",
        );
    };
    if !body.is_object() {
        return status_body(
            400,
            "BadRequest",
            "the applied configuration must be an object",
        );
    }
    let key = key_of(t);
    let status_only = t.subresource.as_deref() == Some("status");
    let mut applied = strip_system(&body);
    if t.info.has_status {
        let m = applied.as_object_mut().expect("object");
        if status_only {
            m.retain(|k, _| k == "status" || k == "apiVersion" || k == "kind");
        } else {
            m.remove("status");
        }
    }
    let current = store.objects.get(&key).cloned();
    let is_new = current.is_none();
    let mut obj = current
        .clone()
        .unwrap_or_else(|| json!({"metadata": {"name": key.2.clone()}}));
    let new_paths = leaf_values(&applied);
    let current_values = leaf_values(&strip_system(&obj));
    let owners = store.owners.entry(key.clone()).or_default();

    // Conflicts: another manager owns a field this apply sets to something else.
    let mut conflicts = Vec::new();
    for (path, value) in &new_paths {
        let differs = current_values.get(path).is_some_and(|cur| cur != value);
        if !differs {
            continue;
        }
        for (other, set) in owners.iter() {
            if other != &manager && set.contains(path) {
                conflicts.push(format!(
                    "conflict with \"{other}\": {}",
                    path.replace('\u{1f}', ".")
                ));
            }
        }
    }
    if !conflicts.is_empty() && !force {
        return status_body(
            409,
            "Conflict",
            format!(
                "Apply failed with {} conflicts: {}",
                conflicts.len(),
                conflicts.join("; ")
            ),
        );
    }
    if force {
        for (other, set) in owners.iter_mut() {
            if other != &manager {
                set.retain(|p| !new_paths.contains_key(p));
            }
        }
    }
    // Fields this manager applied before but not now go, unless someone else owns them.
    let scope_ok = |p: &str| {
        let is_status = p.starts_with("status\u{1f}") || p == "status";
        !t.info.has_status || (is_status == status_only)
    };
    let previous: BTreeSet<String> = owners.get(&manager).cloned().unwrap_or_default();
    for p in previous
        .iter()
        .filter(|p| scope_ok(p) && !new_paths.contains_key(*p))
    {
        let owned_elsewhere = owners.iter().any(|(m, s)| m != &manager && s.contains(p));
        if !owned_elsewhere {
            remove_path(&mut obj, p);
        }
    }
    let mut mine: BTreeSet<String> = previous.into_iter().filter(|p| !scope_ok(p)).collect();
    mine.extend(new_paths.keys().cloned());
    owners.insert(manager, mine);
    deep_merge(&mut obj, &applied);
    complete(&t.info, &mut obj, &key.1);
    if is_new {
        if t.info.has_status && status_only {
            return not_found(t);
        }
        store.uid += 1;
        obj["metadata"]["uid"] = json!(format!("uid-{}", store.uid));
        obj["metadata"]["creationTimestamp"] = json!(now());
        return match store.commit(events, &key, obj) {
            Some(o) => {
                store.collect_if_orphaned(events, &key);
                ok_json(StatusCode::CREATED, &o)
            }
            None => not_found(t),
        };
    }
    finish(store, events, &key, obj, t)
}

/// The object without server-set metadata (owned by nobody).
fn strip_system(obj: &Value) -> Value {
    let mut o = obj.clone();
    if let Some(m) = o.get_mut("metadata").and_then(Value::as_object_mut) {
        for f in [
            "resourceVersion",
            "uid",
            "creationTimestamp",
            "generation",
            "managedFields",
            "deletionTimestamp",
            "namespace",
            "name",
        ] {
            m.remove(f);
        }
        if m.is_empty() {
            o.as_object_mut().map(|x| x.remove("metadata"));
        }
    }
    if let Some(m) = o.as_object_mut() {
        m.remove("apiVersion");
        m.remove("kind");
    }
    o
}

fn leaf_paths(v: &Value) -> BTreeSet<String> {
    leaf_values(v).into_keys().collect()
}

/// Leaf fields: scalars, lists (atomic) and empty objects, by path.
fn leaf_values(v: &Value) -> BTreeMap<String, Value> {
    fn walk(v: &Value, prefix: &str, out: &mut BTreeMap<String, Value>) {
        match v {
            Value::Object(m) if !m.is_empty() => {
                for (k, child) in m {
                    let p = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}\u{1f}{k}")
                    };
                    walk(child, &p, out);
                }
            }
            other if !prefix.is_empty() => {
                out.insert(prefix.to_string(), other.clone());
            }
            _ => {}
        }
    }
    let mut out = BTreeMap::new();
    walk(v, "", &mut out);
    out
}

fn remove_path(obj: &mut Value, path: &str) {
    let parts: Vec<&str> = path.split('\u{1f}').collect();
    fn go(v: &mut Value, parts: &[&str]) {
        let Some(m) = v.as_object_mut() else { return };
        match parts {
            [last] => {
                m.remove(*last);
            }
            [first, rest @ ..] => {
                if let Some(child) = m.get_mut(*first) {
                    go(child, rest);
                    if child.as_object().is_some_and(Map::is_empty) {
                        m.remove(*first);
                    }
                }
            }
            [] => {}
        }
    }
    go(obj, &parts);
}

/// Server-side apply's merge: maps merge, everything else is replaced.
fn deep_merge(base: &mut Value, patch: &Value) {
    match (base, patch) {
        (Value::Object(b), Value::Object(p)) => {
            for (k, v) in p {
                match b.get_mut(k) {
                    Some(existing) if existing.is_object() && v.is_object() => {
                        deep_merge(existing, v)
                    }
                    _ => {
                        b.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (b, p) => *b = p.clone(),
    }
}

/// RFC 7386 JSON merge patch.
fn merge_patch(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = json!({});
            }
            let t = target.as_object_mut().expect("object");
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        other => *target = other.clone(),
    }
}

/// RFC 6902 JSON patch (add, remove, replace, test).
fn json_patch(target: &mut Value, ops: &Value) -> Result<(), String> {
    let ops = ops.as_array().ok_or("a JSON patch is a list")?;
    for op in ops {
        let path = op["path"].as_str().ok_or("op without path")?;
        let pointer_parent = path.rsplit_once('/').map(|(p, _)| p).unwrap_or("");
        let last = path
            .rsplit('/')
            .next()
            .unwrap_or("")
            .replace("~1", "/")
            .replace("~0", "~");
        match op["op"].as_str() {
            Some("test") => {
                if target.pointer(path) != Some(&op["value"]) {
                    return Err(format!("test failed at {path}"));
                }
            }
            Some("remove") => {
                let parent = target
                    .pointer_mut(pointer_parent)
                    .ok_or(format!("no {pointer_parent}"))?;
                match parent {
                    Value::Object(m) => {
                        m.remove(&last).ok_or(format!("no {path}"))?;
                    }
                    Value::Array(a) => {
                        let i: usize = last.parse().map_err(|_| format!("bad index {last}"))?;
                        if i >= a.len() {
                            return Err(format!("no {path}"));
                        }
                        a.remove(i);
                    }
                    _ => return Err(format!("cannot remove {path}")),
                }
            }
            Some("add") | Some("replace") => {
                let value = op["value"].clone();
                let parent = target
                    .pointer_mut(pointer_parent)
                    .ok_or(format!("no {pointer_parent}"))?;
                match parent {
                    Value::Object(m) => {
                        m.insert(last, value);
                    }
                    Value::Array(a) if last == "-" => a.push(value),
                    Value::Array(a) => {
                        let i: usize = last.parse().map_err(|_| format!("bad index {last}"))?;
                        if op["op"] == "add" && i <= a.len() {
                            a.insert(i, value);
                        } else if i < a.len() {
                            a[i] = value;
                        } else {
                            return Err(format!("index {i} out of range"));
                        }
                    }
                    _ => return Err(format!("cannot set {path}")),
                }
            }
            other => return Err(format!("unsupported op {other:?}")),
        }
    }
    Ok(())
}

fn watch_response(shared: &Shared, t: &Target, query: &HashMap<String, String>) -> Response {
    let selector = query.get("labelSelector").map(|s| parse_selector(s));
    let fields = query.get("fieldSelector").cloned().unwrap_or_default();
    let since: u64 = query
        .get("resourceVersion")
        .and_then(|r| r.parse().ok())
        .unwrap_or(0);
    let timeout = query
        .get("timeoutSeconds")
        .and_then(|s| s.parse().ok())
        .map(Duration::from_secs)
        .unwrap_or(Duration::from_secs(300));
    let plural = t.info.plural.clone();
    let namespace = t.namespace.clone();
    // Subscribe before reading history so nothing falls in between.
    let mut live = shared.events.subscribe();
    let (backlog, expired) = {
        let store = shared.store.lock().unwrap_or_else(|p| p.into_inner());
        let oldest = store.history.first().map_or(store.rv + 1, |e| e.rv);
        let expired = since > 0 && since + 1 < oldest;
        let backlog: Vec<Event> = if since == 0 {
            // rv 0 or none: the current state as ADDED events, then changes.
            store
                .objects
                .iter()
                .filter(|((p, _, _), _)| p == &plural)
                .map(|((p, ns, _), o)| Event {
                    rv: o["metadata"]["resourceVersion"]
                        .as_str()
                        .and_then(|r| r.parse().ok())
                        .unwrap_or(0),
                    plural: p.clone(),
                    namespace: ns.clone(),
                    type_: "ADDED",
                    object: o.clone(),
                })
                .collect()
        } else {
            store
                .history
                .iter()
                .filter(|e| e.rv > since)
                .cloned()
                .collect()
        };
        (backlog, expired)
    };
    let mut epoch = shared.watch_epoch.clone();
    epoch.mark_unchanged();
    let relevant = move |e: &Event| {
        e.plural == plural
            && (namespace.is_empty() || e.namespace == namespace)
            && selector
                .as_ref()
                .is_none_or(|s| s.matches(&e.object["metadata"]["labels"]))
            && field_matches(&fields, &e.object)
    };
    let line = |type_: &str, object: &Value| {
        Ok::<Bytes, std::io::Error>(Bytes::from(format!(
            "{}\n",
            json!({"type": type_, "object": object})
        )))
    };
    let stream = async_stream(
        move |tx: tokio::sync::mpsc::Sender<Result<Bytes, std::io::Error>>| async move {
            if expired {
                let status = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                "message": format!("too old resource version: {since}"), "reason": "Expired", "code": 410});
                let _ = tx.send(line("ERROR", &status)).await;
                return;
            }
            let mut last = since;
            for e in backlog.iter().filter(|e| relevant(e)) {
                last = last.max(e.rv);
                if tx.send(line(e.type_, &e.object)).await.is_err() {
                    return;
                }
            }
            let deadline = tokio::time::sleep(timeout);
            tokio::pin!(deadline);
            loop {
                tokio::select! {
                    _ = &mut deadline => return,
                    _ = epoch.changed() => return,
                    ev = live.recv() => match ev {
                        Ok(e) if e.rv > last && relevant(&e) => {
                            last = e.rv;
                            if tx.send(line(e.type_, &e.object)).await.is_err() {
                                return;
                            }
                        }
                        Ok(_) => {}
                        Err(broadcast::error::RecvError::Lagged(_)) => return,
                        Err(broadcast::error::RecvError::Closed) => return,
                    }
                }
            }
        },
    );
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/json")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| status_body(500, "InternalError", "stream"))
}

/// A stream fed by a task writing into a channel.
fn async_stream<F, Fut>(f: F) -> impl futures::Stream<Item = Result<Bytes, std::io::Error>>
where
    F: FnOnce(tokio::sync::mpsc::Sender<Result<Bytes, std::io::Error>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(256);
    tokio::spawn(f(tx));
    futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    })
    .boxed()
}
