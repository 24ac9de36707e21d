"""Memory: the newest message brings back the pruned sentences it matches, and only those."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from halo_client.conversation.memory import Memory, MemorySettings, protected_positions, relevance
from halo_client.conversation.pruner import Pruner, PrunerSettings
from halo_client.conversation.state import ConversationError, ConversationState
from halo_client.testing import check_chatml
from tests.conversation.test_pruner import build

FACTS = [("user", "My locker code is 4821. I also like tea."), ("assistant", "Noted."),
         ("user", "My sister is called Marta."), ("assistant", "Nice name."),
         ("user", "The weather is grey today."), ("assistant", "Sorry to hear that.")]


def pruned_chat(question: str) -> tuple[Pruner, ConversationState]:
    state = build([("system", "Be brief."), *FACTS, ("user", question)])
    state.brightness[:] = np.linspace(0, 1, len(state), dtype=np.float32)  # older is dimmer
    pruner = Pruner(PrunerSettings())
    pruner.prune(state, len(state) - 25)
    return pruner, state


def test_relevance_ranks_the_matching_text_first() -> None:
    texts = ["My locker code is 4821.", "My sister is called Marta.", "The weather is grey.", "Penguins swim."]
    scores = relevance(texts, "What is my locker code?")
    assert scores[0] > 0 and scores[1] == scores[2] == scores[3] == 0  # "my" and "is" say nothing
    assert (relevance(texts, "") == 0).all() and relevance([], "code").size == 0
    assert (relevance(texts, "Why is that? What do you think?") == 0).all()  # stop words alone match nothing


def test_a_question_recalls_the_pruned_fact_and_marks_it() -> None:
    pruner, state = pruned_chat("What was my locker code again?")
    gone = [e.text for e in pruner.pruned_units(state)]
    assert any("locker code" in t for t in gone)
    recalls = Memory(MemorySettings(max_recalled=1)).recall(state, pruner, "What was my locker code again?")
    assert len(recalls) == 1 and "locker code is 4821" in recalls[0].event.text
    back = np.asarray(recalls[0].event.positions)
    assert state.active_mask()[back].all()
    turn = len(state.turns) - 1
    assert all(state.row(int(p)).recalled_turn == turn for p in back)
    check_chatml(state.input_ids())  # its message's template came back with it
    # the prune that follows keeps what was recalled and takes something else
    budget = state.active_count - 5
    pruner.prune(state, budget, protect=protected_positions(state, recalls))
    assert state.active_mask()[back].all() and state.active_count <= budget
    check_chatml(state.input_ids())


def test_nothing_matching_nothing_recalled() -> None:
    pruner, state = pruned_chat("Tell me a joke about penguins.")
    before = state.active_mask().copy()
    assert Memory().recall(state, pruner, "Tell me a joke about penguins.") == []
    assert (state.active_mask() == before).all()


def test_settings_bound_what_comes_back() -> None:
    pruner, state = pruned_chat("My locker code and my sister?")
    assert Memory(MemorySettings(enabled=False)).recall(state, pruner, "locker code sister") == []
    assert Memory(MemorySettings(max_recalled=0)).recall(state, pruner, "locker code sister") == []
    assert Memory(MemorySettings(min_relevance=1e9)).recall(state, pruner, "locker code sister") == []
    two = Memory(MemorySettings(max_recalled=2)).candidates(state, pruner, "locker code sister")
    assert len(two) <= 2 and [s for _e, s in two] == sorted((s for _e, s in two), reverse=True)


@settings(max_examples=60, deadline=None)
@given(st.text(max_size=60))
def test_any_message_is_a_safe_query(query: str) -> None:
    """FTS5 has a query syntax (quotes, AND, NEAR, *, column filters): a message is never parsed as one."""
    pruner, state = pruned_chat("Hi.")
    for recall in Memory().recall(state, pruner, query):
        assert recall.relevance > 0


def test_only_active_tokens_can_be_marked_recalled() -> None:
    pruner, state = pruned_chat("Hi.")
    gone = pruner.pruned_units(state)[0]
    with pytest.raises(ConversationError, match="active"):
        state.mark_recalled(np.asarray(gone.positions), turn=1)
