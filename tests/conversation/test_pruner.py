"""The dictionary and the pruner: properties that must hold for any conversation."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from halo_client.conversation.dictionary import ConversationError, ConversationState, FrameColumns
from halo_client.conversation.pruner import Pruner, PrunerSettings
from halo_client.testing import check_chatml
from halo_client.testing import toy_tokenizer as tok

SENTENCES = ["The fox ran.", "It was 3.14 units!", "Why?", "Dr. Who came back.", "A long day.\n",
             "My name is Marta.", "See you soon...", "Yes!"]


def toks(text: str, special: bool = False) -> list[tuple[int, bytes]]:
    return [(t, tok.token_bytes(t)) for t in tok.tokenize(text, add_special_tokens=special)]


def build(messages: list[tuple[str, str]], reply: str | None = None) -> ConversationState:
    state = ConversationState()
    for role, text in messages:
        state.add_message(role, toks(text), toks(f"<|im_start|>{role}\n", True), toks("<|im_end|>\n", True))  # type: ignore[arg-type]
    if reply is not None:
        state.begin_reply(toks("<|im_start|>assistant\n", True))
        for t, p in toks(reply):
            state.add_generated(t, p)
    return state


conversations = st.lists(
    st.tuples(st.sampled_from(["user", "assistant"]),
              st.lists(st.sampled_from(SENTENCES), min_size=1, max_size=5).map(" ".join)),
    min_size=1, max_size=8,
).map(lambda ms: [("system", "Be brief. Be kind."), *ms])


@settings(max_examples=150, deadline=None)
@given(conversations, st.integers(0, 400), st.sampled_from(["sentence", "line", "turn"]),
       st.sampled_from(["max", "mean"]), st.integers(0, 2**32 - 1))
def test_prune_properties(messages: list[tuple[str, str]], budget: int, granularity: str, reduce: str,
                          seed: int) -> None:
    state = build(messages)
    rng = np.random.default_rng(seed)
    state.brightness[:] = rng.random(len(state)).astype(np.float32)
    before_ids = state.input_ids()
    pruner = Pruner(PrunerSettings(granularity=granularity, reduce=reduce))  # type: ignore[arg-type]
    protected = pruner.protected_mask(state)
    result = pruner.prune(state, budget if budget else 1)
    budget = budget or 1
    active = state.active_mask()
    # never below protected content; within budget unless only protected content is left
    assert active[protected & ~state.column("template")].all()
    if result.over_budget:
        assert state.active_count > budget
        if granularity != "turn":
            assert (active <= protected).all() or state.active_count > budget
    else:
        assert state.active_count <= budget
    # input_ids never holds a deleted token, and keeps position order
    ids = np.asarray(state.column("token_id"))[active].tolist()
    assert state.input_ids() == ids
    # the template stays valid ChatML
    check_chatml(state.input_ids())
    # audit trail
    deleted = ~active
    assert (state.column("deleted_turn")[deleted] >= 0).all()
    assert (state.column("deleted_reason")[deleted] > 0).all()
    # restore is the inverse of prune
    for event in reversed([e for e in result.events if e.score == e.score]):  # skip template-only events
        if state.column("deleted")[list(event.positions)].all():
            pruner.restore(state, event)
    assert state.input_ids() == before_ids
    assert not state.column("deleted").any()


@settings(max_examples=50, deadline=None)
@given(conversations)
def test_positions_are_unique_and_never_reused(messages: list[tuple[str, str]]) -> None:
    state = build(messages)
    n = len(state)
    Pruner().prune(state, 10)
    state.add_message("user", toks("More words."), toks("<|im_start|>user\n", True), toks("<|im_end|>\n", True))
    assert len(state) > n  # new rows, new positions
    rows = list(state.rows())
    assert [r.position for r in rows] == list(range(len(state)))
    assert all(r.deleted == (r.deleted_turn is not None) for r in rows)


def test_dimmest_sentence_goes_first_and_the_current_message_stays() -> None:
    state = build([("system", "Be brief."), ("user", "Keep me. Drop me. Keep me too."), ("assistant", "Okay."),
                   ("user", "Current question?")])
    sentence = state.column("sentence")
    target = sentence[~state.column("template") & (state.column("turn") == 1)].min() + 1  # "Drop me."
    state.brightness[:] = 5.0
    state.brightness[sentence == target] = 0.5
    state.brightness[state.column("turn") == 3] = 0.0  # the current message: dim but protected
    result = Pruner().prune(state, state.active_count - 1)
    assert [e.text.strip() for e in result.events] == ["Drop me."]
    assert result.events[0].score == pytest.approx(0.5)
    assert "Current question?" in state.text(state.active_positions())


def test_over_budget_with_only_protected_content_says_so() -> None:
    state = build([("system", "A long system prompt that stays. It is protected."), ("user", "Hi.")])
    result = Pruner().prune(state, 3)
    assert result.over_budget and "protected" in result.message
    assert state.active_count == len(state)


def test_pinned_sentences_stay() -> None:
    state = build([("system", "S."), ("user", "Pin me. Not me."), ("user", "Now.")])
    first = int(state.column("sentence")[~state.column("template") & (state.column("turn") == 1)].min())
    state.pin(first)
    state.brightness[:] = 0.0
    Pruner().prune(state, 1)
    assert "Pin me." in state.text(state.active_positions())


def test_reply_in_progress_is_protected_and_frame_columns_map() -> None:
    state = build([("system", "S."), ("user", "Old stuff. More old stuff.")], reply="Fresh reply.")
    request = state.active_positions()[: len(state) - 4]
    cols = FrameColumns(request, max_length=10)
    cols.add_generated(int(len(state) - 1))
    assert cols.for_frame(len(request) + 1)[-1] == len(state) - 1
    with pytest.raises(ConversationError):
        cols.for_frame(len(request) + 2)
    state.brightness[:] = 0.0
    Pruner().prune(state, 1)
    assert "Fresh reply." in state.text(state.active_positions())


def test_discard_reply_restores_the_conversation() -> None:
    state = build([("system", "S."), ("user", "Q.")])
    ids, n = state.input_ids(), len(state)
    state.begin_reply(toks("<|im_start|>assistant\n", True))
    state.add_generated(*toks("Half")[0])
    state.discard_reply()
    assert state.input_ids() == ids and len(state) == n and state.turns[-1].complete
    with pytest.raises(ConversationError):
        state.add_generated(*toks("x")[0])
