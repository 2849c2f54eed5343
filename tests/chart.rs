//! The Helm chart without helm: its values against values.schema.json (and
//! the schema refusing bad values), every plain YAML file in it parsing.

#[path = "support/tools.rs"]
mod tools;

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
            "/prometheus/url",
            json!("ftp://prom:9090"),
            "/prometheus/url",
        ),
        ("/scrape/concurrency", json!(0), "/scrape/concurrency"),
        (
            "/notifications/webhook/url",
            json!("hooks.slack.com/x"),
            "/notifications/webhook/url",
        ),
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
        (
            "/prometheus/url",
            json!("http://prometheus-operated.monitoring:9090"),
        ),
        (
            "/notifications/webhook/existingSecret",
            json!("slack-webhook"),
        ),
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

// ---------------------------------------------------------------------------
// Metric names in PromQL

/// What the operator exports on /metrics (src/telemetry.rs), plus `up` from
/// Prometheus. Histograms also expose `_bucket`, `_sum` and `_count`.
const EXPORTED: [&str; 12] = [
    "modeldeploy_reconcile_total",
    "modeldeploy_reconcile_failures_total",
    "modeldeploy_reconcile_duration_seconds",
    "modeldeploy_phase",
    "modeldeploy_canary_weight",
    "modeldeploy_check_value",
    "modeldeploy_check_outcome",
    "modeldeploy_drift_max_score",
    "modeldeploy_drift_score",
    "modeldeploy_rollbacks_total",
    "modeldeploy_scrape_errors_total",
    "modeldeploy_scrape_duration_seconds",
];
const HISTOGRAMS: [&str; 2] = [
    "modeldeploy_reconcile_duration_seconds",
    "modeldeploy_scrape_duration_seconds",
];

/// The exported metric a series name belongs to (`x_bucket` of histogram `x` is `x`).
fn exported_metric(series: &str) -> Option<&'static str> {
    if series == "up" {
        return Some("up");
    }
    if let Some(m) = EXPORTED.iter().find(|m| **m == series) {
        return Some(m);
    }
    HISTOGRAMS.iter().copied().find(|h| {
        ["_bucket", "_sum", "_count"]
            .iter()
            .any(|suffix| series == format!("{h}{suffix}"))
    })
}

/// Metric names a PromQL expression selects. A small scanner, not a parser:
/// it skips strings, label matchers `{...}`, ranges `[...]`, numbers and
/// durations, Grafana variables (`$x`, `${x}`), function calls, keywords,
/// and the label lists of `by`/`without`/`on`/`ignoring`/`group_left`/`group_right`.
fn metric_names(expr: &str) -> Vec<String> {
    const KEYWORDS: [&str; 21] = [
        "sum",
        "min",
        "max",
        "avg",
        "group",
        "stddev",
        "stdvar",
        "count",
        "count_values",
        "bottomk",
        "topk",
        "quantile",
        "and",
        "or",
        "unless",
        "bool",
        "offset",
        "inf",
        "nan",
        "atan2",
        "limitk",
    ];
    const LABEL_LISTS: [&str; 6] = [
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
    ];
    let chars: Vec<char> = expr.chars().collect();
    let mut names = Vec::new();
    let mut i = 0;
    let skip_to = |from: usize, close: char| -> usize {
        let mut j = from;
        let mut quote: Option<char> = None;
        while j < chars.len() {
            match (quote, chars[j]) {
                (Some(_), '\\') => j += 1,
                (Some(q), c) if c == q => quote = None,
                (None, '"' | '\'' | '`') => quote = Some(chars[j]),
                (None, c) if c == close => return j + 1,
                _ => {}
            }
            j += 1;
        }
        panic!("unclosed {close:?} in {expr}");
    };
    while i < chars.len() {
        let c = chars[i];
        match c {
            '"' | '\'' | '`' => {
                let mut j = i + 1;
                while j < chars.len() && chars[j] != c {
                    j += if chars[j] == '\\' { 2 } else { 1 };
                }
                i = j + 1;
            }
            '{' => i = skip_to(i + 1, '}'),
            '[' => i = skip_to(i + 1, ']'),
            '$' => {
                // A Grafana variable: $name, ${name} or ${name:format}.
                i += 1;
                if chars.get(i) == Some(&'{') {
                    i = skip_to(i + 1, '}');
                } else {
                    while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                        i += 1;
                    }
                }
            }
            c if c.is_ascii_digit() || c == '.' => {
                while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '.') {
                    i += 1;
                }
            }
            c if c.is_ascii_alphabetic() || c == '_' || c == ':' => {
                let start = i;
                while i < chars.len()
                    && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':')
                {
                    i += 1;
                }
                let word: String = chars[start..i].iter().collect();
                let mut next = i;
                while next < chars.len() && chars[next].is_whitespace() {
                    next += 1;
                }
                let call = chars.get(next) == Some(&'(');
                if LABEL_LISTS.contains(&word.as_str()) {
                    if call {
                        i = skip_to(next + 1, ')');
                    }
                } else if !call && !KEYWORDS.contains(&word.as_str()) {
                    names.push(word);
                }
            }
            _ => i += 1,
        }
    }
    names
}

#[test]
fn the_promql_scanner_finds_metric_names_only() {
    let expr = r#"histogram_quantile(0.99, sum by (le) (rate(modeldeploy_reconcile_duration_seconds_bucket{job=~"$job", x="a}b"}[$__rate_interval])))
        / on (namespace, name) group_left(phase) max without (pod) (modeldeploy_phase{phase="Paused"} offset 5m) > bool 1e3
        or absent(up{job=~".*modeldeploy.*"} == 1) unless sum(increase(modeldeploy_rollbacks_total[${__range}]))"#;
    assert_eq!(
        metric_names(expr),
        [
            "modeldeploy_reconcile_duration_seconds_bucket",
            "modeldeploy_phase",
            "up",
            "modeldeploy_rollbacks_total"
        ]
    );
}

// ---------------------------------------------------------------------------
// Alerts

const ALERTS: &str = "deploy/prometheus/alerts.yaml";
const ALERTS_TEST: &str = "deploy/prometheus/alerts_test.yaml";
const ALERTS_IN_CHART: &str = "charts/modeldeploy/files/alerts.yaml";
const REQUIRED_ALERTS: [&str; 5] = [
    "ModelDeployRolledBack",
    "ModelDeployDriftDetected",
    "ModelDeployOperatorDown",
    "ModelDeployReconcileErrors",
    "ModelDeployStuckPaused",
];

fn alert_rules() -> Vec<Value> {
    let file = yaml(ALERTS);
    let groups = file["groups"].as_array().expect("groups:");
    groups
        .iter()
        .flat_map(|g| g["rules"].as_array().expect("rules:").clone())
        .collect()
}

fn alert(name: &str) -> Value {
    alert_rules()
        .into_iter()
        .find(|r| r["alert"] == name)
        .unwrap_or_else(|| panic!("{name} not in {ALERTS}"))
}

/// Runs promtool from the repository root; `None` (a skip) when it is missing.
fn promtool(args: &[&str]) -> Option<std::process::Output> {
    if !tools::available("promtool", &["--version"], "prometheus") {
        return None;
    }
    Some(
        std::process::Command::new("promtool")
            .args(args)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .expect("running promtool"),
    )
}

fn assert_success(output: Option<std::process::Output>, what: &str) {
    let Some(output) = output else {
        return;
    };
    assert!(
        output.status.success(),
        "{what} failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn promtool_accepts_the_alert_rules() {
    assert_success(
        promtool(&["check", "rules", ALERTS]),
        "promtool check rules",
    );
}

#[test]
fn promtool_unit_tests_of_the_alerts_pass() {
    assert_success(
        promtool(&["test", "rules", ALERTS_TEST]),
        "promtool test rules",
    );
}

#[test]
fn every_alert_is_unit_tested_firing_and_quiet() {
    let tests = yaml(ALERTS_TEST);
    let cases: Vec<&Value> = tests["tests"]
        .as_array()
        .expect("tests:")
        .iter()
        .flat_map(|t| t["alert_rule_test"].as_array().into_iter().flatten())
        .collect();
    for rule in alert_rules() {
        let name = rule["alert"].as_str().expect("alerting rules only");
        let evaluations: Vec<usize> = cases
            .iter()
            .filter(|c| c["alertname"] == name)
            .map(|c| c["exp_alerts"].as_array().map_or(0, Vec::len))
            .collect();
        assert!(
            evaluations.iter().any(|n| *n > 0),
            "{name}: no unit test where it fires"
        );
        assert!(
            evaluations.contains(&0),
            "{name}: no unit test where it stays quiet"
        );
    }
}

#[test]
fn the_required_alerts_are_there_with_runbook_annotations() {
    let rules = alert_rules();
    let names: Vec<&str> = rules.iter().filter_map(|r| r["alert"].as_str()).collect();
    for required in REQUIRED_ALERTS {
        assert!(names.contains(&required), "{required} missing: {names:?}");
    }
    for rule in &rules {
        let name = &rule["alert"];
        for key in ["summary", "description"] {
            let text = rule["annotations"][key].as_str().unwrap_or_default();
            assert!(text.len() > 20, "{name}: no useful {key}");
        }
        assert!(
            rule["annotations"]["description"]
                .as_str()
                .is_some_and(|d| d.contains("Runbook:")),
            "{name}: the description has no runbook"
        );
        assert!(
            ["critical", "warning", "info"]
                .contains(&rule["labels"]["severity"].as_str().unwrap_or("")),
            "{name}: severity must be critical, warning or info"
        );
    }
}

#[test]
fn the_alerts_use_only_exported_metrics() {
    for rule in alert_rules() {
        let expr = rule["expr"].as_str().expect("expr");
        for name in metric_names(expr) {
            assert!(
                exported_metric(&name).is_some(),
                "{}: {name} is not a metric the operator exports",
                rule["alert"]
            );
        }
    }
}

#[test]
fn the_chart_embeds_the_same_alerts() {
    assert!(
        read(ALERTS) == read(ALERTS_IN_CHART),
        "{ALERTS_IN_CHART} differs from {ALERTS}: run `cp {ALERTS} {ALERTS_IN_CHART}`"
    );
    let template = read(&format!("{CHART}/templates/prometheusrule.yaml"));
    assert!(template.contains(r#".Files.Get "files/alerts.yaml""#));
}

/// The chart's prometheusRule defaults are the numbers in the rules file, so
/// the chart with default values serves exactly the tested rules.
#[test]
fn the_chart_defaults_match_the_rules_file() {
    let values = default_values();
    let cfg = &values["prometheusRule"];
    assert_eq!(
        cfg["enabled"], false,
        "opt-in: needs the Prometheus Operator CRDs"
    );
    for (alert_name, key) in [
        ("ModelDeployDriftDetected", "driftFor"),
        ("ModelDeployReconcileErrors", "reconcileErrorsFor"),
        ("ModelDeployStuckPaused", "stuckPausedFor"),
        ("ModelDeployOperatorDown", "operatorDownFor"),
    ] {
        assert_eq!(
            alert(alert_name)["for"],
            cfg[key],
            "prometheusRule.{key} and the `for` of {alert_name}"
        );
    }
    // The template replaces the number after the last `>` of the drift rule.
    let drift = alert("ModelDeployDriftDetected");
    let expr = drift["expr"].as_str().unwrap().trim();
    let (_, threshold) = expr
        .rsplit_once('>')
        .expect("drift expr ends in `> threshold`");
    let threshold: f64 = threshold.trim().parse().expect("a number after `>`");
    assert_eq!(Some(threshold), cfg["driftScoreThreshold"].as_f64());
    // And the one job=~"..." matcher of the operator-down rule.
    let down = alert("ModelDeployOperatorDown");
    let expr = down["expr"].as_str().unwrap();
    assert_eq!(expr.matches("job=~").count(), 1);
    let regex = cfg["operatorJobRegex"].as_str().unwrap();
    assert!(
        expr.contains(&format!("job=~\"{regex}\"")),
        "{expr} vs {regex}"
    );
}

// ---------------------------------------------------------------------------
// Grafana dashboard

const DASHBOARD: &str = "charts/modeldeploy/files/dashboard.json";

fn dashboard() -> Value {
    serde_json::from_str(&read(DASHBOARD)).expect("dashboard.json is JSON")
}

/// Every panel, rows' nested panels included.
fn panels(dashboard: &Value) -> Vec<Value> {
    let mut out = Vec::new();
    let mut stack: Vec<Value> = dashboard["panels"].as_array().expect("panels").clone();
    while let Some(p) = stack.pop() {
        if let Some(nested) = p["panels"].as_array() {
            stack.extend(nested.iter().cloned());
        }
        out.push(p);
    }
    out
}

#[test]
fn the_dashboard_queries_only_exported_metrics_and_all_of_them() {
    let dashboard = dashboard();
    let mut seen = std::collections::BTreeSet::new();
    let mut queries = 0;
    for panel in panels(&dashboard) {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"]
                .as_str()
                .unwrap_or_else(|| panic!("{}: a target without expr", panel["title"]));
            queries += 1;
            let names = metric_names(expr);
            assert!(!names.is_empty(), "{}: no metric in {expr}", panel["title"]);
            for name in names {
                let metric = exported_metric(&name).unwrap_or_else(|| {
                    panic!(
                        "{}: {name} is not a metric the operator exports",
                        panel["title"]
                    )
                });
                seen.insert(metric);
            }
        }
    }
    assert!(queries > 0);
    let unused: Vec<_> = EXPORTED
        .iter()
        .chain(["up"].iter())
        .filter(|m| !seen.contains(*m))
        .collect();
    assert!(unused.is_empty(), "metrics in no panel: {unused:?}");
}

#[test]
fn the_dashboard_has_datasource_namespace_and_name_variables() {
    let dashboard = dashboard();
    let variables = dashboard["templating"]["list"]
        .as_array()
        .expect("templating.list");
    let variable = |name: &str| {
        variables
            .iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("no ${name} variable"))
    };
    assert_eq!(variable("datasource")["type"], "datasource");
    assert_eq!(variable("datasource")["query"], "prometheus");
    for name in ["namespace", "name"] {
        assert_eq!(variable(name)["type"], "query");
        assert_eq!(variable(name)["datasource"]["uid"], "${datasource}");
    }
    let mut ids = std::collections::BTreeSet::new();
    for panel in panels(&dashboard) {
        assert!(
            ids.insert(panel["id"].as_u64().expect("panel id")),
            "duplicate panel id {}",
            panel["id"]
        );
        if panel["type"] == "row" {
            continue;
        }
        assert_eq!(
            panel["datasource"]["uid"], "${datasource}",
            "{}: the datasource is not the variable",
            panel["title"]
        );
        for target in panel["targets"].as_array().expect("targets") {
            assert_eq!(target["datasource"]["uid"], "${datasource}");
            let expr = target["expr"].as_str().unwrap();
            // Per-ModelDeployment series are filtered by the variables.
            let per_object = [
                "modeldeploy_phase",
                "modeldeploy_canary_weight",
                "modeldeploy_check_",
                "modeldeploy_drift_",
                "modeldeploy_rollbacks_total",
            ];
            if per_object.iter().any(|m| expr.contains(m)) {
                assert!(
                    expr.contains(r#"namespace=~"$namespace""#)
                        && expr.contains(r#"name=~"$name""#),
                    "{}: {expr} ignores $namespace/$name",
                    panel["title"]
                );
            }
        }
    }
}

#[test]
fn the_dashboard_config_map_embeds_the_file() {
    let template = read(&format!("{CHART}/templates/dashboard.yaml"));
    assert!(template.contains(r#".Files.Get "files/dashboard.json""#));
    assert!(template.contains(".Values.grafanaDashboard.labels"));
    let values = default_values();
    assert_eq!(values["grafanaDashboard"]["enabled"], false);
    assert_eq!(
        values["grafanaDashboard"]["labels"]["grafana_dashboard"],
        "1"
    );
}

// ---------------------------------------------------------------------------
// The list above against the operator's registry

/// Names of the metrics the operator's registry holds (from their descriptors,
/// so labelled vectors without series count too).
fn registered_metrics() -> std::collections::BTreeSet<String> {
    use prometheus::core::Collector;
    let m = modeldeploy::telemetry::Metrics::new();
    let collectors: [&dyn Collector; 12] = [
        &m.reconciles,
        &m.failures,
        &m.duration,
        &m.phase,
        &m.canary_weight,
        &m.check_value,
        &m.check_outcome,
        &m.drift_max_score,
        &m.drift_score,
        &m.rollbacks,
        &m.scrape_errors,
        &m.scrape_duration,
    ];
    let names: std::collections::BTreeSet<String> = collectors
        .iter()
        .flat_map(|c| c.desc().into_iter())
        // The registry's prefix is added when it gathers.
        .map(|d| format!("modeldeploy_{}", d.fq_name))
        .collect();
    // Whatever the registry gathers must be among them (a new field not listed above).
    for family in m.registry.gather() {
        assert!(
            names.contains(family.name()),
            "{} is registered but not listed in registered_metrics()",
            family.name()
        );
    }
    names
}

#[test]
fn every_metric_the_operator_registers_is_known_to_the_chart() {
    let unknown: Vec<_> = registered_metrics()
        .into_iter()
        .filter(|m| !EXPORTED.contains(&m.as_str()))
        .collect();
    assert!(
        unknown.is_empty(),
        "add to EXPORTED, the dashboard and maybe the alerts: {unknown:?}"
    );
}

#[test]
fn every_metric_the_chart_uses_is_registered_by_the_operator() {
    let registered = registered_metrics();
    let missing: Vec<_> = EXPORTED
        .iter()
        .filter(|m| !registered.contains(**m))
        .collect();
    assert!(
        missing.is_empty(),
        "not registered by the operator: {missing:?}"
    );
}

/// Each router's own API (its children beyond Deployments and Services) has
/// a rule in the chart's ClusterRole, and the router's name is the spec's.
#[test]
fn every_router_can_write_what_it_applies() {
    let rbac = read(&format!("{CHART}/templates/rbac.yaml"));
    for router in modeldeploy::api::Router::ALL {
        let r = modeldeploy::routers::for_router(router);
        assert_eq!(
            serde_json::to_value(router).unwrap(),
            json!(r.name()),
            "the router module's name"
        );
        for api in r.writes() {
            let rule = format!(
                "  - apiGroups: [{}]\n    resources: [{}]",
                api.group, api.resource
            );
            assert!(
                rbac.contains(&rule),
                "the chart's ClusterRole has no rule for {}/{} ({} router)",
                api.group,
                api.resource,
                r.name()
            );
        }
    }
}
