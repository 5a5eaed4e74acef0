"""The GPU presets' planned memory and time, as the README states them: generated from the memory
planner (ercref.lm.memory), never typed.

    planner_estimate(cfg, device_bytes, device_name)   one config on one device: peak memory, fits,
                                                       time per step, per evaluation, for the whole run
    gpu_plan_markdown()                                the README's GPU table (both GPU presets on an
                                                       H100 and an H200)
    python -m ercref.study.gpu_plan [--readme]         print the table; --readme rewrites the README's
                                                       <!-- gpu-plan --> ... <!-- /gpu-plan --> block

tests/test_gpu_figures.py fails when the README's block is not gpu_plan_markdown(). Notebook 05 prints
the same estimates from planner_estimate (ercref.study.experiments re-exports it).

Evaluation prompts: the planner needs the number of prompts an evaluation decodes. The GPU presets
evaluate on the authors' AIME24 and AIME25 files (not shipped; AUTHORS_EVAL_RECORDS records each);
any other configuration plans with data.num_eval prompts per evaluation.
"""
from __future__ import annotations

import argparse
import re
import textwrap
from pathlib import Path

from ercref.lm.config import AUTHORS_EVAL_FILES, make_config
from ercref.lm.memory import DEVICE_BYTES, GiB, estimate_run_seconds, plan_memory
from ercref.paths import REPO_ROOT

GPU_PRESETS = ("gpu-1x80gb-1.5b", "gpu-paper-1.5b")
GPU_DEVICES = ("H100 80GB", "H200 141GB")
AUTHORS_EVAL_RECORDS = 30        # records in each of the authors' AIME files (AIME24, AIME25)
README_BLOCK = re.compile(r"(<!-- gpu-plan -->\n)(.*?)(<!-- /gpu-plan -->)", flags=re.S)


def planned_eval_prompts(cfg) -> int:
    """Prompts one evaluation of ``cfg`` decodes, for the planner (module docstring)."""
    paths = list(cfg.data.eval_paths.values())
    known = set(AUTHORS_EVAL_FILES.values())
    if paths and all(p in known for p in paths):
        return AUTHORS_EVAL_RECORDS * len(paths)
    return cfg.data.num_eval


def planner_estimate(cfg, device_bytes: int | None = None, device_name: str | None = None) -> dict:
    """The memory planner's peak memory and time estimate for ``cfg`` on a device of ``device_bytes``
    (None: the detected one). Keys: "available" (True), "message" (one line), "total_gb", "device_gb",
    "fits", "peak_phase", "step_s" (one training step), "eval_s" (one evaluation), "evaluations" (per
    run), "run_s" (train.steps steps plus every evaluation), "eval_backend", "eval_prompts", "assumptions"
    (the time model's: tflops, bandwidth_gbs, response_fill, ...), "table"
    (memory by component; then time by phase, unless train.device is "cpu": the time model assumes a
    GPU's throughput). Pure arithmetic, so it runs on CPU for a GPU config."""
    plan = plan_memory(cfg, device_bytes=device_bytes, device_name=device_name, eval_prompts=planned_eval_prompts(cfg))
    run = estimate_run_seconds(cfg, eval_prompts=planned_eval_prompts(cfg), device_bytes=plan.device_bytes)
    msg = (f"memory planner: peak {plan.total_bytes / GiB:.1f} GiB of {plan.device_bytes / GiB:.1f} GiB "
           f"({plan.device_name}): {'fits' if plan.fits else 'does NOT fit'}; {run.step.text()}; "
           f"{run.text()} (estimates, not measurements)")
    return {"available": True, "message": msg, "total_gb": plan.total_bytes / GiB, "device_gb": plan.device_bytes / GiB,
            "fits": bool(plan.fits), "peak_phase": plan.peak_phase, "step_s": float(run.step.total),
            "eval_s": float(run.evaluation.seconds), "evaluations": run.evaluation.evaluations,
            "run_s": float(run.total), "eval_backend": run.evaluation.assumptions.get("backend", cfg.rollout.backend),
            "eval_prompts": planned_eval_prompts(cfg), "assumptions": dict(run.step.assumptions),
            "table": plan.table(time=None if cfg.train.device == "cpu" else run)}


def duration(seconds: float) -> str:
    """Seconds as the README writes a planned time: minutes below 2 h, hours below 2 days, else days."""
    if seconds < 2 * 3600:
        return f"{seconds / 60:.1f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.0f} days"


def gpu_plan_rows(presets=GPU_PRESETS, devices=GPU_DEVICES) -> list[dict]:
    """planner_estimate of every preset on every device (DEVICE_BYTES), with "preset", "device", "steps"."""
    rows = []
    for preset in presets:
        cfg = make_config(preset, validate=False)
        for dev in devices:
            est = planner_estimate(cfg, device_bytes=DEVICE_BYTES[dev], device_name=dev)
            rows.append({"preset": preset, "device": dev, "steps": cfg.train.steps, **est})
    return rows


def gpu_plan_markdown(presets=GPU_PRESETS, devices=GPU_DEVICES) -> str:
    """The README's GPU table: per preset and device the planned peak memory (its largest phase), whether
    it fits, the time of a step, of the run's training, of its evaluations, and in all."""
    lines = ["| preset | device | planned peak (largest phase) | fits | per step | training | evaluation | total |",
             "|---|---|---|---|---|---|---|---|"]
    rows = gpu_plan_rows(presets, devices)
    for r in rows:
        lines.append(
            f"| `{r['preset']}` | {r['device']} | {r['total_gb']:.1f} of {r['device_gb']:.1f} GiB ({r['peak_phase']}) "
            f"| {'yes' if r['fits'] else 'no'} | {duration(r['step_s'])} | {duration(r['step_s'] * r['steps'])} "
            f"({r['steps']} steps) | {r['evaluations']} x {duration(r['eval_s'])} ({r['eval_backend']}, "
            f"{r['eval_prompts']} prompts) | {duration(r['run_s'])} |")
    a = rows[0]["assumptions"]
    lines += ["", textwrap.fill(
        f"Time model: {a['tflops']:g} TFLOP/s achieved, {a['bandwidth_gbs']:g} GB/s for decoding, responses at "
        f"{100 * a['response_fill']:.0f} % of their limit, judging not counted; an evaluation decodes its prompts x "
        "train.eval_k samples with the backend named. Output of `python -m ercref.study.gpu_plan`.", width=110)]
    return "\n".join(lines) + "\n"


def refresh_readme(path=None) -> bool:
    """Rewrite the README's ``<!-- gpu-plan -->`` ... ``<!-- /gpu-plan -->`` block with
    gpu_plan_markdown(); True when it changed. ValueError naming the file when it has no such block."""
    path = Path(path) if path is not None else REPO_ROOT / "README.md"
    text = path.read_text()
    if not README_BLOCK.search(text):
        raise ValueError(f"{path} has no <!-- gpu-plan --> ... <!-- /gpu-plan --> block to rewrite")
    new = README_BLOCK.sub(lambda m: m.group(1) + gpu_plan_markdown() + m.group(3), text)
    path.write_text(new)
    return new != text


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m ercref.study.gpu_plan", description=__doc__.splitlines()[0])
    ap.add_argument("--readme", action="store_true", help="rewrite the README's gpu-plan block instead of printing")
    args = ap.parse_args(argv)
    if args.readme:
        print("README.md " + ("updated" if refresh_readme() else "already up to date"))
    else:
        print(gpu_plan_markdown(), end="")


if __name__ == "__main__":
    main()
