"""Driving the workbench in a real browser: Debian's chromium through Playwright (never a
downloaded browser), `halo-client ui` as a real process, screenshots for CI's artifacts.

Playwright's own waiting helpers evaluate strings, which the page's Content-Security-Policy
forbids (no 'unsafe-eval'): waits here poll `page.evaluate`, which the policy allows."""

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
from typing import Any

import httpx
import numpy as np
import pytest

CHROMIUM = Path("/usr/bin/chromium")
LAUNCH_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
               "--disable-sync", "--no-first-run", "--disable-quic"]
SCREENSHOTS = Path(__file__).resolve().parents[2] / "out" / "screenshots"
VIEWPORT = {"width": 1280, "height": 800}

if not CHROMIUM.exists():  # the skip says what provides it; CI installs it (.ci/run), so there it runs
    pytest.skip("Debian's chromium is not installed at /usr/bin/chromium: `apt-get install -y chromium` "
                "(as root; .ci/run does it)", allow_module_level=True)

from playwright.sync_api import Browser, Page, Playwright, sync_playwright  # noqa: E402


@contextlib.contextmanager
def chromium(*extra: str) -> Iterator[Browser]:
    with sync_playwright() as playwright:
        browser = launch(playwright, *extra)
        try:
            yield browser
        finally:
            browser.close()


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
def workbench_process(server_url: str, tmp: Path, *, port: int = 0) -> Iterator[WorkbenchProcess]:
    """`halo-client --url SERVER ui` in a process of its own, with its settings file and
    sessions in `tmp`."""
    settings, sessions = tmp / "settings.json", tmp / "sessions"
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
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


def wait_until(page: Page, script: str, timeout: float = 15.0, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = page.evaluate(script)
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what or script}")
        time.sleep(0.03)


def open_page(browser: Browser, url: str) -> Page:
    page = browser.new_page(viewport=VIEWPORT)  # type: ignore[arg-type]
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(url)
    wait_until(page, "document.querySelectorAll('.tok').length > 0 && window.halo !== undefined", what="the page")
    page.errors = errors  # type: ignore[attr-defined]
    return page


def shot(page: Page, name: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path))
    return path


def send(page: Page, text: str, *, wait: bool = True) -> None:
    """Type a message and press Enter, as a user does; with `wait`, until the reply has ended."""
    replies = page.evaluate("document.querySelectorAll('.turn.role-assistant').length")
    box = page.get_by_role("textbox", name="Message")
    box.fill(text)
    box.press("Enter")
    if wait:
        wait_until(page, f"document.querySelectorAll('.turn.role-assistant').length > {replies} && !window.halo.busy",
                   timeout=120, what="the reply")
        time.sleep(0.2)  # the final levels update is drawn at the next frame


def heat(page: Page) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    """Positions, data-brightness and background luminance of every active token drawn."""
    rows = page.evaluate("""() => Array.from(document.querySelectorAll('.tok:not([data-pruned])'))
        .filter((el) => el.dataset.brightness !== undefined && /\\bh\\d+\\b/.test(el.className))
        .map((el) => [Number(el.dataset.pos), Number(el.dataset.brightness), getComputedStyle(el).backgroundColor])""")
    positions = np.array([r[0] for r in rows])
    brightness = np.array([r[1] for r in rows])
    luminance = np.array([relative_luminance(r[2]) for r in rows])
    return positions, brightness, luminance


def relative_luminance(css: str) -> float:
    r, g, b = (int(v) for v in re.findall(r"\d+", css)[:3])

    def channel(c: int) -> float:
        v = c / 255
        return v / 12.92 if v <= 0.04045 else float(((v + 0.055) / 1.055) ** 2.4)

    return 0.2126 * channel(r) + 0.7152 * channel(g) + 0.0722 * channel(b)


def assert_colours_order_as_brightness(page: Page) -> int:
    """A token with clearly more brightness is never drawn darker. Returns how many tokens were compared."""
    _positions, brightness, luminance = heat(page)
    assert brightness.size > 10
    order = np.argsort(brightness, kind="stable")
    b, lum = brightness[order], luminance[order]
    # for every token, every token clearly brighter (0.1 % more) has at least its luminance
    for i in range(b.size):
        brighter = b > b[i] * 1.001 + 1e-9
        assert (lum[brighter] >= lum[i] - 1e-9).all(), f"a brighter token is drawn darker than {b[i]}"
    assert np.unique(luminance).size > 3  # and the view is not flat
    return int(b.size)


def colours_by_position(page: Page) -> dict[int, str]:
    rows = page.evaluate("""() => Array.from(document.querySelectorAll('.tok:not([data-pruned])'))
        .map((el) => [Number(el.dataset.pos), getComputedStyle(el).backgroundColor, el.className])""")
    return {int(p): f"{bg} {cls}" for p, bg, cls in rows}
