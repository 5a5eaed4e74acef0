"""The pre-registered primary hypotheses of a learning study (runs trained from start to end, one per
cell, arm and seed) and their verdicts, Holm-corrected. Everything else a study report shows is
exploratory.

A confirmatory study names its hypotheses file (``Study.preregistration``: a JSON file under
data/preregistration/, committed before the first run):

    {"study_kind": "learning", "applies_to": ["NAME"], "holm": true, "analysis": "...", "power": "...",
     "hypotheses": [{"id": "H1", "cell": "K8-lr0.0003", "arm": "DAPO+ERC", "baseline": "DAPO",
                     "measure": "final_accuracy", "direction": "higher", "text": "..."}, ...]}

The runner copies it into study.json with ``registered_commit`` (preregistration.registered_commit)
and refuses a real run while the file is not committed as it is. Measures, one value per run:

    final_accuracy      the last held-out evaluation (eval/avg@k)
    drop                the run's own peak held-out accuracy minus its final one (>= 0)
    steps_to_collapse   stability.collapse_step; a run that never collapses scores steps + 1

The test of hypothesis h on its cell: the seeds both arms ran from the same starting policy
(pairing.paired_seeds: equal start_policy sha256; a run without one pairs by seed and the table says
"unverified"), the paired differences d_s = arm_s - baseline_s, judged by verdict_rules.judge (K = 1:
not a test; fewer than 5 pairs: too few seeds; an accuracy measure only where the baseline learned,
verdict_rules.learning_gain >= 0.10). For the hypotheses that are tests,

    p_h     = two-sided one-sample t test of mean(d) = 0 (branch_stats.t_pvalue)
    p_holm  = Holm's step-down adjustment over those tests (branch_stats.holm), when "holm" is true
    verdict = verdict_rules.holm_label(p_holm, mean(d), direction)

and the printed interval is the unadjusted 95 % Student-t interval of mean(d).
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from ercref.paths import DATA_DIR

from . import verdict_rules as vr
from .branch_stats import holm, t_pvalue
from .pairing import paired_seeds
from .preregistration import checked_hypotheses

PREREGISTRATION_DIR = DATA_DIR / "preregistration"
MEASURES = ("final_accuracy", "drop", "steps_to_collapse")
ACCURACY_MEASURES = ("final_accuracy", "drop")
HYPOTHESIS_KEYS = ("id", "cell", "arm", "baseline", "measure", "direction", "text")
RUN_COLUMNS = ["cell", "arm", "seed", "max_staleness", "eval_curve", "final_accuracy", "steps_to_collapse",
               "start_policy"]   # what it reads of report.run_table
COLUMNS = ["id", "text", "cell", "arm", "baseline", "measure", "direction", "n", "pairing", "arm_mean",
           "baseline_mean", "mean", "low", "high", "mde", "p", "p_holm", "verdict", "status"]


def load_preregistration(path: str | Path) -> dict:
    """The hypotheses file of a learning study, checked (``check_hypotheses``); a relative path is
    looked up in PREREGISTRATION_DIR. ValueError naming the file and the field."""
    path = Path(path)
    path = path if path.is_absolute() else PREREGISTRATION_DIR / path
    try:
        d = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: cannot read the pre-registered hypotheses ({type(e).__name__}: {e})") from None
    if not isinstance(d, dict) or d.get("study_kind") != "learning":
        raise ValueError(f"{path}: must be a JSON object with study_kind 'learning'")
    check_hypotheses(d, str(path))
    return d


def check_hypotheses(definition: dict, where: str = "study.json") -> list[dict]:
    """The hypotheses of ``definition`` with direction as -1 / +1 (preregistration.checked_hypotheses):
    at least one, each with HYPOTHESIS_KEYS and a measure of MEASURES. ValueError naming ``where``, the
    hypothesis and the field."""
    def check(h: dict, tag: str) -> None:
        if h["measure"] not in MEASURES:
            raise ValueError(f"{tag}.measure is {h['measure']!r}; valid: {list(MEASURES)}")

    return checked_hypotheses(definition, HYPOTHESIS_KEYS, where, check, required=True)


def measure_column(runs: pd.DataFrame, measure: str) -> pd.Series:
    """One value per run of report.run_table's ``runs`` (module doc), in its row order."""
    if measure == "drop":
        return runs["eval_curve"].map(lambda c: float(max(c) - c[-1]) if len(c) else math.nan)
    if measure in ("final_accuracy", "steps_to_collapse"):
        return runs[measure].astype(float)
    raise ValueError(f"measure must be one of {list(MEASURES)}, got {measure!r}")


def _arm_runs(runs: pd.DataFrame, cell: str, arm: str, measure: str) -> tuple[dict, dict]:
    g = runs[(runs["cell"] == cell) & (runs["arm"] == arm)]
    values = dict(zip(g["seed"].astype(int), measure_column(g, measure)))
    metas = {int(s): {"start_policy": sp} for s, sp in zip(g["seed"], g.get("start_policy", [None] * len(g)))}
    return {s: v for s, v in values.items() if math.isfinite(v)}, metas


def primary_table(runs: pd.DataFrame, definition: dict, gains: dict) -> pd.DataFrame:
    """One row per pre-registered hypothesis of ``definition`` (module doc): COLUMNS. ``runs``:
    report.run_table of the study; ``gains``: report.learning_gains of it."""
    if runs.empty:
        runs = pd.DataFrame(columns=RUN_COLUMNS)
    rows, tested = [], []
    for h in check_hypotheses(definition):
        a, metas_a = _arm_runs(runs, h["cell"], h["arm"], h["measure"])
        b, metas_b = _arm_runs(runs, h["cell"], h["baseline"], h["measure"])
        pairing = paired_seeds({s: metas_a[s] for s in a}, {s: metas_b[s] for s in b})
        seeds = pairing.seeds
        sub = runs[(runs["cell"] == h["cell"]) & runs["arm"].isin([h["arm"], h["baseline"]])]
        acts = vr.erc_can_act(int(sub["max_staleness"].max())) if len(sub) else True
        accuracy = h["measure"] in ACCURACY_MEASURES
        j = vr.judge({s: a[s] for s in seeds}, {s: b[s] for s in seeds}, h["direction"],
                     name=f"{h['measure']} at {h['cell']}: {h['arm']} - {h['baseline']}", erc_can_act=acts,
                     accuracy=accuracy, learning_gain=gains.get((h["cell"], h["baseline"]), -math.inf) if accuracy
                     else None, reference=h["baseline"], primary=True)
        diffs = [a[s] - b[s] for s in seeds]
        v = j.verdict
        rows.append({"id": h["id"], "text": h["text"], "cell": h["cell"], "arm": h["arm"], "baseline": h["baseline"],
                     "measure": h["measure"], "direction": h["direction"], "n": len(seeds), "pairing": pairing.label,
                     "arm_mean": float(np.mean([a[s] for s in seeds])) if seeds else math.nan,
                     "baseline_mean": float(np.mean([b[s] for s in seeds])) if seeds else math.nan,
                     "mean": v.mean if v else math.nan, "low": v.low if v else math.nan,
                     "high": v.high if v else math.nan, "mde": v.mde if v else math.nan,
                     "p": t_pvalue(diffs) if j.counted else math.nan, "p_holm": math.nan, "verdict": j.label,
                     "status": j.status})
        tested.append(j.counted)
    out = pd.DataFrame(rows, columns=COLUMNS)
    mask = pd.Series(tested, index=out.index, dtype=bool)
    out.loc[mask, "p_holm"] = (holm(out.loc[mask, "p"].tolist()) if definition.get("holm", False)
                               else out.loc[mask, "p"])
    out.loc[mask, "verdict"] = [vr.holm_label(r.p_holm, r.mean, r.direction) for r in out[mask].itertuples()]
    return out


def primary_lines(pt: pd.DataFrame, definition: dict, registration: str) -> list[str]:
    """Markdown: the primaries' heading sentence (the correction, the count of tests and how many would
    exclude 0 by chance) and one table row per hypothesis."""
    tested = pt[pt["p"].notna()]
    holm_on = bool(definition.get("holm", False))
    counts = ", ".join(f"{int((tested['verdict'] == lab).sum())} {lab}" for lab in vr.VERDICT_LABELS)
    lines = ["", f"**Primary hypotheses** ({len(pt)}, pre-registered; {registration}; "
             + (f"Holm-corrected over the {len(tested)} that are tests: a verdict needs the Holm-adjusted p < "
                f"{vr.ALPHA:g} on the predicted side" if holm_on else f"not corrected: a verdict needs p < {vr.ALPHA:g}")
             + "). Paired by seed (same starting policy), arm - baseline, 95 % Student-t interval over seeds "
             f"(unadjusted). Of {len(tested)} tests: {counts}; if no arm differed, about "
             f"{vr.expected_by_chance(len(tested)):.2g} would exclude 0 by chance alone without the correction.",
             "", "| | hypothesis | cell | arm - baseline | seeds | baseline mean | difference [95 % t] | p / Holm p "
             "| verdict |", "|---|---|---|---|---|---|---|---|---|"]
    for r in pt.itertuples():
        diff = f"{r.mean:+.3g} [{r.low:+.3g}, {r.high:+.3g}]" if math.isfinite(r.mean) else ""
        p = f"{r.p:.2g} / {r.p_holm:.2g}" if math.isfinite(r.p) else ""
        base = f"{r.baseline_mean:.3g}" if math.isfinite(r.baseline_mean) else ""
        text = str(r.text).replace("|", "\\|")
        lines.append(f"| **{r.id}** | {text} | {r.cell} | {r.arm} - {r.baseline} | {r.n} ({r.pairing}) | {base} "
                     f"| {diff} | {p} | **{r.verdict}** |")
    return lines
