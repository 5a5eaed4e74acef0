"""Argument checks shared by the core: every failure is a ValueError that names the argument.

Silent NaNs are the worst failure mode of RL code (a NaN loss poisons the optimizer state and
the run is lost), so the core validates its inputs up front and cheaply.

Two kinds of check:

* metadata (type, dtype, shape, ``requires_grad``, Python numbers) is checked at once: free.
* values (finite, 0/1 mask, non-empty mask, finite outputs) need the tensor's contents, i.e. a
  host sync on GPU. These are *deferred*: each check records a 0-d bool tensor (no sync), and
  the outermost public call (``@checked``) reads all of them back with ONE host sync when it
  finishes, before it returns, raising the first failure in the order recorded.
  The message of a failure (e.g. the first bad position) is only built on the error path.

Each input is checked once, at the public function a user calls: the public functions validate,
then call unchecked internals (``_aggregate``, ``_erc``, a loss body, ...) that trust their
inputs. ``trace_checks`` records every check made in a block (tests count them).

Low precision: ``upcast`` gives the dtype every core computation runs in, fp32 for bf16 / fp16
tensors (fp32 and fp64 are left as they are), so half-precision inputs give exactly the result of
fp32 inputs holding the same values; gradients still flow back to the half-precision input.
"""
from __future__ import annotations

import contextvars
import functools
from collections.abc import Callable
from contextlib import contextmanager

import torch

Tensor = torch.Tensor
Message = str | Callable[[], str]


# ----------------------------------------------------------------------------- deferred value checks
class _Pending:
    """Value checks recorded in one public call: (ok flag, message), read back with one sync."""

    def __init__(self) -> None:
        self.items: list[tuple[Tensor, Message]] = []

    def add(self, ok: Tensor, message: Message) -> None:
        self.items.append((ok, message))

    def run(self) -> None:
        if not self.items:
            return
        dev = self.items[0][0].device
        oks = torch.stack([ok.to(dev) for ok, _ in self.items]).tolist()  # the one host sync
        for ok, (_, message) in zip(oks, self.items):
            if not ok:
                raise ValueError(message() if callable(message) else message)


_ACTIVE: contextvars.ContextVar[_Pending | None] = contextvars.ContextVar("ercref_pending_checks", default=None)
_TRACE: contextvars.ContextVar[list | None] = contextvars.ContextVar("ercref_check_trace", default=None)


@contextmanager
def trace_checks():
    """Yield a list that receives (kind, argument name) for every check made inside the block."""
    seen: list[tuple[str, str]] = []
    token = _TRACE.set(seen)
    try:
        yield seen
    finally:
        _TRACE.reset(token)


def _trace(kind: str, name: str) -> None:
    seen = _TRACE.get()
    if seen is not None:
        seen.append((kind, name))


@contextmanager
def deferred_checks():
    """Value checks recorded inside run together, with one host sync, when the outermost such
    block exits normally (an exception raised inside wins: the checks are then dropped)."""
    if _ACTIVE.get() is not None:
        yield
        return
    pending = _Pending()
    token = _ACTIVE.set(pending)
    try:
        yield
    finally:
        _ACTIVE.reset(token)
    pending.run()


def checked(fn):
    """Decorator for a public entry: its value checks (and those of what it calls) cost one sync."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with deferred_checks():
            return fn(*args, **kwargs)
    return wrapper


def require(ok: Tensor, message: Message) -> None:
    """Record the 0-d bool tensor ``ok`` (True = fine); ``message`` (or a callable building it) is
    raised as a ValueError if it is False. Runs at once outside a ``deferred_checks`` block."""
    pending = _ACTIVE.get()
    if pending is None:
        one = _Pending()
        one.add(ok, message)
        one.run()
    else:
        pending.add(ok, message)


def _first_index(bad: Tensor) -> str:
    """'[i, j]' of the first True entry of ``bad`` (error path only: syncs)."""
    if bad.dim() == 0:
        return ""
    return "[" + ", ".join(str(i) for i in torch.nonzero(bad)[0].tolist()) + "]"


# ----------------------------------------------------------------------------- metadata checks (immediate)
def check_float(name: str, x: Tensor) -> None:
    _trace("float", name)
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")


def check_same_shape(name: str, x: Tensor, ref_name: str, ref: Tensor) -> None:
    """Same shape and same device as ``ref``."""
    _trace("shape", name)
    if x.device != ref.device:
        raise ValueError(f"{name} is on device {x.device} but {ref_name} is on {ref.device}: "
                         f"move both to one device (e.g. {name}.to({ref_name}.device))")
    if x.shape != ref.shape:
        raise ValueError(f"{name} has shape {tuple(x.shape)} but {ref_name} has shape {tuple(ref.shape)}")


def check_no_grad(name: str, x: Tensor, why: str) -> None:
    """``x`` is a constant (a rollout snapshot, a reference policy): it must not carry a graph."""
    _trace("no_grad", name)
    if x.requires_grad:
        raise ValueError(f"{name} requires grad, but it must be a constant: {why}. "
                         f"Pass {name}.detach() (or compute it under torch.no_grad())")


def check_positive(name: str, value: float) -> None:
    if not (isinstance(value, (int, float)) and value > 0 and value == value and value != float("inf")):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")


def check_fraction(name: str, value: float) -> None:
    """0 < value < 1 (a clip width on the low side: 1 - value must stay positive)."""
    check_positive(name, value)
    if value >= 1:
        raise ValueError(f"{name} must be < 1 (the lower bound 1 - {name} must stay positive), got {value!r}")


# ----------------------------------------------------------------------------- value checks (deferred)
def check_finite(name: str, x: Tensor, where: Tensor | None = None, what: str = "") -> None:
    """Every entry of ``x`` (or every entry where ``where`` is True) is finite.
    ``what`` (e.g. 'at a response position') says which entries were checked."""
    _trace("finite", name)
    x = x.detach()
    bad = ~torch.isfinite(x)
    if where is not None:
        bad = bad & where

    def message() -> str:
        pos = _first_index(bad)
        return f"{name} contains NaN or inf values{' ' + what if what else ''} (first at index {pos}: {x[bad][0].item()})"

    require(~bad.any(), message)


LOG_PROB_TOL = 1e-3   # log_softmax rounds to at most a few ulps above 0; a larger positive value is not a log-probability


def check_log_prob(name: str, x: Tensor, where: Tensor) -> None:
    """Every entry of ``x`` where ``where`` is True is a log-probability: <= 0 (up to LOG_PROB_TOL for
    rounding). A positive value usually means probabilities or logits were passed instead."""
    _trace("log_prob", name)
    x = x.detach()
    bad = (x > LOG_PROB_TOL) & where

    def message() -> str:
        pos = _first_index(bad)
        return (f"{name} must hold log-probabilities (<= 0) at response positions, got {x[bad][0].item():.6g} at index "
                f"{pos}: pass log_softmax(logits).gather(-1, tokens), not probabilities or logits")

    require(~bad.any(), message)


def as_bool_mask(name: str, mask: Tensor, like: Tensor | None = None, like_name: str = "logp") -> Tensor:
    """A response mask as bool; accepts bool, integer or float 0/1 tensors (0/1 checked, deferred)."""
    _trace("mask", name)
    if not isinstance(mask, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(mask).__name__}")
    if like is not None:
        check_same_shape(name, mask, like_name, like)
    if mask.dtype == torch.bool:
        return mask
    if mask.is_complex():
        raise ValueError(f"{name} must be bool or 0/1, got dtype {mask.dtype}")
    mask = mask.detach()
    require(((mask == 0) | (mask == 1)).all(), f"{name} must contain only 0 and 1 (or be a bool tensor)")
    return mask.bool()


def check_any(name: str, mask: Tensor) -> None:
    _trace("any", name)
    require(mask.any(), f"{name} selects no tokens (an all-masked batch has no loss to compute)")


# ----------------------------------------------------------------------------- compute dtype
def upcast(x: Tensor) -> Tensor:
    """``x`` in the dtype the core computes in: fp32 for bf16 / fp16 (differentiably), else as is."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()
