"""`Chat.send`: a message and its reply as one exchange, whatever the server does (issue 21,
items 1, 5, 6, 7, 15 and the per-token step)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from halo_client.client import KoboldClient
from halo_client.conversation import Chat, PrunerSettings, TrackerSettings, load
from halo_client.conversation.chat import INTERRUPTED, MessageTooLong, ReplyStep
from halo_client.conversation.session import SessionError, to_json
from halo_client.errors import HaloError
from halo_client.testing import FaultPlan, MockBackend, MockKoboldServer
from halo_client.testing import toy_tokenizer as tok


def snapshot(chat: Chat) -> tuple[object, ...]:
    """Everything an exchange could change: the saved session (tokens, flags, brightness, audit
    trail), the template's history and the tracker's frame count."""
    return json.dumps(to_json(chat.session())), list(chat.turns.history), chat.tracker.frames


async def test_a_reply_that_fails_before_its_first_token_undoes_the_whole_exchange() -> None:
    async with MockKoboldServer(backend=MockBackend(strict_template=True)) as server, \
            KoboldClient(server.url, timeout=10) as client:
        chat = await Chat.open(client, system="Sys.", max_length=20, sampler={"temperature": 0},
                               pruner=PrunerSettings(max_context_tokens=90, recent_share=0))
        for text in ("My locker code is 4821.", "Filler one. More filler here.", "Filler two. And more."):
            await chat.send(text)
        sentences = chat.state.column("sentence")
        fact = next(s for s in np.unique(sentences[sentences >= 0]).tolist()
                    if "4821" in chat.state.text(np.flatnonzero(sentences == s)))
        chat.pruner.prune_sentence(chat.state, fact)  # the question will recall it
        assert chat.pruner.pruned_units(chat.state)
        before = snapshot(chat)
        for fault in (FaultPlan(drop_before_token=0), FaultPlan(always_busy=True), FaultPlan(error_at=0)):
            server.faults = fault
            with pytest.raises(HaloError):
                await chat.send("What is my locker code? Tell me now, please, in full detail.")
            assert snapshot(chat) == before, fault  # no message, no recall, no prune to make room
        server.faults = FaultPlan()
        reply = await chat.send("What is my locker code? Tell me now, please, in full detail.")
        assert any("4821" in r.event.text for r in reply.recalled)


async def test_a_reply_cut_short_after_it_began_keeps_what_it_wrote_marked_interrupted(tmp_path: Path) -> None:
    backend = MockBackend(strict_template=True)
    async with MockKoboldServer(backend=backend) as server, KoboldClient(server.url, timeout=10) as client:
        chat = await Chat.open(client, system="Sys.", max_length=40, sampler={"temperature": 0})
        await chat.send("First.")
        for fault in (FaultPlan(drop_before_token=5), FaultPlan(corrupt_frame_at=5), FaultPlan(error_at=5)):
            server.faults = fault
            reply = await chat.send("Again.")
            assert reply.interrupted and reply.done.finish_reason == INTERRUPTED, fault
            assert len(reply.tokens) == 5 and reply.positions[-1] < chat.state.turns[-1].end
            last = chat.state.turns[-1]
            assert last.role == "assistant" and last.complete and last.turn_id == reply.turn
        assert chat.interrupted_turns() == [4, 6, 8]
        server.faults = FaultPlan()
        await chat.send("Still there?")  # the kept replies are well-formed: the strict mock takes them
        path = tmp_path / "s.json"
        chat.save(str(path))
        resumed = await Chat.open(client, session_path=str(path))
        assert resumed.interrupted_turns() == [4, 6, 8]


async def test_a_message_too_long_for_the_context_is_refused_with_the_most_it_can_have() -> None:
    backend = MockBackend(max_context_length=300)
    async with MockKoboldServer(backend=backend) as server, KoboldClient(server.url, timeout=10) as client:
        chat = await Chat.open(client, system="Sys.", max_length=50, sampler={"temperature": 0},
                               pruner=PrunerSettings(max_context_tokens=100))
        await chat.send("Hello there.")
        await chat.send("Another line.")
        before = snapshot(chat)
        with pytest.raises(MessageTooLong) as refused:
            await chat.send("x" * 5000)  # the mock's toy tokenizer: one token per x
        assert refused.value.tokens == 5000 and f"at most {refused.value.most:,}" in str(refused.value)
        assert snapshot(chat) == before
        most = refused.value.most
        with pytest.raises(MessageTooLong):
            await chat.send("x" * (most + 1))
        assert snapshot(chat) == before
        reply = await chat.send("x" * most)  # the bound is exact: this one fits
        assert len(reply.input_ids) + chat.max_length <= 300


async def test_each_step_carries_its_frame_columns_and_the_aggregated_row() -> None:
    async with MockKoboldServer(backend=MockBackend(num_layers=3, num_heads=2)) as server, \
            KoboldClient(server.url, timeout=10) as client:
        chat = await Chat.open(client, system="Sys.", max_length=15, sampler={"temperature": 0},
                               tracker=TrackerSettings(aggregation="max"), attention_layout="full")
        await chat.send("One. Two. Three.")
        chat.prune(chat.state.active_count - 3)  # a gap in the positions: columns are not 0..n
        steps: list[ReplyStep] = []
        reply = await chat.send("Four.", steps.append)
        assert [s.position for s in steps] == reply.positions
        for i, step in enumerate(steps):
            assert step.columns is not None and step.attention is not None
            expected = np.asarray(reply.context_positions + reply.positions[:i], np.int64)
            np.testing.assert_array_equal(step.columns, expected)
            frame = reply.tokens[i].attention
            assert frame is not None
            np.testing.assert_array_equal(step.attention, frame.values.max(axis=(0, 1)))


async def test_a_resumed_session_keeps_its_settings_but_not_over_what_the_user_typed(tmp_path: Path) -> None:
    async with MockKoboldServer() as server, KoboldClient(server.url, timeout=10) as client:
        path = tmp_path / "s.json"
        chat = await Chat.open(client, system="Sys.", session_path=str(path), max_length=20,
                               pruner=PrunerSettings(granularity="line"))
        await chat.send("Hello.")
        chat.save(str(path))
        frames = chat.tracker.frames
        assert frames > 0
        resumed = await Chat.open(client, session_path=str(path), pruner=PrunerSettings(max_context_tokens=7),
                                  override={"pruner": {"max_context_tokens": 150}})
        assert resumed.pruner.settings.max_context_tokens == 150  # typed: wins over the saved 0
        assert resumed.pruner.settings.granularity == "line"  # not typed: the session's own
        assert [(c.name, c.saved, c.now) for c in resumed.overridden] == [("max_context_tokens", 0, 150)]
        assert resumed.tracker.frames == frames  # /stats goes on counting where it was
        same = await Chat.open(client, session_path=str(path), override={"pruner": {"granularity": "line"}})
        assert same.overridden == []  # typed, but what was saved: nothing to say


async def test_a_session_with_a_token_outside_the_vocabulary_is_refused_and_left_alone(tmp_path: Path) -> None:
    async with MockKoboldServer() as server, KoboldClient(server.url, timeout=10) as client:
        path = tmp_path / "s.json"
        chat = await Chat.open(client, system="Sys.", max_length=20)
        await chat.send("Hello.")
        chat.save(str(path))
        data = json.loads(path.read_text())
        data["columns"]["token_id"][5] = tok.VOCAB_SIZE + 7
        path.write_text(json.dumps(data))
        saved = path.read_bytes()
        with pytest.raises(SessionError, match=f"id {tok.VOCAB_SIZE + 7}, outside"):
            await Chat.open(client, session_path=str(path))
        assert path.read_bytes() == saved
        assert load(path).state.column("token_id")[5] == tok.VOCAB_SIZE + 7  # (a valid file otherwise)
