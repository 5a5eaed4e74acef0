"""float64 torch.autograd.gradcheck (analytic vs finite-difference gradients) on every registered
loss with and without ERC, the aggregation modes, the KL estimators, positive_nll, the whole
objective, and the differentiable entropy.

Finite differences see the forward value only, so inputs are chosen where the analytic gradient
must equal the derivative of the value:
  * every log-ratio is at least 0.05 away from a clip kink (1 - eps, 1 + eps, c, the clamp at 20);
  * GPPO: no token on a gradient-preserving clipped side (there the gradient is, by design, not the
    derivative of the constant value; tests/test_losses.py checks it against its closed form);
  * CISPO: every weight clipped (an unclipped weight sg(r) moves with logp; same remark);
  * ERC: the function's variable is the vector of KEPT tokens' log-probs, the ERC-clipped tokens are
    held at their values (their gradient is exactly zero, tests/test_erc.py). For GSPO, whose tokens
    share a sequence ratio, ERC clips whole sequences.
"""
from __future__ import annotations

import pytest
import torch
from torch.autograd import gradcheck

import ercref

F64 = torch.float64
A_ROWS = [1.0, -1.5, 0.7]  # per-sequence advantages, both signs
# log-ratios away from every kink of ppo (0.8, 1.2), dapo (0.8, 1.28, c = 10) and dual_clip (c = 3)
SAFE = {
    "pos": [-1.5, -0.6, -0.05, 0.1, 0.6, 1.5, 2.5, -0.4],
    "neg": [-1.5, -0.6, -0.05, 0.1, 0.6, 1.5, 2.5, 0.9],
}
GPPO_SAFE = {"pos": [-1.5, -0.6, -0.05, 0.1, -0.4, 0.05, 0.15, -1.0], "neg": [-0.05, 0.1, 0.6, 1.5, 2.5, 0.9, 3.0, -0.1]}
CISPO_SAFE = {"pos": [-1.5, -0.6, 0.6, 1.5, -0.4, 2.5, 0.9, -1.0], "neg": [-1.5, -0.6, 0.6, 1.5, -0.4, 2.5, 0.9, -1.0]}
GSPO_ROW_SHIFT = [0.3, -0.3, 1e-4]  # sequence ratio clipped high, clipped low, inside (eps 3e-4 / 4e-4)


def _inputs(name: str, T: int = 8):
    gen = torch.Generator().manual_seed(0)
    A = torch.tensor(A_ROWS, dtype=F64)
    old = -0.5 - 3 * torch.rand(3, T, generator=gen, dtype=F64)
    if name == "gspo":
        noise = 0.05 * torch.randn(3, T, generator=gen, dtype=F64)
        delta = torch.tensor(GSPO_ROW_SHIFT, dtype=F64).unsqueeze(-1) + noise - noise.mean(-1, keepdim=True)
    else:
        table = {"gppo": GPPO_SAFE, "cispo": CISPO_SAFE}.get(name, SAFE)
        delta = torch.tensor([table["pos" if a > 0 else "neg"][:T] for a in A_ROWS], dtype=F64)
        delta = delta[:, torch.randperm(T, generator=gen)]
    mask = torch.ones(3, T, dtype=torch.bool)
    if name != "gspo":  # (GSPO's row shift is defined over all tokens of the row)
        mask[0, 3] = mask[2, 6] = False
    old = old - delta.clamp(min=0.0)            # logp = old + delta stays a log-probability (<= 0)
    return old + delta, old, A, mask


@pytest.mark.parametrize("agg_mode", ercref.AGG_MODES)
@pytest.mark.parametrize("name", sorted(ercref.LOSSES))
def test_gradcheck_every_loss_without_erc(name, agg_mode):
    logp, old, A, mask = _inputs(name)
    f = lambda lp: ercref.aggregate(ercref.LOSSES[name](lp, old, A, mask)[0], mask, agg_mode)  # noqa: E731
    assert gradcheck(f, (logp.requires_grad_(True),), eps=1e-6, atol=1e-8, rtol=1e-6)


def _erc_entropies(name: str, mask: torch.Tensor):
    """old entropy 1; new entropy 1.0 (kept) or 1.5 (clipped at beta 0.2)."""
    gen = torch.Generator().manual_seed(1)
    if name == "gspo":
        clipped = torch.tensor([[True], [False], [False]]).expand_as(mask)
    else:
        clipped = torch.rand(mask.shape, generator=gen) < 0.35
    old = torch.ones(mask.shape, dtype=F64)
    return torch.where(clipped, 1.5, 1.0).to(F64), old, ~clipped & mask


@pytest.mark.parametrize("name", sorted(ercref.LOSSES))
def test_gradcheck_every_loss_with_erc_on_the_kept_tokens(name):
    logp0, old, A, mask = _inputs(name)
    ent, old_ent, kept = _erc_entropies(name, mask)
    assert kept.any() and (mask & ~kept).any()
    idx = kept.nonzero(as_tuple=True)

    def f(x):
        lp = logp0.index_put(idx, x)  # ERC-clipped (and masked) tokens stay at their values
        per_tok, _ = ercref.LOSSES[name](lp, old, A, mask)
        per_tok, _ = ercref.apply_erc(per_tok, ent, old_ent, mask, 0.2, 0.2)
        return ercref.aggregate(per_tok, mask, "token-mean")

    assert gradcheck(f, (logp0[idx].clone().requires_grad_(True),), eps=1e-6, atol=1e-8, rtol=1e-6)


@pytest.mark.parametrize("agg_mode", ercref.AGG_MODES)
def test_gradcheck_full_objective_erc_nll_kl(agg_mode):
    logp0, old, A, mask = _inputs("dapo")
    ent, old_ent, kept = _erc_entropies("dapo", mask)
    ref = logp0 - 0.3
    rewards = torch.tensor([1.0, -1.0, 1.0], dtype=F64)
    idx = kept.nonzero(as_tuple=True)
    cfg = ercref.PolicyLossConfig(loss="dapo", erc=True, beta_low=0.2, beta_high=0.2, agg_mode=agg_mode,
                                  nll_coef=0.1, kl_coef=0.05, kl_estimator="k3", track_zero_grad=False)

    def f(x):
        # the NLL and KL terms are not ERC-masked: the clipped tokens are held fixed here so that the
        # finite differences only see tokens whose every term carries a gradient
        lp = logp0.index_put(idx, x)
        return ercref.compute_policy_loss(cfg, lp, old, A, mask, ent, old_ent, rewards, ref)[0]

    assert gradcheck(f, (logp0[idx].clone().requires_grad_(True),), eps=1e-6, atol=1e-8, rtol=1e-6)


@pytest.mark.parametrize("agg_mode", ercref.AGG_MODES)
def test_gradcheck_aggregation(agg_mode):
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(4, 6, generator=gen, dtype=F64, requires_grad=True)
    mask = torch.rand(4, 6, generator=gen) < 0.6
    mask[0] = False  # a sequence without response tokens
    mask[1, 0] = True
    assert gradcheck(lambda t: ercref.aggregate(t, mask, agg_mode, norm=5.0 if "norm" in agg_mode else None), (x,))


@pytest.mark.parametrize("estimator", ["k1", "k2", "k3"])
def test_gradcheck_kl_penalty(estimator):
    gen = torch.Generator().manual_seed(3)
    logp = -3 * torch.rand(3, 5, generator=gen, dtype=F64)
    ref = logp + 0.5 * torch.randn(3, 5, generator=gen, dtype=F64)
    assert gradcheck(lambda a, b: ercref.kl_penalty(a, b, estimator),
                     (logp.requires_grad_(True), ref.requires_grad_(True)))


def test_gradcheck_positive_nll():
    gen = torch.Generator().manual_seed(4)
    logp = -3 * torch.rand(4, 5, generator=gen, dtype=F64)
    mask = torch.rand(4, 5, generator=gen) < 0.7
    mask[:, 0] = True
    rewards = torch.tensor([1.0, 0.0, 1.0, -1.0], dtype=F64)
    assert gradcheck(lambda lp: ercref.positive_nll(lp, mask, rewards), (logp.requires_grad_(True),))


@pytest.mark.parametrize("temperature,chunk_rows", [(1.0, 2), (0.7, None), (1.3, 5)])
def test_gradcheck_entropy_from_logits(temperature, chunk_rows):
    logits = torch.randn(2, 3, 11, generator=torch.Generator().manual_seed(5), dtype=F64)
    f = lambda z: ercref.entropy_from_logits(z, temperature=temperature, chunk_rows=chunk_rows)  # noqa: E731
    assert gradcheck(f, (logits.requires_grad_(True),))


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_gradcheck_logprobs_and_entropy_with_entropy_grad(temperature):
    """Both outputs differentiable: each output's Jacobian (the other's upstream gradient None),
    then both upstream gradients at once (w_lp * logp + w_H * H). 7 rows, chunk 3: a partial chunk."""
    gen = torch.Generator().manual_seed(6)
    logits = torch.randn(7, 11, generator=gen, dtype=F64).requires_grad_(True)
    labels = torch.randint(0, 11, (7,), generator=gen)
    w_lp, w_H = torch.randn(7, generator=gen, dtype=F64), torch.randn(7, generator=gen, dtype=F64)
    f = lambda z: ercref.logprobs_and_entropy(z, labels, temperature, chunk_rows=3, entropy_grad=True)  # noqa: E731
    assert gradcheck(f, (logits,))
    assert gradcheck(lambda z: (lambda lp, H: w_lp * lp + w_H * H)(*f(z)), (logits,))


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_gradcheck_fused_head_with_entropy_grad(temperature):
    from ercref.fused_head import fused_logprobs_and_entropy

    gen = torch.Generator().manual_seed(7)
    h = torch.randn(9, 5, generator=gen, dtype=F64).requires_grad_(True)
    W = (0.5 * torch.randn(13, 5, generator=gen, dtype=F64)).requires_grad_(True)
    labels = torch.randint(0, 13, (9,), generator=gen)
    w_lp, w_H = torch.randn(9, generator=gen, dtype=F64), torch.randn(9, generator=gen, dtype=F64)
    f = lambda h, W: fused_logprobs_and_entropy(h, W, labels, temperature, chunk_rows=4, entropy_grad=True)  # noqa: E731
    assert gradcheck(f, (h, W))
    assert gradcheck(lambda h, W: (lambda lp, H: w_lp * lp + w_H * H)(*f(h, W)), (h, W))


# ----------------------------------------------------------------------------- auxiliary terms in the objective
def _agg_weights(mask: torch.Tensor, agg_mode: str, norm: float | None) -> torch.Tensor:
    """d agg(x) / d x as a (B, T) float64 tensor: every mode is linear in x."""
    m = mask.to(F64)
    if agg_mode == "token-mean":
        return m / m.sum()
    n = m.sum(-1, keepdim=True)
    seqs = float((n > 0).sum())
    if agg_mode == "seq-mean-token-mean":
        return torch.where(n > 0, m / n.clamp(min=1), torch.zeros_like(m)) / seqs
    return m / (seqs * (mask.shape[-1] if norm is None else norm))


def _aux_batch(dtype):
    gen = torch.Generator().manual_seed(9)
    B, T = 4, 7
    logp = (-3 * torch.rand(B, T, generator=gen, dtype=F64)).to(dtype).requires_grad_(True)
    ref = logp.detach() + 0.8 * torch.randn(B, T, generator=gen, dtype=F64).to(dtype)
    old_ent = (0.2 + torch.rand(B, T, generator=gen, dtype=F64)).to(dtype)
    ent = (old_ent * (1 + 0.3 * torch.randn(B, T, generator=gen, dtype=F64).to(dtype))).abs().requires_grad_(True)
    mask = torch.rand(B, T, generator=gen) < 0.7
    mask[0] = False  # a sequence without response tokens
    mask[1:, 0] = True
    return logp, ref, ent, old_ent, mask


@pytest.mark.parametrize("agg_mode,norm", [("token-mean", None), ("seq-mean-token-mean", None),
                                           ("seq-mean-token-sum-norm", None), ("seq-mean-token-sum-norm", 3.0)])
def test_entropy_bonus_gradient_is_minus_coef_times_aggregation_gradient(agg_mode, norm):
    logp, _, ent, old_ent, mask = _aux_batch(torch.float32)
    coef = 0.3
    # ERC on: the entropy also builds the mask, which must add no gradient of its own
    cfg = ercref.PolicyLossConfig(loss="dapo", erc=True, agg_mode=agg_mode, agg_norm=norm, nll_coef=0.0,
                                  entropy_coef=coef)
    loss, _ = ercref.compute_policy_loss(cfg, logp, logp.detach() - 0.1, torch.randn(4), mask, ent, old_ent)
    (g,) = torch.autograd.grad(loss, ent)
    expected = -coef * _agg_weights(mask, agg_mode, norm)
    torch.testing.assert_close(g.to(F64), expected, rtol=1e-6, atol=1e-9)
    assert torch.all(g[~mask] == 0)


@pytest.mark.parametrize("estimator", ["k1", "k2", "k3"])
@pytest.mark.parametrize("agg_mode", ercref.AGG_MODES)
def test_kl_term_gradient_wrt_logp_matches_a_float64_reference(estimator, agg_mode):
    logp, ref, ent, old_ent, mask = _aux_batch(torch.float32)
    coef = 0.2
    cfg = ercref.PolicyLossConfig(loss="pg", erc=True, agg_mode=agg_mode, nll_coef=0.0, kl_coef=coef,
                                  kl_estimator=estimator)
    zero_adv = torch.zeros(4)  # the policy term -A r then has exactly zero gradient: only KL remains
    loss, m = ercref.compute_policy_loss(cfg, logp, logp.detach(), zero_adv, mask, ent.detach(), old_ent,
                                         ref_logp=ref)
    (g,) = torch.autograd.grad(loss, logp)
    d = ref.to(F64) - logp.detach().to(F64)  # KL(pi || ref) estimators with d = log ref - log pi
    dk = {"k1": torch.ones_like(d), "k2": -d, "k3": 1 - d.exp()}[estimator]  # d k / d logp
    kl = {"k1": -d, "k2": 0.5 * d * d, "k3": d.exp() - d - 1}[estimator]
    w = _agg_weights(mask, agg_mode, None)
    torch.testing.assert_close(g.to(F64), coef * w * dk, rtol=1e-5, atol=1e-7)
    assert float(m["kl/ref"]) == pytest.approx(float((w * kl).sum()), rel=1e-5)
