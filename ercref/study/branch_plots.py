"""Figures of a branching study (matplotlib only, no pyplot state: each figure is a Figure object
saved to a PNG), drawn from ercref.study.branch_report's frames:

    ecdf_from_hist(counts)             the empirical CDF of per-token KL(pi_old || pi_new) from the
                                       records' fixed log-bin counts (branch_records.HIST_EDGES)
    ecdf_figure                        per arm, that ECDF on trained tokens and on held-out contexts,
                                       one panel per (region, K), log x (drawn through the bin edges:
                                       between two edges the line interpolates)
    forest_figure                      the paired differences with their 95 % t intervals (and the cluster
                                       bootstrap's), primaries first and marked, symmetric-log x
    drift_vs_k_figure                  held-out p99 KL against K per arm (mean over trajectories, 95 % t
                                       interval), log x and y
    branch_figures(df, pt, et, paths)  all three, to the paths of branch_report.figure_paths
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from .branch_records import HIST_BINS, HIST_EDGES, HIST_REGIONS, column
from .claims import mean_interval

KL_LABEL = "per-token KL(pi_old || pi_new), nats"
DRIFT_METRIC = ("heldout", "drift/kl_old_new/p99")
FOREST_LABEL = "held-out p99 KL(old||new)"        # the exploratory rows the forest plot shows
METRIC_NAMES = {"drift/kl_old_new/p99": "p99 of per-token KL(pi_old || pi_new)",
                "drift/kl_old_new/mean": "mean per-token KL(pi_old || pi_new)"}


def ecdf_from_hist(counts) -> tuple[np.ndarray, np.ndarray]:
    """(x, F): x the right edges of the HIST_BINS bins [e_i, e_i+1) (the overflow bin's is +inf), F the
    share of tokens below each, non-decreasing and ending at exactly 1. ValueError unless ``counts`` is
    HIST_BINS non-negative finite numbers with a positive sum."""
    c = np.asarray(counts, dtype=float)
    if c.shape != (HIST_BINS,) or not np.isfinite(c).all() or (c < 0).any() or c.sum() <= 0:
        raise ValueError(f"counts must be {HIST_BINS} non-negative finite numbers with a positive sum (the bins of "
                         f"branch_records.HIST_EDGES and the overflow bin), got shape {c.shape}, sum {c.sum()!r}")
    x = np.append(HIST_EDGES[1:], np.inf)
    f = np.cumsum(c) / c.sum()
    f[-1] = 1.0
    return x, f


def _arms(df: pd.DataFrame) -> list[str]:
    """The arms in the study definition's order (load_branch's attrs), then any other in the cache."""
    present = set(df["arm"])
    order = [*(df.attrs.get("definition", {}).get("arms") or {}), *sorted(present)]
    return [a for a in dict.fromkeys(order) if a in present]


def _colors(arms) -> dict[str, tuple]:
    from matplotlib import colormaps

    cmap = colormaps["tab20"]
    order = [*range(0, 20, 2), *range(1, 20, 2)]     # tab20's ten strong colours first, then their light pairs
    return {a: cmap(order[i % 20]) for i, a in enumerate(arms)}


def ecdf_figure(df: pd.DataFrame) -> Figure:
    """Rows: trained tokens, held-out contexts; columns: K. One ECDF per arm from its records' summed
    hist counts (every trajectory and branch point at that K)."""
    ks = sorted(int(k) for k in set(df["K"]))
    arms, colors = _arms(df), _colors(_arms(df))
    fig = Figure(figsize=(max(7.5, 3.6 * len(ks) + 2.5), 6.4), layout="constrained")
    axes = fig.subplots(len(HIST_REGIONS), len(ks), squeeze=False, sharex=True, sharey=True)
    for i, region in enumerate(HIST_REGIONS):
        for j, k in enumerate(ks):
            ax = axes[i][j]
            for arm in arms:
                hs = [h for h in df.loc[(df["arm"] == arm) & (df["K"] == k), f"hist/{region}"] if h is not None]
                if not hs or np.sum(hs) <= 0:
                    continue
                x, f = ecdf_from_hist(np.sum(hs, axis=0))
                ax.plot(x[:-1], f[:-1], color=colors[arm], label=arm, lw=1.4)   # the ogive through the bin edges
            ax.set_xscale("log")
            ax.set_xlim(1e-8, 1e2)
            ax.set_ylim(0, 1.01)
            ax.set_title(f"{'trained tokens' if region == 'trained' else 'held-out contexts'}, K={k}", fontsize=10)
            ax.set_xlabel(KL_LABEL)
            ax.set_ylabel("share of tokens with KL < x")
            ax.grid(alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="outside right center", fontsize=8)
    fig.suptitle("How far each token's distribution moved in one K-minibatch update", fontsize=11)
    return fig


def forest_figure(pt: pd.DataFrame, et: pd.DataFrame) -> Figure:
    """Primaries (marked, on top), then the exploratory FOREST_LABEL rows per pair and K: the mean of
    the per-trajectory differences with its 95 % t interval (thick) and cluster bootstrap (thin, just below), each
    as a percentage of the baseline's mean (base_mean), so comparisons at different K share one axis."""
    rows = [(f"{r.id} (primary): {r.arm} - {r.baseline}, {r.region} {r.metric.split('/', 1)[-1]}, K {r.K}", r, True)
            for r in pt.itertuples()]
    if not et.empty:
        rows += [(f"{r.arm} - {r.baseline}, {r.region} p99, K={r.K}", r, False)
                 for r in et[et["label"] == FOREST_LABEL].itertuples()]
    fig = Figure(figsize=(11, 1.6 + 0.3 * max(1, len(rows))), layout="constrained")
    ax = fig.subplots()
    for y, (_, r, prim) in enumerate(rows):
        scale = 100.0 / r.base_mean if math.isfinite(r.base_mean) and r.base_mean != 0 else math.nan
        color = "C3" if prim else "C0"
        if math.isfinite(r.low) and math.isfinite(scale):
            ax.plot([scale * r.boot_low, scale * r.boot_high], [y + 0.25, y + 0.25], color=color, lw=1.0,
                    alpha=0.8)                                  # just below the t interval, so both show
            ax.plot([scale * r.low, scale * r.high], [y, y], color=color, lw=3.0, solid_capstyle="butt")
        if math.isfinite(r.mean) and math.isfinite(scale):
            ax.plot([scale * r.mean], [y], marker="D" if prim else "o", color=color, ms=7 if prim else 4)
    ax.axvline(0, color="k", lw=0.8)
    ax.set_yticks(range(len(rows)), [t for t, _, _ in rows], fontsize=8)
    for tick, (_, _, prim) in zip(ax.get_yticklabels(), rows):
        tick.set_fontweight("bold" if prim else "normal")
    ax.set_ylim(len(rows) - 0.5, -0.5)
    ax.set_xlabel("arm - baseline, % of the baseline's mean")
    ax.set_ylabel("comparison (primaries in red, on top)")
    ax.set_title("Paired differences from identical states, one mean per trajectory:\n95 % t interval (thick), "
                 "cluster bootstrap (thin, below it)", fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    return fig


def drift_vs_k_figure(df: pd.DataFrame, region: str = DRIFT_METRIC[0], metric: str = DRIFT_METRIC[1]) -> Figure:
    """Per arm: the mean over trajectories of the per-trajectory mean of ``metric`` in ``region``
    against K, with the 95 % t interval over trajectories."""
    col = column(region, metric)
    arms, colors = _arms(df), _colors(_arms(df))
    fig = Figure(figsize=(8.5, 5.0), layout="constrained")
    ax = fig.subplots()
    ks = sorted(int(k) for k in set(df["K"]))
    for i, arm in enumerate(arms):
        sub = df[(df["arm"] == arm)].dropna(subset=[col]) if col in df.columns else df.iloc[0:0]
        pts = []
        for k, g in sub.groupby("K"):
            per_traj = g.groupby("seed")[col].mean()
            per_traj = per_traj[np.isfinite(per_traj)]
            if len(per_traj):
                pts.append((int(k), *mean_interval(per_traj.tolist())))
        if not pts:
            continue
        k, m, lo, hi = (np.array(v, dtype=float) for v in zip(*pts))
        k = k * 1.03 ** (i - (len(arms) - 1) / 2)          # a small offset per arm: the bars do not overlap
        ax.errorbar(k, m, yerr=[m - lo, hi - m], color=colors[arm], marker="o", ms=4, capsize=3, label=arm)
    ax.set_xscale("log", base=2)
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.minorticks_off()
    ax.set_yscale("log")
    where = {"heldout": "held-out contexts", "trained": "trained tokens", "other": "other minibatches"}.get(region, region)
    ax.set_xlabel("K (optimizer steps per rollout batch), log scale")
    ax.set_ylabel(f"{METRIC_NAMES.get(metric, metric)} on {where}\n(nats, log scale)")
    ax.set_title("Drift against K (mean over trajectories of the per-trajectory mean, 95 % t interval)", fontsize=10)
    ax.grid(alpha=0.3, which="both")
    if ax.get_legend_handles_labels()[0]:
        fig.legend(*ax.get_legend_handles_labels(), fontsize=8, loc="outside right upper")
    return fig


def branch_figures(df: pd.DataFrame, pt: pd.DataFrame, et: pd.DataFrame, paths: dict[str, Path]) -> list[Path]:
    """Draw the three figures to ``paths`` ({"ecdf", "forest", "drift_vs_k"}: path); returns the paths written."""
    out = []
    for kind, fig in (("ecdf", ecdf_figure(df)), ("forest", forest_figure(pt, et)), ("drift_vs_k", drift_vs_k_figure(df))):
        path = Path(paths[kind])
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110)
        out.append(path)
    return out
