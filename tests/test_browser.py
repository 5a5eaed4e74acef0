"""Notebooks 01 and 02 in a real browser, used the way a person uses them: JupyterLab on localhost,
headless Debian Chromium driven by Playwright's Python API (no browser download), Run All Cells,
move a slider with the keyboard, check the output was redrawn, save a screenshot for the README.

Chromium is installed with apt-get when missing and we are root; otherwise the test fails and says
how to install it.

JupyterLab 4 windows long notebooks (cells far from the viewport are not attached, or are skipped
by the browser's content-visibility): lab runs with its own user-settings folder that turns
windowing off ("windowingMode": "none"), and every widget is looked up inside its own cell, which
is scrolled into view first.
"""
from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "01_what_ppo_clip_cannot_see.ipynb"
SCREENSHOT = ROOT / "docs" / "img" / "01_sliders.png"
NOTEBOOK_02 = ROOT / "notebooks" / "02_anatomy_of_erc.ipynb"
SCREENSHOT_02 = ROOT / "docs" / "img" / "02_clipped_tokens.png"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-sync"]
RUN_ALL_TIMEOUT_MS = 600_000
# JupyterLab user settings the tests run with: {plugin id: settings}
LAB_SETTINGS = {
    # attach and render every cell (the default, "contentVisibility", skips cells out of view)
    "@jupyterlab/notebook-extension:tracker": {"windowingMode": "none"},
    # no news toast on the screenshots
    "@jupyterlab/apputils-extension:notification": {"fetchNews": "false"},
}


def ensure_chromium() -> str:
    if Path(CHROMIUM).exists():
        return CHROMIUM
    if os.geteuid() != 0:
        pytest.fail(f"{CHROMIUM} is missing and this test is not root; install it with: sudo apt-get install -y chromium")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-q"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-q", "chromium"], check=True, env=env)
    if not Path(CHROMIUM).exists():
        pytest.fail(f"apt-get install chromium did not provide {CHROMIUM}")
    return CHROMIUM


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_lab_settings(settings_dir: Path) -> None:
    """LAB_SETTINGS as JupyterLab's user-settings files: <dir>/<package>/<plugin>.jupyterlab-settings."""
    for plugin_id, values in LAB_SETTINGS.items():
        package, plugin = plugin_id.split(":")
        f = settings_dir / package / f"{plugin}.jupyterlab-settings"
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(json.dumps(values))


@contextlib.contextmanager
def jupyter_lab(notebook: Path, tmp_path: Path):
    """JupyterLab serving a temporary copy of `notebook` (the repo copy is never touched), with
    LAB_SETTINGS; yields (base url, token, notebook name)."""
    root = tmp_path / "lab"
    root.mkdir()
    shutil.copy(notebook, root / notebook.name)
    write_lab_settings(tmp_path / "settings")
    port, token = free_port(), secrets.token_hex(16)
    jupyter = Path(sys.executable).parent / "jupyter"
    env = dict(os.environ, ERCREF_QUICK="1", JUPYTER_RUNTIME_DIR=str(tmp_path / "runtime"),
               JUPYTERLAB_SETTINGS_DIR=str(tmp_path / "settings"))
    cmd = [str(jupyter), "lab", "--no-browser", "--ip=127.0.0.1", f"--port={port}", f"--ServerApp.token={token}",
           "--allow-root", f"--ServerApp.root_dir={root}", f"--LabApp.workspaces_dir={tmp_path / 'workspaces'}",
           f"--LabApp.user_settings_dir={tmp_path / 'settings'}"]
    log_path = tmp_path / "lab.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=root)
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.time() + 120
            while True:
                if proc.poll() is not None:
                    pytest.fail(f"jupyter lab exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
                try:
                    with urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2) as r:
                        if r.status == 200:
                            break
                except OSError:
                    pass
                if time.time() > deadline:
                    pytest.fail("jupyter lab did not answer within 120 s")
                time.sleep(0.5)
            yield base, token, notebook.name
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


@pytest.fixture
def lab(tmp_path, request):
    """jupyter_lab() on notebook 01, or on the path the test is parametrized with indirectly."""
    with jupyter_lab(getattr(request, "param", NOTEBOOK), tmp_path) as served:
        yield served


@contextlib.contextmanager
def run_all_in_browser(lab, done_text: str, viewport: dict, tmp_path: Path):
    """Open the notebook in headless Chromium, accept the kernel, Run All Cells once the kernel is
    idle, wait until `done_text` (printed by the last cell) is in an output, check no cell raised;
    yields the page. On a failure, the page is saved to tmp_path/failure.png."""
    from playwright.sync_api import sync_playwright

    chromium = ensure_chromium()
    base, token, name = lab
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS, headless=True)
        page = browser.new_page(viewport=viewport)
        try:
            page.goto(f"{base}/lab/tree/{name}?token={token}")
            page.wait_for_selector(".jp-Notebook", timeout=90_000)
            # first open: a "Select Kernel" dialog (accept the proposed python3 kernel) -- if it shows
            try:
                page.click(".jp-Dialog .jp-mod-accept", timeout=20_000)
            except Exception:  # playwright TimeoutError: the kernel was started without asking
                pass
            page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=30_000)
            page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']", state="attached",
                                   timeout=120_000)
            page.click(".lm-MenuBar-itemLabel:text-is('Run')")
            page.click(".lm-Menu-itemLabel:text-is('Run All Cells')")
            # done: done_text in an *output* (the last cell's source holds it too, and with windowing
            # off that source is on the page from the start); or a traceback, which stops Run All
            error = ".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.error']"
            page.wait_for_selector(f".jp-OutputArea-output:has-text({json.dumps(done_text)}), {error}",
                                   state="attached", timeout=RUN_ALL_TIMEOUT_MS)
            errors = page.locator(error)
            assert errors.count() == 0, f"a cell raised:\n{errors.first.inner_text()[-3000:]}"
            yield page
        except BaseException:
            with contextlib.suppress(Exception):
                page.screenshot(path=str(tmp_path / "failure.png"))
            raise
        finally:
            browser.close()


def code_cell(page, notebook: Path, source_snippet: str):
    """The cell whose source contains source_snippet (exactly one), scrolled into view. Found by
    its index in the .ipynb (windowing is off, so the page holds every cell, in order)."""
    cells = json.loads(notebook.read_text())["cells"]
    hits = [i for i, c in enumerate(cells) if source_snippet in "".join(c["source"])]
    assert len(hits) == 1, f"{source_snippet!r} should be in exactly one cell of {notebook.name}, found {hits}"
    on_page = page.locator(".jp-Notebook .jp-Cell")
    assert on_page.count() == len(cells), "the page should hold every cell (JupyterLab windowing off)"
    cell = on_page.nth(hits[0])
    cell.scroll_into_view_if_needed()
    return cell


@pytest.mark.slow
def test_beta_slider_redraws_plot(lab, tmp_path):
    with run_all_in_browser(lab, "notebook compute took", {"width": 1700, "height": 1100}, tmp_path) as page:
        interact = code_cell(page, NOTEBOOK, "interact(explore").locator(".widget-interact")
        img = interact.locator(".jp-OutputArea-output img").first
        img.wait_for(state="attached", timeout=60_000)
        interact.get_by_text("ran with beta_low=0.05").wait_for(timeout=60_000)
        src_before = img.get_attribute("src")
        assert src_before and src_before.startswith("data:image/png"), "the slider plot should be an inline PNG"
        # the README's screenshot: at the paper's beta 0.05, before the slider moves
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        interact.scroll_into_view_if_needed()
        time.sleep(0.5)
        interact.screenshot(path=str(SCREENSHOT))
        assert SCREENSHOT.stat().st_size > 10_000

        slider = interact.locator(".widget-slider", has=page.locator(".widget-label", has_text="beta_low"))
        readout = slider.locator(".widget-readout")
        value_before = float(readout.inner_text())
        handle = slider.locator(".noUi-handle")
        handle.scroll_into_view_if_needed()
        handle.focus()
        handle.press("ArrowRight")
        value_after = float(readout.inner_text())
        assert value_after > value_before, f"ArrowRight should raise beta_low ({value_before} -> {value_after})"
        # the re-run prints its arguments after showing the new figure
        interact.get_by_text(f"ran with beta_low={value_after:.2f}").wait_for(timeout=120_000)
        src_after = interact.locator(".jp-OutputArea-output img").first.get_attribute("src")
        assert src_after and src_after.startswith("data:image/png")
        assert src_after != src_before, "moving beta_low must redraw the plot"
        assert interact.locator(".jp-OutputArea-output img").count() == 1, "the old figure must be replaced"
        assert page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.error']").count() == 0



@pytest.mark.slow
@pytest.mark.parametrize("lab", [NOTEBOOK_02], indirect=True)
def test_notebook_02_beta_slider_rehighlights_clipped_tokens(lab, tmp_path):
    """Notebook 02 in the browser: real SmolLM2 tokens; moving the ERC beta slider re-renders the
    highlighted text (a wider band clips fewer tokens). Saves docs/img/02_clipped_tokens.png at the
    slider's default, the paper's beta 0.05, before moving it."""
    with run_all_in_browser(lab, "notebook wall time", {"width": 1500, "height": 1100}, tmp_path) as page:
        # the token view's own cell (the loss-shape plot above has an "ERC beta" slider too)
        interact = code_cell(page, NOTEBOOK_02, "interact(show_clipped").locator(".widget-interact")
        slider = interact.locator(".widget-slider", has=page.locator(".widget-label", has_text="ERC beta"))
        slider.wait_for(timeout=60_000)
        out = interact.locator(".jp-OutputArea-output", has=page.locator("span")).last
        out.wait_for(timeout=60_000)
        html_before = out.inner_html()
        assert "<span" in html_before, "the highlighted response text should be rendered"
        readout = slider.locator(".widget-readout")
        value_before = float(readout.inner_text())
        assert value_before == 0.05, "the token view should open at the paper's beta 0.05"
        SCREENSHOT_02.parent.mkdir(parents=True, exist_ok=True)
        interact.scroll_into_view_if_needed()
        time.sleep(0.5)
        interact.screenshot(path=str(SCREENSHOT_02))
        assert SCREENSHOT_02.stat().st_size > 10_000
        handle = slider.locator(".noUi-handle")
        handle.scroll_into_view_if_needed()
        handle.focus()
        for _ in range(20):  # beta 0.05 -> 0.15 in steps of 0.005
            handle.press("ArrowRight")
        value_after = float(readout.inner_text())
        assert value_after > value_before + 0.05, (value_before, value_after)
        deadline = time.time() + 60
        while out.inner_html() == html_before and time.time() < deadline:
            time.sleep(0.5)
        assert out.inner_html() != html_before, "moving ERC beta must re-render the highlighted tokens"
