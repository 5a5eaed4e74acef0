"""One branching-study record on disk: its path, its bytes (with a self hash), its check, its set-aside.

    data/results/<study>/traj<seed>/step<t>/K<k>/<arm>.json

A record is a JSON object holding every key of ``RECORD_KEYS`` (the contract with the branch report);
``meta_sha256`` is the sha256 of the file's bytes with that field set to 64 zeros. A record is valid
when it parses, its own hash matches, it has every key and it names the (study, seed, step, K, arm) of
its path. Anything else is damaged: ``set_aside`` moves it to <study>/set-aside/... (never deleted) so
the runner can write it again.

``HIST_EDGES``: the fixed log bins of the per-token KL histograms, [0] + 10 ** linspace(-8, 2, 81)
(82 edges); ``kl_hist`` counts values into the 81 bins [e_i, e_{i+1}) plus one overflow bin for
values >= 100 (and +inf): 82 counts.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from .cache import SET_ASIDE, ZERO_HASH, check_self_hash, json_object, move_aside, self_hashed_json, write_atomic

HIST_EDGES = [0.0] + [float(x) for x in 10.0 ** np.linspace(-8, 2, 81)]
RECORD_KEYS = ("study", "seed", "branch_step", "K", "arm", "overrides", "lr", "state_sha256", "git_commit",
               "cpu_model", "torch_threads", "wall_s", "drift", "hist", "n_tokens", "heldout_acc_before",
               "heldout_acc_after", "update_norm", "clip", "matched", "tight_clip", "meta_sha256")


def kl_hist(values) -> list[int]:
    """Counts of ``values`` (1-D, >= 0) in the HIST_EDGES bins plus the overflow bin (len 82)."""
    x = np.asarray(values, dtype=np.float64).reshape(-1)
    if np.isnan(x).any() or (x < 0).any():
        raise ValueError("kl_hist: values must be >= 0 and not NaN (per-token KLs)")
    idx = np.searchsorted(np.asarray(HIST_EDGES), x, side="right") - 1   # bin i: e_i <= x < e_{i+1}; 81: x >= 100
    return np.bincount(idx, minlength=len(HIST_EDGES)).astype(int).tolist()


def record_path(root: Path, seed: int, step: int, k: int, arm: str) -> Path:
    return Path(root) / f"traj{seed}" / f"step{step}" / f"K{k}" / f"{arm}.json"


def record_bytes(record: dict) -> bytes:
    """The file's bytes: ``record`` as indented JSON whose meta_sha256 is the hash of these bytes with it zeroed."""
    return self_hashed_json({**record, "meta_sha256": ZERO_HASH}, indent=1)


def write_record(root: Path, record: dict) -> Path:
    """Write one record atomically at its path (set aside any file already there first). Returns the path."""
    missing = [k for k in RECORD_KEYS if k != "meta_sha256" and k not in record]
    if missing:
        raise ValueError(f"a branch record lacks the schema keys {missing}")
    path = record_path(root, record["seed"], record["branch_step"], record["K"], record["arm"])
    data = record_bytes(record)
    if path.exists():
        set_aside(root, path)
    write_atomic(path, data)
    return path


def required_keys(accuracy: str | None) -> tuple[str, ...]:
    """Record keys beyond RECORD_KEYS that a study with held-out accuracy measure ``accuracy`` needs
    (branch_study.ACCURACY_MEASURES; the study.json's "accuracy", None for a study written before it)."""
    return ("heldout_judged",) if accuracy == "judged" else ()


def read_record(path: Path, expect: dict | None = None, require: tuple[str, ...] = ()) -> dict:
    """The record at ``path``, checked (module doc); ValueError naming the file and what is wrong.
    ``expect``: key -> value the record must hold (its study, seed, step, K, arm). ``require``: keys
    beyond RECORD_KEYS its study needs (required_keys); a record without them was made before the study
    measured them (damaged for this study: the runner sets it aside and runs it again)."""
    path = Path(path)
    raw = path.read_bytes()
    rec = json_object(path, raw, "a branch record")
    check_self_hash(path, raw, "meta_sha256")
    missing = [k for k in RECORD_KEYS if k not in rec]
    if missing:
        raise ValueError(f"{path}: lacks the schema keys {missing}")
    for k, v in (expect or {}).items():
        if rec.get(k) != v:
            raise ValueError(f"{path}: holds {k} = {rec.get(k)!r}, but its path says {v!r}")
    lacks = [key for key in require if key not in rec]
    if lacks:
        raise ValueError(f"{path}: lacks {', '.join(lacks)}, which this study's report needs (made before it "
                         "measured them; the runner sets it aside and runs it again)")
    return rec


def check_record(root: Path, study: str, seed: int, step: int, k: int, arm: str,
                 require: tuple[str, ...] = ()) -> tuple[str, dict | str | None]:
    """("finished", record) | ("missing", None) | ("damaged", reason) of one record (``require``: as
    read_record's)."""
    path = record_path(root, seed, step, k, arm)
    if not path.is_file():
        return "missing", None
    try:
        return "finished", read_record(path, {"study": study, "seed": seed, "branch_step": step, "K": k, "arm": arm},
                                       require)
    except (OSError, ValueError) as e:
        return "damaged", str(e)


def set_aside(root: Path, path: Path) -> Path:
    """Move ``path`` (under ``root``) to root/set-aside/<same relative path>.<time>; never deletes."""
    root, path = Path(root), Path(path)
    return move_aside(path, root / SET_ASIDE / path.relative_to(root).parent, time.strftime("%Y%m%d-%H%M%S"))
