"""Bad input, security and faults against the mock server, over real sockets.

Every bad request gets the contract's error and the server keeps serving.
"""

from __future__ import annotations

import asyncio
import json
import socket
import struct
from collections.abc import AsyncIterator

import httpx
import pytest
import websockets

from halo_client.client import DoneEvent, KoboldClient, TokenEvent
from halo_client.errors import (
    FrameError,
    ProtocolError,
    RequestTimeout,
    ServerBusy,
    ServerError,
    ServerUnreachable,
    Unauthorized,
)
from halo_client.serving.server import MAX_CLIENT_MESSAGE
from halo_client.testing import FaultPlan, MockBackend, MockKoboldServer
from tests import raw_ws

PROMPT_IDS = [1, 4, 5, 6, 20, 30]


def ws_url(server: MockKoboldServer) -> str:
    return f"ws://127.0.0.1:{server.port}/api/v1/generate/stream"


async def ws_exchange(
    server: MockKoboldServer, message: str | bytes, **kw: object
) -> tuple[list[str | bytes], int | None]:
    async with websockets.connect(ws_url(server), **kw) as ws:  # type: ignore[arg-type]
        await ws.send(message)
        received: list[str | bytes] = []
        try:
            async for m in ws:
                received.append(m)
        except websockets.ConnectionClosedError:
            pass  # a close code other than 1000: the caller checks which
        return received, ws.close_code


async def assert_still_serving(server: MockKoboldServer) -> None:
    async with KoboldClient(server.url, timeout=10) as c:
        events = [e async for e in c.generate_stream(PROMPT_IDS, max_length=2)]
    assert isinstance(events[-1], DoneEvent)


@pytest.mark.parametrize(
    ("message", "code"),
    [
        ("{not json", "INVALID_REQUEST"),
        ("[]", "INVALID_REQUEST"),
        ("{}", "INVALID_REQUEST"),
        (json.dumps({"input_ids": []}), "INVALID_REQUEST"),
        (json.dumps({"input_ids": "1 2 3"}), "INVALID_REQUEST"),
        (json.dumps({"input_ids": [1, 2], "max_length": "10"}), "INVALID_REQUEST"),
        (json.dumps({"input_ids": [1, 2], "max_length": -1}), "INVALID_REQUEST"),
        (json.dumps({"input_ids": [1, 2], "max_length": 10**9}), "CONTEXT_OVERFLOW"),
        (json.dumps({"input_ids": [1] * 4000, "max_length": 200}), "CONTEXT_OVERFLOW"),
        (json.dumps({"input_ids": [1, 2], "temperature": -1}), "INVALID_REQUEST"),
        (json.dumps({"input_ids": [1, 2], "attention_dtype": "int8"}), "INVALID_REQUEST"),
        (json.dumps({"input_ids": [1, 2], "max_lenght": 5}), "INVALID_REQUEST"),
        (json.dumps({"input_ids": [1, 99999]}), "INVALID_TOKEN"),
        (json.dumps({"input_ids": [1, -5]}), "INVALID_TOKEN"),
        (json.dumps({"input_ids": [1, 2], "stop_token_ids": [10**6]}), "INVALID_TOKEN"),
    ],
)
async def test_bad_requests_get_their_error_and_the_server_goes_on(
    mock_server: MockKoboldServer, message: str, code: str
) -> None:
    received, close_code = await ws_exchange(mock_server, message)
    assert len(received) == 1
    error = json.loads(received[0])
    assert error["type"] == "error" and error["code"] == code and error["message"]
    assert close_code == 1000
    await assert_still_serving(mock_server)


async def test_binary_message_from_client_is_refused_with_1003(mock_server: MockKoboldServer) -> None:
    received, close_code = await ws_exchange(mock_server, b"\x00\x01")
    assert received == [] and close_code == 1003
    await assert_still_serving(mock_server)


def raw_exchange(port: int, *frames: bytes) -> list[tuple[int, bytes]]:
    """Send raw frames (from a thread: the server shares this event loop), read until closed."""
    with raw_ws.open_stream(port) as sock:
        try:
            for f in frames:
                sock.sendall(f)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server may close before all of an oversized message was sent
        return raw_ws.read_frames(sock)


async def test_oversized_message_is_refused_with_1009(mock_server: MockKoboldServer) -> None:
    # the header announces more than the limit: the server must refuse before reading it
    frames = await asyncio.to_thread(
        raw_exchange, mock_server.port,
        raw_ws.frame(0x1, b"{" * 1024, claimed_length=MAX_CLIENT_MESSAGE + 1))
    assert raw_ws.close_code(frames) == 1009
    await assert_still_serving(mock_server)


async def test_oversized_fragmented_message_is_refused_with_1009(mock_server: MockKoboldServer) -> None:
    piece = b"[" * (1024 * 1024)
    frames = await asyncio.to_thread(
        raw_exchange, mock_server.port, raw_ws.frame(0x1, piece, fin=False),
        *[raw_ws.frame(0x0, piece, fin=False) for _ in range(4)])
    assert raw_ws.close_code(frames) == 1009
    await assert_still_serving(mock_server)


async def test_unmasked_client_frame_is_a_protocol_error_1002(mock_server: MockKoboldServer) -> None:
    frames = await asyncio.to_thread(
        raw_exchange, mock_server.port, raw_ws.frame(0x1, b'{"input_ids": [1]}', masked=False))
    assert raw_ws.close_code(frames) == 1002
    await assert_still_serving(mock_server)


async def test_ping_is_answered_and_close_handshake_is_clean(mock_server: MockKoboldServer) -> None:
    frames = await asyncio.to_thread(
        raw_exchange, mock_server.port, raw_ws.frame(0x9, b"are you there"),
        raw_ws.frame(0x8, struct.pack("!H", 1000) + b"bye"))
    assert (0xA, b"are you there") in frames
    assert raw_ws.close_code(frames) == 1000


async def test_abrupt_disconnect_before_the_request_is_harmless(mock_server: MockKoboldServer) -> None:
    def connect_and_vanish() -> None:
        sock = raw_ws.open_stream(mock_server.port)
        sock.sendall(raw_ws.frame(0x1, b'{"input_ids": [1', fin=False))
        sock.close()

    await asyncio.to_thread(connect_and_vanish)
    await assert_still_serving(mock_server)


async def test_fragmented_request_is_reassembled(mock_server: MockKoboldServer) -> None:
    message = json.dumps({"input_ids": PROMPT_IDS, "max_length": 2})
    async with websockets.connect(ws_url(mock_server)) as ws:
        await ws.send(iter([message[:5], message[5:17], message[17:]]))
        received = [m async for m in ws]
    assert json.loads(received[-1])["type"] == "done"


async def test_attention_unavailable_is_reported() -> None:
    async with (MockKoboldServer(backend=MockBackend(attention_available=False)) as server,
                KoboldClient(server.url, timeout=10) as c):
            info = await c.model_info()
            assert not info.attention.available and info.attention.reason
            with pytest.raises(ServerError) as err:
                async for _ in c.generate_stream(PROMPT_IDS, return_attention=True):
                    pass
            assert err.value.code == "ATTENTION_UNAVAILABLE"


# ----------------------------------------------------------------------------- REST


@pytest.fixture
async def http(mock_server: MockKoboldServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=mock_server.url) as h:
        yield h


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "code"),
    [
        ("POST", "/api/v1/tokenize", b"{oops", 400, "INVALID_REQUEST"),
        ("POST", "/api/v1/tokenize", b'{"text": 5}', 400, "INVALID_REQUEST"),
        ("POST", "/api/v1/tokenize", b'{"text": "a", "extra": 1}', 400, "INVALID_REQUEST"),
        ("POST", "/api/v1/detokenize", b'{"token_ids": [1, 100000]}', 400, "INVALID_TOKEN"),
        ("POST", "/api/v1/detokenize", b'{"token_ids": [-1]}', 400, "INVALID_TOKEN"),
        ("GET", "/api/v1/tokenize", b"", 400, "INVALID_REQUEST"),
        ("GET", "/api/v1/nothing", b"", 404, "NOT_FOUND"),
        ("POST", "/api/v1/tokenize", b'{"text": "' + b"a" * (5 * 1024 * 1024) + b'"}', 413,
         "PAYLOAD_TOO_LARGE"),
    ],
)
async def test_rest_errors_use_the_one_error_body(http: httpx.AsyncClient, method: str, path: str,
                                                  body: bytes, status: int, code: str) -> None:
    response = await http.request(method, path, content=body)
    assert response.status_code == status
    assert response.json()["error"]["code"] == code
    assert (await http.get("/api/v1/model/info")).status_code == 200


# ------------------------------------------------------------------------- security


async def test_password_protects_rest_and_stream() -> None:
    async with MockKoboldServer(password="s3cret") as server:
        async with KoboldClient(server.url, timeout=10) as anonymous:
            with pytest.raises(Unauthorized, match="--password"):
                await anonymous.model_info()
        async with KoboldClient(server.url, password="wrong", timeout=10) as wrong:
            with pytest.raises(Unauthorized):
                await wrong.tokenize("x")
        with pytest.raises(websockets.InvalidStatus) as refused:
            async with websockets.connect(ws_url(server)):
                pass
        assert refused.value.response.status_code == 401
        async with KoboldClient(server.url, password="s3cret", timeout=10) as good:
            events = [e async for e in good.generate_stream(PROMPT_IDS, max_length=2)]
            assert isinstance(events[-1], DoneEvent)


async def test_foreign_origin_cannot_open_a_stream() -> None:
    async with MockKoboldServer(allowed_origins=("https://my-ui.example",)) as server:
        with pytest.raises(websockets.InvalidStatus) as refused:
            async with websockets.connect(ws_url(server), origin="https://evil.example"):  # type: ignore[arg-type]
                pass
        assert refused.value.response.status_code == 403
        assert json.loads(refused.value.response.body)["error"]["code"] == "ORIGIN_NOT_ALLOWED"
        for origin in (f"http://127.0.0.1:{server.port}", "https://my-ui.example"):
            async with websockets.connect(ws_url(server), origin=origin) as ws:  # type: ignore[arg-type]
                await ws.send(json.dumps({"input_ids": PROMPT_IDS, "max_length": 1}))
                assert json.loads([m async for m in ws][-1])["type"] == "done"
        async with KoboldClient(server.url, origin="https://evil.example", timeout=10) as c:
            with pytest.raises(ServerError) as err:
                async for _ in c.generate_stream(PROMPT_IDS):
                    pass
            assert err.value.code == "ORIGIN_NOT_ALLOWED"


# ---------------------------------------------------------------------------- faults


async def _drain(client: KoboldClient, **params: object) -> list[TokenEvent | DoneEvent]:
    return [e async for e in client.generate_stream(PROMPT_IDS, **params)]


async def test_dropped_connection_mid_stream_is_a_protocol_error(mock_server: MockKoboldServer,
                                                                 client: KoboldClient) -> None:
    mock_server.faults = FaultPlan(drop_before_token=3)
    with pytest.raises(ProtocolError, match="closed the stream before `done`"):
        await _drain(client, max_length=10, return_attention=True)
    mock_server.faults = FaultPlan()
    assert isinstance((await _drain(client, max_length=2))[-1], DoneEvent)


@pytest.mark.parametrize("fault", [FaultPlan(corrupt_frame_at=2), FaultPlan(truncate_frame_at=1)])
async def test_damaged_frames_are_refused(mock_server: MockKoboldServer, client: KoboldClient,
                                         fault: FaultPlan) -> None:
    mock_server.faults = fault
    with pytest.raises(FrameError):
        await _drain(client, max_length=10, return_attention=True)


async def test_error_event_mid_stream_raises_server_error(mock_server: MockKoboldServer,
                                                         client: KoboldClient) -> None:
    mock_server.faults = FaultPlan(error_at=2, error_code="INTERNAL")
    with pytest.raises(ServerError) as err:
        await _drain(client, max_length=10)
    assert err.value.code == "INTERNAL" and "injected" in str(err.value)


async def test_busy_server(mock_server: MockKoboldServer, client: KoboldClient) -> None:
    mock_server.faults = FaultPlan(always_busy=True)
    with pytest.raises(ServerBusy):
        await _drain(client, max_length=2)


async def test_second_concurrent_generation_gets_busy(mock_server: MockKoboldServer,
                                                      client: KoboldClient) -> None:
    mock_server.faults = FaultPlan(token_delay_s=0.05)
    async with client.generate_stream(PROMPT_IDS, max_length=50) as first:
        await first.__anext__()
        with pytest.raises(ServerBusy):
            await _drain(client, max_length=2)


async def test_slow_server_times_out(mock_server: MockKoboldServer) -> None:
    mock_server.faults = FaultPlan(token_delay_s=1.0, response_delay_s=1.0)
    async with KoboldClient(mock_server.url, timeout=0.3) as c:
        with pytest.raises(RequestTimeout, match=r"0\.3 s"):
            await c.model_info()
    async with KoboldClient(mock_server.url, timeout=0.3) as c:
        c._model_info = mock_server.info()
        with pytest.raises(RequestTimeout):
            await _drain(c, max_length=5)


async def test_slow_consumer_does_not_grow_server_memory(mock_server: MockKoboldServer,
                                                        client: KoboldClient) -> None:
    """Backpressure: the server computes a token only when the last one was written out."""
    mock_server.mock = MockBackend(num_layers=8, num_heads=8, max_context_length=4096)
    mock_server.backend = mock_server.mock
    mock_server._info = None
    frame_bytes = 8 * 8 * 4096 * 4
    async with (KoboldClient(mock_server.url, timeout=10) as c,
                c.generate_stream([1] * 3000, max_length=60, return_attention=True) as stream):
            async for event in stream:  # noqa: B007 (the last event is checked below)
                await asyncio.sleep(0.01)  # a consumer slower than the server
    assert isinstance(event, DoneEvent)
    # a few frames in flight at most (kernel buffers aside), never the whole generation
    assert mock_server.stats.max_write_buffer < 4 * frame_bytes


async def test_unreachable_server_names_the_url() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound but not listening: connection refused
        async with KoboldClient(f"http://127.0.0.1:{port}", timeout=5) as c:
            with pytest.raises(ServerUnreachable, match=rf"127\.0\.0\.1:{port}.*halo-client serve"):
                await c.model_info()
