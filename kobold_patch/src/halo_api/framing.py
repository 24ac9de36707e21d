"""RFC 6455 framing, without sockets: server frame headers, close payloads, the handshake's
accept key, and the reader that turns a client's byte stream into whole messages."""

from __future__ import annotations

import base64
import hashlib
import io
import struct
from typing import Any

MAX_MESSAGE = 4 * 1024 * 1024       # client -> server WebSocket message, after reassembly
WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


class ProtocolClose(Exception):
    """The connection must be closed with this WebSocket close code."""

    def __init__(self, code: int, reason: str) -> None:
        Exception.__init__(self, reason)
        self.code = code
        self.reason = reason


def frame_header(opcode: int, length: int, fin: bool = True) -> bytes:
    """RFC 6455 section 5.2 header of one unmasked server frame."""
    first = (0x80 if fin else 0) | opcode
    if length < 126:
        return struct.pack("!BB", first, length)
    if length < 65536:
        return struct.pack("!BBH", first, 126, length)
    return struct.pack("!BBQ", first, 127, length)


def close_payload(code: int, reason: str = "") -> bytes:
    return struct.pack("!H", code) + reason.encode("utf-8")[:123]


def accept_key(key: str) -> str:
    return base64.b64encode(hashlib.sha1(key.encode("ascii") + WS_GUID).digest()).decode("ascii")


#: what FrameReader.next_message returns: (kind, payload)
Message = tuple[str, Any]


class FrameReader:
    """Reads client frames from a binary file-like object and reassembles messages.

    `next_message()` returns ("text", str) / ("binary", bytes), ("ping", bytes), ("pong", bytes),
    ("close", (code, reason)) or None at EOF, and raises ProtocolClose on a violation: the caller
    closes with that code. Client frames must be masked (1002), messages are limited to
    `max_message` bytes (1009), text must be UTF-8 (1007).
    """

    def __init__(self, rfile: io.BufferedIOBase, max_message: int = MAX_MESSAGE) -> None:
        self.rfile = rfile
        self.max_message = max_message
        self._parts: list[bytes] = []
        self._size = 0
        self._opcode: int | None = None

    def _read(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = self.rfile.read(n - len(data))
            if not chunk:
                raise EOFError("connection closed")
            data += chunk
        return data

    def _frame(self) -> tuple[bool, int, bytes]:
        b0, b1 = self._read(2)
        fin, rsv, opcode = b0 & 0x80, b0 & 0x70, b0 & 0x0F
        masked, length = b1 & 0x80, b1 & 0x7F
        if rsv:
            raise ProtocolClose(1002, "reserved bits set without a negotiated extension")
        if opcode not in (0x0, 0x1, 0x2, 0x8, 0x9, 0xA):
            raise ProtocolClose(1002, f"unknown opcode {opcode}")
        if opcode >= 0x8 and (not fin or length > 125):
            raise ProtocolClose(1002, "control frames must be whole and at most 125 bytes")
        if not masked:
            raise ProtocolClose(1002, "client frames must be masked")
        if length == 126:
            (length,) = struct.unpack("!H", self._read(2))
        elif length == 127:
            (length,) = struct.unpack("!Q", self._read(8))
            if length >> 63:
                raise ProtocolClose(1002, "frame length has its most significant bit set")
        if opcode < 0x8 and self._size + length > self.max_message:
            raise ProtocolClose(1009, f"message larger than {self.max_message} bytes")
        mask = self._read(4)
        payload = self._read(length) if length else b""
        if length:
            # unmask through one big integer XOR: milliseconds even for a 4 MiB message
            key = (mask * (length // 4 + 1))[:length]
            payload = (int.from_bytes(payload, "big") ^ int.from_bytes(key, "big")).to_bytes(length, "big")
        return bool(fin), opcode, payload

    def next_message(self) -> Message | None:
        while True:
            try:
                fin, opcode, payload = self._frame()
            except EOFError:
                return None
            if opcode == 0x8:
                if len(payload) == 1:
                    raise ProtocolClose(1002, "close frame with a one-byte payload")
                if len(payload) >= 2:
                    (code,) = struct.unpack("!H", payload[:2])
                    try:
                        reason = payload[2:].decode("utf-8")
                    except UnicodeDecodeError:
                        raise ProtocolClose(1007, "close reason is not UTF-8") from None
                    if code < 1000 or code in (1004, 1005, 1006, 1015) or 1016 <= code < 3000 or code >= 5000:
                        raise ProtocolClose(1002, f"invalid close code {code}")
                    return "close", (code, reason)
                return "close", (1005, "")
            if opcode == 0x9:
                return "ping", payload
            if opcode == 0xA:
                return "pong", payload
            if opcode == 0x0:
                if self._opcode is None:
                    raise ProtocolClose(1002, "continuation frame without a message to continue")
            else:
                if self._opcode is not None:
                    raise ProtocolClose(1002, "new message before the fragmented one ended")
                self._opcode = opcode
            self._parts.append(payload)
            self._size += len(payload)
            if not fin:
                continue
            data = b"".join(self._parts)
            kind = self._opcode
            self._parts, self._size, self._opcode = [], 0, None
            if kind == 0x2:
                return "binary", data
            try:
                return "text", data.decode("utf-8")
            except UnicodeDecodeError:
                raise ProtocolClose(1007, "text message is not valid UTF-8") from None
