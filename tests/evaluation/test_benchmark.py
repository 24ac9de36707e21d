"""The whole benchmark on a real (tiny) model: tuning, every policy, tables with intervals, plot."""

from __future__ import annotations

import dataclasses
import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from halo_client.conversation.memory import MemorySettings
from halo_client.evaluation.benchmark import (
    COUNTS,
    SCORES,
    BenchmarkConfig,
    Tuned,
    choose_count,
    policy_factories,
    run,
)
from halo_client.evaluation.dataset import load_conversations
from halo_client.evaluation.report import DEFAULT_POLICY, ResultFileError, report_from_json
from halo_client.evaluation.retrieval import memory_grid
from halo_client.reference import ReferenceBackend
from tests.evaluation.test_handwritten import HANDWRITTEN, HANDWRITTEN_TUNE


def test_a_full_run_writes_tables_json_and_plot(tiny: ReferenceBackend, tmp_path: Path) -> None:
    config = BenchmarkConfig(tune=1, report=2, min_tokens=300, max_tokens=400, reply_tokens=4, probe_tokens=6,
                             tail="FQP", budgets=(0.25, 0.5), cache_dir=tmp_path / "cache", cost_sentences=60,
                             handwritten=load_conversations(HANDWRITTEN)[:1] + load_conversations(HANDWRITTEN_TUNE)[:1])
    progress: list[tuple[int, int, str]] = []
    result = run(tiny, config, tmp_path, lambda d, t, m: progress.append((d, t, m)))
    names = set(policy_factories(Tuned()))
    assert {r["policy"] for r in result["rows"]} == names
    # what memory brought back is shown for every policy that had memory, whatever its name
    assert set(result["with_memory"]) == {n for n, (_f, m) in policy_factories(Tuned()).items() if m is not None}
    small = [line for line in (tmp_path / "pruning.md").read_text().splitlines()
             if line.startswith("| default (small embedder) |")]
    assert small and not any(line.endswith("|  |  |") for line in small)
    # held out only: the generated ones, and the one written by hand, marked as such
    assert {(r["conversation"], r["set"]) for r in result["rows"]} == {
        ("seed 1", "generated"), ("seed 2", "generated"), ("hw-01-airport", "handwritten")}
    assert len([r for r in result["rows"] if r["set"] == "generated"]) == len(names) * 2 * 2 * 3
    # a step per conversation and phase; the one written by hand for tuning joins the tuning split
    assert [(d, t) for d, t, _m in progress] == [(i, 9) for i in range(1, 10)]
    assert {m.split(":")[0] for _d, _t, m in progress[:2]} == {"recall study of seed 0",
                                                               "recall study of tune-hw-01-school-play"}
    assert {m.split(":")[0] for _d, _t, m in progress[2:4]} == {"tuned on seed 0", "tuned on tune-hw-01-school-play"}
    assert {m for _d, _t, m in progress[4:6]} == {"memory's count tuned on seed 0",
                                                   "memory's count tuned on tune-hw-01-school-play"}
    assert (result["config"]["tune"], result["config"]["tune_handwritten"]) == (1, 1)
    tuned = result["tuned"]
    assert tuned["score"] in SCORES and set(tuned["heads"]) == {"message", "last"}
    memory = MemorySettings.model_validate(tuned["memory"])
    assert memory.model_copy(update={"max_recalled": 1}) in memory_grid() and memory.max_recalled in COUNTS
    assert set(tuned["counts"]) == {str(k) for k in COUNTS}
    assert all(set(v) == {"answer_nll_increase", "kl"} for v in tuned["counts"].values())
    question = next(r for r in result["rows"] if r["kind"] == "question" and r["set"] == "generated")
    assert question["wording"] in ("literal", "paraphrased") and f"recall ({question['wording']})" in question
    assert any("false_recalls" in r for r in result["rows"] if r["kind"] == "fidelity")
    assert {r["set"] for r in result["study"]} == {"tuning", "tuning by hand", "generated", "handwritten"}
    assert {r["retriever"] for r in result["study"] if "retriever" in r} >= {"words", "meaning", "hybrid"}
    assert (set(result["costs"]["ms_per_message"]) == set(result["costs"]["ms_in_context"])
            == set(result["costs"]["ms_keeping_up"]) == {"words", "meaning", "hybrid"})
    text = (tmp_path / "pruning.md").read_text()
    assert "# Pruning benchmark" in text and "Full-context recall" in text
    assert "## Generated conversations, held out (2)" in text and "## Written by hand, held out (1)" in text
    assert "1 generated and 1 written by hand for tuning" in text and "tuning, by hand, paraphrased" in text
    assert "### Budget 25%" in text and "### Budget 50%" in text and f"| {DEFAULT_POLICY} |" in text
    assert "## Recall candidates on the same archive" in text and "## Memory's cost per message" in text
    assert "keeping up after the reply" in text
    assert "Sentences memory brings back per message" in text and f"chosen: {memory.max_recalled}." in text
    assert "## What the default is held to" in text and "KL at 50%" in text and "recency + memory" in text
    saved = json.loads((tmp_path / "pruning.json").read_text())
    assert len(saved["rows"]) == len(result["rows"])
    for entry in saved["table"]:
        if entry["set"] == "generated":
            for measure in ("kl", "top1", "recall"):
                e = entry[measure]
                assert e["low"] <= e["mean"] <= e["high"] and e["n"] == 2
    again = tmp_path / "again"  # the report, rewritten from the saved rows alone
    report_from_json(tmp_path / "pruning.json", again)
    assert (again / "pruning.md").read_text() == text
    with pytest.raises(ResultFileError, match="not a pruning benchmark result"):
        report_from_json(tmp_path / "pruning.svg", again)
    svg = ET.fromstring((tmp_path / "pruning.svg").read_text())
    assert len(svg.findall("{http://www.w3.org/2000/svg}polyline")) >= 2 * 5


def test_the_count_is_the_best_answer_among_those_not_significantly_worse_on_kl() -> None:
    fewest, middle, most = COUNTS

    def scores(nll: tuple[float, float, float], kl: tuple[float, float, float]) -> dict[str, float]:
        return {**{f"{k} answer_nll_increase": v for k, v in zip(COUNTS, nll, strict=True)},
                **{f"{k} kl": v for k, v in zip(COUNTS, kl, strict=True)}}

    # the mean over the tuning conversations decides: the most sentences answer best, at no KL
    assert choose_count([scores((1.0, 0.8, 0.6), (0.02, 0.02, 0.02)), scores((0.4, 0.5, 0.3), (0.01, 0.01, 0.01))]
                        )[0] == most
    # the last sentences' false recalls raise KL in every conversation: the middle count, whose KL
    # rises in one and falls in the other
    count, means = choose_count([scores((1.0, 0.8, 0.6), (0.020, 0.021, 0.030)),
                                 scores((1.0, 0.8, 0.6), (0.020, 0.019, 0.031))])
    assert count == middle and means[most] == {"answer_nll_increase": 0.6, "kl": 0.0305}
    assert choose_count([scores((0.5, 0.5, 0.5), (0.02, 0.02, 0.02))])[0] == fewest  # a tie: fewer
    # the most answer a hair better on the mean, not in every conversation: the lower mean still
    # decides (a test of "not significantly worse" cannot tell such counts apart on a few chats)
    close = [scores((1.0, 0.80, 0.79), (0.02,) * 3), scores((0.6, 0.42, 0.41), (0.02,) * 3),
             scores((0.6, 0.40, 0.41), (0.02,) * 3)]
    count, means = choose_count(close)
    assert means[most]["answer_nll_increase"] < means[middle]["answer_nll_increase"] and count == most
    # other candidates: the same rule over them
    assert choose_count([{"2 answer_nll_increase": 0.5, "2 kl": 0.02, "7 answer_nll_increase": 0.4, "7 kl": 0.02}],
                        (2, 7))[0] == 7
    # a conversation with no probe measured has no KL: the others decide
    assert choose_count([scores((1.0, 0.8, 0.6), (0.02, 0.02, 0.02)),
                         scores((1.0, 0.8, 0.6), (float("nan"),) * 3)])[0] == most
    assert choose_count([])[0] == MemorySettings().max_recalled  # nothing to tune on: the product's default


def test_your_own_conversations(tiny: ReferenceBackend, tmp_path: Path) -> None:
    path = tmp_path / "mine.jsonl"
    line = {"messages": [{"role": "user", "content": "My flight number is KL 1743. I fly on Monday."},
                         {"role": "assistant", "content": None},
                         {"role": "user", "content": "Tell me about Lisbon in May. Is it warm? Is it busy?"},
                         {"role": "assistant", "content": "It is warm and busy. Bring a hat."},
                         {"role": "user", "content": "What should I pack?"}],
            "questions": [{"question": "What is my flight number?", "answer": "1743"}]}
    path.write_text(json.dumps(line) + "\n")
    config = BenchmarkConfig(conversations=load_conversations(path), budgets=(0.5,), reply_tokens=6,
                             probe_tokens=8, policies=(DEFAULT_POLICY, "recency"), cost_sentences=0)
    result = run(tiny, config, tmp_path / "out", lambda *_: None)
    assert {(r["policy"], r["kind"]) for r in result["rows"]} == {
        (DEFAULT_POLICY, "fidelity"), (DEFAULT_POLICY, "question"), ("recency", "fidelity"), ("recency", "question")}
    assert result["config"]["tune"] == 0  # no tuning split in the file: tuned settings are the defaults
    assert MemorySettings.model_validate(result["tuned"]["memory"]) == MemorySettings()


@pytest.mark.process
def test_worker_processes_measure_what_this_process_measures(tiny: ReferenceBackend, tmp_path: Path) -> None:
    config = BenchmarkConfig(tune=0, report=2, min_tokens=300, max_tokens=400, reply_tokens=4, probe_tokens=6,
                             tail="FQ", budgets=(0.5,), policies=("recency", "h2o"), cache_dir=tmp_path / "cache",
                             attention_recall=False, cost_sentences=0)
    here = run(tiny, config, tmp_path / "here", lambda *_: None)
    there = run(tiny, dataclasses.replace(config, workers=2), tmp_path / "there", lambda *_: None)
    assert there["config"]["workers"] == 2
    assert len(there["rows"]) == len(here["rows"]) == 2 * 2 * 2
    for a, b in zip(there["rows"], here["rows"], strict=True):
        assert a.keys() == b.keys()
        for key, value in a.items():  # the same numbers, up to BLAS's summation order
            assert value == pytest.approx(b[key], abs=1e-4) if isinstance(value, float) else value == b[key]


def test_what_is_tuned_and_studied_does_not_depend_on_which_worker_finished_first(
        tiny: ReferenceBackend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Workers hand results back in the order they finish; the recall study's rows (whose order the
    bootstrap draws from) and what is chosen from the archives come out in the split's order."""
    from halo_client.evaluation import benchmark

    config = BenchmarkConfig(tune=2, report=2, min_tokens=300, max_tokens=400, reply_tokens=4, probe_tokens=6,
                             tail="FQ", budgets=(0.5,), policies=(DEFAULT_POLICY, "recency"),
                             cache_dir=tmp_path / "cache", attention_recall=False,
                             scores=("question heads (last row)",), counts=(5,), cost_sentences=0)

    def without_times(result: dict[str, object]) -> list[dict[str, object]]:
        return [{k: v for k, v in r.items() if k != "ms"} for r in result["study"]]  # type: ignore[attr-defined]

    in_order = run(tiny, config, tmp_path / "in-order", lambda *_: None)
    finishing = benchmark._Runner.map
    monkeypatch.setattr(benchmark._Runner, "map", lambda self, tasks: reversed(list(finishing(self, tasks))))
    backwards = run(tiny, config, tmp_path / "backwards", lambda *_: None)
    assert {r["conversation"] for r in in_order["study"]} == {"seed 0", "seed 1", "seed 2", "seed 3"}
    assert without_times(backwards) == without_times(in_order)
    assert json.dumps(backwards["tuned"], sort_keys=True) == json.dumps(in_order["tuned"], sort_keys=True)  # NaN too
