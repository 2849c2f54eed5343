#!/usr/bin/env python3
"""Throughput of Python's reference parser on the parse benchmark payload.

Measures `prometheus_client.parser.text_string_to_metric_families`, consuming
every sample, on the same bytes as `benches/parse.rs`
(tests/fixtures/metrics_payload.txt, made by shared/bench/gen_payload.py), and
prints MB/s (10^6 bytes per second) so the numbers compare with criterion's
`Throughput::Bytes` figures (criterion prints MiB/s; see docs/benchmarks.md).

Usage: python3 benches/parse_python.py [payload] [--seconds S]
"""
import argparse
import os
import statistics
import time

from prometheus_client.parser import text_string_to_metric_families

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_PAYLOAD = os.path.join(HERE, "..", "tests", "fixtures", "metrics_payload.txt")


def consume(text):
    n = 0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            # Touch what a consumer reads: name, labels and value.
            n += len(sample.labels) + (sample.value == sample.value)
    return n


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("payload", nargs="?", default=DEFAULT_PAYLOAD)
    ap.add_argument("--seconds", type=float, default=5.0, help="measuring time")
    args = ap.parse_args()
    with open(args.payload, encoding="utf-8") as f:
        text = f.read()
    size = len(text.encode("utf-8"))
    samples = sum(len(fam.samples) for fam in text_string_to_metric_families(text))

    consume(text)  # warm-up
    times = []
    deadline = time.perf_counter() + args.seconds
    while time.perf_counter() < deadline or len(times) < 5:
        t0 = time.perf_counter()
        consume(text)
        times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    best = min(times)
    print(f"payload: {args.payload} ({size} bytes, {samples} samples)")
    print(f"prometheus_client.parser.text_string_to_metric_families: {len(times)} runs")
    print(f"  median {med * 1e3:.3f} ms/parse -> {size / med / 1e6:.2f} MB/s")
    print(f"  best   {best * 1e3:.3f} ms/parse -> {size / best / 1e6:.2f} MB/s")


if __name__ == "__main__":
    main()
