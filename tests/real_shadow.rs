//! Shadow (mirrored) traffic on a real API server, with the Gateway API CRDs:
//! a `setMirror` step makes the operator write an HTTPRoute `RequestMirror`
//! filter to the new revision while stable keeps every request. The test's
//! load generator plays the gateway: it sends each request by the stored
//! route's weights and copies a share of them to the mirror's Service,
//! throwing the copy's answer away. So the stories assert what users got
//! (every answer from v1 while shadowed), what the shadow got (copies), the
//! route as stored, and the pods each revision runs, not only status.
//!
//! The small story scaffolding is a trimmed copy of `tests/real_rollouts.rs`.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use modeldeploy::api::ModelDeployment;
use serde_json::{Value, json};
use support::envtest::{ControlPlane, control_plane, poll};
use support::kubelet::{LoadHandle, LoadOptions, RunningPod};
use support::real_operator::{OperatorOptions, RealOperator};

/// Generous: CI machines are loaded. Nothing asserts on speed.
const WAIT: Duration = Duration::from_secs(180);
const NAME: &str = "scorer";
const REPLICAS: i32 = 2;

/// One story: a namespace, the operator watching it, and load through the
/// stored HTTPRoute.
struct Story {
    cp: &'static ControlPlane,
    ns: String,
    op: RealOperator,
    api: Api<ModelDeployment>,
    load: LoadHandle,
    routes: RouteLog,
}

/// What the route said, sampled every 100 ms: (stable weight, canary weight,
/// mirrored Service and percent), each change once.
type Shares = (i64, i64, Option<(String, i64)>);

#[derive(Clone, Default)]
struct RouteLog(Arc<Mutex<Vec<Shares>>>);

impl RouteLog {
    fn seen(&self) -> Vec<Shares> {
        self.0.lock().unwrap().clone()
    }
}

fn routes_api(client: kube::Client, ns: &str) -> Api<DynamicObject> {
    Api::namespaced_with(
        client,
        ns,
        &kube::api::ApiResource::from_gvk(&kube::api::GroupVersionKind::gvk(
            "gateway.networking.k8s.io",
            "v1",
            "HTTPRoute",
        )),
    )
}

/// The one rule's shares of the stored route.
fn shares(route: &DynamicObject) -> Shares {
    let rules = route.data["spec"]["rules"].as_array().unwrap();
    assert_eq!(rules.len(), 1, "one rule: {rules:?}");
    let weight = |name: &str| {
        rules[0]["backendRefs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|b| b["name"] == name)
            .map_or(-1, |b| b["weight"].as_i64().unwrap_or(1))
    };
    let mirrors: Vec<&Value> = rules[0]["filters"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|f| f["type"] == "RequestMirror")
        .collect();
    assert!(mirrors.len() <= 1, "{mirrors:?}");
    let mirror = mirrors.first().map(|f| {
        let m = &f["requestMirror"];
        assert_eq!(m["backendRef"]["port"], 8080, "{m}");
        (
            m["backendRef"]["name"].as_str().unwrap().to_string(),
            m["percent"].as_i64().unwrap(),
        )
    });
    (weight("scorer-stable"), weight("scorer-canary"), mirror)
}

fn model(version: &str, env: &[(&str, &str)]) -> Value {
    json!({
        "version": version,
        "image": format!("modeldeploy-demo:{version}"),
        "command": ["/usr/local/bin/modeldeploy-demo"],
        "args": ["serve"],
        "port": 8080,
        "env": env.iter().map(|(k, v)| json!({"name": k, "value": v})).collect::<Vec<_>>(),
    })
}

/// Copies of every request to the new revision, judged three times; then
/// half the live traffic, judged again.
fn shadow_rollout() -> Value {
    json!({
        "strategy": "canary",
        "traffic": {"router": "gatewayAPI", "gatewayAPI": {
            "parentRefs": [{"name": "public", "namespace": "gateways"}],
            "hostnames": ["scorer.example"]}},
        "steps": [{"setMirror": {"percent": 100}}, {"analysis": {"passes": 3}},
                  {"setWeight": 50}, {"analysis": {}}],
        "scaleDownDelay": "2s",
        "progressDeadline": "2m",
        "analysis": {
            "interval": "2s",
            "failureLimit": 2,
            "inconclusiveLimit": 6,
            "minSamples": 40,
            "checks": [{"name": "errors", "errorRate": {"max": 0.01}}],
        },
    })
}

/// The model's Ready pods with a process.
fn serving(cp: &ControlPlane, ns: &str) -> Vec<RunningPod> {
    cp.kubelet()
        .running(ns)
        .into_iter()
        .filter(|p| p.ready && !p.status_only)
        .filter(|p| p.labels.get("modeldeploy.io/name").map(String::as_str) == Some(NAME))
        .collect()
}

fn version_of(p: &RunningPod) -> &str {
    p.labels["modeldeploy.io/version"].as_str()
}

impl Story {
    /// v1 stable behind the route, under load through it, the route sampled.
    async fn stable(prefix: &str) -> Option<Story> {
        let cp = control_plane()?;
        cp.install_crds().await;
        if !cp.install_gateway_api().await {
            return None;
        }
        let ns = cp.namespace(prefix).await;
        let op = RealOperator::start(cp, OperatorOptions::watching(&[&ns])).await?;
        op.wait_ready(WAIT).await;
        let api: Api<ModelDeployment> = Api::namespaced(cp.admin().await, &ns);
        let md: ModelDeployment = serde_json::from_value(json!({
            "apiVersion": "modeldeploy.io/v1alpha1",
            "kind": "ModelDeployment",
            "metadata": {"name": NAME, "namespace": ns},
            "spec": {
                "model": model("1.0.0", &[]),
                "replicas": REPLICAS,
                "resources": {"requests": {"cpu": "100m", "memory": "64Mi"},
                              "limits": {"cpu": "1", "memory": "256Mi"}},
                "rollout": shadow_rollout(),
            }
        }))
        .unwrap();
        api.create(&PostParams::default(), &md).await.unwrap();
        let routes = RouteLog::default();
        let story = Story {
            cp,
            op,
            api,
            load: cp
                .kubelet()
                .load_weighted(&ns, NAME, LoadOptions::rps(40.0))
                .await,
            routes: routes.clone(),
            ns,
        };
        story.until("v1 stable", |s| s["phase"] == "Stable").await;
        story.pods(&[("1.0.0", REPLICAS as usize)]).await;
        let api = routes_api(cp.admin().await, &story.ns);
        tokio::spawn(async move {
            loop {
                if let Ok(Some(r)) = api.get_opt(NAME).await {
                    let now = shares(&r);
                    let mut log = routes.0.lock().unwrap();
                    if log.last() != Some(&now) {
                        log.push(now);
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        Some(story)
    }

    async fn release(&self, version: &str, env: &[(&str, &str)]) {
        self.api
            .patch(
                NAME,
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"model": model(version, env)}})),
            )
            .await
            .unwrap();
    }

    async fn route(&self) -> Shares {
        let api = routes_api(self.cp.admin().await, &self.ns);
        shares(&api.get(NAME).await.unwrap())
    }

    async fn until(&self, what: &str, check: impl Fn(&Value) -> bool) -> Value {
        let md = self.until_md(what, check).await;
        serde_json::to_value(md.status.unwrap_or_default()).unwrap()
    }

    /// The object, once its status passes `check`.
    async fn until_md(&self, what: &str, check: impl Fn(&Value) -> bool) -> ModelDeployment {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let md = self.api.get(NAME).await.unwrap();
            let s = serde_json::to_value(md.status.clone().unwrap_or_default()).unwrap();
            if check(&s) {
                return md;
            }
            if tokio::time::Instant::now() >= deadline {
                self.op.print_log_tail(60);
                panic!("timed out waiting for {what}; status: {s:#}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Until the serving pods are exactly these many of each version.
    async fn pods(&self, want: &[(&str, usize)]) -> Vec<RunningPod> {
        let (cp, ns) = (self.cp, self.ns.clone());
        poll(&format!("Ready pods {want:?}"), WAIT, || {
            let pods = serving(cp, &ns);
            let total: usize = want.iter().map(|(_, n)| n).sum();
            let ok = pods.len() == total
                && want
                    .iter()
                    .all(|(v, n)| pods.iter().filter(|p| version_of(p) == *v).count() == *n);
            async move { ok.then_some(pods) }
        })
        .await
    }

    /// The shadow phase, as status, the stored route, the pods and the
    /// plugin show it. Read at once when status first says so: a bad shadow
    /// is rolled back within a few analysis intervals.
    async fn assert_shadowed(&self) {
        let md = self
            .until_md("the shadow gets copies", |s| s["canary"]["mirror"] == 100)
            .await;
        // The shadow carries the copies: as many pods as all traffic needs,
        // beside a whole stable. Its pods were available before the copies
        // started.
        let pods = serving(self.cp, &self.ns);
        let count = |v: &str| pods.iter().filter(|p| version_of(p) == v).count();
        assert_eq!(
            (count("1.0.0"), count("2.0.0")),
            (REPLICAS as usize, REPLICAS as usize),
            "{pods:?}"
        );
        for p in pods.iter().filter(|p| version_of(p) == "2.0.0") {
            assert_eq!(p.image, "modeldeploy-demo:2.0.0");
            assert_eq!(
                p.env.get("MODEL_VERSION").map(String::as_str),
                Some("2.0.0")
            );
        }
        let s = serde_json::to_value(md.status.as_ref().unwrap()).unwrap();
        assert_eq!(s["canary"]["weight"], 0, "{s:#}");
        assert_eq!(s["canary"]["setMirror"], 100, "{s:#}");
        let message = s["message"].as_str().unwrap_or_default();
        assert!(message.contains("shadowed"), "{message}");
        let shown = modeldeploy::cli::render_status(&md);
        println!("{shown}");
        assert!(
            shown.contains("weight 0%") && shown.contains("shadowed: gets a copy of 100%"),
            "{shown}"
        );
        // Every request to stable, a copy of each to the canary: the route
        // was applied before the status said so.
        let copying = (100, 0, Some(("scorer-canary".to_string(), 100)));
        poll("the stored route with the mirror filter", WAIT, || {
            let seen = self.routes.seen().contains(&copying);
            async move { seen.then_some(()) }
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_shadow_is_rolled_back_while_every_user_request_is_answered_by_v1() {
    let Some(story) = Story::stable("shadow-bad").await else {
        return;
    };
    assert_eq!(story.route().await, (100, 0, None));
    story.release("2.0.0", &[("ERROR_RATE", "0.2")]).await;
    story.assert_shadowed().await;
    let s = story
        .until("rolled back", |s| s["phase"] == "RolledBack")
        .await;
    assert_eq!(s["stable"]["version"], "1.0.0", "{s:#}");
    let last = &s["history"][1];
    assert_eq!(last["outcome"], "RolledBack", "{s:#}");
    let reason = last["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("errors") && reason.contains("as a shadow"),
        "{reason}"
    );
    story.pods(&[("1.0.0", REPLICAS as usize)]).await;
    poll("the copies end", WAIT, || {
        let r = story.route();
        async move { (r.await == (100, 0, None)).then_some(()) }
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;

    let stats = story.load.stats();
    let users = stats.by_version();
    assert!(
        !users.contains_key("2.0.0") && users["1.0.0"] > 100,
        "users got answers from {users:?}"
    );
    let copies: u64 = stats.mirrored.values().flat_map(|v| v.values()).sum();
    let copy_errors: u64 = stats.mirror_errors.values().sum();
    assert!(
        stats
            .mirrored
            .values()
            .all(|v| v.keys().all(|k| k == "2.0.0")),
        "{:?}",
        stats.mirrored
    );
    assert!(
        copies >= 40 && copy_errors > 0,
        "the shadow was judged on its copies: {copies} answered, {copy_errors} failed"
    );
    // No user request failed for the shadow's faults: user errors come only
    // from v1 pods (if any), never from a v2 pod.
    let v2_pods: Vec<&String> = stats.mirrored.keys().collect();
    assert!(
        stats.errors.keys().all(|p| !v2_pods.contains(&p)),
        "users met the shadow's errors: {:?}",
        stats.errors
    );
    let seen = story.routes.seen();
    assert!(
        seen.iter()
            .all(|(stable, canary, _)| (*stable, *canary) == (100, 0)),
        "the route never gave the shadow live traffic: {seen:?}"
    );
    assert!(
        seen.contains(&(100, 0, Some(("scorer-canary".into(), 100)))),
        "{seen:?}"
    );
    println!(
        "bad shadow: users {users:?}, copies {copies} answered / {copy_errors} failed, route {seen:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_good_shadow_goes_on_to_live_traffic_and_is_promoted() {
    let Some(story) = Story::stable("shadow-good").await else {
        return;
    };
    story.release("2.0.0", &[]).await;
    story.assert_shadowed().await;
    let while_shadowed = story.load.stats();
    assert!(
        !while_shadowed.by_version().contains_key("2.0.0"),
        "{:?}",
        while_shadowed.by_version()
    );
    let s = story
        .until("live traffic after the shadow passed", |s| {
            s["canary"]["weight"] == 50
        })
        .await;
    assert_eq!(s["canary"]["mirror"], Value::Null, "copies end: {s:#}");
    assert_eq!(story.route().await.2, None);
    story
        .pods(&[("1.0.0", REPLICAS as usize), ("2.0.0", 1)])
        .await;
    let s = story
        .until("v2 promoted", |s| {
            s["phase"] == "Stable" && s["stable"]["version"] == "2.0.0"
        })
        .await;
    let outcomes: Vec<&str> = s["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes, ["Deployed", "Promoted"]);
    story.pods(&[("2.0.0", REPLICAS as usize)]).await;
    assert_eq!(story.route().await, (100, 0, None));

    let stats = story.load.stats();
    assert!(stats.by_version().get("2.0.0").copied().unwrap_or(0) > 0);
    let copies: u64 = stats.mirrored.values().flat_map(|v| v.values()).sum();
    assert!(copies >= 40, "{copies} copies answered");
    // The route went: no copies, copies with no live traffic, live traffic
    // without copies; never copies and live traffic at once.
    let seen = story.routes.seen();
    assert!(
        seen.iter()
            .all(|(_, canary, m)| *canary == 0 || m.is_none()),
        "{seen:?}"
    );
    let first_copy = seen.iter().position(|(_, _, m)| m.is_some()).unwrap();
    let first_live = seen.iter().position(|(_, c, _)| *c > 0).unwrap();
    assert!(first_copy < first_live, "{seen:?}");
    println!(
        "good shadow: users {:?}, copies {copies}, route {seen:?}",
        stats.by_version()
    );
}
