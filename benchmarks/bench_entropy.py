"""Full-vocabulary entropy: ercref's chunked path against naive softmax and the peers, side by side.

    python benchmarks/bench_entropy.py [--rows 1024] [--vocab 151936] [--repeats 5] [--no-compile]

  naive     -(softmax(z) * log_softmax(z)).sum(-1)
  trl       trl.trainer.utils.entropy_from_logits (chunk 128)
  verl      verl.utils.torch_functional.entropy_from_logits
  chunked   ercref.entropy_from_logits (eager, fp32 row chunks, reused buffers)
  compiled  ercref.compiled_entropy_from_logits (torch.compile; compile time reported separately)

Each case runs in its own process: it allocates the fp32 logits (rows x vocab), records its
resident memory, runs the entropy `repeats` times and reports the median time and the peak
resident memory above that baseline (sampled every 0.5 ms), i.e. the extra memory the method needs.
"""
from __future__ import annotations

import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
from _measure import PeakRSS, bench_parser, case_args, median_time, run_case  # noqa: E402


def naive_entropy(logits):
    import torch
    z = logits if logits.dtype == torch.float64 else logits.float()
    return -(torch.softmax(z, -1) * torch.log_softmax(z, -1)).sum(-1)


def main():
    ap = bench_parser(__doc__, rows=1024, vocab=151_936, repeats=5, case=True)
    ap.add_argument("--no-compile", action="store_true")
    a = ap.parse_args()
    if a.case:
        import torch

        import ercref
        torch.manual_seed(0)
        torch.set_num_threads(os.cpu_count() or 1)
        logits = torch.randn(a.rows, a.vocab) * 3
        if a.case == "trl":
            from trl.trainer.utils import entropy_from_logits as peer
        elif a.case == "verl":
            from verl.utils.torch_functional import entropy_from_logits as peer
        fn = {"naive": lambda: naive_entropy(logits), "chunked": lambda: ercref.entropy_from_logits(logits),
              "compiled": lambda: ercref.compiled_entropy_from_logits(logits),
              "trl": lambda: peer(logits), "verl": lambda: peer(logits)}[a.case]
        t0 = time.perf_counter()
        with torch.no_grad():
            out = fn()  # warm-up (and compilation for the compiled path)
        first_s = time.perf_counter() - t0
        ref = naive_entropy(logits[:64].double())
        err = float((out[:64].double() - ref).abs().max())
        del out
        with torch.no_grad(), PeakRSS() as mem:
            t = median_time(fn, a.repeats)
        print(json.dumps({"time_s": t, "extra_mb": mem.extra_mb, "max_abs_err_vs_fp64": err, "first_s": first_s}))
        return
    logits_mb = a.rows * a.vocab * 4 / 2**20
    cases = ["naive", "trl", "verl", "chunked"] + ([] if a.no_compile else ["compiled"])
    res = {}
    for c in cases:
        try:
            res[c] = run_case(__file__, c, *case_args(a, "rows", "vocab", "repeats"))
        except Exception as e:  # a peer that is not installed is reported, not fatal
            print(f"{c}: not measured ({type(e).__name__})")
    naive = res["naive"]
    print(f"entropy of {a.rows} x {a.vocab} fp32 logits ({logits_mb:.0f} MB), median of {a.repeats}, "
          "1 process per method")
    print(f"{'method':<10}{'time ms':>9}{'vs naive':>10}{'extra MB':>10}{'extra/logits':>14}"
          f"{'max err vs fp64':>17}{'first call s':>14}")
    for c, r in res.items():
        print(f"{c:<10}{r['time_s']*1e3:>9.0f}{r['time_s']/naive['time_s']:>9.2f}x{r['extra_mb']:>10.0f}"
              f"{r['extra_mb']/logits_mb:>14.3f}{r['max_abs_err_vs_fp64']:>17.1e}{r['first_s']:>14.1f}")
    print("targets: chunked extra memory <= 0.10 of the logits and eager time <= 1.0x naive; compiled <= 0.15x naive")


if __name__ == "__main__":
    main()
