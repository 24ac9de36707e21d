"""Who may use the endpoints: the Host rule H0, the browser Origin rule H2 and the password.

The same rules, in the same words, as halo_client/serving/access.py and server.py, which this
standard-library-only package cannot import (tests/kobold_patch checks that both answer alike).
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Iterable
from urllib.parse import urlsplit

from .validation import Rejected

NO_PASSWORD = "This server has a password, and the request carried none (Authorization: Bearer <password>)."
WRONG_PASSWORD = "The password is wrong."


def check_password(authorization: str | None, password: str) -> None:
    """`UNAUTHORIZED` for a missing or a wrong password, each saying which; nothing without one."""
    if not password:
        return
    if not authorization:
        raise Rejected("UNAUTHORIZED", NO_PASSWORD)
    scheme, _, token = authorization.partition(" ")
    # constant time: the comparison must not tell how much of a guess was right
    right = scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode("utf-8"), password.encode("utf-8"))
    if not right:
        raise Rejected("UNAUTHORIZED", WRONG_PASSWORD)


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
    """H0: a Host must be `localhost`, `*.localhost`, an IP address literal (no DNS, so no
    rebinding; KoboldCPP reached by its LAN address keeps working), the name KoboldCPP binds
    (`--host`), an `--allowed-host` name or the host of an `--allowed-origin`; a request without
    Host (HTTP/1.0) passes. H2: a browser Origin must be the server's own or an allowed one."""

    def __init__(self, *, allowed_hosts: Iterable[str] = (), allowed_origins: Iterable[str] = (),
                 bind_host: str = "") -> None:
        self.allowed_origins = frozenset(o.rstrip("/").lower() for o in allowed_origins)
        hosts = {host_name(h) for h in allowed_hosts if h.strip()}
        hosts |= {host_name(urlsplit(o).netloc) for o in self.allowed_origins if urlsplit(o).netloc}
        if bind_host and not _is_ip(host_name(bind_host)):
            hosts.add(host_name(bind_host))
        self.allowed_hosts = frozenset(hosts)

    def host_allowed(self, host_header: str | None) -> bool:
        if host_header is None:
            return True
        name = host_name(host_header)
        if not name:
            return False
        return (name == "localhost" or name.endswith(".localhost") or _is_ip(name)
                or name in self.allowed_hosts)

    def origin_allowed(self, origin: str | None, host_header: str | None) -> bool:
        if origin is None:
            return True  # not a browser: browsers always send Origin with a WebSocket upgrade
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
