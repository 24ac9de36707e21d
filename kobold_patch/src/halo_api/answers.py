"""HTTP answers written whole, on KoboldCPP's shared request handler, and reading request bodies.

KoboldCPP's handler is shared: each of its server threads builds ONE handler object and serves
every request of every connection it accepts with it, speaking HTTP/1.0 (its answers end when
the connection closes; many carry no Content-Length). So nothing here may leave state on the
handler that outlives one request, `protocol_version` above all: these answers are written
whole (status line included), each with a Content-Length and `Connection: close`, and leave
`close_connection` True, as KoboldCPP's HTTP/1.0 handling always does.
"""

from __future__ import annotations

import http
import json
from http.server import BaseHTTPRequestHandler

from .validation import Rejected

MAX_BODY = 4 * 1024 * 1024          # REST request bodies
MAX_DRAIN = 64 * 1024 * 1024        # an oversized body is read (and dropped) up to this size

STATUS = {"INVALID_REQUEST": 400, "INVALID_TOKEN": 400, "CONTEXT_OVERFLOW": 400, "ATTENTION_UNAVAILABLE": 400,
          "UNAUTHORIZED": 401, "ORIGIN_NOT_ALLOWED": 403, "HOST_NOT_ALLOWED": 403, "NOT_FOUND": 404,
          "PAYLOAD_TOO_LARGE": 413, "INTERNAL": 500, "BUSY": 503}


def send_json(handler: BaseHTTPRequestHandler, status: int, obj: object) -> None:
    """One whole answer, after which the connection ends.

    The status line is written here, not by handler.send_response, which writes the handler's
    protocol_version (HTTP/1.0 in KoboldCPP): WebSocket clients refuse an upgrade answered with an
    HTTP/1.0 status line, even a refusal. HTTP/1.1 with a Content-Length and `Connection: close`
    is a complete answer to an HTTP/1.0 and an HTTP/1.1 client alike. Nothing on the handler
    changes but close_connection, set True (as KoboldCPP's HTTP/1.0 handling leaves it for every
    request), so the connection ends and its server thread is free for the next one.
    """
    body = json.dumps(obj).encode("utf-8")
    head = (f"HTTP/1.1 {status} {http.HTTPStatus(status).phrase}\r\n"
            f"Server: {handler.version_string()}\r\n"
            f"Date: {handler.date_time_string()}\r\n"
            "Content-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n"
            "Connection: close\r\n"
            # as on KoboldCPP's own answers (and the project's servers): any page may read these
            "Access-Control-Allow-Origin: *\r\n"
            "Cache-Control: no-store\r\n\r\n")
    handler.close_connection = True
    handler.log_request(status)  # KoboldCPP's log_message: printed with --debugmode only
    handler.wfile.write(head.encode("latin-1") + body)
    handler.wfile.flush()


def send_error(handler: BaseHTTPRequestHandler, code: str, message: str) -> None:
    send_json(handler, STATUS[code], {"error": {"code": code, "message": message}})


def discard(handler: BaseHTTPRequestHandler, length: int) -> None:
    """Read and drop a body the answer does not need, so that the client reads the answer rather
    than a reset (closing a socket with unread data sends RST)."""
    left = length
    while left > 0:
        chunk = handler.rfile.read(min(left, 1 << 20))
        if not chunk:
            break
        left -= len(chunk)


def content_length(handler: BaseHTTPRequestHandler) -> int:
    value = handler.headers.get("content-length")
    try:
        length = int(value) if value is not None else 0
    except ValueError:
        raise Rejected("INVALID_REQUEST", "bad content-length header") from None
    if length < 0:
        raise Rejected("INVALID_REQUEST", "bad content-length header")
    return length


def read_body(handler: BaseHTTPRequestHandler) -> bytes:
    length = content_length(handler)
    if length > MAX_BODY:
        if length <= MAX_DRAIN:
            discard(handler, length)
        raise Rejected("PAYLOAD_TOO_LARGE", f"request bodies are limited to {MAX_BODY} bytes")
    return handler.rfile.read(length) if length else b""


def is_upgrade(handler: BaseHTTPRequestHandler) -> bool:
    return (handler.headers.get("Upgrade") or "").strip().lower() == "websocket"
