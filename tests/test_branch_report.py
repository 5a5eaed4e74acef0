"""ercref.study.branch_records / branch_stats / branch_report / branch_plots: a branching study's cache
(written here in tmp_path following the record contract exactly, with each record's own sha256), the
clustered paired differences, Holm over the pre-registered primaries, the markdown and the figures."""
from __future__ import annotations

import hashlib
import json
import math
import subprocess
import warnings
from pathlib import Path

import numpy as np
import pytest

from ercref.study import branch_plots, branch_records, branch_report, branch_stats, claims
from ercref.study import verdict_rules as vr
from ercref.study.branch_record import record_bytes, record_path

ROOT = Path(__file__).resolve().parents[1]
NAME = "toy-branch"
SEEDS, STEPS, KS = (0, 1, 2, 3, 4), (10, 20), (2, 8)
REGISTERED = "feedc0de" * 5
# held-out p99 KL as a multiple of DAPO's; the trained p99 of ERC wobbles around DAPO's (no effect)
HELDOUT_SCALE = {"DAPO": 1.0, "DAPO+ERC": 0.5, "DAPO+random-mask": 0.9, "DAPO-matched-step": 0.4}
HYPOTHESES = [
    {"id": "H1", "arm": "DAPO+ERC", "baseline": "DAPO", "region": "heldout", "metric": "drift/kl_old_new/p99",
     "direction": "lower", "text": "ERC lowers held-out p99 KL vs DAPO"},
    {"id": "H2", "arm": "DAPO+ERC", "baseline": "DAPO", "region": "trained", "metric": "drift/kl_old_new/p99",
     "direction": "lower", "text": "ERC lowers trained p99 KL vs DAPO"},
    {"id": "H3", "arm": "DAPO+ERC", "baseline": "DAPO+random-mask", "region": "heldout",
     "metric": "drift/kl_old_new/p99", "direction": "lower", "text": "more than the random mask"},
    {"id": "H4", "arm": "DAPO+ERC", "baseline": "DAPO-matched-step", "region": "heldout",
     "metric": "drift/kl_old_new/p99", "direction": "lower", "text": "more than the matched step"},
]


# ----------------------------------------------------------------------------- fixture generator
def _base(seed: int, step: int, k: int) -> float:
    return 0.01 * k * (1 + 0.1 * seed + 0.002 * step)


def _hist(scale: float) -> list[int]:
    """82 counts: a bump of 1000 tokens around 10**(-4 + log10(scale)), two in the overflow bin."""
    c = np.zeros(branch_records.HIST_BINS, dtype=int)
    centre = int(np.searchsorted(branch_records.HIST_EDGES, 1e-4 * scale))
    c[centre - 3: centre + 4] = [50, 100, 200, 300, 200, 100, 50]
    c[-1] = 2
    return c.tolist()


def make_record(seed: int, step: int, k: int, arm: str, state: str | None = None, learn: bool = False) -> dict:
    """One record of the contract: held-out p99 KL = DAPO's x HELDOUT_SCALE[arm] (with a per-seed spread),
    trained p99 equal across arms but for a +-1 % wobble of ERC's; held-out accuracy at the branch point
    0.3, at step 20 0.5 when ``learn`` (the trajectories learned: gain 0.2)."""
    base = _base(seed, step, k)
    acc = 0.5 if learn and step == 20 else 0.3
    held = base * HELDOUT_SCALE[arm] * (1 + 0.03 * ((seed * 7 + step) % 5))      # per-seed spread of the effect
    trained = 2 * base * ((1 + 0.01 * (-1) ** (seed + step // 10)) if arm == "DAPO+ERC" else 1.0)

    def summary(p99):
        return {"drift/kl_old_new/p99": p99, "drift/kl_old_new/mean": p99 / 10, "drift/tv_unsampled/mean": p99 / 5,
                "drift/tokens": 1002.0}

    return {"study": NAME, "seed": seed, "branch_step": step, "K": k, "arm": arm, "overrides": {}, "lr": 1e-3,
            "state_sha256": state or hashlib.sha256(f"{seed}/{step}/{k}".encode()).hexdigest(),
            "git_commit": "0123456789abcdef", "cpu_model": "Test CPU @ 2GHz", "torch_threads": 1, "wall_s": 36.0,
            "drift": {"trained": summary(trained), "other": {}, "heldout": summary(held)},
            "hist": {"trained": _hist(trained / base), "heldout": _hist(held / base)},
            "n_tokens": {"trained": 1002, "other": 0, "heldout": 1002},
            "heldout_acc_before": acc, "heldout_acc_after": acc + 0.01 * HELDOUT_SCALE[arm] + 0.001 * seed,
            "update_norm": 0.1 * HELDOUT_SCALE[arm], "clip": {"erc": 0.2 if "ERC" in arm else 0.0, "ppo": 0.01,
                                                               "random": 0.2 if "random" in arm else 0.0},
            "matched": {}, "tight_clip": {}}


def write_branch(tmp_path: Path, seeds=SEEDS, hyps=HYPOTHESES, holm: bool = True, learn: bool = False,
                 ks=KS) -> Path:
    """Study NAME in tmp_path: every arm of HELDOUT_SCALE at every (seed, step, K); returns its folder."""
    root = tmp_path / NAME
    root.mkdir(parents=True)
    definition = {"name": NAME, "kind": "branch", "arms": {a: {} for a in HELDOUT_SCALE}, "ks": list(ks),
                  "seeds": list(seeds),
                  "branch_steps": list(STEPS), "hypotheses": hyps, "holm": holm, "registered_commit": REGISTERED}
    (root / "study.json").write_text(json.dumps(definition, indent=2))
    for s in seeds:
        for t in STEPS:
            for k in ks:
                for arm in HELDOUT_SCALE:
                    p = record_path(root, s, t, k, arm)
                    p.parent.mkdir(parents=True, exist_ok=True)
                    p.write_bytes(record_bytes(make_record(s, t, k, arm, learn=learn)))
    return root


def _load(tmp_path, name=NAME):
    with warnings.catch_warnings():
        warnings.simplefilter("error")            # a clean cache issues no warning
        return branch_records.load_branch(name, tmp_path)


# ----------------------------------------------------------------------------- statistics
def test_holm_against_a_hand_computed_example():
    # sorted: 0.005 x 4 = 0.02; 0.01 x 3 = 0.03; 0.03 x 2 = 0.06; 0.04 x 1 = 0.04 -> max(0.06, 0.04) = 0.06
    assert branch_stats.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert branch_stats.holm([0.5, 0.6]) == [1.0, 1.0]                        # capped at 1, monotone
    assert branch_stats.holm([0.2]) == [0.2] and branch_stats.holm([]) == []
    with pytest.raises(ValueError, match=r"pvalues must be numbers in \[0, 1\], got \[1\.5\]"):
        branch_stats.holm([0.1, 1.5])


def test_t_pvalue_agrees_with_the_interval():
    # mean 3, sd sqrt(2.5), t = 3 / (sqrt(2.5) / sqrt(5)) = 4.2426 at 4 dof: two-sided p = 0.01324
    assert branch_stats.t_pvalue([1, 2, 3, 4, 5]) == pytest.approx(0.013236, abs=2e-6)
    rng = np.random.default_rng(1)
    for _ in range(30):
        v = rng.normal(rng.uniform(-1, 1), 1, size=int(rng.integers(2, 9)))
        _, lo, hi = claims.mean_interval(v)
        assert (branch_stats.t_pvalue(v) < 0.05) == (lo > 0 or hi < 0)
    assert branch_stats.t_pvalue([0.3]) == 1.0 and branch_stats.t_pvalue([2.0, 2.0]) == 0.0


def test_cluster_bootstrap_resamples_whole_trajectories():
    values, clusters = [1.0, 1.0, 1.0, 5.0, 5.0, 5.0, 5.0], ["a", "a", "a", "b", "b", "b", "b"]
    assert branch_stats.cluster_means(values, clusters) == {"a": 1.0, "b": 5.0}
    lo, hi = branch_stats.cluster_bootstrap(values, clusters, n_boot=2000)
    assert (lo, hi) == (1.0, 5.0)                     # a mean of 2 trajectory means lies in {1, 3, 5}
    assert branch_stats.cluster_bootstrap(values, clusters, n_boot=2000) == (lo, hi)   # seeded
    assert branch_stats.cluster_bootstrap([1.0, 2.0], ["a", "a"]) == (-math.inf, math.inf)
    with pytest.raises(ValueError, match="same length"):
        branch_stats.cluster_means([1.0], ["a", "b"])


# ----------------------------------------------------------------------------- the cache
def test_load_branch_reads_every_record(tmp_path):
    write_branch(tmp_path)
    df = _load(tmp_path)
    assert len(df) == len(SEEDS) * len(STEPS) * len(KS) * len(HELDOUT_SCALE) and df.attrs["problems"] == []
    r = df[(df["seed"] == 3) & (df["branch_step"] == 20) & (df["K"] == 8) & (df["arm"] == "DAPO+ERC")].iloc[0]
    rec = make_record(3, 20, 8, "DAPO+ERC")
    assert r["heldout/drift/kl_old_new/p99"] == rec["drift"]["heldout"]["drift/kl_old_new/p99"]
    assert r[branch_records.ACC_DELTA] == pytest.approx(rec["heldout_acc_after"] - 0.3)
    assert r["clip/erc"] == 0.2 and r["hist/heldout"] == rec["hist"]["heldout"] and r["wall_s"] == 36.0
    assert df.attrs["definition"]["registered_commit"] == REGISTERED


def test_a_damaged_or_misplaced_record_is_reported_by_name_and_left_in_place(tmp_path):
    root = write_branch(tmp_path)
    flipped = record_path(root, 1, 10, 2, "DAPO")
    raw = flipped.read_bytes()
    flipped.write_bytes(raw.replace(b'"lr": 0.001', b'"lr": 0.002'))          # still valid JSON, hash broken
    moved = record_path(root, 2, 10, 2, "DAPO")
    moved.write_bytes(record_bytes(make_record(3, 10, 2, "DAPO")))            # seed 3's record under traj2
    stray = root / "traj0" / "step10" / "K2" / ".DAPO.json.tmp-123"
    stray.write_text("partial")
    with pytest.warns(UserWarning) as caught:
        df = branch_records.load_branch(NAME, tmp_path)
    problems = df.attrs["problems"]
    assert len(problems) == 3 and len(caught) == 3
    assert any(str(flipped) in p and "meta_sha256" in p for p in problems)
    assert any(str(moved) in p and "holds seed = 3, but its path says 2" in p for p in problems)
    assert any(str(stray) in p and "stray" in p for p in problems)
    assert len(df) == len(SEEDS) * len(STEPS) * len(KS) * len(HELDOUT_SCALE) - 2
    assert flipped.read_bytes() == raw.replace(b'"lr": 0.001', b'"lr": 0.002') and stray.exists()   # untouched
    with pytest.warns(UserWarning):
        md = branch_report.branch_report(NAME, tmp_path)
    assert "Not counted (damaged or misplaced files, left in place)" in md and str(flipped) in md


def test_a_record_with_a_short_histogram_is_not_counted(tmp_path):
    root = write_branch(tmp_path, seeds=(0,))
    rec = make_record(0, 10, 2, "DAPO")
    p = record_path(root, 0, 10, 2, "DAPO")
    p.write_bytes(record_bytes({**rec, "hist": {"trained": [1] * 81, "heldout": rec["hist"]["heldout"]}}))
    with pytest.warns(UserWarning, match=r"DAPO\.json: hist\.trained must be a list of 82 counts.*length 81"):
        df = branch_records.load_branch(NAME, tmp_path)
    assert not ((df["arm"] == "DAPO") & (df["branch_step"] == 10) & (df["K"] == 2)).any()
    with pytest.raises(ValueError, match=r"no cached branching study 'nope' at .*nope"):
        branch_records.load_branch("nope", tmp_path)


def test_hypotheses_are_checked_naming_the_field():
    bad = [HYPOTHESES[0], {**HYPOTHESES[1], "direction": 0}]
    with pytest.raises(ValueError, match=r"study\.json: hypotheses\[1\]\.direction is 0; valid: 'lower' or -1"):
        branch_records.hypotheses({"hypotheses": bad})
    with pytest.raises(ValueError, match=r"hypotheses\[0\]\.region is 'everywhere'"):
        branch_records.hypotheses({"hypotheses": [{**HYPOTHESES[0], "region": "everywhere"}]})
    with pytest.raises(ValueError, match=r"hypotheses\[1\] lacks \['text'\]"):
        branch_records.hypotheses({"hypotheses": [HYPOTHESES[0], {k: v for k, v in HYPOTHESES[1].items() if k != "text"}]})
    hs = branch_records.hypotheses({"hypotheses": [{**HYPOTHESES[0], "K": 8}, {**HYPOTHESES[1], "direction": "higher"}]})
    assert [(h["K"], h["direction"]) for h in hs] == [([8], -1), (None, 1)]


# ----------------------------------------------------------------------------- pairing and verdicts
def test_the_interval_is_the_t_interval_of_per_trajectory_means(tmp_path):
    write_branch(tmp_path)
    df = _load(tmp_path)
    r = branch_report.compare(df, "DAPO+ERC", "DAPO", "heldout", "drift/kl_old_new/p99", -1)
    by_hand = {}
    for s in SEEDS:                                  # differences per branch point, then one mean per trajectory
        d = [make_record(s, t, k, "DAPO+ERC")["drift"]["heldout"]["drift/kl_old_new/p99"]
             - make_record(s, t, k, "DAPO")["drift"]["heldout"]["drift/kl_old_new/p99"] for t in STEPS for k in KS]
        by_hand[s] = float(np.mean(d))
    assert r["traj_means"] == pytest.approx(by_hand) and r["n_traj"] == 5 and r["n_points"] == 20
    m, lo, hi = claims.mean_interval(list(by_hand.values()))
    assert (r["mean"], r["low"], r["high"]) == pytest.approx((m, lo, hi))
    pts = branch_report.paired(df, "DAPO+ERC", "DAPO", "heldout/drift/kl_old_new/p99")[0]["diff"]
    _, lo_naive, hi_naive = claims.mean_interval(pts)          # treating 20 branch points as independent
    assert abs((hi_naive - lo_naive) / (hi - lo) - 1) > 0.2     # ... gives another interval: the unit is the trajectory
    assert r["boot_low"] <= m <= r["boot_high"] and r["boot_low"] >= min(by_hand.values())


def test_an_infinite_value_is_left_out_and_said(tmp_path):
    root = write_branch(tmp_path)
    rec = make_record(2, 20, 8, "DAPO+ERC")
    rec["drift"]["heldout"]["drift/kl_old_new/p99"] = math.inf        # a support mismatch: KL = +inf
    record_path(root, 2, 20, 8, "DAPO+ERC").write_bytes(record_bytes(rec))
    df = _load(tmp_path)
    pairs, _ = branch_report.paired(df, "DAPO+ERC", "DAPO", "heldout/drift/kl_old_new/p99")
    assert len(pairs) == 19 and pairs.attrs["non_finite"] == 1 and np.isfinite(pairs["diff"]).all()
    md = branch_report.branch_report(NAME, tmp_path)
    h1 = next(line for line in md.splitlines() if line.startswith("| **H1**"))
    assert "| 5 / 19 |" in h1 and "(1 branch points left out: a NaN or inf value)" in h1


def test_branch_points_lacking_an_arm_are_listed(tmp_path):
    root = write_branch(tmp_path)
    md = branch_report.branch_report(NAME, tmp_path)
    assert "Incomplete" not in md
    missing = record_path(root, 4, 20, 8, "DAPO-matched-step")
    missing.rename(tmp_path / "elsewhere.json")
    df = _load(tmp_path)
    assert branch_report.incomplete_points(df, df.attrs["definition"]) == ["traj4/step20/K8 lacks DAPO-matched-step"]
    md = branch_report.branch_report(NAME, tmp_path)
    assert "Incomplete: 1 of 20 branch points lack arms of the study" in md
    pt = branch_report.primary_table(df, df.attrs["definition"]).set_index("id")
    assert pt.loc["H4", "n_points"] == 19 and pt.loc["H1", "n_points"] == 20


def test_records_from_different_states_are_never_paired(tmp_path):
    root = write_branch(tmp_path)
    p = record_path(root, 0, 10, 2, "DAPO+ERC")
    p.write_bytes(record_bytes(make_record(0, 10, 2, "DAPO+ERC", state="f" * 64)))
    df = _load(tmp_path)
    pairs, refused = branch_report.paired(df, "DAPO+ERC", "DAPO", "heldout/drift/kl_old_new/p99")
    assert len(pairs) == 19 and not ((pairs["seed"] == 0) & (pairs["branch_step"] == 10) & (pairs["K"] == 2)).any()
    assert refused == [f"traj0/step10/K2: DAPO+ERC (state {'f' * 12}) vs DAPO "
                       f"(state {make_record(0, 10, 2, 'DAPO')['state_sha256'][:12]})"]
    mism = branch_report.state_mismatches(df)
    assert len(mism) == 1 and mism[0].startswith("traj0/step10/K2 (") and f"{'f' * 12}: DAPO+ERC" in mism[0]
    md = branch_report.branch_report(NAME, tmp_path)
    assert "Not paired: branch points whose arms did not start from one state" in md and "traj0/step10/K2" in md
    assert "| **H1** |" in md and "| 5 / 19 |" in md           # the other 19 branch points of H1 still count


def test_primary_verdicts_follow_the_predicted_direction_after_holm(tmp_path):
    write_branch(tmp_path)
    df = _load(tmp_path)
    pt = branch_report.primary_table(df, df.attrs["definition"]).set_index("id")
    assert pt.loc["H1", "verdict"] == branch_report.SUPPORTED and pt.loc["H1", "high"] < 0   # ERC lower: supported
    assert pt.loc["H2", "verdict"] == branch_report.NOT_SUPPORTED                            # no effect
    assert pt.loc["H3", "verdict"] == branch_report.SUPPORTED
    assert pt.loc["H4", "verdict"] == branch_report.CONTRADICTED and pt.loc["H4", "low"] > 0  # matched step lower
    assert list(pt["p_holm"]) == pytest.approx(branch_stats.holm(list(pt["p"])))
    assert (pt["p_holm"] >= pt["p"]).all()
    # the same data under the opposite prediction: supported <-> contradicted
    flipped = [{**h, "direction": "higher"} for h in HYPOTHESES]
    pt2 = branch_report.primary_table(df, {"hypotheses": flipped, "holm": True}).set_index("id")
    assert list(pt2["verdict"]) == [branch_report.CONTRADICTED, branch_report.NOT_SUPPORTED,
                                    branch_report.CONTRADICTED, branch_report.SUPPORTED]


def test_holm_can_leave_a_nominally_significant_primary_unsupported():
    # p between 0.05 / 4 and 0.05: each excludes 0 on its own, none after Holm over the 4 primaries
    adjusted = branch_stats.holm([0.02, 0.03, 0.04, 0.045])
    assert all(a >= 0.05 for a in adjusted)
    assert vr.holm_label(adjusted[0], -1.0, -1) == branch_report.NOT_SUPPORTED
    assert vr.holm_label(0.01, -1.0, -1) == branch_report.SUPPORTED
    assert vr.holm_label(0.01, +1.0, -1) == branch_report.CONTRADICTED


def test_too_few_trajectories_give_no_verdict(tmp_path):
    write_branch(tmp_path, seeds=(0, 1, 2, 3))
    df = _load(tmp_path)
    pt = branch_report.primary_table(df, df.attrs["definition"])
    assert set(pt["verdict"]) == {vr.too_few_seeds(4)} and (pt["n_traj"] == 4).all() and pt["p"].isna().all()
    md = branch_report.branch_report(NAME, tmp_path)
    assert "| **too few seeds (4)** |" in md and "Of 0 tests: 0 supported" in md
    assert "| DAPO+ERC - DAPO |" not in md and "Not counted: 36 too few seeds" in md   # 3 pairs x 2 K x 6 measures


def test_exploratory_comparisons_are_per_k_and_exclude_the_primaries(tmp_path):
    write_branch(tmp_path)
    df = _load(tmp_path)
    et = branch_report.exploratory_table(df, df.attrs["definition"])
    pairs = set(zip(et["arm"], et["baseline"]))
    assert pairs == {("DAPO+ERC", "DAPO"), ("DAPO+ERC", "DAPO+random-mask"), ("DAPO+ERC", "DAPO-matched-step")}
    assert set(et["K"]) == {"2", "8"} and "all" not in set(et["K"])
    assert "other" not in set(et["region"])                       # "other" is {} in every record: no comparison
    held = et[(et["arm"] == "DAPO+ERC") & (et["baseline"] == "DAPO") & (et["metric"] == "drift/kl_old_new/p99")
              & (et["region"] == "heldout")]
    assert len(held) == 2 and set(held["verdict"]) == {branch_report.SUPPORTED} and (held["n_points"] == 10).all()
    acc = et[et["metric"] == branch_records.ACC_DELTA]                 # the trajectories' accuracy never rose
    assert len(acc) == 6 and set(acc["verdict"]) == {"no verdict (DAPO trajectories did not learn)"}
    assert acc["p"].isna().all()
    # a primary restricted to K=2 is no longer also listed as exploratory at K=2
    df.attrs["definition"]["hypotheses"] = [{**HYPOTHESES[0], "K": 2}]
    et2 = branch_report.exploratory_table(df, df.attrs["definition"])
    assert len(et2) == len(et) - 1


def test_k1_is_not_a_test_and_accuracy_needs_trajectories_that_learned(tmp_path):
    write_branch(tmp_path, ks=(1, 2), learn=True)
    df = _load(tmp_path)
    et = branch_report.exploratory_table(df, df.attrs["definition"])
    k1, k2 = et[et["K"] == "1"], et[et["K"] == "2"]
    assert set(k1["verdict"]) == {vr.NOT_A_TEST} and k1["p"].isna().all()      # K = 1: the arms are identical
    assert branch_report.trajectory_gain(df) == pytest.approx(0.2)             # 0.3 -> 0.5 at the branch points
    acc = k2[(k2["metric"] == branch_records.ACC_DELTA) & (k2["baseline"] == "DAPO")].iloc[0]
    assert acc["verdict"] == branch_report.CONTRADICTED and acc["mean"] == pytest.approx(0.01 * (0.5 - 1.0))
    md = branch_report.branch_report(NAME, tmp_path)
    assert "not a test (identical by construction, K = 1)" in md
    # the primaries pool K = 1 and K = 2: a test, on the 5 trajectories
    pt = branch_report.primary_table(df, df.attrs["definition"]).set_index("id")
    assert pt.loc["H1", "verdict"] == branch_report.SUPPORTED and pt.loc["H1", "n_points"] == 20


# ----------------------------------------------------------------------------- markdown, figures, CLI
def test_report_markdown_provenance_chance_counts_and_cli(tmp_path, capsys):
    write_branch(tmp_path)
    md = branch_report.branch_report(NAME, tmp_path)
    n = len(SEEDS) * len(STEPS) * len(KS) * len(HELDOUT_SCALE)
    assert md.startswith(f"Branching study `{NAME}` (cache `{tmp_path / NAME}`): {n} records")
    assert f"{n * 36 / 3600:.2f} run-hours" in md and "machine Test CPU @ 2GHz" in md
    assert f"primary hypotheses registered at commit `{REGISTERED}`" in md
    assert "Holm-corrected over the 4 that are tests" in md and "Of 4 tests: 2 supported, 1 not supported, " \
        "1 contradicted; if no arm differed, about 0.2 would exclude 0 by chance alone without the correction" in md
    df = _load(tmp_path)
    et = branch_report.exploratory_table(df, df.attrs["definition"])
    k = int(et["p"].notna().sum())
    assert k == 3 * 2 * 5          # 3 pairs x 2 K x 5 drift measures (2 p99, held-out mean KL, 2 TV; acc: no verdict)
    assert "**Exploratory** (not pre-registered, not corrected" in md
    assert f"Of {k} tests (0 primary, {k} exploratory): " in md
    assert f"about {0.05 * k:.1f} would exclude 0 by chance alone if no arm differed (0.05 x {k} tests" in md
    assert "Not counted: 6 accuracy without a verdict" in md
    assert "| DAPO+ERC - DAPO | held-out p99 KL(old\\|\\|new) (lower) |" in md     # "|" escaped in a table cell
    assert all(line.count(" | ") == 3 for line in md.splitlines() if line.startswith("| DAPO+ERC - "))  # 4 columns
    assert "docs/img/branch_toy_ecdf.png" in md
    assert branch_report.main([NAME, "--results-dir", str(tmp_path), "--no-figures"]) == 0
    assert capsys.readouterr().out == md
    assert branch_report.main(["nope", "--results-dir", str(tmp_path), "--no-figures"]) == 2
    assert "no cached branching study 'nope'" in capsys.readouterr().err


def test_no_registered_commit_is_said_plainly(tmp_path):
    root = write_branch(tmp_path)
    d = json.loads((root / "study.json").read_text())
    del d["registered_commit"]
    (root / "study.json").write_text(json.dumps(d))
    assert "no registered_commit in study.json" in branch_report.branch_report(NAME, tmp_path)


def test_records_made_before_the_registration_are_flagged(tmp_path):
    try:
        head, parent = subprocess.run(["git", "rev-parse", "HEAD", "HEAD~1"], cwd=ROOT, capture_output=True, text=True,
                                      check=True, timeout=30).stdout.split()
    except (OSError, subprocess.SubprocessError, ValueError):
        pytest.skip("not a git checkout with two commits")
    found = branch_report.after_registration(parent, [head, parent, head + "-dirty", "f" * 40])
    assert found == {head: True, parent: True, head + "-dirty": True, "f" * 40: None}
    assert branch_report.after_registration(head, [parent]) == {parent: False}
    root = write_branch(tmp_path)
    d = json.loads((root / "study.json").read_text())
    (root / "study.json").write_text(json.dumps({**d, "registered_commit": head}))
    md = branch_report.branch_report(NAME, tmp_path)
    assert f"registered at commit `{head}` (0 records made at commits that contain it, 80 at commits git cannot " \
           "place)" in md
    p = record_path(root, 0, 10, 2, "DAPO")
    p.write_bytes(record_bytes({**make_record(0, 10, 2, "DAPO"), "git_commit": parent}))
    md = branch_report.branch_report(NAME, tmp_path)
    assert "**1 records made at commits that do not contain it**" in md


def test_ecdf_from_hist_is_monotone_and_ends_at_one():
    x, f = branch_plots.ecdf_from_hist(_hist(1.0))
    assert len(x) == len(f) == 82 and x[-1] == math.inf and np.all(np.diff(x) > 0)
    assert np.all(np.diff(f) >= 0) and f[-1] == 1.0 and f[0] == 0.0
    assert f[-2] == pytest.approx(1000 / 1002)                      # two tokens beyond 100 nats
    i = int(np.searchsorted(branch_records.HIST_EDGES, 1e-4))       # the bump's centre bin
    assert f[i] == pytest.approx((50 + 100 + 200 + 300) / 1002)
    for bad in ([1] * 81, [-1] + [1] * 81, [0] * 82):
        with pytest.raises(ValueError, match="counts must be 82 non-negative finite numbers"):
            branch_plots.ecdf_from_hist(bad)


def test_figures_are_drawn_with_labelled_log_axes(tmp_path):
    write_branch(tmp_path)
    df = _load(tmp_path)
    pt, et = branch_report.primary_table(df, df.attrs["definition"]), branch_report.exploratory_table(df, df.attrs["definition"])
    fig = branch_plots.ecdf_figure(df)
    axes = fig.get_axes()
    assert len(axes) == 2 * len(KS) and all(ax.get_xscale() == "log" and ax.get_xlabel() and ax.get_ylabel()
                                            for ax in axes)
    assert len(axes[0].get_lines()) == len(HELDOUT_SCALE)
    forest = branch_plots.forest_figure(pt, et).get_axes()[0]
    labels = [t.get_text() for t in forest.get_yticklabels()]
    assert labels[0].startswith("H1 (primary)") and labels[3].startswith("H4 (primary)")
    assert not any("primary" in t for t in labels[4:]) and "%" in forest.get_xlabel()
    h1 = pt.set_index("id").loc["H1"]
    diamonds = [ln for ln in forest.get_lines() if ln.get_marker() == "D"]
    assert len(diamonds) == 4 and diamonds[0].get_xdata()[0] == pytest.approx(100 * h1["mean"] / h1["base_mean"])
    dk = branch_plots.drift_vs_k_figure(df).get_axes()[0]
    assert dk.get_xscale() == "log" and dk.get_yscale() == "log" and "K" in dk.get_xlabel()
    out = tmp_path / "img"
    md = branch_report.branch_report(NAME, tmp_path, figures_dir=out)
    paths = branch_report.figure_paths(NAME, out)
    assert all(p.is_file() and p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in paths.values())
    assert md == branch_report.branch_report(NAME, tmp_path)       # drawing the figures changes no text


def test_refresh_readme_rewrites_only_the_branch_blocks(tmp_path):
    write_branch(tmp_path)
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n<!-- branch-report: {NAME} -->\nstale\n<!-- /branch-report -->\n"
                      "<!-- study-report: other -->\nkept\n<!-- /study-report -->\n")
    assert branch_report.refresh_readme(readme, tmp_path) == [NAME]
    text = readme.read_text()
    assert branch_report.branch_report(NAME, tmp_path) in text and "stale" not in text and "kept" in text


@pytest.mark.slow
@pytest.mark.parametrize("name", ["tiny-branch", "smollm2-branch"])
def test_the_generated_block_is_the_report_of_the_committed_cache(name):
    """Checks whenever git tracks records of data/results/NAME (a cache being filled but not committed is
    not checked): then docs/results.md (every study's full report, ercref.study.results_page) or README.md
    must hold its block <!-- branch-report: NAME --> ... <!-- /branch-report -->, equal to the report of
    that cache (`python -m ercref.study --write-results` rewrites it; branch_report.refresh_readme(path)
    rewrites the blocks of one file)."""
    try:
        tracked = subprocess.run(["git", "ls-files", f"data/results/{name}/traj*"], cwd=ROOT, capture_output=True,
                                 text=True, check=True, timeout=30).stdout.split()
    except (OSError, subprocess.SubprocessError):
        tracked = [str(p) for p in (ROOT / "data" / "results" / name).glob("traj*/step*/K*/*.json")]
    if not tracked:
        pytest.skip(f"no committed records in data/results/{name} yet")
    blocks = {}
    for doc in (ROOT / "README.md", ROOT / "docs" / "results.md"):
        if doc.is_file():
            blocks.update({m.group(2): (doc, m.group(3)) for m in branch_report.README_BLOCK.finditer(doc.read_text())})
    assert name in blocks, (f"neither docs/results.md nor README.md holds the block <!-- branch-report: {name} --> "
                            f"... <!-- /branch-report --> of the cache data/results/{name}")
    doc, block = blocks[name]
    assert block.strip() == branch_report.branch_report(name).strip(), (
        f"{doc.name}'s branch report is not the report of data/results/{name}: run `python -m ercref.study "
        "--write-results`")


@pytest.mark.slow
def test_the_report_reads_what_the_branching_runner_writes(tmp_path):
    """One branch point of a small real study (the runner's own records): every record loads, every
    region's drift measures and histograms are columns, the primaries say too few trajectories."""
    from ercref.study import branch
    from ercref.study.branch_study import SEARCHED, BranchStudy, dapo_controls
    from ercref.study.studies import erc_arm

    base = {"train.threads": 1, "train.progress": False, "train.plot": False, "rollout.prompts_per_step": 4,
            "rollout.group_size": 4, "sft.steps": 30, "data.num_eval": 16, "train.save_checkpoints": False}
    study = BranchStudy("r-branch", "cpu-tiny", base, {**erc_arm("dapo", None), "train.minibatch_prompts": 4},
                        dapo_controls(), [0], [1], [2], 1e-2, matched=dict(SEARCHED["matched"]),
                        tight_clip=dict(SEARCHED["tight_clip"]), heldout_prompts=4, heldout_samples=2,
                        accuracy_prompts=8)
    branch.run_branch_study(study, tmp_path, require_registered=False, log=lambda *a: None)
    df = _load(tmp_path, "r-branch")
    assert sorted(df["arm"]) == sorted(study.arms) and df["state_sha256"].nunique() == 1
    for region in ("trained", "heldout"):
        assert df[f"{region}/drift/kl_old_new/p99"].notna().all()
        assert all(sum(h) == n for h, n in zip(df[f"hist/{region}"], df[f"n_tokens/{region}"]))
    pt = branch_report.primary_table(df, df.attrs["definition"])
    assert set(pt["verdict"]) == {vr.too_few_seeds(1)} and (pt["n_points"] == 1).all()
    md = branch_report.branch_report("r-branch", tmp_path, figures_dir=tmp_path / "img")
    assert "5 records" in md and "1 branch points" in md and "Not counted (damaged" not in md and "Not paired" not in md
    assert all(p.is_file() for p in branch_report.figure_paths("r-branch", tmp_path / "img").values())
