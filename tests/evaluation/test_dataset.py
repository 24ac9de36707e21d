"""Your own conversations: the file format, and clear refusals that run nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from halo_client.evaluation.dataset import ConversationFileError, load_conversations

GOOD = {"id": "trip", "messages": [
    {"role": "system", "content": "You are a travel assistant."},
    {"role": "user", "content": "My flight number is KL 1743."},
    {"role": "assistant", "content": "Noted!"},
    {"role": "user", "content": "Lisbon in May: what should I pack?"},
    {"role": "assistant", "content": None},
    {"role": "user", "content": "And the weather?"}],
    "questions": [{"question": "What is my flight number?", "answer": "1743", "lead": "Your flight number is"}]}


def write(tmp_path: Path, *lines: object) -> Path:
    path = tmp_path / "mine.jsonl"
    path.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n")
    return path


def test_a_good_file(tmp_path: Path) -> None:
    [conv] = load_conversations(write(tmp_path, GOOD, ""))
    assert conv.name == "trip" and conv.split == "report" and conv.system == "You are a travel assistant."
    assert [(m.role, m.content) for m in conv.messages] == [
        ("user", "My flight number is KL 1743."), ("assistant", "Noted!"),
        ("user", "Lisbon in May: what should I pack?"), ("assistant", None)]
    assert [(s.kind, s.text) for s in conv.tail] == [("fidelity", "And the weather?"),
                                                      ("question", "What is my flight number?")]
    assert conv.facts[0].answer == "1743" and conv.facts[0].lead == "Your flight number is"


@pytest.mark.parametrize(("line", "words"), [
    ("{not json", "line 2: Expecting property name"),
    ([1, 2], "JSON object"),
    ({"messages": []}, "non-empty list"),
    ({"messages": [{"role": "assistant", "content": "Hi"}]}, "expected 'user'"),
    ({"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]}, "expected 'assistant'"),
    ({"messages": [{"role": "user", "content": ""}]}, "non-empty string"),
    ({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}, "nothing to measure"),
    ({"messages": [{"role": "user", "content": "only this"}]}, "needs a history"),
    ({**GOOD, "questions": [{"question": "Q?"}]}, r"questions\[0\].answer"),
    ({**GOOD, "questions": {"q": 1}}, "must be a list"),
    ({**GOOD, "split": "train"}, "split"),
    ({**GOOD, "colour": "red"}, "unknown field 'colour'"),
    ({"messages": [{"role": "user", "content": "a", "name": "x"}]}, r"messages\[0\] must be"),
])
def test_bad_lines_are_refused_with_their_place(tmp_path: Path, line: object, words: str) -> None:
    with pytest.raises(ConversationFileError, match=words) as caught:
        load_conversations(write(tmp_path, GOOD, line))
    assert ", line 2: " in str(caught.value)  # the first line is good: the error names the second


def test_whole_file_problems(tmp_path: Path) -> None:
    with pytest.raises(ConversationFileError, match="cannot be read"):
        load_conversations(tmp_path / "missing.jsonl")
    with pytest.raises(ConversationFileError, match="no conversation"):
        load_conversations(write(tmp_path, "", "  "))
    with pytest.raises(ConversationFileError, match="used twice"):
        load_conversations(write(tmp_path, GOOD, GOOD))


def test_evidence_is_kept_and_must_be_in_the_messages(tmp_path: Path) -> None:
    line = {**GOOD, "questions": [{"question": "What is my flight number?", "answer": "1743",
                                   "evidence": ["My flight number is KL 1743."]}]}
    [conv] = load_conversations(write(tmp_path, line))
    assert conv.facts[0].evidence == ("My flight number is KL 1743.",)
    line["questions"][0]["evidence"] = ["My flight number is KL 9999."]  # type: ignore[index]
    with pytest.raises(ConversationFileError, match=r"questions\[0\].evidence\[0\] is not in any message"):
        load_conversations(write(tmp_path, line))
    line["questions"][0]["evidence"] = "My flight"  # type: ignore[index]
    with pytest.raises(ConversationFileError, match="must be a list"):
        load_conversations(write(tmp_path, line))
