"""Every notebooks/*.ipynb runs top to bottom in a fresh kernel, in quick mode (ERCREF_QUICK=1), and
every committed notebook carries the full-mode outputs of its current cells.

Execution goes through tools/nbexec.py's execute_notebook: a copy in memory (the committed file
is never written), headless (ERCREF_HEADLESS=1: teaching.interact calls its function once instead of
opening a widget, which avoids jupyter/nbclient#312's hang). The notebooks assert the numbers their
text claims, so a passing run also checks those claims. The kernel is the ``python3`` spec;
jupyter_client replaces its ``python`` argv with this interpreter (sys.executable), i.e. the venv's
python: test_kernel_is_this_interpreter checks that.

The staleness test reads the stamp `make notebooks` (python tools/nbexec.py) writes into
each notebook's metadata: the sha256 of its cells when it was executed, the mode and the wall time.
Two more checks read each committed notebook: no output shows an absolute filesystem path
(nbexec.absolute_paths: the machine it ran on is nobody's business, and the path is wrong on every
other machine), and the one time the notebook states for full mode ("full mode ... about N min",
nbexec.STATED_TIME) is within a factor 2 of the wall time its stamp records.
"""
from __future__ import annotations

import sys
from pathlib import Path

import nbformat
import pytest
from nbexec import STAMP_KEY, STATED_TIME, absolute_paths, execute_notebook, stale_reason, stated_full_time  # tools/

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
IDS = [p.name for p in NOTEBOOKS]
# Per cell, quick mode. A cell timeout (or a dead kernel) is retried twice with a fresh kernel, each
# retry printed; a cell *error* never is.
TIMEOUT_PER_CELL_S = 240
RETRIES = 2
STATED_TIME_FACTOR = 2.0     # a stated full-mode time may be off the stamped wall time by at most this factor


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


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_committed_outputs_show_no_absolute_path(path: Path):
    found = absolute_paths(nbformat.read(path, as_version=4))
    where = "; ".join(f"cell {i} (output line {ln}): {p!r}" for i, ln, p in found[:10])
    assert not found, (f"{path.name} prints {len(found)} absolute path(s): {where}. Print paths relative to the "
                       "repository (os.path.relpath(p, REPO_ROOT)) or name them ('a temporary folder'), then re-execute")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_stated_full_mode_time_is_within_2x_of_the_stamp(path: Path):
    nb = nbformat.read(path, as_version=4)
    try:
        stated, cell, line, text = stated_full_time(nb)
    except ValueError as e:
        pytest.fail(f"{path.name} {e}")
    wall = (nb.metadata.get(STAMP_KEY) or {}).get("wall_s")
    assert wall, f"{path.name}: its stamp records no wall_s: re-execute it with python tools/nbexec.py"
    factor = max(stated / wall, wall / stated)
    assert factor <= STATED_TIME_FACTOR, (
        f"{path.name} cell {cell} line {line} states {stated:.0f} s for full mode ({text!r}); its full-mode run took "
        f"{wall:.0f} s (metadata.{STAMP_KEY}.wall_s): {factor:.1f}x off, more than {STATED_TIME_FACTOR:g}x. "
        f"State about {wall / 60:.0f} min")


def _nb_with(markdown=(), outputs=()):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell(m) for m in markdown]
    if outputs:
        code = nbformat.v4.new_code_cell("x")
        code.outputs = list(outputs)
        nb.cells.append(code)
    return nb


@pytest.mark.parametrize("text, path", [
    ("caches: /work/main/data/results", "/work/main/data/results"), ("folder /tmp/ercref05-1xq", "/tmp/ercref05-1xq"),
    ("saved to '/home/u/x.png'.", "/home/u/x.png"), ("cwd=/root/.cache/x", "/root/.cache/x"), ("in /tmp", "/tmp"),
    ("C:\\Users\\me\\run", "C:\\Users\\me\\run"), ("D:/data/x", "D:/data/x"), ("~/results/x", "~/results/x"),
    ("\\\\server\\share", "\\\\server\\share"), ("see file:///srv/x.json", "file:///srv/x.json")])
def test_absolute_paths_finds_each_kind(text, path):
    for out in (nbformat.v4.new_output("stream", name="stdout", text=text),
                nbformat.v4.new_output("execute_result", data={"text/plain": "a\n" + text}),
                nbformat.v4.new_output("error", ename="E", evalue="", traceback=[text])):
        found = absolute_paths(_nb_with(outputs=[out]))
        assert [p for _, _, p in found] == [path], (out, found)
        assert found[0][0] == 0


@pytest.mark.parametrize("text", ["data/results/tiny-controls", "https://github.com/Kwai-Klear/ERC/blob/main/x.sh",
                                  "3350 GB/s, 1/2/3 and/or 3 / 4", "<span>a</span></div>", "runs/<cell>/<arm>/seed0"])
def test_absolute_paths_leaves_relative_paths_urls_and_fractions(text):
    assert absolute_paths(_nb_with(outputs=[nbformat.v4.new_output("stream", name="stdout", text=text)])) == []


def test_absolute_paths_reads_outputs_not_sources():
    nb = _nb_with(markdown=["see /tmp/x"])
    nb.cells.append(nbformat.v4.new_code_cell("print('/tmp/x')"))
    assert absolute_paths(nb) == []


def test_stated_full_time_parses_one_statement_and_refuses_none_or_two():
    nb = _nb_with(markdown=["# T", "intro\n**Time** (2 CPU cores): quick mode ~1 min; full mode takes about 2.5 min."])
    assert stated_full_time(nb) == (150.0, 1, 2, "full mode takes about 2.5 min")
    assert stated_full_time(_nb_with(markdown=["x\n\nthe full mode (25 steps)\ntakes about 2 min."]))[:3] == (120.0, 0, 3)
    assert stated_full_time(_nb_with(markdown=["Full mode: about 40 s"]))[0] == 40.0
    assert stated_full_time(_nb_with(markdown=["full mode (what the text describes) about 1 h"]))[0] == 3600.0
    with pytest.raises(ValueError, match="states no full-mode time"):
        stated_full_time(_nb_with(markdown=["full mode re-plots the cache: well under a minute"]))
    with pytest.raises(ValueError, match="states no full-mode time"):           # a full stop ends the statement
        stated_full_time(_nb_with(markdown=["Full mode re-plots. It takes about 3 min"]))
    with pytest.raises(ValueError, match="states no full-mode time"):           # so does a paragraph's end
        stated_full_time(_nb_with(markdown=["Full mode re-plots the cache\n\nabout 3 min"]))
    with pytest.raises(ValueError, match=r"2 times \(cell 0 line 1.*cell 1 line 1"):
        stated_full_time(_nb_with(markdown=["full mode about 3 min", "full mode about 4 min"]))
    assert STATED_TIME.pattern in str(pytest.raises(ValueError, stated_full_time, _nb_with(markdown=["x"])).value)
