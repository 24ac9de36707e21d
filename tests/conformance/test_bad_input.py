"""Bad input on the stream: each gets its spec'd error, and the server keeps serving."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
import websockets

from halo_client.errors import ServerError, Unauthorized
from halo_client.messages import ErrorResponse
from tests import raw_ws
from tests.conformance.conftest import Target
from tests.conformance.helpers import (
    client,
    error_of,
    prompt_ids,
    raw_exchange,
    still_serving,
    ws_exchange,
    ws_url,
)

MAX_CLIENT_MESSAGE = 4 * 1024 * 1024

CASES = [
    ("malformed JSON", "{not json", "INVALID_REQUEST"),
    ("not an object", "[1, 2, 3]", "INVALID_REQUEST"),
    ("missing input_ids", json.dumps({"max_length": 4}), "INVALID_REQUEST"),
    ("empty input_ids", json.dumps({"input_ids": []}), "INVALID_REQUEST"),
    ("input_ids mistyped", json.dumps({"input_ids": "1 2 3"}), "INVALID_REQUEST"),
    ("max_length mistyped", json.dumps({"input_ids": [1], "max_length": "4"}), "INVALID_REQUEST"),
    ("negative max_length", json.dumps({"input_ids": [1], "max_length": -4}), "INVALID_REQUEST"),
    ("zero max_length", json.dumps({"input_ids": [1], "max_length": 0}), "INVALID_REQUEST"),
    ("huge max_length", json.dumps({"input_ids": [1], "max_length": 10**9}), "CONTEXT_OVERFLOW"),
    ("unknown field", json.dumps({"input_ids": [1], "max_lenght": 4}), "INVALID_REQUEST"),
    ("bad dtype", json.dumps({"input_ids": [1], "attention_dtype": "int8"}), "INVALID_REQUEST"),
    ("bad top_p", json.dumps({"input_ids": [1], "top_p": 1.5}), "INVALID_REQUEST"),
    ("negative temperature", json.dumps({"input_ids": [1], "temperature": -1}), "INVALID_REQUEST"),
    ("token past 2**31", json.dumps({"input_ids": [1, 2**31]}), "INVALID_TOKEN"),
    ("token past the vocabulary", json.dumps({"input_ids": [1, 2**30]}), "INVALID_TOKEN"),
    ("negative token", json.dumps({"input_ids": [1, -1]}), "INVALID_TOKEN"),
    ("bad stop token", json.dumps({"input_ids": [1], "stop_token_ids": [2**30]}), "INVALID_TOKEN"),
]


@pytest.mark.parametrize(("what", "message", "code"), CASES, ids=[c[0] for c in CASES])
async def test_bad_request(target: Target, what: str, message: str, code: str) -> None:
    received, close_code = await ws_exchange(target, message)
    assert error_of(received)["code"] == code, what
    assert close_code == 1000
    await still_serving(target)


async def test_context_overflow(target: Target) -> None:
    async with client(target) as c:
        info = await c.model_info()
    ids = (await prompt_ids(target, "Hello"))[:1] * info.max_context_length
    received, _ = await ws_exchange(target, json.dumps({"input_ids": ids, "max_length": 1}))
    assert error_of(received)["code"] == "CONTEXT_OVERFLOW"
    received, _ = await ws_exchange(target, json.dumps({"input_ids": ids[:-8], "max_length": 9}))
    assert error_of(received)["code"] == "CONTEXT_OVERFLOW"
    await still_serving(target)


async def test_binary_message_from_the_client_is_refused(target: Target) -> None:
    received, close_code = await ws_exchange(target, b"\x00\x01\x02")
    assert close_code == 1003 or (received and error_of(received)["code"] == "INVALID_REQUEST")
    await still_serving(target)


async def test_oversized_message_is_refused_with_1009(target: Target) -> None:
    frames = await asyncio.to_thread(
        raw_exchange, target, raw_ws.frame(0x1, b"[" * 4096, claimed_length=MAX_CLIENT_MESSAGE + 1))
    assert raw_ws.close_code(frames) == 1009
    await still_serving(target)


async def test_unmasked_client_frame_is_refused_with_1002(target: Target) -> None:
    unmasked = raw_ws.frame(0x1, b'{"input_ids": [1]}', masked=False)
    frames = await asyncio.to_thread(raw_exchange, target, unmasked)
    assert raw_ws.close_code(frames) == 1002
    await still_serving(target)


async def test_fragmented_request_ping_and_close_handshake(target: Target) -> None:
    ids = await prompt_ids(target, "Hello")
    message = json.dumps({"input_ids": ids, "max_length": 2}).encode()
    frames = await asyncio.to_thread(
        raw_exchange, target,
        raw_ws.frame(0x1, message[:3], fin=False),
        raw_ws.frame(0x9, b"ping between fragments"),
        raw_ws.frame(0x0, message[3:]),
    )
    assert (0xA, b"ping between fragments") in frames
    texts = [json.loads(p) for op, p in frames if op == 0x1]
    assert texts[-1]["type"] == "done"
    assert raw_ws.close_code(frames) == 1000


async def test_password(target: Target) -> None:
    if not target.password:
        pytest.skip("the server has no password: start it with --password and pass --server-password")
    messages = {}
    async with httpx.AsyncClient(base_url=target.url) as http:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {target.password}"}):
            for method, path, body in (("GET", "/api/v1/model/info", None),
                                       ("POST", "/api/v1/tokenize", {"text": "x"}),
                                       ("POST", "/api/v1/detokenize", {"token_ids": [1]})):
                response = await http.request(method, path, json=body, headers=headers)
                assert response.status_code == 401
                error = ErrorResponse.model_validate(response.json()).error
                assert error.code == "UNAUTHORIZED"
                messages[bool(headers)] = error.message
    assert messages[False] != messages[True]  # a missing password is told apart from a wrong one
    with pytest.raises(websockets.InvalidStatus) as refused:
        async with websockets.connect(ws_url(target)):
            pass
    assert refused.value.response.status_code == 401
    async with client(target, password="wrong") as c:
        with pytest.raises(Unauthorized):
            await c.tokenize("x")
    await still_serving(target)


async def test_foreign_origin_is_refused(target: Target) -> None:
    headers = {"Authorization": f"Bearer {target.password}"} if target.password else {}
    with pytest.raises(websockets.InvalidStatus) as refused:
        async with websockets.connect(ws_url(target), additional_headers=headers,
                                      origin="https://evil.example"):  # type: ignore[arg-type]
            pass
    assert refused.value.response.status_code == 403
    assert json.loads(refused.value.response.body)["error"]["code"] == "ORIGIN_NOT_ALLOWED"
    host = target.url.split("://", 1)[1]
    origins = [f"http://{host}"] + ([target.allowed_origin] if target.allowed_origin else [])
    ids = await prompt_ids(target, "Hello")
    for origin in origins:
        async with websockets.connect(ws_url(target), additional_headers=headers,
                                      origin=origin) as ws:  # type: ignore[arg-type]
            await ws.send(json.dumps({"input_ids": ids, "max_length": 1}))
            assert json.loads([m async for m in ws][-1])["type"] == "done"
    async with client(target, origin="https://evil.example") as c:
        with pytest.raises(ServerError) as err:
            async for _ in c.generate_stream(ids):
                pass
        assert err.value.code == "ORIGIN_NOT_ALLOWED"
