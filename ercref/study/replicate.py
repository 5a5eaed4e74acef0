"""Do a study's verdicts survive another machine? Rerun some of its runs elsewhere (another CPU type,
or another thread count: both change the floating-point sums, and a seeded run parts from its
original within a few steps) into a separate cache, then judge the study again with those runs in
place of the originals and compare verdict by verdict.

    python -m ercref.study.replicate tiny-controls --cells K16-lr0.001 \\
        --arms DAPO DAPO+ERC DAPO+random-mask --seeds 0 1 2 3 4 [--threads 2] [--hours 1]
    python -m ercref.study.replicate tiny-controls --report        # the comparison, markdown

The replica lives in its own cache (default data/replications/NAME: the study's definition, with
``train.threads`` overridden when --threads is given), written by the ordinary runner: resumable, one
atomic file per run, its own stored starting policies (a seed's warm-up is run once there and shared
by its arms, so the replica's pairs are pairs of one machine).

The comparison (``replication_table``): for every (cell, ERC arm, other arm) both of whose arms were
rerun, the study's verdict_table (its rules) on the original cache and on the original with the
reruns in place of the originals, for the seeds every rerun arm of that cell has (so no pair crosses
machines); the ERC arm's clip rate (a band, not a test) once per ERC arm. A verdict "replicates" when
its label is the same; the table also gives both intervals and the CPUs of both.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import pandas as pd

from ercref.paths import DATA_DIR

from . import doc_blocks, report
from . import verdict_rules as vr
from .cache import study_dir
from .runner import DEFAULT_WORKERS, run_study
from .studies import Study, get_study

REPLICATIONS_DIR = DATA_DIR / "replications"
COLUMNS = ["cell", "erc_arm", "other_arm", "measure", "seeds", "original", "original_interval", "replica",
           "replica_interval", "same"]


def replica_study(study: Study, threads: int | None = None) -> Study:
    """``study`` as the replica runs it: the same definition, ``train.threads`` = ``threads`` if given."""
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ValueError(f"threads must be an int >= 1 (torch intra-op threads of each rerun), got {threads!r}")
    return study if threads is None else dataclasses.replace(study, base={**study.base, "train.threads": threads})


def run_replication(name: str, into=None, cells=None, arms=None, seeds=None, threads: int | None = None,
                    hours: float | None = None, workers: int = DEFAULT_WORKERS, log=print) -> dict:
    """Rerun the selected runs of study ``name`` into the replica cache ``into`` (default
    REPLICATIONS_DIR); runner.run_study's result."""
    return run_study(replica_study(get_study(name), threads), Path(into or REPLICATIONS_DIR), cells, arms, seeds,
                     hours, workers, log)


def _interval(r) -> str:
    if r.status != vr.VERDICT:
        return ""
    return f"{r.mean:+.3g} [{r.low:+.3g}, {r.high:+.3g}]"


def replication_table(name: str, into=None, results_dir=None) -> pd.DataFrame:
    """COLUMNS, one row per verdict_table row of a (cell, ERC arm, other arm) whose two arms were both
    rerun (module doc); ``seeds``: the seeds every rerun arm of that cell has, whose runs replaced the
    originals. Empty when nothing comparable was rerun."""
    into = Path(into or REPLICATIONS_DIR)
    if not (study_dir(name, into) / "study.json").is_file():
        return pd.DataFrame(columns=COLUMNS)
    original = report.run_table(name, results_dir)
    rerun = report.run_table(name, into)
    if original.empty or rerun.empty:
        return pd.DataFrame(columns=COLUMNS)
    arms_rerun = {c: set(g["arm"]) for c, g in rerun.groupby("cell")}
    # a seed counts as rerun at a cell once every arm rerun there has it: pairs never cross machines
    seeds_rerun = {c: set.intersection(*(set(g.loc[g["arm"] == a, "seed"].astype(int)) for a in arms))
                   for c, arms in arms_rerun.items() for g in [rerun[rerun["cell"] == c]]}
    def rerun_here(c, a, s) -> bool:
        return a in arms_rerun.get(c, ()) and int(s) in seeds_rerun.get(c, ())

    merged = pd.concat([original[[not rerun_here(c, a, s) for c, a, s in zip(original["cell"], original["arm"],
                                                                              original["seed"])]],
                        rerun[[rerun_here(c, a, s) for c, a, s in zip(rerun["cell"], rerun["arm"], rerun["seed"])]]],
                       ignore_index=True)
    before = report.verdict_table(name, results_dir, original)
    after = report.verdict_table(name, results_dir, merged)
    after = {(a.cell, a.erc_arm, a.other_arm, a.measure): a for a in after.itertuples()}
    rows, clip_done = [], set()
    for b in before.itertuples():
        a = after.get((b.cell, b.erc_arm, b.other_arm, b.measure))
        arms = arms_rerun.get(b.cell, set())
        seeds = seeds_rerun.get(b.cell, set())
        if a is None or not seeds or b.erc_arm not in arms:
            continue
        if b.measure == report.CLIP:       # the ERC arm's own clip rate (its reruns suffice), shown once
            if (b.cell, b.erc_arm) in clip_done:
                continue
            clip_done.add((b.cell, b.erc_arm))
        elif b.other_arm not in arms:
            continue
        rows.append({"cell": b.cell, "erc_arm": b.erc_arm, "other_arm": b.other_arm, "measure": b.measure,
                     "seeds": sorted(seeds), "original": b.verdict, "original_interval": _interval(b),
                     "replica": a.verdict, "replica_interval": _interval(a), "same": b.verdict == a.verdict})
    out = pd.DataFrame(rows, columns=COLUMNS)
    out.attrs["cpus"] = (sorted(set(original["cpu"].dropna())), sorted(set(rerun["cpu"].dropna())))
    out.attrs["threads"] = (sorted({int(t) for t in original["threads"].dropna()}),
                            sorted({int(t) for t in rerun["threads"].dropna()}))
    return out


def replication_report(name: str, into=None, results_dir=None) -> str:
    """Markdown: what was rerun where, how many verdicts are the same, and the table."""
    t = replication_table(name, into, results_dir)
    if t.empty:
        return (f"No replication of `{name}` yet (run `python -m ercref.study.replicate {name} --cells ... --arms ... "
                "--seeds ...`).\n")
    (cpus_o, cpus_r), (thr_o, thr_r) = t.attrs["cpus"], t.attrs["threads"]
    counted = t[t["original"].isin(vr.VERDICT_LABELS) & t["replica"].isin(vr.VERDICT_LABELS)
                & (t["measure"] != report.CLIP)]
    lines = [f"Replication of `{name}`: {len(t)} comparisons whose arms were both rerun (seeds "
             f"{sorted({s for x in t['seeds'] for s in x})}) on {', '.join(cpus_r) or 'an unrecorded CPU'}, "
             f"torch threads {thr_r} (the original runs: {', '.join(cpus_o) or 'unrecorded'}, threads {thr_o}); the "
             "verdicts recomputed with the reruns in "
             f"place of the originals. **{int(t['same'].sum())} of {len(t)} verdicts the same** "
             f"({int(counted['same'].sum())} of {len(counted)} among the tests: verdicts on a direction in both).", "",
             "| cell | ERC arm vs other | measure | original | replica | same |", "|---|---|---|---|---|---|"]
    for r in t.itertuples():
        o = f"{r.original_interval} {r.original}".strip()
        n = f"{r.replica_interval} {r.replica}".strip()
        lines.append(f"| {r.cell} | {r.erc_arm} vs {r.other_arm} | {r.measure} | {o} | {n} | "
                     f"{'yes' if r.same else '**no**'} |")
    return "\n".join(lines) + "\n"


REPLICATION_BLOCK = doc_blocks.pattern("replication-report")


def refresh_replication_blocks(path, into=None, results_dir=None) -> list[str]:
    """Replace every ``<!-- replication-report: NAME -->`` ... ``<!-- /replication-report -->`` block of
    the markdown file ``path`` (docs/results.md) with replication_report(NAME). Returns the names."""
    return doc_blocks.refresh(path, REPLICATION_BLOCK, lambda name: replication_report(name, into, results_dir))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m ercref.study.replicate", description=__doc__.split("\n\n")[0])
    ap.add_argument("study", help="the study to replicate (ercref.study.studies)")
    ap.add_argument("--into", default=str(REPLICATIONS_DIR), help="the replica caches' root")
    ap.add_argument("--cells", nargs="+", help="only these cells")
    ap.add_argument("--arms", nargs="+", help="only these arms (rerun every arm of a comparison, same seeds)")
    ap.add_argument("--seeds", nargs="+", type=int, help="only these seeds")
    ap.add_argument("--threads", type=int, default=None, help="torch threads per rerun (default: the study's)")
    ap.add_argument("--hours", type=float, default=None, help="time budget (runner.run_study)")
    ap.add_argument("--workers", type=int, default=1, help="reruns at a time")
    ap.add_argument("--report", action="store_true", help="print the comparison instead of running")
    args = ap.parse_args(argv)
    if args.report:
        sys.stdout.write(replication_report(args.study, args.into))
        return 0
    res = run_replication(args.study, args.into, args.cells, args.arms, args.seeds, args.threads, args.hours,
                          args.workers)
    return 1 if res["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
