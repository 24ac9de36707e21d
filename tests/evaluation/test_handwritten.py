"""The conversations written by hand: the held-out set (frozen before any tuning) and the tuning set
(frozen before it was first tuned on), loadable, their evidence in place."""

from __future__ import annotations

import hashlib
from pathlib import Path

from halo_client.evaluation.conversations import Conversation
from halo_client.evaluation.dataset import load_conversations

HANDWRITTEN = Path(__file__).parents[2] / "docs" / "conversations.handwritten.jsonl"
#: the file as it was committed before anything was tuned: a change to it is a change to the
#: held-out set, and the results measured on it before stop being comparable
FROZEN_SHA256 = "d34ef009c0a2159249a5fe743fcee29a4fdd72e7f590ca9d4395f82a11b1d3bd"
#: written by hand for tuning only (its own topics, never the held-out set's), frozen before memory
#: and the pruner were first tuned on it: a change to it is a change to what the defaults were
#: chosen on
HANDWRITTEN_TUNE = HANDWRITTEN.with_name("conversations.handwritten-tune.jsonl")
TUNE_SHA256 = "04ca1c401995588f441a321fe79710985db07919fa27ee33ed11ec3bbde39b3f"
#: more tuning dialogues whose questions are asked in whatever words come naturally (the first
#: tuning set holds mostly questions in other words than their evidence, and people often repeat
#: the fact's own words): frozen before they were first tuned on
HANDWRITTEN_TUNE_NATURAL = HANDWRITTEN.with_name("conversations.handwritten-tune-natural.jsonl")
TUNE_NATURAL_SHA256 = "dc46843214cc3dbf26438cca29c3ebaa827ec8b7a9628f6968172396a878ffc6"
#: twelve more, asked both ways, written to settle a question the first tuning sets could not (which
#: threshold the larger embedder's memory should use, docs/pruning.md): frozen before anything ran on them
HANDWRITTEN_TUNE_2 = HANDWRITTEN.with_name("conversations.handwritten-tune-2.jsonl")
TUNE_2_SHA256 = "952fe8e300d0b71bca8aae2065bba93af90755a6f42e08135ca49d0b9c60e190"


def test_the_handwritten_set_is_frozen() -> None:
    assert hashlib.sha256(HANDWRITTEN.read_bytes()).hexdigest() == FROZEN_SHA256
    assert hashlib.sha256(HANDWRITTEN_TUNE.read_bytes()).hexdigest() == TUNE_SHA256
    assert hashlib.sha256(HANDWRITTEN_TUNE_NATURAL.read_bytes()).hexdigest() == TUNE_NATURAL_SHA256
    assert hashlib.sha256(HANDWRITTEN_TUNE_2.read_bytes()).hexdigest() == TUNE_2_SHA256


def _tuning_set(path: Path, count: int, others: list[Conversation]) -> list[str]:
    """The tuning set in `path`: `count` conversations of split "tune", each with a fidelity probe
    and three questions whose evidence and answer are in it, sharing no name and no evidence with
    `others`; its questions' wordings."""
    tuning = load_conversations(path)
    assert len(tuning) == count and {c.split for c in tuning} == {"tune"}
    assert not {c.name for c in tuning} & {c.name for c in others}
    for conversation in tuning:
        assert conversation.tail[0].kind == "fidelity" and len(conversation.questions) == 3
        said = " ".join(m.content or "" for m in conversation.messages)
        assert all(m.content for m in conversation.messages)
        for fact in conversation.facts:
            assert fact.evidence and all(passage in said for passage in fact.evidence)
            assert fact.answer.lower() in " ".join(fact.evidence).lower()
        # no fact sentence of another set turns up here
        assert not any(p in said for c in others for f in c.facts for p in f.evidence)
    return [f.wording for c in tuning for f in c.facts]


def test_the_handwritten_tuning_set_is_for_tuning_only_and_mostly_in_other_words() -> None:
    wordings = _tuning_set(HANDWRITTEN_TUNE, 12, load_conversations(HANDWRITTEN))
    assert wordings.count("paraphrased") >= 2 * len(wordings) // 3


def test_the_natural_tuning_set_is_for_tuning_only_and_asked_both_ways() -> None:
    wordings = _tuning_set(HANDWRITTEN_TUNE_NATURAL, 8, load_conversations(HANDWRITTEN, HANDWRITTEN_TUNE))
    assert (wordings.count("literal"), wordings.count("paraphrased")) == (15, 9)


def test_the_second_tuning_set_is_for_tuning_only_and_asked_both_ways() -> None:
    others = load_conversations(HANDWRITTEN, HANDWRITTEN_TUNE, HANDWRITTEN_TUNE_NATURAL)
    wordings = _tuning_set(HANDWRITTEN_TUNE_2, 12, others)
    assert (wordings.count("literal"), wordings.count("paraphrased")) == (18, 18)


def test_the_handwritten_set_loads_with_evidence_for_every_question() -> None:
    conversations = load_conversations(HANDWRITTEN)
    assert len(conversations) == 16 and all(c.split == "report" for c in conversations)
    for conversation in conversations:
        assert conversation.tail[0].kind == "fidelity" and len(conversation.questions) == 3
        said = " ".join(m.content or "" for m in conversation.messages)
        for fact in conversation.facts:
            assert fact.evidence and all(passage in said for passage in fact.evidence)
            assert fact.answer.lower() in " ".join(fact.evidence).lower()
        assert {m.role for m in conversation.messages} == {"user", "assistant"}
        assert all(m.content for m in conversation.messages)  # both people's words are written, none generated


def test_gold_keeps_the_sentences_of_the_evidence() -> None:
    import numpy as np

    from halo_client.evaluation.dialog import Dialog
    from halo_client.evaluation.policies import holds_fact

    conversation = load_conversations(HANDWRITTEN)[0]
    dialog = Dialog(conversation, [], [], np.zeros(0))
    assert holds_fact(" her flight lands at 7:40 in the evening.", dialog)
    assert holds_fact("The short-stay parking is on level 2, not the long-stay one.", dialog) is False  # not verbatim
    assert holds_fact("I just need to remember that the short-stay parking is on level 2, not the long-stay one.",
                      dialog)
    assert not holds_fact("I have not seen her in two years.", dialog)
