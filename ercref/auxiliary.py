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

from ._checks import as_bool_mask, check_finite, check_float, check_same_shape
from .aggregation import aggregate

Tensor = torch.Tensor
KLEstimator = Literal["k1", "k2", "k3"]
KL_ESTIMATORS: tuple[str, ...] = get_args(KLEstimator)


def kl_penalty(logp: Tensor, ref_logp: Tensor, estimator: KLEstimator = "k3") -> Tensor:
    """Per-token estimate of KL(pi_theta || pi_ref) for tokens sampled from pi_theta. (B, T)."""
    check_float("ref_logp", ref_logp)
    check_same_shape("ref_logp", ref_logp, "logp", logp)
    check_finite("ref_logp", ref_logp)
    if estimator not in KL_ESTIMATORS:
        raise ValueError(f"estimator must be one of {KL_ESTIMATORS}, got {estimator!r}")
    d = torch.clamp(ref_logp - logp, min=-20.0, max=20.0)
    if estimator == "k1":
        return -d
    if estimator == "k2":
        return 0.5 * d * d
    return torch.exp(d) - d - 1.0


def positive_nll(logp: Tensor, response_mask: Tensor, rewards: Tensor) -> Tensor:
    """token_mean of -log pi over the responses whose reward is exactly 1. Zero (with a graph)
    when the batch has no such response."""
    check_float("rewards", rewards)
    if rewards.dim() != 1 or rewards.shape[0] != logp.shape[0]:
        raise ValueError(f"rewards must have shape ({logp.shape[0]},), got {tuple(rewards.shape)}")
    check_finite("rewards", rewards)
    mask = as_bool_mask("response_mask", response_mask, logp, "logp") & (rewards == 1).unsqueeze(-1)
    if not bool(mask.any()):
        return logp.sum() * 0.0
    return aggregate(-logp, mask, "token-mean")
