"""The workbench page in headless Chromium against the mock server: what a user met in issue 21
(Restore, the over-budget note, the Pruned list and empty turns, the settings' words, the
inspector, the PNG export, a failed or interrupted send). Each test failed on the page before."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path
from typing import Any

import pytest

from halo_client.testing import FaultPlan
from halo_client.testing.browser import send, wait_until
from halo_client.testing.threaded import ServerThread
from tests.ui import browser as fixtures
from tests.ui.browser import set_setting, shot

# the fixtures these tests use (tests/ui/browser.py)
browser_fixture, mock_fixture, page_fixture, playwright_fixture = (
    fixtures.browser_fixture, fixtures.mock_fixture, fixtures.page_fixture, fixtures.playwright_fixture)

pytestmark = pytest.mark.process

from playwright.sync_api import Page  # noqa: E402


def rect(page: Page, selector: str) -> dict[str, float]:
    box: dict[str, float] = page.evaluate(f"""(() => {{ const r = document.querySelector({json.dumps(selector)})
        .getBoundingClientRect(); return {{left: r.left, top: r.top, right: r.right, bottom: r.bottom}}; }})()""")
    return box


def overlaps(a: dict[str, float], b: dict[str, float]) -> bool:
    return a["left"] < b["right"] and b["left"] < a["right"] and a["top"] < b["bottom"] and b["top"] < a["bottom"]


def active_count(page: Page) -> int:
    count: int = page.evaluate("window.halo.transcript.activeCount")
    return count


# ------------------------------------------------------------------------- item 2: Restore


def test_restore_buttons_work_after_a_reply_that_pruned(page: Page) -> None:
    send(page, "My sister is Marta. She lives in Porto.")
    send(page, "My locker code is 4821.")
    # a budget the conversation fits now, and the next exchange does not: the reply prunes
    set_setting(page, "pruner.max_context_tokens", active_count(page) + 5)
    send(page, "I grew up in Lisbon.")
    wait_until(page, "document.querySelectorAll('#pruned-list li').length > 0", what="a prune during the reply")
    buttons = page.locator("#pruned-list button")
    assert buttons.count() > 0
    assert all(buttons.nth(i).is_enabled() for i in range(buttons.count())), "Restore stays disabled after the reply"
    item = page.locator("#pruned-list li").first
    first = int(item.get_attribute("data-position") or -1)
    set_setting(page, "pruner.max_context_tokens", 0)
    item.locator("button").click()
    wait_until(page, f"!document.querySelector('.tok[data-pos=\"{first}\"]').hasAttribute('data-pruned')",
               what="the restore")


# ------------------------------------------------------------------------- item 9: over budget


def over_budget_shown(page: Page) -> bool:
    shown: bool = page.evaluate("""(() => {
        const visible = (el) => el !== null && !el.hidden && el.offsetParent !== null;
        const note = document.getElementById('budget-note'), banner = document.getElementById('banner');
        return (visible(note) && /budget/.test(note.textContent))
            || (visible(banner) && /over the budget/.test(banner.textContent)); })()""")
    return shown


def test_the_over_budget_warning_lasts_exactly_as_long_as_the_chat_is_over_its_budget(page: Page) -> None:
    for text in ("Hello there.", "One more thing.", "And another."):
        send(page, text)
    set_setting(page, "pruner.max_context_tokens", 30)  # only protected text is left, and it is more than 30
    wait_until(page, "window.halo.transcript.activeCount > 30 && document.querySelectorAll('#pruned-list li').length",
               what="the prune")
    wait_until(page, "document.getElementById('budget-fill').hasAttribute('data-over')", what="the budget bar")
    assert over_budget_shown(page)
    shot(page, "page-01-over-budget")
    # once the count is under the budget (here: a larger budget), nothing says it is over
    set_setting(page, "pruner.max_context_tokens", active_count(page) + 40)
    wait_until(page, "!document.getElementById('budget-fill').hasAttribute('data-over')", what="the budget bar")
    assert not over_budget_shown(page)
    send(page, "Still fine?")
    assert not over_budget_shown(page)


# ------------------------------------------------------------------------- item 10: pruned items


def visible_empty_turns(page: Page) -> list[int]:
    """Turns drawn as a box with no visible text in it."""
    found: list[int] = page.evaluate("""Array.from(document.querySelectorAll('#transcript .turn'))
        .filter((turn) => getComputedStyle(turn).display !== 'none')
        .filter((turn) => !Array.from(turn.querySelectorAll('.tok:not(.tpl)'))
            .some((tok) => getComputedStyle(tok).display !== 'none' && tok.textContent.trim()))
        .map((turn) => Number(turn.dataset.turn))""")
    return found


def test_template_pieces_and_blank_lines_are_not_pruned_items_and_emptied_turns_go(page: Page) -> None:
    send(page, "Hello there.\n\nI like the sea.\n\nThe end.")
    send(page, "One more thing.")
    send(page, "And another.")
    set_setting(page, "pruner.max_context_tokens", 30)
    wait_until(page, "document.querySelectorAll('#pruned-list li').length > 5", what="the prune")
    page.click("#activity-panel summary")
    activity = page.inner_text("#activity")
    assert "<|im_start|>" not in activity and "<|im_end|>" not in activity, activity
    assert not re.search(r"\b1 tokens\b", activity)
    items = page.locator("#pruned-list li .text")
    texts = [items.nth(i).inner_text().split("\n")[0].strip() for i in range(items.count())]
    assert texts and all(t and t != "(template)" and "<|im_start|>" not in t for t in texts), texts
    listed = page.inner_text("#pruned-list")
    assert "token" in listed and not re.search(r"\b1 tokens\b", listed)
    # the messages pruned to nothing are not left as empty USER / ASSISTANT boxes
    assert visible_empty_turns(page) == []
    shot(page, "page-02-emptied-turns-hidden")
    # and shown struck through with "show pruned"
    page.check("#show-pruned")
    wait_until(page, "document.getElementById('transcript').classList.contains('show-pruned')")
    hidden_turns = page.evaluate("""Array.from(document.querySelectorAll('#transcript .turn'))
        .filter((turn) => getComputedStyle(turn).display === 'none').length""")
    assert hidden_turns == 0
    # one token is "1 token"
    words = page.evaluate("import('/static/pruned.js').then((m) => [m.tokens(1), m.tokens(2), m.tokens(4466)])")
    assert words == ["1 token", "2 tokens", "4,466 tokens"]


def test_hundreds_of_pruned_sentences_do_not_push_the_other_panels_off_screen(page: Page) -> None:
    sentences = " ".join(f"We have a new house{'.' if i % 2 else '!'}" for i in range(200))
    send(page, sentences)
    send(page, "Thanks.")
    set_setting(page, "pruner.max_context_tokens", 60)
    wait_until(page, "Number(document.getElementById('pruned-count').textContent) > 150", what="the prune")
    units = int(page.inner_text("#pruned-count"))
    page.click("#settings-panel summary")  # closed again: Pruned, Activity open; Settings and Sessions within reach
    page.locator("#side").evaluate("(el) => el.scrollTop = 0")
    page.click("#activity-panel summary")
    assert page.locator("#pruned-list li").count() <= 12
    shot(page, "page-03-pruned-list-short")
    assert rect(page, "#settings-panel summary")["bottom"] <= 800
    assert rect(page, "#sessions-panel summary")["bottom"] <= 800
    # one line for a prune of many sentences, with each of them in a fold
    assert page.locator("#activity > li").count() <= 3
    assert re.search(r"pruned: \d{3} sentences", page.inner_text("#activity"))
    shot(page, "page-03-pruned-list-short")
    page.click("#pruned-more")
    assert page.locator("#pruned-list li").count() == units
    assert rect(page, "#pruned-list")["bottom"] - rect(page, "#pruned-list")["top"] <= 0.35 * 800
    page.locator("#side").evaluate("(el) => el.scrollTop = 0")
    assert rect(page, "#settings-panel summary")["bottom"] <= 800


# ------------------------------------------------------------------------- item 11 and 14: settings


def test_settings_speak_plainly_show_their_ranges_and_say_where_they_apply(page: Page, tmp_path: Path) -> None:
    legend = page.inner_text("#legend-text")  # first load: nothing said yet
    assert "1 to 1" not in legend and "outshines" not in legend and "equally bright" in legend
    page.click("#settings-panel summary")
    names = page.eval_on_selector_all("#settings .name", "(els) => els.map((el) => el.textContent)")
    for raw in ("rep pen", "reduce", "rep_pen", "max context tokens", "distance mode", "top p", "score", "scorer",
                "min similarity", "min similarity with words"):
        assert raw not in names, f"raw field name {raw!r} in the settings"
    assert page.get_by_label("Repetition penalty", exact=True).count() == 1
    assert page.get_by_label("Token budget", exact=True).count() == 1
    # every number's range is written beside it, visible without hovering
    rows = page.eval_on_selector_all("#settings input[type=number]", """(inputs) => inputs.map((input) => {
        const hint = input.closest('label').querySelector('.hint');
        return [input.name, hint ? hint.innerText : '', hint ? hint.getBoundingClientRect().height : 0]; })""")
    assert len(rows) >= 15
    for name, hint, height in rows:
        assert height > 0 and re.search(r"\d", hint), (name, hint)
        assert re.search(r"at least|at most|more than|less than| to ", hint), (name, hint)
    decay = page.locator("[name='tracker.decay']").locator("xpath=..").inner_text()
    assert "0 to 1" in decay
    # brightness settings say they apply from now on; the file they are saved to, and who reads it
    tracker_note = page.locator("#settings fieldset[data-section=tracker] .note")
    assert tracker_note.is_visible() and "from now on" in tracker_note.inner_text()
    about = page.inner_text("#settings-about")
    assert "halo-client chat" in about and "demo" in about and str(tmp_path / "settings.json") in about
    page.locator("#settings-panel").scroll_into_view_if_needed()
    shot(page, "page-04-settings")


# ------------------------------------------------------------------------- item 12: inspector


def test_the_inspector_marks_its_token_labels_its_grid_switches_the_legend_and_stays_uncovered(page: Page) -> None:
    send(page, "Tell me about the context window and the attention of the model, and what the reply said about "
               "it, and then tell me more about the mock model and its sentences and its period.")
    legend_before = page.evaluate("getComputedStyle(document.querySelector('.legend-bar')).backgroundImage")
    token = page.locator(".role-assistant .tok:not(.tpl)").nth(2)
    inspected = int(token.get_attribute("data-pos") or -1)
    token.click()
    wait_until(page, "!document.getElementById('inspector').hidden", what="the inspector")
    # the inspected token is marked
    assert page.evaluate("Array.from(document.querySelectorAll('.tok[data-inspected]')).map((el) => "
                         "Number(el.dataset.pos))") == [inspected]
    # the grid's axes: layers down, heads across, numbered
    assert page.inner_text(".axis-titles").split() == ["layers", "↓", "heads", "→"]
    assert page.eval_on_selector_all("#overview .axis.head", "(els) => els.map((el) => el.textContent)") == \
        ["0", "1", "2", "3"]
    assert page.eval_on_selector_all("#overview .axis.layer", "(els) => els.map((el) => el.textContent)") == \
        ["0", "1", "2", "3"]
    assert page.locator("#overview button").count() == 16
    # the legend is the inspector's: its colours and its words
    cyan = page.evaluate("""(() => { const s = document.createElement('span'); s.className = 'a63';
        document.body.append(s); const c = getComputedStyle(s).backgroundColor; s.remove(); return c; })()""")
    bar = page.evaluate("getComputedStyle(document.querySelector('.legend-bar')).backgroundImage")
    assert cyan in bar and bar != legend_before
    assert f"#{inspected}" in page.inner_text("#legend-text") and "attention" in page.inner_text("#scale-mode")
    # hovering the token furthest right in the transcript (on one line): the tooltip stays over the transcript
    rightmost = page.evaluate("""(() => { let best = null, left = -1;
        for (const el of document.querySelectorAll('#transcript .tok:not(.tpl)')) {
          const r = el.getBoundingClientRect();
          if (r.width > 0 && r.height < 30 && r.left > left) { left = r.left; best = el; } }
        return Number(best.dataset.pos); })()""")
    page.locator(f'.tok[data-pos="{rightmost}"]').hover()
    wait_until(page, "!document.getElementById('tooltip').hidden", what="the tooltip")
    tooltip = rect(page, "#tooltip")
    for control in ("#layer", "#head", "#overview", "#inspector-title"):
        assert not overlaps(tooltip, rect(page, control)), f"the tooltip covers {control}"
    assert tooltip["right"] <= rect(page, "#transcript")["right"]
    shot(page, "page-05-inspector")
    page.mouse.move(0, 0)
    page.click("#inspector-close")
    assert page.locator(".tok[data-inspected]").count() == 0
    assert page.evaluate("getComputedStyle(document.querySelector('.legend-bar')).backgroundImage") == legend_before


# ------------------------------------------------------------------------- item 15: PNG


PNG_CHECK = """async (dataUrl) => {
    const image = new Image();
    image.src = dataUrl;
    await image.decode();
    const canvas = document.createElement('canvas');
    canvas.width = image.width; canvas.height = image.height;
    const ctx = canvas.getContext('2d');
    ctx.drawImage(image, 0, 0);
    const { data, width, height } = ctx.getImageData(0, 0, image.width, image.height);
    const lum = (i) => 0.2126 * data[i] + 0.7152 * data[i + 1] + 0.0722 * data[i + 2];
    // the legend: a row with a run of 200+ pixels rising from dark to pale (the colour ramp)
    let ramp = false;
    for (let y = 0; y < Math.min(height, 200) && !ramp; y++) {
      let start = 0;
      for (let x = 1; x < width; x++) {
        const i = 4 * (y * width + x);
        if (lum(i) + 0.5 < lum(i - 4) || data[i] === 16 && data[i + 1] === 18) start = x;
        else if (x - start >= 200 && lum(4 * (y * width + start)) < 60 && lum(i) > 180) { ramp = true; break; }
      }
    }
    // strike-through: a horizontal run of 20+ pixels of the pruned text's colour (#d46a6a)
    let strike = 0;
    for (let y = 0; y < height; y++) {
      let run = 0;
      for (let x = 0; x < width; x++) {
        const i = 4 * (y * width + x);
        const red = Math.abs(data[i] - 212) < 10 && Math.abs(data[i + 1] - 106) < 10
          && Math.abs(data[i + 2] - 106) < 10;
        run = red ? run + 1 : 0;
        if (run === 20) strike += 1;
      }
    }
    return { ramp, strike, width, height };
}"""


def png_facts(page: Page, path: Path) -> dict[str, Any]:
    data_url = "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()
    facts: dict[str, Any] = page.evaluate(PNG_CHECK, data_url)
    return facts


def test_the_png_export_has_a_legend_and_strikes_through_pruned_text(page: Page, tmp_path: Path) -> None:
    send(page, "My sister is Marta. She lives in Porto.")
    send(page, "My locker code is 4821.")
    set_setting(page, "pruner.max_context_tokens", 60)
    wait_until(page, "document.querySelectorAll('#pruned-list li').length > 0", what="the prune")
    page.check("#show-pruned")
    wait_until(page, "document.getElementById('transcript').classList.contains('show-pruned')")
    wait_until(page, "document.querySelector('.tok.flash') === null", what="the prune's flash to fade")
    page.click("#sessions-panel summary")
    with page.expect_download() as download:
        page.click("#export-png")
    png = tmp_path / "view.png"
    download.value.save_as(png)
    facts = png_facts(page, png)
    assert facts["ramp"], "no legend in the PNG"
    assert facts["strike"] >= 3, "pruned text is not struck through in the PNG"


# ------------------------------------------------------------------------- items 5 and 6: a send that failed


def inject(page: Page, message: dict[str, Any]) -> None:
    """A message from the UI server, handed to the page as its socket would."""
    page.evaluate("(m) => window.halo.onJson(m)", message)


def test_a_failed_send_gives_the_text_back_only_when_nothing_of_it_was_kept(page: Page, mock: ServerThread) -> None:
    box = page.get_by_role("textbox", name="Message")
    send(page, "Hello.")
    # the UI server's outcomes (workbench.py). The server went away mid-reply: what it wrote is kept
    # and marked, and the message stays in the chat, so it is not put back in the box (sent again, it
    # would be there twice)
    page.evaluate("window.halo.pendingText = 'Hello.'")
    inject(page, {"type": "error", "kind": "unreachable", "command": "send", "outcome": "interrupted",
                  "message": "the server went away mid-reply."})
    assert box.input_value() == ""
    assert "interrupted" in page.inner_text("#banner-text")
    assert "interrupted" in page.locator(".turn.role-assistant .who").last.inner_text()
    shot(page, "page-06-interrupted")
    # a too-long message is refused with its size and the most it can have, the text back in the box
    page.evaluate("window.halo.pendingText = 'a very long message'")
    inject(page, {"type": "error", "kind": "error", "command": "send", "outcome": "refused", "tokens": 4466,
                  "max_tokens": 3880, "message": "the message is too long"})
    assert box.input_value() == "a very long message"
    banner = page.inner_text("#banner-text")
    assert "4,466 tokens" in banner and "3,880" in banner and "Nothing changed" in banner
    # a reply undone before it wrote anything: as it was, the text back (the user typed since: kept aside)
    box.fill("something new")
    page.evaluate("window.halo.pendingText = 'the first message'")
    inject(page, {"type": "error", "kind": "unreachable", "command": "send", "outcome": "undone",
                  "message": "the reply failed and was undone: the server went away."})
    assert box.input_value() == "something new"
    page.click("#banner-action")
    assert box.input_value() == "the first message\nsomething new"
    # a real refusal (a server busy with another client; no outcome said): the message is back in the box
    box.fill("")
    assert mock.server is not None
    mock.server.faults = FaultPlan(always_busy=True)
    box.fill("Are you there?")
    box.press("Enter")
    wait_until(page, "document.getElementById('message').value === 'Are you there?'", what="the text back")
    assert "back in the box" in page.inner_text("#banner-text")
