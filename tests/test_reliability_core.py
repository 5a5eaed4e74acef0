"""Issue 13, items 4-7 (found by fuzzing the public API), one section per class of failure:

  4. half precision: bf16 / fp16 inputs are computed in fp32 (mask, ratio, losses, KL, NLL)
  5. masked vocabularies: -inf logits everywhere (the compiled path too); an all -inf row and a
     label at a -inf logit get their own messages
  6. a silent zero gradient: old_logp / old_entropy / ref_logp carrying a graph are refused
  7. NaN in, NaN out: aggregate, kl_penalty, positive_nll, group_advantages check their inputs

Each section has the reported cases and a hypothesis property over their neighbours; every test
here failed on the code before the fix. The value checks of one call are read back with a single
host sync (last section).
"""
from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import ercref
from ercref import PolicyLossConfig as Cfg

PROPS = settings(max_examples=60, deadline=None, derandomize=True)
HALF = [torch.bfloat16, torch.float16]
NAN, INF = float("nan"), float("inf")
shapes = st.tuples(st.integers(1, 4), st.integers(1, 6))


# ============================================================================ 4. half precision
def _same_mask(H: torch.Tensor, H_old: torch.Tensor, mask: torch.Tensor, bl: float, bh: float) -> None:
    """erc_masks on half entropies == erc_masks on fp32 entropies holding the same values."""
    got = ercref.erc_masks(H, H_old, mask, bl, bh)
    ref = ercref.erc_masks(H.float(), H_old.float(), mask, bl, bh)
    assert got[3].dtype == torch.float32
    for g, r, what in zip(got, ref, ("keep", "clipped_low", "clipped_high", "rho")):
        assert torch.equal(g, r), what


def test_bf16_entropy_ratio_just_below_the_bound_is_kept_as_in_fp32():
    # rho = 1.046875 (exact in bf16) < 1.05: kept in fp32; bf16 arithmetic compared it with 1.05 rounded
    # to bf16 = 1.046875 and clipped it (2.9 % of the fuzzed tokens differed from the fp32 mask)
    H = torch.tensor([[1.046875, 2.09375, 0.5234375]], dtype=torch.bfloat16)
    H_old = torch.tensor([[1.0, 2.0, 0.5]], dtype=torch.bfloat16)
    keep, low, high, rho = ercref.erc_masks(H, H_old, torch.ones(1, 3, dtype=torch.bool))
    assert keep.all() and not high.any() and not low.any()
    _same_mask(H, H_old, torch.ones(1, 3, dtype=torch.bool), 0.05, 0.05)


def test_fp16_zero_entropies_give_ratio_one_not_nan():
    # in fp16 the 1e-8 guard underflows to 0: rho was 0 / 0 = NaN and the token was "clipped" on both sides
    z = torch.zeros(2, 3, dtype=torch.float16)
    keep, low, high, rho = ercref.erc_masks(z, z, torch.ones(2, 3))
    assert torch.equal(rho, torch.ones(2, 3)) and keep.all() and not (low | high).any()
    _, m = ercref.apply_erc(torch.zeros(2, 3, dtype=torch.float16), z, z, torch.ones(2, 3))
    assert ercref.metrics_to_floats(m) == {"erc/clip_frac": 0.0, "erc/clip_frac_low": 0.0,
                                           "erc/clip_frac_high": 0.0, "entropy/ratio_mean": 1.0}


half_entropies = st.one_of(st.just(0.0), st.floats(0.0, 1e-5), st.floats(0.0, 12.0))


@PROPS
@given(st.sampled_from(HALF), shapes, st.data(), st.floats(1e-3, 0.5), st.floats(1e-3, 2.0))
def test_half_entropies_give_exactly_the_fp32_mask(half, shape, data, bl, bh):
    H_old = data.draw(arrays(np.float64, shape, elements=half_entropies))
    # the current entropy: near either bound of the old one (where rounding decides), or unrelated
    rel = data.draw(arrays(np.float64, shape, elements=st.one_of(
        st.floats(1 - bl - 0.02, 1 - bl + 0.02), st.floats(1 + bh - 0.02, 1 + bh + 0.02), st.floats(0.0, 3.0))))
    mask = torch.from_numpy(data.draw(arrays(np.bool_, shape)))
    H_old = torch.from_numpy(H_old).to(half)
    H = (H_old.float() * torch.from_numpy(rel).float()).to(half)
    _same_mask(H, H_old, mask, bl, bh)


def _loss_args(half, logp, old, A, mask):
    lp16 = torch.tensor(logp, dtype=half, requires_grad=True)
    lp32 = lp16.detach().float().requires_grad_(True)
    old16, A16 = torch.tensor(old, dtype=half), torch.tensor(A, dtype=half)
    return (lp16, old16, A16), (lp32, old16.float(), A16.float()), torch.tensor(mask)


@pytest.mark.parametrize("name", sorted(ercref.LOSSES))
@pytest.mark.parametrize("A", [-1.0, 1.0])
def test_fp16_logprobs_with_a_large_log_ratio_give_the_fp32_loss_not_inf(name, A):
    # logp - old_logp = 15: exp(15) = 3.3e6 overflows fp16 (max 65504); every loss returned inf / NaN
    a16, a32, mask = _loss_args(torch.float16, [[0.0, -1.0]], [[-15.0, -1.0]], [A], [[True, True]])
    p16, _ = ercref.LOSSES[name](*a16, mask)
    p32, _ = ercref.LOSSES[name](*a32, mask)
    assert p16.dtype == torch.float32 and torch.isfinite(p16).all() and torch.equal(p16, p32)


@PROPS
@given(st.sampled_from(HALF), st.sampled_from(sorted(ercref.LOSSES)), shapes, st.data())
def test_every_loss_on_half_inputs_equals_the_fp32_loss_and_gradient(half, name, shape, data):
    logp = data.draw(arrays(np.float64, shape, elements=st.floats(-30.0, 0.0)))
    shift = data.draw(arrays(np.float64, shape, elements=st.one_of(st.floats(-0.3, 0.3), st.floats(-25.0, 25.0))))
    A = data.draw(arrays(np.float64, shape[:1], elements=st.floats(-5.0, 5.0)))
    mask = data.draw(arrays(np.bool_, shape))
    mask[0, 0] = True
    logp = logp - np.clip(shift, 0.0, None)                        # old_logp = logp + shift stays <= 0
    a16, a32, mask = _loss_args(half, logp.tolist(), (logp + shift).tolist(), A.tolist(), mask.tolist())
    p16, m16 = ercref.LOSSES[name](*a16, mask)
    p32, m32 = ercref.LOSSES[name](*a32, mask)
    assert p16.dtype == torch.float32 and torch.equal(p16, p32)
    assert ercref.metrics_to_floats(m16) == ercref.metrics_to_floats(m32)
    ercref.aggregate(p16, mask).backward()
    ercref.aggregate(p32, mask).backward()
    assert a16[0].grad.dtype == half and torch.equal(a16[0].grad, a32[0].grad.to(half))


@PROPS
@given(st.sampled_from(HALF), st.sampled_from(sorted(ercref.LOSSES)), st.sampled_from(ercref.AGG_MODES),
       st.integers(0, 2**31 - 1))
def test_compute_policy_loss_on_half_inputs_equals_fp32_with_every_term(half, name, agg_mode, seed):
    """ERC, NLL, KL and the entropy bonus on bf16 / fp16 inputs: the loss and every metric are the fp32
    ones of the same values, bit for bit, and the half leaves get the fp32 gradient cast once."""
    gen = torch.Generator().manual_seed(seed)
    B, T = 4, 6
    vals = {
        "logp": -4 * torch.rand(B, T, generator=gen),
        "entropy": 3 * torch.rand(B, T, generator=gen),
        "advantages": torch.randn(B, generator=gen),
    }
    delta = 0.3 * torch.randn(B, T, generator=gen)
    vals["logp"] = vals["logp"] - delta.clamp(min=0.0)             # old_logp = logp + delta stays <= 0
    vals["old_logp"] = vals["logp"] + delta
    vals["ref_logp"] = vals["logp"] - 0.2 * torch.rand(B, T, generator=gen)
    vals["old_entropy"] = vals["entropy"] * (0.9 + 0.2 * torch.rand(B, T, generator=gen))
    mask = torch.rand(B, T, generator=gen) < 0.8
    mask[0, 0] = True
    rewards = torch.tensor([1.0, 0.0, 1.0, -1.0])
    cfg = Cfg(loss=name, agg_mode=agg_mode, nll_coef=0.1, kl_coef=0.05, entropy_coef=0.01)
    out = {}
    for dtype in (half, torch.float32):
        t = {k: v.to(half).to(dtype) for k, v in vals.items()}  # same (half-representable) values
        t["logp"].requires_grad_(True)
        t["entropy"].requires_grad_(True)
        loss, m = ercref.compute_policy_loss(cfg, t["logp"], t["old_logp"], t["advantages"], mask, t["entropy"],
                                             t["old_entropy"], rewards.to(dtype), t["ref_logp"])
        loss.backward()
        out[dtype] = loss, ercref.metrics_to_floats(m), t["logp"].grad, t["entropy"].grad
    (l16, m16, g16, e16), (l32, m32, g32, e32) = out[half], out[torch.float32]
    assert l16.dtype == torch.float32 and torch.equal(l16, l32) and m16 == m32
    assert g16.dtype == half and torch.equal(g16, g32.to(half)) and torch.equal(e16, e32.to(half))


# ============================================================================ 5. masked vocabularies
def _masked_logits():
    gen = torch.Generator().manual_seed(0)
    z = 3 * torch.randn(3, 4, 11, generator=gen)
    z[0, 1, :4] = -INF                        # banned tokens
    z[2, 3, ::2] = -INF                       # a strided mask
    z[1, 0, torch.topk(z[1, 0], 8, largest=False).indices] = -INF  # top-k filtered (k = 3)
    z[1, 1, 1:] = -INF                        # one live token: entropy 0
    z[:, :, 10] = -INF                        # vocabulary padding
    return z


def _reference_entropy(z):
    z = z.double()
    logp = torch.log_softmax(z, -1)
    return -(logp.exp() * torch.where(torch.isinf(z), 0.0, logp)).sum(-1)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")  # torch.compile's own
def test_compiled_entropy_accepts_masked_vocabularies_and_names_an_all_masked_row():
    """The one test of the compiled path (slow: the first call compiles)."""
    z = _masked_logits()
    got = ercref.compiled_entropy_from_logits(z, chunk_rows=5)
    torch.testing.assert_close(got, ercref.entropy_from_logits(z), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got.double(), _reference_entropy(z), rtol=1e-5, atol=1e-6)
    assert got[1, 1] == 0
    z[2, 1] = -INF
    with pytest.raises(ValueError, match=r"^logits\[2, 1\] is entirely -inf.*at least one finite logit"):
        ercref.compiled_entropy_from_logits(z)


FNS = ["entropy_from_logits", "logprobs_from_logits", "logprobs_and_entropy"]


def _call(fn, logits, labels):
    f = getattr(ercref, fn)
    return f(logits) if fn == "entropy_from_logits" else f(logits, labels)


@pytest.mark.parametrize("fn", FNS)
def test_an_all_minus_inf_row_gets_its_own_message(fn):
    z = _masked_logits()
    z[1, 2] = -INF
    with pytest.raises(ValueError, match=r"^logits\[1, 2\] is entirely -inf"):
        _call(fn, z, torch.zeros(3, 4, dtype=torch.int64))


@pytest.mark.parametrize("fn", ["logprobs_from_logits", "logprobs_and_entropy"])
def test_a_label_at_a_minus_inf_logit_gets_its_own_message(fn):
    z = _masked_logits()
    labels = torch.full((3, 4), 4)
    labels[0, 1] = 2  # z[0, 1, :4] = -inf
    with pytest.raises(ValueError, match=r"^labels\[0, 1\] = 2 .*-inf logit.*vocabulary mask"):
        _call(fn, z, labels)


@st.composite
def masked_logits(draw):
    """(B, T, V) logits, each row unmasked / partly masked / all but one masked / all masked."""
    B, T, V = draw(st.integers(1, 3)), draw(st.integers(1, 3)), draw(st.integers(1, 6))
    z = draw(arrays(np.float64, (B, T, V), elements=st.floats(-30, 30)))
    kind = draw(arrays(np.int8, (B, T), elements=st.sampled_from([0, 1, 1, 2, 3])))
    for b in range(B):
        for t in range(T):
            if kind[b, t] == 1:
                z[b, t, draw(arrays(np.bool_, V))] = -np.inf
            elif kind[b, t] == 2:
                keep = draw(st.integers(0, V - 1))
                z[b, t, [v for v in range(V) if v != keep]] = -np.inf
            elif kind[b, t] == 3:
                z[b, t] = -np.inf
    labels = draw(arrays(np.int64, (B, T), elements=st.integers(0, V - 1)))
    return torch.from_numpy(z).float(), torch.from_numpy(labels)


@PROPS
@given(masked_logits(), st.sampled_from(FNS), st.sampled_from([1.0, 0.7]))
def test_masked_logits_give_the_reference_or_a_message_naming_the_first_bad_row(zl, fn, tau):
    z, labels = zl
    lead = z.shape[:-1]
    dead = (z == -INF).all(-1)
    at_label = z.gather(-1, labels[..., None]).squeeze(-1) == -INF
    kw = {"temperature": tau}
    call = (lambda: ercref.entropy_from_logits(z, **kw)) if fn == "entropy_from_logits" else \
        (lambda: getattr(ercref, fn)(z, labels, **kw))
    if dead.any():
        b, t = np.unravel_index(int(torch.nonzero(dead.reshape(-1))[0]), lead)
        with pytest.raises(ValueError, match=rf"^logits\[{b}, {t}\] is entirely -inf"):
            call()
    elif at_label.any() and fn != "entropy_from_logits":
        b, t = np.unravel_index(int(torch.nonzero(at_label.reshape(-1))[0]), lead)
        with pytest.raises(ValueError, match=rf"^labels\[{b}, {t}\] = {int(labels[b, t])} .*-inf logit"):
            call()
    else:
        out = call()
        ref_logp = torch.log_softmax(z.double() / tau, -1)
        ref_h = -(ref_logp.exp() * torch.where(torch.isinf(z), 0.0, ref_logp)).sum(-1)
        ent = out if fn == "entropy_from_logits" else (out[1] if fn == "logprobs_and_entropy" else None)
        if ent is not None:
            torch.testing.assert_close(ent.double(), ref_h, rtol=1e-5, atol=1e-5)
        if fn != "entropy_from_logits":
            lp = out if fn == "logprobs_from_logits" else out[0]
            torch.testing.assert_close(lp.double(), ref_logp.gather(-1, labels[..., None]).squeeze(-1),
                                       rtol=1e-5, atol=1e-5)


# ============================================================================ 6. a silent zero gradient
def _batch(B=2, T=3):
    gen = torch.Generator().manual_seed(0)
    logp = (-torch.rand(B, T, generator=gen)).requires_grad_(True)
    return dict(logp=logp, old_logp=logp.detach() - 0.1, advantages=torch.tensor([1.0, -1.0]),
                response_mask=torch.ones(B, T), entropy=torch.full((B, T), 1.0), old_entropy=torch.full((B, T), 1.02),
                rewards=torch.tensor([1.0, 0.0]), ref_logp=logp.detach() - 0.05)


def _objective(d, **cfg):
    cfg = Cfg(**{"loss": "dapo", "kl_coef": 0.1, **cfg})
    return ercref.compute_policy_loss(cfg, d["logp"], d["old_logp"], d["advantages"], d["response_mask"],
                                      d["entropy"], d["old_entropy"], d["rewards"], d["ref_logp"])


ENTRIES = {  # every public entry taking a constant of the rollout / the reference, with the arguments it takes
    **{f"LOSSES[{n!r}]": ((lambda n: lambda d: ercref.LOSSES[n](d["logp"], d["old_logp"], d["advantages"],
                                                                 d["response_mask"]))(n), ("old_logp",))
       for n in sorted(ercref.LOSSES)},
    "compute_policy_loss": (_objective, ("old_logp", "old_entropy", "ref_logp")),
    "compute_policy_loss(erc=False, kl_coef=0)": (lambda d: _objective(d, erc=False, kl_coef=0.0),
                                                  ("old_logp", "old_entropy", "ref_logp")),
    "apply_erc": (lambda d: ercref.apply_erc(d["logp"] * 2, d["entropy"], d["old_entropy"], d["response_mask"]),
                  ("old_entropy",)),
    "erc_masks": (lambda d: ercref.erc_masks(d["entropy"], d["old_entropy"], d["response_mask"]), ("old_entropy",)),
    "entropy_ratio": (lambda d: ercref.entropy_ratio(d["entropy"], d["old_entropy"]), ("old_entropy",)),
}


@pytest.mark.parametrize("entry", [e for e, (_, args) in ENTRIES.items() if "old_logp" in args])
def test_old_logp_equal_to_logp_with_its_graph_is_refused(entry):
    """old_logp = logp (instead of logp.detach()): ratio = exp(logp - old_logp) has zero gradient, the policy
    gradient was exactly 0 and nothing said so."""
    d = _batch()
    d["old_logp"] = d["logp"]
    with pytest.raises(ValueError, match=r"^old_logp requires grad.*Pass old_logp\.detach\(\)"):
        ENTRIES[entry][0](d)
    d["old_logp"] = d["logp"].detach()  # the fix the message names: accepted, and the gradient is not 0
    loss = ENTRIES[entry][0](d)[0]
    (g,) = torch.autograd.grad(loss.sum(), d["logp"])
    assert g.abs().sum() > 0


GRAPH_CARRIERS = {  # ways a constant ends up carrying the current policy's graph
    "itself": lambda x, src: src,
    "clone": lambda x, src: src.clone(),
    "shifted": lambda x, src: src * 0 + x,
    "a view": lambda x, src: src.view(src.shape),
    "a where": lambda x, src: torch.where(src > 1e9, src, x),
    "an upcast": lambda x, src: src.to(torch.bfloat16).float() * 0 + x,
    "a leaf": lambda x, src: x.clone().requires_grad_(True),
}


@PROPS
@given(st.sampled_from(sorted(ENTRIES)), st.data(), st.sampled_from(sorted(GRAPH_CARRIERS)))
def test_a_constant_input_carrying_a_graph_is_refused_in_every_entry(entry, data, how):
    fn, args = ENTRIES[entry]
    arg = data.draw(st.sampled_from(args))
    d = _batch()
    src = d["logp"] if arg != "old_entropy" else (d["logp"] * 0 + 1.0)  # a current quantity with a graph
    d[arg] = GRAPH_CARRIERS[how](d[arg], src)
    with pytest.raises(ValueError, match=rf"^{arg} requires grad.*{arg}\.detach\(\)"):
        fn(d)
    d[arg] = d[arg].detach()
    fn(d)


# ============================================================================ 7. NaN in, NaN out
M = torch.tensor([[1, 1, 0], [1, 0, 0]])


@pytest.mark.parametrize("call,match", [
    (lambda: ercref.aggregate(torch.tensor([[1.0, NAN, 0.0], [0.0, 0.0, 0.0]]), M), r"^per_token_loss .*\[0, 1\]"),
    (lambda: ercref.aggregate(torch.tensor([[1.0, 2.0, 0.0], [-INF, 0.0, 0.0]]), M, "seq-mean-token-mean"),
     r"^per_token_loss .*\[1, 0\]"),
    (lambda: ercref.aggregate(torch.ones(2, 3), M, "seq-mean-token-sum-norm", INF), r"^norm must be a finite"),
    (lambda: ercref.aggregate(torch.ones(6), M.reshape(-1)), r"^per_token_loss must be 2-D"),
    (lambda: ercref.kl_penalty(torch.full((2, 3), NAN), torch.zeros(2, 3)), r"^logp .*\[0, 0\]"),
    (lambda: ercref.kl_penalty(torch.zeros(2, 3), torch.tensor([[0.0, 0, 0], [0, 0, -INF]])), r"^ref_logp .*\[1, 2\]"),
    (lambda: ercref.positive_nll(torch.full((2, 3), NAN), torch.ones(2, 3), torch.ones(2)), r"^logp .*\[0, 0\]"),
    (lambda: ercref.group_advantages(torch.ones(4), 4, eps=0.0), r"^eps must be a finite number > 0"),
    (lambda: ercref.group_advantages(torch.tensor([0.0, 1.0]), 2, eps=-1.0), r"^eps must be a finite number > 0"),
    (lambda: ercref.group_advantages(torch.tensor([1.0, NAN, 0.0, 0.0]), 2), r"^rewards .*\[1\]: nan"),
    (lambda: ercref.group_advantages(torch.tensor([3e38, 3e38]), 2), r"^rewards give non-finite advantages"),
])
def test_aggregation_auxiliary_and_advantages_check_their_inputs(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_an_overflowing_loss_is_an_error_not_inf():
    """Finite inputs whose per-token loss overflows fp32 (|A| r > 3.4e38) were returned as inf."""
    d = _batch()
    d["advantages"] = torch.tensor([3e38, -3e38])
    d["old_logp"] = d["old_logp"] - 1.0
    for call in (lambda: ercref.LOSSES["pg"](d["logp"], d["old_logp"], d["advantages"], d["response_mask"]),
                 lambda: _objective(d, loss="pg")):
        with pytest.raises(ValueError, match=r"^the per-token loss of 'pg' contains NaN or inf.*every input is finite"):
            call()


POKE_CASES = {  # entry -> (call(d), the tensor arguments it checks, whether masked positions may hold anything)
    "aggregate": (lambda d: ercref.aggregate(d["per_token_loss"], d["response_mask"], d["mode"]), ["per_token_loss"]),
    "kl_penalty": (lambda d: ercref.kl_penalty(d["logp"], d["ref_logp"]), ["logp", "ref_logp"]),
    "positive_nll": (lambda d: ercref.positive_nll(d["logp"], d["response_mask"], d["rewards"]), ["logp", "rewards"]),
    "group_advantages": (lambda d: ercref.group_advantages(d["rewards"], 2), ["rewards"]),
    "compute_policy_loss": (lambda d: _objective(d, agg_mode=d["mode"]),
                            ["logp", "old_logp", "advantages", "entropy", "old_entropy", "rewards", "ref_logp"]),
}


@PROPS
@given(st.sampled_from(sorted(POKE_CASES)), st.data(), st.sampled_from([NAN, INF, -INF]),
       st.sampled_from(ercref.AGG_MODES))
def test_a_non_finite_entry_is_named_with_its_position_in_every_entry(entry, data, value, mode):
    fn, args = POKE_CASES[entry]
    d = _batch(B=2, T=3)
    d["per_token_loss"], d["mode"] = torch.randn(2, 3, generator=torch.Generator().manual_seed(1)), mode
    d["response_mask"] = torch.tensor(data.draw(arrays(np.bool_, (2, 3))))
    d["response_mask"][0, 0] = True
    out = fn(d)  # clean inputs: accepted, finite
    assert all(torch.isfinite(t).all() for t in (out if isinstance(out, tuple) else (out,)) if torch.is_tensor(t))
    arg = data.draw(st.sampled_from(args))
    x = d[arg].detach().clone()
    positions = torch.nonzero(d["response_mask"]) if arg == "per_token_loss" else torch.nonzero(torch.ones_like(x))
    pos = tuple(positions[data.draw(st.integers(0, len(positions) - 1))].tolist())
    x[pos] = value
    d[arg] = x.requires_grad_(d[arg].requires_grad)
    where = "[" + ", ".join(map(str, pos)) + "]"
    with pytest.raises(ValueError, match=rf"^{arg} contains NaN or inf.*index {re.escape(where)}"):
        fn(d)


# ============================================================================ one host sync per call
def test_compute_policy_loss_reads_all_its_checks_back_with_one_host_sync(monkeypatch):
    """Before: one bool(tensor) per check (10 syncs for DAPO + ERC, 16 with NLL, KL and entropy bonus)."""
    d = _batch(4, 6)
    d["advantages"], d["rewards"] = torch.tensor([1.0, -1.0, 0.5, 0.0]), torch.tensor([1.0, 0.0, 1.0, 0.0])
    d["entropy"] = torch.full((4, 6), 1.0, requires_grad=True)
    d["old_entropy"] = torch.full((4, 6), 1.02)
    seen = []
    for meth in ("tolist", "item", "__bool__", "__float__", "__int__", "__index__"):
        real = getattr(torch.Tensor, meth)
        monkeypatch.setattr(torch.Tensor, meth, (lambda real, meth: lambda self, *a: seen.append(meth) or real(self, *a))(
            real, meth))
    for cfg in (dict(), dict(nll_coef=0.1, kl_coef=0.05, entropy_coef=0.01)):
        seen.clear()
        loss, m = _objective(d, **cfg)
        assert seen == ["tolist"], cfg
    monkeypatch.undo()
    assert math.isfinite(float(loss.detach()))
