//! The CRD's validation as the API server applies it, client-side: the plain
//! OpenAPI keywords (required, enum, ranges, lengths) by `jsonschema`, the CEL
//! rules (`x-kubernetes-validations`) by `kube-cel`. Shared by the CRD tests
//! and the example tests; include it with
//! `#[path = "support/schema.rs"] mod schema;` so a test crate does not pull in
//! the fake API server of `support/mod.rs`.

use kube::CustomResourceExt;
use kube_cel::Validator;
use modeldeploy::api::ModelDeployment;
use serde_json::Value;

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
