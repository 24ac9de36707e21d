"""The workbench in headless Chromium against the llama.cpp engine running the real Gemma 3 270M
(from PyPI): a model KoboldCPP v1.76 cannot load, served with its attention, drawn and inspected."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from halo_client import config
from halo_client.serving.server import ContractServer
from halo_client.testing.browser import launch, open_page, send, wait_until, workbench_process
from halo_client.testing.threaded import ServerThread
from tests.ui.browser import assert_colours_order_as_brightness, page_errors, shot

pytestmark = [pytest.mark.model, pytest.mark.process]

from playwright.sync_api import Browser, sync_playwright  # noqa: E402


@pytest.fixture(scope="module")
def gemma_server(llama_lib: Path) -> Iterator[ServerThread]:
    from halo_client.llama_cpp import LlamaCppBackend
    from halo_client.testing.gemma3_270m import gemma3_270m

    backend = LlamaCppBackend(gemma3_270m(), library=llama_lib, n_ctx=2048, n_threads=2)
    with ServerThread(lambda: ContractServer(backend, port=0)) as thread:
        yield thread
    backend.close()


def test_the_workbench_with_gemma3_on_llama_cpp(gemma_server: ServerThread, tmp_path: Path) -> None:
    config.save(config.Config().merged({"sampler": {"max_length": 24, "temperature": 0.0}}),
                tmp_path / "settings.json")
    with sync_playwright() as playwright:
        browser: Browser = launch(playwright)
        with workbench_process(gemma_server.url, tmp_path) as ui:
            page = open_page(browser, ui.url)
            errors = page_errors(page)
            assert page.inner_text("#model").startswith("gemma-3-270m")
            assert "18 layers" in page.inner_text("#shape")
            send(page, "My locker code is 4821. The lighthouse keeper counted 37 ships.")
            send(page, "What is my locker code?")
            assert_colours_order_as_brightness(page)
            shot(page, "llama-cpp-gemma3-01-reply")
            # the inspector: a generated token's full frame, 18 layers x 4 heads
            page.locator(".role-assistant .tok:not(.tpl)").nth(2).click()
            wait_until(page, "!document.getElementById('inspector').hidden", timeout=60, what="the inspector")
            assert page.locator("#overview button").count() == 18 * 4
            time.sleep(0.3)
            shot(page, "llama-cpp-gemma3-02-inspector")
            assert errors == []
        browser.close()
