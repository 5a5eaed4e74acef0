"""Per-token log-prob and entropy straight from hidden states and the LM-head weight, without
ever materialising the [B, T, V] logits tensor.

For a row h (D,) of the last hidden state, LM-head weight W (V, D), temperature tau:

    z = W h / tau,   lse = logsumexp(z),   logp = z_label - lse,   H = lse - sum_v softmax(z)_v z_v

Forward: rows are processed ``chunk_rows`` at a time (one (chunk, V) logits tile alive at once);
only lse (N,) is saved. Backward recomputes the tile and uses

    d logp / d z = onehot(label) - softmax(z)   ->   dz = g (onehot - p) / tau
    dh = dz W,   dW += dz^T h

so peak extra memory is O(chunk x V) in both passes, for one more GEMM than the unfused path
(the tile is recomputed). The entropy output carries no gradient (it builds the ERC mask).
Pure torch: runs on CPU and CUDA; bf16/fp16 inputs are multiplied in their dtype and reduced in fp32.

Shapes: hidden (..., D), weight (V, D), labels (...) -> logp (...), entropy (...) float32
(float64 for float64 inputs).
"""
from __future__ import annotations

import torch

from ._checks import check_float, check_positive
from .entropy import _chunked_logp_entropy, _tile_dlogits_, acc_dtype

Tensor = torch.Tensor
DEFAULT_TILE_ELEMENTS = 1 << 22


class _FusedLogpEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden: Tensor, weight: Tensor, labels: Tensor, temperature: float, chunk_rows: int):
        acc = acc_dtype(hidden.dtype)
        # each tile is a fresh matmul output (owned: the shared tile math may overwrite it)
        logp, lse, ent = _chunked_logp_entropy(lambda sl: (hidden[sl] @ weight.T).to(acc), hidden.shape[0], chunk_rows,
                                               labels, temperature, True, True, acc, hidden.device)
        ctx.save_for_backward(hidden, weight, labels, lse)
        ctx.temperature, ctx.chunk_rows = temperature, chunk_rows
        ctx.mark_non_differentiable(ent)
        return logp, ent

    @staticmethod
    def backward(ctx, grad_logp: Tensor, _grad_ent: Tensor):
        hidden, weight, labels, lse = ctx.saved_tensors
        tau, rows = ctx.temperature, ctx.chunk_rows
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        acc = acc_dtype(hidden.dtype)
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_w = torch.zeros(weight.shape, dtype=acc, device=weight.device) if need_w else None
        for i in range(0, hidden.shape[0], rows):
            sl = slice(i, i + rows)
            h = hidden[sl]
            dz = _tile_dlogits_((h @ weight.T).to(acc), lse[sl], labels[sl], grad_logp[sl].to(acc), tau).to(hidden.dtype)
            if need_h:
                grad_h[sl] = dz @ weight
            if need_w:
                grad_w.addmm_(dz.T.to(acc), h.to(acc))
        return grad_h, (grad_w.to(weight.dtype) if need_w else None), None, None, None


def fused_logprobs_and_entropy(hidden: Tensor, weight: Tensor, labels: Tensor, temperature: float = 1.0,
                               chunk_rows: int | None = None) -> tuple[Tensor, Tensor]:
    """(logp, entropy) for every position, from hidden (..., D) and LM-head weight (V, D)."""
    check_float("hidden", hidden)
    check_float("weight", weight)
    check_positive("temperature", temperature)
    if weight.dim() != 2 or hidden.shape[-1] != weight.shape[1]:
        raise ValueError(f"weight must be (V, D) with D = hidden.shape[-1] = {hidden.shape[-1]}, got {tuple(weight.shape)}")
    if hidden.dtype != weight.dtype:
        raise ValueError(f"hidden ({hidden.dtype}) and weight ({weight.dtype}) must share a dtype")
    if not isinstance(labels, torch.Tensor) or labels.dtype not in (torch.int64, torch.int32):
        raise ValueError("labels must be an int64 or int32 tensor of token ids")
    if labels.shape != hidden.shape[:-1]:
        raise ValueError(f"labels has shape {tuple(labels.shape)} but hidden has leading shape {tuple(hidden.shape[:-1])}")
    V = weight.shape[0]
    if chunk_rows is None:
        chunk_rows = max(1, DEFAULT_TILE_ELEMENTS // V)
    if not isinstance(chunk_rows, int) or chunk_rows < 1:
        raise ValueError(f"chunk_rows must be a positive int, got {chunk_rows!r}")
    lab = labels.reshape(-1).long()
    if lab.numel() and (int(lab.min()) < 0 or int(lab.max()) >= V):
        raise ValueError(f"labels must lie in [0, {V}) (the number of rows of weight)")
    h = hidden.reshape(-1, hidden.shape[-1])
    logp, ent = _FusedLogpEntropy.apply(h, weight, lab, float(temperature), chunk_rows)
    if not bool(torch.isfinite(ent).all()) or not bool(torch.isfinite(logp.detach()).all()):
        raise ValueError("hidden or weight contain NaN or inf values (non-finite log-probabilities)")
    return logp.view(labels.shape), ent.view(labels.shape)
