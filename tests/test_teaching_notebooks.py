"""The teaching notebooks keep the learner's code: no cell replaces an exercise's function, and no
solution sits in a (hidden or tagged) cell that "Run All" would execute or a viewer would print.
Reads the committed .ipynb files only (no kernel)."""
from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
# the notebooks with exercises; each loads its reference solutions with teaching.solution
NOTEBOOKS = [ROOT / "notebooks" / name for name in ("01_what_ppo_clip_cannot_see.ipynb", "02_anatomy_of_erc.ipynb",
                                                    "03_tiny_lm_math_rl.ipynb", "04_smollm2_on_cpu.ipynb",
                                                    "05_gpu_paper_recipe.ipynb")]


def _code(nb):
    return [(i, c.source) for i, c in enumerate(nb.cells) if c.cell_type == "code"]


def _stubs(nb) -> set[str]:
    """Names of the exercise stubs: a def whose body is `raise NotImplementedError`."""
    return {m.group(1) for _, src in _code(nb)
            for m in re.finditer(r"def (\w+)\([^)]*\):\s*\n\s+raise NotImplementedError", src)}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_no_cell_replaces_the_learners_function(path):
    nb = nbformat.read(path, as_version=4)
    for name in _stubs(nb):
        defs = [i for i, src in _code(nb) if re.search(rf"^def {name}\(", src, re.M)
                or re.search(rf"^\s*{name}\s*=", src, re.M)]
        assert len(defs) == 1, (f"{path.name}: cells {defs} define or assign {name}; only the exercise's own cell may "
                                "(the reference solution is loaded with teaching.solution)")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_no_hidden_or_solution_tagged_cell(path):
    nb = nbformat.read(path, as_version=4)
    hidden = [i for i, c in enumerate(nb.cells)
              if c.metadata.get("jupyter", {}).get("source_hidden") or "solution" in c.metadata.get("tags", [])]
    assert not hidden, f"{path.name}: cells {hidden} are hidden or tagged 'solution' (a viewer shows them in full)"


def test_the_check_finds_an_overwriting_cell():
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("def my_f(x):\n    raise NotImplementedError  # your code"),
                nbformat.v4.new_code_cell("def my_f(x):\n    return x")]
    assert _stubs(nb) == {"my_f"}
    assert [i for i, src in _code(nb) if re.search(r"^def my_f\(", src, re.M)] == [0, 1]
