"""The expected reward of an updated policy, estimated from responses the old policy sampled.

Responses y_1..y_n were sampled from pi_old (at the temperature the log-probs below are taken at, no
top-p / top-k truncation); c_i in [0, 1] is the judge's reward of y_i. For any pi_new,

    w_i     = pi_new(y_i) / pi_old(y_i) = exp( sum_t m_it (log pi_new(y_it | .) - log pi_old(y_it | .)) )
    acc_old = 1/n sum_i c_i            unbiased for E_{y ~ pi_old}[c(y)]
    acc_new = 1/n sum_i c_i w_i        unbiased for E_{y ~ pi_new}[c(y)]   (importance sampling)

and, on the same samples, delta = acc_new - acc_old = 1/n sum_i c_i (w_i - 1): the change of the
expected judged accuracy that one update made, with the sampling noise of y shared between any two
updates measured on the same responses (common random numbers). The weights' own noise is shown by
mean_w = 1/n sum_i w_i (its expectation is exactly 1) and ess = (sum_i w_i)^2 / sum_i w_i^2 (the
effective sample size, n when every w_i = 1). Everything is computed in float64.
"""
from __future__ import annotations

import torch

Tensor = torch.Tensor


def importance_accuracy(correct: Tensor, logp_old: Tensor, logp_new: Tensor, mask: Tensor) -> dict[str, float]:
    """{"acc_old", "acc_new", "delta", "mean_w", "ess", "max_w", "n"} of the module docstring.

    correct (n,) rewards in [0, 1]; logp_old, logp_new (n, R) per-token log-probs of the sampled
    responses; mask (n, R) bool, the response tokens (positions outside it are ignored, whatever they hold)."""
    if correct.dim() != 1 or correct.numel() == 0:
        raise ValueError(f"correct must be a non-empty 1-D tensor of rewards, got shape {tuple(correct.shape)}")
    n = correct.shape[0]
    for name, t in (("logp_old", logp_old), ("logp_new", logp_new), ("mask", mask)):
        if t.dim() != 2 or t.shape[0] != n:
            raise ValueError(f"{name} must be (n, R) with n = len(correct) = {n}, got shape {tuple(t.shape)}")
    if logp_old.shape != logp_new.shape or mask.shape != logp_old.shape:
        raise ValueError(f"logp_old {tuple(logp_old.shape)}, logp_new {tuple(logp_new.shape)} and mask "
                         f"{tuple(mask.shape)} must have one shape")
    if mask.dtype != torch.bool:
        raise ValueError(f"mask must be a bool tensor, got {mask.dtype}")
    c = correct.detach().double()
    if not torch.isfinite(c).all() or (c < 0).any() or (c > 1).any():
        raise ValueError("correct must hold rewards in [0, 1]")
    for name, t in (("logp_old", logp_old), ("logp_new", logp_new)):
        inside = t.detach()[mask]
        if not torch.isfinite(inside).all() or (inside > 0).any():
            raise ValueError(f"{name} must be finite log-probabilities (<= 0) on the mask")
    log_w = torch.where(mask, logp_new.detach().double() - logp_old.detach().double(), 0.0).sum(-1)
    w = torch.exp(log_w)
    acc_old, acc_new = float(c.mean()), float((c * w).mean())
    return {"acc_old": acc_old, "acc_new": acc_new, "delta": float((c * (w - 1.0)).mean()), "mean_w": float(w.mean()),
            "ess": float(w.sum() ** 2 / (w ** 2).sum()) if bool((w > 0).any()) else 0.0, "max_w": float(w.max()), "n": int(n)}
