"""Every figure of the series: one plot style, seeds-with-intervals line plots, LM run comparisons
(notebooks 03-05), a live plot of a running trainer, and the PNG summary of one CLI run.

    set_style()                          seaborn whitegrid, colorblind palette
    mean_interval(values, interval, bounds)   (mean, low, high) over seeds
    seed_band_plot / metric_panels       mean over seeds with a band, one line per label
    paired_seed_plot                     per-seed before/after lines with the means
    comparison_figure / staleness_figure LM runs: per-step curves; clip fractions per staleness k
    LivePlot                             ExperimentTrainer callback, redraws from the JSONL log
    plot_run(log_path, png_path)         2 x 2 summary PNG of one run (no pyplot state touched)

Records are what the experiment functions return: a list of flat dicts (one per logged step),
e.g. {"seed": 0, "update": 3, "label": "ERC", "kl/full_max": 0.12, ...}. Curves show the mean
over seeds and a band:

    "ci95"  mean +- t_{0.975, n-1} * sd / sqrt(n)   (Student-t 95% interval of the mean over n seeds)
    "range" [min, max] over seeds
No band is drawn where a single seed exists.

Bounded metrics: with few seeds the symmetric t interval is wide (t_{0.975, 2} = 4.3 at n = 3)
and can leave a metric's valid range, e.g. a band below 0 for a clip fraction. Pass ``bounds``
to clip the band to the range: a (low, high) pair, a {metric: (low, high)} dict, or "fractions"
(every metric for which is_fraction(name) holds -> [0, 1]). The clipping is for display: the band
is the interval intersected with the range. Default None: bands are left as computed. "range"
(min..max over seeds) never leaves the valid range and is an honest alternative for n <= 3.

Plotting only: the numbers are the engine's logged metrics and the experiments' records.
"""
from __future__ import annotations

import math
import os
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

PALETTE = "colorblind"
# two-sided 97.5% quantiles of Student's t, by degrees of freedom (no scipy dependency)
_T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262,
         10: 2.228, 12: 2.179, 15: 2.131, 20: 2.086, 25: 2.060, 30: 2.042, 40: 2.021, 60: 2.000, 120: 1.980}
INTERVALS = ("ci95", "range")
UNIT_RANGE = (0.0, 1.0)
Bounds = tuple | Mapping | str | None  # see the module docstring


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


def is_fraction(metric: str) -> bool:
    """True for metrics that lie in [0, 1] by construction, judged by name: clip fractions
    ("...frac..."), accuracies, avg@k and pass@k."""
    base = str(metric).rsplit("/", 1)[-1]
    return "frac" in base or "accuracy" in base or base.startswith(("avg@", "pass@"))


def _check_range(bounds, what: str = "bounds") -> tuple[float, float]:
    if not (isinstance(bounds, (tuple, list)) and len(bounds) == 2):
        raise ValueError(f"{what} must be a (low, high) pair, got {bounds!r}")
    lo, hi = (-math.inf if bounds[0] is None else float(bounds[0]), math.inf if bounds[1] is None else float(bounds[1]))
    if not lo < hi:
        raise ValueError(f"{what} must have low < high, got {bounds!r}")
    return lo, hi


def bounds_for(metric: str, bounds: Bounds) -> tuple[float, float] | None:
    """The valid range to clip ``metric``'s band to: None (no clipping), a (low, high) pair (every
    metric), a {metric: (low, high)} dict (metrics not in it: None) or "fractions" ([0, 1] where
    is_fraction(metric), else None)."""
    if bounds is None:
        return None
    if isinstance(bounds, str):
        if bounds != "fractions":
            raise ValueError(f"bounds must be None, 'fractions', a (low, high) pair or a dict, got {bounds!r}")
        return UNIT_RANGE if is_fraction(metric) else None
    if isinstance(bounds, Mapping):
        return _check_range(bounds[metric], f"bounds[{metric!r}]") if metric in bounds else None
    return _check_range(bounds)


def mean_interval(values: Iterable[float], interval: str = "ci95",
                  bounds: tuple[float | None, float | None] | None = None) -> tuple[float, float, float]:
    """(mean, low, high) of values over seeds; low = high = mean for a single value.

    ``bounds`` = (low, high), either may be None: clip the interval to the metric's valid range
    (e.g. (0, 1) for a fraction). The mean is not changed. Default: no clipping."""
    if interval not in INTERVALS:
        raise ValueError(f"interval must be one of {INTERVALS}, got {interval!r}")
    rng = None if bounds is None else _check_range(bounds)
    m, lo, hi = _mean_interval(values, interval)
    if rng is not None:
        lo, hi = min(max(lo, rng[0]), rng[1]), max(min(hi, rng[1]), rng[0])
    return m, lo, hi


def _mean_interval(values: Iterable[float], interval: str) -> tuple[float, float, float]:
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
                   interval: str = "ci95", logy: bool = False, legend: bool = True, bounds: Bounds = None):
    """Mean over seeds of ``y`` against ``x`` with a band (see module doc), one line per ``hue``.
    ``bounds``: clip the band to ``y``'s valid range (see module doc; default: no clipping)."""
    df = records if isinstance(records, pd.DataFrame) else to_frame(records)
    if y not in df.columns:
        raise ValueError(f"y={y!r} is not a recorded metric; available: {sorted(df.columns)}")
    rng = bounds_for(y, bounds)
    groups = [(None, df)] if hue is None or hue not in df.columns else list(df.groupby(hue, sort=False))
    colors = sns.color_palette(PALETTE, max(1, len(groups)))
    for color, (name, g) in zip(colors, groups):
        g = g[np.isfinite(g[y].astype(float))]
        if g.empty:
            continue
        rows = [(xv, *mean_interval(gv[y], interval, rng)) for xv, gv in g.groupby(x, sort=True)]
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
                  interval: str = "ci95", panel_size: tuple[float, float] = (4.2, 3.0), bounds: Bounds = None):
    """A grid of :func:`seed_band_plot`. panels: (metric, title, ylabel) or (metric, title, ylabel, logy).
    ``bounds``: see the module doc (e.g. "fractions"). Returns the figure."""
    if len(panels) == 0:
        raise ValueError("panels is empty")
    df = records if isinstance(records, pd.DataFrame) else to_frame(records)
    ncols = min(ncols, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(panel_size[0] * ncols, panel_size[1] * nrows), squeeze=False)
    for i, (ax, spec) in enumerate(zip(axes.flat, panels)):
        key, title, ylabel, *rest = spec
        seed_band_plot(ax, df, key, x=x, hue=hue, title=title, ylabel=ylabel, interval=interval,
                       logy=bool(rest and rest[0]), legend=(i == 0), bounds=bounds)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    if suptitle:
        fig.suptitle(suptitle)
    fig.tight_layout()
    return fig


def paired_seed_plot(ax, before: dict, after: dict, labels: tuple[str, str], title: str, ylabel: str,
                     bounds: tuple[float | None, float | None] | None = None):
    """One line per seed from its value under ``labels[0]`` to its value under ``labels[1]``,
    plus the means with their 95% interval (clipped to ``bounds`` when given).
    before, after: {seed: value} with the same seeds."""
    if set(before) != set(after):
        raise ValueError("before and after must have the same seeds")
    seeds = sorted(before)
    colors = sns.color_palette(PALETTE, 2)
    for s in seeds:
        ax.plot([0, 1], [before[s], after[s]], color="0.6", lw=1, marker="o", ms=4, zorder=1)
    for i, d in enumerate((before, after)):
        m, lo, hi = mean_interval([d[s] for s in seeds], bounds=bounds)
        ax.errorbar([i], [m], yerr=[[m - lo], [hi - m]], color=colors[i], marker="D", ms=8, capsize=6, lw=2, zorder=3)
    ax.set_xticks([0, 1], labels)
    ax.set_xlim(-0.4, 1.4)
    ax.set_title(title)
    ax.set_xlabel(f"{len(seeds)} seeds (grey: one seed; diamond: mean, 95% CI)")
    ax.set_ylabel(ylabel)
    return ax


# ----------------------------------------------------------------------------- LM runs (notebooks 03-05)
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


def comparison_figure(steps: pd.DataFrame, labels=None, panels=STEP_PANELS, suptitle: str | None = None, ncols: int = 3,
                      bounds: Bounds = None):
    """Mean over seeds (95% band) per training step, one line per arm. ``bounds="fractions"``
    keeps the bands of accuracies and clip fractions inside [0, 1] (default: unclipped)."""
    df = with_ppo_total(steps)
    if labels is not None:
        df = df[df["label"].isin(labels)]
    panels = [p for p in panels if p[0] in df.columns and df[p[0]].notna().any()]
    return metric_panels(df, panels, x="step", hue="label", ncols=ncols, suptitle=suptitle, bounds=bounds)


def staleness_panel(ax, minibatches: pd.DataFrame, metric: str, labels=None, title: str | None = None,
                    ylabel: str = "fraction of response tokens", bounds: Bounds = None):
    """Mean of ``metric`` over steps and seeds at each staleness k (95% interval over seeds of the
    per-seed means), one line per arm. ``bounds``: see the module doc (default: unclipped)."""
    df = with_ppo_total(minibatches)
    if labels is not None:
        df = df[df["label"].isin(labels)]
    df = df[df[metric].notna()] if metric in df else df.iloc[0:0]
    rng = bounds_for(metric, bounds)
    names = list(dict.fromkeys(df["label"]))
    colors = sns.color_palette(PALETTE, max(1, len(names)))
    for color, name in zip(colors, names):
        g = df[df["label"] == name]
        per_seed = g.groupby(["staleness", "seed"])[metric].mean().reset_index()
        rows = [(k, *mean_interval(s[metric], bounds=rng)) for k, s in per_seed.groupby("staleness")]
        k, m, lo, hi = (np.array(c) for c in zip(*rows))
        ax.errorbar(k, m, yerr=[m - lo, hi - m], marker="o", capsize=4, color=color, label=name)
    ax.set_title(title or metric)
    ax.set_xlabel("staleness k (optimizer steps since the rollout)")
    ax.set_ylabel(ylabel)
    if names:
        ax.set_xticks(sorted({int(k) for k in df["staleness"]}))
        ax.legend(fontsize=8)
    return ax


def staleness_figure(minibatches: pd.DataFrame, labels=None, suptitle: str | None = None, bounds: Bounds = None):
    """ERC and PPO-clip fractions against staleness, side by side."""
    fig, ax = plt.subplots(1, 2, figsize=(10, 3.4))
    staleness_panel(ax[0], minibatches, "erc/clip_frac", labels, "ERC clip fraction per staleness", bounds=bounds)
    staleness_panel(ax[1], minibatches, "ppo_clip_frac", labels, "PPO-clip fraction per staleness", bounds=bounds)
    if suptitle:
        fig.suptitle(suptitle)
    fig.tight_layout()
    return fig


class LivePlot:
    """A ``fn(trainer, step_record)`` for an on_step callback (``Trainer(..., callbacks=[OnStep(LivePlot(log))])``,
    OnStep from ercref.study.experiments): redraws the run's curves from its JSONL log after every
    ``every`` steps into one notebook display (IPython display handle, updated in place)."""

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
        from ercref.lm.metrics_log import read_log

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


# ----------------------------------------------------------------------------- one CLI run
def plot_run(log_path: str | os.PathLike, png_path: str | os.PathLike, title: str = "") -> Path:
    """2 x 2 panels per training step of one run's JSONL log: reward and accuracy (and the first
    eval/avg@k); old/new entropy; ERC and PPO clip fractions; grad norm. Writes ``png_path`` and
    returns it. Draws on a bare matplotlib Figure (Agg canvas): no pyplot state, no backend change,
    so it is safe from a CLI, a headless server or a notebook."""
    from matplotlib.figure import Figure

    from ercref.lm.metrics_log import read_log

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
