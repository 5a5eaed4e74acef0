"""Run a branching study (branch_study.py) into its resumable cache, one record per (seed, step, K, arm).

    python -m ercref.study.branch tiny-branch --hours 1      # fill the cache for 1 h, then stop
    python -m ercref.study.branch tiny-branch --status       # records finished / damaged / missing, run-hours
    python -m ercref.study.branch tiny-branch --seeds 3 --steps 6   # one branch point (side by side with another run)

Branch points run step-major (every trajectory's first branch step, then every trajectory's second, ...), so
a budget that ends early leaves every trajectory with its earliest points. Each trajectory seed gets the
engine's Trainer for the trajectory's config (SFT warm-up included), kept alive and trained step by step
(Trainer.train_step) to each branch step; there the runner captures the state, rolls out once and runs
every arm at every K from that state (branch_arms.py); then restores the state, so the trajectory goes on
exactly as a run that never branched. Records (branch_record.py) are written
atomically, one per (seed, step, K, arm), with the state's hash, the git commit, the CPU model and the
torch threads. A finished record is skipped; a damaged one (or one whose state_sha256 is not the
recomputed state's) is reported, set aside (never deleted) and run again. A trajectory whose records
are all finished is not trained. ``--hours``: a branch point starts only if its estimated time (the
median of the cache's finished branch points, else the study's prior) ends within the budget.

A real run needs the pre-registered hypotheses committed: ``registered_commit`` is the first commit
holding data/preregistration/branch_hypotheses.json exactly as it is; the runner refuses to start
without one (tests pass require_registered=False) and saves it in study.json.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from .branch_arms import BranchPoint, bracket_secant, capture, restore
from .branch_record import check_record, record_path, set_aside, write_record
from .branch_study import HYPOTHESES_FILE, BranchStudy, get_branch_study
from .cache import read_study_json, study_dir, write_atomic
from .preregistration import registered_commit as first_commit_holding
from .runner import git_commit, machine


# ----------------------------------------------------------------------------- pre-registration
def registered_commit(path: Path = HYPOTHESES_FILE) -> str | None:
    """preregistration.registered_commit of the branching hypotheses file (by default)."""
    return first_commit_holding(path)


def write_branch_study_json(study: BranchStudy, root: Path, registered: str | None) -> None:
    """study.json = the definition + registered_commit. Refuses (ValueError) when a cached definition
    differs in anything but seeds / branch steps / description: its records would not be this study's."""
    path = Path(root) / "study.json"
    new = {**study.to_dict(), "registered_commit": registered}
    if path.is_file():
        old = read_study_json_any(path)
        fixed = ("preset", "base", "trajectory", "arms", "branch_lr", "matched", "tight_clip", "matched_tol",
                 "tight_tol", "heldout_prompts", "heldout_samples", "accuracy_prompts", "hypotheses")
        clash = [k for k in fixed if json.loads(json.dumps(new[k])) != old.get(k)]
        if clash:
            raise ValueError(f"{path} was written by a different definition of study {study.name!r} ({', '.join(clash)} "
                             "changed): its records are not this study's. Move that folder away or name a new study.")
        if old.get("registered_commit") and old["registered_commit"] != registered:
            raise ValueError(f"{path} records registered_commit {old['registered_commit']}, but the hypotheses now "
                             f"were first committed in {registered}: the pre-registration changed after runs began")
        new["seeds"] = sorted(set(old.get("seeds", [])) | set(new["seeds"]))
        new["branch_steps"] = sorted(set(old.get("branch_steps", [])) | set(new["branch_steps"]))
        new["ks"] = sorted(set(old.get("ks", [])) | set(new["ks"]))
    write_atomic(path, json.dumps(new, indent=2))


def read_study_json_any(path: Path) -> dict:
    """A branch study.json (no 'cells'): parsed, or ValueError naming the file and line."""
    try:
        d = json.loads(Path(path).read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}, line {e.lineno}: invalid JSON ({e.msg}); move it away and run again") from None
    if not isinstance(d, dict) or d.get("kind") != "branch":
        return read_study_json(path)   # not a branch study: the ordinary check says what is wrong
    return d


# ----------------------------------------------------------------------------- one branch point
EPS_RANGE = (1e-3, 0.9)   # the tight-clip search's range of the symmetric PPO eps
def _provenance() -> dict:
    import torch

    return {"git_commit": git_commit(), "cpu_model": machine()["cpu"], "torch_threads": torch.get_num_threads()}


def _arm_order(study: BranchStudy) -> list[str]:
    """Fixed arms first (the searched ones need their targets' results)."""
    return [a for a in study.arms if a not in study.searched()] + [a for a in study.arms if a in study.searched()]


def _twin(study: BranchStudy, arm: str) -> str | None:
    """A fixed arm with the same overrides as the searched ``arm`` (its result is the search's first point)."""
    return next((a for a, o in study.arms.items() if a not in study.searched() and o == study.arms[arm]), None)


def run_branch_point(study: BranchStudy, trainer, seed: int, step: int, root: Path, prov: dict, log=print) -> dict:
    """Every missing record of one branch point (the trainer is at ``step``); returns {"written", "wall_s"}."""
    from ercref.lm.config import make_config

    state = capture(trainer)
    todo = {}
    for k in study.ks:
        for arm in study.arms:
            st, rec = check_record(root, study.name, seed, step, k, arm, study.required_keys())
            if st == "finished" and rec["state_sha256"] != state.sha256:
                st, rec = "damaged", (f"{record_path(root, seed, step, k, arm)}: state_sha256 {rec['state_sha256'][:12]} "
                                      f"is not the recomputed branch state's {state.sha256[:12]}")
            if st == "damaged":
                moved = set_aside(root, record_path(root, seed, step, k, arm))
                log(f"[{study.name}] damaged record, set aside to {moved} and run again: {rec}")
            todo[k, arm] = rec if st == "finished" else None
    if all(v is not None for v in todo.values()):
        return {"written": 0, "wall_s": 0.0}
    t_point = time.perf_counter()
    point = BranchPoint.sample(trainer, state, study.heldout_prompts, study.heldout_samples, study.accuracy_prompts)
    written = 0
    for k in study.ks:
        done = {arm: rec for (kk, arm), rec in todo.items() if kk == k and rec is not None}
        for arm in _arm_order(study):
            if arm in done:
                continue
            t0, c0 = time.perf_counter(), time.process_time()
            overrides = study.arm_overrides(arm, k, seed)
            cfg = make_config(study.preset, overrides=overrides)
            extra = {"matched": {}, "tight_clip": {}}
            if arm in study.matched:
                fields, extra["matched"] = _matched(study, trainer, point, cfg, done, arm)
            elif arm in study.tight_clip:
                fields, extra["tight_clip"], eps = _tight(study, trainer, point, done, arm, k, seed)
                overrides = {**overrides, "loss.loss_kwargs.eps_low": eps, "loss.loss_kwargs.eps_high": eps}
            else:
                fields = point.measure(trainer, point.run(trainer, cfg, study.branch_lr))
            rec = {"study": study.name, "seed": seed, "branch_step": step, "K": k, "arm": arm, "overrides": overrides,
                   **fields, **extra, "state_sha256": state.sha256, **prov,
                   "wall_s": round(time.perf_counter() - t0, 3), "cpu_s": round(time.process_time() - c0, 3)}
            write_record(root, rec)
            done[arm] = rec
            written += 1
    restore(trainer, state)   # the trajectory goes on as if it had never branched
    return {"written": written, "wall_s": time.perf_counter() - t_point}


def _matched(study, trainer, point, cfg, done: dict, arm: str) -> tuple[dict, dict]:
    """The matched-step arm: lr with ||dtheta|| within matched_tol of the target arm's (bracket + secant)."""
    target = study.matched[arm]
    want = float(done[target]["update_norm"])
    twin = _twin(study, arm)
    first = (study.branch_lr, float(done[twin]["update_norm"])) if twin in done else None

    def f(lr):
        fields = point.measure(trainer, point.run(trainer, cfg, lr))
        return fields["update_norm"], fields

    if want <= 0:
        raise ValueError(f"matched step: the target arm {target!r} did not move the weights (update norm 0)")
    lr, tries, fields = bracket_secant(f, study.branch_lr, want, lambda v: abs(v / want - 1) <= study.matched_tol,
                                       study.max_tries, first)
    if fields is None:   # the twin's own update is within tolerance
        fields = {k: done[twin][k] for k in ("drift", "hist", "n_tokens", "heldout_acc_before", "heldout_acc_after",
                                             "heldout_judged", "update_norm", "clip", "lr") if k in done[twin]}
    ratio = fields["update_norm"] / want
    return fields, {"target_arm": target, "target_norm": want, "achieved_ratio": ratio, "lr": lr,
                    "tries": len(tries) - (first is not None), "within_tol": abs(ratio - 1) <= study.matched_tol}


def _tight(study, trainer, point, done: dict, arm: str, k: int, seed: int) -> tuple[dict, dict, float]:
    """The tight-clip arm: symmetric PPO eps whose clipped-token share equals the target arm's ERC share."""
    from ercref.lm.config import make_config

    target = study.tight_clip[arm]
    want = float(done[target]["clip"]["erc"])
    slack = max(study.tight_tol * want, 1.0 / max(1, int(done[target]["n_tokens"]["trained"])))
    eps_of = {}

    def f(x):   # x = ln(1 / eps): the clip share grows with it
        eps = math.exp(-x)
        cfg = make_config(study.preset, overrides=study.arm_overrides(
            arm, k, seed, {"loss.loss_kwargs.eps_low": eps, "loss.loss_kwargs.eps_high": eps}))
        fields = point.measure(trainer, point.run(trainer, cfg, study.branch_lr))
        eps_of[x] = eps
        return fields["clip"]["ppo"], fields

    x, tries, fields = bracket_secant(f, math.log(1 / 0.2), want, lambda v: abs(v - want) <= slack, study.max_tries,
                                      proportional=False, bounds=(-math.log(EPS_RANGE[1]), -math.log(EPS_RANGE[0])))
    got = fields["clip"]["ppo"]
    return fields, {"target_share": want, "achieved_share": got, "eps": eps_of[x], "tries": len(tries),
                    "within_tol": abs(got - want) <= slack}, eps_of[x]


# ----------------------------------------------------------------------------- the study loop
def _branch_times(root: Path) -> list[float]:
    """Wall seconds of every branch point of the cache whose records sum to one (sum of their wall_s)."""
    per: dict[tuple, float] = {}
    for p in Path(root).glob("traj*/step*/K*/*.json"):
        try:
            rec = json.loads(p.read_text())
            per[rec["seed"], rec["branch_step"]] = per.get((rec["seed"], rec["branch_step"]), 0.0) + float(rec["wall_s"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return list(per.values())


def _states(study: BranchStudy, root: Path, seed: int, step: int) -> list[str]:
    return [check_record(root, study.name, seed, step, k, a, study.required_keys())[0] for k in study.ks
            for a in study.arms]


def branch_points_todo(study: BranchStudy, root: Path, seeds, steps=None) -> list[tuple[int, int]]:
    """(step, seed) of every branch point of ``seeds`` (and ``steps``, default all the study's branch
    steps) that lacks a finished record, step-major. ValueError for a step the study does not branch at."""
    steps = list(study.branch_steps if steps is None else steps)
    bad = [t for t in steps if t not in study.branch_steps]
    if bad:
        raise ValueError(f"steps {bad} are not branch steps of {study.name} (its branch steps: {list(study.branch_steps)})")
    return [(step, seed) for step in study.branch_steps if step in steps for seed in seeds
            if any(x != "finished" for x in _states(study, root, seed, step))]


def run_branch_study(study: BranchStudy, results_dir=None, hours: float | None = None, seeds=None,
                     require_registered: bool = True, log=print, steps=None) -> dict:
    """Fill the study's cache (module docstring); ``seeds`` / ``steps``: only these trajectories / branch
    steps (a trajectory is still trained from its start). Returns {"written", "points", "not_started", "wall_s"}."""
    import torch

    from ercref.lm.config import make_config
    from ercref.lm.trainer import Trainer

    if hours is not None and not hours > 0:
        raise ValueError(f"hours must be > 0 (the time budget), got {hours}")
    seeds = list(study.seeds if seeds is None else seeds)
    root = study_dir(study.name, results_dir)
    todo = branch_points_todo(study, root, seeds, steps)    # checks ``steps`` before anything is written
    registered = registered_commit()
    if registered is None and require_registered:
        raise ValueError(f"the pre-registered hypotheses ({HYPOTHESES_FILE}) are not committed as they are: commit "
                         "them before a real run (the report prints that commit)")
    root.mkdir(parents=True, exist_ok=True)
    write_branch_study_json(study, root, registered)
    budget = hours * 3600.0 if hours is not None else float("inf")
    t0 = time.perf_counter()
    threads_before = torch.get_num_threads()
    written, points, not_started = 0, 0, []
    trainers: dict[int, tuple] = {}   # seed -> (Trainer, its temporary folder, provenance)
    try:
        for i, (step, seed) in enumerate(todo):   # step-major: every trajectory's first point first
            times = _branch_times(root)
            est = statistics.median(times) if times else study.est_branch_s
            if time.perf_counter() - t0 + est > budget:
                not_started = todo[i:]
                break
            if seed not in trainers:
                work = Path(tempfile.mkdtemp(prefix=f"ercref-{study.name}-"))
                trainer = Trainer(make_config(study.preset, overrides=study.trajectory_overrides(seed)), work / "run")
                trainer.start()
                trainers[seed] = (trainer, work, _provenance())
            trainer, _, prov = trainers[seed]
            while trainer.step < step:
                trainer.train_step()
            res = run_branch_point(study, trainer, seed, step, root, prov, log)
            written += res["written"]
            points += 1
            log(f"[{study.name}] seed {seed} step {step}: {res['written']} records in {res['wall_s']:.0f} s "
                f"({(time.perf_counter() - t0) / 60:.1f} min)")
    finally:
        for _, work, _ in trainers.values():
            shutil.rmtree(work, ignore_errors=True)
        torch.set_num_threads(threads_before)
    if not_started:
        log(f"[{study.name}] budget: {len(not_started)} branch point(s) not started; run the same command again")
    return {"written": written, "points": points, "not_started": not_started, "wall_s": time.perf_counter() - t0}


def status(study: BranchStudy, results_dir=None) -> dict:
    """{"finished", "damaged", "missing", "records", "spent_h", "left_h", "problems"} of the cache."""
    root = study_dir(study.name, results_dir)
    out = {"finished": 0, "damaged": 0, "missing": 0, "records": 0, "spent_s": 0.0, "problems": []}
    left_points = 0
    for seed in study.seeds:
        for step in study.branch_steps:
            complete = True
            for k in study.ks:
                for arm in study.arms:
                    st, rec = check_record(root, study.name, seed, step, k, arm, study.required_keys())
                    out[st] += 1
                    out["records"] += 1
                    if st == "finished":
                        out["spent_s"] += float(rec["wall_s"])
                    else:
                        complete = False
                        if st == "damaged":
                            out["problems"].append(rec)
            left_points += not complete
    times = _branch_times(root) if root.is_dir() else []
    est = statistics.median(times) if times else study.est_branch_s
    out["spent_h"] = out.pop("spent_s") / 3600
    out["left_h"] = left_points * est / 3600
    return out


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m ercref.study.branch", description=__doc__.split("\n")[0])
    ap.add_argument("study", help="one of tiny-branch, smollm2-branch")
    ap.add_argument("--hours", type=float, default=None, help="time budget: start a branch point only if it is "
                    "estimated to end within this many hours (default: no limit)")
    ap.add_argument("--seeds", type=int, nargs="+", default=None, help="only these trajectory seeds")
    ap.add_argument("--steps", type=int, nargs="+", default=None, help="only these branch steps (each trajectory is "
                    "still trained from its start to them)")
    ap.add_argument("--status", action="store_true", help="records finished / damaged / missing and run-hours")
    ap.add_argument("--results-dir", default=None, help="cache root (default data/results)")
    args = ap.parse_args(argv)
    try:
        study = get_branch_study(args.study)
        if args.status:
            s = status(study, args.results_dir)
            for p in s["problems"]:
                print(f"damaged (will be run again): {p}")
            print(f"{study.name}: {s['finished']} / {s['records']} records finished, {s['damaged']} damaged, "
                  f"{s['missing']} missing; run-hours spent {s['spent_h']:.2f}, left ~{s['left_h']:.2f}")
            return 0
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        res = run_branch_study(study, args.results_dir, args.hours, args.seeds, steps=args.steps)
    except ValueError as e:
        ap.error(str(e))
    print(f"[{study.name}] {res['written']} record(s) at {res['points']} branch point(s) in {res['wall_s'] / 60:.1f} "
          f"min; {len(res['not_started'])} branch point(s) not started (budget)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
