"""Teaching helpers for the notebooks: show ercref's own source beside an equation, check a
learner's exercise against ercref on random inputs, and sliders that also run headless.

    show_source(ercref.apply_erc)         the function's source, with file and line numbers, as a
                                          code block (read from the installed file: it never drifts)
    check_exercise(mine, ref, make_inputs)  compares a learner's function with ercref's on random
                                          inputs; says which input and which entry differ
    solution(name, show=False)            an exercise's reference solution (ercref/study/solutions.py),
                                          loaded only when called: no notebook cell defines it, so
                                          "Run All" keeps the learner's function; show=True displays
                                          its source
    interact(fn, **widgets)               ipywidgets.interact in JupyterLab; under ERCREF_HEADLESS=1
                                          (the nbclient runner: tests, committed outputs) it calls
                                          fn once with each widget's value, so no output depends on
                                          a widget comm (jupyter/nbclient#312: such cells can hang)

No math here: the notebooks' numbers come from ercref and ercref.study.
"""
from __future__ import annotations

import inspect
import math
import numbers
import os
import textwrap
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

HEADLESS_ENV = "ERCREF_HEADLESS"
QUICK_ENV = "ERCREF_QUICK"


def quick_mode() -> bool:
    """True when ERCREF_QUICK is set to a non-empty value other than 0 (CI)."""
    return os.environ.get(QUICK_ENV, "") not in ("", "0")


def headless() -> bool:
    """True when ERCREF_HEADLESS is set to a non-empty value other than 0 (the nbclient runner)."""
    return os.environ.get(HEADLESS_ENV, "") not in ("", "0")


# ----------------------------------------------------------------------------- source beside equations
def source_of(obj, start: str | None = None, stop: str | None = None) -> tuple[str, str, int]:
    """(source, file relative to the package's parent, first line number) of a function or class.
    ``start`` / ``stop``: keep the lines from the first one containing ``start`` to the first one
    after it containing ``stop`` (inclusive), to show the few lines that implement an equation."""
    if not (inspect.isfunction(obj) or inspect.isclass(obj) or inspect.ismethod(obj)):
        raise TypeError(f"obj must be a function, method or class, got {type(obj).__name__}")
    obj = inspect.unwrap(obj)  # ercref's input-checking decorators keep the function in __wrapped__
    lines, first = inspect.getsourcelines(obj)
    if start is not None:
        idx = [i for i, line in enumerate(lines) if start in line]
        if not idx:
            raise ValueError(f"start={start!r} is not in the source of {obj.__qualname__}")
        lo = idx[0]
        hi = len(lines) - 1
        if stop is not None:
            after = [i for i in range(lo, len(lines)) if stop in lines[i]]
            if not after:
                raise ValueError(f"stop={stop!r} does not follow start={start!r} in {obj.__qualname__}")
            hi = after[0]
        lines, first = lines[lo:hi + 1], first + lo
    path = Path(inspect.getsourcefile(obj)).resolve()
    root = Path(__file__).resolve().parents[2]
    try:
        shown = str(path.relative_to(root))
    except ValueError:
        shown = path.name
    return textwrap.dedent("".join(lines)), shown, first


def show_source(obj, start: str | None = None, stop: str | None = None):
    """Displayable source of ``obj`` (see source_of) headed by ``# file:line``: an IPython Markdown
    code block in a notebook (the last expression of a cell shows it), plain text elsewhere."""
    src, path, first = source_of(obj, start, stop)
    text = f"# {path}, line {first}\n{src}"
    try:
        from IPython.display import Markdown
    except ImportError:  # pragma: no cover - IPython ships with the notebooks extra
        return text
    return Markdown(f"```python\n{text}```")


# ----------------------------------------------------------------------------- exercises
@dataclass
class ExerciseResult:
    """What check_exercise found: ``passed`` and a message for the learner."""
    name: str
    passed: bool
    trials: int
    message: str
    details: dict = field(default_factory=dict)

    def __str__(self) -> str:
        return self.message

    def _repr_markdown_(self) -> str:
        mark = "**passed**" if self.passed else "**not yet**"
        return f"{self.name}: {mark}. {self.message}"


def _as_tuple(out) -> tuple:
    return tuple(out) if isinstance(out, (tuple, list)) else (out,)


def _pristine(value):
    """A copy of one input that no call can change: tensors cloned (requires_grad kept for leaves),
    lists / tuples / dicts copied entry by entry, anything else as it is."""
    if isinstance(value, torch.Tensor):
        c = value.detach().clone()
        return c.requires_grad_(value.requires_grad) if value.is_leaf and c.is_floating_point() else c
    if isinstance(value, (list, tuple)):
        return type(value)(_pristine(v) for v in value)
    if isinstance(value, dict):
        return {k: _pristine(v) for k, v in value.items()}
    return value


def _unchanged(now, before) -> bool:
    if isinstance(before, torch.Tensor):
        if not isinstance(now, torch.Tensor) or now.shape != before.shape or now.dtype != before.dtype:
            return False
        if now.is_floating_point() or now.is_complex():
            return torch.allclose(now.detach(), before, rtol=0.0, atol=0.0, equal_nan=True)
        return torch.equal(now.detach(), before)
    if isinstance(before, (list, tuple)):
        return isinstance(now, (list, tuple)) and len(now) == len(before) and all(map(_unchanged, now, before))
    if isinstance(before, dict):
        return isinstance(now, dict) and now.keys() == before.keys() and all(_unchanged(now[k], before[k]) for k in before)
    return True


def _not_a_result(out) -> str | None:
    """What is wrong with a returned object that cannot be a result (None, text, a generator, ...)."""
    for x in _as_tuple(out):
        if x is None:
            return "returned None: does your function end with `return ...`?"
        if isinstance(x, (str, bytes)):
            return f"returned the text {str(x)[:60]!r}, not numbers (a tensor or a float)"
        if inspect.isgenerator(x) or isinstance(x, (map, filter, zip, range)) or (
                hasattr(x, "__next__") and not isinstance(x, torch.Tensor)):
            return ("returned a generator or iterator (a `yield` in your function, or a generator expression): "
                    "return the tensor itself, e.g. torch.stack([...]) or torch.tensor([...])")
        if not isinstance(x, (torch.Tensor, int, float, bool, list, tuple)) and not hasattr(x, "__array__"):
            return f"returned a {type(x).__name__}, not a tensor or a number"
        if isinstance(x, torch.Tensor) and x.is_meta:
            return "returned a tensor on the meta device, which holds no values (e.g. from torch.empty(..., device='meta'))"
        if isinstance(x, torch.Tensor) and x.layout != torch.strided:
            return (f"returned a {x.layout} tensor: return a dense one (`.to_dense()`), as the reference does")
    return None


def _compare(mine, ref, atol: float, rtol: float) -> str | None:
    """None when equal within tolerance, else what differs (type, shape, first entry, values)."""
    a, b = _as_tuple(mine), _as_tuple(ref)
    if len(a) != len(b):
        return f"returned {len(a)} value(s), expected {len(b)}"
    for j, (x, y) in enumerate(zip(a, b)):
        which = f"output {j}: " if len(b) > 1 else ""
        y = torch.as_tensor(y)
        if not isinstance(x, torch.Tensor):
            try:
                x = torch.as_tensor(x)
            except (TypeError, ValueError, RuntimeError) as e:
                return f"{which}returned {type(x).__name__} that is not a tensor or numbers ({e})"
        if (x.dtype == torch.bool) != (y.dtype == torch.bool):
            return (f"{which}returned a {x.dtype} tensor where the reference returns {y.dtype}: "
                    + ("a comparison gives True / False, but values are expected here" if x.dtype == torch.bool else
                       "a mask of True / False is expected here (e.g. a comparison such as rho > 1 - beta)"))
        if x.is_complex() != y.is_complex():
            return f"{which}returned a {x.dtype} tensor where the reference returns {y.dtype}"
        if x.shape != y.shape:
            return f"{which}shape {tuple(x.shape)}, expected {tuple(y.shape)}"
        x = x.detach().cpu()
        y = y.detach().cpu()
        if y.dtype == torch.bool:
            bad = x != y
        else:
            x64, y64 = x.double(), y.double()
            if torch.isnan(x64).any() and not torch.isnan(y64).any():
                idx = tuple(torch.nonzero(torch.isnan(x64))[0].tolist())
                return f"{which}NaN at index {idx} where the reference is {y64[idx].item():.6g}"
            bad = ~torch.isclose(x64, y64, atol=atol, rtol=rtol, equal_nan=True)
        if bad.any():
            idx = tuple(torch.nonzero(bad)[0].tolist())
            return (f"{which}{int(bad.sum())} of {bad.numel()} entries differ; first at index {idx}: "
                    f"yours {x[idx].item():.6g}, expected {y[idx].item():.6g}")
    return None


def check_exercise(mine: Callable, reference: Callable, make_inputs: Callable[[torch.Generator], dict],
                   name: str = "exercise", trials: int = 20, seed: int = 0, atol: float = 1e-5,
                   rtol: float = 1e-4, verbose: bool = True) -> ExerciseResult:
    """Call ``mine(**inputs)`` and ``reference(**inputs)`` on ``trials`` random inputs
    (``make_inputs(generator)`` returns the keyword arguments) and compare every output.

    The reference runs on pristine copies of the inputs, taken before ``mine`` is called, so a
    learner's function that changes its inputs in place cannot change what it is compared with; such a
    change is itself reported. Whatever the learner's code does comes back as a failed result that says
    so, never as an exception: NotImplementedError gives "not implemented yet"; any other exception,
    None, text, a generator, a bool result where values are expected (or the reverse), a wrong shape or
    a wrong value names the trial, the inputs' shapes and the first differing entry
    (``details["problem"]``: "not_implemented", "raised", "mutated_input", "not_a_result" or "differs").
    Prints the message when ``verbose``; returns an ExerciseResult."""
    if not callable(mine) or not callable(reference):
        raise TypeError("mine and reference must be callables")
    if not isinstance(trials, numbers.Integral) or isinstance(trials, bool) or trials < 1:
        raise ValueError(f"trials must be an int >= 1, got {trials!r}")
    for arg, tol in (("atol", atol), ("rtol", rtol)):
        if not isinstance(tol, numbers.Real) or isinstance(tol, bool) or not 0 <= tol < math.inf:
            raise ValueError(f"{arg} must be a finite number >= 0 (a tolerance), got {tol!r}")
        if tol >= 1:   # rtol >= 1 passes zeros for any reference; atol >= 1 passes most wrong answers
            raise ValueError(f"{arg} must be < 1 (a tolerance of 1 or more accepts wrong answers), got {tol!r}")
    gen = torch.Generator().manual_seed(seed)
    result = None

    def fail(t, problem, text, inputs):
        return ExerciseResult(name, False, t, text, {"problem": problem, "inputs": inputs})

    for t in range(trials):
        try:   # make_inputs and reference come with the exercise: their errors are the notebook's, not the learner's
            inputs = make_inputs(gen)
        except Exception as e:  # noqa: BLE001 - re-raised, naming the argument
            raise TypeError(f"make_inputs(generator) raised {type(e).__name__}: {e} (make_inputs must take one "
                            "torch.Generator and return a dict of keyword arguments)") from e
        if not isinstance(inputs, dict):
            raise TypeError(f"make_inputs must return a dict of keyword arguments, got {type(inputs).__name__}")
        before = _pristine(inputs)             # what the learner's function was given
        ref_inputs = _pristine(inputs)         # what the reference is given
        shapes = {k: tuple(v.shape) for k, v in inputs.items() if isinstance(v, torch.Tensor)}
        where = f"(trial {t}, input shapes {shapes})"
        try:
            out = mine(**inputs)
        except NotImplementedError:
            result = fail(t, "not_implemented", "not implemented yet: write your version above "
                          "(stuck? the text under the exercise says how to see the reference solution).", inputs)
            break
        except (Exception, SystemExit) as e:  # noqa: BLE001 - the learner's bug (exit() too), with the inputs
            result = fail(t, "raised", f"your function raised {type(e).__name__}: {e} {where}", before)
            break
        changed = [k for k in inputs if not _unchanged(inputs[k], before[k])]
        if changed:
            result = fail(t, "mutated_input", f"your function changed its input(s) {changed} in place {where}, e.g. "
                          "with `x += ...`, `x[...] = ...` or an op ending in `_`: work on a copy (`x = x.clone()`) "
                          "or use out-of-place operations", before)
            break
        what = _not_a_result(out)
        if what is not None:
            result = fail(t, "not_a_result", f"your function {what} {where}", before)
            break
        try:
            expected = reference(**ref_inputs)
        except Exception as e:  # noqa: BLE001 - re-raised, naming the argument
            raise RuntimeError(f"reference raised {type(e).__name__}: {e} {where}: the exercise's reference "
                               "cannot take the inputs make_inputs builds") from e
        diff = _compare(out, expected, atol, rtol)
        if diff is not None:
            result = fail(t, "differs", f"differs from ercref on trial {t} (input shapes {shapes}): {diff}", before)
            break
    if result is None:
        result = ExerciseResult(name, True, trials, f"matches ercref on {trials} random inputs.")
    if verbose:
        print(f"{name}: {'PASSED' if result.passed else 'NOT YET'} - {result.message}")
    return result


# ----------------------------------------------------------------------------- reference solutions
def solution(name: str, show: bool = False) -> Callable:
    """The reference solution of exercise ``name`` (one of ercref.study.solutions.NAMES), as a
    function. It is never assigned to the learner's name: check it with check_exercise, or adopt it
    yourself (``my_entropy = solution("entropy")``). ``show=True`` also displays its source (a code
    block in a notebook, printed text elsewhere), for when the learner asks to see it."""
    from . import solutions

    if not isinstance(name, str) or name not in solutions.NAMES:
        raise ValueError(f"name must be one of {solutions.NAMES} (the exercises with a reference solution), "
                         f"got {name!r}")
    fn = getattr(solutions, name)
    if show:
        shown = show_source(fn)
        try:
            from IPython.display import display
        except ImportError:  # pragma: no cover - IPython ships with the notebooks extra
            print(shown)
        else:
            display(shown)
    return fn


# ----------------------------------------------------------------------------- sliders
def interact(fn: Callable, **widgets):
    """``ipywidgets.interact(fn, **widgets)`` in a live kernel with a front end. Under
    ERCREF_HEADLESS=1 calls ``fn`` once with each widget's ``.value`` (plain values pass through)
    (returns None), so the cell's output is a plain figure / text. Pass widgets, ``ipywidgets.fixed``
    or plain values, not interact's tuple abbreviations."""
    if headless():
        kwargs = {k: getattr(w, "value", w) for k, w in widgets.items()}
        print("(headless run: the sliders' default values; run the notebook in JupyterLab to move them)")
        fn(**kwargs)
        return None
    import ipywidgets
    return ipywidgets.interact(fn, **widgets)
