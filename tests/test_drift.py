"""Per-token drift between two policies (ercref.drift) against a float64 brute force, its properties,
the tiled hidden-state path, the summaries, bad input; and the trainer's drift callback
(ercref.lm.drift_callback) on the tiny model.

    p = softmax(z_old / tau), q = softmax(z_new / tau), a = the sampled token
    KL(old || new) = sum_v p_v log(p_v / q_v)     TV = 1/2 sum_v |q_v - p_v| = 1/2 |q_a - p_a| + 1/2 sum_{v != a} |q_v - p_v|
"""
from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import ercref
from ercref.drift import KL_THRESHOLDS, SUMMARISED, TokenDrift, drift_summary, token_drift, token_drift_from_hidden

PROPS = settings(max_examples=60, deadline=None, derandomize=True)


# ----------------------------------------------------------------------------- the float64 brute force
def brute_force(old_logits: torch.Tensor, new_logits: torch.Tensor, labels: torch.Tensor,
                temperature: float = 1.0) -> dict[str, torch.Tensor]:
    """Every measure of one row at a time, in float64, with an explicit softmax and python sums over
    the vocabulary (0 log 0 = 0; p_v log(p_v / 0) = +inf)."""
    V = old_logits.shape[-1]
    zo = old_logits.detach().double().reshape(-1, V) / temperature
    zn = new_logits.detach().double().reshape(-1, V) / temperature
    lab = labels.reshape(-1).tolist()
    out = {k: [] for k in TokenDrift._fields}
    for i in range(zo.shape[0]):
        eo, en = torch.exp(zo[i] - zo[i].max()), torch.exp(zn[i] - zn[i].max())
        p, q = (eo / eo.sum()).tolist(), (en / en.sum()).tolist()
        kl_on = sum(pv * math.log(pv / qv) if qv > 0 else math.inf for pv, qv in zip(p, q) if pv > 0)
        kl_no = sum(qv * math.log(qv / pv) if pv > 0 else math.inf for pv, qv in zip(p, q) if qv > 0)
        h_o = -sum(pv * math.log(pv) for pv in p if pv > 0)
        h_n = -sum(qv * math.log(qv) for qv in q if qv > 0)
        a = lab[i]
        tv_s = 0.5 * abs(q[a] - p[a])
        tv_u = 0.5 * sum(abs(qv - pv) for v, (pv, qv) in enumerate(zip(p, q)) if v != a)
        for k, x in zip(TokenDrift._fields, (kl_on, kl_no, 0.5 * sum(abs(qv - pv) for pv, qv in zip(p, q)), tv_s, tv_u,
                                             h_o, h_n, abs(h_n - h_o), (h_n + 1e-8) / (h_o + 1e-8))):
            out[k].append(x)
    return {k: torch.tensor(v, dtype=torch.float64).view(labels.shape) for k, v in out.items()}


def assert_matches(drift: TokenDrift, ref: dict, rtol: float, atol: float) -> None:
    for k in TokenDrift._fields:
        torch.testing.assert_close(getattr(drift, k).double(), ref[k], rtol=rtol, atol=atol, msg=k)


def _pair(shape, V, scale=3.0, step=0.3, seed=0, dtype=torch.float32):
    """Old logits and new ones that moved by ``step`` (std) per entry, with a few rows that moved a lot."""
    g = torch.Generator().manual_seed(seed)
    old = scale * torch.randn(*shape, V, generator=g, dtype=torch.float64)
    new = old + step * torch.randn(*shape, V, generator=g, dtype=torch.float64)
    new.view(-1, V)[:2] += 4.0 * torch.randn(2, V, generator=g, dtype=torch.float64)  # far apart
    new.view(-1, V)[2] = old.view(-1, V)[2]                                           # unchanged
    labels = torch.randint(0, V, shape, generator=g)
    return old.to(dtype), new.to(dtype), labels


# ----------------------------------------------------------------------------- against the brute force
@pytest.mark.parametrize("chunk_rows", [1, 7, None])
@pytest.mark.parametrize("temperature", [1.0, 0.6, 1.7])
def test_fp32_drift_matches_the_float64_brute_force(chunk_rows, temperature):
    old, new, labels = _pair((5, 7), 301)
    d = token_drift(old, new, labels, temperature, chunk_rows=chunk_rows)
    assert all(x.dtype == torch.float32 and x.shape == (5, 7) for x in d)
    assert_matches(d, brute_force(old, new, labels, temperature), rtol=2e-5, atol=2e-6)


def test_fp64_drift_matches_the_brute_force_to_1e_10():
    old, new, labels = _pair((3, 6), 97, dtype=torch.float64)
    d = token_drift(old, new, labels, 0.8, chunk_rows=4)
    assert all(x.dtype == torch.float64 for x in d)
    assert_matches(d, brute_force(old, new, labels, 0.8), rtol=1e-10, atol=1e-12)


def test_small_kl_is_accurate_where_the_two_logsumexps_round_apart():
    """KL ~ 1e-6 (a tiny move plus a constant shift of logits up to ~20): fp32 keeps it within 1e-7,
    five orders of magnitude below the smallest trust-region threshold (0.01)."""
    old, _, labels = _pair((4, 8), 500, scale=5.0)
    g = torch.Generator().manual_seed(1)
    new = old + 3e-3 * torch.randn(old.shape, generator=g) + 37.25
    d = token_drift(old, new, labels)
    ref = brute_force(old, new, labels)
    assert 1e-7 < float(ref["kl_old_new"].median()) < 1e-5
    torch.testing.assert_close(d.kl_old_new.double(), ref["kl_old_new"], rtol=0.02, atol=1e-7)
    torch.testing.assert_close(d.kl_new_old.double(), ref["kl_new_old"], rtol=0.02, atol=1e-7)


def test_masked_vocabulary_gives_zero_mass_and_an_infinite_kl_only_where_the_supports_differ():
    old, new, labels = _pair((2, 5), 40)
    labels[:] = 0
    old[..., 30:] = float("-inf")                  # both policies exclude tokens 30..39 ...
    new[..., 30:] = float("-inf")
    new[0, 0, 10] = float("-inf")                  # ... and at one position pi_new also excludes token 10
    d = token_drift(old, new, labels, chunk_rows=3)
    ref = brute_force(old, new, labels)
    assert d.kl_old_new[0, 0] == float("inf") and math.isfinite(float(d.kl_new_old[0, 0]))
    assert_matches(d, ref, rtol=2e-5, atol=2e-6)   # inf == inf, everything else finite and equal


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_inputs_are_computed_in_fp32_exactly_as_their_fp32_values(dtype):
    old, new, labels = _pair((3, 5), 211, dtype=dtype)
    d = token_drift(old, new, labels, 0.7, chunk_rows=4)
    d32 = token_drift(old.float(), new.float(), labels, 0.7, chunk_rows=4)
    for k in TokenDrift._fields:
        assert getattr(d, k).dtype == torch.float32
        assert torch.equal(getattr(d, k), getattr(d32, k)), k
    assert_matches(d, brute_force(old, new, labels, 0.7), rtol=2e-5, atol=2e-6)


def test_chunking_does_not_change_the_result():
    old, new, labels = _pair((6, 9), 123)
    ref = token_drift(old, new, labels, chunk_rows=1)
    for rows in (2, 5, 54, 1000):
        d = token_drift(old, new, labels, chunk_rows=rows)
        for k in TokenDrift._fields:
            torch.testing.assert_close(getattr(d, k), getattr(ref, k), rtol=1e-6, atol=1e-8)


def test_default_tiles_at_a_real_vocabulary_size_equal_one_tile():
    from ercref.drift import default_rows

    V = 151_936                                     # Qwen2's vocabulary
    assert default_rows(V, "cpu") == 6 and default_rows(V, "cuda") > 100
    old, new, labels = _pair((2, 7), V, step=0.05)  # 14 rows: three default tiles on a CPU
    d, one = token_drift(old, new, labels), token_drift(old, new, labels, chunk_rows=14)
    for k in TokenDrift._fields:
        torch.testing.assert_close(getattr(d, k), getattr(one, k), rtol=1e-6, atol=1e-8)


# ----------------------------------------------------------------------------- the tiled hidden-state path
def _hidden_pair(shape, D, V, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    h_old = torch.randn(*shape, D, generator=g, dtype=torch.float64)
    w_old = torch.randn(V, D, generator=g, dtype=torch.float64) / D ** 0.5 * 3
    h_new = h_old + 0.1 * torch.randn(*shape, D, generator=g, dtype=torch.float64)
    w_new = w_old + 0.02 * torch.randn(V, D, generator=g, dtype=torch.float64)
    labels = torch.randint(0, V, shape, generator=g)
    return [x.to(dtype) for x in (h_old, w_old, h_new, w_new)] + [labels]


@pytest.mark.parametrize("chunk_rows", [1, 4, None])
def test_hidden_state_path_equals_the_logits_path(chunk_rows):
    h_old, w_old, h_new, w_new, labels = _hidden_pair((4, 5), 16, 300)
    d = token_drift_from_hidden(h_old, w_old, h_new, w_new, labels, 0.9, chunk_rows=chunk_rows)
    ref = token_drift(h_old @ w_old.T, h_new @ w_new.T, labels, 0.9)
    for k in TokenDrift._fields:
        torch.testing.assert_close(getattr(d, k), getattr(ref, k), rtol=1e-10, atol=1e-12)
    assert_matches(d, brute_force(h_old @ w_old.T, h_new @ w_new.T, labels, 0.9), rtol=1e-9, atol=1e-11)


def test_hidden_state_path_in_fp32_and_bf16():
    h_old, w_old, h_new, w_new, labels = _hidden_pair((3, 4), 32, 257, dtype=torch.float32)
    d = token_drift_from_hidden(h_old, w_old, h_new, w_new, labels, chunk_rows=5)
    assert_matches(d, brute_force(h_old @ w_old.T, h_new @ w_new.T, labels), rtol=2e-5, atol=2e-6)
    bf = [x.bfloat16() for x in (h_old, w_old, h_new, w_new)]
    d = token_drift_from_hidden(*bf, labels, chunk_rows=5)   # multiplied in bf16, reduced in fp32
    assert d.kl_old_new.dtype == torch.float32
    ref = token_drift((bf[0] @ bf[1].T).float(), (bf[2] @ bf[3].T).float(), labels)
    for k in TokenDrift._fields:
        torch.testing.assert_close(getattr(d, k), getattr(ref, k), rtol=1e-5, atol=1e-6)


def test_no_gradient_flows_even_from_inputs_that_require_grad():
    old, new, labels = _pair((2, 3), 20, dtype=torch.float64)
    new.requires_grad_(True)
    d = token_drift(old, new, labels)
    assert not any(x.requires_grad for x in d)
    h_old, w_old, h_new, w_new, labels = _hidden_pair((2, 3), 8, 20)
    d = token_drift_from_hidden(h_old, w_old, h_new.requires_grad_(True), w_new.requires_grad_(True), labels)
    assert not any(x.requires_grad for x in d)


# ----------------------------------------------------------------------------- properties
@st.composite
def logit_pairs(draw):
    n, V = draw(st.integers(1, 4)), draw(st.integers(1, 12))
    finite = st.floats(-30.0, 30.0, allow_nan=False)
    old = draw(arrays(np.float64, (n, V), elements=finite))
    kind = draw(st.sampled_from(["independent", "nearby", "same", "shifted"]))
    if kind == "independent":
        new = draw(arrays(np.float64, (n, V), elements=finite))
    elif kind == "nearby":
        new = old + draw(arrays(np.float64, (n, V), elements=st.floats(-0.05, 0.05)))
    else:
        new = old.copy()
    labels = draw(arrays(np.int64, (n,), elements=st.integers(0, V - 1)))
    dtype = draw(st.sampled_from([torch.float32, torch.float64]))
    return torch.from_numpy(old).to(dtype), torch.from_numpy(new).to(dtype), torch.from_numpy(labels), kind


@PROPS
@given(logit_pairs(), st.floats(0.3, 3.0))
def test_kl_is_non_negative_tv_is_a_fraction_split_exactly_in_two(pair, temperature):
    old, new, labels, _ = pair
    d = token_drift(old, new, labels, temperature)
    assert (d.kl_old_new >= 0).all() and (d.kl_new_old >= 0).all()
    assert (d.tv >= 0).all() and (d.tv <= 1 + 1e-6).all()
    assert (d.tv_sampled >= 0).all() and (d.tv_unsampled >= 0).all()
    torch.testing.assert_close(d.tv_sampled + d.tv_unsampled, d.tv, rtol=0, atol=1e-12)
    assert (d.entropy_ratio > 0).all() and (d.entropy_abs_diff >= 0).all()


@PROPS
@given(logit_pairs(), st.floats(0.3, 3.0))
def test_kl_is_zero_exactly_when_the_distributions_agree(pair, temperature):
    """Identical logits: every measure is exactly 0 and rho exactly 1. Otherwise KL >= 2 TV^2
    (Pinsker), so a KL at rounding level forces equal distributions, in both directions."""
    old, new, labels, kind = pair
    d = token_drift(old, new, labels, temperature)
    if kind == "same":
        for k in ("kl_old_new", "kl_new_old", "tv", "tv_sampled", "tv_unsampled", "entropy_abs_diff"):
            assert torch.equal(getattr(d, k), torch.zeros_like(getattr(d, k))), k
        assert torch.equal(d.entropy_ratio, torch.ones_like(d.entropy_ratio))
    tol = 1e-12 if old.dtype == torch.float64 else 2e-6
    assert (d.kl_old_new.double() >= 2 * d.tv.double() ** 2 - tol).all()
    assert (d.kl_new_old.double() >= 2 * d.tv.double() ** 2 - tol).all()


@PROPS
@given(logit_pairs(), st.floats(-50.0, 50.0), st.floats(-50.0, 50.0))
def test_adding_a_constant_to_a_row_changes_nothing(pair, c_old, c_new):
    old, new, labels, _ = pair
    old, new = old.double(), new.double()   # the shifted logits exactly representable
    d = token_drift(old, new, labels)
    s = token_drift(old + c_old, new + c_new, labels)
    for k in TokenDrift._fields:
        torch.testing.assert_close(getattr(s, k), getattr(d, k), rtol=1e-9, atol=1e-9, msg=k)


@PROPS
@given(logit_pairs())
def test_swapping_the_policies_swaps_the_kl_directions(pair):
    old, new, labels, _ = pair
    d, s = token_drift(old, new, labels), token_drift(new, old, labels)
    atol = 1e-12 if old.dtype == torch.float64 else 1e-6
    torch.testing.assert_close(s.kl_old_new, d.kl_new_old, rtol=1e-6, atol=atol)
    torch.testing.assert_close(s.kl_new_old, d.kl_old_new, rtol=1e-6, atol=atol)
    torch.testing.assert_close(s.tv, d.tv, rtol=1e-6, atol=atol)
    torch.testing.assert_close(s.entropy_ratio * d.entropy_ratio, torch.ones_like(d.entropy_ratio), rtol=1e-6, atol=atol)


# ----------------------------------------------------------------------------- summaries
def _drift_and_mask(seed=0):
    old, new, labels = _pair((4, 25), 50, seed=seed, step=0.6)
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(4, 25, generator=g) < 0.7
    return token_drift(old, new, labels), mask


def test_summary_matches_torch_quantile_mean_max_and_counts():
    d, mask = _drift_and_mask()
    s = drift_summary(d, mask, prefix="drift/trained")
    expected_keys = {"drift/trained/tokens"}
    for m in SUMMARISED:
        x = getattr(d, m)[mask].double()
        for stat, ref in (("mean", x.mean()), ("p90", torch.quantile(x, 0.9)), ("p99", torch.quantile(x, 0.99)),
                          ("max", x.max())):
            expected_keys.add(f"drift/trained/{m}/{stat}")
            torch.testing.assert_close(s[f"drift/trained/{m}/{stat}"].double(), ref, rtol=1e-6, atol=1e-9)
        if m in ("kl_old_new", "kl_new_old"):
            for t in KL_THRESHOLDS:
                key = f"drift/trained/{m}/frac_gt_{t:g}"
                expected_keys.add(key)
                assert float(s[key]) == pytest.approx(float((x > t).double().mean()))
    assert set(s) == expected_keys
    assert "drift/trained/kl_old_new/frac_gt_0.01" in s and "drift/trained/kl_old_new/frac_gt_0.1" in s
    assert int(s["drift/trained/tokens"]) == int(mask.sum())
    assert all(v.dim() == 0 for v in s.values())
    # the thresholds are met by some tokens and not by others here, so the shares are informative
    assert 0 < float(s["drift/trained/kl_old_new/frac_gt_0.01"]) < 1


def test_summary_of_one_token_and_of_an_infinite_kl():
    d, mask = _drift_and_mask()
    one = torch.zeros_like(mask)
    one[1, 3] = True
    s = drift_summary(d, one.float())   # a 0/1 float mask is accepted
    for stat in ("mean", "p90", "p99", "max"):
        assert float(s[f"drift/tv/{stat}"]) == pytest.approx(float(d.tv[1, 3]))
    inf = d._replace(kl_old_new=torch.where(one, torch.tensor(float("inf")), d.kl_old_new))
    s = drift_summary(inf, mask | one)
    assert s["drift/kl_old_new/max"] == float("inf") and s["drift/kl_old_new/mean"] == float("inf")
    assert float(s["drift/kl_old_new/frac_gt_0.1"]) > 0 and math.isfinite(float(s["drift/kl_old_new/p90"]))


def test_summary_ignores_values_outside_the_mask_even_nan():
    d, mask = _drift_and_mask()
    poisoned = TokenDrift(*(torch.where(mask, x, torch.tensor(float("nan"))) for x in d))
    s, ref = drift_summary(poisoned, mask), drift_summary(d, mask)
    for k in ref:
        assert torch.equal(s[k], ref[k]), k


# ----------------------------------------------------------------------------- bad input
def _bad_cases():
    old, new, labels = _pair((2, 3), 10)
    nan = new.clone()
    nan[1, 2, 4] = float("nan")
    pinf = old.clone()
    pinf[0, 1, 0] = float("inf")
    allneg = new.clone()
    allneg[1, 0] = float("-inf")
    h_old, w_old, h_new, w_new, hl = _hidden_pair((2, 3), 4, 10, dtype=torch.float32)
    hnan = h_new.clone()
    hnan[0, 2, 1] = float("nan")
    yield lambda: token_drift(old.long(), new, labels), "old_logits must be a floating-point"
    yield lambda: token_drift(old, new[:, :2], labels), "new_logits has shape"
    yield lambda: token_drift(old, new, labels.float()), "labels must be an int64 or int32"
    yield lambda: token_drift(old, new, labels[:, :2]), "labels has shape"
    big = labels.clone()
    big[1, 2] = 10
    yield lambda: token_drift(old, new, big), r"labels\[1, 2\] = 10 is not a token id: labels must lie in \[0, 10\)"
    yield lambda: token_drift(old, new, labels - 1 - labels), r"labels\[0, 0\] = -1 is not a token id"
    yield lambda: token_drift(old, new, labels, temperature=0.0), "temperature must be a finite number > 0"
    yield lambda: token_drift(old, new, labels, temperature=float("nan")), "temperature"
    yield lambda: token_drift(old, new, labels, chunk_rows=0), "chunk_rows must be a positive int"
    yield lambda: token_drift(old, new, labels, chunk_rows=True), "chunk_rows must be a positive int"
    yield lambda: token_drift(old, nan, labels), r"new_logits contains NaN or \+inf values \(first in row new_logits\[1, 2\]"
    yield lambda: token_drift(pinf, new, labels), r"old_logits contains NaN or \+inf values \(first in row old_logits\[0, 1\]"
    yield lambda: token_drift(old, allneg, labels), r"new_logits\[1, 0\] is entirely -inf"
    yield lambda: token_drift_from_hidden(h_old, w_old, h_new, w_new[:5], hl), "new_weight has shape"
    yield lambda: token_drift_from_hidden(h_old, w_old[:, :3], h_new, w_new[:, :3], hl), r"old_weight must be \(V, D\)"
    yield lambda: token_drift_from_hidden(h_old, w_old, h_new, w_new.double(), hl), "share a dtype"
    yield lambda: token_drift_from_hidden(h_old, w_old, hnan, w_new, hl), r"new_hidden contains NaN or inf values.*\[0, 2, 1\]"
    yield lambda: token_drift_from_hidden(h_old, w_old, h_new, w_new, hl + 10), "labels.* is not a token id"
    d = token_drift(old, new, labels)
    mask = torch.ones(2, 3, dtype=torch.bool)
    yield lambda: drift_summary(d, mask[:, :2]), "mask has shape"
    yield lambda: drift_summary(d, torch.zeros_like(mask)), "mask selects no tokens"
    yield lambda: drift_summary(d, mask.float() * 2), "mask must contain only 0 and 1"
    yield lambda: drift_summary(tuple(d), mask), "drift must be a TokenDrift"
    yield lambda: drift_summary(d, mask, prefix="drift/"), "prefix must be a non-empty"
    yield lambda: drift_summary(d._replace(tv=d.tv[:1]), mask), "drift.tv has shape"
    yield lambda: drift_summary(d._replace(tv=torch.full_like(d.tv, float("nan"))), mask), r"drift.tv is NaN at a masked token"


@pytest.mark.parametrize("case", range(len(list(_bad_cases()))))
def test_bad_input_is_refused_naming_the_argument(case):
    fn, message = list(_bad_cases())[case]
    with pytest.raises(ValueError, match=message):
        fn()


def test_exported_from_the_package():
    assert ercref.token_drift is token_drift and ercref.drift_summary is drift_summary
    assert ercref.token_drift_from_hidden is token_drift_from_hidden and ercref.TokenDrift is TokenDrift


# ----------------------------------------------------------------------------- the trainer's drift callback
# a small cpu-tiny (as tests/test_lm_trainer.py): 8 prompts x 4 samples, K = 4 minibatches of 2 prompts;
# rollout temperature 0.8, so a measure at the wrong temperature would differ from the direct computation.
# No warm-up: the random model gets every answer wrong (all advantages 0), and the entropy bonus gives
# every update a gradient.
TINY = ["sft.steps=0", "loss.entropy_coef=0.01", "rollout.prompts_per_step=8", "rollout.group_size=4",
        "train.minibatch_prompts=2", "train.progress=false", "train.plot=false", "data.num_eval=8", "train.eval_k=2",
        "rollout.temperature=0.8", "train.save_checkpoints=false"]
DRIFT_SETS = ("trained", "other", "heldout")


def _trainer(path, extra=(), callbacks=()):
    from ercref.lm.config import make_config
    from ercref.lm.trainer import Trainer

    tr = Trainer(make_config("cpu-tiny", overrides=TINY + list(extra)), path, callbacks=list(callbacks))
    tr.start()
    return tr


class Spy:
    """Records, before each minibatch update, the policy's weights and the minibatch (a trainer callback)."""

    def __init__(self):
        self.seen = []

    def on_minibatch_start(self, trainer, minibatch, advantages, staleness):
        self.seen.append(({k: v.detach().clone() for k, v in trainer.model.state_dict().items()}, minibatch))


def _direct_drift(model, old_state, new_state, batch, temperature):
    """TokenDrift from the full logits of two copies of ``model`` (no fused head, no shared prompts, no
    micro-batches), and the response mask: the definition, independent of the callback's path."""
    from ercref.lm.prompt_sharing import position_ids_from_mask

    logits = []
    for state in (old_state, new_state):
        m = copy.deepcopy(model).eval()
        m.load_state_dict(state)
        with torch.no_grad():
            out = m(input_ids=batch.sequences, attention_mask=batch.attention_mask,
                    position_ids=position_ids_from_mask(batch.attention_mask), use_cache=False).logits
        logits.append(out[:, batch.prompt_len - 1 : -1])
    return token_drift(logits[0], logits[1], batch.sequences[:, batch.prompt_len:], temperature), batch.response_mask


def _cat(parts):
    return (TokenDrift(*(torch.cat([d[i].reshape(-1) for d, _ in parts]) for i in range(len(TokenDrift._fields)))),
            torch.cat([m.reshape(-1) for _, m in parts]))


def test_drift_callback_logs_every_set_equal_to_the_direct_computation_and_leaves_training_unchanged(tmp_path):
    from ercref.lm.drift_callback import DriftCallback, heldout_seed
    from ercref.lm.metrics_log import read_log, strip_timing
    from ercref.lm.rollout import rollout

    spy = Spy()
    tr = _trainer(tmp_path / "drift", callbacks=[spy, DriftCallback(heldout_prompts=4, heldout_samples=2)])
    tr.train_step()
    tr.train_step()
    plain = _trainer(tmp_path / "plain")   # (a Trainer seeds torch's global RNG: built after the first one's steps)
    plain.train_step()
    plain.train_step()
    # the trajectory (two steps: the second rollout would show any random number drawn in the first step):
    # the same weights, the same logged numbers apart from the drift metrics and timings
    for (k, v), (k2, v2) in zip(tr.model.state_dict().items(), plain.model.state_dict().items()):
        assert k == k2 and torch.equal(v, v2), k
    rows, ref_rows = read_log(tr.log.path), read_log(plain.log.path)
    assert [{k: v for k, v in strip_timing(r).items() if not k.startswith("drift/")} for r in rows] == \
        [strip_timing(r) for r in ref_rows]
    assert not any(k.startswith("drift/") for r in ref_rows for k in r)
    # every set, measure and statistic is in each step's log line
    steps = read_log(tr.log.path, "step")
    assert all(r.get("drift/trained/tokens", 0) > 0 for r in steps)
    logged = steps[0]
    for s in DRIFT_SETS:
        assert f"drift/{s}/tokens" in logged
        for m in SUMMARISED:
            for stat in ("mean", "p90", "p99", "max"):
                assert f"drift/{s}/{m}/{stat}" in logged, (s, m, stat)
        for t in ("0.01", "0.1"):
            assert f"drift/{s}/kl_old_new/frac_gt_{t}" in logged and f"drift/{s}/kl_new_old/frac_gt_{t}" in logged
        assert logged[f"drift/{s}/kl_old_new/mean"] > 0 and logged[f"drift/{s}/tv_unsampled/max"] > 0, s

    # each set of the first step equals the definition computed directly from the weights the spy saw:
    # the first step's K = 4 minibatches; the weights after its updates are those the second step starts from
    first, new_state = spy.seen[:4], spy.seen[4][0]
    old_state, mbs = first[0][0], [mb for _, mb in first]
    tau = tr.cfg.rollout.temperature
    trained = _cat([_direct_drift(tr.model, old_state, new_state, mb, tau) for mb in mbs])
    other = _cat([_direct_drift(tr.model, old_state, state_k, mb, tau) for state_k, mb in first[1:]])
    old_model = copy.deepcopy(tr.model).eval()
    old_model.load_state_dict(old_state)
    with torch.random.fork_rng():
        torch.manual_seed(heldout_seed(tr.cfg.train.seed, 1))
        held = rollout(old_model, tr.tok, [r["prompt"] for r in tr.eval_set[:4]], [r["answer"] for r in tr.eval_set[:4]],
                       2, tr.cfg.rollout.max_new_tokens, tau, tr.cfg.rollout.top_p, tr.cfg.data.max_prompt_tokens,
                       with_logprobs=False)
    heldout = _direct_drift(tr.model, old_state, new_state, held, tau)
    assert logged["drift/heldout/tokens"] == float(held.response_mask.sum())
    for name, (drift, mask) in (("trained", trained), ("other", other), ("heldout", heldout)):
        direct = drift_summary(drift, mask, prefix=f"drift/{name}")
        for k, v in direct.items():
            assert logged[k] == pytest.approx(float(v), rel=1e-4, abs=1e-6), k
    assert logged["drift/trained/tokens"] == float(sum(mb.response_mask.sum() for mb in mbs))


@pytest.mark.parametrize("autocast", [None, torch.bfloat16])
def test_callback_fused_head_path_equals_its_logits_path(autocast):
    """The callback's two ways to a micro-batch's drift (hidden states + head tiles; full logits) agree,
    on left-padded prompts shared by several rows, in fp32 and under bf16 autocast."""
    from ercref.lm.drift_callback import _pair_drift
    from ercref.lm.models import build_tiny_model

    old, _ = build_tiny_model(seed=0)
    new, _ = build_tiny_model(seed=0)
    with torch.no_grad():
        for p in new.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    g = torch.Generator().manual_seed(3)
    prompts = torch.randint(3, 80, (3, 6), generator=g).repeat_interleave(2, 0)   # 3 prompts x 2 rows each
    seq = torch.cat([prompts, torch.randint(3, 80, (6, 5), generator=g)], 1)
    am = torch.ones_like(seq)
    am[:2, :2] = 0                                                                    # left padding
    d_fused = _pair_drift(old, new, seq, am, 6, 0.8, True, autocast)
    d_logits = _pair_drift(old, new, seq, am, 6, 0.8, False, autocast)
    assert d_fused.kl_old_new.shape == (6, 5) and float(d_fused.kl_old_new.min()) > 0
    # under bf16 autocast the logits path's head rounds the logits to bf16 (differences up to ~1e-3 here)
    tol = {"rtol": 1e-4, "atol": 1e-6} if autocast is None else {"rtol": 1e-2, "atol": 2e-3}
    for k in TokenDrift._fields:
        torch.testing.assert_close(getattr(d_fused, k), getattr(d_logits, k), **tol, msg=k)


def test_drift_is_exactly_zero_when_the_update_leaves_the_weights_unchanged(tmp_path):
    """optim.lr must be > 0, but a warm-up from zero makes the first step's learning rate exactly 0."""
    from ercref.lm.drift_callback import DriftCallback

    tr = _trainer(tmp_path, ["optim.warmup_steps=4", "optim.warmup_from_zero=true"],
                  [DriftCallback(heldout_prompts=4, heldout_samples=1)])
    before = {k: v.clone() for k, v in tr.model.state_dict().items()}
    rec = tr.train_step()
    assert rec["lr"] == 0.0 and rec["grad/norm"] > 0   # a real gradient, and a step of size 0
    assert all(torch.equal(before[k], v) for k, v in tr.model.state_dict().items())
    for s in DRIFT_SETS:
        assert rec[f"drift/{s}/tokens"] > 0
        for m in ("kl_old_new", "kl_new_old", "tv", "tv_sampled", "tv_unsampled", "entropy_abs_diff"):
            assert rec[f"drift/{s}/{m}/max"] == 0.0, (s, m)
        assert rec[f"drift/{s}/entropy_ratio/mean"] == 1.0 and rec[f"drift/{s}/entropy_ratio/max"] == 1.0
        assert rec[f"drift/{s}/kl_old_new/frac_gt_0.01"] == 0.0
    rec = tr.train_step()                               # the second step's learning rate is > 0
    assert rec["lr"] > 0 and rec["drift/trained/kl_old_new/max"] > 0 and rec["drift/heldout/tv/max"] > 0


def test_drift_callback_every_n_steps_one_minibatch_and_no_heldout(tmp_path):
    from ercref.lm.drift_callback import DriftCallback

    tr = _trainer(tmp_path, ["train.minibatch_prompts=8"], [DriftCallback(heldout_prompts=0, every=2)])
    first, second = tr.train_step(), tr.train_step()
    assert not any(k.startswith("drift/") for k in first)
    assert "drift/trained/kl_old_new/p99" in second and second["drift/trained/tokens"] > 0
    # K = 1: no minibatch waits for its update, so there is no "other" set; no held-out prompts asked for
    assert not any(k.startswith(("drift/other/", "drift/heldout/")) for k in second)


def test_drift_callback_refuses_bad_settings_naming_them(tmp_path):
    from ercref.lm.drift_callback import DriftCallback

    for kwargs, name in (({"heldout_prompts": -1}, "heldout_prompts"), ({"heldout_samples": 0}, "heldout_samples"),
                         ({"every": 0}, "every"), ({"every": True}, "every"), ({"heldout_prompts": 2.0}, "heldout_prompts")):
        with pytest.raises(ValueError, match=rf"DriftCallback\({name}=...\) must be an int"):
            DriftCallback(**kwargs)
    tr = _trainer(tmp_path, callbacks=[DriftCallback(heldout_prompts=2)])
    tr.eval_set = []
    with pytest.raises(ValueError, match=r"heldout_prompts.*eval set is empty.*heldout_prompts=0"):
        tr.train_step()
