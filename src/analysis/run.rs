//! One analysis run: every check's verdict at one moment, as the rollout
//! state machine and the guard consume it.

use k8s_openapi::jiff::Timestamp;

use crate::api::{CheckStatus, CheckVerdict};

/// One analysis run: every check's verdict at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct AnalysisRun {
    pub at: Timestamp,
    pub checks: Vec<CheckStatus>,
    /// Evidence strong enough to roll back without waiting for `failureLimit`
    /// runs in a row (see docs/statistics.md).
    pub decisive: bool,
    /// Per-feature input drift seen by this run, if an input drift check ran.
    pub drift: Option<crate::api::DriftStatus>,
    /// The A/B objective compared between the variants (strategy abTest).
    pub ab: Option<super::abtest::Comparison>,
}

impl AnalysisRun {
    /// Fail if any check fails, Inconclusive if any lacks data, else Pass.
    pub fn verdict(&self) -> CheckVerdict {
        if self.checks.iter().any(|c| c.verdict == CheckVerdict::Fail) {
            CheckVerdict::Fail
        } else if self
            .checks
            .iter()
            .any(|c| c.verdict == CheckVerdict::Inconclusive)
        {
            CheckVerdict::Inconclusive
        } else {
            CheckVerdict::Pass
        }
    }

    /// The failing checks, for a person: `errors: 0.05 > 0.01 (3000 samples)`.
    pub fn failures(&self) -> String {
        self.checks
            .iter()
            .filter(|c| c.verdict == CheckVerdict::Fail)
            .map(describe_check)
            .collect::<Vec<_>>()
            .join("; ")
    }
}

fn describe_check(c: &CheckStatus) -> String {
    let mut s = c.name.clone();
    match (c.value, c.threshold) {
        (Some(v), Some(t)) => s.push_str(&format!(": value {v:.4} vs threshold {t:.4}")),
        (Some(v), None) => s.push_str(&format!(": value {v:.4}")),
        _ => {}
    }
    s.push_str(&format!(" ({} samples)", c.samples));
    if let Some(m) = c.message.as_deref().filter(|m| !m.is_empty()) {
        s.push_str(&format!(", {m}"));
    }
    s
}
