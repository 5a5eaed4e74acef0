"""Bad input raises a ValueError that names the offending argument, never a silent NaN."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import ercref
from ercref import PolicyLossConfig as Cfg

B, T = 2, 3
NAN, INF = float("nan"), float("inf")


def ok():
    """A valid fp32 batch: logp, old_logp, advantages, mask, entropy, old_entropy."""
    gen = torch.Generator().manual_seed(0)
    logp = -torch.rand(B, T, generator=gen)
    return dict(logp=logp, old_logp=logp - 0.1, advantages=torch.tensor([1.0, -1.0]),
                response_mask=torch.ones(B, T), entropy=torch.full((B, T), 1.0), old_entropy=torch.full((B, T), 1.1))


def with_(**changes):
    d = ok()
    for k, v in changes.items():
        d[k] = v(d[k]) if callable(v) else v
    return d


def poke(value):
    """Copy of a tensor with one entry set to value."""
    def f(x):
        x = x.clone()
        x.view(-1)[1] = value
        return x
    return f


def loss_call(name="dapo", **changes):
    d = with_(**changes)
    return lambda: ercref.LOSSES[name](d["logp"], d["old_logp"], d["advantages"], d["response_mask"])


def objective_call(cfg=None, **changes):
    d = with_(**changes)
    cfg = cfg or Cfg(loss="dapo", nll_coef=0.0)
    return lambda: ercref.compute_policy_loss(cfg, d["logp"], d["old_logp"], d["advantages"], d["response_mask"],
                                              d["entropy"], d["old_entropy"])


def erc_call(beta_low=0.05, beta_high=0.05, **changes):
    d = with_(**changes)
    return lambda: ercref.apply_erc(d["logp"], d["entropy"], d["old_entropy"], d["response_mask"], beta_low, beta_high)


POLICY_INPUT_CASES = [
    # (argument named in the message, changes)
    ("old_logp", dict(old_logp=torch.zeros(B, T + 1))),
    ("advantages", dict(advantages=torch.zeros(B + 1))),
    ("advantages", dict(advantages=torch.zeros(B, T + 1))),
    ("response_mask", dict(response_mask=torch.ones(B, T + 1))),
    ("response_mask", dict(response_mask=torch.zeros(B, T))),              # all-masked batch
    ("response_mask", dict(response_mask=torch.full((B, T), 2.0))),        # not 0/1
    ("^logp", dict(logp=torch.zeros(B, T, dtype=torch.int64))),
    ("^logp", dict(logp=torch.zeros(B * T))),                              # not (B, T)
    ("old_logp", dict(old_logp=torch.zeros(B, T, dtype=torch.int32))),
    ("advantages", dict(advantages=torch.tensor([1, -1]))),
    ("^logp", dict(logp=poke(NAN))),
    ("^logp", dict(logp=poke(INF))),
    ("old_logp", dict(old_logp=poke(-INF))),
    ("advantages", dict(advantages=poke(NAN))),
]


@pytest.mark.parametrize("name", sorted(ercref.LOSSES))
@pytest.mark.parametrize("arg,changes", POLICY_INPUT_CASES)
def test_every_loss_rejects_bad_policy_inputs(name, arg, changes):
    with pytest.raises(ValueError, match=arg):
        loss_call(name, **changes)()


@pytest.mark.parametrize("arg,changes", POLICY_INPUT_CASES + [
    ("^entropy", dict(entropy=poke(NAN))),
    ("^entropy", dict(entropy=poke(INF))),
    ("old_entropy", dict(old_entropy=poke(NAN))),
    ("old_entropy", dict(old_entropy=poke(-INF))),
    ("^entropy", dict(entropy=torch.ones(B, T, dtype=torch.int64))),
    ("old_entropy", dict(old_entropy=torch.ones(B, T, dtype=torch.int64))),
    ("entropy", dict(entropy=torch.ones(B, T + 1))),
    ("entropy", dict(entropy=torch.ones(B, 1))),                          # would broadcast silently
    ("old_entropy", dict(old_entropy=torch.ones(B, T + 1))),
    ("^entropy", dict(entropy=None)),                                     # ERC needs the entropies
    ("old_entropy", dict(old_entropy=None)),
])
def test_compute_policy_loss_rejects_bad_inputs(arg, changes):
    with pytest.raises(ValueError, match=arg):
        objective_call(**changes)()


@pytest.mark.parametrize("arg,changes", [
    ("entropy", dict(entropy=torch.ones(B, T + 1))),
    ("entropy", dict(entropy=poke(NAN))),
    ("old_entropy", dict(old_entropy=poke(INF))),
    ("old_entropy", dict(old_entropy=torch.ones(B, 1))),
])
def test_entropies_are_checked_even_without_erc(arg, changes):
    with pytest.raises(ValueError, match=arg):
        objective_call(Cfg(loss="dapo", erc=False, nll_coef=0.0), **changes)()


@pytest.mark.parametrize("arg,beta_low,beta_high", [
    ("beta_low", 0.0, 0.05), ("beta_low", -0.1, 0.05), ("beta_low", 1.0, 0.05), ("beta_low", 1.5, 0.05),
    ("beta_low", NAN, 0.05), ("beta_high", 0.05, 0.0), ("beta_high", 0.05, -1.0), ("beta_high", 0.05, NAN),
    ("beta_high", 0.05, INF),
])
def test_beta_out_of_range(arg, beta_low, beta_high):
    with pytest.raises(ValueError, match=arg):
        erc_call(beta_low, beta_high)()
    with pytest.raises(ValueError, match=arg):
        Cfg(erc=True, beta_low=beta_low, beta_high=beta_high)


@pytest.mark.parametrize("arg,changes", [
    ("^entropy", dict(entropy=poke(NAN))), ("old_entropy", dict(old_entropy=poke(INF))),
    ("entropy", dict(entropy=torch.ones(B, T + 1))), ("response_mask", dict(response_mask=torch.ones(B, T + 1))),
    ("per_token_loss", dict(logp=torch.zeros(B, T, dtype=torch.int64))),
])
def test_apply_erc_rejects_bad_inputs(arg, changes):
    with pytest.raises(ValueError, match=arg):
        erc_call(**changes)()


@pytest.mark.parametrize("name,kwargs,arg", [
    ("ppo", dict(eps_low=0.0), "eps_low"), ("ppo", dict(eps_low=1.0), "eps_low"), ("dapo", dict(eps_high=0.0), "eps_high"),
    ("dapo", dict(clip_ratio_c=1.0), "clip_ratio_c"), ("gppo", dict(beta1=-1.0), "beta1"), ("gppo", dict(beta2=INF), "beta2"),
    ("cispo", dict(eps_high=-0.1), "eps_high"), ("gspo", dict(eps_low=NAN), "eps_low"),
])
def test_bad_loss_hyperparameters(name, kwargs, arg):
    d = ok()
    with pytest.raises(ValueError, match=arg):
        ercref.LOSSES[name](d["logp"], d["old_logp"], d["advantages"], d["response_mask"], **kwargs)


def test_unknown_loss_name():
    with pytest.raises(ValueError, match="nope"):
        ercref.LOSSES["nope"]
    with pytest.raises(ValueError, match="nope"):
        ercref.get_loss("nope")
    with pytest.raises(ValueError, match="nope"):
        Cfg(loss="nope")


@pytest.mark.parametrize("kwargs,arg", [
    (dict(agg_mode="mean"), "agg_mode"), (dict(kl_estimator="k4"), "kl_estimator"),
    (dict(nll_coef=-0.1), "nll_coef"), (dict(kl_coef=NAN), "kl_coef"), (dict(entropy_coef=INF), "entropy_coef"),
])
def test_bad_config_fields(kwargs, arg):
    with pytest.raises(ValueError, match=arg):
        Cfg(**kwargs)


PPO_KW = "['clip_ratio_c', 'eps_high', 'eps_low']"


@pytest.mark.parametrize("loss,key,listed", [
    ("dapo", "beta1", PPO_KW), ("ppo", "eps", PPO_KW), ("pg", "eps_low", "none"),
    ("cispo", "clip_ratio_c", "['eps_high', 'eps_low']"), ("gspo", "clip_ratio_c", "['eps_high', 'eps_low']"),
    ("gppo", "beta3", "['beta1', 'beta2', 'clip_ratio_c', 'eps_high', 'eps_low']"),
])
def test_loss_kwargs_rejects_a_keyword_the_loss_does_not_take(loss, key, listed):
    with pytest.raises(ValueError, match=f"{loss!r} takes no keyword {key!r}") as e:
        Cfg(loss=loss, loss_kwargs={key: 0.5})
    assert str(e.value).endswith(listed)  # the message lists what the loss does take


@pytest.mark.parametrize("value", [NAN, INF, -INF, "0.2", None, True, [0.2]])
def test_loss_kwargs_rejects_non_finite_or_non_number_values(value):
    with pytest.raises(ValueError, match="loss_kwargs\\['eps_low'\\]"):
        Cfg(loss="dapo", loss_kwargs={"eps_low": value})


@pytest.mark.parametrize("name, kwargs", [
    ("gppo", {"beta1": 0.5, "beta2": 2, "clip_ratio_c": None}),
    ("dapo", {"eps_high": 0.4, "clip_ratio_c": None}),       # None disables the dual clip
    ("pg", {}),
])
def test_loss_kwargs_accepts_valid_keywords_and_none_where_the_loss_does(name, kwargs):
    """Accepted, and passed to the loss: the objective's value and gradient equal those of the loss
    called with them directly, and differ from the loss's defaults (ratios 1.35 and 0.74: clipped)."""
    d = ok()
    d["logp"] = d["logp"] - 0.3                          # old_logp below stays a log-probability (<= 0)
    old_logp = d["logp"] - torch.tensor([[0.3], [-0.3]])

    def value_and_grad(fn):
        logp = d["logp"].clone().requires_grad_(True)
        out = fn(logp)
        return out.detach(), torch.autograd.grad(out, logp)[0]

    cfg = Cfg(loss=name, loss_kwargs=kwargs, erc=False, nll_coef=0.0)
    assert cfg.loss_kwargs == kwargs
    got = value_and_grad(lambda lp: ercref.compute_policy_loss(cfg, lp, old_logp, d["advantages"], d["response_mask"],
                                                               d["entropy"], d["old_entropy"])[0])
    want = value_and_grad(lambda lp: ercref.aggregate(
        ercref.LOSSES[name](lp, old_logp, d["advantages"], d["response_mask"], **kwargs)[0], d["response_mask"]))
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    if kwargs:
        default = value_and_grad(lambda lp: ercref.aggregate(
            ercref.LOSSES[name](lp, old_logp, d["advantages"], d["response_mask"])[0], d["response_mask"]))
        assert not all(torch.equal(a, b) for a, b in zip(got, default)), "the keywords changed nothing"


@pytest.mark.parametrize("norm", [0.0, -1.0, NAN, INF, "8"])
def test_agg_norm_must_be_finite_positive_or_none(norm):
    with pytest.raises(ValueError, match="agg_norm"):
        Cfg(agg_mode="seq-mean-token-sum-norm", agg_norm=norm)
    Cfg(agg_mode="seq-mean-token-sum-norm", agg_norm=None)
    Cfg(agg_mode="seq-mean-token-sum-norm", agg_norm=8)


def test_every_choice_the_config_types_offer_is_implemented():
    """The Literal types (the choices --help offers) hold exactly the documented modes, and each one
    is accepted and computes its own value (a choice listed but not implemented fails here)."""
    import typing

    hints = typing.get_type_hints(Cfg)
    modes = typing.get_args(hints["agg_mode"])
    assert modes == ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm")
    x, mask = torch.tensor([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0]]), torch.tensor([[1, 1, 1], [1, 0, 0]])
    got = {m: ercref.aggregate(x, mask, m).item() for m in modes}
    assert got == pytest.approx({"token-mean": 10 / 4, "seq-mean-token-mean": (2 + 4) / 2,
                                 "seq-mean-token-sum-norm": (6 + 4) / 2 / 3})
    estimators = typing.get_args(hints["kl_estimator"])
    assert estimators == ("k1", "k2", "k3")
    logp, ref = torch.tensor([[-1.0]]), torch.tensor([[-1.5]])   # d = ref - logp = -0.5
    got = {e: ercref.kl_penalty(logp, ref, e).item() for e in estimators}
    assert got == pytest.approx({"k1": 0.5, "k2": 0.125, "k3": float(torch.tensor(-0.5).exp()) + 0.5 - 1})


def test_missing_terms_inputs():
    d = ok()
    args = (d["logp"], d["old_logp"], d["advantages"], d["response_mask"], d["entropy"], d["old_entropy"])
    with pytest.raises(ValueError, match="rewards"):
        ercref.compute_policy_loss(Cfg(nll_coef=0.1), *args)
    with pytest.raises(ValueError, match="ref_logp"):
        ercref.compute_policy_loss(Cfg(nll_coef=0.0, kl_coef=0.1), *args)
    with pytest.raises(ValueError, match="ref_logp"):
        ercref.compute_policy_loss(Cfg(nll_coef=0.0, kl_coef=0.1), *args, ref_logp=poke(NAN)(d["logp"]))
    with pytest.raises(ValueError, match="^entropy"):
        ercref.compute_policy_loss(Cfg(nll_coef=0.0, entropy_coef=0.1), *args)  # entropy without grad


@pytest.mark.parametrize("call,arg", [
    (lambda: ercref.aggregate(torch.ones(B, T), torch.zeros(B, T)), "response_mask"),
    (lambda: ercref.aggregate(torch.ones(B, T), torch.ones(B, T), "mean"), "mode"),
    (lambda: ercref.aggregate(torch.ones(B, T), torch.ones(B, T), "seq-mean-token-sum-norm", 0.0), "norm"),
    (lambda: ercref.aggregate(torch.ones(B, T, dtype=torch.int64), torch.ones(B, T)), "per_token_loss"),
    (lambda: ercref.aggregate(torch.ones(B, T), torch.ones(B, T + 1)), "response_mask"),
    (lambda: ercref.kl_penalty(torch.zeros(B, T), torch.zeros(B, T), "k9"), "estimator"),
    (lambda: ercref.kl_penalty(torch.zeros(B, T), torch.full((B, T), NAN)), "ref_logp"),
    (lambda: ercref.kl_penalty(torch.zeros(B, T), torch.zeros(B, T + 1)), "ref_logp"),
    (lambda: ercref.positive_nll(torch.zeros(B, T), torch.ones(B, T), torch.ones(B + 1)), "rewards"),
    (lambda: ercref.positive_nll(torch.zeros(B, T), torch.ones(B, T), torch.tensor([NAN, 1.0])), "rewards"),
])
def test_aggregation_and_auxiliary_bad_input(call, arg):
    with pytest.raises(ValueError, match=arg):
        call()


@pytest.mark.parametrize("call,arg", [
    (lambda: ercref.group_advantages(torch.zeros(0), 4), "rewards"),
    (lambda: ercref.group_advantages(torch.ones(8), 0), "group_size"),
    (lambda: ercref.group_advantages(torch.ones(7), 4), "rewards"),
    (lambda: ercref.group_advantages(torch.ones(2, 4), 4), "rewards"),
    (lambda: ercref.group_advantages(torch.tensor([1.0, NAN]), 2), "rewards"),
    (lambda: ercref.group_advantages(torch.tensor([1, 0]), 2), "rewards"),
    (lambda: ercref.dynamic_sampling_mask(torch.zeros(0), 2), "rewards"),
    (lambda: ercref.dynamic_sampling_mask(torch.ones(4), 0), "group_size"),
    (lambda: ercref.overlong_reward(torch.tensor([3]), max_length=10, buffer_length=11), "buffer_length"),
    (lambda: ercref.overlong_reward(torch.tensor([3]), max_length=0, buffer_length=1), "max_length"),
    (lambda: ercref.overlong_reward(torch.tensor([3]), max_length=10, buffer_length=0), "buffer_length"),
    (lambda: ercref.overlong_reward(torch.tensor([NAN]), max_length=10, buffer_length=2), "lengths"),
])
def test_advantages_bad_input(call, arg):
    with pytest.raises(ValueError, match=arg):
        call()


def _logits_with(value):
    z = torch.randn(2, 3, 7, generator=torch.Generator().manual_seed(0))
    z[1, 2, 4] = value
    return z


@pytest.mark.parametrize("fn", ["entropy_from_logits", "logprobs_from_logits", "logprobs_and_entropy"])
@pytest.mark.parametrize("logits,kwargs,arg", [
    (_logits_with(NAN), {}, "logits"),
    (_logits_with(INF), {}, "logits"),
    (torch.full((2, 3, 7), -INF), {}, "logits"),           # a row with no live entry
    (torch.zeros(2, 3, 7, dtype=torch.int64), {}, "logits"),
    (torch.zeros(2, 3, 0), {}, "logits"),
    (torch.zeros(2, 3, 7), dict(temperature=0.0), "temperature"),
    (torch.zeros(2, 3, 7), dict(chunk_rows=0), "chunk_rows"),
])
def test_logits_bad_input(fn, logits, kwargs, arg):
    labels = torch.zeros(2, 3, dtype=torch.int64)
    call = getattr(ercref, fn)
    with pytest.raises(ValueError, match=arg):
        call(logits, **kwargs) if fn == "entropy_from_logits" else call(logits, labels, **kwargs)


@pytest.mark.parametrize("fn", ["logprobs_from_logits", "logprobs_and_entropy"])
@pytest.mark.parametrize("labels", [torch.full((2, 3), 7), torch.full((2, 3), -1), torch.zeros(2, 3), torch.zeros(2, 4, dtype=torch.int64)])
def test_labels_bad_input(fn, labels):
    with pytest.raises(ValueError, match="labels"):
        getattr(ercref, fn)(torch.zeros(2, 3, 7), labels)


def test_valid_inputs_pass_the_same_checks():
    """Control for the cases above: the unmodified inputs are accepted everywhere."""
    loss, m = objective_call()()
    assert torch.isfinite(loss)
    for name in ercref.LOSSES:
        assert torch.isfinite(loss_call(name)()[0]).all()
    assert torch.isfinite(erc_call()()[0]).all()


def test_apply_erc_rejects_an_all_masked_batch():
    import pytest as _pytest
    import torch

    import ercref as _ercref
    z = torch.zeros(2, 3)
    with _pytest.raises(ValueError, match="response_mask"):
        _ercref.apply_erc(z, z + 1, z + 1, torch.zeros(2, 3, dtype=torch.bool))


# ----------------------------------------------------------------------------- log-probabilities must be <= 0
@pytest.mark.parametrize("arg", ["logp", "old_logp"])
@pytest.mark.parametrize("entry", ["loss", "objective"])
def test_a_positive_log_prob_at_a_response_position_is_refused_naming_the_argument(arg, entry):
    """Probabilities or logits passed as log-probs (e.g. 0.5) would give a finite, wrong loss: refused."""
    call = (loss_call if entry == "loss" else objective_call)(**{arg: poke(0.5)})
    with pytest.raises(ValueError, match=rf"^{arg} must hold log-probabilities \(<= 0\).*0\.5 at index \[0, 1\]"):
        call()


def test_positive_log_probs_at_padding_and_rounding_above_zero_are_accepted():
    """Only response positions are checked, and log_softmax's rounding (a few ulps above 0) passes."""
    mask = torch.ones(B, T)
    mask[0, 1] = 0                                             # poke() writes at [0, 1]: padding now
    per_tok, _ = loss_call(logp=poke(7.0), response_mask=mask)()
    assert torch.isfinite(per_tok[mask.bool()]).all()
    per_tok_round, _ = loss_call(logp=poke(1e-6), old_logp=poke(1e-6))()
    per_tok_zero, _ = loss_call(logp=poke(0.0), old_logp=poke(0.0))()
    assert torch.allclose(per_tok_round, per_tok_zero)


@given(st.sampled_from(sorted(ercref.LOSSES)), st.sampled_from(["logp", "old_logp"]),
       st.floats(min_value=2e-3, max_value=1e6), st.integers(0, B * T - 1))
@settings(max_examples=60, deadline=None)
def test_any_positive_log_prob_beyond_rounding_is_refused_by_every_loss(name, arg, value, where):
    d = ok()
    bad = d[arg].clone()
    bad.view(-1)[where] = value
    d[arg] = bad
    with pytest.raises(ValueError, match=rf"^{arg} must hold log-probabilities"):
        ercref.LOSSES[name](d["logp"], d["old_logp"], d["advantages"], d["response_mask"])
