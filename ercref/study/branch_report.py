"""What a branching study's cache shows: paired drift differences from identical states, verdicts on
the pre-registered primary hypotheses (Holm-corrected), everything else labelled exploratory, and
the figures. Markdown for the README (a generated block, tested equal to the committed cache).

    python -m ercref.study.branch_report NAME [--results-dir D] [--figures-dir docs/img | --no-figures]

The cache is read by ercref.study.branch_records.load_branch (each record's own hash checked; a
damaged record is reported by file name, never trusted, never deleted); the statistics are
ercref.study.branch_stats', the figures ercref.study.branch_plots'.

Pairing. A difference d = arm - baseline is formed only between two records of one branch point
(seed, branch_step, K) that carry the same state_sha256, i.e. both updates started from the identical
state; records whose hashes differ are refused and listed in the report.

Clustering. The branch points of one trajectory share its history, so the unit of replication is the
trajectory: one mean of d per trajectory (over its branch points, and over the K values a comparison
pools), then the Student-t 95 % interval over trajectories and a cluster bootstrap over trajectories
as a cross-check (ercref.study.branch_stats). Verdicts (claims.direction_verdict's symmetric rule,
as ercref.study.verdict_rules words them): **supported** = excludes 0 on the predicted side,
**contradicted** = on the other side, **not supported** = contains 0. verdict_rules.judge decides
whether a comparison is a test at all, on the per-trajectory means: MIN_TRAJECTORIES trajectories,
not at K = 1 (identical by construction), and a change of held-out accuracy only when the
trajectories learned (their held-out accuracy at the branch points, trajectory_gain).

Primaries: the hypotheses of study.json (each {id, arm, baseline, region, metric, direction, text},
optional K: an int or a list, default every K pooled), tested with Holm's correction over them when
study.json says ``holm: true`` (a verdict then needs the Holm-adjusted p < ALPHA; the printed
interval is the unadjusted 95 % one). Exploratory: every pair of report.arm_pairs at each K on each of
EXPLORATORY_METRICS, not corrected; beside each list of verdicts the report says how many would
exclude 0 by chance alone (verdict_rules.tally: ALPHA x the number of tests).
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from ercref.paths import REPO_ROOT

from . import doc_blocks
from . import verdict_rules as vr
from .branch_plots import branch_figures
from .branch_records import ACC_DELTA, column, hypotheses, load_branch
from .branch_stats import cluster_bootstrap, cluster_means, holm, t_pvalue
from .cache import RESULTS_DIR
from .preregistration import after_registration, registration_text  # noqa: F401 (after_registration: re-exported)
from .report import arm_pairs

ALPHA = vr.ALPHA
MIN_TRAJECTORIES = vr.MIN_PAIRED_SEEDS     # trajectories a verdict needs (verdict_rules' rule 2, per trajectory)
SUPPORTED, NOT_SUPPORTED, CONTRADICTED = vr.SUPPORTED, vr.NOT_SUPPORTED, vr.CONTRADICTED
REFERENCE = "DAPO trajectories"            # whose held-out accuracy must rise for an accuracy verdict (rule 3)
# (region or None for a column of its own, metric key, predicted direction of ERC arm - other arm, label)
EXPLORATORY_METRICS = (
    ("heldout", "drift/kl_old_new/p99", -1, "held-out p99 KL(old||new)"),
    ("trained", "drift/kl_old_new/p99", -1, "trained p99 KL(old||new)"),
    (None, ACC_DELTA, +1, "change of held-out expected accuracy"),
    ("other", "drift/kl_old_new/p99", -1, "other-minibatch p99 KL(old||new)"),
    ("heldout", "drift/kl_old_new/mean", -1, "held-out mean KL(old||new)"),
    ("heldout", "drift/tv_unsampled/mean", -1, "held-out mean TV of unsampled tokens"),
    ("trained", "drift/tv_unsampled/mean", -1, "trained mean TV of unsampled tokens"),
)
TABLE_METRICS = 3                          # the markdown's exploratory table shows the first this many metrics
COLUMNS = ["arm", "baseline", "region", "metric", "direction", "K", "n_traj", "n_points", "traj_means", "base_mean",
           "mean", "low", "high", "boot_low", "boot_high", "p", "mde", "verdict", "judgement", "refused", "non_finite"]


# ----------------------------------------------------------------------------- pairing and comparisons
def paired(df: pd.DataFrame, arm: str, baseline: str, col: str, ks=None) -> tuple[pd.DataFrame, list[str]]:
    """(pairs, refused) for ``arm`` - ``baseline`` on column ``col`` at the K values ``ks`` (None: all):
    pairs has seed, branch_step, K, arm_value, base_value, diff, one row per branch point holding both
    arms with the same state_sha256 and finite values (``.attrs["non_finite"]``: how many pairs were
    left out for a NaN or inf value, e.g. an infinite KL); refused names each branch point whose two
    records carry different state_sha256 (never paired)."""
    cols = ["seed", "branch_step", "K", "arm_value", "base_value", "diff"]
    if df.empty or col not in df.columns:
        return pd.DataFrame(columns=cols), []
    sub = df if ks is None else df[df["K"].isin(list(ks))]
    key = ["seed", "branch_step", "K"]
    a = sub[sub["arm"] == arm][key + ["state_sha256", col]]
    b = sub[sub["arm"] == baseline][key + ["state_sha256", col]]
    m = a.merge(b, on=key, suffixes=("_a", "_b")).sort_values(key)
    same = m["state_sha256_a"] == m["state_sha256_b"]
    refused = [f"traj{r.seed}/step{r.branch_step}/K{r.K}: {arm} (state {str(r.state_sha256_a)[:12]}) vs {baseline} "
               f"(state {str(r.state_sha256_b)[:12]})" for r in m[~same].itertuples()]
    m = m[same]
    out = pd.DataFrame({"seed": m["seed"].astype(int), "branch_step": m["branch_step"].astype(int),
                        "K": m["K"].astype(int), "arm_value": m[f"{col}_a"].astype(float),
                        "base_value": m[f"{col}_b"].astype(float)})
    out["diff"] = out["arm_value"] - out["base_value"]
    finite = np.isfinite(out["diff"])
    out = out[finite].reset_index(drop=True)[cols]
    out.attrs["non_finite"] = int((~finite).sum())
    return out, refused


def trajectory_gain(df: pd.DataFrame) -> float | None:
    """verdict_rules.learning_gain of the trajectories' held-out accuracy at their branch points
    (heldout_acc_before, one value per (seed, step): every arm of a branch point starts from that
    state), on the branch steps every trajectory holds; None with fewer than 2 such steps."""
    if df.empty:
        return None
    acc = df.groupby(["seed", "branch_step"])["heldout_acc_before"].first().unstack("branch_step").dropna(axis=1)
    if acc.shape[1] < 2:
        return None
    return vr.learning_gain({int(s): row.tolist() for s, row in acc.iterrows()})


def compare(df: pd.DataFrame, arm: str, baseline: str, region: str | None, metric: str, direction: int, ks=None,
            primary: bool = False, gain: float | None = None) -> dict:
    """One clustered paired comparison (module doc) judged by verdict_rules.judge on the per-trajectory
    means of both arms: n_traj, n_points, ``traj_means`` (per-trajectory mean difference), base_mean (the
    baseline's mean over trajectories, the scale of the difference), mean / low /
    high (t interval over trajectories), mde, boot_low / boot_high (cluster bootstrap) and p (two-sided t
    test) for a counted test, ``verdict`` (the judgement's label), ``judgement``, ``refused`` (pairs
    with different state hashes). ``gain``: trajectory_gain, for the accuracy measure ACC_DELTA."""
    pairs, refused = paired(df, arm, baseline, column(region, metric), ks)
    row = {"arm": arm, "baseline": baseline, "region": region, "metric": metric, "direction": direction,
           "K": "all" if ks is None else ",".join(str(k) for k in ks), "n_traj": 0, "n_points": len(pairs),
           "traj_means": {}, "base_mean": math.nan, "mean": math.nan, "low": math.nan, "high": math.nan, "boot_low": math.nan,
           "boot_high": math.nan, "p": math.nan, "mde": math.nan, "verdict": vr.too_few_seeds(0), "judgement": None,
           "refused": refused, "non_finite": pairs.attrs.get("non_finite", 0)}
    if pairs.empty:
        return row
    a, b = cluster_means(pairs["arm_value"], pairs["seed"]), cluster_means(pairs["base_value"], pairs["seed"])
    d = {s: a[s] - b[s] for s in a}
    accuracy = metric == ACC_DELTA
    j = vr.judge(a, b, direction, name=f"{column(region, metric)}: {arm} - {baseline} (K {row['K']})",
                 erc_can_act=int(pairs["K"].max()) >= 2, accuracy=accuracy,
                 learning_gain=(gain if gain is not None else -math.inf) if accuracy else None,
                 reference=REFERENCE, primary=primary)
    row.update(n_traj=len(d), traj_means=d, base_mean=float(np.mean(list(b.values()))),
               mean=float(np.mean(list(d.values()))), verdict=j.label, judgement=j)
    if j.counted:
        blo, bhi = cluster_bootstrap(pairs["diff"], pairs["seed"])
        row.update(low=j.verdict.low, high=j.verdict.high, mde=j.verdict.mde, boot_low=blo, boot_high=bhi,
                   p=t_pvalue(list(d.values())))
    return row


def primary_table(df: pd.DataFrame, definition: dict) -> pd.DataFrame:
    """One row per pre-registered hypothesis: id, text, compare(...)'s fields, p_holm (Holm over the
    primaries that are tests, when the definition says holm; else p) and verdict (for a test from p_holm,
    verdict_rules.holm_label; otherwise the judgement's label, e.g. "too few seeds (4)")."""
    gain = trajectory_gain(df)
    rows = [{"id": h["id"], "text": h["text"],
             **compare(df, h["arm"], h["baseline"], h["region"], h["metric"], h["direction"], h["K"], True, gain)}
            for h in hypotheses(definition)]
    out = pd.DataFrame(rows, columns=["id", "text", *COLUMNS])
    tested = out["p"].notna()
    out["p_holm"] = out["p"]
    if definition.get("holm", False) and tested.any():
        out.loc[tested, "p_holm"] = holm(out.loc[tested, "p"].tolist())
    out["verdict"] = [vr.holm_label(r.p_holm, r.mean, r.direction) if t else r.verdict
                      for t, r in zip(tested, out.itertuples())]
    return out


def exploratory_table(df: pd.DataFrame, definition: dict) -> pd.DataFrame:
    """Every pair of report.arm_pairs (the study's arms) at each K on each of EXPLORATORY_METRICS whose
    column the cache holds, without the comparisons that are primaries; compare(...)'s fields and the
    metric's label. Not corrected for multiple comparisons."""
    if df.empty:
        return pd.DataFrame(columns=[*COLUMNS, "label"])
    present = set(df["arm"])
    arms = [a for a in dict.fromkeys([*(definition.get("arms") or {}), *sorted(present)]) if a in present]
    prim = {(h["arm"], h["baseline"], h["region"], h["metric"], tuple(h["K"] or ())) for h in hypotheses(definition)}
    gain = trajectory_gain(df)
    rows = []
    for arm, base in arm_pairs(arms):
        for region, metric, direction, label in EXPLORATORY_METRICS:
            if column(region, metric) not in df.columns:
                continue
            for k in sorted(int(k) for k in set(df["K"])):
                if (arm, base, region, metric, (k,)) in prim:
                    continue
                r = compare(df, arm, base, region, metric, direction, [k], False, gain)
                if r["n_points"]:
                    rows.append({**r, "label": label})
    return pd.DataFrame(rows, columns=[*COLUMNS, "label"])


def state_mismatches(df: pd.DataFrame) -> list[str]:
    """Branch points whose records do not all carry one state_sha256, each with its arms per hash."""
    out = []
    if df.empty:
        return out
    for (s, t, k), g in df.groupby(["seed", "branch_step", "K"], sort=True):
        if g["state_sha256"].nunique() > 1:
            groups = "; ".join(f"{str(h)[:12]}: {', '.join(sorted(gg['arm']))}"
                               for h, gg in g.groupby("state_sha256", sort=True))
            out.append(f"traj{s}/step{t}/K{k} ({groups})")
    return out


def incomplete_points(df: pd.DataFrame, definition: dict) -> list[str]:
    """Branch points (seed, step, K) of the cache that lack some arm of the study definition, each with
    the arms it lacks (its comparisons use the arms it holds)."""
    arms = list(definition.get("arms") or {})
    if df.empty or not arms:
        return []
    out = []
    for (s, t, k), g in df.groupby(["seed", "branch_step", "K"], sort=True):
        lack = [a for a in arms if a not in set(g["arm"])]
        if lack:
            out.append(f"traj{s}/step{t}/K{k} lacks {', '.join(lack)}")
    return out


# ----------------------------------------------------------------------------- markdown
def _g(x: float) -> str:
    return f"{x:+.3g}" if math.isfinite(x) else ("+inf" if x > 0 else "-inf")


def _interval(r) -> str:
    return f"{_g(r.mean)} [{_g(r.low)}, {_g(r.high)}]"


def figure_paths(name: str, figures_dir) -> dict[str, Path]:
    """{kind: path} of the study's figures: docs/img/branch_<study without '-branch'>_<kind>.png."""
    stem = name[: -len("-branch")] if name.endswith("-branch") and name != "-branch" else name
    return {k: Path(figures_dir) / f"branch_{stem}_{k}.png" for k in ("ecdf", "forest", "drift_vs_k")}


def _provenance(name: str, df: pd.DataFrame, definition: dict, results_dir) -> str:
    where = f"data/results/{name}" if results_dir is None else str(Path(results_dir) / name)
    reg_txt = registration_text(definition.get("registered_commit"),
                                [] if df.empty else df["git_commit"].fillna("unknown").tolist())
    head = f"Branching study `{name}` (cache `{where}`): {len(df)} records"
    if df.empty:
        return head + f"; nothing to report yet; {reg_txt}."
    points = df.groupby(["seed", "branch_step", "K"]).ngroups
    commits = df["git_commit"].fillna("unknown").value_counts().sort_index()
    cpus = sorted(set(df["cpu_model"].dropna().astype(str)))
    arms = list(dict.fromkeys([*(a for a in (definition.get("arms") or {}) if a in set(df["arm"])),
                               *sorted(set(df["arm"]))]))
    return (head + f" (one K-minibatch update of one arm from one branch state each): {points} branch points, "
            f"trajectories (seeds) {sorted(int(s) for s in set(df['seed']))}, K {sorted(int(k) for k in set(df['K']))}, "
            f"arms {', '.join(arms)}; {df['wall_s'].sum() / 3600:.2f} run-hours (the sum of the records' wall times); "
            "git commits " + ", ".join(f"`{c[:12]}` ({k} records)" for c, k in commits.items())
            + (f"; machine {', '.join(cpus)}" if cpus else "") + f"; {reg_txt}. " + _accuracy_text(df, definition))


def _accuracy_text(df: pd.DataFrame, definition: dict) -> str:
    """What the study's held-out accuracy is (branch_study.ACCURACY_MEASURES)."""
    if definition.get("accuracy") == "judged":
        ess = df["judged/ess"].median() if "judged/ess" in df.columns else math.nan
        n = df["judged/n"].median() if "judged/n" in df.columns else math.nan
        return ("Held-out accuracy: the judged accuracy of pi_old's held-out responses, reweighted to pi_new by "
                f"importance weights (ercref.importance; median effective sample size {ess:.1f} of {n:.0f} responses).")
    return (f"Held-out accuracy: the exact probability of the reference answer followed by EOS, on "
            f"{definition.get('accuracy_prompts', '?')} evaluation prompts.")


def _primary_lines(pt: pd.DataFrame, definition: dict) -> list[str]:
    if pt.empty:
        return ["", "No pre-registered hypotheses in study.json: every comparison below is exploratory."]
    tested = pt[pt["p"].notna()]
    holm_on = bool(definition.get("holm", False))
    counts = ", ".join(f"{int((tested['verdict'] == lab).sum())} {lab}" for lab in vr.VERDICT_LABELS)
    lines = ["", f"**Primary hypotheses** ({len(pt)}, pre-registered; "
             + (f"Holm-corrected over the {len(tested)} that are tests: a verdict needs the Holm-adjusted p < "
                f"{ALPHA:g} on the predicted side" if holm_on else f"not corrected: a verdict needs p < {ALPHA:g}")
             + "). Difference arm - baseline at each branch point from the same state, one mean per trajectory, "
             "95 % Student-t interval over trajectories (unadjusted), cluster bootstrap over trajectories as a "
             f"cross-check. Of {len(tested)} tests: {counts}; if no arm differed, about "
             f"{_num(vr.expected_by_chance(len(tested)))} would exclude 0 by chance alone without the correction "
             f"({ALPHA:g} x {len(tested)}).",
             "", "| | hypothesis | arm - baseline (K) | trajectories / points | difference [95 % t] | cluster bootstrap "
             "| p / Holm p | verdict |", "|---|---|---|---|---|---|---|---|"]
    for r in pt.itertuples():
        if math.isfinite(r.p):
            diff, boot, p = _interval(r), f"[{_g(r.boot_low)}, {_g(r.boot_high)}]", f"{r.p:.2g} / {r.p_holm:.2g}"
        else:
            diff, boot, p = (f"{_g(r.mean)}" if math.isfinite(r.mean) else ""), "", ""
        if r.non_finite:
            diff += f" ({r.non_finite} branch points left out: a NaN or inf value)"
        lines.append(f"| **{r.id}** | {_cell(r.text)} | {r.arm} - {r.baseline} ({r.K}) | {r.n_traj} / {r.n_points} | {diff} "
                     f"| {boot} | {p} | **{r.verdict}** |")
    return lines


def _cell(text: str) -> str:
    """Text for a markdown table cell: a "|" (as in KL(old||new)) escaped so it does not split the cell."""
    return str(text).replace("|", "\\|")


def _num(x: float) -> str:
    return f"{x:.2f}".rstrip("0").rstrip(".")


def _exploratory_lines(et: pd.DataFrame) -> list[str]:
    if et.empty:
        return []
    js = [j for j in et["judgement"] if j is not None]
    tests = et[et["p"].notna()]
    lines = ["", "**Exploratory** (not pre-registered, not corrected; every ERC arm against its loss without ERC and "
             "DAPO+ERC against each control, at each K, on those of " + ", ".join(lab for *_, lab in EXPLORATORY_METRICS)
             + " that the records hold). " + vr.tally(js) + f" The cluster bootstrap and the t interval disagree on excluding 0 in "
             f"{_disagreements(tests)} of the {len(tests)} tests."]
    ks = sorted(set(et["K"]), key=int)
    sub = et[et["label"].isin([label for *_, label in EXPLORATORY_METRICS[:TABLE_METRICS]])]
    sub = sub[sub.groupby(["arm", "baseline", "label"], sort=False)["p"].transform(lambda p: p.notna().any())]
    if sub.empty:
        return lines
    lines += ["", f"The first {TABLE_METRICS} measures, where some K has a test:", "",
              "| arm - other | measure (predicted) | " + " | ".join(f"K={k}" for k in ks) + " |",
              "|---|---|" + "---|" * len(ks)]
    for (arm, base, label), g in sub.groupby(["arm", "baseline", "label"], sort=False):
        by = {r.K: (f"{_interval(r)} {r.verdict}" if math.isfinite(r.p) else r.verdict) for r in g.itertuples()}
        pred = "lower" if g["direction"].iloc[0] < 0 else "higher"
        lines.append(f"| {arm} - {base} | {_cell(label)} ({pred}) | " + " | ".join(by.get(k, "") for k in ks) + " |")
    return lines


def _disagreements(tests: pd.DataFrame) -> int:
    t_excl = (tests["low"] > 0) | (tests["high"] < 0)
    b_excl = (tests["boot_low"] > 0) | (tests["boot_high"] < 0)
    return int((t_excl != b_excl).sum())


def branch_report(name: str, results_dir=None, figures_dir=None) -> str:
    """The markdown report of branching study ``name`` (module doc): provenance, problems, refused
    pairs, the primaries with Holm, the exploratory count and table, links to the figures. With
    ``figures_dir`` the figures are (re)drawn there (branch_plots.branch_figures)."""
    df = load_branch(name, results_dir)
    definition = df.attrs["definition"]
    lines = [_provenance(name, df, definition, results_dir)]
    if df.attrs["problems"]:
        lines += ["", "Not counted (damaged or misplaced files, left in place): " + "; ".join(df.attrs["problems"]) + "."]
    mism = state_mismatches(df)
    if mism:
        lines += ["", "Not paired: branch points whose arms did not start from one state (state_sha256 differs; "
                  "records with different hashes are never compared): " + "; ".join(mism) + "."]
    if df.empty:
        return "\n".join(lines) + "\n"
    lacking = incomplete_points(df, definition)
    if lacking:
        lines += ["", f"Incomplete: {len(lacking)} of {df.groupby(['seed', 'branch_step', 'K']).ngroups} branch points "
                  "lack arms of the study (their comparisons use the arms they hold): " + "; ".join(lacking) + "."]
    pt, et = primary_table(df, definition), exploratory_table(df, definition)
    lines += _primary_lines(pt, definition) + _exploratory_lines(et)
    if figures_dir is not None:
        branch_figures(df, pt, et, figure_paths(name, figures_dir))
    rel = figure_paths(name, "docs/img")
    lines += ["", f"Figures (`python -m ercref.study.branch_report {name}` redraws them): per-token "
              f"KL(pi_old || pi_new) per arm on trained tokens and held-out contexts ({rel['ecdf']}), the paired "
              f"differences with intervals ({rel['forest']}), held-out drift against K ({rel['drift_vs_k']})."]
    return "\n".join(lines) + "\n"


README_BLOCK = doc_blocks.pattern("branch-report")


def refresh_readme(path=None, results_dir=None, figures_dir=None) -> list[str]:
    """Replace every ``<!-- branch-report: NAME -->`` ... ``<!-- /branch-report -->`` block of the file
    ``path`` (default README.md; results_page passes docs/results.md) with branch_report(NAME) of the
    current cache, drawing its figures into ``figures_dir`` when given. Returns the names."""
    return doc_blocks.refresh(REPO_ROOT / "README.md" if path is None else path, README_BLOCK,
                              lambda name: branch_report(name, results_dir, figures_dir))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m ercref.study.branch_report", description=__doc__.split("\n\n")[0])
    ap.add_argument("study", help="the branching study's name, e.g. tiny-branch")
    ap.add_argument("--results-dir", default=None, help=f"cache root (default {RESULTS_DIR})")
    ap.add_argument("--figures-dir", default=str(REPO_ROOT / "docs" / "img"),
                    help="where the figures are drawn (default docs/img)")
    ap.add_argument("--no-figures", action="store_true", help="print the report without drawing the figures")
    args = ap.parse_args(argv)
    try:
        print(branch_report(args.study, args.results_dir, None if args.no_figures else args.figures_dir), end="")
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
