"""Checkpoints that make a killed run resume exactly: model, optimizer, scheduler, every RNG
state (torch CPU and CUDA, Python ``random``, NumPy), the step and the data cursor.

Files. A checkpoint is two files in ``<dir>``: ``ckpt-<step:08d>.pt`` (``torch.save``) and its
manifest ``ckpt-<step:08d>.json``, which records the file's name, step, size and sha256. Each is
written to a temporary file in the same folder, flushed and fsync'ed, then renamed with
``os.replace`` (atomic on POSIX); the manifest is written last, so a checkpoint with a manifest is
complete. The sha256 is computed while the bytes are written (no second read).

Integrity. ``load_checkpoint`` checks a checkpoint against its manifest before parsing a byte of
it: any truncation, extension or changed byte of either file is detected (the manifest must be
byte-for-byte what ercref writes for the checkpoint's actual size and hash). A checkpoint without
a manifest (e.g. its save was killed between the two renames) is not used;
``write_manifest(path)`` adopts such a file when you trust it.

Safe to load what someone else hands you: files are read with ``torch.load(weights_only=True)``,
which unpickles tensors and plain containers only (no code). Everything in a checkpoint is
therefore a tensor, a number, a string, a list / tuple or a dict; the RNG states are stored in
that form (``rng_state``), never as pickled library objects.

Resume. ``load_latest_valid`` returns the newest checkpoint that passes both checks; each one it
skips is named in a warning with the reason. When checkpoints exist and none loads it raises
``NoLoadableCheckpoint`` (naming every file and why), and deletes nothing: a run's files are
deleted only by an explicit overwrite (``delete_checkpoints``).

Disk. At most ``keep_last`` + 1 checkpoints are on disk, even during a save: before writing, the
oldest ones beyond ``keep_last`` are pruned (never the newest complete one), then the new one is
written, then the oldest are pruned down to ``keep_last``. Before anything is written or pruned,
the free space of the folder is compared with the checkpoint's size estimated from the state's
tensors (``state_bytes``); too little raises ``InsufficientDiskSpace`` naming the folder, the
bytes needed and the bytes free. ``expected_checkpoint_bytes`` gives the same size from a model's
parameter count, for planning the disk a run needs (``peak_checkpoint_disk_bytes``). Checkpoints
newer than the one being written (left when a resume fell back past them because they did not
load) are never pruned; the run replaces each when it writes that step again.
"""
from __future__ import annotations

import hashlib
import json
import numbers
import os
import pickle
import random
import re
import shutil
import warnings
from pathlib import Path

import numpy as np
import torch

CKPT_RE = re.compile(r"^ckpt-(\d{8})\.pt$")
TMP_GLOB = ".ckpt-*.tmp-*"                 # temporaries of a writer (a killed one leaves them behind)
REQUIRED_KEYS = ("step", "rng")
MANIFEST_FORMAT = "ercref-checkpoint"
MANIFEST_VERSION = 1
MAX_STEP = 10 ** 8 - 1                     # the 8 digits of the file name
# torch.save's bytes beyond the tensors' storages: per storage, its zip entry (local header with
# 64-byte alignment padding, central directory record, name) and its pickle record; per file, the
# pickle of the non-tensor values (config, param groups) and the zip's fixed records.
PER_STORAGE_BYTES = 512
FIXED_BYTES = 256 * 1024
CHUNK = 16 * 2 ** 20


class DamagedCheckpoint(ValueError):
    """A checkpoint whose bytes do not match its manifest, or that has no (valid) manifest."""


class NoLoadableCheckpoint(FileExistsError):
    """A folder holds checkpoints and none of them loads. ``refused``: (path, reason) of each,
    newest first. Nothing was deleted."""

    def __init__(self, ckpt_dir: str | os.PathLike, refused: list[tuple[Path, str]]):
        self.ckpt_dir, self.refused = Path(ckpt_dir), refused
        lines = "\n".join(f"  {p.name}: {reason}" for p, reason in refused)
        super().__init__(
            f"{self.ckpt_dir} holds {len(refused)} checkpoint(s) and none can be loaded, so the run cannot be "
            f"resumed; nothing was deleted.\n{lines}\n"
            "Two ways on: start the run over with --overwrite (Trainer(..., overwrite=True)), which deletes these "
            "checkpoints and metrics.jsonl; or repair or move the files named above and resume again (a checkpoint "
            "you trust that has no manifest, e.g. one written by an older ercref, is adopted with "
            "ercref.lm.checkpoint.write_manifest(path)).")


class InsufficientDiskSpace(OSError):
    """Too little free disk for a save; raised before anything is written or pruned."""


# ----------------------------------------------------------------------------- RNG states
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


# ----------------------------------------------------------------------------- listing
def list_checkpoints(ckpt_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """(step, path) of every checkpoint file (complete or not), oldest first."""
    d = Path(ckpt_dir)
    if not d.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in d.iterdir() if (m := CKPT_RE.match(p.name))]
    return sorted(found)


def latest_checkpoint(ckpt_dir: str | os.PathLike) -> Path | None:
    ckpts = list_checkpoints(ckpt_dir)
    return ckpts[-1][1] if ckpts else None


def manifest_path(path: str | os.PathLike) -> Path:
    """The manifest of checkpoint ``path``: ckpt-<step>.json beside ckpt-<step>.pt."""
    return Path(path).with_suffix(".json")


# ----------------------------------------------------------------------------- sizes and disk
def state_bytes(state) -> int:
    """The bytes ``torch.save`` writes for ``state`` (any nesting of dicts / lists / tuples of
    tensors and plain values), estimated from above: each distinct tensor storage once (tied
    weights and views share one; a view saves its whole storage) plus PER_STORAGE_BYTES each, plus
    FIXED_BYTES."""
    storages: dict[tuple[int, int], int] = {}

    def walk(x) -> None:
        if isinstance(x, torch.Tensor):
            s = x.untyped_storage()
            storages[(s.data_ptr(), s.nbytes())] = s.nbytes()
        elif isinstance(x, dict):
            for v in x.values():
                walk(v)
        elif isinstance(x, (list, tuple)):
            for v in x:
                walk(v)

    walk(state)
    return sum(storages.values()) + PER_STORAGE_BYTES * len(storages) + FIXED_BYTES


def expected_checkpoint_bytes(params: int, dtype_bytes: int, tensors: int = 0, reference_model: bool = False) -> int:
    """Bytes of one Trainer checkpoint of a model with ``params`` parameters in ``tensors`` tensors
    (0: not known; each adds under 3 KiB), stored with ``dtype_bytes`` bytes each (4 fp32, 2 bf16),
    trained with torch's AdamW: the weights
    (P), AdamW's two moments (2P: torch keeps them in the parameter dtype) and its per-tensor fp32
    step count, the frozen reference model (P, with loss.kl_coef > 0), the RNG states and the
    config. The same estimate ``state_bytes`` makes from a real state (within FIXED_BYTES)."""
    for name, v, low in (("params", params, 1), ("dtype_bytes", dtype_bytes, 1), ("tensors", tensors, 0)):
        if not isinstance(v, numbers.Integral) or isinstance(v, bool) or v < low:
            raise ValueError(f"expected_checkpoint_bytes: {name} must be an int >= {low}, got {v!r}")
    params, dtype_bytes, tensors = int(params), int(dtype_bytes), int(tensors)
    copies = 4 if reference_model else 3                          # weights, two moments (+ reference)
    storages = tensors * (copies + 1) + 3                         # + AdamW step counts; + 3 RNG states
    rng = 5056 + 625 * 8 + 624 * 8                                # torch, Python, NumPy generators
    return copies * params * dtype_bytes + 4 * tensors + rng + PER_STORAGE_BYTES * storages + FIXED_BYTES


def peak_checkpoint_disk_bytes(checkpoint_bytes: int, keep_last: int) -> int:
    """The most disk a run's checkpoints take: ``keep_last`` kept plus the one being written."""
    for name, v, low in (("checkpoint_bytes", checkpoint_bytes, 0), ("keep_last", keep_last, 1)):
        if not isinstance(v, numbers.Integral) or isinstance(v, bool) or v < low:
            raise ValueError(f"peak_checkpoint_disk_bytes: {name} must be an int >= {low}, got {v!r}")
    return (int(keep_last) + 1) * int(checkpoint_bytes)


def check_free_space(folder: str | os.PathLike, need: int, what: str, freed: int = 0) -> None:
    """InsufficientDiskSpace unless ``folder``'s file system has ``need`` bytes free (counting
    ``freed`` bytes that will be deleted first)."""
    free = shutil.disk_usage(folder).free
    if free + freed < need:
        gib = 2 ** 30
        raise InsufficientDiskSpace(
            f"not enough free disk space in {folder} to write {what}: it needs about {need:,} bytes "
            f"({need / gib:.2f} GiB), {free:,} bytes ({free / gib:.2f} GiB) are free"
            + (f" (plus {freed:,} bytes of old checkpoints it would prune)" if freed else "")
            + ". Nothing was written. Free some space, lower train.keep_last, or write the run to another "
            "disk (--out).")


# ----------------------------------------------------------------------------- writing
class _HashingWriter:
    """A write-only file object that hashes and counts what passes through it."""

    def __init__(self, fh):
        self.fh, self.sha, self.size = fh, hashlib.sha256(), 0

    def write(self, b) -> int:
        self.sha.update(b)
        self.size += len(b)
        return self.fh.write(b)

    def flush(self) -> None:
        self.fh.flush()


def _manifest_bytes(name: str, step: int, size: int, sha256: str) -> bytes:
    rec = {"format": MANIFEST_FORMAT, "version": MANIFEST_VERSION, "file": name, "step": step,
           "bytes": size, "sha256": sha256}
    return (json.dumps(rec, indent=1) + "\n").encode()


def _fsync_dir(d: Path) -> None:
    fd = os.open(d, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _atomic_write(final: Path, write) -> None:
    """write(fh) into a temporary beside ``final``, fsync, rename over ``final``."""
    tmp = final.parent / f".{final.name}.tmp-{os.getpid()}"
    try:
        with open(tmp, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)


def _step_of(path: Path) -> int:
    m = CKPT_RE.match(path.name)
    if m is None:
        raise ValueError(f"{str(path)!r} is not a checkpoint file name (ckpt-<8 digits>.pt)")
    return int(m.group(1))


def _sha256_file(path: Path) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            sha.update(chunk)
    return sha.hexdigest()


def write_manifest(path: str | os.PathLike) -> Path:
    """Hash checkpoint ``path`` as it is on disk and write its manifest: adopts a checkpoint that
    has none (its save was killed before the manifest, or it was copied without one) once you
    trust its bytes. Returns the manifest."""
    p = Path(path)
    step = _step_of(p)
    if not p.is_file():
        raise ValueError(f"checkpoint {str(p)!r} does not exist")
    data = _manifest_bytes(p.name, step, p.stat().st_size, _sha256_file(p))
    _atomic_write(manifest_path(p), lambda fh: fh.write(data))
    return manifest_path(p)


def remove_checkpoint(path: str | os.PathLike) -> None:
    """Delete a checkpoint: its manifest first (a half-removed checkpoint is never complete)."""
    p = Path(path)
    manifest_path(p).unlink(missing_ok=True)
    p.unlink(missing_ok=True)


def delete_checkpoints(ckpt_dir: str | os.PathLike) -> None:
    """Delete every checkpoint, manifest and temporary in ``ckpt_dir`` (an explicit overwrite)."""
    d = Path(ckpt_dir)
    for _, p in list_checkpoints(d):
        remove_checkpoint(p)
    if d.is_dir():
        for p in [*d.glob(TMP_GLOB), *d.glob("ckpt-*.json")]:
            p.unlink(missing_ok=True)


def _looks_complete(path: Path) -> bool:
    """Cheap completeness test (no hashing): a manifest naming this file with its current size."""
    try:
        man = json.loads(manifest_path(path).read_bytes())
        return isinstance(man, dict) and man.get("file") == path.name and man.get("bytes") == path.stat().st_size
    except (OSError, ValueError):
        return False


def _excess(paths: list[Path], keep: int) -> list[Path]:
    """The oldest of ``paths`` (oldest first) beyond the newest ``keep``, except the newest
    complete one (never prune the only good checkpoint)."""
    doomed = paths[:max(0, len(paths) - keep)]
    complete = [p for p in paths if _looks_complete(p)]
    return [p for p in doomed if not complete or p != complete[-1]]


def save_checkpoint(ckpt_dir: str | os.PathLike, step: int, state: dict, keep_last: int = 2) -> Path:
    """Write ``state`` (plus the RNG states) as ckpt-<step>.pt and its manifest, keeping at most
    keep_last + 1 checkpoints on disk at any moment and keep_last afterwards. InsufficientDiskSpace
    (nothing written, nothing pruned) when the folder's disk cannot hold it."""
    if not isinstance(state, dict):
        raise TypeError(f"state must be a dict of the states to save, got {type(state).__name__}")
    if not isinstance(keep_last, int) or isinstance(keep_last, bool) or keep_last < 1:
        raise ValueError(f"keep_last must be a positive int, got {keep_last!r}")
    if not isinstance(step, int) or isinstance(step, bool) or not 0 <= step <= MAX_STEP:
        raise ValueError(f"step must be an int in [0, {MAX_STEP}], got {step!r}")
    d = Path(ckpt_dir)
    d.mkdir(parents=True, exist_ok=True)
    for stray in d.glob(TMP_GLOB):  # a killed writer's partial file: never a checkpoint, only disk
        stray.unlink(missing_ok=True)
    final = d / f"ckpt-{step:08d}.pt"
    payload = dict(state, step=step, rng=rng_state())
    older = [p for s, p in list_checkpoints(d) if s < step]
    doomed = _excess(older, keep_last - final.exists())   # a same-step file stays on disk until replaced
    check_free_space(d, state_bytes(payload), f"checkpoint {final.name}", freed=sum(p.stat().st_size for p in doomed))
    for p in doomed:
        remove_checkpoint(p)
    writer = None

    def write(fh) -> None:
        nonlocal writer
        writer = _HashingWriter(fh)
        torch.save(payload, writer)

    try:
        _atomic_write(final, write)
    except (pickle.PicklingError, AttributeError, TypeError) as e:  # a value torch.save cannot serialise
        raise TypeError(f"state cannot be saved as checkpoint {final.name}: {_unsavable(state)} ({e}); nothing was "
                        "written for this step") from e
    manifest_path(final).unlink(missing_ok=True)  # a same-step checkpoint's manifest, until the new one is written
    data = _manifest_bytes(final.name, step, writer.size, writer.sha.hexdigest())
    _atomic_write(manifest_path(final), lambda fh: fh.write(data))
    _fsync_dir(d)
    for p in _excess([p for p in older if p.exists()] + [final], keep_last):
        remove_checkpoint(p)
    return final


def _unsavable(state: dict) -> str:
    """Which top-level entries of ``state`` cannot be pickled (for the error message)."""
    bad = []
    for k, v in state.items():
        try:
            pickle.dumps(v)
        except Exception:  # noqa: BLE001 - any failure means the entry cannot be saved
            bad.append(f"state[{k!r}] ({type(v).__name__})")
    return ", ".join(bad) or "an entry that cannot be pickled"


# ----------------------------------------------------------------------------- reading
def verify_checkpoint(path: str | os.PathLike) -> None:
    """DamagedCheckpoint (naming the file and what is wrong) unless ``path`` and its manifest are
    exactly as save_checkpoint wrote them."""
    p = Path(path)
    if not p.is_file():
        raise DamagedCheckpoint(f"checkpoint {str(p)!r} does not exist")
    step = _step_of(p)
    m = manifest_path(p)
    if not m.is_file():
        raise DamagedCheckpoint(
            f"checkpoint {str(p)!r} has no manifest {m.name} beside it (written by an ercref without integrity "
            "manifests, or its save was killed before the manifest), so its bytes cannot be checked")
    raw = m.read_bytes()
    try:
        man = json.loads(raw)
    except ValueError as e:
        raise DamagedCheckpoint(f"the manifest {str(m)!r} is damaged (not valid JSON: {e})") from None
    want = {"format": MANIFEST_FORMAT, "version": MANIFEST_VERSION, "file": p.name, "step": step}
    if not isinstance(man, dict) or any(man.get(k) != v for k, v in want.items()):
        raise DamagedCheckpoint(f"the manifest {str(m)!r} is damaged or not ercref's (expected the fields {want}, "
                                "plus bytes and sha256)")
    size = p.stat().st_size
    if man.get("bytes") != size:
        raise DamagedCheckpoint(f"checkpoint {str(p)!r} is {size:,} bytes but its manifest records "
                                f"{man.get('bytes')!r} (truncated, extended, or the manifest is damaged)")
    sha = _sha256_file(p)
    if man.get("sha256") != sha:
        raise DamagedCheckpoint(f"checkpoint {str(p)!r}: its bytes differ from the sha256 recorded in {m.name} "
                                "(damaged on disk, or the manifest is damaged)")
    if raw != _manifest_bytes(p.name, step, size, sha):
        raise DamagedCheckpoint(f"the manifest {str(m)!r} is damaged (its bytes differ from what ercref writes "
                                "for these values)")


def load_checkpoint(path: str | os.PathLike, required: tuple[str, ...] = REQUIRED_KEYS) -> dict:
    """Check one checkpoint against its manifest, then read it with ``weights_only=True``; a
    ValueError naming the file if it does not exist, is damaged or unverifiable, cannot be read
    safely, lacks a required key, or holds another step than its name says."""
    p = Path(path)
    verify_checkpoint(p)
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # not a safe payload (pickled code, an older format): say which file and why
        raise ValueError(f"checkpoint {str(p)!r} cannot be loaded safely ({type(e).__name__}: {str(e)[:200]})") from e
    if not isinstance(state, dict):
        raise ValueError(f"checkpoint {str(p)!r} holds a {type(state).__name__}, not a dict of states")
    missing = [k for k in required if k not in state]
    if missing:
        raise ValueError(f"checkpoint {str(p)!r} lacks {missing}")
    if "step" in state and state["step"] != _step_of(p):
        raise ValueError(f"checkpoint {str(p)!r} holds step {state['step']!r}, not the step its name says")
    return state


def load_latest_valid(ckpt_dir: str | os.PathLike,
                      required: tuple[str, ...] = REQUIRED_KEYS) -> tuple[Path, dict] | None:
    """The newest checkpoint that verifies and loads; each one skipped is named in a warning. None
    when the folder holds no checkpoint file; NoLoadableCheckpoint when it holds some and none
    loads. Never deletes anything."""
    refused = []
    for _, p in reversed(list_checkpoints(ckpt_dir)):
        try:
            return p, load_checkpoint(p, required)
        except ValueError as e:
            refused.append((p, str(e)))
            warnings.warn(f"skipping a damaged checkpoint {p.name}: {e}; trying the previous one", stacklevel=2)
    if refused:
        raise NoLoadableCheckpoint(ckpt_dir, refused)
    return None


def load_model_state(model: torch.nn.Module, state: dict, path: str | os.PathLike, model_name: str) -> None:
    """``model.load_state_dict(state["model"])``; a ValueError naming checkpoint ``path`` and both model
    names when the checkpoint holds another model's weights (other keys or shapes)."""
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as e:
        saved = ((state.get("config") or {}).get("model") or {}).get("name")
        raise ValueError(
            f"{path} holds the weights of another model (saved with model.name={saved!r}) than model.name="
            f"{model_name!r} builds: resume with the run's own config (--out DIR --resume without --preset / "
            f"--config); nothing was changed ({str(e).splitlines()[0]})") from None


def run_files(out_dir: str | os.PathLike, config: dict | None = None) -> list[Path]:
    """The files of a run in ``out_dir`` that only an explicit overwrite may delete or replace:
    checkpoint files, a non-empty metrics.jsonl, the policy folder, and, given the ``config`` (a
    Config.to_dict()) a run there would write, a config.json that holds anything else (another
    run's config, or a file that is not ercref's: a model folder's config.json)."""
    out = Path(out_dir)
    found = [p for _, p in list_checkpoints(out / "checkpoints")]
    log = out / "metrics.jsonl"
    if log.is_file() and log.stat().st_size > 0:
        found.append(log)
    if (out / "policy").exists():
        found.append(out / "policy")
    saved = out / "config.json"
    if config is not None and saved.exists() and not _holds_config(saved, config):
        found.append(saved)
    return found


def _holds_config(path: Path, config: dict) -> bool:
    """Does the JSON file ``path`` hold exactly ``config`` (compared as JSON values)?"""
    try:
        return json.loads(path.read_bytes()) == json.loads(json.dumps(config))
    except (OSError, ValueError):
        return False


def save_policy(model, tokenizer, out_dir: str | os.PathLike) -> Path:
    """The policy as a Hugging Face folder (safetensors + tokenizer) at <out_dir>/policy, written to a
    temporary folder first and swapped in, so a crash never leaves a half-written policy; the
    disk is checked for the weights' bytes first (InsufficientDiskSpace)."""
    out = Path(out_dir)
    final, tmp, old = out / "policy", out / ".policy.tmp", out / ".policy.old"
    shutil.rmtree(tmp, ignore_errors=True)
    check_free_space(out, state_bytes(model.state_dict()), "the policy folder")
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)
    return final


LOCK_FILE = ".ercref.lock"


class RunDirLock:
    """An exclusive claim on a run folder while one Trainer works in it: ``fcntl.flock`` on
    ``<out>/.ercref.lock`` (released by ``release()``, when the holder is garbage collected, or when its
    process ends, even by a crash). A second Trainer on the same folder - the same command started
    twice, a notebook cell re-run while the first run is still going - is refused before it can write,
    instead of both passing the "is this folder free?" checks and replacing each other's checkpoints
    and log. Where ``fcntl`` does not exist (Windows) the claim is a no-op."""

    def __init__(self, out_dir: str | os.PathLike):
        self._file = None
        out = Path(out_dir)
        if out.exists() and not out.is_dir():
            raise FileExistsError(f"--out {out} is a file, not a folder: pick a folder for the run")
        out.mkdir(parents=True, exist_ok=True)
        self.path = out / LOCK_FILE
        try:
            import fcntl
        except ImportError:   # no advisory locks on this platform
            return
        f = open(self.path, "a+")  # noqa: SIM115 (held open for the lock's lifetime)
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.close()
            raise FileExistsError(
                f"{out} is in use by another ercref run (the lock {self.path} is held: the same command started "
                "twice, or a notebook cell re-run while its first run is still going). Wait for that run to end "
                "(or stop it), or pick another --out.") from None
        self._file = f

    def release(self) -> None:
        if self._file is not None:
            self._file.close()   # closing the file releases the flock
            self._file = None

    def __del__(self):
        self.release()
