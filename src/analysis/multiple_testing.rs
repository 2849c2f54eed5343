//! Corrections for testing many hypotheses at once (one drift test per
//! feature): without them, 100 features at level 0.05 would flag about five
//! features on every check even when nothing changed.

use std::fmt;

/// A p-value outside `[0, 1]` or NaN, at `index`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct InvalidPValue {
    pub index: usize,
    pub value: f64,
}

impl fmt::Display for InvalidPValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "p-value #{} is {}; p-values must be in [0, 1]",
            self.index, self.value
        )
    }
}

impl std::error::Error for InvalidPValue {}

/// Which correction to apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Correction {
    /// Controls the family-wise error rate (any false rejection); conservative.
    Bonferroni,
    /// Controls the false discovery rate (expected share of false rejections).
    BenjaminiHochberg,
}

fn check(p_values: &[f64]) -> Result<(), InvalidPValue> {
    match p_values
        .iter()
        .enumerate()
        .find(|(_, p)| !(0.0..=1.0).contains(*p))
    {
        Some((index, &value)) => Err(InvalidPValue { index, value }),
        None => Ok(()),
    }
}

/// Bonferroni-adjusted p-values: `min(1, p_i * m)` for `m` hypotheses.
pub fn bonferroni(p_values: &[f64]) -> Result<Vec<f64>, InvalidPValue> {
    check(p_values)?;
    let m = p_values.len() as f64;
    Ok(p_values.iter().map(|p| (p * m).min(1.0)).collect())
}

/// Benjamini–Hochberg (step-up) adjusted p-values, in the input order; the
/// same numbers as `scipy.stats.false_discovery_control(p, method='bh')`.
///
/// With `p_(1) <= ... <= p_(m)` sorted, `adj_(i) = min_{j >= i} p_(j) * (m / j)`,
/// clipped to 1. Rejecting the hypotheses with `adj <= alpha` is exactly the
/// BH step-up procedure at FDR level `alpha`.
pub fn benjamini_hochberg(p_values: &[f64]) -> Result<Vec<f64>, InvalidPValue> {
    check(p_values)?;
    let m = p_values.len();
    let mut order: Vec<usize> = (0..m).collect();
    // Stable sort: ties keep input order (irrelevant to the values).
    order.sort_by(|&a, &b| p_values[a].total_cmp(&p_values[b]));
    let mut adjusted = vec![0.0; m];
    let mut running_min = f64::INFINITY;
    for (rank0, &i) in order.iter().enumerate().rev() {
        // Same operation order as scipy: p * (m / rank).
        let v = p_values[i] * (m as f64 / (rank0 + 1) as f64);
        running_min = running_min.min(v);
        adjusted[i] = running_min.min(1.0);
    }
    Ok(adjusted)
}

/// Adjusted p-values for `correction`.
pub fn adjust(p_values: &[f64], correction: Correction) -> Result<Vec<f64>, InvalidPValue> {
    match correction {
        Correction::Bonferroni => bonferroni(p_values),
        Correction::BenjaminiHochberg => benjamini_hochberg(p_values),
    }
}

/// Which hypotheses are rejected at level `alpha` (adjusted p-value
/// `<= alpha`), in input order. A NaN `alpha` rejects nothing.
pub fn rejected(
    p_values: &[f64],
    alpha: f64,
    correction: Correction,
) -> Result<Vec<bool>, InvalidPValue> {
    Ok(adjust(p_values, correction)?
        .into_iter()
        .map(|p| p <= alpha)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn hand_computed() {
        // Sorted: 0.01 (x4/1=0.04), 0.02 (x4/2=0.04), 0.03 (x4/3=0.04), 0.5 (x4/4=0.5).
        let p = [0.5, 0.03, 0.01, 0.02];
        let bh = benjamini_hochberg(&p).unwrap();
        let want = [0.5, 0.04, 0.04, 0.04];
        for (g, w) in bh.iter().zip(want) {
            assert!((g - w).abs() < 1e-15, "{bh:?}");
        }
        assert_eq!(bonferroni(&p).unwrap(), vec![1.0, 0.12, 0.04, 0.08]);
        assert_eq!(
            rejected(&p, 0.05, Correction::BenjaminiHochberg).unwrap(),
            vec![false, true, true, true]
        );
        assert_eq!(
            rejected(&p, 0.05, Correction::Bonferroni).unwrap(),
            vec![false, false, true, false]
        );
        assert_eq!(benjamini_hochberg(&[]).unwrap(), Vec::<f64>::new());
        let e = bonferroni(&[0.1, f64::NAN]).unwrap_err();
        assert_eq!(e.index, 1);
        assert!(e.value.is_nan());
        assert_eq!(bonferroni(&[0.1, 1.5]).unwrap_err().index, 1);
        assert_eq!(benjamini_hochberg(&[-0.1]).unwrap_err().index, 0);
    }

    proptest! {
        #[test]
        fn bh_adjusted_between_raw_and_one(p in proptest::collection::vec(0.0f64..=1.0, 0..60)) {
            let adj = benjamini_hochberg(&p).unwrap();
            for (a, raw) in adj.iter().zip(&p) {
                prop_assert!(*a >= *raw && *a <= 1.0, "{a} vs {raw}");
            }
            let bonf = bonferroni(&p).unwrap();
            for (b, a) in bonf.iter().zip(&adj) {
                prop_assert!(*b >= *a, "Bonferroni is never less conservative");
            }
        }
    }
}
