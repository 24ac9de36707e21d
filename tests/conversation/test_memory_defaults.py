"""Memory's defaults are the pruning benchmark's choice on its tuning split, and with the real
embedder they do what they were chosen for: a question in other words finds its fact, and one
shared word about something else brings nothing back (issue 21, item 13)."""

from __future__ import annotations

import numpy as np
import pytest

from halo_client.config import Config
from halo_client.conversation.memory import Memory, MemorySettings
from halo_client.conversation.pruner import Pruner, PrunerSettings
from halo_client.conversation.state import ConversationState
from tests.conversation.test_pruner import build


def test_the_defaults_are_the_tuned_ones() -> None:
    """docs/pruning.md: chosen on the tuning split among every scorer, threshold and count."""
    assert MemorySettings() == MemorySettings(enabled=True, scorer="meaning", max_recalled=5, min_similarity=0.30,
                                              recall_questions=False, name_discount=0.5,
                                              reply_with_question=True, keep_in_context=3)
    assert Config().memory == MemorySettings()


def pruned(messages: list[tuple[str, str]], keep: int) -> tuple[Pruner, ConversationState]:
    state = build([("system", "Be brief."), *messages])
    state.brightness[:] = np.linspace(0, 1, len(state), dtype=np.float32)  # older is dimmer
    pruner = Pruner(PrunerSettings())
    pruner.prune(state, keep)
    return pruner, state


@pytest.mark.model
def test_with_the_real_embedder_meaning_finds_the_fact_and_weak_matches_stay_out() -> None:
    history = [("user", "By the way, my locker code is 4821."), ("assistant", "Noted."),
               ("user", "We should plan a fun adventure together soon."), ("assistant", "Sure."),
               ("user", "My sister's flight lands at 7:40 on Thursday."), ("assistant", "Lovely."),
               ("user", "The weather is grey and my coffee went cold."), ("assistant", "Sorry.")]
    memory = Memory()  # the defaults, and all-MiniLM-L6-v2 (fetched once into ~/.cache/halo-weave)
    for question, expected in (("Which digits open the cabinet where I leave my sports bag?", "4821"),
                               ("What time does her plane touch down?", "7:40")):
        pruner, state = pruned([*history, ("user", question)], 30)
        [recall] = memory.recall(state, pruner, question)
        assert expected in recall.event.text and recall.match.by == ("meaning",)
        assert recall.why.startswith("meaning (similarity 0.")
    octopus = "Tell me a fun fact about octopuses."
    pruner, state = pruned([*history, ("user", octopus)], 30)
    assert memory.candidates(state, pruner, octopus) == []


@pytest.mark.model
def test_with_the_real_embedder_a_name_in_the_question_does_not_bring_back_greetings() -> None:
    """LoCoMo's "What did Gina design for her store?": in all-MiniLM-L6-v2 the sentences that
    are little more than her name are nearer than the one that answers, unless the name is
    discounted as the defaults do."""
    history = [("user", "Hey Gina, hope you're doing ok!"), ("assistant", "Wow, Gina!"),
               ("user", "Here's a peek at the space I designed for my store."), ("assistant", "Thanks Gina!"),
               ("user", "The weather is grey and my coffee went cold."), ("assistant", "Sorry.")]
    question = "What did Gina design for her store?"
    pruner, state = pruned([*history, ("user", question)], 30)
    counted = Memory(MemorySettings(name_discount=0.0)).candidates(state, pruner, question)
    assert "Gina" in counted[0].event.text and "designed" not in counted[0].event.text
    [best, *_rest] = Memory().candidates(state, pruner, question)
    assert "designed for my store" in best.event.text
    assert best.why.startswith("meaning (similarity 0.") and best.why.endswith('beyond "Gina")')
