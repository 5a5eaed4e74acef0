"""What a study's cache shows, as a table of paired verdicts under the one set of verdict rules
(ercref.study.verdict_rules): markdown for docs/results.md (and the README's summary), a DataFrame
for notebooks. Every number is read from the cache; the statistics are ercref.study.claims'
(intervals, MDE, symmetric verdicts) and the measures ercref.study.stability's.

    python -m ercref.study tiny-stability-map --report [--results-dir D]     # prints study_report(...)

Pairs (arm_pairs): an arm "X+ERC" (or "X+ERC-b<beta>", the beta ablation) against "X" when the
study has that arm; every other arm that is no such X (a control or baseline) against "DAPO+ERC".
The difference is always ERC arm - other arm, per seed, on the seeds both arms hold at that cell.
The reference arm of a pair (whose learning decides whether accuracy gets a verdict) is the ERC
arm's loss without ERC (DAPO for DAPO+ERC and its controls, GPPO for GPPO+ERC).

Measures (one number per run, MEASURES; direction = the study's hypothesis for ERC - other, taken
from the paper's claims):
    entropy volatility     -1  stability.entropy_volatility: std of the step-to-step change of the
                               rollout entropy (claims.ENTROPY_KEY)
    grad-norm spikes       -1  stability.grad_norm_spikes (k = 3 x the running median); not
                               comparable against KL-Cov (NOT_COMPARABLE: its penalty's gradient
                               sets the median after a collapse), marked so beside that verdict
    steps to collapse      +1  stability.collapse_step, with a run that never collapses scored
                               steps + 1 (censored at the run's end: two seeds that never collapse
                               differ by 0, so a cell where no run collapses is not supported with
                               MDE 0, marked "no run collapsed"); chosen over a collapsed-by-the-end
                               indicator because it also sees ERC delaying a collapse both arms reach
    final accuracy         +1  stability.final_accuracy (the last held-out eval/avg@k)
and the ERC arm's clip fraction (mean erc/clip_frac over all its minibatches, k = 0 included, as
claim 1a of claims.claims_table), described with claims.band_verdict against claims.CLIP_RATE_BAND.

The rules (verdict_rules.judge): a cell whose runs never had a stale minibatch (K = 1) is "not a
test (identical by construction)"; a (cell, pair) with fewer than MIN_SEEDS paired seeds is "too
few seeds (n)"; final accuracy gets no verdict unless the reference arm learned (its seed-mean
held-out accuracy rose >= 0.10 from the first to the best evaluation); every comparison is
exploratory, except those a confirmatory study pre-registered (study.json "hypotheses",
learning_primaries): they are judged there, with Holm's correction, shown first and marked in the
table; the tally beside the table gives the count expected by chance.

Token captures (a study with capture_steps, e.g. tiny-token-captures): the paper's claim 2 per cell and
ERC arm, token_claim_table: the share of ERC-clipped tokens whose old entropy is below the median of
all captured tokens of that seed (claims.low_entropy_shares), the hypothesis: above 0.5, with the
median old entropy of clipped and kept tokens.
"""
from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pandas as pd

from . import claims, doc_blocks, stability
from . import learning_primaries as lp
from . import verdict_rules as vr
from .cache import finished_runs, load_tokens, read_study_json, study_dir, wall_seconds
from .preregistration import registration_text
from .token_view import token_table

MIN_SEEDS = vr.MIN_PAIRED_SEEDS      # paired seeds a verdict needs
REFERENCE_ERC_ARM = "DAPO+ERC"       # what the controls and baselines are compared with
ERC_ARM = re.compile(r"^(?P<base>.+)\+ERC(-b[0-9.e+-]+)?$")
# (column of run_table, the hypothesis' direction for ERC - other, header with the hypothesis)
MEASURES = (("entropy_volatility", -1, "entropy volatility (hypothesis: ERC lower)"),
            ("grad_spikes", -1, "grad-norm spikes (hypothesis: ERC fewer)"),
            ("steps_to_collapse", +1, "steps to collapse, never = steps + 1 (hypothesis: ERC later)"),
            ("final_accuracy", +1, "final held-out accuracy (hypothesis: ERC higher)"))
ACCURACY = "final_accuracy"
REGISTERED = "registered"    # verdict_table status of a comparison that is a pre-registered primary
CLIP = "erc_clip_frac"
# (other arm, measure) -> why that verdict is not comparable (printed beside it)
NOT_COMPARABLE = {("KL-Cov", "grad_spikes"): "not comparable: KL-Cov's penalty keeps a tiny gradient after a "
                                            "collapse, so the spike median falls to the penalty's scale"}


def arm_pairs(arms) -> list[tuple[str, str]]:
    """[(ERC arm, other arm)] of a study's arms (module doc), ERC-vs-its-loss pairs first."""
    arms = list(arms)
    pairs = [(a, ERC_ARM.match(a)["base"]) for a in arms if ERC_ARM.match(a) and ERC_ARM.match(a)["base"] in arms]
    bases = {b for _, b in pairs}
    if REFERENCE_ERC_ARM in arms:
        pairs += [(REFERENCE_ERC_ARM, a) for a in arms if not ERC_ARM.match(a) and a not in bases]
    return pairs


def reference_arm(erc: str, other: str, arms) -> str:
    """The arm whose learning decides whether accuracy gets a verdict: the ERC arm's loss without
    ERC when the cell has it (DAPO for DAPO+ERC vs a control), else ``other``."""
    m = ERC_ARM.match(erc)
    return m["base"] if m and m["base"] in set(arms) else other


def _eval_curve(rows) -> tuple[float, ...]:
    """Held-out accuracy at each evaluation, in step order (the first eval/avg@k key of the log)."""
    evals = sorted((r for r in rows if r.get("kind") == "eval"), key=lambda r: r["step"])
    key = next((c for r in evals for c in r if c.startswith("eval/avg@")), None)
    return tuple(float(r[key]) for r in evals if key in r) if key else ()


def _definition(name: str, root: Path) -> dict:
    """The cached study.json, else the definition in studies.STUDIES (an empty cache)."""
    if (root / "study.json").is_file():
        return read_study_json(root / "study.json")
    from .studies import get_study

    return get_study(name).to_dict()


def run_table(name: str, results_dir=None) -> pd.DataFrame:
    """One row per finished run in the cache of study ``name`` whose files check out
    (cache.finished_runs): cell, arm, seed, its provenance (wall_s, git_commit, cpu, threads of its
    config, finished, start_policy) and stability.run_summary of its log, plus steps_to_collapse
    (collapse_step, never -> steps + 1), erc_clip_frac (NaN without ERC), max_staleness (the largest minibatch staleness k: 0 at K = 1)
    and eval_curve (held-out accuracy per evaluation, in step order).
    ``.attrs["problems"]``: the damaged runs and stray files left out."""
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
                     "threads": ((meta.get("config") or {}).get("train") or {}).get("threads"),
                     "finished": meta.get("finished"), "start_policy": meta.get("start_policy"), **summary,
                     "steps_to_collapse": summary["steps"] + 1 if collapse is None else collapse,
                     CLIP: float(np.mean(clip)) if clip else math.nan,
                     "max_staleness": max((int(r.get("staleness", 0)) for r in run.rows if r.get("kind") == "minibatch"),
                                          default=0),
                     "eval_curve": _eval_curve(run.rows)})
    df = pd.DataFrame(rows)
    df.attrs["problems"] = problems
    return df


def _per_seed(runs: pd.DataFrame, cell: str, arm: str, col: str) -> dict[int, float]:
    g = runs[(runs["cell"] == cell) & (runs["arm"] == arm)].dropna(subset=[col])
    return {int(s): float(v) for s, v in zip(g["seed"], g[col])}


def learning_gains(runs: pd.DataFrame) -> dict[tuple[str, str], float]:
    """{(cell, arm): verdict_rules.learning_gain of that arm's held-out accuracy curves} for every
    cell and arm with an evaluation curve (curves cut to the shortest of the arm's seeds)."""
    out = {}
    for (cell, arm), g in runs.groupby(["cell", "arm"], sort=False):
        curves = {int(s): c for s, c in zip(g["seed"], g["eval_curve"]) if len(c) >= 2}
        if curves:
            n = min(len(c) for c in curves.values())
            out[(cell, arm)] = vr.learning_gain({s: c[:n] for s, c in curves.items()})
    return out


def verdict_table(name: str, results_dir=None, runs: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per (cell, ERC arm, other arm, measure) with a cached run of both arms, judged by
    verdict_rules.judge (module doc): n paired seeds, the arms' means, the tested quantity's mean /
    low / high (paired difference; the ERC arm's clip rate for measure "erc_clip_frac"; NaN without
    a verdict), the hypothesis' direction (0: a band), verdict (the label: supported / not supported
    / contradicted, or why there is none), status and role (verdict_rules), counted (a test for the
    chance count), mde, detail (str of the Judgement), gain (the reference arm's learning gain, for
    accuracy rows) and note (NOT_COMPARABLE). A comparison that is a pre-registered hypothesis of the
    study (learning_primaries) has status REGISTERED and no judgement here: its verdict is the primaries'
    table's, Holm-corrected. ``.attrs["judgements"]``: the Judgements of the other rows, in row order."""
    root = study_dir(name, results_dir)
    d = _definition(name, root)
    runs = run_table(name, results_dir) if runs is None else runs
    cols = ["cell", "erc_arm", "other_arm", "measure", "direction", "n", "erc_mean", "other_mean", "mean", "low",
            "high", "verdict", "status", "role", "counted", "mde", "detail", "gain", "note"]
    if runs.empty:
        return pd.DataFrame(columns=cols)
    gains = learning_gains(runs)
    registered = {(h["cell"], h["arm"], h["baseline"], h["measure"]): h["id"]
                  for h in (lp.check_hypotheses(d) if d.get("hypotheses") else [])}
    cells = list(d["cells"]) + sorted(set(runs["cell"]) - set(d["cells"]))
    out, judgements = [], []
    for cell in cells:
        arms = list((d.get("cell_arms") or {}).get(cell, d["arms"]))
        arms += sorted(set(runs.loc[runs["cell"] == cell, "arm"]) - set(arms))
        for erc, other in arm_pairs(arms):
            both = set(_per_seed(runs, cell, erc, "seed")) & set(_per_seed(runs, cell, other, "seed"))
            sub = runs[(runs["cell"] == cell) & runs["arm"].isin([erc, other])]
            acts = vr.erc_can_act(int(sub["max_staleness"].max())) if len(sub) else True
            ref = reference_arm(erc, other, arms)
            for col, direction, _ in (*MEASURES, (CLIP, 0, "")):
                if (cell, erc, other, col) in registered:     # judged with Holm in the primaries' table
                    hid = registered[(cell, erc, other, col)]
                    out.append({**dict.fromkeys(cols, math.nan), "cell": cell, "erc_arm": erc, "other_arm": other,
                                "measure": col, "direction": direction, "n": len(both), "verdict": f"primary {hid} "
                                "(Holm-corrected, in the primaries' table)", "status": REGISTERED, "role": vr.PRIMARY,
                                "counted": False, "detail": "", "gain": math.nan, "note": ""})
                    continue
                a = {s: x for s, x in _per_seed(runs, cell, erc, col).items() if s in both}
                b = {s: x for s, x in _per_seed(runs, cell, other, col).items() if s in a}
                seeds = sorted(a) if col == CLIP else sorted(b)      # the clip rate is the ERC arm's alone
                if not seeds:
                    continue
                a = {s: a[s] for s in seeds}
                # a reference arm with fewer than 2 evaluations has no measured gain: not learned
                gain = gains.get((cell, ref), 0.0) if col == ACCURACY else math.nan
                note = NOT_COMPARABLE.get((other, col), "")
                j = vr.judge(a, None if col == CLIP else b, direction,
                             name=f"{col} at {cell}: {erc} - {other}" + (" (not comparable)" if note else ""),
                             erc_can_act=acts, accuracy=col == ACCURACY,
                             learning_gain=gain if col == ACCURACY else None, reference=ref,
                             band=claims.CLIP_RATE_BAND if col == CLIP else None)
                v = j.verdict
                judgements.append(j)
                out.append({"cell": cell, "erc_arm": erc, "other_arm": other, "measure": col, "direction": direction,
                            "n": len(seeds), "erc_mean": float(np.mean(list(a.values()))),
                            "other_mean": float(np.mean(list(b.values()))) if b and col != CLIP else math.nan,
                            "mean": v.mean if v else math.nan, "low": v.low if v else math.nan,
                            "high": v.high if v else math.nan, "verdict": j.label, "status": j.status,
                            "role": j.role, "counted": j.counted, "mde": v.mde if v else math.nan,
                            "detail": str(j), "gain": gain, "note": note})
    df = pd.DataFrame(out, columns=cols)
    df.attrs["judgements"] = judgements
    return df


def token_claim_table(name: str, results_dir=None) -> pd.DataFrame:
    """Claim 2 from a study's token captures (module doc): one row per (cell, arm) whose captures
    hold ERC-applied tokens, with n seeds, the low-entropy share's mean / low / high, verdict (the
    verdict_rules label), status, counted, detail, and the mean over seeds of the median old entropy
    of clipped and of kept tokens. Empty when the cache holds no captures.
    ``.attrs["judgements"]``: the Judgements in row order."""
    cols = ["cell", "arm", "n", "tokens", "mean", "low", "high", "verdict", "status", "counted", "detail",
            "median_H_clipped", "median_H_kept"]
    tokens = load_tokens(name, results_dir)
    out, judgements = [], []
    for (cell, arm), g in ([] if tokens is None else tokens.groupby(["cell", "arm"], sort=True)):
        tk = token_table(g)
        tk = tk[tk["erc_applied"]]
        if tk.empty:
            continue
        shares = claims.low_entropy_shares(tk, arm)
        j = vr.judge(shares, None, +1, null=0.5, name=f"low-entropy share of {arm}'s clipped tokens at {cell}",
                     erc_can_act=vr.erc_can_act(int(tk["staleness"].max())))
        v = j.verdict
        judgements.append(j)
        med = {k: float(np.mean(list(claims.per_seed(tk[tk["clipped"] == c], arm,
                                                     lambda x: x["old_entropy"].median()).values())))
               for k, c in (("median_H_clipped", True), ("median_H_kept", False))}
        out.append({"cell": cell, "arm": arm, "n": len(shares), "tokens": len(tk),
                    "mean": float(np.mean(list(shares.values()))) if shares else math.nan,
                    "low": v.low if v else math.nan, "high": v.high if v else math.nan,
                    "verdict": j.label, "status": j.status, "counted": j.counted, "detail": str(j), **med})
    df = pd.DataFrame(out, columns=cols)
    df.attrs["judgements"] = judgements
    return df


def _token_claim_lines(name: str, results_dir) -> list[str]:
    tt = token_claim_table(name, results_dir)
    if tt.empty:
        return []
    lines = ["", "Claim 2, the tokens ERC clips are mostly low-entropy: per seed, the share of ERC-clipped tokens whose "
             "old entropy is below that seed's median over all captured tokens (chance 50 %; the hypothesis: "
             "above), 95 % t interval over seeds (`ercref.study.claims.low_entropy_shares`, "
             "`ercref.study.verdict_rules`). " + vr.tally(tt.attrs["judgements"]),
             "", "| cell | arm | seeds | captured tokens | low-entropy share of clipped tokens | median old entropy, "
             "clipped / kept (nats) |", "|---|---|---|---|---|---|"]
    for r in tt.itertuples():
        share = (f"{r.mean:.1%} [{r.low:.1%}, {r.high:.1%}] {r.verdict}" if r.status == vr.VERDICT else
                 f"{r.mean:.1%} ({r.verdict})")
        lines.append(f"| {r.cell} | {r.arm} | {r.n} | {r.tokens} | {share} | "
                     f"{r.median_H_clipped:.3g} / {r.median_H_kept:.3g} |")
    return lines


def _g(x: float) -> str:
    return f"{x:+.3g}" if math.isfinite(x) else ("+inf" if x > 0 else "-inf")


def _cell_text(r, runs: pd.DataFrame) -> str:
    if r.status == vr.NOT_LEARNED:
        return f"{r.verdict}: gain {r.gain:+.3f} < +{vr.LEARNED_MIN_GAIN:.2f}"
    if r.status != vr.VERDICT:
        return r.verdict
    if r.measure == CLIP:
        return f"{r.mean:.1%} [{r.low:.1%}, {r.high:.1%}] {r.verdict}" + (" (clipped no token)" if r.erc_mean == 0 else "")
    s = f"{_g(r.mean)} [{_g(r.low)}, {_g(r.high)}] {r.verdict}"
    if r.verdict == claims.NOT_SUPPORTED:
        s += f", MDE {r.mde:.2g}"
    if r.measure == "steps_to_collapse":
        sub = runs[(runs["cell"] == r.cell) & runs["arm"].isin([r.erc_arm, r.other_arm])]
        if sub["collapse_step"].isna().all():
            s += " (no run collapsed)"
    if r.note:
        s += f" ({r.note})"
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


def primary_table(name: str, results_dir=None, runs: pd.DataFrame | None = None) -> pd.DataFrame | None:
    """learning_primaries.primary_table of study ``name``'s cache; None when its definition names no
    pre-registered hypotheses."""
    d = _definition(name, study_dir(name, results_dir))
    if not d.get("hypotheses"):
        return None
    runs = run_table(name, results_dir) if runs is None else runs
    return lp.primary_table(runs, d, learning_gains(runs) if not runs.empty else {})


def _primary_section(name: str, d: dict, runs: pd.DataFrame, results_dir) -> list[str]:
    """The report's lines on the pre-registered hypotheses of study.json ``d`` (learning_primaries)."""
    commits = [] if runs.empty else runs["git_commit"].fillna("unknown").tolist()
    lines = lp.primary_lines(primary_table(name, results_dir, runs), d,
                             registration_text(d.get("registered_commit"), commits, "runs"))
    for key, label in (("analysis", "Analysis"), ("power", "Power")):
        if d.get(key):
            lines += ["", f"{label} (pre-registered): {d[key]}"]
    return lines


def study_report(name: str, results_dir=None) -> str:
    """The markdown report of what the cache of study ``name`` holds (module doc): provenance, the
    tally of the rules (verdict_rules.tally), one table row per (cell, pair) with a verdict, and the
    pairs without one: K = 1 cells (not a test) and pairs with too few seeds."""
    root = study_dir(name, results_dir)
    d = _definition(name, root)
    runs = run_table(name, results_dir)
    lines = [_provenance(name, runs, d, results_dir)]
    if runs.attrs.get("problems"):
        lines += ["", "Not counted (damaged or incomplete files; `python -m ercref.study "
                  f"{name}` reruns them): " + "; ".join(runs.attrs["problems"]) + "."]
    if d.get("hypotheses"):
        lines += _primary_section(name, d, runs, results_dir)
    vt = verdict_table(name, results_dir, runs)
    if vt.empty:
        return "\n".join(lines + _token_claim_lines(name, results_dir)) + "\n"
    role = ("every comparison below is exploratory except those marked primary, which the primaries' table above "
            "judges" if (vt["status"] == REGISTERED).any() else "every comparison here is exploratory (the study "
            "named no primary endpoint)")
    lines += ["", "Paired by seed, ERC arm - other arm, 95 % Student-t interval over seeds (`ercref.study.claims`), "
              "under the rules of `ercref.study.verdict_rules`; each column's hypothesis is this study's, taken from "
              "a claim of the paper: **supported** = the interval excludes 0 in the hypothesis' direction, "
              "**contradicted** = it excludes 0 the other way, **not supported** = it contains 0 (MDE: the smallest "
              f"effect those seeds could detect); {role}. K = 1 cells are not tests (every minibatch is on-policy, "
              f"ERC clips nothing: the arms are identical by construction); a pair needs >= {MIN_SEEDS} paired seeds; "
              "final accuracy gets a verdict only where the reference arm (the loss without ERC) learned: its "
              f"seed-mean held-out accuracy rose by >= {vr.LEARNED_MIN_GAIN:.2f} from the first to the best evaluation. "
              + vr.tally(vt.attrs["judgements"]) + " The clip-fraction column describes ERC's clip rate against the "
              "paper's ~20 % (a band; not counted as a test). Grad-norm spikes: minibatches with a policy-gradient "
              "signal whose norm exceeds 3x the median of the earlier ones (`stability.grad_norm_spikes`)."]
    head = ["cell", "ERC arm vs other", "n", *(h for _, _, h in MEASURES),
            f"ERC clip fraction (paper ~20 %: in [{claims.CLIP_RATE_BAND[0]:.0%}, {claims.CLIP_RATE_BAND[1]:.0%}])"]
    table, identical, few = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)], [], []
    for (cell, erc, other), g in vt.groupby(["cell", "erc_arm", "other_arm"], sort=False):
        n = int(g["n"].max())
        if (g["status"] == vr.IDENTICAL).all():
            identical.append(f"{cell} {erc} vs {other}")
            continue
        if (g["status"] == vr.FEW_SEEDS).all():
            few.append(f"{cell} {erc} vs {other} ({vr.too_few_seeds(n)})")
            continue
        by = {r.measure: _cell_text(r, runs) for r in g.itertuples()}
        table.append("| " + " | ".join([cell, f"{erc} vs {other}", str(n), *(by.get(c, "") for c, _, _ in MEASURES),
                                        by.get(CLIP, "")]) + " |")
    if len(table) > 2:
        lines += ["", *table]
    if identical:
        lines += ["", f"{vr.NOT_A_TEST[0].upper() + vr.NOT_A_TEST[1:]}, K = 1 (no stale minibatch, ERC clipped no "
                  "token), not counted: " + "; ".join(identical) + "."]
    if few:
        lines += ["", f"Fewer than {MIN_SEEDS} paired seeds, no verdict: " + "; ".join(few) + "."]
    if runs["cell"].nunique() == 1 and runs["start_accuracy"].notna().any():   # one cell: did each arm learn?
        acc = runs.groupby("arm")[["start_accuracy", "final_accuracy"]].mean()
        lines += ["", "Held-out accuracy, first -> last evaluation, mean over seeds: " + "; ".join(
            f"{arm} {r.start_accuracy:.3f} -> {r.final_accuracy:.3f} (n={int((runs['arm'] == arm).sum())})"
            for arm, r in acc.iterrows()) + "."]
    return "\n".join(lines + _token_claim_lines(name, results_dir)) + "\n"


REPORT_BLOCK = doc_blocks.pattern("study-report")


def refresh_report_blocks(path, results_dir=None) -> list[str]:
    """Replace every ``<!-- study-report: NAME -->`` ... ``<!-- /study-report -->`` block of the
    markdown file ``path`` (docs/results.md: results_page.refresh_results) with study_report(NAME)
    of the current cache. Returns the names."""
    return doc_blocks.refresh(path, REPORT_BLOCK, lambda name: study_report(name, results_dir))
