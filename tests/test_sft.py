"""The supervised warm-up (ercref.lm.sft): without a target exactly sft.steps steps; with one it stops
at the first check whose sampled training accuracy reaches it, deterministically, and the checks leave
the weights and the RL run's random numbers untouched."""
import pytest
import torch

from ercref.lm.config import make_config
from ercref.lm.metrics_log import read_log
from ercref.lm.sft import sft_warmup, training_accuracy
from ercref.lm.trainer import Trainer

BASE = ["train.progress=false", "train.plot=false", "data.num_eval=8", "train.save_checkpoints=false"]


def warmed(tmp_path, name, extra):
    tr = Trainer(make_config("cpu-tiny", overrides=BASE + extra), tmp_path / name)
    tr.start()
    return tr, read_log(tr.log.path, "sft"), torch.get_rng_state()


@pytest.mark.slow
def test_an_unreachable_target_changes_nothing_but_the_log(tmp_path):
    plain, log_plain, rng_plain = warmed(tmp_path, "plain", ["sft.steps=30"])
    checked, log_checked, rng_checked = warmed(tmp_path, "checked", ["sft.steps=30", "sft.target_accuracy=1",
                                                                     "sft.check_every=10", "sft.check_prompts=16"])
    for k, v in plain.model.state_dict().items():
        assert torch.equal(v, checked.model.state_dict()[k]), k        # same weights, bit for bit
    assert torch.equal(rng_plain, rng_checked)                          # RL draws the same random numbers
    assert not any("sft/check_accuracy" in r for r in log_plain)
    checks = [r for r in log_checked if "sft/check_accuracy" in r]
    assert [r["sft_step"] for r in checks] == [0, 10, 20]
    assert log_checked[-1]["sft/steps_taken"] == 30


@pytest.mark.slow
def test_a_reachable_target_stops_at_the_first_check_that_reaches_it(tmp_path):
    probe, log, _ = warmed(tmp_path, "probe", ["sft.steps=100", "sft.target_accuracy=1", "sft.check_every=25",
                                               "sft.check_prompts=32"])
    accs = {r["sft_step"]: r["sft/check_accuracy"] for r in log if "sft/check_accuracy" in r}
    assert len(accs) == 4 and max(accs.values()) > min(accs.values())   # the warm-up raises the accuracy
    target = max(accs.values())
    first = min(s for s, a in accs.items() if a >= target)
    tr, log2, _ = warmed(tmp_path, "stopped", ["sft.steps=100", f"sft.target_accuracy={target}", "sft.check_every=25",
                                               "sft.check_prompts=32"])
    assert log2[-1]["sft/steps_taken"] == first
    assert [r["sft/check_accuracy"] for r in log2 if "sft/check_accuracy" in r] == \
        [accs[s] for s in sorted(accs) if s <= first]                   # the same checks, the same numbers
    assert training_accuracy(tr, first) == accs[first]                  # a check is reproducible


def test_target_accuracy_is_a_fraction():
    with pytest.raises(ValueError, match="sft.target_accuracy"):
        make_config("cpu-tiny", overrides=["sft.target_accuracy=1.5"])
    assert make_config("cpu-tiny").sft.target_accuracy == 0.0           # off by default: sft.steps steps


def test_no_warmup_steps_no_checks(tmp_path):
    tr = Trainer(make_config("cpu-tiny", overrides=BASE + ["sft.steps=0", "sft.target_accuracy=0.5"]), tmp_path / "r")
    assert sft_warmup(tr) == 0
    assert [r for r in read_log(tr.log.path, "sft") if "sft/check_accuracy" in r] == []
