"""Shared fixtures for the core tests: seeded float64 random policy-loss batches.

A batch is the input of every per-token loss: logp, old_logp, response_mask (B, T); advantages
(B,) or (B, T); entropy, old_entropy (B, T). Values are drawn so that the interesting regimes of
the losses all occur: masked tokens, negative and zero advantages, ratios inside and outside the
clip range, beyond the dual-clip constant and beyond the log-ratio clamp at 20, zero old entropy.
"""
from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch


@dataclass
class Batch:
    logp: torch.Tensor          # (B, T) leaf, requires grad
    old_logp: torch.Tensor      # (B, T)
    advantages: torch.Tensor    # (B,) or (B, T)
    mask: torch.Tensor          # (B, T) bool, at least one True
    entropy: torch.Tensor       # (B, T) >= 0
    old_entropy: torch.Tensor   # (B, T) >= 0


def random_batch(gen: torch.Generator, B: int, T: int, c: float = 3.0, beta_low: float = 0.2, beta_high: float = 0.2,
                 per_token_adv: bool = False, dtype=torch.float64) -> Batch:
    def u(*shape, lo=0.0, hi=1.0):
        return lo + (hi - lo) * torch.rand(*shape, generator=gen, dtype=dtype)

    old_nll = u(B, T, lo=0.01, hi=6.0)
    # log-ratio regimes, picked per token
    regime = torch.randint(0, 6, (B, T), generator=gen)
    small = 0.3 * torch.randn(B, T, generator=gen, dtype=dtype)
    wide = u(B, T, lo=-3.0, hi=3.0)
    beyond_dual = torch.log(torch.tensor(c, dtype=dtype)) + u(B, T, lo=0.05, hi=2.0)
    beyond_clamp = torch.where(torch.rand(B, T, generator=gen) < 0.5, 1.0, -1.0).to(dtype) * u(B, T, lo=20.5, hi=25.0)
    delta = torch.stack([small, wide, beyond_dual, torch.zeros_like(small), beyond_clamp, -beyond_dual])
    delta = delta.gather(0, regime.unsqueeze(0)).squeeze(0)
    # both sides stay log-probabilities (<= 0): a positive log-ratio lowers old_logp instead of lifting logp above 0
    old_logp = -old_nll - delta.clamp(min=0.0)
    logp = (old_logp + delta).detach().requires_grad_(True)

    shape = (B, T) if per_token_adv else (B,)
    adv = torch.randn(*shape, generator=gen, dtype=dtype)
    adv = torch.where(torch.rand(*shape, generator=gen) < 0.1, torch.zeros_like(adv), adv)

    mask = torch.rand(B, T, generator=gen) < 0.75
    mask[torch.randint(0, B, (1,), generator=gen), torch.randint(0, T, (1,), generator=gen)] = True

    old_entropy = u(B, T, lo=0.0, hi=3.0)
    old_entropy = torch.where(torch.rand(B, T, generator=gen) < 0.15, torch.zeros_like(old_entropy), old_entropy)
    # entropy relative to old: straddle both ERC bounds; sometimes exactly zero or unrelated
    rel = u(B, T, lo=-1.5 * beta_low, hi=1.5 * beta_high)
    entropy = (old_entropy * (1.0 + rel)).clamp(min=0.0)
    pick = torch.rand(B, T, generator=gen)
    entropy = torch.where(pick < 0.1, torch.zeros_like(entropy), entropy)
    entropy = torch.where(pick > 0.9, u(B, T, lo=0.0, hi=3.0), entropy)
    return Batch(logp, old_logp, adv, mask, entropy, old_entropy)


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(1234)


@pytest.fixture
def batch(gen):
    return random_batch(gen, 4, 7, per_token_adv=False)
