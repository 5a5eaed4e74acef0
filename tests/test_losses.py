"""Per-token losses: hand-built PPO/dual-clip cases, GPPO's gradient-preserving clip, CISPO and GSPO
against restatements of verl's semantics, metrics, grad/zero_frac, and low-precision inputs.

Conventions: every loss returns l_t = -objective_t, so d l_t / d logp_t = -(objective gradient).
"""
from __future__ import annotations

import pytest
import torch
from conftest import random_batch

import ercref

F64 = torch.float64


def _t(rows, dtype=F64):
    return torch.tensor(rows, dtype=dtype)


def _per_token_grad(per_tok: torch.Tensor, logp: torch.Tensor) -> torch.Tensor:
    """d l_t / d logp_t for every token (losses are token-separable except GSPO)."""
    (g,) = torch.autograd.grad(per_tok.sum(), logp)
    return g


# ----------------------------------------------------------------------------- PPO / dual clip
# columns: A, ratio r. eps_low = eps_high = 0.2, c = 3; the last token is masked out.
PPO_CASE = [(+1.0, 1.5), (+1.0, 0.5), (-1.0, 0.5), (-1.0, 5.0), (-1.0, 2.0), (+1.0, 1.0), (+1.0, 2.0)]
PPO_MASK = [1, 1, 1, 1, 1, 1, 0]
# l = max(-A r, -A clip(r, 0.8, 1.2)), then for A < 0: min(l, -A c)
PPO_EXPECTED_NO_DUAL = [-1.2, -0.5, 0.8, 5.0, 2.0, -1.0]
PPO_EXPECTED_DUAL = [-1.2, -0.5, 0.8, 3.0, 2.0, -1.0]


def _ppo_inputs():
    A = _t([[a for a, _ in PPO_CASE]])
    old = torch.full_like(A, -2.0)
    logp = (old + torch.log(_t([[r for _, r in PPO_CASE]]))).requires_grad_(True)
    return logp, old, A, _t([PPO_MASK]).bool()


@pytest.mark.parametrize("name,expected,dual", [("ppo", PPO_EXPECTED_NO_DUAL, 0.0), ("dual_clip", PPO_EXPECTED_DUAL, 1 / 6)])
def test_ppo_and_dual_clip_values_and_clip_fractions_on_hand_built_tokens(name, expected, dual):
    logp, old, A, mask = _ppo_inputs()
    per_tok, m = ercref.LOSSES[name](logp, old, A, mask)
    torch.testing.assert_close(per_tok[0, :6], _t(expected), atol=1e-12, rtol=0)
    assert m["ppo/clip_frac_low"] == pytest.approx(1 / 6)   # only (A=-1, r=0.5); the masked token is not counted
    assert m["ppo/clip_frac_high"] == pytest.approx(1 / 6)  # only (A=+1, r=1.5)
    assert m["ppo/dual_clip_frac"] == pytest.approx(dual)   # only (A=-1, r=5)
    # gradients: clipped tokens and dual-clipped tokens get zero, the others -A r
    g = _per_token_grad(per_tok, logp)[0, :6]
    expected_g = [0.0, -0.5, 0.0, 5.0 if name == "ppo" else 0.0, 2.0, -1.0]
    torch.testing.assert_close(g, _t(expected_g), atol=1e-12, rtol=0)


def test_dapo_default_is_clip_higher_with_dual_clip_10():
    # r = 1.25 is clipped by eps_high = 0.2 (ppo) but not by 0.28 (dapo); r = 5 with A < 0 is dual-clipped at 3 but not 10
    A = _t([[1.0, -1.0, -1.0]])
    old = torch.full_like(A, -3.0)
    logp = old + torch.log(_t([[1.25, 5.0, 12.0]]))
    per_tok, m = ercref.LOSSES["dapo"](logp, old, A, torch.ones_like(A))
    torch.testing.assert_close(per_tok, _t([[-1.25, 5.0, 10.0]]), atol=1e-12, rtol=0)
    assert m["ppo/clip_frac_high"] == 0 and m["ppo/dual_clip_frac"] == pytest.approx(1 / 3)


def test_kl_approx_old_is_masked_mean_of_old_minus_new_logp(batch):
    _, m = ercref.LOSSES["ppo"](batch.logp, batch.old_logp, batch.advantages, batch.mask)
    d = torch.clamp(batch.logp.detach() - batch.old_logp, -20, 20)
    assert m["kl/approx_old"] == pytest.approx(float(-d[batch.mask].mean()), rel=1e-6)


def test_log_ratio_is_clamped_at_20():
    A = _t([[1.0, 1.0]])
    logp = _t([[-1.0, -61.0]]).requires_grad_(True)
    per_tok, _ = ercref.LOSSES["pg"](logp, torch.full_like(A, -31.0), A, torch.ones_like(A))
    torch.testing.assert_close(per_tok, -torch.exp(_t([[20.0, -20.0]])))
    assert torch.equal(_per_token_grad(per_tok, logp), torch.zeros_like(A))


def test_pg_is_reinforce_at_staleness_zero(batch):
    old = batch.logp.detach().clone()
    per_tok, _ = ercref.LOSSES["pg"](batch.logp, old, batch.advantages, batch.mask)
    A = batch.advantages.unsqueeze(-1).expand_as(old)
    torch.testing.assert_close(per_tok, -A)
    torch.testing.assert_close(_per_token_grad(per_tok, batch.logp), -A)


# ----------------------------------------------------------------------------- GPPO
@pytest.mark.parametrize("beta1,beta2", [(1.0, 1.0), (0.5, 1.0), (0.75, 0.3), (0.0, 2.0)])
def test_gppo_clipped_tokens_keep_gradient_beta_times_bound_and_forward_equals_clip_higher(beta1, beta2):
    gen = torch.Generator().manual_seed(3)
    eps_low, eps_high, c = 0.2, 0.28, 10.0
    b = random_batch(gen, 6, 9, c=c, per_token_adv=True)
    args = (b.logp, b.old_logp, b.advantages, b.mask)
    gppo, _ = ercref.LOSSES["gppo"](*args, eps_low=eps_low, eps_high=eps_high, beta1=beta1, beta2=beta2, clip_ratio_c=c)
    dapo, _ = ercref.LOSSES["dapo"](*args, eps_low=eps_low, eps_high=eps_high, clip_ratio_c=c)
    torch.testing.assert_close(gppo, dapo, atol=1e-12, rtol=1e-12)  # forward value is clip-higher's, for every beta

    g, g_dapo = _per_token_grad(gppo, b.logp), _per_token_grad(dapo, b.logp)
    A = b.advantages
    r = torch.exp(torch.clamp(b.logp.detach() - b.old_logp, -20, 20))
    in_clamp = (b.logp.detach() - b.old_logp).abs() < 20
    high = (A > 0) & (r > 1 + eps_high) & in_clamp
    low = (A < 0) & (r < 1 - eps_low) & (r < c) & in_clamp
    assert high.sum() >= 3 and low.sum() >= 3
    torch.testing.assert_close(g[high], -beta2 * (1 + eps_high) * A[high], atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(g[low], -beta1 * (1 - eps_low) * A[low], atol=1e-12, rtol=1e-12)
    # every other token has DAPO's gradient (in range: -A r; dual-clipped or beyond the clamp: 0)
    torch.testing.assert_close(g[~(high | low)], g_dapo[~(high | low)], atol=1e-12, rtol=1e-12)
    assert torch.all(g_dapo[high | low] == 0)


# ----------------------------------------------------------------------------- CISPO / GSPO
def verl_cispo(logp, old_logp, A, eps_low, eps_high):
    """verl compute_policy_loss_cispo, restated: l = -sg(clamp(r, 1-el, 1+eh)) * A * logp."""
    ratio = torch.exp(torch.clamp(logp - old_logp, -20.0, 20.0))
    return -torch.clamp(ratio, 1 - eps_low, 1 + eps_high).detach() * A * logp


def verl_gspo(logp, old_logp, A, mask, eps_low, eps_high):
    """verl's gspo, restated: sequence ratio exp(mean_t log r), token-level straight-through."""
    m = mask.to(logp.dtype)
    seq_kl = ((logp - old_logp) * m).sum(-1) / m.sum(-1).clamp(min=1)
    log_s = torch.clamp(logp - logp.detach() + seq_kl.detach().unsqueeze(-1), max=10.0)
    s = torch.exp(log_s)
    return torch.maximum(-A * s, -A * torch.clamp(s, 1 - eps_low, 1 + eps_high))


def test_cispo_matches_verl_restatement_value_and_gradient(batch):
    A = batch.advantages.unsqueeze(-1)
    per_tok, m = ercref.LOSSES["cispo"](batch.logp, batch.old_logp, batch.advantages, batch.mask, eps_low=0.2, eps_high=0.28)
    ref = verl_cispo(batch.logp, batch.old_logp, A, 0.2, 0.28)
    torch.testing.assert_close(per_tok, ref, atol=1e-12, rtol=1e-12)
    g = _per_token_grad(per_tok, batch.logp)
    torch.testing.assert_close(g, _per_token_grad(ref, batch.logp), atol=1e-12, rtol=1e-12)
    # every token keeps a gradient (A != 0): CISPO clips the weight, not the gradient
    assert torch.all(g[(A != 0).expand_as(g)] != 0)
    r = torch.exp(torch.clamp(batch.logp.detach() - batch.old_logp, -20, 20))
    assert m["ppo/clip_frac_low"] == pytest.approx(float((r < 0.8)[batch.mask].double().mean()))
    assert m["ppo/clip_frac_high"] == pytest.approx(float((r > 1.28)[batch.mask].double().mean()))


@pytest.mark.parametrize("mode", ["token-mean", "seq-mean-token-mean"])
def test_gspo_matches_verl_restatement_value_and_gradient(mode):
    gen = torch.Generator().manual_seed(5)
    B, T = 6, 7
    old = -3 * torch.rand(B, T, generator=gen, dtype=F64) - 13.0   # low enough for logp = old + shift to stay <= 0
    shift = _t([0.3, -0.3, 1e-4, -2e-4, 0.0, 12.0]).unsqueeze(-1)  # clipped high/low, inside, and log s > 10
    logp = (old + shift + 0.05 * torch.randn(B, T, generator=gen, dtype=F64)).requires_grad_(True)
    A = _t([1.0, -1.0, 0.5, -2.0, 1.0, 1.0])
    mask = torch.rand(B, T, generator=gen) < 0.8
    mask[:, 0] = True
    per_tok, _ = ercref.LOSSES["gspo"](logp, old, A, mask, eps_low=3e-4, eps_high=4e-4)
    ref = verl_gspo(logp, old, A.unsqueeze(-1), mask, 3e-4, 4e-4)
    torch.testing.assert_close(per_tok, ref, atol=1e-12, rtol=1e-12)
    loss, ref_loss = ercref.aggregate(per_tok, mask, mode), ercref.aggregate(ref, mask, mode)
    torch.testing.assert_close(loss, ref_loss, atol=1e-12, rtol=1e-12)
    (g,), (g_ref,) = torch.autograd.grad(loss, logp), torch.autograd.grad(ref_loss, logp)
    torch.testing.assert_close(g, g_ref, atol=1e-12, rtol=1e-12)


# ----------------------------------------------------------------------------- grad/zero_frac
@pytest.mark.parametrize("name", ["dapo", "gppo", "ppo", "cispo"])
def test_grad_zero_frac_equals_fraction_of_response_tokens_with_exactly_zero_gradient(name):
    gen = torch.Generator().manual_seed(11)
    b = random_batch(gen, 5, 8, per_token_adv=True)
    cfg = ercref.PolicyLossConfig(loss=name, erc=True, nll_coef=0.0, beta_low=0.2, beta_high=0.2)
    loss, m = ercref.compute_policy_loss(cfg, b.logp, b.old_logp, b.advantages, b.mask, b.entropy, b.old_entropy)
    loss.backward()
    zero = (b.logp.grad == 0) & b.mask
    expected = float(zero.sum()) / float(b.mask.sum())
    assert 0 < expected < 1
    assert m["grad/zero_frac"] == pytest.approx(expected, abs=1e-7)


# ----------------------------------------------------------------------------- low precision
@pytest.mark.parametrize("half", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", sorted(ercref.LOSSES))
def test_half_precision_inputs_give_exactly_the_fp32_loss_and_gradient(name, half):
    """bf16 / fp16 inputs are upcast before anything is computed: the per-token loss is fp32 and equal,
    bit for bit, to the loss of fp32 inputs holding the same values; the gradient reaching the half
    logp is the fp32 gradient cast to its dtype. (Before: computed in the input dtype, e.g. fp16
    exp() overflowing at a log-ratio of 11.)"""
    gen = torch.Generator().manual_seed(2)
    B, T = 8, 16
    old = (-4 * torch.rand(B, T, generator=gen) - 13.0).to(half).float()   # logp = old + delta stays <= 0
    delta = torch.where(torch.rand(B, T, generator=gen) < 0.2, 12.0, 0.15 * torch.randn(B, T, generator=gen))
    logp32 = (old + delta).to(half).float().requires_grad_(True)
    A = torch.randn(B, generator=gen).to(half).float()
    mask = torch.rand(B, T, generator=gen) < 0.8
    torch.manual_seed(0)  # clip_cov draws its tokens from the global RNG: the same draw both times
    p32, m32 = ercref.LOSSES[name](logp32, old, A, mask)
    logp16 = logp32.detach().to(half).requires_grad_(True)
    torch.manual_seed(0)
    p16, m16 = ercref.LOSSES[name](logp16, old.to(half), A.to(half), mask)
    assert p16.dtype == torch.float32 and torch.equal(p16, p32)
    assert {k: float(v) for k, v in m16.items()} == {k: float(v) for k, v in m32.items()}
    ercref.aggregate(p32, mask).backward()
    l16 = ercref.aggregate(p16, mask)
    assert l16.dtype == torch.float32
    l16.backward()
    assert logp16.grad.dtype == half and torch.equal(logp16.grad, logp32.grad.to(half))


# ----------------------------------------------------------------------------- metrics: 0-d tensors, one sync
def _all_terms_call(name, dtype=torch.float32):
    """compute_policy_loss with every term on (ERC, NLL, KL, entropy bonus, grad/zero_frac)."""
    gen = torch.Generator().manual_seed(5)
    b = random_batch(gen, 4, 6, per_token_adv=True)
    logp = b.logp.detach().to(dtype).requires_grad_(True)
    entropy = b.entropy.detach().to(dtype).requires_grad_(True)
    cfg = ercref.PolicyLossConfig(loss=name, erc=True, nll_coef=0.1, kl_coef=0.05, entropy_coef=0.01,
                                  beta_low=0.2, beta_high=0.2)
    rewards = torch.tensor([1.0, 0.0, 1.0, -1.0], dtype=dtype)
    return ercref.compute_policy_loss(cfg, logp, b.old_logp.to(dtype), b.advantages.to(dtype), b.mask, entropy,
                                      b.old_entropy.to(dtype), rewards=rewards, ref_logp=b.old_logp.to(dtype) - 0.1)


@pytest.mark.parametrize("name", sorted(ercref.LOSSES))
def test_every_metric_is_a_detached_0d_tensor_and_metrics_to_floats_gives_the_same_numbers(name):
    loss, m = _all_terms_call(name)
    expected = {"ppo/clip_frac_low", "ppo/clip_frac_high", "ppo/dual_clip_frac", "kl/approx_old", "entropy/new_mean",
                "entropy/old_mean", "erc/clip_frac", "erc/clip_frac_low", "erc/clip_frac_high", "entropy/ratio_mean",
                "grad/zero_frac", "loss/policy", "loss/nll_positive", "kl/ref", "loss/total"}
    if name in ("clip_cov", "kl_cov"):
        expected.add("cov/selected_frac")   # the loss's own metric
    assert set(m) == expected
    for k, v in m.items():
        assert isinstance(v, torch.Tensor) and v.dim() == 0 and v.is_floating_point(), k
        assert not v.requires_grad, k
    floats = ercref.metrics_to_floats(m)
    assert list(floats) == list(m)  # same keys, same order
    for k, v in m.items():
        assert type(floats[k]) is float and floats[k] == float(v), k  # exactly the value float() gives
    assert floats["loss/total"] == float(loss.detach())
    # the registry and apply_erc on their own return 0-d tensors as well
    b = random_batch(torch.Generator().manual_seed(6), 3, 5)
    per_tok, m_loss = ercref.LOSSES[name](b.logp, b.old_logp, b.advantages, b.mask)
    _, m_erc = ercref.apply_erc(per_tok, b.entropy, b.old_entropy, b.mask)
    for k, v in {**m_loss, **m_erc}.items():
        assert isinstance(v, torch.Tensor) and v.dim() == 0 and not v.requires_grad, k


def test_metrics_to_floats_syncs_once_and_accepts_numbers_and_any_dtype(monkeypatch):
    import numpy as np

    metrics = {"a": torch.tensor(0.25), "n": 3, "b": torch.tensor(1.5, dtype=torch.bfloat16),
               "c": torch.tensor(1 / 3, dtype=F64), "i": torch.tensor(7), "np": np.float32(0.5), "flag": True}
    seen = []
    real_tolist = torch.Tensor.tolist

    def tolist(self):
        seen.append(tuple(self.shape))
        return real_tolist(self)

    def no_per_value_sync(self, *a):
        raise AssertionError("metrics_to_floats must not convert tensors one by one")

    monkeypatch.setattr(torch.Tensor, "tolist", tolist)
    monkeypatch.setattr(torch.Tensor, "item", no_per_value_sync)
    monkeypatch.setattr(torch.Tensor, "__float__", no_per_value_sync)
    out = ercref.metrics_to_floats(metrics)
    monkeypatch.undo()
    assert seen == [(4,)]  # one stacked transfer for the four tensors
    assert out == {"a": 0.25, "n": 3.0, "b": 1.5, "c": 1 / 3, "i": 7.0, "np": 0.5, "flag": 1.0}
    assert list(out) == list(metrics) and all(type(v) is float for v in out.values())
    assert ercref.metrics_to_floats({}) == {}


@pytest.mark.parametrize("bad", [torch.ones(2), torch.ones(0), "0.5", None])
def test_metrics_to_floats_rejects_non_scalars_naming_the_key(bad):
    with pytest.raises(ValueError, match="'bad_key'"):
        ercref.metrics_to_floats({"ok": torch.tensor(1.0), "bad_key": bad})
