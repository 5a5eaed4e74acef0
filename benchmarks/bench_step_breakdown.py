"""Per-phase time of one RL step (generation, old-log-prob pass, forward/backward, optimizer step)
plus evaluation and checkpointing, for one forward per full row ("rows", the engine before shared
prompts) and shared prompts ("shared", ercref.lm.rollout.SHARE_PROMPTS), side by side in one process,
and the update phase's FLOP utilisation against this machine's measured GEMM rate.

    python benchmarks/bench_step_breakdown.py                       # cpu-smollm2, notebook 04 (8 x 4), 1 thread
    python benchmarks/bench_step_breakdown.py --group-size 8        # 8 prompts x 8 samples
    python benchmarks/bench_step_breakdown.py --threads 2 --steps 4
    python benchmarks/bench_step_breakdown.py --preset cpu-tiny --steps 5 --no-study-settings

The study settings (--study-settings, default) are ercref.study.studies.SMOL_BASE: 8 prompts x 4
samples, <= 12 new tokens, 4 minibatches (K = 4 optimizer steps per rollout batch), 32 eval prompts
x 2 samples. Arms alternate step by step (rows, shared, shared+fused-adam, rows, ...) so a shared,
drifting machine slows them alike; every phase is reported as wall seconds and as CPU seconds of
this process (with 1 thread, CPU time is what the step costs on an idle core; wall time includes
waiting for a busy machine). "rows" and "shared" use the trainer's AdamW as configured (optim.fused
false: torch's per-tensor CPU loop); "shared+fused-adam" swaps in the optimizer optim.fused=true
builds (torch's fused kernel, same groups and hyper-parameters).

Measured 2026-11-29 on this 2-core machine (AMD EPYC, AVX2, SmolLM2-135M fp32), shared with other
jobs (load 2-12: wall times are inflated, CPU seconds are not), median of 2 steps per arm after a
warm-up step, CPU seconds of the process (1 thread), `--group-size 8` and the default (8 x 4):

    8 prompts x 8 samples, 1 thread         rows   shared   shared+fused-adam
    generate (64 rows, <= 12 tokens)        8.8     5.2      4.4
    old log-probs + entropies               8.0     2.0      2.9
    forward + backward (4 minibatches)     26.6    11.5     11.8
    optimizer (4 AdamW steps)               3.3     2.3      0.6
    step                                   46.7    21.0     19.7      (rows / shared: 2.2x)
    evaluation (31 prompts x 2)             8.8     6.4
    checkpoint save (model + AdamW, 1.6 GB) 3.1 CPU s, 6.8 s wall

    8 prompts x 4 samples (notebook 04)     rows   shared
    generate / old log-probs                5.3 / 3.3   3.2 / 1.6
    forward + backward / optimizer         13.4 / 2.1   8.2 / 2.1
    step                                   24.0        15.0         (1.6x; wall 40 s -> 19 s)
    evaluation / checkpoint save            8.4 / 2.8   6.0 / 2.8

With shared prompts the forward + backward (~55 % of a step) runs its matmuls at about the GEMM
rate (torch.profiler: aten::mm 60 % of its CPU time, ~130 GFLOP/s on 1 thread): what remains is the
work itself (each minibatch's 2 distinct prompts x ~56 tokens plus 16 responses x <= 11 tokens, forward
and backward). Generation is now mostly the 12 decode steps (~0.3 s each for 64 rows).
2 threads: not measured yet (the --threads 2 run did not finish on the loaded machine); CPU seconds
then add both threads' time, so compare its wall column on an idle machine.

GEMM rate: best of a few fp32 2048^3 matmuls in this process (2 * 2048^3 FLOPs each).
Update FLOPs ~ 6 * body params * positions + 6 * head params * response positions, where the
positions are those the update forwards: every row's full width ("rows") or each distinct prompt
once plus every row's response ("shared"). The fused LM head recomputes its logits tile in
backward (one more head GEMM, not counted), and attention's T^2 terms are not counted, so the ratio
slightly understates the work done.
"""
from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PHASES = ("generate", "old_logprob", "fwd_bwd", "optimizer", "step")


def gemm_rate(n: int = 2048, repeats: int = 5) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


class Clock:
    """Wall and process-CPU seconds of a block: ``with clock: ...`` then ``clock.wall`` / ``clock.cpu``."""

    def __enter__(self):
        self._w, self._c = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall, self.cpu = time.perf_counter() - self._w, time.process_time() - self._c


def timed_optimizer(opt, totals: dict) -> None:
    """Wrap ``opt.step`` (an instance attribute, so the LR scheduler's own wrapper still runs)."""
    inner = opt.step

    def step(*a, **k):
        with Clock() as c:
            out = inner(*a, **k)
        totals["wall"] += c.wall
        totals["cpu"] += c.cpu
        return out

    opt.step = step


def one_step(tr, arm: str, rollout_mod, totals: dict) -> dict:
    """One train_step under ``arm`` -> {phase: (wall, cpu)} plus the step record."""
    rollout_mod.SHARE_PROMPTS = arm != "rows"
    tr.opt = tr.opt_fused if arm == "shared+fused-adam" else tr.opt_plain
    tr.sched.optimizer = tr.opt
    totals.update(wall=0.0, cpu=0.0)
    old_gen = tr.make_rollout
    gen_cpu = {}

    def make_rollout(*a, **k):  # CPU time of the rollout call; its generate / old-logprob split comes as wall times
        with Clock() as c:
            b = old_gen(*a, **k)
        gen_cpu["cpu"] = gen_cpu.get("cpu", 0.0) + c.cpu
        gen_cpu["prompt_width"] = b.prompt_len
        return b

    tr.make_rollout = make_rollout
    with Clock() as step:
        rec = tr.train_step()
    tr.make_rollout = old_gen
    gen_w, old_w = rec["time/generate_s"], rec["time/old_logprob_s"]
    share = gen_w / max(gen_w + old_w, 1e-9)   # split the rollout's CPU time as its wall time
    upd_w, upd_c = rec["time/update_s"], step.cpu - gen_cpu["cpu"]
    return {"rec": rec, "generate": (gen_w, gen_cpu["cpu"] * share), "old_logprob": (old_w, gen_cpu["cpu"] * (1 - share)),
            "fwd_bwd": (upd_w - totals["wall"], upd_c - totals["cpu"]), "optimizer": (totals["wall"], totals["cpu"]),
            "step": (step.wall, step.cpu), "prompt_width": gen_cpu["prompt_width"]}


def update_flops(rec: dict, n_body: int, n_head: int, shared: bool, prompt_width: int, rows: int, groups: int) -> float:
    R = rec["batch/seq_width"] - prompt_width
    positions = (groups * prompt_width + rows * (R - 1)) if shared else rows * rec["batch/seq_width"]
    return 6 * n_body * positions + 6 * n_head * rows * R


def main(argv=None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="cpu-smollm2")
    ap.add_argument("--steps", type=int, default=3, help="measured steps per arm (after one warm-up step)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--group-size", type=int, default=None, help="samples per prompt (default: the settings')")
    ap.add_argument("--arms", default="rows,shared,shared+fused-adam")
    ap.add_argument("--study-settings", action=argparse.BooleanOptionalAction, default=True,
                    help="apply ercref.study.studies.SMOL_BASE (notebook 04's setting)")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    args = ap.parse_args(argv)

    import ercref.lm.rollout as rollout_mod
    from ercref.lm.config import make_config
    from ercref.lm.trainer import Trainer, build_adamw

    base = []
    if args.study_settings:
        from ercref.study.studies import SMOL_BASE
        base = [f"{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in SMOL_BASE.items()]
    extra = [f"rollout.group_size={args.group_size}"] if args.group_size else []
    cfg = make_config(args.preset, overrides=base + ["train.progress=false", "train.plot=false", "sft.steps=0",
                                                     f"train.threads={args.threads}", "train.steps=1000"]
                      + extra + args.overrides)
    arms = args.arms.split(",")
    torch.set_num_threads(args.threads)
    rate = gemm_rate()
    with tempfile.TemporaryDirectory() as out:
        tr = Trainer(cfg, out)
        tr.start()
        tr.opt_plain = tr.opt
        tr.opt_fused = (build_adamw(tr.model, dataclasses.replace(cfg.optim, fused=True))
                        if "shared+fused-adam" in arms else None)
        totals: dict = {}
        for opt in (tr.opt_plain, tr.opt_fused):
            if opt is not None:
                timed_optimizer(opt, totals)
        head = tr.model.get_output_embeddings().weight
        n_params = sum(p.numel() for p in tr.model.parameters())
        n_head = head.numel()
        n_body = n_params - (n_head if getattr(tr.model.config, "tie_word_embeddings", False) else 0) - n_head
        one_step(tr, arms[-1], rollout_mod, totals)            # warm-up (first-call allocations, lazy imports)
        res = {a: [] for a in arms}
        for _ in range(args.steps):
            for a in arms:
                res[a].append(one_step(tr, a, rollout_mod, totals))
        extra_phases = {}
        for a in ("rows", "shared"):
            if a in arms:
                rollout_mod.SHARE_PROMPTS = a != "rows"
                with Clock() as c:
                    tr.evaluate()
                extra_phases[a] = {"eval": (c.wall, c.cpu)}
        with Clock() as c:
            tr.save()
        save = (c.wall, c.cpu)
        rollout_mod.SHARE_PROMPTS = True
    rate_after = gemm_rate()

    r = cfg.rollout
    print(f"preset {args.preset}: {cfg.model.name}, {n_params / 1e6:.1f} M parameters, {r.prompts_per_step} prompts x "
          f"{r.group_size} samples, {cfg.num_minibatches} minibatches, max {r.max_new_tokens} new tokens, "
          f"{torch.get_num_threads()} threads; eval {len(tr.eval_set)} prompts x {cfg.train.eval_k}")
    print(f"GEMM 2048^3 fp32: {rate / 1e9:.1f} GFLOP/s (before), {rate_after / 1e9:.1f} GFLOP/s (after)")
    print(f"median over {args.steps} steps per arm, seconds as wall / CPU of this process")
    print(f"{'phase':<14}" + "".join(f"{a:>22}" for a in arms))
    med = {a: {p: (statistics.median(s[p][0] for s in res[a]), statistics.median(s[p][1] for s in res[a]))
               for p in PHASES} for a in arms}
    for p in PHASES:
        print(f"{p:<14}" + "".join(f"{med[a][p][0]:>11.2f} /{med[a][p][1]:>8.2f}" for a in arms))
    for a, ph in extra_phases.items():
        w, c = ph["eval"]
        print(f"{'eval (' + a + ')':<14}{w:>11.2f} /{c:>8.2f}")
    print(f"{'checkpoint':<14}{save[0]:>11.2f} /{save[1]:>8.2f}   (model + AdamW state, torch.save)")
    ref = arms[0]
    for a in arms[1:]:
        print(f"CPU-time ratio {ref} / {a}: " + ", ".join(
            f"{p} {med[ref][p][1] / max(med[a][p][1], 1e-9):.2f}x" for p in PHASES))
    for a in arms:
        share = {p: med[a][p][1] / med[a]["step"][1] for p in PHASES[:-1]}
        print(f"{a}: share of step CPU time: " + ", ".join(f"{k} {v:.0%}" for k, v in share.items()))
    rows = cfg.train.minibatch_prompts * r.group_size
    for a in arms:
        utils = []
        for s in res[a]:
            rec = s["rec"]
            fl = rec["batch/minibatches"] * update_flops(rec, n_body, n_head, a != "rows", s["prompt_width"], rows,
                                                           cfg.train.minibatch_prompts)
            utils.append(fl / s["fwd_bwd"][1] / max(rate, rate_after))
        if utils:
            print(f"{a}: forward/backward FLOP utilisation (CPU time) vs GEMM rate: median {statistics.median(utils):.2f}")


if __name__ == "__main__":
    main()
