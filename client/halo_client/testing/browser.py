"""Driving the workbench from outside, as a user does: `halo-client ui` in a process of its own,
and Debian's chromium through Playwright. Shared by the end-to-end tests (tests/ui/) and the
workbench benchmark (bench/bench_workbench.py); Playwright comes with the `test` extra.

The browser is always the system's (`/usr/bin/chromium`, Debian's `chromium` package), never
one Playwright downloads, launched with the flags a root, offline machine needs. Playwright's own
waiting helpers evaluate strings, which the workbench's Content-Security-Policy forbids (no
'unsafe-eval'): `wait_until` polls `page.evaluate`, which the policy allows.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import httpx

from halo_client.testing.processes import stop_process

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page, Playwright

CHROMIUM: Final = Path("/usr/bin/chromium")
MISSING_BROWSER: Final = ("Debian's chromium is not installed at /usr/bin/chromium: `apt-get install -y chromium` "
                          "(as root; .ci/run does it)")
LAUNCH_ARGS: Final = ("--no-sandbox", "--disable-gpu", "--disable-background-networking",
                      "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic")
VIEWPORT: Final = {"width": 1280, "height": 800}


def launch(playwright: Playwright, *extra: str) -> Browser:
    return playwright.chromium.launch(executable_path=str(CHROMIUM), args=[*LAUNCH_ARGS, *extra])


@dataclass
class WorkbenchProcess:
    url: str
    process: subprocess.Popen[str]
    settings: Path
    sessions: Path

    @property
    def port(self) -> int:
        return int(self.url.rstrip("/").rsplit(":", 1)[1])


@contextlib.contextmanager
def workbench_process(server_url: str, directory: Path, *, port: int = 0) -> Iterator[WorkbenchProcess]:
    """`halo-client --url SERVER ui` in a process of its own, with its settings file and its
    sessions in `directory`; stopped (SIGTERM: uvicorn's graceful shutdown) on exit."""
    settings, sessions = directory / "settings.json", directory / "sessions"
    env = {**os.environ, "HALO_CONFIG": str(settings)}
    env.pop("HALO_URL", None)
    process = subprocess.Popen([sys.executable, "-m", "halo_client.cli", "--url", server_url, "ui", "--port",
                                str(port), "--sessions", str(sessions)], stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert process.stderr is not None
        line = process.stderr.readline()
        found = re.search(r"workbench on (http://\S+/)", line)
        if found is None:
            raise RuntimeError(f"halo-client ui did not start: {line}{process.stderr.read()}")
        url = found.group(1)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url, timeout=2).status_code == 200:
                    break
            time.sleep(0.1)
        yield WorkbenchProcess(url, process, settings, sessions)
    finally:
        stop_process(process)


def wait_until(page: Page, script: str, timeout: float = 15.0, what: str = "") -> Any:
    """Poll `script` in the page until it is truthy; returns its value."""
    deadline = time.monotonic() + timeout
    while True:
        value = page.evaluate(script)
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what or script}")
        time.sleep(0.03)


def open_page(browser: Browser, url: str) -> Page:
    """The workbench in a new 1280x800 page, once it has drawn the conversation."""
    page = browser.new_page(viewport=VIEWPORT)  # type: ignore[arg-type]
    page.goto(url)
    wait_until(page, "document.querySelectorAll('.tok').length > 0 && window.halo !== undefined", what="the page")
    return page


def send(page: Page, text: str, *, wait: bool = True, timeout: float = 120.0) -> None:
    """Type a message into the Message box and press Enter, as a user does; with `wait`, until
    the reply has ended and its last update is drawn."""
    replies = page.evaluate("document.querySelectorAll('.turn.role-assistant').length")
    box = page.get_by_role("textbox", name="Message")
    box.fill(text)
    box.press("Enter")
    if wait:
        wait_until(page, f"document.querySelectorAll('.turn.role-assistant').length > {replies} && !window.halo.busy",
                   timeout=timeout, what="the reply")
        time.sleep(0.2)  # the final levels update is drawn at the next animation frame
