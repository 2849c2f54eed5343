//! The CRD's validation as the API server applies it, client-side: the plain
//! OpenAPI keywords (required, enum, ranges, lengths) by `jsonschema`, the CEL
//! rules (`x-kubernetes-validations`) by `kube-cel`. Shared by the CRD tests
//! and the example tests; include it with
//! `#[path = "support/schema.rs"] mod schema;` so a test crate does not pull in
//! the fake API server of `support/mod.rs`.
//!
//! It also holds the one table of invalid specs ([`invalid_cases`]) that both
//! `tests/crd_schema.rs` (client-side) and `tests/crd_real_server.rs` (a real
//! kube-apiserver) send, and the valid ModelDeployments of `examples/`.
// Each test crate uses a different part of this module.
#![allow(dead_code)]

use kube::CustomResourceExt;
use kube_cel::Validator;
use modeldeploy::api::ModelDeployment;
use serde::Deserialize;
use serde_json::{Value, json};

/// The `openAPIV3Schema` of the ModelDeployment CRD's only version.
pub fn open_api_schema() -> Value {
    let crd = ModelDeployment::crd();
    serde_json::to_value(
        crd.spec.versions[0]
            .schema
            .as_ref()
            .unwrap()
            .open_api_v3_schema
            .as_ref()
            .unwrap(),
    )
    .unwrap()
}

/// Messages from the OpenAPI keywords and the CEL rules, as `path: message`;
/// empty when the API server would accept `object`.
pub fn rejections(object: &Value) -> Vec<String> {
    let schema = open_api_schema();
    let mut out = Vec::new();
    let validator = jsonschema::options()
        .should_validate_formats(false)
        .build(&schema)
        .expect("schema compiles as JSON schema");
    for e in validator.iter_errors(object) {
        out.push(format!("{}: {}", e.instance_path(), e));
    }
    if let Err(errors) = Validator::new().validate(&schema, object, None) {
        for e in errors.iter() {
            out.push(format!("{}: {}", e.field_path, e.message));
        }
    }
    out
}

/// `examples/canary-cpu.yaml`: the valid spec every invalid case starts from.
pub fn example() -> Value {
    serde_yaml::from_str(include_str!("../../examples/canary-cpu.yaml")).unwrap()
}

/// Every ModelDeployment document under `examples/`, as `(file, object)`.
pub fn example_model_deployments() -> Vec<(String, Value)> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("examples/ is readable")
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    let mut out = Vec::new();
    for path in files {
        let text = std::fs::read_to_string(&path).expect("example is readable");
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let value = Value::deserialize(doc).expect("example is YAML");
            if value["kind"] == "ModelDeployment" {
                let file = path.file_name().unwrap().to_string_lossy().into_owned();
                out.push((file, value));
            }
        }
    }
    out
}

/// One invalid change to [`example`], and how each validator names it.
pub struct Invalid {
    pub what: &'static str,
    pub mutate: fn(&mut Value),
    /// Every one of these is in one client-side message ([`rejections`]).
    pub client: &'static [&'static str],
    /// Every one of these is in one cause of the real API server's refusal,
    /// written `field: message`; the first names the field.
    pub server: &'static [&'static str],
}

impl Invalid {
    pub fn object(&self) -> Value {
        let mut object = example();
        (self.mutate)(&mut object);
        object
    }
}

fn ab_test_with(o: &mut Value, ab: Value) {
    o["spec"]["rollout"]["strategy"] = json!("abTest");
    o["spec"]["rollout"]["abTest"] = ab;
}

/// Every invalid spec the CRD refuses, by OpenAPI keyword or CEL rule.
pub fn invalid_cases() -> Vec<Invalid> {
    vec![
        Invalid {
            what: "limits missing",
            mutate: |o| {
                o["spec"]["resources"]
                    .as_object_mut()
                    .unwrap()
                    .remove("limits");
            },
            client: &["/spec/resources", "limits"],
            server: &["spec.resources.limits", "Required value"],
        },
        Invalid {
            what: "limits empty",
            mutate: |o| o["spec"]["resources"]["limits"] = json!({}),
            client: &["spec.resources.limits", "at least one"],
            server: &["spec.resources.limits", "must name at least one resource"],
        },
        Invalid {
            what: "a networkPolicy peer naming nobody",
            mutate: |o| o["spec"]["networkPolicy"] = json!({"from": [{}]}),
            client: &["each entry needs a namespaceSelector, a podSelector or both"],
            server: &[
                "spec.networkPolicy.from[0]",
                "each entry needs a namespaceSelector, a podSelector or both",
            ],
        },
        Invalid {
            what: "setWeight above 100",
            mutate: |o| o["spec"]["rollout"]["steps"][0] = json!({"setWeight": 150}),
            client: &["setWeight must be within 0..100"],
            server: &["spec.rollout.steps[0].setWeight", "must be within 0..100"],
        },
        Invalid {
            what: "abTest.weight above 100",
            mutate: |o| {
                ab_test_with(
                    o,
                    json!({"weight": 101, "objective": {"metric": "errorRate", "goal": "minimize"}}),
                )
            },
            client: &["abTest.weight must be within 0..100"],
            server: &["spec.rollout.abTest.weight", "must be within 0..100"],
        },
        Invalid {
            what: "decreasing steps",
            mutate: |o| {
                o["spec"]["rollout"]["steps"] =
                    json!([{"setWeight": 30}, {"pause": {}}, {"setWeight": 10}])
            },
            client: &["spec.rollout.steps", "must not decrease"],
            server: &["spec.rollout.steps", "must not decrease"],
        },
        Invalid {
            what: "unknown strategy",
            mutate: |o| o["spec"]["rollout"]["strategy"] = json!("blueGreen"),
            client: &["/spec/rollout/strategy", "blueGreen"],
            server: &["spec.rollout.strategy", "Unsupported value", "blueGreen"],
        },
        Invalid {
            what: "pause duration in words",
            mutate: |o| {
                o["spec"]["rollout"]["steps"][1] = json!({"pause": {"duration": "2 minutes"}})
            },
            client: &["pause.duration must be a duration"],
            server: &["spec.rollout.steps[1].pause.duration", "must be a duration"],
        },
        Invalid {
            what: "analysis interval not a duration",
            mutate: |o| o["spec"]["rollout"]["analysis"]["interval"] = json!("soon"),
            client: &["spec.rollout.analysis.interval must be a duration"],
            server: &["spec.rollout.analysis.interval", "must be a duration"],
        },
        Invalid {
            what: "latency max without a unit",
            mutate: |o| {
                o["spec"]["rollout"]["analysis"]["checks"][2]["latency"]["max"] = json!("300")
            },
            client: &["latency.max must be a duration"],
            server: &[
                "spec.rollout.analysis.checks[2].latency.max",
                "must be a duration",
            ],
        },
        Invalid {
            what: "empty image",
            mutate: |o| o["spec"]["model"]["image"] = json!(""),
            client: &["/spec/model/image"],
            server: &["spec.model.image", "at least 1 chars long"],
        },
        Invalid {
            what: "blank image",
            mutate: |o| o["spec"]["model"]["image"] = json!("   "),
            client: &["spec.model.image must not be empty"],
            server: &["spec.model.image", "must not be empty"],
        },
        Invalid {
            what: "version not a label value",
            mutate: |o| o["spec"]["model"]["version"] = json!("2.3.0 beta!"),
            client: &["spec.model.version must be a valid label value"],
            server: &["spec.model.version", "must be a valid label value"],
        },
        Invalid {
            what: "a step with two kinds",
            mutate: |o| o["spec"]["rollout"]["steps"][0] = json!({"setWeight": 10, "pause": {}}),
            client: &["exactly one of setWeight, pause or analysis"],
            server: &[
                "spec.rollout.steps[0]",
                "exactly one of setWeight, pause or analysis",
            ],
        },
        Invalid {
            what: "abTest strategy without abTest",
            mutate: |o| o["spec"]["rollout"]["strategy"] = json!("abTest"),
            client: &["spec.rollout.abTest is required"],
            server: &["spec.rollout", "spec.rollout.abTest is required"],
        },
        Invalid {
            what: "canary without steps",
            mutate: |o| {
                o["spec"]["rollout"]
                    .as_object_mut()
                    .unwrap()
                    .remove("steps");
            },
            client: &["spec.rollout.steps must list at least one step"],
            server: &[
                "spec.rollout",
                "spec.rollout.steps must list at least one step",
            ],
        },
        Invalid {
            what: "gatewayAPI router without gatewayAPI",
            mutate: |o| o["spec"]["rollout"]["traffic"] = json!({"router": "gatewayAPI"}),
            client: &["gatewayAPI (parentRefs) is required"],
            server: &[
                "spec.rollout.traffic",
                "gatewayAPI (parentRefs) is required",
            ],
        },
        Invalid {
            what: "header matching with the replicas router",
            mutate: |o| {
                ab_test_with(
                    o,
                    json!({"match": [{"headers": {"x-model-variant": "b"}}],
                           "objective": {"metric": "errorRate", "goal": "minimize"}}),
                )
            },
            client: &["abTest.match", "gatewayAPI"],
            server: &["spec.rollout", "abTest.match", "gatewayAPI"],
        },
        Invalid {
            what: "shadow traffic with the replicas router",
            mutate: |o| o["spec"]["rollout"]["steps"][0] = json!({"setMirror": {"percent": 100}}),
            client: &["setMirror", "spec.rollout.traffic.router: gatewayAPI"],
            server: &[
                "spec.rollout",
                "setMirror",
                "spec.rollout.traffic.router: gatewayAPI",
            ],
        },
        Invalid {
            what: "duplicate check names",
            mutate: |o| o["spec"]["rollout"]["analysis"]["checks"][1]["name"] = json!("errors"),
            client: &["check names must be unique"],
            server: &["spec.rollout.analysis", "check names must be unique"],
        },
        Invalid {
            what: "a check with two kinds",
            mutate: |o| {
                o["spec"]["rollout"]["analysis"]["checks"][0]["latency"] =
                    json!({"quantile": 0.9, "max": "1s"})
            },
            client: &["exactly one of errorRate, latency"],
            server: &[
                "spec.rollout.analysis.checks[0]",
                "exactly one of errorRate, latency",
            ],
        },
        Invalid {
            what: "errorRate.max above 1",
            mutate: |o| {
                o["spec"]["rollout"]["analysis"]["checks"][0]["errorRate"] = json!({"max": 2.0})
            },
            client: &["errorRate.max is a fraction"],
            server: &[
                "spec.rollout.analysis.checks[0].errorRate.max",
                "errorRate.max is a fraction",
            ],
        },
        Invalid {
            what: "latency quantile above 1",
            mutate: |o| {
                o["spec"]["rollout"]["analysis"]["checks"][2]["latency"]["quantile"] = json!(1.5)
            },
            client: &["latency.quantile must be within"],
            server: &[
                "spec.rollout.analysis.checks[2].latency.quantile",
                "latency.quantile must be within",
            ],
        },
        Invalid {
            what: "metrics path a URL",
            mutate: |o| o["spec"]["metrics"]["path"] = json!("http://attacker.example/"),
            client: &["spec.metrics.path must be a plain absolute path"],
            server: &["spec.metrics.path", "must be a plain absolute path"],
        },
        Invalid {
            what: "metrics path another host",
            mutate: |o| o["spec"]["metrics"]["path"] = json!("//other-host/metrics"),
            client: &["spec.metrics.path must be a plain absolute path"],
            server: &["spec.metrics.path", "must be a plain absolute path"],
        },
        Invalid {
            what: "metrics path relative",
            mutate: |o| o["spec"]["metrics"]["path"] = json!("metrics"),
            client: &["spec.metrics.path must be a plain absolute path"],
            server: &["spec.metrics.path", "must be a plain absolute path"],
        },
        Invalid {
            what: "metrics path with a query",
            mutate: |o| o["spec"]["metrics"]["path"] = json!("/m?x=1"),
            client: &["spec.metrics.path must be a plain absolute path"],
            server: &["spec.metrics.path", "must be a plain absolute path"],
        },
        Invalid {
            what: "drift reference with both sources",
            mutate: |o| {
                o["spec"]["drift"] = json!({"reference": {
                    "configMapRef": {"name": "ref", "key": "reference.json"}, "fromStable": true}})
            },
            client: &["exactly one of configMapRef or fromStable"],
            server: &[
                "spec.drift.reference",
                "exactly one of configMapRef or fromStable",
            ],
        },
        Invalid {
            what: "drift reference without a source",
            mutate: |o| o["spec"]["drift"] = json!({"reference": {}}),
            client: &["exactly one of configMapRef or fromStable"],
            server: &[
                "spec.drift.reference",
                "exactly one of configMapRef or fromStable",
            ],
        },
        Invalid {
            what: "negative replicas",
            mutate: |o| o["spec"]["replicas"] = json!(-1),
            client: &["/spec/replicas"],
            server: &["spec.replicas", "greater than or equal to 0"],
        },
        Invalid {
            what: "name longer than 40",
            mutate: |o| o["metadata"]["name"] = json!("a".repeat(41)),
            client: &["metadata.name must be at most 40 characters"],
            server: &["metadata.name must be at most 40 characters"],
        },
        // The bounds that keep CEL costs estimable (see src/api/spec.rs).
        Invalid {
            what: "more than 64 steps",
            mutate: |o| o["spec"]["rollout"]["steps"] = json!(vec![json!({"setWeight": 10}); 65]),
            client: &["/spec/rollout/steps", "more than 64 items"],
            server: &["spec.rollout.steps", "must have at most 64 items"],
        },
        Invalid {
            what: "more than 32 checks",
            mutate: |o| {
                o["spec"]["rollout"]["analysis"]["checks"] = (0..33)
                    .map(|i| json!({"name": format!("c{i}"), "errorRate": {"max": 0.1}}))
                    .collect()
            },
            client: &["/spec/rollout/analysis/checks", "more than 32 items"],
            server: &["spec.rollout.analysis.checks", "must have at most 32 items"],
        },
        Invalid {
            what: "image longer than 512",
            mutate: |o| o["spec"]["model"]["image"] = json!(format!("r/{}", "i".repeat(511))),
            client: &["/spec/model/image", "longer than 512"],
            server: &["spec.model.image", "Too long"],
        },
        Invalid {
            what: "more than 16 resources",
            mutate: |o| {
                o["spec"]["resources"]["requests"] = (0..17)
                    .map(|i| (format!("example.com/r{i}"), json!("1")))
                    .collect()
            },
            client: &["/spec/resources/requests", "more than 16 properties"],
            server: &["spec.resources.requests", "must have at most 16 items"],
        },
    ]
}
