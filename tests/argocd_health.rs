//! The Argo CD health check, run by a real Lua 5.1 interpreter (Argo CD's
//! dialect) against status fixtures. Skips with a message without `lua5.1`
//! (fails instead in CI, see tests/support/tools.rs).

#[path = "support/tools.rs"]
mod tools;

use std::process::Command;

use serde_json::Value;

const SCRIPT: &str = include_str!("../deploy/argocd/health.lua");

/// A string as a Lua 5.1 literal: quotes, backslashes and control characters
/// escaped the way 5.1 reads them (`\ddd` decimal; no `\u{..}` or `\x..`,
/// which only later versions know). Other UTF-8 bytes go through as they are.
fn lua_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                out.push_str(&format!("\\{:03}", c as u32));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A JSON value as a Lua table literal.
fn lua(v: &Value) -> String {
    match v {
        Value::Null => "nil".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => lua_string(s),
        Value::Array(a) => format!("{{{}}}", a.iter().map(lua).collect::<Vec<_>>().join(", ")),
        Value::Object(m) => format!(
            "{{{}}}",
            m.iter()
                .map(|(k, v)| format!("[{}] = {}", lua_string(k), lua(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

fn health(object: &Value) -> Option<(String, String)> {
    let program = format!(
        "obj = {}\nlocal f = function()\n{SCRIPT}\nend\nlocal hs = f()\nprint(hs.status)\nprint(hs.message)\n",
        lua(object)
    );
    let out = Command::new("lua5.1")
        .arg("-e")
        .arg(program)
        .output()
        .ok()?;
    assert!(
        out.status.success(),
        "lua failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let mut lines = text.lines();
    Some((
        lines.next()?.to_string(),
        lines.next().unwrap_or_default().to_string(),
    ))
}

#[test]
fn every_fixture_gets_its_health() {
    if !tools::available("lua5.1", &["-v"], "lua5.1") {
        return;
    }
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/argocd");
    let mut seen = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let fixture: Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let (status, message) = health(&fixture["object"]).unwrap();
        assert_eq!(
            status,
            fixture["expected"].as_str().unwrap(),
            "{}",
            path.display()
        );
        assert!(
            !message.is_empty(),
            "{}: a message for people",
            path.display()
        );
        seen += 1;
    }
    assert!(seen >= 8);
}

#[test]
fn strings_reach_lua_5_1_unchanged() {
    if !tools::available("lua5.1", &["-v"], "lua5.1") {
        return;
    }
    let tricky = "quote \" back\\slash\nnew line\ttab \u{1b}[31m bell\u{7} ümlaut ✓";
    let out = Command::new("lua5.1")
        .arg("-e")
        .arg(format!("io.write({})", lua_string(tricky)))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8(out.stdout).unwrap(), tricky);
}

#[test]
fn the_argocd_cm_snippet_embeds_the_same_script() {
    let cm: Value = serde_yaml::from_str(include_str!("../deploy/argocd/argocd-cm.yaml")).unwrap();
    let embedded = cm["data"]["resource.customizations.health.modeldeploy.io_ModelDeployment"]
        .as_str()
        .unwrap();
    assert_eq!(embedded, SCRIPT);
}
