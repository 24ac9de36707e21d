"""LoCoMo's conversations cut into windows: what a window holds and which questions it asks."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from halo_client.evaluation.dataset import load_conversations, parse_conversation
from halo_client.evaluation.locomo import LocomoFormatError, windows

ROOT = Path(__file__).resolve().parents[2]


def _turns(session: int, count: int, first: str = "Ann") -> list[dict[str, Any]]:
    other = {"Ann": "Bo", "Bo": "Ann"}
    speakers = [first, other[first]]
    return [{"speaker": speakers[i % 2], "dia_id": f"D{session}:{i + 1}",
             "text": f"Session {session} turn {i + 1} says something long enough to fill a window up."}
            for i in range(count)]


def _sample() -> dict[str, Any]:
    s1 = _turns(1, 12)
    s1[1]["text"] = "My cat is called Pickle and she hates the vacuum."
    s1[2]["blip_caption"] = "a photo of a red bicycle"
    s1[4]["speaker"] = "Bo"  # two turns of one speaker in a row: one message
    s2 = _turns(2, 12, first="Bo")
    return {"speaker_a": "Ann", "speaker_b": "Bo",
            "session_1_date_time": "1:56 pm on 8 May, 2023", "session_1": s1,
            "session_2_date_time": "7:00 pm on 9 May, 2023", "session_2": s2,
            "session_3_date_time": "9:00 am on 1 June, 2023",  # a date with no session
            "qa": [
                {"question": "What is Bo's cat called?", "answer": "Pickle", "evidence": ["D1:2"], "category": 4},
                {"question": "When did Bo talk about the cat?", "answer": "8 May 2023", "evidence": ["D1:2"],
                 "category": 2},
                {"question": "What did Ann show?", "answer": "a bicycle", "evidence": ["D1:3; D1:2"], "category": 1},
                {"question": "What is in the last turn?", "answer": "something", "evidence": ["D1:12"],
                 "category": 4},
                {"question": "Unanswerable?", "evidence": ["D1:2"], "category": 5, "adversarial_answer": "x"},
                {"question": "Number?", "answer": 3, "evidence": ["D1:1"], "category": 4},
                {"question": "Lost id?", "answer": "y", "evidence": ["D"], "category": 4},
            ]}


def test_a_window_is_a_conversation_the_benchmark_reads() -> None:
    made = windows(_sample(), "locomo-x", target_chars=900, per_conversation=5, max_questions=10)
    assert made, "the first session alone is a window with questions"
    first = made[0]
    assert first["id"] == "locomo-x-w00" and first["split"] == "report"
    conversation = parse_conversation(first, 1)  # raises if roles, evidence or questions are wrong
    messages = first["messages"]
    assert messages[0]["role"] == "system" and "Reply as Bo" in messages[0]["content"]
    assert messages[1]["content"].startswith("[8 May, 2023] Session 1 turn 1")
    assert "[shares a photo of a red bicycle]" in messages[3]["content"]
    assert "Session 1 turn 4 says something long enough to fill a window up. Session 1 turn 5" in messages[4]["content"]
    roles = [m["role"] for m in messages[1:]]
    assert all(a != b for a, b in itertools.pairwise(roles))
    asked = {f.question: f for f in conversation.facts}
    # single-hop and multi-hop, evidence before the window's last quarter, ids however LoCoMo wrote them
    assert set(asked) == {"What is Bo's cat called?", "What did Ann show?", "Number?"}
    assert asked["Number?"].answer == "3"
    assert asked["What did Ann show?"].evidence[0].startswith("Session 1 turn 3")
    assert asked["What is Bo's cat called?"].evidence == ("My cat is called Pickle and she hates the vacuum.",)


def test_the_windows_with_most_questions_are_kept_in_order_and_capped() -> None:
    made = windows(_sample(), "locomo-x", target_chars=900, per_conversation=1, max_questions=2)
    assert len(made) == 1 and len(made[0]["questions"]) == 2
    assert [q["question"] for q in made[0]["questions"]] == ["What is Bo's cat called?", "What did Ann show?"]
    later = windows(_sample(), "locomo-x", target_chars=900, per_conversation=5)
    assert [w["id"] for w in later] == sorted(w["id"] for w in later)


def test_a_later_window_starts_with_the_user_and_its_session_date() -> None:
    sample = _sample()
    sample["qa"].append({"question": "Late?", "answer": "z", "evidence": ["D2:6"], "category": 4})
    made = windows(sample, "locomo-x", target_chars=900, per_conversation=5)
    late = [w for w in made if any(q["question"] == "Late?" for q in w["questions"])]
    assert len(late) == 1
    assert late[0]["messages"][1]["role"] == "user" and late[0]["messages"][1]["content"].startswith("[9 May, 2023]")


def test_a_file_without_speakers_is_refused() -> None:
    with pytest.raises(LocomoFormatError, match="speaker_a"):
        windows({"qa": []}, "locomo-x")
    with pytest.raises(LocomoFormatError, match="session"):
        windows({"speaker_a": "A", "speaker_b": "B", "qa": []}, "locomo-x")


def test_the_script_writes_a_file_the_benchmark_loads(tmp_path: Path) -> None:
    source = tmp_path / "locomo10.json"
    source.write_text(json.dumps([{"sample_id": "conv-1", "conversation": {
        k: v for k, v in _sample().items() if k != "qa"}, "qa": _sample()["qa"]}]))
    out = tmp_path / "w.jsonl"
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "locomo_windows.py"), str(source), "--out", str(out),
                           "--chars", "900", "--tune", "1"], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert "1 windows of 1 conversations, 3 questions" in done.stdout
    conversations = load_conversations(out)
    assert [(c.name, c.split) for c in conversations] == [("locomo-conv-1-w00", "tune")]

    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"qa": []}))
    refused = subprocess.run([sys.executable, str(ROOT / "bench" / "locomo_windows.py"), str(bad), "--out",
                              str(tmp_path / "x.jsonl")], capture_output=True, text=True, check=False)
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1 and "speaker_a" in refused.stderr
    assert not (tmp_path / "x.jsonl").exists()
