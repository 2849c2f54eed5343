#!/usr/bin/env python3
"""Times PSI + Jensen-Shannon + KS (with p-values) over 100 features x 20
buckets with numpy/scipy, on the same inputs as `cargo bench --bench drift`
(the `batch` case of tests/fixtures/analysis_fixtures.json), with the same
formulas as src/analysis/drift.rs:

- vectorised: one array operation across all 100 features per step;
- vectorised_precomputed: the same, with the reference side (smoothed
  proportions, their logs, CDFs) computed once outside the timed loop, the
  best case for numpy (the Rust operator does not precompute anything);
- per_feature: a Python loop calling numpy/scipy once per feature, as drift
  monitoring libraries typically do (and as the operator does in Rust).

Usage: python3 benches/drift_numpy.py
Reports the best and the median time per call over many repetitions."""

import json
import pathlib
import platform
import timeit

import numpy as np
import scipy
from scipy import stats
from scipy.spatial import distance

EPS = 1e-4
ROOT = pathlib.Path(__file__).resolve().parent.parent
doc = json.loads((ROOT / "tests" / "fixtures" / "analysis_fixtures.json").read_text())
R = np.array(doc["batch"]["reference"], dtype=float)
O = np.array(doc["batch"]["observed"], dtype=float)
F, K = R.shape


def vectorised(R, O):
    n = R.sum(axis=1, keepdims=True)
    m = O.sum(axis=1, keepdims=True)
    p, q = R / n, O / m
    ps = (p + EPS) / (1 + K * EPS)
    qs = (q + EPS) / (1 + K * EPS)
    psi = np.sum((qs - ps) * np.log(qs / ps), axis=1)
    js = distance.jensenshannon(R, O, axis=1)
    d = np.max(np.abs(np.cumsum(p, axis=1)[:, :-1] - np.cumsum(q, axis=1)[:, :-1]), axis=1)
    en = (n * m / (n + m)).ravel()
    pv = stats.kstwobign.sf(d * np.sqrt(en))
    return psi, js, d, pv


class Reference:
    def __init__(self, R):
        self.n = R.sum(axis=1, keepdims=True)
        self.p = R / self.n
        self.ps = (self.p + EPS) / (1 + K * EPS)
        self.log_ps = np.log(self.ps)
        self.cdf = np.cumsum(self.p, axis=1)[:, :-1]


def vectorised_precomputed(ref, O):
    m = O.sum(axis=1, keepdims=True)
    q = O / m
    qs = (q + EPS) / (1 + K * EPS)
    psi = np.sum((qs - ref.ps) * (np.log(qs) - ref.log_ps), axis=1)
    js = distance.jensenshannon(ref.p, q, axis=1)
    d = np.max(np.abs(ref.cdf - np.cumsum(q, axis=1)[:, :-1]), axis=1)
    en = (ref.n * m / (ref.n + m)).ravel()
    pv = stats.kstwobign.sf(d * np.sqrt(en))
    return psi, js, d, pv


def per_feature(R, O):
    out = []
    for r, o in zip(R, O):
        n, m = r.sum(), o.sum()
        p, q = r / n, o / m
        ps = (p + EPS) / (1 + K * EPS)
        qs = (q + EPS) / (1 + K * EPS)
        psi = float(np.sum((qs - ps) * np.log(qs / ps)))
        js = float(distance.jensenshannon(r, o))
        d = float(np.max(np.abs(np.cumsum(p)[:-1] - np.cumsum(q)[:-1])))
        pv = float(stats.kstwobign.sf(d * np.sqrt(n * m / (n + m))))
        out.append((psi, js, d, pv))
    return out


def check():
    """All three give the fixture's expected values (same inputs, same maths)."""
    want = np.array([[e["psi"], e["js"], e["ks_statistic"], e["ks_p_value"]] for e in doc["batch"]["expected"]])
    for got in (np.array(vectorised(R, O)).T, np.array(vectorised_precomputed(Reference(R), O)).T, np.array(per_feature(R, O))):
        assert np.allclose(got, want, rtol=1e-9, atol=1e-15), "implementation disagrees with the fixture"


def bench(name, fn, number):
    times = np.array(timeit.repeat(fn, number=number, repeat=15)) / number * 1e6
    print(f"{name:28s} best {times.min():9.1f} us   median {np.median(times):9.1f} us   per call ({F}x{K})")


if __name__ == "__main__":
    check()
    print(f"python {platform.python_version()}, numpy {np.__version__}, scipy {scipy.__version__}")
    ref = Reference(R)
    bench("vectorised", lambda: vectorised(R, O), 200)
    bench("vectorised_precomputed", lambda: vectorised_precomputed(ref, O), 200)
    bench("per_feature", lambda: per_feature(R, O), 5)
