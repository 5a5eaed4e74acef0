"""Aggregation modes, group advantages, dynamic sampling, overlong shaping, positive-sample NLL
and the KL estimators, against values computed by hand (or with the standard library)."""
from __future__ import annotations

import math
import statistics

import pytest
import torch

import ercref

F64 = torch.float64


# ----------------------------------------------------------------------------- aggregation
PER_TOK = [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]]
MASK = [[1, 1, 0], [1, 0, 0], [0, 0, 0]]  # the last sequence has no response token


@pytest.mark.parametrize("mode,norm,expected", [
    ("token-mean", None, (1 + 2 + 4) / 3),
    ("seq-mean-token-mean", None, ((1 + 2) / 2 + 4 / 1) / 2),
    ("seq-mean-token-sum-norm", None, ((1 + 2) + 4) / 2 / 3),  # default norm = T = 3
    ("seq-mean-token-sum-norm", 2.0, ((1 + 2) + 4) / 2 / 2),
])
def test_aggregate_hand_computed(mode, norm, expected):
    out = ercref.aggregate(torch.tensor(PER_TOK, dtype=F64), torch.tensor(MASK), mode, norm)
    assert float(out) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("mode", ercref.AGG_MODES)
def test_aggregate_ignores_nan_and_inf_at_masked_positions_value_and_grad(mode):
    x = torch.tensor(PER_TOK, dtype=F64)
    x[0, 2], x[1, 1], x[2, 0] = float("nan"), float("inf"), float("-inf")
    x.requires_grad_(True)
    out = ercref.aggregate(x, torch.tensor(MASK), mode)
    clean = ercref.aggregate(torch.tensor(PER_TOK, dtype=F64), torch.tensor(MASK), mode)
    assert out.item() == clean.item()
    out.backward()
    assert torch.all(x.grad[torch.tensor(MASK) == 0] == 0) and torch.isfinite(x.grad).all()


# ----------------------------------------------------------------------------- advantages
def _grpo_by_hand(rewards, G, scale=True):
    out = []
    for i in range(0, len(rewards), G):
        g = rewards[i : i + G]
        mean, std = statistics.fmean(g), statistics.stdev(g)  # unbiased (n - 1)
        out += [(r - mean) / (std + 1e-6) if scale else r - mean for r in g]
    return out


@pytest.mark.parametrize("scale", [True, False])
def test_group_advantages_match_mean_and_unbiased_std(scale):
    rewards = [1.0, -1.0, -1.0, 1.0, 1.0, 1.0, -0.5, -1.0, 0.0, 0.0, 0.0, 0.0]
    adv = ercref.group_advantages(torch.tensor(rewards, dtype=F64), 4, scale_by_std=scale)
    torch.testing.assert_close(adv, torch.tensor(_grpo_by_hand(rewards, 4, scale), dtype=F64), rtol=1e-12, atol=1e-12)
    assert torch.all(adv[8:] == 0)  # a constant group has zero advantage (0 / (0 + 1e-6))


def test_group_advantages_eps_is_1e_minus_6():
    # two samples 1 and 1 + 2e-6: std = sqrt(2) * 1e-6, so eps is not negligible
    adv = ercref.group_advantages(torch.tensor([1.0, 1.0 + 2e-6], dtype=F64), 2)
    std = math.sqrt(2) * 1e-6
    torch.testing.assert_close(adv, torch.tensor([-1e-6 / (std + 1e-6), 1e-6 / (std + 1e-6)], dtype=F64), rtol=1e-6, atol=0)


def test_group_of_one_has_mean_zero_and_std_one():
    rewards = torch.tensor([1.0, -0.5, 0.0], dtype=F64)
    torch.testing.assert_close(ercref.group_advantages(rewards, 1), rewards / (1 + 1e-6))
    torch.testing.assert_close(ercref.group_advantages(rewards, 1, scale_by_std=False), rewards)


def test_dynamic_sampling_mask_drops_constant_groups():
    rewards = torch.tensor([1.0, 1.0, 1.0, 0.0, 1.0, 0.0, -1.0, -1.0, -1.0, -1.0, -0.5, -1.0])
    keep = ercref.dynamic_sampling_mask(rewards, 3)
    assert keep.tolist() == [False] * 3 + [True] * 3 + [False] * 3 + [True] * 3


@pytest.mark.parametrize("length,expected", [
    (0, 0.0), (15, 0.0),            # |y| <= Lmax - Lbuf = 15: no penalty (boundary included)
    (16, -1 / 5), (18, -3 / 5),     # inside the buffer: (15 - |y|) / 5
    (20, -1.0),                     # |y| = Lmax: end of the linear ramp
    (21, -1.0), (1000, -1.0),       # beyond Lmax
])
def test_overlong_reward_piecewise(length, expected):
    out = ercref.overlong_reward(torch.tensor([length]), max_length=20, buffer_length=5)
    assert float(out[0]) == pytest.approx(expected, abs=1e-7)


# ----------------------------------------------------------------------------- auxiliary terms
def test_positive_nll_uses_only_reward_one_responses():
    logp = torch.tensor([[-1.0, -2.0, -3.0], [-4.0, -5.0, -6.0], [-0.5, -0.25, -9.0], [-7.0, -7.0, -7.0]],
                        dtype=F64, requires_grad=True)
    mask = torch.tensor([[1, 1, 0], [1, 1, 1], [1, 1, 1], [1, 1, 1]])
    rewards = torch.tensor([1.0, 0.999, 1.0, -1.0], dtype=F64)  # only rows 0 and 2 have reward exactly 1
    nll = ercref.positive_nll(logp, mask, rewards)
    assert nll.item() == pytest.approx((1 + 2 + 0.5 + 0.25 + 9) / 5)
    nll.backward()
    expected = torch.zeros(4, 3, dtype=F64)
    expected[0, :2] = expected[2, :] = -1 / 5
    torch.testing.assert_close(logp.grad, expected)


def test_positive_nll_without_correct_responses_is_zero_with_zero_gradient():
    logp = torch.randn(2, 3, generator=torch.Generator().manual_seed(0), dtype=F64, requires_grad=True)
    nll = ercref.positive_nll(logp, torch.ones(2, 3), torch.tensor([0.0, -1.0], dtype=F64))
    assert nll.item() == 0.0
    nll.backward()
    assert torch.equal(logp.grad, torch.zeros(2, 3, dtype=F64))


def test_kl_estimators_on_known_values():
    logp, ref = torch.tensor([[math.log(0.5)]], dtype=F64), torch.tensor([[math.log(0.25)]], dtype=F64)
    d = math.log(0.25) - math.log(0.5)  # log(ref / pi) = -log 2
    assert float(ercref.kl_penalty(logp, ref, "k1")) == pytest.approx(math.log(2))
    assert float(ercref.kl_penalty(logp, ref, "k2")) == pytest.approx(0.5 * math.log(2) ** 2)
    assert float(ercref.kl_penalty(logp, ref, "k3")) == pytest.approx(math.exp(d) - d - 1)  # 0.5 + log 2 - 1


def test_k1_and_k3_are_unbiased_for_kl_in_exact_expectation():
    """E_{x ~ pi}[k1] = E_{x ~ pi}[k3] = KL(pi || ref) = sum_x pi log(pi / ref), computed exactly."""
    pi = torch.tensor([0.5, 0.3, 0.15, 0.05], dtype=F64)
    ref = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=F64)
    kl = sum(p * math.log(p / q) for p, q in zip(pi.tolist(), ref.tolist()))
    for est in ("k1", "k3"):
        k = ercref.kl_penalty(pi.log().unsqueeze(0), ref.log().unsqueeze(0), est)[0]
        assert float((pi * k).sum()) == pytest.approx(kl, rel=1e-12)
    k3 = ercref.kl_penalty(pi.log().unsqueeze(0), ref.log().unsqueeze(0), "k3")
    assert torch.all(k3 >= 0)  # k3 is non-negative per sample; k1 is not
