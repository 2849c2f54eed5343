//! Replays the fuzz corpus and every kept finding through the fuzz targets'
//! own bodies (`fuzz/src/lib.rs`), without AFL: a plain `cargo test` fails
//! again if a crash the fuzzer found comes back.
//!
//! - `fuzz/corpus/<target>/*`: the committed corpus (hand-written seeds and
//!   the inputs a fuzz run kept, minimised; see `fuzz/run.sh`);
//! - `fuzz/regressions/<target>/*`: inputs that crashed or hung a target once,
//!   each kept after its fix (named for what it is);
//!
//! Kept so far: durations whose numbers overflowed and panicked the reconcile
//! (`regressions/spec`, fixed in `api::parse_duration`), and drift references
//! whose bucket edges read back one step off (`regressions/reference`, fixed
//! by serde_json's `float_roundtrip`).

#[path = "../fuzz/src/lib.rs"]
#[allow(dead_code)]
mod targets;

use std::path::{Path, PathBuf};

fn inputs(folder: &str, target: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz")
        .join(folder)
        .join(target);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && p.file_name().is_some_and(|n| n != ".gitkeep"))
        .collect();
    files.sort();
    files
}

/// Runs every input of `folder` through each target; returns how many ran.
fn replay(folder: &str) -> usize {
    let mut ran = 0;
    for (target, body) in targets::TARGETS {
        for path in inputs(folder, target) {
            let data = std::fs::read(&path).expect("readable input");
            let outcome = std::panic::catch_unwind(|| body(&data));
            assert!(
                outcome.is_ok(),
                "fuzz target {target} panics on {}",
                path.display()
            );
            ran += 1;
        }
    }
    ran
}

#[test]
fn the_corpus_runs_clean_through_every_target() {
    let ran = replay("corpus");
    for (target, _) in targets::TARGETS {
        assert!(
            !inputs("corpus", target).is_empty(),
            "no seed corpus for {target}"
        );
    }
    assert!(ran >= targets::TARGETS.len());
}

#[test]
fn every_kept_finding_runs_clean() {
    replay("regressions");
}

/// The operator's own serde_json (not only this test build's, where a
/// dev-dependency turns the feature on) reads floats back exactly: a drift
/// reference's bucket edges must come back as written
/// (`fuzz/regressions/reference/*` is what the fuzzer found without it).
#[test]
fn the_operator_reads_floats_back_exactly() {
    let manifest =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml"))
            .expect("Cargo.toml");
    let line = manifest
        .lines()
        .find(|l| l.starts_with("serde_json"))
        .expect("serde_json is a dependency");
    assert!(line.contains("float_roundtrip"), "{line}");
}
