"""Turn a per-token loss (B, T) into a scalar. Separate from the losses so ERC, NLL, KL and
entropy terms compose around any of them.

    token-mean               sum_{i,t} m l / sum_{i,t} m                       (DAPO, ERC)
    seq-mean-token-mean      mean_i [ sum_t m l / sum_t m ]                    (GRPO)
    seq-mean-token-sum-norm  mean_i [ sum_t m l ] / norm, norm fixed (def. T)  (Dr.GRPO)

Sequences with no response token are left out of the sequence means (as in verl).
Tokens whose gradient ERC stopped are still response tokens: they stay in every denominator.
bf16 / fp16 input is reduced in fp32 and the result is fp32. The loss must be finite at response
positions (checked); masked positions may hold anything (NaN, inf) and get a zero gradient.
"""
from __future__ import annotations

from typing import Literal, get_args

import torch

from ._checks import as_bool_mask, check_any, check_finite, check_float, check_positive, checked, upcast

Tensor = torch.Tensor
AggMode = Literal["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"]
AGG_MODES: tuple[str, ...] = get_args(AggMode)


@checked
def aggregate(per_token_loss: Tensor, response_mask: Tensor, mode: AggMode = "token-mean", norm: float | None = None) -> Tensor:
    """The scalar loss of ``per_token_loss`` (B, T) over the response tokens, in fp32 for bf16 / fp16
    input (fp64 for fp64). ``per_token_loss`` must be finite at response positions (it may hold
    anything elsewhere: those positions get a zero gradient); ``norm`` a finite number > 0."""
    check_float("per_token_loss", per_token_loss)
    if per_token_loss.dim() != 2:
        raise ValueError(f"per_token_loss must be 2-D (batch, response_length), got shape {tuple(per_token_loss.shape)}")
    mask = as_bool_mask("response_mask", response_mask, per_token_loss, "per_token_loss")
    if mode not in AGG_MODES:
        raise ValueError(f"mode must be one of {AGG_MODES}, got {mode!r}")
    if norm is not None:
        check_positive("norm", norm)
    check_any("response_mask", mask)
    check_finite("per_token_loss", per_token_loss, mask, "at a response position")
    per_token_loss = upcast(per_token_loss)
    m = mask.to(per_token_loss.dtype)
    masked = torch.where(mask, per_token_loss, torch.zeros_like(per_token_loss))
    if mode == "token-mean":
        return masked.sum() / m.sum()
    tokens = m.sum(-1)
    has = tokens > 0
    if mode == "seq-mean-token-mean":
        return (masked.sum(-1)[has] / tokens[has]).mean()
    norm = float(per_token_loss.shape[-1]) if norm is None else norm
    return masked.sum(-1)[has].mean() / norm
