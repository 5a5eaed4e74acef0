"""ercref.importance_accuracy: exact unbiasedness by enumeration, identities, input checks."""
import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ercref import importance_accuracy


def _two_step_policies(seed: int, vocab: int):
    """Two autoregressive policies over 2-token responses: p(a) p(b | a) as (vocab,) and (vocab, vocab) tables."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(2):
        first = torch.randn(vocab, generator=g, dtype=torch.float64).log_softmax(-1)
        second = torch.randn(vocab, vocab, generator=g, dtype=torch.float64).log_softmax(-1)
        out.append((first, second))
    return out


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), vocab=st.integers(2, 5), eos_len=st.integers(1, 2))
def test_the_estimate_is_unbiased_for_the_new_policys_expected_reward(seed, vocab, eos_len):
    # E_{y ~ pi_old}[estimate from the one sample y] == sum_y pi_new(y) c(y), exactly (enumerated in float64).
    (f_old, s_old), (f_new, s_new) = _two_step_policies(seed, vocab)
    g = torch.Generator().manual_seed(seed + 1)
    reward = torch.rand(vocab, vocab, generator=g, dtype=torch.float64)
    expect_new, expect_old, mean_acc_new, mean_acc_old, mean_w = 0.0, 0.0, 0.0, 0.0, 0.0
    for a, b in itertools.product(range(vocab), repeat=2):
        # responses of length eos_len: the second token is only part of the response when eos_len == 2
        lo = torch.tensor([[f_old[a], s_old[a, b]]])
        ln = torch.tensor([[f_new[a], s_new[a, b]]])
        mask = torch.tensor([[True, eos_len == 2]])
        p_old = float(torch.exp(lo[mask].sum()))
        c = float(reward[a, b]) if eos_len == 2 else float(reward[a].mean())
        out = importance_accuracy(torch.tensor([c], dtype=torch.float64), lo, ln, mask)
        weight = p_old if eos_len == 2 else p_old / vocab   # each (a, b) pair: one of vocab continuations
        mean_acc_new += weight * out["acc_new"]
        mean_acc_old += weight * out["acc_old"]
        mean_w += weight * out["mean_w"]
        p_new = float(torch.exp(ln[mask].sum()))
        expect_new += (p_new if eos_len == 2 else p_new / vocab) * c
        expect_old += weight * c
    assert mean_acc_new == pytest.approx(expect_new, rel=1e-10, abs=1e-12)
    assert mean_acc_old == pytest.approx(expect_old, rel=1e-10, abs=1e-12)
    assert mean_w == pytest.approx(1.0, rel=1e-10)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(1, 9), r=st.integers(1, 6))
def test_equal_policies_give_unit_weights_and_zero_change(seed, n, r):
    g = torch.Generator().manual_seed(seed)
    logp = -torch.rand(n, r, generator=g) * 3
    mask = torch.rand(n, r, generator=g) < 0.7
    correct = (torch.rand(n, generator=g) < 0.5).float()
    out = importance_accuracy(correct, logp, logp.clone(), mask)
    assert out["mean_w"] == 1.0 and out["max_w"] == 1.0 and out["delta"] == 0.0
    assert out["acc_new"] == out["acc_old"] == pytest.approx(float(correct.double().mean()))
    assert out["ess"] == pytest.approx(n) and out["n"] == n


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000))
def test_delta_is_the_difference_and_masked_positions_are_ignored(seed):
    g = torch.Generator().manual_seed(seed)
    lo, ln = -torch.rand(6, 4, generator=g) * 2, -torch.rand(6, 4, generator=g) * 2
    mask = torch.rand(6, 4, generator=g) < 0.6
    correct = torch.rand(6, generator=g)
    out = importance_accuracy(correct, lo, ln, mask)
    assert out["delta"] == pytest.approx(out["acc_new"] - out["acc_old"], abs=1e-12)
    w = torch.exp(((ln - lo).double() * mask).sum(-1))
    assert out["acc_new"] == pytest.approx(float((correct.double() * w).mean()), rel=1e-12)
    assert 1.0 <= out["ess"] <= 6.0 + 1e-9
    garbage_o, garbage_n = lo.clone(), ln.clone()
    garbage_o[~mask], garbage_n[~mask] = float("nan"), 5.0      # outside the mask: anything
    assert importance_accuracy(correct, garbage_o, garbage_n, mask) == out


def test_a_response_the_new_policy_prefers_raises_the_estimate():
    lo = torch.tensor([[-1.0, -1.0], [-1.0, -1.0]])
    ln = torch.tensor([[-0.5, -1.0], [-1.0, -1.0]])     # the correct first response became likelier
    mask = torch.ones(2, 2, dtype=torch.bool)
    out = importance_accuracy(torch.tensor([1.0, 0.0]), lo, ln, mask)
    assert out["acc_old"] == 0.5 and out["delta"] == pytest.approx(0.5 * (torch.e ** 0.5 - 1))


@pytest.mark.parametrize("kwargs, match", [
    ({"correct": torch.tensor([2.0, 0.0])}, "correct must hold rewards in"),
    ({"correct": torch.zeros(3)}, "n = len"),
    ({"correct": torch.zeros(0)}, "non-empty 1-D"),
    ({"logp_old": torch.full((2, 3), float("nan"))}, "logp_old must be finite"),
    ({"logp_new": torch.full((2, 3), 0.5)}, "logp_new must be finite log-probabilities"),
    ({"mask": torch.ones(2, 3)}, "mask must be a bool"),
    ({"logp_new": torch.zeros(2, 4)}, "must have one shape"),
])
def test_bad_input_is_refused_naming_the_argument(kwargs, match):
    args = {"correct": torch.tensor([1.0, 0.0]), "logp_old": -torch.ones(2, 3), "logp_new": -torch.ones(2, 3),
            "mask": torch.ones(2, 3, dtype=torch.bool)}
    with pytest.raises(ValueError, match=match):
        importance_accuracy(**{**args, **kwargs})
