//! The krew manifest (`krew/modeldeploy.yaml`) offers the plugin on every
//! platform a release builds, with the asset names the release uploads.

use std::collections::BTreeSet;
use std::path::Path;

use serde_json::Value;

const PLATFORMS: [(&str, &str); 4] = [
    ("linux", "amd64"),
    ("linux", "arm64"),
    ("darwin", "amd64"),
    ("darwin", "arm64"),
];

fn manifest() -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("krew/modeldeploy.yaml");
    let text = std::fs::read_to_string(&path).expect("krew/modeldeploy.yaml");
    serde_yaml::from_str(&text).expect("the krew manifest is YAML")
}

#[test]
fn the_manifest_is_a_krew_plugin_named_for_the_binary() {
    let m = manifest();
    assert_eq!(
        m["apiVersion"],
        "krew.googlecontainertools.github.com/v1alpha2"
    );
    assert_eq!(m["kind"], "Plugin");
    // krew runs `kubectl-<name>`, which is our binary.
    assert_eq!(m["metadata"]["name"], "modeldeploy");
    let version = m["spec"]["version"].as_str().expect("spec.version");
    assert_eq!(version, format!("v{}", env!("CARGO_PKG_VERSION")));
    for field in ["homepage", "shortDescription", "description"] {
        assert!(
            m["spec"][field]
                .as_str()
                .is_some_and(|s| !s.trim().is_empty()),
            "spec.{field}"
        );
    }
}

#[test]
fn every_platform_downloads_its_release_asset_and_runs_the_binary() {
    let m = manifest();
    let version = m["spec"]["version"].as_str().unwrap();
    let platforms = m["spec"]["platforms"].as_array().expect("spec.platforms");
    // The binary this package builds, as the archives hold it.
    let binary = Path::new(env!("CARGO_BIN_EXE_kubectl-modeldeploy"))
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    assert_eq!(binary, "kubectl-modeldeploy");
    let mut seen = BTreeSet::new();
    for p in platforms {
        let labels = &p["selector"]["matchLabels"];
        let (os, arch) = (
            labels["os"].as_str().expect("os label"),
            labels["arch"].as_str().expect("arch label"),
        );
        assert!(seen.insert((os, arch)), "{os}/{arch} twice");
        let uri = p["uri"].as_str().expect("uri");
        assert!(uri.starts_with("https://"), "{uri}");
        assert!(
            uri.ends_with(&format!(
                "/releases/download/{version}/kubectl-modeldeploy-{os}-{arch}.tar.gz"
            )),
            "{os}/{arch}: {uri}"
        );
        let sha = p["sha256"].as_str().expect("sha256");
        assert!(
            sha.len() == 64 && sha.chars().all(|c| c.is_ascii_hexdigit()),
            "{os}/{arch}: sha256 {sha:?}"
        );
        assert_eq!(p["bin"].as_str(), Some(binary.as_str()), "{os}/{arch}");
    }
    let expected: BTreeSet<(&str, &str)> = PLATFORMS.into_iter().collect();
    assert_eq!(seen, expected);
}
