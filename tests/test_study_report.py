"""ercref.study.report: the verdict table of a study cache (built here in tmp_path in the runner's
layout) under ercref.study.verdict_rules, and `python -m ercref.study NAME --report`. That
docs/results.md's blocks equal the reports of the committed caches: tests/test_results_page.py."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from ercref.study import claims, report, stability
from ercref.study import verdict_rules as vr
from ercref.study.__main__ import main
from ercref.study.cache import read_run_log, run_paths, study_dir, write_run, write_study_json
from ercref.study.studies import Study, tiny_controls, tiny_stability_map

STEPS, K = 20, 4
ARMS = {"DAPO": {}, "DAPO+ERC": {}, "DAPO+random-mask": {}}


def _rows(seed: int, erc: bool, zigzag: bool, collapse_at: int | None, acc: float) -> list[dict]:
    """One engine log: step rows (rollout entropy, distinct fraction), K minibatches per step (grad
    norm, clip fractions), evaluations at steps 0 and STEPS. ``zigzag``: the entropy curve jumps
    +-0.2 every step and the grad norm spikes to 10 every 4th step; else both are smooth."""
    rows = [{"kind": "sft", "step": 0, "loss": 1.0}, {"kind": "eval", "step": 0, "eval/avg@4": 0.2}]
    for t in range(1, STEPS + 1):
        h = 1.0 - 0.01 * t + 0.003 * seed * t + ((0.2 if t % 2 else -0.2) + 0.01 * seed if zigzag else 0.0)
        if collapse_at is not None and t >= collapse_at:
            h = 0.01
        rows.append({"kind": "step", "step": t, "entropy/old_mean": h, "rollout/distinct_frac": 0.5})
        for k in range(K):
            rec = {"kind": "minibatch", "step": t, "staleness": k, "ppo/clip_frac_low": 0.001, "ppo/clip_frac_high": 0.001,
                   "grad/norm": 10.0 if zigzag and k == 3 and t % 4 == 0 else 1.0 + 0.01 * ((t + k + seed) % 3)}
            if erc:
                rec["erc/clip_frac"] = 0.0 if k == 0 else 0.2 + 0.01 * seed
            rows.append(rec)
    rows.append({"kind": "eval", "step": STEPS, "eval/avg@4": acc})
    return rows


def _write_run(root: Path, cell: str, arm: str, seed: int, rows: list[dict], commit: str = "0123456789abcdef-dirty",
               tokens: list[dict] | None = None):
    write_run(root, cell, arm, seed, {"cell": cell, "arm": arm, "seed": seed, "git_commit": commit, "wall_s": 360.0,
                                      "machine": {"cpu": "test cpu"}, "finished": f"2026-11-29 10:0{seed}:00"},
              rows, tokens)


def _cache(tmp_path: Path, erc_zigzag: bool = False) -> Path:
    """Study "toy": cell A with 5 seeds of DAPO, DAPO+ERC, DAPO+random-mask; cell B with 4 seeds of
    DAPO and DAPO+ERC. DAPO (and the random mask) zig-zag, spike and collapse at step 10 + seed; DAPO+ERC is
    smooth and never collapses, but its final accuracy is 0.1 lower (the paper's direction reversed).
    ``erc_zigzag``: DAPO+ERC zig-zags instead of DAPO."""
    study = Study("toy", "cpu-tiny", {}, {"A": {}, "B": {}}, ARMS, [0, 1, 2, 3, 4], cell_arms={"B": ["DAPO", "DAPO+ERC"]})
    root = study_dir("toy", tmp_path)
    root.mkdir(parents=True)
    write_study_json(study, root)
    for cell, seeds in (("A", range(5)), ("B", range(4))):
        for s in seeds:
            acc = 0.5 + 0.02 * s
            _write_run(root, cell, "DAPO", s, _rows(s, False, not erc_zigzag, 10 + s, acc))
            _write_run(root, cell, "DAPO+ERC", s, _rows(s, True, erc_zigzag, None, acc - 0.1 - 0.005 * (s % 2)))
            if cell == "A":
                _write_run(root, cell, "DAPO+random-mask", s, _rows(s, True, True, 10 + s, acc))
    return tmp_path


def _row(vt, cell, erc, other, measure):
    hit = vt[(vt["cell"] == cell) & (vt["erc_arm"] == erc) & (vt["other_arm"] == other) & (vt["measure"] == measure)]
    assert len(hit) == 1, (cell, erc, other, measure)
    return hit.iloc[0]


def test_arm_pairs_of_the_defined_studies():
    assert report.arm_pairs(tiny_stability_map().arms) == [("DAPO+ERC", "DAPO"), ("GPPO+ERC", "GPPO")]
    pairs = report.arm_pairs(tiny_controls().arms)
    assert ("DAPO+ERC", "DAPO") in pairs and ("DAPO+ERC-b0.2", "DAPO") in pairs and ("DAPO+ERC-b0.01", "DAPO") in pairs
    for control in ("DAPO+random-mask", "DAPO-matched-step", "DAPO+entropy-bonus", "DAPO+KL", "Clip-Cov", "KL-Cov"):
        assert ("DAPO+ERC", control) in pairs
    assert len(pairs) == len(set(pairs)) == 4 + 6


def test_run_table_reads_stability_measures_from_each_log(tmp_path):
    root = study_dir("toy", _cache(tmp_path))
    runs = report.run_table("toy", tmp_path)
    assert len(runs) == 5 * 3 + 4 * 2 and set(runs["cell"]) == {"A", "B"}
    r = runs[(runs["cell"] == "A") & (runs["arm"] == "DAPO") & (runs["seed"] == 2)].iloc[0]
    rows = read_run_log(run_paths(root, "A", "DAPO", 2)[0])
    assert r["entropy_volatility"] == pytest.approx(stability.entropy_volatility(rows))
    assert r["grad_spikes"] == stability.grad_norm_spikes(rows) == 5
    assert r["collapse_step"] == r["steps_to_collapse"] == 12
    erc = runs[(runs["arm"] == "DAPO+ERC") & (runs["seed"] == 2)].iloc[0]
    assert erc["steps_to_collapse"] == STEPS + 1                      # never collapsed: censored at steps + 1
    assert erc["erc_clip_frac"] == pytest.approx(0.75 * 0.22)         # k = 0 counts, as claim 1a
    assert runs.loc[runs["arm"] == "DAPO", "erc_clip_frac"].isna().all()


def test_verdicts_with_five_seeds_none_with_four(tmp_path):
    vt = report.verdict_table("toy", _cache(tmp_path))
    b = vt[vt["cell"] == "B"]
    assert (b["verdict"] == "too few seeds (4)").all() and (b["status"] == vr.FEW_SEEDS).all() and (b["n"] == 4).all()
    assert b["mean"].isna().all() and not b["counted"].any()
    a = vt[vt["cell"] == "A"]
    assert (a["status"] == vr.VERDICT).all() and (a["n"] == 5).all() and (a["role"] == vr.EXPLORATORY).all()
    assert a["counted"].tolist() == [m != report.CLIP for m in a["measure"]]      # the band describes
    expected = {"entropy_volatility": claims.SUPPORTED, "grad_spikes": claims.SUPPORTED,
                "steps_to_collapse": claims.SUPPORTED, "final_accuracy": claims.CONTRADICTED,
                "erc_clip_frac": claims.SUPPORTED}
    for other in ("DAPO", "DAPO+random-mask"):
        for measure, label in expected.items():
            assert _row(vt, "A", "DAPO+ERC", other, measure)["verdict"] == label, (other, measure)
    # every verdict is claims.paired_verdict of the per-seed values the run table holds
    runs = report.run_table("toy", tmp_path)
    per = {arm: dict(zip(g["seed"], g["final_accuracy"])) for arm, g in runs[runs["cell"] == "A"].groupby("arm")}
    v = claims.paired_verdict(per["DAPO+ERC"], per["DAPO"], +1)
    r = _row(vt, "A", "DAPO+ERC", "DAPO", "final_accuracy")
    assert (r["mean"], r["low"], r["high"], r["mde"]) == pytest.approx((v.mean, v.low, v.high, v.mde))
    assert r["mean"] == pytest.approx(-0.1 - 0.005 * 2 / 5) and r["direction"] == +1


def test_lower_is_the_papers_direction_for_volatility_and_spikes(tmp_path):
    """ERC smoother -> difference < 0 -> supported; ERC the one that zig-zags -> contradicted."""
    smooth = report.verdict_table("toy", _cache(tmp_path / "a"))
    rough = report.verdict_table("toy", _cache(tmp_path / "b", erc_zigzag=True))
    for measure in ("entropy_volatility", "grad_spikes"):
        s, r = _row(smooth, "A", "DAPO+ERC", "DAPO", measure), _row(rough, "A", "DAPO+ERC", "DAPO", measure)
        assert s["direction"] == r["direction"] == -1
        assert s["high"] < 0 and s["verdict"] == claims.SUPPORTED
        assert r["low"] > 0 and r["verdict"] == claims.CONTRADICTED


def test_markdown_report_and_cli(tmp_path, capsys):
    _cache(tmp_path)
    text = report.study_report("toy", tmp_path)
    assert text.startswith(f"Study `toy` (cache `{tmp_path / 'toy'}`): 23 runs cached")
    assert "seeds [0, 1, 2, 3, 4]" in text and "2.30 run-hours" in text and "`0123456789ab-dirty` (23 runs)" in text
    assert "Fewer than 5 paired seeds, no verdict: B DAPO+ERC vs DAPO (too few seeds (4))." in text
    table = [line for line in text.splitlines() if line.startswith("| A |")]
    assert len(table) == 2 and all(line.count(" supported") == 4 and " contradicted" in line for line in table)
    assert ("Of 8 tests (0 primary, 8 exploratory): 6 supported, 0 not supported, 2 contradicted; about 0.4 would "
            "exclude 0 by chance alone if no arm differed (0.05 x 8 tests") in text
    assert "every comparison here is exploratory" in text and "reproduced" not in text and "paper: ERC" not in text
    study = Study("toy", "cpu-tiny", {}, {"A": {}, "B": {}}, ARMS, [0, 1, 2, 3, 4])
    assert main(["toy", "--report", "--results-dir", str(tmp_path)], studies={"toy": lambda: study}) == 0
    assert capsys.readouterr().out == text


def test_inconclusive_shows_the_mde_and_an_uncollapsed_cell_says_so(tmp_path):
    study = Study("toy", "cpu-tiny", {}, {"A": {}}, {"DAPO": {}, "DAPO+ERC": {}}, [0, 1, 2, 3, 4])
    root = study_dir("toy", tmp_path)
    root.mkdir(parents=True)
    write_study_json(study, root)
    for s in range(5):   # identical smooth curves, no collapse; accuracy differences of both signs
        _write_run(root, "A", "DAPO", s, _rows(s, False, False, None, 0.5))
        _write_run(root, "A", "DAPO+ERC", s, _rows(s, True, False, None, 0.5 + (0.02 if s % 2 else -0.02)))
    vt = report.verdict_table("toy", tmp_path)
    acc = _row(vt, "A", "DAPO+ERC", "DAPO", "final_accuracy")
    assert acc["verdict"] == claims.NOT_SUPPORTED and acc["mde"] > 0
    text = report.study_report("toy", tmp_path)
    assert f"not supported, MDE {acc['mde']:.2g}" in text and "(no run collapsed)" in text


def test_empty_cache_and_a_broken_log(tmp_path):
    study = Study("toy", "cpu-tiny", {}, {"A": {}}, {"DAPO": {}, "DAPO+ERC": {}}, [0])
    root = study_dir("toy", tmp_path)
    root.mkdir(parents=True)
    write_study_json(study, root)
    text = report.study_report("toy", tmp_path)
    assert "0 runs cached" in text and "nothing to report yet" in text and report.verdict_table("toy", tmp_path).empty
    _write_run(root, "A", "DAPO", 0, [{"kind": "eval", "step": 0, "eval/avg@4": 0.1}])
    with pytest.raises(ValueError, match=r"seed0\.jsonl.*step"):
        report.run_table("toy", tmp_path)


def _one_cell(tmp_path: Path, cell: str, arms: dict, runs, hypotheses=None) -> Path:
    """Study "toy" with one cell; ``runs``: {arm: fn(seed) -> rows}, seeds 0-4."""
    study = Study("toy", "cpu-tiny", {}, {cell: {}}, arms, [0, 1, 2, 3, 4])
    root = study_dir("toy", tmp_path)
    root.mkdir(parents=True)
    write_study_json(study, root)
    if hypotheses is not None:                   # a confirmatory study's saved primaries
        d = json.loads((root / "study.json").read_text())
        (root / "study.json").write_text(json.dumps({**d, "hypotheses": hypotheses, "holm": True,
                                                     "registered_commit": None}))
    for arm, fn in runs.items():
        for s in range(5):
            _write_run(root, cell, arm, s, fn(s))
    return tmp_path


def _on_policy(rows: list[dict]) -> list[dict]:
    """K = 1: one minibatch per step, staleness 0, ERC clips nothing."""
    return [{**r, "staleness": 0, "erc/clip_frac": 0.0} if r["kind"] == "minibatch" else r
            for r in rows if r["kind"] != "minibatch" or r["staleness"] == 0]


def test_k1_is_not_a_test_and_not_counted(tmp_path):
    """K = 1 is on-policy: rho = 1, ERC clips nothing and both arms train identically; even where the
    numbers would give verdicts (here ERC's log is smooth, DAPO's zig-zags), none is given or counted."""
    _one_cell(tmp_path, "K1", {"DAPO": {}, "DAPO+ERC": {}},
              {"DAPO": lambda s: _on_policy(_rows(s, False, True, 10 + s, 0.5)),
               "DAPO+ERC": lambda s: _on_policy(_rows(s, True, False, None, 0.5))})
    vt = report.verdict_table("toy", tmp_path)
    assert (vt["verdict"] == vr.NOT_A_TEST).all() and (vt["status"] == vr.IDENTICAL).all() and not vt["counted"].any()
    text = report.study_report("toy", tmp_path)
    assert "Of 0 tests (0 primary, 0 exploratory)" in text and "Not counted: 5 not a test (identical by construction" in text
    assert "Not a test (identical by construction), K = 1 (no stale minibatch, ERC clipped no token), not counted: " \
           "K1 DAPO+ERC vs DAPO." in text
    assert "| K1 |" not in text


def test_an_erc_arm_that_clips_nothing_is_said_plainly(tmp_path):
    """Stale minibatches, but ERC clipped no token: a verdict on the band, said plainly."""
    _one_cell(tmp_path, "K4", {"DAPO": {}, "DAPO+ERC": {}},
              {"DAPO": lambda s: _rows(s, False, True, 10 + s, 0.5),
               "DAPO+ERC": lambda s: [{**r, "erc/clip_frac": 0.0} if r["kind"] == "minibatch" else r
                                      for r in _rows(s, True, True, 10 + s, 0.5)]})
    clip = _row(report.verdict_table("toy", tmp_path), "K4", "DAPO+ERC", "DAPO", report.CLIP)
    assert clip["verdict"] == claims.CONTRADICTED and clip["mean"] == 0     # 0 % is below the paper's band
    assert "0.0% [0.0%, 0.0%] contradicted (clipped no token)" in report.study_report("toy", tmp_path)


def _flat_accuracy(rows: list[dict], acc: float) -> list[dict]:
    """Every evaluation at ``acc``: the arm did not learn."""
    return [{**r, "eval/avg@4": acc} if r["kind"] == "eval" else r for r in rows]


def test_no_accuracy_verdict_where_dapo_did_not_learn(tmp_path):
    """ERC's final accuracy is 0.3 higher in every seed, but DAPO's held-out accuracy never rose: no
    accuracy verdict, not counted; the other measures keep theirs."""
    _one_cell(tmp_path, "K4", {"DAPO": {}, "DAPO+ERC": {}, "DAPO+random-mask": {}},
              {"DAPO": lambda s: _flat_accuracy(_rows(s, False, True, 10 + s, 0.2), 0.2 + 0.01 * s),
               "DAPO+ERC": lambda s: _rows(s, True, False, None, 0.5 + 0.01 * s),
               "DAPO+random-mask": lambda s: _rows(s, True, True, 10 + s, 0.5)})
    vt = report.verdict_table("toy", tmp_path)
    for other in ("DAPO", "DAPO+random-mask"):          # the reference arm is DAPO for the control too
        acc = _row(vt, "K4", "DAPO+ERC", other, "final_accuracy")
        assert acc["verdict"] == "no verdict (DAPO did not learn)" and acc["status"] == vr.NOT_LEARNED
        assert not acc["counted"] and acc["gain"] == pytest.approx(0.0)
        assert _row(vt, "K4", "DAPO+ERC", other, "entropy_volatility")["status"] == vr.VERDICT
    text = report.study_report("toy", tmp_path)
    assert "no verdict (DAPO did not learn): gain +0.000 < +0.10" in text
    assert "Not counted: 2 accuracy without a verdict (the reference arm did not learn)" in text


def test_accuracy_verdict_where_dapo_learned_and_primaries_from_the_definition(tmp_path):
    _one_cell(tmp_path, "K4", {"DAPO": {}, "DAPO+ERC": {}},
              {"DAPO": lambda s: _rows(s, False, True, 10 + s, 0.5 + 0.01 * s),
               "DAPO+ERC": lambda s: _rows(s, True, False, None, 0.6 + 0.01 * s)},
              hypotheses=[{"id": "H1", "cell": "K4", "arm": "DAPO+ERC", "baseline": "DAPO",
                           "measure": "final_accuracy", "direction": "higher", "text": "ERC ends higher"}])
    vt = report.verdict_table("toy", tmp_path)
    acc = _row(vt, "K4", "DAPO+ERC", "DAPO", "final_accuracy")
    # the registered comparison is judged in the primaries' table (Holm), not again among the exploratory ones
    assert acc["status"] == report.REGISTERED and acc["role"] == vr.PRIMARY and not acc["counted"]
    assert (vt.loc[vt["measure"] != "final_accuracy", "role"] == vr.EXPLORATORY).all()
    pt = report.primary_table("toy", tmp_path)
    h1 = pt.iloc[0]
    assert (h1["id"], h1["verdict"], h1["n"]) == ("H1", claims.SUPPORTED, 5) and h1["mean"] == pytest.approx(0.1)
    assert h1["p_holm"] == h1["p"] < 0.05            # one test: Holm leaves its p as it is
    text = report.study_report("toy", tmp_path)
    assert "| **H1** | ERC ends higher | K4 | DAPO+ERC - DAPO | 5 (unverified pairing) |" in text
    assert "Of 3 tests (0 primary, 3 exploratory)" in text and "primary H1 (Holm-corrected" in text
    assert "no registered_commit in study.json" in text


def test_kl_cov_spike_verdict_carries_its_caveat(tmp_path):
    _one_cell(tmp_path, "K4", {"DAPO+ERC": {}, "KL-Cov": {}},
              {"KL-Cov": lambda s: _rows(s, False, True, 10 + s, 0.5),
               "DAPO+ERC": lambda s: _rows(s, True, False, None, 0.5)})
    spikes = _row(report.verdict_table("toy", tmp_path), "K4", "DAPO+ERC", "KL-Cov", "grad_spikes")
    assert spikes["note"].startswith("not comparable") and spikes["verdict"] == claims.SUPPORTED
    line = next(ln for ln in report.study_report("toy", tmp_path).splitlines() if ln.startswith("| K4 |"))
    assert "supported (not comparable: KL-Cov's penalty keeps a tiny gradient" in line
    assert line.count("not comparable") == 1                # only beside the spike count


def _token_records(seed: int, low_clipped: bool) -> list[dict]:
    """Captured responses of one seed: 40 tokens, old entropy 0.1 .. 4.0; the 8 lowest (or, when not
    ``low_clipped``, the 8 highest) are ERC-clipped (state -1), one of them on the other side."""
    h = [0.1 * (i + 1) for i in range(40)]
    clipped = set(range(8)) if low_clipped else set(range(32, 40))
    clipped = (clipped - {min(clipped)}) | {20 + seed}
    return [{"step": 5, "staleness": 1, "row": i, "tokens": ["x"], "old_entropy": [h[i]], "entropy": [h[i]],
             "rho": [1.0], "ratio": [1.0], "erc_state": [-1 if i in clipped else 0], "erc_applied": True}
            for i in range(40)]


def test_claim2_from_token_captures(tmp_path):
    root = study_dir("caps", tmp_path)
    root.mkdir(parents=True)
    write_study_json(Study("caps", "cpu-tiny", {}, {"A": {}, "B": {}}, {"DAPO+ERC": {}}, [0, 1, 2, 3, 4],
                           capture_steps=[5]), root)
    for cell, seeds, low in (("A", range(5), True), ("B", range(5), False)):
        for sd in seeds:
            _write_run(root, cell, "DAPO+ERC", sd, _rows(sd, True, False, None, 0.5), tokens=_token_records(sd, low))
    tt = report.token_claim_table("caps", tmp_path).set_index("cell")
    assert tt.loc["A", "n"] == 5 and tt.loc["A", "tokens"] == 200
    assert tt.loc["A", "mean"] == pytest.approx(7 / 8) and tt.loc["A", "verdict"] == claims.SUPPORTED
    assert tt.loc["B", "mean"] == pytest.approx(0.0) and tt.loc["B", "verdict"] == claims.CONTRADICTED
    assert tt.loc["A", "median_H_clipped"] < tt.loc["A", "median_H_kept"]
    md = report.study_report("caps", tmp_path)
    assert "Claim 2" in md and "| A | DAPO+ERC | 5 | 200 | 87.5% [" in md and "contradicted" in md
    assert "Of 2 tests (0 primary, 2 exploratory): 1 supported, 0 not supported, 1 contradicted; about 0.1 would" in md
    assert report.token_claim_table("toy", _cache(tmp_path / "other")).empty   # no captures: no table
    assert "Claim 2" not in report.study_report("toy", tmp_path / "other")


def test_one_cell_report_says_whether_each_arm_learned(tmp_path):
    root = study_dir("one", tmp_path)
    root.mkdir(parents=True)
    write_study_json(Study("one", "cpu-tiny", {}, {"default": {}}, {"DAPO": {}, "DAPO+ERC": {}}, [0, 1, 2, 3, 4]), root)
    for s in range(5):
        _write_run(root, "default", "DAPO", s, _rows(s, False, False, None, 0.6))
        _write_run(root, "default", "DAPO+ERC", s, _rows(s, True, False, None, 0.7 + 0.01 * s))
    md = report.study_report("one", tmp_path)
    assert "Held-out accuracy, first -> last evaluation, mean over seeds: DAPO 0.200 -> 0.600 (n=5); " \
           "DAPO+ERC 0.200 -> 0.720 (n=5)." in md
    assert "Held-out accuracy, first -> last" not in report.study_report("toy", _cache(tmp_path / "two"))  # 2 cells
