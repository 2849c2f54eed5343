//! Rollout stories on a real API server: the real CRD, the real Deployment
//! and ReplicaSet controllers, the operator binary under the chart's RBAC,
//! and the test kubelet running the demo model server as processes. Every
//! story asserts what the pods run (image, env, the version each process
//! answers with) and that available pods never fall below `spec.replicas`,
//! not only what `status` says.
//!
//! What only this tier proves (the fake API server cannot): a revision's
//! pods are made by the ReplicaSet controller from the Deployment's template,
//! so a template rewritten by the operator shows up as pods running the wrong
//! version; availability comes from kubelet readiness through ReplicaSet and
//! Deployment status; the operator's RBAC is the chart's.

mod support;

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use k8s_openapi::api::apps::v1::{ControllerRevision, Deployment};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, EvictParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use support::envtest::{ControlPlane, poll};
use support::kubelet::LoadOptions;
use support::real_story::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_good_canary_is_promoted_and_every_pod_runs_its_revision() {
    let Some(mut story) =
        Story::stable("promote", 4, canary(errors_check(), two_steps()), json!({})).await
    else {
        return;
    };
    let v1_template = story.template_of("1.0.0").await;
    story.release("2.0.0", &[]).await;
    // Mid-rollout both revisions serve, each from its own template.
    story
        .until("the canary takes traffic", |s| {
            s["canary"]["weight"].as_i64().unwrap_or(0) > 0
        })
        .await;
    story.assert_pods_run_their_revisions();
    assert_eq!(
        story.template_of("1.0.0").await,
        v1_template,
        "the stable revision's Deployment was rewritten by the version bump"
    );
    let s = story
        .until("v2 promoted", |s| {
            s["phase"] == "Stable" && s["stable"]["version"] == "2.0.0"
        })
        .await;
    assert_eq!(history(&s), ["Deployed", "Promoted"]);
    story.wait_for_pods(&["2.0.0"]).await;
    story.assert_pods_run_their_revisions();
    story.assert_capacity_kept();
    assert_eq!(story.template_of("1.0.0").await, v1_template);
    // Each revision is stored once, owned by the ModelDeployment.
    let stored: Api<ControllerRevision> = Api::namespaced(story.cp.admin().await, &story.ns);
    let mut revisions: Vec<i64> = stored
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .iter()
        .map(|r| r.revision)
        .collect();
    revisions.sort();
    assert_eq!(revisions, [1, 2]);
    assert_eq!(story.events("Promoted").await.len(), 1);

    // v1's Deployment deleted by hand comes back from its stored template,
    // and `rollback --to-revision 1` serves exactly what v1 ran.
    let deployments: Api<Deployment> = Api::namespaced(story.cp.admin().await, &story.ns);
    let v1 = story.deployment_of("1.0.0").await;
    deployments
        .delete(&v1.metadata.name.clone().unwrap(), &Default::default())
        .await
        .unwrap();
    let v1_uid = v1.metadata.uid.clone();
    poll("v1's Deployment rebuilt", WAIT, || {
        let story = &story;
        let v1_uid = v1_uid.clone();
        async move {
            let api: Api<Deployment> = Api::namespaced(story.cp.admin().await, &story.ns);
            let list = api.list(&ListParams::default()).await.ok()?;
            list.items
                .into_iter()
                .find(|d| {
                    d.metadata
                        .labels
                        .as_ref()
                        .and_then(|l| l.get("modeldeploy.io/version"))
                        == Some(&"1.0.0".to_string())
                        && d.metadata.uid != v1_uid
                })
                .map(|_| ())
        }
    })
    .await;
    assert_eq!(story.template_of("1.0.0").await, v1_template);
    modeldeploy::cli::send_request(
        &story.api,
        NAME,
        &modeldeploy::rollout::Request::new(
            "back-to-1",
            modeldeploy::rollout::RequestAction::RollbackTo { revision: 1 },
        ),
    )
    .await
    .unwrap();
    let s = story
        .until("revision 1 serves again", |s| {
            s["stable"]["revision"] == 1 && s["phase"] == "RolledBack"
        })
        .await;
    assert_eq!(s["rolledBack"]["revision"], 2, "{s:#}");
    story.wait_for_pods(&["1.0.0"]).await;
    story.assert_pods_run_their_revisions();
    story.assert_capacity_kept();
    assert_eq!(story.template_of("1.0.0").await, v1_template);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_with_errors_is_rolled_back_and_stable_runs_the_old_version() {
    let Some(mut story) = Story::stable(
        "errors",
        4,
        canary(errors_check(), json!([{"setWeight": 25}, {"pause": {}}])),
        json!({}),
    )
    .await
    else {
        return;
    };
    let v1_template = story.template_of("1.0.0").await;
    story.release("2.0.0", &[("ERROR_RATE", "0.05")]).await;
    story
        .until("the canary takes traffic", |s| {
            s["canary"]["weight"].as_i64().unwrap_or(0) > 0
        })
        .await;
    story.assert_pods_run_their_revisions();
    assert_rolled_back_to_v1(&story, &v1_template, "errors").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_looping_canary_is_rolled_back_without_touching_stable() {
    let Some(mut story) =
        Story::stable("crash", 4, canary(errors_check(), two_steps()), json!({})).await
    else {
        return;
    };
    let v1_template = story.template_of("1.0.0").await;
    story.release("2.0.0", &[("CRASH_AFTER", "0")]).await;
    assert_rolled_back_to_v1(&story, &v1_template, "restarts").await;
    // No v1 pod was ever started with v2's template.
    for pod in story.cp.kubelet().pods(&story.ns) {
        for launch in story.cp.kubelet().launches(&story.ns, &pod.name) {
            if pod.labels["modeldeploy.io/version"] == "1.0.0" {
                assert_eq!(
                    launch.env.get("MODEL_VERSION").map(String::as_str),
                    Some("1.0.0")
                );
                assert!(!launch.env.contains_key("CRASH_AFTER"), "{launch:?}");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_with_shifted_predictions_is_rolled_back() {
    let checks = json!([
        {"name": "errors", "errorRate": {"max": 0.01}},
        {"name": "outputs", "predictionDrift": {"method": "js", "max": 0.1}}
    ]);
    let Some(mut story) = Story::stable("shift", 4, canary(checks, two_steps()), json!({})).await
    else {
        return;
    };
    let v1_template = story.template_of("1.0.0").await;
    story.release("2.0.0", &[("PREDICTION_SHIFT", "3")]).await;
    assert_rolled_back_to_v1(&story, &v1_template, "outputs").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_without_metrics_pauses_and_both_revisions_keep_their_pods() {
    let Some(mut story) =
        Story::stable("nodata", 4, canary(errors_check(), two_steps()), json!({})).await
    else {
        return;
    };
    // No traffic: the pods have no requests to report.
    story.load = None;
    story.release("2.0.0", &[]).await;
    let s = story
        .until("paused for lack of data", |s| s["phase"] == "Paused")
        .await;
    assert_eq!(s["canary"]["paused"], "Inconclusive", "{s:#}");
    assert_eq!(s["stable"]["version"], "1.0.0");
    story.wait_for_pods(&["1.0.0", "2.0.0"]).await;
    let pods = serving(story.cp, &story.ns);
    let by_version = |v: &str| {
        pods.iter()
            .filter(|p| p.labels["modeldeploy.io/version"] == v)
            .count()
    };
    assert_eq!((by_version("1.0.0"), by_version("2.0.0")), (3, 1));
    story.assert_pods_run_their_revisions();
    story.assert_capacity_kept();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_guard_rolls_back_a_promoted_revision_that_turns_bad() {
    let guard = json!({"guard": {"window": "10m", "interval": "2s", "failureLimit": 2,
                                 "checks": [{"name": "errors", "errorRate": {"max": 0.01}}]}});
    let Some(mut story) = Story::stable(
        "guard",
        2,
        canary(
            errors_check(),
            json!([{"setWeight": 50}, {"analysis": {"passes": 2}}]),
        ),
        guard,
    )
    .await
    else {
        return;
    };
    let v1_template = story.template_of("1.0.0").await;
    story.release("2.0.0", &[("ALLOW_FAULTS", "true")]).await;
    story
        .until("v2 promoted and guarded", |s| {
            s["phase"] == "Stable"
                && s["stable"]["version"] == "2.0.0"
                && s["guard"]["revision"] == 2
        })
        .await;
    let pods = story.wait_for_pods(&["2.0.0"]).await;
    // The promoted version turns bad in production.
    let http = modeldeploy::http_client_builder().build().unwrap();
    for pod in &pods {
        let r = http
            .post(format!("{}/fault", pod.url()))
            .json(&json!({"errorRate": 0.3}))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{}", r.status());
    }
    let s = story
        .until("rolled back by the guard", |s| s["phase"] == "RolledBack")
        .await;
    assert_eq!(s["stable"]["version"], "1.0.0");
    assert_eq!(history(&s), ["Deployed", "Promoted", "RolledBack"]);
    story.wait_for_pods(&["1.0.0"]).await;
    story.assert_pods_run_their_revisions();
    assert_eq!(story.template_of("1.0.0").await, v1_template);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_killed_mid_rollout_finishes_it_once() {
    let steps = json!([{"setWeight": 25}, {"analysis": {"passes": 2}},
                       {"setWeight": 50}, {"analysis": {"passes": 2}}]);
    let Some(mut story) = Story::stable("kill", 4, canary(errors_check(), steps), json!({})).await
    else {
        return;
    };
    story.release("2.0.0", &[]).await;
    let mut seen = Vec::new();
    for step in 1..=3 {
        story
            .until(&format!("step {step}"), |s| {
                s["canary"]["step"].as_i64().unwrap_or(0) >= step
            })
            .await;
        story.op.kill();
        seen.push(story.status().await["canary"]["step"].clone());
        story.op.restart();
        story.op.wait_ready(WAIT).await;
    }
    story
        .assert_promoted_once(&format!("seen steps {seen:?}"))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_replica_runs_one_pod_of_each_revision_and_never_none() {
    let Some(mut story) = Story::stable(
        "one",
        1,
        canary(errors_check(), json!([{"setWeight": 10}, {"pause": {}}])),
        json!({}),
    )
    .await
    else {
        return;
    };
    story.release("2.0.0", &[]).await;
    let s = story
        .until("paused at the step with one pod each", |s| {
            s["canary"]["paused"] == "Step" && s["canary"]["weight"] == 50
        })
        .await;
    assert_eq!(s["canary"]["setWeight"], 10);
    let pods = serving(story.cp, &story.ns);
    let versions: Vec<&str> = pods
        .iter()
        .map(|p| p.labels["modeldeploy.io/version"].as_str())
        .collect();
    assert_eq!(versions.len(), 2, "{versions:?}");
    assert!(versions.contains(&"1.0.0") && versions.contains(&"2.0.0"));
    story.assert_pods_run_their_revisions();
    story.assert_capacity_kept();

    // A next version that never becomes ready leaves the one stable pod alone.
    story.release("3.0.0", &[("CRASH_AFTER", "0")]).await;
    story
        .until("v3 rolled back", |s| s["phase"] == "RolledBack")
        .await;
    story.wait_for_pods(&["1.0.0"]).await;
    story.assert_pods_run_their_revisions();
    story.assert_capacity_kept();
}

fn gateway(rollout: Value) -> Value {
    let mut rollout = rollout;
    rollout["traffic"] = json!({"router": "gatewayAPI", "gatewayAPI": {
        "parentRefs": [{"name": "public", "namespace": "gateways"}],
        "hostnames": ["scorer.example"]}});
    rollout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_weighted_canary_behind_the_gateway_api_is_promoted() {
    let steps = json!([{"setWeight": 20}, {"analysis": {"passes": 2}}, {"pause": {}}]);
    let Some(mut story) = Story::stable(
        "gw-canary",
        2,
        gateway(canary(errors_check(), steps)),
        json!({}),
    )
    .await
    else {
        return;
    };
    assert_eq!(
        story.route_rules().await,
        [(
            json!([]),
            vec![("scorer-stable".into(), 100), ("scorer-canary".into(), 0)]
        )]
    );
    story.release("2.0.0", &[]).await;
    let s = story
        .until("paused at the pause step after the analysis passed", |s| {
            s["canary"]["paused"] == "Step" && s["canary"]["weight"] == 20
        })
        .await;
    assert_eq!(s["canary"]["setWeight"], 20, "{s:#}");
    assert_eq!(
        story.route_rules().await,
        [(
            json!([]),
            vec![("scorer-stable".into(), 80), ("scorer-canary".into(), 20)]
        )],
        "the stored route splits exactly"
    );
    // Stable keeps all its pods; the canary has enough for its share.
    let pods = story.wait_for_pods_count(3).await;
    let v2 = pods
        .iter()
        .filter(|p| p.labels["modeldeploy.io/version"] == "2.0.0")
        .count();
    assert_eq!(v2, 1);
    story.assert_pods_run_their_revisions();
    // Clients reach both versions, about as the route says.
    let before = story.load.as_ref().unwrap().stats().by_version();
    let since = story.answers_since(&before, 100).await;
    let got = |v: &str| since.get(v).copied().unwrap_or(0);
    assert!(
        got("2.0.0") > 0 && got("1.0.0") > 2 * got("2.0.0"),
        "answers since {before:?}: {since:?}"
    );

    let api = story.api.clone();
    modeldeploy::cli::send_request(
        &api,
        NAME,
        &modeldeploy::rollout::Request::new("go", modeldeploy::rollout::RequestAction::Promote),
    )
    .await
    .unwrap();
    let s = story
        .until("v2 promoted", |s| {
            s["phase"] == "Stable" && s["stable"]["version"] == "2.0.0"
        })
        .await;
    assert_eq!(history(&s), ["Deployed", "Promoted"]);
    assert_eq!(
        story.route_rules().await,
        [(
            json!([]),
            vec![("scorer-stable".into(), 100), ("scorer-canary".into(), 0)]
        )]
    );
    story.wait_for_pods(&["2.0.0"]).await;
    story.assert_pods_run_their_revisions();
    story.assert_capacity_kept();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_header_matched_ab_test_behind_the_gateway_api_promotes_the_better_variant() {
    let rollout = gateway(json!({
        "strategy": "abTest",
        "abTest": {
            "match": [{"headers": {"x-model-variant": "b"}}],
            "minSamples": 100,
            "maxDuration": "3m",
            "objective": {"metric": "errorRate", "goal": "minimize", "confidence": 0.95}
        },
        "scaleDownDelay": "2s",
        "analysis": {"interval": "2s", "minSamples": 40, "checks": []}
    }));
    // The running version fails one request in ten; the candidate does not.
    let Some(mut story) =
        Story::stable_with("gw-ab", 2, rollout, json!({}), &[("ERROR_RATE", "0.1")]).await
    else {
        return;
    };
    story.release("2.0.0", &[]).await;
    story
        .until("the test runs", |s| {
            s["canary"]["weight"].as_i64().unwrap_or(0) > 0
        })
        .await;
    let mut variant_b = LoadOptions::rps(20.0);
    variant_b.headers = BTreeMap::from([("x-model-variant".into(), "b".into())]);
    let matched = story.new_load(variant_b).await;
    assert_eq!(
        story.route_rules().await,
        [
            (
                json!([[{"type": "Exact", "name": "x-model-variant", "value": "b"}]]),
                vec![("scorer-canary".into(), 1)]
            ),
            (json!([]), vec![("scorer-stable".into(), 1)]),
        ],
        "matching requests go to the candidate, the rest to stable"
    );
    story.wait_for_pods_count(4).await;
    story.assert_pods_run_their_revisions();
    let s = story
        .until("the candidate won and was promoted", |s| {
            s["phase"] == "Stable" && s["stable"]["version"] == "2.0.0"
        })
        .await;
    assert_eq!(s["abTest"]["winner"], "candidate", "{s:#}");
    assert_eq!(history(&s), ["Deployed", "Promoted"]);
    // Before the decision, each client group met only its variant.
    let b = matched.stop().by_version();
    assert!(!b.contains_key("1.0.0") && b.contains_key("2.0.0"), "{b:?}");
    story.wait_for_pods(&["2.0.0"]).await;
    story.assert_pods_run_their_revisions();
}

/// Pods of each version among those serving.
fn count_by_version(cp: &ControlPlane, ns: &str) -> BTreeMap<String, usize> {
    let mut by = BTreeMap::new();
    for p in serving(cp, ns) {
        *by.entry(p.labels["modeldeploy.io/version"].clone())
            .or_default() += 1;
    }
    by
}

impl Story {
    /// Until the PodDisruptionBudget's status, from the disruption
    /// controller, counts `expected` pods and allows `allowed` disruptions.
    async fn budget_counts(&self, expected: i32, allowed: i32) {
        let api: Api<PodDisruptionBudget> = Api::namespaced(self.cp.admin().await, &self.ns);
        let api = &api;
        poll(
            &format!("the budget counting {expected} pods, {allowed} disruption(s) allowed"),
            WAIT,
            move || async move {
                let s = api.get(NAME).await.ok()?.status?;
                (s.expected_pods == expected && s.disruptions_allowed == allowed).then_some(())
            },
        )
        .await;
    }

    /// `kubectl scale mdep/NAME --replicas=N`, with the real kubectl.
    fn kubectl_scale(&self, replicas: i32) {
        let mut kubectl = self.cp.kubectl().expect("kubectl");
        let out = kubectl
            .args(["scale", "-n", &self.ns, &format!("mdep/{NAME}")])
            .arg(format!("--replicas={replicas}"))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "kubectl scale: {stderr}");
    }

    /// Scaled by someone else (kubectl, an HPA): wait for the pods, and
    /// measure capacity against the new size from then on.
    async fn scaled_to(&mut self, replicas: i32, versions: &[&str]) {
        self.replicas = replicas;
        self.wait_for_pods(versions).await;
        self.capacity.fewest.store(i64::MAX, Ordering::SeqCst);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_scale_an_hpa_and_the_disruption_budget_size_the_model() {
    let steps = json!([{"setWeight": 25}, {"pause": {}}]);
    let Some(mut story) = Story::stable("scale", 2, canary(errors_check(), steps), json!({})).await
    else {
        return;
    };
    // The budget covers every model pod, one disruption at a time.
    story.budget_counts(2, 1).await;

    // `kubectl scale` through the scale subresource.
    story.kubectl_scale(4);
    story.scaled_to(4, &["1.0.0"]).await;
    let scale = story.api.get_scale(NAME).await.unwrap();
    assert_eq!(scale.spec.and_then(|s| s.replicas), Some(4));
    let scale_status = scale.status.unwrap();
    assert_eq!(
        scale_status.selector.as_deref(),
        Some("modeldeploy.io/name=scorer")
    );
    story.until("4 available", |s| s["replicas"] == 4).await;
    story.budget_counts(4, 1).await;

    // The eviction API goes by the budget: with one disruption allowed a
    // pod may go.
    // Without retries: a refused eviction (429) is the answer, not a cue to
    // retry with backoff.
    let pods: Api<Pod> = Api::namespaced(story.cp.admin_without_retries().await, &story.ns);
    let names: Vec<String> = serving(story.cp, &story.ns)
        .into_iter()
        .map(|p| p.name)
        .collect();
    pods.evict(&names[0], &EvictParams::default())
        .await
        .unwrap();
    story.scaled_to(4, &["1.0.0"]).await;

    // An HPA resolves the ModelDeployment as its target and, below its
    // minimum, scales it up (no metrics needed for that).
    let hpas: Api<HorizontalPodAutoscaler> = Api::namespaced(story.cp.admin().await, &story.ns);
    let hpa: HorizontalPodAutoscaler = serde_json::from_value(json!({
        "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": NAME},
        "spec": {
            "scaleTargetRef": {"apiVersion": "modeldeploy.io/v1alpha1",
                               "kind": "ModelDeployment", "name": NAME},
            "minReplicas": 5, "maxReplicas": 8,
            "metrics": [{"type": "Resource", "resource": {"name": "cpu",
                         "target": {"type": "Utilization", "averageUtilization": 80}}}]
        }
    }))
    .unwrap();
    hpas.create(&PostParams::default(), &hpa).await.unwrap();
    story.scaled_to(5, &["1.0.0"]).await;
    let hpa = hpas.get(NAME).await.unwrap();
    let able = hpa
        .status
        .and_then(|s| s.conditions)
        .unwrap_or_default()
        .into_iter()
        .find(|c| c.type_ == "AbleToScale");
    assert_eq!(able.map(|c| c.status), Some("True".to_string()));

    // A rollout under the HPA: the canary takes its share of 5, and when
    // the HPA raises the floor mid-rollout both shares follow, same step.
    story.release("2.0.0", &[]).await;
    let s = story
        .until("paused at 25%", |s| s["phase"] == "Paused")
        .await;
    let step = s["canary"]["step"].clone();
    poll("v1 and v2 pods", WAIT, || {
        let by = count_by_version(story.cp, &story.ns);
        async move { (by.get("2.0.0") == Some(&1) && by.get("1.0.0") == Some(&4)).then_some(()) }
    })
    .await;
    hpas.patch(
        NAME,
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"minReplicas": 8}})),
    )
    .await
    .unwrap();
    poll("v1 and v2 pods after the HPA raised the floor", WAIT, || {
        let by = count_by_version(story.cp, &story.ns);
        async move { (by.get("2.0.0") == Some(&2) && by.get("1.0.0") == Some(&6)).then_some(()) }
    })
    .await;
    story.replicas = 8;
    let s = story.status().await;
    assert_eq!(s["canary"]["step"], step, "the step did not move: {s:#}");
    assert_eq!(s["phase"], "Paused");
    story.assert_pods_run_their_revisions();
    modeldeploy::cli::send_request(
        &story.api,
        NAME,
        &modeldeploy::rollout::Request::new("go", modeldeploy::rollout::RequestAction::Promote),
    )
    .await
    .unwrap();
    story
        .until("v2 promoted", |s| {
            s["phase"] == "Stable" && s["stable"]["version"] == "2.0.0"
        })
        .await;
    story.scaled_to(8, &["2.0.0"]).await;
    story.budget_counts(8, 1).await;
    story.assert_pods_run_their_revisions();

    // With `maxUnavailable: 0` the eviction API lets no pod go.
    let budget = json!({"spec": {"disruption": {"maxUnavailable": 0}}});
    story
        .api
        .patch(NAME, &PatchParams::default(), &Patch::Merge(budget))
        .await
        .unwrap();
    story.budget_counts(8, 0).await;
    let names: Vec<String> = serving(story.cp, &story.ns)
        .into_iter()
        .map(|p| p.name)
        .collect();
    match pods.evict(&names[0], &EvictParams::default()).await {
        Err(kube::Error::Api(e)) => assert_eq!(e.code, 429, "{e:?}"),
        other => panic!("an eviction the budget forbids went through: {other:?}"),
    }

    // Scaled to zero by hand, the HPA gone: no pods, and status says so.
    hpas.delete(NAME, &Default::default()).await.unwrap();
    story.kubectl_scale(0);
    story.load = None;
    story.capacity.armed.store(false, Ordering::SeqCst);
    story.replicas = 0;
    story.wait_for_pods_count(0).await;
    let s = story
        .until("scaled to zero", |s| {
            s["replicas"] == 0 && s["phase"] == "Stable"
        })
        .await;
    assert!(
        s["message"].as_str().unwrap().contains("scaled to zero"),
        "{s:#}"
    );
    story.budget_counts(0, 0).await;
}

/// Idle cost on a real API server (the fake one keeps whatever it is sent,
/// so it cannot show a status the server stores differently, and its
/// Deployments' generation moves only with their spec): with v1 stable,
/// reconciles forced by touching an unrelated label of the model and an
/// annotation of its Deployment (which moves the Deployment's generation
/// ahead of its controller for a moment) write no status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_at_rest_is_reconciled_without_status_writes() {
    let Some(story) =
        Story::stable("rest", 2, canary(errors_check(), two_steps()), json!({})).await
    else {
        return;
    };
    // Settled: the status stops changing.
    let mut before = story.status().await;
    loop {
        tokio::time::sleep(std::time::Duration::from_secs(3)).await;
        let now = story.status().await;
        if now == before {
            break;
        }
        before = now;
    }
    let rv = |md: &modeldeploy::api::ModelDeployment| md.metadata.resource_version.clone();
    let deployments: Api<Deployment> = Api::namespaced(story.cp.admin().await, &story.ns);
    let v1 = story.deployment_of("1.0.0").await;
    let v1_name = v1.metadata.name.clone().unwrap();
    let mut versions = Vec::new();
    for i in 0..10 {
        let touched = deployments
            .patch(
                &v1_name,
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"annotations": {"touched": i.to_string()}}})),
            )
            .await
            .unwrap();
        assert!(touched.metadata.generation > v1.metadata.generation);
        let md = story
            .api
            .patch(
                NAME,
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"labels": {"touched": i.to_string()}}})),
            )
            .await
            .unwrap();
        versions.push(rv(&md));
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    let after = story.status().await;
    let md = story.api.get(NAME).await.unwrap();
    assert_eq!(
        Some(rv(&md)),
        versions.last().cloned(),
        "written at rest; status before {before:#} after {after:#}"
    );
}

/// A Service of someone else's named `name`.
fn someone_elses_service(name: &str) -> k8s_openapi::api::core::v1::Service {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"team": "web"}},
        "spec": {"selector": {"app": "web"}, "ports": [{"port": 80}]}
    }))
    .unwrap()
}

/// The operator binary under the chart's RBAC watching `ns`, and `NAME` at
/// v1 created there with `rollout` (none for `Value::Null`). `None` after
/// the skip line when a tool is missing.
async fn operator_and_model(
    cp: &'static ControlPlane,
    ns: &str,
    rollout: Value,
) -> Option<(
    support::real_operator::RealOperator,
    Api<modeldeploy::api::ModelDeployment>,
)> {
    let op = support::real_operator::RealOperator::start(
        cp,
        support::real_operator::OperatorOptions::watching(&[ns]),
    )
    .await?;
    op.wait_ready(WAIT).await;
    let api: Api<modeldeploy::api::ModelDeployment> = Api::namespaced(cp.admin().await, ns);
    let mut spec = json!({"model": model("1.0.0", &[]), "replicas": 1,
        "resources": {"requests": {"cpu": "100m", "memory": "64Mi"},
                      "limits": {"cpu": "1", "memory": "256Mi"}}});
    if !rollout.is_null() {
        spec["rollout"] = rollout;
    }
    let md = serde_json::from_value(json!({
        "apiVersion": "modeldeploy.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": NAME, "namespace": ns},
        "spec": spec
    }))
    .unwrap();
    api.create(&PostParams::default(), &md).await.unwrap();
    Some((op, api))
}

/// Waits for `Ready` to be InvalidSpec with a message naming `what`; returns it.
async fn refused_naming(api: &Api<modeldeploy::api::ModelDeployment>, what: &str) -> String {
    poll(&format!("InvalidSpec naming the {what}"), WAIT, || async {
        let md = api.get(NAME).await.unwrap();
        let s = serde_json::to_value(md.status.unwrap_or_default()).unwrap();
        let ready = s["conditions"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["type"] == "Ready").cloned())?;
        let message = ready["message"].as_str().unwrap_or_default().to_string();
        (ready["reason"] == "InvalidSpec" && message.contains(what)).then_some(message)
    })
    .await
}

/// Waits for `NAME` to be Stable with one pod serving v1.
async fn stable_with_one_v1_pod(
    cp: &ControlPlane,
    ns: &str,
    api: &Api<modeldeploy::api::ModelDeployment>,
) {
    poll("Stable once the name is free", WAIT, || async {
        let md = api.get(NAME).await.unwrap();
        let s = serde_json::to_value(md.status.unwrap_or_default()).unwrap();
        (s["phase"] == "Stable").then_some(())
    })
    .await;
    let pods = poll("one pod serving v1", WAIT, || async {
        let pods = serving(cp, ns);
        (pods.len() == 1).then_some(pods)
    })
    .await;
    assert_eq!(pods[0].image, image("1.0.0"));
    assert_eq!(
        pods[0].env.get("MODEL_VERSION").map(String::as_str),
        Some("1.0.0")
    );
}

/// A Service of someone else's already named like the model: the operator
/// refuses with the field named, under the chart's RBAC, runs no pod and
/// leaves the Service as it was; once the name is free it deploys and the
/// pods serve v1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_taken_by_someone_elses_service_is_refused_and_nothing_runs() {
    let Some(cp) = support::envtest::control_plane() else {
        return;
    };
    cp.install_crds().await;
    let ns = cp.namespace("claim").await;
    let admin = cp.admin().await;
    let services: Api<k8s_openapi::api::core::v1::Service> = Api::namespaced(admin.clone(), &ns);
    let theirs = services
        .create(&PostParams::default(), &someone_elses_service(NAME))
        .await
        .unwrap();
    let Some((_op, api)) = operator_and_model(cp, &ns, Value::Null).await else {
        return;
    };
    let message = refused_naming(&api, &format!("Service named {NAME}")).await;
    assert!(message.contains("metadata.name"), "{message}");
    // Another reconcile or two (it rechecks the name) change nothing.
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    let now = services.get(NAME).await.unwrap();
    assert_eq!(
        now.metadata.resource_version,
        theirs.metadata.resource_version
    );
    assert!(now.metadata.owner_references.is_none(), "{now:?}");
    let deployments: Api<Deployment> = Api::namespaced(admin.clone(), &ns);
    assert!(
        deployments
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );
    assert!(
        cp.kubelet().running(&ns).is_empty(),
        "pods run for a refused model"
    );

    services.delete(NAME, &Default::default()).await.unwrap();
    stable_with_one_v1_pod(cp, &ns, &api).await;
    let service = services.get(NAME).await.unwrap();
    assert_eq!(
        service.metadata.owner_references.unwrap_or_default()[0].name,
        NAME
    );
}

/// The gatewayAPI router's children are named after the model too: an
/// HTTPRoute `scorer` and a Service `scorer-canary` of someone else's are
/// each refused by name, under the chart's RBAC, and left exactly as they
/// were; no pod runs until both names are free, then the route is ours.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_the_gateway_api_router_needs_are_not_taken_from_someone_else() {
    let Some(cp) = support::envtest::control_plane() else {
        return;
    };
    cp.install_crds().await;
    if !cp.install_gateway_api().await {
        return;
    }
    let ns = cp.namespace("claim-gw").await;
    let admin = cp.admin().await;
    let route_resource =
        kube::api::ApiResource::erase::<modeldeploy::routers::gateway_api::HTTPRoute>(&());
    let routes: Api<kube::api::DynamicObject> =
        Api::namespaced_with(admin.clone(), &ns, &route_resource);
    let theirs_route = kube::api::DynamicObject::new(NAME, &route_resource)
        .data(json!({"spec": {"hostnames": ["web.example"],
            "rules": [{"backendRefs": [{"name": "web", "port": 80}]}]}}));
    let theirs_route = routes
        .create(&PostParams::default(), &theirs_route)
        .await
        .unwrap();
    let services: Api<k8s_openapi::api::core::v1::Service> = Api::namespaced(admin.clone(), &ns);
    let canary_service = format!("{NAME}-canary");
    let theirs_service = services
        .create(
            &PostParams::default(),
            &someone_elses_service(&canary_service),
        )
        .await
        .unwrap();
    let rollout = gateway(canary(errors_check(), two_steps()));
    let Some((_op, api)) = operator_and_model(cp, &ns, rollout).await else {
        return;
    };
    let message = refused_naming(&api, &format!("Service named {canary_service}")).await;
    assert!(message.contains("metadata.name"), "{message}");
    let live = services.get(&canary_service).await.unwrap();
    assert_eq!(
        live.metadata.resource_version, theirs_service.metadata.resource_version,
        "their Service was written"
    );
    services
        .delete(&canary_service, &Default::default())
        .await
        .unwrap();
    let message = refused_naming(&api, &format!("HTTPRoute named {NAME}")).await;
    assert!(message.contains("metadata.name"), "{message}");
    // Rechecks of the name change nothing.
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    let now = routes.get(NAME).await.unwrap();
    assert_eq!(
        now.metadata.resource_version,
        theirs_route.metadata.resource_version
    );
    assert!(now.metadata.owner_references.is_none(), "{now:?}");
    assert!(
        cp.kubelet().running(&ns).is_empty(),
        "pods run for a refused model"
    );

    routes.delete(NAME, &Default::default()).await.unwrap();
    stable_with_one_v1_pod(cp, &ns, &api).await;
    let route = poll("our route", WAIT, || async {
        routes.get_opt(NAME).await.unwrap()
    })
    .await;
    assert_eq!(
        route.metadata.owner_references.unwrap_or_default()[0].name,
        NAME
    );
    assert_eq!(route.data["spec"]["hostnames"], json!(["scorer.example"]));
}
