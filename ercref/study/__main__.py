"""``python -m ercref.study <study> [--hours H] [--workers N] [--status] [--report] ...``: run a named
study into its cache (runner.py), show what the cache holds (--status) or its verdict report (report.py);
``python -m ercref.study --write-results``: regenerate the results page and the README's summary (results_page.py)."""
from __future__ import annotations

import argparse

import pandas as pd

from . import runner
from .cache import RESULTS_DIR, add_integrity, study_dir
from .report import study_report
from .studies import STUDIES


def main(argv: list[str] | None = None, studies: dict | None = None) -> int:
    studies = STUDIES if studies is None else studies
    ap = argparse.ArgumentParser(prog="python -m ercref.study", description=runner.__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("study", nargs="?", help=f"the study to run: one of {sorted(studies)}")
    ap.add_argument("--hours", type=float, default=None,
                    help="time budget: start a run only if it is estimated to end within this many hours "
                         "(estimate: median wall time of cached runs); default: no limit")
    ap.add_argument("--workers", type=int, default=runner.DEFAULT_WORKERS,
                    help=f"runs at a time, each a process with one torch thread (default {runner.DEFAULT_WORKERS}: "
                         "on a small machine, runs side by side with one thread each finish sooner than one run "
                         "at a time with every thread)")
    ap.add_argument("--cells", nargs="+", default=None, help="only these cells (default: the study's default cells)")
    ap.add_argument("--arms", nargs="+", default=None, help="only these arms (default: every arm of each cell)")
    ap.add_argument("--seeds", type=int, nargs="+", default=None, help="only these seeds (default: the study's)")
    ap.add_argument("--results-dir", default=None, help=f"cache root (default {RESULTS_DIR})")
    ap.add_argument("--list", action="store_true", help="list the studies, or with a study its cells, arms and runs")
    ap.add_argument("--status", action="store_true",
                    help="show cached / damaged / left runs and run-hours (sum of wall times) per cell and arm")
    ap.add_argument("--report", action="store_true",
                    help="print the markdown report of the cache: paired verdicts per cell and arm pair, provenance "
                         "(what docs/results.md pastes; ercref.study.report)")
    ap.add_argument("--write-results", action="store_true",
                    help="regenerate docs/results.md's study reports, the README's results summary and its figure "
                         "from the caches (ercref.study.results_page; also `make study-report`)")
    ap.add_argument("--add-integrity", action="store_true",
                    help="give the study's runs written without integrity data (older caches) their sha256 "
                         "hashes, after each reads in full; damaged runs are listed, not hashed "
                         "(ercref.study.cache.add_integrity)")
    args = ap.parse_args(argv)
    if args.write_results:
        from .results_page import refresh_results

        print("refreshed: " + ", ".join(refresh_results(results_dir=args.results_dir)))
        return 0
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
        if args.add_integrity:
            done, problems = add_integrity(study_dir(study.name, args.results_dir))
            for p in problems:
                print(f"damaged (not hashed; rerun it): {p}")
            print(f"[{study.name}] integrity data added to {len(done)} run(s)")
            return 1 if problems else 0
        if args.status:
            df = runner.status(study, args.results_dir, args.cells, args.arms, args.seeds)
            with pd.option_context("display.max_rows", None, "display.width", 160):
                print(df.to_string(index=False, float_format=lambda x: f"{x:.2f}"))
            for p in df.attrs["problems"]:
                print(f"damaged (will be rerun): {p}")
            print(f"cached {int(df['cached'].sum())} / {int(df['runs'].sum())} runs, {int(df['damaged'].sum())} "
                  f"damaged; run-hours spent {df['spent_cpu_h'].sum():.2f}, left ~{df['left_cpu_h'].sum():.2f}")
            return 0
        res = runner.run_study(study, args.results_dir, args.cells, args.arms, args.seeds, args.hours, args.workers)
    except ValueError as e:
        ap.error(str(e))
    print(f"[{study.name}] {len(res['done'])} run(s) done in {res['wall_s'] / 60:.1f} min; "
          f"{res['skipped_cached']} were cached; {len(res['not_started'])} not started (budget); "
          f"{len(res['waiting'])} waiting; {len(res['failed'])} failed")
    return 1 if res["failed"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
