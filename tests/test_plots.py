"""ercref.study.plots (bounded seed bands, the LM run figures, LivePlot), claims.mean_interval's bounds, and
the run PNG (ercref.lm.run_plot.plot_run)."""
import json
import subprocess
import sys

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from ercref.lm.run_plot import plot_run
from ercref.study import claims
from ercref.study import plots as viz


# ----------------------------------------------------------------------------- bounded intervals
def test_three_seed_fraction_interval_leaves_unit_range_unless_clipped():
    fracs = [0.0, 0.02, 0.10]                     # clip fractions of 3 seeds
    m, lo, hi = claims.mean_interval(fracs)          # default: unchanged Student-t interval
    assert m == pytest.approx(0.04) and lo < 0.0  # t_{0.975,2} = 4.303: the band goes below zero
    h = claims.t_quantile(0.975, 2) * np.std(fracs, ddof=1) / np.sqrt(3)   # 4.3027
    assert (lo, hi) == (pytest.approx(m - h), pytest.approx(m + h))
    mc, loc, hic = claims.mean_interval(fracs, bounds=(0, 1))
    assert (mc, loc, hic) == (m, 0.0, hi)         # only the side outside [0, 1] moves; the mean is kept
    acc = [0.9, 1.0, 1.0]
    assert claims.mean_interval(acc)[2] > 1.0 and claims.mean_interval(acc, bounds=claims.UNIT_RANGE)[2] == 1.0
    assert claims.mean_interval(fracs, bounds=(None, 0.05))[1:] == (lo, 0.05)  # one-sided
    assert claims.mean_interval([0.5], bounds=(0, 1)) == (0.5, 0.5, 0.5)
    assert claims.mean_interval(fracs, "range", bounds=(0, 1)) == claims.mean_interval(fracs, "range")
    with pytest.raises(ValueError, match="low < high"):
        claims.mean_interval(fracs, bounds=(1, 0))
    with pytest.raises(ValueError, match="pair"):
        claims.mean_interval(fracs, bounds=0.0)


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


def test_comparison_figure_draws_seed_lines_by_default():
    df = _steps()
    fig = viz.comparison_figure(df)
    ax = {a.get_title(): a for a in fig.axes}["ERC clip fraction"]
    assert len(ax.collections) == 0                                   # no t-band over 3 seeds
    assert len(ax.lines) == 2 * (3 + 1)                                # per arm: 3 seed lines + the mean
    plt.close(fig)


def test_comparison_figure_keeps_arm_colours_and_drops_duplicate_panels():
    df = _steps()
    df.loc[df["label"] == "PPO-clip", "erc/clip_frac"] = np.nan          # the non-ERC arm logs no ERC fraction
    df["reward/mean"] = df["reward/accuracy"]                            # a 0/1 reward: the same curve twice
    fig = viz.comparison_figure(df)
    axes = {a.get_title(): a for a in fig.axes if a.get_visible()}
    assert "mean reward" not in axes and "training accuracy" in axes

    def mean_colour(ax, label):
        return next(ln.get_color() for ln in ax.lines if ln.get_label().startswith(label + " (n="))

    assert mean_colour(axes["ERC clip fraction"], "ERC") == mean_colour(axes["gradient norm (before clipping)"], "ERC")
    assert not any(ln.get_label().startswith("PPO-clip") for ln in axes["ERC clip fraction"].lines)
    plt.close(fig)


def test_band_style_clips_fractions_by_default():
    df = _steps()
    fig = viz.comparison_figure(df, style="band", bounds=None)         # unclipped: the t band leaves [0, 1]
    axes = {a.get_title(): a for a in fig.axes}
    assert _band_extent(axes["ERC clip fraction"])[0] < 0.0
    plt.close(fig)
    fig = viz.comparison_figure(df, style="band")                      # default bounds="fractions"
    axes = {a.get_title(): a for a in fig.axes}
    for title in ("ERC clip fraction", "training accuracy", "PPO-clip fraction (low + high)"):
        lo, hi = _band_extent(axes[title])
        assert 0.0 <= lo and hi <= 1.0, title
    assert _band_extent(axes["mean reward"])[0] < 0.0     # not a fraction: untouched
    plt.close(fig)
    with pytest.raises(ValueError, match="style"):
        viz.metric_panels(df, [("grad/norm", "g", "g")], style="bands")


# ----------------------------------------------------------------------------- seed_lines
def _seed_frame(n_seeds, labels=("DAPO", "DAPO+ERC"), n_steps=6, y="erc/clip_frac"):
    rng = np.random.default_rng(1)
    return pd.DataFrame([{"label": lab, "seed": s, "step": t, y: float(rng.choice([0.0, 0.0, 0.02, 0.3]))}
                         for lab in labels for s in range(n_seeds) for t in range(1, n_steps + 1)])


def test_seed_lines_draws_one_thin_line_per_seed_and_a_bold_mean():
    df = _seed_frame(3)
    fig, ax = plt.subplots()
    viz.seed_lines(ax, df, "erc/clip_frac", ylabel="fraction of response tokens")
    thin = [ln for ln in ax.lines if ln.get_label().startswith("_")]
    bold = [ln for ln in ax.lines if not ln.get_label().startswith("_")]
    assert len(thin) == 6 and len(bold) == 2                           # 2 labels x 3 seeds; 2 means
    assert [ln.get_label() for ln in bold] == ["DAPO (n=3)", "DAPO+ERC (n=3)"]
    assert all(ln.get_alpha() == viz.SEED_ALPHA for ln in thin) and all(ln.get_linewidth() > 2 for ln in bold)
    mean = df[df.label == "DAPO"].groupby("step")["erc/clip_frac"].mean().to_numpy()
    assert np.allclose(bold[0].get_ydata(), mean)
    assert len(ax.collections) == 0                                    # no band unless asked
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["DAPO (n=3)", "DAPO+ERC (n=3)"]
    assert ax.get_xlabel() == "RL step (rollout batch)" and ax.get_ylabel() == "fraction of response tokens"
    ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
    assert ticks and all(float(t).is_integer() for t in ticks)         # no step 1.5
    plt.close(fig)


def test_seed_lines_integer_ticks_on_a_short_run():
    df = pd.DataFrame([{"label": "a", "seed": 0, "step": t, "grad/norm": 1.0 + t} for t in (1, 2, 3)])
    fig, ax = plt.subplots()
    viz.seed_lines(ax, df, "grad/norm")
    ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
    assert ticks and all(float(t).is_integer() for t in ticks)
    plt.close(fig)


def test_seed_lines_band_needs_five_seeds_and_stays_in_unit_range():
    fig, ax = plt.subplots()
    viz.seed_lines(ax, _seed_frame(3), "erc/clip_frac", band=True)     # 3 seeds: band refused
    assert len(ax.collections) == 0
    plt.close(fig)
    fig, ax = plt.subplots()
    df = _seed_frame(5)
    viz.seed_lines(ax, df, "erc/clip_frac", band=True)
    assert len(ax.collections) == 2
    lo, hi = _band_extent(ax)
    assert lo >= 0.0 and hi <= 1.0                                     # clipped for a fraction
    plt.close(fig)
    fig, ax = plt.subplots()
    viz.seed_lines(ax, df, "erc/clip_frac", band=True, bounds=None)    # unclipped t band dips below 0
    assert _band_extent(ax)[0] < 0.0
    plt.close(fig)
    with pytest.raises(ValueError, match="y='nope'"):
        viz.seed_lines(ax, df, "nope")


# ----------------------------------------------------------------------------- heatmap_diff
def _map_table():
    rows = []
    for K in (1, 4, 16):
        for lr in (1e-4, 3e-4, 1e-3):
            m = 0.1 * np.log2(K) * (-1 if lr == 1e-3 else 1)
            rows.append({"K": K, "lr": lr, "mean": m, "low": m - 0.05, "high": m + 0.05,
                         "n": 3 if (K, lr) == (16, 1e-3) else 5, "verdict": "inconclusive"})
    return pd.DataFrame(rows)


def test_heatmap_diff_cells_text_and_blank_cells():
    fig, ax = plt.subplots()
    im = viz.heatmap_diff(ax, _map_table())
    arr = im.get_array()
    assert arr.shape == (3, 3) and arr.mask[2, 2] and not arr.mask[1, 1]   # (K=16, lr=1e-3) has 3 seeds: blank
    norm = im.norm
    assert norm.vcenter == 0.0 and norm.vmin == -norm.vmax                 # diverging, centred at 0
    texts = [t.get_text() for t in ax.texts]
    assert "n=3" in texts
    assert "+0.2\n[0.15, 0.25]\ninconclusive" in texts                     # K=4, lr=1e-4: mean 0.2
    assert any("fewer than 5 seeds" in t for t in texts)
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0.0001", "0.0003", "0.001"]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["1", "4", "16"]
    assert ax.get_xlabel() == "learning rate" and "K" in ax.get_ylabel()
    plt.close(fig)


def test_heatmap_diff_from_verdicts_and_bad_tables():
    from ercref.study.claims import paired_verdict

    base = {s: 1.0 for s in range(5)}
    cells = {(1, 1e-3): paired_verdict({s: 1.1 + 0.01 * s for s in range(5)}, base, -1),
             (2, 1e-3): paired_verdict({s: 0.9 - 0.01 * s for s in range(5)}, base, -1)}
    fig, ax = plt.subplots()
    viz.heatmap_diff(ax, cells)
    texts = [t.get_text() for t in ax.texts]
    assert any(t.endswith("contradicted") for t in texts) and any(t.endswith("supported") for t in texts)
    with pytest.raises(ValueError, match="lacks columns"):
        viz.heatmap_diff(ax, pd.DataFrame([{"K": 1, "lr": 1e-3, "mean": 0.0}]))
    with pytest.raises(ValueError, match="more than one line"):
        viz.heatmap_diff(ax, pd.concat([_map_table(), _map_table()]))
    plt.close(fig)


def test_staleness_figure_with_bounds():
    rows = [{"label": lab, "seed": s, "step": 1, "staleness": k, "erc/clip_frac": v,
             "ppo/clip_frac_low": v, "ppo/clip_frac_high": 0.0}
            for lab in ("ERC",) for s, v in enumerate([0.0, 0.0, 0.09]) for k in (0, 1)]
    fig = viz.staleness_figure(pd.DataFrame(rows))                  # default bounds="fractions"
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
    out = plot_run(log, tmp_path / "plot.png", title="tiny: test")
    assert out == tmp_path / "plot.png" and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert matplotlib.get_backend() == backend and plt.get_fignums() == figs
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.warns(UserWarning, match="no step records"):
        plot_run(empty, tmp_path / "empty.png")


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


_BLOCK_SITECUSTOMIZE = '''
import importlib.machinery

_find_spec = importlib.machinery.PathFinder.find_spec


def _find_spec_without(fullname, path=None, target=None):
    if fullname.split(".")[0] in ("seaborn", "pandas"):
        return None           # as if not installed: importing them raises ModuleNotFoundError
    return _find_spec(fullname, path, target)


importlib.machinery.PathFinder.find_spec = staticmethod(_find_spec_without)
'''


@pytest.mark.slow
def test_cli_run_plots_without_seaborn_or_pandas(tmp_path):
    """The lm extra has neither seaborn nor pandas: a CLI run with its default plot must still finish."""
    import os

    (tmp_path / "block").mkdir()
    (tmp_path / "block" / "sitecustomize.py").write_text(_BLOCK_SITECUSTOMIZE)
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "block"), "OMP_NUM_THREADS": "1"}
    probe = subprocess.run([sys.executable, "-c", "import pandas"], env=env, capture_output=True, text=True)
    assert probe.returncode != 0 and "No module named 'pandas'" in probe.stderr      # the blocker works
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "ercref.train", "--preset", "cpu-tiny", "--out", str(out),
                           "--train.steps", "2", "--sft.steps", "5", "--train.no-progress"],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and "plot" in proc.stdout


def test_seed_lines_fixed_colours_for_named_labels_the_rest_from_the_palette():
    from matplotlib.colors import to_rgb
    df = _seed_frame(3)
    fig, ax = plt.subplots()
    viz.seed_lines(ax, df, "erc/clip_frac", colors={"DAPO+ERC": "#0072B2"})
    by_label = {ln.get_label(): to_rgb(ln.get_color()) for ln in ax.lines}
    assert by_label["DAPO+ERC (n=3)"] == to_rgb("#0072B2") == by_label["_DAPO+ERC seed 0"]
    import seaborn as sns
    assert by_label["DAPO (n=3)"] == tuple(sns.color_palette(viz.PALETTE, 2)[0])
    plt.close(fig)


def test_heatmap_diff_writes_the_reason_in_a_cell_without_a_verdict():
    t = _map_table()
    t.loc[t["K"] == 1, ["mean", "low", "high"]] = np.nan          # K = 1: 5 seeds, identical by construction
    t.loc[t["K"] == 1, "verdict"] = "not a test (identical by construction)"
    fig, ax = plt.subplots()
    im = viz.heatmap_diff(ax, t)
    assert im.get_array().mask[0].all()                           # the K = 1 row is blank
    texts = [x.get_text() for x in ax.texts]
    assert sum(x == "not a test\n(identical by\nconstruction)" for x in texts) == 3
    assert "n=3" in texts                                         # fewer seeds: still the seed count
    note = next(x for x in texts if x.startswith("blank:"))
    assert "1 cell(s) with fewer than 5 seeds" in note and "3 cell(s) not a test (identical by construction)" in note
    plt.close(fig)
