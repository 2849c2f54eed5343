//! The CRD as the API server sees it: committed YAML in sync with the types, a
//! structural schema, CEL rules that compile within the cost budget, and invalid
//! specs refused with a message naming the field. CEL is evaluated client-side by
//! kube-cel; the plain OpenAPI keywords (required, enum, ranges) by jsonschema.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube_cel::compile_schema;
use kube_cel::{ScopeContext, WarningKind, analyze_rule};
use modeldeploy::api::{ModelDeployment, crd_yaml};
use serde_json::{Value, json};

#[path = "support/schema.rs"]
mod schema;
use schema::{example, invalid_cases, open_api_schema, rejections};

const COMMITTED: [&str; 2] = [
    "crds/modeldeployment.yaml",
    "charts/modeldeploy/files/crds/modeldeployment.yaml",
];

#[test]
fn committed_crds_match_the_rust_types() {
    let generated = crd_yaml();
    for path in COMMITTED {
        let full = format!("{}/{path}", env!("CARGO_MANIFEST_DIR"));
        let committed = std::fs::read_to_string(&full).unwrap_or_default();
        assert!(
            committed == generated,
            "{path} is out of date: run `cargo run -- crd > {path}`"
        );
    }
}

#[test]
fn generated_yaml_is_a_valid_v1_crd() {
    let crd: CustomResourceDefinition = serde_yaml::from_str(&crd_yaml()).expect("parses as CRD");
    assert_eq!(crd.spec.group, "modeldeploy.io");
    assert_eq!(crd.spec.names.short_names, Some(vec!["mdep".to_string()]));
    let version = &crd.spec.versions[0];
    assert_eq!(version.name, "v1alpha1");
    assert!(version.subresources.as_ref().unwrap().status.is_some());
    let columns: Vec<_> = version
        .additional_printer_columns
        .as_ref()
        .unwrap()
        .iter()
        .map(|c| c.name.as_str())
        .collect();
    for want in ["Version", "Phase", "Canary-Weight", "Age"] {
        assert!(columns.contains(&want), "printer column {want} missing");
    }
    let schema =
        serde_json::to_value(version.schema.as_ref().unwrap().open_api_v3_schema.as_ref()).unwrap();
    assert_structural(&schema, "");
}

/// Every node of a structural schema says its type (or is int-or-string / free form).
fn assert_structural(node: &Value, path: &str) {
    let obj = node.as_object().expect("schema node is an object");
    let free = obj.get("x-kubernetes-preserve-unknown-fields") == Some(&json!(true))
        || obj.get("x-kubernetes-int-or-string") == Some(&json!(true));
    assert!(
        obj.contains_key("type") || free,
        "{path}: schema node has no type"
    );
    for banned in ["$ref", "oneOf", "allOf", "definitions", "$defs"] {
        if banned == "oneOf" && free {
            continue;
        }
        assert!(
            !obj.contains_key(banned),
            "{path}: {banned} is not structural"
        );
    }
    if let Some(props) = obj.get("properties").and_then(Value::as_object) {
        for (k, v) in props {
            assert_structural(v, &format!("{path}.{k}"));
        }
    }
    if let Some(items) = obj.get("items") {
        assert_structural(items, &format!("{path}[]"));
    }
    if let Some(extra) = obj.get("additionalProperties").filter(|v| v.is_object()) {
        assert_structural(extra, &format!("{path}{{}}"));
    }
}

/// kube-cel's scope analysis flags variables bound by nested comprehension
/// macros (`all(c, exists_one(d, ...))`) as out of scope, so only its cost
/// estimate is enforced; compilation itself is checked too.
#[test]
fn every_cel_rule_compiles_within_the_cost_budget() {
    fn walk(node: &Value, path: &str, rules: &mut usize) {
        let Some(obj) = node.as_object() else { return };
        if let Some(list) = obj
            .get("x-kubernetes-validations")
            .and_then(Value::as_array)
        {
            let compiled = compile_schema(node);
            assert!(
                !compiled.has_errors(),
                "{path}: rule does not compile: {:?}",
                compiled.compilation_errors()
            );
            for rule in list {
                let text = rule["rule"].as_str().unwrap();
                assert!(
                    rule["message"].as_str().is_some_and(|m| !m.is_empty()),
                    "{path}: rule {text} has no message"
                );
                for w in analyze_rule(text, &compiled, ScopeContext::CrdValidation) {
                    assert!(
                        !matches!(w.kind, WarningKind::CostExceeded),
                        "{path}: {text}: {}",
                        w.message
                    );
                }
                *rules += 1;
            }
        }
        for key in ["properties"] {
            if let Some(props) = obj.get(key).and_then(Value::as_object) {
                for (k, v) in props {
                    walk(v, &format!("{path}.{k}"), rules);
                }
            }
        }
        if let Some(items) = obj.get("items") {
            walk(items, &format!("{path}[]"), rules);
        }
    }
    let mut rules = 0;
    walk(&open_api_schema(), "", &mut rules);
    assert!(
        rules >= 25,
        "expected the CEL rules of the API, found {rules}"
    );
}

#[test]
fn the_example_is_accepted() {
    assert_eq!(rejections(&example()), Vec::<String>::new());
}

/// The shared table of invalid specs (also sent to a real API server by
/// `tests/crd_real_server.rs`): each is refused client-side with a message
/// naming the field.
#[test]
fn every_invalid_case_is_refused_with_a_message_naming_the_field() {
    let mut failures = Vec::new();
    let cases = invalid_cases();
    for case in &cases {
        let found = rejections(&case.object());
        if !found
            .iter()
            .any(|m| case.client.iter().all(|want| m.contains(want)))
        {
            failures.push(format!(
                "{}: expected a rejection mentioning {:?}, got {found:#?}",
                case.what, case.client
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(
        cases.len() >= 30,
        "the case table shrank to {}",
        cases.len()
    );
}

#[test]
fn the_example_deserializes_and_passes_reconcile_time_validation() {
    let md: ModelDeployment = serde_json::from_value(example()).expect("example deserializes");
    let valid = modeldeploy::api::validate(&md.spec).expect("example is valid");
    assert_eq!(valid.analysis_interval.as_secs(), 30);
    assert_eq!(valid.pause_durations[1].map(|d| d.as_secs()), Some(120));
}
