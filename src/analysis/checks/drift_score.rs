//! Drift scores shared by `predictionDrift` and `inputDrift`.

use crate::analysis::drift;
use crate::analysis::histogram::Histogram;
use crate::api::DriftMethod;

/// A drift score between a reference and an observed histogram over the
/// same buckets: the method's score, and its p-value for test-based methods.
pub fn score(
    method: DriftMethod,
    reference: &Histogram,
    observed: &Histogram,
) -> Result<(f64, Option<f64>), String> {
    if reference.upper_bounds() != observed.upper_bounds() {
        return Err("reference and observed buckets differ".into());
    }
    let r = reference.bucket_counts();
    let o = observed.bucket_counts();
    let e = |e: drift::DriftError| e.to_string();
    Ok(match method {
        DriftMethod::Psi => (drift::psi(&r, &o).map_err(e)?, None),
        DriftMethod::Js => (drift::jensen_shannon(&r, &o).map_err(e)?, None),
        DriftMethod::Ks => {
            let k = drift::kolmogorov_smirnov(&r, &o).map_err(e)?;
            (k.statistic, Some(k.p_value))
        }
        DriftMethod::ChiSquared => {
            let c = drift::chi_squared(&r, &o).map_err(e)?;
            (1.0 - c.p_value, Some(c.p_value))
        }
        DriftMethod::Wasserstein => (
            drift::wasserstein(reference.upper_bounds(), &r, &o).map_err(e)?,
            None,
        ),
    })
}

pub(super) fn method_name(m: DriftMethod) -> &'static str {
    match m {
        DriftMethod::Psi => "psi",
        DriftMethod::Js => "js",
        DriftMethod::Ks => "ks",
        DriftMethod::ChiSquared => "chiSquared",
        DriftMethod::Wasserstein => "wasserstein",
    }
}
