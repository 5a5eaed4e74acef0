"""Emulate a second device on a CPU-only machine, to catch device-mixing bugs without a GPU.

On CUDA, ``cpu_tensor[cuda_index]`` raises ("indices should be either on cpu or on the same device
as the indexed tensor") and so does arithmetic between a CUDA tensor and a CPU tensor with more
than one element; on CPU both silently work, and the meta device does not reproduce the first.

``HostTensorMode`` (a TorchFunctionMode) tracks which tensors are *host* tensors, i.e. what would
stay on the CPU if the run's device were a GPU:

* created by a factory call without ``device=`` (``torch.tensor``, ``torch.zeros``, ``arange``,
  ``from_numpy``, a tokenizer's ``return_tensors="pt"``), or by ``.cpu()``;
* the result of an op whose tensor inputs are all host tensors (and no ``device=`` was given).

Everything else is a *device* tensor: the model's parameters and buffers (load the model before
entering the mode), ``x.to(device)`` (always a copy here, as a real transfer is), a factory with
``device=``, anything computed from a device tensor, autograd's gradients.

Inside the mode an op raises ``DeviceMixError`` where CUDA would: indexing a host tensor with a
device index, and any op combining a device tensor with a host tensor of more than one element
(0-d host tensors are allowed, as CUDA allows CPU scalars). ``.to("cpu")`` is read as "to the run's
device" (the device being emulated is the CPU); code that means "to the host" calls ``.cpu()``.
"""
from __future__ import annotations

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten
from torch.utils.weak import WeakTensorKeyDictionary


class DeviceMixError(RuntimeError):
    pass


_NO_CHECK = {"copy_", "to", "cpu", "cuda", "__get__", "__set__", "__repr__", "__format__", "tolist", "item",
             "numpy", "size", "dim", "data_ptr", "__len__", "__bool__", "__index__", "__int__", "__float__"}
_INDEXING = {"__getitem__", "index_select", "gather", "take", "take_along_dim"}


def _name(func) -> str:
    return getattr(func, "__name__", str(func))


def _tensors(args, kwargs) -> list[torch.Tensor]:
    flat, _ = tree_flatten((args, kwargs or {}))
    return [x for x in flat if isinstance(x, torch.Tensor)]


class HostTensorMode(TorchFunctionMode):
    def __init__(self):
        super().__init__()
        self.host = WeakTensorKeyDictionary()
        self.checked_ops = 0

    def is_host(self, t: torch.Tensor) -> bool:
        return t in self.host

    def _mark(self, out, host: bool) -> None:
        if not host:
            return
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                self.host[t] = True

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = _name(func)
        if name == "to":
            device_arg = any(isinstance(a, (str, torch.device)) for a in args[1:]) or "device" in kwargs
            tensor_arg = next((a for a in args[1:] if isinstance(a, torch.Tensor)), None)
            if device_arg:   # a transfer: a new tensor on the run's device
                kw = dict(kwargs, copy=True)
                return func(*args, **kw)
            out = func(*args, **kwargs)
            if tensor_arg is not None:
                self._mark(out, self.is_host(tensor_arg))
            else:
                self._mark(out, self.is_host(args[0]))
            return out
        if name == "cpu":
            out = func(*args, **kwargs).clone()
            self._mark(out, True)
            return out
        tensors = _tensors(args, kwargs)
        if name not in _NO_CHECK and len(tensors) >= 2:
            self._check(name, args, tensors)
        out = func(*args, **kwargs)
        if "device" in kwargs and kwargs["device"] is not None:
            host = False
        elif not tensors:
            host = True          # a factory without device=: the default device, the host
        else:
            host = all(self.is_host(t) for t in tensors)
        self._mark(out, host)
        return out

    def _check(self, name: str, args, tensors: list[torch.Tensor]) -> None:
        self.checked_ops += 1
        if name in _INDEXING or name == "__setitem__":
            target = args[0]
            if isinstance(target, torch.Tensor) and self.is_host(target):
                rest = [t for t in tensors if t is not target]
                if any(not self.is_host(t) for t in rest):
                    raise DeviceMixError(f"{name}: a host tensor {tuple(target.shape)} indexed by (or given values from) "
                                         "a device tensor: CUDA raises 'indices should be either on cpu or on the same "
                                         "device as the indexed tensor'")
            if name != "__setitem__":
                return
        device = [t for t in tensors if not self.is_host(t)]
        host = [t for t in tensors if self.is_host(t) and t.dim() > 0]
        if device and host:
            raise DeviceMixError(f"{name}: device tensor(s) {[tuple(t.shape) for t in device]} combined with host "
                                 f"tensor(s) {[tuple(t.shape) for t in host]}: CUDA raises 'Expected all tensors "
                                 "to be on the same device'")
