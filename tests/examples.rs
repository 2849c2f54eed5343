//! Every manifest under `examples/` is one a user can apply as it is. The
//! directory is enumerated, so a new example is checked without touching this
//! file. For each YAML document:
//!
//! - a `ModelDeployment` passes the CRD's OpenAPI schema and CEL rules (as the
//!   API server would apply them), deserializes into the Rust type, and passes
//!   the operator's reconcile-time validation; a `configMapRef` drift reference
//!   must name a ConfigMap of the same namespace in the examples, with the key;
//! - a `ConfigMap` must be such a drift reference, and its document must parse
//!   with the operator's own reference parser;
//! - a `HorizontalPodAutoscaler` must be autoscaling/v2 and scale an example
//!   ModelDeployment of its namespace;
//! - anything else fails: an example kind nothing checks is not allowed.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use modeldeploy::analysis::checks::Reference;
use modeldeploy::api::{ModelDeployment, validate};
use serde::Deserialize;
use serde_json::Value;

#[path = "support/schema.rs"]
mod schema;
use schema::rejections;

/// One YAML document of one example file.
struct Document {
    file: String,
    index: usize,
    value: Value,
}

impl Document {
    fn at(&self) -> String {
        format!("{} (document {})", self.file, self.index + 1)
    }

    fn str(&self, pointer: &str) -> Option<&str> {
        self.value.pointer(pointer).and_then(Value::as_str)
    }
}

fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples")
}

/// Every YAML file under `examples/`, sorted; any other file but Markdown fails.
fn example_files() -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).expect("examples/ is readable") {
            let path = entry.expect("directory entry").path();
            if path.is_dir() {
                walk(&path, out);
                continue;
            }
            match path.extension().and_then(|e| e.to_str()) {
                Some("yaml" | "yml") => out.push(path),
                Some("md") => {}
                _ => panic!(
                    "{}: examples/ holds YAML manifests (and Markdown); this file would go unchecked",
                    path.display()
                ),
            }
        }
    }
    let mut files = Vec::new();
    walk(&examples_dir(), &mut files);
    files.sort();
    files
}

fn documents() -> Vec<Document> {
    documents_of(example_files())
}

fn documents_of(files: Vec<PathBuf>) -> Vec<Document> {
    let mut out = Vec::new();
    for path in files {
        let file = path
            .strip_prefix(env!("CARGO_MANIFEST_DIR"))
            .unwrap_or(&path)
            .display()
            .to_string();
        let text = std::fs::read_to_string(&path).expect("example is readable");
        for (index, doc) in serde_yaml::Deserializer::from_str(&text).enumerate() {
            let yaml = serde_yaml::Value::deserialize(doc)
                .unwrap_or_else(|e| panic!("{file} (document {}): not YAML: {e}", index + 1));
            if yaml.is_null() {
                continue; // an empty document, e.g. after a trailing `---`
            }
            let value = serde_json::to_value(&yaml)
                .unwrap_or_else(|e| panic!("{file} (document {}): not JSON-like: {e}", index + 1));
            out.push(Document {
                file: file.clone(),
                index,
                value,
            });
        }
    }
    out
}

fn namespace(doc: &Document) -> String {
    doc.str("/metadata/namespace")
        .unwrap_or("default")
        .to_string()
}

/// `(namespace, name, key)` of every drift reference a ModelDeployment names.
type RefKey = (String, String, String);

/// Who names a drift reference.
struct UsedBy {
    at: String,
    /// The model is the demo server, whose feature histogram buckets are known.
    demo: bool,
}

fn check_model_deployment(doc: &Document, references: &mut BTreeMap<RefKey, UsedBy>) {
    let at = doc.at();
    assert_eq!(
        doc.str("/apiVersion"),
        Some("modeldeploy.io/v1alpha1"),
        "{at}: apiVersion"
    );
    assert!(
        doc.str("/metadata/name").is_some(),
        "{at}: metadata.name is missing"
    );
    let refused = rejections(&doc.value);
    assert!(
        refused.is_empty(),
        "{at}: the CRD schema / CEL rules refuse it:\n{}",
        refused.join("\n")
    );
    let md: ModelDeployment = serde_json::from_value(doc.value.clone())
        .unwrap_or_else(|e| panic!("{at}: does not deserialize into ModelDeployment: {e}"));
    if let Err(e) = validate(&md.spec) {
        panic!(
            "{at}: reconcile-time validation refuses it (the operator would set Ready=False, InvalidSpec): {e}"
        );
    }
    if let Some(r) = md
        .spec
        .drift
        .as_ref()
        .and_then(|d| d.reference.config_map_ref.as_ref())
    {
        let demo = md
            .spec
            .model
            .command
            .iter()
            .any(|c| c.ends_with("modeldeploy-demo"));
        references.insert(
            (namespace(doc), r.name.clone(), r.key.clone()),
            UsedBy { at, demo },
        );
    }
}

/// An HPA is an autoscaling/v2 object that scales a ModelDeployment of the
/// examples, in its namespace, within sane bounds.
fn check_autoscaler(doc: &Document, docs: &[Document]) {
    let at = doc.at();
    assert_eq!(
        doc.str("/apiVersion"),
        Some("autoscaling/v2"),
        "{at}: apiVersion"
    );
    let hpa: k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler =
        serde_json::from_value(doc.value.clone())
            .unwrap_or_else(|e| panic!("{at}: not a HorizontalPodAutoscaler: {e}"));
    let spec = hpa.spec.unwrap_or_else(|| panic!("{at}: no spec"));
    let target = &spec.scale_target_ref;
    assert_eq!(
        (target.api_version.as_deref(), target.kind.as_str()),
        (Some("modeldeploy.io/v1alpha1"), "ModelDeployment"),
        "{at}: scaleTargetRef"
    );
    let ns = namespace(doc);
    assert!(
        docs.iter()
            .any(|d| d.str("/kind") == Some("ModelDeployment")
                && namespace(d) == ns
                && d.str("/metadata/name") == Some(target.name.as_str())),
        "{at}: scales {ns}/{}, which no example defines",
        target.name
    );
    assert!(
        spec.min_replicas.unwrap_or(1) >= 1 && spec.min_replicas.unwrap_or(1) <= spec.max_replicas,
        "{at}: minReplicas must be between 1 and maxReplicas"
    );
}

#[test]
fn every_example_is_accepted_by_the_api_server_and_the_operator() {
    let docs = documents();
    assert!(!docs.is_empty(), "examples/ holds no manifests");
    let mut references = BTreeMap::new();
    let mut config_maps = Vec::new();
    let mut autoscalers = Vec::new();
    let mut model_deployments = 0;
    for doc in &docs {
        match doc.str("/kind") {
            Some("ModelDeployment") => {
                check_model_deployment(doc, &mut references);
                model_deployments += 1;
            }
            Some("ConfigMap") => config_maps.push(doc),
            Some("HorizontalPodAutoscaler") => autoscalers.push(doc),
            other => panic!(
                "{}: kind {other:?} is not checked by tests/examples.rs; teach it the kind or leave it out",
                doc.at()
            ),
        }
    }
    assert!(
        model_deployments > 0,
        "no ModelDeployment among the examples"
    );

    for doc in autoscalers {
        check_autoscaler(doc, &docs);
    }

    // Drift references: every ConfigMap is one, and every one named exists.
    let mut found = BTreeSet::new();
    for doc in config_maps {
        let at = doc.at();
        assert_eq!(doc.str("/apiVersion"), Some("v1"), "{at}: apiVersion");
        let name = doc
            .str("/metadata/name")
            .unwrap_or_else(|| panic!("{at}: metadata.name is missing"));
        let ns = namespace(doc);
        let keys: Vec<&RefKey> = references
            .keys()
            .filter(|(n, m, _)| *n == ns && m == name)
            .collect();
        assert!(
            !keys.is_empty(),
            "{at}: ConfigMap {ns}/{name} is not a drift reference of any example ModelDeployment, so nothing checks it"
        );
        for key in keys {
            let text = doc
                .str(&format!(
                    "/data/{}",
                    key.2.replace('~', "~0").replace('/', "~1")
                ))
                .unwrap_or_else(|| panic!("{at}: ConfigMap {name} has no data key {}", key.2));
            let reference = Reference::parse(text).unwrap_or_else(|e| {
                panic!("{at}: key {}: the operator cannot read it: {e}", key.2)
            });
            assert!(
                !reference.features.is_empty(),
                "{at}: key {}: the reference has no features",
                key.2
            );
            // Drift compares buckets over the same edges; a feature whose
            // reference edges differ from the model's histogram is skipped.
            if references[key].demo {
                for (feature, h) in &reference.features {
                    let edges: Vec<f64> = h
                        .upper_bounds()
                        .iter()
                        .copied()
                        .filter(|b| b.is_finite())
                        .collect();
                    assert_eq!(
                        edges,
                        modeldeploy_demo::FEATURE_EDGES.to_vec(),
                        "{at}: feature {feature}: edges differ from the demo server's model_input_feature buckets"
                    );
                }
            }
            found.insert(key.clone());
        }
    }
    for (key, used_by) in &references {
        assert!(
            found.contains(key),
            "{}: drift reference ConfigMap {}/{} key {} is not among the examples",
            used_by.at,
            key.0,
            key.1,
            key.2
        );
    }
}

/// The quickstart's manifest (`e2e/quickstart/model.yaml`, applied by
/// `e2e/quickstart.sh`) holds to the same rules as the examples, and its load
/// generator is a Deployment that runs the same image.
#[test]
fn the_quickstart_manifest_is_accepted_like_an_example() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("e2e/quickstart/model.yaml");
    let docs = documents_of(vec![path]);
    let mut references = BTreeMap::new();
    let mut kinds = Vec::new();
    for doc in &docs {
        match doc.str("/kind") {
            Some("ModelDeployment") => check_model_deployment(doc, &mut references),
            Some("Deployment") => {
                let d: k8s_openapi::api::apps::v1::Deployment =
                    serde_json::from_value(doc.value.clone())
                        .unwrap_or_else(|e| panic!("{}: not a Deployment: {e}", doc.at()));
                let image = d.spec.unwrap().template.spec.unwrap().containers[0]
                    .image
                    .clone();
                assert_eq!(image.as_deref(), Some("modeldeploy:dev"), "{}", doc.at());
            }
            other => panic!("{}: unexpected kind {other:?}", doc.at()),
        }
        kinds.push(doc.str("/kind").unwrap_or_default().to_string());
    }
    assert_eq!(kinds, ["ModelDeployment", "Deployment"]);
}
