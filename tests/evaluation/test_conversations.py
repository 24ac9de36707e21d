"""The conversation generator is deterministic, plants every fact, and respects its lengths."""

from __future__ import annotations

from halo_client.evaluation.conversations import FACT_KINDS, make_conversation, make_conversations


def words(text: str) -> int:  # a stand-in tokenizer: about one token per word
    return len(text.split()) + text.count("\n")


def test_same_seed_same_conversation() -> None:
    a = make_conversation(7, count_tokens=words)
    b = make_conversation(7, count_tokens=words)
    assert a == b
    assert make_conversation(8, count_tokens=words) != a


def test_facts_are_planted_early_and_answers_are_in_their_statements() -> None:
    for seed in range(30):
        conv = make_conversation(seed, count_tokens=words, n_facts=4)
        assert len(conv.facts) == 4 and len({f.kind for f in conv.facts}) == 4
        assert {f.kind for f in conv.facts} <= set(FACT_KINDS)
        planted = [t for t in conv.turns if t.facts]
        assert [f for t in planted for f in t.facts] == conv.facts
        for fact in conv.facts:
            assert fact.answer in fact.statement and fact.statement in next(
                t.text for t in conv.turns if fact in t.facts)
            assert fact.answer not in fact.question
        last_fact = max(i for i, t in enumerate(conv.turns) if t.facts)
        assert last_fact < len(conv.turns) / 2  # distractors fill the rest


def test_lengths_land_in_range_and_kinds_vary() -> None:
    convs = make_conversations(12, count_tokens=words, min_tokens=1000, max_tokens=4000)
    for conv in convs:
        total = words(conv.system) + sum(words(t.text) + 40 for t in conv.turns)
        assert 900 <= total <= 4000
    kinds = {t.kind for c in convs for t in c.turns}
    assert {"small_talk", "list", "code", "recipe", "boilerplate", "fact"} <= kinds
    assert {c.split for c in convs} == {"tune", "report"}
