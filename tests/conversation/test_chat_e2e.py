"""A scripted 20-turn chat against the mock server, with a small budget.

The mock runs with a strict template check: any input_ids that is not well-formed ChatML is
refused, so a pruner that corrupted the template would fail this test.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from halo_client.client import KoboldClient
from halo_client.conversation import Chat, PrunerSettings, TrackerSettings, load
from halo_client.conversation.session import to_json
from halo_client.testing import MockBackend, MockKoboldServer

MESSAGES = [
    "Hi! My sister's name is Marta.", "My locker code is 4821.", "I grew up in Lisbon.",
    "Tell me something.", "What is 3.14, e.g. pi?", "I like mangoes. Do you?", "Let us talk about boats.",
    "A boat floats. A rock sinks!", "Why is that?", "Okay... and then?", "Here is a list:\n1. eggs\n2. milk",
    "Thanks.", "One more thing. The weather is nice.", "Do you remember my sister?", "And my code?",
    "Where did I grow up?", "Good.", "Almost done.", "Last question?", "Bye!",
]


async def test_twenty_turns_under_budget(tmp_path: Path) -> None:
    budget = 300
    backend = MockBackend(strict_template=True)
    async with MockKoboldServer(backend=backend) as server, KoboldClient(server.url, timeout=10) as client:
        chat = await Chat.open(client, system="You are a helpful assistant.", max_length=60,
                               pruner=PrunerSettings(max_context_tokens=budget), sampler={"temperature": 0})
        pruned = 0
        recalled = []
        for text in MESSAGES:
            await chat.add_message("user", text)
            reply = await chat.reply()
            recalled += [(text, r) for r in reply.recalled]
            assert reply.done.finish_reason in ("eos", "length")
            assert len(reply.input_ids) + chat.max_length <= chat.info.max_context_length
            assert chat.state.active_count <= budget or reply.pruned_after.over_budget
            pruned += len(reply.pruned_before.events) + len(reply.pruned_after.events)
        assert pruned > 0
        # whatever memory brought back came back for a reason it states: near in meaning (by the
        # settings' threshold), or sharing the message's words
        for text, r in recalled:
            assert r.query == text and r.why
            if "meaning" in r.match.by:
                assert r.match.similarity is not None and r.match.similarity >= chat.memory.settings.min_similarity
            else:
                assert r.relevance > 0 and r.match.words
        assert len(backend.received) == len(MESSAGES)  # every request passed the strict ChatML check
        assert max(len(r) for r in backend.received) <= budget + 5 + 60
        path = tmp_path / "chat.json"
        chat.save(str(path))
        loaded = load(path)
        assert to_json(loaded) == to_json(chat.session())
        resumed = await Chat.open(client, session_path=str(path), max_length=60, sampler={"temperature": 0})
        assert resumed.state.input_ids() == chat.state.input_ids()
        await resumed.add_message("user", "Still there?")
        await resumed.reply()  # the resumed chat goes on, template intact


@pytest.mark.parametrize(("aggregation", "layout"), [("mean", "model_stats"), ("max", "model_stats"),
                                                    ("last_layer", "layer_stats"),
                                                    ("weighted_layers", "layer_stats")])
async def test_the_chat_asks_for_the_smallest_frames_and_tracks_the_same_brightness(
        aggregation: str, layout: str) -> None:
    async with MockKoboldServer(backend=MockBackend(num_layers=6, num_heads=8)) as server, \
            KoboldClient(server.url, timeout=10) as client:
        chats = []
        for asked in (None, "full"):
            chat = await Chat.open(client, system="Sys.", max_length=30, sampler={"temperature": 0},
                                   tracker=TrackerSettings(aggregation=aggregation),
                                   attention_layout=asked)
            for text in MESSAGES[:4]:
                await chat.add_message("user", text)
                reply = await chat.reply()
                assert {t.attention.layout for t in reply.tokens if t.attention} == {asked or layout}
            chats.append(chat)
        reduced, full = chats
        assert reduced.state.input_ids() == full.state.input_ids()
        np.testing.assert_allclose(reduced.state.brightness, full.state.brightness, atol=1e-5, rtol=1e-5)


async def locker_chat(client: KoboldClient, budget: int) -> Chat:
    """A chat that said its locker code, then three messages of filler."""
    chat = await Chat.open(client, system="Be brief.", max_length=20,
                           pruner=PrunerSettings(max_context_tokens=budget), sampler={"temperature": 0})
    await chat.add_message("user", "My locker code is 4821.")
    await chat.reply()
    for i in range(3):
        await chat.add_message("user", f"Filler message number {i}. Nothing to see here. Moving on.")
        await chat.reply()
    return chat


async def test_a_question_recalls_a_fact_pruned_long_ago() -> None:
    backend = MockBackend(strict_template=True)
    async with MockKoboldServer(backend=backend) as server, KoboldClient(server.url, timeout=10) as client:
        chat = await locker_chat(client, 200)
        # the oldest sentence goes first, whatever the mock's attention made of it
        chat.pruner.prune(chat.state, chat.state.active_count - 1, scores=np.arange(len(chat.state), dtype=float))
        assert "locker code is 4821" not in chat.state.text(chat.state.active_positions())
        await chat.add_message("user", "What is my locker code?")
        reply = await chat.reply()
        assert [r.event.text.strip() for r in reply.recalled] == ["My locker code is 4821."]
        code = reply.recalled[0].event.positions
        question_turn = len(chat.state.turns) - 2  # the reply came after it
        assert all(chat.state.row(p).recalled_turn == question_turn for p in code)
        sent = backend.received[-1]
        fact = [int(t) for t in chat.state.column("token_id")[list(code)]]
        assert any(sent[i : i + len(fact)] == fact for i in range(len(sent)))  # the model saw it again
        assert len(sent) <= 200 + 5  # the budget held: something else went to make room


async def test_a_question_keeps_its_fact_still_in_the_context_when_the_prune_comes() -> None:
    """Nothing is archived before the first prune: what the question asks for is still in the
    context, and memory keeps it through that prune, with a `kept` line saying why; with no prune
    due there is nothing to report."""
    backend = MockBackend(strict_template=True)
    async with MockKoboldServer(backend=backend) as server, KoboldClient(server.url, timeout=10) as client:
        chat = await locker_chat(client, 0)
        await chat.add_message("user", "What is my locker code again?")
        reply = await chat.reply()
        assert reply.recalled == [] and not reply.pruned_before.events  # no prune, nothing kept to say
        # the budget now ends where the chat is: the next message prunes
        chat.pruner.settings = chat.pruner.settings.model_copy(update={"max_context_tokens": chat.state.active_count})
        await chat.add_message("user", "What is my locker code?")
        reply = await chat.reply()
        assert reply.pruned_before.events, "the budget should have pruned before the reply"
        kept = [r for r in reply.recalled if r.kept]
        assert [r.event.text.strip() for r in kept] == ["My locker code is 4821."]
        assert kept[0].why.startswith("meaning (similarity ") and not any(r.event.restored for r in kept)
        code = kept[0].event.positions
        assert chat.state.active_mask()[list(code)].all()
        fact = [int(t) for t in chat.state.column("token_id")[list(code)]]
        sent = backend.received[-1]
        assert any(sent[i : i + len(fact)] == fact for i in range(len(sent)))  # the model saw it


async def test_what_a_reply_archived_is_embedded_before_the_next_message() -> None:
    """The recall step between a message and its reply embeds the message alone: what the prunes
    of the exchange before archived, and what is still in the context, was embedded once that
    reply was in (`Memory.keep_up`)."""
    backend = MockBackend(strict_template=True)
    async with MockKoboldServer(backend=backend) as server, KoboldClient(server.url, timeout=10) as client:
        chat = await Chat.open(client, system="Be brief.", max_length=20,
                               pruner=PrunerSettings(max_context_tokens=120), sampler={"temperature": 0})
        for i in range(5):
            await chat.add_message("user", f"Message number {i} says little. It has two sentences.")
            await chat.reply()
            archived = chat.memory.archive(chat.state, chat.pruner)[2]
            meaning = chat.memory.meaning  # loaded by the first recall with an archive to search
            assert meaning is None or set(archived) <= set(meaning.rows)
        assert archived and meaning is not None, "the budget should have pruned something"
        calls = meaning.embedder.calls  # type: ignore[attr-defined]
        query = "What did message two say?"
        await chat.add_message("user", query)  # the exchange before is no longer the latest
        before = len(calls)
        chat.memory.candidates(chat.state, chat.pruner, query)
        assert calls[before:] == [1]
        # and what is still in the context, that exchange included, was embedded with the archive:
        # matching it embeds nothing more (the message's vector is kept)
        chat.memory.in_context(chat.state, chat.pruner, query)
        assert calls[before:] == [1]
