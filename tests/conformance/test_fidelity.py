"""Fidelity: the server's frames equal the reference's for the same tokens.

Runs when the target has an oracle: the built-in servers always do; a running server does
when `--model-path` names the GGUF it serves. Reports, per request, the largest absolute
difference, the mean and largest total-variation distance of a row (half the L1 distance of
two distributions) and the share of rows whose most-attended column agrees.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from halo_client.client import TokenEvent
from tests.conformance.conftest import Target
from tests.conformance.helpers import client, collect, prompt_ids


@dataclass
class Agreement:
    max_abs: float
    mean_tv: float
    max_tv: float
    top1: float
    rows: int


def compare(target: Target, input_ids: list[int], tokens: list[TokenEvent]) -> Agreement:
    assert target.oracle is not None
    oracle = target.oracle()
    abs_max, tvs, agree = 0.0, [], []
    result = oracle.prefill(input_ids, True)
    for i, event in enumerate(tokens):
        assert event.attention is not None and result.attention is not None
        got = event.attention.values.astype(np.float64)
        want = result.attention.astype(np.float64)
        assert got.shape == want.shape, f"token {i}: {got.shape} vs reference {want.shape}"
        abs_max = max(abs_max, float(np.abs(got - want).max()))
        tv = 0.5 * np.abs(got - want).sum(axis=-1)
        tvs.extend(tv.ravel().tolist())
        agree.extend((got.argmax(axis=-1) == want.argmax(axis=-1)).ravel().tolist())
        if i + 1 < len(tokens):
            result = oracle.decode(event.token_id, True)
    return Agreement(abs_max, float(np.mean(tvs)), float(np.max(tvs)), float(np.mean(agree)), len(tvs))


def check(target: Target, what: str, agreement: Agreement) -> None:
    line = (f"[{target.name}] {what}: max|diff| {agreement.max_abs:.2e}, TV mean {agreement.mean_tv:.4f} "
            f"max {agreement.max_tv:.4f}, top-1 {agreement.top1:.1%} of {agreement.rows} rows")
    print(line)
    assert agreement.max_abs <= target.max_abs, line
    assert agreement.mean_tv <= target.mean_tv, line
    assert agreement.top1 >= target.top1, line


@pytest.fixture
def oracle_target(target: Target) -> Target:
    if target.oracle is None:
        pytest.skip(target.notes[0] if target.notes
                    else "fidelity needs the model the server runs: pass --model-path MODEL.gguf")
    return target


async def test_model_info_matches_the_reference(oracle_target: Target) -> None:
    """The same GGUF gives the same shape and special tokens (eot_token_id included: one rule,
    api_spec's, where llama.cpp's own guess may differ)."""
    assert oracle_target.oracle is not None
    expected = oracle_target.oracle().model_info()
    async with client(oracle_target) as c:
        info = await c.model_info()
    fields = ("vocab_size", "num_layers", "num_attention_heads", "num_key_value_heads", "hidden_size",
              "bos_token_id", "eos_token_id", "eot_token_id")
    assert {f: getattr(info, f) for f in fields} == {f: getattr(expected, f) for f in fields}


async def test_frames_match_the_reference(oracle_target: Target) -> None:
    ids = await prompt_ids(oracle_target)
    tokens, _ = await collect(oracle_target, ids, max_length=10, temperature=0, return_attention=True)
    check(oracle_target, "fresh request", compare(oracle_target, ids, tokens))


async def test_extending_request_reuses_the_prefix_correctly(oracle_target: Target) -> None:
    ids = await prompt_ids(oracle_target)
    first, _ = await collect(oracle_target, ids, max_length=6, temperature=0, return_attention=True)
    extended = ids + [t.token_id for t in first] + await prompt_ids(oracle_target, " And then?")
    tokens, _ = await collect(oracle_target, extended, max_length=6, temperature=0, return_attention=True)
    check(oracle_target, "extended request (prefix reuse)", compare(oracle_target, extended, tokens))


async def test_pruned_request_with_tokens_removed_from_the_middle(oracle_target: Target) -> None:
    ids = await prompt_ids(oracle_target)
    await collect(oracle_target, ids, max_length=4, temperature=0, return_attention=True)
    third = len(ids) // 3
    pruned = ids[:third] + ids[2 * third :]  # what the pruner sends after dropping a sentence
    tokens, _ = await collect(oracle_target, pruned, max_length=6, temperature=0, return_attention=True)
    check(oracle_target, "pruned re-request", compare(oracle_target, pruned, tokens))
