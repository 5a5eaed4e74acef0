"""One plot style for every notebook, and seeds-with-intervals line plots.

Records are what the experiment functions return: a list of flat dicts (one per logged step),
e.g. {"seed": 0, "update": 3, "label": "ERC", "kl/full_max": 0.12, ...}. Curves show the mean
over seeds and a band:

    "ci95"  mean +- t_{0.975, n-1} * sd / sqrt(n)   (Student-t 95% interval of the mean over n seeds)
    "range" [min, max] over seeds
No band is drawn where a single seed exists.
"""
from __future__ import annotations

import math
from typing import Iterable, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

PALETTE = "colorblind"
# two-sided 97.5% quantiles of Student's t, by degrees of freedom (no scipy dependency)
_T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262,
         10: 2.228, 12: 2.179, 15: 2.131, 20: 2.086, 25: 2.060, 30: 2.042, 40: 2.021, 60: 2.000, 120: 1.980}
INTERVALS = ("ci95", "range")


def set_style() -> None:
    """The series' look: seaborn whitegrid, colorblind palette, readable sizes."""
    sns.set_theme(style="whitegrid", context="notebook", palette=PALETTE)
    plt.rcParams.update({
        "figure.dpi": 90, "savefig.dpi": 120, "axes.titlesize": 11, "axes.titleweight": "bold",
        "axes.labelsize": 10, "legend.fontsize": 9, "figure.titlesize": 13, "figure.titleweight": "bold",
    })


def t_quantile_975(dof: int) -> float:
    """Upper 97.5% quantile of Student's t with ``dof`` degrees of freedom (table, conservative
    between entries: the value of the next smaller tabulated dof)."""
    if not isinstance(dof, int) or dof < 1:
        raise ValueError(f"dof must be a positive int, got {dof!r}")
    keys = [k for k in _T975 if k <= dof]
    return _T975[max(keys)] if dof <= 120 else 1.960


def mean_interval(values: Iterable[float], interval: str = "ci95") -> tuple[float, float, float]:
    """(mean, low, high) of values over seeds; low = high = mean for a single value."""
    if interval not in INTERVALS:
        raise ValueError(f"interval must be one of {INTERVALS}, got {interval!r}")
    v = np.asarray(list(values), dtype=float)
    v = v[np.isfinite(v)]
    if v.size == 0:
        raise ValueError("values contains no finite number")
    m = float(v.mean())
    if v.size == 1:
        return m, m, m
    if interval == "range":
        return m, float(v.min()), float(v.max())
    h = t_quantile_975(int(v.size - 1)) * float(v.std(ddof=1)) / math.sqrt(v.size)
    return m, m - h, m + h


def to_frame(records: Sequence[dict]) -> pd.DataFrame:
    if len(records) == 0:
        raise ValueError("records is empty")
    return pd.DataFrame.from_records(list(records))


def seed_band_plot(ax, records: Sequence[dict] | pd.DataFrame, y: str, x: str = "update", hue: str | None = "label",
                   title: str | None = None, ylabel: str | None = None, xlabel: str | None = None,
                   interval: str = "ci95", logy: bool = False, legend: bool = True):
    """Mean over seeds of ``y`` against ``x`` with a band (see module doc), one line per ``hue``."""
    df = records if isinstance(records, pd.DataFrame) else to_frame(records)
    if y not in df.columns:
        raise ValueError(f"y={y!r} is not a recorded metric; available: {sorted(df.columns)}")
    groups = [(None, df)] if hue is None or hue not in df.columns else list(df.groupby(hue, sort=False))
    colors = sns.color_palette(PALETTE, max(1, len(groups)))
    for color, (name, g) in zip(colors, groups):
        g = g[np.isfinite(g[y].astype(float))]
        if g.empty:
            continue
        rows = [(xv, *mean_interval(gv[y], interval)) for xv, gv in g.groupby(x, sort=True)]
        xs, m, lo, hi = (np.array(c) for c in zip(*rows))
        if logy:  # a symmetric interval can cross zero; on a log axis bound it by the smallest observed value
            positive = g[y][g[y] > 0]
            lo = np.maximum(lo, float(positive.min()) if len(positive) else 1e-12)
        n_seeds = g["seed"].nunique() if "seed" in g.columns else 1
        lab = None if name is None else f"{name} (n={n_seeds})"
        ax.plot(xs, m, color=color, label=lab, lw=1.8)
        if n_seeds > 1:
            ax.fill_between(xs, lo, hi, color=color, alpha=0.22, lw=0)
    if logy:
        ax.set_yscale("log")
    ax.set_title(title or y)
    ax.set_xlabel(xlabel or x)
    ax.set_ylabel(ylabel or y)
    if legend and hue is not None and ax.get_legend_handles_labels()[0]:
        ax.legend(frameon=True)
    return ax


def metric_panels(records: Sequence[dict] | pd.DataFrame, panels: Sequence[tuple], x: str = "update",
                  hue: str | None = "label", ncols: int = 3, suptitle: str | None = None,
                  interval: str = "ci95", panel_size: tuple[float, float] = (4.2, 3.0)):
    """A grid of :func:`seed_band_plot`. panels: (metric, title, ylabel) or (metric, title, ylabel, logy).
    Returns the figure."""
    if len(panels) == 0:
        raise ValueError("panels is empty")
    df = records if isinstance(records, pd.DataFrame) else to_frame(records)
    ncols = min(ncols, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(panel_size[0] * ncols, panel_size[1] * nrows), squeeze=False)
    for i, (ax, spec) in enumerate(zip(axes.flat, panels)):
        key, title, ylabel, *rest = spec
        seed_band_plot(ax, df, key, x=x, hue=hue, title=title, ylabel=ylabel, interval=interval,
                       logy=bool(rest and rest[0]), legend=(i == 0))
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    if suptitle:
        fig.suptitle(suptitle)
    fig.tight_layout()
    return fig


def paired_seed_plot(ax, before: dict, after: dict, labels: tuple[str, str], title: str, ylabel: str):
    """One line per seed from its value under ``labels[0]`` to its value under ``labels[1]``,
    plus the means with their 95% interval. before, after: {seed: value} with the same seeds."""
    if set(before) != set(after):
        raise ValueError("before and after must have the same seeds")
    seeds = sorted(before)
    colors = sns.color_palette(PALETTE, 2)
    for s in seeds:
        ax.plot([0, 1], [before[s], after[s]], color="0.6", lw=1, marker="o", ms=4, zorder=1)
    for i, d in enumerate((before, after)):
        m, lo, hi = mean_interval([d[s] for s in seeds])
        ax.errorbar([i], [m], yerr=[[m - lo], [hi - m]], color=colors[i], marker="D", ms=8, capsize=6, lw=2, zorder=3)
    ax.set_xticks([0, 1], labels)
    ax.set_xlim(-0.4, 1.4)
    ax.set_title(title)
    ax.set_xlabel(f"{len(seeds)} seeds (grey: one seed; diamond: mean, 95% CI)")
    ax.set_ylabel(ylabel)
    return ax
