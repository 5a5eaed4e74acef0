"""Shared measuring helpers for the benchmarks: each case runs in a fresh subprocess so that its
peak memory (ru_maxrss) is its own, and timings are medians of interleaved repeats."""
from __future__ import annotations

import json
import resource
import statistics
import subprocess
import sys
import os
import threading
import time


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class PeakRSS:
    """Samples this process's resident memory every 0.5 ms in a thread while the block runs
    (torch releases the GIL inside kernels); ``extra_mb`` is the peak above the RSS at entry."""

    def __enter__(self):
        self.base = self.peak = rss_mb()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_mb())
            time.sleep(0.0005)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_mb())
        self.extra_mb = self.peak - self.base


def median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def run_case(script: str, case: str, *args: str) -> dict:
    """Run `python script --case case args...` in a fresh process; it prints one JSON line."""
    # a fixed mmap threshold makes glibc return freed large blocks to the OS, so RSS tracks live memory
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    out = subprocess.run([sys.executable, script, "--case", case, *args], check=True, capture_output=True, text=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])
