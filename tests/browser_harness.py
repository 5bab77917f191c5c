"""Real-browser testing support: a JupyterLab or Voila server on 127.0.0.1 with a
temporary configuration, and a headless Chromium page driven by Playwright.

Every request that does not go to the local server is aborted, so the tests never touch
the network. Used by tests/test_browser.py, and to redo the README's picture of the
explorer (`explorer_screenshot`):

    .venv/bin/python tests/browser_harness.py screenshot docs/explorer.png

Kept out of the package because only tests and that picture need it.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
TOKEN = "duat-browser-test"


def find_chromium() -> str | None:
    env = os.environ.get("DUAT_CHROMIUM")
    for path in ([env] if env else []) + list(CHROMIUM_CANDIDATES):
        if path and Path(path).exists():
            return path
    return shutil.which("chromium")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for(url: str, proc: subprocess.Popen, log: Path, timeout: float = 90.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except urllib.error.HTTPError:  # it answers (even "not found"): it is up
            return
        except Exception:
            time.sleep(0.5)
    raise TimeoutError(f"server did not answer {url} within {timeout:.0f} s:\n{log.read_text()[-3000:]}")


@contextlib.contextmanager
def notebook_server(kind: str, notebook: Path, workdir: Path):
    """Serve a temporary copy of `notebook` with JupyterLab ('lab') or Voila ('voila').

    Yields (url of the notebook page, the copied notebook's path). The server gets its own
    config, settings and runtime folders, so nothing of the user's set-up leaks in.
    """
    if kind not in ("lab", "voila"):
        raise ValueError(f"kind must be 'lab' or 'voila', got {kind!r}")
    root = workdir / "root"
    root.mkdir(parents=True, exist_ok=True)
    copy = root / notebook.name
    shutil.copy(notebook, copy)
    cfg = Path(tempfile.mkdtemp(prefix="duat-jupyter-"))
    settings = cfg / "settings" / "@jupyterlab" / "apputils-extension"
    settings.mkdir(parents=True)
    # No news or update checks: nothing may call out, and no pop-up may cover the page.
    (settings / "notification.jupyterlab-settings").write_text(
        json.dumps({"fetchNews": "false", "checkForUpdates": False}))
    env = dict(os.environ, JUPYTER_CONFIG_DIR=str(cfg / "config"),
               JUPYTERLAB_SETTINGS_DIR=str(cfg / "settings"),
               JUPYTERLAB_WORKSPACES_DIR=str(cfg / "workspaces"),
               JUPYTER_RUNTIME_DIR=str(cfg / "runtime"),
               DUAT_PROFILE="quick", PYTHONPATH=os.pathsep.join(filter(None, [
                   str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH")])))
    port = _free_port()
    bindir = Path(sys.executable).parent
    if kind == "lab":
        cmd = [str(bindir / "jupyter"), "lab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
               f"--IdentityProvider.token={TOKEN}", f"--ServerApp.root_dir={root}"]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            cmd.append("--allow-root")
        ready = f"http://127.0.0.1:{port}/api/status?token={TOKEN}"
        url = f"http://127.0.0.1:{port}/lab/tree/{copy.name}?token={TOKEN}"
    else:
        cmd = [str(bindir / "voila"), str(copy), "--no-browser", f"--port={port}",
               "--Voila.ip=127.0.0.1", "--VoilaConfiguration.file_allowlist=['.*']"]
        ready = f"http://127.0.0.1:{port}/"
        url = ready
    log = workdir / f"{kind}-server.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        if kind == "lab":
            _wait_for(ready, proc, log)
        else:  # Voila executes the notebook before it answers the page
            _wait_for(f"http://127.0.0.1:{port}/api/kernelspecs", proc, log)
        yield url, copy
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(cfg, ignore_errors=True)


@contextlib.contextmanager
def chromium_page(executable: str, width: int = 1400, height: int = 1000):
    """A headless Chromium page that can reach 127.0.0.1 and nothing else."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            page.route("**/*", lambda route: route.continue_()
                       if route.request.url.startswith(("http://127.0.0.1", "ws://127.0.0.1"))
                       else route.abort())
            yield page
        finally:
            browser.close()


def lab_run_all(page, timeout_ms: int = 120_000) -> None:
    """In JupyterLab, wait for the kernel, then Run > Run All Cells."""
    page.wait_for_selector(".jp-Notebook", timeout=timeout_ms)
    page.wait_for_selector(".jp-StatusBar-Widget:has-text('Idle')", timeout=timeout_ms)
    page.click("li.lm-MenuBar-item:has-text('Run')")
    page.click(".lm-Menu-item:has-text('Run All Cells')")


def drag_slider(page, slider, fraction: float) -> None:
    """Drag an ipywidgets slider's handle to `fraction` of its track, like a mouse would."""
    handle = slider.locator(".noUi-handle").first
    track = slider.locator(".noUi-target").first.bounding_box()
    box = handle.bounding_box()
    y = box["y"] + box["height"] / 2
    page.mouse.move(box["x"] + box["width"] / 2, y)
    page.mouse.down()
    page.mouse.move(track["x"] + track["width"] * fraction, y, steps=12)
    page.mouse.up()


def explorer_screenshot(out: str | Path, notebook: str | Path | None = None,
                        chromium: str | None = None, width_n: int = 8, tries: int = 3,
                        viewport_width: int = 1280) -> Path:
    """The README's picture of the explorer (docs/explorer.png), taken in a real browser.

    Serves notebook 09 as a Voila page (which runs it: a first Measure at Para-Former-1-4
    and a training run), moves the width slider with the keyboard to `width_n`, presses
    Measure (again, `tries` times at most, while the page says "Too noisy"), and saves the
    page from the heading "The dashboard" down to the latency plot. The introduction and
    its Colab badge (an image from the web, which this page may not load) are left out.
    The PNG is reduced to 256 colours and carries no text metadata. Returns the path written.
    """
    from PIL import Image
    from playwright.sync_api import expect

    out = Path(out)
    root = Path(__file__).resolve().parents[1]
    notebook = Path(notebook) if notebook else root / "notebooks" / "09_explorer.ipynb"
    chromium = chromium or find_chromium()
    if chromium is None:
        raise RuntimeError("no Chromium found (Debian: apt-get install chromium; or set DUAT_CHROMIUM)")
    with tempfile.TemporaryDirectory(prefix="duat-shot-") as tmp, \
            notebook_server("voila", notebook, Path(tmp)) as (url, _), \
            chromium_page(chromium, width=viewport_width) as page:
        page.goto(url, timeout=300_000)
        page.wait_for_selector(".widget-slider", timeout=300_000)
        table = page.locator(".duat-table").first
        message = page.locator(".widget-tab .widget-html").first   # the explorer's message line
        expect(table).to_contain_text("Para-Former-1-4", timeout=60_000)
        handle = page.locator(".widget-slider:has-text('width n')").first.locator(".noUi-handle").first
        now = int(page.locator(".widget-slider:has-text('width n') .widget-readout").first.inner_text())
        handle.focus()
        for _ in range(abs(width_n - now)):
            page.keyboard.press("ArrowRight" if width_n > now else "ArrowLeft")
        expect(table).to_contain_text(f"Para-Former-1-{width_n}", timeout=30_000)
        for _ in range(tries):
            before = message.inner_text()
            page.locator("button:has-text('Measure')").first.click()
            expect(message).not_to_have_text(before, timeout=120_000)
            expect(message).to_contain_text(f"Para-Former-1-{width_n}: ", timeout=120_000)
            if "Too noisy" not in message.inner_text():
                break
        plot = page.locator(".widget-tab img.widget-image").first   # the latency plot
        page.wait_for_function("img => img.complete && img.naturalHeight > 0", arg=plot.element_handle())
        page.wait_for_timeout(1000)   # the page settles: the image drawn, the table laid out
        # Voila scrolls its cells inside a container of the window's height, so a "full page"
        # is one window: make the window tall enough instead, with nothing scrolled.
        heading = page.locator("h2:has-text('The dashboard')").first
        for _ in range(2):
            page.evaluate("document.querySelectorAll('*').forEach(e => { e.scrollTop = 0 })")
            top, box = heading.bounding_box()["y"] - 12, plot.bounding_box()
            bottom = box["y"] + box["height"] + 16
            if bottom <= page.viewport_size["height"]:
                break
            page.set_viewport_size(dict(width=viewport_width, height=int(bottom) + 100))
            page.wait_for_timeout(1000)
        shot = Path(tmp) / "page.png"
        page.screenshot(path=str(shot), clip=dict(x=0, y=top, width=viewport_width, height=bottom - top))
        image = Image.open(shot).convert("RGB").quantize(colors=256, dither=Image.Dither.NONE)
        out.parent.mkdir(parents=True, exist_ok=True)
        image.save(out, optimize=True)   # no text chunks: nothing of this machine goes in
    return out


if __name__ == "__main__":
    if len(sys.argv) not in (2, 3) or sys.argv[1] != "screenshot":
        raise SystemExit("usage: python tests/browser_harness.py screenshot [OUT.png]"
                         "  (default docs/explorer.png)")
    default = Path(__file__).resolve().parents[1] / "docs" / "explorer.png"
    target = Path(sys.argv[2]) if len(sys.argv) == 3 else default
    print("wrote", explorer_screenshot(target))
