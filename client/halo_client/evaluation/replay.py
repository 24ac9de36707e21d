"""One policy at one budget over a played conversation's tail, the pruner running before every
message as in a live chat.

The history is rebuilt as played; the budget is a share of what the conversation holds when
the first later message arrives. Then, for each tail step:

1. the user's message is added (the pruner never removes the newest message);
2. with memory on, the message recalls the pruned sentences it matches best (`Memory`);
3. the policy scores every position and the chat's `Pruner` prunes to the budget, keeping what
   was just recalled;
4. the step's reply, the full-context model's (or a question's scripted answer), is
   teacher-forced through the pruned context in one pass: its rows give the measures against
   the full context and the frames the policy observes, as the chat's tracker would from a
   stream;
5. the reply joins the conversation and, as in the chat, the pruner brings it back within the
   budget before the next message.

Measures per step: for a fidelity probe, the mean per-token KL(full || pruned), the mean NLL
increase of the reply, and top-1 agreement (pruned argmax = full argmax); for a question,
recall (the greedy answer after the lead-in holds the gold string within `ANSWER_TOKENS`) and
the answer's NLL increase.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from halo_client.conversation.memory import Memory, MemorySettings, prune_keeping
from halo_client.conversation.pruner import Pruner, PrunerSettings
from halo_client.conversation.state import ConversationState
from halo_client.evaluation.dialog import ANSWER_TOKENS, Asked, Dialog, Frame, TailStep, add_turn, asked_of, frames_of
from halo_client.evaluation.model import InProcessModel, log_softmax
from halo_client.evaluation.policies import Policy, StepView


@dataclass(frozen=True)
class StepResult:
    step: int
    kind: str
    #: tokens the pruned context holds when the message arrives, and the budget
    kept: int
    budget: int
    recalled: int
    measures: dict[str, float]


#: measured steps by their pruned context: policies (and seeds) that keep the same sentences
#: at a step cost nothing the second time
Measured = dict[str, tuple[dict[str, float], list[Frame], Asked | None]]


def budget_for(dialog: Dialog, fraction: float) -> int:
    """The budget: `fraction` of the tokens the conversation holds with its first later message."""
    first = dialog.tail[0].user if dialog.tail else None
    return int(fraction * (dialog.history_tokens + (first.size if first else 0)))


def replay(dialog: Dialog, model: InProcessModel, policy: Policy, fraction: float, *,
           memory: MemorySettings | None = None, measured: Measured | None = None) -> list[StepResult]:
    state = dialog.history_state()
    policy.start(dialog)
    budget = budget_for(dialog, fraction)
    pruner = Pruner(PrunerSettings(reduce=policy.reduce, recent_share=policy.recent_share))
    recaller = Memory(memory) if memory is not None and memory.enabled else None
    asked: Asked | None = None
    results = []
    for k, step in enumerate(dialog.tail):
        add_turn(state, step.user)
        message = step.step.text
        if k == 0:  # the first message's attention over the whole history, from the play
            asked = step.asked
        recalls = recaller.recall(state, pruner, message) if recaller is not None else []
        view = StepView(message, budget, asked)
        prune_keeping(pruner, state, budget, recalls, scores=policy.scores(state, view))
        kept = state.active_count
        wants_next = k + 1 < len(dialog.tail) and policy.uses_question_attention
        measures, frames, following = _measure(state, step, dialog.tail[k + 1] if wants_next else None, model,
                                               measured, k)
        policy.observe(frames)
        add_turn(state, step.reply)
        # as the chat does after a reply: back within the budget before the next message
        pruner.prune(state, budget, scores=policy.scores(state, view))
        asked = following
        results.append(StepResult(k, step.step.kind, kept, budget, sum(not r.kept for r in recalls), measures))
    return results


def _measure(state: ConversationState, step: TailStep, following: TailStep | None, model: InProcessModel,
             measured: Measured | None, index: int) -> tuple[dict[str, float], list[Frame], Asked | None]:
    """The step's reply teacher-forced through the pruned context: measures and frames. With
    `following`, the next message and its reply's header are appended after the reply, so its
    attention over the context it will arrive in (before the next prune) comes from the same pass."""
    positions = state.active_positions()
    key = hashlib.sha256(positions.tobytes() + bytes([index % 256, following is not None])).hexdigest()
    if measured is not None and key in measured:
        return measured[key]
    prefix = [t for t, _ in step.reply.prefix]
    reply = [t for t, _ in step.reply.content]
    sequence = state.input_ids() + prefix + reply[:-1]
    extension: list[int] = []
    if following is not None:
        extension = [reply[-1]] + [t for t, _ in step.reply.suffix + following.user.prefix + following.user.content
                                   + following.user.suffix + following.reply.prefix]
    rows = len(reply)
    logits, attention = model.rows(sequence + extension, rows + len(extension), True)
    assert attention is not None
    logprobs = log_softmax(logits[:rows])
    base = len(state)
    columns = np.r_[positions, base + np.arange(len(prefix) + rows - 1)]
    frames = frames_of(attention[:, :, :rows], columns)
    question = None
    if following is not None:
        after = len(following.user.suffix) + len(following.reply.prefix)  # rows after the message's content
        end = rows + len(extension)
        content_rows = slice(end - after - len(following.user.content), end - after)
        # the columns the message's rows see, up to its own header (the last row's column)
        extended = np.r_[columns, base + len(prefix) + rows - 1 + np.arange(len(extension))]
        question = asked_of(attention[:, :, rows:], extended, slice(content_rows.start - rows,
                                                                    content_rows.stop - rows))
    found = measures(step, logprobs, reply)
    if step.step.kind == "question" and not found["recall"]:
        lead = state.input_ids() + prefix + reply[: step.answer[0]]
        found["recall"] = float(_answer_holds_gold(model, lead, step))
    result = (found, frames, question)
    if measured is not None:
        measured[key] = result
    return result


def _answer_holds_gold(model: InProcessModel, lead: list[int], step: TailStep) -> bool:
    """The pruned context's own greedy answer after the lead-in, a few tokens: does it hold the gold?"""
    assert step.step.fact is not None
    logits, _ = model.rows(lead, 1, False)
    row, out = logits[0], b""
    for _ in range(ANSWER_TOKENS):
        token = int(np.argmax(row))
        if token in model.stops:
            break
        out += model.piece(token)
        if b"\n" in out:
            break
        row, _frame = model.decode(token, False)
    return step.step.fact.answer.lower() in out.decode("utf-8", "replace").lower()


def measures(step: TailStep, logprobs: npt.NDArray[np.float64], reply: list[int]) -> dict[str, float]:
    """A step's measures from the pruned context's log-probs of its reply's rows."""
    reference = step.reference.astype(np.float64)
    tokens = np.asarray(reply)
    rows = np.arange(len(reply))
    if step.step.kind == "fidelity":
        p = np.exp(reference)
        return {
            "kl": float(np.mean(np.sum(p * (reference - logprobs), axis=1))),
            "nll_increase": float(np.mean(reference[rows, tokens] - logprobs[rows, tokens])),
            "top1": float(np.mean(logprobs.argmax(axis=1) == reference.argmax(axis=1))),
        }
    a, b = step.answer
    answer_rows = np.arange(a, b)
    # greedy follows the gold while every answer token is the argmax: then the answer is right
    # however it goes on; otherwise the caller decodes the greedy answer and looks for the gold
    exact = bool((logprobs[answer_rows].argmax(axis=1) == tokens[answer_rows]).all())
    return {
        "recall": float(exact),
        "answer_nll_increase": float(np.mean(reference[answer_rows, tokens[answer_rows]]
                                             - logprobs[answer_rows, tokens[answer_rows]])),
        "full_recall": float(step.full_correct),
    }


def summary_row(dialog: Dialog, policy: str, fraction: float, result: StepResult) -> dict[str, Any]:
    """One step's row. A question's measures are also filed under its wording ("recall (paraphrased)"),
    and what memory brought back under the message's kind: for a question `recalled`, for a
    fidelity probe, which asks for nothing, `false_recalls`."""
    row = {"conversation": dialog.conversation.name, "split": dialog.conversation.split, "policy": policy,
           "budget": fraction, "step": result.step, "kind": result.kind, "kept": result.kept,
           "budget_tokens": result.budget, **result.measures}
    fact = dialog.tail[result.step].step.fact
    if result.kind == "question":
        row["recalled"] = result.recalled
        if fact is not None and fact.wording:
            row["wording"] = fact.wording
            for measure in ("recall", "answer_nll_increase", "full_recall"):
                row[f"{measure} ({fact.wording})"] = result.measures[measure]
    else:
        row["false_recalls"] = result.recalled
    return row


__all__ = ["ANSWER_TOKENS", "Measured", "StepResult", "budget_for", "measures", "replay", "summary_row"]
