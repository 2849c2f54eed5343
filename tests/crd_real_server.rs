//! The CRD on a real kube-apiserver (the envtest control plane of
//! `support/envtest.rs`): only a real API server estimates CEL rule costs,
//! applies the OpenAPI keywords and CEL rules exactly as a cluster will, and
//! stores HTTPRoutes with the Gateway API's defaults.
//!
//! - `crds/` is accepted and Established (a CEL rule over its cost limit, or
//!   all rules over the CRD budget, would make the create fail);
//! - the cost margin: a probe CRD holding the spec schema 100 times over is
//!   still accepted, so every rule stays under 1% of the per-rule limit and
//!   all rules together under 1% of the per-CRD budget; the estimated costs
//!   are printed;
//! - every invalid spec of the shared table (`support/schema.rs`, also
//!   checked client-side by `crd_schema.rs`) is refused with a message naming
//!   the field, and every ModelDeployment under `examples/` is accepted
//!   (server-side dry-run creates);
//! - the HTTPRoutes the operator renders (weighted canary, header-matched
//!   A/B) are applied to the Gateway API v1.6.1 CRDs and read back into the
//!   operator's own types; and the operator itself (in process, under the
//!   chart's RBAC) reconciles a `gatewayAPI` ModelDeployment to Stable without
//!   a failure, and rewrites nothing at rest.
//!
//! Skipped with one `SKIPPED:` line without `KUBEBUILDER_ASSETS`.

#[path = "support/schema.rs"]
mod schema;
mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::ApiResource;
use kube::{Resource, ResourceExt};
use modeldeploy::api::{HttpMatch, ModelDeployment, Phase};
use modeldeploy::resources::APPLIED_HASH;
use modeldeploy::routers::gateway_api::{HTTPRoute, http_route};
use serde_json::{Value, json};

use schema::{example, example_model_deployments, invalid_cases};
use support::envtest::{control_plane, poll};
use support::real_operator::{OperatorOptions, in_process};

/// `kube-apiserver`'s `StaticEstimatedCostLimit`: the most one rule may be
/// estimated to cost, times the number of times it can run.
const RULE_COST_LIMIT: f64 = 10_000_000.0;
/// `StaticEstimatedCRDCostLimit`: the most all rules of a CRD may cost together.
const CRD_COST_LIMIT: f64 = 100_000_000.0;
/// The margin `crds/` keeps below both limits.
const MARGIN: u64 = 100;

/// The committed CRD, as users and the chart install it.
fn committed_crd() -> CustomResourceDefinition {
    let text = std::fs::read_to_string(format!(
        "{}/crds/modeldeployment.yaml",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap();
    serde_yaml::from_str(&text).unwrap()
}

fn model_deployments(client: &kube::Client, ns: &str) -> Api<DynamicObject> {
    Api::namespaced_with(
        client.clone(),
        ns,
        &ApiResource::erase::<ModelDeployment>(&()),
    )
}

fn dry_run() -> PostParams {
    PostParams {
        dry_run: true,
        ..Default::default()
    }
}

/// The refusal of `err` as `field: message` lines, one per cause.
fn causes(err: &kube::Error) -> Vec<String> {
    match err {
        kube::Error::Api(status) => {
            let listed: Vec<String> = status
                .details
                .iter()
                .flat_map(|d| d.causes.iter())
                .map(|c| format!("{}: {}", c.field, c.message))
                .collect();
            if listed.is_empty() {
                vec![status.message.clone()]
            } else {
                listed
            }
        }
        other => vec![other.to_string()],
    }
}

#[tokio::test]
async fn the_committed_crd_is_established() {
    let Some(cp) = control_plane() else { return };
    cp.install_crds().await;
    let crds: Api<CustomResourceDefinition> = Api::all(cp.admin().await);
    let crd = crds.get("modeldeployments.modeldeploy.io").await.unwrap();
    let conditions = crd.status.unwrap().conditions.unwrap_or_default();
    for want in ["Established", "NamesAccepted"] {
        assert!(
            conditions
                .iter()
                .any(|c| c.type_ == want && c.status == "True"),
            "{want} is not True: {conditions:?}"
        );
    }
    // What the server stored is what was committed: no rule was dropped.
    let stored = serde_json::to_value(&crd.spec.versions[0].schema).unwrap();
    let committed = serde_json::to_value(&committed_crd().spec.versions[0].schema).unwrap();
    assert_eq!(
        count_rules(&stored),
        count_rules(&committed),
        "the server stored a different number of CEL rules"
    );
}

fn count_rules(v: &Value) -> usize {
    match v {
        Value::Object(m) => {
            m.get("x-kubernetes-validations")
                .and_then(Value::as_array)
                .map_or(0, Vec::len)
                + m.iter()
                    .filter(|(k, _)| *k != "x-kubernetes-validations")
                    .map(|(_, v)| count_rules(v))
                    .sum::<usize>()
        }
        Value::Array(a) => a.iter().map(count_rules).sum(),
        _ => 0,
    }
}

/// A CRD whose spec is a list of at most `copies` ModelDeployment specs: the
/// API server multiplies every rule's estimated cost by the `maxItems` of the
/// lists around it, so each rule and the total cost `copies` times as much as
/// in `crds/`.
fn cost_probe(copies: u64) -> CustomResourceDefinition {
    let spec_schema = serde_json::to_value(
        committed_crd().spec.versions[0]
            .schema
            .as_ref()
            .unwrap()
            .open_api_v3_schema
            .as_ref()
            .unwrap()
            .properties
            .as_ref()
            .unwrap()["spec"]
            .clone(),
    )
    .unwrap();
    serde_json::from_value(json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "costprobes.costprobe.modeldeploy.io"},
        "spec": {
            "group": "costprobe.modeldeploy.io",
            "scope": "Namespaced",
            "names": {"plural": "costprobes", "singular": "costprobe", "kind": "CostProbe"},
            "versions": [{"name": "v1", "served": true, "storage": true, "schema": {
                "openAPIV3Schema": {"type": "object", "properties": {"spec": {
                    "type": "object", "properties": {"copies": {
                        "type": "array", "maxItems": copies, "items": spec_schema}}}}}}}]
        }
    }))
    .unwrap()
}

/// The estimated costs the API server reports for a probe of `copies`
/// copies, divided back by `copies`: (rule path, cost) for each rule over the
/// per-rule limit, and the total when over the CRD budget. The server gives
/// no number for factors above 100x; those are left out.
fn reported_costs(err: &kube::Error, copies: u64) -> (Vec<(String, f64)>, Option<f64>) {
    let factor = regex::Regex::new(r"exceeds budget by factor of ([0-9.]+)x").unwrap();
    let property = regex::Regex::new(r"properties\[([^\]]+)\]").unwrap();
    let rule = regex::Regex::new(r"\.x-kubernetes-validations\[(\d+)\]\.rule$").unwrap();
    let mut rules = Vec::new();
    let mut total = None;
    for cause in causes(err) {
        let Some(f) = factor
            .captures(&cause)
            .and_then(|c| c[1].parse::<f64>().ok())
        else {
            continue;
        };
        if cause.contains("total for entire OpenAPIv3 schema exceeds budget") {
            total = Some(f * CRD_COST_LIMIT / copies as f64);
        } else if cause.contains("estimated rule cost exceeds budget") {
            // spec.validation.openAPIV3Schema.properties[spec].properties[copies].items
            //   .properties[rollout].properties[analysis].x-kubernetes-validations[0].rule: ...
            let field = cause.split(": ").next().unwrap_or_default();
            let field = field
                .split_once("properties[copies].items.")
                .map_or(field, |(_, rest)| rest);
            let path = property.replace_all(field, "$1").replace(".items", "[]");
            let path = rule.replace(&path, " (rule $1)").into_owned();
            rules.push((path, f * RULE_COST_LIMIT / copies as f64));
        }
    }
    (rules, total)
}

#[tokio::test]
async fn cel_rule_costs_stay_far_inside_the_budget() {
    let Some(cp) = control_plane() else { return };
    let crds: Api<CustomResourceDefinition> = Api::all(cp.admin().await);
    // The committed CRD itself is accepted.
    crds.create(&dry_run(), &committed_crd())
        .await
        .map(|_| ())
        .or_else(|e| match &e {
            // Installed already by another test: a dry-run create says so
            // only after validating it.
            kube::Error::Api(s) if s.code == 409 => Ok(()),
            _ => Err(e),
        })
        .unwrap_or_else(|e| panic!("crds/ is refused: {:#?}", causes(&e)));
    // The margin: every cost times MARGIN still fits.
    if let Err(e) = crds.create(&dry_run(), &cost_probe(MARGIN)).await {
        let (rules, total) = reported_costs(&e, MARGIN);
        panic!(
            "a rule or the total is within {MARGIN}x of the API server's limits: \
             rules {rules:#?}, total {total:?}\n{:#?}",
            causes(&e)
        );
    }
    // The probe measures: far enough beyond the margin it is refused, and the
    // server's factors give each rule's estimated cost (printed for the docs).
    let mut costs: BTreeMap<String, f64> = BTreeMap::new();
    let mut total = None;
    let mut refused = false;
    for copies in [10_000, 100_000, 1_000_000, 10_000_000] {
        let Err(e) = crds.create(&dry_run(), &cost_probe(copies)).await else {
            continue;
        };
        refused = true;
        let (rules, t) = reported_costs(&e, copies);
        for (path, cost) in rules {
            costs.entry(path).or_insert(cost);
        }
        total = total.or(t);
    }
    assert!(
        refused,
        "the cost probe never hit a limit: it measures nothing"
    );
    let mut by_cost: Vec<_> = costs.into_iter().collect();
    by_cost.sort_by(|a, b| b.1.total_cmp(&a.1));
    println!(
        "estimated CEL rule costs (rule limit {RULE_COST_LIMIT}, CRD budget {CRD_COST_LIMIT}):"
    );
    for (path, cost) in &by_cost {
        println!("  {cost:>10.0}  {path}");
    }
    println!("  total {total:?}");
    let (worst, cost) = by_cost.first().expect("costs were reported");
    assert!(
        *cost < RULE_COST_LIMIT / MARGIN as f64,
        "{worst}: estimated {cost}"
    );
    if let Some(total) = total {
        assert!(total < CRD_COST_LIMIT / MARGIN as f64, "total {total}");
    }
}

#[tokio::test]
async fn every_invalid_case_is_refused_by_the_api_server_naming_the_field() {
    let Some(cp) = control_plane() else { return };
    cp.install_crds().await;
    let ns = cp.namespace("crd-cases").await;
    let api = model_deployments(&cp.admin().await, &ns);
    let mut failures = Vec::new();
    let cases = invalid_cases();
    for case in &cases {
        let mut object = case.object();
        object["metadata"]["namespace"] = json!(ns);
        let object: DynamicObject = serde_json::from_value(object).unwrap();
        match api.create(&dry_run(), &object).await {
            Ok(_) => failures.push(format!("{}: accepted", case.what)),
            Err(e) => {
                let found = causes(&e);
                let code = match &e {
                    kube::Error::Api(s) => s.code,
                    _ => 0,
                };
                if code != 422
                    || !found
                        .iter()
                        .any(|m| case.server.iter().all(|want| m.contains(want)))
                {
                    failures.push(format!(
                        "{}: expected a {code}=422 refusal mentioning {:?}, got {found:#?}",
                        case.what, case.server
                    ));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(
        cases.len() >= 30,
        "the case table shrank to {}",
        cases.len()
    );
}

#[tokio::test]
async fn every_example_is_accepted_by_the_api_server() {
    let Some(cp) = control_plane() else { return };
    cp.install_crds().await;
    let ns = cp.namespace("crd-examples").await;
    let api = model_deployments(&cp.admin().await, &ns);
    let examples = example_model_deployments();
    assert!(
        examples.len() >= 5,
        "found only {} examples",
        examples.len()
    );
    for (file, mut object) in examples {
        object["metadata"]["namespace"] = json!(ns);
        let object: DynamicObject = serde_json::from_value(object).unwrap();
        if let Err(e) = api.create(&dry_run(), &object).await {
            panic!("{file} is refused: {:#?}", causes(&e));
        }
    }
}

/// The HTTPRoutes the operator renders, server-side applied to the Gateway
/// API CRDs and read back: they decode into the operator's types (the server
/// adds defaults and prunes), carry the same applied hash, and a second apply
/// of the same route changes nothing.
#[tokio::test]
async fn rendered_http_routes_round_trip_through_the_gateway_api_crds() {
    let Some(cp) = control_plane() else { return };
    cp.install_crds().await;
    if !cp.install_gateway_api().await {
        return;
    }
    let client = cp.admin().await;
    let ns = cp.namespace("gateway-routes").await;
    // A real owner, so that the garbage collector leaves the routes alone.
    let (_, mut object) = example_model_deployments()
        .into_iter()
        .find(|(f, _)| f == "ab-test-gateway.yaml")
        .expect("examples/ab-test-gateway.yaml");
    object["metadata"]["namespace"] = json!(ns);
    let md: ModelDeployment = serde_json::from_value(object).unwrap();
    let md = Api::<ModelDeployment>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &md)
        .await
        .unwrap();
    let rollout = md.spec.rollout.as_ref().unwrap();
    let gateway = rollout.traffic.gateway_api.as_ref().unwrap();
    let matches: Vec<HttpMatch> = rollout.ab_test.as_ref().unwrap().matches.clone().unwrap();
    let routes: Api<HTTPRoute> = Api::namespaced(client, &ns);
    let apply = PatchParams::apply("modeldeploy").force();
    for (what, rendered) in [
        ("weighted canary", http_route(&md, gateway, 30, &[])),
        ("header-matched A/B", http_route(&md, gateway, 50, &matches)),
        (
            "all traffic on stable",
            http_route(&md, gateway, 0, &matches),
        ),
    ] {
        let name = rendered.name_any();
        let applied = routes
            .patch(&name, &apply, &Patch::Apply(&rendered))
            .await
            .unwrap_or_else(|e| panic!("{what}: apply: {e}"));
        let live = routes
            .get(&name)
            .await
            .unwrap_or_else(|e| panic!("{what}: read back: {e}"));
        assert_eq!(
            live.spec.with_server_defaults(),
            rendered.spec.with_server_defaults(),
            "{what}: the stored route differs from the rendered one"
        );
        assert_eq!(
            live.annotations().get(APPLIED_HASH),
            rendered.annotations().get(APPLIED_HASH),
            "{what}: the applied hash did not survive"
        );
        assert_eq!(
            live.owner_references()[0].uid,
            md.meta().uid.clone().unwrap()
        );
        // The same apply again is a no-op for the server too.
        let again = routes
            .patch(&name, &apply, &Patch::Apply(&rendered))
            .await
            .unwrap();
        assert_eq!(
            again.resource_version(),
            applied.resource_version(),
            "{what}: re-applying the same route wrote a new version"
        );
    }
}

/// Reconcile failures the operator counted so far, all categories.
fn reconcile_failures(metrics: &modeldeploy::telemetry::Metrics) -> u64 {
    metrics
        .registry
        .gather()
        .iter()
        .filter(|f| f.name().ends_with("reconcile_failures_total"))
        .flat_map(|f| f.get_metric().iter())
        .map(|m| m.get_counter().get_value() as u64)
        .sum()
}

/// What failed on a real cluster before the route types were tolerant: each
/// reconcile of a `gatewayAPI` ModelDeployment read its HTTPRoute back and
/// could not decode it (`missing field 'headers'`). Now the operator routes,
/// the ModelDeployment becomes Stable, and a reconcile at rest writes nothing
/// to the route although the server added its defaults to it.
#[tokio::test]
async fn the_operator_reconciles_a_gateway_api_model_deployment_without_failures() {
    const WAIT: Duration = Duration::from_secs(90);
    let Some(cp) = control_plane() else { return };
    cp.install_crds().await;
    if !cp.install_gateway_api().await {
        return;
    }
    let ns = cp.namespace("gateway-operator").await;
    let Some(operator) = in_process(cp, OperatorOptions::watching(&[&ns])).await else {
        return;
    };
    let client = cp.admin().await;
    let mut object = example();
    object["metadata"]["namespace"] = json!(ns);
    object["spec"]["replicas"] = json!(1);
    object["spec"]["rollout"]["traffic"] = json!({"router": "gatewayAPI", "gatewayAPI": {
        "parentRefs": [{"name": "public", "namespace": "gateways"}],
        "hostnames": ["scorer.example.com"]}});
    let md: ModelDeployment = serde_json::from_value(object).unwrap();
    let name = md.name_any();
    let mds = Api::<ModelDeployment>::namespaced(client.clone(), &ns);
    mds.create(&PostParams::default(), &md).await.unwrap();
    let routes: Api<HTTPRoute> = Api::namespaced(client, &ns);
    let route = poll(
        "a Stable ModelDeployment and its HTTPRoute",
        WAIT,
        || async {
            let md = mds.get(&name).await.ok()?;
            (md.status?.phase? == Phase::Stable).then_some(())?;
            routes.get_opt(&name).await.ok().flatten()
        },
    )
    .await;
    let weights: Vec<_> = route.spec.rules[0]
        .backend_refs
        .iter()
        .map(|b| (b.name.clone(), b.weight))
        .collect();
    assert_eq!(
        weights,
        vec![
            (format!("{name}-stable"), 100),
            (format!("{name}-canary"), 0)
        ]
    );
    assert_eq!(
        route.spec.rules[0].matches[0]
            .path
            .as_ref()
            .map(|p| p.value.as_str()),
        Some("/"),
        "the server's default is there"
    );
    assert_eq!(
        reconcile_failures(&operator.metrics),
        0,
        "a reconcile failed"
    );
    // Poke the ModelDeployment: the reconciles that follow find the route as
    // applied (same hash) and leave it alone.
    let before = operator.metrics.reconciles.get();
    mds.patch(
        &name,
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"annotations": {"test.modeldeploy.io/poke": "1"}}})),
    )
    .await
    .unwrap();
    poll("a reconcile after the poke", WAIT, || async {
        (operator.metrics.reconciles.get() > before).then_some(())
    })
    .await;
    // Counted when it starts; its writes are in once it is timed, at the end.
    support::reconciles_finished(&operator.metrics, WAIT).await;
    let after = routes.get(&name).await.unwrap();
    assert_eq!(
        after.resource_version(),
        route.resource_version(),
        "the route was written again at rest"
    );
    assert_eq!(
        reconcile_failures(&operator.metrics),
        0,
        "a reconcile failed"
    );
    operator.stop().await.expect("the operator stops cleanly");
}
