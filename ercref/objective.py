"""The full policy objective of one minibatch: a registered loss, optionally wrapped by ERC,
aggregated, plus the auxiliary terms. The LM trainer, the toy bandits and the TRL/verl plug-ins
all call this one function.

    L = agg_t( ERC( l_t ) ) + nll_coef * NLL_{R=1} + kl_coef * agg_t(KL_t) - entropy_coef * agg_t(H_t)

Shapes: logp, old_logp, response_mask, entropy, old_entropy, ref_logp (B, T);
advantages (B,) or (B, T); rewards (B,).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from numbers import Real

import torch

from ._checks import (
    check_finite,
    check_float,
    check_fraction,
    check_no_grad,
    check_positive,
    check_same_shape,
    checked,
    require,
    upcast,
)
from .aggregation import AGG_MODES, AggMode, BatchCounts, _aggregate
from .auxiliary import KL_ESTIMATORS, REF_LOGP_IS_CONSTANT, KLEstimator, _kl_penalty, _positive_nll
from .erc import ERC_MASKS, ErcMask, _erc, check_entropies
from .losses import LOSS_BODIES, LOSSES, check_per_token_loss, check_policy_inputs, loss_keywords, masked_mean

Tensor = torch.Tensor
_FP16_MAX = float(torch.finfo(torch.float16).max)


@dataclass
class PolicyLossConfig:
    loss: str = "dapo"                 # per-token loss, a name in ercref.LOSSES
    loss_kwargs: dict[str, float] = field(default_factory=dict)  # overrides of the loss's hyper-parameters (e.g. eps_high, beta1)
    erc: bool = True                   # wrap the loss with Entropy Ratio Clipping
    beta_low: float = 0.05             # ERC keeps a token if 1 - beta_low < H_new / H_old (paper: 0.05)
    beta_high: float = 0.05            # ... and H_new / H_old < 1 + beta_high (paper: 0.05)
    erc_mask: ErcMask = "entropy-ratio"  # entropy-ratio (ERC) | random (control: as many tokens stopped, drawn at random; needs erc)
    agg_mode: AggMode = "token-mean"   # token-mean (DAPO/ERC), seq-mean-token-mean (GRPO), seq-mean-token-sum-norm (Dr.GRPO)
    agg_norm: float | None = None      # fixed normaliser for seq-mean-token-sum-norm (None: response length T)
    nll_coef: float = 0.1              # positive-sample NLL weight (paper: 0.1; 0 disables)
    kl_coef: float = 0.0               # KL penalty to a reference policy, needs ref_logp (paper: none)
    kl_estimator: KLEstimator = "k3"   # KL estimator: k1, k2 or k3 (Schulman)
    entropy_coef: float = 0.0          # entropy bonus, needs entropy with grad (paper: none)
    track_zero_grad: bool = True       # measure grad/zero_frac (one cheap elementwise backward)

    def __post_init__(self):
        LOSSES[self.loss]  # raises ValueError naming the unknown loss
        self._check_loss_kwargs()
        if self.erc_mask not in ERC_MASKS:
            raise ValueError(f"erc_mask must be one of {list(ERC_MASKS)}, got {self.erc_mask!r}")
        if self.erc_mask == "random" and not self.erc:
            raise ValueError("erc_mask='random' needs erc=True: the random control stops as many tokens as the "
                             "entropy-ratio mask would clip (set erc=True, or erc_mask='entropy-ratio')")
        if self.erc:
            check_fraction("beta_low", self.beta_low)
            check_positive("beta_high", self.beta_high)
        if self.agg_mode not in AGG_MODES:
            raise ValueError(f"agg_mode must be one of {AGG_MODES}, got {self.agg_mode!r}")
        if self.agg_norm is not None:
            check_positive("agg_norm", self.agg_norm)
        if self.kl_estimator not in KL_ESTIMATORS:
            raise ValueError(f"kl_estimator must be one of {KL_ESTIMATORS}, got {self.kl_estimator!r}")
        for name in ("nll_coef", "kl_coef", "entropy_coef"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and 0 <= v < float("inf")):
                raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")

    def _check_loss_kwargs(self) -> None:
        """Every key must be a keyword the loss takes; every value a finite number (or None where
        the loss accepts None, e.g. clip_ratio_c=None disables the dual clip)."""
        if not isinstance(self.loss_kwargs, dict):
            raise ValueError(f"loss_kwargs must be a dict, got {type(self.loss_kwargs).__name__}")
        valid = loss_keywords(self.loss)
        for key, value in self.loss_kwargs.items():
            if valid is not None and key not in valid:
                raise ValueError(f"loss_kwargs: loss {self.loss!r} takes no keyword {key!r}; "
                                 f"its keywords are {sorted(valid) or 'none'}")
            param = None if valid is None else valid[key]
            if value is None and param is not None and (param.default is None or "None" in str(param.annotation)):
                continue
            if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value):
                raise ValueError(f"loss_kwargs[{key!r}] must be a finite number, got {value!r}")
        # the loss's own range checks (eps_low in (0, 1), clip_ratio_c > 1, ...) on a 1 x 2 batch, now
        # rather than at the first update; a loss that draws a random selection leaves the RNG as it was
        logp, mask = torch.zeros(1, 2), torch.ones(1, 2, dtype=torch.bool)
        try:
            with torch.random.fork_rng(devices=[]):
                LOSS_BODIES[self.loss](logp, logp, torch.ones(1), mask, **self.loss_kwargs)
        except (ValueError, TypeError) as e:
            named = any(str(e).startswith(k) for k in self.loss_kwargs)
            raise ValueError(f"loss_kwargs.{e}" if named else f"loss_kwargs (loss {self.loss!r}): {e}") from None


@checked
def compute_policy_loss(cfg: PolicyLossConfig, logp: Tensor, old_logp: Tensor, advantages: Tensor,
                        response_mask: Tensor, entropy: Tensor | None = None, old_entropy: Tensor | None = None,
                        rewards: Tensor | None = None, ref_logp: Tensor | None = None,
                        counts: BatchCounts | None = None) -> tuple[Tensor, dict[str, Tensor]]:
    """Scalar loss and metrics for one minibatch, or for one micro-batch of it.

    ``counts`` (``ercref.batch_counts`` of the whole minibatch: its response tokens, sequences,
    reward-1 tokens and width) makes the loss this micro-batch's share of the minibatch's loss, for
    every ``agg_mode`` and the NLL term (ercref.aggregation): summing ``loss.backward()`` over the
    micro-batches gives the gradient of one backward of the whole minibatch. Without it the inputs
    are the whole minibatch. Metrics are always the micro-batch's own means.

    Metrics are detached 0-d tensors on the inputs' device (no host sync); convert them for logging
    with ``ercref.metrics_to_floats`` (one sync for the whole dict).

    ``entropy`` is the current policy's token entropy; it is detached for the ERC mask and only
    differentiated through by the entropy bonus. ``old_entropy`` must come from the same no-grad
    forward (same snapshot, same temperature) as ``old_logp``; ``old_logp``, ``old_entropy`` and
    ``ref_logp`` must not require grad.

    Checks: every input is validated once, here (a ValueError naming the argument); the value checks
    of the inputs and of the per-token loss and the final loss (finite) are read back together with
    one host sync, before the function returns. bf16 / fp16 inputs are computed in fp32: the loss and
    the metrics are fp32 (fp64 for fp64 inputs).
    """
    _, mask = check_policy_inputs(logp, old_logp, advantages, response_mask)
    if ref_logp is not None:  # used only when kl_coef > 0, but never with a graph
        check_float("ref_logp", ref_logp)
        check_same_shape("ref_logp", ref_logp, "logp", logp)
        check_no_grad("ref_logp", ref_logp, REF_LOGP_IS_CONSTANT)
        check_finite("ref_logp", ref_logp)
    have_entropies = entropy is not None and old_entropy is not None
    if cfg.erc and not have_entropies:
        raise ValueError(f"{'entropy' if entropy is None else 'old_entropy'} is required when cfg.erc is True")
    if have_entropies:
        check_same_shape("entropy", entropy, "logp", logp)
        check_entropies(entropy, old_entropy)
    if rewards is not None:
        check_float("rewards", rewards)
        if rewards.shape != (logp.shape[0],):
            raise ValueError(f"rewards must have shape ({logp.shape[0]},), got {tuple(rewards.shape)}")
        if rewards.device != logp.device:
            raise ValueError(f"rewards is on device {rewards.device} but logp is on {logp.device}: move both to one device")
        check_finite("rewards", rewards)
    if cfg.nll_coef > 0 and rewards is None:
        raise ValueError("rewards is required when cfg.nll_coef > 0 (the NLL term uses responses with reward 1)")
    if cfg.kl_coef > 0 and ref_logp is None:
        raise ValueError("ref_logp is required when cfg.kl_coef > 0")
    if cfg.entropy_coef > 0 and (entropy is None or not entropy.requires_grad):
        raise ValueError("entropy must be given with grad when cfg.entropy_coef > 0 (entropy bonus)")
    return _policy_loss(cfg, logp, old_logp, advantages, mask, entropy, old_entropy, rewards, ref_logp, counts)


def _policy_loss(cfg, logp, old_logp, advantages, mask, entropy, old_entropy, rewards, ref_logp, counts):
    """``compute_policy_loss`` on checked inputs: the equation of the module docstring, term by term."""
    fp16_grad = logp.dtype == torch.float16 and logp.requires_grad
    logp = upcast(logp)  # one cast for every term: a half logp then receives exactly the fp32 gradient, cast once
    per_tok, metrics = LOSS_BODIES[cfg.loss](logp, old_logp, advantages, mask, **cfg.loss_kwargs)
    check_per_token_loss(cfg.loss, per_tok, logp, mask)
    if entropy is not None and old_entropy is not None:
        metrics["entropy/new_mean"] = masked_mean(entropy.detach(), mask)
        metrics["entropy/old_mean"] = masked_mean(old_entropy.detach(), mask)
    if cfg.erc:
        per_tok, erc_metrics = _erc(per_tok, entropy, old_entropy, mask, cfg.beta_low, cfg.beta_high, cfg.erc_mask)
        metrics.update(erc_metrics)
    if cfg.track_zero_grad and logp.requires_grad and torch.is_grad_enabled():
        (g,) = torch.autograd.grad(per_tok.sum(), logp, retain_graph=True, allow_unused=True)
        zero = mask if g is None else (g == 0) & mask
        metrics["grad/zero_frac"] = zero.sum() / mask.sum()
    loss = _aggregate(per_tok, mask, cfg.agg_mode, cfg.agg_norm, counts)
    metrics["loss/policy"] = loss.detach()
    if cfg.nll_coef > 0:
        nll = _positive_nll(logp, mask, rewards, None if counts is None else counts.positive_tokens)
        metrics["loss/nll_positive"] = nll.detach()
        loss = loss + cfg.nll_coef * nll
    if cfg.kl_coef > 0:
        kl = _aggregate(_kl_penalty(logp, ref_logp, cfg.kl_estimator), mask, cfg.agg_mode, cfg.agg_norm, counts)
        metrics["kl/ref"] = kl.detach()
        loss = loss + cfg.kl_coef * kl
    if cfg.entropy_coef > 0:
        loss = loss - cfg.entropy_coef * _aggregate(entropy, mask, cfg.agg_mode, cfg.agg_norm, counts)
    require(torch.isfinite(loss.detach()), lambda: f"the loss is {loss.item()} although every input and every "
            "per-token term is finite: the sum of the terms overflowed (a coefficient too large?)")
    metrics["loss/total"] = loss.detach()
    if fp16_grad:
        logp.register_hook(_refuse_fp16_overflow)
    return loss, metrics


def _refuse_fp16_overflow(grad: Tensor) -> Tensor:
    """Backward hook on the fp32 copy of an fp16 logp: the gradient is cast to fp16 next, so a value
    beyond fp16's range is refused with a ValueError instead of becoming inf."""
    big = grad.abs().max()
    if not bool(big <= _FP16_MAX):
        raise ValueError(f"the gradient of the loss with respect to logp reaches {float(big):.3g}, beyond the float16 "
                         f"range ({_FP16_MAX:g}): the fp16 logp would receive inf. A log-ratio logp - old_logp this "
                         "large means very stale old_logp; pass logp.float() to get the fp32 gradient")
    return grad
