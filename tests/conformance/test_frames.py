"""The stream: one frame per generated token, each obeying the contract's rules."""

from __future__ import annotations

import numpy as np
import pytest

from halo_client.frame import reduce_attention
from tests.conformance.conftest import Target
from tests.conformance.helpers import client, collect, prompt_ids


async def test_frames_count_shape_ctx_and_rows(target: Target) -> None:
    ids = await prompt_ids(target)
    async with client(target) as c:
        info = await c.model_info()
    tokens, done = await collect(target, ids, max_length=12, temperature=0, return_attention=True)
    assert done.token_count == len(tokens) >= 1
    assert done.prompt_tokens == len(ids)
    assert done.finish_reason in ("length", "eos")
    for i, event in enumerate(tokens):
        assert event.index == i
        assert event.attention is not None, f"token {i} has no frame"
        frame = event.attention
        assert frame.token_index == i and frame.dtype == "float32"
        assert frame.values.shape == (info.num_layers, info.num_attention_heads, len(ids) + i)
        assert np.isfinite(frame.values).all()
        assert (frame.values >= 0).all()
        np.testing.assert_allclose(frame.values.sum(axis=-1), 1.0, atol=1e-3)


async def test_float16_frames(target: Target) -> None:
    ids = await prompt_ids(target)
    tokens, _ = await collect(target, ids, max_length=4, temperature=0, return_attention=True,
                              attention_dtype="float16")
    for event in tokens:
        assert event.attention is not None and event.attention.values.dtype == np.float16
        sums = event.attention.values.astype(np.float32).sum(axis=-1)
        np.testing.assert_allclose(sums, 1.0, atol=1e-2)


async def test_stopping_tokens_are_emitted_with_their_frame(target: Target) -> None:
    ids = await prompt_ids(target)
    async with client(target) as c:
        info = await c.model_info()
    eos = [t for t in (info.eos_token_id, info.eot_token_id) if t is not None]
    free, _ = await collect(target, ids, max_length=8, temperature=0, banned_token_ids=eos)
    stop = free[min(3, len(free) - 1)].token_id
    tokens, done = await collect(target, ids, max_length=8, temperature=0, banned_token_ids=eos,
                                 stop_token_ids=[stop], return_attention=True)
    assert done.finish_reason == "stop_token"
    assert tokens[-1].token_id == stop and tokens[-1].attention is not None
    assert [t.token_id for t in tokens] == [t.token_id for t in free[: len(tokens)]]
    # banning the model's choice changes it, and the banned ids never appear
    banned, _ = await collect(target, ids, max_length=4, temperature=0,
                              banned_token_ids=[*eos, free[0].token_id])
    assert free[0].token_id not in {t.token_id for t in banned}


async def test_generation_without_attention_sends_no_frames(target: Target) -> None:
    ids = await prompt_ids(target)
    tokens, done = await collect(target, ids, max_length=3, temperature=0)
    assert done.finish_reason in ("length", "eos") and all(t.attention is None for t in tokens)


async def test_greedy_is_deterministic_and_seeds_reproduce(target: Target) -> None:
    ids = await prompt_ids(target)
    a, _ = await collect(target, ids, max_length=6, temperature=0)
    b, _ = await collect(target, ids, max_length=6, temperature=0)
    assert [t.token_id for t in a] == [t.token_id for t in b]
    c, _ = await collect(target, ids, max_length=6, temperature=1.0, sampler_seed=11)
    d, _ = await collect(target, ids, max_length=6, temperature=1.0, sampler_seed=11)
    assert [t.token_id for t in c] == [t.token_id for t in d]


@pytest.mark.parametrize("dtype", ["float32", "float16"])
async def test_reduced_frames_are_the_reduction_of_the_full_frame(target: Target, dtype: str) -> None:
    """F8: for the same greedy request, a `layer_stats` or `model_stats` frame is the mean and
    the max over heads (per layer, or over the whole model) of the full frame."""
    ids = await prompt_ids(target)
    async with client(target) as c:
        info = await c.model_info()
    assert {"full", "layer_stats", "model_stats"} <= set(info.attention.layouts), info.attention.layouts
    full, _ = await collect(target, ids, max_length=6, temperature=0, return_attention=True)
    tolerance = 1e-5 if dtype == "float32" else 1e-3  # float16 rounds values in [0, 1] by <= 2**-12
    for layout in ("layer_stats", "model_stats"):
        reduced, _ = await collect(target, ids, max_length=6, temperature=0, return_attention=True,
                                   attention_dtype=dtype, attention_layout=layout)
        assert [t.token_id for t in reduced] == [t.token_id for t in full]
        for whole, event in zip(full, reduced, strict=True):
            assert whole.attention is not None and event.attention is not None
            frame = event.attention
            assert frame.layout == layout and frame.dtype == dtype
            values = frame.values.astype(np.float32)
            expected = reduce_attention(whole.attention.values, layout)
            np.testing.assert_allclose(values, expected, atol=tolerance, rtol=0, err_msg=f"{layout} {dtype}")
            np.testing.assert_allclose(values[:, 0].sum(axis=-1), 1.0, atol=1e-2 if dtype == "float16" else 1e-3)
            assert (values[:, 0] <= values[:, 1] + tolerance).all() and (values <= 1 + tolerance).all()
