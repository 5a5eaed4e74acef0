"""Argument checks shared by the core: every failure is a ValueError that names the argument.

Silent NaNs are the worst failure mode of RL code (a NaN loss poisons the optimizer state and
the run is lost), so the core validates its inputs up front and cheaply.
"""
from __future__ import annotations

import torch

Tensor = torch.Tensor


def check_float(name: str, x: Tensor) -> None:
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")


def check_finite(name: str, x: Tensor) -> None:
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} contains NaN or inf values")


def check_same_shape(name: str, x: Tensor, ref_name: str, ref: Tensor) -> None:
    if x.shape != ref.shape:
        raise ValueError(f"{name} has shape {tuple(x.shape)} but {ref_name} has shape {tuple(ref.shape)}")


def as_bool_mask(name: str, mask: Tensor, like: Tensor | None = None, like_name: str = "logp") -> Tensor:
    """A response mask as bool; accepts bool, integer or float 0/1 tensors."""
    if not isinstance(mask, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(mask).__name__}")
    if like is not None:
        check_same_shape(name, mask, like_name, like)
    if mask.dtype == torch.bool:
        return mask
    if mask.is_complex():
        raise ValueError(f"{name} must be bool or 0/1, got dtype {mask.dtype}")
    if not bool(((mask == 0) | (mask == 1)).all()):
        raise ValueError(f"{name} must contain only 0 and 1 (or be a bool tensor)")
    return mask.bool()


def check_any(name: str, mask: Tensor) -> None:
    if not bool(mask.any()):
        raise ValueError(f"{name} selects no tokens (an all-masked batch has no loss to compute)")


def check_positive(name: str, value: float) -> None:
    if not (isinstance(value, (int, float)) and value > 0 and value == value and value != float("inf")):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")


def check_fraction(name: str, value: float) -> None:
    """0 < value < 1 (a clip width on the low side: 1 - value must stay positive)."""
    check_positive(name, value)
    if value >= 1:
        raise ValueError(f"{name} must be < 1 (the lower bound 1 - {name} must stay positive), got {value!r}")
