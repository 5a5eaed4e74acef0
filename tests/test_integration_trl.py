"""ERCGRPOTrainer end to end inside TRL on CPU, with a tiny local model.

steps_per_generation=2 with gradient_accumulation_steps=1 makes TRL run its old-log-prob pass,
so the second optimizer step of every generation batch is off-policy: ratios and entropy ratios
move away from 1 and ERC has tokens to clip.
"""
import pytest
import torch

trl = pytest.importorskip("trl", reason="TRL is installed by `make test` (requirements.txt)")
from datasets import Dataset  # noqa: E402

from ercref.erc import erc_masks  # noqa: E402
from ercref.integrations.trl import ERCGRPOTrainer  # noqa: E402
from ercref.lm.models import build_tiny_model  # noqa: E402


def _reward_digits(completions, **kwargs):
    return [float(sum(c.isdigit() for c in text)) for text in completions]


@pytest.mark.slow
def test_erc_grpo_trainer_zeroes_gradient_of_clipped_tokens_inside_trl_loss(tmp_path):
    torch.manual_seed(0)
    model, tok = build_tiny_model(seed=0)
    model_dir = tmp_path / "tiny"
    model.save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    data = Dataset.from_dict({"prompt": [f"{a}+{b}=" for a in range(4) for b in range(4)]})
    args = trl.GRPOConfig(
        output_dir=str(tmp_path / "out"), per_device_train_batch_size=8, num_generations=4,
        max_completion_length=8, steps_per_generation=2, gradient_accumulation_steps=1, max_steps=4,
        learning_rate=3e-2, logging_steps=1, report_to="none", use_cpu=True, seed=0, loss_type="dapo",
        save_strategy="no", beta=0.0, temperature=1.0)
    trainer = ERCGRPOTrainer(model=str(model_dir), reward_funcs=_reward_digits, args=args, train_dataset=data,
                             processing_class=tok, erc_beta_low=0.05, erc_beta_high=0.05)
    records = []
    original = trainer._erc_apply

    def spy(logps, entropies, inputs):
        logps.retain_grad()
        mask = inputs["completion_mask"].bool()
        old = inputs.get("old_per_token_entropy", entropies.detach())
        keep = erc_masks(entropies.detach(), old, mask, 0.05, 0.05)[0]
        records.append((logps, keep, mask & ~keep, "old_per_token_entropy" in inputs))
        return original(logps, entropies, inputs)

    trainer._erc_apply = spy
    trainer.train()

    assert len(records) == 4 and all(r[3] for r in records), "old entropies must come from TRL's old-log-prob pass"
    clipped_total = 0
    for logps, _keep, clipped, _ in records:
        assert logps.grad is not None
        assert torch.all(logps.grad[clipped] == 0)
        clipped_total += int(clipped.sum())
    assert clipped_total > 0, "the off-policy steps should move some entropies by more than 5 %"
    assert any(bool((logps.grad[keep] != 0).any()) for logps, keep, _, _ in records)
    logged = [h for h in trainer.state.log_history if "erc/clip_frac" in h]
    assert logged and max(h["erc/clip_frac"] for h in logged) > 0
    for h in logged:
        assert h["erc/clip_frac"] == pytest.approx(h["erc/clip_frac_low"] + h["erc/clip_frac_high"], abs=1e-6)


def test_erc_grpo_trainer_rejects_bad_beta():
    with pytest.raises(ValueError, match="beta_low"):
        ERCGRPOTrainer(model="unused", erc_beta_low=1.5)
