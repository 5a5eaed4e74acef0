"""The branching runner (ercref.study.branch*): identical starting states, zero drift at lr 0, ERC with
an unreachable band equal to DAPO bit for bit, the searches, the records and their resume."""
from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest
import torch

from ercref.study import branch, branch_arms, branch_record
from ercref.study.branch_study import SEARCHED, BranchStudy, dapo_controls, get_branch_study, load_preregistration
from ercref.study.studies import erc_arm

BASE = {"train.threads": 1, "train.progress": False, "train.plot": False, "rollout.prompts_per_step": 4,
        "rollout.group_size": 4, "sft.steps": 60, "data.num_eval": 16, "train.save_checkpoints": False}
LR = 1e-2   # large for the tiny model: the stale minibatches move the entropy past ERC's band


def small_study(**kw) -> BranchStudy:
    args = dict(name="t-branch", preset="cpu-tiny", base=BASE,
                trajectory={**erc_arm("dapo", None), "train.minibatch_prompts": 4}, arms=dapo_controls(), seeds=[0],
                branch_steps=[2], ks=[4], branch_lr=LR, matched=dict(SEARCHED["matched"]),
                tight_clip=dict(SEARCHED["tight_clip"]), heldout_prompts=4, heldout_samples=2, accuracy_prompts=8)
    return BranchStudy(**{**args, **kw})


@pytest.fixture(scope="module")
def point():
    """A trainer at step 2 of a small trajectory, its captured state and one branch point."""
    from ercref.lm.config import make_config
    from ercref.lm.trainer import Trainer

    threads = torch.get_num_threads()
    study = small_study()
    import tempfile

    trainer = Trainer(make_config(study.preset, overrides=study.trajectory_overrides(0)), tempfile.mkdtemp() + "/run")
    trainer.start()
    for _ in range(2):
        trainer.train_step()
    state = branch_arms.capture(trainer)
    p = branch_arms.BranchPoint.sample(trainer, state, 4, 2, 8)
    yield study, trainer, p
    torch.set_num_threads(threads)


def arm_cfg(study, arm, k=4, extra=None):
    from ercref.lm.config import make_config

    return make_config(study.preset, overrides=study.arm_overrides(arm, k, 0, extra))


def weights(trainer):
    return {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}


@pytest.mark.slow
def test_arms_start_from_identical_state(point):
    study, trainer, p = point
    assert p.rewards.std() > 0, "the branch batch must have varied rewards for the updates to differ"
    seen = []
    for arm in ("DAPO", "DAPO+ERC", "DAPO+random-mask"):
        branch_arms.restore(trainer, p.state)
        assert branch_arms.trainer_state_hash(trainer) == p.state.sha256
        w = weights(trainer)
        assert all(torch.equal(w[k], p.state.model[k]) for k in w)
        p.run(trainer, arm_cfg(study, arm), LR)
        seen.append(weights(trainer))
    assert branch_arms.trainer_state_hash(trainer) != p.state.sha256          # an update moved it
    assert not all(torch.equal(seen[0][k], seen[1][k]) for k in seen[0])   # ERC's update differs from DAPO's


@pytest.mark.slow
def test_lr_zero_gives_zero_drift(point):
    study, trainer, p = point
    fields = p.measure(trainer, p.run(trainer, arm_cfg(study, "DAPO"), 0.0))
    assert fields["update_norm"] == 0.0
    assert fields["heldout_acc_after"] == fields["heldout_acc_before"]
    for region in ("trained", "other", "heldout"):
        d = fields["drift"][region]
        assert d, region
        for key, v in d.items():
            if key == "drift/tokens":
                continue
            want = 1.0 if "/entropy_ratio/" in key else 0.0
            assert v == want, (region, key, v)
    assert fields["hist"]["heldout"][0] == fields["n_tokens"]["heldout"] > 0   # every KL in the [0, 1e-8) bin
    j = fields["heldout_judged"]   # the weights pi_new / pi_old are exactly 1 before any update
    assert j["mean_w"] == 1.0 and j["max_w"] == 1.0 and j["delta"] == 0.0 and j["acc_new"] == j["acc_old"]
    assert j["n"] == 4 * 2 and j["ess"] == pytest.approx(8.0)


@pytest.mark.slow
def test_judged_accuracy_is_the_judges_mean_on_the_heldout_responses_reweighted(point):
    study, trainer, p = point
    correct, logp_old = p.judgement
    assert correct.shape == (8,) and set(correct.tolist()) <= {0.0, 1.0}
    from ercref.lm.scoring import score_responses

    _, again = score_responses(p.heldout.texts, p.heldout.answers, trainer.cfg.reward, p.heldout.response_lengths,
                               trainer.cfg.rollout.max_new_tokens)
    assert torch.equal(again.float(), correct)
    fields = p.measure(trainer, p.run(trainer, arm_cfg(study, "DAPO"), LR))
    j = fields["heldout_judged"]
    assert j["acc_old"] == pytest.approx(float(correct.double().mean()))
    assert j["mean_w"] != 1.0 and 0 < j["ess"] <= 8 + 1e-9   # the update moved the held-out responses' probabilities
    assert j["delta"] == pytest.approx(j["acc_new"] - j["acc_old"], abs=1e-12)


@pytest.mark.slow
def test_erc_with_unreachable_band_equals_dapo_bit_for_bit(point):
    study, trainer, p = point
    dapo = p.measure(trainer, p.run(trainer, arm_cfg(study, "DAPO"), LR))
    w_dapo = weights(trainer)
    wide = {"loss.erc": True, "loss.beta_low": 0.999999, "loss.beta_high": 1e9}
    erc = p.measure(trainer, p.run(trainer, arm_cfg(study, "DAPO", extra=wide), LR))
    assert erc["clip"]["erc"] == 0.0
    assert all(torch.equal(w_dapo[k], v) for k, v in weights(trainer).items())
    assert erc["drift"] == dapo["drift"] and erc["update_norm"] == dapo["update_norm"]
    narrow = p.measure(trainer, p.run(trainer, arm_cfg(study, "DAPO+ERC"), LR))
    assert narrow["clip"]["erc"] > 0 and narrow["update_norm"] != dapo["update_norm"]


def test_bracket_secant_matches_within_tolerance():
    calls = []

    def f(x):
        calls.append(x)
        return 3.0 * x ** 0.7 + 0.1 * math.sin(5 * x), x

    target = 2.0
    x, tries, payload = branch_arms.bracket_secant(f, 1.0, target, lambda v: abs(v / target - 1) <= 0.02, 8)
    assert abs(f(x)[0] / target - 1) <= 0.02 and payload == x and len(tries) == len(calls) - 1 <= 8
    # a target beyond the bound: one try at the bound shows it, and the search stops there
    x, tries, _ = branch_arms.bracket_secant(lambda x: (x, None), 1.0, 100.0, lambda v: False, 8,
                                             proportional=False, bounds=(0.5, 4.0))
    assert x == 4.0 and [t[0] for t in tries] == [1.0, 4.0]


@pytest.fixture(scope="module")
def study_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("branch")
    study = small_study()
    res = branch.run_branch_study(study, d, require_registered=False, log=lambda *a: None)
    return study, d, res


def records(d, study):
    return {p.stem: json.loads(p.read_text()) for p in sorted((d / study.name).glob("traj*/step*/K*/*.json"))}


@pytest.mark.slow
def test_records_have_every_schema_key_and_share_the_state(study_run):
    study, d, res = study_run
    recs = records(d, study)
    assert set(recs) == set(study.arms) and res["written"] == len(study.arms)
    for r in recs.values():
        assert set(branch_record.RECORD_KEYS) <= set(r)
        assert set(r["drift"]) == {"trained", "other", "heldout"} and "drift/kl_old_new/p99" in r["drift"]["heldout"]
        assert len(r["hist"]["trained"]) == len(r["hist"]["heldout"]) == 82
        assert sum(r["hist"]["heldout"]) == r["n_tokens"]["heldout"] > 0
        assert r["torch_threads"] == 1 and r["cpu_model"]
    assert len({r["state_sha256"] for r in recs.values()}) == 1
    spec = json.loads((d / study.name / "study.json").read_text())
    assert [h["id"] for h in spec["hypotheses"]] == ["H1", "H2", "H3", "H4"] and spec["holm"] is True
    assert "registered_commit" in spec


@pytest.mark.slow
def test_matched_step_within_two_percent_and_tight_clip_searched(study_run):
    study, d, _ = study_run
    recs = records(d, study)
    m = recs["DAPO-matched-step"]["matched"]
    target = recs["DAPO+ERC"]["update_norm"]
    assert m["target_norm"] == target and abs(recs["DAPO-matched-step"]["update_norm"] / target - 1) <= 0.02
    assert m["within_tol"] and recs["DAPO-matched-step"]["lr"] == m["lr"]
    t = recs["DAPO-tight-clip"]["tight_clip"]
    assert t["target_share"] == recs["DAPO+ERC"]["clip"]["erc"] > 0 and t["tries"] >= 1
    assert recs["DAPO-tight-clip"]["overrides"]["loss.loss_kwargs.eps_low"] == t["eps"]
    assert recs["DAPO-tight-clip"]["clip"]["ppo"] == t["achieved_share"]


@pytest.mark.slow
def test_resume_skips_finished_and_reruns_a_damaged_record(study_run):
    study, d, _ = study_run
    root = d / study.name
    again = branch.run_branch_study(study, d, require_registered=False, log=lambda *a: None)
    assert again["written"] == 0 and again["points"] == 0
    target = branch_record.record_path(root, 0, 2, 4, "DAPO+random-mask")
    before = records(d, study)["DAPO+random-mask"]
    raw = bytearray(target.read_bytes())
    raw[raw.index(b'"wall_s"') + 12] ^= 1
    target.write_bytes(bytes(raw))
    st = branch.status(study, d)
    assert st["damaged"] == 1 and str(target) in st["problems"][0]
    files_before = {p for p in root.rglob("*") if p.is_file()}
    # a run limited to other branch steps leaves it; the study's step, named, runs it again
    two_steps = replace(study, branch_steps=[1, 2])
    assert branch.branch_points_todo(two_steps, root, [0]) == [(1, 0), (2, 0)]
    assert branch.branch_points_todo(two_steps, root, [0], steps=[1]) == [(1, 0)]
    with pytest.raises(ValueError, match=r"steps \[3\] are not branch steps"):
        branch.run_branch_study(study, d, require_registered=False, steps=[3])
    lines = []
    third = branch.run_branch_study(study, d, require_registered=False, log=lines.append, steps=[2])
    assert third["written"] == 1 and any("damaged" in x and "DAPO+random-mask" in x for x in lines)
    aside = list((root / branch_record.SET_ASIDE).rglob("DAPO+random-mask.json.*"))
    assert len(aside) == 1 and aside[0].read_bytes() == bytes(raw)          # kept, not deleted
    assert files_before <= {p for p in root.rglob("*") if p.is_file()} | {target}
    rec = branch_record.read_record(target)
    assert rec["state_sha256"] == before["state_sha256"] and rec["drift"] == before["drift"]   # deterministic rerun


@pytest.mark.slow
def test_a_judged_study_sets_aside_records_made_without_the_judged_accuracy(study_run):
    study, d, _ = study_run
    root = d / study.name
    for r in records(d, study).values():
        assert set(r["heldout_judged"]) == {"acc_old", "acc_new", "delta", "mean_w", "ess", "max_w", "n"}
    target = branch_record.record_path(root, 0, 2, 4, "DAPO")
    old = {k: v for k, v in branch_record.read_record(target).items() if k not in ("heldout_judged", "meta_sha256")}
    branch_record.write_atomic(target, branch_record.record_bytes(old))    # a record as made before the measure
    assert branch.status(study, d)["damaged"] == 0                         # not needed by this study's report
    judged = replace(study, accuracy="judged")
    st = branch.status(judged, d)
    assert st["damaged"] == 1 and "heldout_judged" in st["problems"][0]
    from ercref.study.branch_records import load_branch

    branch.write_branch_study_json(judged, root, branch.registered_commit())
    assert json.loads((root / "study.json").read_text())["accuracy"] == "judged"   # the records carry the measure
    df = load_branch(study.name, d, warn=False)
    assert len(df) == len(study.arms) - 1 and any("lacks heldout_judged" in x for x in df.attrs["problems"])
    assert (df["heldout_acc_before"] == df["judged/acc_old"]).all()
    lines = []
    again = branch.run_branch_study(judged, d, require_registered=False, log=lines.append)
    assert again["written"] == 1 and any("set aside" in x and "heldout_judged" in x for x in lines)
    assert "heldout_judged" in branch_record.read_record(target)
    with pytest.raises(ValueError, match="accuracy of study"):
        replace(study, accuracy="exact")


def test_damaged_record_is_named():
    rec = {k: 0 for k in branch_record.RECORD_KEYS if k != "meta_sha256"}
    data = branch_record.record_bytes(rec)
    assert json.loads(data)["meta_sha256"] != "0" * 64
    import tempfile
    from pathlib import Path

    p = Path(tempfile.mkdtemp()) / "DAPO.json"
    p.write_bytes(data.replace(b'"lr": 0', b'"lr": 1'))
    with pytest.raises(ValueError, match="DAPO.json.*own hash"):
        branch_record.read_record(p)
    p.write_bytes(data)
    assert branch_record.read_record(p)["lr"] == 0


def test_kl_hist_bins():
    h = branch_record.kl_hist([0.0, 1e-9, 1e-8, 0.05, 100.0, float("inf")])
    assert len(h) == 82 and sum(h) == 6
    assert h[0] == 2 and h[1] == 1 and h[81] == 2
    with pytest.raises(ValueError, match="kl_hist"):
        branch_record.kl_hist([-1.0])


def test_study_definitions_and_cli_status(tmp_path, capsys):
    pre = load_preregistration()
    assert [h["id"] for h in pre["hypotheses"]] == ["H1", "H2", "H3", "H4"]
    tiny = get_branch_study("tiny-branch")
    assert len(tiny.seeds) >= 5 and len(tiny.branch_steps) >= 6 and tiny.ks == [2, 4, 8, 16]
    assert {"DAPO", "DAPO+ERC", "DAPO+random-mask", "DAPO-matched-step", "DAPO-tight-clip", "GPPO", "GPPO+ERC",
            "GSPO", "GSPO+ERC", "DAPO+ERC-b0.01", "DAPO+ERC-b0.1", "DAPO+ERC-b0.2"} == set(tiny.arms)
    smol = get_branch_study("smollm2-branch")
    assert smol.ks == [4, 8] and len(smol.seeds) >= 5 and len(smol.branch_steps) >= 6
    for s in (tiny, smol):
        for arm in s.arms:
            for k in s.ks:
                arm_cfg(s, arm, k)   # every arm builds a valid config at every K
    with pytest.raises(ValueError, match="K = 3 must divide"):
        replace(tiny, ks=[3]).__post_init__()
    assert branch.main(["tiny-branch", "--status", "--results-dir", str(tmp_path)]) == 0
    assert "0 / 1440 records finished" in capsys.readouterr().out   # 5 seeds x 6 steps x 4 K x 12 arms


def test_refuses_unregistered_hypotheses_and_a_changed_definition(tmp_path, monkeypatch):
    study = small_study()
    monkeypatch.setattr(branch, "registered_commit", lambda *a: None)
    with pytest.raises(ValueError, match="not committed"):
        branch.run_branch_study(study, tmp_path)
    assert not (tmp_path / study.name).exists()
    branch.write_branch_study_json(study, tmp_path / study.name, "abc")
    with pytest.raises(ValueError, match="branch_lr changed"):
        branch.write_branch_study_json(replace(study, branch_lr=0.5), tmp_path / study.name, "abc")
    with pytest.raises(ValueError, match="registered_commit abc"):
        branch.write_branch_study_json(study, tmp_path / study.name, "def")
    branch.write_branch_study_json(replace(study, seeds=[1]), tmp_path / study.name, "abc")   # more seeds: fine
    assert json.loads((tmp_path / study.name / "study.json").read_text())["seeds"] == [0, 1]
