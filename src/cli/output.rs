//! `-o json|yaml`: whole objects as `kubectl get` prints them: keys sorted,
//! `apiVersion` and `kind` on every object, `metadata.managedFields` left
//! out, JSON indented by four spaces, several objects as a `v1` `List`.

use serde::Serialize;
use serde_json::{Value, json};

use super::args::Format;

/// An object (or a `List`) as the user asked for it.
pub fn render_object(object: &Value, format: Format) -> String {
    let object = without_managed_fields(object);
    match format {
        Format::Json => {
            let mut out = Vec::new();
            let mut ser = serde_json::Serializer::with_formatter(
                &mut out,
                serde_json::ser::PrettyFormatter::with_indent(b"    "),
            );
            // A `Value` always serializes.
            let _ = object.serialize(&mut ser);
            let mut out = String::from_utf8(out).unwrap_or_default();
            out.push('\n');
            out
        }
        Format::Yaml => serde_yaml::to_string(&object).unwrap_or_default(),
    }
}

/// Several objects as kubectl prints a list: a `v1` `List` with `items`.
pub fn as_list(items: Vec<Value>) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "List",
        "items": items,
        "metadata": {"resourceVersion": ""},
    })
}

/// kubectl leaves out `metadata.managedFields` unless asked
/// (`--show-managed-fields`): they are bookkeeping, and long.
fn without_managed_fields(object: &Value) -> Value {
    let mut object = object.clone();
    if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.remove("managedFields");
    }
    if let Some(items) = object.get_mut("items").and_then(Value::as_array_mut) {
        for item in items {
            *item = without_managed_fields(item);
        }
    }
    object
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object() -> Value {
        json!({
            "kind": "ModelDeployment", "apiVersion": "modeldeploy.io/v1alpha1",
            "metadata": {"name": "scorer", "namespace": "risk",
                         "managedFields": [{"manager": "kubectl"}]},
            "spec": {"model": {"version": "2.0.0"}},
            "status": {"phase": "Stable"}
        })
    }

    #[test]
    fn json_is_sorted_four_space_indented_and_without_managed_fields() {
        let out = render_object(&object(), Format::Json);
        assert!(out.starts_with("{\n    \"apiVersion\": \"modeldeploy.io/v1alpha1\",\n    \"kind\": \"ModelDeployment\",\n    \"metadata\": {\n        \"name\": \"scorer\","), "{out}");
        assert!(out.ends_with("}\n"), "{out}");
        assert!(!out.contains("managedFields"), "{out}");
        let back: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(back["status"]["phase"], "Stable");
    }

    #[test]
    fn yaml_is_the_same_object() {
        let out = render_object(&object(), Format::Yaml);
        assert!(
            out.starts_with(
                "apiVersion: modeldeploy.io/v1alpha1\nkind: ModelDeployment\nmetadata:\n"
            ),
            "{out}"
        );
        assert!(!out.contains("managedFields"), "{out}");
        let back: Value = serde_yaml::from_str(&out).unwrap();
        assert_eq!(back, without_managed_fields(&object()));
    }

    #[test]
    fn a_list_holds_every_item_without_their_managed_fields() {
        let list = as_list(vec![object(), object()]);
        let out = render_object(&list, Format::Yaml);
        assert!(!out.contains("managedFields"), "{out}");
        let back: Value = serde_yaml::from_str(&out).unwrap();
        assert_eq!(back["apiVersion"], "v1");
        assert_eq!(back["kind"], "List");
        assert_eq!(back["items"].as_array().unwrap().len(), 2);
        assert_eq!(back["items"][1]["metadata"]["name"], "scorer");
        let empty: Value =
            serde_json::from_str(&render_object(&as_list(vec![]), Format::Json)).unwrap();
        assert_eq!(empty["items"], json!([]));
    }
}
