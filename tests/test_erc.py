"""The ERC mask: clipped tokens keep their value, get exactly zero gradient and stay in the
denominator; a very wide beta reproduces the base loss bit for bit; strict bounds; metrics.

    rho_t = (H_t + 1e-8) / (H_old_t + 1e-8);  keep_t = (1 - beta_low) < rho_t < (1 + beta_high) and mask_t
"""
from __future__ import annotations

import pytest
import torch
from conftest import random_batch
from hypothesis import given, settings
from hypothesis import strategies as st

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
        torch.manual_seed(0)  # clip_cov draws its tokens from the global RNG: the same draw both times
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


# ----------------------------------------------------------------------------- the random-mask control
def _control_batch(seed, B=6, T=10):
    b = random_batch(torch.Generator().manual_seed(seed), B, T, beta_low=0.2, beta_high=0.2)
    keep, *_ = ercref.erc_masks(b.entropy, b.old_entropy, b.mask, 0.2, 0.2)
    return b, keep


def test_random_control_stops_exactly_as_many_response_tokens_as_erc_and_never_padding():
    cases = 0
    for seed in range(60):
        b, erc_keep = _control_batch(seed, B=1 + seed % 5, T=2 + seed % 11)
        keep = ercref.random_like_erc_mask(erc_keep, b.mask)
        assert keep.dtype == torch.bool and not (keep & ~b.mask).any()          # padding: never kept, never stopped
        assert int((b.mask & ~keep).sum()) == int((b.mask & ~erc_keep).sum())   # the same count, exactly
        per_tok, _ = ercref.LOSSES["dapo"](b.logp, b.old_logp, b.advantages, b.mask)
        torch.manual_seed(seed)
        _, m_rand = ercref.apply_erc(per_tok, b.entropy, b.old_entropy, b.mask, 0.2, 0.2, erc_mask="random")
        _, m_erc = ercref.apply_erc(per_tok, b.entropy, b.old_entropy, b.mask, 0.2, 0.2)
        assert float(m_rand["erc/clip_frac"]) == float(m_erc["erc/clip_frac"])
        cases += 0 < int((b.mask & ~erc_keep).sum()) < int(b.mask.sum())
    assert cases >= 30


def test_random_control_draws_differ_across_calls_and_seeds_and_repeat_with_the_same_seed():
    b, erc_keep = _control_batch(1, B=8, T=16)
    n_stop, n = int((b.mask & ~erc_keep).sum()), int(b.mask.sum())
    assert 5 <= n_stop <= n - 5
    draws = {tuple(ercref.random_like_erc_mask(erc_keep, b.mask).flatten().tolist()) for _ in range(20)}
    assert len(draws) == 20                                          # successive calls on the global RNG
    seeded = [ercref.random_like_erc_mask(erc_keep, b.mask, torch.Generator().manual_seed(s)) for s in (7, 7, 8)]
    assert torch.equal(seeded[0], seeded[1]) and not torch.equal(seeded[0], seeded[2])
    torch.manual_seed(3)
    a = ercref.random_like_erc_mask(erc_keep, b.mask)
    torch.manual_seed(3)
    assert torch.equal(a, ercref.random_like_erc_mask(erc_keep, b.mask))   # resumable: the global RNG state decides


def test_random_control_is_uniform_over_the_response_tokens():
    """Each response token is stopped with probability n_stop / n: over 4000 draws its count is
    Binomial(4000, p); every count within 5 standard deviations (a false alarm has p < 1e-4)."""
    b, erc_keep = _control_batch(2, B=4, T=8)
    n_stop, n = int((b.mask & ~erc_keep).sum()), int(b.mask.sum())
    assert 0 < n_stop < n
    gen = torch.Generator().manual_seed(0)
    draws = 4000
    counts = sum((b.mask & ~ercref.random_like_erc_mask(erc_keep, b.mask, gen)).long() for _ in range(draws))
    p = n_stop / n
    sd = (draws * p * (1 - p)) ** 0.5
    assert torch.all(counts[~b.mask] == 0)
    assert torch.all((counts[b.mask] - draws * p).abs() < 5 * sd), (counts[b.mask], draws * p)
    # not simply ERC's own tokens: the tokens ERC keeps are stopped as often as those it clips
    clipped = b.mask & ~erc_keep
    kept = erc_keep
    assert abs(counts[clipped].float().mean() - counts[kept].float().mean()) < 5 * sd


def test_random_overlap_metric_counts_stopped_tokens_that_erc_would_clip():
    b, erc_keep = _control_batch(3, B=8, T=16)
    per_tok, _ = ercref.LOSSES["ppo"](b.logp, b.old_logp, b.advantages, b.mask)
    overlaps = []
    for seed in range(200):
        gen = torch.Generator().manual_seed(seed)
        keep = ercref.random_like_erc_mask(erc_keep, b.mask, torch.Generator().manual_seed(seed))
        _, m = ercref.apply_erc(per_tok, b.entropy, b.old_entropy, b.mask, 0.2, 0.2, erc_mask="random", generator=gen)
        stopped = b.mask & ~keep
        expected = int((stopped & ~erc_keep).sum()) / int(stopped.sum())
        assert float(m["erc/random_overlap"]) == pytest.approx(expected)
        overlaps.append(expected)
    chance = int((b.mask & ~erc_keep).sum()) / int(b.mask.sum())   # = erc/clip_frac
    assert sum(overlaps) / len(overlaps) == pytest.approx(chance, abs=0.05)
    # nothing stopped: overlap 0, no NaN
    H = torch.ones(2, 3, dtype=F64)
    _, m = ercref.apply_erc(torch.zeros(2, 3, dtype=F64), H, H, torch.ones(2, 3), erc_mask="random")
    assert float(m["erc/clip_frac"]) == 0.0 and float(m["erc/random_overlap"]) == 0.0


def test_entropy_ratio_mask_is_unchanged_and_draws_nothing():
    b, _ = _control_batch(4, B=5, T=9)
    per_tok, _ = ercref.LOSSES["dapo"](b.logp, b.old_logp, b.advantages, b.mask)
    state = torch.get_rng_state()
    out_default, m_default = ercref.apply_erc(per_tok, b.entropy, b.old_entropy, b.mask, 0.2, 0.2)
    out_named, m_named = ercref.apply_erc(per_tok, b.entropy, b.old_entropy, b.mask, 0.2, 0.2, erc_mask="entropy-ratio")
    assert torch.equal(torch.get_rng_state(), state)     # the global RNG is untouched: runs replay as before
    assert "erc/random_overlap" not in m_default and list(m_default) == list(m_named)
    assert all(torch.equal(m_default[k], m_named[k]) for k in m_default)
    (g1,) = torch.autograd.grad(out_default.sum(), b.logp, retain_graph=True)
    (g2,) = torch.autograd.grad(out_named.sum(), b.logp, retain_graph=True)
    assert torch.equal(out_default, out_named) and torch.equal(g1, g2)
    assert ercref.PolicyLossConfig().erc_mask == "entropy-ratio"


def test_erc_mask_config_field_is_validated_naming_it():
    with pytest.raises(ValueError, match="erc_mask"):
        ercref.PolicyLossConfig(erc=False, erc_mask="random")
    with pytest.raises(ValueError, match="erc_mask"):
        ercref.PolicyLossConfig(erc_mask="entropy")
    b, keep = _control_batch(5)
    with pytest.raises(ValueError, match="erc_mask"):
        ercref.apply_erc(torch.zeros_like(b.entropy), b.entropy, b.old_entropy, b.mask, erc_mask="rand")
    with pytest.raises(ValueError, match="keep"):
        ercref.random_like_erc_mask(keep.double(), b.mask)
    assert ercref.PolicyLossConfig(erc=True, erc_mask="random").erc_mask == "random"


@pytest.mark.parametrize("name", ["dapo", "gppo", "cispo"])
def test_random_control_through_compute_policy_loss(name):
    b, erc_keep = _control_batch(6, B=8, T=16)
    out = {}
    for mask_kind in ("entropy-ratio", "random"):
        logp = b.logp.detach().clone().requires_grad_(True)
        cfg = ercref.PolicyLossConfig(loss=name, erc=True, erc_mask=mask_kind, beta_low=0.2, beta_high=0.2, nll_coef=0.0)
        torch.manual_seed(0)
        loss, m = ercref.compute_policy_loss(cfg, logp, b.old_logp, b.advantages, b.mask, b.entropy, b.old_entropy)
        loss.backward()
        out[mask_kind] = (loss.detach(), logp.grad, m)
    torch.manual_seed(0)
    keep = ercref.random_like_erc_mask(erc_keep, b.mask)   # the draw compute_policy_loss made
    assert torch.equal(out["random"][0], out["entropy-ratio"][0])   # the loss value is the same
    g = out["random"][1]
    assert torch.all(g[b.mask & ~keep] == 0)
    base, _ = ercref.LOSSES[name](b.logp, b.old_logp, b.advantages, b.mask)
    (g_base,) = torch.autograd.grad(ercref.aggregate(base, b.mask), b.logp)
    assert torch.equal(g[keep], g_base[keep])                      # kept tokens: the plain loss's gradient
    m = out["random"][2]
    assert float(m["erc/clip_frac"]) == float(out["entropy-ratio"][2]["erc/clip_frac"])
    assert float(m["grad/zero_frac"]) >= float(m["erc/clip_frac"])


PROPS = settings(max_examples=100, deadline=None, derandomize=True)


@PROPS
@given(st.integers(1, 5), st.integers(1, 8), st.integers(0, 2**31 - 1), st.floats(1e-3, 0.9), st.floats(1e-3, 3.0))
def test_random_control_keeps_the_value_and_stops_only_the_drawn_tokens_gradient(B, T, seed, bl, bh):
    g = torch.Generator().manual_seed(seed)
    logp = (-3 * torch.rand(B, T, generator=g, dtype=F64)).requires_grad_(True)
    w = 0.5 + torch.rand(B, T, generator=g, dtype=F64)          # l_t = w_t logp_t: d l_t / d logp_t = w_t != 0
    mask = torch.rand(B, T, generator=g) < 0.7
    mask[0, 0] = True
    old_H = torch.rand(B, T, generator=g, dtype=F64) * 2
    H = old_H * (0.3 + 1.4 * torch.rand(B, T, generator=g, dtype=F64))
    per_tok = w * logp
    erc_keep, *_ = ercref.erc_masks(H, old_H, mask, bl, bh)
    out, m = ercref.apply_erc(per_tok, H, old_H, mask, bl, bh, erc_mask="random", generator=torch.Generator().manual_seed(seed))
    keep = ercref.random_like_erc_mask(erc_keep, mask, torch.Generator().manual_seed(seed))
    assert torch.equal(out, per_tok)                                           # values bit for bit
    (grad,) = torch.autograd.grad(out.sum(), logp)
    assert torch.equal(grad, torch.where(keep, w, torch.zeros_like(w)))        # zero exactly on stopped (and padding)
    assert int((mask & ~keep).sum()) == int((mask & ~erc_keep).sum())
    assert float(m["erc/clip_frac"]) == pytest.approx(int((mask & ~keep).sum()) / int(mask.sum()))
