"""Per-token policy losses behind one signature, in one registry.

Every loss has the signature

    loss_fn(logp, old_logp, advantages, response_mask, **hyper) -> (per_token_loss, metrics)
      logp, old_logp, response_mask : (B, T)      advantages : (B,) or (B, T)
      per_token_loss                : (B, T)      (aggregate it with ercref.aggregate)

Precision: bf16 / fp16 inputs are upcast to fp32 before anything is computed (the ratio's exp in
fp16 overflows at a log-ratio of 11), so the per-token loss is returned in fp32 (fp64 when an input
is fp64) and equals, bit for bit, the loss of fp32 inputs holding the same values; the gradient
flows back to the half-precision ``logp`` through the cast. ``old_logp`` must not require grad.

and returns the *loss* (to minimise) l_t = -objective_t. ERC is not a loss: it is the mask in
``ercref.erc.apply_erc`` that wraps any of these. Notation (as in the papers):

    r_t = pi_theta(a_t|s_t) / pi_old(a_t|s_t) = exp(clamp(logp - old_logp, -20, 20))

Metrics are detached 0-d tensors (no host sync here; ``ercref.metrics_to_floats`` converts a
whole dict with one). Fractions are over response tokens:
    ppo/clip_frac_low   the low-side clip is active  (A < 0, r < 1 - eps_low for PPO-style losses)
    ppo/clip_frac_high  the high-side clip is active (A > 0, r > 1 + eps_high)
    ppo/dual_clip_frac  the dual clip is active      (A < 0, -A r > -A c)
    kl/approx_old       k1 estimate of KL(pi_old || pi_theta): mean of (old_logp - logp)
    cov/selected_frac   Clip-Cov / KL-Cov only: the tokens selected by covariance (gradient off / KL on)
"""
from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable
from typing import NamedTuple

import torch

from ._checks import (
    as_bool_mask,
    check_any,
    check_finite,
    check_float,
    check_fraction,
    check_log_prob,
    check_no_grad,
    check_positive,
    check_same_shape,
    deferred_checks,
    upcast,
)

Tensor = torch.Tensor
LOG_RATIO_CLAMP = 20.0
LossFn = Callable[..., tuple[Tensor, dict[str, Tensor]]]
OLD_LOGP_IS_CONSTANT = ("old_logp is log pi_old of the rollout snapshot; with a graph through it (old_logp = logp "
                        "instead of logp.detach()) the ratio exp(logp - old_logp) has zero gradient and the policy "
                        "gradient is silently 0")


# ----------------------------------------------------------------------------- helpers
class PolicyInputs(NamedTuple):
    """The common inputs after ``prepare_inputs``: half precision upcast to fp32 (differentiably)."""
    logp: Tensor        # (B, T)
    old_logp: Tensor    # (B, T)
    log_ratio: Tensor   # clamp(logp - old_logp, -20, 20)
    ratio: Tensor       # exp(log_ratio)
    advantages: Tensor  # (B, 1) or (B, T)
    mask: Tensor        # (B, T) bool


def check_policy_inputs(logp: Tensor, old_logp: Tensor, advantages: Tensor, response_mask: Tensor) -> tuple[Tensor, Tensor]:
    """The checks of the four common inputs, made once by each public entry (a registered loss,
    ``compute_policy_loss``). Metadata at once, values deferred (ercref._checks).
    Returns (advantages broadcastable to (B, T), mask bool)."""
    check_float("logp", logp)
    check_float("old_logp", old_logp)
    check_float("advantages", advantages)
    if logp.dim() != 2:
        raise ValueError(f"logp must be 2-D (batch, response_length), got shape {tuple(logp.shape)}")
    check_same_shape("old_logp", old_logp, "logp", logp)
    mask = as_bool_mask("response_mask", response_mask, logp, "logp")
    if advantages.device != logp.device:
        raise ValueError(f"advantages is on device {advantages.device} but logp is on {logp.device}: "
                         "move both to one device (e.g. advantages.to(logp.device))")
    if advantages.dim() == 1:
        if advantages.shape[0] != logp.shape[0]:
            raise ValueError(f"advantages has shape {tuple(advantages.shape)} but logp has batch size {logp.shape[0]}")
    else:
        check_same_shape("advantages", advantages, "logp", logp)
    check_no_grad("old_logp", old_logp, OLD_LOGP_IS_CONSTANT)
    check_any("response_mask", mask)
    check_finite("logp", logp)
    check_finite("old_logp", old_logp)
    check_finite("advantages", advantages)
    check_log_prob("logp", logp, mask)
    check_log_prob("old_logp", old_logp, mask)
    return (advantages.unsqueeze(-1) if advantages.dim() == 1 else advantages), mask


def prepare_inputs(logp: Tensor, old_logp: Tensor, advantages: Tensor, response_mask: Tensor) -> PolicyInputs:
    """The ratio terms every loss body starts from, with bf16 / fp16 upcast to fp32. No checks: the
    public entry that called the body (a registered loss, ``compute_policy_loss``) made them."""
    mask = response_mask if response_mask.dtype == torch.bool else response_mask.bool()
    advantages = advantages.unsqueeze(-1) if advantages.dim() == 1 else advantages
    logp, old_logp, advantages = upcast(logp), upcast(old_logp), upcast(advantages)
    log_ratio = torch.clamp(logp - old_logp, min=-LOG_RATIO_CLAMP, max=LOG_RATIO_CLAMP)
    return PolicyInputs(logp, old_logp, log_ratio, torch.exp(log_ratio), advantages, mask)


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Mean of x over the True entries of mask (mask must select at least one entry), in fp32 for half x."""
    return (upcast(x) * mask).sum() / mask.sum()


def _frac(cond: Tensor, mask: Tensor) -> Tensor:
    """Fraction (0-d float tensor, on the device, no sync) of the True entries of mask where cond holds."""
    return (cond & mask).sum() / mask.sum()


def _common_metrics(log_ratio: Tensor, mask: Tensor, low: Tensor, high: Tensor, dual: Tensor | None = None) -> dict[str, Tensor]:
    return {
        "ppo/clip_frac_low": _frac(low, mask),
        "ppo/clip_frac_high": _frac(high, mask),
        "ppo/dual_clip_frac": torch.zeros((), device=mask.device) if dual is None else _frac(dual, mask),
        "kl/approx_old": masked_mean(-log_ratio.detach(), mask),
    }


def _dual_clip(loss: Tensor, A: Tensor, clip_ratio_c: float | None) -> tuple[Tensor, Tensor | None]:
    """Dual-clip PPO (Ye et al. 2020): for A < 0, l = min(l, -A c). Returns (loss, active mask)."""
    if clip_ratio_c is None:
        return loss, None
    if not clip_ratio_c > 1.0:
        raise ValueError(f"clip_ratio_c must be > 1 (it bounds the ratio from above for A < 0), got {clip_ratio_c!r}")
    bound = -A * clip_ratio_c
    active = (A < 0) & (loss > bound)
    return torch.where(A < 0, torch.minimum(loss, bound), loss), active


def _check_eps(eps_low: float, eps_high: float) -> None:
    check_fraction("eps_low", eps_low)
    check_positive("eps_high", eps_high)


def _check_ratio(name: str, value: float) -> None:
    """0 < value <= 1: a share of the response tokens."""
    check_positive(name, value)
    if value > 1:
        raise ValueError(f"{name} must be <= 1 (it is a share of the response tokens), got {value!r}")


def response_covariance(logp: Tensor, advantages: Tensor, mask: Tensor) -> Tensor:
    """The per-token covariance term of Cui et al. (arXiv 2505.22617), without gradient:

        Cov_t = (A_t - mean_m A) * (log pi_theta(a_t|s_t) - mean_m log pi_theta)

    means over the response tokens m of the batch; (B, T), the advantages broadcast to (B, T).
    Its batch mean is Cov(log pi, A), the term that drives the entropy change of a policy-gradient step."""
    logp, A = logp.detach(), advantages.detach().expand_as(logp)
    return (A - masked_mean(A, mask)) * (logp - masked_mean(logp, mask))


def top_k_mask(scores: Tensor, k: Tensor | int) -> Tensor:
    """Bool mask (shape of ``scores``) of the k largest scores (ties: the first in row-major order).
    ``k`` may be a 0-d tensor on the device: no host sync (a rank per entry, k compared on device)."""
    flat = scores.detach().flatten()
    order = torch.argsort(flat, descending=True, stable=True)
    rank = torch.empty_like(order)
    rank[order] = torch.arange(flat.numel(), device=flat.device)
    return (rank < k).view(scores.shape)


# ----------------------------------------------------------------------------- losses
def ppo_clip_loss(logp, old_logp, advantages, response_mask, eps_low: float = 0.2, eps_high: float | None = None,
                  clip_ratio_c: float | None = None):
    """PPO-clip, with DAPO's decoupled clip-higher (eps_high) and optional dual clip (c).

        l_t = max(-A r_t, -A clip(r_t, 1 - eps_low, 1 + eps_high))
        if A < 0 and clip_ratio_c:  l_t = min(l_t, -A c)

    eps_high=None means symmetric (eps_high = eps_low). Registered as "ppo", "dual_clip", "dapo".
    """
    eps_high = eps_low if eps_high is None else eps_high
    _check_eps(eps_low, eps_high)
    _, _, log_ratio, r, A, mask = prepare_inputs(logp, old_logp, advantages, response_mask)
    unclipped = -A * r
    clipped = -A * torch.clamp(r, 1.0 - eps_low, 1.0 + eps_high)
    loss = torch.maximum(unclipped, clipped)
    loss, dual = _dual_clip(loss, A, clip_ratio_c)
    low = (A < 0) & (r < 1.0 - eps_low)
    high = (A > 0) & (r > 1.0 + eps_high)
    return loss, _common_metrics(log_ratio, mask, low, high, dual)


def gppo_loss(logp, old_logp, advantages, response_mask, eps_low: float = 0.2, eps_high: float = 0.2,
              beta1: float = 1.0, beta2: float = 1.0, clip_ratio_c: float | None = 10.0):
    """GPPO, gradient-preserving clipping (Klear-Reasoner, arXiv 2508.07629; CE-GPPO 2509.20712).

    The clip bounds are written with a stop-gradient sg so that the forward value equals
    clip-higher's but a clipped token keeps a bounded gradient:

        lo_t = (1 - eps_low)  / sg(r_t) * (beta1 r_t + (1 - beta1) sg(r_t))
        hi_t = (1 + eps_high) / sg(r_t) * (beta2 r_t + (1 - beta2) sg(r_t))
        l_t  = max(-A r_t, -A clip(r_t, lo_t, hi_t));  dual clip for A < 0 as in PPO

    A token with A < 0, r < 1 - eps_low gets d l / d theta = -beta1 (1 - eps_low) A grad log pi;
    a token with A > 0, r > 1 + eps_high gets -beta2 (1 + eps_high) A grad log pi. With
    beta1 = beta2 = 1 this is exactly the authors' ``compute_policy_loss_gppo_erc`` base loss.
    Note: CE-GPPO's published code also multiplies the *forward value* by beta; we keep the
    forward value equal to clip-higher's for every beta (the gradient is the same either way).
    """
    _check_eps(eps_low, eps_high)
    for name, b in (("beta1", beta1), ("beta2", beta2)):
        if not (isinstance(b, (int, float)) and 0 <= b < float("inf")):
            raise ValueError(f"{name} must be a finite number >= 0, got {b!r}")
    _, _, log_ratio, r, A, mask = prepare_inputs(logp, old_logp, advantages, response_mask)
    rd = r.detach()
    mix1 = r if beta1 == 1.0 else beta1 * r + (1.0 - beta1) * rd
    mix2 = r if beta2 == 1.0 else beta2 * r + (1.0 - beta2) * rd
    lo = (1.0 - eps_low) / rd * mix1
    hi = (1.0 + eps_high) / rd * mix2
    loss = torch.maximum(-A * r, -A * torch.clamp(r, lo, hi))
    loss, dual = _dual_clip(loss, A, clip_ratio_c)
    low = (A < 0) & (r < 1.0 - eps_low)
    high = (A > 0) & (r > 1.0 + eps_high)
    return loss, _common_metrics(log_ratio, mask, low, high, dual)


def cispo_loss(logp, old_logp, advantages, response_mask, eps_low: float = 0.2, eps_high: float = 0.28):
    """CISPO (MiniMax-M1, arXiv 2506.13585): clip the importance weight, never the gradient.

        l_t = - sg(clip(r_t, 1 - eps_low, 1 + eps_high)) * A * log pi_theta(a_t|s_t)

    Every token keeps a gradient. Clip fractions count tokens whose weight was clipped (any A).
    Same semantics as verl's ``compute_policy_loss_cispo``.
    """
    _check_eps(eps_low, eps_high)
    logp, _, log_ratio, r, A, mask = prepare_inputs(logp, old_logp, advantages, response_mask)
    weight = torch.clamp(r, 1.0 - eps_low, 1.0 + eps_high).detach()
    loss = -weight * A * logp
    return loss, _common_metrics(log_ratio, mask, r < 1.0 - eps_low, r > 1.0 + eps_high)


def gspo_loss(logp, old_logp, advantages, response_mask, eps_low: float = 3e-4, eps_high: float = 4e-4):
    """GSPO (arXiv 2507.18071): a sequence-level ratio, applied token by token.

        s_i     = exp( (1/|y_i|) sum_t (logp_t - old_logp_t) )
        s_i,t   = sg(s_i) * pi_theta(y_i,t) / sg(pi_theta(y_i,t))
        l_i,t   = max(-A s_i,t, -A clip(s_i,t, 1 - eps_low, 1 + eps_high))

    The paper aggregates with "seq-mean-token-mean". Same semantics as verl's ``gspo``
    (log s clamped at 10).
    """
    _check_eps(eps_low, eps_high)
    logp, old_logp, log_ratio, r, A, mask = prepare_inputs(logp, old_logp, advantages, response_mask)
    maskf = mask.to(logp.dtype)
    seq_log_ratio = ((logp - old_logp) * maskf).sum(-1) / maskf.sum(-1).clamp(min=1)
    log_s = torch.clamp(logp - logp.detach() + seq_log_ratio.detach().unsqueeze(-1), max=10.0)
    s = torch.exp(log_s)
    unclipped = -A * s
    clipped = -A * torch.clamp(s, 1.0 - eps_low, 1.0 + eps_high)
    loss = torch.maximum(unclipped, clipped)
    sd = s.detach()
    return loss, _common_metrics(log_ratio, mask, (A < 0) & (sd < 1.0 - eps_low), (A > 0) & (sd > 1.0 + eps_high))


def pg_loss(logp, old_logp, advantages, response_mask):
    """Plain (importance-weighted) policy gradient, no clipping: l_t = -A r_t.

    At staleness 0 (r = 1) its gradient is the REINFORCE gradient -A grad log pi.
    """
    _, _, log_ratio, r, A, mask = prepare_inputs(logp, old_logp, advantages, response_mask)
    none = torch.zeros_like(mask)
    return -A * r, _common_metrics(log_ratio, mask, none, none)


def clip_cov_loss(logp, old_logp, advantages, response_mask, eps_low: float = 0.2, eps_high: float = 0.2,
                  clip_cov_ratio: float = 2e-4, clip_cov_lb: float = 1.0, clip_cov_ub: float = 5.0):
    """Clip-Cov (Cui et al., "The Entropy Mechanism of RL for Reasoning LMs", arXiv 2505.22617):
    PPO-clip, plus the gradient of a few random high-covariance tokens switched off.

        Cov_t  = (A_t - mean A) (log pi_t - mean log pi)            (``response_covariance``)
        C      = { t : response token, PPO clip inactive at t, clip_cov_lb < Cov_t < clip_cov_ub }
        S      = max(floor(clip_cov_ratio * #response tokens), 1) tokens of C drawn uniformly at random
                 (all of C if it is smaller): the first of torch.randperm(|C|) over C in row-major order
        l_t    = 0                                                   if t in S
                 max(-A r_t, -A clip(r_t, 1 - eps_low, 1 + eps_high))  otherwise

    "PPO clip inactive" is the clipped term not exceeding the unclipped one. Like verl 0.9.1's
    ``compute_policy_loss_clip_cov`` (and the authors' code it adapts), a selected token's loss is
    multiplied by 0: its *value* is 0 too, not only its gradient. Value and gradient equal verl's
    given the same global RNG state (r is clamped at exp(+-20) as in every ercref loss; verl does
    not clamp). Defaults are verl's (clip_cov_ratio 2e-4, bounds 1 / 5, clip ratios 0.2 / 0.2).

    Randomness: torch.randperm on torch's global CPU generator, consumed exactly as verl does (one
    call when C is non-empty); seed it (torch.manual_seed) to reproduce a selection. Costs one host
    sync (|C| and the count). Metric ``cov/selected_frac``: share of response tokens in S (verl's
    ``actor/pg_clipfrac``).
    """
    _check_eps(eps_low, eps_high)
    _check_ratio("clip_cov_ratio", clip_cov_ratio)
    for name, v in (("clip_cov_lb", clip_cov_lb), ("clip_cov_ub", clip_cov_ub)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ValueError(f"{name} must be a finite number, got {v!r}")
    if not clip_cov_lb < clip_cov_ub:
        raise ValueError(f"clip_cov_lb must be < clip_cov_ub (the covariance window (lb, ub) is empty), "
                         f"got clip_cov_lb={clip_cov_lb!r}, clip_cov_ub={clip_cov_ub!r}")
    logp, _, log_ratio, r, A, mask = prepare_inputs(logp, old_logp, advantages, response_mask)
    unclipped = -A * r
    clipped = -A * torch.clamp(r, 1.0 - eps_low, 1.0 + eps_high)
    cov = response_covariance(logp, A, mask)
    candidates = mask & ~(clipped > unclipped) & (cov > clip_cov_lb) & (cov < clip_cov_ub)
    n_select = max(int(clip_cov_ratio * mask.sum().item()), 1)   # the host sync (as verl)
    idx = torch.nonzero(candidates)
    selected = torch.zeros_like(mask)
    if len(idx) > 0:
        idx = idx[torch.randperm(len(idx))[:n_select].to(idx.device)]   # global CPU generator, as verl
        selected[idx[:, 0], idx[:, 1]] = True
    loss = torch.where(selected, torch.zeros_like(unclipped), torch.maximum(unclipped, clipped))
    metrics = _common_metrics(log_ratio, mask, (A < 0) & (r < 1.0 - eps_low), (A > 0) & (r > 1.0 + eps_high))
    metrics["cov/selected_frac"] = _frac(selected, mask)
    return loss, metrics


def kl_cov_loss(logp, old_logp, advantages, response_mask, kl_cov_ratio: float = 2e-4, ppo_kl_coef: float = 0.1):
    """KL-Cov (Cui et al., arXiv 2505.22617): the unclipped policy gradient, plus a KL penalty on the
    tokens of largest covariance.

        Cov_t = (A_t - mean A) (log pi_t - mean log pi)              (``response_covariance``)
        S     = the k = max(floor(kl_cov_ratio * #response tokens), 1) response tokens of largest Cov_t
        l_t   = -A r_t + ppo_kl_coef * |log pi_theta(a_t|s_t) - log pi_old(a_t|s_t)|   if t in S
                -A r_t                                                               otherwise

    No PPO clip. Value and gradient equal verl 0.9.1's ``compute_policy_loss_kl_cov`` (up to ties
    of Cov_t at the k-th place; r clamped at exp(+-20) as in every ercref loss). Defaults are
    verl's config defaults (kl_cov_ratio 2e-4, ppo_kl_coef 0.1; verl's function falls back to 1.0
    only when the config field is None). Deterministic (a top-k), no host sync.
    Metric ``cov/selected_frac``: share of response tokens in S.
    """
    _check_ratio("kl_cov_ratio", kl_cov_ratio)
    if isinstance(ppo_kl_coef, bool) or not isinstance(ppo_kl_coef, (int, float)) or not 0 <= ppo_kl_coef < float("inf"):
        raise ValueError(f"ppo_kl_coef must be a finite number >= 0, got {ppo_kl_coef!r}")
    logp, old_logp, log_ratio, r, A, mask = prepare_inputs(logp, old_logp, advantages, response_mask)
    cov = response_covariance(logp, A, mask)
    # k in float64 on the device: the same floor(ratio * n) as verl's Python float product, no sync
    k = torch.clamp(torch.floor(mask.sum().double() * kl_cov_ratio), min=1)
    selected = top_k_mask(torch.where(mask, cov, -torch.inf), k)
    pg = -A * r
    loss = torch.where(selected, pg + ppo_kl_coef * (logp - old_logp).abs(), pg)
    none = torch.zeros_like(mask)
    metrics = _common_metrics(log_ratio, mask, none, none)
    metrics["cov/selected_frac"] = _frac(selected, mask)
    return loss, metrics


# ----------------------------------------------------------------------------- registry
class _Registry(dict):
    def __missing__(self, key):
        raise ValueError(f"unknown loss name {key!r}; registered losses: {sorted(self)}")


LOSSES: dict[str, LossFn] = _Registry()      # the public, checked losses
LOSS_BODIES: dict[str, LossFn] = _Registry()  # the same losses unchecked, with their defaults (internal)


def check_per_token_loss(name: str, per_tok: Tensor, logp: Tensor, mask: Tensor) -> None:
    """What a loss body returned: the shape of logp, finite at every response position (a finite
    input can still overflow, e.g. |advantages| ~ 1e38)."""
    if not isinstance(per_tok, torch.Tensor) or per_tok.shape != logp.shape:
        raise ValueError(f"loss {name!r} returned a per-token loss of shape {tuple(getattr(per_tok, 'shape', ()))}"
                         f", not logp's {tuple(logp.shape)}")
    check_finite(f"the per-token loss of {name!r}", per_tok, mask,
                 "at a response position although every input is finite (an overflow: |advantages| too large?)")


def register_loss(name: str, fn: LossFn, **defaults) -> LossFn:
    """Register ``fn`` under ``name`` with default hyper-parameters (overridable per call).

    ``LOSSES[name]`` is the public loss: it checks the four common inputs and the per-token loss
    ``fn`` returns, with one host sync per call, then returns what ``fn`` returned. ``fn`` itself
    makes no input checks (``prepare_inputs``)."""
    bound = functools.partial(fn, **defaults) if defaults else fn

    @functools.wraps(bound)  # inspect.signature (loss_keywords) still sees fn's hyper-parameters
    def checked_loss(logp, old_logp, advantages, response_mask, **hyper):
        with deferred_checks():
            _, mask = check_policy_inputs(logp, old_logp, advantages, response_mask)
            per_tok, metrics = bound(logp, old_logp, advantages, mask, **hyper)
            check_per_token_loss(name, per_tok, logp, mask)
        return per_tok, metrics

    LOSS_BODIES[name] = bound
    LOSSES[name] = checked_loss
    return checked_loss


def get_loss(name: str) -> LossFn:
    return LOSSES[name]


_COMMON_INPUTS = ("logp", "old_logp", "advantages", "response_mask")


def loss_keywords(name: str) -> dict[str, inspect.Parameter] | None:
    """The hyper-parameters loss ``name`` takes, by keyword (the parameters of its function after
    the four common inputs), with their registered defaults. None if it accepts any (``**kw``)."""
    params = inspect.signature(LOSSES[name]).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return None
    return {k: p for k, p in params.items()
            if k not in _COMMON_INPUTS and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


register_loss("ppo", ppo_clip_loss, eps_low=0.2, eps_high=0.2)
register_loss("dual_clip", ppo_clip_loss, eps_low=0.2, eps_high=0.2, clip_ratio_c=3.0)
register_loss("dapo", ppo_clip_loss, eps_low=0.2, eps_high=0.28, clip_ratio_c=10.0)  # the paper's scripts
register_loss("gppo", gppo_loss, eps_low=0.2, eps_high=0.2, beta1=1.0, beta2=1.0, clip_ratio_c=10.0)
register_loss("cispo", cispo_loss)
register_loss("gspo", gspo_loss)
register_loss("pg", pg_loss)
register_loss("clip_cov", clip_cov_loss)
register_loss("kl_cov", kl_cov_loss)
