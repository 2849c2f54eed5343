//! No `spec.rollout`: the new revision replaces the running one. It starts
//! at full size beside it (promoting from the start) and takes over once
//! available; the engine's deadline and pod health still roll it back.

use crate::api::{CanaryStatus, RolloutSpec};

use super::super::Draft;
use super::Strategy;

pub(crate) struct Replace;

impl Strategy for Replace {
    fn judged(&self) -> bool {
        false
    }

    fn advance(
        &self,
        _d: &mut Draft<'_>,
        _c: &mut CanaryStatus,
        _rollout: Option<&RolloutSpec>,
    ) -> Result<(), String> {
        Ok(())
    }
}
