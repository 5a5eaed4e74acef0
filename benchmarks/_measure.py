"""Shared measuring helpers for the benchmarks: each case runs in a fresh subprocess so that its
peak memory (ru_maxrss) is its own, and timings are medians of interleaved repeats."""
from __future__ import annotations

import json
import resource
import statistics
import subprocess
import sys
import time


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def run_case(script: str, case: str, *args: str) -> dict:
    """Run `python script --case case args...` in a fresh process; it prints one JSON line."""
    out = subprocess.run([sys.executable, script, "--case", case, *args], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])
