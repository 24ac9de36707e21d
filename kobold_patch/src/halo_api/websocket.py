"""The server side of one upgraded connection: a reader thread that answers pings and the close
handshake and hands text messages on, and locked writes from the generation's thread."""

from __future__ import annotations

import contextlib
import io
import json
import queue
import select
import socket
import threading
import time
from typing import Callable

from .framing import FrameReader, ProtocolClose, close_payload, frame_header

CLOSE_WAIT_S = 1.0


class WebSocket:
    """Server side of one upgraded connection: a reader thread and locked writes."""

    def __init__(self, sock: socket.socket, rfile: io.BufferedIOBase) -> None:
        self.sock = sock
        self.reader = FrameReader(rfile)
        self.messages: queue.Queue[str | None] = queue.Queue()
        self.gone = threading.Event()         # the client closed, vanished, or broke the protocol
        self.close_received = threading.Event()
        self.closed_sent = False
        self.abort_requested = False           # the client sent {"type": "abort"}
        # called from the reader thread with each text message; True: consumed
        self.on_message: Callable[[str], bool] | None = None
        self._write_lock = threading.Lock()
        self._thread = threading.Thread(target=self._read_loop, name="halo-ws-reader", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def send_raw(self, *parts: bytes | memoryview) -> bool:
        if self.gone.is_set() or self.closed_sent:
            return False
        try:
            with self._write_lock:
                for part in parts:
                    self.sock.sendall(part)
            return True
        except OSError:
            self._lost()
            return False

    def send_text(self, obj: object) -> bool:
        data = json.dumps(obj, separators=(",", ":")).encode("utf-8")
        return self.send_raw(frame_header(0x1, len(data)) + data)

    def close(self, code: int = 1000, reason: str = "") -> None:
        with self._write_lock:
            if self.closed_sent:
                return
            self.closed_sent = True
            payload = close_payload(code, reason)
            with contextlib.suppress(OSError):
                self.sock.sendall(frame_header(0x8, len(payload)) + payload)

    def wait_closed(self, timeout: float = CLOSE_WAIT_S + 0.5) -> None:
        """After our close frame: let the client's come back (or the reader finish draining),
        briefly, for a clean handshake."""
        deadline = time.monotonic() + timeout
        while not self.close_received.is_set() and self._thread.is_alive() and time.monotonic() < deadline:
            self.close_received.wait(0.02)

    def shutdown(self) -> None:
        """End the connection: unblocks the reader (the handler's rfile is shared with it, and
        KoboldCPP's handler closes that file once this returns)."""
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self._thread.join(1.0)

    def _lost(self) -> None:
        if not self.gone.is_set():
            self.gone.set()
            self.messages.put(None)

    def _read_loop(self) -> None:
        try:
            while True:
                msg = self.reader.next_message()
                if msg is None:
                    break
                kind, payload = msg
                if kind == "ping":
                    self.send_raw(frame_header(0xA, len(payload)) + payload)
                elif kind == "close":
                    code, _reason = payload
                    self.close_received.set()
                    self.close(1000 if code == 1005 else code)
                    break
                elif kind == "binary":
                    raise ProtocolClose(1003, "this endpoint accepts text messages only")
                elif kind == "text":
                    if self.on_message is not None and self.on_message(payload):
                        continue
                    self.messages.put(payload)
        except ProtocolClose as exc:
            self.close(exc.code, exc.reason)
            self._lost()
            self._drain()
        except (OSError, ValueError):
            pass
        finally:
            self._lost()

    def _drain(self, seconds: float = CLOSE_WAIT_S) -> None:
        """After a protocol error: read (and drop) what the client still sends, so that closing the
        socket sends FIN rather than a reset that could destroy our close frame in flight."""
        deadline = time.monotonic() + seconds
        try:
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                readable, _, _ = select.select([self.sock], [], [], left)
                if not readable or not self.sock.recv(65536):
                    break
        except (OSError, ValueError):
            pass
