//! Least privilege, measured: the operator binary runs a representative set
//! of rollouts on the real API server under the chart's rendered RBAC, the
//! API server's audit log records every request its ServiceAccount sent, and
//! the (resource, verb) pairs it used are compared with the rules the chart
//! grants. Every used verb must be granted (or the story fails with a 403 and
//! this test names it), and every granted verb must have been used, or be
//! listed in [`GRANTED_UNUSED`] with its reason.
//!
//! The stories run at once, one namespace each, under one operator installed
//! with `clusterInstall=false` (a Role per watched namespace), leader election
//! and `driftReference.fromStable=true`: a canary promoted twice (the oldest
//! revision pruned beyond `revisionHistoryLimit`), one rolled back (behind a
//! `spec.networkPolicy`, removed afterwards), one behind the Gateway API, and
//! a `fromStable` drift reference captured.

mod support;

use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::{ControllerRevision, Deployment};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use modeldeploy::api::ModelDeployment;
use serde_json::{Value, json};
use support::envtest::{ControlPlane, Options, control_plane_with, official_tool, poll, skip};
use support::kubelet::{LoadHandle, LoadOptions};
use support::real_operator::{OperatorOptions, RealOperator};

/// Generous: CI machines are loaded. Nothing asserts on speed.
const WAIT: Duration = Duration::from_secs(240);
const NAME: &str = "scorer";
const CHART: &str = "charts/modeldeploy";

/// (API group, resource, verb): `""` is the core group; subresources are
/// written `resource/subresource`, as in RBAC rules.
type Access = (String, String, String);

/// Granted verbs the stories need not send (a race may, or may not, make
/// them), each with the reason it is granted.
const GRANTED_UNUSED: &[(&str, &str, &str, &str)] = &[
    (
        "apps",
        "controllerrevisions",
        "get",
        "a create answered 409 while the watch lags behind reads the stored revision (a race)",
    ),
    // Gates have their own stories on the real API server (tests/real_gates.rs).
    ("batch", "jobs", "get", "job gates: a gate Job's outcome"),
    ("batch", "jobs", "create", "job gates: a gate's Job"),
    (
        "batch",
        "jobs",
        "delete",
        "job gates: pruned with its revision, or left by an earlier rollout",
    ),
    (
        "",
        "pods/log",
        "get",
        "job gates: the last log line of a failed gate Job's pod",
    ),
];

/// Verbs the stories send that the API server checks without an audit event
/// of their own: a server-side apply that creates its object is logged as a
/// `patch` answered 201, and is authorized as `create` too.
fn implied(verb: &str, code: i64) -> Option<&'static str> {
    (verb == "patch" && code == 201).then_some("create")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_uses_every_verb_the_chart_grants_and_no_other() {
    let started = Instant::now();
    let Some(cp) = control_plane_with(Options {
        audit: true,
        // Creating a child whose owner reference blocks the owner's deletion
        // needs `update` on the owner's finalizers; OpenShift enables this.
        admission_plugins: vec!["OwnerReferencesPermissionEnforcement"],
    }) else {
        return;
    };
    if official_tool("helm").is_none() {
        skip("helm is not installed (`bash .ci/install-deps` installs it)");
        return;
    }
    cp.install_crds().await;
    let gateway_api = cp.install_gateway_api().await;
    let promote = cp.namespace("promote").await;
    let rollback = cp.namespace("rollback").await;
    let drift = cp.namespace("drift").await;
    let routed = cp.namespace("gateway").await;
    let mut watched = vec![promote.as_str(), rollback.as_str(), drift.as_str()];
    if gateway_api {
        watched.push(routed.as_str());
    }
    let helm_set = vec![
        "clusterInstall=false".to_string(),
        "driftReference.fromStable=true".to_string(),
    ];
    let op = RealOperator::start(
        cp,
        OperatorOptions {
            leader_election: true,
            helm_set: helm_set.clone(),
            ..OperatorOptions::watching(&watched)
        },
    )
    .await
    .expect("helm is there");
    op.wait_ready(WAIT).await;

    let stories = async {
        tokio::join!(
            promoted_twice_and_pruned(cp, &promote),
            rolled_back(cp, &rollback),
            captured_reference(cp, &drift),
            async {
                if gateway_api {
                    behind_the_gateway_api(cp, &routed).await;
                }
            },
        )
    };
    stories.await;
    // A clean stop releases the Lease, as a rolling update of the operator does.
    assert_eq!(
        op.terminate(Duration::from_secs(30)),
        Some(0),
        "the operator stops cleanly"
    );

    let user = format!(
        "system:serviceaccount:{}:{}",
        op.namespace(),
        op.service_account()
    );
    let (used, forbidden) = used_by(&cp.audit_events(), &user);
    let granted = granted(cp, op.namespace(), &helm_set);
    println!("{}", table(&used, &granted));
    println!(
        "least privilege: {} requests' worth of (resource, verb) pairs measured in {:.0}s",
        used.len(),
        started.elapsed().as_secs_f64()
    );
    assert!(
        forbidden.is_empty(),
        "requests the chart's RBAC refused: {forbidden:#?}"
    );
    let missing: Vec<&Access> = used.difference(&granted).collect();
    assert!(
        missing.is_empty(),
        "used but not granted (add them to templates/rbac.yaml with a reason): {missing:?}"
    );
    let excused: BTreeSet<Access> = GRANTED_UNUSED
        .iter()
        .map(|(g, r, v, _)| (g.to_string(), r.to_string(), v.to_string()))
        .collect();
    let unused: Vec<&Access> = granted
        .difference(&used)
        .filter(|a| !excused.contains(*a))
        .collect();
    assert!(
        unused.is_empty(),
        "granted but never used (remove them from templates/rbac.yaml, or list them in GRANTED_UNUSED with a reason): {unused:?}"
    );
    let not_granted: Vec<&Access> = excused.difference(&granted).collect();
    assert!(
        not_granted.is_empty(),
        "listed in GRANTED_UNUSED but not granted: {not_granted:?}"
    );
}

/// The (resource, verb) pairs `user` sent, and the requests refused (403).
fn used_by(events: &[Value], user: &str) -> (BTreeSet<Access>, Vec<String>) {
    let mut used = BTreeSet::new();
    let mut forbidden = Vec::new();
    for e in events {
        if e["user"]["username"] != user {
            continue;
        }
        // Discovery (/api, /apis) is not a resource request.
        let Some(object) = e["objectRef"].as_object() else {
            continue;
        };
        let str_of = |k: &str| object.get(k).and_then(Value::as_str).unwrap_or_default();
        let resource = match str_of("subresource") {
            "" => str_of("resource").to_string(),
            sub => format!("{}/{sub}", str_of("resource")),
        };
        let group = str_of("apiGroup").to_string();
        let verb = e["verb"].as_str().unwrap_or_default().to_string();
        let code = e["responseStatus"]["code"].as_i64().unwrap_or(0);
        if code == 403 {
            forbidden.push(format!(
                "{verb} {} ({})",
                e["requestURI"].as_str().unwrap_or_default(),
                e["responseStatus"]["message"].as_str().unwrap_or_default()
            ));
        }
        if let Some(also) = implied(&verb, code) {
            used.insert((group.clone(), resource.clone(), also.to_string()));
        }
        used.insert((group, resource, verb));
    }
    (used, forbidden)
}

/// What the chart grants the operator with these `--set` values: the rules of
/// its Role (one per watched namespace, all alike, and the same as the
/// ClusterRole of a cluster-wide install) and of the leader-election Role.
fn granted(cp: &ControlPlane, namespace: &str, helm_set: &[String]) -> BTreeSet<Access> {
    let render = |extra: &[&str]| -> Vec<Value> {
        let mut cmd = Command::new(official_tool("helm").expect("helm"));
        cmd.args(["template", "least-privilege"])
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join(CHART))
            .args(["--namespace", namespace])
            .args(["--show-only", "templates/rbac.yaml"])
            .args(["--set", "leaderElection.enabled=true"])
            .args(["--set", "watchNamespaces={a,b}"])
            .env("HELM_CACHE_HOME", cp.dir().join("helm/cache"))
            .env("HELM_CONFIG_HOME", cp.dir().join("helm/config"))
            .env("HELM_DATA_HOME", cp.dir().join("helm/data"));
        for s in helm_set
            .iter()
            .map(String::as_str)
            .chain(extra.iter().copied())
        {
            cmd.args(["--set", s]);
        }
        let out = cmd.output().expect("run helm");
        assert!(
            out.status.success(),
            "helm template: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8(out.stdout).unwrap();
        serde_yaml::Deserializer::from_str(&text)
            .map(|d| serde::Deserialize::deserialize(d).expect("YAML"))
            .filter(|v: &Value| !v.is_null())
            .collect()
    };
    let rules_of = |objects: &[Value], kind: &str, name_suffix: &str| -> Vec<BTreeSet<Access>> {
        objects
            .iter()
            .filter(|o| o["kind"] == kind)
            .filter(|o| {
                o["metadata"]["name"]
                    .as_str()
                    .is_some_and(|n| n.ends_with(name_suffix))
            })
            .map(|o| access(&o["rules"]))
            .collect()
    };
    let namespaced = render(&[]);
    let roles = rules_of(&namespaced, "Role", "least-privilege-modeldeploy");
    assert_eq!(roles.len(), 2, "a Role per watched namespace");
    assert_eq!(roles[0], roles[1]);
    assert!(
        !namespaced.iter().any(|o| o["kind"] == "ClusterRole"),
        "clusterInstall=false renders no ClusterRole"
    );
    let cluster = render(&["clusterInstall=true"]);
    let cluster_role = rules_of(&cluster, "ClusterRole", "least-privilege-modeldeploy");
    assert_eq!(
        cluster_role,
        [roles[0].clone()],
        "the ClusterRole of a cluster-wide install grants what the Roles grant"
    );
    let lease = rules_of(&namespaced, "Role", "-leader-election");
    assert_eq!(lease.len(), 1);
    roles[0].union(&lease[0]).cloned().collect()
}

/// The (group, resource, verb) pairs of RBAC `rules`.
fn access(rules: &Value) -> BTreeSet<Access> {
    let mut out = BTreeSet::new();
    for rule in rules.as_array().expect("rules") {
        let list = |k: &str| -> Vec<String> {
            rule[k]
                .as_array()
                .unwrap_or_else(|| panic!("a rule without {k}: {rule}"))
                .iter()
                .map(|v| v.as_str().unwrap().to_string())
                .collect()
        };
        for g in list("apiGroups") {
            for r in list("resources") {
                for v in list("verbs") {
                    out.insert((g.clone(), r.clone(), v));
                }
            }
        }
    }
    out
}

/// The measured table: each resource with its verbs used and granted.
fn table(used: &BTreeSet<Access>, granted: &BTreeSet<Access>) -> String {
    let mut rows: BTreeMap<(String, String), (Vec<String>, Vec<String>)> = BTreeMap::new();
    for (g, r, v) in used {
        rows.entry((g.clone(), r.clone()))
            .or_default()
            .0
            .push(v.clone());
    }
    for (g, r, v) in granted {
        rows.entry((g.clone(), r.clone()))
            .or_default()
            .1
            .push(v.clone());
    }
    let mut out =
        String::from("| group | resource | used | granted |\n| --- | --- | --- | --- |\n");
    for ((g, r), (u, gr)) in rows {
        let g = if g.is_empty() { "core".into() } else { g };
        out.push_str(&format!(
            "| {g} | {r} | {} | {} |\n",
            u.join(", "),
            gr.join(", ")
        ));
    }
    out
}

// ---------------------------------------------------------------------------
// The stories

/// One ModelDeployment in its namespace, with load like a Service's (or the
/// HTTPRoute's) on its Ready pods.
struct Model {
    ns: String,
    api: Api<ModelDeployment>,
    _load: Option<LoadHandle>,
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

/// A canary judged on errors (and `checks`), one step at 50% then one passed analysis.
fn canary(checks: Value) -> Value {
    json!({
        "strategy": "canary",
        "steps": [{"setWeight": 50}, {"analysis": {"passes": 1}}],
        "scaleDownDelay": "1s",
        "progressDeadline": "2m",
        "analysis": {"interval": "2s", "failureLimit": 2, "inconclusiveLimit": 6,
                     "minSamples": 30, "checks": checks},
    })
}

fn errors() -> Value {
    json!([{"name": "errors", "errorRate": {"max": 0.02}}])
}

impl Model {
    /// v1 of the model with `spec` fields, stable and under load.
    async fn stable(cp: &'static ControlPlane, ns: &str, spec: Value) -> Model {
        let routed = spec["rollout"]["traffic"]["router"] == "gatewayAPI";
        let api: Api<ModelDeployment> = Api::namespaced(cp.admin().await, ns);
        let mut full = json!({"model": model("1.0.0", &[]), "replicas": 2,
            "resources": {"requests": {"cpu": "100m", "memory": "64Mi"},
                          "limits": {"cpu": "1", "memory": "256Mi"}}});
        support::merge(&mut full, spec);
        let md: ModelDeployment = serde_json::from_value(json!({
            "apiVersion": "modeldeploy.io/v1alpha1", "kind": "ModelDeployment",
            "metadata": {"name": NAME, "namespace": ns}, "spec": full,
        }))
        .unwrap();
        api.create(&PostParams::default(), &md).await.unwrap();
        let mut m = Model {
            ns: ns.to_string(),
            api,
            _load: None,
        };
        m.until("v1 stable", |s| s["phase"] == "Stable").await;
        let options = LoadOptions::rps(20.0);
        let kubelet = cp.kubelet();
        m._load = Some(if routed {
            kubelet.load_weighted(ns, NAME, options).await
        } else {
            let selector = BTreeMap::from([("modeldeploy.io/name".into(), NAME.into())]);
            kubelet.load_with(ns, &selector, options).await
        });
        m
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

    async fn until(&self, what: &str, check: impl Fn(&Value) -> bool) -> Value {
        let what = format!("{}: {what}", self.ns);
        let (api, check) = (&self.api, &check);
        poll(&what, WAIT, move || async move {
            let md = api.get(NAME).await.ok()?;
            let s = serde_json::to_value(md.status.unwrap_or_default()).unwrap();
            check(&s).then_some(s)
        })
        .await
    }

    async fn promoted(&self, version: &str) {
        self.until(&format!("{version} promoted"), |s| {
            s["phase"] == "Stable" && s["stable"]["version"] == version
        })
        .await;
    }
}

/// Deployments (create, scale, delete), ControllerRevisions (create,
/// delete), the model Service, status and events.
async fn promoted_twice_and_pruned(cp: &'static ControlPlane, ns: &str) {
    let m = Model::stable(
        cp,
        ns,
        json!({"revisionHistoryLimit": 1, "rollout": canary(errors())}),
    )
    .await;
    m.release("2.0.0", &[]).await;
    m.promoted("2.0.0").await;
    m.release("3.0.0", &[]).await;
    m.promoted("3.0.0").await;
    // v1 is beyond the limit: its Deployment and stored template are deleted.
    let admin = cp.admin().await;
    let deployments: Api<Deployment> = Api::namespaced(admin.clone(), ns);
    let revisions: Api<ControllerRevision> = Api::namespaced(admin, ns);
    let (deployments, revisions) = (&deployments, &revisions);
    poll(
        &format!("{ns}: revision 1 pruned"),
        WAIT,
        move || async move {
            let d = deployments.list(&ListParams::default()).await.ok()?;
            let r = revisions.list(&ListParams::default()).await.ok()?;
            let versions: BTreeSet<String> = d
                .items
                .iter()
                .filter_map(|d| {
                    d.metadata
                        .labels
                        .as_ref()?
                        .get("modeldeploy.io/version")
                        .cloned()
                })
                .collect();
            let stored: BTreeSet<i64> = r.items.iter().map(|r| r.revision).collect();
            (!versions.contains("1.0.0") && !stored.contains(&1)).then_some(())
        },
    )
    .await;
    // A stored template deleted by hand is stored again from the running
    // Deployment, not rendered anew.
    let stored = revisions.list(&ListParams::default()).await.unwrap().items;
    let current = stored
        .iter()
        .find(|r| r.revision == 3)
        .expect("revision 3 is stored");
    let (name, uid) = (
        current.metadata.name.clone().unwrap(),
        current.metadata.uid.clone(),
    );
    revisions.delete(&name, &Default::default()).await.unwrap();
    poll(&format!("{ns}: revision 3 stored again"), WAIT, move || {
        let (name, uid) = (name.clone(), uid.clone());
        async move {
            let r = revisions.get_opt(&name).await.ok()??;
            (r.metadata.uid != uid).then_some(())
        }
    })
    .await;
}

/// A canary failing its error check: rolled back. Behind a NetworkPolicy
/// (`spec.networkPolicy`), which goes with the field.
async fn rolled_back(cp: &'static ControlPlane, ns: &str) {
    let spec = json!({"rollout": canary(errors()),
        "networkPolicy": {"from": [{"podSelector": {"matchLabels": {"app": "web"}}}]}});
    let m = Model::stable(cp, ns, spec).await;
    let policies: Api<NetworkPolicy> = Api::namespaced(cp.admin().await, &m.ns);
    let policies = &policies;
    poll(
        &format!("{ns}: the NetworkPolicy"),
        WAIT,
        move || async move { policies.get_opt(NAME).await.ok()?.map(|_| ()) },
    )
    .await;
    m.release("2.0.0", &[("ERROR_RATE", "0.2")]).await;
    let s = m.until("rolled back", |s| s["phase"] == "RolledBack").await;
    assert_eq!(s["stable"]["version"], "1.0.0", "{s:#}");
    // Opting out of the disruption budget deletes it.
    m.api
        .patch(
            NAME,
            &PatchParams::default(),
            &Patch::Merge(
                json!({"spec": {"disruption": {"budget": false}, "networkPolicy": null}}),
            ),
        )
        .await
        .unwrap();
    let budgets: Api<PodDisruptionBudget> = Api::namespaced(cp.admin().await, &m.ns);
    let budgets = &budgets;
    poll(
        &format!("{ns}: the budget deleted"),
        WAIT,
        move || async move { budgets.get_opt(NAME).await.ok()?.is_none().then_some(()) },
    )
    .await;
    poll(
        &format!("{ns}: the NetworkPolicy deleted"),
        WAIT,
        move || async move { policies.get_opt(NAME).await.ok()?.is_none().then_some(()) },
    )
    .await;
}

/// The Gateway API router: an HTTPRoute and a Service per variant.
async fn behind_the_gateway_api(cp: &'static ControlPlane, ns: &str) {
    let mut rollout = canary(errors());
    rollout["traffic"] = json!({"router": "gatewayAPI", "gatewayAPI": {
        "parentRefs": [{"name": "public", "namespace": "gateways"}],
        "hostnames": ["scorer.example"]}});
    let m = Model::stable(cp, ns, json!({"rollout": rollout})).await;
    m.release("2.0.0", &[]).await;
    m.promoted("2.0.0").await;
}

/// `drift.reference.fromStable`: the stable revision's inputs captured into
/// a ConfigMap the ModelDeployment owns.
async fn captured_reference(cp: &'static ControlPlane, ns: &str) {
    let checks = json!([{"name": "inputs", "inputDrift": {"method": "psi", "max": 0.25}}]);
    let m = Model::stable(
        cp,
        ns,
        json!({"drift": {"reference": {"fromStable": true}}, "rollout": canary(checks)}),
    )
    .await;
    let stable = m.until("v1 stable", |s| s["phase"] == "Stable").await;
    let configmaps: Api<ConfigMap> = Api::namespaced(cp.admin().await, &m.ns);
    let configmaps = &configmaps;
    let cm = poll(
        &format!("{ns}: the captured reference"),
        WAIT,
        move || async move {
            configmaps
                .get_opt(&format!("{NAME}-drift-reference"))
                .await
                .ok()
                .flatten()
        },
    )
    .await;
    assert_eq!(
        cm.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get("modeldeploy.io/captured-revision"))
            .map(String::as_str),
        stable["stable"]["hash"].as_str()
    );
}
