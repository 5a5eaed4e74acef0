"""Where ercref reads and writes files (standard library only).

    REPO_ROOT    the checkout (the folder holding ercref/, data/, docs/, notebooks/)
    DATA_DIR     REPO_ROOT / "data": shipped fixtures, synthetic tasks, the char tokenizer, results
    cache_dir()  the user cache for ercref (converted model weights and the like), never inside
                 the source tree: $ERCREF_CACHE_DIR if set, else $XDG_CACHE_HOME/ercref (when
                 XDG_CACHE_HOME is an absolute path), else ~/.cache/ercref. Not created here.
"""
from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = REPO_ROOT / "data"

CACHE_DIR_ENV = "ERCREF_CACHE_DIR"


def cache_dir() -> Path:
    """The user cache directory for ercref (see module docstring); an absolute path, read from the
    environment at each call so a test or a notebook can redirect it."""
    override = os.environ.get(CACHE_DIR_ENV)
    if override:
        return Path(override).expanduser().absolute()
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg and os.path.isabs(xdg):  # the XDG spec: a relative value is invalid and ignored
        return Path(xdg) / "ercref"
    return Path.home() / ".cache" / "ercref"
