"""LoCoMo's conversations, cut into windows the pruning benchmark can replay.

LoCoMo (Maharana et al., "Evaluating Very Long-Term Conversational Memory of LLM Agents", ACL
2024; github.com/snap-research/locomo, `data/locomo10.zip`) holds ten two-person conversations
over many sessions, drafted by LLM agents and edited by people, with questions written and
checked by people and the turns that answer them. It is not on a package registry and its
licence is not this project's, so nothing here ships it: `bench/locomo_windows.py` reads your
copy and writes a conversations file (docs/pruning.md's format).

A window is a run of consecutive turns of about `target_chars` characters (about a quarter as
many SmolLM2 tokens), from a turn of the first speaker (the user; the second is the assistant)
at a session's start or after the previous window. Consecutive turns of one speaker become one
message; a session's first turn in the window starts with its date ("[8 May, 2023] …"); a
shared photo is written as LoCoMo's own evaluation writes it, "[shares a photo of …]". Its
questions: those of the categories that ask for what was said (single-hop and multi-hop; not the
temporal ones, whose answers are dates computed from the session's, nor the open-domain or
unanswerable ones) whose every evidence turn is in the window before its last quarter, so that
a pruned chat must keep it rather than have it in the newest messages. They are asked as
written, with no lead: the measure is the gold answer's NLL after the question.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

# LoCoMo's question categories: 1 multi-hop, 2 temporal, 3 open-domain, 4 single-hop, 5 adversarial
ASKED_CATEGORIES = (1, 4)
_EVIDENCE_ID = re.compile(r"D\d+:\d+")
_SESSION = re.compile(r"session_(\d+)")


class LocomoFormatError(ValueError):
    """A LoCoMo file without what a window needs (speakers, sessions, questions)."""


def _sessions(sample: dict[str, Any]) -> list[tuple[str, list[dict[str, Any]]]]:
    numbered = []
    for key, turns in sample.items():
        match = _SESSION.fullmatch(key)
        if match and isinstance(turns, list) and turns:
            when = str(sample.get(f"{key}_date_time", ""))
            day = when.split(" on ", 1)[-1].strip()
            numbered.append((int(match.group(1)), day, turns))
    if not numbered:
        raise LocomoFormatError("no session_N lists of turns")
    return [(day, turns) for _, day, turns in sorted(numbered)]


def _turn_text(turn: dict[str, Any]) -> str:
    text = str(turn.get("text", "")).strip()
    caption = turn.get("blip_caption")
    if caption:
        text = f"{text} [shares {str(caption).strip()}]".strip()
    return text


def windows(sample: dict[str, Any], name: str, *, target_chars: int = 4400,
            per_conversation: int = 2, max_questions: int = 3, split: str = "report") -> list[dict[str, Any]]:
    """Up to `per_conversation` windows of one LoCoMo conversation, as conversations-file objects:
    those with the most questions, earliest first among equals, in the order they are talked; each
    asks its first `max_questions` in LoCoMo's order."""
    try:
        user, assistant = str(sample["speaker_a"]), str(sample["speaker_b"])
        qa = list(sample["qa"])
    except (KeyError, TypeError) as exc:
        raise LocomoFormatError(f"{name}: no {exc} (speaker_a, speaker_b and qa are needed)") from exc
    turns: list[tuple[str, str, str, bool, str]] = []  # (dia_id, speaker, its session's day, first of it, text)
    for day, session in _sessions(sample):
        for i, turn in enumerate(session):
            turns.append((str(turn.get("dia_id", "")), str(turn.get("speaker", "")), day, i == 0, _turn_text(turn)))

    cut: list[list[int]] = []
    index = 0
    while index < len(turns):
        while index < len(turns) and turns[index][1] != user:
            index += 1
        start, size = index, 0
        while index < len(turns) and size < target_chars:
            size += len(turns[index][4])
            index += 1
        if index > start and size >= target_chars // 2:
            cut.append(list(range(start, index)))

    made = []
    for number, span in enumerate(cut):
        conversation = _window(turns, span, user, assistant, qa)
        conversation["questions"] = conversation["questions"][:max_questions]
        if conversation["questions"]:
            conversation.update(id=f"{name}-w{number:02d}", split=split)
            made.append((number, conversation))
    chosen = sorted(made, key=lambda item: (-len(item[1]["questions"]), item[0]))[:per_conversation]
    return [conversation for _, conversation in sorted(chosen, key=lambda item: item[0])]


def _window(turns: list[tuple[str, str, str, bool, str]], span: list[int], user: str, assistant: str,
            qa: Iterable[Any]) -> dict[str, Any]:
    messages: list[dict[str, str]] = [{"role": "system", "content": (
        f"You are {assistant}. You and {user} are friends who message each other every few days. "
        f"Reply as {assistant}, casually and briefly.")}]
    position: dict[str, int] = {}  # dia_id -> characters of the window before the turn ends
    text_of: dict[str, str] = {}
    total = 0
    for k, index in enumerate(span):
        dia_id, speaker, day, first, said = turns[index]
        text = f"[{day}] {said}" if day and (first or k == 0) else said
        role = "user" if speaker == user else "assistant"
        if messages[-1]["role"] == role:
            messages[-1]["content"] += " " + text
        else:
            messages.append({"role": role, "content": text})
        total += len(text) + 1
        position[dia_id], text_of[dia_id] = total, said
    questions = []
    for item in qa:
        if not isinstance(item, dict) or item.get("category") not in ASKED_CATEGORIES:
            continue
        answer, question = item.get("answer"), item.get("question")
        ids = [found for entry in item.get("evidence") or [] for found in _EVIDENCE_ID.findall(str(entry))]
        if answer is None or not question or not ids or any(i not in position for i in ids):
            continue
        if max(position[i] for i in ids) > 0.75 * total:
            continue
        evidence = list(dict.fromkeys(text_of[i] for i in ids if text_of[i]))
        questions.append({"question": str(question).strip(), "answer": str(answer).strip(), "evidence": evidence})
    return {"messages": messages, "questions": questions}
