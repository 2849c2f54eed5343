//! Classification quality from delayed labels: the counter
//! `model_prediction_outcomes_total{actual, predicted}` gives, per window,
//! how many predictions of each (actual, predicted) pair were made.
//!
//! Conventions follow `sklearn.metrics` with `zero_division=0`: labels are
//! the sorted union of actual and predicted labels that occur (count > 0);
//! a class never predicted has precision 0, a class never actual has recall
//! 0, and F1 is `2 tp / (2 tp + fp + fn)`, 0 when that denominator is 0.
//! Macro averages are plain means over those labels. Counts may be
//! fractional (they are counter deltas), like sklearn's `sample_weight`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// Why quality cannot be computed.
#[derive(Debug, Clone, PartialEq)]
pub enum QualityError {
    /// No outcome has a positive count: nothing to judge (inconclusive).
    NoSamples,
    /// A count is NaN, infinite or negative.
    InvalidCount {
        actual: String,
        predicted: String,
        value: f64,
    },
    /// The requested class never occurs, as actual or as predicted, so its
    /// precision and recall are undefined (sklearn raises here too).
    UnknownLabel(String),
}

impl fmt::Display for QualityError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoSamples => write!(f, "no labelled outcomes in the window"),
            Self::InvalidCount {
                actual,
                predicted,
                value,
            } => write!(
                f,
                "outcome count for actual={actual:?} predicted={predicted:?} is {value}; counts must be finite and >= 0"
            ),
            Self::UnknownLabel(l) => write!(f, "label {l:?} does not occur in the outcomes"),
        }
    }
}

impl std::error::Error for QualityError {}

/// Precision, recall and F1 (of one class, or macro-averaged).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scores {
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
}

/// Confusion matrix: rows are actual labels, columns predicted labels, both
/// in [`ConfusionMatrix::labels`] order. Always has at least one sample.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfusionMatrix {
    labels: Vec<String>,
    counts: Vec<f64>,
}

impl ConfusionMatrix {
    /// Builds the matrix from `(actual, predicted, count)` entries; repeated
    /// pairs are added up. Fails with [`QualityError::NoSamples`] when no
    /// count is positive.
    pub fn from_counts<I, A, P>(entries: I) -> Result<Self, QualityError>
    where
        I: IntoIterator<Item = (A, P, f64)>,
        A: AsRef<str>,
        P: AsRef<str>,
    {
        let mut cells: BTreeMap<(String, String), f64> = BTreeMap::new();
        for (a, p, c) in entries {
            let (a, p) = (a.as_ref(), p.as_ref());
            if !(c >= 0.0 && c.is_finite()) {
                return Err(QualityError::InvalidCount {
                    actual: a.to_owned(),
                    predicted: p.to_owned(),
                    value: c,
                });
            }
            if c > 0.0 {
                *cells.entry((a.to_owned(), p.to_owned())).or_insert(0.0) += c;
            }
        }
        if cells.is_empty() {
            return Err(QualityError::NoSamples);
        }
        let labels: Vec<String> = cells
            .keys()
            .flat_map(|(a, p)| [a.clone(), p.clone()])
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let k = labels.len();
        let index = |l: &str| labels.binary_search_by(|x| x.as_str().cmp(l)).unwrap_or(0);
        let mut counts = vec![0.0; k * k];
        for ((a, p), c) in &cells {
            counts[index(a) * k + index(p)] += c;
        }
        Ok(Self { labels, counts })
    }

    /// Sorted labels (rows and columns).
    pub fn labels(&self) -> &[String] {
        &self.labels
    }

    /// Count of `(actual, predicted)`; 0 for labels that do not occur.
    pub fn count(&self, actual: &str, predicted: &str) -> f64 {
        match (self.position(actual), self.position(predicted)) {
            (Some(a), Some(p)) => self.counts[a * self.labels.len() + p],
            _ => 0.0,
        }
    }

    /// Row-major counts, `labels().len()` squared.
    pub fn counts(&self) -> &[f64] {
        &self.counts
    }

    /// Total number of samples (> 0).
    pub fn total(&self) -> f64 {
        self.counts.iter().sum()
    }

    /// Share of correct predictions.
    pub fn accuracy(&self) -> f64 {
        let k = self.labels.len();
        let correct: f64 = (0..k).map(|i| self.counts[i * k + i]).sum();
        correct / self.total()
    }

    fn position(&self, label: &str) -> Option<usize> {
        self.labels.binary_search_by(|x| x.as_str().cmp(label)).ok()
    }

    fn class_at(&self, c: usize) -> Scores {
        let k = self.labels.len();
        let tp = self.counts[c * k + c];
        let predicted: f64 = (0..k).map(|r| self.counts[r * k + c]).sum();
        let actual: f64 = self.counts[c * k..(c + 1) * k].iter().sum();
        let ratio = |num: f64, den: f64| if den > 0.0 { num / den } else { 0.0 };
        Scores {
            precision: ratio(tp, predicted),
            recall: ratio(tp, actual),
            // 2tp + fp + fn = predicted + actual.
            f1: ratio(2.0 * tp, predicted + actual),
        }
    }

    /// Precision, recall and F1 of `positive` against all other classes
    /// (binary metrics for a two-class model; one-vs-rest otherwise).
    pub fn class_scores(&self, positive: &str) -> Result<Scores, QualityError> {
        self.position(positive)
            .map(|c| self.class_at(c))
            .ok_or_else(|| QualityError::UnknownLabel(positive.to_owned()))
    }

    /// Macro-averaged F1 and the variance of its estimate, by the delta method
    /// over the multinomial cell shares: with gradient `g` of macro-F1 with
    /// respect to the shares `p`, `Var = (sum g_i^2 p_i - (sum g_i p_i)^2) / n`.
    /// Lets two variants' F1 be compared with a z-test from counters alone.
    pub fn macro_f1_with_variance(&self) -> (f64, f64) {
        let k = self.labels.len();
        let n = self.total();
        let share: Vec<f64> = self.counts.iter().map(|c| c / n).collect();
        let mut grad = vec![0.0; k * k];
        let mut f1 = 0.0;
        for c in 0..k {
            let tp = share[c * k + c];
            let actual: f64 = share[c * k..(c + 1) * k].iter().sum();
            let predicted: f64 = (0..k).map(|r| share[r * k + c]).sum();
            let den = actual + predicted;
            if den <= 0.0 {
                continue;
            }
            f1 += 2.0 * tp / den;
            // d(2tp/den)/dp_ij = (2[i=j=c] den - 2tp ([i=c] + [j=c])) / den^2
            for i in 0..k {
                for j in 0..k {
                    let d_num = if i == c && j == c { 2.0 } else { 0.0 };
                    let d_den = f64::from(u8::from(i == c)) + f64::from(u8::from(j == c));
                    grad[i * k + j] += (d_num * den - 2.0 * tp * d_den) / (den * den);
                }
            }
        }
        let kf = k as f64;
        let mean: f64 = grad.iter().zip(&share).map(|(g, p)| g * p).sum::<f64>() / kf;
        let second: f64 = grad
            .iter()
            .zip(&share)
            .map(|(g, p)| (g / kf).powi(2) * p)
            .sum();
        (f1 / kf, ((second - mean * mean) / n).max(0.0))
    }

    /// Unweighted means of per-class precision, recall and F1 over all labels.
    pub fn macro_average(&self) -> Scores {
        let k = self.labels.len() as f64;
        let mut sum = Scores {
            precision: 0.0,
            recall: 0.0,
            f1: 0.0,
        };
        for c in 0..self.labels.len() {
            let s = self.class_at(c);
            sum.precision += s.precision;
            sum.recall += s.recall;
            sum.f1 += s.f1;
        }
        Scores {
            precision: sum.precision / k,
            recall: sum.recall / k,
            f1: sum.f1 / k,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macro_f1_variance_matches_resampling() {
        // A 3-class model; the delta-method variance against the spread of
        // macro-F1 over many multinomial resamples of the same size.
        let cells = [
            ("a", "a", 50.0),
            ("a", "b", 10.0),
            ("a", "c", 5.0),
            ("b", "a", 8.0),
            ("b", "b", 40.0),
            ("b", "c", 7.0),
            ("c", "a", 4.0),
            ("c", "b", 6.0),
            ("c", "c", 70.0),
        ];
        let m = ConfusionMatrix::from_counts(cells).unwrap();
        let (f1, var) = m.macro_f1_with_variance();
        assert!((f1 - m.macro_average().f1).abs() < 1e-12);
        let n = m.total() as usize;
        let cumulative: Vec<f64> = m
            .counts()
            .iter()
            .scan(0.0, |acc, c| {
                *acc += c / m.total();
                Some(*acc)
            })
            .collect();
        let mut state = 0x2545_F491_4F6C_DD1Du64;
        let mut unit = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 11) as f64 / (1u64 << 53) as f64
        };
        let rounds = 4_000;
        let mut values = Vec::with_capacity(rounds);
        for _ in 0..rounds {
            let mut counts = vec![0.0; cumulative.len()];
            for _ in 0..n {
                let u = unit();
                let cell = cumulative
                    .iter()
                    .position(|c| u < *c)
                    .unwrap_or(counts.len() - 1);
                counts[cell] += 1.0;
            }
            let labels = ["a", "b", "c"];
            let resampled = ConfusionMatrix::from_counts(
                counts
                    .iter()
                    .enumerate()
                    .map(|(i, c)| (labels[i / 3], labels[i % 3], *c)),
            )
            .unwrap();
            values.push(resampled.macro_average().f1);
        }
        let mean = values.iter().sum::<f64>() / rounds as f64;
        let spread = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (rounds - 1) as f64;
        let ratio = var / spread;
        assert!(
            (0.85..1.15).contains(&ratio),
            "delta {var} vs resampled {spread}"
        );
    }

    #[test]
    fn binary_by_hand() {
        let m = ConfusionMatrix::from_counts([
            ("1", "1", 8.0),
            ("1", "0", 2.0),
            ("0", "1", 4.0),
            ("0", "0", 86.0),
            ("0", "0", 0.0),
        ])
        .unwrap();
        assert_eq!(m.labels(), &["0".to_owned(), "1".to_owned()]);
        assert_eq!(m.count("1", "0"), 2.0);
        assert_eq!(m.total(), 100.0);
        assert_eq!(m.accuracy(), 0.94);
        let s = m.class_scores("1").unwrap();
        assert_eq!(s.precision, 8.0 / 12.0);
        assert_eq!(s.recall, 0.8);
        assert_eq!(s.f1, 16.0 / 22.0);
        assert_eq!(
            m.class_scores("2"),
            Err(QualityError::UnknownLabel("2".to_owned()))
        );
    }

    #[test]
    fn zero_division_is_zero() {
        // "c" is actual but never predicted: precision 0, recall 0.
        let m = ConfusionMatrix::from_counts([("a", "a", 3.0), ("c", "a", 1.0)]).unwrap();
        let c = m.class_scores("c").unwrap();
        assert_eq!((c.precision, c.recall, c.f1), (0.0, 0.0, 0.0));
        let macro_avg = m.macro_average();
        assert_eq!(macro_avg.precision, 0.75 / 2.0);
        assert_eq!(macro_avg.recall, 0.5);
    }

    #[test]
    fn errors() {
        assert_eq!(
            ConfusionMatrix::from_counts(Vec::<(&str, &str, f64)>::new()),
            Err(QualityError::NoSamples)
        );
        assert_eq!(
            ConfusionMatrix::from_counts([("a", "a", 0.0)]),
            Err(QualityError::NoSamples)
        );
        assert!(matches!(
            ConfusionMatrix::from_counts([("a", "b", f64::NAN)]),
            Err(QualityError::InvalidCount { .. })
        ));
        assert!(matches!(
            ConfusionMatrix::from_counts([("a", "b", -1.0)]),
            Err(QualityError::InvalidCount { .. })
        ));
    }
}
