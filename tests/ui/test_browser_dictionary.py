"""The token dictionary in headless Chromium against the mock server: every token in a table,
sortable, filterable, linked both ways to the transcript, live while a reply streams, and only
the rows in sight in the DOM (its speed at 8,000 tokens: bench/bench_workbench.py)."""

from __future__ import annotations

import time
from typing import Any

import pytest

from halo_client.testing import FaultPlan, MockKoboldServer
from halo_client.testing.browser import send, wait_until
from halo_client.testing.threaded import ServerThread
from tests.ui import browser as fixtures
from tests.ui.browser import shot

# the fixtures these tests use (tests/ui/browser.py)
browser_fixture, mock_fixture, page_fixture, playwright_fixture = (
    fixtures.browser_fixture, fixtures.mock_fixture, fixtures.page_fixture, fixtures.playwright_fixture)

pytestmark = pytest.mark.process

from playwright.sync_api import Page  # noqa: E402

COLUMNS = ["position", "id", "text", "turn", "sentence", "state", "brightness", "peak", "from"]






def rows(page: Page) -> list[dict[str, Any]]:
    """The rows in the DOM, in order, as the user reads them."""
    found: list[dict[str, Any]] = page.evaluate("""Array.from(document.querySelectorAll('#dictionary-rows .row'))
        .filter((row) => !row.hidden)
        .map((row) => ({pos: Number(row.dataset.pos), cells: Array.from(row.children).map((c) => c.textContent),
                        selected: row.hasAttribute('data-selected'), hover: row.hasAttribute('data-hover'),
                        top: row.getBoundingClientRect().top, bottom: row.getBoundingClientRect().bottom}))""")
    return found


def cell(row: dict[str, Any], column: str) -> str:
    value: str = row["cells"][COLUMNS.index(column)]
    return value


def number(text: str) -> float:
    return float("nan") if text == "—" else float(text)


def open_dictionary(page: Page) -> None:
    page.click("#dictionary-toggle")
    wait_until(page, "document.querySelectorAll('#dictionary-rows .row:not([hidden])').length > 5", what="the rows")


def in_sight(page: Page, element: str, container: str) -> bool:
    seen: bool = page.evaluate(f"""(() => {{ const a = document.querySelector('{element}').getBoundingClientRect();
        const b = document.querySelector('{container}').getBoundingClientRect();
        return a.top >= b.top - 1 && a.bottom <= b.bottom + 1 && a.height > 0; }})()""")
    return seen


def test_the_dictionary_lists_every_token_sorts_filters_and_links_to_the_transcript(page: Page,
                                                                                    mock: ServerThread) -> None:
    assert isinstance(mock.server, MockKoboldServer)
    send(page, "My sister is Marta. She lives in Porto.")
    send(page, "My locker code is 4821. Remember the number.")
    received = mock.server.mock.received[-1]  # nothing pruned: index = position
    total = page.evaluate("window.halo.transcript.n")
    open_dictionary(page)
    assert f"{total} of {total} tokens" in page.inner_text("#dictionary-status")
    shown = rows(page)
    # only the rows in sight exist; every column, the transcript's values and the server's ids
    assert 5 < len(shown) < 40 < total
    assert [r["pos"] for r in shown] == list(range(len(shown)))
    for row in shown:
        p = row["pos"]
        span = page.locator(f'#transcript .tok[data-pos="{p}"]')
        assert cell(row, "position") == str(p) and cell(row, "id") == str(received[p])
        text = (span.text_content() or "").replace("\n", "⏎")
        assert cell(row, "text") == ("␣" * len(text) if text and not text.strip(" ") else text or "·")
        assert abs(number(cell(row, "brightness")) - float(span.get_attribute("data-brightness") or "nan")) < 1e-3
        assert cell(row, "state") in ("template", "active")
    # sort by brightness, brightest first: the first row is the brightest token of all
    page.click("#dictionary-header .c-brightness")
    wait_until(page, "document.querySelector('#dictionary-header .c-brightness').getAttribute('aria-sort') "
                     "=== 'descending'")
    values = [number(cell(r, "brightness")) for r in rows(page)]
    assert values == sorted(values, reverse=True)
    brightest = page.evaluate("Math.max(...Array.from(document.querySelectorAll('#transcript .tok'))"
                              ".map((el) => Number(el.dataset.brightness)))")
    assert abs(values[0] - brightest) < 1e-3 * brightest
    page.click("#dictionary-header .c-brightness")  # again: dimmest first
    values = [number(cell(r, "brightness")) for r in rows(page)]
    assert values == sorted(values)
    # by token id, and by text (ties by position), over every row, not only those in sight
    page.click("#dictionary-header .c-id")
    ids = [int(cell(r, "id")) for r in rows(page)]
    assert ids == sorted(ids)
    page.click("#dictionary-header .c-text")
    assert page.evaluate("""(() => { const d = window.halo.dictionary, t = window.halo.transcript;
        const keys = Array.from(d.view.subarray(0, d.count), (p) => [(t.texts[p] ?? '').trim().toLowerCase(), p]);
        return keys.length === t.n && keys.every((k, i) => i === 0 || keys[i - 1][0] < k[0]
            || (keys[i - 1][0] === k[0] && keys[i - 1][1] < k[1])); })()""")
    # filters: text, state, role
    page.fill("#dictionary-filter", "e")
    filtered = rows(page)
    assert filtered and all("e" in cell(r, "text").lower() for r in filtered)
    page.fill("#dictionary-filter", "")
    page.select_option("#dictionary-state", "template")
    assert all(cell(r, "state") == "template" for r in rows(page))
    page.select_option("#dictionary-state", "")
    page.select_option("#dictionary-role", "assistant")
    assert all(cell(r, "turn").endswith("assistant") for r in rows(page))
    page.select_option("#dictionary-role", "")
    page.click("#dictionary-header .c-position")
    # peak attention and where it came from: the tooltip's numbers
    page.locator("#dictionary-viewport").evaluate("(el) => el.scrollTop = 20 * 22")
    wait_until(page, "document.querySelector('#dictionary-rows .row').dataset.pos >= 18", what="the scroll")
    row = next(r for r in rows(page) if cell(r, "peak") != "—")
    page.locator(f'#transcript .tok[data-pos="{row["pos"]}"]').hover()
    wait_until(page, "!document.getElementById('tooltip').hidden", what="the tooltip")
    tooltip = page.inner_text("#tooltip")
    assert f"{cell(row, 'peak')} from {cell(row, 'from').split()[0]}" in tooltip, (row, tooltip)
    # the hovered token's row is marked in the table
    assert any(r["hover"] and r["pos"] == row["pos"] for r in rows(page))
    page.mouse.move(0, 0)
    # a row click: its token is marked in the transcript and scrolled into sight
    page.locator("#transcript").evaluate("(el) => el.scrollTop = 0")
    shown = rows(page)
    target = shown[len(shown) // 2]["pos"]
    page.locator(f'#dictionary-rows .row[data-pos="{target}"]').click()
    assert page.evaluate("Array.from(document.querySelectorAll('.tok[data-located]')).map((el) => "
                         "Number(el.dataset.pos))") == [target]
    assert in_sight(page, f'.tok[data-pos="{target}"]', "#transcript")
    wait_until(page, "!document.getElementById('selection-actions').hidden", what="the selection")
    shot(page, "dictionary-01-linked")
    # a token click: its row is marked and scrolled into sight
    page.locator("#dictionary-viewport").evaluate("(el) => el.scrollTop = 0")
    last = page.locator(".role-user .tok:not(.tpl)").last
    position = int(last.get_attribute("data-pos") or -1)
    last.click()
    wait_until(page, f"document.querySelector('#dictionary-rows .row[data-pos=\"{position}\"][data-selected]')",
               what="the row")
    assert in_sight(page, f'#dictionary-rows .row[data-pos="{position}"]', "#dictionary-viewport")


def test_the_rows_follow_a_streaming_reply_without_redrawing_the_table(page: Page, mock: ServerThread) -> None:
    assert mock.server is not None
    send(page, "Hello there. Tell me about the context window.")
    open_dictionary(page)
    pool = page.evaluate("document.querySelectorAll('#dictionary-rows .row').length")
    before = page.evaluate("window.halo.transcript.n")
    # count what changes in the table while a reply streams
    page.evaluate("""(() => { window.changes = { rows: 0, texts: 0 };
        new MutationObserver((records) => { for (const r of records) {
            if (r.target.id === 'dictionary-rows') window.changes.rows += r.addedNodes.length + r.removedNodes.length;
            else window.changes.texts += 1; } })
          .observe(document.getElementById('dictionary-rows'), { childList: true, subtree: true, characterData: true });
        window.brightnessSeen = new Set();
        setInterval(() => { const cell = document.querySelector('#dictionary-rows .row[data-pos="3"] .c-brightness');
                            if (cell) window.brightnessSeen.add(cell.textContent); }, 20); })()""")
    mock.server.faults = FaultPlan(token_delay_s=0.05)
    send(page, "Go on please.", wait=False)
    wait_until(page, "window.halo.busy", what="the reply")
    wait_until(page, "!window.halo.busy", timeout=60, what="the end of the reply")
    time.sleep(0.5)
    after = page.evaluate("window.halo.transcript.n")
    changes = page.evaluate("window.changes")
    updates = page.evaluate("window.halo.transcript.stats.applied")
    # the brightness of a row in sight changed as the reply streamed (not only at its end)
    assert len(page.evaluate("Array.from(window.brightnessSeen)")) >= 3
    # no row was added or removed: the same pool, re-filled
    assert changes["rows"] == 0 and page.evaluate("document.querySelectorAll('#dictionary-rows .row').length") == pool
    # at most a pool's worth of cells rewritten per update, never a row per token of the chat
    assert changes["texts"] <= updates * pool * len(COLUMNS)
    # and the new tokens are rows too
    assert f"{after} of {after} tokens" in page.inner_text("#dictionary-status") and after > before
    page.locator("#dictionary-viewport").evaluate("(el) => el.scrollTop = el.scrollHeight")
    wait_until(page, f"document.querySelector('#dictionary-rows .row[data-pos=\"{after - 1}\"]') !== null",
               what="the last row")


def test_thousands_of_tokens_keep_only_the_rows_in_sight(page: Page) -> None:
    words = " ".join("We have a new house and the sea." for _ in range(200))  # about 2,600 tokens
    send(page, words)
    total = page.evaluate("window.halo.transcript.n")
    assert total > 2500
    open_dictionary(page)
    assert page.evaluate("document.querySelectorAll('#dictionary-rows .row').length") < 40
    page.click("#dictionary-header .c-brightness")
    page.locator("#dictionary-viewport").evaluate("(el) => el.scrollTop = el.scrollHeight / 2")
    wait_until(page, "document.querySelector('#dictionary-rows .row').dataset.pos !== undefined")
    values = [number(cell(r, "brightness")) for r in rows(page)]
    assert values == sorted(values, reverse=True)
    page.fill("#dictionary-filter", "house")
    assert page.inner_text("#dictionary-status").startswith(f"200 of {total:,} tokens")
    shot(page, "dictionary-02-thousands")
