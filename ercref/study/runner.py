"""Run a named study (studies.py) into a resumable cache, in pieces, and load it back.

    python -m ercref.study tiny-stability-map --hours 2.5      # fill the cache for 2.5 h, then stop
    python -m ercref.study tiny-stability-map --status         # what is cached, what is left, run-hours
    python -m ercref.study tiny-stability-map --report         # the verdict table of the cache (report.py)
    python -m ercref.study --list                              # the studies

One run (cell, arm, seed) is one unit of work. Cache of study NAME (results dir default data/results):

    NAME/study.json                              the study's definition (cells, arms, seeds, overrides)
    NAME/runs/CELL/ARM/seedK.jsonl.gz            the engine's log rows (kinds sft / step / minibatch / eval),
                                                 gzip-compressed JSON Lines (~6x smaller; read_run_log reads it)
    NAME/runs/CELL/ARM/seedK.meta.json           config, seed, git commit, machine, wall seconds, ercref version
    NAME/runs/CELL/ARM/seedK.tokens.gz           only for a study with capture_steps: experiments.TokenCapture's
                                                 per-response records (tokens, old / new entropy, rho, ERC state),
                                                 gzip JSON Lines

A run whose .jsonl.gz exists is skipped. Both files are written when the run ends, each to a temporary
name and moved into place (os.replace): the .meta.json first (then the .tokens.gz), the .jsonl.gz last, so a .jsonl.gz is the
mark of a finished run and a study killed at any moment leaves a consistent cache. With ``--hours``
the runner starts a run only if, by its estimate (the median wall time of cached runs of the same
arm and cell, else of the arm, else of the study, else the study's prior), it ends within the
budget. Workers are separate processes with one torch thread each (two one-thread runs side by side
on 2 cores: 5.4x less wall time than the same runs one after the other on two threads each; --help).
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import gzip
import json
import multiprocessing
import os
import platform
import shutil
import statistics
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from .experiments import RESULTS_DIR, LogFrames, compact
from .studies import STUDIES, Study

DEFAULT_WORKERS = 2
LOG_SUFFIX = ".jsonl.gz"


# ----------------------------------------------------------------------------- cache paths
def study_dir(name: str, results_dir=None) -> Path:
    return (Path(results_dir) if results_dir is not None else RESULTS_DIR) / name


def run_paths(root: Path, cell: str, arm: str, seed: int) -> tuple[Path, Path]:
    """(log, meta) paths of one run under the study folder ``root``."""
    d = root / "runs" / cell / arm
    return d / f"seed{seed}{LOG_SUFFIX}", d / f"seed{seed}.meta.json"


def tokens_path(root: Path, cell: str, arm: str, seed: int) -> Path:
    """The token captures of one run (written only when its study has capture_steps)."""
    return root / "runs" / cell / arm / f"seed{seed}.tokens.gz"


def _write_jsonl_gz(path: Path, rows: list[dict]) -> None:
    """``rows`` as gzip JSON Lines at ``path``, atomically (mtime 0: the same rows give the same bytes)."""
    _write_atomic(path, gzip.compress("".join(json.dumps(r) + "\n" for r in rows).encode(), mtime=0))


def read_run_log(path: str | os.PathLike) -> list[dict]:
    """The log rows of one cached run (gzip JSON Lines; a plain .jsonl also reads)."""
    path = Path(path)
    raw = path.read_bytes()
    text = gzip.decompress(raw).decode() if raw[:2] == b"\x1f\x8b" else raw.decode()
    return [json.loads(x) for x in text.splitlines() if x.strip()]


def _seed_of(log: Path) -> int:
    return int(log.name[len("seed"):-len(LOG_SUFFIX)])


def is_cached(root: Path, cell: str, arm: str, seed: int) -> bool:
    return run_paths(root, cell, arm, seed)[0].is_file()


def _write_atomic(path: Path, text: str | bytes) -> None:
    """Write to a hidden temporary file in the same folder, then os.replace (atomic on POSIX)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
    with open(tmp, "wb" if isinstance(text, bytes) else "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def write_study_json(study: Study, root: Path) -> None:
    """study.json = the definition. Refuses (ValueError) when a cached definition gives an existing
    cell or arm other overrides, or another preset / base: its cached runs would not be this study's."""
    path = root / "study.json"
    new = study.to_dict()
    if path.is_file():
        old = json.loads(path.read_text())
        clash = [k for k in ("preset", "base") if old.get(k) != json.loads(json.dumps(new[k]))]
        clash += ["capture_steps"] * (old.get("capture_steps", []) != new["capture_steps"])
        for kind in ("cells", "arms"):
            clash += [f"{kind[:-1]} {n!r}" for n, v in old.get(kind, {}).items()
                      if n in new[kind] and json.loads(json.dumps(new[kind][n])) != v]
        if clash:
            raise ValueError(f"{path} was written by a different definition of study {study.name!r} "
                             f"({', '.join(clash)} changed): its cached runs are not this study's. Move that folder "
                             "away (or delete the changed runs and study.json), or give the study a new name.")
        for kind in ("cells", "arms"):  # keep what the cache holds, add what is new
            new[kind] = {**old.get(kind, {}), **new[kind]}
        new["seeds"] = sorted(set(old.get("seeds", [])) | set(new["seeds"]))
    _write_atomic(path, json.dumps(new, indent=2))


# ----------------------------------------------------------------------------- provenance
def git_commit() -> str | None:
    """HEAD's commit (+ "-dirty" when the working tree has changes), None outside a git checkout."""
    from ercref.paths import REPO_ROOT

    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return head + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def machine() -> dict:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"platform": platform.platform(), "cpu": cpu, "cpus": os.cpu_count(), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(), "python": platform.python_version()}


# ----------------------------------------------------------------------------- matched-step control
def matched_lr(reference_lr: float, target_norms, reference_norms) -> tuple[float, float]:
    """(lr, scale) of the matched-step control: scale = mean(target_norms) / mean(reference_norms),
    lr = reference_lr * scale (studies.py explains why). Norms are per-minibatch optim/update_norm."""
    t, r = [float(x) for x in target_norms], [float(x) for x in reference_norms]
    if not t or not r:
        raise ValueError("matched_lr needs at least one update norm of each arm (target_norms, reference_norms)")
    if any(x != x or x < 0 for x in t + r):
        raise ValueError("update norms must be finite and >= 0")
    mr = sum(r) / len(r)
    if mr <= 0:
        raise ValueError("the reference arm's mean update norm is 0: no learning-rate scale matches it")
    scale = (sum(t) / len(t)) / mr
    return reference_lr * scale, scale


def _update_norms(root: Path, cell: str, arm: str, seeds) -> list[float] | None:
    """Every minibatch's optim/update_norm of the arm at the cell over ``seeds``; None if a seed is missing."""
    out = []
    for s in seeds:
        log, _ = run_paths(root, cell, arm, s)
        if not log.is_file():
            return None
        rows = read_run_log(log)
        vals = [r["optim/update_norm"] for r in rows if r.get("kind") == "minibatch" and "optim/update_norm" in r]
        if not vals:
            raise ValueError(f"{log} has no optim/update_norm (a run from before the metric existed): delete it "
                             "and rerun that arm to compute the matched-step learning rate")
        out += vals
    return out


def matched_overrides(study: Study, root: Path, cell: str, arm: str) -> dict | None:
    """{"optim.lr": lr, "_matched": {...}} for a matched arm at ``cell`` from the cache, or None while
    the target / reference arms lack a study seed there."""
    target, ref = study.matched[arm]
    tn, rn = _update_norms(root, cell, target, study.seeds), _update_norms(root, cell, ref, study.seeds)
    if tn is None or rn is None:
        return None
    ref_lr = study.config(cell, ref, study.seeds[0]).optim.lr
    lr, scale = matched_lr(ref_lr, tn, rn)
    return {"optim.lr": lr, "_matched": {"target": target, "reference": ref, "reference_lr": ref_lr, "scale": scale,
                                         "target_mean_update_norm": sum(tn) / len(tn),
                                         "reference_mean_update_norm": sum(rn) / len(rn)}}


# ----------------------------------------------------------------------------- one run
def run_unit(study: Study, root: str | os.PathLike, cell: str, arm: str, seed: int, extra: dict | None = None) -> dict:
    """Train one (cell, arm, seed) and write its .meta.json and .jsonl.gz atomically (in that order).
    Meant for a worker process: the engine runs in a temporary folder that is removed after."""
    import torch

    from .experiments import run_arm

    torch.set_num_threads(1)
    root = Path(root)
    extra = dict(extra or {})
    matched = extra.pop("_matched", None)
    cfg = study.config(cell, arm, seed, extra)
    work = Path(tempfile.mkdtemp(prefix=f"ercref-{study.name}-"))
    t0 = time.perf_counter()
    try:
        logs, toks = run_arm(cfg, work / "run", label=arm, seed=seed, checkpoints=False,
                             capture_steps=list(study.capture_steps))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    wall = time.perf_counter() - t0
    import ercref

    meta = {"study": study.name, "cell": cell, "arm": arm, "seed": seed, "config": cfg.to_dict(),
            "overrides": study.overrides(cell, arm, seed, extra), "matched": matched, "git_commit": git_commit(),
            "ercref_version": ercref.__version__, "machine": machine(), "wall_s": round(wall, 2),
            "finished": time.strftime("%Y-%m-%d %H:%M:%S")}
    log_path, meta_path = run_paths(root, cell, arm, seed)
    _write_atomic(meta_path, json.dumps(meta, indent=2, default=str))
    if study.capture_steps:
        _write_jsonl_gz(tokens_path(root, cell, arm, seed), [{k: v for k, v in r.items() if k not in ("label", "seed")}
                                                             for r in toks])
    _write_jsonl_gz(log_path, [compact({k: v for k, v in r.items() if k not in ("label", "seed")}) for r in logs])
    return {"cell": cell, "arm": arm, "seed": seed, "wall_s": wall}


# ----------------------------------------------------------------------------- time estimates
def cached_wall_times(root: Path) -> list[dict]:
    """[{"cell", "arm", "seed", "wall_s"}] of every finished run in the cache."""
    out = []
    for log in sorted((root / "runs").glob(f"*/*/seed*{LOG_SUFFIX}")):
        meta = log.with_name(f"seed{_seed_of(log)}.meta.json")
        if meta.is_file():
            m = json.loads(meta.read_text())
            out.append({"cell": m["cell"], "arm": m["arm"], "seed": m["seed"], "wall_s": float(m["wall_s"])})
    return out


def estimate_run_s(times: list[dict], cell: str, arm: str, prior: float) -> float:
    """Median wall time of cached runs of (cell, arm), else of the arm, else of all, else ``prior``."""
    for keep in (lambda t: t["cell"] == cell and t["arm"] == arm, lambda t: t["arm"] == arm, lambda t: True):
        xs = [t["wall_s"] for t in times if keep(t)]
        if xs:
            return float(statistics.median(xs))
    return float(prior)


# ----------------------------------------------------------------------------- the study loop
def _worker_init() -> None:
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)


def run_study(study: Study, results_dir=None, cells=None, arms=None, seeds=None, hours: float | None = None,
              workers: int = DEFAULT_WORKERS, log=print) -> dict:
    """Run every selected run of ``study`` not in the cache, ``workers`` processes at a time, starting
    a run only while its estimated end is within ``hours`` (None: no limit). Returns
    {"done": [...], "skipped_cached": n, "not_started": [...], "waiting": [...], "failed": [...], "wall_s": s}
    (a failed run is reported and leaves nothing in the cache; the others go on)."""
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if hours is not None and not hours > 0:
        raise ValueError(f"hours must be > 0 (the time budget), got {hours}")
    root = study_dir(study.name, results_dir)
    root.mkdir(parents=True, exist_ok=True)
    write_study_json(study, root)
    todo = [u for u in study.runs(cells, arms, seeds) if not is_cached(root, *u)]
    for cell, arm in dict.fromkeys((c, a) for c, a, _ in todo):  # a bad override fails now, not hours in
        study.config(cell, arm, study.seeds[0])
    n_cached = len(study.runs(cells, arms, seeds)) - len(todo)
    budget = hours * 3600.0 if hours is not None else float("inf")
    times = cached_wall_times(root)
    t0 = time.perf_counter()
    done, not_started, waiting, failed = [], [], [], []
    log(f"[{study.name}] {len(todo)} runs to do, {n_cached} cached; {workers} worker(s)"
        + (f", budget {hours:g} h" if hours is not None else ""))
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # inherited by the workers before they import torch
    ctx = multiprocessing.get_context("spawn")
    with cf.ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_worker_init) as pool:
        running: dict[cf.Future, tuple] = {}
        queue = list(todo)
        while queue or running:
            while queue and len(running) < workers:
                cell, arm, seed = unit = queue[0]
                extra = None
                if arm in study.matched:
                    extra = matched_overrides(study, root, cell, arm)
                    if extra is None:
                        if running:       # its inputs may be among the running runs: wait for them
                            break
                        waiting.append(queue.pop(0))
                        continue
                est = estimate_run_s(times, cell, arm, study.est_run_s)
                if time.perf_counter() - t0 + est > budget:
                    not_started.append(queue.pop(0))
                    continue
                queue.pop(0)
                running[pool.submit(run_unit, study, str(root), cell, arm, seed, extra)] = unit
            if not running:
                break
            finished, _ = cf.wait(running, return_when=cf.FIRST_COMPLETED)
            for fut in finished:
                unit = running.pop(fut)
                try:
                    res = fut.result()
                except Exception as e:  # noqa: BLE001 - one failed run must not stop the others (nothing of it is cached)
                    failed.append((*unit, f"{type(e).__name__}: {e}"))
                    log(f"[{study.name}] {unit[0]} {unit[1]} seed {unit[2]} FAILED: {type(e).__name__}: {e}")
                    continue
                done.append(res)
                times.append(res)
                log(f"[{study.name}] {unit[0]} {unit[1]} seed {unit[2]}: {res['wall_s']:.0f} s "
                    f"({len(done)}/{len(todo)}, {(time.perf_counter() - t0) / 60:.1f} min)")
    wall = time.perf_counter() - t0
    if not_started:
        log(f"[{study.name}] budget: {len(not_started)} run(s) not started; run the same command again to continue")
    if waiting:
        log(f"[{study.name}] {len(waiting)} matched-step run(s) wait for their target / reference arms at every seed")
    return {"done": done, "skipped_cached": n_cached, "not_started": not_started, "waiting": waiting, "failed": failed,
            "wall_s": wall}


def status(study: Study, results_dir=None, cells=None, arms=None, seeds=None) -> pd.DataFrame:
    """One row per (cell, arm): seeds cached / selected, measured seconds per run, run-hours spent and left."""
    root = study_dir(study.name, results_dir)
    times = cached_wall_times(root) if root.is_dir() else []
    rows: dict[tuple, dict] = {}
    for cell, arm, seed in study.runs(cells, arms, seeds):
        r = rows.setdefault((cell, arm), {"cell": cell, "arm": arm, "cached": 0, "runs": 0, "spent_s": 0.0, "left_s": 0.0})
        r["runs"] += 1
        hit = [t["wall_s"] for t in times if (t["cell"], t["arm"], t["seed"]) == (cell, arm, seed)]
        if hit:
            r["cached"] += 1
            r["spent_s"] += hit[0]
        else:
            r["left_s"] += estimate_run_s(times, cell, arm, study.est_run_s)
    df = pd.DataFrame(list(rows.values()), columns=["cell", "arm", "cached", "runs", "spent_s", "left_s"])
    df["spent_cpu_h"] = df.pop("spent_s") / 3600   # one thread per run: wall time = CPU time
    df["left_cpu_h"] = df.pop("left_s") / 3600
    return df


# ----------------------------------------------------------------------------- loading
@dataclass
class StudyResults(LogFrames):
    """A study's cache as tidy frames: one row per logged row, with cell, arm, seed columns."""
    name: str
    log: pd.DataFrame
    runs: pd.DataFrame        # one row per run: cell, arm, seed, wall_s, lr, git_commit, matched scale
    definition: dict
    tokens: pd.DataFrame | None = None   # token captures (one row per response; cell, arm, label = arm, seed), if any


def load_study(name: str, results_dir=None) -> StudyResults:
    """Every finished run of study ``name`` (a .jsonl.gz in the cache). ValueError naming the folder
    when the study has no cache."""
    root = study_dir(name, results_dir)
    if not (root / "study.json").is_file():
        raise ValueError(f"no cached study {name!r} at {root} (run: python -m ercref.study {name})")
    frames, runs = [], []
    for log in sorted((root / "runs").glob(f"*/*/seed*{LOG_SUFFIX}")):
        cell, arm, seed = log.parent.parent.name, log.parent.name, _seed_of(log)
        rows = read_run_log(log)
        df = pd.DataFrame.from_records(rows)
        df.insert(0, "seed", seed)
        df.insert(0, "arm", arm)
        df.insert(0, "cell", cell)
        frames.append(df)
        meta_path = log.with_name(f"seed{seed}.meta.json")
        meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
        runs.append({"cell": cell, "arm": arm, "seed": seed, "wall_s": meta.get("wall_s"),
                     "lr": meta.get("config", {}).get("optim", {}).get("lr"), "git_commit": meta.get("git_commit"),
                     "matched_scale": (meta.get("matched") or {}).get("scale")})
    log_df = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["cell", "arm", "seed", "kind"])
    return StudyResults(name, log_df, pd.DataFrame(runs, columns=["cell", "arm", "seed", "wall_s", "lr", "git_commit",
                                                                  "matched_scale"]),
                        json.loads((root / "study.json").read_text()),
                        load_tokens(name, results_dir))


def load_tokens(name: str, results_dir=None) -> pd.DataFrame | None:
    """The token captures of study ``name`` (the .tokens.gz of its finished runs), one row per captured
    response with cell, arm, label (= arm) and seed; None when it has none. Reads no engine log."""
    root = study_dir(name, results_dir)
    rows = []
    for log in sorted((root / "runs").glob(f"*/*/seed*{LOG_SUFFIX}")):
        cell, arm, seed = log.parent.parent.name, log.parent.name, _seed_of(log)
        tp = tokens_path(root, cell, arm, seed)
        if tp.is_file():
            rows += [{"cell": cell, "arm": arm, "label": arm, "seed": seed, **r} for r in read_run_log(tp)]
    return pd.DataFrame.from_records(rows) if rows else None


# ----------------------------------------------------------------------------- CLI
def main(argv: list[str] | None = None, studies: dict | None = None) -> int:
    studies = STUDIES if studies is None else studies
    ap = argparse.ArgumentParser(prog="python -m ercref.study", description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("study", nargs="?", help=f"the study to run: one of {sorted(studies)}")
    ap.add_argument("--hours", type=float, default=None,
                    help="time budget: start a run only if it is estimated to end within this many hours "
                         "(estimate: median wall time of cached runs); default: no limit")
    ap.add_argument("--workers", type=int, default=DEFAULT_WORKERS,
                    help=f"runs at a time, each a process with one torch thread (default {DEFAULT_WORKERS}: on 2 "
                         "cores the same two tiny runs took 181 s side by side with one thread each and 971 s one "
                         "after the other with two threads each; measured 2026-11-29 on a shared machine)")
    ap.add_argument("--cells", nargs="+", default=None, help="only these cells (default: the study's default cells)")
    ap.add_argument("--arms", nargs="+", default=None, help="only these arms (default: every arm of each cell)")
    ap.add_argument("--seeds", type=int, nargs="+", default=None, help="only these seeds (default: the study's)")
    ap.add_argument("--results-dir", default=None, help=f"cache root (default {RESULTS_DIR})")
    ap.add_argument("--list", action="store_true", help="list the studies, or with a study its cells, arms and runs")
    ap.add_argument("--status", action="store_true", help="show cached / left runs and run-hours (sum of wall times) per cell and arm")
    ap.add_argument("--report", action="store_true",
                    help="print the markdown report of the cache: paired verdicts per cell and arm pair, provenance "
                         "(what the README's 'What we found' section pastes; ercref.study.report)")
    args = ap.parse_args(argv)
    if args.study is None:
        if not args.list:
            ap.error("name a study (or --list): " + ", ".join(sorted(studies)))
        for name, make in studies.items():
            s = make()
            print(f"{name:20s} {s.preset:12s} {len(s.runs()):4d} runs  {s.description}")
        return 0
    if args.study not in studies:
        ap.error(f"unknown study {args.study!r}; known: {', '.join(sorted(studies))}")
    study = studies[args.study]()
    try:
        if args.report:
            from .report import study_report

            print(study_report(study.name, args.results_dir), end="")
            return 0
        if args.list:
            print(f"{study.name}: preset {study.preset}, seeds {study.seeds}\nbase {study.base}")
            for c in (args.cells or study.default_cells or list(study.cells)):
                print(f"cell {c}: {study.cells[c]}  arms {study.arms_at(c)}")
            for a, o in study.arms.items():
                print(f"arm {a}: {o}" + (f"  (lr matched: {study.matched[a]})" if a in study.matched else ""))
            print(f"{len(study.runs(args.cells, args.arms, args.seeds))} runs selected")
            return 0
        if args.status:
            df = status(study, args.results_dir, args.cells, args.arms, args.seeds)
            with pd.option_context("display.max_rows", None, "display.width", 160):
                print(df.to_string(index=False, float_format=lambda x: f"{x:.2f}"))
            print(f"cached {int(df['cached'].sum())} / {int(df['runs'].sum())} runs; run-hours spent "
                  f"{df['spent_cpu_h'].sum():.2f}, left ~{df['left_cpu_h'].sum():.2f}")
            return 0
        res = run_study(study, args.results_dir, args.cells, args.arms, args.seeds, args.hours, args.workers)
    except ValueError as e:
        ap.error(str(e))
    print(f"[{study.name}] {len(res['done'])} run(s) done in {res['wall_s'] / 60:.1f} min; "
          f"{res['skipped_cached']} were cached; {len(res['not_started'])} not started (budget); "
          f"{len(res['waiting'])} waiting; {len(res['failed'])} failed")
    return 1 if res["failed"] else 0

