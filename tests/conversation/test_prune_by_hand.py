"""`Pruner.prune_sentence`: the workbench's "Prune sentence" button."""

from __future__ import annotations

import numpy as np
import pytest

from halo_client.conversation.pruner import Pruner
from halo_client.conversation.state import ConversationError
from halo_client.testing import check_chatml
from tests.conversation.test_pruner import build


def test_a_sentence_goes_whatever_its_brightness_and_restore_brings_it_back() -> None:
    state = build([("system", "Be brief."), ("user", "The fox ran. Why?"), ("user", "Yes!")])
    state.brightness[:] = 100.0  # bright: the automatic pruner would never take it
    user = state.turns[1]
    sentence = int(state.column("sentence")[user.start + 3])
    events = Pruner().prune_sentence(state, sentence)
    assert len(events) == 1 and events[0].unit == sentence and events[0].score == 100.0
    gone = np.flatnonzero(state.column("sentence") == sentence)
    assert state.column("deleted")[gone].all() and events[0].positions == tuple(gone.tolist())
    assert not state.column("deleted")[user.start : user.start + 3].any()  # the template stays
    check_chatml(state.input_ids())
    Pruner.restore(state, events[0])
    assert not state.column("deleted").any()


def test_the_last_sentence_of_a_message_takes_its_template_along() -> None:
    state = build([("system", "Be brief."), ("user", "Why?"), ("user", "Yes!")])
    sentence = int(state.column("sentence")[state.turns[1].start + 3])
    events = Pruner().prune_sentence(state, sentence)
    # one item: the template is not a unit of its own (nothing to list, restore or report apart)
    [event] = events
    assert event.kind == "sentence" and event.unit == sentence and event.text == "Why?"
    span = range(state.turns[1].start, state.turns[1].end)
    assert sorted(event.positions + event.template) == list(span)
    assert event.tokens_freed == len(span) and event.size == len(event.positions)
    assert state.column("deleted")[state.turns[1].start : state.turns[1].end].all()
    check_chatml(state.input_ids())


def test_pinned_pruned_template_and_streaming_text_are_refused() -> None:
    state = build([("system", "Be brief."), ("user", "The fox ran. Why?")], reply="Yes! It was.")
    pruner = Pruner()
    user = state.turns[1]
    sentence = int(state.column("sentence")[user.start + 3])
    state.pin(sentence)
    with pytest.raises(ConversationError, match="pinned"):
        pruner.prune_sentence(state, sentence)
    with pytest.raises(ConversationError, match="no active text"):
        pruner.prune_sentence(state, -1)  # template tokens
    streaming = int(state.column("sentence")[state.turns[-1].end - 1])
    with pytest.raises(ConversationError, match="reply being written"):
        pruner.prune_sentence(state, streaming)
    state.pin(sentence, False)
    pruner.prune_sentence(state, sentence)
    with pytest.raises(ConversationError, match="no active text"):
        pruner.prune_sentence(state, sentence)
