"""ERC for verl (Ray; FSDP / Megatron) through verl's own policy-loss registry.

    from ercref.integrations.verl import register_erc_policy_losses
    register_erc_policy_losses(beta_low=0.05, beta_high=0.05)    # before the trainer starts
    # then:  actor_rollout_ref.actor.policy_loss.loss_mode=erc_dapo   (or erc_gppo, erc_cispo, ...)

Each registered verl loss computes an ercref per-token loss, wraps it with ``ercref.apply_erc`` and
aggregates it with verl's own ``agg_loss`` (so verl's data-parallel normalisation is kept).

What a verl run needs beyond the registration (verl 0.9.1), because verl's loss signature carries
no entropies:
1. **Old entropies kept in the batch.** verl's trainers compute the old log-probs with entropy and
   then drop them: the legacy ``RayPPOTrainer`` (``trainer.use_v1=False``) pops ``entropys``; the
   default v1 trainer (``verl/trainer/ppo/v1/trainer_base.py``) stores them as ``entropy``. Keep them
   under the key ``old_entropy``; they come from the same snapshot and temperature as
   ``old_log_probs``, as ERC requires.
2. **Current entropies in the update.** Set ``actor_rollout_ref.actor.calculate_entropy=True`` so the
   actor's forward returns ``entropy`` (leave ``entropy_coeff=0``: no entropy bonus).
3. **Hand both to the loss, in the worker processes.** The Ray workers are separate processes, so the
   registration above must also run there, and the worker's loss function must be
   :func:`erc_ppo_loss` (verl's ``ppo_loss`` run inside :func:`erc_entropies`).
1 and 3 live inside verl's trainer and worker code. ``scripts/verl_0.9.1_erc.patch`` makes exactly
these changes to verl 0.9.1 (three files; ERC's betas from ``ERCREF_BETA_LOW`` / ``ERCREF_BETA_HIGH``,
default 0.05), and ``scripts/verl_erc_1.5b.sh`` applies it and launches the authors' 1.5B recipe
(values and their sources: data/recipes/erc_authors_1.5b.json). tests/test_integration_verl.py checks
that the patch applies cleanly to verl 0.9.1's installed source and that the launch script's overrides
are keys of verl 0.9.1's config carrying the authors' values. Neither has been run on GPUs here.

Not covered by this plug-in: the authors' positive-sample NLL term (``postive_loss_coeff=0.1``), which
needs each response's reward inside the loss; verl's policy-loss signature does not carry it.
"""
from __future__ import annotations

import contextlib
import contextvars

import torch
from verl.trainer.ppo.core_algos import agg_loss, register_policy_loss  # noqa: E402  (the engine is required here)

from ..erc import apply_erc
from ..losses import LOSSES, loss_keywords
from ..metrics import metrics_to_floats

_ENTROPIES: contextvars.ContextVar = contextvars.ContextVar("ercref_verl_entropies", default=None)


@contextlib.contextmanager
def erc_entropies(entropy: torch.Tensor, old_entropy: torch.Tensor):
    """Make (current, old) token entropies (B, T) visible to the ERC policy losses in this context."""
    token = _ENTROPIES.set((entropy.detach(), old_entropy))
    try:
        yield
    finally:
        _ENTROPIES.reset(token)


def _hyper_from_verl_config(base: str, config) -> dict:
    """Map verl's ActorConfig clip fields onto the keyword names of ercref loss ``base``."""
    params = loss_keywords(base) or {}
    hyper = {}
    if config is not None:
        if "eps_low" in params:
            hyper["eps_low"] = config.clip_ratio_low if config.clip_ratio_low is not None else config.clip_ratio
        if "eps_high" in params:
            hyper["eps_high"] = config.clip_ratio_high if config.clip_ratio_high is not None else config.clip_ratio
        if "clip_ratio_c" in params:
            hyper["clip_ratio_c"] = config.get("clip_ratio_c", 3.0) if hasattr(config, "get") else config.clip_ratio_c
    return hyper


def make_verl_policy_loss(base: str, erc: bool = True, beta_low: float = 0.05, beta_high: float = 0.05, **loss_kwargs):
    """A function with verl's policy-loss signature computing ercref loss ``base`` (+ ERC)."""
    LOSSES[base]  # unknown names fail here, with the registered list

    def policy_loss(old_log_prob, log_prob, advantages, response_mask, loss_agg_mode: str = "token-mean",
                    config=None, rollout_is_weights=None):
        hyper = {**_hyper_from_verl_config(base, config), **loss_kwargs}
        per_tok, m = LOSSES[base](log_prob, old_log_prob, advantages, response_mask, **hyper)
        if rollout_is_weights is not None:
            per_tok = per_tok * rollout_is_weights
        metrics = {
            "actor/pg_clipfrac": m["ppo/clip_frac_low"] + m["ppo/clip_frac_high"],
            "actor/pg_clipfrac_lower": m["ppo/dual_clip_frac"],
            "actor/ppo_kl": m["kl/approx_old"],
        }
        if erc:  # (metrics stay 0-d tensors until the single host sync below)
            ent = _ENTROPIES.get()
            if ent is None:
                raise RuntimeError(
                    f"ERC loss erc_{base} needs token entropies: run it inside ercref.integrations.verl.erc_entropies"
                    "(entropy, old_entropy), e.g. via erc_ppo_loss, with actor.calculate_entropy=True and the "
                    "rollout's old entropies kept in the batch as 'old_entropy' (see this module's docstring)")
            per_tok, m_erc = apply_erc(per_tok, ent[0], ent[1], response_mask, beta_low, beta_high)
            metrics.update({f"actor/{k.replace('/', '_')}": v for k, v in m_erc.items()})
        info = getattr(config, "global_batch_info", None) or {}
        loss = agg_loss(loss_mat=per_tok, loss_mask=response_mask, loss_agg_mode=loss_agg_mode, **info)
        # python floats, like verl's own policy losses (its legacy actor np.mean's lists of them):
        # one host sync for all of them instead of one .item() each
        return loss, metrics_to_floats(metrics)

    policy_loss.__name__ = f"ercref_{base}{'_erc' if erc else ''}"
    return policy_loss


def register_erc_policy_losses(beta_low: float = 0.05, beta_high: float = 0.05, prefix: str = "erc_") -> list[str]:
    """Register ``erc_<name>`` in verl for every ercref loss (``erc_dapo``, ``erc_gppo``, ...).

    ``erc_dapo`` reads eps_low / eps_high / clip_ratio_c from verl's actor config, like verl's
    ``vanilla``; ERC's betas are fixed at registration. Returns the registered names.
    """
    names = []
    for base in LOSSES:
        name = f"{prefix}{base}"
        register_policy_loss(name)(make_verl_policy_loss(base, True, beta_low, beta_high))
        names.append(name)
    return names


def erc_ppo_loss(config, model_output, data, dp_group=None):
    """verl's ``ppo_loss`` with the entropies ERC needs: ``model_output['entropy']`` (current, from
    ``calculate_entropy=True``) and ``data['old_entropy']`` (kept from the old-log-prob pass)."""
    from verl.workers.utils.losses import no_padding_2_padding, ppo_loss

    if model_output.get("entropy", None) is None:
        raise ValueError("model_output has no 'entropy': set actor.calculate_entropy=True for ERC")
    if "old_entropy" not in data.keys():
        raise ValueError("data has no 'old_entropy': keep the old-log-prob pass's 'entropys' under that key")
    entropy = no_padding_2_padding(model_output["entropy"], data)
    old_entropy = data.select("old_entropy").to_padded_tensor()["old_entropy"]
    with erc_entropies(entropy, old_entropy):
        return ppo_loss(config, model_output, data, dp_group)
