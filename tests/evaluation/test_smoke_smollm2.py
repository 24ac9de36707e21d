"""The pruning benchmark's smoke run on the real model (SmolLM2-135M-Instruct): two short
conversations, one tuning and one held out, one budget, a two-point grid. The full run is
`make bench-quality`; its results are in docs/pruning.md."""

from __future__ import annotations

from pathlib import Path

import pytest

from halo_client.conversation.tracker import TrackerSettings
from halo_client.evaluation.benchmark import BenchmarkConfig, run
from halo_client.reference import load_backend

pytestmark = pytest.mark.model


def test_smoke_run_on_smollm2(tmp_path: Path) -> None:
    backend = load_backend(quiet=True, n_ctx=2048)
    config = BenchmarkConfig(conversations=2, min_tokens=300, max_tokens=450, reply_tokens=12, budgets=(0.5,),
                             grid=(TrackerSettings(), TrackerSettings(decay=0.0)), cache_dir=tmp_path / "cache")
    lines: list[str] = []
    table = run(backend, config, tmp_path, progress=lines.append)
    policies = {t["policy"] for t in table}
    assert policies == {"brightness", "brightness (first design)", "brightness (tuned)", "recency", "streaming",
                        "h2o", "tova", "random", "gold"}
    for t in table:
        assert abs(t["nll_gap"]) < 20 and t["kl"] >= -1e-9 and 0 <= t["recall"] <= 1
    assert any("tuning" in line for line in lines)
    assert (tmp_path / "pruning.md").exists() and (tmp_path / "pruning.svg").exists()
