"""Memory: the newest message brings back the pruned sentences it matches, and only those."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from halo_client.conversation.memory import (
    Memory,
    MemorySettings,
    WordIndex,
    content_terms,
    protected_positions,
    relevance,
)
from halo_client.conversation.memory.lexical import query_names
from halo_client.conversation.memory.recall import questions, replies
from halo_client.conversation.pruner import Pruner, PrunerSettings
from halo_client.conversation.state import ConversationError, ConversationState
from halo_client.errors import HaloError
from halo_client.testing import check_chatml
from halo_client.testing.embedder import WordHashEmbedder
from tests.conversation.test_pruner import build

WORDS = MemorySettings(scorer="words")

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
    recalls = Memory(WORDS).recall(state, pruner, "What was my locker code again?")
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
    assert Memory(WORDS).recall(state, pruner, "Tell me a joke about penguins.") == []
    assert (state.active_mask() == before).all()


def test_settings_bound_what_comes_back() -> None:
    pruner, state = pruned_chat("My locker code and my sister?")
    assert Memory(MemorySettings(enabled=False)).recall(state, pruner, "locker code sister") == []
    assert Memory(MemorySettings(max_recalled=0)).recall(state, pruner, "locker code sister") == []
    assert Memory(WORDS.model_copy(update={"min_relevance": 1e9})).recall(state, pruner, "locker code sister") == []
    two = Memory(WORDS.model_copy(update={"max_recalled": 2})).candidates(state, pruner, "locker code sister")
    assert len(two) <= 2 and [m.relevance for m in two] == sorted((m.relevance for m in two), reverse=True)


@settings(max_examples=60, deadline=None)
@given(st.text(max_size=60))
def test_any_message_is_a_safe_query(query: str) -> None:
    """FTS5 has a query syntax (quotes, AND, NEAR, *, column filters): a message is never parsed as one."""
    pruner, state = pruned_chat("Hi.")
    for recall in Memory(WORDS).recall(state, pruner, query):
        assert recall.relevance > 0 and recall.why.startswith("words")


def test_only_active_tokens_can_be_marked_recalled() -> None:
    pruner, state = pruned_chat("Hi.")
    gone = pruner.pruned_units(state)[0]
    with pytest.raises(ConversationError, match="active"):
        state.mark_recalled(np.asarray(gone.positions), turn=1)


def test_meaning_finds_what_shares_no_word_and_says_why() -> None:
    """A question in other words: BM25 has nothing to go on, the embedding does."""
    embedder = WordHashEmbedder(synonyms={"digits": "code", "cabinet": "locker"})
    pruner, state = pruned_chat("Which digits open my cabinet?")
    query = "Which digits open my cabinet?"
    assert Memory(WORDS).candidates(state, pruner, query) == []
    memory = Memory(MemorySettings(scorer="hybrid", min_similarity=0.4), embedder=embedder)
    [recall] = memory.recall(state, pruner, query)
    assert "locker code is 4821" in recall.event.text
    assert recall.match.by == ("meaning",) and recall.why.startswith("meaning (similarity 0.")


def test_a_reply_is_matched_with_the_question_before_it_and_the_why_says_so() -> None:
    """A short answer says nothing alone; the question it answers says what it is about."""
    state = build([("system", "Be brief."), ("assistant", "Which team do you cheer for?"),
                   ("user", "The Minnesota Wolves!"), ("assistant", "Nice."), ("user", "The weather is grey today."),
                   ("assistant", "Sorry."), ("user", "Which team do I cheer for these days?")])
    state.brightness[:] = np.linspace(0, 1, len(state), dtype=np.float32)
    pruner = Pruner(PrunerSettings())
    pruner.prune(state, len(state) - 30)
    query = "Which team do I cheer for these days?"
    settings = MemorySettings(scorer="meaning", min_similarity=0.3)
    alone = Memory(settings.model_copy(update={"reply_with_question": False}), embedder=WordHashEmbedder())
    assert alone.candidates(state, pruner, query) == []  # the question may not come back, the reply shares nothing
    [match] = Memory(settings, embedder=WordHashEmbedder()).candidates(state, pruner, query)
    assert "Minnesota Wolves" in match.event.text and match.question == "Which team do you cheer for?"
    assert match.why == f"meaning (similarity {match.similarity:.2f} with the question before it)"


def test_which_texts_reply_to_a_question() -> None:
    asks = questions(["Where to?", "Paris.", "Why?", "Who knows?", "Art.", "Fine.", "Ok?"])
    assert replies(asks).tolist() == [1, 4]  # a question after a question, or a second sentence, is no reply
    assert replies(questions([])).tolist() == [] and replies(questions(["Paris."])).tolist() == []


@pytest.mark.parametrize(("text", "names"), [
    ("What did Gina design for her store?", ["Gina"]),
    ("When did Caroline go to the LGBTQ support group with Caroline's mum?", ["Caroline"]),
    ("Gina, what did I say about Paris?", ["Paris"]),  # the first word's capital says nothing
    ("what did I tell you about my sister?", []),
    ("", []),
])
def test_the_names_in_a_message(text: str, names: list[str]) -> None:
    assert query_names(text) == names


def test_a_name_in_the_question_is_discounted_and_the_why_says_so() -> None:
    """The sentence that is only the name is nearest until the name is discounted."""
    state = build([("system", "Be brief."), ("user", "I painted the walls of the shop myself."),
                   ("assistant", "Thanks, Gina!"), ("user", "The weather is grey today."), ("assistant", "Sorry."),
                   ("user", "What did Gina design for her store?")])
    state.brightness[:] = np.linspace(0, 1, len(state), dtype=np.float32)
    pruner = Pruner(PrunerSettings())
    pruner.prune(state, len(state) - 45)
    query = "What did Gina design for her store?"
    embedder = WordHashEmbedder(synonyms={"painted": "design", "shop": "store"})
    settings = MemorySettings(scorer="meaning", min_similarity=0.1)
    [counted, *_] = Memory(settings.model_copy(update={"name_discount": 0.0}), embedder=embedder).candidates(
        state, pruner, query)
    assert "Gina" in counted.event.text and counted.why == f"meaning (similarity {counted.similarity:.2f})"
    [discounted] = Memory(settings, embedder=embedder).candidates(state, pruner, query)
    assert "painted" in discounted.event.text and discounted.names == ("Gina",)
    assert discounted.why == f'meaning (similarity {discounted.similarity:.2f} beyond "Gina")'


def test_one_shared_word_about_something_else_does_not_come_back() -> None:
    """Issue 21 item 13: "fun fact about octopuses" recalled "...plan a fun adventure together"."""
    state = build([("system", "Be brief."), ("user", "We should plan a fun adventure together soon."),
                   ("assistant", "Sure."), ("user", "The weather is grey today."), ("assistant", "Sorry."),
                   ("user", "Tell me a fun fact about octopuses.")])
    state.brightness[:] = np.linspace(0, 1, len(state), dtype=np.float32)
    pruner = Pruner(PrunerSettings())
    pruner.prune(state, len(state) - 12)
    query = "Tell me a fun fact about octopuses."
    [words_only] = Memory(WORDS).candidates(state, pruner, query)  # BM25 alone takes the one word
    assert words_only.words == ("fun",) and "adventure" in words_only.event.text
    hybrid = Memory(MemorySettings(scorer="hybrid", min_similarity=0.6, min_similarity_with_words=0.5),
                    embedder=WordHashEmbedder())
    assert hybrid.candidates(state, pruner, query) == []


def test_an_earlier_question_does_not_come_back_for_a_later_one() -> None:
    """A later question asks for what was answered: the earlier question in its words matches it
    too, and only the answer comes back, unless the settings let questions back."""
    state = build([("system", "Be brief."), ("user", "What was my locker code, do you remember?"),
                   ("assistant", "Your locker code is 4821."), ("user", "The weather is grey today."),
                   ("assistant", "Sorry."), ("user", "My locker code, what was it?")])
    state.brightness[:] = np.linspace(0, 1, len(state), dtype=np.float32)
    pruner = Pruner(PrunerSettings())
    pruner.prune(state, len(state) - 30)
    query = "My locker code, what was it?"
    assert any(e.text.strip().endswith("?") for e in pruner.pruned_units(state))
    let_in = WORDS.model_copy(update={"max_recalled": 2, "recall_questions": True})
    both = Memory(let_in).candidates(state, pruner, query)
    assert sorted(m.event.text.strip().endswith("?") for m in both) == [False, True]
    [answer] = Memory(WORDS.model_copy(update={"max_recalled": 2})).candidates(state, pruner, query)
    assert "4821" in answer.event.text


@pytest.mark.parametrize(("text", "asks"), [("Where's that?", True), ('She said "why?"', True),
                                            ("Is it (really)?  ", True), ("Why? Because I said so.", False),
                                            ("My code is 4821.", False), ("", False)])
def test_a_question_is_a_sentence_that_ends_asking(text: str, asks: bool) -> None:
    assert questions([text]).tolist() == [asks]


def test_only_what_is_new_is_embedded() -> None:
    embedder = WordHashEmbedder()
    memory = Memory(MemorySettings(scorer="meaning", min_similarity=-1.0), embedder=embedder)
    pruner, state = pruned_chat("Hi.")
    archived = len(memory.archive(state, pruner)[2])
    memory.candidates(state, pruner, "my locker")
    memory.candidates(state, pruner, "my sister")
    assert embedder.calls == [archived, 1, 1]  # the archive once, then each query alone
    memory.candidates(state, pruner, "What did Marta say?")
    memory.candidates(state, pruner, "Where does Marta live?")
    assert embedder.calls[3:] == [2, 1]  # a name's vector is made once, with its first message


def test_without_its_embedder_memory_matches_words_and_says_so() -> None:
    def unavailable() -> WordHashEmbedder:
        raise HaloError("sentence embeddings need the tokenizers package, which is not installed.")

    memory = Memory(MemorySettings(scorer="hybrid"), load_embedder=unavailable)
    pruner, state = pruned_chat("What was my locker code again?")
    [match] = memory.candidates(state, pruner, "What was my locker code again?")
    assert memory.scorer == "words" and memory.notice is not None and "tokenizers" in memory.notice
    assert match.by == ("words",) and match.similarity is None and match.words == ("locker", "code")


def test_memory_loads_the_embedder_its_settings_name(monkeypatch: pytest.MonkeyPatch) -> None:
    from halo_client.conversation.memory import recall

    asked: list[str | None] = []

    def load(progress: object = None, name: str | None = None) -> WordHashEmbedder:
        asked.append(name)
        return WordHashEmbedder()

    monkeypatch.setattr(recall, "default_embedder", load)
    for name in ("all-mpnet-base-v2", "all-MiniLM-L6-v2"):
        memory = Memory(MemorySettings(embedder=name))
        pruner, state = pruned_chat("What was my locker code again?")
        assert memory.candidates(state, pruner, "What was my locker code again?")
    assert asked == ["all-mpnet-base-v2", "all-MiniLM-L6-v2"]  # loaded once each, when first needed
    with pytest.raises(ValueError, match="embedder"):
        MemorySettings(embedder="bge-small")


def test_the_word_index_follows_the_archive() -> None:
    index = WordIndex()
    index.sync(["My locker code is 4821.", "Penguins swim."])
    assert index.scores(["Penguins swim."], "do penguins swim")[0] > 0
    index.sync(["Penguins swim."])  # the locker sentence was restored: it is no longer searched
    assert "My locker code is 4821." not in index.rows
    assert index.scores(["Penguins swim."], "locker")[0] == 0
    assert index.matched_words("Penguins swimming all day.", "Do penguins swim?") == ["penguins", "swim"]


def test_content_terms_are_stemmed_without_stop_words() -> None:
    assert content_terms("What is my locker code?") == {"locker", "code"}
    assert content_terms("The lockers, coded!") == {"locker", "code"}
    assert content_terms("Where is it?") == set()


def unpruned_chat(question: str) -> tuple[Pruner, ConversationState]:
    """The chat of `pruned_chat` before its first prune: nothing archived yet."""
    state = build([("system", "Be brief."), *FACTS, ("user", question)])
    state.brightness[:] = np.linspace(0, 1, len(state), dtype=np.float32)  # older is dimmer
    return Pruner(PrunerSettings()), state


def test_a_match_still_in_the_context_is_kept_through_the_prune() -> None:
    """At the first prune nothing is archived: what the question asks for is still in the context,
    the dimmest, and the pruner alone would take it out first."""
    query = "Which digits open my cabinet?"
    settings = MemorySettings(scorer="meaning", min_similarity=0.4)
    embedder = WordHashEmbedder(synonyms={"digits": "code", "cabinet": "locker"})
    pruner, state = unpruned_chat(query)
    budget = len(state) - 25  # `pruned_chat`'s: the fact goes
    [kept] = Memory(settings, embedder=embedder).recall(state, pruner, query)
    assert kept.kept and kept.action == "kept" and "locker code is 4821" in kept.event.text
    assert kept.why.startswith("meaning (similarity 0.") and not kept.event.restored
    assert all(state.row(p).recalled_turn is None for p in kept.event.positions)  # nothing came back
    pruner.prune(state, budget, protect=protected_positions(state, [kept]))
    assert state.active_mask()[list(kept.event.positions)].all() and state.active_count <= budget
    check_chatml(state.input_ids())
    # without it the same prune takes the fact out
    pruner, state = unpruned_chat(query)
    off = Memory(settings.model_copy(update={"keep_in_context": 0}), embedder=embedder)
    assert off.recall(state, pruner, query) == []
    pruner.prune(state, budget)
    assert "locker code" not in state.text(state.active_positions())


def test_what_is_kept_in_the_context_follows_memory_rules() -> None:
    """At most `keep_in_context`, best first, at the threshold; a question is never kept for a
    later one; protected text (the message itself) and what just came back are not candidates."""
    embedder = WordHashEmbedder()
    state = build([("system", "Be brief."), ("user", "What is the locker code?"), ("assistant", "Noted."),
                   ("user", "The locker code is 4821."), ("assistant", "The locker is blue."),
                   ("user", "The weather is grey today."), ("assistant", "Sorry."),
                   ("user", "What was the locker code?")])
    pruner = Pruner(PrunerSettings())
    query = "What was the locker code?"
    matches = Memory(MemorySettings(min_similarity=0.3), embedder=embedder).in_context(state, pruner, query)
    texts = [m.event.text for m in matches]
    assert texts[0] == "The locker code is 4821." and "What is the locker code?" not in texts
    assert all(m.similarity is not None and m.similarity >= 0.3 for m in matches)
    assert all("grey" not in t and t != query for t in texts)
    [best] = Memory(MemorySettings(min_similarity=0.3, keep_in_context=1), embedder=embedder).in_context(
        state, pruner, query)
    assert best.event.text == texts[0]
    assert Memory(MemorySettings(scorer="words"), embedder=embedder).in_context(state, pruner, query) == []
    assert Memory(MemorySettings(min_similarity=0.99), embedder=embedder).in_context(state, pruner, query) == []
