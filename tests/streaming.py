"""Reading a whole generation stream in tests: its token events and its `done`."""

from __future__ import annotations

from typing import Any

from halo_client.client import DoneEvent, KoboldClient, TokenEvent


async def collect_stream(client: KoboldClient, ids: list[int], **params: Any) -> tuple[list[TokenEvent], DoneEvent]:
    async with client.generate_stream(ids, **params) as stream:
        tokens: list[TokenEvent] = []
        async for event in stream:
            if isinstance(event, DoneEvent):
                return tokens, event
            tokens.append(event)
    raise AssertionError("the stream ended without done")
