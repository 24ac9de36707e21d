"""REST and WebSocket on one port, as KoboldCPP serves them, for any `ModelBackend`.

HTTP/1.1 is parsed by h11 and the WebSocket by websockets' sans-I/O `ServerProtocol`; this
module only moves bytes between them and the socket, so both protocol engines stay the
well-tested ones. The contract's rules (auth, Origin, sizes, error codes, one generation at a
time, abort on disconnect) are enforced here once for every backend.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hmac
import json
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Final, TypeVar

import h11
import numpy as np
import pydantic
from websockets.frames import Frame, Opcode
from websockets.protocol import State
from websockets.server import ServerProtocol

from halo_client.frame import frame_header
from halo_client.messages import (
    DetokenizeRequest,
    DetokenizeResponse,
    DoneMessage,
    ErrorCode,
    ErrorMessage,
    GenerateRequest,
    ModelInfo,
    Timings,
    TokenizeRequest,
    TokenizeResponse,
    TokenMessage,
    TokenPiece,
)
from halo_client.serving.access import AccessPolicy
from halo_client.serving.backend import ModelBackend
from halo_client.serving.faults import FaultPlan
from halo_client.serving.generation import (
    Finished,
    GeneratedToken,
    RequestRejected,
    check_request,
    generate,
)

log = logging.getLogger("halo_client.server")

MAX_BODY: Final = 4 * 1024 * 1024
MAX_CLIENT_MESSAGE: Final = 4 * 1024 * 1024
MAX_HEAD: Final = 16 * 1024
FIRST_MESSAGE_TIMEOUT_S: Final = 30.0
ABORT_GRACE_S: Final = 5.0
_NEEDS_PASSWORD: Final = "this server has a password: send Authorization: Bearer <password>"
STREAM_PATH: Final = "/api/v1/generate/stream"

STATUS: Final[dict[str, int]] = {
    "INVALID_REQUEST": 400,
    "INVALID_TOKEN": 400,
    "CONTEXT_OVERFLOW": 400,
    "ATTENTION_UNAVAILABLE": 400,
    "UNAUTHORIZED": 401,
    "ORIGIN_NOT_ALLOWED": 403,
    "HOST_NOT_ALLOWED": 403,
    "NOT_FOUND": 404,
    "PAYLOAD_TOO_LARGE": 413,
    "INTERNAL": 500,
    "BUSY": 503,
}
_REASONS: Final = {101: b"Switching Protocols", 200: b"OK", 400: b"Bad Request",
                   401: b"Unauthorized", 403: b"Forbidden", 404: b"Not Found",
                   405: b"Method Not Allowed", 413: b"Payload Too Large",
                   500: b"Internal Server Error", 503: b"Service Unavailable"}


@dataclass
class ServerStats:
    """What a test may want to know about the server's own behaviour."""

    generations: int = 0
    #: tokens computed after the client had gone (abort latency, in tokens), last generation
    tokens_after_disconnect: int = 0
    #: the largest write buffer a WebSocket had, in bytes: bounded means backpressure works
    max_write_buffer: int = 0


def _error_body(code: ErrorCode, message: str) -> bytes:
    return json.dumps({"error": {"code": code, "message": message}}).encode()


def _validation_message(exc: pydantic.ValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        where = ".".join(str(p) for p in err["loc"]) or "body"
        parts.append(f"{where}: {err['msg']}")
    return "; ".join(parts)


class ContractServer:
    """Serves `api_spec/` for one backend on one port. `async with` starts and stops it."""

    def __init__(
        self,
        backend: ModelBackend,
        *,
        host: str = "127.0.0.1",
        port: int = 5001,
        password: str | None = None,
        allowed_origins: tuple[str, ...] = (),
        allowed_hosts: tuple[str, ...] = (),
        faults: FaultPlan | None = None,
    ) -> None:
        self.backend = backend
        self.host = host
        self.port = port
        self.password = password
        self.access = AccessPolicy(allowed_hosts=allowed_hosts, allowed_origins=allowed_origins, bind_host=host)
        self.faults = faults
        self.stats = ServerStats()
        self._info: ModelInfo | None = None
        # One model thread: backends keep a KV cache and are not thread-safe.
        self._model_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="halo-model")
        self._busy = asyncio.Lock()
        self._active: _StreamSession | None = None
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def info(self) -> ModelInfo:
        if self._info is None:
            self._info = self.backend.model_info()
        return self._info

    async def start(self) -> None:
        self.info()
        self._server = await asyncio.start_server(self._on_connection, self.host, self.port,
                                                  limit=MAX_HEAD)
        sock = self._server.sockets[0]
        self.port = int(sock.getsockname()[1])

    async def serve_forever(self) -> None:
        if self._server is None:
            await self.start()
        assert self._server is not None
        await self._server.serve_forever()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            for task in list(self._connections):
                task.cancel()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 5)
            self._server = None
        self._model_thread.shutdown(wait=False, cancel_futures=True)

    async def __aenter__(self) -> ContractServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ------------------------------------------------------------------ HTTP layer

    async def _on_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            await self._serve_http(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            pass
        except Exception:
            log.exception("connection handler failed")
        finally:
            self._connections.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _serve_http(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
        while True:
            request: h11.Request | None = None
            body = bytearray()
            too_large = False
            while True:
                try:
                    event = conn.next_event()
                except h11.RemoteProtocolError as exc:
                    await self._send_raw_error(writer, conn, exc.error_status_hint, str(exc))
                    return
                if event is h11.NEED_DATA:
                    data = await reader.read(65536)
                    conn.receive_data(data)
                    continue
                if isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
                    break
                if isinstance(event, h11.Request):
                    request = event
                    if self._is_upgrade(event):
                        # A GET with no body: the next event is EndOfMessage, then PAUSED.
                        continue
                elif isinstance(event, h11.Data):
                    if len(body) + len(event.data) > MAX_BODY:
                        too_large = True
                    else:
                        body += event.data
                elif (isinstance(event, h11.EndOfMessage) and request is not None
                      and not self._is_upgrade(request)):
                    break
            if request is None:
                return
            if self._is_upgrade(request) and conn.our_state is h11.SEND_RESPONSE:
                trailing, _closed = conn.trailing_data
                await self._upgrade(request, conn, reader, writer, bytes(trailing))
                return
            if too_large:
                await self._respond(writer, conn, "PAYLOAD_TOO_LARGE",
                                    f"request bodies are limited to {MAX_BODY} bytes")
                return
            await self._route(request, bytes(body), conn, writer)
            if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
                return
            try:
                conn.start_next_cycle()
            except h11.LocalProtocolError:
                return

    @staticmethod
    def _is_upgrade(request: h11.Request) -> bool:
        return any(name == b"upgrade" and value.lower() == b"websocket"
                   for name, value in request.headers)

    @staticmethod
    def _header(request: h11.Request, name: bytes) -> str | None:
        for key, value in request.headers:
            if key == name:
                return value.decode("latin-1")
        return None

    async def _send(self, writer: asyncio.StreamWriter, conn: h11.Connection, status: int,
                    body: bytes, content_type: bytes = b"application/json") -> None:
        headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode()),
                   (b"access-control-allow-origin", b"*")]
        writer.write(conn.send(h11.Response(status_code=status, headers=headers,
                                            reason=_REASONS.get(status, b""))) or b"")
        writer.write(conn.send(h11.Data(data=body)) or b"")
        writer.write(conn.send(h11.EndOfMessage()) or b"")
        await writer.drain()

    async def _respond(self, writer: asyncio.StreamWriter, conn: h11.Connection,
                       code: ErrorCode, message: str) -> None:
        await self._send(writer, conn, STATUS[code], _error_body(code, message))

    async def _send_raw_error(self, writer: asyncio.StreamWriter, conn: h11.Connection,
                              status: int, message: str) -> None:
        if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
            status = status if status in _REASONS else 400
            code: ErrorCode = "PAYLOAD_TOO_LARGE" if status == 431 else "INVALID_REQUEST"
            with contextlib.suppress(h11.LocalProtocolError):
                body = _error_body(code, f"bad HTTP request: {message}")
                await self._send(writer, conn, STATUS[code], body)

    def _authorized(self, request: h11.Request) -> bool:
        if not self.password:
            return True
        value = self._header(request, b"authorization") or ""
        scheme, _, token = value.partition(" ")
        # constant-time: the comparison must not tell an attacker how much of a guess was right
        return scheme.lower() == "bearer" and hmac.compare_digest(
            token.strip().encode(), self.password.encode())

    def _host_refused(self, request: h11.Request) -> str | None:
        """H0: the refusal message for a Host a DNS-rebinding page would send, else None."""
        host = self._header(request, b"host")
        return None if self.access.host_allowed(host) else self.access.host_refusal(host or "")

    async def _route(self, request: h11.Request, body: bytes, conn: h11.Connection,
                     writer: asyncio.StreamWriter) -> None:
        path = request.target.decode("latin-1").split("?", 1)[0].rstrip("/")
        method = request.method.decode()
        routes: dict[str, tuple[str, Callable[[bytes], Any]]] = {
            "/api/v1/model/info": ("GET", self._model_info),
            "/api/v1/tokenize": ("POST", self._tokenize),
            "/api/v1/detokenize": ("POST", self._detokenize),
            "/api/v1/model": ("GET", self._kobold_model),
        }
        if method == "OPTIONS":  # CORS preflight, as KoboldCPP answers it
            await self._send(writer, conn, 200, b"")
            return
        if path not in routes and path != STREAM_PATH:
            await self._respond(writer, conn, "NOT_FOUND", f"no endpoint {path}; see api_spec/")
            return
        refused = self._host_refused(request) if path != "/api/v1/model" else None  # KoboldCPP's own: unchanged
        if refused:
            await self._respond(writer, conn, "HOST_NOT_ALLOWED", refused)
            return
        if not self._authorized(request):
            await self._respond(writer, conn, "UNAUTHORIZED", _NEEDS_PASSWORD)
            return
        if path == STREAM_PATH:
            await self._respond(writer, conn, "INVALID_REQUEST",
                                f"{STREAM_PATH} is a WebSocket: connect with a WebSocket client")
            return
        want, handler = routes[path]
        if method != want:
            await self._respond(writer, conn, "INVALID_REQUEST", f"{path} takes {want}, not {method}")
            return
        if self.faults and self.faults.response_delay_s:
            await asyncio.sleep(self.faults.response_delay_s)
        try:
            payload = await asyncio.get_running_loop().run_in_executor(None, handler, body)
        except RequestRejected as exc:
            await self._respond(writer, conn, exc.code, exc.message)
            return
        except Exception as exc:
            log.exception("%s failed", path)
            await self._respond(writer, conn, "INTERNAL", f"{type(exc).__name__}: {exc}")
            return
        await self._send(writer, conn, 200, json.dumps(payload).encode())

    def _model_info(self, _body: bytes) -> Any:
        return self.info().model_dump(mode="json")

    def _kobold_model(self, _body: bytes) -> Any:
        # KoboldCPP's own endpoint, kept so tools that probe it recognise the server.
        return {"result": f"halo/{self.info().model_name}"}

    def _tokenize(self, body: bytes) -> Any:
        request = _validate(TokenizeRequest, body)
        ids = self.backend.tokenize(request.text, request.add_special_tokens)
        pieces = [TokenPiece(token_id=t, piece=self.backend.token_bytes(t)) for t in ids]
        return TokenizeResponse(tokens=pieces, token_ids=ids, token_count=len(ids)).model_dump(mode="json")

    def _detokenize(self, body: bytes) -> Any:
        request = _validate(DetokenizeRequest, body)
        vocab = self.info().vocab_size
        bad = [t for t in request.token_ids if t >= vocab]
        if bad:
            raise RequestRejected("INVALID_TOKEN",
                                  f"token id {bad[0]} is outside the vocabulary [0, {vocab})")
        raw = b"".join(self.backend.token_bytes(t) for t in request.token_ids)
        return DetokenizeResponse(text=raw.decode("utf-8", errors="replace")).model_dump(mode="json")

    # ------------------------------------------------------------- WebSocket layer

    async def _upgrade(self, request: h11.Request, conn: h11.Connection, reader: asyncio.StreamReader,
                       writer: asyncio.StreamWriter, trailing: bytes) -> None:
        path = request.target.decode("latin-1").split("?", 1)[0].rstrip("/")
        if path != STREAM_PATH:
            await self._respond(writer, conn, "NOT_FOUND", f"no WebSocket at {path}; use {STREAM_PATH}")
            return
        refused = self._host_refused(request)
        if refused:
            await self._respond(writer, conn, "HOST_NOT_ALLOWED", refused)
            return
        if not self._authorized(request):
            await self._respond(writer, conn, "UNAUTHORIZED", _NEEDS_PASSWORD)
            return
        origin = self._header(request, b"origin")
        if not self.access.origin_allowed(origin, self._header(request, b"host")):
            await self._respond(writer, conn, "ORIGIN_NOT_ALLOWED", self.access.origin_refusal(origin or ""))
            return
        protocol = ServerProtocol(max_size=MAX_CLIENT_MESSAGE)
        head = b"%s %s HTTP/1.1\r\n" % (request.method, request.target)
        head += b"".join(b"%s: %s\r\n" % (k, v) for k, v in request.headers) + b"\r\n"
        protocol.receive_data(head)
        ws_request = protocol.events_received()[0]
        response = protocol.accept(ws_request)  # type: ignore[arg-type]
        protocol.send_response(response)
        session = _StreamSession(self, protocol, reader, writer)
        await session.flush()
        if response.status_code != 101:
            return
        if trailing:
            session.feed(trailing)
        await session.run()


_M = TypeVar("_M", bound=pydantic.BaseModel)
_ID_FIELDS: Final = frozenset({"input_ids", "stop_token_ids", "banned_token_ids", "token_ids"})


def _validate(model: type[_M], body: bytes | str) -> _M:
    """Parse a request body, answering the contract's error code for each way it can be bad."""
    try:
        obj = json.loads(body)
    except ValueError as exc:
        raise RequestRejected("INVALID_REQUEST", f"the request is not valid JSON: {exc}") from exc
    try:
        return model.model_validate(obj)
    except pydantic.ValidationError as exc:
        errors = exc.errors()
        # A negative id, or one past 2**31, is a token outside the vocabulary, like one past its end.
        if all(len(e["loc"]) == 2 and e["loc"][0] in _ID_FIELDS and e["type"] in ("greater_than_equal", "less_than")
               for e in errors):
            raise RequestRejected("INVALID_TOKEN", _validation_message(exc)) from exc
        raise RequestRejected("INVALID_REQUEST", _validation_message(exc)) from exc


_WRITE_CHUNK: Final = 1 << 21


def _done_message(item: Finished) -> DoneMessage:
    seconds = item.generation_ms / 1000.0
    return DoneMessage(
        type="done", finish_reason=item.finish_reason, token_count=item.token_count,
        prompt_tokens=item.prompt_tokens,
        timings=Timings(prompt_ms=item.prompt_ms, generation_ms=item.generation_ms,
                        tokens_per_second=item.token_count / seconds if seconds > 0 else 0.0),
    )


def _binary_frame_header(length: int) -> bytes:
    """RFC 6455 section 5.2 header of one unfragmented, unmasked binary frame."""
    if length < 126:
        return bytes((0x82, length))
    if length < 1 << 16:
        return bytes((0x82, 126)) + length.to_bytes(2, "big")
    return bytes((0x82, 127)) + length.to_bytes(8, "big")


class _StreamSession:
    """One WebSocket: reads client frames concurrently with the generation it drives."""

    def __init__(self, server: ContractServer, protocol: ServerProtocol,
                 reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.server = server
        self.protocol = protocol
        self.reader = reader
        self.writer = writer
        self.messages: asyncio.Queue[str | None] = asyncio.Queue()
        self.gone = False  # the client closed or vanished
        self.abort_requested = False  # the client sent {"type": "abort"}
        self._parts: list[bytes] = []
        self._part_opcode: Opcode | None = None

    def feed(self, data: bytes) -> None:
        self.protocol.receive_data(data)
        self._drain_events()

    def write_pending(self) -> None:
        """Hand what the protocol has queued to the transport, without waiting."""
        for chunk in self.protocol.data_to_send():
            if chunk:
                self.writer.write(chunk)
            elif self.writer.can_write_eof():
                with contextlib.suppress(OSError):
                    self.writer.write_eof()
        self._note_buffer()

    async def flush(self) -> None:
        self.write_pending()
        await self.writer.drain()

    def _note_buffer(self) -> None:
        size = self.writer.transport.get_write_buffer_size()
        stats = self.server.stats
        stats.max_write_buffer = max(stats.max_write_buffer, size)

    def _drain_events(self) -> None:
        for event in self.protocol.events_received():
            if not isinstance(event, Frame):
                continue
            if event.opcode in (Opcode.TEXT, Opcode.BINARY):
                self._part_opcode = event.opcode
                self._parts = [bytes(event.data)]
            elif event.opcode is Opcode.CONT:
                self._parts.append(bytes(event.data))
            elif event.opcode is Opcode.CLOSE:
                self._stop()
                continue
            else:
                continue  # ping/pong: the protocol already answered
            if not event.fin:
                continue
            data = b"".join(self._parts)
            self._parts = []
            if self._part_opcode is Opcode.BINARY:
                self.protocol.fail(1003, "this endpoint accepts text messages only")
                self._stop()
            else:
                try:
                    self.messages.put_nowait(data.decode("utf-8"))
                except UnicodeDecodeError:
                    self.protocol.fail(1007, "text message is not valid UTF-8")
                    self._stop()
        if self.protocol.close_code is not None or self.protocol.parser_exc is not None:
            self._stop()

    def _stop(self) -> None:
        if not self.gone:
            self.gone = True
            self.messages.put_nowait(None)

    async def _read_loop(self) -> None:
        try:
            while not self.reader.at_eof():
                data = await self.reader.read(65536)
                if not data:
                    break
                self.feed(data)
                await self.flush()
        except (ConnectionError, OSError):
            pass
        finally:
            with contextlib.suppress(Exception):
                self.protocol.receive_eof()
            self._stop()

    @property
    def open(self) -> bool:
        return not self.gone and self.protocol.state is State.OPEN

    async def send_json(self, message: pydantic.BaseModel) -> None:
        if self.open:
            self.protocol.send_text(message.model_dump_json().encode())
            await self.flush()

    async def send_error(self, code: ErrorCode, message: str) -> None:
        await self.send_json(ErrorMessage(type="error", code=code, message=message))
        await self.close(1000)

    async def close(self, code: int, reason: str = "") -> None:
        if self.open:
            with contextlib.suppress(Exception):
                self.protocol.send_close(code, reason)
                await self.flush()

    async def run(self) -> None:
        reader_task = asyncio.create_task(self._read_loop())
        try:
            await self._serve_one()
            # let the client's close frame come back, briefly, for a clean handshake
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(reader_task), 2.0)
        finally:
            reader_task.cancel()

    async def _serve_one(self) -> None:
        try:
            text = await asyncio.wait_for(self.messages.get(), FIRST_MESSAGE_TIMEOUT_S)
        except TimeoutError:
            await self.send_error("INVALID_REQUEST",
                                  f"no generation request within {FIRST_MESSAGE_TIMEOUT_S:g} s")
            return
        if text is None:
            await self.flush()
            return
        server = self.server
        try:
            request = _validate(GenerateRequest, text)
            check_request(request, server.info())
        except RequestRejected as exc:
            await self.send_error(exc.code, exc.message)
            return
        faults = server.faults
        if faults is not None and faults.always_busy:
            await self.send_error("BUSY", "another generation is running; retry when it is done")
            return
        if server._busy.locked():
            active = server._active
            # A generation whose client is gone ends within a token: wait for it rather than
            # answer BUSY to the client that just replaced it (a re-request after pruning).
            if active is None or not (active.gone or active.abort_requested):
                await self.send_error("BUSY", "another generation is running; retry when it is done")
                return
        try:
            await asyncio.wait_for(server._busy.acquire(), ABORT_GRACE_S)
        except TimeoutError:
            await self.send_error("BUSY", "another generation is still stopping; retry shortly")
            return
        server._active = self
        try:
            await self._generate(request)
        finally:
            server._active = None
            server._busy.release()

    async def _generate(self, request: GenerateRequest) -> None:
        server, faults = self.server, self.server.faults
        loop = asyncio.get_running_loop()
        server.stats.generations += 1
        server.stats.tokens_after_disconnect = 0
        def should_stop() -> bool:
            return self.abort_requested or self.gone

        tokens = generate(server.backend, request, server.info(), should_stop)
        watcher = asyncio.create_task(self._watch_abort())
        compute = functools.partial(loop.run_in_executor, server._model_thread, next, tokens, None)
        pending: asyncio.Future[GeneratedToken | Finished | None] | None = compute()
        try:
            while pending is not None:
                item = await pending
                pending = None
                if self.gone:
                    if isinstance(item, GeneratedToken):
                        server.stats.tokens_after_disconnect += 1
                        pending = compute()
                    continue
                if item is None:
                    raise RuntimeError("generation ended without finishing")
                if isinstance(item, Finished):
                    await self.send_json(_done_message(item))
                    await self.close(1000)
                    return
                if faults is not None and await self._commit_fault(faults, item):
                    return
                self.write_message(TokenMessage(type="token", index=item.index,
                                                token_id=item.token_id, piece=item.piece))
                if item.attention is not None:
                    self.write_frame(item, request.attention_dtype, faults)
                # Once written, the result's buffers are free (the transport copied what it
                # could not send), so the next token is computed while this one drains: one
                # frame in flight, one in the making, and no more.
                pending = compute()
                await self.writer.drain()
        except Exception as exc:
            log.exception("generation failed")
            if not self.gone:
                await self.send_error("INTERNAL", f"generation failed: {type(exc).__name__}: {exc}")
        finally:
            self.abort_requested = True  # a generation cut short by an exception stops too
            watcher.cancel()
            if pending is not None:  # let the model thread finish the token in hand
                with contextlib.suppress(Exception):
                    await pending

    async def _watch_abort(self) -> None:
        """After the request, the only message a client may send is {"type": "abort"}."""
        while True:
            text = await self.messages.get()
            if text is None:
                return
            with contextlib.suppress(ValueError):
                if json.loads(text) == {"type": "abort"}:
                    # finish with `aborted`; the socket stays open for `done`
                    self.abort_requested = True
                    return

    def write_message(self, message: pydantic.BaseModel) -> None:
        if self.open:
            self.protocol.send_text(message.model_dump_json().encode())
            self.write_pending()

    def write_frame(self, item: GeneratedToken, dtype: str, faults: FaultPlan | None) -> None:
        assert item.attention is not None
        values = item.attention
        if dtype == "float16":
            values = values.astype("<f2")
        elif values.dtype != np.dtype("<f4") or not values.flags.c_contiguous:
            values = np.ascontiguousarray(values, dtype="<f4")
        layers, heads, ctx = values.shape
        header = frame_header(layers, heads, ctx, item.index, dtype)
        payload: memoryview | bytes = memoryview(values.reshape(-1).view(np.uint8))  # type: ignore[arg-type]
        if faults is not None:
            if faults.corrupt_frame_at == item.index:
                header = b"XXXX" + header[4:]
            if faults.truncate_frame_at == item.index:
                payload = bytes(payload[: len(payload) // 2])
        if not self.open:
            return
        # The payload is written from the array itself: a frame is megabytes, and
        # websockets' send_binary would copy it twice. Server frames are unmasked, so the
        # WebSocket framing is only a header; the protocol object needs no part in it.
        self.write_pending()
        self.writer.write(_binary_frame_header(len(header) + len(payload)) + header)
        for start in range(0, len(payload), _WRITE_CHUNK):
            # In chunks: Python 3.11's transport buffer is one bytearray that it shifts after
            # every send, which is quadratic in the size of one huge write.
            self.writer.write(payload[start : start + _WRITE_CHUNK])
        self._note_buffer()

    async def _commit_fault(self, faults: FaultPlan, item: GeneratedToken) -> bool:
        if faults.token_delay_s:
            await asyncio.sleep(faults.token_delay_s)
            if not self.open:
                return True
        if faults.drop_before_token == item.index:
            self.writer.transport.abort()
            self.gone = True
            return True
        if faults.error_at == item.index:
            await self.send_error(faults.error_code, f"injected fault: {faults.error_code}")
            return True
        return False
