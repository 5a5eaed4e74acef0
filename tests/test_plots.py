"""ercref.study.plots: bounded seed bands, the LM run figures, LivePlot and the run PNG (plot_run)."""
import json
import subprocess
import sys

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from ercref.study import plots as viz


# ----------------------------------------------------------------------------- bounded intervals
def test_three_seed_fraction_interval_leaves_unit_range_unless_clipped():
    fracs = [0.0, 0.02, 0.10]                     # clip fractions of 3 seeds
    m, lo, hi = viz.mean_interval(fracs)          # default: unchanged Student-t interval
    assert m == pytest.approx(0.04) and lo < 0.0  # t_{0.975,2} = 4.303: the band goes below zero
    h = 4.303 * np.std(fracs, ddof=1) / np.sqrt(3)
    assert (lo, hi) == (pytest.approx(m - h), pytest.approx(m + h))
    mc, loc, hic = viz.mean_interval(fracs, bounds=(0, 1))
    assert (mc, loc, hic) == (m, 0.0, hi)         # only the side outside [0, 1] moves; the mean is kept
    acc = [0.9, 1.0, 1.0]
    assert viz.mean_interval(acc)[2] > 1.0 and viz.mean_interval(acc, bounds=viz.UNIT_RANGE)[2] == 1.0
    assert viz.mean_interval(fracs, bounds=(None, 0.05))[1:] == (lo, 0.05)  # one-sided
    assert viz.mean_interval([0.5], bounds=(0, 1)) == (0.5, 0.5, 0.5)
    assert viz.mean_interval(fracs, "range", bounds=(0, 1)) == viz.mean_interval(fracs, "range")
    with pytest.raises(ValueError, match="low < high"):
        viz.mean_interval(fracs, bounds=(1, 0))
    with pytest.raises(ValueError, match="pair"):
        viz.mean_interval(fracs, bounds=0.0)


def test_bounds_for_and_is_fraction():
    for name in ("erc/clip_frac", "ppo_clip_frac", "ppo/clip_frac_low", "reward/accuracy", "eval/avg@4", "eval/pass@8"):
        assert viz.is_fraction(name) and viz.bounds_for(name, "fractions") == (0.0, 1.0)
    for name in ("reward/mean", "entropy/new_mean", "grad/norm", "kl/full_max"):
        assert not viz.is_fraction(name) and viz.bounds_for(name, "fractions") is None
    assert viz.bounds_for("grad/norm", None) is None
    assert viz.bounds_for("grad/norm", (0, None)) == (0.0, float("inf"))
    assert viz.bounds_for("reward/mean", {"reward/mean": (-1, 1)}) == (-1.0, 1.0)
    assert viz.bounds_for("grad/norm", {"reward/mean": (-1, 1)}) is None
    with pytest.raises(ValueError, match="fractions"):
        viz.bounds_for("x", "fraction")


def _steps(n_seeds=3, n_steps=4):
    rng = np.random.default_rng(0)
    rows = []
    for label in ("PPO-clip", "ERC"):
        for seed in range(n_seeds):
            for step in range(1, n_steps + 1):
                rows.append({"label": label, "seed": seed, "step": step,
                             "reward/accuracy": float(rng.choice([0.9, 1.0])), "reward/mean": float(rng.normal()),
                             "erc/clip_frac": float(rng.choice([0.0, 0.0, 0.1])), "entropy/new_mean": 1.0,
                             "grad/norm": float(rng.uniform(0.5, 2)),
                             "ppo/clip_frac_low": float(rng.choice([0.0, 0.05])), "ppo/clip_frac_high": 0.0})
    return pd.DataFrame(rows)


def _band_extent(ax):
    ys = np.concatenate([c.get_paths()[0].vertices[:, 1] for c in ax.collections])
    return ys.min(), ys.max()


def test_comparison_figure_bands_opt_in_to_unit_range():
    df = _steps()
    fig = viz.comparison_figure(df)                       # default: bands as computed
    axes = {a.get_title(): a for a in fig.axes}
    lo, _ = _band_extent(axes["ERC clip fraction"])
    assert lo < 0.0
    plt.close(fig)
    fig = viz.comparison_figure(df, bounds="fractions")
    axes = {a.get_title(): a for a in fig.axes}
    for title in ("ERC clip fraction", "training accuracy", "PPO-clip fraction (low + high)"):
        lo, hi = _band_extent(axes[title])
        assert 0.0 <= lo and hi <= 1.0, title
    assert _band_extent(axes["mean reward"])[0] < 0.0     # not a fraction: untouched
    plt.close(fig)


def test_staleness_figure_with_bounds():
    rows = [{"label": lab, "seed": s, "step": 1, "staleness": k, "erc/clip_frac": v,
             "ppo/clip_frac_low": v, "ppo/clip_frac_high": 0.0}
            for lab in ("ERC",) for s, v in enumerate([0.0, 0.0, 0.09]) for k in (0, 1)]
    fig = viz.staleness_figure(pd.DataFrame(rows), bounds="fractions")
    for ax in fig.axes:
        segs = ax.collections[0].get_segments()             # the error bars
        assert min(seg[:, 1].min() for seg in segs) >= 0.0
    plt.close(fig)


# ----------------------------------------------------------------------------- run log figures
def _write_log(path, steps=3):
    with open(path, "w") as fh:
        for s in range(1, steps + 1):
            fh.write(json.dumps({"kind": "minibatch", "step": s, "staleness": 0, "erc/clip_frac": 0.01}) + "\n")
            fh.write(json.dumps({"kind": "step", "step": s, "reward/mean": 0.1 * s, "reward/accuracy": 0.1 * s,
                                 "entropy/old_mean": 1.0, "entropy/new_mean": 0.9, "grad/norm": 1.5,
                                 "erc/clip_frac": 0.01, "erc/clip_frac_low": 0.0, "erc/clip_frac_high": 0.01,
                                 "ppo/clip_frac_low": 0.0, "ppo/clip_frac_high": 0.02}) + "\n")
        fh.write(json.dumps({"kind": "eval", "step": steps, "eval/avg@4": 0.5, "eval/pass@4": 0.75}) + "\n")
    return path


def test_plot_run_writes_a_png_without_touching_pyplot(tmp_path):
    log = _write_log(tmp_path / "metrics.jsonl")
    backend, figs = matplotlib.get_backend(), plt.get_fignums()
    out = viz.plot_run(log, tmp_path / "plot.png", title="tiny: test")
    assert out == tmp_path / "plot.png" and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert matplotlib.get_backend() == backend and plt.get_fignums() == figs
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.warns(UserWarning, match="no step records"):
        viz.plot_run(empty, tmp_path / "empty.png")


def test_live_plot_figure_reads_the_log(tmp_path):
    live = viz.LivePlot(_write_log(tmp_path / "metrics.jsonl"), every=2, title="run")
    fig = live.figure()
    assert fig._suptitle.get_text() == "run (step 3)"
    assert list(fig.axes[0].lines[0].get_xdata()) == [1, 2, 3]
    plt.close(fig)
    fig = viz.LivePlot(tmp_path / "absent.jsonl").figure()  # before the first step is logged
    assert fig._suptitle.get_text() == "live training (step 0)"
    plt.close(fig)
    live(None, {"step": 1})                                  # not a multiple of every: no redraw
    assert live.redraws == 0


def test_engine_does_not_import_matplotlib():
    code = ("import sys, ercref.lm.metrics_log, ercref.lm.data, ercref.paths; "
            "assert 'matplotlib' not in sys.modules, 'the engine imported matplotlib'")
    subprocess.run([sys.executable, "-c", code], check=True)
