"""Figures of LM runs for notebooks 03-05 (style from ercref.study.plots): per-step curves with seed bands,
clip fractions per minibatch staleness, and a live plot redrawn from a run's JSONL log.

Plotting only: the numbers are the engine's logged metrics.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from ercref.study.plots import PALETTE, mean_interval, metric_panels

STEP_PANELS = [
    ("reward/accuracy", "training accuracy", "fraction correct"),
    ("entropy/new_mean", "token entropy (update forward)", "nats"),
    ("grad/norm", "gradient norm (before clipping)", "L2 norm"),
    ("erc/clip_frac", "ERC clip fraction", "fraction of response tokens"),
    ("ppo_clip_frac", "PPO-clip fraction (low + high)", "fraction of response tokens"),
    ("reward/mean", "mean reward", "reward"),
]


def with_ppo_total(df: pd.DataFrame) -> pd.DataFrame:
    """Add ppo_clip_frac = ppo/clip_frac_low + ppo/clip_frac_high (both sides of PPO-clip)."""
    df = df.copy()
    if "ppo/clip_frac_low" in df and "ppo/clip_frac_high" in df:
        df["ppo_clip_frac"] = df["ppo/clip_frac_low"] + df["ppo/clip_frac_high"]
    return df


def comparison_figure(steps: pd.DataFrame, labels=None, panels=STEP_PANELS, suptitle: str | None = None, ncols: int = 3):
    """Mean over seeds (95% band) per training step, one line per arm."""
    df = with_ppo_total(steps)
    if labels is not None:
        df = df[df["label"].isin(labels)]
    panels = [p for p in panels if p[0] in df.columns and df[p[0]].notna().any()]
    return metric_panels(df, panels, x="step", hue="label", ncols=ncols, suptitle=suptitle)


def staleness_panel(ax, minibatches: pd.DataFrame, metric: str, labels=None, title: str | None = None,
                    ylabel: str = "fraction of response tokens"):
    """Mean of ``metric`` over steps and seeds at each staleness k (95% interval over seeds of the
    per-seed means), one line per arm."""
    df = with_ppo_total(minibatches)
    if labels is not None:
        df = df[df["label"].isin(labels)]
    df = df[df[metric].notna()] if metric in df else df.iloc[0:0]
    names = list(dict.fromkeys(df["label"]))
    colors = sns.color_palette(PALETTE, max(1, len(names)))
    for color, name in zip(colors, names):
        g = df[df["label"] == name]
        per_seed = g.groupby(["staleness", "seed"])[metric].mean().reset_index()
        rows = [(k, *mean_interval(s[metric])) for k, s in per_seed.groupby("staleness")]
        k, m, lo, hi = (np.array(c) for c in zip(*rows))
        ax.errorbar(k, m, yerr=[m - lo, hi - m], marker="o", capsize=4, color=color, label=name)
    ax.set_title(title or metric)
    ax.set_xlabel("staleness k (optimizer steps since the rollout)")
    ax.set_ylabel(ylabel)
    if names:
        ax.set_xticks(sorted(set(int(k) for k in df["staleness"])))
        ax.legend(fontsize=8)
    return ax


def staleness_figure(minibatches: pd.DataFrame, labels=None, suptitle: str | None = None):
    """ERC and PPO-clip fractions against staleness, side by side."""
    fig, ax = plt.subplots(1, 2, figsize=(10, 3.4))
    staleness_panel(ax[0], minibatches, "erc/clip_frac", labels, "ERC clip fraction per staleness")
    staleness_panel(ax[1], minibatches, "ppo_clip_frac", labels, "PPO-clip fraction per staleness")
    if suptitle:
        fig.suptitle(suptitle)
    fig.tight_layout()
    return fig


class LivePlot:
    """``on_step`` callback for ExperimentTrainer: redraws the run's curves from its JSONL log after
    every ``every`` steps into one notebook display (IPython display handle, updated in place)."""

    PANELS = [("reward/mean", "reward"), ("entropy/new_mean", "entropy (nats)"), ("grad/norm", "grad norm"),
              ("erc/clip_frac", "ERC clip fraction")]

    def __init__(self, log_path, every: int = 1, title: str = "live training"):
        if not isinstance(every, int) or every < 1:
            raise ValueError(f"every must be a positive int, got {every!r}")
        self.log_path = Path(log_path)
        self.every = every
        self.title = title
        self.handle = None
        self.redraws = 0

    def figure(self):
        from .metrics_log import read_log

        steps = read_log(self.log_path, "step") if self.log_path.is_file() else []
        fig, axes = plt.subplots(1, len(self.PANELS), figsize=(3.6 * len(self.PANELS), 2.8))
        x = [r["step"] for r in steps]
        for ax, (key, label) in zip(axes, self.PANELS):
            ax.plot(x, [r.get(key, float("nan")) for r in steps], marker="o", ms=3)
            ax.set_title(label)
            ax.set_xlabel("training step")
            ax.set_ylabel(label)
        fig.suptitle(f"{self.title} (step {x[-1] if x else 0})")
        fig.tight_layout()
        return fig

    def __call__(self, trainer, record: dict) -> None:
        if record["step"] % self.every:
            return
        from IPython.display import display

        fig = self.figure()
        if self.handle is None:
            self.handle = display(fig, display_id=True)
        else:
            self.handle.update(fig)
        plt.close(fig)
        self.redraws += 1
