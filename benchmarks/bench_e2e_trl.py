"""End-to-end RL on SmolLM2-135M-Instruct: ercref's trainer against TRL 1.16's GRPOTrainer,
same workload, a fresh process for each side, in one run.

    python benchmarks/bench_e2e_trl.py [--skip-trl-default]

Workload (both sides): 16 prompts x 8 generations of "What is a + b? Answer with just the number."
(single-digit a, b), at most 32 new tokens, temperature 1, fp32, DAPO loss (eps 0.2 / 0.28),
lr 1e-6, 4 optimizer steps per generation batch (minibatches of 32 sequences), one generation
batch. ercref runs with ERC on (it computes entropies TRL does not); TRL runs (a) with its
defaults (gradient checkpointing on) and (b) with checkpointing off, its best CPU setting.
Reported: wall time of the training call on each side and the ratios.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def ercref_side(model_dir: str) -> float:
    from ercref.lm.config import make_config
    from ercref.lm.trainer import Trainer

    cfg = make_config("cpu-smollm2", overrides=[
        f"model.name={model_dir}", "data.task=arith", "data.style=instruct", "data.level=1",
        "rollout.prompts_per_step=16", "rollout.group_size=8", "rollout.max_new_tokens=32",
        "rollout.temperature=1.0", "rollout.top_p=1.0", "train.minibatch_prompts=4", "train.steps=1",
        "loss.loss=dapo", "loss.loss_kwargs.eps_low=0.2", "loss.loss_kwargs.eps_high=0.28", "loss.erc=true", "optim.lr=1e-6",
        "reward.judge=exact", "reward.scheme=binary", "data.system_prompt=null",
        "optim.warmup_steps=0", "sft.steps=0", "train.eval_every=0", "train.plot=false",
        "train.progress=false", "train.save_every=0"])
    out = tempfile.mkdtemp(prefix="e2e_ercref_")
    tr = Trainer(cfg, out)
    t = time.perf_counter()
    tr.train_step()
    return time.perf_counter() - t


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--side", default=None)
    ap.add_argument("--model-dir", default=None)
    ap.add_argument("--skip-trl-default", action="store_true")
    a = ap.parse_args()
    if a.side == "ercref":
        print(json.dumps({"total": ercref_side(a.model_dir)}))
        return
    from ercref.lm.models import convert_smollm2

    model_dir = str(convert_smollm2())
    res = {}
    res["ercref"] = json.loads(subprocess.run([sys.executable, __file__, "--side", "ercref", "--model-dir", model_dir],
                                              check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])["total"]
    sides = [("trl_nockpt", ["nockpt"])] + ([] if a.skip_trl_default else [("trl_default", [])])
    for name, extra in sides:
        out = tempfile.mkdtemp(prefix=f"e2e_{name}_")
        proc = subprocess.run([sys.executable, os.path.join(HERE, "trl_grpo_reference.py"), model_dir, out, *extra],
                              check=True, capture_output=True, text=True)
        res[name] = json.loads(proc.stdout.strip().splitlines()[-1])["total"]
    print("end-to-end, SmolLM2-135M, 16 prompts x 8 gens, <= 32 new tokens, 4 optimizer steps, fp32, 2 CPU cores")
    for k, v in res.items():
        print(f"  {k:<12} {v:7.1f} s")
    if "trl_default" in res:
        print(f"ercref / TRL default        = {res['ercref'] / res['trl_default']:.2f}x  (target <= 0.75x)")
    print(f"ercref / TRL no checkpoint  = {res['ercref'] / res['trl_nockpt']:.2f}x  (target < 1.0x)")


if __name__ == "__main__":
    main()
