"""Per-token drift between an old policy snapshot and the updated policy, over the full vocabulary.

PPO-clip bounds the ratio q(a_t) / p(a_t) of the *sampled* token only. These measures see the whole
distribution at a position: how far it moved, and how much of the move is on the tokens that were
not sampled. For one position t with old logits z^o and new logits z^n (V entries each), sampled
token a = a_t and temperature tau:

    p = softmax(z^o / tau)   (pi_old),        q = softmax(z^n / tau)   (pi_new),        r_v = log p_v - log q_v

    KL(pi_old || pi_new) = sum_v p_v r_v       = sum_v [ p_v r_v - p_v + q_v ]          (each term >= 0)
    KL(pi_new || pi_old) = sum_v q_v (-r_v)    = sum_v [ -q_v r_v - q_v + p_v ]
    TV                   = 1/2 sum_v |q_v - p_v|   =   TV_sampled + TV_unsampled
    TV_sampled           = 1/2 |q_a - p_a|                 (what PPO-clip's ratio watches)
    TV_unsampled         = 1/2 sum_{v != a} |q_v - p_v|    (what it cannot see)
    |H(pi_new) - H(pi_old)|,   rho = (H(pi_new) + 1e-8) / (H(pi_old) + 1e-8)   (ERC's entropy ratio, ercref.erc)

The KLs are summed in their Bregman form (the added sum_v q_v - sum_v p_v is 0): every term is
>= 0, and the rounding of the two logsumexps cancels to first order, so two rows one constant
apart give ~0 rather than the logsumexps' rounding; rounding below 0 is clamped to 0 (KL >= 0).
Identical logits give exactly 0 for every measure and rho = 1. A KL is +inf where one policy puts
mass on a token the other excludes (a -inf logit, i.e. a masked-out vocabulary entry); the other
measures stay finite.

Two entries, the same numbers:

    token_drift(old_logits, new_logits, labels)                       logits (..., V)
    token_drift_from_hidden(old_hidden, old_weight, new_hidden, new_weight, labels)
                                                                      hidden (..., D), LM-head weight (V, D)

Both work on ``chunk_rows`` rows at a time and never hold more than five (chunk_rows, V) fp32
buffers (log p, p, log q, q and one work buffer): the hidden-state entry computes each tile
z = h W^T itself, so the (..., V) logits are never materialised. bf16 / fp16 inputs are reduced in
fp32 (the hidden-state entry multiplies in the input dtype, as the model's own head would); fp64
stays fp64. The measures are diagnostics: they carry no gradient.

``drift_summary(drift, mask)`` reduces them over the response tokens of a mask to 0-d tensors named
``drift/<measure>/<stat>`` (no host sync beyond the input checks): mean, p90, p99, max, and for the
two KLs the share of tokens beyond the trust-region thresholds ``KL_THRESHOLDS`` (0.01 and 0.1 nats).

Shapes: labels (...) int64 / int32 token ids; every TokenDrift field (...) float32 (float64 for
float64 inputs).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch

from ._checks import (
    as_bool_mask,
    check_any,
    check_finite,
    check_float,
    check_positive,
    check_same_shape,
    checked,
    require,
    upcast,
)
from .entropy import acc_dtype
from .erc import _ratio
from .fused_head import tile_rows

Tensor = torch.Tensor

KL_THRESHOLDS = (0.01, 0.1)                 # nats: the trust-region thresholds of drift_summary's frac_gt_*
QUANTILES = {"p90": 0.90, "p99": 0.99}      # linear interpolation between order statistics, as torch.quantile
KL_MEASURES = ("kl_old_new", "kl_new_old")
SUMMARISED = ("kl_old_new", "kl_new_old", "tv", "tv_sampled", "tv_unsampled", "entropy_abs_diff", "entropy_ratio")


class TokenDrift(NamedTuple):
    """Per-token drift from pi_old to pi_new; every field has the labels' shape (module docstring)."""
    kl_old_new: Tensor        # KL(pi_old || pi_new)
    kl_new_old: Tensor        # KL(pi_new || pi_old)
    tv: Tensor                # 1/2 sum_v |q_v - p_v|  =  tv_sampled + tv_unsampled
    tv_sampled: Tensor        # 1/2 |q_a - p_a|
    tv_unsampled: Tensor      # 1/2 sum_{v != a} |q_v - p_v|
    entropy_old: Tensor       # H(pi_old)
    entropy_new: Tensor       # H(pi_new)
    entropy_abs_diff: Tensor  # |H(pi_new) - H(pi_old)|
    entropy_ratio: Tensor     # (H(pi_new) + 1e-8) / (H(pi_old) + 1e-8)


# ----------------------------------------------------------------------------- the tile math
def _log_softmax_tile(z: Tensor, temperature: float, acc: torch.dtype, owned: bool) -> tuple[Tensor, Tensor, Tensor]:
    """Raw logits z (rows, V) -> (log pi, pi) as (rows, V) tiles in ``acc`` and the row maxima m (rows, 1)
    of z (NaN or +inf where a row holds a NaN or +inf, -inf where it is all -inf). ``owned``: z is a
    temporary in ``acc`` that becomes log pi (one new tile); otherwise z is left as it is (two new tiles)."""
    m = z.amax(-1, keepdim=True)
    zc = z.sub_(m) if owned else torch.sub(z.to(acc), m.to(acc))   # z_v - max z
    if temperature != 1.0:
        zc.div_(temperature)                           # (z_v - max z) / tau
    # -inf (a masked-out token) -> the lowest finite value: pi_v = 0 and 0 * (a finite log pi_v) = 0, not NaN
    zc.clamp_(min=torch.finfo(acc).min)
    e = torch.exp(zc)
    log_pi = zc.sub_(e.sum(-1, keepdim=True).log_())   # log pi_v = z_v/tau - logsumexp(z/tau)
    return log_pi, torch.exp(log_pi, out=e), m         # pi_v = exp(log pi_v): sums to 1 up to the lse's rounding


def _tile_drift(zo: Tensor, zn: Tensor, lab: Tensor, temperature: float, acc: torch.dtype,
                owned: bool) -> tuple[tuple[Tensor, ...], Tensor, Tensor]:
    """One tile of raw logits zo, zn (rows, V) (overwritten when ``owned``) and labels lab (rows,) ->
    ((KL(old||new), KL(new||old), TV_sampled, TV_unsampled, H_old, H_new), each (rows,) in ``acc``;
    and the row maxima of zo and of zn, (rows,), for the value checks). Five (rows, V) buffers."""
    log_p, p, m_old = _log_softmax_tile(zo, temperature, acc, owned)
    log_q, q, m_new = _log_softmax_tile(zn, temperature, acc, owned)
    work = torch.mul(p, log_p)
    h_old = -work.sum(-1)                                                  # H(pi_old) = -sum_v p_v log p_v
    h_new = -torch.mul(q, log_q, out=work).sum(-1)                         # H(pi_new) = -sum_v q_v log q_v
    r = log_p.sub_(log_q)                                                  # r_v = log p_v - log q_v
    kl_old_new = torch.mul(p, r, out=work).sub_(p).add_(q).sum(-1)         # sum_v [p_v r_v - p_v + q_v]
    kl_new_old = torch.mul(q, r, out=work).neg_().sub_(q).add_(p).sum(-1)  # sum_v [-q_v r_v - q_v + p_v]
    # a token only one policy excludes (-inf -> lowest above): r_v = +-(the largest finite value), KL = +inf
    big = torch.finfo(acc).max
    kl_old_new.masked_fill_(r.amax(-1) >= big, float("inf"))              # q_v = 0 < p_v
    kl_new_old.masked_fill_(r.amin(-1) <= -big, float("inf"))             # p_v = 0 < q_v
    d = torch.sub(q, p, out=work).abs_()                                   # |q_v - p_v|
    tv_sampled = 0.5 * d.gather(-1, lab[:, None]).squeeze(-1)              # 1/2 |q_a - p_a|
    tv_unsampled = 0.5 * d.scatter_(-1, lab[:, None], 0.0).sum(-1)         # 1/2 sum_{v != a} |q_v - p_v|
    out = (kl_old_new.clamp_(min=0), kl_new_old.clamp_(min=0), tv_sampled, tv_unsampled, h_old, h_new)
    return out, m_old.squeeze(-1), m_new.squeeze(-1)


def _drift_rows(tile_old: Callable[[slice], Tensor], tile_new: Callable[[slice], Tensor], lab: Tensor,
                chunk_rows: int, temperature: float, acc: torch.dtype, owned: bool) -> tuple[TokenDrift, Tensor]:
    """TokenDrift of (N,) rows from the raw-logit tiles ``tile_old(rows)`` / ``tile_new(rows)`` (fresh
    temporaries in ``acc`` when ``owned``, else views), and the row maxima (2, N) of the old and the new
    logits (for the value checks)."""
    n = lab.shape[0]
    out = torch.empty(6, n, dtype=acc, device=lab.device)
    row_max = torch.empty(2, n, dtype=acc, device=lab.device)
    for i in range(0, n, chunk_rows):
        sl = slice(i, i + chunk_rows)
        values, row_max[0, sl], row_max[1, sl] = _tile_drift(tile_old(sl), tile_new(sl), lab[sl], temperature, acc,
                                                             owned)
        for j, x in enumerate(values):
            out[j, sl] = x
    kl_on, kl_no, tv_s, tv_u, h_old, h_new = out
    h_old, h_new = h_old.clamp_(min=0), h_new.clamp_(min=0)   # an entropy is >= 0; rounding may give -1e-7
    drift = TokenDrift(kl_on, kl_no, tv_s + tv_u, tv_s, tv_u, h_old, h_new,
                       (h_new - h_old).abs(),                  # |H(pi_new) - H(pi_old)|
                       _ratio(h_new, h_old))                   # (H_new + 1e-8) / (H_old + 1e-8), as ercref.erc
    return drift, row_max


def _shaped(flat: TokenDrift, lead: tuple[int, ...]) -> TokenDrift:
    return TokenDrift(*(x.view(lead) for x in flat))


# ----------------------------------------------------------------------------- checks
def default_rows(vocab_size: int, device_type: str) -> int:
    """Rows per tile by default: a quarter of ``ercref.fused_head.tile_rows`` on the device, so the five
    buffers together hold ~1.25 fused-head tiles (on a CPU ~4 MB each, near the cache)."""
    return max(1, tile_rows(vocab_size, device_type) // 4)


def _check_chunk_rows(chunk_rows) -> None:
    if chunk_rows is not None and (isinstance(chunk_rows, bool) or not isinstance(chunk_rows, int) or chunk_rows < 1):
        raise ValueError(f"chunk_rows must be a positive int (rows of logits per tile) or None, got {chunk_rows!r}")


def _check_labels(labels: Tensor, lead: tuple[int, ...], vocab: int, ref_name: str, ref: Tensor) -> Tensor:
    """labels (lead) int64 / int32 on ref's device, each in [0, vocab) -> flat int64 (immediate: an
    out-of-range id would fail inside the gather, on CUDA as a device assert)."""
    if not isinstance(labels, torch.Tensor) or labels.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"labels must be an int64 or int32 tensor of sampled token ids, got "
                         f"{getattr(labels, 'dtype', type(labels).__name__)}")
    if tuple(labels.shape) != lead:
        raise ValueError(f"labels has shape {tuple(labels.shape)} but {ref_name} has leading shape {lead}")
    if labels.device != ref.device:
        raise ValueError(f"labels is on device {labels.device} but {ref_name} is on {ref.device}")
    lab = labels.reshape(-1).long()
    if lab.numel() and (int(lab.min()) < 0 or int(lab.max()) >= vocab):
        bad = torch.nonzero((lab < 0) | (lab >= vocab))[0, 0]
        idx = [int(j) for j in torch.unravel_index(bad, lead)] if lead else []
        raise ValueError(f"labels{idx} = {int(lab[bad])} is not a token id: labels must lie in [0, {vocab}) "
                         f"(the vocabulary size of {ref_name})")
    return lab


def _row_index(i: int, lead: tuple[int, ...]) -> str:
    return "[" + ", ".join(str(int(j)) for j in torch.unravel_index(torch.tensor(i), lead)) + "]" if lead else ""


# ----------------------------------------------------------------------------- public entries
@checked
def token_drift(old_logits: Tensor, new_logits: Tensor, labels: Tensor, temperature: float = 1.0,
                chunk_rows: int | None = None) -> TokenDrift:
    """Per-token drift from pi_old = softmax(old_logits / tau) to pi_new = softmax(new_logits / tau).

    old_logits, new_logits (..., V) on one device; labels (...) the sampled tokens a_t. -inf logits
    are masked-out tokens (probability 0); NaN, +inf and a row that is entirely -inf are refused,
    naming the argument and the row. ``chunk_rows`` (default ``default_rows``): rows per tile.
    Returns a TokenDrift of (...) tensors without gradient (module docstring).
    """
    check_float("old_logits", old_logits)
    check_float("new_logits", new_logits)
    check_same_shape("new_logits", new_logits, "old_logits", old_logits)
    if old_logits.dim() < 1 or old_logits.shape[-1] == 0:
        raise ValueError(f"old_logits must have a non-empty last (vocabulary) dimension, got shape {tuple(old_logits.shape)}")
    check_positive("temperature", temperature)
    _check_chunk_rows(chunk_rows)
    V = old_logits.shape[-1]
    lead = tuple(old_logits.shape[:-1])
    lab = _check_labels(labels, lead, V, "old_logits", old_logits)
    rows = chunk_rows or default_rows(V, old_logits.device.type)
    acc = acc_dtype(torch.promote_types(old_logits.dtype, new_logits.dtype))
    flat_o = old_logits.detach().reshape(-1, V)
    flat_n = new_logits.detach().reshape(-1, V)
    with torch.no_grad():
        out, row_max = _drift_rows(lambda sl: flat_o[sl], lambda sl: flat_n[sl], lab, rows, float(temperature), acc,
                                   owned=False)
    for name, m in (("old_logits", row_max[0]), ("new_logits", row_max[1])):
        bad, empty = torch.isnan(m) | (m == float("inf")), m == float("-inf")
        require(~bad.any(), lambda name=name, bad=bad: (
            f"{name} contains NaN or +inf values (first in row {name}{_row_index(int(torch.nonzero(bad)[0, 0]), lead)}): "
            "only -inf (a masked-out token) is allowed"))
        require(~empty.any(), lambda name=name, empty=empty: (
            f"{name}{_row_index(int(torch.nonzero(empty)[0, 0]), lead)} is entirely -inf: every token of that position "
            "is masked out, so its distribution is undefined; leave at least one finite logit per position"))
    return _shaped(out, lead)


@checked
def token_drift_from_hidden(old_hidden: Tensor, old_weight: Tensor, new_hidden: Tensor, new_weight: Tensor,
                            labels: Tensor, temperature: float = 1.0, chunk_rows: int | None = None) -> TokenDrift:
    """Per-token drift with logits z = h W^T computed one row tile at a time (never (..., V) at once).

    old_hidden, new_hidden (..., D): the last hidden states of the two policies at the same positions;
    old_weight, new_weight (V, D): their LM-head weights (no bias); labels (...) the sampled tokens.
    Each side's hidden and weight share a dtype (matmuls in it, reduced in fp32; fp64 stays fp64).
    ``chunk_rows`` (default ``default_rows``): rows per tile (five such buffers are alive at once).
    Returns a TokenDrift of (...) tensors without gradient.
    """
    for name, x in (("old_hidden", old_hidden), ("old_weight", old_weight), ("new_hidden", new_hidden),
                    ("new_weight", new_weight)):
        check_float(name, x)
    check_same_shape("new_hidden", new_hidden, "old_hidden", old_hidden)
    check_same_shape("new_weight", new_weight, "old_weight", old_weight)
    if old_hidden.dim() < 1:
        raise ValueError("old_hidden must be (..., D), got a 0-d tensor")
    D = old_hidden.shape[-1]
    if old_weight.dim() != 2 or old_weight.shape[1] != D or old_weight.shape[0] == 0:
        raise ValueError(f"old_weight must be (V, D) with V >= 1 and D = old_hidden.shape[-1] = {D}, "
                         f"got shape {tuple(old_weight.shape)}")
    if old_weight.device != old_hidden.device:
        raise ValueError(f"old_weight is on device {old_weight.device} but old_hidden is on {old_hidden.device}")
    for side in ("old", "new"):
        h, w = (old_hidden, old_weight) if side == "old" else (new_hidden, new_weight)
        if h.dtype != w.dtype:
            raise ValueError(f"{side}_hidden ({h.dtype}) and {side}_weight ({w.dtype}) must share a dtype "
                             f"(e.g. {side}_hidden.to({side}_weight.dtype))")
    check_positive("temperature", temperature)
    _check_chunk_rows(chunk_rows)
    V = old_weight.shape[0]
    lead = tuple(old_hidden.shape[:-1])
    lab = _check_labels(labels, lead, V, "old_hidden", old_hidden)
    for name, x in (("old_hidden", old_hidden), ("old_weight", old_weight), ("new_hidden", new_hidden),
                    ("new_weight", new_weight)):
        check_finite(name, x)
    rows = chunk_rows or default_rows(V, old_hidden.device.type)
    acc = acc_dtype(torch.promote_types(old_hidden.dtype, new_hidden.dtype))
    ho, hn = old_hidden.detach().reshape(-1, D), new_hidden.detach().reshape(-1, D)
    wo, wn = old_weight.detach(), new_weight.detach()
    with torch.no_grad():
        # each tile a fresh matmul output in the accumulation dtype:  z = h W^T  (rows, V)
        out, _ = _drift_rows(lambda sl: (ho[sl] @ wo.T).to(acc), lambda sl: (hn[sl] @ wn.T).to(acc), lab, rows,
                             float(temperature), acc, owned=True)
    return _shaped(out, lead)


@checked
def drift_summary(drift: TokenDrift, mask: Tensor, prefix: str = "drift") -> dict[str, Tensor]:
    """Summaries of per-token drift over the tokens where ``mask`` (same shape; bool or 0/1) is set.

    For each measure m in ``SUMMARISED`` (kl_old_new, kl_new_old, tv, tv_sampled, tv_unsampled,
    entropy_abs_diff, entropy_ratio), 0-d tensors on the drift's device (no host sync):

        {prefix}/m/mean, {prefix}/m/p90, {prefix}/m/p99, {prefix}/m/max
        {prefix}/m/frac_gt_0.01, {prefix}/m/frac_gt_0.1    (the two KLs: share of tokens with KL > t nats)
        {prefix}/tokens                                     (the number of tokens summarised)

    p90 / p99 interpolate linearly between order statistics (as torch.quantile). A +inf KL (a
    support mismatch) counts as beyond every threshold and makes the mean +inf.
    """
    if not isinstance(drift, TokenDrift):
        raise ValueError(f"drift must be a TokenDrift (from ercref.token_drift or token_drift_from_hidden), "
                         f"got {type(drift).__name__}")
    if not isinstance(prefix, str) or not prefix or prefix.endswith("/"):
        raise ValueError(f"prefix must be a non-empty metric namespace without a trailing '/', e.g. 'drift/trained', "
                         f"got {prefix!r}")
    ref = drift.kl_old_new
    for field in TokenDrift._fields:
        check_float(f"drift.{field}", getattr(drift, field))
        check_same_shape(f"drift.{field}", getattr(drift, field), "drift.kl_old_new", ref)
    m = as_bool_mask("mask", mask, ref, "drift.kl_old_new")
    check_any("mask", m)
    for field in SUMMARISED:
        x = getattr(drift, field).detach()
        bad = torch.isnan(x) & m
        require(~bad.any(), lambda field=field, bad=bad: (
            f"drift.{field} is NaN at a masked token (first at {torch.nonzero(bad)[0].tolist()})"))
    return _summary(drift, m, prefix)


def _summary(drift: TokenDrift, mask: Tensor, prefix: str) -> dict[str, Tensor]:
    """``drift_summary`` on checked inputs (``mask`` bool with at least one token)."""
    m = mask.reshape(-1)
    n = m.sum()
    out: dict[str, Tensor] = {}
    for field in SUMMARISED:
        x = upcast(getattr(drift, field).detach()).reshape(-1)
        nf = n.to(x.dtype)
        out[f"{prefix}/{field}/mean"] = torch.where(m, x, 0).sum() / nf
        ranked = torch.where(m, x, float("inf")).sort().values      # the n masked values first, ascending
        for name, qv in QUANTILES.items():
            pos = (n.double() - 1).clamp(min=0) * qv                # the q-quantile's fractional rank (float64)
            lo = pos.floor()
            a = ranked.gather(0, lo.long().view(1)).squeeze(0)
            b = ranked.gather(0, pos.ceil().long().view(1)).squeeze(0)
            out[f"{prefix}/{field}/{name}"] = torch.where(b == a, a, a + (pos - lo).to(x.dtype) * (b - a))
        out[f"{prefix}/{field}/max"] = torch.where(m, x, float("-inf")).max()
        if field in KL_MEASURES:
            for t in KL_THRESHOLDS:
                out[f"{prefix}/{field}/frac_gt_{t:g}"] = ((x > t) & m).sum().to(x.dtype) / nf
    out[f"{prefix}/tokens"] = n
    return out
