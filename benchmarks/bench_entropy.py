"""Chunked vs naive full-vocabulary entropy: time and peak extra memory, side by side.

    python benchmarks/bench_entropy.py [--rows 1024] [--vocab 151936] [--repeats 5]

Each case runs in its own process: it allocates the fp32 logits (rows x vocab), records its
resident memory, runs the entropy `repeats` times and reports the median time and the peak
resident memory above that baseline (ru_maxrss), i.e. the extra memory the method needs.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
from _measure import median_time, peak_rss_mb, rss_mb, run_case  # noqa: E402


def naive_entropy(logits):
    import torch
    return -(torch.softmax(logits.float(), -1) * torch.log_softmax(logits.float(), -1)).sum(-1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1024)
    ap.add_argument("--vocab", type=int, default=151_936)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--case", default=None)
    a = ap.parse_args()
    if a.case:
        import torch
        import ercref
        torch.manual_seed(0)
        torch.set_num_threads(os.cpu_count() or 1)
        logits = torch.randn(a.rows, a.vocab) * 3
        fn = {"naive": lambda: naive_entropy(logits), "chunked": lambda: ercref.entropy_from_logits(logits)}[a.case]
        ref = naive_entropy(logits[:8].double())
        err = float((ercref.entropy_from_logits(logits[:8]).double() - ref).abs().max())
        base = max(rss_mb(), peak_rss_mb())
        t = median_time(fn, a.repeats)
        print(json.dumps({"time_s": t, "extra_mb": peak_rss_mb() - base, "max_abs_err_vs_fp64": err}))
        return
    logits_mb = a.rows * a.vocab * 4 / 2**20
    res = {c: run_case(__file__, c, "--rows", str(a.rows), "--vocab", str(a.vocab), "--repeats", str(a.repeats))
           for c in ("naive", "chunked")}
    print(f"entropy of {a.rows} x {a.vocab} fp32 logits ({logits_mb:.0f} MB), median of {a.repeats}, 1 process per method")
    print(f"{'method':<10}{'time ms':>10}{'extra MB':>12}{'extra / logits':>16}")
    for c, r in res.items():
        print(f"{c:<10}{r['time_s']*1e3:>10.0f}{r['extra_mb']:>12.0f}{r['extra_mb']/logits_mb:>16.2f}")
    print(f"ratio chunked/naive: time {res['chunked']['time_s']/res['naive']['time_s']:.2f}x, "
          f"extra memory {res['chunked']['extra_mb']/max(res['naive']['extra_mb'],1e-9):.3f}x; "
          f"chunked max abs error vs float64: {res['chunked']['max_abs_err_vs_fp64']:.1e}")


if __name__ == "__main__":
    main()
