//! Real components some tests run (Prometheus, promtool, lua5.1). Where one
//! is missing a test skips with a message saying how to get it, so
//! `cargo test` works on any machine; CI sets `MODELDEPLOY_REQUIRE_TOOLS=1`
//! (in `.ci/run`), which turns that skip into a failure, so CI never passes a
//! test it did not run.

use std::process::Command;

/// Whether `command` can be started (`probe` are harmless arguments, such as
/// `--version`). Prints the skip, or panics when tools are required.
pub fn available(command: &str, probe: &[&str], package: &str) -> bool {
    if Command::new(command).args(probe).output().is_ok() {
        return true;
    }
    let why = format!(
        "{command} is not installed (Debian package {package}; `bash .ci/install-deps` installs it)"
    );
    if std::env::var_os("MODELDEPLOY_REQUIRE_TOOLS").is_some_and(|v| v != "0") {
        panic!("{why}, and MODELDEPLOY_REQUIRE_TOOLS is set");
    }
    println!("SKIPPED: {why}");
    false
}
