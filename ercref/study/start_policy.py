"""A seed's starting policy (the weights RL starts from, after the supervised warm-up), stored with the
study so that every arm of that seed starts from the same weights on any machine.

A seed's warm-up is not the same on every CPU (float sums in another order part the trajectories within
tens of steps), so arms of one seed run on two machines would start from two policies. The runner keeps
the first warm-up of each (model, seed, warm-up, data) setting under the study's cache folder,

    <study>/start/seed<S>-<key hash>.safetensors     the state dict, and its sha256 in the file's metadata

and every later run of that setting loads it instead of recomputing the warm-up. Each run's meta
records the starting policy's ``sha256`` (state_sha256: over the tensors' names, dtypes, shapes and
bytes, so equal hashes mean bit-for-bit equal weights), and reports pair runs by it (pairing.py).
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch

START_DIR = "start"     # the folder of a study's cache that holds the starting policies


def state_sha256(state: dict[str, torch.Tensor]) -> str:
    """sha256 over every tensor of a state dict, in name order: name, dtype, shape and raw bytes."""
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def start_file(store_dir, seed: int, key: str) -> Path:
    """The file of one warm-up setting: ``key`` is experiments.SFTCache.key (model, seed, warm-up, data)."""
    return Path(store_dir) / f"seed{int(seed)}-{hashlib.sha256(key.encode()).hexdigest()[:16]}.safetensors"


def save_start(path, state: dict[str, torch.Tensor], key: str) -> tuple[str, bool]:
    """Store ``state`` at ``path`` unless a file is already there (an existing one is never replaced).
    Returns (sha256 of the policy at ``path``, whether this call wrote it): when another process stored
    the same setting first, its hash is returned, and the caller compares it with its own."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sha = state_sha256(state)
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
    save_file({k: v.detach().cpu().clone().contiguous() for k, v in state.items()}, str(tmp),
              metadata={"sha256": sha, "key": key})
    try:
        os.link(tmp, path)            # fails when the file exists: the first stored policy stays
        return sha, True
    except FileExistsError:
        return load_start(path)[1], False
    finally:
        tmp.unlink(missing_ok=True)


def load_start(path) -> tuple[dict[str, torch.Tensor], str]:
    """(state dict, sha256) of a stored starting policy. ValueError naming the file when it cannot be
    read or its tensors do not hash to the sha256 written beside them."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        state = load_file(str(path))
    except Exception as e:  # noqa: BLE001 - a missing file, or safetensors' own SafetensorError
        raise ValueError(f"starting policy {path} cannot be read ({type(e).__name__}: {e}); move it away and "
                         "the next run recomputes the warm-up") from None
    sha = state_sha256(state)
    if meta.get("sha256") != sha:
        raise ValueError(f"starting policy {path}: its tensors hash to {sha}, its metadata says "
                         f"{meta.get('sha256')!r} (a damaged file); move it away and the next run recomputes "
                         "the warm-up")
    return state, sha
