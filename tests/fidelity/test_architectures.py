"""Every engine's frames equal transformers' eager attention on tiny random models of each
architecture, at every layer and head, for the prefill, the decodes and after a context shift.

One server per (engine, architecture) serves the four requests of `halo_client.testing.fidelity`
(a fresh prompt; a re-request with a middle chunk dropped; a shift made by a request without
frames; the request after it); each test below judges one part of what it streamed. Where
llama.cpp computes other attention than transformers' model (`fidelity.DIFFERENCES`: Mistral's and,
on current llama.cpp, Phi-3's sliding window), transformers is run with llama.cpp's semantics, and
a control shows that transformers as configured differs.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from halo_client.messages import ModelInfo
from halo_client.testing.engines import ENGINES, Engine, EngineFailed
from halo_client.testing.fidelity import (
    CONTEXT,
    CONTROL_MIN_ABS,
    MAX_ABS,
    Agreement,
    Request,
    Result,
    judge,
    run_requests,
)
from halo_client.testing.tiny_models import ARCHITECTURES, Architecture, TinyModel, tiny_models, vocabulary

pytestmark = [pytest.mark.model, pytest.mark.process]

CASES = [(engine, arch) for engine in ENGINES.values() for arch in ARCHITECTURES.values()
         if engine.knows(arch.gguf_arch) and (engine.semantics == "current" or arch.in_v176)]


@dataclass
class Run:
    engine: Engine
    model: TinyModel
    info: ModelInfo
    requests: list[Request]
    log: str
    result: Result


@pytest.fixture(scope="module", params=CASES, ids=[f"{e.name}-{a.name}" for e, a in CASES])
def run(request: pytest.FixtureRequest, model_cache: Path) -> Iterator[Run]:
    engine, arch = request.param
    if reason := engine.unavailable():
        pytest.skip(reason)
    model = tiny_models([arch.name], engine.converter_tree(model_cache), model_cache)[arch.name]
    with engine.serve(model.gguf, CONTEXT) as server:
        info, done = asyncio.run(run_requests(server.url, len(vocabulary())))
        log = server.log_text()
    result = judge(arch.name, arch.config, engine.name, engine.semantics, engine.after_shift, model.hf_dir, done)
    yield Run(engine, model, info, done, log, result)


def check(run: Run, scenario: str) -> None:
    found: Agreement = run.result.scenarios[scenario]
    layers = " ".join(f"{x:.1e}" for x in found.max_abs)
    line = (f"[{run.engine.name} {run.model.arch.name}] {scenario}: max|frame - transformers| {found.worst:.2e} "
            f"(per layer: {layers}), TV mean {found.mean_tv.mean():.2e}, top-1 {found.top1_share.mean():.1%}")
    print(line)
    bad = [i for i, x in enumerate(found.max_abs) if x > MAX_ABS]
    assert not bad, f"{line}: layers {bad} over {MAX_ABS}"


def test_model_info_is_the_models(run: Run) -> None:
    config = run.model.arch.config
    assert (run.info.num_layers, run.info.num_attention_heads, run.info.num_key_value_heads) == (
        config["num_hidden_layers"], config["num_attention_heads"], config["num_key_value_heads"])
    assert run.info.vocab_size == len(vocabulary())


def test_prefill_frame(run: Run) -> None:
    check(run, "prefill")


def test_decode_frames(run: Run) -> None:
    check(run, "decode")


def test_after_dropping_a_middle_chunk(run: Run) -> None:
    """The re-request a pruned chat makes: the frames equal what the engine says it computes
    (recomputed, or its cache shifted); one with no such claim matches one of the two."""
    print(f"[{run.engine.name} {run.model.arch.name}] after a shift: {run.result.after_shift}, the other "
          f"computation misses by {run.result.other_after_shift:.2e}")
    check(run, "shift")


def test_after_a_context_shift_by_another_request(run: Run) -> None:
    check(run, "after_shift")
    if run.engine.shift_log_line is not None:  # the shift this scenario is about did happen
        assert run.engine.shift_log_line in run.log


def test_controls_miss(run: Run) -> None:
    """The frames depend on what makes the architecture itself (its window, its soft-cap) and, where
    llama.cpp differs from transformers, transformers as configured does not compute them."""
    for name, found in run.result.controls.items():
        print(f"[{run.engine.name} {run.model.arch.name}] control {name}: max|diff| {found.worst:.2e}")
        assert found.worst > CONTROL_MIN_ABS, f"the frames also match transformers with {name}"


@pytest.mark.parametrize("arch", [a for a in ARCHITECTURES.values() if not a.in_v176], ids=lambda a: a.name)
def test_koboldcpp_v176_does_not_load_newer_architectures(arch: Architecture, model_cache: Path) -> None:
    """Qwen 3 and Gemma 3 came after v1.76: its llama.cpp refuses them at load, so the table lists
    them as unsupported there (the current converter makes the GGUFs: v1.76's has no such model)."""
    engine = ENGINES["koboldcpp-v1.76"]
    if reason := engine.unavailable():
        pytest.skip(reason)
    model = tiny_models([arch.name], ENGINES["llama.cpp"].converter_tree(model_cache), model_cache)[arch.name]
    with pytest.raises(EngineFailed, match=f"unknown model architecture: '{arch.gguf_arch}'"), \
            engine.serve(model.gguf, CONTEXT):
        pass
