"""DAPO+ERC and GPPO+ERC against an independent restatement of the authors' code.

The reference below restates ``compute_policy_loss_grpo_erc`` / ``compute_policy_loss_gppo_erc``
of the authors' verl fork (Kwai-Klear/ERC) from /work/shared/ERC-digest.md; it imports nothing
from ercref. ercref is exercised through its two public paths:
  1. compute_policy_loss(PolicyLossConfig(loss=..., erc=True, nll_coef=0, ...), ...)
  2. LOSSES[...] -> apply_erc -> aggregate(token-mean)
Value and d loss / d logp must agree to 1e-6 (float64) on 1,200 independent random cases, each
with its own seed, shape, eps_low, eps_high, dual-clip c, beta_low, beta_high.
"""
from __future__ import annotations

import math

import torch
from conftest import random_batch

import ercref


def authors_loss(logp, old_logp, advantages, response_mask, entropy, old_entropy,
                 eps_low, eps_high, c, beta_low, beta_high, gppo: bool):
    """Restatement of the authors' ERC losses. Returns (scalar loss, kept fraction)."""
    A = advantages if advantages.dim() == 2 else advantages.unsqueeze(-1).expand_as(logp)
    neg_kl = torch.clamp(logp - old_logp, min=-20.0, max=20.0)
    ratio = torch.exp(neg_kl)
    pg_losses1 = -A * ratio
    if gppo:
        pg_losses2 = -A * torch.clamp(ratio, (1 - eps_low) / ratio.detach() * ratio,
                                      (1 + eps_high) / ratio.detach() * ratio)
    else:
        pg_losses2 = -A * torch.clamp(ratio, 1 - eps_low, 1 + eps_high)
    clip_pg_losses1 = torch.maximum(pg_losses1, pg_losses2)
    pg_losses3 = -A * c
    clip_pg_losses2 = torch.min(pg_losses3, clip_pg_losses1)
    pg_losses = torch.where(A < 0, clip_pg_losses2, clip_pg_losses1)
    rho = (entropy + 1e-8) / (old_entropy + 1e-8)
    keep = (rho > 1 - beta_low) & (rho < 1 + beta_high) & response_mask.bool()
    pg_losses = torch.where(keep, pg_losses, pg_losses.detach())
    m = response_mask.to(pg_losses.dtype)
    loss = (pg_losses * m).sum() / m.sum()
    entropy_frac = keep.to(m.dtype).sum() / m.sum()
    return loss, float(entropy_frac)


def _grad(loss, x):
    (g,) = torch.autograd.grad(loss, x)
    return g


def test_dapo_and_gppo_with_erc_match_authors_semantics_on_1200_random_cases():
    n_cases, tol = 1200, 1e-6
    coverage = dict(kept=0, erc_clipped=0, masked=0, neg_adv=0, beyond_dual=0, zero_old_entropy=0, gppo=0)
    for case in range(n_cases):
        gen = torch.Generator().manual_seed(10_000 + case)
        rnd = lambda lo, hi: lo + (hi - lo) * float(torch.rand((), generator=gen))  # noqa: E731
        gppo = case % 2 == 1
        eps_low, eps_high = rnd(0.05, 0.45), rnd(0.05, 0.6)
        c, beta_low, beta_high = rnd(1.2, 10.0), rnd(0.01, 0.9), rnd(0.01, 2.0)
        B, T = int(torch.randint(1, 5, (), generator=gen)), int(torch.randint(1, 9, (), generator=gen))
        b = random_batch(gen, B, T, c=c, beta_low=beta_low, beta_high=beta_high, per_token_adv=bool(case % 4 >= 2))
        name = "gppo" if gppo else "dapo"
        hyper = dict(eps_low=eps_low, eps_high=eps_high, clip_ratio_c=c)
        args = (b.logp, b.old_logp, b.advantages, b.mask)

        ref, ref_kept = authors_loss(*args, b.entropy, b.old_entropy, eps_low, eps_high, c, beta_low, beta_high, gppo)
        ref_g = _grad(ref, b.logp)

        cfg = ercref.PolicyLossConfig(loss=name, erc=True, nll_coef=0.0, beta_low=beta_low, beta_high=beta_high,
                                      loss_kwargs=hyper)
        loss, metrics = ercref.compute_policy_loss(cfg, *args, b.entropy, b.old_entropy)
        per_tok, _ = ercref.LOSSES[name](*args, **hyper)
        per_tok, m_erc = ercref.apply_erc(per_tok, b.entropy, b.old_entropy, b.mask, beta_low, beta_high)
        loss2 = ercref.aggregate(per_tok, b.mask, "token-mean")

        for got, label in ((loss, "compute_policy_loss"), (loss2, "LOSSES+apply_erc+aggregate")):
            assert abs(float(got.detach()) - float(ref.detach())) <= tol, (case, label)
            g = _grad(got, b.logp)
            assert float((g - ref_g).abs().max()) <= tol, (case, label)
        # metrics are 0-d float32 fractions: compare at float32 resolution
        assert abs(float(metrics["erc/clip_frac"]) - (1.0 - ref_kept)) <= 1e-6, case
        assert abs(float(m_erc["erc/clip_frac"]) - (1.0 - ref_kept)) <= 1e-6, case

        A = b.advantages if b.advantages.dim() == 2 else b.advantages.unsqueeze(-1).expand(B, T)
        rho = (b.entropy + 1e-8) / (b.old_entropy + 1e-8)
        kept = (rho > 1 - beta_low) & (rho < 1 + beta_high) & b.mask
        coverage["kept"] += bool(kept.any())
        coverage["erc_clipped"] += bool((b.mask & ~kept).any())
        coverage["masked"] += bool((~b.mask).any())
        coverage["neg_adv"] += bool(((A < 0) & b.mask).any())
        coverage["beyond_dual"] += bool(((A < 0) & b.mask & (b.logp - b.old_logp > math.log(c))).any())
        coverage["zero_old_entropy"] += bool(((b.old_entropy == 0) & b.mask).any())
        coverage["gppo"] += gppo
    # every regime the issue names occurs in many cases (so the comparison covers it)
    assert min(coverage.values()) >= 100, coverage


def test_gppo_clipped_token_gradients_differ_from_dapo_in_the_reference_cases():
    """Guard for the test above: the GPPO and DAPO references are not the same function."""
    gen = torch.Generator().manual_seed(7)
    b = random_batch(gen, 4, 8, beta_low=0.999, beta_high=1e9)
    common = (b.logp, b.old_logp, b.advantages, b.mask, b.entropy, b.old_entropy, 0.2, 0.28, 3.0, 0.999999, 1e9)
    g_dapo = _grad(authors_loss(*common, gppo=False)[0], b.logp)
    g_gppo = _grad(authors_loss(*common, gppo=True)[0], b.logp)
    assert not torch.equal(g_dapo, g_gppo)
