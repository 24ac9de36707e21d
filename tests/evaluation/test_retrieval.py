"""The recall study: archives, the recall pass, choosing heads and memory's settings on tuning data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from halo_client.conversation.memory import MemorySettings
from halo_client.evaluation.conversations import make_conversation
from halo_client.evaluation.dialog import play
from halo_client.evaluation.model import InProcessModel
from halo_client.evaluation.retrieval import (
    Archive,
    Query,
    archive_of,
    attention_pass,
    choose_heads,
    choose_memory,
    match_scores,
    memory_grid,
    outcome,
    retriever_scores,
    study_rows,
)
from halo_client.reference import ReferenceBackend
from halo_client.testing.embedder import WordHashEmbedder


def query(kind: str, gold: list[bool], attention: np.ndarray | None = None) -> Query:
    q = Query(0, kind, "paraphrased" if kind == "question" else "", "q", np.asarray(gold))
    if attention is not None:
        q.attention = {"message": attention, "last": attention}
    return q


def test_the_heads_chosen_are_those_whose_top_sentence_is_the_fact() -> None:
    rng = np.random.default_rng(0)
    archives = []
    for i in range(10):
        gold = i % 5
        attention = (0.5 * rng.random((3, 4, 5))).astype(np.float32)
        attention[2, 1, gold] = 5.0  # layer 2, head 1 always finds it
        attention[0, 3, gold if i % 2 == 0 else (gold + 1) % 5] = 4.0  # layer 0, head 3 half the time
        archives.append(Archive("c", "tune", ["a", "b", "c", "d", "e"],
                                [query("question", [k == gold for k in range(5)], attention)]))
    assert choose_heads(archives, "message", 2) == [(2, 1), (0, 3)]
    assert choose_heads([], "last", 3) == []


def test_memory_is_tuned_with_false_recalls_counted() -> None:
    """A sentence brought back that holds no fact (a fidelity probe's false recall) counts against a
    setting, `wrong_cost` of what a question it answers counts for it."""
    texts = ["My locker code is 4821.", "The weather is grey.", "I like tea."]
    fact = query("question", [True, False, False])
    probe = query("fidelity", [False, False, False])
    fact.relevance, fact.similarity = np.array([0.0, 0.0, 0.0]), np.array([0.55, 0.1, 0.2])
    probe.relevance, probe.similarity = np.array([0.0, 1.5, 0.0]), np.array([0.1, 0.45, 0.3])
    archive = Archive("c", "tune", texts, [fact, probe])
    assert outcome(MemorySettings(scorer="meaning", min_similarity=0.4), fact, archive.asks) == (1, 1)
    assert outcome(MemorySettings(scorer="meaning", min_similarity=0.4), probe, archive.asks) == (0, 1)
    grid = [MemorySettings(scorer="words"), MemorySettings(scorer="meaning", min_similarity=0.4),
            MemorySettings(scorer="meaning", min_similarity=0.5)]
    chosen, score = choose_memory([archive], grid)
    assert chosen == grid[2] and score == pytest.approx(0.5)  # the fact, and nothing for the probe
    # a lower threshold finds a second fact for two false recalls: worth it at the default's cost each,
    # not when a wrong sentence costs as much as a fact
    other, again = query("question", [False, False, True]), query("fidelity", [False, False, False])
    other.relevance, other.similarity = np.array([0.0, 0.0, 0.0]), np.array([0.1, 0.2, 0.42])
    again.relevance, again.similarity = np.array([0.0, 0.0, 0.0]), np.array([0.41, 0.1, 0.2])
    archive.queries += [other, again]
    assert choose_memory([archive], grid)[0] == grid[1]
    assert choose_memory([archive], grid, wrong_cost=1.0)[0] == grid[2]


def test_memory_is_tuned_on_whether_questions_may_come_back() -> None:
    """An earlier question in the same words outranks the answer that follows it; the tuning
    chooses to keep questions out when that finds more facts, and in when it does not matter
    (the grid's first setting wins a tie)."""
    texts = ["What did Leo end up with in the play?", "Leo got the part of the troll.", "It rained."]
    asked = query("question", [False, True, False])
    asked.relevance, asked.similarity = np.zeros(3), np.array([0.62, 0.41, 0.05])
    archive = Archive("c", "tune", texts, [asked])
    assert archive.asks.tolist() == [True, False, False]
    keep_out = MemorySettings(scorer="meaning", min_similarity=0.3, max_recalled=1)  # the match is tuned for one
    let_in = keep_out.model_copy(update={"recall_questions": True})
    assert outcome(keep_out, asked, archive.asks) == (1, 1) and outcome(let_in, asked, archive.asks) == (0, 1)
    assert choose_memory([archive], [let_in, keep_out])[0] == keep_out
    plain = Archive("c", "tune", ["Leo got the part of the troll.", "It rained."], [query("question", [True, False])])
    plain.queries[0].relevance, plain.queries[0].similarity = np.zeros(2), np.array([0.5, 0.1])
    assert choose_memory([plain], [let_in, keep_out])[0] == let_in
    assert {s.recall_questions for s in memory_grid()} == {False, True}


def test_what_memory_would_bring_back_matches_a_reply_with_its_question_as_memory_does() -> None:
    """The study scores memory's settings as memory decides: a reply that shares nothing with the
    message comes back through its pair with the question before it, and only with the setting on;
    the question itself stays out, and the pair's cost is counted in the step's time."""
    texts = ["Which team do you cheer for?", "The Minnesota Wolves!", "It rained all day."]
    asked = Query(0, "question", "paraphrased", "What team does she cheer for on Sundays?",
                  np.array([False, True, False]))
    archive = Archive("c", "tune", texts, [asked])
    match_scores(archive, WordHashEmbedder())
    assert asked.similarity is not None and asked.similarity_with_question is not None
    assert asked.similarity[1] == 0.0 < asked.similarity_with_question[1]  # alone it says nothing
    assert asked.similarity_with_question[[0, 2]].tolist() == asked.similarity[[0, 2]].tolist()
    paired = MemorySettings(scorer="meaning", min_similarity=0.2)
    alone = paired.model_copy(update={"reply_with_question": False})
    assert outcome(paired, asked, archive.asks) == (1, 1) and outcome(alone, asked, archive.asks) == (0, 0)
    rows = {r["memory"]: r for r in study_rows(archive, "tuning", {}, {"paired": paired, "alone": alone})
            if "memory" in r}
    assert rows["paired"]["ms"] == asked.ms["meaning"] + asked.ms["question pairs"]
    assert rows["alone"]["ms"] == asked.ms["meaning"]


def test_archives_and_the_recall_pass_on_a_real_model(tiny_path: Path) -> None:
    model = InProcessModel(ReferenceBackend(tiny_path, n_ctx=4096))
    conv = make_conversation(5, count_tokens=lambda t: len(model.backend.tokenize(t, False)), min_tokens=400,
                             max_tokens=500, reply_tokens=6, tail="FQP")
    archive = archive_of(play(conv, model, reply_tokens=6, probe_tokens=8))
    assert [q.kind for q in archive.queries] == ["fidelity", "question", "question"]
    assert [q.wording for q in archive.queries] == ["", "literal", "paraphrased"]
    assert all(q.gold.sum() == 1 for q in archive.queries[1:]) and not archive.queries[0].gold.any()
    attention_pass(model, archive)
    layers, heads = model.info.num_layers, model.info.num_attention_heads
    for q in archive.queries:
        assert q.attention["message"].shape == q.attention["last"].shape == (layers, heads, len(archive.texts))
        assert q.tokens > 0
    assert archive.note_tokens > len(archive.texts)  # every sentence is a note, on a line of its own
    match_scores(archive, WordHashEmbedder())
    literal = archive.queries[1]
    assert literal.relevance[literal.gold].max() > 0  # the fact's own words
    scores = retriever_scores(literal, {"message": [(0, 0)], "last": [(1, 1)]})
    assert set(scores) == {"words", "meaning", "meaning, names in full", "hybrid", "attention (message rows)",
                           "attention (last row)", "hybrid + attention"}
    rows = study_rows(archive, "tuning", {"message": [(0, 0)]}, {"default": MemorySettings(scorer="hybrid")})
    assert {r["kind"] for r in rows if "memory" in r} == {"fidelity", "question"}
    assert all(int(str(r["recalled"])) >= int(str(r["hits"])) for r in rows if "memory" in r)
