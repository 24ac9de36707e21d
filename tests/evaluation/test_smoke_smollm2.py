"""The pruning benchmark's smoke run on the real model (SmolLM2-135M-Instruct): one short held-out
conversation, one budget, three policies. The full run is `make bench-quality`; its results are
in docs/pruning.md."""

from __future__ import annotations

from pathlib import Path

import pytest

from halo_client.evaluation.benchmark import BenchmarkConfig, run
from halo_client.evaluation.conversations import make_conversation
from halo_client.evaluation.dialog import play
from halo_client.evaluation.model import InProcessModel
from halo_client.evaluation.policies import Recency
from halo_client.evaluation.replay import replay
from halo_client.evaluation.report import DEFAULT_POLICY
from halo_client.reference import load_backend

pytestmark = pytest.mark.model


def test_smoke_run_on_smollm2(tmp_path: Path) -> None:
    backend = load_backend(quiet=True, n_ctx=2048)
    config = BenchmarkConfig(tune=0, report=1, min_tokens=300, max_tokens=400, reply_tokens=12, probe_tokens=16,
                             tail="FQ", budgets=(0.5,), policies=(DEFAULT_POLICY, "recency", "gold"),
                             cache_dir=tmp_path / "cache", cost_sentences=200)
    lines: list[str] = []
    result = run(backend, config, tmp_path, lambda _d, _t, m: lines.append(m))
    assert {r["policy"] for r in result["rows"]} == {DEFAULT_POLICY, "recency", "gold"}
    for r in result["rows"]:
        if r["kind"] == "fidelity":
            assert 0 <= r["kl"] < 20 and 0 <= r["top1"] <= 1
        else:
            assert r["recall"] in (0, 1) and abs(r["answer_nll_increase"]) < 20
    assert len(lines) == 1 and lines[0].startswith("measured seed 0")  # a progress step per conversation
    assert result["costs"]["archived"] >= 200 and set(result["costs"]["ms_per_message"]) == {"words", "meaning",
                                                                                              "hybrid"}
    assert (tmp_path / "pruning.md").exists() and (tmp_path / "pruning.svg").exists()


def test_with_nothing_pruned_the_replay_is_the_full_context(tmp_path: Path) -> None:
    """The measures' zero point on the real model: a budget above the conversation reproduces
    the full-context run, reply for reply and answer for answer."""
    model = InProcessModel(load_backend(quiet=True, n_ctx=2048))
    conv = make_conversation(3, count_tokens=lambda t: len(model.backend.tokenize(t, False)), min_tokens=300,
                             max_tokens=400, reply_tokens=12, tail="FQ")
    dialog = play(conv, model, reply_tokens=12, probe_tokens=16)
    fidelity, question = replay(dialog, model, Recency(), 10.0)
    assert fidelity.measures["kl"] < 1e-3 and fidelity.measures["top1"] == 1.0
    assert abs(question.measures["answer_nll_increase"]) < 1e-3
    assert question.measures["recall"] == question.measures["full_recall"]
