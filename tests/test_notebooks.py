"""Every notebooks/*.ipynb runs top to bottom in a fresh kernel, in quick mode (ERCREF_QUICK=1), and
every committed notebook carries the full-mode outputs of its current cells.

Execution goes through tools/nbexec.py's execute_notebook: a copy in memory (the committed file
is never written), headless (ERCREF_HEADLESS=1: teaching.interact calls its function once instead of
opening a widget, which avoids jupyter/nbclient#312's hang). The notebooks assert the numbers their
text claims, so a passing run also checks those claims. The kernel is the ``python3`` spec;
jupyter_client replaces its ``python`` argv with this interpreter (sys.executable), i.e. the venv's
python: test_kernel_is_this_interpreter checks that.

The staleness test reads the stamp `make notebooks` (python tools/nbexec.py) writes into
each notebook's metadata: the sha256 of its cells when it was executed, and the mode.
"""
from __future__ import annotations

import sys
from pathlib import Path

import nbformat
import pytest
from nbexec import STAMP_KEY, execute_notebook, stale_reason  # tools/nbexec.py (pytest pythonpath)

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
IDS = [p.name for p in NOTEBOOKS]
# Per cell, quick mode. A cell timeout (or a dead kernel) is retried twice with a fresh kernel, each
# retry printed; a cell *error* never is.
TIMEOUT_PER_CELL_S = 240
RETRIES = 2


def test_notebooks_exist():
    assert NOTEBOOKS, "notebooks/ holds no .ipynb file"


def test_kernel_is_this_interpreter(tmp_path):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("import os, sys\nprint(sys.executable)\n"
                                          "print(os.environ.get('ERCREF_QUICK'), os.environ.get('ERCREF_HEADLESS'))")]
    path = tmp_path / "kernel.ipynb"
    nbformat.write(nb, str(path))
    nb = execute_notebook(path, quick=True, timeout_per_cell=60)
    out = "".join(o.get("text", "") for o in nb.cells[0].outputs).split()
    assert Path(out[0]).resolve() == Path(sys.executable).resolve(), f"kernel runs {out[0]}, tests run {sys.executable}"
    assert out[1:] == ["1", "1"], "the kernel must see ERCREF_QUICK=1 and ERCREF_HEADLESS=1"


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_notebook_runs_clean(path: Path):
    before = path.read_bytes()
    # raises CellExecutionError naming the notebook and the cell, with the traceback, on any error
    nb = execute_notebook(path, quick=True, timeout_per_cell=TIMEOUT_PER_CELL_S, retries=RETRIES)
    assert path.read_bytes() == before, f"quick mode must not write {path.name}"
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
    code = [c for c in nb.cells if c.cell_type == "code" and c.source.strip()]
    executed = [c for c in code if c.get("execution_count")]
    assert len(executed) == len(code), "every code cell must have been executed"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_committed_outputs_match_the_cells(path: Path):
    nb = nbformat.read(path, as_version=4)
    reason = stale_reason(nb, mode="full")
    fix = ("run `make notebooks` (python tools/nbexec.py notebooks/*.ipynb: full mode, writes the "
           "outputs and metadata.ercref) and commit the notebooks")
    assert reason is None, f"{path.name} {reason}: {fix}"
    images = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert images, (f"{path.name} has no figure in its committed outputs (stamp {nb.metadata[STAMP_KEY]}): "
                    f"a learner browsing the repository would see none; {fix}")
