"""Checkpoints that make a killed run resume exactly: model, optimizer, scheduler, every RNG
state (torch CPU and CUDA, Python ``random``, NumPy), the step and the data cursor.

One file per checkpoint, ``<dir>/ckpt-<step:08d>.pt``, written to a temporary file in the same
folder, flushed and fsync'ed, then renamed with ``os.replace`` (atomic on POSIX): a crash at any
moment leaves either the previous checkpoint set or the new one, never a half-written file that
looks complete. Only the newest ``keep_last`` checkpoints are kept.

Safe to load what someone else hands you: files are read with ``torch.load(weights_only=True)``,
which unpickles tensors and plain containers only (no code). Everything in a checkpoint is
therefore a tensor, a number, a string, a list / tuple or a dict; the RNG states are stored in
that form (``rng_state``), never as pickled library objects.

A damaged newest checkpoint (empty, truncated, bit-flipped, keys missing) is skipped with a
warning and the previous complete one is used (``load_latest_valid``).
"""
from __future__ import annotations

import os
import random
import re
import warnings
from pathlib import Path

import numpy as np
import torch

CKPT_RE = re.compile(r"^ckpt-(\d{8})\.pt$")
REQUIRED_KEYS = ("step", "rng")


def rng_state() -> dict:
    """Every RNG state as tensors / numbers / tuples (loadable with weights_only=True)."""
    version, mt, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"torch": torch.get_rng_state(),
             "python": (version, torch.tensor(mt, dtype=torch.int64), gauss),
             "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached))}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    version, mt, gauss = state["python"]
    random.setstate((version, tuple(int(x) for x in mt.tolist()), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def list_checkpoints(ckpt_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """(step, path) of every complete checkpoint, oldest first."""
    d = Path(ckpt_dir)
    if not d.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in d.iterdir() if (m := CKPT_RE.match(p.name))]
    return sorted(found)


def latest_checkpoint(ckpt_dir: str | os.PathLike) -> Path | None:
    ckpts = list_checkpoints(ckpt_dir)
    return ckpts[-1][1] if ckpts else None


def save_checkpoint(ckpt_dir: str | os.PathLike, step: int, state: dict, keep_last: int = 2) -> Path:
    """Atomically write ``state`` (plus the RNG states) as ckpt-<step>.pt; prune to keep_last."""
    if not isinstance(keep_last, int) or keep_last < 1:
        raise ValueError(f"keep_last must be a positive int, got {keep_last!r}")
    d = Path(ckpt_dir)
    d.mkdir(parents=True, exist_ok=True)
    final = d / f"ckpt-{step:08d}.pt"
    tmp = d / f".ckpt-{step:08d}.pt.tmp-{os.getpid()}"
    payload = dict(state, step=step, rng=rng_state())
    with open(tmp, "wb") as fh:
        torch.save(payload, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, final)
    for _, old in list_checkpoints(d)[:-keep_last]:
        old.unlink(missing_ok=True)
    for stray in d.glob(".ckpt-*.tmp-*"):  # temporaries of a killed writer
        if stray != tmp:
            stray.unlink(missing_ok=True)
    return final


def load_checkpoint(path: str | os.PathLike, required: tuple[str, ...] = REQUIRED_KEYS) -> dict:
    """Read one checkpoint with ``weights_only=True``; ValueError naming the file if it does not
    exist, cannot be read, or lacks a required key."""
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"checkpoint {str(p)!r} does not exist")
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated / corrupt / not a safe payload: say which file and why
        raise ValueError(f"checkpoint {str(p)!r} cannot be loaded safely ({type(e).__name__}: {str(e)[:200]})") from e
    if not isinstance(state, dict):
        raise ValueError(f"checkpoint {str(p)!r} holds a {type(state).__name__}, not a dict of states")
    missing = [k for k in required if k not in state]
    if missing:
        raise ValueError(f"checkpoint {str(p)!r} lacks {missing}")
    return state


def load_latest_valid(ckpt_dir: str | os.PathLike, required: tuple[str, ...] = REQUIRED_KEYS) -> tuple[Path, dict] | None:
    """The newest checkpoint that loads, newest first; a damaged one is reported and skipped."""
    for _, p in reversed(list_checkpoints(ckpt_dir)):
        try:
            return p, load_checkpoint(p, required)
        except ValueError as e:
            warnings.warn(f"skipping a damaged checkpoint: {e}; trying the previous one", stacklevel=2)
    return None
