"""The benchmark pipeline end to end on the mock backend (fast; its numbers mean nothing).

The same pipeline on SmolLM2 is tests/evaluation/test_smoke_smollm2.py and `make bench-quality`.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from halo_client.evaluation.benchmark import BenchmarkConfig, run, summarize
from halo_client.evaluation.conversations import make_conversation
from halo_client.evaluation.policies import keep_within_budget
from halo_client.evaluation.runner import ModelSession, evaluate, play, policies
from halo_client.testing import MockBackend, check_chatml


@pytest.fixture
def session() -> ModelSession:
    return ModelSession(MockBackend(max_context_length=16384))


def count(session: ModelSession) -> object:
    return lambda text: len(session.backend.tokenize(text, False))


def test_play_builds_a_valid_chat_and_caches_replies(session: ModelSession, tmp_path: Path) -> None:
    conv = make_conversation(4, count_tokens=count(session), min_tokens=400, max_tokens=700)  # type: ignore[arg-type]
    first = play(conv, session, reply_tokens=16, cache_dir=tmp_path)
    check_chatml(first.state.input_ids())
    assert len(first.frames) > len(conv.turns)
    for positions, mean in first.frames:
        assert positions.shape == mean.shape and np.isclose(mean.sum(), 1.0, atol=1e-4)
    facts = [u for u in first.units if u.holds_fact]
    assert len(facts) == len(conv.facts)
    again = play(conv, session, reply_tokens=16, cache_dir=tmp_path)  # replayed from the cache
    assert again.state.input_ids() == first.state.input_ids()
    assert len(list(tmp_path.glob("dialog-*.json"))) == 1


def test_policies_respect_the_budget_and_gold_keeps_facts(session: ModelSession) -> None:
    conv = make_conversation(5, count_tokens=count(session), min_tokens=500, max_tokens=800)  # type: ignore[arg-type]
    dialog = play(conv, session, reply_tokens=16)
    content = sum(u.size for u in dialog.units)
    for name, scorer in policies().items():
        keep = keep_within_budget(dialog.units, scorer(dialog), content // 2)
        assert sum(u.size for u, k in zip(dialog.units, keep, strict=True) if k) <= content // 2, name
        if name == "gold":
            assert all(k for u, k in zip(dialog.units, keep, strict=True) if u.holds_fact)


def test_evaluate_and_summarize(session: ModelSession) -> None:
    conv = make_conversation(7, count_tokens=count(session), min_tokens=400, max_tokens=600)  # type: ignore[arg-type]
    dialog = play(conv, session, reply_tokens=12)
    rows = evaluate(dialog, session, policies(), budgets=(0.5,))
    assert {r["policy"] for r in rows} >= {"brightness", "recency", "streaming", "h2o", "tova", "gold"}
    assert all(r["kept_tokens"] <= r["full_tokens"] for r in rows)
    table = summarize(rows)
    assert {t["policy"] for t in table} >= {"random", "brightness"}
    ranks = sorted(t["rank"] for t in table if "rank" in t)
    assert ranks == list(range(1, len(ranks) + 1))


def test_full_run_writes_table_and_plot(tmp_path: Path) -> None:
    config = BenchmarkConfig(conversations=3, min_tokens=300, max_tokens=500, reply_tokens=8, budgets=(0.5,))
    table = run(MockBackend(max_context_length=16384), config, tmp_path, progress=lambda _: None)
    assert table
    assert (tmp_path / "pruning.md").read_text().startswith("# Pruning benchmark")
    assert (tmp_path / "pruning.svg").read_text().startswith("<svg")
    assert json.loads((tmp_path / "pruning.json").read_text())["table"] == table
