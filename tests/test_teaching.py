"""ercref.study.teaching: source shown beside equations, exercise checker, headless sliders."""
from __future__ import annotations

import pytest
import torch

import ercref
from ercref.study import teaching as T


def _erc_inputs(gen: torch.Generator) -> dict:
    B, L = 3, 7
    return {"entropy": torch.rand(B, L, generator=gen) * 2, "old_entropy": torch.rand(B, L, generator=gen) * 2}


def test_source_of_slices_the_lines_and_names_the_file():
    src, path, first = T.source_of(ercref.entropy_ratio)
    assert path.endswith("ercref/erc.py") and "def entropy_ratio" in src
    part, _, line = T.source_of(ercref.apply_erc, start="def apply_erc", stop="):")
    assert part.startswith("def apply_erc") and part.count("\n") >= 1 and line >= first
    with pytest.raises(ValueError, match="start="):
        T.source_of(ercref.apply_erc, start="no such text in there")
    with pytest.raises(TypeError, match="obj"):
        T.source_of(3)


def test_show_source_is_a_markdown_code_block_with_file_and_line():
    md = T.show_source(ercref.entropy_ratio)
    text = md.data if hasattr(md, "data") else md
    assert text.startswith("```python\n# ercref/erc.py, line ") and "def entropy_ratio" in text


def test_check_exercise_passes_a_correct_solution_and_reports_a_wrong_one(capsys):
    ok = T.check_exercise(lambda entropy, old_entropy: ercref.entropy_ratio(entropy, old_entropy),
                          ercref.entropy_ratio, _erc_inputs, name="ratio")
    assert ok.passed and ok.trials == 20 and "PASSED" in capsys.readouterr().out
    bad = T.check_exercise(lambda entropy, old_entropy: entropy / old_entropy,   # forgets the 1e-8
                           ercref.entropy_ratio, _erc_inputs, name="ratio", atol=1e-12, rtol=1e-12)
    assert not bad.passed and "differ" in bad.message and "first at index" in bad.message


def test_check_exercise_names_stub_shape_and_exception():
    def stub(entropy, old_entropy):
        raise NotImplementedError
    assert "not implemented yet" in T.check_exercise(stub, ercref.entropy_ratio, _erc_inputs, verbose=False).message
    shape = T.check_exercise(lambda entropy, old_entropy: entropy[0], ercref.entropy_ratio, _erc_inputs, verbose=False)
    assert not shape.passed and "shape" in shape.message
    boom = T.check_exercise(lambda entropy, old_entropy: 1 / 0, ercref.entropy_ratio, _erc_inputs, verbose=False)
    assert not boom.passed and "ZeroDivisionError" in boom.message
    nan = T.check_exercise(lambda entropy, old_entropy: entropy * float("nan"), ercref.entropy_ratio, _erc_inputs,
                           verbose=False)
    assert not nan.passed and "NaN" in nan.message
    with pytest.raises(ValueError, match="trials"):
        T.check_exercise(stub, ercref.entropy_ratio, _erc_inputs, trials=0)


def test_check_exercise_names_a_sparse_result_and_the_exercises_own_broken_parts():
    """The learner's sparse result is a failed result saying what to return; a broken make_inputs or
    reference (the notebook's code, not the learner's) is an error naming that argument."""
    sparse = T.check_exercise(lambda entropy, old_entropy: ercref.entropy_ratio(entropy, old_entropy).to_sparse(),
                              ercref.entropy_ratio, _erc_inputs, verbose=False)
    assert not sparse.passed and "sparse" in sparse.message and "to_dense" in sparse.message
    ok = lambda entropy, old_entropy: ercref.entropy_ratio(entropy, old_entropy)  # noqa: E731
    with pytest.raises(TypeError, match=r"make_inputs\(generator\) raised TypeError"):
        T.check_exercise(ok, ercref.entropy_ratio, lambda: {}, verbose=False)          # takes no generator
    with pytest.raises(TypeError, match=r"make_inputs\(generator\) raised KeyError"):
        T.check_exercise(ok, ercref.entropy_ratio, lambda gen: {}["x"], verbose=False)
    with pytest.raises(RuntimeError, match=r"reference raised ZeroDivisionError.*trial 0"):
        T.check_exercise(ok, lambda entropy, old_entropy: 1 / 0, _erc_inputs, verbose=False)


def test_check_exercise_compares_tuples_and_bool_masks():
    def ref(entropy, old_entropy):
        rho = ercref.entropy_ratio(entropy, old_entropy)
        return rho, (rho > 0.95) & (rho < 1.05)

    def wrong_mask(entropy, old_entropy):
        rho = ercref.entropy_ratio(entropy, old_entropy)
        return rho, (rho >= 0.0)
    assert T.check_exercise(ref, ref, _erc_inputs, verbose=False).passed
    res = T.check_exercise(wrong_mask, ref, _erc_inputs, verbose=False)
    assert not res.passed and res.message.count("output 1") == 1


def test_interact_headless_calls_the_function_once_with_widget_values(monkeypatch, capsys):
    class FakeWidget:
        value = 0.05
    seen = []
    monkeypatch.setenv(T.HEADLESS_ENV, "1")
    assert T.interact(lambda beta, k: seen.append((beta, k)), beta=FakeWidget(), k=3) is None
    assert seen == [(0.05, 3)] and "headless" in capsys.readouterr().out
    monkeypatch.setenv(T.HEADLESS_ENV, "0")
    assert not T.headless()


# ----------------------------------------------------------------------------- what the learner's code did
def _ref_ratio(entropy, old_entropy):
    return ercref.entropy_ratio(entropy, old_entropy)


def test_reference_sees_pristine_inputs_and_an_in_place_change_is_reported():
    def in_place(entropy, old_entropy):        # right values, but computed by overwriting the input
        entropy.add_(1e-8).div_(old_entropy + 1e-8)
        return entropy
    res = T.check_exercise(in_place, _ref_ratio, _erc_inputs, verbose=False)
    assert not res.passed and res.details["problem"] == "mutated_input" and "['entropy']" in res.message
    assert "in place" in res.message and "clone" in res.message
    seen = []

    def ref_records(entropy, old_entropy):
        seen.append(entropy.clone())
        return _ref_ratio(entropy, old_entropy)

    def zeroes_then_right(entropy, old_entropy):   # mutates, so the reference must still see the original
        out = _ref_ratio(entropy, old_entropy)
        entropy.zero_()
        return out
    T.check_exercise(zeroes_then_right, ref_records, _erc_inputs, verbose=False)
    assert not seen                          # the mutation is caught before the reference would be misled
    ok = T.check_exercise(lambda entropy, old_entropy: _ref_ratio(entropy.clone(), old_entropy), ref_records,
                          _erc_inputs, verbose=False, trials=3)
    assert ok.passed and len(seen) == 3 and all(bool((x > 0).all()) for x in seen)   # pristine inputs each time


def test_a_bool_result_against_a_float_reference_and_the_reverse():
    res = T.check_exercise(lambda entropy, old_entropy: _ref_ratio(entropy, old_entropy) > 0, _ref_ratio, _erc_inputs,
                           verbose=False)
    assert not res.passed and res.details["problem"] == "differs" and "torch.bool" in res.message
    assert "values are expected" in res.message
    mask_ref = lambda entropy, old_entropy: _ref_ratio(entropy, old_entropy) > 1.0   # noqa: E731
    rev = T.check_exercise(lambda entropy, old_entropy: (_ref_ratio(entropy, old_entropy) > 1.0).float(), mask_ref,
                           _erc_inputs, verbose=False)
    assert not rev.passed and "a mask of True / False is expected" in rev.message
    assert T.check_exercise(mask_ref, mask_ref, _erc_inputs, verbose=False).passed


@pytest.mark.parametrize("body, problem, phrase", [
    (lambda entropy, old_entropy: None, "not_a_result", "returned None"),
    (lambda entropy, old_entropy: "0.5", "not_a_result", "returned the text '0.5'"),
    (lambda entropy, old_entropy: (x for x in entropy), "not_a_result", "generator"),
    (lambda entropy, old_entropy: {"rho": entropy}, "not_a_result", "returned a dict"),
    (lambda entropy, old_entropy: entropy @ old_entropy, "raised", "your function raised RuntimeError"),
    (lambda entropy, old_entropy: entropy.foo, "raised", "your function raised AttributeError"),
    (lambda entropy, old_entropy: exit(3), "raised", "your function raised SystemExit"),
    (lambda entropy, old_entropy: torch.empty(3, 7, device="meta"), "not_a_result", "meta device"),
])
def test_what_the_learners_code_did_comes_back_as_a_result(body, problem, phrase, capsys):
    res = T.check_exercise(body, _ref_ratio, _erc_inputs, name="ratio")
    assert not res.passed and res.details["problem"] == problem and phrase in res.message and "trial 0" in res.message
    assert "NOT YET" in capsys.readouterr().out
    assert set(res.details["inputs"]) == {"entropy", "old_entropy"}


def test_a_generator_function_is_reported_not_raised():
    def gen_fn(entropy, old_entropy):
        yield _ref_ratio(entropy, old_entropy)
    res = T.check_exercise(gen_fn, _ref_ratio, _erc_inputs, verbose=False)
    assert not res.passed and "`yield`" in res.message


@pytest.mark.parametrize("kwargs, phrase", [
    ({"atol": float("inf")}, "atol must be a finite number >= 0"),      # would pass any function
    ({"rtol": float("nan")}, "rtol must be a finite number >= 0"),
    ({"atol": -1e-5}, "atol must be a finite number >= 0"),
    ({"atol": 1e6}, "atol must be < 1"),                              # passes zeros for any reference
    ({"rtol": 1.0}, "rtol must be < 1"),
    ({"trials": True}, "trials must be an int >= 1"),
    ({"trials": 2.5}, "trials must be an int >= 1"),
])
def test_check_exercise_refuses_tolerances_and_trials_that_check_nothing(kwargs, phrase):
    with pytest.raises(ValueError, match=phrase):
        T.check_exercise(lambda entropy, old_entropy: entropy * 0, _ref_ratio, _erc_inputs, verbose=False, **kwargs)


def test_make_inputs_must_return_keyword_arguments():
    with pytest.raises(TypeError, match="make_inputs must return a dict of keyword arguments, got list"):
        T.check_exercise(_ref_ratio, _ref_ratio, lambda gen: [torch.ones(2), torch.ones(2)], verbose=False)


# ----------------------------------------------------------------------------- reference solutions on demand
def _solution_checks():
    """(name, ercref reference, inputs, wrap) for every exercise with a reference solution; ``wrap`` (or None)
    turns the solution into what the reference returns (gppo: value and gradient; counts: a float64 tensor)."""
    def erc_ref(entropy, old_entropy, response_mask, beta_low, beta_high):
        keep, _, _, rho = ercref.erc_masks(entropy, old_entropy, response_mask, beta_low, beta_high)
        return keep, rho

    def erc_inputs(gen):
        old = torch.rand(3, 9, generator=gen, dtype=torch.float64) * 2
        new = old * (1 + 0.1 * torch.randn(3, 9, generator=gen, dtype=torch.float64))
        new[0, :3] = old[0, :3] * 1.05                          # exactly on the upper bound
        return {"entropy": new.clamp_min(0), "old_entropy": old, "response_mask": torch.rand(3, 9, generator=gen) < 0.8,
                "beta_low": 0.05, "beta_high": 0.05}

    def gppo_ref(logp, old_logp, advantages, eps_low, eps_high):
        return ercref.LOSSES["gppo"](logp, old_logp, advantages, torch.ones_like(logp, dtype=torch.bool),
                                     eps_low=eps_low, eps_high=eps_high, beta1=1.0, beta2=1.0, clip_ratio_c=None)[0]

    def with_grad(fn):
        def wrapped(logp, old_logp, advantages, eps_low, eps_high):
            logp = logp.detach().clone().requires_grad_(True)
            loss = fn(logp, old_logp, advantages, eps_low=eps_low, eps_high=eps_high)
            return loss.detach(), torch.autograd.grad(loss.sum(), logp)[0]
        return wrapped

    def gppo_inputs(gen):
        old = -0.5 - 3 * torch.rand(3, 7, generator=gen, dtype=torch.float64)
        logp = (old + 0.4 * torch.randn(3, 7, generator=gen, dtype=torch.float64)).clamp(max=0.0)   # log-probs <= 0
        return {"logp": logp, "old_logp": old,
                "advantages": torch.randn(3, 7, generator=gen, dtype=torch.float64), "eps_low": 0.2, "eps_high": 0.2}

    from ercref.study import claims, stability

    def norms(gen):
        n = int(torch.randint(6, 40, (1,), generator=gen))
        g = torch.exp(0.3 * torch.randn(n, generator=gen, dtype=torch.float64))
        planted = torch.rand(n, generator=gen) < 0.15
        return {"grad_norms": torch.where(planted, g * (2 + 6 * torch.rand(n, generator=gen, dtype=torch.float64)), g)}

    def spikes_ref(grad_norms):
        return torch.tensor(stability.grad_norm_spikes([{"kind": "minibatch", "step": j, "grad/norm": float(x)}
                                                        for j, x in enumerate(grad_norms)]))

    def pairs(gen):
        n = int(torch.randint(2, 11, (1,), generator=gen))
        base = torch.rand(n, generator=gen, dtype=torch.float64)
        return {"erc": base + 0.05 + 0.1 * torch.randn(n, generator=gen, dtype=torch.float64), "base": base}

    def paired_ref(erc, base):
        return torch.tensor(claims.paired_difference(dict(enumerate(erc.tolist())), dict(enumerate(base.tolist()))))

    def rewards(gen):
        G, n = int(torch.randint(2, 9, (1,), generator=gen)), int(torch.randint(1, 6, (1,), generator=gen))
        r = (torch.rand(n, G, generator=gen) < 0.4).float()
        r[0] = 1.0                                                   # one group all equal: advantages 0
        return {"rewards": r.reshape(-1), "group_size": G}

    def as_tensor(fn):
        return lambda **kw: torch.as_tensor(fn(**kw), dtype=torch.float64)

    return [("entropy", ercref.entropy_from_logits, lambda g: {"logits": 1000 * torch.randn(4, 50, generator=g)}, None),
            ("erc_keep", erc_ref, erc_inputs, None),
            ("gppo_loss", with_grad(gppo_ref), gppo_inputs, with_grad),
            ("spikes", as_tensor(spikes_ref), norms, as_tensor),
            ("paired_interval", paired_ref, pairs, as_tensor),
            ("group_advantages", ercref.group_advantages, rewards, None)]


@pytest.mark.parametrize("name, ref, inputs, wrap", _solution_checks(), ids=lambda x: x if isinstance(x, str) else "")
def test_every_reference_solution_matches_ercref(name, ref, inputs, wrap):
    fn = T.solution(name)
    mine = fn if wrap is None else wrap(fn)          # the reference comes wrapped the same way
    res = T.check_exercise(mine, ref, inputs, name=name, verbose=False)
    assert res.passed, res.message


def test_every_named_solution_has_a_check():
    from ercref.study import solutions
    assert set(solutions.NAMES) == {c[0] for c in _solution_checks()}


def test_solution_refuses_an_unknown_name_and_lists_the_valid_ones():
    with pytest.raises(ValueError, match=r"name must be one of \('entropy', 'erc_keep', 'gppo_loss', .*got 'entopy'"):
        T.solution("entopy")
    with pytest.raises(ValueError, match="got None"):
        T.solution(None)


def test_solution_shows_its_source_only_when_asked(monkeypatch):
    import IPython.display
    shown = []
    monkeypatch.setattr(IPython.display, "display", lambda obj: shown.append(obj))
    fn = T.solution("entropy")
    assert shown == [] and callable(fn)
    assert T.solution("entropy", show=True) is fn
    (md,) = shown
    assert "ercref/study/solutions.py, line" in md.data and "def entropy(logits)" in md.data


def test_the_stub_message_points_at_the_solution_text():
    def stub(entropy, old_entropy):
        raise NotImplementedError
    res = T.check_exercise(stub, _ref_ratio, _erc_inputs, verbose=False)
    assert res.details["problem"] == "not_implemented" and "reference solution" in res.message
