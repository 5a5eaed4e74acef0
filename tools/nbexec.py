"""Execute the notebooks headless, keep their outputs small, and stamp them so a stale output is caught.

    execute_notebook(path, quick)   runs a copy of the notebook top to bottom in a fresh python3
                                    kernel (this interpreter) in the notebook's folder, with
                                    ERCREF_HEADLESS=1 (teaching.interact then calls its function
                                    once instead of opening a widget: jupyter/nbclient#312 hangs)
                                    and, in quick mode, ERCREF_QUICK=1; returns the executed copy
    source_hash(nb)                 sha256 of the cells' types and sources (not outputs, not metadata)
    stamp(nb, mode, wall_s)         records in nb.metadata["ercref"] what was executed, how and when
    stale_reason(nb)                why a notebook's committed outputs do not belong to its cells
                                    (None when they do)
    shrink_outputs(nb)              keeps PNG figures and text, drops widget views / widget state /
                                    timing metadata; refuses any single output over 1 MB
    absolute_paths(nb)              every absolute filesystem path in the outputs (cell, line, path):
                                    a committed output must not show the machine it ran on
    stated_full_time(nb)            the notebook's own statement of its full-mode time, in seconds,
                                    with its cell and line (STATED_TIME, below)

CLI (what `make notebooks` runs; execute_and_write(path, quick) is one notebook of it):

    python tools/nbexec.py [paths ...]            full mode, writes outputs + stamp in place
    python tools/nbexec.py [paths ...] --quick    quick mode, stamped "quick" (a preview: the
                                                  staleness test accepts only "full")
    python tools/nbexec.py [paths ...] --check    verifies the stamps only; exit 1 names the stale ones

Repository tooling, not part of the ercref package (it needs nbclient and nbformat, the
"notebooks" extra); the tests import it as ``nbexec`` (pyproject's pytest pythonpath).

Without paths: every notebooks/*.ipynb. tests/test_notebooks.py runs every notebook in quick mode
through execute_notebook and checks each committed one's stamp with stale_reason, its outputs with
absolute_paths and its stated time against the stamp's wall_s with stated_full_time.

The stated time: exactly one markdown line of a notebook says how long full mode takes, as
"full mode ... about N min" (or N s, N h; "full mode" in any case, N an integer or decimal, nothing
between them but text of the same paragraph without a full stop), e.g. "**Time** (2 CPU cores): full mode takes about 3 min."
"""
from __future__ import annotations

import argparse
import base64
import copy
import datetime
import hashlib
import io
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError

from ercref.paths import REPO_ROOT
from ercref.study.teaching import HEADLESS_ENV, QUICK_ENV

STAMP_KEY = "ercref"            # nb.metadata[STAMP_KEY] holds the execution stamp
MODES = ("full", "quick")
TIMEOUT_S = {"full": 3600, "quick": 300}   # default per-cell timeout by mode
MAX_OUTPUT_BYTES = 1_000_000    # one output (a figure, a stream) larger than this is refused
WIDGET_MIME_PREFIX = "application/vnd.jupyter.widget"
MPL_INLINE = "module://matplotlib_inline.backend_inline"
RETRIED = (CellTimeoutError, DeadKernelError)   # a lost message or a dead kernel: a fresh kernel may pass
# "full mode ... about N min": the notebook's statement of its full-mode time (module docstring)
STATED_TIME = re.compile(r"full mode(?:[^.\n]|\n(?![ \t]*\n))*?\babout\s+(\d+(?:\.\d+)?) ?"
                         r"(s|sec|seconds?|min|minutes?|h|hours?)\b", re.I)
UNIT_S = {"s": 1, "sec": 1, "second": 1, "seconds": 1, "min": 60, "minute": 60, "minutes": 60,
          "h": 3600, "hour": 3600, "hours": 3600}
# Absolute filesystem paths in outputs. URLs other than file:// are removed first; then counts: a POSIX
# path of two components at least ("/tmp/x", "/home/u/") or a bare top folder of user data ("/tmp"),
# a home path ("~/x", "~user/x"), a Windows drive ("C:\\x", "C:/x") or UNC path ("\\\\server\\share"),
# a file:// URL.
_URL = re.compile(r"\b(?!file:)[A-Za-z][A-Za-z0-9+.-]*://\S*")
ABSOLUTE_PATH = re.compile(
    r"file://\S+"                                           # file:// URL
    r"|(?<![\w.~:/\\-])/[\w.@+-]+/[\w.@+/-]*"                      # POSIX: /a/..., two components at least
    r"|(?<![\w.~:/\\-])/(?:tmp|home|root|work|Users|Volumes|mnt|media|opt|srv|var|private)\b"  # a bare top folder
    r"|(?<![\w.~/\\-])~[\w.-]*/[\w.@+/-]+"                        # home: ~/a, ~user/a
    r"|(?<![\w])[A-Za-z]:[\\/][\w.@+$-]*(?:[\\/][\w.@+$-]+)*"       # Windows drive: C:\a, C:/a
    r"|(?<![\w\\])\\\\[\w.$-]+(?:\\[\w.$-]+)+")                           # UNC: \\server\share


# ----------------------------------------------------------------------------- identity of a notebook
def _source(cell) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else src


def source_hash(nb) -> str:
    """sha256 (hex) over the ordered (cell_type, source) of every cell: changes when a cell is
    added, removed, reordered or edited (markdown included), never when outputs or metadata do."""
    cells = [[c.get("cell_type", ""), _source(c)] for c in nb.cells]
    return hashlib.sha256(json.dumps(cells, ensure_ascii=False).encode("utf-8")).hexdigest()


def _git_commit() -> str:
    try:
        out = subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else "unknown"


def stamp(nb, mode: str, wall_s: float | None = None):
    """Write nb.metadata["ercref"] = {source_sha256, mode, executed (UTC, ISO 8601), git_commit
    (HEAD of the checkout the code was run from), wall_s}. Returns nb."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    nb.metadata[STAMP_KEY] = {
        "source_sha256": source_hash(nb),
        "mode": mode,
        "executed": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "git_commit": _git_commit(),
        "wall_s": None if wall_s is None else round(float(wall_s), 1),
    }
    return nb


def stale_reason(nb, mode: str = "full") -> str | None:
    """None when nb carries a stamp of its current cells made in ``mode``; else what is wrong."""
    meta = nb.metadata.get(STAMP_KEY)
    if not meta or "source_sha256" not in meta:
        return f"has no execution stamp (metadata.{STAMP_KEY}): it was never run by tools/nbexec.py"
    if meta["source_sha256"] != source_hash(nb):
        return f"its cells changed after it was executed ({meta.get('executed', '?')}): the outputs are stale"
    if meta.get("mode") != mode:
        return f"was executed in {meta.get('mode')!r} mode, not {mode!r}"
    return None


# ----------------------------------------------------------------------------- small outputs
def _describe_cell(nb, index: int | None) -> str:
    if index is None or not 0 <= index < len(nb.cells):
        return "before the first cell"
    cell = nb.cells[index]
    lines = [ln for ln in _source(cell).splitlines() if ln.strip()]
    n_code = sum(c.cell_type == "code" for c in nb.cells[:index + 1])
    which = f"code cell {n_code}, " if cell.cell_type == "code" else ""
    return f"cell {index} ({which}first line {lines[0][:80] if lines else ''!r})"


def _keep_mime(mime: str) -> bool:
    return mime == "image/png" or mime.startswith("text/")


def shrink_outputs(nb):
    """In place (returns nb): drop widget views (outputs with application/vnd.jupyter.widget-*
    data) and nb.metadata.widgets (widget state), every mime type but image/png and text/*, and
    the cells' timing metadata (metadata.execution, metadata.ExecuteTime). Raises ValueError naming
    the cell when an output is larger than 1 MB, or when an output would be left with nothing."""
    nb.metadata.pop("widgets", None)
    for index, cell in enumerate(nb.cells):
        cell.metadata.pop("execution", None)
        cell.metadata.pop("ExecuteTime", None)
        if cell.cell_type != "code":
            continue
        kept = []
        for out in cell.get("outputs", []):
            data = out.get("data")
            if data is not None:
                if any(m.startswith(WIDGET_MIME_PREFIX) for m in data):
                    continue  # a widget view: its text/plain is only the widget's repr
                dropped = sorted(m for m in data if not _keep_mime(m))
                for m in dropped:
                    del data[m]
                if not data:
                    raise ValueError(f"{_describe_cell(nb, index)} displays only {dropped}; shrink_outputs keeps "
                                     "image/png and text/*: display a PNG figure or text instead")
                if "image/png" in data:
                    data["image/png"] = quantize_png(data["image/png"])
            size = len(json.dumps(out))
            if size > MAX_OUTPUT_BYTES:
                raise ValueError(f"{_describe_cell(nb, index)} has an output of {size / 1e6:.2f} MB (limit "
                                 f"{MAX_OUTPUT_BYTES / 1e6:.0f} MB): lower the figure's size or dpi, or print less")
            kept.append(out)
        cell.outputs = kept
    return nb


def quantize_png(b64: str, min_bytes: int = 40_000) -> str:
    """A base64 PNG larger than ``min_bytes`` re-encoded with a 256-colour palette (Pillow's
    median cut: plots have few colours, so it looks the same at ~1/3 of the size); smaller ones,
    and any the palette would not shrink, unchanged."""
    raw = base64.b64decode(b64)
    if len(raw) < min_bytes:
        return b64
    from PIL import Image  # matplotlib's own dependency
    img = Image.open(io.BytesIO(raw)).convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT)
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    if buf.tell() >= len(raw):
        return b64
    return base64.b64encode(buf.getvalue()).decode("ascii")


# ----------------------------------------------------------------------------- what outputs and text say
def _output_texts(out) -> list[str]:
    """The text of one output: a stream's text, every text/* mime's data, an error's value and traceback."""
    texts = []
    if out.get("output_type") == "stream":
        texts.append(out.get("text", ""))
    for mime, data in (out.get("data") or {}).items():
        if mime.startswith("text/"):
            texts.append("".join(data) if isinstance(data, list) else str(data))
    if out.get("output_type") == "error":
        texts += [str(out.get("evalue", "")), *map(str, out.get("traceback", []))]
    return [t if isinstance(t, str) else "".join(t) for t in texts]


def absolute_paths(nb) -> list[tuple[int, int, str]]:
    """(cell index, line number from 1 within that output's text, the path) for every absolute
    filesystem path (ABSOLUTE_PATH) in the code cells' outputs; [] when there is none."""
    found = []
    for index, cell in enumerate(nb.cells):
        if cell.get("cell_type") != "code":
            continue
        for out in cell.get("outputs", []):
            for text in _output_texts(out):
                for lineno, line in enumerate(text.splitlines(), 1):
                    for m in ABSOLUTE_PATH.finditer(_URL.sub(" ", line)):
                        found.append((index, lineno, m.group(0).rstrip(".,;:)'\"")))
    return found


def stated_full_time(nb) -> tuple[float, int, int, str]:
    """(seconds, cell index, line number from 1 in that cell where it starts, the statement) of the
    notebook's one statement of its full-mode time (STATED_TIME in a markdown cell; it may wrap onto the
    next line of the same paragraph). ValueError when it states none, or more
    than one, naming where."""
    hits = []
    for index, cell in enumerate(nb.cells):
        if cell.get("cell_type") != "markdown":
            continue
        text = _source(cell)
        for m in STATED_TIME.finditer(text):
            hits.append((float(m.group(1)) * UNIT_S[m.group(2).lower()], index, text.count("\n", 0, m.start()) + 1,
                         " ".join(m.group(0).split())))
    if not hits:
        raise ValueError("states no full-mode time: add one markdown line matching 'full mode ... about N min' "
                         f"(tools/nbexec.py STATED_TIME: {STATED_TIME.pattern})")
    if len(hits) > 1:
        where = "; ".join(f"cell {i} line {j}: {ln!r}" for _, i, j, ln in hits)
        raise ValueError(f"states its full-mode time {len(hits)} times ({where}): keep exactly one")
    return hits[0]


# ----------------------------------------------------------------------------- execution
def kernel_env(quick: bool) -> dict[str, str]:
    """The kernel's environment: this process's, plus ERCREF_HEADLESS=1, plus ERCREF_QUICK=1 in
    quick mode (removed in full mode, so a stamp "full" is a full run), and MPLBACKEND removed so
    ipykernel's inline backend captures figures as PNG. os.environ itself is not changed."""
    env = dict(os.environ)
    env[HEADLESS_ENV] = "1"
    if quick:
        env[QUICK_ENV] = "1"
    else:
        env.pop(QUICK_ENV, None)
    if env.get("MPLBACKEND") not in (None, MPL_INLINE):
        env.pop("MPLBACKEND")
    return env


def execute_notebook(path, quick: bool, timeout_per_cell: float | None = None, retries: int = 2,
                     kernel_name: str = "python3"):
    """Execute a copy of the notebook at ``path`` (the file is not written) in a fresh kernel,
    cwd = the notebook's folder, environment = kernel_env(quick) with TMPDIR a fresh folder removed
    afterwards (what the notebook puts in temporary folders does not pile up); returns the executed
    NotebookNode.

    ``timeout_per_cell``: seconds (default TIMEOUT_S[mode]). A cell timeout or a dead kernel is
    retried up to ``retries`` times with a fresh kernel (each retry is printed to stderr); a cell
    error is never retried: it raises CellExecutionError whose message starts with the notebook and
    the cell (index, code-cell number, first line), followed by the traceback."""
    path = Path(path)
    if retries < 0:
        raise ValueError(f"retries must be >= 0, got {retries}")
    timeout = TIMEOUT_S["quick" if quick else "full"] if timeout_per_cell is None else timeout_per_cell
    if timeout <= 0:
        raise ValueError(f"timeout_per_cell must be > 0 seconds, got {timeout}")
    original = nbformat.read(path, as_version=4)
    for attempt in range(retries + 1):
        nb = copy.deepcopy(original)
        current: dict[str, int | None] = {"index": None}

        def on_cell_start(cell, cell_index):
            current["index"] = cell_index

        # store_widget_state stays on: nbclient's Output-widget emulation needs it (shrink_outputs drops it)
        client = NotebookClient(nb, timeout=math.ceil(timeout), kernel_name=kernel_name, allow_errors=False,
                                record_timing=False, on_cell_start=on_cell_start,
                                resources={"metadata": {"path": str(path.parent.resolve())}})
        try:
            with tempfile.TemporaryDirectory(prefix="ercref-nbexec-") as scratch:
                # the notebook's temporary folders (demo runs, throw-away caches) go here and are removed
                client.execute(env={**kernel_env(quick), "TMPDIR": scratch})
            return nb
        except CellExecutionError as e:
            where = f"{path.name}: {_describe_cell(nb, current['index'])} raised {e.ename}: {e.evalue}"
            raise CellExecutionError(f"{where}\n{e.traceback}", e.ename, e.evalue) from e
        except RETRIED as e:
            where = f"{path.name}: {_describe_cell(nb, current['index'])}: {type(e).__name__}"
            if attempt == retries:
                raise type(e)(f"{where} (attempt {attempt + 1} of {retries + 1}, per-cell timeout {timeout} s)\n{e}") from e
            first = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
            print(f"RETRY {where} ({first}); attempt {attempt + 2} of {retries + 1} with a fresh kernel",
                  file=sys.stderr, flush=True)
    raise AssertionError("unreachable")  # pragma: no cover


def _write_atomic(nb, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    nbformat.write(nb, str(tmp))
    os.replace(tmp, path)


def execute_and_write(path, quick: bool = False, timeout_per_cell: float | None = None, retries: int = 2) -> float:
    """Execute the notebook at ``path``, shrink its outputs, stamp it and write it back in place
    (refused if its cells changed on disk meanwhile). Returns the wall time in seconds."""
    path = Path(path)
    t0 = time.perf_counter()
    nb = execute_notebook(path, quick, timeout_per_cell, retries)
    wall = time.perf_counter() - t0
    shrink_outputs(nb)
    stamp(nb, "quick" if quick else "full", wall)
    if source_hash(nbformat.read(path, as_version=4)) != nb.metadata[STAMP_KEY]["source_sha256"]:
        raise RuntimeError(f"{path} changed on disk while it was executed; not written: run it again")
    _write_atomic(nb, path)
    return wall


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python tools/nbexec.py",
                                     description="Execute notebooks headless and commit their outputs with a stamp.")
    parser.add_argument("paths", nargs="*", type=Path, help="notebooks (default: notebooks/*.ipynb)")
    parser.add_argument("--quick", action="store_true", help="quick mode (ERCREF_QUICK=1), stamped 'quick'")
    parser.add_argument("--check", action="store_true", help="only verify the stamps; exit 1 naming stale notebooks")
    parser.add_argument("--timeout", type=float, default=None, help="per-cell timeout in seconds "
                        f"(default {TIMEOUT_S['full']} full, {TIMEOUT_S['quick']} quick)")
    parser.add_argument("--retries", type=int, default=2, help="fresh-kernel retries on a cell timeout (default 2)")
    args = parser.parse_args(argv)
    paths = args.paths or sorted((REPO_ROOT / "notebooks").glob("*.ipynb"))
    if not paths:
        parser.error("no notebooks given and none in notebooks/")
    missing = [str(p) for p in paths if not Path(p).is_file()]
    if missing:
        parser.error(f"not a file: {', '.join(missing)}")
    mode = "quick" if args.quick else "full"

    if args.check:
        stale = [(p, r) for p in paths if (r := stale_reason(nbformat.read(p, as_version=4), mode))]
        for p, reason in stale:
            print(f"STALE {p}: {reason}")
        if stale:
            print(f"{len(stale)} of {len(paths)} notebook(s) stale: run `make notebooks` "
                  "(python tools/nbexec.py) and commit the result")
            return 1
        print(f"{len(paths)} notebook(s) carry {mode}-mode outputs of their current cells")
        return 0

    failed = []
    for p in paths:
        print(f"executing {p} ({mode} mode) ...", flush=True)
        try:
            wall = execute_and_write(p, args.quick, args.timeout, args.retries)
        except (CellExecutionError, CellTimeoutError, DeadKernelError, RuntimeError, ValueError) as e:
            failed.append(p)
            print(f"FAILED {p}:\n{e}", file=sys.stderr, flush=True)
            continue
        print(f"wrote {p}: {wall:.1f} s, {Path(p).stat().st_size / 1e3:.0f} kB", flush=True)
    if failed:
        print(f"{len(failed)} of {len(paths)} notebook(s) failed (not written): {', '.join(map(str, failed))}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
