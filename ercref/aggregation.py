"""Turn a per-token loss (B, T) into a scalar. Separate from the losses so ERC, NLL, KL and
entropy terms compose around any of them.

    token-mean               sum_{i,t} m l / sum_{i,t} m                       (DAPO, ERC)
    seq-mean-token-mean      mean_i [ sum_t m l / sum_t m ]                    (GRPO)
    seq-mean-token-sum-norm  mean_i [ sum_t m l ] / norm, norm fixed (def. T)  (Dr.GRPO)

Sequences with no response token are left out of the sequence means (as in verl).

Micro-batches. When a minibatch is split into micro-batches (to bound memory), each micro-batch's
loss must be its share of the minibatch's loss, so that the gradients summed over micro-batches
equal one backward of the whole minibatch. ``BatchCounts`` carries the minibatch's global
denominators (as verl's ``global_batch_info`` and TRL's ``num_items_in_batch``):

    token-mean               sum_{micro} m l / tokens
    seq-mean-token-mean      sum_{i in micro} [ sum_t m l / sum_t m ] / sequences
    seq-mean-token-sum-norm  sum_{i in micro} [ sum_t m l ] / (sequences * norm), norm def. width
Tokens whose gradient ERC stopped are still response tokens: they stay in every denominator.
bf16 / fp16 input is reduced in fp32 and the result is fp32. The loss must be finite at response
positions (checked); masked positions may hold anything (NaN, inf) and get a zero gradient.
"""
from __future__ import annotations

from typing import Literal, NamedTuple, get_args

import torch

from ._checks import as_bool_mask, check_any, check_finite, check_float, check_positive, checked, upcast

Tensor = torch.Tensor
AggMode = Literal["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"]
AGG_MODES: tuple[str, ...] = get_args(AggMode)


class BatchCounts(NamedTuple):
    """A minibatch's global denominators (``batch_counts``), given to each of its micro-batches."""
    tokens: Tensor           # response tokens (0-d)
    sequences: Tensor        # sequences with at least one response token (0-d)
    positive_tokens: Tensor  # response tokens of the responses with reward exactly 1 (0-d; the NLL term)
    width: int               # the minibatch's response width T (seq-mean-token-sum-norm's default norm)


def batch_counts(response_mask: Tensor, rewards: Tensor | None = None) -> BatchCounts:
    """The global counts of a whole minibatch: response_mask (B, T), rewards (B,) (None: no NLL term).
    0-d tensors on the mask's device, no host sync."""
    mask = response_mask.bool()
    tokens = mask.sum(-1)
    positive = torch.zeros((), dtype=tokens.dtype, device=mask.device) if rewards is None else \
        (tokens * (rewards.to(mask.device) == 1)).sum()
    return BatchCounts(tokens.sum(), (tokens > 0).sum(), positive, int(mask.shape[-1]))


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
    return _aggregate(per_token_loss, mask, mode, norm)


def _aggregate(per_token_loss: Tensor, mask: Tensor, mode: AggMode, norm: float | None = None,
               counts: BatchCounts | None = None) -> Tensor:
    """``aggregate`` on checked inputs (``mask`` bool); with ``counts``, the micro-batch's share of
    its minibatch's loss (module docstring)."""
    per_token_loss = upcast(per_token_loss)
    m = mask.to(per_token_loss.dtype)
    masked = torch.where(mask, per_token_loss, torch.zeros_like(per_token_loss))
    if mode == "token-mean":
        return masked.sum() / (m.sum() if counts is None else counts.tokens)
    tokens = m.sum(-1)
    has = tokens > 0
    if counts is None:
        if mode == "seq-mean-token-mean":
            return (masked.sum(-1)[has] / tokens[has]).mean()
        norm = float(per_token_loss.shape[-1]) if norm is None else norm
        return masked.sum(-1)[has].mean() / norm
    if mode == "seq-mean-token-mean":
        return (masked.sum(-1)[has] / tokens[has]).sum() / counts.sequences
    norm = float(counts.width) if norm is None else norm
    return masked.sum(-1)[has].sum() / counts.sequences / norm
