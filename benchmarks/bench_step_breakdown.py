"""Step-time breakdown of the RL loop (generation, old log-prob forward, update) and the update
phase's FLOP utilisation against this machine's measured GEMM rate.

    python benchmarks/bench_step_breakdown.py                   # cpu-smollm2, 3 steps
    python benchmarks/bench_step_breakdown.py --preset cpu-tiny --steps 5

GEMM rate: best of a few fp32 2048^3 matmuls in this process (2 * 2048^3 FLOPs each).
Update FLOPs ~ 6 * params * positions (forward 2, backward 4 per parameter per position), where
positions = every (padded) position the update forwards: K minibatches x rows x sequence width.
The fused LM head recomputes its logits tile in backward (one more head GEMM, not counted), and
attention's T^2 terms are not counted, so the ratio slightly understates the work done.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def gemm_rate(n: int = 2048, repeats: int = 5) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


def main(argv=None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="cpu-smollm2")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    args = ap.parse_args(argv)

    from ercref.lm.config import make_config
    from ercref.lm.trainer import Trainer

    cfg = make_config(args.preset, overrides=["train.progress=false", "train.plot=false", "sft.steps=0",
                                              f"train.steps={args.steps}"] + args.overrides)
    rate = gemm_rate()
    with tempfile.TemporaryDirectory() as out:
        tr = Trainer(cfg, out)
        n_params = sum(p.numel() for p in tr.model.parameters())
        rows = []
        for _ in range(args.steps):
            rows.append(tr.train_step())
    rate_after = gemm_rate()
    print(f"preset {args.preset}: {cfg.model.name}, {n_params / 1e6:.1f} M parameters, "
          f"{cfg.rollout.prompts_per_step} prompts x {cfg.rollout.group_size} samples, "
          f"{cfg.num_minibatches} minibatches, max {cfg.rollout.max_new_tokens} new tokens, "
          f"{torch.get_num_threads()} threads")
    print(f"GEMM 2048^3 fp32: {rate / 1e9:.1f} GFLOP/s (before), {rate_after / 1e9:.1f} GFLOP/s (after)")
    print(f"{'step':>4} {'generate_s':>10} {'old_logp_s':>10} {'update_s':>9} {'step_s':>7} "
          f"{'positions':>9} {'update GFLOP/s':>14} {'util':>6}")
    utils = []
    for r in rows:
        rows_per_step = r["batch/minibatches"] * cfg.train.minibatch_prompts * cfg.rollout.group_size
        positions = rows_per_step * r["batch/seq_width"]
        flops = 6 * n_params * positions
        achieved = flops / r["time/update_s"]
        util = achieved / max(rate, rate_after)
        utils.append(util)
        print(f"{r['step']:>4} {r['time/generate_s']:>10.2f} {r['time/old_logprob_s']:>10.2f} {r['time/update_s']:>9.2f} "
              f"{r['time/step_s']:>7.2f} {positions:>9d} {achieved / 1e9:>14.1f} {util:>6.2f}")
    share = {k: statistics.mean(r[f"time/{k}_s"] / r["time/step_s"] for r in rows)
             for k in ("generate", "old_logprob", "update")}
    print("mean share of step time: " + ", ".join(f"{k} {v:.0%}" for k, v in share.items()))
    print(f"update-phase FLOP utilisation vs measured GEMM rate: median ratio {statistics.median(utils):.2f}")


if __name__ == "__main__":
    main()
