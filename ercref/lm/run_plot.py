"""The PNG summary of one training run (``python -m ercref.train`` with train.plot on): matplotlib
only, on a bare Figure (Agg canvas), so it needs no pyplot state, display or notebook package.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path

from matplotlib.figure import Figure

from .metrics_log import read_log


def plot_run(log_path: str | os.PathLike, png_path: str | os.PathLike, title: str = "") -> Path:
    """2 x 2 panels per training step of one run's JSONL log: reward and accuracy (and the first
    eval/avg@k); old/new entropy; ERC and PPO clip fractions; grad norm. Writes ``png_path`` and
    returns it. Draws on a bare matplotlib Figure (Agg canvas): no pyplot state, no backend change,
    so it is safe from a CLI, a headless server or a notebook."""
    steps = read_log(log_path, "step")
    evals = read_log(log_path, "eval")
    if not steps:
        warnings.warn(f"no step records in {log_path}; nothing to plot", stacklevel=2)
    x = [r["step"] for r in steps]

    def col(name):
        return [r.get(name, float("nan")) for r in steps]

    fig = Figure(figsize=(10, 7))
    ax = fig.subplots(2, 2)
    a = ax[0, 0]
    a.plot(x, col("reward/mean"), label="reward/mean")
    a.plot(x, col("reward/accuracy"), label="reward/accuracy")
    if evals:
        ks = sorted({k for e in evals for k in e if k.startswith("eval/avg@")})  # a resumed run may change k
        for k in ks:
            pts = [(e["step"], e[k]) for e in evals if k in e]
            a.plot([p[0] for p in pts], [p[1] for p in pts], "o--", label=k)
    a.set_title("reward")
    a.legend(fontsize=8)
    a = ax[0, 1]
    a.plot(x, col("entropy/old_mean"), label="entropy/old_mean")
    a.plot(x, col("entropy/new_mean"), label="entropy/new_mean")
    a.set_title("token entropy (nats)")
    a.legend(fontsize=8)
    a = ax[1, 0]
    for name in ("erc/clip_frac_low", "erc/clip_frac_high", "ppo/clip_frac_low", "ppo/clip_frac_high"):
        a.plot(x, col(name), label=name)
    a.set_title("clip fractions (of response tokens)")
    a.legend(fontsize=8)
    a = ax[1, 1]
    a.plot(x, col("grad/norm"), label="grad/norm")
    a.set_title("grad norm (before clipping)")
    a.legend(fontsize=8)
    for a in ax.flat:
        a.set_xlabel("step")
    fig.suptitle(title)
    fig.tight_layout()
    png_path = Path(png_path)
    fig.savefig(png_path, dpi=90)
    return png_path
