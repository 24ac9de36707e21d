"""The project's server as only the mock can show it, over real sockets: injected faults,
backpressure, timeouts, and what the conformance suite (tests/conformance, which runs every
contract rule against the mock too) cannot ask of every server."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

import httpx
import pytest

from halo_client.client import DoneEvent, KoboldClient, TokenEvent
from halo_client.errors import (
    FrameError,
    ProtocolError,
    RequestTimeout,
    ServerBusy,
    ServerError,
    ServerUnreachable,
)
from halo_client.serving.stream import StreamSession
from halo_client.testing import FaultPlan, MockBackend, MockKoboldServer
from tests import raw_ws
from tests.streaming import streams_back_to_back

PROMPT_IDS = [1, 4, 5, 6, 20, 30]


async def assert_still_serving(server: MockKoboldServer) -> None:
    async with KoboldClient(server.url, timeout=10) as c:
        events = [e async for e in c.generate_stream(PROMPT_IDS, max_length=2)]
    assert isinstance(events[-1], DoneEvent)


def raw_exchange(port: int, *frames: bytes) -> list[tuple[int, bytes]]:
    """Send raw frames (from a thread: the server shares this event loop), read until closed."""
    with raw_ws.open_stream(port) as sock:
        try:
            for f in frames:
                sock.sendall(f)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server may close before all of an oversized message was sent
        return raw_ws.read_frames(sock)


async def test_oversized_fragmented_message_is_refused_with_1009(mock_server: MockKoboldServer) -> None:
    piece = b"[" * (1024 * 1024)
    frames = await asyncio.to_thread(
        raw_exchange, mock_server.port, raw_ws.frame(0x1, piece, fin=False),
        *[raw_ws.frame(0x0, piece, fin=False) for _ in range(4)])
    assert raw_ws.close_code(frames) == 1009
    await assert_still_serving(mock_server)


async def test_abrupt_disconnect_before_the_request_is_harmless(mock_server: MockKoboldServer) -> None:
    def connect_and_vanish() -> None:
        sock = raw_ws.open_stream(mock_server.port)
        sock.sendall(raw_ws.frame(0x1, b'{"input_ids": [1', fin=False))
        sock.close()

    await asyncio.to_thread(connect_and_vanish)
    await assert_still_serving(mock_server)


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
        # KoboldCPP answers an unknown path with its own 404 body, so the conformance suite
        # cannot ask every server for this one
        ("GET", "/api/v1/nothing", b"", 404, "NOT_FOUND"),
    ],
)
async def test_rest_errors_use_the_one_error_body(http: httpx.AsyncClient, method: str, path: str,
                                                  body: bytes, status: int, code: str) -> None:
    response = await http.request(method, path, content=body)
    assert response.status_code == status
    assert response.json()["error"]["code"] == code
    assert (await http.get("/api/v1/model/info")).status_code == 200


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


async def test_slow_server_times_out(mock_server: MockKoboldServer) -> None:
    mock_server.faults = FaultPlan(token_delay_s=1.0, response_delay_s=1.0)
    async with KoboldClient(mock_server.url, timeout=0.3) as c:
        with pytest.raises(RequestTimeout, match=r"0\.3 s"):
            await c.model_info()
    async with KoboldClient(mock_server.url, timeout=0.3) as c:
        c._model_info = mock_server.info()
        with pytest.raises(RequestTimeout):
            await _drain(c, max_length=5)


async def test_unreachable_server_names_the_url() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound but not listening: connection refused
        async with KoboldClient(f"http://127.0.0.1:{port}", timeout=5) as c:
            with pytest.raises(ServerUnreachable, match=rf"127\.0\.0\.1:{port}.*Start one"):
                await c.model_info()


async def test_the_slot_is_free_before_done_is_sent(mock_server: MockKoboldServer,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """BUSY means another generation is running: a stream started the moment the previous one's
    `done` arrived gets the model. The session is held up for 50 ms in the close that follows
    `done` here (as a slow socket or a busy loop may hold it): a slot still held then answers BUSY."""
    close = StreamSession.close

    async def slow_close(session: StreamSession, code: int, reason: str = "") -> None:
        await asyncio.sleep(0.05)
        await close(session, code, reason)

    monkeypatch.setattr(StreamSession, "close", slow_close)
    url = mock_server.url.replace("http://", "ws://") + "/api/v1/generate/stream"
    endings = await streams_back_to_back(url, {}, {"input_ids": PROMPT_IDS, "max_length": 2}, 20, start_next="done")
    assert endings == ["done"] * 20
