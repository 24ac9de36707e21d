"""Faults: a client that leaves, a second client, a slow client."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import pytest

from halo_client.client import DoneEvent, TokenEvent
from halo_client.errors import ServerBusy
from tests.conformance.conftest import Target
from tests.conformance.helpers import auth_headers, client, collect, prompt_ids, still_serving


async def _eos(target: Target) -> list[int]:
    async with client(target) as c:
        info = await c.model_info()
    return [t for t in (info.eos_token_id, info.eot_token_id) if t is not None]


#: tokens a server may generate past the three the client read before leaving: what it had already
#: sent or queued while the client's close travelled (a few, at SmolLM2's speed), and the contract's
#: "a token or two" once it notices (A2). A server that ignores the disconnect makes all 400.
RUN_AHEAD_TOKENS = 12


async def _kobold_perf(target: Target) -> dict[str, Any]:
    """KoboldCPP's own counters (GET /api/extra/perf): total_gens, last_token_count, ..."""
    async with httpx.AsyncClient(base_url=target.url, headers=auth_headers(target)) as http:
        return dict((await http.get("/api/extra/perf")).json())


async def test_disconnect_stops_generation_promptly(target: Target, request: pytest.FixtureRequest) -> None:
    """Leave after 3 tokens of a 400-token generation: the server stops (judged by what it did)."""
    ids = await prompt_ids(target)
    eos = await _eos(target)
    kobold = bool(request.config.getoption("--kobold-host-api")) and target.server is None
    gens_before = (await _kobold_perf(target))["total_gens"] if kobold else 0
    _, timing = await collect(target, ids, max_length=8, temperature=0, banned_token_ids=eos)
    async with client(target) as c, c.generate_stream(ids, max_length=400, temperature=0,
                                                      banned_token_ids=eos) as stream:
        async for event in stream:
            if isinstance(event, TokenEvent) and event.index == 2:
                break
    left = time.perf_counter()
    if kobold:
        # the aborted generation's own count, read once it has ended (before the next one starts)
        perf = await _kobold_perf(target)
        while perf["total_gens"] < gens_before + 2:
            assert time.perf_counter() - left < 60, "the aborted generation did not end within 60 s"
            await asyncio.sleep(0.01)
            perf = await _kobold_perf(target)
        generated = int(perf["last_token_count"])
        print(f"[{target.name}] the server generated {generated} of 400 tokens; the client read 3")
        assert generated <= 3 + RUN_AHEAD_TOKENS
    while True:
        try:
            await collect(target, ids, max_length=1)
            break
        except ServerBusy:
            await asyncio.sleep(0.005)
    waited = time.perf_counter() - left
    print(f"[{target.name}] after the disconnect the server was free in {waited * 1000:.0f} ms")
    if target.server is not None:
        assert target.server.stats.tokens_after_disconnect <= 2
    elif not kobold:
        # A server that tells nothing of its work can only be judged by time: against the slower
        # of two measurements of its speed, before and after, and a bound far from both the
        # tokens it may legitimately finish and the 400 it would make without aborting.
        _, timing_after = await collect(target, ids, max_length=8, temperature=0, banned_token_ids=eos)
        per_token_s = max(t.timings.generation_ms / 1000 / max(t.token_count, 1) for t in (timing, timing_after))
        assert waited < max(100 * per_token_s, 0.5), f"{waited:.2f} s is ~{waited / per_token_s:.0f} tokens' time"


async def test_second_concurrent_generation_is_busy(target: Target) -> None:
    ids = await prompt_ids(target)
    eos = await _eos(target)
    async with client(target) as c:
        info = await c.model_info()
    # As long as the context allows, with every frame: backpressure holds the generation while this
    # client reads nothing, so it is still running when the second request comes (400 tokens without
    # frames, 40 KB, the mock could finish before it came, and the slot was rightly free then).
    async with client(target) as c, c.generate_stream(ids, max_length=info.max_context_length - len(ids),
                                                      temperature=0, banned_token_ids=eos,
                                                      return_attention=True) as stream:
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
