"""The RL loop end to end on the tiny model: log-prob agreement, learning, kill-and-resume,
outputs of the CLI, checkpoint mechanics."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ercref.lm import checkpoint as ckpt
from ercref.lm.config import make_config
from ercref.lm.metrics_log import read_log, strip_timing
from ercref.lm.trainer import CRASH_DURING_ENV, CRASH_ENV, Trainer, pass_at_k

REPO = Path(__file__).resolve().parents[1]
# a small, fast variant of cpu-tiny: 8 prompts x 4 samples, K = 4 minibatches of 2 prompts
SMALL = ["sft.steps=40", "sft.batch_size=32", "rollout.prompts_per_step=8", "rollout.group_size=4", "train.minibatch_prompts=2",
         "train.progress=false", "train.plot=false", "data.num_eval=8", "train.eval_k=2"]


def test_pass_at_k():
    c = torch.tensor([[True, False, False], [False, False, False], [True, True, True]])
    avg, pas = pass_at_k(c)
    assert avg == pytest.approx(4 / 9) and pas == pytest.approx(2 / 3)


def test_trainer_logprobs_match_rollout_on_first_minibatch(tmp_path):
    """Staleness 0: the trainer's recomputed log-probs equal the rollout's within 1e-5 (fp32, CPU).
    Later minibatches follow optimizer steps, so the same measurement must then see a change."""
    cfg = make_config("cpu-tiny", overrides=SMALL + ["train.steps=2"])
    tr = Trainer(cfg, tmp_path)
    for _ in range(2):
        tr.train_step()
    mbs = read_log(tr.log.path, "minibatch")
    assert [m["staleness"] for m in mbs] == [0, 1, 2, 3] * 2
    for m in mbs:
        if m["staleness"] == 0:
            assert m["logp/max_abs_diff_old"] < 1e-5
    assert max(m["logp/max_abs_diff_old"] for m in mbs if m["staleness"] > 0) > 1e-4
    steps = read_log(tr.log.path, "step")
    for name in ("reward/mean", "reward/accuracy", "len/response_mean", "entropy/old_mean", "entropy/new_mean",
                 "erc/clip_frac", "erc/clip_frac_low", "erc/clip_frac_high", "ppo/clip_frac_low", "ppo/clip_frac_high",
                 "ppo/dual_clip_frac", "grad/norm", "grad/zero_frac", "kl/approx_old", "perf/tokens_per_s",
                 "time/generate_s", "time/old_logprob_s", "time/update_s"):
        assert name in steps[-1], name
    # ERC clip fraction = low side + high side
    for m in mbs:
        assert m["erc/clip_frac"] == pytest.approx(m["erc/clip_frac_low"] + m["erc/clip_frac_high"])


def test_dynamic_sampling_drops_uniform_groups(tmp_path):
    cfg = make_config("cpu-tiny", overrides=SMALL + ["sft.steps=0", "loss.dynamic_sampling=true", "train.steps=1"])
    tr = Trainer(cfg, tmp_path)  # a random model gets every answer wrong: all groups uniform
    rec = tr.train_step()
    assert rec["reward/mean"] == 0.0 and rec["batch/kept_groups"] == 0 and rec["batch/minibatches"] == 0
    assert read_log(tr.log.path, "minibatch") == []


@pytest.mark.slow
def test_cpu_tiny_learns(tmp_path):
    """The cpu-tiny preset (seeded) raises mean reward over its own first steps, and eval avg@k."""
    cfg = make_config("cpu-tiny", overrides=["train.progress=false"])
    tr = Trainer(cfg, tmp_path)
    hist = tr.fit()
    r = [h["reward/mean"] for h in hist]
    first, last = sum(r[:5]) / 5, sum(r[-5:]) / 5
    assert last > first + 0.03, (first, last)
    ev = read_log(tr.log.path, "eval")
    k = cfg.train.eval_k
    assert ev[0]["step"] == 0 and ev[-1]["step"] == cfg.train.steps
    assert ev[-1][f"eval/avg@{k}"] > ev[0][f"eval/avg@{k}"]
    assert (tmp_path / "plot.png").stat().st_size > 10_000
    assert ckpt.latest_checkpoint(tmp_path / "checkpoints").name == f"ckpt-{cfg.train.steps:08d}.pt"


def _cli(out, extra, env_extra=None):
    env = dict(os.environ, **(env_extra or {}))
    args = [sys.executable, "-m", "ercref.train", "--preset", "cpu-tiny", "--out", str(out)]
    args += [a for o in SMALL + ["train.steps=6", "train.save_every=2", "train.keep_last=2"] + extra for a in ("--set", o)]
    return subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("full")
    p = _cli(out, [])
    assert p.returncode == 0, p.stderr[-2000:]
    return out


@pytest.mark.slow
@pytest.mark.parametrize("env", [{CRASH_DURING_ENV: "5"}, {CRASH_ENV: "4"}], ids=["mid-step-5", "after-ckpt-4"])
def test_kill_and_resume_is_exact(uninterrupted, tmp_path, env):
    """SIGKILL the run (mid-step, or right after a checkpoint), resume: the log and the final
    weights equal those of the uninterrupted run exactly."""
    killed = _cli(tmp_path, [], env)
    assert killed.returncode == -9, killed.stderr[-2000:]  # really killed by SIGKILL
    assert ckpt.latest_checkpoint(tmp_path / "checkpoints").name == "ckpt-00000004.pt"
    if CRASH_DURING_ENV in env:  # the killed run logged part of step 5, past its last checkpoint
        assert any(r.get("step") == 5 for r in read_log(tmp_path / "metrics.jsonl"))
    resumed = subprocess.run([sys.executable, "-m", "ercref.train", "--out", str(tmp_path), "--resume"],
                             cwd=REPO, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    full = [strip_timing(r) for r in read_log(uninterrupted / "metrics.jsonl")]
    again = [strip_timing(r) for r in read_log(tmp_path / "metrics.jsonl")]
    assert len(again) == len(full) and again == full
    a = ckpt.load_checkpoint(ckpt.latest_checkpoint(uninterrupted / "checkpoints"))
    b = ckpt.load_checkpoint(ckpt.latest_checkpoint(tmp_path / "checkpoints"))
    assert a["step"] == b["step"] == 6 and a["cursor"] == b["cursor"]
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k


def test_checkpoint_atomic_and_pruned(tmp_path):
    d = tmp_path / "ck"
    (d).mkdir()
    (d / ".ckpt-00000009.pt.tmp-123").write_bytes(b"half")  # a killed writer's temporary
    for s in (1, 2, 3):
        ckpt.save_checkpoint(d, s, {"x": torch.tensor([s])}, keep_last=2)
    assert [p.name for _, p in ckpt.list_checkpoints(d)] == ["ckpt-00000002.pt", "ckpt-00000003.pt"]
    assert sorted(p.name for p in d.iterdir()) == ["ckpt-00000002.pt", "ckpt-00000003.pt"]
    state = ckpt.load_checkpoint(ckpt.latest_checkpoint(d))
    assert state["step"] == 3 and state["x"].item() == 3 and {"torch", "python", "numpy"} <= set(state["rng"])
    with pytest.raises(ValueError, match="does not exist"):
        ckpt.load_checkpoint(d / "ckpt-00000099.pt")


def test_rng_state_roundtrip():
    import random

    import numpy as np

    s = ckpt.rng_state()
    a = (torch.rand(3), random.random(), np.random.rand())
    ckpt.set_rng_state(s)
    b = (torch.rand(3), random.random(), np.random.rand())
    assert torch.equal(a[0], b[0]) and a[1:] == b[1:]
