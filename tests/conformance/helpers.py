"""What the conformance tests share: a client for the target and a few stream helpers."""

from __future__ import annotations

import asyncio
import json
from typing import Any
from urllib.parse import urlsplit

import websockets
from websockets.typing import Origin

from halo_client.client import DoneEvent, KoboldClient, TokenEvent
from tests import raw_ws
from tests.conformance.conftest import Target
from tests.streaming import collect_stream

TEXT = ("The lighthouse keeper, Marta Okafor, counted 37 ships in March. She wrote every name "
        "in a blue notebook. 😀 Later, in 世界 terms, it was a quiet year. What did she count?")


def client(target: Target, *, password: str | None = None, origin: str | None = None) -> KoboldClient:
    return KoboldClient(target.url, password=password or target.password, timeout=120, origin=origin)


def auth_headers(target: Target) -> dict[str, str]:
    return {"Authorization": f"Bearer {target.password}"} if target.password else {}


async def prompt_ids(target: Target, text: str = TEXT) -> list[int]:
    async with client(target) as c:
        return (await c.tokenize(text)).token_ids


async def collect(target: Target, ids: list[int], **params: Any) -> tuple[list[TokenEvent], DoneEvent]:
    async with client(target) as c:
        return await collect_stream(c, ids, **params)


def ws_url(target: Target) -> str:
    return "ws://" + target.url.split("://", 1)[1] + "/api/v1/generate/stream"


async def ws_exchange(
    target: Target, message: str | bytes, *, origin: str | None = None
) -> tuple[list[str | bytes], int | None]:
    """Send one message as an independent client (the websockets library), read until closed."""
    headers = auth_headers(target)
    async with websockets.connect(ws_url(target), additional_headers=headers, max_size=None,
                                  origin=Origin(origin) if origin else None) as ws:
        await ws.send(message)
        received: list[str | bytes] = []
        try:
            async for m in ws:
                received.append(m)
        except websockets.ConnectionClosedError:
            pass
        return received, ws.close_code


def raw_exchange(target: Target, *frames: bytes) -> list[tuple[int, bytes]]:
    parts = urlsplit(target.url)
    headers = "".join(f"{k}: {v}\r\n" for k, v in auth_headers(target).items())
    with raw_ws.open_stream(parts.port or 80, headers=headers, host=parts.hostname or "127.0.0.1") as sock:
        try:
            for f in frames:
                sock.sendall(f)
        except (BrokenPipeError, ConnectionResetError):
            pass
        return raw_ws.read_frames(sock)


async def still_serving(target: Target) -> None:
    """The server answers a normal generation after whatever the test did to it."""
    ids = await prompt_ids(target, "Hello")
    for _ in range(50):  # a generation that is stopping may hold the model for a moment
        try:
            tokens, done = await collect(target, ids, max_length=2)
        except Exception as exc:
            if "BUSY" not in str(exc):
                raise
            await asyncio.sleep(0.1)
            continue
        assert done.token_count == len(tokens) >= 1
        return
    raise AssertionError("server stayed BUSY")


def error_of(messages: list[str | bytes]) -> dict[str, str]:
    assert messages, "the server sent nothing before closing"
    last = messages[-1]
    assert isinstance(last, str)
    body = json.loads(last)
    assert body["type"] == "error", body
    assert set(body) == {"type", "code", "message"} and body["message"]
    return body  # type: ignore[no-any-return]
