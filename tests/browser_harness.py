"""Real-browser testing support: a JupyterLab or Voila server on 127.0.0.1 with a
temporary configuration, and a headless Chromium page driven by Playwright.

Every request that does not go to the local server is aborted, so the tests never touch
the network. Used by tests/test_browser.py; kept out of the package because only tests
need it.
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
