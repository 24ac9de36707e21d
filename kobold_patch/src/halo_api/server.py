"""The endpoints for one KoboldCPP process: routing, the REST answers and the WebSocket upgrade.

Each request is answered on KoboldCPP's own handler object (answers.py says why nothing may stay
on it); an upgraded connection is handed to a `StreamSession` (stream.py) on the same thread.
"""

from __future__ import annotations

import base64
import contextlib
import socket
import threading
from http.server import BaseHTTPRequestHandler
from typing import Any

from .access import AccessPolicy, check_password
from .answers import MAX_DRAIN, content_length, discard, is_upgrade, read_body, send_error, send_json
from .backend import KoboldBackend
from .framing import accept_key
from .slot import GenerationSlot
from .stream import StreamSession
from .stream import send_error as send_stream_error
from .validation import Rejected, parse_detokenize_request, parse_tokenize_request
from .websocket import WebSocket

STREAM_PATH = "/api/v1/generate/stream"
PATHS = ("/api/v1/model/info", "/api/v1/tokenize", "/api/v1/detokenize", STREAM_PATH)


class HaloServer:
    """The contract's endpoints for one KoboldCPP process (one model, generations serialized)."""

    def __init__(self, kcpp: Any, backend: Any = None) -> None:
        self.kcpp = kcpp
        self.backend = backend if backend is not None else KoboldBackend(kcpp)
        self.slot = GenerationSlot(kcpp.modelbusy, self.backend.generation_finished)
        args = getattr(kcpp, "args", None)
        self.access = AccessPolicy(allowed_hosts=getattr(args, "allowed_host", None) or (),
                                   allowed_origins=getattr(args, "allowed_origin", None) or (),
                                   bind_host=getattr(args, "host", None) or "")

    def require_password(self, handler: BaseHTTPRequestHandler) -> None:
        check_password(handler.headers.get("Authorization"), getattr(self.kcpp, "password", "") or "")

    def serve(self, handler: BaseHTTPRequestHandler, method: str) -> None:
        path = handler.path.split("?", 1)[0].rstrip("/")
        handler.close_connection = True
        try:
            host = handler.headers.get("Host")
            if not self.access.host_allowed(host):  # H0, before anything else
                if method == "POST":
                    length = content_length(handler)
                    if length <= MAX_DRAIN:
                        discard(handler, length)
                raise Rejected("HOST_NOT_ALLOWED", self.access.host_refusal(host or ""))
            if path == STREAM_PATH and method == "GET" and is_upgrade(handler):
                self.upgrade(handler)
                return
            body = read_body(handler) if method == "POST" else b""
            self.require_password(handler)
            if path == STREAM_PATH:
                raise Rejected("INVALID_REQUEST", f"{STREAM_PATH} is a WebSocket: connect with a WebSocket client")
            want = "GET" if path == "/api/v1/model/info" else "POST"
            if method != want:
                raise Rejected("INVALID_REQUEST", f"{path} takes {want}, not {method}")
            result: dict[str, Any]
            if path == "/api/v1/model/info":
                result = self.backend.model_info()
            elif path == "/api/v1/tokenize":
                text, add = parse_tokenize_request(body)
                self.backend.model_info()
                ids = self.backend.tokenize(text, add)
                pieces = self.backend.pieces()
                tokens = [{"token_id": t, "piece": base64.b64encode(pieces[t]).decode("ascii")} for t in ids]
                result = {"tokens": tokens, "token_ids": ids, "token_count": len(ids)}
            else:
                ids = parse_detokenize_request(body, self.backend.model_info()["vocab_size"])
                pieces = self.backend.pieces()
                result = {"text": b"".join(pieces[t] for t in ids).decode("utf-8", "replace")}
            send_json(handler, 200, result)
        except Rejected as exc:
            with contextlib.suppress(OSError):
                send_error(handler, exc.code, exc.message)
        except OSError:
            pass  # the client is gone
        except Exception as exc:  # the contract answers every failure with a body
            with contextlib.suppress(OSError):
                send_error(handler, "INTERNAL", f"{type(exc).__name__}: {exc}")
        finally:
            handler.close_connection = True

    def upgrade(self, handler: BaseHTTPRequestHandler) -> None:
        headers = handler.headers
        self.require_password(handler)
        origin = headers.get("Origin")
        if not self.access.origin_allowed(origin, headers.get("Host")):
            raise Rejected("ORIGIN_NOT_ALLOWED", self.access.origin_refusal(origin or ""))
        connection = [t.strip().lower() for t in (headers.get("Connection") or "").split(",")]
        key = (headers.get("Sec-WebSocket-Key") or "").strip()
        try:
            key_ok = len(base64.b64decode(key, validate=True)) == 16
        except ValueError:
            key_ok = False
        if "upgrade" not in connection or (headers.get("Sec-WebSocket-Version") or "").strip() != "13" or not key_ok:
            raise Rejected("INVALID_REQUEST", "not a valid WebSocket upgrade (RFC 6455: Connection: Upgrade, "
                           "Sec-WebSocket-Version: 13, a 16-byte Sec-WebSocket-Key)")
        sock = handler.connection
        # the 101 is HTTP/1.1 by definition; written here, like every answer of this package
        response = ("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                    f"Sec-WebSocket-Accept: {accept_key(key)}\r\n\r\n").encode("ascii")
        handler.log_request(101)
        handler.wfile.flush()
        sock.sendall(response)
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(None)
        ws = WebSocket(sock, handler.rfile)
        ws.start()
        try:
            StreamSession(ws, self.backend, self.slot).run()
        except Exception as exc:  # after the 101 only a WebSocket message can say it
            send_stream_error(ws, "INTERNAL", f"{type(exc).__name__}: {exc}")
        finally:
            ws.wait_closed()
            ws.shutdown()


_servers: dict[int, HaloServer] = {}
_servers_lock = threading.Lock()


def serve(handler: BaseHTTPRequestHandler, method: str, kcpp: Any) -> None:
    """Entry point from koboldcpp.py's do_GET/do_POST for the paths in PATHS."""
    with _servers_lock:
        server = _servers.get(id(kcpp))
        if server is None:
            server = _servers[id(kcpp)] = HaloServer(kcpp)
    server.serve(handler, method)
