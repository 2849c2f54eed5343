#!/usr/bin/env python3
"""Python's prometheus_client parser on the same payload, in MB/s.
Run: pip install prometheus_client && python3 benches/parse_python.py"""
import pathlib, time
from prometheus_client.parser import text_string_to_metric_families

payload = (pathlib.Path(__file__).parent.parent / "tests/fixtures/metrics_payload.txt").read_text()
best = float("inf")
for _ in range(20):
    start = time.perf_counter()
    n = sum(len(f.samples) for f in text_string_to_metric_families(payload))
    best = min(best, time.perf_counter() - start)
print(f"prometheus_client: {len(payload) / best / 1e6:.1f} MB/s ({n} samples, best of 20)")
