"""Every per-row tensor of a training step lives on the run's device: a full training step of the
tiny model (SFT warm-up, rollout, rewards, advantages, dynamic sampling, K minibatch updates,
evaluation, checkpoint) runs under an emulated second device (tests/device_emulation.py), which
fails where CUDA would fail on a tensor left on the host."""
import pytest
import torch
from device_emulation import DeviceMixError, HostTensorMode

from ercref.lm.config import make_config
from ercref.lm.trainer import Trainer

SMALL = ["sft.steps=3", "sft.batch_size=8", "rollout.prompts_per_step=4", "rollout.group_size=4",
         "train.minibatch_prompts=2", "train.progress=false", "train.plot=false", "data.num_eval=4", "train.eval_k=2",
         "data.max_prompt_tokens=16", "train.max_tokens_per_forward=64", "train.memory_check=off"]


def test_the_emulation_catches_what_cuda_refuses():
    with HostTensorMode():
        rewards = torch.zeros(8)                # host, as the reward function leaves it
        mask = torch.ones(8, 3).to("cpu")       # moved to the run's device
        idx = torch.arange(4).to("cpu")
        with pytest.raises(DeviceMixError, match="indices should be either on cpu"):
            rewards[idx]
        with pytest.raises(DeviceMixError, match="same device"):
            mask * rewards.unsqueeze(-1)
        assert mask[torch.arange(2)].shape == (2, 3)     # a host index into a device tensor is fine on CUDA
        assert float(mask.sum() * torch.tensor(2.0)) == 48.0   # so is a 0-d host scalar


@pytest.mark.parametrize("extra", [[], ["advantage.dynamic_sampling=true", "loss.kl_coef=0.1", "loss.erc_mask=random"]],
                         ids=["dapo-erc", "dynamic-sampling-kl-random-mask"])
def test_a_training_step_keeps_every_tensor_on_the_device(tmp_path, extra):
    cfg = make_config("cpu-tiny", overrides=SMALL + ["train.steps=1"] + extra)
    tr = Trainer(cfg, tmp_path)         # the model is loaded outside the mode: its weights are device tensors
    mode = HostTensorMode()
    with mode:
        tr.start()
        rec = tr.train_step()
        tr.evaluate()
        tr.save()
    assert rec["batch/minibatches"] >= 1 or "advantage.dynamic_sampling=true" in extra
    assert mode.checked_ops > 1000       # the step really ran under the checks
