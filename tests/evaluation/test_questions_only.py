"""A user's conversations with questions and no fidelity probe (allowed by docs/pruning.md) run to
the end and report; the rows are saved before the report is written."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from halo_client.evaluation import benchmark
from halo_client.evaluation.benchmark import BenchmarkConfig, run
from halo_client.evaluation.dataset import load_conversations
from halo_client.evaluation.report import DEFAULT_POLICY
from halo_client.evaluation.summary import best, summarize
from halo_client.reference import ReferenceBackend

LINE = {"messages": [{"role": "user", "content": "My flight number is KL 1743. I fly on Monday."},
                     {"role": "assistant", "content": None},
                     {"role": "user", "content": "Tell me about Lisbon in May. Is it warm? Is it busy?"},
                     {"role": "assistant", "content": "It is warm and busy. Bring a hat."}],
        "questions": [{"question": "What is my flight number?", "answer": "1743"}]}


def questions_only(tmp_path: Path) -> BenchmarkConfig:
    path = tmp_path / "questions.jsonl"
    path.write_text(json.dumps(LINE) + "\n")
    return BenchmarkConfig(conversations=load_conversations(path), budgets=(0.5,), reply_tokens=6, probe_tokens=8,
                           policies=(DEFAULT_POLICY, "recency"), cost_sentences=0)


def test_a_file_of_questions_only_runs_and_reports(tiny: ReferenceBackend, tmp_path: Path) -> None:
    result = run(tiny, questions_only(tmp_path), tmp_path / "out", lambda *_: None)
    assert {r["kind"] for r in result["rows"]} == {"question"}
    text = (tmp_path / "out" / "pruning.md").read_text()
    assert "### Budget 50%" in text
    assert re.search(r"answer NLL increase at 50%: (better than|worse than|not separable from) recency\.", text)
    assert "lowest KL at 50%: none measured" in text  # said, not a crash
    saved = json.loads((tmp_path / "out" / "pruning.json").read_text())
    assert len(saved["rows"]) == len(result["rows"]) == 2


def test_the_rows_are_saved_before_the_report(tiny: ReferenceBackend, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    def broken_report(*_args: object, **_kw: object) -> None:
        raise RuntimeError("the report failed")

    monkeypatch.setattr(benchmark, "write_report", broken_report)
    with pytest.raises(RuntimeError, match="the report failed"):
        run(tiny, questions_only(tmp_path), tmp_path / "out", lambda *_: None)
    saved = json.loads((tmp_path / "out" / "pruning.json").read_text())
    assert len(saved["rows"]) == 2 and saved["config"]["own"] is True  # nothing computed is lost
    # and during the run, each measured conversation's rows as they came (a run cut short keeps them)
    partial = json.loads((tmp_path / "out" / "pruning.partial.json").read_text())
    assert partial["rows"] == saved["rows"] and partial["costs"] == {}


def test_best_of_a_measure_nobody_has_is_none() -> None:
    rows = [{"conversation": "a", "policy": "p", "budget": 0.5, "step": 0, "kind": "question", "recall": 1.0}]
    table = summarize(rows, resamples=10)
    assert best(table, 0.5, "recall") == "p"
    assert best(table, 0.5, "kl") is None
