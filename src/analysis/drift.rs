//! Distances between a reference distribution and an observed one, both
//! given as per-bucket counts over the *same* bucket edges.
//!
//! Every function here is pure and panic-free: bad input (NaN or negative
//! counts, mismatched lengths, empty distributions) gives a [`DriftError`].
//! Exact formulas are stated on each function; `scripts/gen_analysis_fixtures.py`
//! computes the same quantities with numpy/scipy and the fixture tests hold
//! the two within 1e-9 relative (plus 1e-15 absolute, for values that are
//! differences of O(1) numbers; see `tests/analysis_fixtures.rs`).
//!
//! The operator scores one feature at a time (`analysis::checks::score`);
//! `benches/drift.rs` measures that path over 100 features.

use std::f64::consts::{LN_2, PI};
use std::fmt;

/// Additive smoothing of PSI proportions: `p' = (p + PSI_EPSILON) / (1 + k * PSI_EPSILON)`.
pub const PSI_EPSILON: f64 = 1e-4;

/// Which of the two distributions an error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Reference,
    Observed,
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Side::Reference => "reference",
            Side::Observed => "observed",
        })
    }
}

/// Why a drift statistic cannot be computed.
#[derive(Debug, Clone, PartialEq)]
pub enum DriftError {
    /// There are no buckets.
    NoBuckets,
    /// A slice does not have the length the others imply.
    LengthMismatch { expected: usize, found: usize },
    /// A count is NaN, infinite or negative. `index` is into the slice passed.
    InvalidCount {
        side: Side,
        index: usize,
        value: f64,
    },
    /// All counts are zero, so there are no proportions.
    EmptyDistribution { side: Side },
    /// Bucket upper bounds are NaN or not strictly ascending at `index`.
    InvalidBounds { index: usize },
}

impl fmt::Display for DriftError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoBuckets => write!(f, "no buckets"),
            Self::LengthMismatch { expected, found } => {
                write!(f, "expected {expected} values, found {found}")
            }
            Self::InvalidCount { side, index, value } => write!(
                f,
                "{side} count #{index} is {value}; counts must be finite and >= 0"
            ),
            Self::EmptyDistribution { side } => {
                write!(f, "{side} distribution has no observations")
            }
            Self::InvalidBounds { index } => write!(
                f,
                "bucket upper bound #{index} is NaN or not strictly ascending"
            ),
        }
    }
}

impl std::error::Error for DriftError {}

/// A bucket count: `f64` (Prometheus samples, deltas) or an integer.
pub trait BucketCount: Copy {
    fn to_f64(self) -> f64;
}

impl BucketCount for f64 {
    #[inline(always)]
    fn to_f64(self) -> f64 {
        self
    }
}
impl BucketCount for f32 {
    #[inline(always)]
    fn to_f64(self) -> f64 {
        f64::from(self)
    }
}
impl BucketCount for u32 {
    #[inline(always)]
    fn to_f64(self) -> f64 {
        f64::from(self)
    }
}
impl BucketCount for u64 {
    #[inline(always)]
    fn to_f64(self) -> f64 {
        // Exact below 2^53; above, the nearest f64, which is all a proportion needs.
        self as f64
    }
}
impl BucketCount for usize {
    #[inline(always)]
    fn to_f64(self) -> f64 {
        self as f64
    }
}

/// Kolmogorov–Smirnov result.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct KsResult {
    /// `D = max |ECDF_ref - ECDF_obs|` over the bucket edges, in `[0, 1]`.
    pub statistic: f64,
    /// Asymptotic p-value `Q_KS(D * sqrt(n m / (n + m)))`, in `[0, 1]`.
    pub p_value: f64,
}

/// Chi-squared test of homogeneity result.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ChiSquaredResult {
    pub statistic: f64,
    /// Degrees of freedom: columns with a non-zero total, minus one.
    pub dof: usize,
    pub p_value: f64,
}

// ---------------------------------------------------------------------------
// Numerical kernels
// ---------------------------------------------------------------------------

/// ln 2 split in two: `LN2_HI` has 21 trailing zero bits, so `n * LN2_HI` is
/// exact for the integers `n` below 2^21 that [`fast_ln`] and
/// [`fast_exp_nonpositive`] use; `LN2_HI + LN2_LO` is ln 2 to ~1e-26.
const LN2_HI: f64 = f64::from_bits(0x3fe6_2e42_fee0_0000);
const LN2_LO: f64 = f64::from_bits(0x3dea_39ef_3579_3c76);

/// Natural logarithm, accurate to a few ulp for every positive finite input
/// (subnormals included), written branch-free so the compiler vectorises the
/// bucket loops; `f64::ln` is a libm call that it cannot vectorise, and the
/// logarithms dominate the cost of PSI and JS.
///
/// Method: `x = 2^e * m` with `m` in `[sqrt(1/2), sqrt(2))`, then
/// `ln m = 2 atanh(s)` with `s = (m - 1) / (m + 1)`, `|s| <= 0.1716`, summed
/// as the Taylor series `2 s (1 + s^2/3 + ... + s^20/21)`, whose truncation
/// error is below 1e-17 relative on that interval.
/// Zero, negative, NaN and infinite inputs give meaningless finite values;
/// callers only pass positive finite numbers.
#[inline(always)]
pub(crate) fn fast_ln(x: f64) -> f64 {
    const SQRT_HALF_BITS: u64 = std::f64::consts::FRAC_1_SQRT_2.to_bits();
    const ONE_BITS: u64 = 1.0f64.to_bits();
    const MANTISSA: u64 = (1u64 << 52) - 1;
    const TWO_POW_54: f64 = 18_014_398_509_481_984.0;
    // 2^52 + 1023: lets the biased exponent become an f64 without an int→float conversion.
    const EXP_MAGIC: f64 = 4_503_599_627_371_519.0;

    let subnormal = x < f64::MIN_POSITIVE;
    let xs = if subnormal { x * TWO_POW_54 } else { x };
    let adjust = if subnormal { 54.0 } else { 0.0 };
    let bits = xs.to_bits();
    // Shift so that mantissas >= sqrt(1/2) carry into the exponent field.
    let t = bits.wrapping_add(ONE_BITS - SQRT_HALF_BITS);
    let m = f64::from_bits((t & MANTISSA).wrapping_add(SQRT_HALF_BITS));
    let e = f64::from_bits((t >> 52) | 0x4330_0000_0000_0000) - EXP_MAGIC - adjust;

    let f = m - 1.0;
    let s = f / (2.0 + f);
    let z = s * s;
    let p = 1.0 / 21.0;
    let p = p * z + 1.0 / 19.0;
    let p = p * z + 1.0 / 17.0;
    let p = p * z + 1.0 / 15.0;
    let p = p * z + 1.0 / 13.0;
    let p = p * z + 1.0 / 11.0;
    let p = p * z + 1.0 / 9.0;
    let p = p * z + 1.0 / 7.0;
    let p = p * z + 1.0 / 5.0;
    let p = p * z + 1.0 / 3.0;
    let two_s = s + s;
    let ln_m = two_s + two_s * z * p;
    e * LN2_HI + (e * LN2_LO + ln_m)
}

/// `x ln x` with the convention `0 ln 0 = 0` (the limit), for `x >= 0`.
#[inline(always)]
fn x_ln_x(x: f64) -> f64 {
    x * fast_ln(x.max(f64::MIN_POSITIVE))
}

/// `e^x` for `x <= 0`, accurate to a few ulp, branch-free (used by the
/// Kolmogorov survival function). Results below the smallest normal f64 (`x < -708.39`) are
/// returned as 0: they are p-values no decision distinguishes from 0.
///
/// Method: `x = n ln 2 + r`, `|r| <= ln(2)/2`, `e^r` by its Taylor series to
/// `r^13` (truncation < 5e-18 relative), times `2^n` built in the exponent
/// bits. `n` is rounded with the 1.5 * 2^52 trick, which also yields its
/// integer bits without an int conversion.
#[inline(always)]
pub(crate) fn fast_exp_nonpositive(x: f64) -> f64 {
    const LOG2_E: f64 = std::f64::consts::LOG2_E;
    const ROUND: f64 = 6_755_399_441_055_744.0; // 1.5 * 2^52
    let xc = x.max(-746.0);
    let shifted = xc * LOG2_E + ROUND;
    let n = shifted - ROUND;
    let r = (xc - n * LN2_HI) - n * LN2_LO;
    let mut p = 1.0 / 6_227_020_800.0; // 1/13!
    for d in [
        479_001_600.0, // 12!
        39_916_800.0,
        3_628_800.0,
        362_880.0,
        40_320.0,
        5_040.0,
        720.0,
        120.0,
        24.0,
        6.0,
        2.0,
        1.0,
        1.0,
    ] {
        p = p * r + 1.0 / d;
    }
    // n as an integer, from the low mantissa bits of `shifted`.
    let n_int = shifted.to_bits().wrapping_sub(ROUND.to_bits());
    let biased = n_int.wrapping_add(1023);
    let scale = f64::from_bits(biased << 52);
    if n < -1022.0 { 0.0 } else { p * scale }
}

/// Survival function of the Kolmogorov distribution,
/// `Q(x) = 2 sum_{k>=1} (-1)^(k-1) exp(-2 k^2 x^2)` = `scipy.stats.kstwobign.sf(x)`.
///
/// For `x < 0.82` that series converges slowly and cancels, so the CDF is
/// taken from the theta-function form
/// `sqrt(2 pi)/x * sum_{k>=1} exp(-(2k-1)^2 pi^2 / (8 x^2))` and `Q = 1 - CDF`
/// (below 0.82 the CDF is < 0.49, so the subtraction loses nothing). At the
/// switch the omitted terms are below 1e-19 relative: 6 terms of the first
/// form, 3 of the second. One `exp` in all, the other terms are powers of it.
/// Both forms are computed and one selected, branch-free. NaN gives NaN;
/// `x <= 0` gives 1; results below 2.2e-308 are 0.
#[inline(always)]
pub fn kolmogorov_sf(x: f64) -> f64 {
    const SQRT_2PI: f64 = 2.506_628_274_631_000_7;
    let small = x < 0.82;
    let x2 = x * x;
    let arg = if small {
        -(PI * PI) / (8.0 * x2)
    } else {
        -2.0 * x2
    };
    let e = fast_exp_nonpositive(arg);
    // x >= 0.82: terms r^(k^2), consecutive ratios r^(2k+1).
    let r = e;
    let r2 = r * r;
    let r3 = r2 * r;
    let r5 = r3 * r2;
    let r7 = r5 * r2;
    let r9 = r7 * r2;
    let r11 = r9 * r2;
    let t4 = r * r3;
    let t9 = t4 * r5;
    let t16 = t9 * r7;
    let t25 = t16 * r9;
    let t36 = t25 * r11;
    let large = 2.0 * (((((r - t4) + t9) - t16) + t25) - t36);
    // x < 0.82: terms w^((2k-1)^2) = w, w^9, w^25.
    let w = e;
    let w2 = w * w;
    let w4 = w2 * w2;
    let w8 = w4 * w4;
    let w9 = w8 * w;
    let w25 = (w8 * w8) * w9;
    let cdf = SQRT_2PI / x * ((w + w9) + w25);
    let v = if small { 1.0 - cdf } else { large };
    let v = v.clamp(0.0, 1.0);
    let v = if x <= 0.0 { 1.0 } else { v };
    if x.is_nan() { f64::NAN } else { v }
}

/// Buckets handled per block: terms are computed into a stack array of
/// this size by plain element-wise loops (which the compiler vectorises,
/// logarithm included), then summed. A multiple of 4, see [`lane_add`].
const BLOCK: usize = 32;

/// Adds `terms` into 4 interleaved lanes (term `j` into lane `j % 4`);
/// [`lanes_total`] combines them as `(l0 + l1) + (l2 + l3)`: independent
/// lanes let the compiler vectorise the sum, which a strict left-to-right
/// sum forbids.
#[inline(always)]
fn lane_add(acc: &mut [f64; 4], terms: &[f64]) {
    let mut chunks = terms.chunks_exact(4);
    for c in &mut chunks {
        for (a, t) in acc.iter_mut().zip(c) {
            *a += t;
        }
    }
    for (a, t) in acc.iter_mut().zip(chunks.remainder()) {
        *a += t;
    }
}

#[inline(always)]
fn lanes_total(acc: &[f64; 4]) -> f64 {
    (acc[0] + acc[1]) + (acc[2] + acc[3])
}

/// Checks one distribution's counts and returns their sum (in lane order,
/// see [`lane_add`]). The check is folded into the vectorised sum: every
/// count is finite and `>= 0` exactly when the lane minima are `>= 0` and the
/// total is finite (a NaN or infinity reaches the total).
#[inline(always)]
fn total_of<T: BucketCount>(counts: &[T], side: Side) -> Result<f64, DriftError> {
    let (mut acc, mut low) = ([0.0f64; 4], [0.0f64; 4]);
    let mut chunks = counts.chunks_exact(4);
    for c in &mut chunks {
        for ((a, lo), c) in acc.iter_mut().zip(&mut low).zip(c) {
            let v = c.to_f64();
            *a += v;
            *lo = lo.min(v);
        }
    }
    for ((a, lo), c) in acc.iter_mut().zip(&mut low).zip(chunks.remainder()) {
        let v = c.to_f64();
        *a += v;
        *lo = lo.min(v);
    }
    let total = lanes_total(&acc);
    if total.is_finite() && low.iter().all(|l| *l >= 0.0) {
        return Ok(total);
    }
    // Cold path: name the culprit (or, if all counts are valid but their sum
    // overflows, the count where it does).
    let mut running = 0.0;
    let (index, value) = counts
        .iter()
        .map(|c| c.to_f64())
        .enumerate()
        .find(|(_, v)| {
            running += v;
            !(*v >= 0.0 && v.is_finite()) || running.is_infinite()
        })
        .unwrap_or((0, f64::NAN));
    Err(DriftError::InvalidCount { side, index, value })
}

/// Validates a (reference, observed) pair: same non-zero length, valid
/// counts, both with observations. Returns their totals.
fn check_pair<T: BucketCount>(reference: &[T], observed: &[T]) -> Result<(f64, f64), DriftError> {
    if reference.is_empty() {
        return Err(DriftError::NoBuckets);
    }
    if reference.len() != observed.len() {
        return Err(DriftError::LengthMismatch {
            expected: reference.len(),
            found: observed.len(),
        });
    }
    let n = total_of(reference, Side::Reference)?;
    let m = total_of(observed, Side::Observed)?;
    if n == 0.0 {
        return Err(DriftError::EmptyDistribution {
            side: Side::Reference,
        });
    }
    if m == 0.0 {
        return Err(DriftError::EmptyDistribution {
            side: Side::Observed,
        });
    }
    Ok((n, m))
}

/// Smoothed PSI proportion; the one expression used everywhere.
#[inline(always)]
fn smooth(count: f64, inv_total: f64, norm: f64) -> f64 {
    (count * inv_total + PSI_EPSILON) * norm
}

#[inline(always)]
fn smoothing_norm(buckets: usize) -> f64 {
    1.0 / (1.0 + buckets as f64 * PSI_EPSILON)
}

/// Effective sample size of the two-sample KS test, `n m / (n + m)`.
#[inline(always)]
fn ks_effective_n(n: f64, m: f64) -> f64 {
    n * m / (n + m)
}

// ---------------------------------------------------------------------------
// Single-feature statistics
// ---------------------------------------------------------------------------

/// Population stability index,
/// `PSI = sum_i (q'_i - p'_i) ln(q'_i / p'_i)` where `p` is the reference
/// and `q` the observed distribution.
///
/// Empty buckets would make the logarithm infinite, so proportions are
/// smoothed first: `p'_i = (p_i + 1e-4) / (1 + k * 1e-4)` for `k` buckets
/// (add [`PSI_EPSILON`] to each proportion, then renormalise). PSI is `>= 0`,
/// and 0 exactly for identical proportions. Rule of thumb: < 0.1 stable,
/// 0.1–0.25 moderate shift, > 0.25 major shift.
pub fn psi<T: BucketCount>(reference: &[T], observed: &[T]) -> Result<f64, DriftError> {
    let (n, m) = check_pair(reference, observed)?;
    let (inv_n, inv_m, norm) = (1.0 / n, 1.0 / m, smoothing_norm(reference.len()));
    let mut acc = [0.0f64; 4];
    let mut buf = [0.0f64; BLOCK];
    for (r, o) in reference.chunks(BLOCK).zip(observed.chunks(BLOCK)) {
        let t = &mut buf[..r.len()];
        for ((t, r), o) in t.iter_mut().zip(r).zip(o) {
            let ps = smooth(r.to_f64(), inv_n, norm);
            let qs = smooth(o.to_f64(), inv_m, norm);
            *t = psi_term(ps, fast_ln(ps), qs);
        }
        lane_add(&mut acc, t);
    }
    Ok(lanes_total(&acc))
}

/// Jensen–Shannon distance with natural logarithms, the same number as
/// `scipy.spatial.distance.jensenshannon(p, q)`:
/// `sqrt((KL(p || m) + KL(q || m)) / 2)` with `m = (p + q) / 2`, counts
/// normalised to proportions, no smoothing (`0 ln 0 = 0`).
///
/// Symmetric, in `[0, sqrt(ln 2)]`, 0 for identical proportions. Rounding
/// can make the divergence a hair below 0 or above `ln 2`; it is clamped.
pub fn jensen_shannon<T: BucketCount>(reference: &[T], observed: &[T]) -> Result<f64, DriftError> {
    let (n, m) = check_pair(reference, observed)?;
    let (inv_n, inv_m) = (1.0 / n, 1.0 / m);
    let mut acc = [0.0f64; 4];
    let mut buf = [0.0f64; BLOCK];
    for (r, o) in reference.chunks(BLOCK).zip(observed.chunks(BLOCK)) {
        let t = &mut buf[..r.len()];
        for ((t, r), o) in t.iter_mut().zip(r).zip(o) {
            let p = r.to_f64() * inv_n;
            *t = js_term(x_ln_x(p), p, o.to_f64() * inv_m);
        }
        lane_add(&mut acc, t);
    }
    Ok(js_from_sum(lanes_total(&acc)))
}

/// `(q' - p') ln(q' / p')` for smoothed proportions, `ln p'` given.
#[inline(always)]
fn psi_term(ps: f64, ln_ps: f64, qs: f64) -> f64 {
    (qs - ps) * (fast_ln(qs) - ln_ps)
}

/// `p ln p + q ln q - (p + q) ln((p + q) / 2)`: twice bucket `i`'s share of
/// the divergence, with `p ln p` precomputed by the caller.
#[inline(always)]
fn js_term(p_ln_p: f64, p: f64, q: f64) -> f64 {
    let s = p + q;
    p_ln_p + x_ln_x(q) - s * fast_ln((0.5 * s).max(f64::MIN_POSITIVE))
}

#[inline(always)]
fn js_from_sum(sum: f64) -> f64 {
    (0.5 * sum).clamp(0.0, LN_2).sqrt()
}

/// Two-sample Kolmogorov–Smirnov test on bucketed data.
///
/// `D = max_i |F_ref(u_i) - F_obs(u_i)|` over the bucket upper edges `u_i`,
/// where `F` are the empirical CDFs (cumulative proportions); the last edge
/// is skipped, both CDFs are 1 there. Bucketing can only hide differences,
/// so `D` is a lower bound of the unbucketed statistic.
///
/// p-value: the asymptotic Kolmogorov distribution,
/// `p = Q_KS(D * sqrt(en))` with `en = n m / (n + m)` (`n`, `m` the totals);
/// in scipy, `scipy.stats.kstwobign.sf(D * np.sqrt(en))` (see [`kolmogorov_sf`]).
/// Not `ks_2samp`'s default exact method: with bucketed data and thousands of
/// observations the asymptotic form is what is defensible and cheap.
pub fn kolmogorov_smirnov<T: BucketCount>(
    reference: &[T],
    observed: &[T],
) -> Result<KsResult, DriftError> {
    let (n, m) = check_pair(reference, observed)?;
    let (inv_n, inv_m) = (1.0 / n, 1.0 / m);
    let (mut cr, mut co, mut d) = (0.0f64, 0.0f64, 0.0f64);
    for i in 0..reference.len() - 1 {
        cr += reference[i].to_f64();
        co += observed[i].to_f64();
        d = d.max((cr * inv_n - co * inv_m).abs());
    }
    Ok(ks_result(d, n, m))
}

#[inline(always)]
fn ks_result(d: f64, n: f64, m: f64) -> KsResult {
    let statistic = d.min(1.0);
    KsResult {
        statistic,
        p_value: kolmogorov_sf(ks_argument(statistic, n, m)),
    }
}

/// The argument of the Kolmogorov survival function, `D sqrt(n m / (n + m))`.
#[inline(always)]
fn ks_argument(statistic: f64, n: f64, m: f64) -> f64 {
    statistic * ks_effective_n(n, m).sqrt()
}

/// Chi-squared test of homogeneity of two categorical count vectors (a 2 x k
/// contingency table), the same as
/// `scipy.stats.chi2_contingency([reference, observed], correction=False)`.
///
/// Expected counts `E_rj = row_r * col_j / total`; statistic
/// `sum (O - E)^2 / E`; categories where both counts are 0 are dropped (their
/// expected count is 0); `dof = (kept columns) - 1`; p-value from the
/// chi-squared survival function. With one kept column, `dof = 0`, the
/// statistic is 0 and the p-value 1, as in scipy. No Yates correction.
pub fn chi_squared<T: BucketCount>(
    reference: &[T],
    observed: &[T],
) -> Result<ChiSquaredResult, DriftError> {
    let (n, m) = check_pair(reference, observed)?;
    let total = n + m;
    let mut statistic = 0.0;
    let mut columns = 0usize;
    for (r, o) in reference.iter().zip(observed) {
        let (r, o) = (r.to_f64(), o.to_f64());
        let col = r + o;
        if col == 0.0 {
            continue;
        }
        columns += 1;
        let er = n * col / total;
        let eo = m * col / total;
        statistic += (r - er) * (r - er) / er + (o - eo) * (o - eo) / eo;
    }
    let dof = columns - 1;
    if dof == 0 {
        return Ok(ChiSquaredResult {
            statistic: 0.0,
            dof,
            p_value: 1.0,
        });
    }
    Ok(ChiSquaredResult {
        statistic,
        dof,
        p_value: chi_squared_sf(statistic, dof),
    })
}

/// Survival function of the chi-squared distribution (`statrs`, the
/// regularised upper incomplete gamma function `Q(dof/2, x/2)`).
pub fn chi_squared_sf(x: f64, dof: usize) -> f64 {
    if x.is_nan() || dof == 0 {
        return f64::NAN;
    }
    if x <= 0.0 {
        return 1.0;
    }
    statrs::function::gamma::gamma_ur(dof as f64 / 2.0, x / 2.0).clamp(0.0, 1.0)
}

/// Wasserstein-1 (earth mover's) distance between two bucketed
/// distributions, divided by the reference's standard deviation so that one
/// threshold fits features of any scale.
///
/// Each bucket's mass sits at one point: bucket `i` of `(u_{i-1}, u_i]` at
/// its midpoint; the first bucket `(-Inf, u_0]` at `u_0` and an open-ended
/// last bucket `(u_{k-2}, +Inf]` at `u_{k-2}` (the nearest finite edge). Then
/// `W = sum_i |F_ref(x_i) - F_obs(x_i)| (x_{i+1} - x_i)` and the result is
/// `W / std_ref`, where `std_ref` is the (population) standard deviation of
/// those points under the reference weights; this equals
/// `scipy.stats.wasserstein_distance(x, x, ref, obs) / std_ref`.
/// If `std_ref` is 0 (all reference mass in one bucket) the result is 0 when
/// `W` is 0 and `+Inf` otherwise. Use [`wasserstein_raw`] for `W` itself.
pub fn wasserstein<T: BucketCount>(
    upper_bounds: &[f64],
    reference: &[T],
    observed: &[T],
) -> Result<f64, DriftError> {
    let (w, std) = wasserstein_parts(upper_bounds, reference, observed)?;
    Ok(if w == 0.0 {
        0.0
    } else if std == 0.0 {
        f64::INFINITY
    } else {
        w / std
    })
}

/// Wasserstein-1 distance in the units of the bucket edges (see [`wasserstein`]).
pub fn wasserstein_raw<T: BucketCount>(
    upper_bounds: &[f64],
    reference: &[T],
    observed: &[T],
) -> Result<f64, DriftError> {
    Ok(wasserstein_parts(upper_bounds, reference, observed)?.0)
}

/// Where [`wasserstein`] places the mass of each bucket.
pub fn bucket_points(upper_bounds: &[f64]) -> Result<Vec<f64>, DriftError> {
    let k = upper_bounds.len();
    if k == 0 {
        return Err(DriftError::NoBuckets);
    }
    for i in 0..k {
        let b = upper_bounds[i];
        let bad = b.is_nan()
            || (i > 0 && b <= upper_bounds[i - 1])
            || (b == f64::INFINITY && i != k - 1)
            || b == f64::NEG_INFINITY;
        if bad {
            return Err(DriftError::InvalidBounds { index: i });
        }
    }
    Ok((0..k)
        .map(|i| {
            if i == 0 {
                upper_bounds[0]
            } else if upper_bounds[i].is_infinite() {
                upper_bounds[i - 1]
            } else {
                0.5 * (upper_bounds[i - 1] + upper_bounds[i])
            }
        })
        .collect())
}

fn wasserstein_parts<T: BucketCount>(
    upper_bounds: &[f64],
    reference: &[T],
    observed: &[T],
) -> Result<(f64, f64), DriftError> {
    let (n, m) = check_pair(reference, observed)?;
    if upper_bounds.len() != reference.len() {
        return Err(DriftError::LengthMismatch {
            expected: reference.len(),
            found: upper_bounds.len(),
        });
    }
    let x = bucket_points(upper_bounds)?;
    let k = x.len();
    if k == 1 && x[0].is_infinite() {
        // A single (-Inf, +Inf] bucket: everything is at one point.
        return Ok((0.0, 0.0));
    }
    let (mut cr, mut co, mut w) = (0.0, 0.0, 0.0);
    for i in 0..k - 1 {
        cr += reference[i].to_f64();
        co += observed[i].to_f64();
        w += (cr / n - co / m).abs() * (x[i + 1] - x[i]);
    }
    let mean = reference
        .iter()
        .zip(&x)
        .map(|(c, xi)| c.to_f64() / n * xi)
        .sum::<f64>();
    let var = reference
        .iter()
        .zip(&x)
        .map(|(c, xi)| c.to_f64() / n * (xi - mean) * (xi - mean))
        .sum::<f64>();
    Ok((w, var.max(0.0).sqrt()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn fast_ln_matches_std() {
        let mut x = 1e-310f64;
        let mut worst = 0.0f64;
        while x < 1e300 {
            for y in [
                x,
                x * 1.1,
                x * 1.37,
                x * std::f64::consts::SQRT_2,
                x * 1.9999,
            ] {
                let want = y.ln();
                let got = fast_ln(y);
                let err = if want == 0.0 {
                    got.abs()
                } else {
                    ((got - want) / want).abs()
                };
                worst = worst.max(err);
            }
            x *= 2.3;
        }
        for y in [
            1.0f64,
            1.0 + 1e-12,
            1.0 - 1e-12,
            0.5,
            2.0,
            std::f64::consts::FRAC_1_SQRT_2,
            1e-4,
            5e-324,
        ] {
            let want = y.ln();
            let err = if want == 0.0 {
                fast_ln(y).abs()
            } else {
                ((fast_ln(y) - want) / want).abs()
            };
            worst = worst.max(err);
        }
        assert!(worst < 1e-15, "worst relative error {worst}");
    }

    #[test]
    fn fast_exp_matches_std() {
        let mut worst = 0.0f64;
        let mut x = 0.0f64;
        while x > -708.0 {
            let (want, got) = (x.exp(), fast_exp_nonpositive(x));
            worst = worst.max(((got - want) / want).abs());
            x -= 0.0137;
        }
        assert!(worst < 1e-15, "worst relative error {worst}");
        assert_eq!(fast_exp_nonpositive(0.0), 1.0);
        assert_eq!(fast_exp_nonpositive(-710.0), 0.0);
        assert_eq!(fast_exp_nonpositive(f64::NEG_INFINITY), 0.0);
    }

    #[test]
    fn kolmogorov_sf_known_values() {
        // Reference values: scipy.stats.kstwobign.sf.
        let cases = [
            (0.5, 0.963_945_243_664_875_1),
            (0.82, 0.511_971_705_298_497_3),
            (1.0, 0.269_999_671_677_354_56),
            (1.36, 0.049_485_876_755_377_876),
            (2.0, 0.000_670_925_255_779_695_3),
            (0.1, 1.0),
        ];
        for (x, want) in cases {
            let got = kolmogorov_sf(x);
            assert!(((got - want) / want).abs() < 1e-9, "x={x}: {got} vs {want}");
        }
        assert_eq!(kolmogorov_sf(0.0), 1.0);
        assert_eq!(kolmogorov_sf(-1.0), 1.0);
        assert!(kolmogorov_sf(f64::NAN).is_nan());
        assert_eq!(kolmogorov_sf(40.0), 0.0);
        // Both branches agree at the switch.
        let below = kolmogorov_sf(0.82 - 1e-12);
        let above = kolmogorov_sf(0.82);
        assert!((below - above).abs() < 1e-11);
    }

    #[test]
    fn errors_are_typed() {
        let a = [1.0, 2.0];
        assert_eq!(psi::<f64>(&[], &[]), Err(DriftError::NoBuckets));
        assert_eq!(
            psi(&a, &[1.0]),
            Err(DriftError::LengthMismatch {
                expected: 2,
                found: 1
            })
        );
        assert!(matches!(
            jensen_shannon(&a, &[1.0, f64::NAN]),
            Err(DriftError::InvalidCount {
                side: Side::Observed,
                index: 1,
                ..
            })
        ));
        assert!(matches!(
            kolmogorov_smirnov(&[-1.0, 2.0], &a),
            Err(DriftError::InvalidCount {
                side: Side::Reference,
                index: 0,
                ..
            })
        ));
        assert_eq!(
            chi_squared(&a, &[0.0, 0.0]),
            Err(DriftError::EmptyDistribution {
                side: Side::Observed
            })
        );
        assert_eq!(
            wasserstein(&[1.0, 1.0], &a, &a),
            Err(DriftError::InvalidBounds { index: 1 })
        );
    }

    #[test]
    fn integer_counts_work() {
        let r: [u64; 3] = [10, 20, 30];
        let o: [u64; 3] = [30, 20, 10];
        let rf = [10.0, 20.0, 30.0];
        let of = [30.0, 20.0, 10.0];
        assert_eq!(psi(&r, &o).unwrap(), psi(&rf, &of).unwrap());
        assert!(psi(&r, &o).unwrap() > 0.1);
    }

    fn dist(k: usize) -> impl Strategy<Value = Vec<f64>> {
        proptest::collection::vec(
            prop_oneof![Just(0.0), 0.0f64..1e6, (1u32..50).prop_map(f64::from)],
            k,
        )
        .prop_filter("needs observations", |v| v.iter().sum::<f64>() > 0.0)
    }

    fn pair() -> impl Strategy<Value = (Vec<f64>, Vec<f64>)> {
        (1usize..40).prop_flat_map(|k| (dist(k), dist(k)))
    }

    proptest! {
        #[test]
        fn psi_nonnegative_and_zero_on_identical((a, b) in pair()) {
            let v = psi(&a, &b).unwrap();
            prop_assert!(v >= 0.0, "psi {v}");
            prop_assert_eq!(psi(&a, &a).unwrap(), 0.0);
        }

        #[test]
        fn js_symmetric_bounded_zero_on_identical((a, b) in pair()) {
            let ab = jensen_shannon(&a, &b).unwrap();
            let ba = jensen_shannon(&b, &a).unwrap();
            prop_assert!((0.0..=LN_2.sqrt()).contains(&ab), "js {ab}");
            prop_assert!((ab - ba).abs() <= 1e-12, "{ab} vs {ba}");
            prop_assert_eq!(jensen_shannon(&a, &a).unwrap(), 0.0);
        }

        #[test]
        fn ks_in_unit_interval((a, b) in pair()) {
            let r = kolmogorov_smirnov(&a, &b).unwrap();
            prop_assert!((0.0..=1.0).contains(&r.statistic));
            prop_assert!((0.0..=1.0).contains(&r.p_value));
            let same = kolmogorov_smirnov(&a, &a).unwrap();
            prop_assert_eq!(same.statistic, 0.0);
            prop_assert_eq!(same.p_value, 1.0);
        }

        #[test]
        fn kolmogorov_sf_decreasing(x in 0.0f64..10.0, dx in 0.0f64..1.0) {
            prop_assert!(kolmogorov_sf(x + dx) <= kolmogorov_sf(x) + 1e-15);
        }
    }
}
