"""Metrics leave the core as detached 0-d tensors, so a training step never waits on the device
for a number it only logs. Convert a whole dict at logging time with one host sync:

    loss, m = ercref.compute_policy_loss(cfg, ...)
    log(ercref.metrics_to_floats(m))        # {"erc/clip_frac": 0.12, ...}
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from numbers import Real

import torch

Tensor = torch.Tensor


def metrics_to_floats(metrics: Mapping[str, Tensor | float | int]) -> dict[str, float]:
    """A dict of 0-d tensors (any device, any dtype) and plain numbers -> a dict of python floats.

    The tensors are stacked per device and copied to the host at once: one sync per device (in
    practice one), instead of one per ``float(t)``. Keys keep their order. A tensor with more than
    one element, or a value that is neither a tensor nor a real number, raises ValueError naming
    the key.
    """
    out: dict[str, float] = {}
    by_device: dict[torch.device, list[tuple[str, Tensor]]] = {}
    for key, value in metrics.items():
        if isinstance(value, Tensor):
            if value.numel() != 1:
                raise ValueError(f"metric {key!r} must be a 0-d tensor or a number, got a tensor of shape {tuple(value.shape)}")
            by_device.setdefault(value.device, []).append((key, value))
            out[key] = math.nan  # placeholder: keeps the key order
        elif isinstance(value, Real):  # int, float, bool, numpy scalars
            out[key] = float(value)
        else:
            raise ValueError(f"metric {key!r} must be a 0-d tensor or a number, got {type(value).__name__}")
    for device, items in by_device.items():
        dtype = torch.float32 if device.type == "mps" else torch.float64  # mps has no float64
        values = torch.stack([v.detach().reshape(()).to(dtype) for _, v in items]).tolist()
        out.update(zip((k for k, _ in items), values))
    return out
