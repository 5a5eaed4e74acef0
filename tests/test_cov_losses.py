"""Clip-Cov and KL-Cov (Cui et al., arXiv 2505.22617) against verl 0.9.1's own implementations
(oracles, value and gradient), their selection rules, float64 gradcheck, bad hyper-parameters, and
ERC composed around them.

    Cov_t = (A_t - mean A) (log pi_t - mean log pi)      means over the response tokens
    clip_cov: l_t = 0 on max(1, floor(ratio n)) random tokens with lb < Cov_t < ub and PPO clip inactive,
              PPO-clip elsewhere
    kl_cov:   l_t = -A r_t + coef |log r_t| on the max(1, floor(ratio n)) tokens of largest Cov_t, -A r_t elsewhere

Clip-Cov draws from torch's global CPU generator exactly as verl does (torch.randperm over the
candidates), so seeding it identically before each call makes the two comparable bit for bit.
"""
from __future__ import annotations

import math

import pytest
import torch
from torch.autograd import gradcheck

import ercref
from ercref.losses import response_covariance

F64 = torch.float64
core_algos = pytest.importorskip("verl.trainer.ppo.core_algos", reason="verl is installed by `make test`; run make setup")
from verl.workers.config import ActorConfig  # noqa: E402
from verl.workers.config import PolicyLossConfig as VerlPolicyLossConfig  # noqa: E402


def _verl_cfg(mode, low=0.2, high=0.2, **policy_loss):
    return ActorConfig(strategy="fsdp", rollout_n=1, ppo_micro_batch_size_per_gpu=1, clip_ratio=low, clip_ratio_low=low,
                       clip_ratio_high=high, policy_loss=VerlPolicyLossConfig(loss_mode=mode, **policy_loss))


def _inputs(seed, B=6, T=12, spread=0.6):
    """float64; per-sequence advantages (as verl receives them, (B, T)); padding at the ends of rows
    and holes inside them; first token of every row a response token."""
    g = torch.Generator().manual_seed(seed)
    nll = torch.rand(B, T, generator=g, dtype=F64) * 3
    delta = torch.randn(B, T, generator=g, dtype=F64) * spread
    old = -nll - delta.clamp(min=0.0)                      # both old and logp stay log-probabilities (<= 0)
    logp = (old + delta).requires_grad_()
    adv = torch.randn(B, generator=g, dtype=F64)
    lengths = torch.randint(T // 3, T + 1, (B,), generator=g)
    mask = (torch.arange(T) < lengths.unsqueeze(-1)) & (torch.rand(B, T, generator=g) > 0.15)
    mask[:, 0] = True
    return logp, old, adv, mask


def _value_and_grad(fn, logp):
    logp.grad = None
    loss, metrics = fn()
    loss.backward()
    return loss.detach().clone(), logp.grad.clone(), metrics


def _ours(name, logp, old, adv, mask, agg, rng_seed, **kw):
    def fn():
        torch.manual_seed(rng_seed)
        per_tok, m = ercref.LOSSES[name](logp, old, adv, mask, **kw)
        return ercref.aggregate(per_tok, mask, agg), m
    return fn


def _verl(name, logp, old, adv, mask, agg, rng_seed, cfg):
    def fn():
        torch.manual_seed(rng_seed)
        A = adv.unsqueeze(-1).expand_as(logp).contiguous()
        return core_algos.get_policy_loss_fn(name)(old, logp, A, mask, loss_agg_mode=agg, config=cfg)
    return fn


# (hyper-parameters as ours, the same as verl's config): verl's defaults, then shares large enough
# that several tokens are selected and the random draw among the candidates matters
CLIP_COV = [dict(), dict(clip_cov_ratio=0.05), dict(clip_cov_ratio=0.1, clip_cov_lb=0.05, clip_cov_ub=3.0),
            dict(clip_cov_ratio=0.1, clip_cov_lb=-0.5, clip_cov_ub=0.5, eps_low=0.2, eps_high=0.28)]
KL_COV = [dict(), dict(kl_cov_ratio=0.05, ppo_kl_coef=1.0), dict(kl_cov_ratio=0.3, ppo_kl_coef=0.1), dict(kl_cov_ratio=1.0)]


def _verl_clip_cov_cfg(kw):
    pl = {k: v for k, v in kw.items() if k.startswith("clip_cov")}
    return _verl_cfg("clip_cov", low=kw.get("eps_low", 0.2), high=kw.get("eps_high", 0.2), **pl)


def _assert_matches_verl(name, logp, old, adv, mask, agg, seed, cfg, kw):
    """Our loss and verl's at the same RNG seed: value and gradient equal to rtol 1e-12.
    Returns (our gradient, our metrics, verl's metrics)."""
    v_val, v_grad, v_m = _value_and_grad(_verl(name, logp, old, adv, mask, agg, seed, cfg), logp)
    o_val, o_grad, o_m = _value_and_grad(_ours(name, logp, old, adv, mask, agg, seed, **kw), logp)
    torch.testing.assert_close(o_val, v_val, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(o_grad, v_grad, rtol=1e-12, atol=1e-14)
    return o_grad, o_m, v_m


@pytest.mark.parametrize("agg", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"])
@pytest.mark.parametrize("kw", CLIP_COV, ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()) or "defaults")
def test_clip_cov_matches_verl_value_gradient_and_selection(kw, agg):
    cfg = _verl_clip_cov_cfg(kw)
    selected_any = rng_matters = 0
    for seed in range(25):
        logp, old, adv, mask = _inputs(seed)
        o_grad, o_m, v_m = _assert_matches_verl("clip_cov", logp, old, adv, mask, agg, seed, cfg, kw)
        assert float(o_m["cov/selected_frac"]) == pytest.approx(v_m["actor/pg_clipfrac"], rel=1e-6)
        assert float(o_m["kl/approx_old"]) == pytest.approx(v_m["actor/ppo_kl"], rel=1e-9, abs=1e-12)
        selected_any += float(o_m["cov/selected_frac"]) > 0
        # another RNG state picks other candidates (when there are more than it selects)
        _, other_grad, _ = _value_and_grad(_ours("clip_cov", logp, old, adv, mask, agg, seed + 1000, **kw), logp)
        rng_matters += not torch.equal(other_grad, o_grad)
    assert selected_any >= 10      # the selection is exercised, not empty
    if kw.get("clip_cov_ratio", 2e-4) >= 0.05:
        assert rng_matters >= 5    # and the comparison above is sensitive to the random draw


@pytest.mark.parametrize("agg", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"])
@pytest.mark.parametrize("kw", KL_COV, ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()) or "defaults")
def test_kl_cov_matches_verl_value_and_gradient(kw, agg):
    cfg = _verl_cfg("kl_cov", **kw)
    for seed in range(25):
        logp, old, adv, mask = _inputs(seed)
        _, o_m, _ = _assert_matches_verl("kl_cov", logp, old, adv, mask, agg, seed, cfg, kw)
        n = int(mask.sum())
        assert round(float(o_m["cov/selected_frac"]) * n) == max(1, int(n * kw.get("kl_cov_ratio", 2e-4)))


def test_verl_defaults_are_our_defaults():
    vc = VerlPolicyLossConfig()
    ac = _verl_cfg("vanilla")
    clip_cov = ercref.losses.loss_keywords("clip_cov")
    kl_cov = ercref.losses.loss_keywords("kl_cov")
    assert {k: p.default for k, p in clip_cov.items()} == dict(
        eps_low=ac.clip_ratio_low, eps_high=ac.clip_ratio_high, clip_cov_ratio=vc.clip_cov_ratio,
        clip_cov_lb=vc.clip_cov_lb, clip_cov_ub=vc.clip_cov_ub)
    assert {k: p.default for k, p in kl_cov.items()} == dict(kl_cov_ratio=vc.kl_cov_ratio, ppo_kl_coef=vc.ppo_kl_coef)


# ----------------------------------------------------------------------------- the selection rules, directly
def test_clip_cov_selects_random_candidates_only_and_zeroes_their_value_and_gradient():
    logp, old, adv, mask = _inputs(3, B=8, T=16)
    kw = dict(clip_cov_ratio=0.05, clip_cov_lb=0.1, clip_cov_ub=4.0)
    A = adv.unsqueeze(-1)
    r = torch.exp(logp.detach() - old)
    ppo_active = (-A * r.clamp(0.8, 1.2)) > (-A * r)
    cov = response_covariance(logp, A, mask)
    candidates = mask & ~ppo_active & (cov > 0.1) & (cov < 4.0)
    n_sel = max(int(0.05 * int(mask.sum())), 1)
    assert int(candidates.sum()) > 2 * n_sel  # a real choice
    ppo, _ = ercref.LOSSES["ppo"](logp, old, adv, mask)
    (g_ppo,) = torch.autograd.grad(ppo.sum(), logp)
    counts = torch.zeros_like(mask, dtype=torch.long)
    for seed in range(300):
        torch.manual_seed(seed)
        per_tok, m = ercref.LOSSES["clip_cov"](logp, old, adv, mask, **kw)
        (g,) = torch.autograd.grad(per_tok.sum(), logp)
        sel = (per_tok == 0) & (g == 0) & candidates  # selected: value and gradient exactly 0
        assert int(sel.sum()) == n_sel and float(m["cov/selected_frac"]) == pytest.approx(n_sel / int(mask.sum()))
        assert torch.equal(per_tok[~sel], ppo[~sel]) and torch.equal(g[~sel], g_ppo[~sel])
        counts += sel
    assert torch.all(counts[~candidates] == 0)        # never a non-candidate (padding, PPO-clipped, outside (lb, ub))
    assert torch.all(counts[candidates] > 0)          # every candidate can be drawn


def test_kl_cov_penalises_exactly_the_top_k_covariance_tokens():
    logp, old, adv, mask = _inputs(4, B=8, T=16)
    pg, _ = ercref.LOSSES["pg"](logp, old, adv, mask)
    per_tok, m = ercref.LOSSES["kl_cov"](logp, old, adv, mask, kl_cov_ratio=0.1, ppo_kl_coef=0.5)
    n = int(mask.sum())
    k = max(1, int(0.1 * n))
    cov = response_covariance(logp, adv.unsqueeze(-1), mask)
    top = torch.zeros_like(mask).flatten()
    top[torch.topk(cov.masked_fill(~mask, -torch.inf).flatten(), k).indices] = True
    top = top.view_as(mask)
    torch.testing.assert_close(per_tok[top], pg[top] + 0.5 * (logp - old)[top].abs(), rtol=0, atol=0)
    assert torch.equal(per_tok[~top], pg[~top])
    assert not (top & ~mask).any() and float(m["cov/selected_frac"]) == pytest.approx(k / n)


def test_cov_losses_take_per_token_and_per_sequence_advantages_alike():
    logp, old, adv, mask = _inputs(5)
    for name, kw in (("clip_cov", dict(clip_cov_ratio=0.2, clip_cov_lb=0.0)), ("kl_cov", dict(kl_cov_ratio=0.2))):
        torch.manual_seed(0)
        a, _ = ercref.LOSSES[name](logp, old, adv, mask, **kw)
        torch.manual_seed(0)
        b, _ = ercref.LOSSES[name](logp, old, adv.unsqueeze(-1).expand_as(logp), mask, **kw)
        assert torch.equal(a, b)


# ----------------------------------------------------------------------------- gradcheck (selection held fixed)
@pytest.mark.parametrize("name,kw", [("clip_cov", dict(clip_cov_ratio=0.1, clip_cov_lb=0.05, clip_cov_ub=3.0)),
                                     ("kl_cov", dict(kl_cov_ratio=0.2, ppo_kl_coef=0.7))])
@pytest.mark.parametrize("agg", ercref.AGG_MODES)
def test_gradcheck_cov_losses_float64(name, kw, agg):
    """The selection is piecewise constant in logp; with the RNG reseeded in every evaluation and
    inputs away from every boundary (clip bounds, cov window, top-k ties, log r = 0) the finite
    differences see one smooth piece, which must include selected tokens."""
    logp, old, adv, mask = _inputs(11, B=4, T=10, spread=0.1)

    def f(lp):
        torch.manual_seed(0)
        return ercref.aggregate(ercref.LOSSES[name](lp, old, adv, mask, **kw)[0], mask, agg)

    torch.manual_seed(0)
    _, m = ercref.LOSSES[name](logp, old, adv, mask, **kw)
    assert float(m["cov/selected_frac"]) > 0
    assert gradcheck(f, (logp.detach().clone().requires_grad_(True),), eps=1e-6, atol=1e-8, rtol=1e-6)


# ----------------------------------------------------------------------------- bad hyper-parameters
@pytest.mark.parametrize("name,kw,arg", [
    ("clip_cov", dict(clip_cov_ratio=0.0), "clip_cov_ratio"),
    ("clip_cov", dict(clip_cov_ratio=-0.1), "clip_cov_ratio"),
    ("clip_cov", dict(clip_cov_ratio=1.5), "clip_cov_ratio"),
    ("clip_cov", dict(clip_cov_ratio=float("nan")), "clip_cov_ratio"),
    ("clip_cov", dict(clip_cov_lb=5.0, clip_cov_ub=1.0), "clip_cov_lb"),
    ("clip_cov", dict(clip_cov_lb=2.0, clip_cov_ub=2.0), "clip_cov_lb"),
    ("clip_cov", dict(clip_cov_lb=float("nan")), "clip_cov_lb"),
    ("clip_cov", dict(clip_cov_ub=float("inf")), "clip_cov_ub"),
    ("clip_cov", dict(eps_low=1.0), "eps_low"),
    ("clip_cov", dict(eps_high=0.0), "eps_high"),
    ("kl_cov", dict(kl_cov_ratio=0.0), "kl_cov_ratio"),
    ("kl_cov", dict(kl_cov_ratio=2.0), "kl_cov_ratio"),
    ("kl_cov", dict(ppo_kl_coef=-1.0), "ppo_kl_coef"),
    ("kl_cov", dict(ppo_kl_coef=float("inf")), "ppo_kl_coef"),
    ("kl_cov", dict(ppo_kl_coef=True), "ppo_kl_coef"),
])
def test_bad_hyperparameters_raise_naming_the_argument(name, kw, arg):
    logp, old, adv, mask = _inputs(0)
    with pytest.raises(ValueError, match=arg):
        ercref.LOSSES[name](logp, old, adv, mask, **kw)
    finite = {k: v for k, v in kw.items() if not isinstance(v, bool) and math.isfinite(v)}
    if finite == kw:   # the config runs the loss once when it is built: the value is refused then, named
        with pytest.raises(ValueError, match=f"loss_kwargs.{arg}"):
            ercref.PolicyLossConfig(loss=name, erc=False, nll_coef=0.0, loss_kwargs=kw)


def test_config_rejects_the_other_cov_losses_keywords():
    with pytest.raises(ValueError, match="kl_cov_ratio"):
        ercref.PolicyLossConfig(loss="clip_cov", loss_kwargs={"kl_cov_ratio": 0.1})
    with pytest.raises(ValueError, match="clip_cov_lb"):
        ercref.PolicyLossConfig(loss="kl_cov", loss_kwargs={"clip_cov_lb": 0.1})


# ----------------------------------------------------------------------------- ERC composes unchanged
@pytest.mark.parametrize("name,kw", [("clip_cov", dict(clip_cov_ratio=0.1, clip_cov_lb=0.0)), ("kl_cov", dict(kl_cov_ratio=0.1))])
def test_erc_wraps_the_cov_losses(name, kw):
    logp, old, adv, mask = _inputs(8, B=8, T=16)
    g = torch.Generator().manual_seed(1)
    old_ent = torch.rand(logp.shape, generator=g, dtype=F64) + 0.2
    ent = old_ent * (1 + 0.1 * torch.randn(logp.shape, generator=g, dtype=F64))
    rho = ent / old_ent
    clipped = ((rho <= 0.95) | (rho >= 1.05)) & mask
    out = {}
    for erc in (False, True):
        cfg = ercref.PolicyLossConfig(loss=name, loss_kwargs=kw, erc=erc, nll_coef=0.0)
        logp.grad = None
        torch.manual_seed(0)
        loss, m = ercref.compute_policy_loss(cfg, logp, old, adv, mask, ent, old_ent)
        loss.backward()
        out[erc] = (loss.detach(), logp.grad.clone(), m)
    assert torch.equal(out[True][0], out[False][0])            # same value (and the same random draw)
    assert torch.all(out[True][1][clipped] == 0) and (out[False][1][clipped] != 0).any()
    assert torch.equal(out[True][1][~clipped], out[False][1][~clipped])
    assert float(out[True][2]["erc/clip_frac"]) == pytest.approx(int(clipped.sum()) / int(mask.sum()))
    assert float(out[True][2]["cov/selected_frac"]) > 0
