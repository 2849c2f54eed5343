//! The crate's layers point one way: the pure modules (no cluster, no
//! network) never reach an I/O module, and no two top-level modules import
//! each other, directly or around a longer loop. Read from the `crate::`
//! paths in `src/`, the way ArchUnit or cargo-deny guard a layering.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Modules that take values and return values.
const PURE: &[&str] = &[
    "api",
    "analysis",
    "exposition",
    "resources",
    "rollout",
    "routers",
];
/// Modules that talk to the cluster, the network or the process.
const IO: &[&str] = &[
    "cli",
    "controller",
    "metrics",
    "notify",
    "operator",
    "telemetry",
];

type Edges = BTreeMap<String, BTreeMap<String, String>>;

/// The top-level module a source file belongs to (`src/rollout/canary.rs`
/// -> `rollout`); `None` for the crate root and binaries.
fn module_of(relative: &Path) -> Option<String> {
    let mut parts = relative
        .components()
        .map(|c| c.as_os_str().to_string_lossy());
    let first = parts.next()?.to_string();
    let rest: Vec<_> = parts.collect();
    if first == "bin" {
        return None;
    }
    let name = first.strip_suffix(".rs").unwrap_or(&first).to_string();
    if rest.is_empty() && (name == "lib" || name == "main") {
        None
    } else {
        Some(name)
    }
}

/// Every `crate::NAME` a file names, in `use` lines and in paths alike.
fn named_modules(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for line in text.lines() {
        let code = line.split("//").next().unwrap_or_default();
        let mut rest = code;
        while let Some(i) = rest.find("crate::") {
            rest = &rest[i + "crate::".len()..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                out.insert(name);
            }
        }
    }
    out
}

/// Module -> module it names -> one file where it does.
fn edges(files: &[(PathBuf, String)], modules: &BTreeSet<String>) -> Edges {
    let mut edges = Edges::new();
    for (path, text) in files {
        let Some(from) = module_of(path) else {
            continue;
        };
        for to in named_modules(text) {
            if to != from && modules.contains(&to) {
                edges
                    .entry(from.clone())
                    .or_default()
                    .entry(to)
                    .or_insert_with(|| path.display().to_string());
            }
        }
    }
    edges
}

/// A loop of modules, if there is one.
fn find_cycle(edges: &Edges) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        edges: &Edges,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(start) = path.iter().position(|p| p == node) {
            let mut cycle = path[start..].to_vec();
            cycle.push(node.to_string());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_string());
        for next in edges.get(node).into_iter().flat_map(|m| m.keys()) {
            if let Some(c) = visit(next, edges, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(node.to_string());
        None
    }
    let mut done = BTreeSet::new();
    edges
        .keys()
        .find_map(|n| visit(n, edges, &mut Vec::new(), &mut done))
}

/// Edges from a pure module to an I/O module, as `from -> to (file)`.
fn pure_to_io(edges: &Edges) -> Vec<String> {
    edges
        .iter()
        .filter(|(from, _)| PURE.contains(&from.as_str()))
        .flat_map(|(from, tos)| {
            tos.iter()
                .filter(|(to, _)| IO.contains(&to.as_str()))
                .map(move |(to, file)| format!("{from} -> {to} ({file})"))
        })
        .collect()
}

fn sources() -> Vec<(PathBuf, String)> {
    fn walk(dir: &Path, root: &Path, out: &mut Vec<(PathBuf, String)>) {
        for entry in std::fs::read_dir(dir).expect("src/ is readable") {
            let path = entry.expect("a directory entry").path();
            if path.is_dir() {
                walk(&path, root, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).expect("a source file");
                out.push((path.strip_prefix(root).unwrap().to_path_buf(), text));
            }
        }
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut out = Vec::new();
    walk(&root, &root, &mut out);
    out
}

fn top_level_modules(files: &[(PathBuf, String)]) -> BTreeSet<String> {
    files.iter().filter_map(|(p, _)| module_of(p)).collect()
}

#[test]
fn every_top_level_module_is_classified() {
    let modules = top_level_modules(&sources());
    for m in &modules {
        assert!(
            PURE.contains(&m.as_str()) || IO.contains(&m.as_str()),
            "src/{m}: say in tests/layering.rs whether it is pure or does I/O"
        );
    }
}

#[test]
fn pure_modules_never_reach_io_and_no_modules_form_a_loop() {
    let files = sources();
    let edges = edges(&files, &top_level_modules(&files));
    let leaks = pure_to_io(&edges);
    assert!(leaks.is_empty(), "pure modules reach I/O: {leaks:#?}");
    if let Some(cycle) = find_cycle(&edges) {
        let hops: Vec<String> = cycle
            .windows(2)
            .map(|w| format!("{} -> {} ({})", w[0], w[1], edges[&w[0]][&w[1]]))
            .collect();
        panic!("modules import each other: {hops:#?}");
    }
}

/// The checker itself: it must see the loop and the leak that the real tree
/// once had (`analysis` <-> `rollout`, `analysis` -> `metrics`).
#[test]
fn the_checker_sees_a_reintroduced_cycle_and_a_pure_to_io_edge() {
    let files = vec![
        (
            PathBuf::from("analysis/checks.rs"),
            "use crate::rollout::AnalysisRun;\nuse crate::api::Check;".to_string(),
        ),
        (
            PathBuf::from("analysis/window.rs"),
            "let t = crate::metrics::parse::MetricType::Counter; // crate::controller in a comment"
                .to_string(),
        ),
        (
            PathBuf::from("rollout/canary.rs"),
            "use crate::analysis::abtest::Winner;".to_string(),
        ),
        (PathBuf::from("api/mod.rs"), String::new()),
        (PathBuf::from("metrics/mod.rs"), String::new()),
        (PathBuf::from("controller/mod.rs"), String::new()),
        (PathBuf::from("lib.rs"), "pub mod api;".to_string()),
    ];
    let modules = top_level_modules(&files);
    assert!(!modules.contains("lib"));
    let edges = edges(&files, &modules);
    let cycle = find_cycle(&edges).expect("the loop is seen");
    assert!(cycle.contains(&"analysis".to_string()) && cycle.contains(&"rollout".to_string()));
    assert_eq!(
        pure_to_io(&edges),
        vec!["analysis -> metrics (analysis/window.rs)".to_string()],
        "comments do not count"
    );
}

/// The README's layout table names files that exist, and every top-level
/// module of `src/`.
#[test]
fn the_readme_layout_table_matches_the_tree() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let table = readme
        .split("## Layout")
        .nth(1)
        .expect("README has a Layout section")
        .split("\n## ")
        .next()
        .unwrap();
    let mut named = BTreeSet::new();
    for row in table.lines().filter(|l| l.starts_with("| `")) {
        let first = row.split('|').nth(1).unwrap_or_default();
        for path in first.split('`').skip(1).step_by(2) {
            assert!(
                root.join(path.trim_end_matches('/')).exists(),
                "README layout names {path}, which does not exist"
            );
            named.insert(path.trim_end_matches('/').to_string());
        }
    }
    for module in top_level_modules(&sources()) {
        let as_dir = format!("src/{module}");
        let as_file = format!("src/{module}.rs");
        assert!(
            named.contains(&as_dir) || named.contains(&as_file),
            "README layout does not mention src/{module}"
        );
    }
}
