"""Staleness 0 is on-policy in every dtype: SmolLM2-135M with bf16 weights, gradient
checkpointing on and off. The first minibatch's ratio is exactly 1 and ERC clips nothing, and
the rollout's old-log-prob pass takes the update's numerical path (prompt sharing only when the
update shares too), so its values match the update forward's."""
import pytest

from ercref.lm.config import make_config
from ercref.lm.metrics_log import read_log
from ercref.lm.trainer import Trainer

pytestmark = pytest.mark.slow

TINY_STEP = ["rollout.prompts_per_step=2", "rollout.group_size=2", "rollout.max_new_tokens=4",
             "train.minibatch_prompts=1", "sft.steps=0", "train.memory_check=off", "train.progress=false",
             "train.plot=false", "train.steps=1", "optim.lr=1e-5", "loss.beta_low=0.05", "loss.beta_high=0.05"]


@pytest.mark.parametrize("dtype,checkpointing", [("bfloat16", "true"), ("bfloat16", "false")])
def test_first_minibatch_is_on_policy(tmp_path, dtype, checkpointing):
    cfg = make_config("cpu-smollm2", overrides=TINY_STEP + [f"model.dtype={dtype}",
                                                             f"model.gradient_checkpointing={checkpointing}"])
    tr = Trainer(cfg, tmp_path)
    tr.start()
    tr.train_step()
    first, *later = read_log(tr.log.path, "minibatch")
    assert first["staleness"] == 0 and later and later[0]["staleness"] == 1
    assert first["logp/max_abs_diff_old"] == 0.0
    assert first["erc/clip_frac"] == 0.0 and first["ppo/clip_frac_low"] == 0.0 and first["ppo/clip_frac_high"] == 0.0
    # the rollout pass and the update forward take one path: bf16 noise between two paths is ~0.03 mean,
    # up to 0.2-0.3 at the max; one path differs by nothing or by kernel rounding only
    assert first["logp/old_path_max_abs_diff"] < 1e-2
