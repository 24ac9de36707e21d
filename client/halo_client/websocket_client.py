"""The client side of the generation stream: RFC 6455, receiving each frame in place.

Why not a general WebSocket client: an attention frame is megabytes per token (28 layers x
28 heads x 4,096 columns of float32 is 12.8 MB), and a general client copies every message
two or three times on its way in (a growing receive buffer, a slice, a join). Here the socket
writes a large payload straight into the buffer that numpy then views, which is what keeps
the stream within reach of a raw socket (bench/bench_transport.py). Everything else a client
must do (masking, fragments, ping/pong, the close handshake, size limits) is done, and the
frame parser is sans-I/O so it is tested and fuzzed without sockets.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import os
import struct
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final
from urllib.parse import urlsplit

import numpy as np

OP_CONT: Final = 0x0
OP_TEXT: Final = 0x1
OP_BINARY: Final = 0x2
OP_CLOSE: Final = 0x8
OP_PING: Final = 0x9
OP_PONG: Final = 0xA
_GUID: Final = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
#: payloads at least this big are received in place rather than through the scratch buffer
DIRECT_THRESHOLD: Final = 64 * 1024
_SCRATCH: Final = 256 * 1024


class WebSocketClosed(Exception):
    """The connection ended; `code` is the close code received (1006: none, abnormal)."""

    def __init__(self, code: int, reason: str = "") -> None:
        super().__init__(f"{code}{': ' + reason if reason else ''}")
        self.code = code
        self.reason = reason


class HandshakeRefused(Exception):
    """The server answered the upgrade with an HTTP status other than 101."""

    def __init__(self, status: int, body: bytes) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status
        self.body = body


@dataclass(frozen=True)
class Message:
    opcode: int  # OP_TEXT or OP_BINARY
    data: bytes | bytearray | memoryview


@dataclass(frozen=True)
class Control:
    opcode: int  # OP_PING, OP_PONG or OP_CLOSE
    data: bytes


@dataclass(frozen=True)
class Failure:
    """The peer broke the protocol: close with `code`."""

    code: int
    reason: str


ParserEvent = Message | Control | Failure


class FrameParser:
    """Parses server-to-client frames incrementally, without I/O.

    Feed it with `get_buffer()` + `buffer_updated(n)` (the asyncio BufferedProtocol shape) or
    with `feed(data)`. Completed events accumulate in `events`. After a `Failure` it ignores
    all further input.
    """

    def __init__(self, max_size: int) -> None:
        self.max_size = max_size
        self.events: deque[ParserEvent] = deque()
        self._scratch = bytearray(_SCRATCH)
        self._pending = bytearray()
        self._direct: memoryview | None = None  # payload being received in place
        self._direct_pos = 0
        self._direct_head: tuple[int, bool] = (0, True)
        self._fragments: list[bytes | bytearray | memoryview] = []
        self._fragment_opcode: int | None = None
        self._fragment_size = 0
        self.failed = False

    def get_buffer(self) -> memoryview:
        if self._direct is not None:
            return memoryview(self._direct)[self._direct_pos :]
        return memoryview(self._scratch)

    def buffer_updated(self, nbytes: int) -> None:
        if self._direct is not None:
            self._advance_direct(nbytes)
        else:
            self.feed(memoryview(self._scratch)[:nbytes])

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        if self.failed:
            return
        if self._direct is not None:
            room = len(self._direct) - self._direct_pos
            head, rest = data[:room], data[room:]
            self._direct[self._direct_pos : self._direct_pos + len(head)] = head
            self._advance_direct(len(head))
            if rest:
                self.feed(rest)
            return
        self._pending += data
        self._parse_pending()

    def _advance_direct(self, nbytes: int) -> None:
        assert self._direct is not None
        self._direct_pos += nbytes
        if self._direct_pos == len(self._direct):
            payload, (opcode, fin) = self._direct, self._direct_head
            self._direct = None
            self._frame(opcode, fin, payload)
            self._parse_pending()  # nothing pending in direct mode, but keeps the invariant

    def _fail(self, code: int, reason: str) -> None:
        self.failed = True
        self._pending.clear()
        self.events.append(Failure(code, reason))

    def _parse_pending(self) -> None:
        buf = self._pending
        while not self.failed and len(buf) >= 2:
            b0, b1 = buf[0], buf[1]
            fin, rsv, opcode = bool(b0 & 0x80), b0 & 0x70, b0 & 0x0F
            masked, length = bool(b1 & 0x80), b1 & 0x7F
            head = 2
            if length == 126:
                if len(buf) < 4:
                    return
                (length,) = struct.unpack_from("!H", buf, 2)
                head = 4
            elif length == 127:
                if len(buf) < 10:
                    return
                (length,) = struct.unpack_from("!Q", buf, 2)
                head = 10
            if rsv:
                return self._fail(1002, "reserved bits set without a negotiated extension")
            if masked:
                return self._fail(1002, "a server must not mask its frames")
            if opcode >= 0x8:
                if opcode not in (OP_CLOSE, OP_PING, OP_PONG):
                    return self._fail(1002, f"unknown control opcode {opcode:#x}")
                if not fin or length > 125:
                    return self._fail(1002, "control frames are unfragmented and at most 125 bytes")
            elif opcode not in (OP_CONT, OP_TEXT, OP_BINARY):
                return self._fail(1002, f"unknown data opcode {opcode:#x}")
            if opcode < 0x8 and self._fragment_size + length > self.max_size:
                return self._fail(1009, f"message over the limit of {self.max_size} bytes")
            available = len(buf) - head
            if available >= length:
                payload = bytes(buf[head : head + length])
                del buf[: head + length]
                self._frame(opcode, fin, payload)
                continue
            if length >= DIRECT_THRESHOLD:
                # uninitialised: zero-filling megabytes that the socket overwrites costs as
                # much as receiving them
                self._direct = memoryview(np.empty(length, np.uint8))  # type: ignore[arg-type]
                self._direct[:available] = buf[head:]
                self._direct_pos = available
                self._direct_head = (opcode, fin)
                buf.clear()
            return

    def _frame(self, opcode: int, fin: bool, payload: bytes | bytearray | memoryview) -> None:
        if opcode >= 0x8:
            self.events.append(Control(opcode, bytes(payload)))
            return
        if opcode == OP_CONT:
            if self._fragment_opcode is None:
                return self._fail(1002, "continuation frame without a message to continue")
        elif self._fragment_opcode is not None:
            return self._fail(1002, "new message before the previous one was finished")
        else:
            self._fragment_opcode = opcode
        self._fragments.append(payload)
        self._fragment_size += len(payload)
        if not fin:
            return
        message_opcode = self._fragment_opcode
        data = self._fragments[0] if len(self._fragments) == 1 else b"".join(self._fragments)
        self._fragments, self._fragment_opcode, self._fragment_size = [], None, 0
        if message_opcode == OP_TEXT:
            try:
                bytes(data).decode("utf-8")
            except UnicodeDecodeError:
                return self._fail(1007, "text message is not valid UTF-8")
        self.events.append(Message(message_opcode, data))


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())


def mask_frame(opcode: int, payload: bytes, mask: bytes | None = None) -> bytes:
    """One complete client frame (clients must mask, RFC 6455 section 5.3)."""
    key = os.urandom(4) if mask is None else mask
    length = len(payload)
    if length < 126:
        head = struct.pack("!BB", 0x80 | opcode, 0x80 | length)
    elif length < 1 << 16:
        head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, length)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, length)
    data = np.frombuffer(payload, np.uint8)
    keys = np.resize(np.frombuffer(key, np.uint8), length)
    return head + key + (data ^ keys).tobytes()


def accept_key(key: str) -> str:
    return base64.b64encode(hashlib.sha1(key.encode() + _GUID).digest()).decode()


class StreamConnection(asyncio.BufferedProtocol):
    """One client WebSocket. Open with `connect()`; `recv()` gives str or bytearray."""

    #: stop reading from the socket while this many bytes of messages wait for the consumer
    HIGH_WATER: Final = 16 * 1024 * 1024

    def __init__(self, request: bytes, key: str, max_size: int) -> None:
        self._request = request
        self._key = key
        self._parser = FrameParser(max_size)
        self._transport: asyncio.Transport | None = None
        self._handshake = bytearray()
        self._handshake_scratch = bytearray(4096)
        self._opened: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._messages: deque[str | bytes | bytearray | memoryview] = deque()
        self._queued = 0
        self._paused = False
        self._waiter: asyncio.Future[None] | None = None
        self._closed: WebSocketClosed | None = None
        self._close_sent = False
        self._refused: tuple[int, int, bytes] | None = None  # status, content-length, body

    # ---------------------------------------------------------------- asyncio protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        transport.write(self._request)

    def get_buffer(self, sizehint: int) -> memoryview:
        if not self._opened.done() or self._refused is not None:
            return memoryview(self._handshake_scratch)
        return self._parser.get_buffer()

    def buffer_updated(self, nbytes: int) -> None:
        if not self._opened.done() or self._refused is not None:
            self._handshake_data(bytes(self._handshake_scratch[:nbytes]))
            return
        self._parser.buffer_updated(nbytes)
        self._dispatch()

    def eof_received(self) -> bool | None:
        return None  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._opened.done():
            if self._refused is not None:
                status, _length, body = self._refused
                self._opened.set_exception(HandshakeRefused(status, body))
            else:
                self._opened.set_exception(ConnectionError("connection closed during the upgrade"))
        if self._closed is None:
            self._closed = WebSocketClosed(1006, "connection lost without a close frame")
        self._wake()

    # --------------------------------------------------------------------- handshake

    def _handshake_data(self, data: bytes) -> None:
        self._handshake += data
        if self._refused is not None:
            status, length, _ = self._refused
            body = bytes(self._handshake)
            self._refused = (status, length, body)
            if len(body) >= length and self._transport is not None:
                self._transport.close()
            return
        end = self._handshake.find(b"\r\n\r\n")
        if end < 0:
            if len(self._handshake) > 64 * 1024:
                self._opened.set_exception(ConnectionError("upgrade response head too large"))
                self._abort()
            return
        head = bytes(self._handshake[:end]).decode("latin-1").split("\r\n")
        rest = bytes(self._handshake[end + 4 :])
        self._handshake.clear()
        try:
            status = int(head[0].split(" ", 2)[1])
        except (IndexError, ValueError):
            self._opened.set_exception(ConnectionError(f"not an HTTP response: {head[0]!r}"))
            self._abort()
            return
        headers = {}
        for line in head[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if status != 101:
            length = int(headers.get("content-length", "0") or 0)
            self._refused = (status, length, b"")
            self._handshake_data(rest)
            return
        if (headers.get("upgrade", "").lower() != "websocket"
                or headers.get("sec-websocket-accept") != accept_key(self._key)):
            self._opened.set_exception(ConnectionError("the server's 101 answer is not a WebSocket upgrade"))
            self._abort()
            return
        self._opened.set_result(None)
        if rest:
            self._parser.feed(rest)
            self._dispatch()

    # ------------------------------------------------------------------------ frames

    def _dispatch(self) -> None:
        events = self._parser.events
        while events:
            event = events.popleft()
            if isinstance(event, Message):
                data: str | bytes | bytearray | memoryview = (
                    bytes(event.data).decode("utf-8") if event.opcode == OP_TEXT else event.data
                )
                self._messages.append(data)
                self._queued += len(event.data)
                if self._queued > self.HIGH_WATER and not self._paused and self._transport:
                    self._transport.pause_reading()
                    self._paused = True
            elif isinstance(event, Control):
                if event.opcode == OP_PING:
                    self._write(mask_frame(OP_PONG, event.data))
                elif event.opcode == OP_CLOSE:
                    code, reason = 1005, ""
                    if len(event.data) >= 2:
                        (code,) = struct.unpack_from("!H", event.data)
                        reason = event.data[2:].decode("utf-8", "replace")
                    self._closed = WebSocketClosed(code, reason)
                    if not self._close_sent:
                        self._close_sent = True
                        self._write(mask_frame(OP_CLOSE, event.data[:2]))
                    if self._transport is not None:
                        self._transport.close()
            else:
                self._closed = WebSocketClosed(event.code, event.reason)
                self._close_sent = True
                self._write(mask_frame(OP_CLOSE, struct.pack("!H", event.code) + event.reason.encode()))
                if self._transport is not None:
                    self._transport.close()
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _write(self, data: bytes) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(data)

    def _abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    # ------------------------------------------------------------------------ public

    async def wait_open(self) -> None:
        await self._opened

    async def recv(self, timeout: float | None = None) -> str | bytes | bytearray | memoryview:
        """The next message; TimeoutError after `timeout` seconds without one."""
        if not self._messages:
            # Only wait when nothing is queued: a token's frame is usually already here when
            # its token message is taken. One future and one timer, no task: this runs for
            # every token.
            await self._wait(lambda: bool(self._messages), timeout)
        data = self._messages.popleft()
        self._queued -= len(data)
        if self._paused and self._queued < self.HIGH_WATER // 2 and self._transport:
            self._transport.resume_reading()
            self._paused = False
        return data

    async def _wait(self, ready: Callable[[], bool], timeout: float | None,
                    raise_closed: bool = True) -> None:
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while not ready():
            if self._closed is not None:
                if raise_closed:
                    raise self._closed
                return
            waiter = self._waiter = loop.create_future()
            timer = None if deadline is None else loop.call_at(deadline, _expire, waiter)
            try:
                await waiter
            finally:
                if timer is not None:
                    timer.cancel()

    async def send_text(self, text: str) -> None:
        self._write(mask_frame(OP_TEXT, text.encode("utf-8")))

    async def close(self, code: int = 1000, timeout: float = 2.0) -> None:
        """The close handshake: send ours, wait briefly for the server's, then drop the socket."""
        if self._transport is None or self._transport.is_closing():
            return
        if not self._close_sent:
            self._close_sent = True
            self._write(mask_frame(OP_CLOSE, struct.pack("!H", code)))
        self._messages.clear()
        if self._paused:
            self._transport.resume_reading()  # the server's close frame must get through
            self._paused = False
        with contextlib.suppress(TimeoutError):
            await self._wait(lambda: self._closed is not None, timeout, raise_closed=False)
        self._transport.close()


async def connect(url: str, *, headers: dict[str, str], max_size: int, timeout: float) -> StreamConnection:
    """Open a WebSocket to `url` (ws:// only: the stream runs on the local network)."""
    parts = urlsplit(url)
    if parts.scheme != "ws":
        raise ConnectionError(f"only ws:// URLs are supported for the stream, not {parts.scheme}://")
    host, port = parts.hostname or "localhost", parts.port or 80
    key = base64.b64encode(os.urandom(16)).decode()
    lines = [
        f"GET {parts.path or '/'} HTTP/1.1",
        f"Host: {parts.netloc}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
    ] + [f"{name}: {value}" for name, value in headers.items()]
    request = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    loop = asyncio.get_running_loop()

    async def open_connection() -> StreamConnection:
        _transport, connection = await loop.create_connection(
            lambda: StreamConnection(request, key, max_size), host, port
        )
        try:
            await connection.wait_open()
        except BaseException:
            _transport.abort()
            raise
        return connection

    return await asyncio.wait_for(open_connection(), timeout)
