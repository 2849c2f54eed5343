//! The real-tier rollout story: a namespace, the operator binary watching it
//! under the chart's RBAC, v1 of the demo model stable under load, and the
//! assertions on what the pods run. Shared by the real-tier test binaries.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use modeldeploy::api::ModelDeployment;
use serde_json::{Value, json};

use super::envtest::{ControlPlane, control_plane, poll};
use super::kubelet::{LoadHandle, LoadOptions, RunningPod};
use super::real_operator::{OperatorOptions, RealOperator};

/// Generous: CI machines are loaded. Nothing asserts on speed.
pub const WAIT: Duration = Duration::from_secs(180);
pub const NAME: &str = "scorer";
/// Env switches of the demo server that make a version bad on purpose.
pub const SWITCHES: [&str; 4] = [
    "ERROR_RATE",
    "PREDICTION_SHIFT",
    "CRASH_AFTER",
    "LATENCY_MS",
];

/// One story: a namespace, the operator watching it, and a load like a
/// Service's on the model's Ready pods.
pub struct Story {
    pub cp: &'static ControlPlane,
    pub ns: String,
    pub op: RealOperator,
    pub api: Api<ModelDeployment>,
    pub replicas: i32,
    /// What each version's pods must run: the switches in their env.
    pub revisions: BTreeMap<String, Vec<(String, String)>>,
    pub load: Option<LoadHandle>,
    /// Through the HTTPRoute instead of a Service (the gatewayAPI router).
    pub routed: bool,
    pub capacity: Capacity,
}

/// The fewest Ready model pods seen since `armed`, sampled from the kubelet.
#[derive(Clone)]
pub struct Capacity {
    pub armed: Arc<AtomicBool>,
    pub fewest: Arc<AtomicI64>,
    pub stop: Arc<AtomicBool>,
}

impl Capacity {
    pub fn watch(cp: &'static ControlPlane, ns: &str) -> Self {
        let c = Capacity {
            armed: Arc::new(AtomicBool::new(false)),
            fewest: Arc::new(AtomicI64::new(i64::MAX)),
            stop: Arc::new(AtomicBool::new(false)),
        };
        let (me, ns) = (c.clone(), ns.to_string());
        std::thread::spawn(move || {
            while !me.stop.load(Ordering::SeqCst) {
                if me.armed.load(Ordering::SeqCst) {
                    let ready = serving(cp, &ns).len() as i64;
                    me.fewest.fetch_min(ready, Ordering::SeqCst);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        c
    }

    pub fn fewest(&self) -> i64 {
        self.fewest.load(Ordering::SeqCst)
    }
}

impl Drop for Story {
    fn drop(&mut self) {
        self.capacity.stop.store(true, Ordering::SeqCst);
    }
}

/// The model's Ready pods with a process: what the Service sends traffic to.
pub fn serving(cp: &ControlPlane, ns: &str) -> Vec<RunningPod> {
    cp.kubelet()
        .running(ns)
        .into_iter()
        .filter(|p| p.ready && !p.status_only)
        .filter(|p| p.labels.get("modeldeploy.io/name").map(String::as_str) == Some(NAME))
        .collect()
}

pub fn image(version: &str) -> String {
    format!("modeldeploy-demo:{version}")
}

pub fn env_list(env: &[(&str, &str)]) -> Value {
    Value::Array(
        env.iter()
            .map(|(k, v)| json!({"name": k, "value": v}))
            .collect(),
    )
}

/// The model part of the spec for `version` with these switches.
pub fn model(version: &str, env: &[(&str, &str)]) -> Value {
    json!({
        "version": version,
        "image": image(version),
        "command": ["/usr/local/bin/modeldeploy-demo"],
        "args": ["serve"],
        "port": 8080,
        "env": env_list(env),
    })
}

pub fn canary(checks: Value, steps: Value) -> Value {
    json!({
        "strategy": "canary",
        "steps": steps,
        "scaleDownDelay": "2s",
        "progressDeadline": "2m",
        "analysis": {
            "interval": "2s",
            "failureLimit": 2,
            "inconclusiveLimit": 4,
            "minSamples": 40,
            "checks": checks,
            "restarts": {"max": 1},
        },
    })
}

pub fn errors_check() -> Value {
    json!([{"name": "errors", "errorRate": {"max": 0.01}}])
}

pub fn two_steps() -> Value {
    json!([{"setWeight": 25}, {"analysis": {"passes": 2}}, {"setWeight": 50}, {"analysis": {}}])
}

impl Story {
    /// v1 of the model, stable and serving under load, with `rollout` and
    /// `extra` spec fields.
    pub async fn stable(
        prefix: &str,
        replicas: i32,
        rollout: Value,
        extra: Value,
    ) -> Option<Story> {
        Self::stable_with(prefix, replicas, rollout, extra, &[]).await
    }

    /// [`Story::stable`] with v1 running these switches; with the
    /// `gatewayAPI` router the load goes through the stored HTTPRoute.
    pub async fn stable_with(
        prefix: &str,
        replicas: i32,
        rollout: Value,
        extra: Value,
        v1_env: &[(&str, &str)],
    ) -> Option<Story> {
        let cp = control_plane()?;
        cp.install_crds().await;
        let routed = rollout["traffic"]["router"] == "gatewayAPI";
        if routed && !cp.install_gateway_api().await {
            return None;
        }
        let ns = cp.namespace(prefix).await;
        let op = RealOperator::start(cp, OperatorOptions::watching(&[&ns])).await?;
        op.wait_ready(WAIT).await;
        let api: Api<ModelDeployment> = Api::namespaced(cp.admin().await, &ns);
        let mut manifest = json!({
            "apiVersion": "modeldeploy.io/v1alpha1",
            "kind": "ModelDeployment",
            "metadata": {"name": NAME, "namespace": ns},
            "spec": {
                "model": model("1.0.0", v1_env),
                "replicas": replicas,
                "resources": {"requests": {"cpu": "100m", "memory": "64Mi"},
                              "limits": {"cpu": "1", "memory": "256Mi"}},
                "rollout": rollout,
            }
        });
        if let (Some(spec), Some(more)) = (manifest["spec"].as_object_mut(), extra.as_object()) {
            spec.extend(more.clone());
        }
        let md: ModelDeployment = serde_json::from_value(manifest).unwrap();
        api.create(&PostParams::default(), &md).await.unwrap();
        let capacity = Capacity::watch(cp, &ns);
        let mut story = Story {
            cp,
            ns,
            op,
            api,
            replicas,
            revisions: BTreeMap::from([(
                "1.0.0".to_string(),
                v1_env
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            )]),
            load: None,
            routed,
            capacity,
        };
        story.until("v1 stable", |s| s["phase"] == "Stable").await;
        story.wait_for_pods(&["1.0.0"]).await;
        story.capacity.armed.store(true, Ordering::SeqCst);
        story.start_load(LoadOptions::rps(40.0)).await;
        Some(story)
    }

    pub async fn start_load(&mut self, options: LoadOptions) {
        self.load = None;
        self.load = Some(self.new_load(options).await);
    }

    /// Load as clients would send it: through the Service, or the HTTPRoute.
    pub async fn new_load(&self, options: LoadOptions) -> LoadHandle {
        let kubelet = self.cp.kubelet();
        if self.routed {
            return kubelet.load_weighted(&self.ns, NAME, options).await;
        }
        let selector = BTreeMap::from([("modeldeploy.io/name".to_string(), NAME.to_string())]);
        kubelet.load_with(&self.ns, &selector, options).await
    }

    /// The stored HTTPRoute's rules as (header matches, [(service, weight)]).
    pub async fn route_rules(&self) -> Vec<(Value, Vec<(String, i64)>)> {
        let api: Api<kube::api::DynamicObject> = Api::namespaced_with(
            self.cp.admin().await,
            &self.ns,
            &kube::api::ApiResource::from_gvk(&kube::api::GroupVersionKind::gvk(
                "gateway.networking.k8s.io",
                "v1",
                "HTTPRoute",
            )),
        );
        let route = api.get(NAME).await.unwrap();
        route.data["spec"]["rules"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                let headers: Vec<Value> = r["matches"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|m| m["headers"].clone())
                    .filter(|h| !h.is_null())
                    .collect();
                let backends = r["backendRefs"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|b| {
                        (
                            b["name"].as_str().unwrap().to_string(),
                            b["weight"].as_i64().unwrap_or(1),
                        )
                    })
                    .collect();
                (Value::Array(headers), backends)
            })
            .collect()
    }

    /// Change the spec to `version` with these switches, as `kubectl apply` would.
    pub async fn release(&mut self, version: &str, env: &[(&str, &str)]) {
        self.revisions.insert(
            version.to_string(),
            env.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        );
        self.api
            .patch(
                NAME,
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"model": model(version, env)}})),
            )
            .await
            .unwrap();
    }

    /// v2 promoted once: history `[Deployed, Promoted]`, one RolloutStarted
    /// and Promoted, no RolledBack, every step done once, v2's pods only,
    /// capacity kept. `context` goes into the history assertion's message.
    pub async fn assert_promoted_once(&self, context: &str) -> Value {
        let s = self
            .until("v2 promoted", |s| {
                s["phase"] == "Stable" && s["stable"]["version"] == "2.0.0"
            })
            .await;
        assert_eq!(history(&s), ["Deployed", "Promoted"], "{context} {s:#}");
        assert_eq!(self.events("Promoted").await.len(), 1);
        assert_eq!(self.events("RolloutStarted").await.len(), 1);
        assert_eq!(self.events("RolledBack").await.len(), 0);
        let steps = self.events("StepCompleted").await;
        for i in 1..=4 {
            let n = steps
                .iter()
                .filter(|m| m.contains(&format!("step {i}/4 done")))
                .count();
            assert_eq!(n, 1, "step {i} completed {n} times: {steps:#?}");
        }
        self.wait_for_pods(&["2.0.0"]).await;
        self.assert_pods_run_their_revisions();
        self.assert_capacity_kept();
        s
    }

    pub async fn status(&self) -> Value {
        let md = self.api.get(NAME).await.unwrap();
        serde_json::to_value(md.status.unwrap_or_default()).unwrap()
    }

    pub async fn until(&self, what: &str, check: impl Fn(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let s = self.status().await;
            if check(&s) {
                return s;
            }
            if tokio::time::Instant::now() >= deadline {
                self.op.print_log_tail(60);
                let api: Api<Event> = Api::namespaced(self.cp.admin().await, &self.ns);
                let events = api.list(&ListParams::default()).await.unwrap().items;
                // The model's own events; the endpoints controller's complaints
                // about loopback pod IPs are harness noise.
                for e in events.into_iter().filter(|e| {
                    e.regarding.as_ref().and_then(|r| r.kind.as_deref()) == Some("ModelDeployment")
                }) {
                    eprintln!(
                        "event {}: {}",
                        e.reason.unwrap_or_default(),
                        e.note.unwrap_or_default()
                    );
                }
                panic!("timed out waiting for {what}; status: {s:#}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Waits until the load has had `more` answers since `before` (its
    /// `by_version` taken earlier); returns those answers by version.
    pub async fn answers_since(
        &self,
        before: &BTreeMap<String, u64>,
        more: u64,
    ) -> BTreeMap<String, u64> {
        let load = self.load.as_ref().expect("the story runs a load");
        poll(&format!("{more} more answers"), WAIT, || {
            let since: BTreeMap<String, u64> = load
                .stats()
                .by_version()
                .into_iter()
                .filter_map(|(v, n)| {
                    let more = n.saturating_sub(before.get(&v).copied().unwrap_or(0));
                    (more > 0).then_some((v, more))
                })
                .collect();
            async move { (since.values().sum::<u64>() >= more).then_some(since) }
        })
        .await
    }

    /// Every serving pod runs the revision its labels name: its image, its
    /// `MODEL_VERSION`, exactly its revision's switches, and the version its
    /// process answers with.
    pub fn assert_pods_run_their_revisions(&self) {
        let answered = self.load.as_ref().map(|l| l.stats().answers);
        for pod in serving(self.cp, &self.ns) {
            let version = pod.labels["modeldeploy.io/version"].clone();
            let Some(switches) = self.revisions.get(&version) else {
                panic!("pod {} runs version {version}, never released", pod.name);
            };
            assert_eq!(pod.image, image(&version), "pod {}", pod.name);
            assert_eq!(
                pod.env.get("MODEL_VERSION"),
                Some(&version),
                "pod {} is labelled {version}",
                pod.name
            );
            for key in SWITCHES {
                let want = switches.iter().find(|(k, _)| k == key).map(|(_, v)| v);
                assert_eq!(
                    pod.env.get(key),
                    want,
                    "pod {} (version {version}) env {key}",
                    pod.name
                );
            }
            if let Some(by_pod) = answered.as_ref().and_then(|a| a.get(&pod.name)) {
                assert!(
                    by_pod.keys().all(|v| *v == version),
                    "pod {} labelled {version} answered as {by_pod:?}",
                    pod.name
                );
            }
        }
    }

    /// Until the serving pods are exactly `replicas` pods of `versions`.
    pub async fn wait_for_pods(&self, versions: &[&str]) -> Vec<RunningPod> {
        let (cp, ns, replicas) = (self.cp, self.ns.clone(), self.replicas);
        poll(
            &format!("{replicas} Ready pods of {versions:?}"),
            WAIT,
            || {
                let pods = serving(cp, &ns);
                let only = pods
                    .iter()
                    .all(|p| versions.contains(&p.labels["modeldeploy.io/version"].as_str()));
                let ready = only && pods.len() == replicas as usize;
                async move { ready.then_some(pods) }
            },
        )
        .await
    }

    /// Until exactly `n` model pods serve, whatever their versions.
    pub async fn wait_for_pods_count(&self, n: usize) -> Vec<RunningPod> {
        let (cp, ns) = (self.cp, self.ns.clone());
        poll(&format!("{n} Ready pods"), WAIT, || {
            let pods = serving(cp, &ns);
            async move { (pods.len() == n).then_some(pods) }
        })
        .await
    }

    pub async fn deployment_of(&self, version: &str) -> Deployment {
        let api: Api<Deployment> = Api::namespaced(self.cp.admin().await, &self.ns);
        let list = api.list(&ListParams::default()).await.unwrap();
        list.items
            .into_iter()
            .find(|d| {
                d.metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get("modeldeploy.io/version"))
                    == Some(&version.to_string())
            })
            .unwrap_or_else(|| panic!("no Deployment for {version}"))
    }

    /// The pod template of `version`'s Deployment, as stored JSON.
    pub async fn template_of(&self, version: &str) -> String {
        let d = self.deployment_of(version).await;
        serde_json::to_string(&d.spec.unwrap().template).unwrap()
    }

    pub fn assert_capacity_kept(&self) {
        let fewest = self.capacity.fewest();
        assert!(
            fewest >= i64::from(self.replicas),
            "only {fewest} Ready pods at one point, with replicas {}",
            self.replicas
        );
    }

    pub async fn events(&self, reason: &str) -> Vec<String> {
        let api: Api<Event> = Api::namespaced(self.cp.admin().await, &self.ns);
        api.list(&ListParams::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .filter(|e| e.reason.as_deref() == Some(reason))
            .map(|e| e.note.unwrap_or_default())
            .collect()
    }
}

pub fn history(s: &Value) -> Vec<String> {
    s["history"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|h| h["outcome"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// After a rollback (for a reason naming `failed_check`): v1 serves with all
/// its pods, as before, and nothing of v2 serves; v1's Deployment template is
/// the one it had before the bump.
pub async fn assert_rolled_back_to_v1(story: &Story, v1_template: &str, failed_check: &str) {
    let s = story
        .until("rolled back", |s| s["phase"] == "RolledBack")
        .await;
    assert_eq!(s["stable"]["version"], "1.0.0", "{s:#}");
    assert_eq!(s["rolledBack"]["version"], "2.0.0", "{s:#}");
    assert_eq!(history(&s), ["Deployed", "RolledBack"]);
    let reason = s["history"][1]["reason"].as_str().unwrap_or_default();
    assert!(reason.contains(failed_check), "{reason}");
    let pods = story.wait_for_pods(&["1.0.0"]).await;
    assert_eq!(pods.len(), story.replicas as usize);
    story.assert_pods_run_their_revisions();
    assert_eq!(
        story.template_of("1.0.0").await,
        v1_template,
        "v1's Deployment template changed"
    );
    let v2 = story.deployment_of("2.0.0").await;
    assert_eq!(v2.spec.unwrap().replicas, Some(0));
    story.assert_capacity_kept();
    // What clients get now: v1 answers only.
    let before = story.load.as_ref().unwrap().stats().by_version();
    let since = story.answers_since(&before, 50).await;
    assert_eq!(
        since.keys().collect::<Vec<_>>(),
        ["1.0.0"],
        "v1 answers alone after the rollback"
    );
}
