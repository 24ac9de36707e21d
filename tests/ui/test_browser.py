"""The workbench end to end in headless Chromium against the mock server: `halo-client ui` as a
real process, the mock on a real socket (in this process, so the tests can read what it
received), every state captured to out/screenshots/."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from halo_client import config
from halo_client.testing import FaultPlan, MockBackend, MockKoboldServer
from halo_client.testing.browser import launch, open_page, send, wait_until, workbench_process
from halo_client.testing.threaded import ServerThread
from tests.ui import browser as fixtures
from tests.ui.browser import (
    assert_colours_order_as_brightness,
    colours_by_position,
    contains_run,
    exported_offline,
    restore_with_budget_off,
    shot,
)

# the fixtures these tests use (tests/ui/browser.py)
browser_fixture, mock_fixture, page_fixture, playwright_fixture = (
    fixtures.browser_fixture, fixtures.mock_fixture, fixtures.page_fixture, fixtures.playwright_fixture)

pytestmark = pytest.mark.process

from playwright.sync_api import Browser, Page, Playwright  # noqa: E402


def positions_of(page: Page, selector: str) -> list[int]:
    found: list[int] = page.evaluate(
        f"Array.from(document.querySelectorAll('{selector}')).map((el) => Number(el.dataset.pos))")
    return found


def backend(mock: ServerThread) -> MockBackend:
    assert isinstance(mock.server, MockKoboldServer)
    return mock.server.mock



def test_replies_stream_and_every_token_lights_up_as_frames_arrive(page: Page, mock: ServerThread) -> None:
    assert mock.server is not None
    mock.server.faults = FaultPlan(token_delay_s=0.06)
    send(page, "Hello there. Tell me about the context window.", wait=False)
    counts, colours = [], []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        counts.append(page.evaluate("document.querySelectorAll('.role-assistant .tok').length"))
        colours.append(page.evaluate("""Array.from(document.querySelectorAll('.role-user .tok:not(.tpl)'))
            .map((el) => getComputedStyle(el).backgroundColor).join()"""))
        if len(counts) == 8:
            shot(page, "mock-01-streaming")
        if not page.evaluate("window.halo.busy") and counts[-1] > 0:
            break
        time.sleep(0.1)
    assert len(set(counts)) >= 5, f"tokens should arrive one by one: {counts}"
    assert counts == sorted(counts)
    assert len(set(colours)) >= 3, "the earlier tokens' colours change as each frame arrives"
    time.sleep(0.3)
    assert_colours_order_as_brightness(page)
    assert page.locator(".legend-bar").is_visible() and page.inner_text("#scale-mode") == "percentile"
    assert "ranks each token's brightness" in page.inner_text("#legend-text")
    shot(page, "mock-02-reply")


def test_hover_shows_the_tokens_id_and_position(page: Page, mock: ServerThread) -> None:
    send(page, "Hover over me.")
    received = backend(mock).received[-1]
    user_token = page.locator(".role-user .tok:not(.tpl)").nth(1)
    position = int(user_token.get_attribute("data-pos") or -1)
    user_token.hover()
    wait_until(page, "!document.getElementById('tooltip').hidden", what="the tooltip")
    text = page.inner_text("#tooltip")
    assert f"position\t{position}" in text and f"token id\t{received[position]}" in text
    assert "brightness" in text and "peak attention" in text and "attention from latest" in text
    shot(page, "mock-03-tooltip")


def test_a_small_budget_prunes_pin_protects_and_restore_puts_it_back(page: Page, mock: ServerThread) -> None:
    for text in ("My sister is Marta. She lives in Porto.", "My locker code is 4821.", "I grew up in Lisbon."):
        send(page, text)
    before = backend(mock).received[-1]  # the request before any prune: index = position
    # pin the first user sentence
    first = page.locator(".role-user .tok:not(.tpl)").first
    first.click()
    page.click("#pin")
    wait_until(page, "document.querySelectorAll('.role-user .tok[data-pinned]').length > 0", what="the pin")
    pinned = positions_of(page, ".tok[data-pinned]")
    # a small budget, set in the settings panel
    page.click("#settings-panel summary")
    budget = page.get_by_label("Token budget")
    budget.fill("90")
    budget.press("Enter")
    budget.dispatch_event("change")
    wait_until(page, "document.querySelectorAll('#pruned-list li').length > 0", what="the pruned list")
    time.sleep(0.25)
    shot(page, "mock-04-pruning-flash")
    time.sleep(1.2)
    page.check("#show-pruned")
    time.sleep(0.3)
    shot(page, "mock-05-pruned-inline")
    page.uncheck("#show-pruned")
    pruned = positions_of(page, ".tok[data-pruned]")
    assert pruned and not set(pruned) & set(pinned), "pinned text is never pruned"
    item = page.locator("#pruned-list li").last
    unit_text = item.locator(".text").inner_text().split("\n")[0]
    first_position = int(item.get_attribute("data-position") or -1)
    positions = page.evaluate(f"""Array.from(document.querySelectorAll('.tok[data-pruned]'))
        .filter((el) => el.dataset.s === document.querySelector('.tok[data-pos="{first_position}"]').dataset.s)
        .map((el) => Number(el.dataset.pos))""")
    drawn = "".join(page.locator(f'.tok[data-pos="{p}"]').text_content() or "" for p in positions)
    assert drawn.strip() == unit_text.strip()
    # budget off, then Restore: the sentence is back in the page and in the next request
    restore_with_budget_off(page, item, first_position)
    shot(page, "mock-06-restored")
    assert "restored" in (page.text_content("#activity") or "")
    send(page, "Do you remember?")
    assert contains_run(backend(mock).received[-1], [before[p] for p in positions]), "restored text was not sent"


def test_settings_are_validated_and_survive_a_reload_and_a_restart(browser: Browser, mock: ServerThread,
                                                                   tmp_path: Path) -> None:
    with workbench_process(mock.url, tmp_path) as ui:
        page = open_page(browser, ui.url)
        page.click("#settings-panel summary")
        decay = page.get_by_label("Fading per new token", exact=True)
        decay.fill("5")
        decay.dispatch_event("change")
        wait_until(page, "document.querySelector('#settings .error') !== null", what="the refusal")
        assert "less than or equal to 1" in page.inner_text("#settings .error")
        shot(page, "mock-07-settings-refused")
        decay.fill("0.01")
        decay.dispatch_event("change")
        page.get_by_label("Colour scale", exact=True).select_option("log")
        wait_until(page, "window.halo.settings.view.scale === 'log'", what="the scale")
        embedder = page.get_by_label("Sentence embedder", exact=True)  # chosen here, loaded at the next recall
        assert embedder.locator("option").all_inner_texts() == ["all-MiniLM-L6-v2", "all-mpnet-base-v2",
                                                                "all-mpnet-base-v2-int8"]
        embedder.select_option("all-mpnet-base-v2")
        wait_until(page, "window.halo.settings.memory.embedder === 'all-mpnet-base-v2'", what="the embedder")
        embedder.scroll_into_view_if_needed()
        shot(page, "mock-14-embedder")
        page.reload()
        wait_until(page, "window.halo !== undefined && window.halo.settings !== null", what="the reload")
        page.click("#settings-panel summary")
        assert page.get_by_label("Fading per new token", exact=True).input_value() == "0.01"
        assert page.get_by_label("Colour scale", exact=True).input_value() == "log"
        assert page.get_by_label("Sentence embedder", exact=True).input_value() == "all-mpnet-base-v2"
        assert page.inner_text("#scale-mode") == "log"
        page.close()
    saved = config.load(ui.settings)
    assert saved.tracker.decay == 0.01 and saved.view.scale == "log" and saved.memory.embedder == "all-mpnet-base-v2"
    with workbench_process(mock.url, tmp_path) as ui:  # a new workbench process reads the file
        page = open_page(browser, ui.url)
        assert page.evaluate("window.halo.settings.tracker.decay") == 0.01
        page.close()


def test_the_html_export_opens_offline_with_the_same_colours(browser: Browser, page: Page,
                                                             tmp_path: Path) -> None:
    send(page, "Export me. With colours.")
    live = colours_by_position(page)
    with exported_offline(browser, page, tmp_path / "export.html") as (offline, requests):
        assert colours_by_position(offline) == live
        offline.locator(".role-user .tok:not(.tpl)").nth(2).hover()
        wait_until(offline, "!document.getElementById('tooltip').hidden", what="the exported tooltip")
        assert "token id" in offline.inner_text("#tooltip")
        assert all(url.startswith("file://") for url in requests), requests
        shot(offline, "mock-08-html-export")


def test_the_inspector_shows_one_tokens_attention_by_layer_and_head(page: Page) -> None:
    send(page, "Inspect this.")
    page.locator(".role-assistant .tok:not(.tpl)").nth(2).click()
    wait_until(page, "!document.getElementById('inspector').hidden", what="the inspector")
    assert page.locator("#overview button").count() == 4 * 4
    page.locator("#overview button").nth(6).click()  # layer 1, head 2
    wait_until(page, "document.getElementById('inspector-title').textContent.includes('layer 1, head 2')")
    page.check('input[name="iscale"][value="linear"]')
    wait_until(page, "document.getElementById('inspector-title').textContent.includes('linear')")
    assert page.locator("#transcript .tok.a63").count() >= 1  # the strongest column at the top of the scale
    shot(page, "mock-09-inspector")
    page.click("#inspector-close")
    assert page.locator("#transcript .tok[class*=' a']").count() == 0


def test_stop_and_the_keyboard(page: Page, mock: ServerThread) -> None:
    assert mock.server is not None
    box = page.get_by_role("textbox", name="Message")
    box.fill("First line")
    box.press("Shift+Enter")
    box.type("second line")
    assert box.input_value() == "First line\nsecond line"
    mock.server.faults = FaultPlan(token_delay_s=0.08)
    box.press("Enter")
    assert box.input_value() == ""
    wait_until(page, "document.querySelectorAll('.role-assistant .tok').length > 5", what="some tokens")
    assert page.locator("#stop").is_visible()
    page.keyboard.press("Escape")
    wait_until(page, "!window.halo.busy", what="the stop")
    assert page.locator("#stop").is_hidden()
    assert "aborted" in (page.locator("#session-name").get_attribute("title") or "")
    assert "stopped" in page.locator(".turn.role-assistant .who").last.inner_text()
    # the layout holds at 1280x800: nothing scrolls sideways, the message box is on screen
    assert page.evaluate("document.documentElement.scrollWidth") <= 1280
    box_rect = page.get_by_role("textbox", name="Message").bounding_box()
    assert box_rect is not None and box_rect["y"] + box_rect["height"] <= 800


def test_the_bar_and_the_banner_follow_the_model_server(browser: Browser, tmp_path: Path) -> None:
    thread = ServerThread(MockKoboldServer).start()
    port = thread.url.rsplit(":", 1)[1]
    with workbench_process(thread.url, tmp_path) as ui:
        page = open_page(browser, ui.url)
        assert page.inner_text("#model") == "halo-mock" and "4 layers \u00d7 4 heads" in page.inner_text("#shape")
        assert "context 4096" in page.inner_text("#ctx") and "attention on" in page.inner_text("#attn")
        thread.stop()
        wait_until(page, "!document.getElementById('banner').hidden", timeout=20, what="the banner")
        assert "Unreachable" in page.inner_text("#banner-text")
        assert page.get_attribute("#conn", "data-status") == "unreachable"
        shot(page, "mock-10-unreachable")
        with ServerThread(lambda: MockKoboldServer(port=int(port))):
            wait_until(page, "document.getElementById('conn').dataset.status === 'connected'", timeout=30)
            assert page.locator("#banner").is_hidden()
        page.close()


def test_another_site_and_a_rebinding_name_cannot_drive_it(playwright: Playwright, mock: ServerThread,
                                                          tmp_path: Path) -> None:
    browser = launch(playwright, "--host-resolver-rules=MAP rebind.test 127.0.0.1")
    with workbench_process(mock.url, tmp_path) as ui:
        # a page on another site opens a WebSocket to the workbench: the browser sends its Origin
        evil = browser.new_page()
        script = (f"<script>const s = new WebSocket('ws://127.0.0.1:{ui.port}/ws'); window.result = 'pending';"
                  "s.onopen = () => window.result = 'open'; s.onclose = () => window.result = "
                  "window.result === 'open' ? 'open' : 'refused';</script>")
        evil.route("http://evil.test/", lambda route: route.fulfill(content_type="text/html", body=script))
        evil.goto("http://evil.test/")
        assert wait_until(evil, "window.result !== 'pending' && window.result", what="the foreign socket") == "refused"
        # a rebinding name: the page loads from rebind.test, which resolves to 127.0.0.1
        response = evil.goto(f"http://rebind.test:{ui.port}/")
        assert response is not None and response.status == 403
        # and the workbench itself is untouched
        page = open_page(browser, ui.url)
        assert page.evaluate("window.halo.busy") is False
        page.close()
    browser.close()


def test_sessions_save_open_upload_and_the_other_exports(page: Page, tmp_path: Path) -> None:
    send(page, "Keep this one.")
    page.click("#sessions-panel summary")
    page.fill("#session-input", "kept")
    page.click("#save-session")
    wait_until(page, "document.getElementById('session-name').textContent === 'session: kept'", what="the save")
    wait_until(page, "document.querySelectorAll('#session-list li').length === 1", what="the list")
    with page.expect_download() as json_download:
        page.click("#export-session")
    session_file = tmp_path / "kept.json"
    json_download.value.save_as(session_file)
    with page.expect_download() as png_download:
        page.click("#export-png")
    png = tmp_path / "heat.png"
    png_download.value.save_as(png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 2000
    page.click("#new-chat")
    wait_until(page, "document.querySelectorAll('.turn').length === 1", what="the new chat")
    page.locator("#session-list li button").first.click()
    wait_until(page, "document.querySelectorAll('.turn').length === 3", what="the session")
    assert "Keep this one." in page.inner_text("#transcript")
    # a session of another model: refused, with the choice to open it anyway
    other = session_file.read_text().replace('"model_name":"halo-mock"', '"model_name":"SmolLM2-135M-Instruct"')
    assert other != session_file.read_text()
    (tmp_path / "other.json").write_text(other)
    page.click("#new-chat")
    wait_until(page, "document.querySelectorAll('.turn').length === 1", what="the new chat")
    page.set_input_files("#upload", str(tmp_path / "other.json"))
    wait_until(page, "document.getElementById('banner').dataset.kind === 'mismatch'", what="the refusal")
    assert "SmolLM2-135M-Instruct" in page.inner_text("#banner-text")
    shot(page, "mock-11-other-model")
    page.click("#banner-action")
    wait_until(page, "document.querySelectorAll('.turn').length === 3", what="opening it anyway")


def test_a_reply_cut_by_the_server_is_kept_and_a_failed_send_is_undone(page: Page, mock: ServerThread) -> None:
    """End to end through the UI server's outcomes: the page never duplicates a turn."""
    assert mock.server is not None
    send(page, "My sister is Marta. She lives in Porto.")
    box = page.get_by_role("textbox", name="Message")
    users = "document.querySelectorAll('.turn.role-user').length"
    assert page.evaluate(users) == 1
    # the connection drops mid-reply: what was written stays, marked interrupted, the box stays empty
    mock.server.faults = FaultPlan(token_delay_s=0.03, drop_before_token=6)
    send(page, "Tell me a long story about the sea.")
    mock.server.faults = FaultPlan()
    assert "interrupted" in page.locator(".turn.role-assistant .who").last.inner_text()
    assert page.locator(".turn.role-assistant").last.locator(".tok:not(.tpl)").count() >= 3
    assert "interrupted" in page.inner_text("#banner-text")
    assert box.input_value() == "" and page.evaluate(users) == 2
    shot(page, "mock-12-interrupted")
    # the connection drops before the first token: the exchange is undone, the text is back in the box
    replies = page.evaluate("document.querySelectorAll('.turn.role-assistant').length")
    mock.server.faults = FaultPlan(drop_before_token=0)
    box.fill("And what about the mountains?")
    box.press("Enter")
    wait_until(page, "!window.halo.busy && document.getElementById('message').value !== ''", timeout=60,
               what="the undone send")
    mock.server.faults = FaultPlan()
    assert box.input_value() == "And what about the mountains?"
    assert page.evaluate(users) == 2
    assert page.evaluate("document.querySelectorAll('.turn.role-assistant').length") == replies
    # sending it again adds it once
    sent_before = len(backend(mock).received)
    box.press("Enter")
    wait_until(page, f"{users} === 3 && !window.halo.busy", timeout=60, what="the resend")
    assert len(backend(mock).received) == sent_before + 1
    texts = page.evaluate("Array.from(document.querySelectorAll('.turn.role-user')).map((el) => el.innerText)")
    assert sum("mountains" in t for t in texts) == 1


def test_a_sentence_memory_keeps_through_a_prune_is_shown_as_kept_in_the_activity_log(page: Page,
                                                                                       mock: ServerThread) -> None:
    send(page, "My locker code is 4821.")
    for i in range(3):
        send(page, f"Filler message number {i}. Nothing to see here. Moving on.")
    locker = page.evaluate("""Array.from(document.querySelectorAll('.role-user .tok:not(.tpl)'))
        .filter((el) => el.closest('.turn') === document.querySelector('.turn.role-user'))
        .map((el) => Number(el.dataset.pos))""")
    # the budget is what the context holds now: the next message makes the chat prune
    active = page.evaluate("document.querySelectorAll('.tok:not([data-pruned])').length")
    page.click("#settings-panel summary")
    budget = page.get_by_label("Token budget")
    budget.fill(str(active))
    budget.dispatch_event("change")
    page.click("#settings-panel summary")
    send(page, "What is my locker code?")
    wait_until(page, "document.querySelector('#activity li[data-action=\"kept\"]') !== null", what="the kept line")
    page.click("#activity-panel summary")
    shot(page, "mock-13-kept")
    kept = [line for line in page.locator('#activity li[data-action="kept"]').all_inner_texts() if "locker" in line]
    assert len(kept) == 1 and kept[0].endswith("My locker code is 4821."), kept
    assert kept[0].startswith("kept (still in the context, matched by meaning (similarity 0.")
    assert page.locator('#activity li[data-action="pruned"]').count() > 0, "the budget should have pruned"
    assert not set(locker) & set(positions_of(page, ".tok[data-pruned]")), "the kept sentence stays in the context"
