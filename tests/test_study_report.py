"""ercref.study.report: the verdict table of a study cache (built here in tmp_path in the runner's
layout), `python -m ercref.study NAME --report`, and the README's "What we found" block, which must
equal the report of the committed cache."""
from __future__ import annotations

from pathlib import Path

import pytest

from ercref.study import claims, report, stability
from ercref.study.__main__ import main
from ercref.study.cache import read_run_log, run_paths, study_dir, write_run, write_study_json
from ercref.study.studies import Study, tiny_controls, tiny_stability_map

ROOT = Path(__file__).resolve().parents[1]
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
    assert vt.loc[vt["cell"] == "B", "verdict"].isna().all() and (vt.loc[vt["cell"] == "B", "n"] == 4).all()
    a = vt[vt["cell"] == "A"]
    assert a["verdict"].notna().all() and (a["n"] == 5).all()
    expected = {"entropy_volatility": claims.REPRODUCED, "grad_spikes": claims.REPRODUCED,
                "steps_to_collapse": claims.REPRODUCED, "final_accuracy": claims.CONTRADICTED,
                "erc_clip_frac": claims.REPRODUCED}
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
    """ERC smoother -> difference < 0 -> reproduced; ERC the one that zig-zags -> contradicted."""
    smooth = report.verdict_table("toy", _cache(tmp_path / "a"))
    rough = report.verdict_table("toy", _cache(tmp_path / "b", erc_zigzag=True))
    for measure in ("entropy_volatility", "grad_spikes"):
        s, r = _row(smooth, "A", "DAPO+ERC", "DAPO", measure), _row(rough, "A", "DAPO+ERC", "DAPO", measure)
        assert s["direction"] == r["direction"] == -1
        assert s["high"] < 0 and s["verdict"] == claims.REPRODUCED
        assert r["low"] > 0 and r["verdict"] == claims.CONTRADICTED


def test_markdown_report_and_cli(tmp_path, capsys):
    _cache(tmp_path)
    text = report.study_report("toy", tmp_path)
    assert text.startswith(f"Study `toy` (cache `{tmp_path / 'toy'}`): 23 runs cached")
    assert "seeds [0, 1, 2, 3, 4]" in text and "2.30 run-hours" in text and "`0123456789ab-dirty` (23 runs)" in text
    assert "B DAPO+ERC vs DAPO (n=4 seeds: no verdict)" in text
    table = [line for line in text.splitlines() if line.startswith("| A |")]
    assert len(table) == 2 and all(line.count(" reproduced") == 4 and " contradicted" in line for line in table)
    assert "Of 8 tests with >= 5 paired seeds: 6 reproduced, 2 contradicted, 0 inconclusive (if no arm differed" in text
    assert "about 0.4 of them would exclude 0 by chance alone" in text
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
    assert acc["verdict"] == claims.INCONCLUSIVE and acc["mde"] > 0
    text = report.study_report("toy", tmp_path)
    assert f"inconclusive, MDE {acc['mde']:.2g}" in text and "(no run collapsed)" in text


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


@pytest.mark.slow
def test_readme_blocks_are_the_reports_of_the_committed_cache(tmp_path):
    readme = (ROOT / "README.md").read_text()
    blocks = list(report.README_BLOCK.finditer(readme))
    assert {m.group(2) for m in blocks} >= {"tiny-stability-map", "tiny-controls"}, \
        "README.md lacks the <!-- study-report: NAME --> ... <!-- /study-report --> blocks"
    for m in blocks:
        name, block = m.group(2), m.group(3)
        assert block.strip() == report.study_report(name).strip(), (
            f"README.md's study report is not the report of the cache data/results/{name}: run `make study-report`")
    copy = tmp_path / "README.md"                     # refresh_readme rewrites exactly those blocks
    copy.write_text(readme.replace(blocks[0].group(3), "stale\n"))
    assert report.refresh_readme(copy) == [m.group(2) for m in blocks] and copy.read_text() == readme


def test_an_erc_arm_that_clips_nothing_is_said_plainly(tmp_path):
    """K = 1 is on-policy: rho = 1, ERC clips nothing and both arms train identically."""
    study = Study("toy", "cpu-tiny", {}, {"K1": {}}, {"DAPO": {}, "DAPO+ERC": {}}, [0, 1, 2, 3, 4])
    root = study_dir("toy", tmp_path)
    root.mkdir(parents=True)
    write_study_json(study, root)
    for s in range(5):
        rows = _rows(s, False, True, 10 + s, 0.5)
        _write_run(root, "K1", "DAPO", s, rows)
        _write_run(root, "K1", "DAPO+ERC", s, [{**r, "erc/clip_frac": 0.0} if r["kind"] == "minibatch" else r for r in rows])
    vt = report.verdict_table("toy", tmp_path)
    assert set(vt.loc[vt["measure"] != report.CLIP, "verdict"]) == {claims.INCONCLUSIVE}
    assert (vt.loc[vt["measure"] != report.CLIP, "mean"] == 0).all()
    clip = _row(vt, "K1", "DAPO+ERC", "DAPO", report.CLIP)
    assert clip["verdict"] == claims.CONTRADICTED and clip["mean"] == 0     # 0 % is below the paper's band
    assert "0.0% [0.0%, 0.0%] contradicted (clipped no token)" in report.study_report("toy", tmp_path)


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
    assert tt.loc["A", "mean"] == pytest.approx(7 / 8) and tt.loc["A", "verdict"] == claims.REPRODUCED
    assert tt.loc["B", "mean"] == pytest.approx(0.0) and tt.loc["B", "verdict"] == claims.CONTRADICTED
    assert tt.loc["A", "median_H_clipped"] < tt.loc["A", "median_H_kept"]
    md = report.study_report("caps", tmp_path)
    assert "Claim 2" in md and "| A | DAPO+ERC | 5 | 200 | 87.5% [" in md and "contradicted" in md
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
