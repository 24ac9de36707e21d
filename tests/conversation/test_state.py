"""The conversation state under any sequence of chat operations: positions, input_ids, frames."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from halo_client.conversation.pruner import PruneEvent, Pruner, PrunerSettings
from halo_client.conversation.state import COLUMNS, ConversationError, ConversationState
from halo_client.conversation.tracker import AttentionTracker
from halo_client.testing import check_chatml
from tests.conversation.test_pruner import SENTENCES, toks

operations = st.lists(
    st.one_of(
        st.tuples(st.just("message"), st.sampled_from(["user", "assistant"]),
                  st.lists(st.sampled_from(SENTENCES), min_size=1, max_size=4).map(" ".join)),
        st.tuples(st.just("reply"), st.sampled_from(["end", "discard"]),
                  st.lists(st.sampled_from(SENTENCES), min_size=0, max_size=3).map(" ".join)),
        st.tuples(st.just("prune"), st.sampled_from(["sentence", "line", "turn"]), st.integers(1, 120)),
        st.tuples(st.just("restore"), st.just(""), st.integers(0, 10)),
        # as the chat's /restore does it: a unit reconstructed from the audit trail
        st.tuples(st.just("restore unit"), st.sampled_from(["sentence", "line", "turn"]), st.integers(0, 10)),
    ),
    max_size=25,
)


@settings(max_examples=120, deadline=None)
@given(operations, st.integers(0, 2**32 - 1))
def test_any_chat_keeps_the_state_consistent(ops: list[tuple[str, str, object]], seed: int) -> None:
    rng = np.random.default_rng(seed)
    state = ConversationState()
    state.add_message("system", toks("Be brief."), toks("<|im_start|>system\n", True), toks("<|im_end|>\n", True))
    committed: dict[int, tuple[int, bytes]] = {}  # position -> (token id, piece), once committed
    pruned: list[PruneEvent] = []
    tracker = AttentionTracker()
    for op, arg, extra in ops:
        if op == "message":
            state.add_message(arg, toks(str(extra)), toks(f"<|im_start|>{arg}\n", True),  # type: ignore[arg-type]
                              toks("<|im_end|>\n", True))
        elif op == "reply":
            ids_before, n_before = state.input_ids(), len(state)
            state.begin_reply(toks("<|im_start|>assistant\n", True))
            request = state.input_ids()
            columns = state.frame_columns(max_length=64)
            for i, (token_id, piece) in enumerate(toks(str(extra))):
                ctx = len(request) + i
                frame = rng.random((2, 2, ctx)).astype(np.float32)
                frame /= frame.sum(-1, keepdims=True)
                positions = columns.for_frame(ctx)
                # column j is the token the server saw at j: the request, then the reply so far
                assert state.column("token_id")[positions].tolist() == request + [
                    t for t, _ in toks(str(extra))[:i]]
                tracker.update(state.brightness, positions, frame)
                columns.add_generated(state.add_generated(token_id, piece))
            if arg == "end":
                state.end_reply(toks("<|im_end|>\n", True))
            else:
                state.discard_reply()
                assert state.input_ids() == ids_before and len(state) == n_before
        elif op == "prune":
            pruner = Pruner(PrunerSettings(granularity=arg))
            result = pruner.prune(state, int(extra))  # type: ignore[call-overload]
            pruned.extend(e for e in result.events if e.score == e.score)
            assert result.over_budget or state.active_count <= int(extra)  # type: ignore[call-overload]
        elif op == "restore unit":
            units = Pruner(PrunerSettings(granularity=arg)).pruned_units(state)
            if units:
                Pruner.restore(state, units[int(extra) % len(units)])  # type: ignore[call-overload]
        elif pruned:
            event = pruned.pop(int(extra) % len(pruned))  # type: ignore[call-overload]
            if state.column("deleted")[list(event.positions)].all():
                Pruner.restore(state, event)
        # positions: every row once, in order; a committed position never changes its token
        rows = list(state.rows())
        assert [r.position for r in rows] == list(range(len(state)))
        for r in rows:
            assert committed.setdefault(r.position, (r.token_id, r.piece)) == (r.token_id, r.piece)
        # input_ids: the non-deleted tokens in position order, never a deleted one
        active = ~state.column("deleted")
        assert state.input_ids() == state.column("token_id")[active].tolist()
        assert len(state.input_ids()) == state.active_count
        check_chatml(state.input_ids())  # the template is never corrupted
        # a message's template is whole, and there whenever any of its content is
        template, turn = state.column("template"), state.column("turn")
        for t in state.turns:
            in_turn = turn == t.turn_id
            kept = set(active[in_turn & template].tolist())
            assert len(kept) <= 1, f"turn {t.turn_id} has half a template"
            if active[in_turn & ~template].any():
                assert kept == {True}, f"turn {t.turn_id} has content without its template"


def test_a_hundred_thousand_tokens_take_a_few_megabytes() -> None:
    state = ConversationState()
    words = [(5, b" word")] * 19 + [(6, b".")]
    for turn in range(1000):
        state.add_message("user" if turn % 2 else "assistant", words * 5, [(1, b"<s>")], [(2, b"</s>")])
    assert len(state) == 102_000
    ids = state.input_ids()
    result = Pruner().prune(state, 50_000)
    assert len(ids) == 102_000 and state.active_count <= 50_000 and result.events
    # columns: 12 numpy arrays, a few bytes a token (the pieces list aside)
    assert sum(state.column(name).nbytes for name in COLUMNS) < 40 * 102_000
    row = state.row(123)
    with pytest.raises(AttributeError):
        row.brightness = 3.0  # type: ignore[misc]
    with pytest.raises(ValueError):
        state.column("brightness")[0] = 3.0  # read-only views


def test_a_reply_must_be_opened_and_closed_in_order() -> None:
    state = ConversationState()
    with pytest.raises(ConversationError, match="no reply is open"):
        state.add_generated(1, b"x")
    state.begin_reply([(1, b"<s>")])
    with pytest.raises(ConversationError, match="still open"):
        state.add_message("user", [(5, b"hi")])
    with pytest.raises(ConversationError, match="already open"):
        state.begin_reply([])
