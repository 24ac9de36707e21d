"""The product's defaults are what the pruning benchmark chose on its tuning split, as its last
run (docs/pruning.json) records: memory's settings, the default's pruning score and the heads it
reads for the reference model."""

from __future__ import annotations

import json
from pathlib import Path

from halo_client.conversation.memory import MemorySettings
from halo_client.conversation.pruner import PrunerSettings
from halo_client.conversation.question import RETRIEVAL_HEADS
from halo_client.reference.model_store import FILENAME

RESULT = Path(__file__).parents[2] / "docs" / "pruning.json"


def test_the_defaults_are_the_benchmarks_choice() -> None:
    data = json.loads(RESULT.read_text())
    tuned = data["tuned"]
    assert data["model"] == Path(FILENAME).stem
    assert MemorySettings.model_validate(tuned["memory"]) == MemorySettings()
    assert tuned["score"] == "question heads (last row)" and PrunerSettings().score == "question"
    assert tuple(tuple(h) for h in tuned["heads"]["last"]) == RETRIEVAL_HEADS[("smollm2-135m-instruct", 30, 9)]
