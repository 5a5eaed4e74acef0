"""Run a named study (studies.py) into its resumable cache (cache.py), in pieces.

    python -m ercref.study tiny-stability-map --hours 2.5      # fill the cache for 2.5 h, then stop
    python -m ercref.study tiny-stability-map --status         # what is cached, what is left, run-hours
    python -m ercref.study tiny-stability-map --report         # the verdict table of the cache (report.py)
    python -m ercref.study --list                              # the studies

Every arm of a seed starts from the same policy: the first run of a seed stores its warm-up under
the study's cache (start/, start_policy.py) and the others load it, in any process or on any machine;
each run's meta records that policy's sha256 ("start_policy") and the CPU model ("machine"), and reports
pair runs whose hashes match (pairing.py).

One run (cell, arm, seed) is one unit of work, written by cache.write_run (log, token captures, then
the meta with their hashes; each file atomically). A run that cache.check_run finds finished is
skipped; one with damaged or incomplete files is reported, its files are set aside (never deleted)
and it is run again. With ``--hours`` the runner starts a run only if, by its estimate (the median
wall time of cached runs of the same arm and cell, else of the arm, else of the study, else the
study's prior), it ends within the budget. Workers are separate processes with one torch thread
each (two one-thread runs side by side beat one run at a time with two threads on a small machine).

Stopping: Ctrl-C or SIGTERM to the runner stops its workers too (the runs in progress leave nothing in
the cache, only their temporary folders are removed; finished runs stay), and a worker whose runner
died without stopping it (SIGKILL) stops itself within a few seconds. The same command resumes.
"""
from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
import os
import platform
import shutil
import signal
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pandas as pd

from .cache import check_run, compact, finished_runs, read_run, study_dir, wall_seconds, write_run, write_study_json
from .learning_primaries import PREREGISTRATION_DIR
from .preregistration import registered_commit
from .studies import Study

DEFAULT_WORKERS = 2


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
        if check_run(root, cell, arm, s).state != "finished":
            return None
        run = read_run(root, cell, arm, s, tokens=False)
        vals = [r["optim/update_norm"] for r in run.rows if r.get("kind") == "minibatch" and "optim/update_norm" in r]
        if not vals:
            raise ValueError(f"{root}/runs/{cell}/{arm}/seed{s}: its log has no optim/update_norm (a run from before "
                             "the metric existed): move it away and rerun that arm to compute the matched-step "
                             "learning rate")
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
    """Train one (cell, arm, seed) and write it to the cache (cache.write_run: any earlier files of
    that run are set aside, never deleted). Meant for a worker process: the engine runs in a
    temporary folder that is removed after."""
    import torch

    from .experiments import SFTCache, run_arm
    from .start_policy import START_DIR

    torch.set_num_threads(1)
    root = Path(root)
    extra = dict(extra or {})
    matched = extra.pop("_matched", None)
    cfg = study.config(cell, arm, seed, extra)
    work = Path(tempfile.mkdtemp(prefix=f"ercref-{study.name}-"))
    sft = SFTCache(root / START_DIR)
    commit = git_commit()        # the code this run runs: a commit made while it trains is not it
    t0 = time.perf_counter()
    try:
        logs, toks = run_arm(cfg, work / "run", label=arm, seed=seed, checkpoints=False,
                             capture_steps=list(study.capture_steps), sft=sft)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    wall = time.perf_counter() - t0
    import ercref

    meta = {"study": study.name, "cell": cell, "arm": arm, "seed": seed, "config": cfg.to_dict(),
            "overrides": study.overrides(cell, arm, seed, extra), "matched": matched, "git_commit": commit,
            "ercref_version": ercref.__version__, "machine": machine(), "start_policy": sft.start, "wall_s": round(wall, 2),
            "finished": time.strftime("%Y-%m-%d %H:%M:%S")}
    untag = ("label", "seed")
    write_run(root, cell, arm, seed, meta, [compact({k: v for k, v in r.items() if k not in untag}) for r in logs],
              [{k: v for k, v in r.items() if k not in untag} for r in toks] if study.capture_steps else None)
    return {"cell": cell, "arm": arm, "seed": seed, "wall_s": wall}


# ----------------------------------------------------------------------------- time estimates
def cached_wall_times(root: Path) -> list[dict]:
    """[{"cell", "arm", "seed", "wall_s"}] of every finished run in the cache whose files check out
    (cache.finished_runs; a damaged one is warned about and left out). ``wall_s`` is None for a run
    whose meta records no finite, non-negative wall time (an older meta): it counts as cached, with
    no time."""
    runs, _ = finished_runs(root, rows=False, tokens=False)
    return [{"cell": r.cell, "arm": r.arm, "seed": r.seed, "wall_s": wall_seconds(r.meta)} for r in runs]


def estimate_run_s(times: list[dict], cell: str, arm: str, prior: float) -> float:
    """Median wall time of cached runs of (cell, arm), else of the arm, else of all, else ``prior``
    (runs with no recorded time are left out)."""
    for keep in (lambda t: t["cell"] == cell and t["arm"] == arm, lambda t: t["arm"] == arm, lambda t: True):
        xs = [t["wall_s"] for t in times if keep(t) and t["wall_s"] is not None]
        if xs:
            return float(statistics.median(xs))
    return float(prior)


# ----------------------------------------------------------------------------- the study loop
ORPHAN_POLL_S = 2.0     # how often a worker checks that its runner is alive
STOP_GRACE_S = 30.0     # how long a worker stopped by its runner may take to clean up before it is killed
ORPHAN_GRACE_S = 5.0    # the same for an orphaned worker (its run's cleanup takes well under a second)


def _raise_system_exit(signum, frame):
    raise SystemExit(128 + signum)


def _exit_when_orphaned(runner_pid: int) -> None:
    """A worker's watchdog thread: once its runner is gone (the worker was re-parented), stop the run
    as SIGTERM would (its temporary folder is removed), and exit outright ORPHAN_GRACE_S later."""
    while os.getppid() == runner_pid:
        time.sleep(ORPHAN_POLL_S)
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(ORPHAN_GRACE_S)
    os._exit(1)


def _worker_init() -> None:
    os.environ["OMP_NUM_THREADS"] = "1"
    signal.signal(signal.SIGTERM, _raise_system_exit)      # a stopped run cleans up (run_unit's finally)
    signal.signal(signal.SIGINT, signal.SIG_IGN)            # Ctrl-C reaches the whole group: the runner stops us
    threading.Thread(target=_exit_when_orphaned, args=(os.getppid(),), daemon=True).start()
    import torch

    torch.set_num_threads(1)


def _stop_workers(pool: cf.ProcessPoolExecutor) -> None:
    """Cancel the queued runs and stop the running ones (SIGTERM, then SIGKILL after STOP_GRACE_S)."""
    pool.shutdown(wait=False, cancel_futures=True)
    children = multiprocessing.active_children()
    for p in children:
        p.terminate()
    deadline = time.monotonic() + STOP_GRACE_S
    for p in children:
        p.join(max(0.0, deadline - time.monotonic()))
        if p.is_alive():
            p.kill()
            p.join()


def _fill(pool, study: Study, root: Path, todo: list, workers: int, times: list, budget: float, t0: float,
          done: list, not_started: list, waiting: list, failed: list, log) -> None:
    """run_study's loop: keep ``workers`` runs going until the queue is empty (or over budget); the
    result lists are filled in place, so a stopped loop leaves what it finished."""
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
            except (Exception, SystemExit) as e:  # noqa: BLE001 - one failed (or one stopped) run must not stop
                # the others (nothing of it is cached)
                failed.append((*unit, f"{type(e).__name__}: {e}"))
                log(f"[{study.name}] {unit[0]} {unit[1]} seed {unit[2]} FAILED: {type(e).__name__}: {e}")
                continue
            done.append(res)
            times.append(res)
            log(f"[{study.name}] {unit[0]} {unit[1]} seed {unit[2]}: {res['wall_s']:.0f} s "
                f"({len(done)}/{len(todo)}, {(time.perf_counter() - t0) / 60:.1f} min)")


def run_study(study: Study, results_dir=None, cells=None, arms=None, seeds=None, hours: float | None = None,
              workers: int = DEFAULT_WORKERS, log=print, require_registered: bool = True) -> dict:
    """Run every selected run of ``study`` not in the cache, ``workers`` processes at a time, starting
    a run only while its estimated end is within ``hours`` (None: no limit). A study with pre-registered
    hypotheses (``Study.preregistration``) runs only once its hypotheses file is committed as it is
    (tests pass require_registered=False); that commit is saved in study.json. Returns
    {"done": [...], "skipped_cached": n, "not_started": [...], "waiting": [...], "failed": [...], "wall_s": s}
    (a failed run is reported and leaves nothing in the cache; the others go on)."""
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if hours is not None and not hours > 0:
        raise ValueError(f"hours must be > 0 (the time budget), got {hours}")
    root = study_dir(study.name, results_dir)
    root.mkdir(parents=True, exist_ok=True)
    registered = None
    if study.preregistration is not None:
        registered = registered_commit(PREREGISTRATION_DIR / study.preregistration)
        if registered is None and require_registered:
            raise ValueError(f"the pre-registered hypotheses of {study.name!r} ({PREREGISTRATION_DIR / study.preregistration}) "
                             "are not committed as they are: commit them before the first run")
    write_study_json(study, root, registered)
    states = {u: check_run(root, *u) for u in study.runs(cells, arms, seeds)}
    todo = [u for u, st in states.items() if st.state != "finished"]
    for (cell, arm, seed), st in states.items():
        if st.state == "damaged":
            log(f"[{study.name}] {cell} {arm} seed {seed} is not a finished run: {st.problem}; it is run again "
                f"(its files are moved to {root / 'set-aside'})")
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
    on_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _raise_system_exit) if on_main_thread else None
    try:
        with cf.ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_worker_init) as pool:
            try:
                _fill(pool, study, root, todo, workers, times, budget, t0, done, not_started, waiting, failed, log)
            except BaseException:
                _stop_workers(pool)
                log(f"[{study.name}] stopped: {len(done)} run(s) finished and cached; the runs in progress were "
                    "stopped and left nothing; run the same command again to continue")
                raise
    finally:
        if on_main_thread:
            signal.signal(signal.SIGTERM, previous)
    wall = time.perf_counter() - t0
    if not_started:
        log(f"[{study.name}] budget: {len(not_started)} run(s) not started; run the same command again to continue")
    if waiting:
        log(f"[{study.name}] {len(waiting)} matched-step run(s) wait for their target / reference arms at every seed")
    return {"done": done, "skipped_cached": n_cached, "not_started": not_started, "waiting": waiting, "failed": failed,
            "wall_s": wall}


def status(study: Study, results_dir=None, cells=None, arms=None, seeds=None) -> pd.DataFrame:
    """One row per (cell, arm): seeds cached / damaged / selected, run-hours spent and left (from the
    measured wall times). "cached" counts exactly the runs run_study skips (cache.check_run); a
    damaged run counts as left, and ``df.attrs["problems"]`` says what is wrong with each, naming the file."""
    root = study_dir(study.name, results_dir)
    times = cached_wall_times(root) if root.is_dir() else []
    done = {(t["cell"], t["arm"], t["seed"]): t["wall_s"] for t in times}
    rows: dict[tuple, dict] = {}
    problems = []
    for cell, arm, seed in study.runs(cells, arms, seeds):
        r = rows.setdefault((cell, arm), {"cell": cell, "arm": arm, "cached": 0, "damaged": 0, "runs": 0,
                                          "spent_s": 0.0, "left_s": 0.0})
        r["runs"] += 1
        if (cell, arm, seed) in done:
            r["cached"] += 1
            r["spent_s"] += done[cell, arm, seed] or 0.0
            continue
        st = check_run(root, cell, arm, seed)
        if st.state == "damaged":
            r["damaged"] += 1
            problems.append(st.problem)
        r["left_s"] += estimate_run_s(times, cell, arm, study.est_run_s)
    df = pd.DataFrame(list(rows.values()), columns=["cell", "arm", "cached", "damaged", "runs", "spent_s", "left_s"])
    df["spent_cpu_h"] = df.pop("spent_s") / 3600   # one thread per run: wall time = CPU time
    df["left_cpu_h"] = df.pop("left_s") / 3600
    df.attrs["problems"] = problems
    return df
