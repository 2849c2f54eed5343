//! The Argo CD resource actions, run by a real Lua 5.1 interpreter (Argo
//! CD's dialect): discovery offers each action only where it can do
//! something, and every action writes a request the operator's own parser
//! reads as that action. Skips with a message without `lua5.1` (fails
//! instead in CI, see tests/support/tools.rs).

#[path = "support/tools.rs"]
mod tools;

use std::collections::BTreeMap;
use std::process::Command;

use modeldeploy::rollout::{Request, RequestAction};
use serde_json::{Value, json};

const ACTIONS: [(&str, &str); 6] = [
    (
        "promote",
        include_str!("../deploy/argocd/actions/promote.lua"),
    ),
    (
        "promote-full",
        include_str!("../deploy/argocd/actions/promote-full.lua"),
    ),
    ("pause", include_str!("../deploy/argocd/actions/pause.lua")),
    (
        "resume",
        include_str!("../deploy/argocd/actions/resume.lua"),
    ),
    ("abort", include_str!("../deploy/argocd/actions/abort.lua")),
    ("retry", include_str!("../deploy/argocd/actions/retry.lua")),
];
const DISCOVERY: &str = include_str!("../deploy/argocd/actions/discovery.lua");

/// A JSON object as a Lua table literal (strings without escapes suffice here).
fn lua(v: &Value) -> String {
    match v {
        Value::Null => "nil".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => format!("{s:?}"),
        Value::Array(a) => format!("{{{}}}", a.iter().map(lua).collect::<Vec<_>>().join(", ")),
        Value::Object(m) => format!(
            "{{{}}}",
            m.iter()
                .map(|(k, v)| format!("[{k:?}] = {}", lua(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

fn run_lua(program: String) -> String {
    let out = Command::new("lua5.1")
        .arg("-e")
        .arg(program)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "lua failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The actions discovery enables for `object`.
fn enabled(object: &Value) -> Vec<String> {
    let program = format!(
        "obj = {}\nlocal f = function()\n{DISCOVERY}\nend\nlocal a = f()\nfor name, v in pairs(a) do if not v.disabled then print(name) end end\n",
        lua(object)
    );
    let mut names: Vec<String> = run_lua(program).lines().map(String::from).collect();
    names.sort();
    names
}

/// The request annotation `action` leaves on `object`.
fn requested(script: &str, object: &Value) -> String {
    let program = format!(
        "obj = {}\nlocal f = function()\n{script}\nend\nlocal o = f()\nio.write(o.metadata.annotations[\"modeldeploy.io/request\"])\n",
        lua(object)
    );
    run_lua(program)
}

fn object(status: Value) -> Value {
    json!({"metadata": {"name": "scorer", "annotations": {"team": "risk"}}, "status": status})
}

#[test]
fn discovery_offers_what_the_state_allows() {
    if !tools::available("lua5.1", &["-v"], "lua5.1") {
        return;
    }
    let canary = json!({"revision": 2, "version": "2.0.0"});
    let cases = [
        (json!({"phase": "Stable"}), vec![]),
        (
            json!({"phase": "Progressing", "canary": canary}),
            vec!["abort", "pause", "promote", "promote-full"],
        ),
        (
            json!({"phase": "Paused", "canary": canary}),
            vec!["abort", "promote", "promote-full", "resume"],
        ),
        (json!({"phase": "RolledBack"}), vec!["retry"]),
    ];
    for (status, want) in cases {
        assert_eq!(enabled(&object(status.clone())), want, "{status}");
    }
    assert!(enabled(&json!({"metadata": {"name": "new"}})).is_empty());
}

#[test]
fn every_action_writes_a_request_the_operator_reads_as_that_action() {
    if !tools::available("lua5.1", &["-v"], "lua5.1") {
        return;
    }
    let want = BTreeMap::from([
        ("promote", RequestAction::Promote),
        ("promote-full", RequestAction::PromoteFull),
        ("pause", RequestAction::Pause),
        ("resume", RequestAction::Resume),
        ("abort", RequestAction::Abort),
        ("retry", RequestAction::Retry),
    ]);
    for (name, script) in ACTIONS {
        for o in [object(json!({})), json!({"metadata": {"name": "scorer"}})] {
            let raw = requested(script, &o);
            let request = Request::parse(&raw).unwrap_or_else(|e| panic!("{name}: {raw}: {e}"));
            assert_eq!(request.action, want[name], "{name}: {raw}");
            assert!(request.id.starts_with(&format!("argocd-{name}-")), "{raw}");
        }
    }
}

#[test]
fn the_argocd_cm_snippet_embeds_the_same_action_scripts() {
    let cm: Value = serde_yaml::from_str(include_str!("../deploy/argocd/argocd-cm.yaml")).unwrap();
    let embedded = cm["data"]["resource.customizations.actions.modeldeploy.io_ModelDeployment"]
        .as_str()
        .expect("the actions key");
    let actions: Value = serde_yaml::from_str(embedded).unwrap();
    assert_eq!(actions["discovery.lua"], DISCOVERY);
    let definitions = actions["definitions"].as_array().unwrap();
    assert_eq!(definitions.len(), ACTIONS.len());
    for (name, script) in ACTIONS {
        let d = definitions.iter().find(|d| d["name"] == name).expect(name);
        assert_eq!(d["action.lua"], script, "{name}");
    }
}
