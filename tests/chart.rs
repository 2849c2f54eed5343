//! The Helm chart: its values against values.schema.json (and the schema
//! refusing bad values), every plain YAML file in it parsing, the alerts and
//! the dashboard against the operator's metrics; then the real helm linting
//! and rendering every values case below, the real API server accepting
//! every object rendered (server-side dry run), and the chart's lifecycle on
//! it (install, upgrade, uninstall keeping the CRD).

mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use support::envtest::{control_plane, official_tool, skip};
use support::tools;

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
    with_all(&[(pointer, value)])
}

/// The default values with each (JSON pointer, value) set.
fn with_all(sets: &[(&str, Value)]) -> Value {
    let mut values = default_values();
    for (pointer, value) in sets {
        let (parent, key) = pointer.rsplit_once('/').expect("a pointer");
        values
            .pointer_mut(parent)
            .and_then(Value::as_object_mut)
            .unwrap_or_else(|| panic!("{parent} is an object in values.yaml"))
            .insert(key.to_string(), value.clone());
    }
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
        ("/image/tag", json!(true), "/image/tag"),
        ("/image/tag", json!(["1.0"]), "/image/tag"),
        ("/global", json!("shared"), "/global"),
        ("/clusterInstall", json!("false"), "/clusterInstall"),
        ("/crds/install", json!("yes"), "/crds/install"),
        ("/crds/kept", json!(true), "/crds"),
        ("/crds/annotations", json!({"a": 1}), "/crds/annotations/a"),
        ("/rbac/aggregateRoles", json!(1), "/rbac/aggregateRoles"),
        ("/rbac/create", json!(true), "/rbac"),
        (
            "/driftReference/fromStable",
            json!("true"),
            "/driftReference/fromStable",
        ),
        (
            "/podDisruptionBudget/maxUnavailable",
            json!("half"),
            "/podDisruptionBudget/maxUnavailable",
        ),
        (
            "/podDisruptionBudget/minAvailable",
            json!(-1),
            "/podDisruptionBudget/minAvailable",
        ),
        (
            "/serviceMonitor/honorLabels",
            json!("true"),
            "/serviceMonitor/honorLabels",
        ),
        (
            "/networkPolicy/apiServer",
            json!({"ports": [443], "cidrs": ["10.0.0.1"]}),
            "/networkPolicy/apiServer/cidrs/0",
        ),
        (
            "/networkPolicy/enabled",
            json!("yes"),
            "/networkPolicy/enabled",
        ),
        ("/extraArgs", json!("--log-json"), "/extraArgs"),
        ("/extraArgs", json!([""]), "/extraArgs/0"),
        ("/extraEnv", json!([{"value": "x"}]), "/extraEnv/0"),
        ("/priorityClassName", json!("High"), "/priorityClassName"),
        (
            "/topologySpreadConstraints",
            json!([{"maxSkew": 1}]),
            "/topologySpreadConstraints/0",
        ),
    ];
    for (pointer, value, expected_path) in cases {
        assert_refused(with(pointer, value), expected_path);
    }
}

/// Values a user may set, one case each (a name and its overrides of
/// values.yaml): the schema accepts every case, the real helm lints and
/// renders every case, and the API server accepts every object rendered.
fn value_cases() -> Vec<(&'static str, Vec<(&'static str, Value)>)> {
    let namespaces = json!(["risk", "ml-serving"]);
    vec![
        ("defaults", vec![]),
        ("one replica", vec![("/replicaCount", json!(1))]),
        ("a tag", vec![("/image/tag", json!("0.2.0"))]),
        ("a decimal tag", vec![("/image/tag", json!(1.2))]),
        ("a whole-number tag", vec![("/image/tag", json!(20240101))]),
        ("pull policy", vec![("/image/pullPolicy", json!("Always"))]),
        (
            "pull secrets",
            vec![("/imagePullSecrets", json!([{"name": "regcred"}]))],
        ),
        (
            "watched namespaces",
            vec![("/watchNamespaces", namespaces.clone())],
        ),
        (
            "namespaced install",
            vec![
                ("/clusterInstall", json!(false)),
                ("/watchNamespaces", namespaces.clone()),
            ],
        ),
        (
            "namespaced install with fromStable",
            vec![
                ("/clusterInstall", json!(false)),
                ("/watchNamespaces", namespaces),
                ("/driftReference/fromStable", json!(true)),
            ],
        ),
        ("metrics port", vec![("/metrics/port", json!(65535))]),
        (
            "prometheus",
            vec![(
                "/prometheus/url",
                json!("http://prometheus-operated.monitoring:9090"),
            )],
        ),
        // Prometheus behind authentication and TLS.
        (
            "prometheus with a projected token, a CA ConfigMap and a client certificate",
            vec![
                (
                    "/prometheus/url",
                    json!("https://prometheus.monitoring:9091"),
                ),
                (
                    "/prometheus/serviceAccountToken",
                    json!({"enabled": true, "audience": "prometheus", "expirationSeconds": 3600}),
                ),
                (
                    "/prometheus/tls",
                    json!({"caConfigMap": "prometheus-ca", "caSecret": "", "caKey": "ca.crt",
                           "clientCertSecret": "modeldeploy-client"}),
                ),
            ],
        ),
        (
            "prometheus with basic auth from a Secret and a CA Secret",
            vec![
                (
                    "/prometheus/url",
                    json!("https://prometheus.monitoring:9090"),
                ),
                (
                    "/prometheus/auth",
                    json!({"existingSecret": "prometheus-basic", "type": "basic",
                           "tokenKey": "token", "usernameKey": "user", "passwordKey": "pass"}),
                ),
                (
                    "/prometheus/tls",
                    json!({"caConfigMap": "", "caSecret": "prometheus-ca", "caKey": "ca.pem",
                           "clientCertSecret": ""}),
                ),
            ],
        ),
        (
            "prometheus with a bearer token from a Secret",
            vec![
                ("/prometheus/url", json!("https://prometheus.example.com")),
                (
                    "/prometheus/auth/existingSecret",
                    json!("managed-prometheus"),
                ),
            ],
        ),
        (
            "webhook from a secret",
            vec![(
                "/notifications/webhook/existingSecret",
                json!("slack-webhook"),
            )],
        ),
        (
            "webhook url",
            vec![(
                "/notifications/webhook/url",
                json!("https://hooks.example/T0/B0"),
            )],
        ),
        (
            "resources",
            vec![("/resources/limits", json!({"cpu": 2, "memory": "512Mi"}))],
        ),
        (
            "scheduling",
            vec![
                ("/tolerations", json!([{"operator": "Exists"}])),
                ("/nodeSelector", json!({"kubernetes.io/os": "linux"})),
                ("/priorityClassName", json!("system-cluster-critical")),
                (
                    "/topologySpreadConstraints",
                    json!([{"maxSkew": 1, "topologyKey": "kubernetes.io/hostname",
                            "whenUnsatisfiable": "ScheduleAnyway",
                            "labelSelector": {"matchLabels": {"app.kubernetes.io/name": "modeldeploy"}}}]),
                ),
            ],
        ),
        (
            "extra args and env",
            vec![
                ("/extraArgs", json!(["--lease-duration-seconds=30"])),
                (
                    "/extraEnv",
                    json!([{"name": "RUST_LOG", "value": "info,modeldeploy=debug"},
                           {"name": "HTTPS_PROXY", "valueFrom": {"secretKeyRef": {"name": "proxy", "key": "url"}}}]),
                ),
            ],
        ),
        (
            "service monitor",
            vec![
                ("/serviceMonitor/enabled", json!(true)),
                ("/serviceMonitor/interval", json!("1m30s")),
                ("/serviceMonitor/labels", json!({"release": "prom"})),
            ],
        ),
        (
            "service monitor without honorLabels",
            vec![
                ("/serviceMonitor/enabled", json!(true)),
                ("/serviceMonitor/honorLabels", json!(false)),
            ],
        ),
        (
            "prometheus rule",
            vec![
                ("/prometheusRule/enabled", json!(true)),
                (
                    "/prometheusRule/labels",
                    json!({"release": "kube-prometheus-stack"}),
                ),
                ("/prometheusRule/alertLabels", json!({"team": "ml"})),
                ("/prometheusRule/driftScoreThreshold", json!(1)),
                ("/prometheusRule/stuckPausedFor", json!("1d")),
            ],
        ),
        (
            "dashboard",
            vec![
                ("/grafanaDashboard/enabled", json!(true)),
                (
                    "/grafanaDashboard/annotations",
                    json!({"grafana_folder": "ML"}),
                ),
            ],
        ),
        (
            "dashboard in grafana's namespace",
            vec![
                ("/grafanaDashboard/enabled", json!(true)),
                ("/grafanaDashboard/namespace", json!("monitoring")),
            ],
        ),
        ("no CRD", vec![("/crds/install", json!(false))]),
        (
            "CRD not kept",
            vec![
                ("/crds/keep", json!(false)),
                ("/crds/annotations", json!({"team": "ml-platform"})),
            ],
        ),
        (
            "no aggregate roles",
            vec![("/rbac/aggregateRoles", json!(false))],
        ),
        (
            "fromStable",
            vec![("/driftReference/fromStable", json!(true))],
        ),
        (
            "PDB minAvailable",
            vec![("/podDisruptionBudget/minAvailable", json!(1))],
        ),
        (
            "PDB percentage",
            vec![("/podDisruptionBudget/maxUnavailable", json!("50%"))],
        ),
        (
            "no PDB",
            vec![("/podDisruptionBudget/enabled", json!(false))],
        ),
        (
            "one replica without leader election",
            vec![
                ("/replicaCount", json!(1)),
                ("/leaderElection/enabled", json!(false)),
            ],
        ),
        (
            "an existing service account",
            vec![
                ("/serviceAccount/create", json!(false)),
                ("/serviceAccount/name", json!("ops")),
            ],
        ),
        (
            "as a subchart",
            vec![("/global", json!({"imageRegistry": "registry.example"}))],
        ),
        (
            "network policy",
            vec![("/networkPolicy/enabled", json!(true))],
        ),
        (
            "network policy, namespaced, with Prometheus and a pinned API server",
            vec![
                ("/networkPolicy/enabled", json!(true)),
                ("/clusterInstall", json!(false)),
                ("/watchNamespaces", json!(["risk", "ml-serving"])),
                (
                    "/prometheus/url",
                    json!("http://prometheus.monitoring:9090"),
                ),
                (
                    "/networkPolicy/apiServer",
                    json!({"ports": [6443], "cidrs": ["10.0.0.1/32"]}),
                ),
                ("/networkPolicy/metricsFrom", json!([])),
                (
                    "/networkPolicy/extraEgress",
                    json!([{"ports": [{"port": 443, "protocol": "TCP"}]}]),
                ),
            ],
        ),
        (
            "names and pod metadata",
            vec![
                ("/fullnameOverride", json!("md")),
                ("/podLabels", json!({"team": "ml"})),
                ("/podAnnotations", json!({"example.com/owner": "ml"})),
            ],
        ),
    ]
}

#[test]
fn every_values_case_is_accepted() {
    for (name, sets) in value_cases() {
        let errors = schema_errors(&with_all(&sets));
        assert!(errors.is_empty(), "{name}: {sets:?} refused: {errors:?}");
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
    for required in [
        "Chart.yaml",
        "values.yaml",
        "files/crds/modeldeployment.yaml",
    ] {
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

// ---------------------------------------------------------------------------
// The real helm: lint and render every values case

/// The release namespace of every rendering.
const RELEASE_NAMESPACE: &str = "modeldeploy-system";

/// A scratch directory, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(what: &str) -> Self {
        use std::sync::atomic::{AtomicU64, Ordering};
        static N: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "modeldeploy-chart-{}-{what}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        Scratch(dir)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The official helm (`.ci/install-deps`), its homes in `scratch`, with no
/// cluster to talk to; `None` after the skip line when it is missing.
fn helm(scratch: &Scratch) -> Option<Command> {
    let Some(helm) = official_tool("helm") else {
        skip(
            "helm is not installed (`bash .ci/install-deps` installs the official one, and .ci/run puts it on PATH)",
        );
        return None;
    };
    let mut cmd = Command::new(helm);
    let home = scratch.path().join("helm-home");
    cmd.env("HELM_CACHE_HOME", home.join("cache"))
        .env("HELM_CONFIG_HOME", home.join("config"))
        .env("HELM_DATA_HOME", home.join("data"))
        .env("KUBECONFIG", scratch.path().join("no-kubeconfig"));
    Some(cmd)
}

fn run(mut cmd: Command) -> Result<String, String> {
    let out = cmd.output().unwrap_or_else(|e| panic!("run {cmd:?}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    if out.status.success() {
        Ok(stdout)
    } else {
        Err(format!("{stdout}{}", String::from_utf8_lossy(&out.stderr)))
    }
}

/// The documents of a multi-document YAML stream (empty ones left out).
fn documents(text: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(text)
        .map(|d| {
            serde::Deserialize::deserialize(d)
                .unwrap_or_else(|e| panic!("rendered YAML does not parse: {e}\n{text}"))
        })
        .filter(|v: &Value| !v.is_null())
        .collect()
}

/// `helm template <release>` of the chart with `values` (a values file, so
/// numbers stay numbers as a user's file has them) and more arguments.
/// `None` when helm is missing.
fn render_with(release: &str, values: &Value, args: &[&str]) -> Option<Result<Vec<Value>, String>> {
    let scratch = Scratch::new("render");
    let mut cmd = helm(&scratch)?;
    let file = scratch.path().join("values.json");
    std::fs::write(&file, serde_json::to_string_pretty(values).unwrap()).unwrap();
    cmd.args(["template", release])
        .arg(path(CHART))
        .args(["--namespace", RELEASE_NAMESPACE])
        .arg("--values")
        .arg(&file)
        .args(args);
    Some(run(cmd).map(|text| documents(&text)))
}

/// The objects rendered with these overrides; `None` when helm is missing.
fn render(sets: &[(&str, Value)]) -> Option<Vec<Value>> {
    render_with("modeldeploy", &with_all(sets), &[])
        .map(|r| r.unwrap_or_else(|e| panic!("helm template with {sets:?}: {e}")))
}

fn of_kind<'a>(objects: &'a [Value], kind: &str) -> Vec<&'a Value> {
    objects.iter().filter(|o| o["kind"] == kind).collect()
}

fn one<'a>(objects: &'a [Value], kind: &str) -> &'a Value {
    match of_kind(objects, kind).as_slice() {
        [o] => o,
        other => panic!("{} {kind} rendered, not one", other.len()),
    }
}

#[test]
fn helm_lints_every_values_case() {
    for (name, sets) in value_cases() {
        let scratch = Scratch::new("lint");
        let Some(mut cmd) = helm(&scratch) else {
            return;
        };
        let file = scratch.path().join("values.json");
        std::fs::write(&file, serde_json::to_string(&with_all(&sets)).unwrap()).unwrap();
        cmd.args(["lint", "--strict"])
            .arg(path(CHART))
            .args(["--namespace", RELEASE_NAMESPACE])
            .arg("--values")
            .arg(&file);
        let out = run(cmd).unwrap_or_else(|e| panic!("helm lint, {name}: {e}"));
        assert!(out.contains("0 chart(s) failed"), "{name}: {out}");
    }
}

/// Every object of every values case, sent to the real API server as a
/// server-side apply dry run with strict field validation: the server's own
/// schemas (built-in kinds and the CRD's) and admission check them all. The
/// Prometheus Operator's kinds are not served there (their CRDs are not
/// available offline): the PrometheusRule's groups go through promtool, and
/// the ServiceMonitor is checked against the Service it selects.
#[test]
fn the_api_server_accepts_every_object_of_every_values_case() {
    let Some(cp) = control_plane() else {
        return;
    };
    let scratch = Scratch::new("dry-run");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let client = cp.admin().await;
        for ns in [RELEASE_NAMESPACE, "risk", "ml-serving", "monitoring"] {
            create_namespace(&client, ns).await;
        }
    });
    let mut sent = 0;
    for (i, (name, sets)) in value_cases().into_iter().enumerate() {
        let release = format!("case-{i}");
        let Some(rendered) = render_with(&release, &with_all(&sets), &[]) else {
            return;
        };
        let objects = rendered.unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(!objects.is_empty(), "{name}: nothing rendered");
        let mut served = Vec::new();
        for o in &objects {
            match o["kind"].as_str() {
                Some("PrometheusRule") => check_prometheus_rule(name, o, &scratch),
                Some("ServiceMonitor") => check_service_monitor(name, o, &objects),
                _ => served.push(serde_yaml::to_string(o).unwrap()),
            }
        }
        sent += served.len();
        std::fs::write(
            scratch.path().join(format!("{release}.yaml")),
            served.join("---\n"),
        )
        .unwrap();
    }
    let Some(mut kubectl) = cp.kubectl() else {
        return;
    };
    kubectl
        .args([
            "apply",
            "--server-side",
            "--dry-run=server",
            "--force-conflicts",
        ])
        .args(["--field-manager=chart-test", "--validate=strict", "-f"])
        .arg(scratch.path());
    let out = run(kubectl).unwrap_or_else(|e| panic!("the API server refused:\n{e}"));
    let accepted = out
        .lines()
        .filter(|l| l.contains("(server dry run)"))
        .count();
    assert_eq!(accepted, sent, "{out}");
}

async fn create_namespace(client: &kube::Client, name: &str) {
    use k8s_openapi::api::core::v1::Namespace;
    let api: kube::Api<Namespace> = kube::Api::all(client.clone());
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
    match api.create(&Default::default(), &ns).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 409 => {}
        Err(e) => panic!("create namespace {name}: {e}"),
    }
}

fn check_prometheus_rule(case: &str, rule: &Value, scratch: &Scratch) {
    assert_eq!(rule["apiVersion"], "monitoring.coreos.com/v1", "{case}");
    let file = scratch.path().join("rules").join(format!(
        "{}.yaml",
        rule["metadata"]["name"].as_str().unwrap()
    ));
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    std::fs::write(&file, serde_yaml::to_string(&rule["spec"]).unwrap()).unwrap();
    assert_success(
        promtool(&["check", "rules", file.to_str().unwrap()]),
        &format!("{case}: promtool check rules of the rendered PrometheusRule"),
    );
}

fn check_service_monitor(case: &str, monitor: &Value, objects: &[Value]) {
    assert_eq!(monitor["apiVersion"], "monitoring.coreos.com/v1", "{case}");
    let service = one(objects, "Service");
    let labels = service["metadata"]["labels"].as_object().unwrap();
    for (k, v) in monitor["spec"]["selector"]["matchLabels"]
        .as_object()
        .unwrap()
    {
        assert_eq!(
            labels.get(k),
            Some(v),
            "{case}: the ServiceMonitor selects {k}={v}"
        );
    }
    let ports: Vec<&Value> = service["spec"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .collect();
    for endpoint in monitor["spec"]["endpoints"].as_array().unwrap() {
        assert!(
            ports.iter().any(|p| p["name"] == endpoint["port"]),
            "{case}: endpoint port {} is not a port of the Service",
            endpoint["port"]
        );
        assert!(endpoint["honorLabels"].is_boolean(), "{case}: {endpoint}");
    }
}

// ---------------------------------------------------------------------------
// What the values do to the rendering

#[test]
fn the_crd_is_the_generated_one_and_kept_on_uninstall() {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    let Some(objects) = render(&[]) else {
        return;
    };
    let rendered = one(&objects, "CustomResourceDefinition");
    assert_eq!(
        rendered["metadata"]["annotations"]["helm.sh/resource-policy"], "keep",
        "crds.keep is on by default"
    );
    assert_eq!(
        rendered["metadata"]["labels"]["app.kubernetes.io/managed-by"],
        "Helm"
    );
    // The same CRD as the Rust types make, metadata aside.
    let mut crd: CustomResourceDefinition = serde_json::from_value(rendered.clone()).unwrap();
    crd.metadata.labels = None;
    crd.metadata.annotations = None;
    let generated: CustomResourceDefinition =
        serde_yaml::from_str(&modeldeploy::api::crd_yaml()).unwrap();
    assert!(
        crd == generated,
        "the rendered CRD differs from `modeldeploy crd`"
    );
    // Helm would also install files under crds/ (and never upgrade them).
    assert!(
        !path(&format!("{CHART}/crds")).exists(),
        "the CRD is a template: a crds/ directory would install it twice"
    );

    let objects = render(&[
        ("/crds/keep", json!(false)),
        ("/crds/annotations", json!({"team": "ml"})),
    ])
    .unwrap();
    let annotations = &one(&objects, "CustomResourceDefinition")["metadata"]["annotations"];
    assert_eq!(annotations, &json!({"team": "ml"}));
    let objects = render(&[("/crds/install", json!(false))]).unwrap();
    assert!(of_kind(&objects, "CustomResourceDefinition").is_empty());
}

/// (apiGroup, resource, verb) of the rules of one (Cluster)Role.
fn grants(role: &Value) -> BTreeSet<(String, String, String)> {
    let mut out = BTreeSet::new();
    for rule in role["rules"].as_array().expect("rules") {
        let list = |k: &str| -> Vec<String> {
            rule[k]
                .as_array()
                .unwrap()
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

fn operator_role<'a>(objects: &'a [Value], kind: &str) -> Vec<&'a Value> {
    of_kind(objects, kind)
        .into_iter()
        .filter(|r| r["metadata"]["name"] == "modeldeploy")
        .collect()
}

fn verbs_on(role: &Value, resource: &str) -> BTreeSet<String> {
    grants(role)
        .into_iter()
        .filter(|(_, r, _)| r == resource)
        .map(|(_, _, v)| v)
        .collect()
}

#[test]
fn configmaps_are_written_only_with_from_stable() {
    let Some(objects) = render(&[]) else {
        return;
    };
    let role = operator_role(&objects, "ClusterRole")[0];
    assert_eq!(verbs_on(role, "configmaps"), BTreeSet::from(["get".into()]));
    let objects = render(&[("/driftReference/fromStable", json!(true))]).unwrap();
    let role = operator_role(&objects, "ClusterRole")[0];
    assert_eq!(
        verbs_on(role, "configmaps"),
        BTreeSet::from(["get".into(), "create".into(), "patch".into()])
    );
}

#[test]
fn a_namespaced_install_has_a_role_per_watched_namespace_and_no_cluster_role() {
    let Some(cluster) = render(&[("/watchNamespaces", json!(["risk", "ml-serving"]))]) else {
        return;
    };
    let cluster_role = operator_role(&cluster, "ClusterRole")[0];
    let objects = render(&[
        ("/clusterInstall", json!(false)),
        ("/watchNamespaces", json!(["risk", "ml-serving"])),
    ])
    .unwrap();
    assert!(of_kind(&objects, "ClusterRole").is_empty());
    assert!(of_kind(&objects, "ClusterRoleBinding").is_empty());
    let roles = operator_role(&objects, "Role");
    let namespaces: Vec<&Value> = roles.iter().map(|r| &r["metadata"]["namespace"]).collect();
    assert_eq!(namespaces, [&json!("risk"), &json!("ml-serving")]);
    for role in &roles {
        assert_eq!(grants(role), grants(cluster_role), "the same rules");
    }
    let bindings = operator_role(&objects, "RoleBinding");
    assert_eq!(bindings.len(), 2);
    for b in bindings {
        assert_eq!(b["roleRef"]["kind"], "Role");
        assert_eq!(b["subjects"][0]["namespace"], RELEASE_NAMESPACE);
    }
    // Without a namespace to give a Role in, helm says so.
    let failed = render_with(
        "modeldeploy",
        &with_all(&[("/clusterInstall", json!(false))]),
        &[],
    )
    .unwrap()
    .expect_err("clusterInstall=false without watchNamespaces renders");
    assert!(
        failed.contains("clusterInstall=false needs watchNamespaces"),
        "{failed}"
    );
}

/// Each rule of templates/rbac.yaml says why, on the comment lines above it.
#[test]
fn every_rbac_rule_has_a_comment_with_its_reason() {
    let text = read(&format!("{CHART}/templates/rbac.yaml"));
    let lines: Vec<&str> = text.lines().collect();
    let mut rules = 0;
    for (i, line) in lines.iter().enumerate() {
        if !line.trim_start().starts_with("- apiGroups:") {
            continue;
        }
        rules += 1;
        let above = lines[..i]
            .iter()
            .rev()
            .map(|l| l.trim())
            .find(|l| !l.starts_with("{{"))
            .unwrap_or_default();
        assert!(
            above.starts_with('#') && above.len() > 10,
            "rule at line {} of rbac.yaml has no comment: {line}",
            i + 1
        );
    }
    assert!(rules >= 10, "{rules} rules");
}

#[test]
fn the_aggregate_roles_give_view_read_and_edit_the_plugins_verbs() {
    let Some(objects) = render(&[]) else {
        return;
    };
    let role = |which: &str| -> BTreeSet<(String, String, String)> {
        let name = format!("modeldeploy-aggregate-to-{which}");
        let role = of_kind(&objects, "ClusterRole")
            .into_iter()
            .find(|r| r["metadata"]["name"] == name.as_str())
            .unwrap_or_else(|| panic!("no {name}"));
        assert_eq!(
            role["metadata"]["labels"][format!("rbac.authorization.k8s.io/aggregate-to-{which}")],
            "true"
        );
        grants(role)
    };
    let g = |r: &str, v: &str| ("modeldeploy.io".to_string(), r.to_string(), v.to_string());
    let view = role("view");
    assert!(view.contains(&g("modeldeployments", "get")));
    assert!(!view.iter().any(|(_, _, v)| v == "patch"));
    for which in ["edit", "admin"] {
        let edit = role(which);
        assert!(edit.is_superset(&view));
        assert!(
            edit.contains(&g("modeldeployments", "patch")),
            "the plugin's requests"
        );
        assert!(
            !edit.contains(&g("modeldeployments/status", "patch")),
            "status is the operator's"
        );
    }
    for off in [
        vec![("/rbac/aggregateRoles", json!(false))],
        vec![
            ("/clusterInstall", json!(false)),
            ("/watchNamespaces", json!(["risk"])),
        ],
    ] {
        let objects = render(&off).unwrap();
        assert!(
            !of_kind(&objects, "ClusterRole")
                .iter()
                .any(|r| r["metadata"]["name"]
                    .as_str()
                    .unwrap()
                    .contains("aggregate")),
            "{off:?}"
        );
    }
}

#[test]
fn a_pdb_keeps_the_standby_only_with_more_than_one_replica() {
    let Some(objects) = render(&[]) else {
        return;
    };
    let pdb = one(&objects, "PodDisruptionBudget");
    assert_eq!(pdb["spec"]["maxUnavailable"], 1);
    assert!(pdb["spec"].get("minAvailable").is_none());
    let deployment = one(&objects, "Deployment");
    assert_eq!(
        pdb["spec"]["selector"]["matchLabels"],
        deployment["spec"]["selector"]["matchLabels"]
    );
    let objects = render(&[("/podDisruptionBudget/minAvailable", json!(1))]).unwrap();
    let spec = &one(&objects, "PodDisruptionBudget")["spec"];
    assert_eq!(spec["minAvailable"], 1);
    assert!(spec.get("maxUnavailable").is_none());
    for off in [
        ("/replicaCount", json!(1)),
        ("/podDisruptionBudget/enabled", json!(false)),
    ] {
        let objects = render(std::slice::from_ref(&off)).unwrap();
        assert!(
            of_kind(&objects, "PodDisruptionBudget").is_empty(),
            "{off:?}"
        );
    }
}

#[test]
fn the_network_policy_guards_the_operator_and_lets_it_reach_what_it_calls() {
    let Some(objects) = render(&[]) else {
        return;
    };
    assert!(
        of_kind(&objects, "NetworkPolicy").is_empty(),
        "off by default"
    );
    let objects = render(&[
        ("/networkPolicy/enabled", json!(true)),
        ("/watchNamespaces", json!(["risk", "ml-serving"])),
        (
            "/prometheus/url",
            json!("http://prometheus.monitoring:9090"),
        ),
    ])
    .unwrap();
    let policy = one(&objects, "NetworkPolicy");
    let deployment = one(&objects, "Deployment");
    let selector = &deployment["spec"]["selector"]["matchLabels"];
    assert_eq!(&policy["spec"]["podSelector"]["matchLabels"], selector);
    assert_eq!(policy["spec"]["policyTypes"], json!(["Ingress", "Egress"]));
    // Ingress: only the metrics port, only from the configured source.
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["ports"][0]["name"], "metrics");
    let ingress = policy["spec"]["ingress"].as_array().unwrap();
    assert_eq!(ingress.len(), 1);
    assert_eq!(
        ingress[0]["ports"],
        json!([{"port": "metrics", "protocol": "TCP"}])
    );
    assert_eq!(
        ingress[0]["from"][0]["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"],
        "monitoring"
    );
    // Egress: the API server, DNS, the model pods of each watched namespace
    // on the ports every revision names, and Prometheus.
    let egress = policy["spec"]["egress"].as_array().unwrap();
    let ports = |rule: &Value| -> Vec<Value> {
        rule["ports"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["port"].clone())
            .collect()
    };
    assert_eq!(ports(&egress[0]), [json!(443), json!(6443)]);
    assert_eq!(ports(&egress[1]), [json!(53), json!(53)]);
    assert_eq!(ports(&egress[2]), [json!("http"), json!("metrics")]);
    let namespaces: Vec<&Value> = egress[2]["to"]
        .as_array()
        .unwrap()
        .iter()
        .map(|peer| {
            assert_eq!(
                peer["podSelector"]["matchLabels"]["app.kubernetes.io/managed-by"],
                "modeldeploy"
            );
            &peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
        })
        .collect();
    assert_eq!(namespaces, [&json!("risk"), &json!("ml-serving")]);
    assert_eq!(ports(&egress[3]), [json!(9090)]);
    // What the operator lets into the model pods is its own pods' labels.
    let env = container["env"].as_array().unwrap();
    let told = env
        .iter()
        .find(|e| e["name"] == "OPERATOR_POD_LABELS")
        .expect("the operator is told its pod labels");
    let expected: Vec<String> = selector
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap()))
        .collect();
    let mut got: Vec<String> = told["value"]
        .as_str()
        .unwrap()
        .split(',')
        .map(String::from)
        .collect();
    got.sort();
    let mut expected = expected;
    expected.sort();
    assert_eq!(got, expected);
    // No metrics source: no ingress rule at all (a rule without `from`
    // would let everyone in).
    let objects = render(&[
        ("/networkPolicy/enabled", json!(true)),
        ("/networkPolicy/metricsFrom", json!([])),
    ])
    .unwrap();
    assert_eq!(one(&objects, "NetworkPolicy")["spec"]["ingress"], json!([]));
}

#[test]
fn the_deployment_takes_extra_args_env_priority_and_spread() {
    let spread = json!([{"maxSkew": 1, "topologyKey": "kubernetes.io/hostname",
                         "whenUnsatisfiable": "ScheduleAnyway"}]);
    let Some(objects) = render(&[
        ("/extraArgs", json!(["--lease-duration-seconds=30"])),
        ("/extraEnv", json!([{"name": "RUST_LOG", "value": "debug"}])),
        ("/priorityClassName", json!("system-cluster-critical")),
        ("/topologySpreadConstraints", spread.clone()),
    ]) else {
        return;
    };
    let pod = &one(&objects, "Deployment")["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    assert_eq!(
        container["args"],
        json!(["operator", "--lease-duration-seconds=30"])
    );
    let env = container["env"].as_array().unwrap();
    assert_eq!(
        env.last(),
        Some(&json!({"name": "RUST_LOG", "value": "debug"}))
    );
    assert_eq!(pod["priorityClassName"], "system-cluster-critical");
    assert_eq!(pod["topologySpreadConstraints"], spread);
    let objects = render(&[]).unwrap();
    let pod = &one(&objects, "Deployment")["spec"]["template"]["spec"];
    assert_eq!(pod["containers"][0]["args"], json!(["operator"]));
    assert!(pod.get("priorityClassName").is_none());
    assert!(pod.get("topologySpreadConstraints").is_none());
}

// ---------------------------------------------------------------------------
// Prometheus credentials and TLS

/// The operator container's env as name -> entry, and its mounts by name.
fn operator_env_and_mounts(objects: &[Value]) -> (serde_json::Map<String, Value>, Value) {
    let pod = &one(objects, "Deployment")["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    let env = container["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["name"].as_str().unwrap().to_string(), e.clone()))
        .collect();
    (env, container["volumeMounts"].clone())
}

#[test]
fn prometheus_credentials_and_certificates_are_mounted_read_only_and_passed_as_files() {
    let url = (
        "/prometheus/url",
        json!("https://prometheus.monitoring:9091"),
    );
    let Some(objects) = render(&[
        url.clone(),
        ("/prometheus/serviceAccountToken/enabled", json!(true)),
        (
            "/prometheus/serviceAccountToken/audience",
            json!("prometheus"),
        ),
        ("/prometheus/tls/caConfigMap", json!("prometheus-ca")),
        (
            "/prometheus/tls/clientCertSecret",
            json!("modeldeploy-client"),
        ),
    ]) else {
        return;
    };
    let (env, mounts) = operator_env_and_mounts(&objects);
    let dir = "/etc/modeldeploy/prometheus";
    for (name, file) in [
        ("PROMETHEUS_BEARER_TOKEN_FILE", "token/token"),
        ("PROMETHEUS_CA_FILE", "ca/ca.crt"),
        ("PROMETHEUS_CLIENT_CERT", "client/tls.crt"),
        ("PROMETHEUS_CLIENT_KEY", "client/tls.key"),
    ] {
        assert_eq!(env[name]["value"], format!("{dir}/{file}"), "{name}");
    }
    let mounts = mounts.as_array().unwrap();
    assert_eq!(mounts.len(), 3, "{mounts:?}");
    assert!(mounts.iter().all(|m| m["readOnly"] == true), "{mounts:?}");
    let pod = &one(&objects, "Deployment")["spec"]["template"]["spec"];
    let volumes = pod["volumes"].as_array().unwrap();
    let token = &volumes[0]["projected"]["sources"][0]["serviceAccountToken"];
    assert_eq!(token["audience"], "prometheus");
    assert_eq!(token["path"], "token");
    assert_eq!(volumes[1]["configMap"]["name"], "prometheus-ca");
    assert_eq!(volumes[2]["secret"]["secretName"], "modeldeploy-client");

    // Basic auth: the user name from the Secret, only the password as a file.
    let objects = render(&[
        url.clone(),
        ("/prometheus/auth/existingSecret", json!("prometheus-basic")),
        ("/prometheus/auth/type", json!("basic")),
    ])
    .unwrap();
    let (env, _) = operator_env_and_mounts(&objects);
    assert_eq!(
        env["PROMETHEUS_BASIC_AUTH_USERNAME"]["valueFrom"]["secretKeyRef"],
        json!({"name": "prometheus-basic", "key": "username"})
    );
    assert_eq!(
        env["PROMETHEUS_BASIC_AUTH_PASSWORD_FILE"]["value"],
        format!("{dir}/auth/password")
    );
    assert!(!env.contains_key("PROMETHEUS_BEARER_TOKEN_FILE"));
    let pod = &one(&objects, "Deployment")["spec"]["template"]["spec"];
    assert_eq!(
        pod["volumes"][0]["secret"]["items"],
        json!([{"key": "password", "path": "password"}])
    );

    // Without any of it: no extra env, no volumes.
    let objects = render(std::slice::from_ref(&url)).unwrap();
    let (env, mounts) = operator_env_and_mounts(&objects);
    assert!(
        !env.keys()
            .any(|k| k.starts_with("PROMETHEUS_") && k != "PROMETHEUS_URL")
    );
    assert!(mounts.is_null());

    // Two bearer sources, two CA sources, or credentials without a URL: helm refuses.
    for (sets, expected) in [
        (
            vec![
                url.clone(),
                (
                    "/prometheus/bearerTokenFile",
                    json!("/var/run/secrets/token"),
                ),
                ("/prometheus/auth/existingSecret", json!("s")),
            ],
            "use only one of bearerTokenFile",
        ),
        (
            vec![
                url.clone(),
                ("/prometheus/tls/caConfigMap", json!("a")),
                ("/prometheus/tls/caSecret", json!("b")),
            ],
            "caConfigMap or caSecret, not both",
        ),
        (
            vec![("/prometheus/auth/existingSecret", json!("s"))],
            "prometheus.url is empty",
        ),
    ] {
        let err = render_with("modeldeploy", &with_all(&sets), &[])
            .unwrap()
            .unwrap_err();
        assert!(err.contains(expected), "{sets:?}: {err}");
    }
    assert_refused(
        with("/prometheus/auth/type", json!("digest")),
        "/prometheus/auth/type",
    );
}

#[test]
fn image_tags_are_strings_or_numbers() {
    let image = |objects: &[Value]| {
        one(objects, "Deployment")["spec"]["template"]["spec"]["containers"][0]["image"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let Some(objects) = render(&[]) else {
        return;
    };
    let app_version = yaml(&format!("{CHART}/Chart.yaml"))["appVersion"].clone();
    assert_eq!(
        image(&objects),
        format!(
            "ghcr.io/modeldeploy/modeldeploy:{}",
            app_version.as_str().unwrap()
        )
    );
    for (tag, want) in [
        (json!("v0.2.0"), "v0.2.0"),
        (json!(1.2), "1.2"),
        (json!(2), "2"),
        (json!(20240101), "20240101"),
    ] {
        let objects = render(&[("/image/tag", tag)]).unwrap();
        assert!(
            image(&objects).ends_with(&format!(":{want}")),
            "{}",
            image(&objects)
        );
    }
    // As `--set` passes it: helm reads 1.2 as a string and 3 as a number.
    for (set, want) in [("image.tag=1.2", ":1.2"), ("image.tag=3", ":3")] {
        let objects = render_with("modeldeploy", &default_values(), &["--set", set])
            .unwrap()
            .unwrap_or_else(|e| panic!("--set {set}: {e}"));
        assert!(image(&objects).ends_with(want), "{}", image(&objects));
    }
}

/// A parent chart that has this one as a subchart and sets `global` values:
/// Helm hands `global` to the subchart, whose schema must accept it.
#[test]
fn the_chart_works_as_a_subchart_with_global_values() {
    let scratch = Scratch::new("parent");
    let Some(mut cmd) = helm(&scratch) else {
        return;
    };
    let parent = scratch.path().join("platform");
    let sub = parent.join("charts/modeldeploy");
    copy_dir(&path(CHART), &sub);
    std::fs::write(
        parent.join("Chart.yaml"),
        "apiVersion: v2\nname: platform\nversion: 1.0.0\ndependencies:\n  - name: modeldeploy\n    version: \">=0.0.0-0\"\n",
    )
    .unwrap();
    std::fs::write(
        parent.join("values.yaml"),
        "global:\n  imageRegistry: registry.example\nmodeldeploy:\n  image:\n    tag: 1.2\n",
    )
    .unwrap();
    cmd.args(["template", "platform"])
        .arg(&parent)
        .args(["--namespace", RELEASE_NAMESPACE]);
    let objects = documents(&run(cmd).unwrap_or_else(|e| panic!("the parent chart: {e}")));
    let image = &one(&objects, "Deployment")["spec"]["template"]["spec"]["containers"][0]["image"];
    assert_eq!(image, "ghcr.io/modeldeploy/modeldeploy:1.2");
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

#[test]
fn the_notes_say_what_to_do_next_and_warn_without_honor_labels() {
    let notes = |sets: &[(&str, Value)]| -> Option<String> {
        let scratch = Scratch::new("notes");
        let mut cmd = helm(&scratch)?;
        let file = scratch.path().join("values.json");
        std::fs::write(&file, serde_json::to_string(&with_all(sets)).unwrap()).unwrap();
        cmd.args(["install", "modeldeploy", "--dry-run=client"])
            .arg(path(CHART))
            .args(["--namespace", RELEASE_NAMESPACE, "--values"])
            .arg(&file);
        let out = run(cmd).unwrap_or_else(|e| panic!("helm install --dry-run: {e}"));
        Some(out.split_once("NOTES:").expect("NOTES").1.to_string())
    };
    let Some(default) = notes(&[]) else {
        return;
    };
    assert!(default.contains("kubectl modeldeploy status"), "{default}");
    assert!(default.contains("every namespace"), "{default}");
    assert!(!default.contains("WARNING"), "{default}");
    let warned = notes(&[
        ("/serviceMonitor/enabled", json!(true)),
        ("/serviceMonitor/honorLabels", json!(false)),
        ("/watchNamespaces", json!(["risk"])),
    ])
    .unwrap();
    assert!(
        warned.contains("WARNING: serviceMonitor.honorLabels=false"),
        "{warned}"
    );
    assert!(warned.contains("in: risk"), "{warned}");
}

// ---------------------------------------------------------------------------
// The chart's lifecycle on the real API server

/// `helm install`, `upgrade` and `uninstall` against the real API server
/// (whose version is the lowest the chart's kubeVersion admits): the CRD is
/// installed from the template and upgraded with the release, the
/// built-in roles gain the aggregated rules, and uninstalling leaves the CRD
/// (crds.keep) while the rest goes.
#[test]
fn the_chart_installs_upgrades_and_uninstalls_keeping_the_crd() {
    use k8s_openapi::api::rbac::v1::ClusterRole;
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    let Some(cp) = control_plane() else {
        return;
    };
    let release = "lifecycle";
    let helm = |args: &[&str]| -> Option<String> {
        let mut cmd = cp.helm()?;
        cmd.args(args).args(["--namespace", release]);
        Some(run(cmd).unwrap_or_else(|e| panic!("helm {args:?}: {e}")))
    };
    let chart = path(CHART);
    let chart = chart.to_str().unwrap();
    // Not the operator's image: the test kubelet leaves such pods
    // status-only instead of starting a process.
    let image = "image.repository=registry.example/operator";
    if helm(&[
        "install",
        release,
        chart,
        "--create-namespace",
        "--set",
        image,
    ])
    .is_none()
    {
        return;
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let client = cp.admin().await;
        // kubeVersion claims what this tier runs, no older.
        let server = client.apiserver_version().await.unwrap();
        let minor = server.minor.trim_end_matches('+');
        assert_eq!(
            yaml(&format!("{CHART}/Chart.yaml"))["kubeVersion"],
            format!(">={}.{minor}.0-0", server.major),
            "the chart's kubeVersion and the tested API server ({})",
            server.git_version
        );
        let crds: kube::Api<CustomResourceDefinition> = kube::Api::all(client.clone());
        let crd_name = "modeldeployments.modeldeploy.io";
        let crd = crds.get(crd_name).await.expect("the CRD is installed");
        let annotations = crd.metadata.annotations.clone().unwrap_or_default();
        assert_eq!(
            annotations
                .get("helm.sh/resource-policy")
                .map(String::as_str),
            Some("keep")
        );
        assert_eq!(
            annotations
                .get("meta.helm.sh/release-name")
                .map(String::as_str),
            Some(release),
            "the release owns the CRD, so upgrades upgrade it"
        );

        // The clusterrole-aggregation controller adds the chart's rules to
        // the built-in roles.
        let roles: kube::Api<ClusterRole> = kube::Api::all(client.clone());
        let has = |role: ClusterRole, verb: &str| {
            role.rules.unwrap_or_default().iter().any(|r| {
                r.api_groups
                    .as_deref()
                    .unwrap_or_default()
                    .contains(&"modeldeploy.io".into())
                    && r.resources
                        .as_deref()
                        .unwrap_or_default()
                        .contains(&"modeldeployments".into())
                    && r.verbs.contains(&verb.to_string())
            })
        };
        for (role, verb) in [("view", "watch"), ("edit", "patch"), ("admin", "patch")] {
            support::envtest::poll(
                &format!("the {role} ClusterRole aggregating modeldeployments {verb}"),
                std::time::Duration::from_secs(60),
                || async {
                    roles
                        .get(role)
                        .await
                        .ok()
                        .filter(|r| has(r.clone(), verb))
                        .map(|_| ())
                },
            )
            .await;
        }
        assert!(!has(roles.get("view").await.unwrap(), "patch"));

        helm(&[
            "upgrade",
            release,
            chart,
            "--reuse-values",
            "--set",
            "crds.annotations.example\\.com/upgraded=yes",
        ]);
        let crd = crds.get(crd_name).await.unwrap();
        assert_eq!(
            crd.metadata
                .annotations
                .unwrap_or_default()
                .get("example.com/upgraded")
                .map(String::as_str),
            Some("yes"),
            "helm upgrade upgrades the CRD"
        );

        helm(&["uninstall", release, "--wait"]);
        assert!(
            crds.get_opt(crd_name).await.unwrap().is_some(),
            "the CRD survives helm uninstall"
        );
        assert!(
            roles
                .get_opt(&format!("{release}-modeldeploy"))
                .await
                .unwrap()
                .is_none(),
            "the operator's ClusterRole goes with the release"
        );
    });
}

// ---------------------------------------------------------------------------
// honorLabels: where the operator's series land in Prometheus

/// The operator's namespace in the alert fixtures.
const OPERATOR_NAMESPACE: &str = "modeldeploy-system";
/// Labels Prometheus adds to every series of a target found through a
/// ServiceMonitor (the Prometheus Operator's relabelling).
const TARGET_LABELS: [&str; 7] = [
    "job",
    "instance",
    "namespace",
    "service",
    "endpoint",
    "pod",
    "container",
];

/// `name{a="x", b="y"}` as the name and its labels, in order.
fn parse_series(series: &str) -> (String, Vec<(String, String)>) {
    let (name, rest) = series.split_once('{').unwrap_or((series, "}"));
    let body = rest.strip_suffix('}').expect("a series ends with }");
    let mut labels = Vec::new();
    let mut chars = body.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let key: String = std::iter::from_fn(|| chars.next_if(|c| *c != '=')).collect();
        if key.is_empty() {
            break;
        }
        assert_eq!(chars.next(), Some('='), "{series}");
        assert_eq!(chars.next(), Some('"'), "{series}");
        let mut value = String::new();
        while let Some(c) = chars.next() {
            match c {
                '\\' => value.push(chars.next().expect("an escaped character")),
                '"' => break,
                c => value.push(c),
            }
        }
        labels.push((key.trim().to_string(), value));
    }
    (name.trim().to_string(), labels)
}

fn format_series(name: &str, labels: &[(String, String)]) -> String {
    let body: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
    format!("{name}{{{}}}", body.join(", "))
}

/// The alert fixtures as Prometheus would store them when scraping the
/// operator with `honor_labels: honor`, as a promtool test file. The
/// committed fixtures are labelled for `honor_labels: true`; with false, the
/// operator's own `namespace` (the ModelDeployment's) becomes
/// `exported_namespace` and the target's namespace takes its place.
fn fixtures_as_scraped(honor: bool, scratch: &Scratch) -> PathBuf {
    let mut tests = yaml(ALERTS_TEST);
    for test in tests["tests"].as_array_mut().unwrap() {
        for input in test["input_series"].as_array_mut().unwrap() {
            let series = input["series"].as_str().unwrap().to_string();
            let (name, mut labels) = parse_series(&series);
            // `up` is Prometheus' own series of the target, not scraped.
            if !name.starts_with("modeldeploy_") {
                continue;
            }
            for key in TARGET_LABELS {
                assert!(
                    labels.iter().any(|(k, _)| k == key),
                    "{series}: Prometheus adds the target label {key}"
                );
            }
            if !honor {
                let ns = labels.iter_mut().find(|(k, _)| k == "namespace").unwrap();
                if ns.1 != OPERATOR_NAMESPACE {
                    let own = std::mem::replace(&mut ns.1, OPERATOR_NAMESPACE.to_string());
                    labels.push(("exported_namespace".into(), own));
                }
            }
            input["series"] = json!(format_series(&name, &labels));
        }
    }
    tests["rule_files"] = json!([path(ALERTS).to_str().unwrap()]);
    let file = scratch
        .path()
        .join(format!("alerts_test_honor_{honor}.yaml"));
    std::fs::write(&file, serde_yaml::to_string(&tests).unwrap()).unwrap();
    file
}

/// The alert tests pass on the series as Prometheus labels them when it
/// scrapes the operator through the chart's ServiceMonitor (default values):
/// it must honor the operator's labels.
#[test]
fn the_alerts_pass_on_series_as_the_charts_service_monitor_has_them_scraped() {
    let Some(objects) = render(&[("/serviceMonitor/enabled", json!(true))]) else {
        return;
    };
    let monitor = one(&objects, "ServiceMonitor");
    // Prometheus' default is false.
    let honor = monitor["spec"]["endpoints"][0]["honorLabels"]
        .as_bool()
        .unwrap_or(false);
    let scratch = Scratch::new("honor");
    let file = fixtures_as_scraped(honor, &scratch);
    let Some(out) = promtool(&["test", "rules", file.to_str().unwrap()]) else {
        return;
    };
    assert!(
        out.status.success(),
        "the alerts fail on series scraped by the chart's ServiceMonitor (honorLabels: {honor}):\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// Without honorLabels, the per-ModelDeployment alerts fire for the
/// operator's namespace: the failure mode the chart's default prevents.
#[test]
fn without_honor_labels_the_alerts_name_the_operators_namespace() {
    let scratch = Scratch::new("dishonor");
    let file = fixtures_as_scraped(false, &scratch);
    let Some(out) = promtool(&["test", "rules", file.to_str().unwrap()]) else {
        return;
    };
    assert!(
        !out.status.success(),
        "the alert tests pass without honorLabels"
    );
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    for alert in [
        "ModelDeployRolledBack",
        "ModelDeployDriftDetected",
        "ModelDeployStuckPaused",
    ] {
        assert!(text.contains(alert), "{alert} should fail: {text}");
    }
    assert!(
        text.contains(&format!("namespace=\"{OPERATOR_NAMESPACE}\"")),
        "got the operator's namespace: {text}"
    );
    assert!(
        !text.contains("ModelDeployReconcileErrors") && !text.contains("ModelDeployOperatorDown"),
        "alerts without a ModelDeployment's namespace are unaffected: {text}"
    );
}

// ---------------------------------------------------------------------------
// Shards: two releases of the chart split the ModelDeployments between them,
// each with its own selector and Lease, and their objects do not collide.

fn operator_env(objects: &[Value], name: &str) -> Option<String> {
    let deployment = one(objects, "Deployment");
    let env = deployment["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_array()
        .unwrap();
    env.iter()
        .find(|e| e["name"] == name)
        .map(|e| e["value"].as_str().unwrap_or_default().to_string())
}

/// What a second object of the same name would clash with: kind, namespace
/// (blank for cluster-scoped objects), name.
fn identities(objects: &[Value]) -> Vec<(String, String, String)> {
    objects
        .iter()
        .map(|o| {
            let text = |v: &Value| v.as_str().unwrap_or_default().to_string();
            (
                text(&o["kind"]),
                text(&o["metadata"]["namespace"]),
                text(&o["metadata"]["name"]),
            )
        })
        .collect()
}

#[test]
fn a_shard_name_gives_the_release_its_selector_and_its_own_lease() {
    let Some(objects) = render(&[("/shard/name", json!("a"))]) else {
        return;
    };
    assert_eq!(
        operator_env(&objects, "MODELDEPLOY_SELECTOR").as_deref(),
        Some("modeldeploy.io/shard=a")
    );
    assert_eq!(
        operator_env(&objects, "LEASE_NAME").as_deref(),
        Some("modeldeploy-leader-a")
    );
    let objects = render(&[
        ("/shard/name", json!("gold")),
        ("/shard/selector", json!("tier in (gold,platinum)")),
    ])
    .unwrap();
    assert_eq!(
        operator_env(&objects, "MODELDEPLOY_SELECTOR").as_deref(),
        Some("tier in (gold,platinum)")
    );
    assert_eq!(
        operator_env(&objects, "LEASE_NAME").as_deref(),
        Some("modeldeploy-leader-gold")
    );
    // A selector without a name would share the unsharded Lease.
    let failed = render_with(
        "modeldeploy",
        &with_all(&[("/shard/selector", json!("tier=gold"))]),
        &[],
    )
    .unwrap()
    .expect_err("shard.selector without shard.name renders");
    assert!(
        failed.contains("shard.selector needs shard.name"),
        "{failed}"
    );
    let objects = render(&[]).unwrap();
    assert_eq!(
        operator_env(&objects, "MODELDEPLOY_SELECTOR").as_deref(),
        Some("")
    );
    assert_eq!(
        operator_env(&objects, "LEASE_NAME").as_deref(),
        Some("modeldeploy-leader")
    );
}

#[test]
fn two_shard_releases_in_one_namespace_share_no_object() {
    let shard = |name: &str, crds: bool| {
        let values = with_all(&[("/shard/name", json!(name)), ("/crds/install", json!(crds))]);
        render_with(&format!("modeldeploy-{name}"), &values, &[])
            .map(|r| r.unwrap_or_else(|e| panic!("helm template shard {name}: {e}")))
    };
    let Some(a) = shard("a", true) else {
        return;
    };
    let b = shard("b", false).unwrap();
    let (a, b) = (identities(&a), identities(&b));
    let shared: Vec<_> = a.iter().filter(|o| b.contains(o)).collect();
    assert!(shared.is_empty(), "both releases render {shared:?}");
    for kind in ["ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"] {
        assert!(
            b.iter().any(|(k, _, _)| k == kind),
            "the second shard renders no {kind}: {b:?}"
        );
    }
}

#[test]
fn a_shard_name_that_is_no_label_value_is_refused() {
    for bad in ["A", "a_b", "-a", &"a".repeat(41)] {
        assert_refused(with("/shard/name", json!(bad)), "/shard/name");
    }
    assert_refused(with("/shard/selector", json!(3)), "/shard/selector");
}
