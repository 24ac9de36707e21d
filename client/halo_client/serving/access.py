"""Who may talk to a local server: the `Host` and `Origin` rules of api_spec (H0, H2), sans I/O.

A server on `localhost` is reachable from every web page the user opens. Two attacks follow,
and one rule each answers them:

- **A foreign page** opens a WebSocket to `ws://localhost:5001` (browsers apply no CORS to
  WebSockets). Browsers always send `Origin`, so the server refuses origins other than its
  own and the ones the user allowed (H2).
- **DNS rebinding**: a page at `http://evil.example:5001` makes `evil.example` resolve to
  127.0.0.1; its requests then reach the server *same-origin*, with `Host: evil.example:5001`.
  Only the `Host` header tells, so the server accepts a Host only when it is a loopback name,
  an IP address, or a name the user allowed (H0). An IP address literal cannot be rebound (no
  DNS is involved), which keeps a server on a LAN address reachable by that address.

The KoboldCPP patch (`kobold_patch/src/halo_api/access.py`) implements the same rules with the
standard library only; the conformance suite checks both.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from urllib.parse import urlsplit


def host_name(host_header: str) -> str:
    """The name or address of a `Host` header: no port, no IPv6 brackets, lower case, no
    trailing dot."""
    value = host_header.strip().lower()
    if value.startswith("["):  # [v6]:port
        end = value.find("]")
        return value[1:end] if end > 0 else value
    if value.count(":") == 1:
        value = value.split(":", 1)[0]
    return value.rstrip(".")


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


class AccessPolicy:
    """The Host and Origin rules for one server.

    `allowed_hosts`: host names the user allowed besides loopback names and IP addresses
    (`--allowed-host`); the hosts of `allowed_origins` and the server's own bind name are
    allowed too. `allowed_origins`: browser origins allowed besides the server's own.
    """

    def __init__(self, *, allowed_hosts: Iterable[str] = (), allowed_origins: Iterable[str] = (),
                 bind_host: str = "") -> None:
        self.allowed_origins = frozenset(o.rstrip("/").lower() for o in allowed_origins)
        hosts = {host_name(h) for h in allowed_hosts if h.strip()}
        hosts |= {host_name(urlsplit(o).netloc) for o in self.allowed_origins if urlsplit(o).netloc}
        if bind_host and not _is_ip(host_name(bind_host)):
            hosts.add(host_name(bind_host))
        self.allowed_hosts = frozenset(hosts)

    def host_allowed(self, host_header: str | None) -> bool:
        """H0. No Host header (HTTP/1.0, not a browser) is allowed."""
        if host_header is None:
            return True
        name = host_name(host_header)
        if not name:
            return False
        return (name == "localhost" or name.endswith(".localhost") or _is_ip(name)
                or name in self.allowed_hosts)

    def origin_allowed(self, origin: str | None, host_header: str | None) -> bool:
        """H2. No Origin (not a browser) is allowed; so is the server's own origin (the
        request's Host, already checked by H0) and every allowed origin."""
        if origin is None:
            return True
        origin = origin.rstrip("/").lower()
        if origin in self.allowed_origins:
            return True
        host = (host_header or "").strip().lower()
        parts = urlsplit(origin)
        return parts.scheme in ("http", "https") and bool(host) and parts.netloc == host

    @staticmethod
    def host_refusal(host_header: str) -> str:
        return (f"Host {host_header!r} is not a loopback name or an IP address (a DNS-rebinding "
                "page looks like this); start the server with --allowed-host "
                f"{host_name(host_header) or 'NAME'} to allow it")

    @staticmethod
    def origin_refusal(origin: str) -> str:
        return f"Origin {origin} may not open this stream; start the server with --allowed-origin to allow it"
