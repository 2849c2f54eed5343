//! Rollout strategies: how a new revision earns its traffic, one module
//! each over the shared engine (`rollout::engine`: pod health, deadlines,
//! analysis, promotion, rollback). Adding a strategy (say blue-green): a
//! module here implementing [`Strategy`], a variant of `api::Strategy`, and
//! its arm in [`for_spec`] (see docs/extending.md).

mod ab_test;
mod canary;
mod replace;

use crate::api::{CanaryStatus, ModelDeploymentSpec, RolloutSpec, Strategy as Kind};

use super::Draft;

pub(crate) trait Strategy: Sync {
    /// Whether the new revision is judged before it takes over (its
    /// promotion is `Promoted`, not `Replaced`).
    fn judged(&self) -> bool;

    /// Move the rollout on as far as the observations allow; `Err` ends it
    /// with a rollback for that reason (stable stays). Deciding again on the
    /// result must change nothing.
    fn advance(
        &self,
        d: &mut Draft<'_>,
        c: &mut CanaryStatus,
        rollout: Option<&RolloutSpec>,
    ) -> Result<(), String>;
}

/// The strategy a spec names: a replace without `spec.rollout`.
pub(crate) fn for_spec(spec: &ModelDeploymentSpec) -> &'static dyn Strategy {
    match spec.rollout.as_ref().map(|r| r.strategy) {
        None => &replace::Replace,
        Some(Kind::Canary) => &canary::Canary,
        Some(Kind::AbTest) => &ab_test::AbTest,
    }
}
