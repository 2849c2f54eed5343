//! The Helm chart without helm: its values against values.schema.json (and
//! the schema refusing bad values), every plain YAML file in it parsing.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};

const CHART: &str = "charts/modeldeploy";

fn path(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

fn read(relative: &str) -> String {
    std::fs::read_to_string(path(relative)).unwrap_or_else(|e| panic!("reading {relative}: {e}"))
}

fn yaml(relative: &str) -> Value {
    serde_yaml::from_str(&read(relative)).unwrap_or_else(|e| panic!("{relative} parses: {e}"))
}

// ---------------------------------------------------------------------------
// values.schema.json

fn schema() -> Value {
    serde_json::from_str(&read(&format!("{CHART}/values.schema.json")))
        .expect("values.schema.json is JSON")
}

fn default_values() -> Value {
    yaml(&format!("{CHART}/values.yaml"))
}

/// The schema's complaints about `values`, as `path: message`.
fn schema_errors(values: &Value) -> Vec<String> {
    let schema = schema();
    let validator = jsonschema::draft7::options()
        .should_validate_formats(false)
        .build(&schema)
        .expect("values.schema.json compiles as draft-07");
    validator
        .iter_errors(values)
        .map(|e| format!("{}: {e}", e.instance_path()))
        .collect()
}

#[test]
fn the_schema_is_a_draft_07_schema() {
    let schema = schema();
    assert_eq!(
        schema["$schema"], "http://json-schema.org/draft-07/schema#",
        "helm validates values with draft-07"
    );
    if let Err(e) = jsonschema::draft7::meta::validate(&schema) {
        panic!("values.schema.json is not a valid draft-07 schema: {e}");
    }
}

#[test]
fn the_default_values_are_valid() {
    assert_eq!(schema_errors(&default_values()), Vec::<String>::new());
}

#[test]
fn every_default_value_is_declared_in_the_schema() {
    // `additionalProperties: false` at the top already enforces this for the
    // first level; this walks the nested objects the schema describes.
    fn walk(values: &Value, schema: &Value, root: &Value, at: &str, out: &mut Vec<String>) {
        let schema = match schema.get("$ref").and_then(Value::as_str) {
            Some(r) => {
                let name = r.trim_start_matches("#/definitions/");
                &root["definitions"][name]
            }
            None => schema,
        };
        let (Some(object), Some(props)) = (values.as_object(), schema.get("properties")) else {
            return;
        };
        for (key, value) in object {
            match props.get(key) {
                Some(sub) => walk(value, sub, root, &format!("{at}.{key}"), out),
                None if schema.get("additionalProperties") == Some(&Value::Bool(false)) => {
                    out.push(format!("{at}.{key}"))
                }
                None => {}
            }
        }
    }
    let schema = schema();
    let mut undeclared = Vec::new();
    walk(&default_values(), &schema, &schema, "", &mut undeclared);
    assert_eq!(undeclared, Vec::<String>::new());
}

/// `values` with `pointer` (a JSON pointer) set to `value`.
fn with(pointer: &str, value: Value) -> Value {
    let mut values = default_values();
    let (parent, key) = pointer.rsplit_once('/').expect("a pointer");
    values
        .pointer_mut(parent)
        .and_then(Value::as_object_mut)
        .unwrap_or_else(|| panic!("{parent} is an object in values.yaml"))
        .insert(key.to_string(), value);
    values
}

fn assert_refused(values: Value, expected_path: &str) {
    let errors = schema_errors(&values);
    assert!(
        errors
            .iter()
            .any(|e| e.starts_with(&format!("{expected_path}:"))),
        "expected an error at {expected_path}, got {errors:?}"
    );
}

#[test]
fn bad_values_are_refused() {
    let cases: Vec<(&str, Value, &str)> = vec![
        ("/replicaCount", json!("two"), "/replicaCount"),
        ("/replicaCount", json!(0), "/replicaCount"),
        ("/replicaCount", json!(1.5), "/replicaCount"),
        ("/replicaCas", json!(2), ""),
        ("/image/pullPolicy", json!("Sometimes"), "/image/pullPolicy"),
        ("/image/pullpolicy", json!("Always"), "/image"),
        ("/image/repository", json!(""), "/image/repository"),
        ("/metrics/port", json!(0), "/metrics/port"),
        ("/metrics/port", json!(65536), "/metrics/port"),
        ("/metrics/port", json!("8080"), "/metrics/port"),
        (
            "/leaderElection/enabled",
            json!("yes"),
            "/leaderElection/enabled",
        ),
        ("/watchNamespaces", json!(["Risk"]), "/watchNamespaces/0"),
        ("/watchNamespaces", json!("risk"), "/watchNamespaces"),
        ("/logJson", json!("true"), "/logJson"),
        ("/podLabels", json!({"team": 1}), "/podLabels/team"),
        (
            "/serviceMonitor/interval",
            json!("30"),
            "/serviceMonitor/interval",
        ),
        ("/resources/requsts", json!({}), "/resources"),
        (
            "/prometheusRule/enabled",
            json!("true"),
            "/prometheusRule/enabled",
        ),
        (
            "/prometheusRule/driftScoreThreshold",
            json!("0.3"),
            "/prometheusRule/driftScoreThreshold",
        ),
        (
            "/prometheusRule/driftScoreThreshold",
            json!(-1),
            "/prometheusRule/driftScoreThreshold",
        ),
        (
            "/prometheusRule/stuckPausedFor",
            json!("six hours"),
            "/prometheusRule/stuckPausedFor",
        ),
        (
            "/prometheusRule/operatorJobRegex",
            json!("a\"b"),
            "/prometheusRule/operatorJobRegex",
        ),
        ("/prometheusRule/treshold", json!(1), "/prometheusRule"),
        (
            "/grafanaDashboard/labels",
            json!({"grafana_dashboard": 1}),
            "/grafanaDashboard/labels/grafana_dashboard",
        ),
        ("/grafanaDashboard/folder", json!("ML"), "/grafanaDashboard"),
    ];
    for (pointer, value, expected_path) in cases {
        assert_refused(with(pointer, value), expected_path);
    }
}

#[test]
fn good_overrides_are_accepted() {
    let cases: Vec<(&str, Value)> = vec![
        ("/replicaCount", json!(1)),
        ("/image/tag", json!("0.2.0")),
        ("/image/pullPolicy", json!("Always")),
        ("/imagePullSecrets", json!([{"name": "regcred"}])),
        ("/watchNamespaces", json!(["risk", "ml-serving"])),
        ("/metrics/port", json!(65535)),
        ("/resources/limits", json!({"cpu": 2, "memory": "512Mi"})),
        ("/tolerations", json!([{"operator": "Exists"}])),
        ("/serviceMonitor/interval", json!("1m30s")),
        ("/prometheusRule/enabled", json!(true)),
        (
            "/prometheusRule/labels",
            json!({"release": "kube-prometheus-stack"}),
        ),
        ("/prometheusRule/driftScoreThreshold", json!(1)),
        ("/prometheusRule/stuckPausedFor", json!("1d")),
        ("/grafanaDashboard/enabled", json!(true)),
        (
            "/grafanaDashboard/annotations",
            json!({"grafana_folder": "ML"}),
        ),
    ];
    for (pointer, value) in cases {
        let errors = schema_errors(&with(pointer, value.clone()));
        assert!(errors.is_empty(), "{pointer} = {value} refused: {errors:?}");
    }
}

// ---------------------------------------------------------------------------
// Plain YAML files

/// Every file under `dir` (recursively) whose name ends with one of `exts`.
fn files_under(dir: &Path, exts: &[&str]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display())) {
            let p = entry.expect("directory entry").path();
            if p.is_dir() {
                stack.push(p);
            } else if exts
                .iter()
                .any(|x| p.extension().and_then(|e| e.to_str()) == Some(x))
            {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

#[test]
fn every_plain_yaml_file_of_the_chart_parses() {
    let chart = path(CHART);
    let templates = chart.join("templates");
    let files: Vec<_> = files_under(&chart, &["yaml", "yml"])
        .into_iter()
        .filter(|p| !p.starts_with(&templates))
        .collect();
    for required in ["Chart.yaml", "values.yaml", "crds/modeldeployment.yaml"] {
        assert!(
            files.contains(&chart.join(required)),
            "{required} missing from {files:?}"
        );
    }
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let parsed: Result<Value, _> = serde::Deserialize::deserialize(doc);
            if let Err(e) = parsed {
                panic!("{} does not parse: {e}", file.display());
            }
        }
    }
    let chart_yaml = yaml(&format!("{CHART}/Chart.yaml"));
    assert_eq!(chart_yaml["apiVersion"], "v2");
    assert_eq!(chart_yaml["name"], "modeldeploy");
}
