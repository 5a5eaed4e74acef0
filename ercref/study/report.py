"""What a study's cache shows, as a table of paired verdicts: markdown for the README's "What we
found", a DataFrame for notebooks. Every number is read from the cache; the statistics are
ercref.study.claims' (intervals, MDE, symmetric verdicts) and the measures ercref.study.stability's.

    python -m ercref.study tiny-stability-map --report [--results-dir D]     # prints study_report(...)

Pairs (arm_pairs): an arm "X+ERC" (or "X+ERC-b<beta>", the beta ablation) against "X" when the
study has that arm; every other arm that is no such X (a control or baseline) against "DAPO+ERC".
The difference is always ERC arm - other arm, per seed, on the seeds both arms hold at that cell.

Measures (one number per run, MEASURES; direction = what the paper predicts for ERC - other):
    entropy volatility     -1  stability.entropy_volatility: std of the step-to-step change of the
                               rollout entropy (claims.ENTROPY_KEY)
    grad-norm spikes       -1  stability.grad_norm_spikes (k = 3 x the running median)
    steps to collapse      +1  stability.collapse_step, with a run that never collapses scored
                               steps + 1 (censored at the run's end: two seeds that never collapse
                               differ by 0, so a cell where no run collapses is inconclusive with MDE 0,
                               marked "no run collapsed"); chosen over a collapsed-by-the-end
                               indicator because it also sees ERC delaying a collapse both arms reach
    final accuracy         +1  stability.final_accuracy (the last held-out eval/avg@k)
and the ERC arm's clip fraction (mean erc/clip_frac over all its minibatches, k = 0 included, as
claim 1a of claims.claims_table), tested with claims.band_verdict against claims.CLIP_RATE_BAND.

A verdict needs MIN_SEEDS paired seeds; a (cell, pair) with fewer is listed as "n=... seeds: no verdict".

Token captures (a study with capture_steps, e.g. tiny-token-captures): the paper's claim 2 per cell and
ERC arm, token_claim_table: the share of ERC-clipped tokens whose old entropy is below the median of
all captured tokens of that seed (claims.low_entropy_shares), tested against 0.5 with
claims.direction_verdict (paper: above), with the median old entropy of clipped and kept tokens.
"""
from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pandas as pd

from ercref.paths import REPO_ROOT

from . import claims, stability
from .cache import finished_runs, load_tokens, read_study_json, study_dir, wall_seconds
from .plots import MIN_BAND_SEEDS
from .token_view import token_table

MIN_SEEDS = MIN_BAND_SEEDS           # paired seeds a verdict needs (the same as plots' bands)
REFERENCE_ERC_ARM = "DAPO+ERC"       # what the controls and baselines are compared with
ERC_ARM = re.compile(r"^(?P<base>.+)\+ERC(-b[0-9.e+-]+)?$")
# (column of run_table, the paper's direction for ERC - other, header with the paper's prediction)
MEASURES = (("entropy_volatility", -1, "entropy volatility (paper: ERC lower)"),
            ("grad_spikes", -1, "grad-norm spikes (paper: ERC fewer)"),
            ("steps_to_collapse", +1, "steps to collapse, never = steps + 1 (paper: ERC later)"),
            ("final_accuracy", +1, "final held-out accuracy (paper: ERC higher)"))
CLIP = "erc_clip_frac"


def arm_pairs(arms) -> list[tuple[str, str]]:
    """[(ERC arm, other arm)] of a study's arms (module doc), ERC-vs-its-loss pairs first."""
    arms = list(arms)
    pairs = [(a, ERC_ARM.match(a)["base"]) for a in arms if ERC_ARM.match(a) and ERC_ARM.match(a)["base"] in arms]
    bases = {b for _, b in pairs}
    if REFERENCE_ERC_ARM in arms:
        pairs += [(REFERENCE_ERC_ARM, a) for a in arms if not ERC_ARM.match(a) and a not in bases]
    return pairs


def _definition(name: str, root: Path) -> dict:
    """The cached study.json, else the definition in studies.STUDIES (an empty cache)."""
    if (root / "study.json").is_file():
        return read_study_json(root / "study.json")
    from .studies import get_study

    return get_study(name).to_dict()


def run_table(name: str, results_dir=None) -> pd.DataFrame:
    """One row per finished run in the cache of study ``name`` whose files check out
    (cache.finished_runs): cell, arm, seed, its provenance (wall_s, git_commit, cpu, finished) and
    stability.run_summary of its log, plus steps_to_collapse (collapse_step, never -> steps + 1) and
    erc_clip_frac (NaN without ERC). ``.attrs["problems"]``: the damaged runs and stray files left out."""
    root = study_dir(name, results_dir)
    runs, problems = finished_runs(root, tokens=False)
    rows = []
    for run in runs:
        try:
            summary = stability.run_summary(run.rows)
        except ValueError as e:
            log = root / "runs" / run.cell / run.arm / f"seed{run.seed}.jsonl.gz"
            raise ValueError(f"{log}: {e} (move the run's files away to rerun it)") from e
        meta = run.meta
        clip = [r["erc/clip_frac"] for r in run.rows if r.get("kind") == "minibatch" and "erc/clip_frac" in r]
        collapse = summary["collapse_step"]
        rows.append({"cell": run.cell, "arm": run.arm, "seed": run.seed, "wall_s": wall_seconds(meta),
                     "git_commit": meta.get("git_commit"), "cpu": (meta.get("machine") or {}).get("cpu"),
                     "finished": meta.get("finished"), **summary,
                     "steps_to_collapse": summary["steps"] + 1 if collapse is None else collapse,
                     CLIP: float(np.mean(clip)) if clip else math.nan})
    df = pd.DataFrame(rows)
    df.attrs["problems"] = problems
    return df


def _per_seed(runs: pd.DataFrame, cell: str, arm: str, col: str) -> dict[int, float]:
    g = runs[(runs["cell"] == cell) & (runs["arm"] == arm)].dropna(subset=[col])
    return {int(s): float(v) for s, v in zip(g["seed"], g[col])}


def verdict_table(name: str, results_dir=None, runs: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per (cell, ERC arm, other arm, measure) with a cached run of both arms: n paired seeds,
    the arms' means, the tested quantity's mean / low / high (paired difference; the ERC arm's clip
    rate for measure "erc_clip_frac"), the paper's direction (0: a band), verdict (None below
    MIN_SEEDS seeds), mde and detail (str of the claims.Verdict)."""
    root = study_dir(name, results_dir)
    d = _definition(name, root)
    runs = run_table(name, results_dir) if runs is None else runs
    cols = ["cell", "erc_arm", "other_arm", "measure", "direction", "n", "erc_mean", "other_mean", "mean", "low",
            "high", "verdict", "mde", "detail"]
    if runs.empty:
        return pd.DataFrame(columns=cols)
    cells = list(d["cells"]) + sorted(set(runs["cell"]) - set(d["cells"]))
    out = []
    for cell in cells:
        arms = list((d.get("cell_arms") or {}).get(cell, d["arms"]))
        arms += sorted(set(runs.loc[runs["cell"] == cell, "arm"]) - set(arms))
        for erc, other in arm_pairs(arms):
            both = set(_per_seed(runs, cell, erc, "seed")) & set(_per_seed(runs, cell, other, "seed"))
            for col, direction, _ in (*MEASURES, (CLIP, 0, "")):
                a = {s: x for s, x in _per_seed(runs, cell, erc, col).items() if s in both}
                b = {s: x for s, x in _per_seed(runs, cell, other, col).items() if s in a}
                seeds = sorted(a) if col == CLIP else sorted(b)      # the clip rate is the ERC arm's alone
                if not seeds:
                    continue
                a = {s: a[s] for s in seeds}
                v = None
                if len(seeds) >= MIN_SEEDS:
                    v = (claims.band_verdict(a, claims.CLIP_RATE_BAND, f"{erc} clip rate") if col == CLIP else
                         claims.paired_verdict(a, b, direction, f"{col}: {erc} - {other}"))
                out.append({"cell": cell, "erc_arm": erc, "other_arm": other, "measure": col, "direction": direction,
                            "n": len(seeds), "erc_mean": float(np.mean(list(a.values()))),
                            "other_mean": float(np.mean(list(b.values()))) if b and col != CLIP else math.nan,
                            "mean": v.mean if v else math.nan, "low": v.low if v else math.nan,
                            "high": v.high if v else math.nan, "verdict": v.label if v else None,
                            "mde": v.mde if v else math.nan, "detail": str(v) if v else None})
    return pd.DataFrame(out, columns=cols)


def token_claim_table(name: str, results_dir=None) -> pd.DataFrame:
    """Claim 2 from a study's token captures (module doc): one row per (cell, arm) whose captures
    hold ERC-applied tokens, with n seeds, the low-entropy share's mean / low / high, verdict (None
    below MIN_SEEDS seeds), detail, and the mean over seeds of the median old entropy of clipped and
    of kept tokens. Empty when the cache holds no captures."""
    cols = ["cell", "arm", "n", "tokens", "mean", "low", "high", "verdict", "detail", "median_H_clipped", "median_H_kept"]
    tokens = load_tokens(name, results_dir)
    if tokens is None:
        return pd.DataFrame(columns=cols)
    out = []
    for (cell, arm), g in tokens.groupby(["cell", "arm"], sort=True):
        tk = token_table(g)
        tk = tk[tk["erc_applied"]]
        if tk.empty:
            continue
        shares = claims.low_entropy_shares(tk, arm)
        v = claims.direction_verdict(shares, +1, 0.5, "low-entropy share") if len(shares) >= MIN_SEEDS else None
        med = {k: float(np.mean(list(claims.per_seed(tk[tk["clipped"] == c], arm,
                                                     lambda x: x["old_entropy"].median()).values())))
               for k, c in (("median_H_clipped", True), ("median_H_kept", False))}
        out.append({"cell": cell, "arm": arm, "n": len(shares), "tokens": len(tk),
                    "mean": float(np.mean(list(shares.values()))) if shares else math.nan,
                    "low": v.low if v else math.nan, "high": v.high if v else math.nan,
                    "verdict": v.label if v else None, "detail": str(v) if v else None, **med})
    return pd.DataFrame(out, columns=cols)


def _token_claim_lines(name: str, results_dir) -> list[str]:
    tt = token_claim_table(name, results_dir)
    if tt.empty:
        return []
    lines = ["", "Claim 2, the tokens ERC clips are mostly low-entropy: per seed, the share of ERC-clipped tokens whose "
             "old entropy is below that seed's median over all captured tokens (chance 50 %; the paper predicts "
             "above), 95 % t interval over seeds (`ercref.study.claims.low_entropy_shares`, `direction_verdict`).",
             "", "| cell | arm | seeds | captured tokens | low-entropy share of clipped tokens | median old entropy, "
             "clipped / kept (nats) |", "|---|---|---|---|---|---|"]
    for r in tt.itertuples():
        share = (f"{r.mean:.1%} [{r.low:.1%}, {r.high:.1%}] {r.verdict}" if r.verdict else
                 f"{r.mean:.1%} (n={r.n} seeds: no verdict)")
        lines.append(f"| {r.cell} | {r.arm} | {r.n} | {r.tokens} | {share} | "
                     f"{r.median_H_clipped:.3g} / {r.median_H_kept:.3g} |")
    return lines


def _g(x: float) -> str:
    return f"{x:+.3g}" if math.isfinite(x) else ("+inf" if x > 0 else "-inf")


def _cell_text(r, runs: pd.DataFrame) -> str:
    if r.verdict is None:
        return f"n={r.n} seeds: no verdict"
    if r.measure == CLIP:
        return f"{r.mean:.1%} [{r.low:.1%}, {r.high:.1%}] {r.verdict}" + (" (clipped no token)" if r.erc_mean == 0 else "")
    s = f"{_g(r.mean)} [{_g(r.low)}, {_g(r.high)}] {r.verdict}"
    if r.verdict == claims.INCONCLUSIVE:
        s += f", MDE {r.mde:.2g}"
    if r.measure == "steps_to_collapse":
        sub = runs[(runs["cell"] == r.cell) & runs["arm"].isin([r.erc_arm, r.other_arm])]
        if sub["collapse_step"].isna().all():
            s += " (no run collapsed)"
    return s


def _provenance(name: str, runs: pd.DataFrame, d: dict, results_dir) -> str:
    where = f"data/results/{name}" if results_dir is None else str(Path(results_dir) / name)
    n_def = sum(len((d.get("cell_arms") or {}).get(c, d["arms"])) for c in (d.get("default_cells") or d["cells"]))
    head = (f"Study `{name}` (cache `{where}`): {len(runs)} runs cached "
            f"(the default selection is {n_def * len(d['seeds'])} runs)")
    if runs.empty:
        return head + f"; nothing to report yet. Fill it with `python -m ercref.study {name} --hours 2.5`."
    commits = runs["git_commit"].fillna("unknown").value_counts().sort_index()
    cpus = sorted(set(runs["cpu"].dropna()))
    return (head + f", seeds {sorted(int(s) for s in set(runs['seed']))}, "
            f"{runs['wall_s'].sum() / 3600:.2f} run-hours (the sum of the runs' wall times, one thread each: "
            "a busy machine inflates it), finished "
            f"{runs['finished'].dropna().min()} to {runs['finished'].dropna().max()}; git commits "
            + ", ".join(f"`{c[:12] + ('-dirty' if c.endswith('-dirty') else '')}` ({k} runs)" for c, k in commits.items())
            + (f"; machine {', '.join(cpus)}" if cpus else "") + ".")


def study_report(name: str, results_dir=None) -> str:
    """The markdown report of what the cache of study ``name`` holds (module doc): provenance,
    a verdict count, one table row per (cell, pair) with >= MIN_SEEDS paired seeds, and a list
    of those with fewer."""
    root = study_dir(name, results_dir)
    d = _definition(name, root)
    runs = run_table(name, results_dir)
    lines = [_provenance(name, runs, d, results_dir)]
    if runs.attrs.get("problems"):
        lines += ["", "Not counted (damaged or incomplete files; `python -m ercref.study "
                  f"{name}` reruns them): " + "; ".join(runs.attrs["problems"]) + "."]
    vt = verdict_table(name, results_dir, runs)
    if vt.empty:
        return "\n".join(lines + _token_claim_lines(name, results_dir)) + "\n"
    judged = vt[vt["verdict"].notna() & (vt["measure"] != CLIP)]
    counts = judged["verdict"].value_counts()
    lines += ["", f"Paired by seed, ERC arm - other arm, 95 % Student-t interval over seeds (`ercref.study.claims`): "
              f"**reproduced** = the interval excludes 0 in the paper's direction, **contradicted** = it excludes 0 "
              f"the other way, **inconclusive** = it contains 0 (MDE: the smallest effect those seeds could "
              f"detect). Of {len(judged)} tests with >= {MIN_SEEDS} paired seeds: "
              + ", ".join(f"{counts.get(lab, 0)} {lab}" for lab in claims.LABELS)
              + f" (if no arm differed from another, about {0.05 * len(judged):.1f} of them would exclude 0 by chance "
              "alone: 5 % each, not corrected for multiple comparisons). "
              "Grad-norm spikes: minibatches with a policy-gradient signal whose norm exceeds 3x the median of the "
              "earlier ones (`stability.grad_norm_spikes`); for KL-Cov, whose penalty term keeps a tiny gradient "
              "after a collapse, that median falls to the penalty's scale, so its count is not comparable."]
    head = ["cell", "ERC arm vs other", "n", *(h for _, _, h in MEASURES),
            f"ERC clip fraction (paper ~20 %: in [{claims.CLIP_RATE_BAND[0]:.0%}, {claims.CLIP_RATE_BAND[1]:.0%}])"]
    table, few = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)], []
    for (cell, erc, other), g in vt.groupby(["cell", "erc_arm", "other_arm"], sort=False):
        n = int(g["n"].max())
        if g["verdict"].isna().all():
            few.append(f"{cell} {erc} vs {other} (n={n} seeds: no verdict)")
            continue
        by = {r.measure: _cell_text(r, runs) for r in g.itertuples()}
        table.append("| " + " | ".join([cell, f"{erc} vs {other}", str(n), *(by.get(c, "") for c, _, _ in MEASURES),
                                        by.get(CLIP, "")]) + " |")
    if len(table) > 2:
        lines += ["", *table]
    if few:
        lines += ["", f"Fewer than {MIN_SEEDS} paired seeds: " + "; ".join(few) + "."]
    if runs["cell"].nunique() == 1 and runs["start_accuracy"].notna().any():   # one cell: did each arm learn?
        acc = runs.groupby("arm")[["start_accuracy", "final_accuracy"]].mean()
        lines += ["", "Held-out accuracy, first -> last evaluation, mean over seeds: " + "; ".join(
            f"{arm} {r.start_accuracy:.3f} -> {r.final_accuracy:.3f} (n={int((runs['arm'] == arm).sum())})"
            for arm, r in acc.iterrows()) + "."]
    return "\n".join(lines + _token_claim_lines(name, results_dir)) + "\n"


README_BLOCK = re.compile(r"(<!-- study-report: (\S+) -->\n)(.*?)(<!-- /study-report -->)", flags=re.S)


def refresh_readme(path=None, results_dir=None) -> list[str]:
    """Replace every ``<!-- study-report: NAME -->`` ... ``<!-- /study-report -->`` block of the
    README with study_report(NAME) of the current cache (``make study-report``). Returns the names."""
    path = Path(path) if path is not None else REPO_ROOT / "README.md"
    text = path.read_text()
    names = [m.group(2) for m in README_BLOCK.finditer(text)]
    text = README_BLOCK.sub(lambda m: m.group(1) + study_report(m.group(2), results_dir) + m.group(4), text)
    path.write_text(text)
    return names
