"""tools/nbexec.py on small synthetic notebooks: the source hash, the stamp and --check, output
shrinking, and headless execution (environment, teaching.interact without widgets, named errors, retry)."""
from __future__ import annotations

import base64
import os
from pathlib import Path

import nbexec  # tools/nbexec.py (pytest pythonpath)
import nbformat
import pytest
from nbclient.exceptions import CellExecutionError
from nbexec import execute_notebook, shrink_outputs, source_hash, stale_reason, stamp
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\0" * 32).decode()


def make_nb(*sources: str, markdown: str = "# A notebook"):
    nb = new_notebook()
    nb.cells = [new_markdown_cell(markdown)] + [new_code_cell(s) for s in sources]
    return nb


def write(nb, path):
    nbformat.write(nb, str(path))
    return path


def outputs_text(cell) -> str:
    return "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream")


# ----------------------------------------------------------------------------- hash, stamp, --check
def test_source_hash_follows_the_cells_not_outputs_or_metadata():
    nb = make_nb("x = 1", "print(x)")
    h = source_hash(nb)
    same = make_nb("x = 1", "print(x)")
    same.cells[2].outputs = [new_output("stream", name="stdout", text="1\n")]
    same.cells[2].execution_count = 7
    same.cells[1].metadata["tags"] = ["solution"]
    same.metadata["ercref"] = {"anything": 1}
    assert source_hash(same) == h

    edited = make_nb("x = 2", "print(x)")
    retyped = make_nb("x = 1", "print(x)")
    retyped.cells[1] = new_markdown_cell("x = 1")
    prose = make_nb("x = 1", "print(x)", markdown="# Another title")
    swapped = make_nb("print(x)", "x = 1")
    longer = make_nb("x = 1", "print(x)", "")
    hashes = {source_hash(n) for n in (edited, retyped, prose, swapped, longer)}
    assert h not in hashes and len(hashes) == 5
    # a source stored as a list of lines (nbformat's on-disk form) hashes like the joined string
    as_list = make_nb("x = 1", "print(x)")
    as_list.cells[1].source = ["x = ", "1"]
    assert source_hash(as_list) == h


def test_stamp_and_check_round_trip(tmp_path, capsys):
    path = tmp_path / "nb.ipynb"
    nb = make_nb("x = 1")
    assert "no execution stamp" in stale_reason(nb)
    write(stamp(nb, "full", wall_s=12.34), path)
    meta = nbformat.read(path, as_version=4).metadata["ercref"]
    assert meta["source_sha256"] == source_hash(nb) and meta["mode"] == "full" and meta["wall_s"] == 12.3
    assert meta["executed"].startswith("20") and meta["git_commit"]
    assert nbexec.main(["--check", str(path)]) == 0

    nb.cells[1].source = "x = 2"      # edited after execution
    write(nb, path)
    capsys.readouterr()
    assert nbexec.main(["--check", str(path)]) == 1
    out = capsys.readouterr().out
    assert f"STALE {path}" in out and "cells changed" in out and "make notebooks" in out

    write(stamp(nb, "quick"), path)   # a quick-mode preview is not a committed full run
    assert nbexec.main(["--check", str(path)]) == 1
    assert "'quick' mode, not 'full'" in capsys.readouterr().out
    assert nbexec.main(["--check", "--quick", str(path)]) == 0
    with pytest.raises(ValueError, match="mode must be one of"):
        stamp(nb, "fast")


# ----------------------------------------------------------------------------- shrink_outputs
def test_shrink_outputs_drops_widgets_keeps_png_and_text():
    nb = make_nb("interact(f)", "plt.show()", "print(1)")
    nb.metadata["widgets"] = {"application/vnd.jupyter.widget-state+json": {"state": {"k": "v" * 1000}}}
    nb.cells[1].metadata["execution"] = {"iopub.status.busy": "2025-01-01T00:00:00Z"}
    nb.cells[1].metadata["ExecuteTime"] = {"end_time": "2025-01-01T00:00:01Z"}
    nb.cells[1].outputs = [
        new_output("display_data", data={"application/vnd.jupyter.widget-view+json": {"model_id": "abc"},
                                         "text/plain": "interactive(children=(FloatSlider(...),))"}),
        new_output("stream", name="stdout", text="a is 0.5\n"),
    ]
    nb.cells[2].outputs = [new_output("display_data", data={"image/png": PNG, "image/svg+xml": "<svg/>",
                                                            "text/plain": "<Figure>"},
                                      metadata={"needs_background": "light"})]
    nb.cells[3].outputs = [new_output("execute_result", data={"text/markdown": "**x**", "text/plain": "x"},
                                      execution_count=3)]
    shrink_outputs(nb)
    assert "widgets" not in nb.metadata
    assert nb.cells[1].outputs == [new_output("stream", name="stdout", text="a is 0.5\n")]
    assert "execution" not in nb.cells[1].metadata and "ExecuteTime" not in nb.cells[1].metadata
    fig = nb.cells[2].outputs[0]
    assert set(fig.data) == {"image/png", "text/plain"} and fig.data["image/png"] == PNG
    assert set(nb.cells[3].outputs[0].data) == {"text/markdown", "text/plain"}
    nbformat.validate(nb)


def test_shrink_outputs_refuses_a_huge_or_empty_output_naming_the_cell():
    nb = make_nb("x = 1", "print('x' * 2_000_000)")
    nb.cells[2].outputs = [new_output("stream", name="stdout", text="x" * 1_100_000)]
    with pytest.raises(ValueError, match=r"cell 2 .*print\('x' \* 2_000_000\).*1\.10 MB"):
        shrink_outputs(nb)
    nb = make_nb("Javascript('...')")
    nb.cells[1].outputs = [new_output("display_data", data={"application/javascript": "alert(1)"})]
    with pytest.raises(ValueError, match=r"cell 1 .*application/javascript"):
        shrink_outputs(nb)


def test_execute_and_write_refuses_a_notebook_edited_during_execution(tmp_path, monkeypatch):
    path = write(make_nb("x = 1"), tmp_path / "nb.ipynb")

    def fake_execute(p, quick, timeout_per_cell, retries):
        executed = nbformat.read(p, as_version=4)
        write(make_nb("x = 2"), p)    # someone saves an edit meanwhile
        return executed

    monkeypatch.setattr(nbexec, "execute_notebook", fake_execute)
    with pytest.raises(RuntimeError, match="changed on disk"):
        nbexec.execute_and_write(path, quick=True)
    assert nbformat.read(path, as_version=4).cells[1].source == "x = 2"


# ----------------------------------------------------------------------------- execution (real kernels)
ENV_CELL = "import os\nprint([os.environ.get(k) for k in ('ERCREF_HEADLESS', 'ERCREF_QUICK', 'MPLBACKEND')], os.getcwd())"
INTERACT_CELL = """import ipywidgets as w
from ipywidgets.widgets.widget import _instances
from ercref.study.teaching import interact
slider = w.FloatSlider(value=0.25, min=0, max=1, description="beta", continuous_update=False)
before = len(_instances)
def show(beta):
    print(f"beta is {beta}")
interact(show, beta=slider)
print("widgets created by interact:", len(_instances) - before)"""
FIGURE_CELL = "import matplotlib.pyplot as plt\nplt.plot([0, 1], [1, 0])\nplt.show()"


def test_execute_notebook_quick_is_headless_and_interact_opens_no_widget(tmp_path, monkeypatch):
    monkeypatch.delenv("ERCREF_HEADLESS", raising=False)
    monkeypatch.delenv("ERCREF_QUICK", raising=False)
    path = write(make_nb(ENV_CELL, INTERACT_CELL), tmp_path / "nb.ipynb")
    before = path.read_bytes()
    nb = execute_notebook(path, quick=True)
    env_line = outputs_text(nb.cells[1])
    assert env_line.startswith("['1', '1', ") and env_line.rstrip().endswith(str(tmp_path.resolve()))
    text = outputs_text(nb.cells[2])
    assert "beta is 0.25" in text and "widgets created by interact: 0" in text
    assert not [o for o in nb.cells[2].outputs if any(m.startswith("application/vnd.jupyter.widget")
                                                      for m in o.get("data", {}))]
    assert "widgets" not in shrink_outputs(nb).metadata
    assert path.read_bytes() == before, "execute_notebook must not write the file"
    assert "ERCREF_HEADLESS" not in os.environ and "ERCREF_QUICK" not in os.environ


def test_the_notebooks_temporary_folders_are_removed(tmp_path):
    cell = "import tempfile, pathlib\nd = pathlib.Path(tempfile.mkdtemp(prefix='nb-'))\n(d / 'x').write_text('1')\nprint(d)"
    nb = execute_notebook(write(make_nb(cell), tmp_path / "nb.ipynb"), quick=True)
    made = Path(outputs_text(nb.cells[1]).strip())
    assert made.name.startswith("nb-") and made.parent.name.startswith("ercref-nbexec-")
    assert not made.parent.exists(), "the kernel's TMPDIR outlived the execution"


def test_execute_notebook_full_mode_drops_quick_and_captures_figures(tmp_path, monkeypatch):
    monkeypatch.setenv("ERCREF_QUICK", "1")     # left over in the caller's shell: a full run must not see it
    monkeypatch.setenv("MPLBACKEND", "Agg")     # would make the kernel's figures invisible
    path = write(make_nb(ENV_CELL, FIGURE_CELL), tmp_path / "nb.ipynb")
    nb = execute_notebook(path, quick=False)
    assert outputs_text(nb.cells[1]).startswith("['1', None, ")
    assert any("image/png" in o.get("data", {}) for o in nb.cells[2].outputs)
    assert os.environ["ERCREF_QUICK"] == "1"


def test_cell_error_names_the_notebook_and_cell(tmp_path):
    path = write(make_nb("x = 1", "y = x / 0\nprint(y)", "print('never')"), tmp_path / "broken.ipynb")
    with pytest.raises(CellExecutionError, match=r"broken\.ipynb: cell 2 .*'y = x / 0'.*ZeroDivisionError") as info:
        execute_notebook(path, quick=True, retries=2)
    assert info.value.ename == "ZeroDivisionError"


def test_cli_writes_outputs_and_stamp_and_a_timeout_is_retried(tmp_path, capsys):
    # the first attempt hangs in cell 1 (as a lost kernel message would), the retry passes
    hang_once = ("import pathlib, time\np = pathlib.Path('attempts')\nn = int(p.read_text()) if p.exists() else 0\n"
                 "p.write_text(str(n + 1))\ntime.sleep(60 if n == 0 else 0)\nprint('attempt', n + 1)")
    path = write(make_nb(hang_once, FIGURE_CELL), tmp_path / "nb.ipynb")
    assert nbexec.main([str(path), "--quick", "--timeout", "3", "--retries", "1"]) == 0
    captured = capsys.readouterr()
    assert "RETRY nb.ipynb: cell 1 (code cell 1" in captured.err and "CellTimeoutError" in captured.err
    nb = nbformat.read(path, as_version=4)
    assert outputs_text(nb.cells[1]) == "attempt 2\n"
    assert any("image/png" in o.get("data", {}) for o in nb.cells[2].outputs)
    assert stale_reason(nb, "quick") is None and nb.metadata["ercref"]["wall_s"] > 0
    assert nbexec.main(["--check", "--quick", str(path)]) == 0
    assert nbexec.main(["--check", str(path)]) == 1


def test_quantize_png_shrinks_a_plot_and_keeps_its_pixels_close():
    import base64
    import io

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from PIL import Image

    fig, ax = plt.subplots(figsize=(8, 5), dpi=100)
    rng = np.random.default_rng(0)
    for _ in range(12):
        ax.plot(np.cumsum(rng.normal(size=400)), alpha=0.3, lw=0.8)
    ax.fill_between(range(400), -5, 5, alpha=0.2)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    b64 = base64.b64encode(buf.getvalue()).decode()
    small = nbexec.quantize_png(b64)
    assert len(small) < 0.8 * len(b64)
    a = np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB"), dtype=float)
    b = np.asarray(Image.open(io.BytesIO(base64.b64decode(small))).convert("RGB"), dtype=float)
    assert a.shape == b.shape and np.abs(a - b).mean() < 2.0       # mean error < 2 of 255 levels
    tiny = base64.b64encode(buf.getvalue()[:10]).decode()
    assert nbexec.quantize_png(tiny) == tiny                        # below min_bytes: untouched
