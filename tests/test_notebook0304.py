"""Notebooks 03 (tiny-LM stability study) and 04 (SmolLM2) without training anything: the series'
structure (goals, prerequisites, time; every equation followed by ercref's own lines), every
show_source cell resolving against the current source, each exercise's checker telling the right
answer from near-misses, and the honest degradation: with an empty study cache the notebooks say
so and print the command that fills it, and a (cell, arm) pair with fewer than 5 seeds gets no
verdict. The full runs are tests/test_notebooks.py (quick mode)."""
from __future__ import annotations

import math
import re
from pathlib import Path

import nbformat
import numpy as np
import pandas as pd
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
NB03 = ROOT / "notebooks" / "03_tiny_lm_math_rl.ipynb"
NB04 = ROOT / "notebooks" / "04_smollm2_on_cpu.ipynb"


def load(path):
    return nbformat.read(path, as_version=4)


def code_cells(nb):
    return [c for c in nb.cells if c.cell_type == "code"]


def namespace() -> dict:
    import ercref
    from ercref.study import claims, stability
    from ercref.study.claims import t_quantile
    from ercref.study.teaching import check_exercise, show_source, solution

    return {"ercref": ercref, "torch": torch, "np": np, "math": math, "claims": claims, "stability": stability,
            "check_exercise": check_exercise, "show_source": show_source,
            "solution": solution, "t_quantile": t_quantile}


@pytest.mark.parametrize("path", [NB03, NB04], ids=["03", "04"])
def test_header_has_goals_prerequisites_and_time(path):
    head = load(path).cells[0]
    assert head.cell_type == "markdown"
    for part in ("What you will learn", "Prerequisites", "Time"):
        assert part in head.source, f"{path.name}: the first cell must say {part!r}"


@pytest.mark.parametrize("path", [NB03, NB04], ids=["03", "04"])
def test_every_code_cell_follows_markdown_and_equations_their_source(path):
    nb = load(path)
    for i, c in enumerate(nb.cells[:-1]):
        if c.cell_type == "markdown" and "$$" in c.source:
            nxt = nb.cells[i + 1]
            assert nxt.cell_type == "code" and "show_source(" in nxt.source, f"{path.name} cell {i}: an equation without its code"
    assert nb.cells[1].cell_type == "markdown"


@pytest.mark.parametrize("path", [NB03, NB04], ids=["03", "04"])
def test_show_source_cells_resolve_against_the_current_source(path):
    shown = [c for c in code_cells(load(path)) if c.source.lstrip().startswith("show_source(")]
    assert len(shown) >= 3
    for c in shown:
        out = eval(c.source, namespace())  # noqa: S307 - the notebook's own one-line cells
        text = out.data if hasattr(out, "data") else out
        assert "line" in text and text.count("\n") >= 2, c.source


@pytest.mark.parametrize("path", [NB03, NB04], ids=["03", "04"])
def test_exercise_stub_fails_and_the_reference_solution_passes_the_checker(path):
    nb = load(path)
    ex = [c for c in code_cells(nb) if "exercise" in c.metadata.get("tags", [])]
    # the reference solution comes from ercref.study.solutions (teaching.solution), never from a notebook cell
    sol = [c for c in code_cells(nb) if re.search(r"\bsolution\(\"", c.source)]
    assert len(ex) == 2 and len(sol) == 1
    ns = namespace()
    exec(ex[0].source, ns)
    exec(ex[1].source, ns)
    assert not ns["result"].passed and "not implemented" in ns["result"].message
    exec(sol[0].source, ns)                    # the cell asserts that the reference passes


def _checker(path, ns):
    ex = [c for c in code_cells(load(path)) if "exercise" in c.metadata.get("tags", [])]
    exec(ex[0].source, ns)
    exec(ex[1].source.split("result =")[0], ns)     # the input maker and the reference only
    return ns


@pytest.mark.parametrize("wrong", ["median_with_current", "no_history", "mean_not_median"])
def test_03_spike_checker_catches_near_misses(wrong):
    from ercref.study.teaching import check_exercise

    ns = _checker(NB03, namespace())

    def mine(grad_norms):
        history, spikes = [], 0
        for g in grad_norms.tolist():
            past = history + [g] if wrong == "median_with_current" else history
            centre = float(np.mean(past)) if (wrong == "mean_not_median" and past) else (float(np.median(past)) if past else 0)
            if (wrong == "no_history" or len(history) >= 5) and past and g > 3 * centre:
                spikes += 1
            history.append(g)
        return torch.tensor(spikes)

    assert not check_exercise(mine, ns["spikes_ref"], ns["make_norms"], verbose=False).passed


@pytest.mark.parametrize("wrong", ["population_std", "normal_quantile"])
def test_04_paired_interval_checker_catches_near_misses(wrong):
    from ercref.study.teaching import check_exercise

    ns = _checker(NB04, namespace())

    def mine(erc, base):
        d = (erc - base).double()
        n = d.numel()
        sd = float(d.std(unbiased=wrong != "population_std"))
        q = 1.959964 if wrong == "normal_quantile" else ns["t_quantile"](0.975, n - 1)
        m = float(d.mean())
        return torch.tensor([m, m - q * sd / math.sqrt(n), m + q * sd / math.sqrt(n)], dtype=torch.float64)

    assert not check_exercise(mine, ns["paired_ref"], ns["make_pairs"], verbose=False).passed


def _run_cells_until(path, marker: str, monkeypatch, tmp_path) -> tuple[dict, str]:
    """exec the code cells of ``path`` up to and including the first holding ``marker``, full mode,
    with an empty results dir; returns (namespace, printed text)."""
    import contextlib
    import io

    monkeypatch.setenv("ERCREF_RESULTS_DIR", str(tmp_path))
    monkeypatch.delenv("ERCREF_QUICK", raising=False)
    ns: dict = {"display": lambda *a, **k: None}
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        for c in code_cells(load(path)):
            src = c.source.replace("from IPython.display import HTML, display", "from IPython.display import HTML")
            src = src.replace("from IPython.display import display", "")
            exec(src, ns)
            if marker in c.source:
                break
    return ns, buf.getvalue()


def test_03_empty_cache_says_so_and_prints_the_fill_command(monkeypatch, tmp_path):
    ns, out = _run_cells_until(NB03, "HAVE_CONTROLS =", monkeypatch, tmp_path)
    assert ns["HAVE_MAP"] is False and ns["HAVE_CONTROLS"] is False
    assert "NOTHING CACHED YET" in out
    assert "python -m ercref.study tiny-stability-map --hours 2.5" in out
    assert "python -m ercref.study tiny-controls --hours 2.5" in out
    assert ns["HAVE_CAPTURES"] is False and "python -m ercref.study tiny-token-captures --hours 0.5" in out


def test_03_fewer_than_five_seeds_get_no_verdict(monkeypatch, tmp_path):
    ns, _ = _run_cells_until(NB03, "def map_table", monkeypatch, tmp_path)
    rng = np.random.default_rng(0)
    rows = [{"cell": cell, "K": 4, "lr": lr, "arm": arm, "seed": s, "entropy_volatility": float(rng.random()) + (arm == "DAPO")}
            for cell, lr, seeds in (("K4-lr0.001", 1e-3, 4), ("K4-lr0.003", 3e-3, 5))
            for arm in ("DAPO", "DAPO+ERC") for s in range(seeds)]
    summ = pd.DataFrame(rows)
    n, v = ns["paired"](summ, "K4-lr0.001", "DAPO+ERC", "DAPO", "entropy_volatility", -1)
    assert (n, v) == (4, None)
    n, v = ns["paired"](summ, "K4-lr0.003", "DAPO+ERC", "DAPO", "entropy_volatility", -1)
    assert n == 5 and v.label == "supported"           # ERC lower by ~1 in every seed
    t = ns["map_table"](summ, "DAPO+ERC", "DAPO", "entropy_volatility", -1).set_index("cell")
    assert t.loc["K4-lr0.001", "detail"] == "too few seeds (4)" and math.isnan(t.loc["K4-lr0.001", "mean"])
    assert t.loc["K4-lr0.003", "verdict"] == "supported"


def test_04_unrun_study_says_so(monkeypatch, tmp_path):
    ns, out = _run_cells_until(NB04, "HAVE_SMOL =", monkeypatch, tmp_path)
    assert ns["HAVE_SMOL"] is False
    assert "NOT RUN YET" in out and "python -m ercref.study smollm2-learns --hours 2.5" in out
