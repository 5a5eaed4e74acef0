"""Notebook 05 (GPU paper recipe) without running its training: the structure the series asks for
(learning goals, prerequisites, time; the planner's estimate before anything heavy), every
show_source cell still resolving against the current ercref source, and the exercise's checker
telling a right answer from near-misses. The full run is tests/test_notebooks.py (quick mode)."""
from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
NB_PATH = ROOT / "notebooks" / "05_gpu_paper_recipe.ipynb"


@pytest.fixture(scope="module")
def nb():
    return nbformat.read(NB_PATH, as_version=4)


def code_cells(nb):
    return [c for c in nb.cells if c.cell_type == "code"]


def namespace() -> dict:
    import ercref
    from ercref.lm.trainer import Trainer
    from ercref.study.teaching import check_exercise, show_source, solution

    return {"ercref": ercref, "torch": torch, "Trainer": Trainer, "check_exercise": check_exercise,
            "show_source": show_source, "solution": solution}


def test_header_has_goals_prerequisites_and_time(nb):
    head = nb.cells[0]
    assert head.cell_type == "markdown"
    for part in ("What you will learn", "Prerequisites", "Time"):
        assert part in head.source, f"the first cell must say {part!r}"


def test_planner_estimate_is_printed_before_anything_heavy(nb):
    cells = code_cells(nb)
    first = next(i for i, c in enumerate(cells) if "planner_estimate(" in c.source)
    heavy = [i for i, c in enumerate(cells) if "Trainer(" in c.source or ".fit()" in c.source]
    assert heavy and first < min(heavy)
    assert first == 1, "the estimate must come in the first code cell after the imports"
    assert "print(" in cells[first].source


def test_every_equation_is_followed_by_its_source(nb):
    for i, c in enumerate(nb.cells[:-1]):
        if c.cell_type == "markdown" and "$$" in c.source:
            nxt = nb.cells[i + 1]
            assert nxt.cell_type == "code" and "show_source(" in nxt.source, f"cell {i}: an equation without its code"


def test_show_source_cells_resolve_against_the_current_source(nb):
    """A renamed line in ercref breaks the notebook's start/stop substrings: caught here in seconds."""
    shown = [c for c in code_cells(nb) if c.source.lstrip().startswith("show_source(")]
    assert len(shown) >= 8
    for c in shown:
        out = eval(c.source, namespace())  # noqa: S307 - the notebook's own one-line cells
        text = out.data if hasattr(out, "data") else out
        assert "line" in text and text.count("\n") >= 2, c.source


def test_exercise_stub_fails_and_the_reference_solution_passes_the_checker(nb):
    ex = [c for c in code_cells(nb) if "exercise" in c.metadata.get("tags", [])]
    # the reference solution comes from ercref.study.solutions (teaching.solution), never from a notebook cell
    sol = [c for c in code_cells(nb) if re.search(r"\bsolution\(\"", c.source)]
    assert len(ex) == 2 and len(sol) == 1
    ns = namespace()
    exec(ex[0].source, ns)                     # the stub
    exec(ex[1].source, ns)                     # the checker on the stub
    assert not ns["result"].passed and "not implemented" in ns["result"].message
    exec(sol[0].source, ns)                    # the cell asserts that the reference passes


@pytest.mark.parametrize("wrong", ["biased_std", "no_eps"])
def test_exercise_checker_catches_near_misses(nb, wrong):
    """The random inputs include groups with equal rewards and groups of 2: a population std or a
    missing eps (NaN for an all-equal group) must not pass."""
    ex = [c for c in code_cells(nb) if "exercise" in c.metadata.get("tags", [])]
    ns = namespace()
    exec(ex[1].source.split("result =")[0], ns)   # make_rewards only

    def mine(rewards, group_size):
        g = rewards.view(-1, group_size)
        if wrong == "biased_std":
            return ((g - g.mean(-1, keepdim=True)) / (g.std(-1, keepdim=True, unbiased=False) + 1e-6)).reshape(-1)
        return ((g - g.mean(-1, keepdim=True)) / g.std(-1, keepdim=True)).reshape(-1)

    import ercref
    from ercref.study.teaching import check_exercise

    res = check_exercise(mine, ercref.group_advantages, ns["make_rewards"], verbose=False)
    assert not res.passed
