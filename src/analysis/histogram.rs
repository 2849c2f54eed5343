//! Bucketed histograms as Prometheus exposes them, and PromQL's
//! `histogram_quantile` over them.
//!
//! A Prometheus classic histogram is a list of buckets `le="<upper bound>"`
//! whose counts are *cumulative* (each bucket counts every observation `<=`
//! its upper bound) and whose last bucket is `le="+Inf"` (the total count).
//! Counts are floats because Prometheus stores them so and because windows
//! (deltas, sums across pods) are computed in floating point.

use std::fmt;

/// Why a set of buckets is not a valid histogram.
#[derive(Debug, Clone, PartialEq)]
pub enum HistogramError {
    /// No buckets at all.
    Empty,
    /// `upper_bounds` and `counts` have different lengths.
    LengthMismatch { bounds: usize, counts: usize },
    /// An upper bound is NaN (`index` into the bounds).
    NanBound { index: usize },
    /// A count is NaN (`index` into the counts).
    NanCount { index: usize },
    /// A count is negative or infinite (`index` into the counts).
    InvalidCount { index: usize, value: f64 },
    /// `upper_bounds[index]` is not strictly greater than `upper_bounds[index - 1]`.
    UnsortedBounds { index: usize },
    /// The last upper bound is not `+Inf`, so the total count is unknown.
    NoInfBucket,
    /// `counts[index] < counts[index - 1]`: cumulative counts must not decrease.
    DecreasingCounts { index: usize },
    /// Two histograms that should share bucket edges do not.
    BoundsMismatch,
}

impl fmt::Display for HistogramError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Empty => write!(f, "histogram has no buckets"),
            Self::LengthMismatch { bounds, counts } => write!(
                f,
                "histogram has {bounds} upper bounds but {counts} bucket counts"
            ),
            Self::NanBound { index } => write!(f, "upper bound #{index} is NaN"),
            Self::NanCount { index } => write!(f, "bucket count #{index} is NaN"),
            Self::InvalidCount { index, value } => {
                write!(
                    f,
                    "bucket count #{index} is {value}; counts must be finite and >= 0"
                )
            }
            Self::UnsortedBounds { index } => {
                write!(f, "upper bounds are not strictly ascending at #{index}")
            }
            Self::NoInfBucket => write!(f, "histogram has no +Inf bucket"),
            Self::DecreasingCounts { index } => {
                write!(f, "cumulative bucket counts decrease at #{index}")
            }
            Self::BoundsMismatch => write!(f, "histograms have different bucket upper bounds"),
        }
    }
}

impl std::error::Error for HistogramError {}

/// A Prometheus classic histogram: strictly ascending upper bounds ending in
/// `+Inf`, and cumulative counts.
#[derive(Debug, Clone, PartialEq)]
pub struct Histogram {
    upper_bounds: Vec<f64>,
    cumulative: Vec<f64>,
}

/// Result of [`Histogram::window_delta`].
#[derive(Debug, Clone, PartialEq)]
pub enum WindowDelta {
    /// `later - earlier`, bucket by bucket: the observations made in the window.
    Delta(Histogram),
    /// Some cumulative count went down, so the process restarted inside the
    /// window (counter reset). The histogram is `later` unchanged: the
    /// observations made since the restart, a lower bound of the window's
    /// true content (what PromQL's `increase()` assumes after a reset).
    Reset(Histogram),
}

impl WindowDelta {
    /// The window's histogram, whether or not a reset happened.
    pub fn histogram(&self) -> &Histogram {
        match self {
            Self::Delta(h) | Self::Reset(h) => h,
        }
    }

    /// True when a counter reset was detected.
    pub fn is_reset(&self) -> bool {
        matches!(self, Self::Reset(_))
    }
}

impl Histogram {
    /// Validates and builds a histogram. Rejects everything
    /// [`Histogram::from_scrape`] rejects, and also cumulative counts that
    /// decrease: a histogram built by this crate must be consistent.
    pub fn new(
        upper_bounds: Vec<f64>,
        cumulative_counts: Vec<f64>,
    ) -> Result<Self, HistogramError> {
        let h = Self::from_scrape(upper_bounds, cumulative_counts)?;
        if let Some(i) = (1..h.cumulative.len()).find(|&i| h.cumulative[i] < h.cumulative[i - 1]) {
            return Err(HistogramError::DecreasingCounts { index: i });
        }
        Ok(h)
    }

    /// Like [`Histogram::new`] but accepts cumulative counts that decrease.
    ///
    /// Scrapes can show such histograms because buckets are not updated
    /// atomically, and sums of float counters lose precision; Prometheus
    /// tolerates them and [`histogram_quantile`] repairs them as it does.
    /// Everything else (NaN, negative counts, unsorted bounds, no `+Inf`) is
    /// still refused.
    pub fn from_scrape(
        upper_bounds: Vec<f64>,
        cumulative_counts: Vec<f64>,
    ) -> Result<Self, HistogramError> {
        if upper_bounds.len() != cumulative_counts.len() {
            return Err(HistogramError::LengthMismatch {
                bounds: upper_bounds.len(),
                counts: cumulative_counts.len(),
            });
        }
        if upper_bounds.is_empty() {
            return Err(HistogramError::Empty);
        }
        if let Some(index) = upper_bounds.iter().position(|b| b.is_nan()) {
            return Err(HistogramError::NanBound { index });
        }
        if let Some(index) = cumulative_counts.iter().position(|c| c.is_nan()) {
            return Err(HistogramError::NanCount { index });
        }
        if let Some((index, &value)) = cumulative_counts
            .iter()
            .enumerate()
            .find(|(_, c)| **c < 0.0 || c.is_infinite())
        {
            return Err(HistogramError::InvalidCount { index, value });
        }
        if let Some(index) =
            (1..upper_bounds.len()).find(|&i| upper_bounds[i] <= upper_bounds[i - 1])
        {
            return Err(HistogramError::UnsortedBounds { index });
        }
        if upper_bounds[upper_bounds.len() - 1] != f64::INFINITY {
            return Err(HistogramError::NoInfBucket);
        }
        Ok(Self {
            upper_bounds,
            cumulative: cumulative_counts,
        })
    }

    /// Builds a histogram from per-bucket (non-cumulative) counts.
    pub fn from_bucket_counts(
        upper_bounds: Vec<f64>,
        counts: &[f64],
    ) -> Result<Self, HistogramError> {
        let mut acc = 0.0;
        let cumulative = counts
            .iter()
            .map(|c| {
                acc += c;
                acc
            })
            .collect();
        Self::new(upper_bounds, cumulative)
    }

    /// Upper bounds, ascending, the last one `+Inf`.
    pub fn upper_bounds(&self) -> &[f64] {
        &self.upper_bounds
    }

    /// Cumulative counts, one per upper bound.
    pub fn cumulative_counts(&self) -> &[f64] {
        &self.cumulative
    }

    /// Total number of observations (the `+Inf` bucket).
    pub fn total(&self) -> f64 {
        self.cumulative[self.cumulative.len() - 1]
    }

    /// Per-bucket (non-cumulative) counts: bucket `i` covers
    /// `(upper_bounds[i-1], upper_bounds[i]]`, the first `(-Inf, upper_bounds[0]]`.
    /// Drift statistics work on these. A decrease in a scraped histogram
    /// (see [`Histogram::from_scrape`]) gives 0, not a negative count.
    pub fn bucket_counts(&self) -> Vec<f64> {
        let mut prev = 0.0;
        self.cumulative
            .iter()
            .map(|&c| {
                let d = (c - prev).max(0.0);
                prev = prev.max(c);
                d
            })
            .collect()
    }

    /// The observations between two scrapes of the same histogram
    /// (`self` is the later one).
    ///
    /// Returns [`WindowDelta::Reset`] when any cumulative count of `self` is
    /// below `earlier`'s (the counter was reset by a restart), and an error
    /// when the bucket edges differ.
    pub fn window_delta(&self, earlier: &Histogram) -> Result<WindowDelta, HistogramError> {
        if self.upper_bounds != earlier.upper_bounds {
            return Err(HistogramError::BoundsMismatch);
        }
        if self
            .cumulative
            .iter()
            .zip(&earlier.cumulative)
            .any(|(later, earlier)| later < earlier)
        {
            return Ok(WindowDelta::Reset(self.clone()));
        }
        let cumulative = self
            .cumulative
            .iter()
            .zip(&earlier.cumulative)
            .map(|(l, e)| l - e)
            .collect();
        Ok(WindowDelta::Delta(Histogram {
            upper_bounds: self.upper_bounds.clone(),
            cumulative,
        }))
    }
}

/// Relative tolerance under which Prometheus treats two adjacent cumulative
/// counts as equal (float noise from summing counters), `smallDeltaTolerance`.
const SMALL_DELTA_TOLERANCE: f64 = 1e-12;

/// Prometheus' `almostEqual`: relative comparison, with an absolute one
/// around zero.
fn almost_equal(a: f64, b: f64, epsilon: f64) -> bool {
    const MIN_NORMAL: f64 = f64::MIN_POSITIVE;
    if a == b {
        return true;
    }
    let abs_sum = a.abs() + b.abs();
    let diff = (a - b).abs();
    if a == 0.0 || b == 0.0 || abs_sum < MIN_NORMAL {
        return diff < epsilon * MIN_NORMAL;
    }
    diff / abs_sum.min(f64::MAX) < epsilon
}

/// The cumulative counts as PromQL sees them after its repair: a count
/// below its predecessor, or within [`SMALL_DELTA_TOLERANCE`] of it, is raised
/// or snapped to the predecessor.
fn monotonic_counts(counts: &[f64]) -> Vec<f64> {
    let mut out = counts.to_vec();
    let mut prev = out[0];
    for c in out.iter_mut().skip(1) {
        let cur = *c;
        if cur == prev {
            continue;
        }
        if almost_equal(prev, cur, SMALL_DELTA_TOLERANCE) || cur < prev {
            *c = prev;
            continue;
        }
        prev = cur;
    }
    out
}

/// The `q`-quantile of `hist`, exactly as PromQL's `histogram_quantile(q, ...)`
/// computes it for a classic histogram, so that a threshold means the same
/// thing here as on a user's Grafana dashboard.
///
/// Semantics, in the order they apply:
/// - `q` NaN: `Some(NaN)`; `q < 0`: `Some(-Inf)`; `q > 1`: `Some(+Inf)`
///   (even for an empty histogram, as in Prometheus).
/// - Fewer than 2 buckets, or zero observations: `None` (Prometheus returns
///   NaN: there is no data to interpolate).
/// - Cumulative counts that decrease, or that differ from the previous one by
///   less than 1e-12 relative, are set to the previous count first.
/// - `rank = q * total`; the quantile lies in the first bucket whose
///   cumulative count is `>= rank`.
/// - In the `+Inf` bucket: the upper bound of the highest finite bucket.
/// - In the first bucket with upper bound `<= 0`: that upper bound.
/// - Otherwise linear interpolation inside the bucket, whose lower bound is
///   the previous upper bound, or 0 for the first bucket. As in Prometheus,
///   interpolating in an empty bucket (only possible with `q = 0`) gives NaN.
pub fn histogram_quantile(q: f64, hist: &Histogram) -> Option<f64> {
    if q.is_nan() {
        return Some(f64::NAN);
    }
    if q < 0.0 {
        return Some(f64::NEG_INFINITY);
    }
    if q > 1.0 {
        return Some(f64::INFINITY);
    }
    let n = hist.upper_bounds.len();
    if n < 2 {
        return None;
    }
    let counts = monotonic_counts(&hist.cumulative);
    let observations = counts[n - 1];
    if observations == 0.0 {
        return None;
    }
    let mut rank = q * observations;
    // First bucket among the first n-1 with count >= rank, else n-1 (like Go's sort.Search).
    let b = counts[..n - 1].partition_point(|&c| c < rank);
    let bounds = &hist.upper_bounds;
    if b == n - 1 {
        return Some(bounds[n - 2]);
    }
    if b == 0 && bounds[0] <= 0.0 {
        return Some(bounds[0]);
    }
    let bucket_end = bounds[b];
    let mut bucket_start = 0.0;
    let mut count = counts[b];
    if b > 0 {
        bucket_start = bounds[b - 1];
        count -= counts[b - 1];
        rank -= counts[b - 1];
    }
    Some(bucket_start + (bucket_end - bucket_start) * (rank / count))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Random valid histograms: ascending finite bounds (possibly negative),
    /// then +Inf; per-bucket counts, some zero.
    fn histogram() -> impl Strategy<Value = Histogram> {
        (1usize..15)
            .prop_flat_map(|k| {
                (
                    -5.0f64..5.0,
                    proptest::collection::vec(0.001f64..3.0, k),
                    proptest::collection::vec(prop_oneof![Just(0.0), 0.0f64..1000.0], k + 1),
                )
            })
            .prop_map(|(start, widths, counts)| {
                let mut bounds: Vec<f64> = widths
                    .iter()
                    .scan(start, |b, w| {
                        *b += w;
                        Some(*b)
                    })
                    .collect();
                bounds.push(f64::INFINITY);
                Histogram::from_bucket_counts(bounds, &counts).unwrap()
            })
    }

    proptest! {
        #[test]
        fn quantile_monotone_in_q(h in histogram(), a in 0.0f64..=1.0, b in 0.0f64..=1.0) {
            let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
            match (histogram_quantile(lo, &h), histogram_quantile(hi, &h)) {
                (Some(x), Some(y)) if !x.is_nan() && !y.is_nan() => {
                    prop_assert!(x <= y, "q={lo} -> {x}, q={hi} -> {y}");
                    // Within the finite bounds, or 0 below a positive first bound.
                    let finite = &h.upper_bounds()[..h.upper_bounds().len() - 1];
                    if let (Some(first), Some(last)) = (finite.first(), finite.last()) {
                        prop_assert!(x >= first.min(0.0) && y <= *last);
                    }
                }
                (None, None) => prop_assert_eq!(h.total(), 0.0),
                (x, y) => prop_assert!(
                    x.is_some_and(f64::is_nan) || y.is_some_and(f64::is_nan) || h.total() == 0.0,
                    "{x:?} {y:?}"
                ),
            }
        }
    }

    fn h(bounds: &[f64], counts: &[f64]) -> Histogram {
        Histogram::new(bounds.to_vec(), counts.to_vec()).unwrap()
    }

    #[test]
    fn constructor_names_the_problem() {
        let inf = f64::INFINITY;
        assert_eq!(
            Histogram::new(vec![1.0, 0.5, inf], vec![1.0, 2.0, 3.0]),
            Err(HistogramError::UnsortedBounds { index: 1 })
        );
        assert_eq!(
            Histogram::new(vec![1.0, 1.0, inf], vec![1.0, 2.0, 3.0]),
            Err(HistogramError::UnsortedBounds { index: 1 })
        );
        assert_eq!(
            Histogram::new(vec![0.5, 1.0], vec![1.0, 2.0]),
            Err(HistogramError::NoInfBucket)
        );
        assert_eq!(
            Histogram::new(vec![0.5, 1.0, inf], vec![1.0, 3.0, 2.0]),
            Err(HistogramError::DecreasingCounts { index: 2 })
        );
        assert_eq!(
            Histogram::new(vec![0.5, f64::NAN, inf], vec![1.0, 2.0, 3.0]),
            Err(HistogramError::NanBound { index: 1 })
        );
        assert_eq!(
            Histogram::new(vec![0.5, 1.0, inf], vec![1.0, f64::NAN, 3.0]),
            Err(HistogramError::NanCount { index: 1 })
        );
        assert!(matches!(
            Histogram::new(vec![0.5, 1.0, inf], vec![-1.0, 2.0, 3.0]),
            Err(HistogramError::InvalidCount { index: 0, .. })
        ));
        assert_eq!(Histogram::new(vec![], vec![]), Err(HistogramError::Empty));
        assert_eq!(
            Histogram::new(vec![inf], vec![1.0, 2.0]),
            Err(HistogramError::LengthMismatch {
                bounds: 1,
                counts: 2
            })
        );
        // from_scrape tolerates decreasing counts only.
        assert!(Histogram::from_scrape(vec![0.5, 1.0, inf], vec![1.0, 3.0, 2.0]).is_ok());
        assert!(
            HistogramError::UnsortedBounds { index: 3 }
                .to_string()
                .contains("#3")
        );
    }

    #[test]
    fn bucket_counts_are_differences() {
        let x = h(&[0.1, 0.5, f64::INFINITY], &[2.0, 7.0, 10.0]);
        assert_eq!(x.bucket_counts(), vec![2.0, 5.0, 3.0]);
        let y = Histogram::from_bucket_counts(x.upper_bounds().to_vec(), &[2.0, 5.0, 3.0]).unwrap();
        assert_eq!(x, y);
        let s = Histogram::from_scrape(vec![1.0, 2.0, f64::INFINITY], vec![5.0, 4.0, 6.0]).unwrap();
        assert_eq!(s.bucket_counts(), vec![5.0, 0.0, 1.0]);
    }

    #[test]
    fn window_delta_and_reset() {
        let inf = f64::INFINITY;
        let a = h(&[1.0, inf], &[3.0, 5.0]);
        let b = h(&[1.0, inf], &[4.0, 9.0]);
        let d = b.window_delta(&a).unwrap();
        assert!(!d.is_reset());
        assert_eq!(d.histogram().cumulative_counts(), &[1.0, 4.0]);
        let r = a.window_delta(&b).unwrap();
        assert!(r.is_reset());
        assert_eq!(r.histogram(), &a);
        let c = h(&[2.0, inf], &[3.0, 5.0]);
        assert_eq!(c.window_delta(&a), Err(HistogramError::BoundsMismatch));
    }

    #[test]
    fn quantile_special_cases() {
        let inf = f64::INFINITY;
        let x = h(&[1.0, 2.0, inf], &[10.0, 20.0, 30.0]);
        assert!(histogram_quantile(f64::NAN, &x).unwrap().is_nan());
        assert_eq!(histogram_quantile(-0.1, &x), Some(-inf));
        assert_eq!(histogram_quantile(1.1, &x), Some(inf));
        assert_eq!(histogram_quantile(0.5, &x), Some(1.5));
        assert_eq!(histogram_quantile(0.25, &x), Some(0.75));
        // In the +Inf bucket: highest finite bound.
        assert_eq!(histogram_quantile(0.9, &x), Some(2.0));
        let empty = h(&[1.0, inf], &[0.0, 0.0]);
        assert_eq!(histogram_quantile(0.5, &empty), None);
        assert_eq!(histogram_quantile(-1.0, &empty), Some(-inf));
        let one = h(&[inf], &[4.0]);
        assert_eq!(histogram_quantile(0.5, &one), None);
        let neg = h(&[-1.0, 1.0, inf], &[5.0, 10.0, 10.0]);
        assert_eq!(histogram_quantile(0.2, &neg), Some(-1.0));
        assert_eq!(histogram_quantile(0.75, &neg), Some(0.0));
        // Non-monotonic scrape repaired: counts become [5, 5, 10].
        let s = Histogram::from_scrape(vec![1.0, 2.0, inf], vec![5.0, 3.0, 10.0]).unwrap();
        assert_eq!(histogram_quantile(0.5, &s), Some(1.0));
        assert_eq!(histogram_quantile(0.6, &s), Some(2.0));
    }
}
