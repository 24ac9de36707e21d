"""Every policy over a played conversation's tail, the pruner running before each message."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from halo_client.conversation.memory import MemorySettings
from halo_client.evaluation.benchmark import Tuned, policy_factories
from halo_client.evaluation.conversations import make_conversation
from halo_client.evaluation.dialog import Dialog, play
from halo_client.evaluation.model import InProcessModel
from halo_client.evaluation.policies import Gold, Recency, holds_fact
from halo_client.evaluation.replay import Measured, budget_for, replay
from halo_client.reference import ReferenceBackend


@pytest.fixture(scope="module")
def played(tiny_path: Path) -> tuple[InProcessModel, Dialog]:
    model = InProcessModel(ReferenceBackend(tiny_path, n_ctx=4096))
    conv = make_conversation(5, count_tokens=lambda t: len(model.backend.tokenize(t, False)), min_tokens=500,
                             max_tokens=700, reply_tokens=8, tail="FQQQ")
    return model, play(conv, model, reply_tokens=8, probe_tokens=10)


@pytest.mark.parametrize("fraction", [0.25, 0.5])
def test_every_policy_stays_within_the_budget(played: tuple[InProcessModel, Dialog], fraction: float) -> None:
    model, dialog = played
    budget = budget_for(dialog, fraction)
    tuned = Tuned(heads={"message": [(0, 0), (1, 1)], "last": [(1, 0)]})
    for name, (factory, memory) in policy_factories(tuned).items():
        results = replay(dialog, model, factory(dialog), fraction, memory=memory)
        assert [r.kind for r in results] == ["fidelity", "question", "question", "question"], name
        for r in results:
            assert r.budget == budget and r.kept <= budget, (name, r)
            if r.kind == "fidelity":
                assert r.measures["kl"] >= -1e-9 and 0 <= r.measures["top1"] <= 1
                assert np.isfinite(r.measures["nll_increase"])
            else:
                assert r.measures["recall"] in (0.0, 1.0) and r.measures["full_recall"] in (0.0, 1.0)


def test_nothing_pruned_means_nothing_lost(played: tuple[InProcessModel, Dialog]) -> None:
    """A budget above the whole conversation prunes nothing: every measure equals the full context's."""
    model, dialog = played
    for r in replay(dialog, model, Recency(), 10.0):
        if r.kind == "fidelity":
            assert abs(r.measures["kl"]) < 1e-4 and r.measures["top1"] == 1.0
        else:
            assert abs(r.measures["answer_nll_increase"]) < 1e-4
            assert r.measures["recall"] == r.measures["full_recall"]


def test_gold_keeps_the_facts_and_memory_brings_them_back(played: tuple[InProcessModel, Dialog]) -> None:
    model, dialog = played
    state = dialog.history_state()
    facts = [s for s in np.unique(state.column("sentence")[~state.column("template")])
             if holds_fact(state.text(np.flatnonzero(state.column("sentence") == s)), dialog)]
    assert len(facts) == len(dialog.conversation.facts)
    # recency at a quarter forgets the early facts; with memory, each question recalls its fact
    plain = replay(dialog, model, Recency(), 0.25)
    remembering = replay(dialog, model, Recency(), 0.25, memory=MemorySettings(max_recalled=1))
    assert sum(r.recalled for r in plain) == 0
    assert all(r.recalled >= 1 for r in remembering if r.kind == "question")
    gold = replay(dialog, model, Gold(), 0.25)
    assert all(r.kept <= r.budget for r in gold)


def test_identical_contexts_are_measured_once(played: tuple[InProcessModel, Dialog]) -> None:
    model, dialog = played
    measured: Measured = {}
    first = replay(dialog, model, Recency(), 0.5, measured=measured)
    before = model.computed
    again = replay(dialog, model, Recency(), 0.5, measured=measured)
    assert model.computed == before  # every step's pruned context was already measured
    assert [r.measures for r in again] == [r.measures for r in first]


def test_question_heads_score_what_the_message_attends_to(played: tuple[InProcessModel, Dialog]) -> None:
    """The newest message's attention per head, from its rows or its last row, reaches the policy
    before the prune; a head's votes sum to one per head (its row divided by its maximum)."""
    from halo_client.evaluation.policies import QuestionHeads, StepView

    model, dialog = played
    asked = dialog.tail[0].asked
    state = dialog.history_state()
    layers, heads = model.info.num_layers, model.info.num_attention_heads
    assert asked.heads["message"].shape == asked.heads["last"].shape == (layers, heads, len(asked.positions))
    assert len(asked.positions) == len(state) + dialog.tail[0].user.size + len(dialog.tail[0].reply.prefix)
    # each row of attention sums to one over the columns it sees: the last row sees them all
    assert np.allclose(asked.heads["last"].sum(axis=-1), 1.0, atol=1e-4)
    from halo_client.evaluation.dialog import add_turn

    add_turn(state, dialog.tail[0].user)
    for rows in ("message", "last"):
        scores = QuestionHeads("q", [(0, 0), (1, 1)], rows).scores(state, StepView("q", 100, asked))
        assert scores.shape == (len(state),) and 0 < scores.max() <= 2.0 + 1e-9
        assert (scores[state.column("template")] == 0).all()  # only content is scored
    assert not QuestionHeads("q", [], "last").scores(state, StepView("q", 100, asked)).any()
