"""Full-vocabulary token entropy and token log-probabilities from logits, in row chunks.

For one position with logits z (V entries) at temperature tau, p = softmax(z / tau):

    H(pi, t) = - sum_v p_v log p_v = logsumexp(z/tau) - sum_v p_v (z_v/tau)

We centre by the row maximum m and use e_v = exp((z_v - m)/tau), s = sum_v e_v:

    H = log s - (sum_v e_v (z_v - m)/tau) / s

Memory: rows are processed ``chunk_rows`` at a time, in fp32 whatever the input dtype, so the
extra memory is two fp32 buffers of chunk_rows x V, i.e. O(chunk x V), not O(B x T x V).
The default chunk is sized to ~4M elements per buffer (16 MiB), about 27 rows at V = 151,936.

Log-probability of the sampled token and its gradient (the policy-gradient path):

    log pi(label) = z_label/tau - lse,   lse = logsumexp(z/tau)
    d log pi(label) / d z_v = (onehot(label)_v - p_v) / tau

With ``entropy_grad=True`` (an entropy bonus -c * agg(H)) the entropy carries a gradient too:

    dH / d z_v = -p_v (log p_v + H) / tau

so the chunked backward, with upstream gradients g_logp and g_H (one per row), writes

    dz = [g_logp (onehot - p) - g_H p (log p + H)] / tau

one recomputed row chunk at a time (only lse and H, each (N,), are saved). Masked entries
(z = -inf) have p = 0 and get a zero gradient.

Shapes: logits (..., V) -> entropy (...) in float32 (float64 for float64 logits).
"""
from __future__ import annotations

from collections.abc import Callable

import torch

from ._checks import check_float, check_positive

Tensor = torch.Tensor

DEFAULT_CHUNK_ELEMENTS = 1 << 22  # elements per fp32 work buffer (16 MiB)


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulation dtype: float64 stays float64 (for gradcheck), everything else is reduced in fp32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def default_chunk_rows(vocab_size: int) -> int:
    return max(1, DEFAULT_CHUNK_ELEMENTS // max(1, vocab_size))


def _validate(logits: Tensor, temperature: float, chunk_rows: int | None) -> int:
    check_float("logits", logits)
    if logits.dim() < 1 or logits.shape[-1] == 0:
        raise ValueError(f"logits must have a non-empty last (vocabulary) dimension, got shape {tuple(logits.shape)}")
    check_positive("temperature", temperature)
    if chunk_rows is None:
        return default_chunk_rows(logits.shape[-1])
    if not isinstance(chunk_rows, int) or chunk_rows < 1:
        raise ValueError(f"chunk_rows must be a positive int, got {chunk_rows!r}")
    return chunk_rows


def _raise_if_not_finite(out: Tensor, what: str, flat: Tensor | None = None, lab: Tensor | None = None,
                         lead: tuple[int, ...] = ()) -> None:
    """One host sync: is the (N,) output finite? Only if not, find out why in the logits ``flat``
    (N, V) (and labels ``lab`` (N,)) and say so, naming the row. -inf logits (masked-out
    vocabulary entries) are legitimate and handled; a row with no finite logit, or a label at a
    -inf logit, is not."""
    if bool(torch.isfinite(out).all()):
        return
    if flat is None:
        raise ValueError(f"logits contain NaN or +inf values (non-finite {what})")
    raise ValueError(_why_not_finite(out, what, flat.detach(), lab, lead))


def _why_not_finite(out: Tensor, what: str, flat: Tensor, lab: Tensor | None, lead: tuple[int, ...]) -> str:
    def row(i: int, *extra: int) -> str:  # "[b, t(, extra)]": the row's index in the caller's leading dimensions
        idx = [int(j) for j in torch.unravel_index(torch.tensor(i), lead)] if lead else []
        return "[" + ", ".join(str(j) for j in [*idx, *extra]) + "]" if idx or extra else ""

    def first(bad_rows: Tensor) -> int | None:
        hits = torch.nonzero(bad_rows)
        return int(hits[0, 0]) if hits.numel() else None

    i = first(torch.isnan(flat).any(-1))
    if i is not None:
        return f"logits contain NaN values (first in logits{row(i)}): the model's forward produced NaN"
    i = first((flat == float("inf")).any(-1))
    if i is not None:
        return f"logits contain +inf values (first in logits{row(i)}): only -inf (a masked-out token) is allowed"
    i = first((flat == float("-inf")).all(-1))
    if i is not None:
        return (f"logits{row(i)} is entirely -inf: every token of that position is masked out, so its distribution "
                f"(and its {what}) is undefined; leave at least one finite logit per position (e.g. do not mask the "
                "whole vocabulary at padding positions), or drop those positions before this call")
    if lab is not None:
        at_label = flat.gather(-1, lab[:, None]).squeeze(-1) == float("-inf")
        i = first(at_label)
        if i is not None:
            return (f"labels{row(i)} = {int(lab[i])} points at a -inf logit (logits{row(i, int(lab[i]))}): "
                    "that token has probability 0, so its log-probability is -inf; the labels must be tokens these "
                    "logits allow (compute log-probs with the same vocabulary mask / top-k filter the tokens were "
                    "sampled with)")
    i = first(~torch.isfinite(out))
    return (f"non-finite {what} at logits{row(i)} although the logits are finite: logits / temperature overflowed "
            f"{flat.dtype} (use a larger temperature)")


def entropy_from_logits(logits: Tensor, temperature: float = 1.0, chunk_rows: int | None = None) -> Tensor:
    """Token entropy H(pi, t) over the full vocabulary. logits (..., V) -> (...) float32.

    Without autograd (the usual case: entropy only builds the ERC mask) the work is done in
    reused fp32 buffers of ``chunk_rows x V``. If ``logits`` requires grad and grad mode is on
    (an entropy bonus), a differentiable per-chunk formula is used instead; autograd then keeps
    what it needs for the backward, as any differentiable entropy must.
    """
    chunk_rows = _validate(logits, temperature, chunk_rows)
    lead, V = logits.shape[:-1], logits.shape[-1]
    flat = logits.reshape(-1, V)
    N = flat.shape[0]
    acc = acc_dtype(logits.dtype)
    if N == 0:
        return torch.zeros(lead, dtype=acc, device=logits.device)
    if torch.is_grad_enabled() and logits.requires_grad:
        parts = []
        for i in range(0, N, chunk_rows):
            z = flat[i : i + chunk_rows].to(acc) / temperature
            logp = torch.log_softmax(z, dim=-1)
            p = logp.exp()
            # -inf logits have p = 0: 0 * log 0 := 0.
            parts.append(-(p * torch.where(p > 0, logp, torch.zeros_like(logp))).sum(-1))
        out = torch.cat(parts)
    else:
        out = torch.empty(N, dtype=acc, device=logits.device)
        rows = min(chunk_rows, N)
        zc = torch.empty(rows, V, dtype=acc, device=logits.device)
        e = torch.empty_like(zc)
        lowest = torch.finfo(acc).min
        with torch.no_grad():
            for i in range(0, N, rows):
                x = flat[i : i + rows]
                n = x.shape[0]
                zc_, e_ = zc[:n], e[:n]
                m = x.amax(dim=-1, keepdim=True).to(acc)
                # cast into the buffer, then centre in place: torch.sub(x, m, out=zc_) with a bf16 x
                # would allocate a third chunk-sized fp32 temporary for the type promotion
                zc_.copy_(x)
                zc_.sub_(m)
                if temperature != 1.0:
                    zc_.div_(temperature)
                zc_.clamp_(min=lowest)  # -inf -> lowest finite: exp gives 0, and 0 * lowest = 0
                torch.exp(zc_, out=e_)
                s = e_.sum(-1)
                ez = e_.mul_(zc_).sum(-1)  # sum_v e_v zc_v, in place (a bmm here loses ~1e-4 relative)
                out[i : i + n] = s.log() - ez / s
    _raise_if_not_finite(out, "entropy", flat, None, tuple(lead))
    return out.view(lead)


def _check_labels(logits: Tensor, labels: Tensor) -> Tensor:
    if not isinstance(labels, torch.Tensor) or labels.dtype not in (torch.int64, torch.int32):
        raise ValueError("labels must be an int64 or int32 tensor of token ids")
    if labels.shape != logits.shape[:-1]:
        raise ValueError(f"labels has shape {tuple(labels.shape)} but logits has leading shape {tuple(logits.shape[:-1])}")
    V = logits.shape[-1]
    lab = labels.reshape(-1).long()
    if lab.numel() and (int(lab.min()) < 0 or int(lab.max()) >= V):
        raise ValueError(f"labels must lie in [0, {V}) (the vocabulary size of logits)")
    return lab


# ----------------------------------------------------------------------------- shared tile math
# One (rows, V) tile of logits at a time; used here (logits given) and by ercref.fused_head
# (logits recomputed from hidden states and the LM-head weight, tile by tile).

def _tile_logp_entropy(z: Tensor, lab: Tensor, temperature: float, want_entropy: bool,
                       owned: bool) -> tuple[Tensor, Tensor, Tensor | None]:
    """For a tile of raw logits z (rows, V) in the accumulation dtype and labels lab (rows,), with
    z' = z / tau: returns (lse = logsumexp(z'), log pi(label) = z'_label - lse, H or None).

    H = -sum_v p_v log p_v from the centred log p = z' - lse (no cancellation); -inf logits
    (masked vocabulary entries) become the lowest finite value, so p = 0 and 0 * lowest = 0.
    ``owned``: z is a temporary the function may overwrite (saves tile-sized buffers); otherwise
    (a view of the caller's logits) it is left untouched.
    """
    if temperature != 1.0:
        z, owned = (z.div_(temperature) if owned else z / temperature), True
    lse = torch.logsumexp(z, dim=-1)
    logp = z.gather(-1, lab[:, None]).squeeze(-1) - lse
    if not want_entropy:
        return lse, logp, None
    lowest = torch.finfo(z.dtype).min
    log_p = (z.clamp_(min=lowest) if owned else z.clamp(min=lowest)).sub_(lse[:, None])
    return lse, logp, -torch.exp(log_p).mul_(log_p).sum(-1)


def _chunked_logp_entropy(tile: Callable[[slice], Tensor], n_rows: int, chunk_rows: int, lab: Tensor,
                          temperature: float, want_entropy: bool, owned: bool, acc: torch.dtype,
                          device: torch.device) -> tuple[Tensor, Tensor, Tensor | None]:
    """(logp, lse, H or None), each (n_rows,) in ``acc``, from the tiles ``tile(rows)`` of raw
    logits (acc dtype), ``chunk_rows`` rows at a time; ``owned`` as in _tile_logp_entropy."""
    logp = torch.empty(n_rows, dtype=acc, device=device)
    lse = torch.empty_like(logp)
    ent = torch.empty_like(logp) if want_entropy else None
    for i in range(0, n_rows, chunk_rows):
        sl = slice(i, i + chunk_rows)
        lse[sl], logp[sl], e = _tile_logp_entropy(tile(sl), lab[sl], temperature, want_entropy, owned)
        if want_entropy:
            ent[sl] = e
    return logp, lse, ent


def _tile_dlogits_(z: Tensor, lse: Tensor, lab: Tensor, g: Tensor, temperature: float,
                   g_ent: Tensor | None = None, ent: Tensor | None = None) -> Tensor:
    """In place on an owned tile z of raw logits (rows, V), accumulation dtype: returns
    z <- g (onehot(label) - softmax(z / tau)) / tau = g * d log pi(label) / d z, plus, when
    ``g_ent`` (rows,) is given with the forward's entropy ``ent`` (rows,), g_ent * dH / dz =
    -g_ent p (log p + H) / tau (one more tile-sized buffer, for p)."""
    if temperature != 1.0:
        z.div_(temperature)
    if g_ent is None:
        z.sub_(lse[:, None]).exp_().mul_(-g[:, None])  # -g p
    else:
        # log p = z' - lse, with -inf -> lowest finite so that p = 0 and p (log p + H) = 0 * finite = 0
        log_p = z.clamp_(min=torch.finfo(z.dtype).min).sub_(lse[:, None])
        p = torch.exp(log_p)
        # p (log p + H) first (finite), then * -g_H: -g_H p (log p + H) - g p
        z = log_p.add_(ent[:, None]).mul_(p).mul_(-g_ent[:, None]).addcmul_(p, g[:, None], value=-1)
    z.scatter_add_(-1, lab[:, None], g[:, None])  # + g onehot
    if temperature != 1.0:
        z.div_(temperature)
    return z


class _ChunkedLogProb(torch.autograd.Function):
    """log pi(label) and H from logits (N, V), chunk by chunk, with an analytic chunked backward.

    Forward keeps only lse (N,) (and H (N,) when ``entropy_grad``). Backward writes
    d logp / d z = (onehot(label) - p) / tau (+ g_H dH/dz = -g_H p (log p + H) / tau) into the
    gradient of the logits one chunk at a time (slicing inside autograd would instead allocate a
    full-size zero tensor per chunk).
    """

    @staticmethod
    def forward(ctx, flat: Tensor, lab: Tensor, temperature: float, chunk_rows: int, want_entropy: bool,
                entropy_grad: bool = False):
        acc = acc_dtype(flat.dtype)
        # .to(acc) copies a low-precision tile (owned); an fp32/fp64 tile is a view of the input
        logp, lse, ent = _chunked_logp_entropy(lambda sl: flat[sl].to(acc), flat.shape[0], chunk_rows, lab,
                                               temperature, want_entropy, flat.dtype != acc, acc, flat.device)
        ctx.temperature, ctx.chunk_rows, ctx.entropy_grad = temperature, chunk_rows, entropy_grad
        if entropy_grad:
            ctx.save_for_backward(flat, lab, lse, ent)
            ctx.set_materialize_grads(False)  # an unused output's gradient arrives as None: no work for it
            return logp, ent
        ctx.save_for_backward(flat, lab, lse)
        if want_entropy:
            ctx.mark_non_differentiable(ent)
            return logp, ent
        return logp, lse.new_zeros(0)

    @staticmethod
    def backward(ctx, grad_logp: Tensor, grad_ent):
        tau, rows = ctx.temperature, ctx.chunk_rows
        if ctx.entropy_grad:
            flat, lab, lse, ent = ctx.saved_tensors
            if grad_logp is None and grad_ent is None:
                return None, None, None, None, None, None
            if grad_logp is None:
                grad_logp = torch.zeros_like(lse)
        else:
            (flat, lab, lse), ent, grad_ent = ctx.saved_tensors, None, None
        acc = acc_dtype(flat.dtype)
        grad = torch.empty_like(flat)
        for i in range(0, flat.shape[0], rows):
            sl = slice(i, i + rows)
            g_ent = None if grad_ent is None else grad_ent[sl].to(acc)
            grad[sl] = _tile_dlogits_(flat[sl].to(acc, copy=True), lse[sl], lab[sl], grad_logp[sl].to(acc), tau,
                                      g_ent, None if g_ent is None else ent[sl])
        return grad, None, None, None, None, None


def _logprobs(logits, labels, temperature, chunk_rows, want_entropy, entropy_grad=False):
    chunk_rows = _validate(logits, temperature, chunk_rows)
    lab = _check_labels(logits, labels)
    flat = logits.reshape(-1, logits.shape[-1])
    logp, ent = _ChunkedLogProb.apply(flat, lab, float(temperature), chunk_rows, want_entropy,
                                      bool(entropy_grad) and want_entropy)
    if want_entropy:
        # one sync for both: logp <= 0 and H >= 0 are bounded, so the sum is finite iff both are
        _raise_if_not_finite(logp.detach() + ent.detach(), "log-probabilities and entropy", flat, lab,
                             tuple(labels.shape))
        return logp.view(labels.shape), ent.view(labels.shape)
    _raise_if_not_finite(logp.detach(), "log-probabilities", flat, lab, tuple(labels.shape))
    return logp.view(labels.shape)


def logprobs_from_logits(logits: Tensor, labels: Tensor, temperature: float = 1.0, chunk_rows: int | None = None) -> Tensor:
    """log pi(label | .) = z_label/tau - logsumexp(z/tau). logits (..., V), labels (...) -> (...) float32.

    Differentiable, with O(chunk x V) extra memory in forward and backward (beyond the logits'
    own gradient); computed in fp32 row chunks.
    """
    return _logprobs(logits, labels, temperature, chunk_rows, want_entropy=False)


def logprobs_and_entropy(logits: Tensor, labels: Tensor, temperature: float = 1.0,
                         chunk_rows: int | None = None, entropy_grad: bool = False) -> tuple[Tensor, Tensor]:
    """Both per-token quantities an update needs, from one pass over each row chunk.

    Returns (logp, entropy), each (...) float32: logp = log pi(label) is differentiable;
    entropy H(pi, t) is detached (it only builds the ERC mask and the entropy metrics) unless
    ``entropy_grad=True`` (an entropy bonus), when it carries dH/dz = -p (log p + H) / tau
    through the same chunked backward (O(chunk x V) memory; H (N,) is saved).
    The logsumexp is shared: log p = z - lse, H = -sum_v p_v log p_v.
    """
    return _logprobs(logits, labels, temperature, chunk_rows, want_entropy=True, entropy_grad=entropy_grad)


_COMPILED = {}


def _entropy_rows(z: Tensor, inv_temperature: float) -> Tensor:
    # one pass of max / exp / sum that torch.compile fuses into a single loop over each row;
    # -inf logits (masked vocabulary) become the lowest finite value after centring, as in the
    # eager path: exp gives 0 and 0 * lowest = 0 (not 0 * -inf = NaN)
    z = z.float() * inv_temperature
    m = z.amax(-1, keepdim=True)
    zc = (z - m).clamp(min=torch.finfo(torch.float32).min)
    e = torch.exp(zc)
    s = e.sum(-1)
    return torch.log(s) - (e * zc).sum(-1) / s


def compiled_entropy_from_logits(logits: Tensor, temperature: float = 1.0, chunk_rows: int | None = None) -> Tensor:
    """Same result as :func:`entropy_from_logits` (no gradient), through ``torch.compile``; returns
    float32 (also for float64 logits).

    Optional fast path: the first call compiles (~15 s on CPU, needs a C++ compiler), later calls
    run the fused one-pass kernel, several times faster than eager on CPU. Rows are still
    processed in chunks, so memory stays O(chunk x V). Masked vocabularies (-inf logits) are
    handled as in the eager path; a row that is entirely -inf is an error that names it.
    """
    chunk_rows = _validate(logits, temperature, chunk_rows)
    if "fn" not in _COMPILED:
        _COMPILED["fn"] = torch.compile(_entropy_rows, dynamic=True)
    fn = _COMPILED["fn"]
    flat = logits.reshape(-1, logits.shape[-1])
    rows = max(chunk_rows, 256)
    with torch.no_grad():
        out = torch.cat([fn(flat[i : i + rows], 1.0 / temperature) for i in range(0, flat.shape[0], rows)]) \
            if flat.shape[0] else flat.new_zeros(0, dtype=torch.float32)
    _raise_if_not_finite(out, "entropy", flat, None, tuple(logits.shape[:-1]))
    return out.view(logits.shape[:-1])
