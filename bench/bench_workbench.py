"""The workbench's speed and memory, measured in Chromium with the UI server as its own process.

The mock server (this process, a thread) streams replies at about `--rate` tokens/s
(`FaultPlan.token_delay_s`); `halo-client ui` runs as a separate process; Debian's chromium
shows the page (Playwright). Four figures, against the issue's bounds:

1. **Update cost.** With an 8,000-token conversation (`--context` tokens in one user message,
   then a reply), the time to apply one brightness update in the page: the page's own
   `performance.measure` around each update it draws (transcript.js), median (bound 8 ms).
2. **Keeping up.** The display lag at the end of a 1,000-token reply streamed at 100 tokens/s on
   that conversation: wall-clock time from the token reaching the UI server to the page having
   drawn its update (same machine, same clock), for the last token (bound 100 ms), and the
   median over the reply.
3. **Heap.** A new chat; the page's JS heap (CDP `Runtime.getHeapUsage` after
   `HeapProfiler.collectGarbage`) after 200 generated tokens and after 2,000 (bound: within 10 %).
4. **UI server CPU per token** during the 1,000-token reply: the process's user+system time
   (/proc) over the tokens, against one tracker update of the frames the chat asks for
   (`model_stats` at the same context, timed here) + 1 ms.
5. **The token dictionary** on that conversation (9,000 tokens): rows in the DOM; the time to
   open it, to sort by each column, to filter, and to scroll to a random place (the page's script,
   and until the next frame is drawn), medians of repeats; then 150-token replies streamed with the
   table open (sorted by brightness) and closed, alternated: the ratio of the page's per-update
   cost, and the table's re-orders.

    python bench/bench_workbench.py [--context 8000] [--reply 1000] [--rate 100] [--skip-heap]

Not a timed test: numbers depend on the machine and what else runs (load average printed).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from halo_client import config
from halo_client.client import KoboldClient
from halo_client.conversation.chat import Chat
from halo_client.conversation.tracker import AttentionTracker
from halo_client.serving.backend import ForwardResult
from halo_client.testing import MockBackend, MockKoboldServer
from halo_client.testing import toy_tokenizer as tok
from halo_client.testing.browser import (
    CHROMIUM,
    MISSING_BROWSER,
    launch,
    open_page,
    send,
    wait_until,
    workbench_process,
)
from halo_client.testing.mock_backend import REPLIES
from halo_client.testing.threaded import ServerThread

WORDS = (" the", " a", " and", " of", " to", " in", " is", " it", " you", " that", " was", " for", " on", " are",
         " with", " as", " I", " they", " be", " at", " one", " have", " this", " from", " or", " had", " by",
         " but", " what", " some", " we", " can", " out", " other", " were", " all", " there", " when", " up")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class LongReplies(MockBackend):
    """The mock with replies of up to `length` tokens (its own replies, over and over), at `rate`
    tokens a second by the clock: token i is not computed before i / rate seconds."""

    def __init__(self, length: int, rate: float, **kw: Any) -> None:
        super().__init__(**kw)
        text = " ".join(REPLIES)
        ids = tok.tokenize(text, add_special_tokens=False)
        self._long = (ids * (length // len(ids) + 1))[:length]
        self._period = 1.0 / rate
        self._next = 0.0

    def prefill(self, input_ids: Sequence[int], want_attention: bool) -> ForwardResult:
        super().prefill(input_ids, want_attention)
        self._reply = [*self._long, tok.IM_END_ID]
        self._next = time.perf_counter() + self._period
        return self._result(want_attention)

    def decode(self, token_id: int, want_attention: bool) -> ForwardResult:
        time.sleep(max(0.0, self._next - time.perf_counter()))
        self._next += self._period
        return super().decode(token_id, want_attention)


def long_message(tokens: int, seed: int = 0) -> str:
    """Text of sentences the mock tokenizer turns into `tokens` tokens (one per word and period)."""
    rng = np.random.default_rng(seed)
    words = [WORDS[i] for i in rng.integers(0, len(WORDS), tokens)]
    for i in range(11, tokens, 12):
        words[i] += "."
    text = "".join(words).strip()
    while len(tok.tokenize(text, add_special_tokens=False)) > tokens:
        text = text[: text.rindex(" ")]
    return text


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime


def tracker_update_ms(ctx: int) -> float:
    """One tracker update of a model_stats frame at `ctx` columns (what the chat streams), median."""
    rng = np.random.default_rng(0)
    frame = rng.random((1, 2, ctx), dtype=np.float32)
    brightness = np.ones(ctx + 10, np.float32)
    positions = np.arange(ctx, dtype=np.int64)
    tracker = AttentionTracker()
    times = []
    for _ in range(300):
        t = time.perf_counter()
        tracker.update(brightness, positions, frame, "model_stats")
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1000


async def bare_chat_cpu(url: str, message: str, reply: int) -> float:
    """CPU ms per token (this thread) for the same reply taken by a bare `Chat`: the client side
    of a chat without the workbench (the mock runs in another thread)."""
    async with KoboldClient(url, timeout=120) as client:
        chat = await Chat.open(client, system=config.DEFAULT_SYSTEM_PROMPT, max_length=reply,
                               sampler={"temperature": 0.0})
        await chat.add_message("user", message)
        started = time.thread_time()
        result = await chat.reply()
        return (time.thread_time() - started) / max(len(result.tokens), 1) * 1000


def page_stats(page: Any) -> dict[str, Any]:
    return dict(page.evaluate("""(() => { const s = window.halo.transcript.stats;
        const n = Math.min(s.index, s.applyMs.length);
        return {applied: s.applied, index: s.index, replaced: s.replaced, mismatches: s.mismatches,
                apply: Array.from(s.applyMs.slice(0, n)), lag: Array.from(s.lagMs.slice(0, n)),
                lastLag: s.lastLagMs, lastNewest: s.lastNewest, active: window.halo.transcript.activeCount}; })()"""))


def since(stats: dict[str, Any], before: dict[str, Any], key: str) -> npt.NDArray[np.float64]:
    """The ring's entries written after `before` (the ring holds the last 4,096)."""
    ring = np.asarray(stats[key], np.float64)
    size = ring.size
    indices = [i % size for i in range(before["index"], stats["index"])] if size else []
    return ring[indices] if indices else np.zeros(0)


def heap_mb(page: Any, cdp: Any) -> tuple[float, int]:
    cdp.send("HeapProfiler.collectGarbage")
    cdp.send("HeapProfiler.collectGarbage")
    used = cdp.send("Runtime.getHeapUsage")["usedSize"] / 1e6
    nodes = page.evaluate("document.getElementsByTagName('*').length")
    return float(used), int(nodes)


def dom_heap_per_span(browser: Any, count: int = 2000) -> float:
    """The JS heap (bytes) a page grows per token span that it adds and keeps, with nothing else:
    the control for the heap figure (DOM nodes have a JS-heap side even without references)."""
    page = browser.new_page()
    page.set_content("<div id=t></div>")
    cdp = page.context.new_cdp_session(page)
    before, _ = heap_mb(page, cdp)
    page.evaluate(f"""(() => {{ const t = document.getElementById('t'); const kept = [];
        for (let i = 0; i < {count}; i++) {{ const s = document.createElement('span');
          s.setAttribute('data-pos', String(i)); s.setAttribute('data-brightness', (i / 7).toPrecision(5));
          s.className = 'tok h12'; s.textContent = ' word'; t.append(s); kept.push(s); }}
        window.kept = kept; }})()""")
    after, _ = heap_mb(page, cdp)
    page.close()
    return (after - before) * 1e6 / count


SORT_TIMES = """async ([key, dir, repeats]) => {
    const d = window.halo.dictionary, script = [], frame = [];
    const painted = () => new Promise((done) => requestAnimationFrame(() => setTimeout(done, 0)));
    for (let i = 0; i < repeats; i++) {
      const t0 = performance.now();
      d.sortBy(key, i % 2 ? -dir : dir);
      script.push(performance.now() - t0);
      await painted();
      frame.push(performance.now() - t0);
    }
    return { script, frame };
}"""

FILTER_TIMES = """async ([query, repeats]) => {
    const d = window.halo.dictionary, input = document.getElementById('dictionary-filter'), script = [];
    for (let i = 0; i < repeats; i++) {
      input.value = i % 2 ? '' : query;
      const t0 = performance.now();
      d.rebuild();
      script.push(performance.now() - t0);
      await new Promise((done) => requestAnimationFrame(() => setTimeout(done, 0)));
    }
    return { script, shown: d.count };
}"""

SCROLL_TIMES = """async (samples) => {
    const d = window.halo.dictionary, viewport = document.getElementById('dictionary-viewport');
    const script = [], frame = [];
    for (let i = 0; i < samples; i++) {
      const t0 = performance.now();
      viewport.scrollTop = ((i * 0.618034) % 1) * (viewport.scrollHeight - viewport.clientHeight);
      d.render();
      script.push(performance.now() - t0);
      await new Promise((done) => requestAnimationFrame(() => setTimeout(done, 0)));
      frame.push(performance.now() - t0);
    }
    return { script, frame, rows: document.querySelectorAll('#dictionary-rows .row').length };
}"""


def ring_since(page: Any, path: str, before: int) -> npt.NDArray[np.float64]:
    """Entries of a page ring (`{values, index}`) written since its index was `before`."""
    data = page.evaluate(f"(() => {{ const r = {path}; return {{ values: Array.from(r.values), index: r.index }}; }})"
                         "()")
    size = len(data["values"])
    return np.asarray([data["values"][i % size] for i in range(max(before, data["index"] - size), data["index"])])


OPEN_TIME = """async () => {
    const t0 = performance.now();
    document.getElementById('dictionary-toggle').click();
    await new Promise((done) => requestAnimationFrame(() => setTimeout(done, 0)));
    return { ms: performance.now() - t0, rows: document.querySelectorAll('#dictionary-rows .row').length };
}"""

REFILL_TIME = """(repeats) => {
    // every visible row written from scratch (as after a scroll to new rows), `repeats` times
    const d = window.halo.dictionary, t0 = performance.now();
    for (let i = 0; i < repeats; i++) {
      for (const slot of d.pool) { slot.pos = -2; slot.shown = []; }
      d.fill();
    }
    return (performance.now() - t0) / repeats;
}"""


def reply_updates(page: Any, text: str) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Send `text`; the transcript's per-update cost (ms) over the reply, and the table's re-orders."""
    rebuild0 = page.evaluate("window.halo.dictionary.stats.rebuildMs.index")
    before = page_stats(page)
    send(page, text, timeout=300)
    apply = since(page_stats(page), before, "apply")
    return apply, ring_since(page, "window.halo.dictionary.stats.rebuildMs", rebuild0)


def dictionary_figures(page: Any, pairs: int) -> None:
    """Part 5 (module docstring), on the conversation the page holds now."""
    tokens = page.evaluate("window.halo.transcript.n")
    opened = page.evaluate(OPEN_TIME)
    wait_until(page, "document.querySelectorAll('#dictionary-rows .row:not([hidden])').length > 5", what="the table")
    print(f"\n5. token dictionary over {tokens} tokens: {opened['rows']} rows in the DOM; opened (filtered, "
          f"sorted, drawn) in {opened['ms']:.1f} ms to the next frame")
    for key, direction in (("brightness", -1), ("peak", -1), ("text", 1), ("id", 1), ("position", 1)):
        times = page.evaluate(SORT_TIMES, [key, direction, 9])
        print(f"   sort by {key:<10}: script {np.median(times['script']):6.2f} ms, to the next frame "
              f"{np.median(times['frame']):6.2f} ms (medians of 9, both directions)")
    for query in ("the", "e", "zzz"):
        times = page.evaluate(FILTER_TIMES, [query, 9])
        print(f"   filter {query!r:<6}: {np.median(times['script']):6.2f} ms (median of 9, the filter set and "
              f"cleared in turn)")
    times = page.evaluate(SCROLL_TIMES, 60)
    print(f"   scroll to a random place: script median {np.median(times['script']):.2f} ms (p90 "
          f"{np.percentile(times['script'], 90):.2f}); to the next frame median {np.median(times['frame']):.1f} ms "
          f"(p90 {np.percentile(times['frame'], 90):.1f}); {times['rows']} rows in the DOM")
    refill = page.evaluate(REFILL_TIME, 500)
    print(f"   every visible row written from scratch: {refill * 1000:.0f} us (mean of 500; a live update rewrites "
          "only the cells that changed)")
    # replies with the table open (sorted by brightness, brightest first) and closed, alternated
    page.evaluate("window.halo.dictionary.sortBy('brightness', -1)")
    ratios: list[float] = []
    open_ms: list[float] = []
    closed_ms: list[float] = []
    reorders: list[float] = []
    for i in range(pairs):
        medians: dict[bool, float] = {}
        for shown in (True, False) if i % 2 == 0 else (False, True):
            if shown != page.evaluate("window.halo.dictionary.isOpen"):
                page.click("#dictionary-toggle")
            apply, rebuilds = reply_updates(page, f"And one more thing ({i}, {shown}).")
            medians[shown] = float(np.median(apply))
            (open_ms if shown else closed_ms).append(medians[shown])
            if shown:
                reorders.extend(rebuilds.tolist())
        ratios.append(medians[True] / medians[False])
    print(f"   a brightness update with the table open / closed, {pairs} pairs of replies alternated: ratios "
          f"{', '.join(f'{r:.2f}' for r in ratios)} (median {np.median(ratios):.2f}); medians open "
          f"{', '.join(f'{m:.2f}' for m in open_ms)} ms, closed {', '.join(f'{m:.2f}' for m in closed_ms)} ms; "
          f"while open, {len(reorders)} re-orders (new tokens, re-sorts at most once a second) median "
          f"{np.median(reorders):.2f} ms, max {max(reorders):.2f} ms")
    if page.evaluate("window.halo.dictionary.isOpen"):
        page.click("#dictionary-toggle")


def set_settings(page: Any, changes: dict[str, Any]) -> None:
    page.evaluate(f"window.halo.send({json.dumps({'type': 'settings', 'changes': changes})})")
    time.sleep(0.3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--context", type=int, default=8000, help="tokens of the long conversation")
    parser.add_argument("--reply", type=int, default=1000, help="tokens of the reply streamed on it")
    parser.add_argument("--rate", type=float, default=100.0, help="tokens/s the mock streams at")
    parser.add_argument("--heap-tokens", type=int, default=2000)
    parser.add_argument("--skip-heap", action="store_true", help="leave out part 3 (the heap over 2,000 tokens)")
    parser.add_argument("--pairs", type=int, default=4, help="part 5: replies with the dictionary open and closed")
    args = parser.parse_args()
    if not CHROMIUM.exists():
        raise SystemExit(MISSING_BROWSER)
    from playwright.sync_api import sync_playwright

    budget = args.context + args.reply + 2 * args.heap_tokens + 2048
    backend = LongReplies(max(args.reply, 200), args.rate, max_context_length=budget)
    with tempfile.TemporaryDirectory() as tmp, ServerThread(lambda: MockKoboldServer(backend=backend)) as mock:
        bare = asyncio.run(bare_chat_cpu(mock.url, long_message(args.context - 30), args.reply))
        directory = Path(tmp)
        config.save(config.Config().merged({"sampler": {"max_length": args.reply, "temperature": 0.0}}),
                    directory / "settings.json")
        with workbench_process(mock.url, directory) as ui, sync_playwright() as playwright:
            browser = launch(playwright)
            page = open_page(browser, ui.url)
            cdp = page.context.new_cdp_session(page)
            print(f"load average before: {os.getloadavg()[0]:.2f} (2-core machine shared with other work)")

            # 1 + 2 + 4: a reply on an 8,000-token conversation
            send(page, long_message(args.context - 30), wait=False)
            wait_until(page, f"window.halo.transcript.activeCount > {args.context - 200}", timeout=120,
                       what="the long message")
            wait_until(page, "window.halo.busy", timeout=30, what="the reply to start")
            before = page_stats(page)
            cpu0 = cpu_seconds(ui.process.pid)
            wait_until(page, "!window.halo.busy", timeout=args.reply / args.rate * 4 + 60, what="the long reply")
            cpu1 = cpu_seconds(ui.process.pid)
            time.sleep(0.5)
            after = page_stats(page)
            done = page.evaluate("document.getElementById('session-name').title")
            tokens = int(done.split(" tokens")[0])
            apply = since(after, before, "apply")
            lag = since(after, before, "lag")
            ctx = after["active"]
            print(f"\nconversation: {ctx} active tokens after the reply; reply: {done}")
            print(f"1. brightness update applied in the page: median {np.median(apply):.2f} ms, p90 "
                  f"{np.percentile(apply, 90):.2f} ms, max {apply.max():.2f} ms over {apply.size} updates "
                  f"drawn ({after['replaced'] - before['replaced']} superseded before their frame; bound 8 ms)")
            print(f"2. display lag: last token {after['lastLag']:.0f} ms (bound 100 ms); median over the reply "
                  f"{np.median(lag[lag > 0]):.0f} ms, p90 {np.percentile(lag[lag > 0], 90):.0f} ms")
            per_token = (cpu1 - cpu0) / max(tokens, 1) * 1000
            tracker = tracker_update_ms(ctx)
            print(f"4. UI server CPU per token: {per_token:.2f} ms ({cpu1 - cpu0:.2f} s over {tokens} tokens, whole "
                  f"process, /proc); one tracker update at {ctx} columns {tracker:.3f} ms, so the bound is "
                  f"{tracker + 1:.2f} ms. The same reply taken by a bare Chat (what `halo-client chat` does per "
                  f"token: receive, decode, track): {bare:.2f} ms; the workbench's own work: "
                  f"{per_token - bare:.2f} ms per token")
            assert after["mismatches"] == before["mismatches"], "the page missed updates"

            # 5: the token dictionary on that conversation
            set_settings(page, {"sampler": {"max_length": 150}})
            dictionary_figures(page, args.pairs)
            if args.skip_heap:
                browser.close()
                return

            # 3: heap in a new chat, 200 then 2,000 generated tokens
            set_settings(page, {"sampler": {"max_length": 200}})
            page.evaluate("window.halo.send({type: 'new'})")
            wait_until(page, "window.halo.transcript.activeCount < 100", timeout=30, what="the new chat")
            send(page, "Go on.", timeout=120)
            heap_200, nodes_200 = heap_mb(page, cdp)
            generated = 200
            while generated < args.heap_tokens:
                send(page, "And then?", timeout=120)
                generated += 200
            heap_2000, nodes_2000 = heap_mb(page, cdp)
            grown = heap_2000 - heap_200
            dom = dom_heap_per_span(browser) * (nodes_2000 - nodes_200) / 1e6
            print(f"3. JS heap: {heap_200:.2f} MB after 200 generated tokens, {heap_2000:.2f} MB after {generated} "
                  f"({grown / heap_200 * 100:+.1f} %; bound 10 %); DOM elements {nodes_200} -> {nodes_2000}. "
                  f"A blank page in the same browser grows {dom:.2f} MB of JS heap for that many token spans alone; "
                  f"the rest, {grown - dom:+.2f} MB ({(grown - dom) / heap_200 * 100:+.1f} %), is the workbench's own")
            print(f"load average after: {os.getloadavg()[0]:.2f}")
            browser.close()


if __name__ == "__main__":
    main()
