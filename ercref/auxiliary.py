"""Auxiliary loss terms that compose with any policy loss (none of them is touched by ERC).

    KL penalty to a reference, per token, with d = logp_ref - logp (Schulman's estimators):
        k1 = -d            k2 = d^2 / 2            k3 = exp(d) - d - 1
    entropy bonus:       - coef * token_mean(H(pi_theta, t))
    positive-sample NLL: coef * token_mean over responses with reward exactly 1 of (-log pi_theta)
                         (both of the paper's recipes use coef = 0.1)
Shapes: logp, ref_logp, entropy, response_mask (B, T); rewards (B,).
"""
from __future__ import annotations

from typing import Literal, get_args

import torch

from ._checks import (
    as_bool_mask,
    check_finite,
    check_float,
    check_same_shape,
    checked,
    upcast,
)

Tensor = torch.Tensor
KLEstimator = Literal["k1", "k2", "k3"]
KL_ESTIMATORS: tuple[str, ...] = get_args(KLEstimator)
REF_LOGP_IS_CONSTANT = ("ref_logp is log pi_ref of the frozen reference policy; with a graph through it (e.g. "
                        "ref_logp = logp) the KL term's gradient is wrong (exactly 0 for ref_logp = logp)")


@checked
def kl_penalty(logp: Tensor, ref_logp: Tensor, estimator: KLEstimator = "k3") -> Tensor:
    """Per-token estimate of KL(pi_theta || pi_ref) for tokens sampled from pi_theta. (B, T),
    computed (and returned) in fp32 for bf16 / fp16 inputs (exp(20) overflows fp16).
    Differentiable in both arguments (``compute_policy_loss`` refuses a ref_logp with grad)."""
    check_float("logp", logp)
    check_float("ref_logp", ref_logp)
    check_same_shape("ref_logp", ref_logp, "logp", logp)
    if estimator not in KL_ESTIMATORS:
        raise ValueError(f"estimator must be one of {KL_ESTIMATORS}, got {estimator!r}")
    check_finite("logp", logp)
    check_finite("ref_logp", ref_logp)
    return _kl_penalty(logp, ref_logp, estimator)


def _kl_penalty(logp: Tensor, ref_logp: Tensor, estimator: KLEstimator) -> Tensor:
    """``kl_penalty`` on checked inputs."""
    d = torch.clamp(upcast(ref_logp) - upcast(logp), min=-20.0, max=20.0)
    if estimator == "k1":
        return -d
    if estimator == "k2":
        return 0.5 * d * d
    return torch.exp(d) - d - 1.0


@checked
def positive_nll(logp: Tensor, response_mask: Tensor, rewards: Tensor) -> Tensor:
    """token_mean of -log pi over the responses whose reward is exactly 1 (fp32 for half logp).
    Zero (with a zero gradient) when the batch has no such response."""
    check_float("logp", logp)
    if logp.dim() != 2:
        raise ValueError(f"logp must be 2-D (batch, response_length), got shape {tuple(logp.shape)}")
    check_float("rewards", rewards)
    if rewards.dim() != 1 or rewards.shape[0] != logp.shape[0]:
        raise ValueError(f"rewards must have shape ({logp.shape[0]},), got {tuple(rewards.shape)}")
    mask = as_bool_mask("response_mask", response_mask, logp, "logp")
    if rewards.device != logp.device:
        raise ValueError(f"rewards is on device {rewards.device} but logp is on {logp.device}: move both to one device")
    check_finite("logp", logp)
    check_finite("rewards", rewards)
    return _positive_nll(logp, mask, rewards)


def _positive_nll(logp: Tensor, mask: Tensor, rewards: Tensor, positive_tokens: Tensor | None = None) -> Tensor:
    """``positive_nll`` on checked inputs (``mask`` bool). ``positive_tokens``: the denominator of a
    whole minibatch when this is one of its micro-batches (ercref.aggregation.BatchCounts)."""
    mask = mask & (rewards == 1).unsqueeze(-1)
    nll = -upcast(logp)
    # = aggregate(nll, mask, "token-mean") bit for bit, without a host sync for "no such response"
    denom = mask.to(nll.dtype).sum() if positive_tokens is None else positive_tokens
    return torch.where(mask, nll, torch.zeros_like(nll)).sum() / denom.clamp(min=1)
