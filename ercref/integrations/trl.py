"""ERC for TRL's GRPOTrainer (accelerate / DeepSpeed, one GPU to many nodes).

    from ercref.integrations.trl import ERCGRPOTrainer
    trainer = ERCGRPOTrainer(model=..., reward_funcs=..., args=GRPOConfig(loss_type="dapo",
                             steps_per_generation=4, ...), train_dataset=..., erc_beta_low=0.05, erc_beta_high=0.05)
    trainer.train()

    # several GPUs, same script:
    #   accelerate launch --num_processes 8 train_grpo_erc.py      (add --config_file for DeepSpeed ZeRO-3)

How it works, without copying any TRL loss:
* **Old entropies.** TRL's old-log-prob pass (``_get_per_token_logps_and_entropies`` under no_grad,
  in ``_generate_and_score_completions``) runs without entropy; TRL's fused LM head returns the
  entropy with the log-probs anyway, so we keep it from that same pass and store it in the
  generation batch as ``old_per_token_entropy``. TRL then shuffles and splits it with the rest.
  When TRL skips that pass (fully on-policy: ``gradient_accumulation_steps`` a multiple of
  ``steps_per_generation * num_iterations``, where every ratio is 1) the current entropy is used
  as the old one, and ERC keeps every token, exactly as it would with a recomputed old pass.
* **The mask.** In the training pass TRL asks for log-probs with entropies; we compute
  ``ercref.erc_masks`` from them and return ``where(keep, logp, sg(logp))``. Forward values are
  unchanged and every per-token policy loss TRL has (grpo, dapo, dr_grpo, bnpo, cispo, sapo,
  luspo, vespo) then gives zero gradient to an ERC-clipped token, which is ERC's
  ``I_t l_t + (1 - I_t) sg(l_t)`` for token-level losses. Two documented differences: with
  ``beta > 0`` the KL term of a clipped token is stopped as well, and with sequence-level
  importance weights a clipped token still enters its sequence's weight through the forward value.
* **Metrics** ``erc/clip_frac``, ``erc/clip_frac_low``, ``erc/clip_frac_high`` are logged beside TRL's.
"""
from __future__ import annotations

import torch
from trl import GRPOTrainer

from ..erc import erc_masks


class ERCGRPOTrainer(GRPOTrainer):
    """GRPOTrainer + Entropy Ratio Clipping on any ``loss_type``."""

    def __init__(self, *args, erc_beta_low: float = 0.05, erc_beta_high: float = 0.05, **kwargs):
        erc_masks(torch.ones(1), torch.ones(1), torch.ones(1, dtype=torch.bool), erc_beta_low, erc_beta_high)  # validate betas
        self.erc_beta_low, self.erc_beta_high = erc_beta_low, erc_beta_high
        self._erc_in_generation = False
        self._erc_old_entropy = None
        self._erc_inputs = None
        self._erc_last_raw_logps = None  # the un-masked log-probs of the last training pass (for tests and debugging)
        super().__init__(*args, **kwargs)

    # -- old entropies: captured in the same no-grad pass as the old log-probs -------------------------
    def _generate_and_score_completions(self, inputs):
        self._erc_in_generation, self._erc_old_entropy = True, None
        try:
            output = super()._generate_and_score_completions(inputs)
        finally:
            self._erc_in_generation = False
        if self._erc_old_entropy is not None and "old_per_token_logps" in output:
            output["old_per_token_entropy"] = self._erc_old_entropy
        self._erc_old_entropy = None
        return output

    def _get_per_token_logps_and_entropies(self, model, *args, compute_entropy: bool = False, **kwargs):
        capture_old = self._erc_in_generation and self._erc_old_entropy is None and model is self.model
        logps, entropies, aux = super()._get_per_token_logps_and_entropies(
            model, *args, compute_entropy=compute_entropy or capture_old, **kwargs)
        if capture_old:
            self._erc_old_entropy = entropies.detach()
            return logps, (entropies if compute_entropy else None), aux
        if self._erc_inputs is not None and compute_entropy and torch.is_grad_enabled():
            logps = self._erc_apply(logps, entropies, self._erc_inputs)
        return logps, entropies, aux

    # -- the mask, applied in the training pass -----------------------------------------------------
    def _compute_loss(self, model, inputs):
        self._erc_inputs = inputs
        try:
            return super()._compute_loss(model, inputs)
        finally:
            self._erc_inputs = None

    def _erc_apply(self, logps, entropies, inputs):
        mask = inputs["completion_mask"].bool()
        if "tool_mask" in inputs:
            mask = mask & inputs["tool_mask"].bool()
        old_entropy = inputs.get("old_per_token_entropy")
        if old_entropy is None:  # TRL skipped the old pass: fully on-policy, ratio 1 everywhere
            old_entropy = entropies.detach()
        keep, low, high, _ = erc_masks(entropies.detach(), old_entropy, mask, self.erc_beta_low, self.erc_beta_high)
        self._erc_last_raw_logps = logps
        mode = "train" if self.model.training else "eval"
        n = mask.sum().clamp(min=1)
        stats = torch.stack([(mask & ~keep).sum() / n, low.sum() / n, high.sum() / n]).detach()
        stats = self.accelerator.gather(stats.unsqueeze(0)).float().mean(0)
        for name, value in zip(("erc/clip_frac", "erc/clip_frac_low", "erc/clip_frac_high"), stats.tolist()):
            self._metrics[mode][name].append(value)
        return torch.where(keep, logps, logps.detach())
