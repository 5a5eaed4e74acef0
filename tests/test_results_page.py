"""ercref.study.results_page: the README's results summary, docs/results.md's report blocks and the
summary figure, generated from study caches (built here in tmp_path) and, for the committed caches,
tested equal to them."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
from test_study_report import _cache  # the toy study cache (tests/ is on the path)

from ercref.study import judge_audit, pilot, power, report, results_page
from ercref.study import verdict_rules as vr
from ercref.study.__main__ import main

ROOT = Path(__file__).resolve().parents[1]
TOY = (("toy", "study", "a toy study"), ("later", "branch", "a branching study not run yet"),
       (results_page.TESTBED_PENDING, "testbed", "the confirmatory study"))


def _files(tmp_path: Path) -> tuple[Path, Path]:
    readme, page = tmp_path / "README.md", tmp_path / "results.md"
    readme.write_text("# R\nkept above\n<!-- results-summary -->\nstale\n<!-- /results-summary -->\nkept below\n")
    page.write_text("# Results\nintro kept\n<!-- study-report: toy -->\nstale\n<!-- /study-report -->\nkept\n")
    return readme, page


def test_summary_row_counts_the_rules_and_marks_what_is_not_run(tmp_path, monkeypatch):
    monkeypatch.setattr(results_page, "SUMMARY_STUDIES", TOY)
    _cache(tmp_path)
    table = results_page.summary_table(tmp_path).splitlines()
    assert len(table) == 2 + 3
    toy = table[2]
    # cell A: 8 counted tests (6 supported, 2 contradicted); cell B: 4 seeds, its 5 comparisons not counted
    assert toy.startswith("| `toy` | a toy study | 8 (all exploratory) | 6 / 0 / 2 | 0.40 | 5 too few seeds | ")
    assert "contradicted: final_accuracy at A: DAPO+ERC - DAPO -0.102 [" in toy
    assert table[3] == (f"| `later` | a branching study not run yet | not run yet (no cache at `{tmp_path / 'later'}` "
                        "yet) | | | | |")
    assert table[4].startswith("| the testbed's confirmatory study | the confirmatory study | not run yet")
    # a cache being filled, every comparison below 5 seeds: no counts that change with each run
    few = [{"name": "toy", "kind": "study", "what": "w",
            "judgements": [vr.judge({0: 1.0}, {0: 2.0}, -1), vr.judge({0: 1.0, 1: 2.0}, {0: 2.0, 1: 3.0}, -1)]}]
    assert results_page.summary_table(rows=few).splitlines()[2] == \
        "| `toy` | w | no verdict yet (every comparison has fewer than 5 paired seeds) | | | | |"


def test_figure_data_positions_each_test_against_its_interval(tmp_path, monkeypatch):
    monkeypatch.setattr(results_page, "SUMMARY_STUDIES", TOY)
    _cache(tmp_path)
    rows = results_page.summary_rows(tmp_path)
    data = results_page.figure_data(rows)
    assert set(data) == {"toy"} and len(data["toy"]) == 8        # counted tests only; nothing for rows not run
    vt = report.verdict_table("toy", tmp_path)
    r = vt[(vt["measure"] == "final_accuracy") & (vt["other_arm"] == "DAPO")].iloc[0]
    x = next(p[0] for p in data["toy"] if p[2] == "final_accuracy at A: DAPO+ERC - DAPO")
    assert x == pytest.approx(r["direction"] * r["mean"] / ((r["high"] - r["low"]) / 2), abs=1e-6)
    assert x < -1                                                 # contradicted: beyond -1
    assert all((p[0] > 1) == (p[1] == vr.SUPPORTED) and (p[0] < -1) == (p[1] == vr.CONTRADICTED) for p in data["toy"])


def test_refresh_rewrites_only_the_generated_parts(tmp_path, monkeypatch):
    monkeypatch.setattr(results_page, "SUMMARY_STUDIES", TOY)
    _cache(tmp_path)
    readme, page = _files(tmp_path)
    fig = tmp_path / "img" / "summary.png"
    names = results_page.refresh_results(readme, page, fig, results_dir=tmp_path)
    assert names == ["results-summary", "toy"]
    r, p = readme.read_text(), page.read_text()
    assert r.startswith("# R\nkept above\n<!-- results-summary -->\n| study |") and r.endswith(
        "<!-- /results-summary -->\nkept below\n") and "stale" not in r
    assert p == ("# Results\nintro kept\n<!-- study-report: toy -->\n" + report.study_report("toy", tmp_path)
                 + "<!-- /study-report -->\nkept\n")
    assert results_page.read_figure_data(fig) == results_page.figure_data(results_page.summary_rows(tmp_path))
    readme.write_text("no block here\n")
    with pytest.raises(ValueError, match="has no <!-- results-summary -->"):
        results_page.refresh_results(readme, page, None, results_dir=tmp_path)


def test_cli_write_results(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(results_page, "SUMMARY_STUDIES", TOY)
    monkeypatch.setattr(results_page, "REPO_ROOT", tmp_path)
    monkeypatch.setattr(results_page, "RESULTS_PAGE", tmp_path / "results.md")
    monkeypatch.setattr(results_page, "FIGURE", tmp_path / "summary.png")
    monkeypatch.setattr(results_page.refresh_results, "__defaults__", (None, None, tmp_path / "summary.png", None))
    _cache(tmp_path)
    _files(tmp_path)
    assert main(["--write-results", "--results-dir", str(tmp_path)]) == 0
    assert capsys.readouterr().out == "refreshed: results-summary, toy\n"
    assert "| `toy` |" in (tmp_path / "README.md").read_text() and (tmp_path / "summary.png").is_file()


def test_a_figure_without_its_data_is_refused(tmp_path):
    import matplotlib.pyplot as plt

    fig, _ = plt.subplots()
    fig.savefig(tmp_path / "plain.png")
    plt.close(fig)
    with pytest.raises(ValueError, match="plain.png: no 'Description' text chunk"):
        results_page.read_figure_data(tmp_path / "plain.png")


def test_primary_verdicts_table_lists_each_primary_with_its_holm_verdict(tmp_path, monkeypatch):
    from test_branch_report import NAME, write_branch

    from ercref.study import branch_records, branch_report

    monkeypatch.setattr(results_page, "SUMMARY_STUDIES", ((NAME, "branch", "toy branching study"), *TOY))
    write_branch(tmp_path)
    _cache(tmp_path)
    table = results_page.primary_verdicts_table(tmp_path).splitlines()
    df = branch_records.load_branch(NAME, tmp_path)
    pt = branch_report.primary_table(df, df.attrs["definition"]).set_index("id")
    # the toy cache: ERC's held-out p99 is half DAPO's (H1 supported), the trained one equal (H2 not supported),
    # the matched step's held-out p99 lower than ERC's (H4 contradicted)
    assert len(table) == 2 + 4 + 2            # header, 4 primaries, the branching study and the testbed not run
    h1 = table[2]
    assert h1.startswith(f"| `{NAME}` | H1 | p99 of per-token KL(pi_old \\|\\| pi_new) on held-out contexts: "
                         "DAPO+ERC below DAPO (all K) | 5 | ")
    assert h1.endswith(f"| {pt.loc['H1', 'p_holm']:.2g} | **supported** |")
    assert f"{pt.loc['H1', 'mean']:+.3g} [{pt.loc['H1', 'low']:+.3g}, {pt.loc['H1', 'high']:+.3g}]" in h1
    assert table[3].endswith("| **not supported** |") and "on the trained tokens" in table[3]
    assert table[5].endswith("| **contradicted** |") and "below DAPO-matched-step" in table[5]
    assert "toy" not in "".join(table[6:])    # a study without primaries has no row
    assert table[6] == "| `later` | | | | | | | not run yet |"
    assert table[7].startswith("| the testbed's confirmatory study |")
    # fewer than 5 trajectories: no difference, no p, the rule's label
    (tmp_path / NAME).rename(tmp_path / "full")
    write_branch(tmp_path, seeds=(0, 1, 2))
    few = results_page.primary_verdicts_table(tmp_path).splitlines()[2]
    assert few.startswith(f"| `{NAME}` | H1 |") and few.endswith(" (all K) | 3 |  |  |  | **too few seeds (3)** |")
    # refresh writes the block only where the README has one
    readme, page = _files(tmp_path)
    readme.write_text(readme.read_text() + "<!-- primary-verdicts -->\nstale\n<!-- /primary-verdicts -->\nend\n")
    names = results_page.refresh_results(readme, page, None, results_dir=tmp_path)
    assert names[:2] == ["results-summary", "primary-verdicts"]
    assert readme.read_text().endswith("<!-- primary-verdicts -->\n" + results_page.primary_verdicts_table(tmp_path)
                                       + "<!-- /primary-verdicts -->\nend\n")


@pytest.mark.slow
def test_committed_results_equal_the_committed_caches(tmp_path):
    readme, page = (ROOT / "README.md").read_text(), results_page.RESULTS_PAGE.read_text()
    summary = results_page.SUMMARY_BLOCK.search(readme)
    assert summary, "README.md lacks the <!-- results-summary --> ... <!-- /results-summary --> block"
    rows = results_page.summary_rows()
    assert summary.group(2) == results_page.summary_table(rows=rows), \
        "README.md's results summary is not the summary of the committed caches: run `make study-report`"
    primaries = results_page.PRIMARY_BLOCK.search(readme)
    assert primaries, "README.md lacks the <!-- primary-verdicts --> ... <!-- /primary-verdicts --> block"
    assert primaries.group(2) == results_page.primary_verdicts_table(rows=rows), \
        "README.md's primary verdicts are not those of the committed caches: run `make study-report`"
    blocks = list(report.REPORT_BLOCK.finditer(page))
    assert {m.group(2) for m in blocks} >= {"tiny-stability-map", "tiny-controls", "smollm2-learns"}
    for m in blocks:
        assert m.group(3) == report.study_report(m.group(2)), (
            f"docs/results.md's report of {m.group(2)} is not the report of its cache: run `make study-report`")
    pilots = list(pilot.PILOT_BLOCK.finditer(page))
    assert {m.group(2) for m in pilots} >= {"tiny6m-pilot4", "smollm2-pilot"}
    for m in pilots:
        assert m.group(3) == pilot.pilot_report(m.group(2)), (
            f"docs/results.md's report of pilot {m.group(2)} is not the report of its cache: run `make study-report`")
    audits = list(judge_audit.AUDIT_BLOCK.finditer(page))
    assert {m.group(2) for m in audits} >= {"smollm2-pilot", "smollm2-pilot2"}
    for m in audits:
        assert m.group(3) == judge_audit.audit_report(m.group(2)), (
            f"docs/results.md's judge audit of {m.group(2)} is not that of its cache: run `make study-report`")
    powers = list(power.POWER_BLOCK.finditer(page))
    assert powers, "docs/results.md has no <!-- power-report: PILOT CELL --> block"
    for m in powers:
        assert m.group(3) == power.power_report(*m.group(2).split()), (
            f"docs/results.md's power calculation for {m.group(2)} is not that of its cache: run `make study-report`")
    stored = results_page.read_figure_data(results_page.FIGURE)
    want = results_page.figure_data(rows)
    assert stored.keys() == want.keys() and all(
        len(stored[k]) == len(want[k]) and all(a[1:] == b[1:] and (a[0] == b[0] or math.isclose(a[0], b[0], abs_tol=1e-6))
                                               for a, b in zip(stored[k], want[k])) for k in want), \
        "docs/img/results_summary.png does not show the committed caches: run `make study-report`"
    assert "](docs/results.md)" in readme and "](docs/img/results_summary.png)" in readme
