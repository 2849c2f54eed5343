#!/usr/bin/env python3
"""Writes tests/fixtures/analysis_fixtures.json: inputs and expected outputs
for src/analysis (histogram_quantile, drift, multiple testing, quality),
computed with numpy/scipy (and scikit-learn for quality when installed).

Usage:  pip install numpy scipy mpmath scikit-learn
        python3 scripts/gen_analysis_fixtures.py

Seeded: running it twice gives the same file (for the same library versions).
JSON has no NaN/Inf, so non-finite numbers are the strings "NaN", "+Inf",
"-Inf"; null means "no value" (Rust `None`).

Conventions shared with the Rust code (keep them identical):
- PSI smoothing: p' = (p + 1e-4) / (1 + k * 1e-4) for k buckets, then
  PSI = sum (q' - p') ln(q' / p').
- KS: D over the first k-1 bucket edges of the two ECDFs;
  p = scipy.stats.kstwobign.sf(D * sqrt(n m / (n + m))).
- Wasserstein: mass of bucket i at the midpoint of (u[i-1], u[i]], the first
  bucket at u[0], a +Inf bucket at the last finite edge; divided by the
  reference's population standard deviation of those points.
"""

import json
import math
import pathlib
import sys

import mpmath
import numpy as np
import scipy
from scipy import stats
from scipy.spatial import distance

try:
    import sklearn
    import sklearn.metrics as skm
except ImportError:  # quality expectations fall back to plain numpy
    sklearn = None
    skm = None

SEED = 20_240_611
PSI_EPSILON = 1e-4
OUT = pathlib.Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "analysis_fixtures.json"

rng = np.random.default_rng(SEED)


def enc(x):
    """A JSON-safe number: NaN/Inf as strings, None as null."""
    if x is None:
        return None
    x = float(x)
    if math.isnan(x):
        return "NaN"
    if math.isinf(x):
        return "+Inf" if x > 0 else "-Inf"
    return x


def enc_list(xs):
    return [enc(x) for x in xs]


# --------------------------------------------------------------------------
# histogram_quantile: PromQL BucketQuantile semantics, written from the
# Prometheus documentation (see src/analysis/histogram.rs).
# --------------------------------------------------------------------------


def almost_equal(a, b, eps):
    min_normal = 2.2250738585072014e-308
    if a == b:
        return True
    abs_sum = abs(a) + abs(b)
    diff = abs(a - b)
    if a == 0 or b == 0 or abs_sum < min_normal:
        return diff < eps * min_normal
    return diff / min(abs_sum, sys.float_info.max) < eps


def prom_quantile(q, bounds, counts):
    if math.isnan(q):
        return float("nan")
    if q < 0:
        return float("-inf")
    if q > 1:
        return float("inf")
    n = len(bounds)
    if n < 2:
        return None
    c = list(map(float, counts))
    prev = c[0]
    for i in range(1, n):
        if c[i] == prev:
            continue
        if almost_equal(prev, c[i], 1e-12) or c[i] < prev:
            c[i] = prev
            continue
        prev = c[i]
    obs = c[-1]
    if obs == 0:
        return None
    rank = q * obs
    b = next((i for i in range(n - 1) if c[i] >= rank), n - 1)
    if b == n - 1:
        return bounds[n - 2]
    if b == 0 and bounds[0] <= 0:
        return bounds[0]
    start, end, count = 0.0, bounds[b], c[b]
    if b > 0:
        start = bounds[b - 1]
        count -= c[b - 1]
        rank -= c[b - 1]
    with np.errstate(invalid="ignore", divide="ignore"):
        return float(start + (end - start) * np.float64(rank) / np.float64(count))


def histogram_cases():
    inf = float("inf")
    lat = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, inf]
    per = rng.integers(0, 500, size=len(lat)).astype(float)
    per[0] = 0.0  # empty first bucket: q=0 interpolates 0/0 -> NaN, as PromQL
    qs = [0.0, 0.001, 0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.999, 1.0, -0.5, 1.5, float("nan")]
    cases = [
        ("latency", lat, np.cumsum(per).tolist(), False),
        ("no_observations", [0.1, 1.0, inf], [0.0, 0.0, 0.0], False),
        ("single_inf_bucket", [inf], [42.0], False),
        ("negative_bounds", [-2.0, -1.0, 0.0, 1.0, inf], [3.0, 7.0, 7.0, 12.0, 15.0], False),
        ("non_monotonic_scrape", [0.1, 0.2, 0.5, 1.0, inf], [5.0, 3.0, 10.0, 9.0, 12.0], True),
        ("float_noise", [1.0, 2.0, 3.0, inf], [100.0, 100.0 * (1 + 1e-13), 200.0, 200.0], True),
        ("one_huge_bucket", [1.0, 2.0, 4.0, 8.0, inf], [0.0, 0.0, 1e9, 1e9, 1e9 + 1], False),
        ("all_in_inf_bucket", [1.0, 2.0, inf], [0.0, 0.0, 50.0], False),
        ("tiny_counts", [0.5, 1.0, inf], [0.0, 1.0, 1.0], False),
    ]
    out = []
    for name, bounds, counts, lenient in cases:
        out.append(
            {
                "name": name,
                "upper_bounds": enc_list(bounds),
                "cumulative_counts": enc_list(counts),
                "lenient": lenient,
                "q": enc_list(qs),
                "expected": [enc(prom_quantile(q, bounds, counts)) for q in qs],
            }
        )
    return out


# --------------------------------------------------------------------------
# Drift
# --------------------------------------------------------------------------


def psi(r, o):
    r, o = np.asarray(r, float), np.asarray(o, float)
    k = len(r)
    p = (r / r.sum() + PSI_EPSILON) / (1 + k * PSI_EPSILON)
    q = (o / o.sum() + PSI_EPSILON) / (1 + k * PSI_EPSILON)
    return float(np.sum((q - p) * np.log(q / p)))


def js_checked(r, o):
    """scipy's Jensen-Shannon distance, checked against a 50-digit mpmath
    evaluation. scipy computes p*log(p/m); when p/m is within ~1e-8 of 1 the
    rounding of the ratio costs it up to ~1e-16 absolute in the divergence,
    which can exceed 1e-9 relative of a tiny distance. Then the exact value
    is the expectation, and the case says so."""
    sp = float(distance.jensenshannon(r, o))
    mpmath.mp.dps = 50
    pr = [mpmath.mpf(float(x)) for x in r]
    po = [mpmath.mpf(float(x)) for x in o]
    n, m = sum(pr), sum(po)
    p = [x / n for x in pr]
    q = [x / m for x in po]
    mid = [(a + b) / 2 for a, b in zip(p, q)]

    def kl(a, b):
        return sum(x * mpmath.log(x / y) for x, y in zip(a, b) if x > 0)

    exact = float(mpmath.sqrt(max(kl(p, mid) + kl(q, mid), 0) / 2))
    if abs(sp - exact) <= 1e-10 * abs(exact) + 1e-16:
        return sp, None
    return exact, f"scipy gives {sp!r}, {abs(sp - exact) / exact:.1e} relative off (cancellation); expected is mpmath"


def ks(r, o):
    r, o = np.asarray(r, float), np.asarray(o, float)
    n, m = r.sum(), o.sum()
    if len(r) < 2:
        d = 0.0
    else:
        d = float(np.max(np.abs(np.cumsum(r)[:-1] / n - np.cumsum(o)[:-1] / m)))
    en = n * m / (n + m)
    return d, float(stats.kstwobign.sf(d * np.sqrt(en)))


def chi2(r, o):
    t = np.array([r, o], dtype=float)
    t = t[:, t.sum(axis=0) > 0]
    res = stats.chi2_contingency(t, correction=False)
    return float(res.statistic), int(res.dof), float(res.pvalue)


def bucket_points(bounds):
    k = len(bounds)
    pts = []
    for i in range(k):
        if i == 0:
            pts.append(bounds[0])
        elif math.isinf(bounds[i]):
            pts.append(bounds[i - 1])
        else:
            pts.append(0.5 * (bounds[i - 1] + bounds[i]))
    return np.array(pts, dtype=float)


def wasserstein(bounds, r, o):
    if len(bounds) == 1:
        return 0.0, 0.0  # one (-Inf, +Inf] bucket: all mass at one point
    x = bucket_points(bounds)
    w = float(stats.wasserstein_distance(x, x, r, o))
    mu = np.average(x, weights=r)
    std = float(np.sqrt(np.average((x - mu) ** 2, weights=r)))
    if w == 0.0:
        return 0.0, w
    if std == 0.0:
        return float("inf"), w
    return w / std, w


def bucketize(samples, finite_bounds):
    idx = np.searchsorted(finite_bounds, samples, side="left")  # (u[i-1], u[i]]
    return np.bincount(idx, minlength=len(finite_bounds) + 1).astype(float)


def drift_cases():
    inf = float("inf")
    edges = [-2.0, -1.5, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5, 2.0]
    b10 = edges + [inf]
    normal_r = bucketize(rng.normal(0, 1, 5000), edges)
    normal_o = bucketize(rng.normal(0.3, 1.2, 2000), edges)
    slight_o = bucketize(rng.normal(0.02, 1, 200_000), edges)
    big_r = bucketize(rng.normal(0, 1, 1_000_000), edges)
    cases = [
        ("normal_shift", b10, normal_r, normal_o),
        ("identical", b10, normal_r, normal_r),
        ("proportional", b10, normal_r * 3, normal_r),
        ("slight_shift_large_n", b10, big_r, slight_o),
        ("empty_buckets", [1.0, 2.0, 3.0, 4.0, 5.0, inf], [0, 10, 20, 0, 5, 0], [3, 0, 20, 7, 0, 0]),
        ("tiny_counts", [1.0, 2.0, 3.0, inf], [1, 0, 0, 0], [0, 0, 0, 1]),
        ("disjoint", [0.0, inf], [10, 0], [0, 10]),
        ("one_huge_bucket", [0.1, 1.0, 10.0, inf], [1e9, 1, 1, 1], [1e9, 10, 0, 5]),
        ("single_bucket", [inf], [7], [3]),
        ("two_buckets", [0.5, inf], [30, 70], [45, 55]),
        ("fractional_counts", [1.0, 2.0, 3.0, inf], [0.5, 2.25, 1.125, 0.0], [1.5, 0.25, 3.0, 0.75]),
        ("all_reference_in_one_bucket", [1.0, 2.0, 3.0, inf], [0, 50, 0, 0], [0, 40, 10, 0]),
        ("uniform_vs_peaked", [float(i) for i in range(1, 20)] + [inf], [100] * 20, [1] * 9 + [1000, 1000] + [1] * 9),
    ]
    out = []
    for name, bounds, r, o in cases:
        r = np.asarray(r, float)
        o = np.asarray(o, float)
        d, p = ks(r, o)
        stat, dof, chi_p = chi2(r, o)
        w, w_raw = wasserstein(bounds, r, o)
        js, js_note = js_checked(r, o)
        out.append(
            {
                "name": name,
                "upper_bounds": enc_list(bounds),
                "reference": enc_list(r),
                "observed": enc_list(o),
                "psi": enc(psi(r, o)),
                "js": enc(js),
                "js_note": js_note,
                "ks_statistic": enc(d),
                "ks_p_value": enc(p),
                "chi2_statistic": enc(stat),
                "chi2_dof": dof,
                "chi2_p_value": enc(chi_p),
                "wasserstein": enc(w),
                "wasserstein_raw": enc(w_raw),
            }
        )
    return out


def batch_case(features=100, buckets=20):
    """The benchmark input: feature-major counts, some features drifted."""
    finite = np.linspace(-3.0, 3.0, buckets - 1)
    reference, observed = [], []
    for f in range(features):
        mu, sigma = rng.normal(0, 0.3), rng.uniform(0.7, 1.3)
        reference.append(bucketize(rng.normal(mu, sigma, 5000), finite))
        shift = 0.0 if f % 4 else rng.uniform(0.05, 0.8)
        observed.append(bucketize(rng.normal(mu + shift, sigma, int(rng.integers(500, 3000))), finite))
    reference, observed = np.array(reference), np.array(observed)
    expected = []
    for r, o in zip(reference, observed):
        d, p = ks(r, o)
        expected.append(
            {"psi": psi(r, o), "js": js_checked(r, o)[0], "ks_statistic": d, "ks_p_value": p}
        )
    return {
        "upper_bounds": enc_list(list(finite) + [float("inf")]),
        "reference": reference.tolist(),
        "observed": observed.tolist(),
        "expected": expected,
    }


# --------------------------------------------------------------------------
# Multiple testing
# --------------------------------------------------------------------------


def multiple_testing_cases():
    alpha = 0.05
    cases = [
        ("uniform", rng.uniform(0, 1, 20)),
        ("signals", np.concatenate([rng.uniform(0, 0.002, 5), rng.uniform(0, 1, 15)])),
        ("ties_and_extremes", np.array([0.01, 0.01, 0.0, 1.0, 0.04, 0.04, 0.5, 0.01])),
        ("single", np.array([0.03])),
        ("empty", np.array([])),
    ]
    out = []
    for name, p in cases:
        m = len(p)
        bonf = np.minimum(p * m, 1.0)
        bh = stats.false_discovery_control(p, method="bh") if m else np.array([])
        out.append(
            {
                "name": name,
                "p_values": enc_list(p),
                "alpha": alpha,
                "bonferroni": enc_list(bonf),
                "benjamini_hochberg": enc_list(bh),
                "bonferroni_rejected": [bool(x <= alpha) for x in bonf],
                "bh_rejected": [bool(x <= alpha) for x in bh],
            }
        )
    return out


# --------------------------------------------------------------------------
# Quality
# --------------------------------------------------------------------------


def quality_numpy(labels, y_true, y_pred, w, positive):
    """Fallback with sklearn's conventions (zero_division=0)."""
    k = len(labels)
    cm = np.zeros((k, k))
    for t, p, x in zip(y_true, y_pred, w):
        cm[labels.index(t), labels.index(p)] += x
    tp = np.diag(cm)
    pred = cm.sum(axis=0)
    act = cm.sum(axis=1)
    prec = np.divide(tp, pred, out=np.zeros(k), where=pred > 0)
    rec = np.divide(tp, act, out=np.zeros(k), where=act > 0)
    den = 2 * tp + (pred - tp) + (act - tp)
    f1 = np.divide(2 * tp, den, out=np.zeros(k), where=den > 0)
    i = labels.index(positive)
    return cm, tp.sum() / cm.sum(), (prec[i], rec[i], f1[i]), (prec.mean(), rec.mean(), f1.mean())


def quality_cases():
    cases = [
        ("binary", "fraud", [("fraud", "fraud", 40), ("fraud", "legit", 10), ("legit", "fraud", 5), ("legit", "legit", 945)]),
        (
            "multiclass_never_predicted",
            "b",
            [("a", "a", 30), ("a", "b", 5), ("b", "a", 4), ("b", "b", 20), ("c", "a", 6), ("c", "b", 2)],
        ),
        ("predicted_never_actual", "x", [("y", "x", 3), ("y", "y", 7), ("z", "z", 5)]),
        ("fractional_weights", "1", [("1", "1", 2.5), ("1", "0", 0.5), ("0", "1", 1.25), ("0", "0", 4.0), ("0", "2", 0.0)]),
        ("no_true_positives", "1", [("1", "0", 4), ("0", "1", 3), ("0", "0", 10)]),
        ("no_samples", "1", [("1", "1", 0), ("0", "0", 0)]),
    ]
    out = []
    for name, positive, entries in cases:
        kept = [(a, p, float(c)) for a, p, c in entries if c > 0]
        case = {"name": name, "positive": positive, "entries": [[a, p, float(c)] for a, p, c in entries]}
        if not kept:
            case["error"] = "no_samples"
            out.append(case)
            continue
        labels = sorted({a for a, _, _ in kept} | {p for _, p, _ in kept})
        y_true = [a for a, _, _ in kept]
        y_pred = [p for _, p, _ in kept]
        w = [c for _, _, c in kept]
        if skm is not None:
            cm = skm.confusion_matrix(y_true, y_pred, labels=labels, sample_weight=w)
            acc = skm.accuracy_score(y_true, y_pred, sample_weight=w)
            bp, br, bf, _ = skm.precision_recall_fscore_support(
                y_true, y_pred, labels=[positive], average=None, zero_division=0, sample_weight=w
            )
            binary = (bp[0], br[0], bf[0])
            mp, mr, mf, _ = skm.precision_recall_fscore_support(
                y_true, y_pred, labels=labels, average="macro", zero_division=0, sample_weight=w
            )
            macro = (mp, mr, mf)
        else:
            cm, acc, binary, macro = quality_numpy(labels, y_true, y_pred, w, positive)
        case.update(
            {
                "labels": labels,
                "confusion_matrix": np.asarray(cm, float).tolist(),
                "accuracy": float(acc),
                "binary": {"precision": float(binary[0]), "recall": float(binary[1]), "f1": float(binary[2])},
                "macro": {"precision": float(macro[0]), "recall": float(macro[1]), "f1": float(macro[2])},
            }
        )
        out.append(case)
    return out


def main():
    doc = {
        "generator": "scripts/gen_analysis_fixtures.py",
        "seed": SEED,
        "versions": {
            "numpy": np.__version__,
            "scipy": scipy.__version__,
            "sklearn": sklearn.__version__ if sklearn is not None else None,
        },
        "psi_epsilon": PSI_EPSILON,
        "histogram_quantile": histogram_cases(),
        "drift": drift_cases(),
        "batch": batch_case(),
        "multiple_testing": multiple_testing_cases(),
        "quality": quality_cases(),
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(doc, indent=1, allow_nan=False) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
