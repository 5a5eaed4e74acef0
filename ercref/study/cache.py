"""The study cache on disk: where a study's runs live, how one run is written (atomically, with an
integrity hash) and how it is read back (checked before it is trusted).

Cache of study NAME (results dir default data/results, ``RESULTS_DIR``):

    NAME/study.json                      the study's definition (cells, arms, seeds, overrides)
    NAME/runs/CELL/ARM/seedK.jsonl.gz    the engine's log rows (kinds sft / step / minibatch / eval),
                                         gzip-compressed JSON Lines
    NAME/runs/CELL/ARM/seedK.tokens.gz   only for a study with capture_steps: per-response token
                                         captures (tokens, old / new entropy, rho, ERC state), gzip JSON Lines
    NAME/runs/CELL/ARM/seedK.meta.json   config, seed, git commit, machine, wall seconds, ercref version
                                         and "integrity": the sha256 and size of each of the run's data
                                         files, and meta_sha256, the sha256 of the meta file's own bytes
                                         with that field set to 64 zeros
    NAME/set-aside/CELL/ARM/seedK.*.<time>   files of a run that was rerun (damaged, or replaced by
                                         run_unit): moved here, never deleted

``write_run`` writes the data files first and the meta last, each to a temporary name moved into
place (os.replace): the meta, which holds the hashes of the others, is the mark of a finished run,
so a writer killed at any moment leaves a run that ``check_run`` reports as unfinished.

A run counts as finished only when ``check_run`` finds its meta intact (its own hash), each data file
the meta lists with that size and hash, and both the log and, when listed, the tokens readable as
gzip JSON Lines. A meta without an "integrity" field (a cache written by an older ercref; only the
keys of LEGACY_META_KEYS) is accepted after its log (and tokens, when present) read fully: gzip's CRC
and length checks and a JSON parse of every line; ``add_integrity`` (``python -m ercref.study NAME
--add-integrity``) then gives such runs their hashes, as every committed cache has. Anything else (a
log without its meta, a meta without its log, a truncated or bit-flipped file, invalid JSON) is
reported with the file it concerns and is rerun by the runner; ``scan_runs`` also lists stray files under runs/ that belong to no run.
"""
from __future__ import annotations

import gzip
import hashlib
import json
import math
import numbers
import os
import re
import time
import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from ercref.paths import REPO_ROOT

RESULTS_DIR = REPO_ROOT / "data" / "results"
LOG_SUFFIX = ".jsonl.gz"
TOKENS_SUFFIX = ".tokens.gz"
META_SUFFIX = ".meta.json"
SET_ASIDE = "set-aside"
RUN_FILE = re.compile(r"^seed(?P<seed>0|[1-9]\d*)(?P<suffix>\.jsonl\.gz|\.tokens\.gz|\.meta\.json)$")
# the keys a meta without an integrity field may hold (accepted after a full read of its run)
LEGACY_META_KEYS = frozenset({"study", "cell", "arm", "seed", "config", "overrides", "matched", "git_commit",
                              "ercref_version", "machine", "wall_s", "finished"})
ZERO_HASH = "0" * 64   # the meta_sha256 placeholder while a self-hashed file is hashed
_SELF_HASH = re.compile(rb'"meta_sha256": "([0-9a-f]{64})"')


class DamagedRunError(ValueError):
    """A cached run's files are incomplete or damaged; the message names the file and what is wrong."""


# ----------------------------------------------------------------------------- paths
def study_dir(name: str, results_dir=None) -> Path:
    """The folder of study ``name`` under the cache root ``results_dir`` (default RESULTS_DIR);
    ValueError when the root exists and is not a folder (nothing could be cached or found there)."""
    root = Path(results_dir) if results_dir is not None else RESULTS_DIR
    if root.exists() and not root.is_dir():
        raise ValueError(f"results_dir {str(root)!r} is a file, not a folder: give the folder that holds the "
                         "studies' caches (default data/results)")
    return root / name


def _run_dir(root: Path, cell: str, arm: str, seed: int) -> tuple[Path, int]:
    """(the folder of one run's files, its seed as an int); ValueError naming a cell or arm that is
    not one folder name, or a seed that is not an int >= 0 (its files could not be found again)."""
    for what, name in (("cell", cell), ("arm", arm)):
        if not isinstance(name, str) or name in ("", ".", "..") or any(c in name for c in "/\\\0"):
            raise ValueError(f"{what} must be a folder name (no '/', '\\', or '..'), got {name!r}")
    if not isinstance(seed, numbers.Integral) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be an int >= 0, got {seed!r}")
    return Path(root) / "runs" / cell / arm, int(seed)


def run_paths(root: Path, cell: str, arm: str, seed: int) -> tuple[Path, Path]:
    """(log, meta) paths of one run under the study folder ``root``."""
    d, seed = _run_dir(root, cell, arm, seed)
    return d / f"seed{seed}{LOG_SUFFIX}", d / f"seed{seed}{META_SUFFIX}"


def tokens_path(root: Path, cell: str, arm: str, seed: int) -> Path:
    """The token captures of one run (written only when its study has capture_steps)."""
    d, seed = _run_dir(root, cell, arm, seed)
    return d / f"seed{seed}{TOKENS_SUFFIX}"


# ----------------------------------------------------------------------------- writing
def write_atomic(path: Path, data: str | bytes) -> None:
    """Write to a hidden temporary file in the same folder, then os.replace (atomic on POSIX)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
    with open(tmp, "wb" if isinstance(data, bytes) else "w") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def compact(record: dict, digits: int = 6) -> dict:
    """Floats rounded to ``digits`` significant digits (cached files stay small; the metrics are
    float32 anyway, whose resolution is ~7 digits)."""
    return {k: (float(f"{v:.{digits}g}") if isinstance(v, float) else v) for k, v in record.items()}


def jsonl_gz_bytes(rows: list[dict]) -> bytes:
    """``rows`` as gzip JSON Lines (mtime 0: the same rows give the same bytes)."""
    return gzip.compress("".join(json.dumps(r) + "\n" for r in rows).encode(), mtime=0)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def self_hashed_json(obj: dict, indent: int, default=None) -> bytes:
    """``obj`` (which holds one "meta_sha256" field, at any depth) as indented JSON whose meta_sha256
    is the sha256 of these same bytes with that value set to 64 zeros (check_self_hash verifies it)."""
    text = json.dumps(obj, indent=indent, default=default).encode()
    marker = f'"meta_sha256": "{ZERO_HASH}"'.encode()
    if text.count(marker) != 1:
        raise ValueError("a self-hashed JSON file must hold exactly one meta_sha256 field, set to 64 zeros")
    return text.replace(marker, f'"meta_sha256": "{_sha256(text)}"'.encode())


def json_object(path: Path, raw: bytes, what: str, error: type[Exception] = ValueError) -> dict:
    """``raw`` (the bytes of ``path``) parsed as one JSON object; ``error`` naming the file (and line)."""
    try:
        obj = json.loads(raw.decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        where = f", line {e.lineno}" if isinstance(e, json.JSONDecodeError) else ""
        raise error(f"{path}{where}: invalid JSON ({type(e).__name__}: {e})") from None
    if not isinstance(obj, dict):
        raise error(f"{path}: {what} must be a JSON object")
    return obj


def check_self_hash(path: Path, raw: bytes, field: str, error: type[Exception] = ValueError) -> None:
    """``error`` naming the file unless ``raw`` holds one meta_sha256 (called ``field`` in the message)
    equal to the sha256 of ``raw`` with it set to 64 zeros (the bytes self_hashed_json writes)."""
    found = _SELF_HASH.findall(raw)
    if len(found) != 1:
        raise error(f"{path}: its own hash ({field}) is missing or damaged")
    if _sha256(_SELF_HASH.sub(f'"meta_sha256": "{ZERO_HASH}"'.encode(), raw)) != found[0].decode():
        raise error(f"{path}: its bytes do not match its own hash ({field}): damaged")


def meta_bytes(meta: dict) -> bytes:
    """The meta file's bytes: ``meta`` as indented JSON whose integrity.meta_sha256 is the sha256 of
    these same bytes with that value set to 64 zeros. ``meta["integrity"]["files"]`` must be set."""
    return self_hashed_json({**meta, "integrity": {**meta["integrity"], "meta_sha256": ZERO_HASH}}, indent=2, default=str)


def set_aside(root: Path, cell: str, arm: str, seed: int) -> list[Path]:
    """Move every existing file of one run to NAME/set-aside/CELL/ARM/ (name + a time suffix) so a
    rerun never overwrites or deletes what was there. Returns the new paths."""
    root = Path(root)
    log, meta = run_paths(root, cell, arm, seed)
    moved = []
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for p in (log, tokens_path(root, cell, arm, seed), meta):
        if p.exists():
            moved.append(move_aside(p, root / SET_ASIDE / cell / arm, stamp))
    return moved


def move_aside(path: Path, folder: Path, stamp: str) -> Path:
    """Move ``path`` into ``folder`` as NAME.STAMP (NAME.STAMP-1, -2, ... when taken); never overwrites."""
    dest = folder / f"{path.name}.{stamp}"
    n = 1
    while dest.exists():
        dest = dest.with_name(f"{path.name}.{stamp}-{n}")
        n += 1
    dest.parent.mkdir(parents=True, exist_ok=True)
    os.replace(path, dest)
    return dest


def write_run(root: Path, cell: str, arm: str, seed: int, meta: dict, log_rows: list[dict],
              token_rows: list[dict] | None = None) -> Path:
    """Write one finished run: its log (and token captures, when ``token_rows`` is not None) then its
    meta with the data files' sha256 and sizes, each atomically. Files of an earlier attempt of the
    same run are set aside first (``set_aside``), never deleted. Returns the meta path."""
    root = Path(root)
    log_path, meta_path = run_paths(root, cell, arm, seed)
    data = {log_path: jsonl_gz_bytes(log_rows)}
    if token_rows is not None:
        data[tokens_path(root, cell, arm, seed)] = jsonl_gz_bytes(token_rows)
    files = {p.name: {"sha256": _sha256(b), "bytes": len(b)} for p, b in data.items()}
    text = meta_bytes({**meta, "integrity": {"files": files}})
    set_aside(root, cell, arm, seed)
    for p, b in data.items():
        write_atomic(p, b)
    write_atomic(meta_path, text)
    return meta_path


def write_study_json(study, root: Path, registered_commit: str | None = None) -> None:
    """study.json = the definition (with ``registered_commit`` for a study with pre-registered
    hypotheses). Refuses (ValueError) when a cached definition gives an existing cell or arm other
    overrides, or another preset / base / hypotheses, or records another registered commit: its
    cached runs would not be this study's."""
    path = Path(root) / "study.json"
    new = study.to_dict()
    if new.get("hypotheses"):
        new["registered_commit"] = registered_commit
    if path.is_file():
        old = read_study_json(path)
        clash = [k for k in ("preset", "base") if old.get(k) != json.loads(json.dumps(new[k]))]
        clash += ["capture_steps"] * (old.get("capture_steps", []) != new["capture_steps"])
        clash += [k for k in ("hypotheses", "holm") if json.loads(json.dumps(new.get(k))) != old.get(k)]
        for kind in ("cells", "arms"):
            clash += [f"{kind[:-1]} {n!r}" for n, v in old.get(kind, {}).items()
                      if n in new[kind] and json.loads(json.dumps(new[kind][n])) != v]
        if old.get("registered_commit") and old["registered_commit"] != new.get("registered_commit"):
            raise ValueError(f"{path} records registered_commit {old['registered_commit']}, but the hypotheses now were "
                             f"first committed in {new.get('registered_commit')}: the pre-registration changed after "
                             "runs began")
        if clash:
            raise ValueError(f"{path} was written by a different definition of study {study.name!r} "
                             f"({', '.join(clash)} changed): its cached runs are not this study's. Move that folder "
                             "away (or delete the changed runs and study.json), or give the study a new name.")
        for kind in ("cells", "arms"):  # keep what the cache holds, add what is new
            new[kind] = {**old.get(kind, {}), **new[kind]}
        new["seeds"] = sorted(set(old.get("seeds", [])) | set(new["seeds"]))
    write_atomic(path, json.dumps(new, indent=2))


def read_study_json(path: Path) -> dict:
    """A study.json as a dict; ValueError naming the file (and line) when it is not a JSON object."""
    path = Path(path)
    try:
        d = json.loads(path.read_bytes().decode())
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text ({e}); the study definition is damaged. Move it away and run "
                         "the study again to rewrite it") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}, line {e.lineno}: invalid JSON ({e.msg}); the study definition is damaged. Move it "
                         "away and run the study again to rewrite it") from None
    if not isinstance(d, dict) or not isinstance(d.get("cells"), dict) or not isinstance(d.get("arms"), dict):
        raise ValueError(f"{path}: a study definition must be a JSON object with 'cells' and 'arms' objects")
    return d


# ----------------------------------------------------------------------------- reading
def read_run_log(path: str | os.PathLike) -> list[dict]:
    """The rows of one gzip JSON Lines file of the cache (a plain .jsonl also reads). DamagedRunError
    naming the file (and line) for a file named .gz that is not gzip data (an empty file included),
    a truncated or corrupt gzip stream, bytes that are not UTF-8, a line that is not a JSON object."""
    path = Path(path)
    raw = path.read_bytes()
    if path.name.endswith(".gz") and raw[:2] != b"\x1f\x8b":
        raise DamagedRunError(f"{path}: not gzip data ({len(raw):,} bytes{', empty' if not raw else ''}): damaged or "
                              "overwritten")
    try:
        data = gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw
        text = data.decode()
    except (OSError, EOFError, UnicodeDecodeError, zlib.error) as e:   # BadGzipFile is an OSError
        raise DamagedRunError(f"{path}: damaged or truncated ({type(e).__name__}: {e})") from None
    rows = []
    for i, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DamagedRunError(f"{path}, line {i}: invalid JSON ({e.msg})") from None
        if not isinstance(row, dict):
            raise DamagedRunError(f"{path}, line {i}: a row must be a JSON object, got {type(row).__name__}")
        rows.append(row)
    return rows


def _read_meta(path: Path) -> tuple[dict, bool]:
    """(meta, hashed) of a run's meta file; DamagedRunError naming it when it is not intact."""
    raw = path.read_bytes()
    meta = json_object(path, raw, "a run's meta", DamagedRunError)
    if "integrity" not in meta:
        unknown = sorted(set(meta) - LEGACY_META_KEYS)
        if unknown:
            raise DamagedRunError(f"{path}: no integrity field and unknown keys {unknown}: damaged")
        return meta, False
    check_self_hash(path, raw, "integrity.meta_sha256", DamagedRunError)
    files = meta["integrity"].get("files") if isinstance(meta["integrity"], dict) else None
    if not isinstance(files, dict):
        raise DamagedRunError(f"{path}: integrity.files is missing")
    return meta, True


@dataclass
class Run:
    """One finished, checked run of the cache: its meta, log rows and, when it has them, token rows."""
    cell: str
    arm: str
    seed: int
    meta: dict
    rows: list[dict]
    tokens: list[dict] | None = None
    hashed: bool = True          # False: a meta without integrity data, accepted after a full read


def read_run(root: Path, cell: str, arm: str, seed: int, rows: bool = True, tokens: bool = True) -> Run:
    """Read and check one run (module doc). FileNotFoundError when it has no file at all;
    DamagedRunError naming the file for anything incomplete or damaged. ``rows`` / ``tokens`` False:
    a file whose hash checked out is not parsed (``Run.rows`` is [] / ``Run.tokens`` None)."""
    root = Path(root)
    log, meta_path = run_paths(root, cell, arm, seed)
    tok = tokens_path(root, cell, arm, seed)
    if not meta_path.is_file():
        present = [p for p in (log, tok) if p.exists()]
        if not present:
            raise FileNotFoundError(f"no cached run at {log.parent}/seed{seed}.*")
        raise DamagedRunError(f"{present[0]}: its meta {meta_path.name} is missing (an interrupted write): unfinished")
    meta, hashed = _read_meta(meta_path)
    listed = meta["integrity"]["files"] if hashed else {log.name: None, **({tok.name: None} if tok.exists() else {})}
    if log.name not in listed:
        raise DamagedRunError(f"{meta_path}: lists no log {log.name}")
    unknown = sorted(set(listed) - {log.name, tok.name})
    if unknown:
        raise DamagedRunError(f"{meta_path}: lists files of another run {unknown}")
    for name, want in listed.items():
        p = log.parent / name
        if not p.is_file():
            raise DamagedRunError(f"{meta_path}: its file {name} is missing")
        if want is not None:
            raw = p.read_bytes()
            if not isinstance(want, dict) or len(raw) != want.get("bytes") or _sha256(raw) != want.get("sha256"):
                raise DamagedRunError(f"{p}: size or sha256 differs from its meta {meta_path.name} (truncated or "
                                      "damaged)")
    if tok.exists() and tok.name not in listed:
        raise DamagedRunError(f"{tok}: not listed in its meta {meta_path.name}")
    log_rows = read_run_log(log) if rows or not hashed else []
    if not hashed and not log_rows:
        raise DamagedRunError(f"{log}: holds no rows, and its meta {meta_path.name} has no integrity data to say that "
                              "is what was written: unfinished")
    token_rows = read_run_log(tok) if tok.name in listed and (tokens or not hashed) else None
    for key, want in (("cell", cell), ("arm", arm), ("seed", seed)):
        if key in meta and meta[key] != want:
            raise DamagedRunError(f"{meta_path}: its {key} is {meta[key]!r}, but the file is at {key} {want!r}")
    return Run(cell, arm, seed, meta, log_rows if rows else [], token_rows if tokens else None, hashed)


def wall_seconds(meta: dict) -> float | None:
    """A run's recorded wall time (its meta's wall_s) in seconds; None when the meta records no finite,
    non-negative number (an older meta without it)."""
    v = meta.get("wall_s")
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0
    return float(v) if ok else None


@dataclass(frozen=True)
class RunState:
    """``state``: "finished", "missing" (no file) or "damaged"; ``problem`` says what, naming the file."""
    state: str
    problem: str | None = None


def check_run(root: Path, cell: str, arm: str, seed: int) -> RunState:
    try:
        read_run(root, cell, arm, seed, rows=False, tokens=False)
    except FileNotFoundError:
        return RunState("missing")
    except DamagedRunError as e:
        return RunState("damaged", str(e))
    return RunState("finished")


def add_integrity(root: Path) -> tuple[list[Path], list[str]]:
    """Give every hash-less (legacy) run of the study folder ``root`` its integrity data: a run whose
    log (and tokens) read fully gets its meta rewritten with their current sha256 and sizes and its own
    hash (the data files are not touched); from then on any edit of any of its files is detected.
    Runs already hashed are left as they are; a damaged run is not blessed but listed. Returns (the
    metas rewritten, the problems)."""
    root = Path(root)
    done, problems = [], []
    for cell, arm, seed in scan_runs(root).runs:
        try:
            run = read_run(root, cell, arm, seed, rows=False, tokens=False)
        except (FileNotFoundError, DamagedRunError) as e:
            problems.append(str(e))
            continue
        if run.hashed:
            continue
        log, meta_path = run_paths(root, cell, arm, seed)
        files = {p.name: {"sha256": _sha256(b), "bytes": len(b)}
                 for p in (log, tokens_path(root, cell, arm, seed)) if p.is_file() for b in [p.read_bytes()]}
        write_atomic(meta_path, meta_bytes({**run.meta, "integrity": {"files": files}}))
        done.append(meta_path)
    return done, problems


def is_cached(root: Path, cell: str, arm: str, seed: int) -> bool:
    """True only for a finished run whose files check out (check_run)."""
    return check_run(root, cell, arm, seed).state == "finished"


@dataclass
class Scan:
    """What runs/ of a study folder holds: the (cell, arm, seed) of every run with a file, stray files."""
    runs: list[tuple[str, str, int]] = field(default_factory=list)
    stray: list[Path] = field(default_factory=list)


def scan_runs(root: Path) -> Scan:
    """Every (cell, arm, seed) with at least one file under ``root``/runs, sorted, and the stray
    files there (anything not at runs/CELL/ARM/seedK.{jsonl.gz,tokens.gz,meta.json}; a temporary
    file of an interrupted write included)."""
    base = Path(root) / "runs"
    out = Scan()
    for p in (Path(root), base):
        if p.exists() and not p.is_dir():
            raise ValueError(f"{p} is a file, not a study folder (it should hold runs/CELL/ARM/seedK.*)")
    if not base.is_dir():
        return out
    units = set()
    for p in sorted(base.rglob("*")):
        if p.is_dir():
            continue
        rel = p.relative_to(base).parts
        m = RUN_FILE.match(rel[-1]) if len(rel) == 3 else None
        if m is None:
            out.stray.append(p)
        else:
            units.add((rel[0], rel[1], int(m["seed"])))
    out.runs = sorted(units)
    return out


def finished_runs(root: Path, rows: bool = True, tokens: bool = True, warn: bool = True) -> tuple[list[Run], list[str]]:
    """([Run] of every finished run under ``root``, [problem] naming each damaged run or stray file);
    ``rows`` / ``tokens`` as in read_run. With ``warn``, each problem is also issued as a warning:
    damaged runs are never silently skipped."""
    scan = scan_runs(root)
    runs, problems = [], [f"{p}: stray file (not a run's log, tokens or meta)" for p in scan.stray]
    for cell, arm, seed in scan.runs:
        try:
            runs.append(read_run(root, cell, arm, seed, rows=rows, tokens=tokens))
        except DamagedRunError as e:
            problems.append(f"{e} (not counted; the runner reruns it)")
    if warn:
        for p in problems:
            warnings.warn(p, stacklevel=2)
    return runs, problems


# ----------------------------------------------------------------------------- loading as frames
class LogFrames:
    """``.steps`` / ``.minibatches`` / ``.evals``: the rows of ``self.log`` (engine log rows with a
    "kind" column) of one kind, all-empty columns dropped; an empty log gives an empty frame."""
    log: pd.DataFrame

    def kind(self, kind: str) -> pd.DataFrame:
        if self.log.empty:
            return self.log.iloc[0:0].copy()
        return self.log[self.log["kind"] == kind].dropna(axis=1, how="all").reset_index(drop=True)

    @property
    def steps(self) -> pd.DataFrame:
        return self.kind("step")

    @property
    def minibatches(self) -> pd.DataFrame:
        return self.kind("minibatch")

    @property
    def evals(self) -> pd.DataFrame:
        return self.kind("eval")


RUN_COLUMNS = ["cell", "arm", "seed", "wall_s", "lr", "git_commit", "matched_scale"]


@dataclass
class StudyResults(LogFrames):
    """A study's cache as tidy frames: one row per logged row, with cell, arm, seed columns."""
    name: str
    log: pd.DataFrame
    runs: pd.DataFrame        # one row per run: cell, arm, seed, wall_s, lr, git_commit, matched scale
    definition: dict
    tokens: pd.DataFrame | None = None   # token captures (one row per response; cell, arm, label = arm, seed), if any
    problems: list[str] = field(default_factory=list)   # damaged runs and stray files, not loaded

    @property
    def arms(self) -> list[str]:
        """The arms with a finished run, in the cache's order."""
        return list(dict.fromkeys(self.runs["arm"]))

    @property
    def seeds(self) -> list[int]:
        return sorted({int(s) for s in self.runs["seed"]})


def load_study(name: str, results_dir=None) -> StudyResults:
    """Every finished run of study ``name`` whose files check out (finished_runs); a damaged run or
    stray file is left out with a warning naming it (also in ``.problems``). ValueError naming the
    folder when the study has no cache, or naming study.json when it is damaged."""
    root = study_dir(name, results_dir)
    if not (root / "study.json").is_file():
        raise ValueError(f"no cached study {name!r} at {root} (run: python -m ercref.study {name})")
    definition = read_study_json(root / "study.json")
    runs, problems = finished_runs(root)
    frames, table, token_rows = [], [], []
    for r in runs:
        df = pd.DataFrame.from_records(r.rows)
        df.insert(0, "seed", r.seed)
        df.insert(0, "arm", r.arm)
        df.insert(0, "cell", r.cell)
        frames.append(df)
        table.append({"cell": r.cell, "arm": r.arm, "seed": r.seed, "wall_s": r.meta.get("wall_s"),
                      "lr": (r.meta.get("config") or {}).get("optim", {}).get("lr"),
                      "git_commit": r.meta.get("git_commit"),
                      "matched_scale": (r.meta.get("matched") or {}).get("scale")})
        token_rows += [{"cell": r.cell, "arm": r.arm, "label": r.arm, "seed": r.seed, **t} for t in r.tokens or []]
    log_df = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["cell", "arm", "seed", "kind"])
    return StudyResults(name, log_df, pd.DataFrame(table, columns=RUN_COLUMNS), definition,
                        pd.DataFrame.from_records(token_rows) if token_rows else None, problems)


def load_tokens(name: str, results_dir=None) -> pd.DataFrame | None:
    """The token captures of study ``name`` (the .tokens.gz of its finished runs), one row per captured
    response with cell, arm, label (= arm) and seed; None when it has none. Checks every run's files
    but parses no engine log; a damaged run is left out with a warning (finished_runs)."""
    root = study_dir(name, results_dir)
    rows = []
    for r in finished_runs(root, rows=False)[0]:
        rows += [{"cell": r.cell, "arm": r.arm, "label": r.arm, "seed": r.seed, **t} for t in r.tokens or []]
    return pd.DataFrame.from_records(rows) if rows else None
