"""Property tests (hypothesis, derandomized) for the ERC mask, aggregation and advantages."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import ercref

PROPS = settings(max_examples=120, deadline=None, derandomize=True)

shapes = st.tuples(st.integers(1, 5), st.integers(1, 7))
betas_low = st.floats(1e-4, 0.999, allow_nan=False)
betas_high = st.floats(1e-4, 50.0, allow_nan=False)
# entropies: include exact zeros and tiny values next to typical ones
entropy_values = st.one_of(st.just(0.0), st.floats(0.0, 1e-6), st.floats(0.0, 12.0))


@st.composite
def erc_inputs(draw):
    B, T = draw(shapes)
    H = draw(arrays(np.float64, (B, T), elements=entropy_values))
    H_old = draw(arrays(np.float64, (B, T), elements=entropy_values))
    mask = draw(arrays(np.bool_, (B, T)))
    return torch.from_numpy(H), torch.from_numpy(H_old), torch.from_numpy(mask)


@st.composite
def loss_and_mask(draw, nonempty=True):
    B, T = draw(shapes)
    x = draw(arrays(np.float64, (B, T), elements=st.floats(-1e3, 1e3)))
    mask = draw(arrays(np.bool_, (B, T)))
    if nonempty and not mask.any():
        mask[draw(st.integers(0, B - 1)), draw(st.integers(0, T - 1))] = True
    return torch.from_numpy(x), torch.from_numpy(mask)


# ----------------------------------------------------------------------------- ERC mask
@PROPS
@given(erc_inputs(), betas_low, betas_high)
def test_keep_and_clipped_sides_partition_the_response_tokens(inp, bl, bh):
    H, H_old, mask = inp
    keep, low, high, rho = ercref.erc_masks(H, H_old, mask, bl, bh)
    assert not (keep & low).any() and not (keep & high).any() and not (low & high).any()
    assert torch.equal(keep | low | high, mask)  # masked-out tokens are never kept nor clipped
    # and each set is what its inequality says, on an independently computed ratio
    r = (H + 1e-8) / (H_old + 1e-8)
    assert torch.equal(keep, (r > 1 - bl) & (r < 1 + bh) & mask)
    assert torch.equal(low, (r <= 1 - bl) & mask) and torch.equal(high, (r >= 1 + bh) & mask)


@PROPS
@given(erc_inputs(), betas_low, betas_high)
def test_erc_metrics_are_fractions_and_clip_frac_is_low_plus_high(inp, bl, bh):
    H, H_old, mask = inp
    if not mask.any():
        mask[0, 0] = True
    per_tok = torch.randn(H.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    out, m = ercref.apply_erc(per_tok, H, H_old, mask, bl, bh)
    assert torch.equal(out, per_tok)
    m = ercref.metrics_to_floats(m)
    for k in ("erc/clip_frac", "erc/clip_frac_low", "erc/clip_frac_high"):
        assert 0.0 <= m[k] <= 1.0
    assert m["erc/clip_frac"] == pytest.approx(m["erc/clip_frac_low"] + m["erc/clip_frac_high"], abs=1e-6)
    keep, *_ = ercref.erc_masks(H, H_old, mask, bl, bh)
    assert m["erc/clip_frac"] == pytest.approx(1 - float(keep.sum()) / float(mask.sum()), abs=1e-6)


@PROPS
@given(erc_inputs(), betas_low, betas_high, st.floats(0, 1), st.floats(0, 10))
def test_widening_beta_never_unkeeps_a_token(inp, bl, bh, widen_low, widen_high):
    H, H_old, mask = inp
    bl2 = bl + widen_low * (0.9999 - bl) if bl < 0.9999 else bl
    bh2 = bh + widen_high
    keep, *_ = ercref.erc_masks(H, H_old, mask, bl, bh)
    keep2, *_ = ercref.erc_masks(H, H_old, mask, bl2, bh2)
    assert torch.equal(keep & keep2, keep)


@PROPS
@given(erc_inputs(), betas_low, betas_high)
def test_erc_gradient_is_zero_exactly_on_non_kept_tokens(inp, bl, bh):
    H, H_old, mask = inp
    if not mask.any():
        mask[0, 0] = True
    x = torch.randn(H.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64, requires_grad=True)
    out, _ = ercref.apply_erc(x * 3.0, H, H_old, mask, bl, bh)
    (g,) = torch.autograd.grad(out.sum(), x)
    keep, *_ = ercref.erc_masks(H, H_old, mask, bl, bh)
    assert torch.equal(g, torch.where(keep, 3.0, 0.0).to(g.dtype))


# ----------------------------------------------------------------------------- aggregation
@PROPS
@given(loss_and_mask(), st.sampled_from(ercref.AGG_MODES), st.integers(0, 2**31 - 1))
def test_aggregation_ignores_values_at_masked_positions(lm, mode, seed):
    x, mask = lm
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed), dtype=x.dtype) * 1e6
    y = torch.where(mask, x, noise)
    assert torch.equal(ercref.aggregate(x, mask, mode), ercref.aggregate(y, mask, mode))


@PROPS
@given(loss_and_mask(), st.randoms(use_true_random=False))
def test_token_mean_is_invariant_to_permuting_tokens(lm, rnd):
    x, mask = lm
    perm = list(range(x.numel()))
    rnd.shuffle(perm)
    perm = torch.tensor(perm)
    xp, mp = x.reshape(-1)[perm].reshape(x.shape), mask.reshape(-1)[perm].reshape(mask.shape)
    torch.testing.assert_close(ercref.aggregate(xp, mp), ercref.aggregate(x, mask), rtol=1e-12, atol=1e-9)


@PROPS
@given(loss_and_mask())
def test_seq_mean_token_mean_is_mean_of_per_sequence_means(lm):
    x, mask = lm
    means = [float(x[i][mask[i]].mean()) for i in range(x.shape[0]) if mask[i].any()]
    got = float(ercref.aggregate(x, mask, "seq-mean-token-mean"))
    assert got == pytest.approx(sum(means) / len(means), rel=1e-9, abs=1e-9)
    sums = [float(x[i][mask[i]].sum()) for i in range(x.shape[0]) if mask[i].any()]
    got = float(ercref.aggregate(x, mask, "seq-mean-token-sum-norm", norm=7.0))
    assert got == pytest.approx(sum(sums) / len(sums) / 7.0, rel=1e-9, abs=1e-9)


@PROPS
@given(loss_and_mask(), st.sampled_from(ercref.AGG_MODES), st.floats(-100, 100))
def test_scaling_the_loss_scales_the_aggregate(lm, mode, k):
    x, mask = lm
    torch.testing.assert_close(ercref.aggregate(k * x, mask, mode), k * ercref.aggregate(x, mask, mode),
                               rtol=1e-9, atol=1e-9)


# ----------------------------------------------------------------------------- advantages
@st.composite
def grouped_rewards(draw):
    G = draw(st.integers(1, 6))
    n = draw(st.integers(1, 6))
    vals = st.one_of(st.sampled_from([-1.0, -0.5, 0.0, 1.0]), st.floats(-10, 10))
    return torch.tensor(draw(st.lists(vals, min_size=G * n, max_size=G * n)), dtype=torch.float64), G


@PROPS
@given(grouped_rewards(), st.booleans())
def test_group_advantages_have_zero_group_mean(rg, scale):
    rewards, G = rg
    adv = ercref.group_advantages(rewards, G, scale_by_std=scale).view(-1, G)
    if G == 1:  # a group of one: mean 0, std 1 by convention
        torch.testing.assert_close(adv.view(-1), rewards / (1 + 1e-6) if scale else rewards)
        return
    g = rewards.view(-1, G)
    bound = 1e-9 * (1 + g.abs().max()) / (1e-6 if scale else 1.0)
    assert float(adv.mean(-1).abs().max()) <= bound
    if scale:  # non-constant groups are standardised: unbiased std is std / (std + 1e-6)
        std = g.std(-1)
        torch.testing.assert_close(adv.std(-1), std / (std + 1e-6), rtol=1e-6, atol=1e-6)


@PROPS
@given(grouped_rewards())
def test_dynamic_sampling_mask_drops_exactly_the_constant_groups(rg):
    rewards, G = rg
    keep = ercref.dynamic_sampling_mask(rewards, G).view(-1, G)
    g = rewards.view(-1, G)
    for i in range(g.shape[0]):
        constant = len(set(g[i].tolist())) == 1
        assert keep[i].tolist() == [not constant] * G
