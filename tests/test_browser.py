"""Notebook 01's sliders, used the way a person uses them: JupyterLab on localhost, headless
Debian Chromium driven by Playwright's Python API (no browser download), Run All Cells, move the
beta_low slider with the keyboard, check the plot was redrawn, save docs/img/01_sliders.png.

Chromium is installed with apt-get when missing and we are root; otherwise the test fails and says
how to install it.
"""
from __future__ import annotations

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


@pytest.fixture
def lab(tmp_path, request):
    """JupyterLab serving a temporary copy of the notebook (01 unless the test is parametrized
    indirectly with another path); the repo copy is never touched."""
    notebook = getattr(request, "param", NOTEBOOK)
    root = tmp_path / "lab"
    root.mkdir()
    shutil.copy(notebook, root / notebook.name)
    # render every cell (JupyterLab 4 only renders cells near the viewport by default)
    settings = tmp_path / "settings" / "@jupyterlab" / "notebook-extension"
    settings.mkdir(parents=True)
    (settings / "tracker.jupyterlab-settings").write_text('{"windowingMode": "none"}')
    news = tmp_path / "settings" / "@jupyterlab" / "apputils-extension"
    news.mkdir(parents=True)
    (news / "notification.jupyterlab-settings").write_text('{"fetchNews": "false"}')  # no news toast on screenshots
    port, token = free_port(), secrets.token_hex(16)
    jupyter = Path(sys.executable).parent / "jupyter"
    env = dict(os.environ, ERCREF_QUICK="1", JUPYTER_RUNTIME_DIR=str(tmp_path / "runtime"))
    cmd = [str(jupyter), "lab", "--no-browser", "--ip=127.0.0.1", f"--port={port}", f"--ServerApp.token={token}",
           "--allow-root", f"--ServerApp.root_dir={root}", f"--LabApp.workspaces_dir={tmp_path / 'workspaces'}",
           f"--LabApp.user_settings_dir={tmp_path / 'settings'}"]
    log = open(tmp_path / "lab.log", "w")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=root)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            if proc.poll() is not None:
                pytest.fail(f"jupyter lab exited with {proc.returncode}:\n{(tmp_path / 'lab.log').read_text()[-3000:]}")
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
        log.close()


@pytest.mark.slow
def test_beta_slider_redraws_plot(lab):
    from playwright.sync_api import sync_playwright

    chromium = ensure_chromium()
    base, token, name = lab
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1700, "height": 1100})
            page.goto(f"{base}/lab/tree/{name}?token={token}")
            page.wait_for_selector(".jp-Notebook", timeout=90_000)
            # first open: a "Select Kernel" dialog (accept the proposed python3 kernel) -- if it shows
            try:
                page.click(".jp-Dialog .jp-mod-accept", timeout=20_000)
            except Exception:  # playwright TimeoutError: the kernel was started without asking
                pass
            page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=30_000)
            page.click(".lm-MenuBar-itemLabel:text-is('Run')")
            page.click(".lm-Menu-itemLabel:text-is('Run All Cells')")

            # Run All is done when the last cell (the summary) has printed its timing line
            page.wait_for_selector("text=notebook compute took", timeout=RUN_ALL_TIMEOUT_MS)
            interact = page.locator(".widget-interact").first
            img = interact.locator(".jp-OutputArea-output img").first
            img.wait_for(state="attached", timeout=60_000)
            interact.get_by_text("ran with beta_low=0.05").wait_for(timeout=60_000)
            src_before = img.get_attribute("src")
            assert src_before and src_before.startswith("data:image/png"), "the slider plot should be an inline PNG"

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

            SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
            interact.scroll_into_view_if_needed()
            time.sleep(0.5)
            interact.screenshot(path=str(SCREENSHOT))
            assert SCREENSHOT.stat().st_size > 10_000
        finally:
            browser.close()


@pytest.mark.slow
@pytest.mark.parametrize("lab", [NOTEBOOK_02], indirect=True)
def test_notebook_02_beta_slider_rehighlights_clipped_tokens(lab):
    """Notebook 02 in the browser: real SmolLM2 tokens; moving the ERC beta slider re-renders the
    highlighted text (a wider band clips fewer tokens). Saves docs/img/02_clipped_tokens.png."""
    from playwright.sync_api import sync_playwright

    chromium = ensure_chromium()
    base, token, name = lab
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1500, "height": 1100})
            page.goto(f"{base}/lab/tree/{name}?token={token}")
            page.wait_for_selector(".jp-Notebook", timeout=90_000)
            try:
                page.click(".jp-Dialog .jp-mod-accept", timeout=20_000)
            except Exception:
                pass
            page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=30_000)
            page.click(".lm-MenuBar-itemLabel:text-is('Run')")
            page.click(".lm-Menu-itemLabel:text-is('Run All Cells')")
            page.wait_for_selector("text=notebook wall time", timeout=RUN_ALL_TIMEOUT_MS)
            assert page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.error']").count() == 0
            # scroll to the end so that the last cells are rendered (JupyterLab windows long notebooks)
            for _ in range(6):
                page.evaluate("""() => document.querySelectorAll('.jp-WindowedPanel-outer, .jp-Notebook')
                                       .forEach(e => e.scrollTop = e.scrollHeight)""")
                time.sleep(0.5)
            page.locator(".widget-label", has_text="ERC beta").nth(1).wait_for(timeout=60_000)
            # the token view is the last interact with an "ERC beta" slider (the loss-shape one comes first)
            interact = page.locator(".widget-interact", has=page.locator(".widget-label", has_text="ERC beta")).last
            out = interact.locator(".jp-OutputArea-output", has=page.locator("span")).last
            out.wait_for(timeout=60_000)
            html_before = out.inner_html()
            assert "<span" in html_before, "the highlighted response text should be rendered"
            slider = interact.locator(".widget-slider", has=page.locator(".widget-label", has_text="ERC beta"))
            readout = slider.locator(".widget-readout")
            value_before = float(readout.inner_text())
            handle = slider.locator(".noUi-handle")
            handle.scroll_into_view_if_needed()
            handle.focus()
            for _ in range(20):  # beta 0.05 -> 0.15 in steps of 0.005
                handle.press("ArrowRight")
            value_after = float(readout.inner_text())
            assert value_after > value_before + 0.05
            deadline = time.time() + 60
            while out.inner_html() == html_before and time.time() < deadline:
                time.sleep(0.5)
            assert out.inner_html() != html_before, "moving ERC beta must re-render the highlighted tokens"
            SCREENSHOT_02.parent.mkdir(parents=True, exist_ok=True)
            interact.scroll_into_view_if_needed()
            time.sleep(0.5)
            interact.screenshot(path=str(SCREENSHOT_02))
            assert SCREENSHOT_02.stat().st_size > 10_000
        finally:
            browser.close()
