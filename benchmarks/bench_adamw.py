"""One AdamW step over SmolLM2-135M's parameters, three torch kernels side by side in one process:
the per-tensor loop (torch's CPU default and the engine's with optim.fused false), foreach (the same
numbers as the loop; torch's CUDA default) and fused (optim.fused true). The trainer takes K such
steps per rollout batch, so at K = 8 the kernel is a visible share of a CPU step.

    python benchmarks/bench_adamw.py [--threads 1] [--repeats 5]

The model is SmolLM2-135M-Instruct as the engine loads it (ercref.lm.models.load_model), with
gradients filled with seeded noise; the optimizer is the trainer's (ercref.lm.trainer.build_adamw:
weight decay on matrices, 0 on the rest). Steps alternate kernel by kernel (loop, foreach, fused,
loop, ...) after one warm-up step each, so a shared machine slows them alike; the medians and their
ratios to the loop are printed, and whether foreach's weights equal the loop's bit for bit after
the same steps.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

KERNELS = ("loop", "foreach", "fused")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=5, help="timed steps per kernel (after one warm-up step)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    from ercref.lm.config import make_config
    from ercref.lm.models import load_model
    from ercref.lm.trainer import build_adamw

    cfg = make_config("cpu-smollm2", overrides=["optim.weight_decay=0.01"])
    base, _tok = load_model(cfg.model.name)
    models, opts = {}, {}
    for k in KERNELS:
        models[k] = copy.deepcopy(base)
        o = dataclasses.replace(cfg.optim, fused=k == "fused")
        opts[k] = build_adamw(models[k], o)
        if k == "foreach":                         # torch's CUDA default, asked for on CPU
            for g in opts[k].param_groups:
                g["foreach"] = True
    n = sum(p.numel() for p in base.parameters())
    gen = torch.Generator().manual_seed(0)
    grads = [torch.randn(p.shape, generator=gen) * 1e-3 for p in base.parameters()]

    def step(k: str) -> float:
        for p, g in zip(models[k].parameters(), grads):
            p.grad = g.clone()
        t = time.perf_counter()
        opts[k].step()
        return time.perf_counter() - t

    times = {k: [] for k in KERNELS}
    for k in KERNELS:
        step(k)
    for _ in range(args.repeats):
        for k in KERNELS:
            times[k].append(step(k))
    med = {k: statistics.median(v) for k, v in times.items()}
    with torch.no_grad():
        same = all(torch.equal(a, b) for a, b in zip(models["loop"].parameters(), models["foreach"].parameters()))
        diff = max(float((a - b).abs().max()) for a, b in zip(models["loop"].parameters(), models["fused"].parameters()))
    print(f"AdamW step, {cfg.model.name} ({n / 1e6:.1f} M parameters, fp32), {args.threads} thread(s), "
          f"median of {args.repeats}:")
    for k in KERNELS:
        print(f"  {k:<8} {med[k]:.3f} s   {med[k] / med['loop']:.2f}x the loop")
    print(f"after {args.repeats + 1} steps: foreach == loop bit for bit: {same}; fused vs loop max |diff| {diff:.2g}")


if __name__ == "__main__":
    main()
