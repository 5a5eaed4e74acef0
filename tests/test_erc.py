"""The ERC mask: clipped tokens keep their value, get exactly zero gradient and stay in the
denominator; a very wide beta reproduces the base loss bit for bit; strict bounds; metrics.

    rho_t = (H_t + 1e-8) / (H_old_t + 1e-8);  keep_t = (1 - beta_low) < rho_t < (1 + beta_high) and mask_t
"""
from __future__ import annotations

import pytest
import torch
from conftest import random_batch

import ercref

F64 = torch.float64
WIDE = dict(beta_low=0.999999, beta_high=1e9)


def _rho(entropy, old_entropy):
    return (entropy + 1e-8) / (old_entropy + 1e-8)


@pytest.mark.parametrize("name", sorted(ercref.LOSSES))
def test_erc_clipped_tokens_get_zero_gradient_and_count_in_the_denominator(name):
    gen = torch.Generator().manual_seed(21)
    b = random_batch(gen, 5, 8, beta_low=0.2, beta_high=0.2, per_token_adv=True)
    args = (b.logp, b.old_logp, b.advantages, b.mask)
    base, _ = ercref.LOSSES[name](*args)
    wrapped, m = ercref.apply_erc(base, b.entropy, b.old_entropy, b.mask, 0.2, 0.2)
    rho = _rho(b.entropy, b.old_entropy)
    kept = (rho > 0.8) & (rho < 1.2) & b.mask
    clipped = b.mask & ~kept
    assert kept.sum() >= 5 and clipped.sum() >= 5
    assert torch.equal(wrapped, base)  # forward value unchanged, bit for bit

    n_all = int(b.mask.sum())
    loss = ercref.aggregate(wrapped, b.mask, "token-mean")
    torch.testing.assert_close(loss, base[b.mask].sum() / n_all, atol=1e-12, rtol=1e-12)
    (g,) = torch.autograd.grad(loss, b.logp, retain_graph=True)
    (g_base,) = torch.autograd.grad(ercref.aggregate(base, b.mask, "token-mean"), b.logp)
    assert torch.all(g[clipped] == 0)
    # kept tokens get the base gradient with the SAME denominator (all response tokens), i.e. unchanged
    assert torch.equal(g[kept], g_base[kept])
    assert m["erc/clip_frac"] == pytest.approx(float(clipped.sum()) / n_all)


@pytest.mark.parametrize("name", sorted(ercref.LOSSES))
@pytest.mark.parametrize("agg_mode", ercref.AGG_MODES)
def test_very_wide_beta_reproduces_the_base_loss_bit_for_bit(name, agg_mode):
    gen = torch.Generator().manual_seed(22)
    b = random_batch(gen, 4, 6, per_token_adv=True)
    old_entropy = 0.1 + b.old_entropy  # rho stays in (1e-6, 1e9): every response token is kept
    entropy = old_entropy * (0.05 + 3 * torch.rand(b.entropy.shape, generator=gen, dtype=F64))
    out = {}
    for erc in (False, True):
        logp = b.logp.detach().clone().requires_grad_(True)
        cfg = ercref.PolicyLossConfig(loss=name, erc=erc, agg_mode=agg_mode, nll_coef=0.1, **WIDE)
        rewards = torch.tensor([1.0, -1.0, 1.0, 0.0], dtype=F64)
        loss, m = ercref.compute_policy_loss(cfg, logp, b.old_logp, b.advantages, b.mask, entropy, old_entropy, rewards)
        loss.backward()
        out[erc] = (loss.detach(), logp.grad)
    assert m["erc/clip_frac"] == 0.0
    assert torch.equal(out[False][0], out[True][0])
    assert torch.equal(out[False][1], out[True][1])


def test_erc_bounds_are_strict():
    # old + 1e-8 and H + 1e-8 are exact binary fractions, so rho is exactly 0.5, 1, 1.5
    old = torch.full((1, 4), 1.0 - 1e-8, dtype=F64)
    H = torch.tensor([[0.5 - 1e-8, 1.5 - 1e-8, 1.0 - 1e-8, 0.75 - 1e-8]], dtype=F64)
    rho = ercref.entropy_ratio(H, old)
    assert rho.tolist() == [[0.5, 1.5, 1.0, 0.75]]  # precondition of the test
    keep, low, high, _ = ercref.erc_masks(H, old, torch.ones(1, 4, dtype=torch.bool), beta_low=0.5, beta_high=0.5)
    assert keep.tolist() == [[False, False, True, True]]
    assert low.tolist() == [[True, False, False, False]]
    assert high.tolist() == [[False, True, False, False]]


def test_zero_old_entropy():
    # both zero: rho = 1e-8 / 1e-8 = 1 -> kept; new entropy > 0 over zero old entropy -> huge rho -> clipped high
    old = torch.zeros(1, 3, dtype=F64)
    H = torch.tensor([[0.0, 1e-3, 1e-9]], dtype=F64)
    keep, low, high, rho = ercref.erc_masks(H, old, torch.ones(1, 3), 0.05, 0.05)
    assert keep.tolist() == [[True, False, False]]
    assert high.tolist() == [[False, True, True]] and not low.any()
    torch.testing.assert_close(rho, torch.tensor([[1.0, 1e5 + 1.0, 1.1]], dtype=F64))


def test_erc_metrics_on_hand_built_tokens():
    old = torch.ones(2, 4, dtype=F64)
    # rho (beta 0.05): 0.5 low | 1.0 keep | 1.2 high | 0.96 keep ; 1.0 keep | 2.0 masked | 0.9 low | 1.04 keep
    H = torch.tensor([[0.5, 1.0, 1.2, 0.96], [1.0, 2.0, 0.9, 1.04]], dtype=F64)
    mask = torch.tensor([[1, 1, 1, 1], [1, 0, 1, 1]])
    per_tok = torch.zeros(2, 4, dtype=F64)
    _, m = ercref.apply_erc(per_tok, H, old, mask, 0.05, 0.05)
    assert m["erc/clip_frac"] == pytest.approx(3 / 7)
    assert m["erc/clip_frac_low"] == pytest.approx(2 / 7)
    assert m["erc/clip_frac_high"] == pytest.approx(1 / 7)
    assert m["entropy/ratio_mean"] == pytest.approx((0.5 + 1 + 1.2 + 0.96 + 1 + 0.9 + 1.04) / 7, rel=1e-6)


def test_current_entropy_gets_no_gradient_from_erc():
    gen = torch.Generator().manual_seed(23)
    b = random_batch(gen, 3, 5)
    entropy = b.entropy.clone().requires_grad_(True)
    cfg = ercref.PolicyLossConfig(loss="dapo", erc=True, nll_coef=0.0, beta_low=0.2, beta_high=0.2)
    loss, _ = ercref.compute_policy_loss(cfg, b.logp, b.old_logp, b.advantages, b.mask, entropy, b.old_entropy)
    loss.backward()
    assert entropy.grad is None or torch.all(entropy.grad == 0)
    assert b.logp.grad is not None and b.logp.grad.abs().sum() > 0


def test_nll_term_is_not_touched_by_erc():
    # every token ERC-clipped: the policy gradient vanishes, the positive-sample NLL gradient stays
    gen = torch.Generator().manual_seed(24)
    b = random_batch(gen, 2, 4)
    mask = torch.ones(2, 4, dtype=torch.bool)
    old_entropy = torch.ones(2, 4, dtype=F64)
    entropy = 3 * old_entropy
    rewards = torch.tensor([1.0, -1.0], dtype=F64)
    cfg = ercref.PolicyLossConfig(loss="dapo", erc=True, nll_coef=0.1)
    loss, m = ercref.compute_policy_loss(cfg, b.logp, b.old_logp, b.advantages, mask, entropy, old_entropy, rewards)
    loss.backward()
    assert m["erc/clip_frac"] == 1.0 and m["grad/zero_frac"] == 1.0
    torch.testing.assert_close(b.logp.grad[0], torch.full((4,), -0.1 / 4, dtype=F64))
    assert torch.all(b.logp.grad[1] == 0)
