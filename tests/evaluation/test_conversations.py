"""The conversation generator: deterministic, every fact planted early and asked later."""

from __future__ import annotations

import pytest

from halo_client.evaluation.conversations import FACT_KINDS, make_conversation, make_conversations


def words(text: str) -> int:  # a stand-in tokenizer: about one token per word
    return len(text.split()) + text.count("\n")


def test_same_seed_same_conversation() -> None:
    assert make_conversation(7, count_tokens=words) == make_conversation(7, count_tokens=words)
    assert make_conversation(8, count_tokens=words) != make_conversation(7, count_tokens=words)


def test_facts_are_planted_in_the_history_and_asked_in_the_tail() -> None:
    for seed in range(40):
        conv = make_conversation(seed, count_tokens=words, tail="FQQFQQ")
        assert len(conv.facts) == 4 and len({f.kind for f in conv.facts}) == 4
        assert {f.kind for f in conv.facts} <= set(FACT_KINDS)
        users = [m.content for m in conv.messages if m.role == "user"]
        assert all(m.content is None for m in conv.messages if m.role == "assistant")  # the model writes them
        for fact in conv.facts:
            assert fact.answer in fact.statement and fact.answer not in fact.question
            assert any(fact.statement in (u or "") for u in users)
        assert [s.kind for s in conv.tail] == ["fidelity", "question", "question", "fidelity", "question", "question"]
        asked = [s.fact for s in conv.questions if s.fact is not None]
        assert sorted(asked, key=conv.facts.index) == conv.facts  # each fact asked once
        assert all(s.text == s.fact.question for s in conv.questions if s.fact is not None)
        answers = [f.answer for f in conv.facts]
        assert len(set(answers)) == len(answers)


def test_lengths_and_splits() -> None:
    convs = make_conversations(2, 5, count_tokens=words, min_tokens=600, max_tokens=1200, reply_tokens=32)
    assert [c.split for c in convs] == ["tune"] * 2 + ["report"] * 5
    assert len({c.name for c in convs}) == 7
    for conv in convs:
        total = words(conv.system) + sum(words(m.content or "") + 32 * (m.content is None) + 10 for m in conv.messages)
        assert 300 <= total <= 1200


def test_a_bad_tail_is_refused() -> None:
    with pytest.raises(ValueError, match="tail"):
        make_conversation(1, count_tokens=words, tail="QQQQQ")
    with pytest.raises(ValueError, match="tail"):
        make_conversation(1, count_tokens=words, tail="FX")


def test_paraphrased_questions_share_no_content_word_with_their_fact() -> None:
    """The paraphrase split: a P question and its lead have no content word (stemmed, stop words
    out: what BM25 matches on) in common with the sentence that planted the fact; a Q question does."""
    from halo_client.conversation.memory import content_terms
    from halo_client.evaluation.conversations import OPENERS, PARAPHRASES, make_conversation

    seen: set[str] = set()
    for seed in range(300):
        conv = make_conversation(seed, count_tokens=lambda t: len(t) // 4, tail="FQPFPQ")
        assert [s.kind for s in conv.tail] == ["fidelity", "question", "question", "fidelity", "question", "question"]
        for step, letter in zip(conv.tail, "FQPFPQ", strict=True):
            if step.fact is None:
                continue
            planted = content_terms(step.fact.statement)
            asked = content_terms(f"{step.text} {step.fact.lead}")
            if letter == "P":
                assert step.fact.wording == "paraphrased" and not asked & planted, (step.text, step.fact.statement)
                seen.add(step.text)
            else:
                assert step.fact.wording == "literal" and content_terms(step.text) & planted
    # every paraphrase was drawn, and none shares a word with any opener that can precede a fact
    assert seen == {q for q, _lead in PARAPHRASES.values()}
    openers = set().union(*(content_terms(o.format("")) for o in OPENERS))
    assert not any(content_terms(f"{q} {lead}") & openers for q, lead in PARAPHRASES.values())
