"""Faults: a client that leaves, a second client, a slow client."""

from __future__ import annotations

import asyncio
import time

import pytest

from halo_client.client import DoneEvent, TokenEvent
from halo_client.errors import ServerBusy
from tests.conformance.conftest import Target
from tests.conformance.helpers import client, collect, prompt_ids, still_serving


async def _eos(target: Target) -> list[int]:
    async with client(target) as c:
        info = await c.model_info()
    return [t for t in (info.eos_token_id, info.eot_token_id) if t is not None]


async def test_disconnect_stops_generation_promptly(target: Target) -> None:
    """Leave after 3 tokens of a long generation; the next request must not wait for it."""
    ids = await prompt_ids(target)
    eos = await _eos(target)
    _, timing = await collect(target, ids, max_length=8, temperature=0, banned_token_ids=eos)
    per_token_s = max(timing.timings.generation_ms / 1000 / max(timing.token_count, 1), 1e-4)
    async with client(target) as c, c.generate_stream(ids, max_length=400, temperature=0,
                                                      banned_token_ids=eos) as stream:
        async for event in stream:
            if isinstance(event, TokenEvent) and event.index == 2:
                break
    left = time.perf_counter()
    while True:
        try:
            await collect(target, ids, max_length=1)
            break
        except ServerBusy:
            await asyncio.sleep(0.005)
    waited = time.perf_counter() - left
    tokens_late = waited / per_token_s
    print(f"[{target.name}] after the disconnect the server was free in {waited * 1000:.0f} ms "
          f"(~{tokens_late:.1f} tokens at {1 / per_token_s:.0f} tokens/s)")
    if target.server is not None:
        assert target.server.stats.tokens_after_disconnect <= 2
    # 400 tokens were asked for: serving the next request within a few tokens' time (plus a
    # prompt) proves the abort; a server that finished the generation would take ~400
    assert waited < max(40 * per_token_s, 0.5)


async def test_second_concurrent_generation_is_busy(target: Target) -> None:
    ids = await prompt_ids(target)
    eos = await _eos(target)
    async with client(target) as c, c.generate_stream(ids, max_length=400, temperature=0,
                                                      banned_token_ids=eos) as stream:
        await stream.__anext__()
        try:
            await collect(target, ids, max_length=2)
        except ServerBusy:
            pass
        else:
            raise AssertionError("a second generation ran while the first was streaming")
    await still_serving(target)


def _rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


async def test_slow_consumer_does_not_grow_server_memory(
    target: Target, request: pytest.FixtureRequest
) -> None:
    """Backpressure: a client that reads slowly must not make the server queue its frames."""
    pid = request.config.getoption("--server-pid")
    if target.server is None and pid is None:
        pytest.skip("pass --server-pid PID of the server process to measure its memory")
    async with client(target) as c:
        info = await c.model_info()
    eos = await _eos(target)
    word = (await prompt_ids(target, " ship"))[-1:]
    ctx = info.max_context_length // 2
    frame_bytes = 4 * info.num_layers * info.num_attention_heads * ctx
    count = min(info.max_context_length - ctx - 1, max(60, (256 << 20) // frame_bytes))
    rss_before = _rss_bytes(pid) if pid else 0
    started = time.perf_counter()
    async with client(target) as c, c.generate_stream(word * ctx, max_length=count, temperature=0,
                                                      banned_token_ids=eos, return_attention=True) as stream:
        first = True
        async for event in stream:
            if first:
                await asyncio.sleep(2.0)  # stop reading while the server could make hundreds of MB
                first = False
            if isinstance(event, DoneEvent):
                done = event
    consumed = time.perf_counter() - started
    print(f"[{target.name}] slow consumer: {done.token_count} frames of {frame_bytes / 1e6:.2f} MB, "
          f"read in {consumed:.2f} s; server generated for {done.timings.generation_ms / 1000:.2f} s")
    if target.server is not None:
        assert target.server.stats.max_write_buffer <= 4 * frame_bytes + (1 << 20)
    if pid:
        grown = _rss_bytes(pid) - rss_before
        print(f"[{target.name}] server RSS grew by {grown / 1e6:.1f} MB")
        assert grown < 64 * frame_bytes + (256 << 20)
