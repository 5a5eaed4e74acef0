"""Per-token log-prob and entropy straight from hidden states and the LM-head weight, without
ever materialising the [B, T, V] logits tensor.

For a row h (D,) of the last hidden state, LM-head weight W (V, D), temperature tau:

    z = W h / tau,   lse = logsumexp(z),   logp = z_label - lse,   H = lse - sum_v softmax(z)_v z_v

Forward: rows are processed ``chunk_rows`` at a time (one (chunk, V) logits tile alive at once);
only lse (N,) is saved (and H (N,) with ``entropy_grad=True``). Backward recomputes the tile and uses

    d logp / d z = onehot(label) - softmax(z)   ->   dz = g (onehot - p) / tau
    dh = dz W,   dW += dz^T h

so peak extra memory is O(chunk x V) in both passes, for one more GEMM than the unfused path
(the tile is recomputed). By default the entropy output carries no gradient (it builds the ERC
mask). With ``entropy_grad=True`` (an entropy bonus -c * agg(H)) it does, through the same
recomputed tile, with upstream gradients g_logp and g_H per row:

    dH / d z = -p (log p + H)   ->   dz = [g_logp (onehot - p) - g_H p (log p + H)] / tau

(one more (chunk, V) buffer in the backward, for p).
Pure torch: runs on CPU and CUDA; bf16/fp16 inputs are multiplied in their dtype and reduced in fp32.
Under ``torch.autocast`` the head follows its own explicit policy (``_FusedLogpEntropy``): the matmuls run
in the autocast dtype in the forward *and* in the backward (which autograd runs outside the
autocast region), so the recomputed tiles equal the forward's and the softmax normalised by the
forward's fp32 lse sums to 1; fp32 inputs without autocast take exactly the fp32 path.

Shapes: hidden (..., D), weight (V, D), labels (...) -> logp (...), entropy (...) float32
(float64 for float64 inputs).
"""
from __future__ import annotations

import contextlib

import torch

from ._checks import check_float, check_positive
from .entropy import _chunked_logp_entropy, _tile_dlogits_, acc_dtype

Tensor = torch.Tensor
# One (rows, V) fp32 logits tile per device type: on a CPU a tile that stays in cache; on a GPU
# rows enough that each tile's matmuls are compute-bound (a 27-row tile re-reads a 151,936 x 1536
# head for 27 tokens). The backward holds up to three such tiles.
TILE_BYTES = {"cpu": 1 << 24, "cuda": 1 << 30}
_DEFAULT_TILE_BYTES = 1 << 24


def tile_rows(vocab_size: int, device_type: str = "cpu") -> int:
    """Rows of one fused-head tile on ``device_type``: its fp32 byte budget // (4 V), at least 1."""
    return max(1, TILE_BYTES.get(device_type, _DEFAULT_TILE_BYTES) // (4 * vocab_size))


_MM_OUT_DTYPE: dict[str, bool] = {}


def _mm_fp32_out(a: Tensor, b: Tensor) -> Tensor | None:
    """a @ b for bf16 / fp16 a, b with fp32 accumulation *and* an fp32 result (torch.mm's out_dtype,
    a CUDA kernel), or None where the device has no such kernel (then the caller upcasts)."""
    dev = a.device.type
    if _MM_OUT_DTYPE.get(dev) is False:
        return None
    try:
        out = torch.mm(a, b, out_dtype=torch.float32)
    except (RuntimeError, TypeError, NotImplementedError):
        _MM_OUT_DTYPE[dev] = False
        return None
    _MM_OUT_DTYPE[dev] = True
    return out


def _autocast_on(device_type: str) -> bool:
    try:
        return torch.is_autocast_enabled(device_type)
    except RuntimeError:  # a device type autocast does not know (e.g. meta): never autocast
        return False


def matmul_dtype(x: Tensor) -> torch.dtype:
    """The dtype the head's matmuls run in for input ``x``: the ambient autocast dtype of x's
    device type when autocast is on there (float64 is never cast, as autocast itself does),
    otherwise x's own dtype."""
    dev = x.device.type
    if x.dtype != torch.float64 and _autocast_on(dev):
        return torch.get_autocast_dtype(dev)
    return x.dtype


def _no_autocast(device_type: str):
    """Autocast off for the head's own (explicitly cast) matmuls; nothing to do when it is off."""
    if _autocast_on(device_type):
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()


class _FusedLogpEntropy(torch.autograd.Function):
    """Dtype policy (autocast-safe): the forward reads the ambient autocast state once and fixes
    the matmul dtype ``mm`` (``matmul_dtype``); hidden and weight are cast to ``mm`` once, and every
    tile, in the forward and in the recomputing backward, is ``(h_mm @ W_mm^T).to(fp32)`` with autocast
    off, so the backward's softmax p = exp(z / tau - lse) uses the very tile values lse was reduced
    from (rows sum to 1 to fp32 precision). The casted copies are what is saved (as autocast
    saves its casts). dz is reduced in fp32 and cast to ``mm`` for dh = dz W_mm; dW is accumulated
    in fp32 and returned in weight's dtype, dh in hidden's. Without autocast ``mm`` is the input
    dtype and no copy is made."""

    @staticmethod
    def forward(ctx, hidden: Tensor, weight: Tensor, labels: Tensor, temperature: float, chunk_rows: int,
                entropy_grad: bool = False):
        dev = hidden.device.type
        mm = matmul_dtype(hidden)
        acc = acc_dtype(mm)
        with _no_autocast(dev):
            h, w = hidden.to(mm), weight.to(mm)  # no copy when the dtype already matches
            # each tile is a fresh matmul output (owned: the shared tile math may overwrite it)
            logp, lse, ent = _chunked_logp_entropy(lambda sl: (h[sl] @ w.T).to(acc), h.shape[0], chunk_rows,
                                                   labels, temperature, True, True, acc, hidden.device)
        ctx.temperature, ctx.chunk_rows, ctx.entropy_grad = temperature, chunk_rows, entropy_grad
        ctx.dtypes = (hidden.dtype, weight.dtype)
        if entropy_grad:
            ctx.save_for_backward(h, w, labels, lse, ent)
            ctx.set_materialize_grads(False)  # an unused output's gradient arrives as None: no work for it
        else:
            ctx.save_for_backward(h, w, labels, lse)
            ctx.mark_non_differentiable(ent)
        return logp, ent

    @staticmethod
    def backward(ctx, grad_logp: Tensor, grad_ent: Tensor):
        tau, rows = ctx.temperature, ctx.chunk_rows
        if ctx.entropy_grad:
            hidden, weight, labels, lse, ent = ctx.saved_tensors
            if grad_logp is None and grad_ent is None:
                return None, None, None, None, None, None
            if grad_logp is None:
                grad_logp = torch.zeros_like(lse)
        else:
            (hidden, weight, labels, lse), ent, grad_ent = ctx.saved_tensors, None, None
        # hidden / weight are the saved matmul-dtype tensors (the inputs themselves without autocast)
        h_dtype, w_dtype = ctx.dtypes
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        acc = acc_dtype(hidden.dtype)
        grad_h = torch.empty(hidden.shape, dtype=h_dtype, device=hidden.device) if need_h else None
        grad_w = torch.zeros(weight.shape, dtype=acc, device=weight.device) if need_w else None
        with _no_autocast(hidden.device.type):  # backward may be called inside an autocast region (CPU)
            for i in range(0, hidden.shape[0], rows):
                sl = slice(i, i + rows)
                h = hidden[sl]
                g_ent = None if grad_ent is None else grad_ent[sl].to(acc)
                # dz = [g_logp (onehot - p) - g_H p (log p + H)] / tau   (tile z = h W^T recomputed)
                dz = _tile_dlogits_((h @ weight.T).to(acc), lse[sl], labels[sl], grad_logp[sl].to(acc), tau,
                                    g_ent, None if g_ent is None else ent[sl]).to(hidden.dtype)
                if need_h:
                    grad_h[sl] = dz @ weight  # dh = dz W
                if need_w:  # dW += dz^T h: in the matmul dtype with an fp32 result where the device can
                    tile_w = _mm_fp32_out(dz.T, h) if dz.dtype in (torch.bfloat16, torch.float16) else None
                    if tile_w is None:
                        grad_w.addmm_(dz.T.to(acc), h.to(acc))
                    else:
                        grad_w.add_(tile_w)
        return grad_h, (grad_w.to(w_dtype) if need_w else None), None, None, None, None


def fused_logprobs_and_entropy(hidden: Tensor, weight: Tensor, labels: Tensor, temperature: float = 1.0,
                               chunk_rows: int | None = None, entropy_grad: bool = False) -> tuple[Tensor, Tensor]:
    """(logp, entropy) for every position, from hidden (..., D) and LM-head weight (V, D).

    logp is differentiable; entropy is detached unless ``entropy_grad=True`` (an entropy bonus),
    when it carries dH/dz = -p (log p + H) / tau back to hidden and weight.
    ``chunk_rows`` (default ``tile_rows(V, device type)``): rows of logits computed at once.
    """
    check_float("hidden", hidden)
    check_float("weight", weight)
    check_positive("temperature", temperature)
    if weight.dim() != 2 or hidden.shape[-1] != weight.shape[1]:
        raise ValueError(f"weight must be (V, D) with D = hidden.shape[-1] = {hidden.shape[-1]}, got {tuple(weight.shape)}")
    if hidden.dtype != weight.dtype and matmul_dtype(hidden) != matmul_dtype(weight):  # autocast casts both
        raise ValueError(f"hidden ({hidden.dtype}) and weight ({weight.dtype}) must share a dtype")
    if not isinstance(labels, torch.Tensor) or labels.dtype not in (torch.int64, torch.int32):
        raise ValueError("labels must be an int64 or int32 tensor of token ids")
    if labels.shape != hidden.shape[:-1]:
        raise ValueError(f"labels has shape {tuple(labels.shape)} but hidden has leading shape {tuple(hidden.shape[:-1])}")
    V = weight.shape[0]
    if chunk_rows is None:
        chunk_rows = tile_rows(V, hidden.device.type)
    if not isinstance(chunk_rows, int) or chunk_rows < 1:
        raise ValueError(f"chunk_rows must be a positive int, got {chunk_rows!r}")
    lab = labels.reshape(-1).long()
    if lab.numel() and (int(lab.min()) < 0 or int(lab.max()) >= V):
        raise ValueError(f"labels must lie in [0, {V}) (the number of rows of weight)")
    h = hidden.reshape(-1, hidden.shape[-1])
    logp, ent = _FusedLogpEntropy.apply(h, weight, lab, float(temperature), chunk_rows, bool(entropy_grad))
    if not bool(torch.isfinite(ent.detach()).all()) or not bool(torch.isfinite(logp.detach()).all()):
        raise ValueError("hidden or weight contain NaN or inf values (non-finite log-probabilities)")
    return logp.view(labels.shape), ent.view(labels.shape)
