"""A deliberately minimal WebSocket client on a raw socket, for sending what a polite client
library refuses to send (unmasked frames, lying length fields) and reading the server's close."""

from __future__ import annotations

import base64
import contextlib
import os
import socket
import struct


def open_stream(port: int, path: str = "/api/v1/generate/stream", headers: str = "",
                host: str = "127.0.0.1", host_header: str | None = None) -> socket.socket:
    """A socket past the 101; a refused upgrade raises ConnectionError with the server's answer."""
    sock = socket.create_connection((host, port), timeout=10)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        f"GET {path} HTTP/1.1\r\nHost: {host_header or f'{host}:{port}'}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
        f"{headers}\r\n".encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(1)
        if not chunk:
            raise ConnectionError("closed during handshake")
        head += chunk
    if not head.startswith(b"HTTP/1.1 101"):
        sock.settimeout(2)
        with contextlib.suppress(OSError):
            while chunk := sock.recv(65536):
                head += chunk
        sock.close()
        raise ConnectionError(head.decode(errors="replace"))
    return sock


def frame(opcode: int, payload: bytes, *, fin: bool = True, masked: bool = True,
          claimed_length: int | None = None) -> bytes:
    length = len(payload) if claimed_length is None else claimed_length
    out = bytes([(0x80 if fin else 0) | opcode])
    mask_bit = 0x80 if masked else 0
    if length < 126:
        out += bytes([mask_bit | length])
    elif length < 65536:
        out += bytes([mask_bit | 126]) + struct.pack("!H", length)
    else:
        out += bytes([mask_bit | 127]) + struct.pack("!Q", length)
    if masked:
        mask = os.urandom(4)
        out += mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    else:
        out += payload
    return out


def read_frames(sock: socket.socket) -> list[tuple[int, bytes]]:
    """Every frame the server sends until it closes the connection."""
    data = b""
    try:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    except (ConnectionResetError, TimeoutError):
        pass
    frames = []
    i = 0
    while i + 2 <= len(data):
        opcode = data[i] & 0x0F
        length = data[i + 1] & 0x7F
        i += 2
        if length == 126:
            (length,) = struct.unpack_from("!H", data, i)
            i += 2
        elif length == 127:
            (length,) = struct.unpack_from("!Q", data, i)
            i += 8
        frames.append((opcode, data[i : i + length]))
        i += length
    return frames


def close_code(frames: list[tuple[int, bytes]]) -> int | None:
    for opcode, payload in frames:
        if opcode == 0x8 and len(payload) >= 2:
            return int(struct.unpack_from("!H", payload)[0])
    return None
