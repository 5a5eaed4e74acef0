"""Did a study's policies learn the task, or learn to please the judge? Re-judge the evaluation
samples its runs logged with another judge.

Every evaluation logs one response in full (``eval/sample``: the first sample of the first evaluation
prompt). The audit regenerates that prompt's answer from the run's saved config (ercref.lm.data.load_task)
and judges each logged sample after the first evaluation (step > 0: what RL produced) with the study's own
judge and with the number judge (ercref.lm.rewards), which reads the response's final number:

    credited    the study's judge calls the sample right
    confirmed   ... and so does the number judge
    restated    credited, but its final number is not the answer: on a computation question ("What is
                48+64?") math-verify finds the restated expression "48+64 is ..." equal to the answer

One prompt per evaluation is a small sample (the same problem in every run of a study), so the counts
say whether the exploit is there, not how often it paid.

    python -m ercref.study.judge_audit smollm2-pilot2 [smollm2-learns ...]
"""
from __future__ import annotations

import logging

import pandas as pd

from . import doc_blocks
from .cache import finished_runs, study_dir

AUDIT_BLOCK = doc_blocks.pattern("judge-audit")
COLUMNS = ["cell", "arm", "seed", "step", "answer", "sample", "credited", "confirmed"]


def _study_judge(name: str):
    from ercref.lm.rewards import choice_judge, exact_judge, math_verify_judge, number_judge

    return {"math": math_verify_judge, "number": number_judge, "exact": exact_judge, "choice": choice_judge}[name]


def audit_samples(name: str, results_dir=None) -> pd.DataFrame:
    """COLUMNS, one row per logged evaluation sample after step 0 of every cached run of study ``name``
    (module doc). ValueError when the study has no cache."""
    from ercref.lm.config import config_from_dict
    from ercref.lm.data import load_task
    from ercref.lm.rewards import number_judge, numeral_value

    root = study_dir(name, results_dir)
    if not (root / "study.json").is_file():
        raise ValueError(f"study {name!r} has no cache at {root} (no study.json): run it first")
    for lib in ("math_verify", "latex2sympy2_extended"):
        logging.getLogger(lib).setLevel(logging.CRITICAL)
    runs, _ = finished_runs(root, tokens=False)
    rows, answers = [], {}
    for r in sorted(runs, key=lambda r: (r.cell, r.arm, r.seed)):
        cfg = config_from_dict(r.meta["config"])
        key = repr(cfg.data)
        if key not in answers:
            answers[key] = load_task(cfg.data)[1][0]["answer"]
        answer, judge = answers[key], _study_judge(cfg.reward.judge)
        if numeral_value(answer) is None:
            raise ValueError(f"study {name!r}: its answers are not numbers ({answer!r}), so the number judge "
                             "cannot audit it")
        for row in r.rows:
            if row.get("kind") == "eval" and row.get("step", 0) > 0 and isinstance(row.get("eval/sample"), str):
                s = row["eval/sample"]
                rows.append({"cell": r.cell, "arm": r.arm, "seed": r.seed, "step": row["step"], "answer": answer,
                             "sample": s, "credited": bool(judge(s, answer)), "confirmed": bool(number_judge(s, answer))})
    return pd.DataFrame(rows, columns=COLUMNS)


def audit_report(name: str, results_dir=None) -> str:
    """Markdown: the counts of ``audit_samples`` and one restated sample (the block ``<!-- judge-audit:
    NAME -->`` of docs/results.md)."""
    df = audit_samples(name, results_dir)
    credited = df[df["credited"]]
    restated = credited[~credited["confirmed"]]
    line = (f"`{name}`: {len(df)} logged evaluation samples after step 0 ({df[['cell', 'arm', 'seed']].drop_duplicates().shape[0]} "
            f"runs, one prompt, answer {df['answer'].iloc[0] if len(df) else '-'}); the study's judge credits "
            f"{len(credited)}, the number judge confirms {len(credited) - len(restated)}, **{len(restated)} restate the "
            "question** instead of answering it")
    if len(restated):
        ex = restated.iloc[-1]
        line += f" (e.g. {ex['arm']} seed {ex['seed']} at step {ex['step']}: \"{ex['sample'].strip()}\")"
    return line + ".\n"


def refresh_audit_blocks(path, results_dir=None) -> list[str]:
    """Replace every ``<!-- judge-audit: NAME -->`` ... ``<!-- /judge-audit -->`` block of the markdown
    file ``path`` with audit_report(NAME). Returns the names."""
    return doc_blocks.refresh(path, AUDIT_BLOCK, lambda name: audit_report(name, results_dir))


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m ercref.study.judge_audit", description=__doc__.split("\n")[0])
    ap.add_argument("studies", nargs="+", help="studies whose cached evaluation samples to re-judge")
    ap.add_argument("--results-dir", default=None, help="cache root (default data/results)")
    args = ap.parse_args(argv)
    try:
        for name in args.studies:
            print(audit_report(name, args.results_dir), end="")
    except ValueError as e:
        ap.error(str(e))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
