"""Every figure of the series: one plot style, seeds-with-intervals line plots, LM run comparisons
(notebooks 03-05) and a live plot of a running trainer.

    set_style()                          seaborn whitegrid, colorblind palette
    seed_lines                           THE figure style: per-seed thin lines plus the bold mean per label
    heatmap_diff                         stability map: paired ERC - baseline difference per (K, lr) cell
    seed_band_plot / metric_panels       mean over seeds with a band (metric_panels(style="lines"): seed_lines)
    paired_seed_plot                     per-seed before/after lines with the means
    comparison_figure / staleness_figure LM runs: per-step curves; clip fractions per staleness k
    LivePlot                             a function for experiments.OnStep (a Trainer callback): redraws
                                         a running trainer's curves from its JSONL log
The PNG summary of one CLI run is ercref.lm.run_plot.plot_run (matplotlib only).

Records are flat dicts or DataFrame rows (one per logged step), e.g. {"seed": 0, "update": 3,
"label": "ERC", "kl/full_max": 0.12, ...}. Curves show the mean over seeds and a band
(claims.mean_interval):

    "ci95"  mean +- t_{0.975, n-1} * sd / sqrt(n)   (Student-t 95% interval of the mean over n seeds)
    "range" [min, max] over seeds
No band is drawn where a single seed exists.

Bounded metrics: with few seeds the symmetric t interval is wide (t_{0.975, 2} = 4.3 at n = 3)
and can leave a metric's valid range, e.g. a band below 0 for a clip fraction. Pass ``bounds``
to clip the band to the range: a (low, high) pair, a {metric: (low, high)} dict, "fractions"
(every metric for which is_fraction(name) holds -> [0, 1]) or None (no clipping). The clipping is
for display: the band is the interval intersected with the range. Default everywhere: "fractions".
"range" (min..max over seeds) never leaves the valid range and is an honest alternative for n <= 3.

The series' figure style: per-seed thin lines plus the bold mean (seed_lines); a band only on
request and only over >= MIN_BAND_SEEDS seeds; integer ticks on step axes; axes labelled.

Plotting only: the numbers are the engine's logged metrics and the study cache's rows.
"""
from __future__ import annotations

import math
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from .claims import UNIT_RANGE, check_range, mean_interval

PALETTE = "colorblind"
MIN_BAND_SEEDS = 5          # seed_lines draws a 95% band only over at least this many seeds
SEED_ALPHA, SEED_LW, MEAN_LW = 0.3, 0.8, 2.2
AXIS_LABELS = {"step": "RL step (rollout batch)", "update": "update", "sft_step": "SFT step",
               "staleness": "staleness k (optimizer steps since the rollout)"}
Bounds = tuple | Mapping | str | None  # see the module docstring


def set_style() -> None:
    """The series' look: seaborn whitegrid, colorblind palette, readable sizes."""
    sns.set_theme(style="whitegrid", context="notebook", palette=PALETTE)
    plt.rcParams.update({
        "figure.dpi": 90, "savefig.dpi": 120, "axes.titlesize": 11, "axes.titleweight": "bold",
        "axes.labelsize": 10, "legend.fontsize": 9, "figure.titlesize": 13, "figure.titleweight": "bold",
    })


def is_fraction(metric: str) -> bool:
    """True for metrics that lie in [0, 1] by construction, judged by name: clip fractions
    ("...frac..."), accuracies, avg@k and pass@k."""
    base = str(metric).rsplit("/", 1)[-1]
    return "frac" in base or "accuracy" in base or base.startswith(("avg@", "pass@"))


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
        return check_range(bounds[metric], f"bounds[{metric!r}]") if metric in bounds else None
    return check_range(bounds)


def to_frame(records: Sequence[dict]) -> pd.DataFrame:
    if len(records) == 0:
        raise ValueError("records is empty")
    return pd.DataFrame.from_records(list(records))


def seed_band_plot(ax, records: Sequence[dict] | pd.DataFrame, y: str, x: str = "update", hue: str | None = "label",
                   title: str | None = None, ylabel: str | None = None, xlabel: str | None = None,
                   interval: str = "ci95", logy: bool = False, legend: bool = True, bounds: Bounds = "fractions"):
    """Mean over seeds of ``y`` against ``x`` with a band (see module doc), one line per ``hue``.
    ``bounds``: clip the band to ``y``'s valid range (see module doc; default "fractions")."""
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
                  interval: str = "ci95", panel_size: tuple[float, float] = (4.2, 3.0), bounds: Bounds = "fractions",
                  style: str = "band"):
    """A grid of panels: (metric, title, ylabel) or (metric, title, ylabel, logy). ``style``: "band"
    (:func:`seed_band_plot`, mean with a 95% band) or "lines" (:func:`seed_lines`, per-seed lines
    plus the mean). ``bounds``: see the module doc. Returns the figure."""
    if style not in ("band", "lines"):
        raise ValueError(f"style must be 'band' or 'lines', got {style!r}")
    if len(panels) == 0:
        raise ValueError("panels is empty")
    df = records if isinstance(records, pd.DataFrame) else to_frame(records)
    ncols = min(ncols, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(panel_size[0] * ncols, panel_size[1] * nrows), squeeze=False)
    for i, (ax, spec) in enumerate(zip(axes.flat, panels)):
        key, title, ylabel, *rest = spec
        if style == "lines":
            seed_lines(ax, df, key, x=x, hue=hue, bounds=bounds, title=title, ylabel=ylabel,
                       logy=bool(rest and rest[0]), legend=(i == 0))
        else:
            seed_band_plot(ax, df, key, x=x, hue=hue, title=title, ylabel=ylabel, interval=interval,
                           logy=bool(rest and rest[0]), legend=(i == 0), bounds=bounds)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    if suptitle:
        fig.suptitle(suptitle)
    fig.tight_layout()
    return fig


def _integer_ticks(ax, x: str, xs) -> None:
    """Integer ticks on a step-like axis (named step/update/sft_step/staleness, or all-integer values)."""
    from matplotlib.ticker import MaxNLocator

    vals = np.asarray(xs, dtype=float)
    if x in AXIS_LABELS or (vals.size and np.all(np.isfinite(vals)) and np.all(vals == np.round(vals))):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def seed_lines(ax, df: Sequence[dict] | pd.DataFrame, y: str, x: str = "step", hue: str | None = "label",
               bounds: Bounds = "fractions", band: bool = False, title: str | None = None, ylabel: str | None = None,
               xlabel: str | None = None, logy: bool = False, legend: bool = True, colors: Mapping | None = None):
    """The series' figure style: for each ``hue`` value (one colour), one thin line per seed
    (alpha SEED_ALPHA, legend label "_<name> seed <s>", hidden from the legend) and the bold mean over
    seeds at each ``x`` (legend "<name> (n=<seeds>)"). ``band=True`` adds the 95% interval of the mean,
    clipped to ``bounds`` (module doc), only where >= MIN_BAND_SEEDS seeds exist. Integer ticks on
    step-like axes; axes labelled (``xlabel``/``ylabel`` default to AXIS_LABELS / the metric name).
    Rows without a "seed" column count as one seed. ``colors``: {hue value: colour} for the values
    that need a fixed colour (the rest keep the palette's). Returns ax."""
    df = df if isinstance(df, pd.DataFrame) else to_frame(df)
    for name, col in (("y", y), ("x", x)):
        if col not in df.columns:
            raise ValueError(f"{name}={col!r} is not a column; available: {sorted(df.columns)}")
    if "seed" not in df.columns:
        df = df.assign(seed=0)
    # colours follow the hue order of all rows, so an arm keeps its colour in panels where others have no value
    groups = [(None, df)] if hue is None or hue not in df.columns else list(df.groupby(hue, sort=False))
    fixed = colors or {}
    colors = sns.color_palette(PALETTE, max(1, len(groups)))
    rng = bounds_for(y, bounds)
    for color, (name, g) in zip(colors, groups):
        color = fixed.get(name, color)
        g = g[np.isfinite(g[y].astype(float))]
        if g.empty:
            continue
        for s, gs in g.groupby("seed", sort=True):
            gs = gs.groupby(x, sort=True)[y].mean()
            ax.plot(gs.index, gs.values, color=color, lw=SEED_LW, alpha=SEED_ALPHA, label=f"_{name} seed {s}")
        per_x = g.groupby([x, "seed"])[y].mean().groupby(level=0)
        n_seeds = int(g["seed"].nunique())
        mean = per_x.mean()
        ax.plot(mean.index, mean.values, color=color, lw=MEAN_LW,
                label=f"{'mean' if name is None else name} (n={n_seeds})")
        if band and n_seeds >= MIN_BAND_SEEDS:
            iv = np.array([mean_interval(v, "ci95", rng) for _, v in per_x])
            ax.fill_between(mean.index, iv[:, 1], iv[:, 2], color=color, alpha=0.18, lw=0)
    if logy:
        ax.set_yscale("log")
    _integer_ticks(ax, x, df[x][np.isfinite(df[y].astype(float))])
    ax.set_title(title or y)
    ax.set_xlabel(xlabel or AXIS_LABELS.get(x, x))
    ax.set_ylabel(ylabel or y)
    if legend and ax.get_legend_handles_labels()[0]:
        ax.legend(frameon=True)
    return ax


VERDICT_MARKS = {"reproduced": "reproduced", "contradicted": "contradicted", "inconclusive": "inconclusive"}


def heatmap_diff(ax, table, row: str = "K", col: str = "lr", min_seeds: int = MIN_BAND_SEEDS,
                 title: str = "ERC - DAPO", cbar_label: str = "mean paired difference ERC - DAPO",
                 row_label: str = "optimizer steps per rollout batch K", col_label: str = "learning rate",
                 digits: int = 2):
    """The stability map: one cell per (``row``, ``col``) (rows: K, cols: learning rate), coloured by
    the mean paired difference (diverging colormap centred at 0, symmetric limits), with
    "mean / [low, high] / verdict" written in each cell. Cells with fewer than ``min_seeds`` seeds are
    left blank with "n=<seeds>" in grey and a note under the axes; a cell with enough seeds but no mean
    (NaN) and a ``verdict`` text (a reason it has no verdict, e.g. "not a test (identical by
    construction)") is left blank with that text, counted in the note by reason.

    ``table``: a DataFrame with columns row, col, mean, low, high, n (and optionally verdict), one line
    per cell, or a {(row value, col value): claims.Verdict} dict. Returns the AxesImage."""
    from matplotlib.colors import TwoSlopeNorm

    if isinstance(table, Mapping):
        table = pd.DataFrame([{row: r, col: c, "mean": v.mean, "low": v.low, "high": v.high, "n": v.n,
                               "verdict": v.label} for (r, c), v in table.items()])
    need = [row, col, "mean", "low", "high", "n"]
    missing = [c for c in need if c not in table.columns]
    if missing:
        raise ValueError(f"table lacks columns {missing}; it needs {need} (and optionally 'verdict')")
    if table.duplicated([row, col]).any():
        raise ValueError(f"table has more than one line for some ({row}, {col}) cell; aggregate seeds first")
    rows, cols = sorted(table[row].unique()), sorted(table[col].unique())
    grid = np.full((len(rows), len(cols)), np.nan)
    recs = table.to_dict("records")
    for r in recs:
        if r["n"] >= min_seeds and math.isfinite(r["mean"]):
            grid[rows.index(r[row]), cols.index(r[col])] = r["mean"]
    lim = float(np.nanmax(np.abs(grid))) if np.isfinite(grid).any() else 1.0
    lim = lim if lim > 0 else 1.0
    cmap = plt.get_cmap("RdBu_r").with_extremes(bad="white")
    im = ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, norm=TwoSlopeNorm(vcenter=0.0, vmin=-lim, vmax=lim),
                   aspect="auto", origin="lower")
    n_blank, reasons = 0, {}
    for r in recs:
        i, j = rows.index(r[row]), cols.index(r[col])
        if np.isnan(grid[i, j]):
            reason = r.get("verdict") if r["n"] >= min_seeds and isinstance(r.get("verdict"), str) else None
            if reason:                      # enough seeds, but no verdict: the reason (e.g. identical by construction)
                reasons[reason] = reasons.get(reason, 0) + 1
                ax.text(j, i, textwrap.fill(reason, 16), ha="center", va="center", fontsize=6, color="0.4")
            else:
                n_blank += 1
                ax.text(j, i, f"n={int(r['n'])}", ha="center", va="center", fontsize=8, color="0.5")
            continue
        m, lo, hi = (r[c] + 0.0 for c in ("mean", "low", "high"))          # + 0.0: no "-0"
        txt = f"{m:+.{digits}g}\n[{lo:.{digits}g}, {hi:.{digits}g}]"
        if "verdict" in r and isinstance(r["verdict"], str):
            txt += "\n" + VERDICT_MARKS.get(r["verdict"], r["verdict"])
        dark = abs(r["mean"]) > 0.6 * lim
        ax.text(j, i, txt, ha="center", va="center", fontsize=7, color="white" if dark else "black")
    ax.set_xticks(range(len(cols)), [f"{c:g}" if isinstance(c, (int, float)) else str(c) for c in cols])
    ax.set_yticks(range(len(rows)), [str(r) for r in rows])
    ax.set_xlabel(col_label)
    ax.set_ylabel(row_label)
    ax.set_title(title)
    ax.grid(False)
    ax.figure.colorbar(im, ax=ax, label=cbar_label)
    notes = [f"blank: {n_blank} cell(s) with fewer than {min_seeds} seeds (no interval shown)"] if n_blank else []
    notes += [f"blank: {n} cell(s) {reason}" for reason, n in reasons.items()]
    if notes:
        ax.annotate("\n".join(notes), xy=(0, -0.3), xycoords="axes fraction", fontsize=8, color="0.4", va="top")
    return im


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


def _same_column(df: pd.DataFrame, a: str, b: str) -> bool:
    """True when columns a and b hold the same values (e.g. reward/mean = reward/accuracy for a 0/1
    reward): the later panel would duplicate the earlier one."""
    return bool(np.allclose(df[a].to_numpy(float), df[b].to_numpy(float), equal_nan=True))


def comparison_figure(steps: pd.DataFrame, labels=None, panels=STEP_PANELS, suptitle: str | None = None, ncols: int = 3,
                      bounds: Bounds = "fractions", style: str = "lines"):
    """Per training step, one colour per arm: per-seed thin lines plus the bold mean (``style="lines"``,
    the default) or the mean with a 95% band (``style="band"``, clipped to ``bounds``). A panel whose
    metric equals an earlier panel's in every row (reward/mean of a 0/1 reward) is left out."""
    df = with_ppo_total(steps)
    if labels is not None:
        df = df[df["label"].isin(labels)]
    panels = [p for p in panels if p[0] in df.columns and df[p[0]].notna().any()]
    keys = [p[0] for p in panels]
    panels = [p for i, p in enumerate(panels) if not any(_same_column(df, p[0], k) for k in keys[:i])]
    return metric_panels(df, panels, x="step", hue="label", ncols=ncols, suptitle=suptitle, bounds=bounds, style=style)


def staleness_panel(ax, minibatches: pd.DataFrame, metric: str, labels=None, title: str | None = None,
                    ylabel: str = "fraction of response tokens", bounds: Bounds = "fractions"):
    """Mean of ``metric`` over steps and seeds at each staleness k (95% interval over seeds of the
    per-seed means, clipped to ``bounds``), one line per arm, with each seed's mean as a faint dot."""
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
        ax.plot(per_seed["staleness"], per_seed[metric], "o", color=color, alpha=SEED_ALPHA, ms=3, label=f"_{name} seeds")
    ax.set_title(title or metric)
    ax.set_xlabel("staleness k (optimizer steps since the rollout)")
    ax.set_ylabel(ylabel)
    if names:
        ax.set_xticks(sorted({int(k) for k in df["staleness"]}))
        ax.legend(fontsize=8)
    return ax


def staleness_figure(minibatches: pd.DataFrame, labels=None, suptitle: str | None = None, bounds: Bounds = "fractions"):
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
