"""REST and WebSocket on one port, as KoboldCPP serves them, for any `ModelBackend`.

HTTP/1.1 is parsed by h11 and the WebSocket by websockets' sans-I/O `ServerProtocol`; this
module moves bytes between them and the socket, answers the REST endpoints and the upgrade, and
hands each accepted stream to a `StreamSession` (stream.py). The contract's rules (Host, auth,
Origin, sizes, error codes, one generation at a time) are enforced here once for every backend.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import socket
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Final, TypeVar

import h11
from websockets.server import ServerProtocol

from halo_client.messages import (
    ERROR_STATUS,
    DetokenizeRequest,
    DetokenizeResponse,
    ErrorCode,
    ModelInfo,
    TokenizeRequest,
    TokenizeResponse,
    TokenPiece,
)
from halo_client.serving.access import AccessPolicy
from halo_client.serving.backend import ModelBackend
from halo_client.serving.faults import FaultPlan
from halo_client.serving.slot import GenerationSlot
from halo_client.serving.stream import GenerationContext, ServerStats, StreamSession
from halo_client.serving.validation import RequestRejected, parse_body

_Server = TypeVar("_Server", bound="ContractServer")

log = logging.getLogger("halo_client.server")

MAX_BODY: Final = 4 * 1024 * 1024
MAX_CLIENT_MESSAGE: Final = 4 * 1024 * 1024
MAX_HEAD: Final = 16 * 1024
_NO_PASSWORD: Final = "This server has a password, and the request carried none (Authorization: Bearer <password>)."
_WRONG_PASSWORD: Final = "The password is wrong."
STREAM_PATH: Final = "/api/v1/generate/stream"

_REASONS: Final = {101: b"Switching Protocols", 200: b"OK", 400: b"Bad Request",
                   401: b"Unauthorized", 403: b"Forbidden", 404: b"Not Found",
                   405: b"Method Not Allowed", 413: b"Payload Too Large",
                   500: b"Internal Server Error", 503: b"Service Unavailable"}


def _error_body(code: ErrorCode, message: str) -> bytes:
    return json.dumps({"error": {"code": code, "message": message}}).encode()


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
        self._slot = GenerationSlot()
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def info(self) -> ModelInfo:
        if self._info is None:
            self._info = self.backend.model_info()
        return self._info

    async def start(self, sock: socket.socket | None = None) -> None:
        """Listen on host:port, or on `sock`, a socket already bound and listening (so a port is
        claimed before a model takes a minute to load)."""
        self.info()
        if sock is not None:
            self._server = await asyncio.start_server(self._on_connection, sock=sock, limit=MAX_HEAD)
        else:
            self._server = await asyncio.start_server(self._on_connection, self.host, self.port, limit=MAX_HEAD)
        self.port = int(self._server.sockets[0].getsockname()[1])

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

    async def __aenter__(self: _Server) -> _Server:
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
        await self._send(writer, conn, ERROR_STATUS[code] or 500, _error_body(code, message))

    async def _send_raw_error(self, writer: asyncio.StreamWriter, conn: h11.Connection,
                              status: int, message: str) -> None:
        if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
            status = status if status in _REASONS else 400
            code: ErrorCode = "PAYLOAD_TOO_LARGE" if status == 431 else "INVALID_REQUEST"
            with contextlib.suppress(h11.LocalProtocolError):
                body = _error_body(code, f"bad HTTP request: {message}")
                await self._send(writer, conn, ERROR_STATUS[code] or 500, body)

    def _password_refusal(self, request: h11.Request) -> str | None:
        """Why the request may not in (a missing or a wrong password), or None."""
        if not self.password:
            return None
        value = self._header(request, b"authorization")
        if not value:
            return _NO_PASSWORD
        scheme, _, token = value.partition(" ")
        # constant-time: the comparison must not tell an attacker how much of a guess was right
        right = scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), self.password.encode())
        return None if right else _WRONG_PASSWORD

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
        refused = self._password_refusal(request)
        if refused:
            await self._respond(writer, conn, "UNAUTHORIZED", refused)
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
        request = parse_body(TokenizeRequest, body)
        ids = self.backend.tokenize(request.text, request.add_special_tokens)
        pieces = [TokenPiece(token_id=t, piece=self.backend.token_bytes(t)) for t in ids]
        return TokenizeResponse(tokens=pieces, token_ids=ids, token_count=len(ids)).model_dump(mode="json")

    def _detokenize(self, body: bytes) -> Any:
        request = parse_body(DetokenizeRequest, body)
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
        refused = self._password_refusal(request)
        if refused:
            await self._respond(writer, conn, "UNAUTHORIZED", refused)
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
        context = GenerationContext(self.backend, self.info(), self._slot, self._model_thread, self.stats,
                                    self.faults)
        session = StreamSession(context, protocol, reader, writer)
        await session.flush()
        if response.status_code != 101:
            return
        if trailing:
            session.feed(trailing)
        await session.run()


