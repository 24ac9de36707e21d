"""The workbench end to end in headless Chromium against the reference server running the real
SmolLM2-135M-Instruct: what the mock cannot show (real attention, a real tokenizer with
multi-token words) and the screenshots in README."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from halo_client import config
from halo_client.serving.backend import ForwardResult
from halo_client.serving.server import ContractServer
from halo_client.testing.browser import launch, open_page, send, wait_until, workbench_process
from halo_client.testing.threaded import ServerThread
from tests.ui.browser import (
    assert_colours_order_as_brightness,
    colours_by_position,
    contains_run,
    exported_offline,
    page_errors,
    restore_with_budget_off,
    shot,
)

pytestmark = [pytest.mark.model, pytest.mark.process]

from playwright.sync_api import Browser, Page, sync_playwright  # noqa: E402

DOCS = Path(__file__).resolve().parents[2] / "docs"
#: HALO_UPDATE_DOCS=1 also writes README's screenshots (docs/workbench-*.png); a plain test
#: run leaves tracked files alone
UPDATE_DOCS = os.environ.get("HALO_UPDATE_DOCS") == "1"


class Recording:
    """The reference backend, keeping every request's input_ids (as MockBackend.received does)."""

    def __init__(self) -> None:
        from halo_client.reference import ReferenceBackend

        self.backend = ReferenceBackend.load_default(n_ctx=2048)
        self.received: list[list[int]] = []

    def __getattr__(self, name: str) -> object:
        return getattr(self.backend, name)

    def prefill(self, input_ids: Sequence[int], want_attention: bool) -> ForwardResult:
        self.received.append(list(input_ids))
        return self.backend.prefill(input_ids, want_attention)


def shot_for_readme(page: Page, name: str, readme_image: str) -> None:
    """A screenshot to out/screenshots/, and with HALO_UPDATE_DOCS=1 the same view to docs/."""
    shot(page, name)
    if UPDATE_DOCS:
        page.screenshot(path=str(DOCS / readme_image))


@pytest.fixture(scope="module")
def smollm2() -> Iterator[tuple[ServerThread, Recording]]:
    recording = Recording()
    with ServerThread(lambda: ContractServer(recording, port=0)) as thread:  # type: ignore[arg-type]
        yield thread, recording


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        browser = launch(playwright)
        yield browser
        browser.close()


def test_the_workbench_with_smollm2(browser: Browser, smollm2: tuple[ServerThread, Recording],
                                    tmp_path: Path) -> None:
    server, recording = smollm2
    config.save(config.Config().merged({"sampler": {"max_length": 40, "temperature": 0.0}}),
                tmp_path / "settings.json")
    with workbench_process(server.url, tmp_path) as ui:
        page = open_page(browser, ui.url)
        errors = page_errors(page)
        assert page.inner_text("#model").startswith("SmolLM2") and "30 layers" in page.inner_text("#shape")
        send(page, "My sister's name is Marta and she lives in Porto. My locker code is 4821.")
        send(page, "What is my locker code? Answer briefly.")
        assert_colours_order_as_brightness(page)
        shot(page, "smollm2-01-reply")
        # hover: the id and position are the server's own
        token = page.locator(".role-user .tok:not(.tpl)").nth(4)
        position = int(token.get_attribute("data-pos") or -1)
        token.hover()
        wait_until(page, "!document.getElementById('tooltip').hidden", what="the tooltip")
        tooltip = page.inner_text("#tooltip")
        assert f"position\t{position}" in tooltip
        assert f"token id\t{recording.received[-1][position]}" in tooltip
        shot_for_readme(page, "smollm2-02-tooltip", "workbench-tooltip.png")
        # the inspector: a generated token's full frame (30 layers x 9 heads)
        page.mouse.move(0, 0)
        page.locator(".role-assistant .tok:not(.tpl)").nth(3).click()
        wait_until(page, "!document.getElementById('inspector').hidden", timeout=60, what="the inspector")
        assert page.locator("#overview button").count() == 30 * 9
        time.sleep(0.3)
        shot(page, "smollm2-03-inspector")
        page.click("#inspector-close")
        # a small budget prunes; Restore (budget off first) puts the sentence back into the next request
        page.click("#settings-panel summary")
        budget = page.get_by_label("Token budget")
        budget.fill("100")
        budget.dispatch_event("change")
        wait_until(page, "document.querySelectorAll('#pruned-list li').length > 0", what="pruning")
        time.sleep(0.3)
        shot(page, "smollm2-04-pruning")
        time.sleep(1.2)  # the flash has faded
        page.click("#settings-panel summary")
        page.check("#show-pruned")
        time.sleep(0.3)
        shot_for_readme(page, "smollm2-05-pruned-inline", "workbench-pruning.png")
        page.uncheck("#show-pruned")
        page.click("#settings-panel summary")
        item = page.locator("#pruned-list li").last
        first = int(item.get_attribute("data-position") or -1)
        sentence = page.evaluate(f"document.querySelector('.tok[data-pos=\"{first}\"]').dataset.s")
        positions = page.evaluate(f"""Array.from(document.querySelectorAll('.tok[data-s="{sentence}"]'))
            .map((el) => Number(el.dataset.pos))""")
        before = next(r for r in recording.received if len(r) > max(positions))  # no prune yet: index = position
        wanted = [before[p] for p in positions]
        restore_with_budget_off(page, item, first)
        send(page, "Thanks.")
        assert contains_run(recording.received[-1], wanted)
        # the token dictionary, sorted by brightness, a row picked: its token marked in the transcript
        page.evaluate("document.getElementById('settings-panel').open = false")
        page.click("#dictionary-toggle")
        wait_until(page, "document.querySelectorAll('#dictionary-rows .row:not([hidden])').length > 5",
                   what="the table")
        page.select_option("#dictionary-role", "user")
        page.click("#dictionary-header .c-brightness")
        page.locator("#dictionary-rows .row").nth(2).click()
        wait_until(page, "document.querySelector('.tok[data-located]') !== null", what="the located token")
        time.sleep(0.3)
        shot_for_readme(page, "smollm2-07-dictionary", "workbench-dictionary.png")
        page.click("#dictionary-toggle")
        # the settings panel, as a user reads it
        page.evaluate("document.getElementById('settings-panel').open = true")
        page.locator("#side").evaluate("(el) => el.scrollTop = document.getElementById('settings-panel').offsetTop")
        time.sleep(0.2)
        shot(page, "smollm2-08-settings")
        page.evaluate("document.getElementById('settings-panel').open = false")
        # the HTML export, offline, in the same colours
        live = colours_by_position(page)
        with exported_offline(browser, page, tmp_path / "export.html") as (offline, requests):
            assert colours_by_position(offline) == live
            assert all(url.startswith("file://") for url in requests), requests
            shot(offline, "smollm2-06-html-export")
        assert errors == []
