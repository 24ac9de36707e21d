"""Your own conversations for the pruning benchmark: a JSON Lines file, one conversation a line.

    {"id": "trip", "messages": [
        {"role": "system", "content": "You are a travel assistant."},
        {"role": "user", "content": "My flight number is KL 1743."},
        {"role": "assistant", "content": "Noted!"},
        {"role": "user", "content": "What should I pack for Lisbon in May?"}],
     "questions": [{"question": "What is my flight number?", "answer": "1743",
                    "lead": "Your flight number is"}]}

- `messages` (required): an optional system message first, then user and assistant messages
  in turn, a user message first. An assistant message's `content` may be null: the model
  writes that reply. If the last message is a user message, it is the conversation's
  fidelity probe: every pruned context is measured on the full-context model's reply to it.
- `questions` (optional): asked one after another after the messages, the pruner running
  before each; `answer` is the gold string a correct reply contains, `lead` (optional) how the
  reply starts before it, `evidence` (optional) the passages of the messages that hold what the
  answer needs, copied exactly (the gold policy keeps their sentences; without them, it keeps
  the sentences that hold the answer).
- `id` (optional): the conversation's name in the results; `split` (optional): "report" (the
  default) or "tune" (used only to tune the hybrid and memory).

A conversation needs something to measure: a last user message, or questions. Anything else
raises `ConversationFileError` naming the line and the field, and nothing is run.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from halo_client.config import DEFAULT_SYSTEM_PROMPT
from halo_client.conversation.memory import content_terms
from halo_client.errors import HaloError
from halo_client.evaluation.conversations import Conversation, Fact, Message, Step, Wording

DEFAULT_SYSTEM = DEFAULT_SYSTEM_PROMPT


class ConversationFileError(HaloError):
    """A conversations file the benchmark cannot use."""


def _text(value: Any, where: str, *, optional: bool = False) -> str | None:
    if value is None and optional:
        return None
    if not isinstance(value, str) or (not optional and not value.strip()):
        raise ValueError(f"{where} must be a non-empty string")
    return value


def wording(question: str, evidence: list[str]) -> Wording:
    """"paraphrased" when the question shares no content word with its evidence (stemmed, stop
    words left out: what BM25 could match on), "literal" when it does, "" without evidence."""
    if not evidence:
        return ""
    return "literal" if content_terms(question) & content_terms(" ".join(evidence)) else "paraphrased"


def parse_conversation(data: Any, index: int) -> Conversation:
    """One line's conversation; `ValueError` says what is wrong with it."""
    if not isinstance(data, dict):
        raise ValueError("a line must be a JSON object with `messages`")
    unknown = set(data) - {"id", "messages", "questions", "split"}
    if unknown:
        raise ValueError(f"unknown field {sorted(unknown)[0]!r} (known: id, messages, questions, split)")
    name = data.get("id", f"conversation {index}")
    if not isinstance(name, (str, int)):
        raise ValueError("`id` must be a string or a number")
    split = data.get("split", "report")
    if split not in ("report", "tune"):
        raise ValueError("`split` must be \"report\" or \"tune\"")
    messages = data.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ValueError("`messages` must be a non-empty list")
    system = DEFAULT_SYSTEM
    history: list[Message] = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict) or set(message) - {"role", "content"}:
            raise ValueError(f"{where} must be an object with `role` and `content`")
        role = message.get("role")
        if role == "system" and i == 0:
            system = _text(message.get("content"), f"{where}.content") or DEFAULT_SYSTEM
            continue
        expected = "user" if not history or history[-1].role == "assistant" else "assistant"
        if role != expected:
            raise ValueError(f"{where} is {role!r}, expected {expected!r} (a system message first, if any, then "
                             "user and assistant in turn)")
        content = _text(message.get("content"), f"{where}.content", optional=role == "assistant")
        history.append(Message(role, content))
    tail: list[Step] = []
    if history and history[-1].role == "user":
        tail.append(Step("fidelity", history.pop().content or ""))
    questions = data.get("questions", [])
    if not isinstance(questions, list):
        raise ValueError("`questions` must be a list")
    facts = []
    said = [m.content or "" for m in history]
    for i, q in enumerate(questions):
        where = f"questions[{i}]"
        if not isinstance(q, dict) or set(q) - {"question", "answer", "lead", "evidence"}:
            raise ValueError(f"{where} must be an object with `question`, `answer` and optionally `lead` and "
                             "`evidence`")
        evidence = q.get("evidence", [])
        if not isinstance(evidence, list):
            raise ValueError(f"{where}.evidence must be a list of passages of the messages")
        for j, passage in enumerate(evidence):
            _text(passage, f"{where}.evidence[{j}]")
            if not any(passage in content for content in said):
                raise ValueError(f"{where}.evidence[{j}] is not in any message before the questions: "
                                 f"{passage[:60]!r}")
        question = _text(q.get("question"), f"{where}.question") or ""
        fact = Fact("question", "", question, _text(q.get("answer"), f"{where}.answer") or "",
                    _text(q.get("lead", ""), f"{where}.lead", optional=True) or "", tuple(evidence),
                    wording=wording(question, evidence))
        facts.append(fact)
        tail.append(Step("question", fact.question, fact))
    if not tail:
        raise ValueError("nothing to measure: end `messages` with a user message or add `questions`")
    if not history:
        raise ValueError("`messages` needs a history before what it measures (a user message and its reply)")
    return Conversation(name=str(name), split=split, system=system, messages=history, tail=tail, facts=facts)


def load_conversations(*paths: str | Path) -> list[Conversation]:
    """Every conversation in one or more JSON Lines files (blank lines skipped), in order; each id
    once over them all (the results are kept per conversation)."""
    conversations: list[Conversation] = []
    where: dict[str, str] = {}  # id -> the earlier file that holds it ("": this one)
    for path in map(Path, paths):
        conversations += _load_file(path, where)
    return conversations


def _load_file(path: Path, where: dict[str, str]) -> list[Conversation]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConversationFileError(f"{path} cannot be read: {exc}.") from exc
    conversations = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            conversation = parse_conversation(json.loads(line), number)
        except ValueError as exc:  # json.JSONDecodeError is one
            raise ConversationFileError(f"{path}, line {number}: {exc}.",
                                        "See docs/pruning.md for the conversations file format.") from exc
        if conversation.name in where:
            earlier = where[conversation.name]
            raise ConversationFileError(
                f"{path}, line {number}: id {conversation.name!r} is used twice" +
                (f", here and in {earlier}: more than one file holds it." if earlier else "."),
                "Give each conversation its own id.")
        where[conversation.name] = ""
        conversations.append(conversation)
    where.update((c.name, str(path)) for c in conversations)
    if not conversations:
        raise ConversationFileError(f"{path} holds no conversation.", "Write one JSON object per line.")
    return conversations
