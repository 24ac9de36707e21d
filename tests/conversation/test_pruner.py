"""The conversation state and the pruner: properties that must hold for any conversation."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from halo_client.conversation.pruner import Pruner, PrunerSettings
from halo_client.conversation.state import ConversationError, ConversationState, FrameColumns
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
    pruner = Pruner(PrunerSettings(granularity=granularity, reduce=reduce))
    protected = pruner.protected_mask(state)
    result = pruner.prune(state, budget if budget else 1)
    budget = budget or 1
    active = state.active_mask()
    # never below protected content; within budget unless only protected content is left
    assert active[protected & ~state.column("template")].all()
    if result.over_budget:
        # only protected content is left: nothing that could go is still there
        assert state.active_count > budget
        if granularity == "turn":
            kept_turns = set(state.column("turn")[active].tolist())
            assert kept_turns <= set(state.column("turn")[protected & ~state.column("template")].tolist())
        else:
            assert not (active & ~protected).any()
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
    # every unit reported, now and in /pruned, is text: never a template piece of its own, no markup
    for event in [*result.events, *pruner.pruned_units(state)]:
        assert event.score == event.score and event.text.strip() and "<|im_" not in event.text, event
    assert sum(e.tokens_freed for e in result.events) == result.active_before - result.active_after
    # restore is the inverse of prune
    for event in reversed(result.events):
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
    result = Pruner(PrunerSettings(recent_share=0)).prune(state, state.active_count - 1)
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
    full = FrameColumns(request, max_length=1)
    full.add_generated(len(state) - 1)
    with pytest.raises(ConversationError, match="more generated tokens than the 1"):
        full.add_generated(len(state))  # a server that sends more than max_length
    state.brightness[:] = 0.0
    Pruner().prune(state, 1)
    assert "Fresh reply." in state.text(state.active_positions())


def test_restoring_a_sentence_brings_back_its_template_whatever_took_it() -> None:
    # hypothesis found it (test_state): a sentence prune empties a message and takes its
    # template; one sentence comes back with the template; a turn prune takes the message again,
    # template included, as "pruned"; restoring the other sentence must bring the template too
    state = build([("system", "Be brief."), ("user", "One. Two."), ("user", "Now.")])
    first = Pruner(PrunerSettings(granularity="sentence")).prune(state, 1)
    one, two = (e for e in first.events if e.kind == "sentence")
    Pruner.restore(state, one)
    Pruner(PrunerSettings(granularity="turn")).prune(state, 1)
    # the chat's /restore lists what is pruned from the audit trail: sentences, no bare template
    assert [u.text.strip() for u in Pruner().pruned_units(state)] == ["One.", "Two."]
    state.add_message("user", toks("Later."), toks("<|im_start|>user\n", True), toks("<|im_end|>\n", True))
    back = Pruner.restore(state, two)
    check_chatml(state.input_ids())
    kept = state.text(state.active_positions())
    assert "Two." in kept and "One." not in kept
    assert back.restored and back.tokens_freed == -(len(two.positions) + len(toks("<|im_start|>user\n", True))
                                                     + len(toks("<|im_end|>\n", True)))
    units = Pruner().pruned_units(state)
    assert [u.text.strip() for u in units] == ["One."]
    Pruner.restore(state, units[0])
    assert state.input_ids() == build([("system", "Be brief."), ("user", "One. Two."), ("user", "Now."),
                                       ("user", "Later.")]).input_ids()


def test_restore_refuses_an_event_that_does_not_fit_and_changes_nothing() -> None:
    state = build([("system", "S."), ("user", "Old one. Old two."), ("user", "Now.")])
    state.brightness[state.turns[1].start : state.turns[1].end] = 0.0  # "Old one." goes first
    [event] = Pruner().prune(state, state.active_count - 1).events
    deleted = state.column("deleted").copy()
    for bad, words in [(replace(event, turn=9), "no turn 9"), (replace(event, turn=0), "not in turn 0"),
                       (replace(event, positions=(10**6,)), "not in turn"),
                       (replace(event, positions=()), "not pruned"),
                       (replace(event, positions=(*event.positions, state.turns[1].start)), "not pruned")]:
        with pytest.raises(ConversationError, match=words):
            Pruner.restore(state, bad)
        np.testing.assert_array_equal(state.column("deleted"), deleted)
    Pruner.restore(state, event)
    with pytest.raises(ConversationError, match="not pruned"):
        Pruner.restore(state, event)  # twice


def test_discard_reply_restores_the_conversation() -> None:
    state = build([("system", "S."), ("user", "Q.")])
    ids, n = state.input_ids(), len(state)
    state.begin_reply(toks("<|im_start|>assistant\n", True))
    state.add_generated(*toks("Half")[0])
    state.discard_reply()
    assert state.input_ids() == ids and len(state) == n and state.turns[-1].complete
    with pytest.raises(ConversationError):
        state.add_generated(*toks("x")[0])


def naive_prune(state: ConversationState, budget: int, granularity: str, reduce: str) -> None:
    """The pruner as the issue states it, one unit at a time in Python loops: while over budget,
    remove the unprotected unit with the lowest max (or mean) brightness (the older one on a
    tie); a message whose content is all gone loses its template too."""
    pruner = Pruner()
    protected = pruner.protected_mask(state)
    turn, template = state.column("turn"), state.column("template")
    if granularity == "turn":
        keep = set(turn[protected & ~template].tolist())
        candidate = np.array([t not in keep for t in turn.tolist()])
    else:
        candidate = ~protected
    key = state.column(granularity)

    def deleted_at(p: int) -> bool:
        return bool(state.column("deleted")[p])

    def delete(p: int) -> None:
        state.mark_deleted(np.array([p]), turn=0, score=0.0, reason="pruned")

    while state.active_count > budget:
        units: dict[int, list[int]] = {}
        for p in range(len(state)):
            if candidate[p] and not deleted_at(p):
                units.setdefault(int(key[p]), []).append(p)
        if not units:
            return
        def score(ps: list[int]) -> float:
            values = [float(state.brightness[p]) for p in ps]
            return max(values) if reduce == "max" else sum(values) / len(values)
        unit = min(units, key=lambda u: (score(units[u]), u))
        for p in units[unit]:
            delete(p)
        for t in state.turns:
            span = range(t.start, t.end)
            content = [p for p in span if not template[p]]
            if t.complete and content and all(deleted_at(p) for p in content):
                for p in span:
                    delete(p)


@settings(max_examples=120, deadline=None)
@given(conversations, st.integers(1, 300), st.sampled_from(["sentence", "line", "turn"]),
       st.sampled_from(["max", "mean"]), st.integers(0, 2**32 - 1), st.booleans())
def test_prune_equals_the_naive_loop(messages: list[tuple[str, str]], budget: int, granularity: str,
                                     reduce: str, seed: int, reply: bool) -> None:
    in_progress = "Fresh. Reply." if reply else None
    fast, slow = build(messages, in_progress), build(messages, in_progress)
    rng = np.random.default_rng(seed)
    values = rng.integers(0, 4, len(fast)).astype(np.float32)  # small integers: many ties
    fast.brightness[:] = values
    slow.brightness[:] = values
    result = Pruner(PrunerSettings(granularity=granularity, reduce=reduce, recent_share=0)).prune(fast, budget)
    naive_prune(slow, budget, granularity, reduce)
    np.testing.assert_array_equal(fast.column("deleted"), slow.column("deleted"))
    assert result.active_after == slow.active_count
    assert sum(e.tokens_freed for e in result.events) == result.active_before - result.active_after


@pytest.mark.parametrize(("protect", "kept"), [(0, set()), (1, {3, 4}), (2, {1, 2, 3, 4})])
def test_the_latest_exchanges_are_protected(protect: int, kept: set[int]) -> None:
    """With a tight budget, the reply just shown (and the question it answers) stays by default."""
    state = build([("system", "S."), ("user", "Old question?"), ("assistant", "Old answer. More."),
                   ("user", "New question?"), ("assistant", "New answer. Also this.")])
    state.brightness[:] = 0.0  # everything equally dim: only protection decides
    Pruner(PrunerSettings(protect_exchanges=protect)).prune(state, 1)
    content = ~state.column("template") & (state.column("role") != 0)
    remaining = set(state.column("turn")[content & state.active_mask()].tolist())
    assert remaining == kept


def test_the_newest_share_of_the_budget_goes_last_oldest_first() -> None:
    """Bright old text stays before dim new text only outside the recent window; inside it, age
    decides, and only once everything older is gone."""
    messages = [("system", "S."), ("user", "Old bright. Old dim."), ("assistant", "Mid dim. Mid bright."),
                ("user", "New dim one. New dim two."), ("assistant", "Last reply.")]

    def pruned(share: float, budget: int) -> list[str]:
        state = build(messages)
        content = ~state.column("template")
        text = {int(s): state.text(np.flatnonzero(content & (state.column("sentence") == s))).strip()
                for s in np.unique(state.column("sentence")[content])}
        for sid, words in text.items():
            state.brightness[state.column("sentence") == sid] = 9.0 if "bright" in words else 1.0
        result = Pruner(PrunerSettings(recent_share=share, protect_exchanges=0)).prune(state, budget)
        return [e.text.strip() for e in result.events if e.kind == "sentence"]

    full = len(build(messages))
    assert pruned(0.0, full - 20) == ["Old dim.", "Mid dim.", "New dim one."]  # by brightness alone
    assert pruned(0.5, full - 20) == ["Old dim.", "Mid dim.", "Old bright."]  # the newest half of the budget stays
    # the window is most of a small budget: everything older goes first (dim, then bright), then
    # the window itself, oldest first
    assert pruned(0.9, 30) == ["Old dim.", "Mid dim.", "Old bright.", "Mid bright.", "New dim one.", "New dim two."]
