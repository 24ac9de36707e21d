"""Browser helpers of the end-to-end tests: the fixtures of a page on a workbench over the mock
(a module imports the ones it uses), screenshots and colour checks, on top of
halo_client.testing.browser (the process, the browser, waiting, typing). The module skips its
tests where Debian's chromium is missing, saying what provides it."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from halo_client.testing.browser import CHROMIUM, MISSING_BROWSER

SCREENSHOTS = Path(__file__).resolve().parents[2] / "out" / "screenshots"

if not CHROMIUM.exists():  # the skip says what provides it; CI installs it (.ci/run), so there it runs
    pytest.skip(MISSING_BROWSER, allow_module_level=True)

from playwright.sync_api import Browser, Locator, Page, Playwright, sync_playwright  # noqa: E402

from halo_client.testing import MockBackend, MockKoboldServer  # noqa: E402
from halo_client.testing.browser import launch, open_page, wait_until, workbench_process  # noqa: E402
from halo_client.testing.threaded import ServerThread  # noqa: E402


# fixtures named without their `_fixture` (a module imports the ones it uses, by these names)
@pytest.fixture(scope="module", name="playwright")
def playwright_fixture() -> Iterator[Playwright]:
    with sync_playwright() as playwright:
        yield playwright


@pytest.fixture(scope="module", name="browser")
def browser_fixture(playwright: Playwright) -> Iterator[Browser]:
    browser = launch(playwright)
    yield browser
    browser.close()


@pytest.fixture(name="mock")
def mock_fixture() -> Iterator[ServerThread]:
    """The mock server (strict about the chat template) on a real socket, in a thread."""
    with ServerThread(lambda: MockKoboldServer(backend=MockBackend(strict_template=True))) as thread:
        yield thread


@pytest.fixture(name="page")
def page_fixture(browser: Browser, mock: ServerThread, tmp_path: Path) -> Iterator[Page]:
    """The workbench (`halo-client ui`, its own process, settings and sessions in `tmp_path`) over
    the mock, in a page; the test fails if the page threw."""
    with workbench_process(mock.url, tmp_path) as ui:
        page = open_page(browser, ui.url)
        errors = page_errors(page)
        yield page
        assert errors == []
        page.close()


def shot(page: Page, name: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path))
    return path


def page_errors(page: Page) -> list[str]:
    """Collects the page's uncaught errors from now on (a test ends by asserting there were none)."""
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    return errors


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


def set_setting(page: Page, name: str, value: int | float | str) -> None:
    """Type `value` into the settings panel's field `name` ("pruner.max_context_tokens") as a user
    does, and wait until the UI server has applied it."""
    section, field = name.split(".")
    field_input = page.locator(f'#settings [name="{name}"]')
    if not field_input.is_visible():
        page.click("#settings-panel summary")
    field_input.fill(str(value))
    field_input.blur()  # commits it: one `change`, as when a user tabs or clicks away
    wait_until(page, f"window.halo.settings.{section}.{field} === {value!r}", what=f"the setting {name}")


def restore_with_budget_off(page: Page, item: Locator, first: int) -> None:
    """Budget off (else the next request would prune the sentence again), then the Pruned list
    item's Restore, until the token at `first` is back."""
    set_setting(page, "pruner.max_context_tokens", 0)
    item.locator("button").click()
    wait_until(page, f"!document.querySelector('.tok[data-pos=\"{first}\"]').hasAttribute('data-pruned')",
               what="the restore")


def contains_run(request: list[int], wanted: list[int]) -> bool:
    return any(request[i : i + len(wanted)] == wanted for i in range(len(request) - len(wanted) + 1))


@contextlib.contextmanager
def exported_offline(browser: Browser, page: Page, path: Path) -> Iterator[tuple[Page, list[str]]]:
    """Export the HTML snapshot with the Sessions panel's button, save it to `path`, and open it
    from file:// with the network off; yields that page and every URL it asked for."""
    with page.expect_download() as download:
        page.click("#sessions-panel summary")
        page.click("#export-html")
    download.value.save_as(path)
    context = browser.new_context(offline=True, viewport={"width": 1280, "height": 800})
    requests: list[str] = []
    context.on("request", lambda request: requests.append(request.url))
    offline = context.new_page()
    offline.goto(path.as_uri())
    try:
        yield offline, requests
    finally:
        context.close()


def colours_by_position(page: Page) -> dict[int, str]:
    """Each active token's background colour and heat class (a selection outline aside)."""
    rows = page.evaluate("""() => Array.from(document.querySelectorAll('.tok:not([data-pruned])'))
        .map((el) => [Number(el.dataset.pos), getComputedStyle(el).backgroundColor, el.className])""")
    return {int(p): f"{bg} {' '.join(c for c in cls.split() if c != 'sel')}" for p, bg, cls in rows}
