"""Replication of a study's verdicts on another machine (ercref.study.replicate): which comparisons are
compared, the merged judgement, the report and its block."""
from __future__ import annotations

import pytest

from ercref.study import replicate
from ercref.study import verdict_rules as vr
from ercref.study.cache import study_dir, write_run, write_study_json
from ercref.study.studies import Study

STEPS, K = 12, 4
ARMS = {"DAPO": {}, "DAPO+ERC": {}, "DAPO+random-mask": {}}


def rows(seed: int, erc: bool, zigzag: bool) -> list[dict]:
    """Steps with an entropy that zig-zags (``zigzag``) or falls smoothly; K minibatches each."""
    out = [{"kind": "eval", "step": 0, "eval/avg@1": 0.2}, {"kind": "eval", "step": STEPS, "eval/avg@1": 0.25}]
    for t in range(1, STEPS + 1):
        h = 1.0 - 0.01 * t + 0.002 * seed * t + ((0.2 if t % 2 else -0.2) + 0.01 * seed if zigzag else 0.0)
        out.append({"kind": "step", "step": t, "entropy/old_mean": h, "rollout/distinct_frac": 0.5})
        for k in range(K):
            rec = {"kind": "minibatch", "step": t, "staleness": k, "grad/norm": 1.0 + 0.01 * ((t + k + seed) % 3)}
            if erc:
                rec["erc/clip_frac"] = 0.0 if k == 0 else 0.2
            out.append(rec)
    return out


def cache(root_dir, name: str, arms: dict, seeds, cpu: str) -> None:
    """``arms``: {arm: zigzag?}; one run per arm and seed."""
    study = Study(name, "cpu-tiny", {"train.threads": 1}, {"K4": {}}, ARMS, [0, 1, 2, 3, 4])
    root = study_dir(name, root_dir)
    root.mkdir(parents=True, exist_ok=True)
    write_study_json(study, root)
    for arm, zig in arms.items():
        for s in seeds:
            write_run(root, "K4", arm, s, {"cell": "K4", "arm": arm, "seed": s, "git_commit": "0" * 40, "wall_s": 9.0,
                                           "machine": {"cpu": cpu}, "finished": "2026-12-07 10:00:00",
                                           "config": {"train": {"threads": 1 if cpu == "cpu A" else 2}}},
                      rows(s, "ERC" in arm, zig))


def test_a_replica_that_reverses_an_arm_changes_its_verdicts_and_only_compared_pairs_count(tmp_path):
    """Original: DAPO zig-zags, ERC and the random mask are smooth (ERC lower volatility than DAPO:
    supported). Replica of DAPO and DAPO+ERC, all five seeds, on another CPU where ERC zig-zags and DAPO
    is smooth: that verdict flips; the random mask was not rerun, so its comparisons are not compared."""
    orig, rep = tmp_path / "orig", tmp_path / "rep"
    cache(orig, "toy", {"DAPO": True, "DAPO+ERC": False, "DAPO+random-mask": False}, range(5), "cpu A")
    cache(rep, "toy", {"DAPO": False, "DAPO+ERC": True}, range(5), "cpu B")
    t = replicate.replication_table("toy", rep, orig)
    assert set(t.loc[t["measure"] != "erc_clip_frac", "other_arm"]) == {"DAPO"}   # ERC's own clip rate: any pair
    assert (t["measure"] == "erc_clip_frac").sum() == 1                          # shown once per ERC arm
    assert (t["seeds"].map(tuple) == (0, 1, 2, 3, 4)).all()
    vol = t[t["measure"] == "entropy_volatility"].iloc[0]
    assert (vol["original"], vol["replica"], vol["same"]) == (vr.SUPPORTED, vr.CONTRADICTED, False)
    assert t.attrs["cpus"] == (["cpu A"], ["cpu B"]) and t.attrs["threads"] == ([1], [2])
    text = replicate.replication_report("toy", rep, orig)
    assert "on cpu B, torch threads [2] (the original runs: cpu A, threads [1])" in text
    assert f"**{int(t['same'].sum())} of {len(t)} verdicts the same**" in text and "| **no** |" in text


def test_an_identical_replica_replicates_every_verdict_and_partial_seeds_are_merged(tmp_path):
    orig, rep = tmp_path / "orig", tmp_path / "rep"
    arms = {"DAPO": True, "DAPO+ERC": False, "DAPO+random-mask": True}
    cache(orig, "toy", arms, range(5), "cpu A")
    cache(rep, "toy", arms, [3, 4], "cpu B")         # two seeds rerun, the same logs
    t = replicate.replication_table("toy", rep, orig)
    assert len(t) > 0 and t["same"].all() and (t["seeds"].map(tuple) == (3, 4)).all()
    # arms rerun for different seeds: only the seeds both have replace the originals (a pair never
    # joins runs of two machines), here 3 and 4; seed 2's DAPO+ERC rerun is not used
    cache(rep / "x", "toy", {"DAPO": True}, [3, 4], "cpu B")
    cache(rep / "x", "toy", {"DAPO+ERC": False}, [2, 3, 4], "cpu B")
    t2 = replicate.replication_table("toy", rep / "x", orig)
    assert len(t2) > 0 and (t2["seeds"].map(tuple) == (3, 4)).all() and set(t2["other_arm"]) == {"DAPO"}


def test_nothing_rerun_says_so_and_bad_threads_are_refused(tmp_path):
    cache(tmp_path / "orig", "toy", {"DAPO": True, "DAPO+ERC": False}, range(5), "cpu A")
    assert replicate.replication_table("toy", tmp_path / "none", tmp_path / "orig").empty
    assert "No replication of `toy` yet" in replicate.replication_report("toy", tmp_path / "none", tmp_path / "orig")
    study = Study("toy", "cpu-tiny", {"train.threads": 1}, {"K4": {}}, ARMS, [0])
    assert replicate.replica_study(study, 2).base["train.threads"] == 2 and replicate.replica_study(study) is study
    for bad in (0, True, 1.5):
        with pytest.raises(ValueError, match="threads must be an int >= 1"):
            replicate.replica_study(study, bad)


def test_the_replication_block_is_rewritten_from_the_caches(tmp_path):
    orig, rep = tmp_path / "orig", tmp_path / "rep"
    cache(orig, "toy", {"DAPO": True, "DAPO+ERC": False}, range(5), "cpu A")
    cache(rep, "toy", {"DAPO": True, "DAPO+ERC": False}, range(5), "cpu B")
    page = tmp_path / "results.md"
    page.write_text("intro\n<!-- replication-report: toy -->\nold\n<!-- /replication-report -->\nend\n")
    assert replicate.refresh_replication_blocks(page, rep, orig) == ["toy"]
    text = page.read_text()
    assert "old" not in text and replicate.replication_report("toy", rep, orig) in text and text.endswith("end\n")
