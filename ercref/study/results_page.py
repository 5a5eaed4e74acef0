"""The results page (docs/results.md: every study's full report) and the README's "What we found"
summary (one table of the verdicts per study and one figure), all generated from the committed
study caches under the rules of ercref.study.verdict_rules, and tested equal to them
(tests/test_results_page.py).

    python -m ercref.study --write-results         # or: make study-report

rewrites, and nothing else of those files:
    README.md          the block <!-- results-summary --> ... <!-- /results-summary -->  (summary_table)
                       and the block <!-- primary-verdicts --> ... <!-- /primary-verdicts -->
                       (primary_verdicts_table) when the README has one
    docs/results.md    every <!-- study-report: NAME --> ... <!-- /study-report --> block  (report.study_report),
                       and every <!-- branch-report: NAME --> block when the page has one
                       (ercref.study.branch_report, imported only then), and every
                       <!-- pilot-report: NAME --> block (ercref.study.pilot.pilot_report), and every
                       <!-- replication-report: NAME --> block (ercref.study.replicate: the replica
                       cache under data/replications/ against the study's)
    docs/img/results_summary.png                                                       (summary_figure)

SUMMARY_STUDIES lists the table's rows in order: (name, kind, what it tests). kind "study": a study
of ercref.study.studies, judged by report.verdict_table and report.token_claim_table; kind "branch":
a branching study, judged by ercref.study.branch_report.primary_table and exploratory_table when
its cache exists; a row whose cache does not exist yet says "not run yet" (the generator fills it
in once the cache is there: rerun the command above).

The figure puts every counted test on one axis: the tested difference's mean divided by the
half-width of its 95 % interval, signed so that the hypothesis' direction is positive. Beyond +1
the interval excludes 0 on the predicted side (supported), below -1 on the other (contradicted),
in between it contains 0 (not supported). The plotted numbers are stored in the PNG's
"Description" text chunk (JSON), which the test compares with the caches.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import replace
from pathlib import Path

import numpy as np

from ercref.paths import REPO_ROOT

from . import judge_audit, pilot, power, replicate, report
from . import verdict_rules as vr
from .cache import study_dir

RESULTS_PAGE = REPO_ROOT / "docs" / "results.md"
FIGURE = REPO_ROOT / "docs" / "img" / "results_summary.png"
SUMMARY_BLOCK = re.compile(r"(<!-- results-summary -->\n)(.*?)(<!-- /results-summary -->)", flags=re.S)
PRIMARY_BLOCK = re.compile(r"(<!-- primary-verdicts -->\n)(.*?)(<!-- /primary-verdicts -->)", flags=re.S)
REGION_WORDS = {"heldout": "held-out contexts", "trained": "the trained tokens", "other": "the rollout's other minibatches"}
BRANCH_BLOCK = re.compile(r"<!-- branch-report: (\S+) -->")
TESTBED_PENDING = "the testbed's confirmatory study"
SUMMARY_STUDIES = (
    ("tiny-stability-map", "study", "tiny LM (~1M parameters, single-digit addition): DAPO vs DAPO+ERC over "
                                    "K x learning rate, GPPO vs GPPO+ERC at K = 4, 16"),
    ("tiny-controls", "study", "tiny LM at K16-lr0.001: DAPO+ERC vs the random-mask and matched-step controls, "
                               "entropy-regularisation baselines, beta ablation"),
    ("tiny-token-captures", "study", "tiny LM: are the tokens ERC clips mostly low-entropy? (per-token captures)"),
    ("smollm2-learns", "study", "SmolLM2-135M, additions asked in a sentence (DAPO learns), K = 4"),
    ("smollm2-collapse", "study", "SmolLM2-135M, multiple choice (the policy collapses onto one letter), K = 2"),
    ("tiny-branch", "branch", "what one K-minibatch update does, from identical states (tiny LM)"),
    ("smollm2-branch", "branch", "what one K-minibatch update does, from identical states (SmolLM2-135M)"),
    (TESTBED_PENDING, "testbed", "where DAPO learns and staleness breaks it: pre-registered primaries, Holm"),
)


def _where(name: str, results_dir) -> str:
    return f"data/results/{name}" if results_dir is None else str(Path(results_dir) / name)


def _branch_tables(name: str, results_dir=None):
    """(primary_table, exploratory_table) of branching study ``name``'s cache (ercref.study.branch_report)."""
    from . import branch_report  # only for a cache that exists
    from .branch_records import load_branch

    df = load_branch(name, results_dir)
    return (branch_report.primary_table(df, df.attrs["definition"]),
            branch_report.exploratory_table(df, df.attrs["definition"]))


def study_judgements(name: str, kind: str = "study", results_dir=None, tables=None) -> list[vr.Judgement] | None:
    """Every Judgement the report of study ``name`` lists (None when its cache does not exist).
    ``tables``: a branching study's _branch_tables, when already computed."""
    if kind == "testbed" or not (study_dir(name, results_dir) / "study.json").is_file():
        return None
    if kind == "branch":
        tables = _branch_tables(name, results_dir) if tables is None else tables
        # a primary's label is the table's verdict (Holm-adjusted when the study says so)
        return [replace(j, label=v) if j.counted and v in vr.VERDICT_LABELS else j
                for t in tables for j, v in zip(t["judgement"], t["verdict"]) if j is not None]
    vt = report.verdict_table(name, results_dir)
    return list(vt.attrs.get("judgements", [])) + list(report.token_claim_table(name, results_dir).attrs["judgements"])


def _excluding_zero(js: list[vr.Judgement]) -> str:
    hits = [j for j in js if j.counted and j.label != vr.NOT_SUPPORTED]
    if not hits:
        return "none"
    def interval(v) -> str:
        if v.null == 0 and v.direction != 0:
            return f"{v.mean:+.3g} [{v.low:+.3g}, {v.high:+.3g}]"
        return f"{v.mean:.3g} [{v.low:.3g}, {v.high:.3g}] against " + (
            f"{v.null:g}" if v.direction != 0 else f"[{v.band[0]:g}, {v.band[1]:g}]")

    return "; ".join(f"{j.label}{' (primary)' if j.role == vr.PRIMARY else ''}: {j.name} {interval(j.verdict)}"
                     for j in hits)


def summary_rows(results_dir=None) -> list[dict]:
    """One dict per SUMMARY_STUDIES row: name, kind, what, judgements (None: not run yet) and, for a
    branching study whose cache exists, primaries (branch_report.primary_table)."""
    rows = []
    for name, kind, what in SUMMARY_STUDIES:
        exists = kind != "testbed" and (study_dir(name, results_dir) / "study.json").is_file()
        tables = _branch_tables(name, results_dir) if kind == "branch" and exists else None
        rows.append({"name": name, "kind": kind, "what": what,
                     "judgements": study_judgements(name, kind, results_dir, tables),
                     "primaries": None if tables is None else tables[0]})
    return rows


def summary_table(results_dir=None, rows: list[dict] | None = None) -> str:
    """The README's summary (module doc): per study, the role of its tests, the counts by verdict,
    how many would exclude 0 by chance alone (verdict_rules.expected_by_chance), what was not counted,
    and the tests whose interval excludes 0."""
    rows = summary_rows(results_dir) if rows is None else rows
    lines = ["| study | what it tests | tests (role) | supported / not supported / contradicted | "
             f"expected to exclude 0 by chance ({vr.ALPHA:g} x tests) | not counted | the tests that excluded 0 |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        js = r["judgements"]
        name = r["name"] if r["kind"] == "testbed" else f"`{r['name']}`"
        if js is None:
            where = ("its name and cache: not defined yet" if r["kind"] == "testbed"
                     else f"no cache at `{_where(r['name'], results_dir)}` yet")
            lines.append(f"| {name} | {r['what']} | not run yet ({where}) | | | | |")
            continue
        if not js:
            lines.append(f"| {name} | {r['what']} | no comparison yet (the cache holds no finished run) | | | | |")
            continue
        if all(j.status == vr.FEW_SEEDS for j in js):      # a cache being filled: no count that changes per run
            lines.append(f"| {name} | {r['what']} | no verdict yet (every comparison has fewer than "
                         f"{vr.MIN_PAIRED_SEEDS} paired seeds) | | | | |")
            continue
        tests = [j for j in js if j.counted]
        n_primary = sum(j.role == vr.PRIMARY for j in tests)
        role = (f"{n_primary} primary, {len(tests) - n_primary} exploratory" if n_primary else "all exploratory")
        counts = " / ".join(str(sum(j.label == lab for j in tests)) for lab in vr.VERDICT_LABELS)
        left = {vr.IDENTICAL: "not a test (K = 1)", vr.FEW_SEEDS: "too few seeds",
                vr.NOT_LEARNED: "accuracy: the reference arm did not learn"}
        skipped = "; ".join(f"{sum(j.status == st for j in js)} {txt}" for st, txt in left.items()
                            if any(j.status == st for j in js)) or "none"
        lines.append(f"| {name} | {r['what']} | {len(tests)} ({role}) | {counts} | "
                     f"{vr.expected_by_chance(len(tests)):.2f} | {skipped} | {_excluding_zero(js)} |")
    return "\n".join(lines) + "\n"


def _primary_what(r) -> str:
    """A primary hypothesis in a few words, from its fields: measure, where, arm vs baseline, predicted side."""
    where = REGION_WORDS.get(r.region, r.region or "all tokens")
    side = "below" if r.direction < 0 else "above"
    measure = r.metric.replace("drift/kl_old_new/p99", "p99 of per-token KL(pi_old \\|\\| pi_new)")
    return f"{measure} on {where}: {r.arm} {side} {r.baseline}"


def primary_verdicts_table(results_dir=None, rows: list[dict] | None = None) -> str:
    """The README's table of the pre-registered primary hypotheses: one row per primary of each study
    that names primaries (the branching studies), with the paired difference arm - baseline (one mean
    per trajectory, 95 % t interval), the baseline's mean for scale, the Holm-adjusted p and the
    verdict; a study not run yet, or with too few trajectories, says so in its verdict column."""
    rows = summary_rows(results_dir) if rows is None else rows
    lines = ["| study | hypothesis (pre-registered) | what is compared | trajectories | difference [95 % t] "
             "| baseline's mean | Holm p | verdict |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        name = r["name"] if r["kind"] == "testbed" else f"`{r['name']}`"
        if r["kind"] == "study":
            continue                       # no pre-registered primaries: every verdict exploratory
        pt = r.get("primaries")
        if pt is None:
            lines.append(f"| {name} | | | | | | | not run yet |")
            continue
        for h in pt.itertuples():
            tested = math.isfinite(h.p)
            diff = f"{h.mean:+.3g} [{h.low:+.3g}, {h.high:+.3g}]" if tested else ""
            base = f"{h.base_mean:.3g}" if tested else ""     # a cache being filled: nothing that moves per run
            ks = "all K" if h.K == "all" else f"K {h.K}"
            lines.append(f"| {name} | {h.id} | {_primary_what(h)} ({ks}) | {h.n_traj} | {diff} | {base} | "
                         f"{f'{h.p_holm:.2g}' if tested else ''} | **{h.verdict}** |")
    return "\n".join(lines) + "\n"


def figure_data(rows: list[dict]) -> dict:
    """{study: [[standardised position, label, name], ...]} of every counted test (module doc); the
    position is direction x mean / half-width, 0 for an interval of width 0 around 0."""
    out = {}
    for r in rows:
        if r["judgements"] is None:
            continue
        pts = []
        for j in r["judgements"]:
            if not j.counted:
                continue
            v, half = j.verdict, (j.verdict.high - j.verdict.low) / 2
            d = v.mean - v.null
            x = 0.0 if d == 0 else (math.copysign(math.inf, d * v.direction) if half == 0 else v.direction * d / half)
            pts.append([round(x, 6) if math.isfinite(x) else x, j.label, j.name])
        out[r["name"]] = pts
    return out


def summary_figure(path=FIGURE, results_dir=None, rows: list[dict] | None = None) -> dict:
    """Draw the summary figure (module doc) to ``path``; returns its figure_data."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from .plots import set_style

    rows = summary_rows(results_dir) if rows is None else rows
    data = figure_data(rows)
    set_style()
    names = [r["name"] for r in rows]
    fig, ax = plt.subplots(figsize=(9.5, 0.55 * len(names) + 1.6))
    lim = 4.0
    ax.axvspan(-1, 1, color="0.9", zorder=0)
    colors = {vr.SUPPORTED: "#0072B2", vr.NOT_SUPPORTED: "0.45", vr.CONTRADICTED: "#D55E00"}
    rng = np.random.default_rng(0)
    for i, name in enumerate(names):
        pts = data.get(name)
        if not pts:
            ax.text(0, i, "not run yet" if pts is None else "no counted test yet", ha="center", va="center",
                    fontsize=9, color="0.4", style="italic")
            continue
        xs = np.clip([p[0] for p in pts], -lim, lim)
        ys = i + rng.uniform(-0.22, 0.22, len(pts))
        ax.scatter(xs, ys, s=18, c=[colors[p[1]] for p in pts], alpha=0.8, edgecolors="none", zorder=2)
        n_out = sum(abs(p[0]) > 1 for p in pts)
        ax.text(lim * 1.03, i, f"{n_out} of {len(pts)} exclude 0\n(chance: {vr.expected_by_chance(len(pts)):.1f})",
                va="center", fontsize=8)
    for lab, c in colors.items():
        ax.scatter([], [], c=c, s=18, label=lab)
    ax.set_yticks(range(len(names)), names)
    ax.invert_yaxis()
    ax.set_xlim(-lim, lim)
    ax.set_xlabel("direction x mean / half-width of the 95 % interval (|x| > 1: the interval excludes 0; "
                  f"clipped at +-{lim:g})")
    ax.set_title("Every counted test of the study caches: where its interval lies relative to 0")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.1), fontsize=8, ncol=3, frameon=True)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, bbox_inches="tight", metadata={"Description": json.dumps(data, sort_keys=True)})
    plt.close(fig)
    return data


def read_figure_data(path=FIGURE) -> dict:
    """The figure_data stored in a summary figure's "Description" text chunk."""
    from PIL import Image

    with Image.open(path) as im:
        text = im.text.get("Description")
    if text is None:
        raise ValueError(f"{path}: no 'Description' text chunk; regenerate it with `python -m ercref.study "
                         "--write-results`")
    return json.loads(text)


def refresh_results(readme=None, page=None, figure=FIGURE, results_dir=None) -> list[str]:
    """Rewrite the generated parts (module doc) of ``readme`` (default README.md), ``page`` (default
    docs/results.md) and ``figure`` (None: not drawn). Returns the names of the refreshed blocks."""
    readme = Path(readme) if readme is not None else REPO_ROOT / "README.md"
    page = Path(page) if page is not None else RESULTS_PAGE
    rows = summary_rows(results_dir)
    text = readme.read_text()
    if not SUMMARY_BLOCK.search(text):
        raise ValueError(f"{readme} has no <!-- results-summary --> ... <!-- /results-summary --> block")
    text = SUMMARY_BLOCK.sub(lambda m: m.group(1) + summary_table(results_dir, rows) + m.group(3), text)
    names = ["results-summary"]
    if PRIMARY_BLOCK.search(text):
        text = PRIMARY_BLOCK.sub(lambda m: m.group(1) + primary_verdicts_table(results_dir, rows) + m.group(3), text)
        names.append("primary-verdicts")
    readme.write_text(text)
    names += report.refresh_report_blocks(page, results_dir)
    if pilot.PILOT_BLOCK.search(page.read_text()):
        names += pilot.refresh_pilot_blocks(page, results_dir)
    if judge_audit.AUDIT_BLOCK.search(page.read_text()):
        names += judge_audit.refresh_audit_blocks(page, results_dir)
    if power.POWER_BLOCK.search(page.read_text()):
        names += power.refresh_power_blocks(page, results_dir)
    if replicate.REPLICATION_BLOCK.search(page.read_text()):
        names += replicate.refresh_replication_blocks(page, None, results_dir)
    if BRANCH_BLOCK.search(page.read_text()):
        from . import branch_report

        names += branch_report.refresh_readme(page, results_dir)
    if figure is not None:
        summary_figure(figure, results_dir, rows)
    return names
