"""Entropy Ratio Clipping (ERC): one mask, composable with any per-token policy loss.

Paper (Su et al., arXiv 2512.05591), for response i, position t:

    rho_t = (H(pi_theta, t) + 1e-8) / (H(pi_old, t) + 1e-8)
    I_t   = 1  if  (1 - beta_low) < rho_t < (1 + beta_high)  (strict)  and t is a response token
    L     = token_mean over ALL response tokens of [ I_t * l_t + (1 - I_t) * sg(l_t) ]

so ERC-clipped tokens keep their forward value, contribute zero gradient, and still count in the
denominator. The current entropy carries no gradient: it only builds the mask. This matches the
authors' ``compute_policy_loss_{grpo,gppo}_erc`` (Kwai-Klear/ERC), whose ``torch.where(mask,
l, l.detach())`` we use as is. Paper default beta_low = beta_high = 0.05 (bounds 0.95 / 1.05).

The random-mask control (``erc_mask="random"``, ``random_like_erc_mask``) stops the gradient of as
many response tokens as the entropy-ratio mask would, drawn uniformly at random: it tells "ERC picks
the right tokens" from "ERC drops tokens".

Shapes: entropy, old_entropy, response_mask, per_token_loss: (B, T).
Precision: rho and the comparisons are computed in fp32 whatever the entropies' dtype (fp64 stays
fp64), so bf16 / fp16 entropies give exactly the mask of fp32 entropies with the same values.
old_entropy must not require grad (it is a constant of the rollout snapshot).
"""
from __future__ import annotations

from typing import Literal, get_args

import torch

from ._checks import (
    as_bool_mask,
    check_any,
    check_finite,
    check_float,
    check_fraction,
    check_no_grad,
    check_positive,
    check_same_shape,
    checked,
    require,
    upcast,
)
from .losses import top_k_mask

Tensor = torch.Tensor
ENTROPY_EPS = 1e-8
ErcMask = Literal["entropy-ratio", "random"]
ERC_MASKS: tuple[str, ...] = get_args(ErcMask)
OLD_ENTROPY_IS_CONSTANT = "old_entropy is the rollout snapshot's entropy, the fixed reference ERC compares against"


ENTROPY_TOLERANCE = 1e-3  # an entropy is >= 0; float rounding of a near-deterministic row may give -1e-7


def check_entropies(entropy: Tensor, old_entropy: Tensor) -> None:
    """The checks of the two entropies, made once by each public entry taking them (values
    deferred, see ercref._checks): floats, same shape and device, old_entropy constant, finite, >= 0."""
    check_float("entropy", entropy)
    check_float("old_entropy", old_entropy)
    check_same_shape("old_entropy", old_entropy, "entropy", entropy)
    check_no_grad("old_entropy", old_entropy, OLD_ENTROPY_IS_CONSTANT)
    check_finite("entropy", entropy)
    check_finite("old_entropy", old_entropy)
    for name, x in (("entropy", entropy), ("old_entropy", old_entropy)):
        bad = x.detach() < -ENTROPY_TOLERANCE
        require(~bad.any(), lambda name=name, x=x, bad=bad: (
            f"{name} holds a negative value ({x.detach()[bad][0].item():.4g} at {torch.nonzero(bad)[0].tolist()}): "
            "an entropy is >= 0 (pass the full-vocabulary entropy, e.g. ercref.entropy_from_logits)"))


def _ratio(entropy: Tensor, old_entropy: Tensor) -> Tensor:
    # bf16 / fp16 entropies are upcast first: in bf16 the bound 1.05 would be 1.046875, and in fp16
    # the 1e-8 guard underflows (0 / 0 = NaN for zero entropies). Rounding below 0 (within
    # ENTROPY_TOLERANCE) is taken as 0, so the denominator stays >= 1e-8.
    return (upcast(entropy.detach()).clamp(min=0) + ENTROPY_EPS) / (upcast(old_entropy.detach()).clamp(min=0) + ENTROPY_EPS)


@checked
def entropy_ratio(entropy: Tensor, old_entropy: Tensor) -> Tensor:
    """rho_t = (H(pi_theta, t) + 1e-8) / (H(pi_old, t) + 1e-8), without gradient, in fp32 whatever
    the input dtype (fp64 inputs give fp64)."""
    check_entropies(entropy, old_entropy)
    return _ratio(entropy, old_entropy)


@checked
def erc_masks(entropy: Tensor, old_entropy: Tensor, response_mask: Tensor,
              beta_low: float = 0.05, beta_high: float = 0.05) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The ERC indicator and its two clipped sides, all (B, T) bool, plus rho (B, T).

    Returns (keep, clipped_low, clipped_high, rho):
      keep          = (1 - beta_low) < rho < (1 + beta_high)  and response token   (I_t = 1)
      clipped_low   = rho <= 1 - beta_low   and response token  (entropy fell too far)
      clipped_high  = rho >= 1 + beta_high  and response token  (entropy rose too far)

    rho and the comparisons are computed in fp32 whatever the entropies' dtype (fp64 stays fp64):
    bf16 / fp16 entropies give exactly the mask of fp32 entropies holding the same values.
    """
    check_entropies(entropy, old_entropy)
    mask = as_bool_mask("response_mask", response_mask, entropy, "entropy")
    check_fraction("beta_low", beta_low)
    check_positive("beta_high", beta_high)
    return _erc_masks(entropy, old_entropy, mask, beta_low, beta_high)


def _erc_masks(entropy: Tensor, old_entropy: Tensor, mask: Tensor, beta_low: float,
               beta_high: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``erc_masks`` on checked inputs (``mask`` bool)."""
    rho = _ratio(entropy, old_entropy)
    above_low = rho > (1.0 - beta_low)
    below_high = rho < (1.0 + beta_high)
    keep = above_low & below_high & mask
    return keep, ~above_low & mask, ~below_high & mask, rho


@checked
def random_like_erc_mask(keep: Tensor, response_mask: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """The random-mask control: a keep mask (B, T) bool that stops the gradient of a uniformly random
    subset of the response tokens, exactly as many as ``keep`` (ERC's I_t) stops.

        n_stop = #{t : response token, not keep_t}
        stop   = n_stop response tokens drawn uniformly without replacement
        return   response_mask & ~stop

    It separates "ERC picks the right tokens" from "ERC drops tokens". The draw is one
    torch.randperm over all B*T positions (the keys; padding can never be drawn), on ``generator``
    or else torch's global generator of the mask's device; no host sync.
    """
    if not isinstance(keep, torch.Tensor) or keep.dtype != torch.bool:
        raise ValueError(f"keep must be a bool tensor (ERC's keep mask from erc_masks), got {getattr(keep, 'dtype', type(keep))}")
    return _random_like(keep, as_bool_mask("response_mask", response_mask, keep, "keep"), generator)


def _random_like(keep: Tensor, mask: Tensor, generator: torch.Generator | None) -> Tensor:
    """``random_like_erc_mask`` on checked inputs (``mask`` bool)."""
    n_stop = (mask & ~keep).sum()
    device = mask.device if generator is None else generator.device
    keys = torch.randperm(mask.numel(), generator=generator, device=device).to(mask.device).view(mask.shape)
    stop = top_k_mask(torch.where(mask, keys, -1), n_stop)   # n_stop <= #response tokens: only they are drawn
    return mask & ~stop


@checked
def apply_erc(per_token_loss: Tensor, entropy: Tensor, old_entropy: Tensor, response_mask: Tensor,
              beta_low: float = 0.05, beta_high: float = 0.05, erc_mask: ErcMask = "entropy-ratio",
              generator: torch.Generator | None = None) -> tuple[Tensor, dict[str, Tensor]]:
    """Wrap any per-token loss l_t (B, T) with ERC: I_t * l_t + (1 - I_t) * sg(l_t).

    ``erc_mask="random"`` is the random-mask control: I_t is replaced by ``random_like_erc_mask(I)``
    (as many stopped tokens, drawn uniformly from the response tokens, on ``generator`` or torch's
    global generator); "entropy-ratio" (the default) is ERC itself and draws nothing.

    Returns the new per-token loss (same forward values and dtype, bit for bit) and metrics (detached 0-d
    tensors; ``ercref.metrics_to_floats`` converts them with one host sync):
      erc/clip_frac       fraction of response tokens whose gradient is stopped (= 1 - the authors' kept
                          fraction; the same number for both masks)
      erc/clip_frac_low   ... of the entropy-ratio mask with rho <= 1 - beta_low (for "random" too)
      erc/clip_frac_high  ... of the entropy-ratio mask with rho >= 1 + beta_high (for "random" too)
      entropy/ratio_mean  mean rho over response tokens
      erc/random_overlap  "random" only: share of the randomly stopped tokens that the entropy-ratio mask
                          also stops (0 when none is stopped); chance level is erc/clip_frac
    """
    if erc_mask not in ERC_MASKS:
        raise ValueError(f"erc_mask must be one of {list(ERC_MASKS)}, got {erc_mask!r}")
    check_float("per_token_loss", per_token_loss)
    check_same_shape("per_token_loss", per_token_loss, "entropy", entropy)
    check_entropies(entropy, old_entropy)
    mask = as_bool_mask("response_mask", response_mask, entropy, "entropy")
    check_fraction("beta_low", beta_low)
    check_positive("beta_high", beta_high)
    check_any("response_mask", mask)
    check_finite("per_token_loss", per_token_loss, mask, "at a response position")
    return _erc(per_token_loss, entropy, old_entropy, mask, beta_low, beta_high, erc_mask, generator)


def _erc(per_token_loss: Tensor, entropy: Tensor, old_entropy: Tensor, mask: Tensor, beta_low: float,
         beta_high: float, erc_mask: ErcMask = "entropy-ratio",
         generator: torch.Generator | None = None) -> tuple[Tensor, dict[str, Tensor]]:
    """``apply_erc`` on checked inputs (``mask`` bool, at least one response token):

        out_t = I_t * l_t + (1 - I_t) * sg(l_t)        (torch.where(keep, l, l.detach()))
    """
    keep, low, high, rho = _erc_masks(entropy, old_entropy, mask, beta_low, beta_high)
    n = mask.sum()
    erc_keep = keep
    if erc_mask == "random":
        keep = _random_like(erc_keep, mask, generator)
    out = torch.where(keep, per_token_loss, per_token_loss.detach())
    metrics = {
        "erc/clip_frac": (mask & ~keep).sum() / n,
        "erc/clip_frac_low": low.sum() / n,
        "erc/clip_frac_high": high.sum() / n,
        "entropy/ratio_mean": (rho * mask).sum() / n,  # rho is already detached
    }
    if erc_mask == "random":
        stopped = mask & ~keep
        metrics["erc/random_overlap"] = (stopped & ~erc_keep).sum() / stopped.sum().clamp(min=1)
    return out, metrics
