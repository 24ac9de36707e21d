"""The patch's koboldcpp.py side (the halo_api package, taken out of the patch) over real sockets.

KoboldCPP itself cannot be built in CI, so its ctypes backend is replaced by a toy one here;
everything else is the patch's own code running in `http.server`, as inside koboldcpp.py:
the REST endpoints and their errors, the stdlib WebSocket (RFC 6455: fragmentation, ping/pong,
the close handshake, 1002/1003/1007/1009), auth, Origin, BUSY, abort and disconnects.
"""

from __future__ import annotations

import asyncio
import base64
import json
import queue
import socket
import struct
import threading
import time
from collections.abc import Iterator
from types import ModuleType, SimpleNamespace
from typing import Any

import httpx
import numpy as np
import pytest
import websockets

from halo_client.client import DoneEvent, KoboldClient, TokenEvent
from halo_client.errors import ServerBusy, ServerError
from halo_client.frame import encode_frame, reduce_attention
from halo_client.messages import ModelInfo, TokenizeResponse
from tests import raw_http, raw_ws
from tests.kobold_patch.kobold_like import KoboldLikeServer
from tests.kobold_patch.patchfile import load_halo_api
from tests.streaming import collect_stream, streams_back_to_back

PASSWORD = "pw"
ALLOWED = "https://allowed.example"
LAYERS, HEADS = 2, 3
BOS, EOS = 256, 257


@pytest.fixture(scope="module")
def halo() -> ModuleType:
    return load_halo_api()


class FakeBackend:
    """A toy model with KoboldBackend's interface: byte tokens, uniform attention."""

    def __init__(self, halo: ModuleType) -> None:
        self.halo = halo
        self.events: queue.Queue[tuple[Any, bytes | None]] = queue.Queue(maxsize=4)
        self.aborted = threading.Event()
        self.token_delay = 0.0
        self.aborts = 0

    def model_info(self) -> dict[str, Any]:
        return {"model_name": "fake", "architecture": "llama", "vocab_size": 258, "num_layers": LAYERS,
                "num_attention_heads": HEADS, "num_key_value_heads": 1, "hidden_size": 8,
                "max_context_length": 512, "max_trained_context": 512, "bos_token_id": BOS, "eos_token_id": EOS,
                "eot_token_id": None, "rope_freq_base": 10000.0, "rope_freq_scale": 1.0, "chat_template": None,
                "attention_api_version": 1, "attention": {"available": True, "reason": None,
                                                          "dtypes": ["float32", "float16"],
                                                          "layouts": ["full", "layer_stats", "model_stats"]}}

    def tokenize(self, text: str, add_special: bool) -> list[int]:
        return ([BOS] if add_special else []) + list(text.encode())

    def pieces(self) -> list[bytes]:
        return [bytes([i]) for i in range(256)] + [b"<s>", b"</s>"]

    def start(self, req: dict[str, Any]) -> threading.Thread:
        self.aborted.clear()
        thread = threading.Thread(target=self._run, args=(req,), daemon=True)
        thread.start()
        return thread

    def _put(self, item: tuple[Any, bytes | None]) -> bool:
        while not self.aborted.is_set():
            try:
                self.events.put(item, timeout=0.01)
                return True
            except queue.Full:
                continue
        return False

    def _run(self, req: dict[str, Any]) -> None:
        ids = req["input_ids"]
        finish, count = 0, 0
        for i in range(req["max_length"]):
            if self.aborted.is_set():
                finish = 3
                break
            time.sleep(self.token_delay)
            token = 97 + (sum(ids) + i) % 26
            while token in req["banned_token_ids"]:
                token = 97 + (token - 96) % 26
            frame = None
            if req["return_attention"]:
                ctx = len(ids) + i
                # every head a different row, so that a reduction is not the identity
                full = np.stack([np.stack([np.roll(np.linspace(1, 2, ctx), h + layer) for h in range(HEADS)])
                                 for layer in range(LAYERS)])
                full /= full.sum(axis=-1, keepdims=True)
                layout = req["attention_layout"]
                frame = encode_frame(i, reduce_attention(full, layout), req["attention_dtype"], layout)
            event = SimpleNamespace(kind=1, index=i, token_id=token, frame_bytes=len(frame or b""))
            if not self._put((event, frame)):
                finish = 3
                break
            count += 1
            if token in req["stop_token_ids"]:
                finish = 2
                break
        self.events.put((SimpleNamespace(kind=2, finish_reason=finish, token_count=count, prompt_tokens=len(ids),
                                          prompt_ms=1.0, generation_ms=10.0), None))

    def next_event(self, timeout_ms: int) -> tuple[Any, memoryview | None] | None:
        try:
            event, frame = self.events.get(timeout=timeout_ms / 1000)
        except queue.Empty:
            return None
        return event, (memoryview(frame) if frame is not None else None)

    def last_error(self) -> str:
        return ""

    def abort(self) -> None:
        self.aborts += 1
        self.aborted.set()

    def generation_finished(self) -> bool:
        return self.finished

    finished = True  # KoboldCPP's has_finished(): False while one of its own generations runs


class Running:
    """halo_api behind KoboldCPP v1.76's own server structure (kobold_like.py): 24 threads,
    one reused handler object each, HTTP/1.0, KoboldCPP's answers next to the Halo Weave ones."""

    def __init__(self, halo: ModuleType) -> None:
        self.backend = FakeBackend(halo)
        self.kcpp = SimpleNamespace(password=PASSWORD, args=SimpleNamespace(allowed_origin=[ALLOWED], allowed_host=[],
                                                                            host=""),
                                    modelbusy=threading.Lock(), maxctx=512, friendlymodelname="koboldcpp/fake")
        self.kobold = KoboldLikeServer(halo, self.kcpp, self.backend)
        self.port = self.kobold.port
        self.url = self.kobold.url

    def client(self, **kw: Any) -> KoboldClient:
        kw.setdefault("password", PASSWORD)
        return KoboldClient(self.url, timeout=10, **kw)


@pytest.fixture
def srv(halo: ModuleType) -> Iterator[Running]:
    running = Running(halo)
    yield running
    running.kobold.close()


AUTH = {"Authorization": f"Bearer {PASSWORD}"}


# ------------------------------------------------------------------------------------ REST

async def test_rest_endpoints(srv: Running) -> None:
    async with httpx.AsyncClient(base_url=srv.url, headers=AUTH) as http:
        info = ModelInfo.model_validate((await http.get("/api/v1/model/info")).json())
        assert info.num_layers == LAYERS and info.attention.available
        r = TokenizeResponse.model_validate((await http.post("/api/v1/tokenize", json={"text": "hé"})).json())
        assert r.token_ids == [BOS, 104, 0xC3, 0xA9]
        assert b"".join(t.piece for t in r.tokens[1:]) == "hé".encode()
        text = (await http.post("/api/v1/detokenize", json={"token_ids": [104, 0xC3]})).json()["text"]
        assert text == "h\ufffd"


@pytest.mark.parametrize(("path", "body", "status", "code"), [
    ("/api/v1/tokenize", b"{not json", 400, "INVALID_REQUEST"),
    ("/api/v1/tokenize", b'{"text": 42}', 400, "INVALID_REQUEST"),
    ("/api/v1/tokenize", b'{"text": "x", "add_special_tokens": 1}', 400, "INVALID_REQUEST"),
    ("/api/v1/tokenize", b'{"text": "x", "extra": 1}', 400, "INVALID_REQUEST"),
    ("/api/v1/detokenize", b'{"token_ids": [-3]}', 400, "INVALID_TOKEN"),
    ("/api/v1/detokenize", b'{"token_ids": [300]}', 400, "INVALID_TOKEN"),
    ("/api/v1/detokenize", b'{"token_ids": [true]}', 400, "INVALID_REQUEST"),
    ("/api/v1/tokenize", b'{"text": "' + b"a" * (5 << 20) + b'"}', 413, "PAYLOAD_TOO_LARGE"),
])
async def test_rest_errors(srv: Running, path: str, body: bytes, status: int, code: str) -> None:
    async with httpx.AsyncClient(base_url=srv.url, headers=AUTH) as http:
        r = await http.post(path, content=body)
    assert r.status_code == status and r.json()["error"]["code"] == code


async def test_password_and_origin(srv: Running) -> None:
    async with httpx.AsyncClient(base_url=srv.url) as http:
        for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": f"Basic {PASSWORD}"}):
            r = await http.get("/api/v1/model/info", headers=headers)
            assert r.status_code == 401 and r.json()["error"]["code"] == "UNAUTHORIZED"
    ws_url = f"ws://127.0.0.1:{srv.port}/api/v1/generate/stream"
    with pytest.raises(websockets.InvalidStatus) as refused:
        async with websockets.connect(ws_url):
            pass
    assert refused.value.response.status_code == 401
    with pytest.raises(websockets.InvalidStatus) as refused:
        async with websockets.connect(ws_url, additional_headers=AUTH, origin="https://evil.example"):  # type: ignore[arg-type]
            pass
    assert refused.value.response.status_code == 403
    assert json.loads(refused.value.response.body)["error"]["code"] == "ORIGIN_NOT_ALLOWED"
    for origin in (ALLOWED, f"http://127.0.0.1:{srv.port}"):
        async with websockets.connect(ws_url, additional_headers=AUTH, origin=origin) as ws:  # type: ignore[arg-type]
            await ws.send(json.dumps({"input_ids": [1, 2], "max_length": 1}))
            assert json.loads([m async for m in ws][-1])["type"] == "done"


# ------------------------------------------------------------------------------- the stream

async def collect(srv: Running, ids: list[int], **params: Any) -> tuple[list[TokenEvent], DoneEvent]:
    async with srv.client() as c:
        return await collect_stream(c, ids, **params)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
async def test_tokens_and_frames(srv: Running, dtype: str) -> None:
    tokens, done = await collect(srv, [1, 2, 3], max_length=5, return_attention=True, attention_dtype=dtype)
    assert done.finish_reason == "length" and done.token_count == 5 and done.prompt_tokens == 3
    for i, t in enumerate(tokens):
        assert t.index == i and t.attention is not None and t.attention.dtype == dtype
        assert t.attention.values.shape == (LAYERS, HEADS, 3 + i)
        np.testing.assert_allclose(t.attention.values.astype(np.float32).sum(-1), 1.0, atol=1e-2)
    stop = tokens[2].token_id
    tokens, done = await collect(srv, [1, 2, 3], max_length=5, stop_token_ids=[stop])
    assert done.finish_reason == "stop_token" and tokens[-1].token_id == stop and tokens[-1].attention is None


@pytest.mark.parametrize(("layout", "shape"), [("layer_stats", (LAYERS, 2)), ("model_stats", (1, 2))])
async def test_reduced_layouts_pass_through(srv: Running, layout: str, shape: tuple[int, int]) -> None:
    """The request's layout reaches the backend, and its frames go out as they come (version 2)."""
    full, _ = await collect(srv, [1, 2, 3], max_length=3, return_attention=True)
    tokens, _ = await collect(srv, [1, 2, 3], max_length=3, return_attention=True, attention_layout=layout)
    for whole, t in zip(full, tokens, strict=True):
        assert t.attention is not None and whole.attention is not None and t.attention.layout == layout
        assert t.attention.values.shape == (*shape, whole.attention.values.shape[2])
        np.testing.assert_allclose(t.attention.values, reduce_attention(whole.attention.values, layout), atol=1e-6)


@pytest.mark.parametrize(("message", "code"), [
    ("{not json", "INVALID_REQUEST"),
    ("[1]", "INVALID_REQUEST"),
    (json.dumps({"max_length": 4}), "INVALID_REQUEST"),
    (json.dumps({"input_ids": []}), "INVALID_REQUEST"),
    (json.dumps({"input_ids": [1], "max_length": "4"}), "INVALID_REQUEST"),
    (json.dumps({"input_ids": [1], "max_length": 0}), "INVALID_REQUEST"),
    (json.dumps({"input_ids": [1], "max_lenght": 4}), "INVALID_REQUEST"),
    (json.dumps({"input_ids": [1], "top_p": 1.5}), "INVALID_REQUEST"),
    (json.dumps({"input_ids": [1], "attention_dtype": "int8"}), "INVALID_REQUEST"),
    (json.dumps({"input_ids": [1], "attention_layout": "per_head_max"}), "INVALID_REQUEST"),
    (json.dumps({"input_ids": [1], "attention_layout": None}), "INVALID_REQUEST"),
    (json.dumps({"input_ids": [1], "return_attention": 1}), "INVALID_REQUEST"),
    (json.dumps({"input_ids": [1, 2**31]}), "INVALID_TOKEN"),
    (json.dumps({"input_ids": [1], "stop_token_ids": [2**40]}), "INVALID_TOKEN"),
    (json.dumps({"input_ids": [1.5]}), "INVALID_REQUEST"),
    (json.dumps({"input_ids": [1, 300]}), "INVALID_TOKEN"),
    (json.dumps({"input_ids": [1, -1]}), "INVALID_TOKEN"),
    (json.dumps({"input_ids": [1], "banned_token_ids": [999]}), "INVALID_TOKEN"),
    (json.dumps({"input_ids": [1], "max_length": 10**9}), "CONTEXT_OVERFLOW"),
    (json.dumps({"input_ids": [1] * 500, "max_length": 13}), "CONTEXT_OVERFLOW"),
])
async def test_bad_requests(srv: Running, message: str, code: str) -> None:
    async with websockets.connect(f"ws://127.0.0.1:{srv.port}/api/v1/generate/stream",
                                  additional_headers=AUTH) as ws:
        await ws.send(message)
        received = [m async for m in ws]
        assert ws.close_code == 1000
    body = json.loads(received[-1])
    assert body["type"] == "error" and body["code"] == code, body


def raw(srv: Running, *frames: bytes) -> list[tuple[int, bytes]]:
    with raw_ws.open_stream(srv.port, headers=f"Authorization: Bearer {PASSWORD}\r\n") as sock:
        for f in frames:
            sock.sendall(f)
        return raw_ws.read_frames(sock)


def test_fragmented_request_with_a_ping_between_fragments(srv: Running) -> None:
    message = json.dumps({"input_ids": [1, 2], "max_length": 2}).encode()
    frames = raw(srv, raw_ws.frame(0x1, message[:3], fin=False), raw_ws.frame(0x9, b"hi"),
                 raw_ws.frame(0x0, message[3:10], fin=False), raw_ws.frame(0x0, message[10:]))
    assert (0xA, b"hi") in frames
    texts = [json.loads(p) for op, p in frames if op == 0x1]
    assert [t["type"] for t in texts] == ["token", "token", "done"]
    assert raw_ws.close_code(frames) == 1000


@pytest.mark.parametrize(("frame", "code"), [
    (raw_ws.frame(0x1, b'{"input_ids": [1]}', masked=False), 1002),
    (raw_ws.frame(0x1, b"[" * 100, claimed_length=(4 << 20) + 1), 1009),
    (raw_ws.frame(0x2, b"\x00\x01"), 1003),
    (raw_ws.frame(0x1, b"\xff\xfe"), 1007),
    (raw_ws.frame(0x0, b"orphan"), 1002),
    (raw_ws.frame(0x9, b"x" * 126), 1002),
    (raw_ws.frame(0x3, b""), 1002),
    (bytes([0xC1, 0x80]) + b"mask", 1002),  # RSV1 without an extension
])
def test_protocol_violations_close_with_their_code(srv: Running, frame: bytes, code: int) -> None:
    assert raw_ws.close_code(raw(srv, frame)) == code


def test_close_handshake_echoes_the_clients_code(srv: Running) -> None:
    frames = raw(srv, raw_ws.frame(0x8, struct.pack("!H", 1001) + b"bye"))
    assert raw_ws.close_code(frames) == 1001


def test_unmasking_of_a_large_message(halo: ModuleType) -> None:
    import io

    payload = bytes(range(256)) * 4099 + b"tail"
    reader = halo.FrameReader(io.BytesIO(raw_ws.frame(0x2, payload)))
    assert reader.next_message() == ("binary", payload)


async def abort_after_first_token(srv: Running, max_length: int) -> list[Any]:
    """A stream aborted by the client's {"type": "abort"} once the first token came: every message."""
    async with websockets.connect(f"ws://127.0.0.1:{srv.port}/api/v1/generate/stream",
                                  additional_headers=AUTH) as ws:
        await ws.send(json.dumps({"input_ids": [1], "max_length": max_length}))
        await ws.recv()
        await ws.send(json.dumps({"type": "abort"}))
        return [json.loads(m) async for m in ws]


async def test_abort_message_ends_with_aborted(srv: Running) -> None:
    srv.backend.token_delay = 0.02
    messages = await abort_after_first_token(srv, 400)
    assert messages[-1]["type"] == "done" and messages[-1]["finish_reason"] == "aborted"
    assert messages[-1]["token_count"] < 400


async def aborted_then_free(srv: Running) -> None:
    """The generation is aborted within 2 s, and the next request runs."""
    started = time.monotonic()
    while not srv.backend.aborts:
        assert time.monotonic() - started < 2, "the generation was not aborted after the client left"
        await asyncio.sleep(0.01)
    srv.backend.token_delay = 0.0
    tokens, done = await collect(srv, [1], max_length=2)  # the model is free again
    assert done.token_count == 2 and len(tokens) == 2


async def test_disconnect_aborts_and_busy_while_streaming(srv: Running) -> None:
    srv.backend.token_delay = 0.02
    async with srv.client() as c, c.generate_stream([1, 2], max_length=400) as stream:
        await stream.__anext__()
        with pytest.raises(ServerBusy):
            await collect(srv, [1], max_length=1)
    await aborted_then_free(srv)


@pytest.mark.parametrize("how", ["reset", "half-close"])
async def test_abrupt_disconnect_aborts_the_generation(srv: Running, how: str) -> None:
    """The client vanishes mid-stream without a close frame: a TCP reset, or FIN after a partial frame."""
    srv.backend.token_delay = 0.02
    sock = raw_ws.open_stream(srv.port, headers=f"Authorization: Bearer {PASSWORD}\r\n")
    sock.sendall(raw_ws.frame(0x1, json.dumps({"input_ids": [1, 2], "max_length": 400}).encode()))
    sock.recv(64)  # the stream has begun
    if how == "reset":
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    else:
        sock.sendall(raw_ws.frame(0x1, b"x" * 100)[:20])  # a frame cut short
    sock.close()
    await aborted_then_free(srv)


@pytest.mark.parametrize("start_next", ["done", "close"])
async def test_streams_started_back_to_back_are_never_busy(srv: Running, halo: ModuleType, start_next: str,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """The slot is free before `done` is sent: BUSY means another generation is running, and none is
    once the client has heard that its generation ended (the conformance suite checks KoboldCPP).

    The server thread is held up for 50 ms in the close that follows `done` here, as a busy machine
    may deschedule it there: a slot still held at that point answers the next stream BUSY."""
    close = halo.WebSocket.close

    def slow_close(ws: Any, code: int = 1000, reason: str = "") -> None:
        time.sleep(0.05)
        close(ws, code, reason)

    monkeypatch.setattr(halo.WebSocket, "close", slow_close)
    url = f"ws://127.0.0.1:{srv.port}/api/v1/generate/stream"
    endings = await streams_back_to_back(url, AUTH, {"input_ids": [1, 2], "max_length": 2}, 40,
                                         start_next=start_next)
    assert endings.count("BUSY") == 0 and set(endings) == {"done"}, endings


async def test_kobold_generation_holding_the_lock(srv: Running, halo: ModuleType,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """KoboldCPP's own endpoints hold `modelbusy` while generating (BUSY), and 50 ms after (wait)."""
    # graces far longer than any delay a loaded machine adds: a BUSY that waited for one is unmistakable
    monkeypatch.setattr(halo.slot, "ENDING_GRACE_S", 30.0)
    monkeypatch.setattr(halo.slot, "ABORT_GRACE_S", 30.0)
    lock = srv.kcpp.modelbusy
    lock.acquire()
    srv.backend.finished = False  # one of KoboldCPP's own generations runs
    started = time.monotonic()
    with pytest.raises(ServerBusy):
        await collect(srv, [1], max_length=1)
    assert time.monotonic() - started < 10, "BUSY must be answered at once while a generation runs, not after a grace"
    srv.backend.finished = True  # it has ended; KoboldCPP sleeps 50 ms before releasing the lock
    threading.Timer(0.05, lock.release).start()
    tokens, done = await collect(srv, [1], max_length=2)
    assert done.token_count == 2 and len(tokens) == 2
    assert not lock.locked()


async def test_attention_unavailable(srv: Running) -> None:
    srv.backend.model_info = lambda: {**FakeBackend.model_info(srv.backend),  # type: ignore[method-assign]
                                      "attention": {"available": False, "reason": "flash attention is on",
                                                    "dtypes": ["float32", "float16"]}}
    with pytest.raises(ServerError) as err:
        await collect(srv, [1], max_length=1, return_attention=True)
    assert err.value.code == "ATTENTION_UNAVAILABLE" and "flash attention" in str(err.value)


async def test_a_layout_not_offered_is_attention_unavailable(srv: Running) -> None:
    srv.backend.model_info = lambda: {**FakeBackend.model_info(srv.backend),  # type: ignore[method-assign]
                                      "attention": {"available": True, "reason": None,
                                                    "dtypes": ["float32", "float16"], "layouts": ["full"]}}
    with pytest.raises(ServerError) as err:
        await collect(srv, [1], max_length=1, return_attention=True, attention_layout="model_stats")
    assert err.value.code == "ATTENTION_UNAVAILABLE" and "model_stats" in str(err.value)


def test_seed_mapping(halo: ModuleType) -> None:
    assert halo.kobold_seed(-1) == -1
    assert halo.kobold_seed(11) == 11
    for seed in (0, 2**31 - 1, 2**31, 2**32 - 1):
        mapped = halo.kobold_seed(seed)
        assert 1 <= mapped < 2**31 - 1


def test_accept_key_of_rfc6455(halo: ModuleType) -> None:
    assert halo.accept_key("dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    assert base64.b64decode(halo.accept_key("x" * 24))


def test_struct_layouts_match_attention_export_h(halo: ModuleType) -> None:
    import ctypes

    assert ctypes.sizeof(halo.EventOut) == 48
    assert halo.EventOut.frame_bytes.offset == 24
    assert ctypes.sizeof(halo.ModelInfoOut) == 72
    assert halo.ModelInfoOut.arch.offset == 48



# ------------------------------------------- KoboldCPP's own answers, after Halo Weave traffic
# KoboldCPP serves each thread's connections with one reused handler object (kobold_like.py):
# whatever a Halo Weave request leaves on it, KoboldCPP's next answer on that thread sees.

KOBOLD_REQUESTS = {
    "OPTIONS": raw_http.request("OPTIONS", "/api/v1/generate", headers={
        "Origin": "https://lite.example", "Access-Control-Request-Method": "POST"}),
    "404": raw_http.request("GET", "/api/v1/nothing-here"),
    "model": raw_http.request("GET", "/api/v1/model"),
    "generate": raw_http.request("POST", "/api/v1/generate", headers=AUTH, body=b'{"prompt": "Hi", "max_length": 4}'),
    "generate malformed": raw_http.request("POST", "/api/v1/generate", headers=AUTH, body=b"{not json"),
    "generate unauthorized": raw_http.request("POST", "/api/v1/generate", body=b'{"prompt": "Hi"}'),
    "SSE stream": raw_http.request("POST", "/api/extra/generate/stream", headers=AUTH,
                                   body=b'{"prompt": "Hi", "max_length": 3}'),
}


def kobold_answers(port: int, connections: int) -> dict[str, list[raw_http.Answer]]:
    """Each KoboldCPP request on `connections` connections open at once: each connection held by
    another server thread, so every thread (and its handler object) answers one. Sent one after
    another (the generation ones take KoboldCPP's model lock: at once, some would get 503)."""
    out: dict[str, list[raw_http.Answer]] = {}
    for name, raw in KOBOLD_REQUESTS.items():
        socks = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(connections)]
        try:
            out[name] = []
            for s in socks:
                s.sendall(raw)
                out[name].append(raw_http.parse(raw_http.read_to_close(s, 1.0, raw), 0.0))
        finally:
            for s in socks:
                s.close()
    return out


def halo_on_every_thread(srv: Running, raw: bytes) -> list[raw_http.Answer]:
    """A Halo Weave request on as many connections, open at once, as KoboldCPP has threads; each
    answer read as a keep-alive client reads it (by Content-Length), the connection left open."""
    socks = [socket.create_connection(("127.0.0.1", srv.port), timeout=5) for _ in srv.kobold.handlers]
    try:
        for s in socks:
            s.sendall(raw)
        return [raw_http.read_answer(s) for s in socks]
    finally:
        for s in socks:
            s.close()


async def test_kobold_answers_are_unchanged_after_halo_traffic(srv: Running) -> None:
    threads = len(srv.kobold.handlers)
    before = kobold_answers(srv.port, threads)
    keep_alive = {"Connection": "keep-alive"}
    # REST, errors and refusals, each on every thread
    for raw in (raw_http.request("GET", "/api/v1/model/info", headers={**AUTH, **keep_alive}),
                raw_http.request("POST", "/api/v1/tokenize", headers={**AUTH, **keep_alive}, body=b'{"text": "hi"}'),
                raw_http.request("POST", "/api/v1/tokenize", headers={**AUTH, **keep_alive}, body=b"{bad"),
                raw_http.request("GET", "/api/v1/model/info", headers=keep_alive),
                raw_http.request("GET", "/api/v1/model/info", host="evil.example", headers={**AUTH, **keep_alive}),
                raw_http.request("GET", "/api/v1/model/info", headers=AUTH, version="HTTP/1.0")):
        answers = halo_on_every_thread(srv, raw)
        assert all(a.header("connection") == "close" and a.header("content-length") for a in answers)
    # streams: complete, aborted, left mid-way; refused upgrades
    await collect(srv, [1, 2], max_length=3, return_attention=True)
    srv.backend.token_delay = 0.01
    await abort_after_first_token(srv, 50)
    async with srv.client() as c, c.generate_stream([1, 2], max_length=50) as stream:
        await stream.__anext__()
    await aborted_then_free(srv)
    for headers in ("", f"Authorization: Bearer {PASSWORD}\r\nOrigin: https://evil.example\r\n"):
        with pytest.raises(ConnectionError):
            raw_ws.open_stream(srv.port, headers=headers)
    after = kobold_answers(srv.port, threads)
    for name, answers in after.items():
        reference = before[name][0]
        assert all(a.same_as(reference) for a in before[name] + answers), (name, reference, answers)


def test_idle_halo_connections_do_not_hold_kobold_threads(srv: Running) -> None:
    """50 clients that keep their connection open after a Halo Weave answer (as keep-alive clients
    do), more than KoboldCPP's 24 threads: a KoboldCPP request is still answered at once."""
    raw = raw_http.request("GET", "/api/v1/model/info", headers={**AUTH, "Connection": "keep-alive"})
    socks = []
    try:
        for _ in range(50):
            s = socket.create_connection(("127.0.0.1", srv.port), timeout=5)
            s.sendall(raw)
            assert raw_http.read_answer(s).status_line == "HTTP/1.1 200 OK"
            socks.append(s)
        answer = raw_http.exchange(srv.port, KOBOLD_REQUESTS["model"], deadline_s=1.0)
        assert answer.status_line.startswith("HTTP/1.0 200")
        assert all(s.recv(1) == b"" for s in socks)  # the server has closed every one of them
    finally:
        for s in socks:
            s.close()


def test_busy_answer_is_unchanged_while_a_stream_generates(srv: Running) -> None:
    before = raw_http.exchange(srv.port, KOBOLD_REQUESTS["generate"])
    halo_on_every_thread(srv, raw_http.request("GET", "/api/v1/model/info", headers=AUTH))
    srv.kcpp.modelbusy.acquire()  # as a running stream holds it
    try:
        busy = [raw_http.exchange(srv.port, KOBOLD_REQUESTS["generate"]) for _ in srv.kobold.handlers]
    finally:
        srv.kcpp.modelbusy.release()
    assert before.status_line.startswith("HTTP/1.0 200")
    assert {(a.status_line, a.headers, a.body) for a in busy} == {(busy[0].status_line, busy[0].headers, busy[0].body)}
    assert busy[0].status_line.startswith("HTTP/1.0 503") and busy[0].header("content-length") is None


# ------------------------------------------------------------------------- Host (rule H0)

@pytest.mark.parametrize("host", ["evil.example:5001", "localhost.evil.example", "attacker.test."])
def test_rebinding_host_is_refused_everywhere_before_auth(srv: Running, host: str) -> None:
    for raw in (raw_http.request("GET", "/api/v1/model/info", host=host),
                raw_http.request("POST", "/api/v1/tokenize", host=host, body=b'{"text": "x"}'),
                raw_http.request("POST", "/api/v1/detokenize", host=host, headers=AUTH, body=b'{"token_ids": [1]}')):
        answer = raw_http.exchange(srv.port, raw)
        assert answer.status_line == "HTTP/1.1 403 Forbidden"
        assert json.loads(answer.body)["error"]["code"] == "HOST_NOT_ALLOWED"
    with pytest.raises(ConnectionError) as refused:
        raw_ws.open_stream(srv.port, host_header=host, headers=f"Origin: http://{host}\r\n")
    assert str(refused.value).startswith("HTTP/1.1 403") and "HOST_NOT_ALLOWED" in str(refused.value)


def test_allowed_host_flag_and_kobold_endpoints(halo: ModuleType) -> None:
    running = Running(halo)
    running.kobold.close()
    running.kcpp.args.allowed_host = ["kobold.lan"]
    running.kobold = KoboldLikeServer(halo, running.kcpp, running.backend)
    try:
        ok = raw_http.exchange(running.kobold.port, raw_http.request(
            "GET", "/api/v1/model/info", host="Kobold.LAN:5001", headers=AUTH))
        assert ok.status_line == "HTTP/1.1 200 OK"
        refused = raw_http.exchange(running.kobold.port, raw_http.request(
            "GET", "/api/v1/model/info", host="other.lan", headers=AUTH))
        assert refused.status_line == "HTTP/1.1 403 Forbidden"
        # KoboldCPP's own endpoints answer any Host, as they always have
        own = raw_http.exchange(running.kobold.port, raw_http.request("GET", "/api/v1/model", host="other.lan"))
        assert own.status_line.startswith("HTTP/1.0 200")
    finally:
        running.kobold.close()


HOSTS = [None, "", "localhost", "LocalHost:5001", "a.localhost", "localhost.evil.example", "127.0.0.1:5001",
         "[::1]:5001", "::1", "192.168.1.20", "[fe80::1]", "evil.example", "evil.example.", "kobold.lan:80",
         "proxy.example", "myhost", "127.0.0.1.nip.io", ":5001"]
ORIGINS = [None, "http://localhost:5001", "https://localhost:5001", "http://localhost:5002", "https://proxy.example",
           "https://proxy.example/", "null", "http://evil.example:5001", "file://"]


def test_host_and_origin_rules_agree_with_the_project_servers(halo: ModuleType) -> None:
    """halo_api carries a copy of halo_client/serving/access.py's rules (it may import nothing
    of ours): both must give the same answers."""
    from halo_client.serving import access

    hosts, origins = ["Kobold.Lan"], ["https://proxy.example/"]
    for ours, theirs in ((halo.AccessPolicy(), access.AccessPolicy()),
                         (halo.AccessPolicy(allowed_hosts=hosts, allowed_origins=origins, bind_host="myhost"),
                          access.AccessPolicy(allowed_hosts=hosts, allowed_origins=origins, bind_host="myhost"))):
        for host in HOSTS:
            assert ours.host_allowed(host) == theirs.host_allowed(host), host
            if host is not None:
                assert halo.host_name(host) == access.host_name(host)
                assert ours.host_refusal(host) == theirs.host_refusal(host)
            for origin in ORIGINS:
                assert ours.origin_allowed(origin, host) == theirs.origin_allowed(origin, host), (origin, host)
