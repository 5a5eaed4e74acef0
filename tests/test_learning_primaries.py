"""Pre-registered primaries of a learning study (ercref.study.learning_primaries): the hypotheses file,
the measures, pairing by starting policy, the verdict rules, Holm's correction, and the study / runner /
cache plumbing that fixes them before the runs."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from ercref.study import learning_primaries as lp
from ercref.study import report, runner
from ercref.study import verdict_rules as vr
from ercref.study.branch_stats import holm, t_pvalue
from ercref.study.cache import study_dir, write_run, write_study_json
from ercref.study.studies import Study

STEPS, K = 12, 4
CELL = "K4"
ARMS = {"DAPO": {}, "DAPO+ERC": {}, "DAPO+random-mask": {}}
SHA = {s: f"{s:064x}" for s in range(8)}


def rows(curve, k=K) -> list[dict]:
    """An engine log: evaluations ``curve`` at evenly spaced steps, K minibatches per step (staleness
    0..K-1), a steady entropy (no collapse)."""
    out = [{"kind": "step", "step": t, "entropy/old_mean": 1.0, "rollout/distinct_frac": 0.5} for t in range(1, STEPS + 1)]
    out += [{"kind": "minibatch", "step": t, "staleness": j, "grad/norm": 1.0} for t in range(1, STEPS + 1) for j in range(k)]
    every = STEPS // (len(curve) - 1)
    out += [{"kind": "eval", "step": i * every, "eval/avg@1": a} for i, a in enumerate(curve)]
    return out


def hyp(hid, measure="final_accuracy", direction="higher", baseline="DAPO", cell=CELL, arm="DAPO+ERC") -> dict:
    return {"id": hid, "cell": cell, "arm": arm, "baseline": baseline, "measure": measure, "direction": direction,
            "text": f"{hid} text"}


def cache(tmp_path: Path, curves: dict, hypotheses: list[dict], holm_on: bool = True, start=None, k=K) -> Path:
    """Study "conf" with one cell; ``curves``: {arm: fn(seed) -> eval curve}, seeds 0-5; ``start``:
    {(arm, seed): sha} overriding the starting policy hash (default SHA[seed], the same for every arm)."""
    study = Study("conf", "cpu-tiny", {}, {CELL: {}}, ARMS, list(range(6)))
    root = study_dir("conf", tmp_path)
    root.mkdir(parents=True)
    write_study_json(study, root)
    d = json.loads((root / "study.json").read_text())
    (root / "study.json").write_text(json.dumps({**d, "hypotheses": hypotheses, "holm": holm_on,
                                                 "registered_commit": None, "analysis": "paired t, Holm"}))
    for arm, fn in curves.items():
        for s in range(6):
            sha = (start or {}).get((arm, s), SHA[s])
            write_run(root, CELL, arm, s, {"cell": CELL, "arm": arm, "seed": s, "git_commit": "0" * 40, "wall_s": 60.0,
                                           "machine": {"cpu": "test cpu"}, "finished": "2026-12-07 10:00:00",
                                           "start_policy": {"sha256": sha}}, rows(fn(s), k))
    return tmp_path


# DAPO learns (0.2 -> 0.6) and then falls back by 0.2; ERC keeps most of it; the random mask is DAPO
LEARN = {"DAPO": lambda s: [0.2, 0.6 + 0.01 * s, 0.4 + 0.013 * s],
         "DAPO+ERC": lambda s: [0.2, 0.6 + 0.01 * s, 0.55 + 0.011 * s + 0.004 * (s % 3)],
         "DAPO+random-mask": lambda s: [0.2, 0.6 + 0.01 * s, 0.4 + 0.012 * s + 0.02 * (s % 2)]}


def test_hypotheses_are_checked_naming_the_field():
    good = {"hypotheses": [hyp("H1")]}
    assert lp.check_hypotheses(good)[0]["direction"] == 1
    for bad, msg in ((hyp("H1") | {"measure": "entropy"}, "measure is 'entropy'"),
                     (hyp("H1") | {"direction": "up"}, "direction is 'up'"),
                     (hyp("H1") | {"direction": True}, "direction is True"),
                     ({k: v for k, v in hyp("H1").items() if k != "baseline"}, r"lacks \['baseline'\]")):
        with pytest.raises(ValueError, match=msg):
            lp.check_hypotheses({"hypotheses": [bad]}, "f.json")
    with pytest.raises(ValueError, match="used twice"):
        lp.check_hypotheses({"hypotheses": [hyp("H1"), hyp("H1")]})
    with pytest.raises(ValueError, match="non-empty list"):
        lp.check_hypotheses({"hypotheses": []})


def test_drop_is_peak_minus_final_and_the_measures_are_per_run(tmp_path):
    cache(tmp_path, LEARN, [hyp("H1")])
    runs = report.run_table("conf", tmp_path)
    dapo = runs[runs["arm"] == "DAPO"].sort_values("seed")
    assert list(lp.measure_column(dapo, "drop")) == pytest.approx([0.2 - 0.003 * s for s in range(6)])
    assert list(lp.measure_column(dapo, "final_accuracy")) == pytest.approx([0.4 + 0.013 * s for s in range(6)])
    with pytest.raises(ValueError, match="measure must be one of"):
        lp.measure_column(dapo, "grad_spikes")


def test_holm_over_the_primaries_decides_their_verdicts(tmp_path):
    """Three primaries: ERC ends higher than DAPO (a large, clear effect), drops less than DAPO, ends
    higher than the random mask (a smaller effect). Each test's p is the paired t test's; the verdict
    comes from the Holm-adjusted p, which is the step-down product of the sorted p-values."""
    hs = [hyp("H1"), hyp("H2", "drop", "lower"), hyp("H3", baseline="DAPO+random-mask")]
    cache(tmp_path, LEARN, hs)
    pt = report.primary_table("conf", tmp_path)
    assert list(pt["id"]) == ["H1", "H2", "H3"] and (pt["n"] == 6).all() and (pt["pairing"] == "verified pairing").all()
    runs = report.run_table("conf", tmp_path)
    fin = {a: dict(zip(g["seed"], g["final_accuracy"])) for a, g in runs.groupby("arm")}
    p1 = t_pvalue([fin["DAPO+ERC"][s] - fin["DAPO"][s] for s in range(6)])
    assert pt.loc[0, "p"] == pytest.approx(p1)
    assert list(pt["p_holm"]) == pytest.approx(holm(list(pt["p"])))
    assert (pt["p_holm"] >= pt["p"]).all() and (pt["verdict"] == vr.SUPPORTED).all()
    assert pt.loc[0, "mean"] > 0 and pt.loc[1, "mean"] < 0          # ERC higher; ERC drops less
    # without Holm the p-values are used as they are
    cache(tmp_path / "raw", LEARN, hs, holm_on=False)
    raw = report.primary_table("conf", tmp_path / "raw")
    assert list(raw["p_holm"]) == list(raw["p"])


def test_holm_can_withhold_what_the_unadjusted_test_would_call_supported(tmp_path):
    """A primary whose unadjusted p is just under 0.05 is supported alone, not supported among three
    (Holm multiplies the largest-but-one p by 2 and the smallest by 3)."""
    weak = {"DAPO": lambda s: [0.2, 0.6, 0.4 + 0.05 * (s % 3)],
            "DAPO+ERC": lambda s: [0.2, 0.6, 0.4 + 0.05 * (s % 3) + (0.03 if s % 2 else 0.005)],
            "DAPO+random-mask": lambda s: [0.2, 0.6, 0.4 + 0.05 * (s % 3)]}
    cache(tmp_path, weak, [hyp("H1")])
    alone = report.primary_table("conf", tmp_path).iloc[0]
    assert alone["p"] < 0.05 and alone["verdict"] == vr.SUPPORTED
    three = [hyp("H1"), hyp("H2", "drop", "lower"), hyp("H3", baseline="DAPO+random-mask")]
    cache(tmp_path / "b", weak, three)
    h1 = report.primary_table("conf", tmp_path / "b").iloc[0]
    assert h1["p"] == pytest.approx(alone["p"]) and h1["p_holm"] >= 0.05 and h1["verdict"] == vr.NOT_SUPPORTED


def test_the_verdict_rules_apply_to_primaries(tmp_path):
    """K = 1: not a test; DAPO did not learn: no accuracy verdict; a seed whose arms started from
    different policies is not a pair (here leaving 5 of 6, still enough), two such seeds leave too few."""
    cache(tmp_path / "k1", LEARN, [hyp("H1")], k=1)
    assert report.primary_table("conf", tmp_path / "k1").iloc[0]["verdict"] == vr.NOT_A_TEST
    flat = {a: (lambda s: [0.2, 0.21, 0.2]) for a in ARMS}
    cache(tmp_path / "flat", flat, [hyp("H1"), hyp("H2", "drop", "lower")])
    pt = report.primary_table("conf", tmp_path / "flat")
    assert (pt["verdict"] == "no verdict (DAPO did not learn)").all() and pt["p"].isna().all()
    cache(tmp_path / "one", LEARN, [hyp("H1")], start={("DAPO+ERC", 2): SHA[7]})
    r = report.primary_table("conf", tmp_path / "one").iloc[0]
    assert r["n"] == 5 and "seeds [2] left out: different starting policies" in r["pairing"]
    cache(tmp_path / "two", LEARN, [hyp("H1")], start={("DAPO+ERC", 2): SHA[7], ("DAPO", 3): SHA[6]})
    assert report.primary_table("conf", tmp_path / "two").iloc[0]["verdict"] == vr.too_few_seeds(4)


def test_report_shows_the_primaries_first_and_does_not_judge_them_twice(tmp_path):
    cache(tmp_path, LEARN, [hyp("H1"), hyp("H3", baseline="DAPO+random-mask")])
    text = report.study_report("conf", tmp_path)
    assert text.index("**Primary hypotheses** (2, pre-registered") < text.index("Paired by seed, ERC arm - other arm")
    assert "Holm-corrected over the 2 that are tests" in text and "Analysis (pre-registered): paired t, Holm" in text
    vt = report.verdict_table("conf", tmp_path)
    reg = vt[vt["status"] == report.REGISTERED]
    assert set(zip(reg["other_arm"], reg["measure"])) == {("DAPO", "final_accuracy"),
                                                           ("DAPO+random-mask", "final_accuracy")}
    assert len(vt.attrs["judgements"]) == int((vt["status"] != report.REGISTERED).sum())
    assert "0 primary" in vr.tally(vt.attrs["judgements"])


def test_a_study_carries_its_preregistration_and_the_runner_needs_it_committed(tmp_path, monkeypatch):
    f = tmp_path / "h.json"
    f.write_text(json.dumps({"study_kind": "learning", "holm": True, "analysis": "a", "power": "p",
                             "hypotheses": [hyp("H1")]}))
    study = Study("conf", "cpu-tiny", {}, {CELL: {}}, ARMS, [0], preregistration=str(f))
    d = study.to_dict()
    assert d["hypotheses"][0]["id"] == "H1" and d["holm"] is True and d["power"] == "p"
    with pytest.raises(ValueError, match="hypothesis 'H1'.*names a cell or arm"):
        Study("conf", "cpu-tiny", {}, {"K8": {}}, ARMS, [0], preregistration=str(f))
    f2 = tmp_path / "bad.json"
    f2.write_text(json.dumps({"study_kind": "branch", "hypotheses": [hyp("H1")]}))
    with pytest.raises(ValueError, match="study_kind 'learning'"):
        Study("conf", "cpu-tiny", {}, {CELL: {}}, ARMS, [0], preregistration=str(f2))
    # a file outside the repository is not committed: the runner refuses before anything runs
    with pytest.raises(ValueError, match="not committed as they are"):
        runner.run_study(study, tmp_path / "results", hours=0.01)
    assert not (tmp_path / "results" / "conf" / "runs").exists()
    # study.json keeps the registered commit; another one later is refused, as are changed hypotheses
    root = tmp_path / "c"
    root.mkdir()
    write_study_json(study, root, "a" * 40)
    assert json.loads((root / "study.json").read_text())["registered_commit"] == "a" * 40
    with pytest.raises(ValueError, match="pre-registration changed after runs began"):
        write_study_json(study, root, "b" * 40)
    f.write_text(json.dumps({"study_kind": "learning", "holm": True, "hypotheses": [hyp("H1", "drop", "lower")]}))
    with pytest.raises(ValueError, match="hypotheses"):
        write_study_json(study, root, "a" * 40)
