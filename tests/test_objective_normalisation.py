"""The objective owns normalisation and checks each input once.

- ``compute_policy_loss(..., counts=batch_counts(minibatch))`` on micro-batches: the summed
  gradients equal one backward over the whole minibatch, for every aggregation mode, with the NLL,
  KL and entropy terms on (float64, any split of the rows).
- One ``compute_policy_loss`` call validates each input exactly once (``trace_checks``).
- Inputs on different devices, negative entropies and an fp16 gradient overflow are refused with
  an error that names the argument.
"""
from collections import Counter

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import ercref
from ercref._checks import trace_checks

MODES = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm")


def _minibatch(seed: int, B: int = 6, T: int = 7):
    g = torch.Generator().manual_seed(seed)
    nll = torch.rand(B, T, generator=g, dtype=torch.float64) * 3
    delta = 0.3 * torch.randn(B, T, generator=g, dtype=torch.float64)      # old - logp
    logp = (-nll - delta.clamp(min=0.0)).requires_grad_()                # both stay log-probabilities (<= 0)
    old = logp.detach() + delta
    ent = (torch.rand(B, T, generator=g, dtype=torch.float64) * 2 + 0.1).requires_grad_()
    old_ent = ent.detach() * (1 + 0.1 * torch.randn(B, T, generator=g, dtype=torch.float64))
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    mask = torch.arange(T) < lengths[:, None]
    rewards = torch.tensor([1.0, 0.0] * (B // 2), dtype=torch.float64)
    adv = torch.randn(B, generator=g, dtype=torch.float64)
    ref = old - 0.1
    return logp, old, adv, mask, ent, old_ent, rewards, ref


def _grads(cfg, mb, splits):
    logp, old, adv, mask, ent, old_ent, rewards, ref = mb
    logp.grad = ent.grad = None
    counts = ercref.batch_counts(mask, rewards) if splits is not None else None
    total = 0.0
    for rows in (splits or [torch.arange(logp.shape[0])]):
        loss, _ = ercref.compute_policy_loss(cfg, logp[rows], old[rows], adv[rows], mask[rows], ent[rows],
                                             old_ent[rows], rewards[rows], ref[rows], counts=counts)
        loss.backward()
        total = total + loss.detach()
    return total, logp.grad.clone(), ent.grad.clone()


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("loss", ["dapo", "gppo", "gspo"])
@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), cut=st.lists(st.integers(1, 5), min_size=1, max_size=3, unique=True))
def test_micro_batches_with_global_counts_equal_one_batch(mode, loss, seed, cut):
    cfg = ercref.PolicyLossConfig(loss=loss, agg_mode=mode, nll_coef=0.1, kl_coef=0.2, entropy_coef=0.01)
    mb = _minibatch(seed)
    perm = torch.randperm(6, generator=torch.Generator().manual_seed(seed))
    bounds = [0, *sorted(cut), 6]
    splits = [perm[a:b] for a, b in zip(bounds, bounds[1:])]
    whole, g_whole, e_whole = _grads(cfg, mb, None)
    parts, g_parts, e_parts = _grads(cfg, mb, splits)
    assert parts.item() == pytest.approx(whole.item(), rel=1e-12, abs=1e-12)
    torch.testing.assert_close(g_parts, g_whole, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(e_parts, e_whole, rtol=1e-10, atol=1e-12)


def test_one_micro_batch_with_counts_is_the_plain_loss_bit_for_bit():
    mb = _minibatch(3)
    for mode in MODES:
        cfg = ercref.PolicyLossConfig(agg_mode=mode)
        plain, _ = ercref.compute_policy_loss(cfg, *mb[:7])
        counted, _ = ercref.compute_policy_loss(cfg, *mb[:7], counts=ercref.batch_counts(mb[3], mb[6]))
        assert torch.equal(plain, counted), mode


def test_batch_counts_are_the_global_denominators():
    mask = torch.tensor([[1, 1, 0], [0, 0, 0], [1, 0, 0]], dtype=torch.bool)
    c = ercref.batch_counts(mask, torch.tensor([1.0, 1.0, 0.0]))
    assert (int(c.tokens), int(c.sequences), int(c.positive_tokens), c.width) == (3, 2, 2, 3)


def test_each_input_is_validated_once_per_call():
    logp, old, adv, mask, ent, old_ent, rewards, ref = _minibatch(0)
    cfg = ercref.PolicyLossConfig(loss="dapo", erc=True, nll_coef=0.1, kl_coef=0.1)
    with trace_checks() as seen:
        ercref.compute_policy_loss(cfg, logp, old, adv, mask, ent, old_ent, rewards, ref)
    counts = Counter(seen)
    repeated = {k: n for k, n in counts.items() if n > 1}
    assert not repeated, repeated
    for name in ("logp", "old_logp", "advantages", "entropy", "old_entropy", "rewards", "ref_logp"):
        assert counts[("finite", name)] == 1, name
        assert counts[("float", name)] == 1, name
    assert counts[("mask", "response_mask")] == 1 and counts[("any", "response_mask")] == 1


def test_registered_loss_and_apply_erc_validate_once_too():
    logp, old, adv, mask, ent, old_ent, _, _ = _minibatch(1)
    with trace_checks() as seen:
        per_tok, _ = ercref.LOSSES["gppo"](logp, old, adv, mask)
        ercref.apply_erc(per_tok, ent, old_ent, mask)
    counts = Counter(seen)
    assert counts[("finite", "logp")] == 1 and counts[("finite", "entropy")] == 1
    assert counts[("finite", "per_token_loss")] == 1


def test_inputs_on_another_device_are_named():
    logp, old, adv, mask, ent, old_ent, rewards, _ = _minibatch(2)
    cfg = ercref.PolicyLossConfig()
    with pytest.raises(ValueError, match="old_entropy is on device meta"):
        ercref.compute_policy_loss(cfg, logp, old, adv, mask, ent, old_ent.to("meta"), rewards)
    with pytest.raises(ValueError, match="advantages is on device meta"):
        ercref.compute_policy_loss(cfg, logp, old, adv.to("meta"), mask, ent, old_ent, rewards)
    with pytest.raises(ValueError, match="rewards is on device meta"):
        ercref.compute_policy_loss(cfg, logp, old, adv, mask, ent, old_ent, rewards.to("meta"))


def test_negative_entropies_are_refused_and_rounding_is_tolerated():
    logp, old, adv, mask, ent, old_ent, rewards, _ = _minibatch(4)
    bad = old_ent.clone()
    bad[0, 0] = -0.5
    with pytest.raises(ValueError, match="old_entropy holds a negative value"):
        ercref.erc_masks(ent.detach(), bad, mask)
    tiny = old_ent.clone()
    tiny[0, 0] = -1e-7   # float rounding of a near-deterministic row
    keep, *_ = ercref.erc_masks(ent.detach(), tiny, mask)
    assert keep.shape == mask.shape


def test_fp16_logp_gradient_overflow_is_refused_not_inf():
    B, T = 2, 4
    logp = torch.zeros(B, T, dtype=torch.float16, requires_grad=True)
    old = torch.full((B, T), -15.0, dtype=torch.float16)   # log-ratio 15: r = 3.3e6
    adv = torch.tensor([1.0, -1.0], dtype=torch.float16)
    mask = torch.ones(B, T, dtype=torch.bool)
    cfg = ercref.PolicyLossConfig(loss="pg", erc=False, nll_coef=0.0)
    loss, _ = ercref.compute_policy_loss(cfg, logp, old, adv, mask)
    assert torch.isfinite(loss)
    with pytest.raises(ValueError, match="beyond the float16 range"):
        loss.backward()
    ok = logp.detach().float().requires_grad_()
    loss32, _ = ercref.compute_policy_loss(cfg, ok, old.float(), adv.float(), mask)
    loss32.backward()
    assert torch.isfinite(ok.grad).all()
