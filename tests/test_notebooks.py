"""Every notebooks/*.ipynb runs top to bottom in a fresh kernel, in quick mode (ERCREF_QUICK=1).

The notebooks assert the numbers their text claims, so a passing run also checks those claims.
The kernel is the ``python3`` spec; jupyter_client replaces its ``python`` argv with this
interpreter (sys.executable), i.e. the venv's python. test_kernel_is_this_interpreter checks that.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellTimeoutError, DeadKernelError

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
TIMEOUT_PER_CELL_S = 300


def execute(nb: nbformat.NotebookNode, cwd: Path) -> nbformat.NotebookNode:
    env_before = os.environ.get("ERCREF_QUICK")
    os.environ["ERCREF_QUICK"] = "1"  # the kernel inherits the environment of this process
    try:
        client = NotebookClient(nb, timeout=TIMEOUT_PER_CELL_S, kernel_name="python3", allow_errors=False,
                                resources={"metadata": {"path": str(cwd)}})
        client.execute()
    finally:
        if env_before is None:
            os.environ.pop("ERCREF_QUICK", None)
        else:
            os.environ["ERCREF_QUICK"] = env_before
    return nb


def test_notebooks_exist():
    assert NOTEBOOKS, "notebooks/ holds no .ipynb file"


def test_kernel_is_this_interpreter(tmp_path):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("import os, sys; print(sys.executable); print(os.environ.get('ERCREF_QUICK'))")]
    execute(nb, tmp_path)
    out = "".join(o.get("text", "") for o in nb.cells[0].outputs).split()
    assert Path(out[0]).resolve() == Path(sys.executable).resolve(), f"kernel runs {out[0]}, tests run {sys.executable}"
    assert out[1] == "1", "the kernel must see ERCREF_QUICK=1"


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs_clean(path: Path):
    # Intermittently, the jupyter client and an idle kernel both wait on a lost message (seen here
    # under load, at an ipywidgets `interact` cell, not reproducible on demand: 4 runs of the same
    # notebook in a row passed); that surfaces as a cell timeout. Up to two fresh-kernel retries,
    # each reported; a cell *error* (CellExecutionError) is never retried.
    attempts = (1, 2, 3)
    for attempt in attempts:
        nb = nbformat.read(path, as_version=4)
        try:
            execute(nb, path.parent)  # raises CellExecutionError (with the cell and traceback) on any error
            break
        except (CellTimeoutError, DeadKernelError) as e:
            if attempt == attempts[-1]:
                raise
            print(f"RETRY {path.name}: attempt 1 hit {type(e).__name__}: {str(e).splitlines()[0][:200]}")
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
    n_code = sum(c.cell_type == "code" for c in nb.cells)
    executed = [c for c in nb.cells if c.cell_type == "code" and c.get("execution_count")]
    assert len(executed) == n_code, "every code cell must have been executed"
