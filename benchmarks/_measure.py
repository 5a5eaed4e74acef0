"""Shared measuring helpers for the benchmarks: each case runs in a fresh subprocess so that its
peak memory (ru_maxrss) is its own, and timings are medians of interleaved repeats."""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable


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


def median_time(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def paired_median(fn_a: Callable[[], object], fn_b: Callable[[], object], repeats: int,
                  warmup: bool = True) -> tuple[float, float]:
    """Median seconds of ``fn_a`` and ``fn_b`` over ``repeats`` rounds, timed alternately
    (a, b, a, b, ...) so that drift in the machine's speed hits both arms alike; with ``warmup``,
    one untimed call of each first."""
    if warmup:
        fn_a()
        fn_b()
    times_a, times_b = [], []
    for _ in range(repeats):
        for fn, times in ((fn_a, times_a), (fn_b, times_b)):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
    return statistics.median(times_a), statistics.median(times_b)


def bench_parser(doc: str | None, *, repeats: int, case: bool = False, **sizes: int) -> argparse.ArgumentParser:
    """The benchmarks' common options: an int option per keyword (``rows=1024`` gives ``--rows``,
    default 1024), ``--repeats``, and with ``case`` the internal ``--case`` that `run_case` passes.
    ``doc`` (the script's docstring) is the ``--help`` text."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    for name, default in sizes.items():
        ap.add_argument(f"--{name.replace('_', '-')}", type=int, default=default)
    ap.add_argument("--repeats", type=int, default=repeats)
    if case:
        ap.add_argument("--case", default=None, help=argparse.SUPPRESS)
    return ap


def case_args(ns: argparse.Namespace, *names: str) -> list[str]:
    """``["--rows", "1024", ...]`` for the named options of ``ns``, to hand on to `run_case`."""
    return [arg for name in names for arg in (f"--{name.replace('_', '-')}", str(getattr(ns, name)))]


def run_case(script: str, case: str, *args: str) -> dict:
    """Run `python script --case case args...` in a fresh process; it prints one JSON line."""
    # a fixed mmap threshold makes glibc return freed large blocks to the OS, so RSS tracks live memory
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    out = subprocess.run([sys.executable, script, "--case", case, *args],
                         check=True, capture_output=True, text=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])
