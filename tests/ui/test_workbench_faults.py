"""What a user's message becomes when something goes wrong, as the workbench's pages see it:
refused, undone, or kept and marked interrupted; never half of each (issue 21, items 5, 6, 9)."""

from __future__ import annotations

import json

from halo_client.conversation.session import to_json
from halo_client.testing import FaultPlan
from tests.ui.conftest import Bench


def active_text(bench: Bench) -> str:
    chat = bench.workbench.chat
    assert chat is not None
    return chat.state.text(chat.state.active_positions())


async def test_a_reply_that_fails_before_its_first_token_undoes_the_message_and_hands_its_text_back(
        bench: Bench) -> None:
    await bench.say("First.")
    chat = bench.workbench.chat
    assert chat is not None
    before = to_json(bench.workbench.session())
    bench.server.faults = FaultPlan(drop_before_token=0)
    await bench.say("Second.")
    error = bench.page.of("error")[-1]
    assert error["command"] == "send" and error["outcome"] == "undone" and error["text"] == "Second."
    assert "not sent" in error["message"]
    assert to_json(bench.workbench.session()) == before  # undone means undone: no message, no reply
    assert sorted(bench.page.text) == list(range(len(chat.state)))  # the page was told
    bench.server.faults = FaultPlan()
    await bench.say("Third.")
    assert "Second." not in active_text(bench) and "Third." in active_text(bench)
    assert bench.page.mismatches == []


async def test_a_too_long_message_is_refused_before_anything_changes(bench: Bench) -> None:
    await bench.command(type="settings", changes={"pruner": {"max_context_tokens": 120}})
    for text in ("My sister is Marta.", "My locker code is 4821.", "I grew up in Lisbon."):
        await bench.say(text)
    chat = bench.workbench.chat
    assert chat is not None
    assert chat.pruner.pruned_units(chat.state), "older sentences are pruned: a long message would prune more"
    before = to_json(bench.workbench.session())
    snapshots, rows = len(bench.page.of("snapshot")), len(bench.page.of("rows"))
    text = "This message is far too long for the context. " * 500
    await bench.say(text)
    error = bench.page.of("error")[-1]
    assert error["kind"] == "too_long" and error["command"] == "send" and error["text"] == text
    assert error["outcome"] == "refused" and error["max_tokens"] == error["most"]
    assert error["tokens"] > chat.info.max_context_length and 0 < error["most"] < chat.info.max_context_length
    assert f"{error['tokens']:,} tokens" in error["message"] and f"at most {error['most']:,}" in error["message"]
    assert to_json(bench.workbench.session()) == before  # nothing pruned to make room, nothing added
    assert (len(bench.page.of("snapshot")), len(bench.page.of("rows"))) == (snapshots, rows)  # nothing to redraw


async def test_a_reply_cut_short_by_the_server_keeps_what_it_wrote_marked_interrupted(bench: Bench) -> None:
    await bench.say("First.")
    chat = bench.workbench.chat
    assert chat is not None
    bench.server.faults = FaultPlan(drop_before_token=4)
    await bench.say("Second.")
    done = bench.page.of("reply_done")[-1]
    assert done["finish_reason"] == "interrupted" and done["tokens"] == 4 and done["interrupted"]
    reply = chat.state.turns[-1]
    assert reply.role == "assistant" and reply.complete and done["turn"] == reply.turn_id
    notice = bench.page.of("error")[-1]
    assert notice["kind"] == "interrupted" and notice["outcome"] == "interrupted"  # the box stays empty: it was sent
    assert notice["turn"] == reply.turn_id and "text" not in notice
    assert "Second." in active_text(bench)
    assert chat.interrupted_turns() == [reply.turn_id]
    assert bench.workbench.session().meta["interrupted_turns"] == [reply.turn_id]  # kept with the session
    bench.server.faults = FaultPlan()
    await bench.say("Third.")  # the kept reply is valid ChatML: the strict mock takes the next request
    assert bench.page.of("reply_done")[-1]["finish_reason"] in ("eos", "length")
    assert bench.page.mismatches == []


async def test_every_reply_says_where_the_chat_stands_against_its_budget(bench: Bench) -> None:
    await bench.say("Hello there. How are you?")
    chat = bench.workbench.chat
    assert chat is not None
    # a budget under what must stay (the latest exchange): the pages are warned, and told it is over
    await bench.command(type="settings", changes={"pruner": {"max_context_tokens": 20}})
    assert bench.page.of("error")[-1]["kind"] == "warning"
    assert bench.page.of("settings")[-1]["budget"]["over"] is True
    # raised again: the next reply says the chat is back within it, so the warning can go
    await bench.command(type="settings", changes={"pruner": {"max_context_tokens": 2000}})
    await bench.say("Fine.")
    done = bench.page.of("reply_done")[-1]
    assert done["budget"] == {"active": chat.state.active_count, "budget": 2000,
                              "context": chat.info.max_context_length, "over": False, "message": None}
    assert bench.page.of("rows")[-1]["budget"]["over"] is False


async def test_a_session_with_a_token_outside_the_vocabulary_is_refused_and_the_chat_stays(bench: Bench) -> None:
    await bench.say("Hello.")
    before = to_json(bench.workbench.session())
    damaged = json.loads(json.dumps(before))
    damaged["columns"]["token_id"][3] = 10_000_000
    answer = await bench.command(type="upload", session=damaged, name="damaged")
    error = answer.of("error")[0]
    assert "10000000" in error["message"] and "vocabulary" in error["message"]
    assert to_json(bench.workbench.session()) == before
