"""Checkpoints that make a killed run resume exactly: model, optimizer, scheduler, every RNG
state (torch CPU and CUDA, Python ``random``, NumPy), the step and the data cursor.

One file per checkpoint, ``<dir>/ckpt-<step:08d>.pt``, written to a temporary file in the same
folder, flushed and fsync'ed, then renamed with ``os.replace`` (atomic on POSIX): a crash at any
moment leaves either the previous checkpoint set or the new one, never a half-written file that
looks complete. Only the newest ``keep_last`` checkpoints are kept.
"""
from __future__ import annotations

import os
import random
import re
from pathlib import Path

import numpy as np
import torch

CKPT_RE = re.compile(r"^ckpt-(\d{8})\.pt$")


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
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


def load_checkpoint(path: str | os.PathLike) -> dict:
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"checkpoint {str(p)!r} does not exist")
    return torch.load(p, map_location="cpu", weights_only=False)
