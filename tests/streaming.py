"""Reading a whole generation stream in tests: its token events and its `done`."""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

import websockets

from halo_client.client import DoneEvent, KoboldClient, TokenEvent


async def collect_stream(client: KoboldClient, ids: list[int], **params: Any) -> tuple[list[TokenEvent], DoneEvent]:
    async with client.generate_stream(ids, **params) as stream:
        tokens: list[TokenEvent] = []
        async for event in stream:
            if isinstance(event, DoneEvent):
                return tokens, event
            tokens.append(event)
    raise AssertionError("the stream ended without done")


async def streams_back_to_back(ws_url: str, headers: dict[str, str], request: dict[str, Any], count: int,
                               *, start_next: str) -> list[str]:
    """Run `count` streams one after the other, each started the moment the previous one ended:
    `start_next="done"` as soon as its `done` (or `error`) message arrives, the previous connection
    left as it is until the next stream has ended too (the server's close frame unanswered, as by a
    client that starts its next request before it reads on); `"close"` once its connection has
    closed. Returns how each ended: "done", or the error code ("BUSY", ...)."""
    endings: list[str] = []
    closing: list[asyncio.Task[None]] = []
    previous: websockets.ClientConnection | None = None
    for _ in range(count):
        ws = await websockets.connect(ws_url, additional_headers=headers, max_size=None)
        await ws.send(json.dumps(request))
        ending = None
        async for message in ws:
            if isinstance(message, str):
                body = json.loads(message)
                if body["type"] in ("done", "error"):
                    ending = "done" if body["type"] == "done" else str(body["code"])
                    break
        if ending is None:
            raise AssertionError("a stream ended without done or error")
        endings.append(ending)
        if previous is not None:
            closing.append(asyncio.create_task(previous.close()))
            previous = None
        if start_next == "done":
            previous = ws
        else:
            with contextlib.suppress(websockets.ConnectionClosed):
                async for _message in ws:
                    pass
            await ws.wait_closed()
    if previous is not None:
        closing.append(asyncio.create_task(previous.close()))
    await asyncio.gather(*closing)
    return endings
