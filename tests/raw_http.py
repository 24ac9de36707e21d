"""HTTP over a raw socket, byte for byte: what an HTTP client library hides (keep-alive, an
answer that never ends, the exact status line and headers).

KoboldCPP speaks HTTP/1.0: many of its answers carry no Content-Length and end when it closes
the connection. So an answer is complete when the server closes, and `exchange` waits for that,
within a deadline.
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class Answer:
    status_line: str
    #: (name in lower case, value), in the order sent, without Date (it changes every second)
    headers: tuple[tuple[str, str], ...]
    body: bytes
    seconds: float

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k == name.lower()), None)

    def same_as(self, other: Answer) -> bool:
        return (self.status_line, self.headers, self.body) == (other.status_line, other.headers, other.body)


class Unfinished(AssertionError):
    """The server did not end its answer (close the connection) within the deadline."""


def request(method: str, path: str, *, host: str = "127.0.0.1", headers: dict[str, str] | None = None,
            body: bytes = b"", version: str = "HTTP/1.1") -> bytes:
    lines = [f"{method} {path} {version}", f"Host: {host}"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    if body or method in ("POST", "PUT"):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def parse(data: bytes, seconds: float) -> Answer:
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        raise AssertionError(f"not an HTTP answer: {data[:200]!r}")
    lines = head.decode("latin-1").split("\r\n")
    headers = []
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.lower() != "date":
            headers.append((name.strip().lower(), value.strip()))
    return Answer(lines[0], tuple(headers), body, seconds)


def read_to_close(sock: socket.socket, deadline_s: float, sent: bytes = b"") -> bytes:
    started = time.monotonic()
    data = b""
    while True:
        left = deadline_s - (time.monotonic() - started)
        if left <= 0:
            raise Unfinished(f"no end of the answer within {deadline_s} s to {sent[:60]!r}; got {data[:300]!r}")
        sock.settimeout(left)
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            continue
        except ConnectionResetError:
            break
        if not chunk:
            return data
        data += chunk
    return data


def exchange(port: int, raw: bytes, *, deadline_s: float = 1.0, address: str = "127.0.0.1") -> Answer:
    """Send `raw` on a new connection and read the whole answer: until the server closes."""
    started = time.monotonic()
    with socket.create_connection((address, port), timeout=deadline_s) as sock:
        sock.sendall(raw)
        data = read_to_close(sock, deadline_s, raw)
    return parse(data, time.monotonic() - started)


def read_answer(sock: socket.socket, deadline_s: float = 5.0) -> Answer:
    """One answer that carries a Content-Length, read without waiting for the server to close
    (as a keep-alive client reads it); the socket stays open."""
    started = time.monotonic()
    sock.settimeout(deadline_s)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    answer = parse(data, 0.0)
    length = int(answer.header("content-length") or 0)
    body = answer.body
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return Answer(answer.status_line, answer.headers, body, time.monotonic() - started)
