"""Turn a per-token loss (B, T) into a scalar. Separate from the losses so ERC, NLL, KL and
entropy terms compose around any of them.

    token-mean               sum_{i,t} m l / sum_{i,t} m                       (DAPO, ERC)
    seq-mean-token-mean      mean_i [ sum_t m l / sum_t m ]                    (GRPO)
    seq-mean-token-sum-norm  mean_i [ sum_t m l ] / norm, norm fixed (def. T)  (Dr.GRPO)

Sequences with no response token are left out of the sequence means (as in verl).
Tokens whose gradient ERC stopped are still response tokens: they stay in every denominator.
"""
from __future__ import annotations

from typing import Literal, get_args

import torch

from ._checks import as_bool_mask, check_any, check_float

Tensor = torch.Tensor
AggMode = Literal["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"]
AGG_MODES: tuple[str, ...] = get_args(AggMode)


def aggregate(per_token_loss: Tensor, response_mask: Tensor, mode: AggMode = "token-mean", norm: float | None = None) -> Tensor:
    check_float("per_token_loss", per_token_loss)
    mask = as_bool_mask("response_mask", response_mask, per_token_loss, "per_token_loss")
    check_any("response_mask", mask)
    if mode not in AGG_MODES:
        raise ValueError(f"mode must be one of {AGG_MODES}, got {mode!r}")
    m = mask.to(per_token_loss.dtype)
    masked = torch.where(mask, per_token_loss, torch.zeros_like(per_token_loss))
    if mode == "token-mean":
        return masked.sum() / m.sum()
    tokens = m.sum(-1)
    has = tokens > 0
    if mode == "seq-mean-token-mean":
        return (masked.sum(-1)[has] / tokens[has]).mean()
    norm = float(per_token_loss.shape[-1]) if norm is None else norm
    if not norm > 0:
        raise ValueError(f"norm must be > 0, got {norm!r}")
    return masked.sum(-1)[has].mean() / norm
