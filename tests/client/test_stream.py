"""Client and mock server over a real loopback socket: the stream's semantic rules."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest

from halo_client.client import DoneEvent, KoboldClient, TokenEvent
from halo_client.testing import MockKoboldServer
from halo_client.testing import toy_tokenizer as tok

PROMPT = "<|im_start|>user\nhello, what is 3.14?<|im_end|>\n<|im_start|>assistant\n"


async def _prompt(client: KoboldClient) -> list[int]:
    return (await client.tokenize(PROMPT)).token_ids


async def _collect(
    client: KoboldClient, ids: list[int], **params: object
) -> tuple[list[TokenEvent], DoneEvent]:
    tokens: list[TokenEvent] = []
    async with client.generate_stream(ids, **params) as stream:
        async for event in stream:
            if isinstance(event, DoneEvent):
                return tokens, event
            tokens.append(event)
    raise AssertionError("no done event")


async def test_every_token_has_one_frame_obeying_the_contract(client: KoboldClient) -> None:
    info = await client.model_info()
    ids = await _prompt(client)
    tokens, done = await _collect(client, ids, return_attention=True, temperature=0, max_length=200)
    assert done.finish_reason == "eos"
    assert done.token_count == len(tokens) > 5
    assert done.prompt_tokens == len(ids)
    assert tokens[-1].token_id == info.eos_token_id  # the stopping token is emitted, with a frame
    for i, event in enumerate(tokens):
        assert event.index == i
        assert event.attention is not None
        frame = event.attention.values
        assert frame.shape == (info.num_layers, info.num_attention_heads, len(ids) + i)
        assert frame.dtype == np.float32
        np.testing.assert_allclose(frame.sum(axis=-1), 1.0, atol=1e-3)


async def test_columns_are_input_ids_then_generated_tokens(mock_server: MockKoboldServer,
                                                           client: KoboldClient) -> None:
    """The mock's attention to a column depends on the token there: recompute and compare."""
    ids = await _prompt(client)
    tokens, _ = await _collect(client, ids, return_attention=True, temperature=0, max_length=12)
    affinity = mock_server.mock._affinity
    last = tokens[-1]
    assert last.attention is not None
    columns = ids + [t.token_id for t in tokens[:-1]]
    frame = last.attention.values
    # away from the sink (column 0) and the recent window, weight ∝ affinity of the column's token
    middle = slice(1, len(columns) - 4)
    expected = affinity[:, :, np.asarray(columns)][:, :, middle]
    ratio = frame[:, :, middle] / expected
    np.testing.assert_allclose(ratio, ratio[:, :, :1].repeat(ratio.shape[2], axis=2), rtol=1e-4)


async def test_float16_frames(client: KoboldClient) -> None:
    ids = await _prompt(client)
    tokens, _ = await _collect(client, ids, return_attention=True, attention_dtype="float16",
                               max_length=5)
    assert len(tokens) == 5
    for event in tokens:
        assert event.attention is not None
        assert event.attention.values.dtype == np.float16
        np.testing.assert_allclose(event.attention.values.astype(np.float32).sum(-1), 1, atol=1e-2)


async def test_length_limit_and_no_attention(client: KoboldClient) -> None:
    ids = await _prompt(client)
    tokens, done = await _collect(client, ids, max_length=3, temperature=0)
    assert done.finish_reason == "length"
    assert [t.index for t in tokens] == [0, 1, 2]
    assert all(t.attention is None for t in tokens)


async def test_stop_token_ends_generation_and_is_emitted(client: KoboldClient) -> None:
    ids = await _prompt(client)
    full, _ = await _collect(client, ids, temperature=0, max_length=50)
    stop = full[3].token_id
    tokens, done = await _collect(client, ids, temperature=0, max_length=50, stop_token_ids=[stop])
    assert done.finish_reason == "stop_token"
    assert tokens[-1].token_id == stop
    assert len(tokens) == 1 + next(i for i, t in enumerate(full) if t.token_id == stop)


async def test_banned_tokens_are_never_generated(client: KoboldClient) -> None:
    ids = await _prompt(client)
    full, _ = await _collect(client, ids, temperature=0, max_length=10)
    banned = {t.token_id for t in full[:4]}
    tokens, _ = await _collect(client, ids, temperature=0, max_length=10, banned_token_ids=sorted(banned))
    assert banned.isdisjoint(t.token_id for t in tokens)


async def test_pieces_are_exact_bytes(client: KoboldClient) -> None:
    for text in ["héllo wörld", "emoji 😀👍🏽 and CJK 世界你好", "tab\tnew\nline", "<|im_end|> literal"]:
        result = await client.tokenize(text, add_special_tokens=False)
        joined = b"".join(t.piece for t in result.tokens)
        assert joined == text.encode("utf-8")
        assert await client.detokenize(result.token_ids) == text
    # a multi-byte character falls into byte tokens: pieces that are half a character
    split = await client.tokenize("😀", add_special_tokens=False)
    assert len(split.tokens) == 4 and all(len(t.piece) == 1 for t in split.tokens)


async def test_special_tokens_are_parsed_only_when_asked(client: KoboldClient) -> None:
    special = await client.tokenize("<|im_start|>", add_special_tokens=True)
    literal = await client.tokenize("<|im_start|>", add_special_tokens=False)
    assert special.token_ids == [tok.IM_START_ID]
    assert tok.IM_START_ID not in literal.token_ids


async def test_seeded_sampling_is_reproducible(client: KoboldClient) -> None:
    ids = await _prompt(client)
    a, _ = await _collect(client, ids, temperature=1.5, top_k=0, top_p=1.0, sampler_seed=42, max_length=20)
    b, _ = await _collect(client, ids, temperature=1.5, top_k=0, top_p=1.0, sampler_seed=42, max_length=20)
    assert [t.token_id for t in a] == [t.token_id for t in b]


async def test_leaving_early_closes_the_socket_and_stops_the_server(mock_server: MockKoboldServer,
                                                                   client: KoboldClient) -> None:
    mock_server.faults.token_delay_s = 0.02  # a model slow enough that the stop is observable
    ids = await _prompt(client)
    async with client.generate_stream(ids, max_length=200, temperature=0, return_attention=True) as stream:
        async for event in stream:
            if isinstance(event, TokenEvent) and event.index == 2:
                break
    # the server notices within a token or two and is free for the next request
    mock_server.faults.token_delay_s = 0.0
    _, done = await _collect(client, ids, max_length=3, temperature=0)
    assert done.finish_reason == "length"
    assert mock_server.stats.generations == 2
    assert mock_server.stats.tokens_after_disconnect <= 2


async def test_cancelling_the_task_closes_the_socket(mock_server: MockKoboldServer,
                                                    client: KoboldClient) -> None:
    mock_server.faults.token_delay_s = 0.05
    ids = await _prompt(client)
    two_seen = asyncio.Event()

    async def consume() -> None:
        async with client.generate_stream(ids, max_length=200) as stream:
            async for event in stream:
                if isinstance(event, TokenEvent) and event.index == 1:
                    two_seen.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(two_seen.wait(), 10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    mock_server.faults.token_delay_s = 0.0
    _, done = await _collect(client, ids, max_length=2)  # not BUSY: the server let go
    assert done.token_count == 2
    assert mock_server.stats.tokens_after_disconnect <= 2


async def test_abort_message_ends_with_done_aborted(mock_server: MockKoboldServer,
                                                   client: KoboldClient) -> None:
    """The contract's optional {"type": "abort"}: the stream ends cleanly, with `done`."""
    import websockets

    mock_server.faults.token_delay_s = 0.02
    ids = await _prompt(client)
    async with websockets.connect(f"ws://127.0.0.1:{mock_server.port}/api/v1/generate/stream") as ws:
        await ws.send(json.dumps({"input_ids": ids, "max_length": 200}))
        await ws.recv()
        await ws.send('{"type": "abort"}')
        messages = [m async for m in ws]
    assert '"finish_reason":"aborted"' in messages[-1]
