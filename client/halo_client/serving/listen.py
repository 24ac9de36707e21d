"""Claiming a port before a server has anything to serve.

A model takes seconds to a minute to load; a server that bound its port only afterwards would
report a taken port (KoboldCPP's 5001 often is) only then. `claim_port` binds and listens at
once, and `ContractServer.start(sock)` serves on that socket later.
"""

from __future__ import annotations

import errno
import socket

from halo_client.errors import HaloError


class PortTaken(HaloError):
    """The port a server was asked to listen on cannot be had."""


def claim_port(host: str, port: int) -> socket.socket:
    """A socket bound to host:port and listening (port 0: a free one)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise PortTaken(f"cannot listen on {host}:{port}: {exc.strerror}") from exc
    family, kind, proto, _name, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError as exc:
        sock.close()
        why = "it is in use (a KoboldCPP or another server?)" if exc.errno == errno.EADDRINUSE else exc.strerror
        raise PortTaken(f"cannot listen on {host}:{port}: {why}",
                        "Stop what uses it, or choose another port (0: any free one).") from exc
    sock.setblocking(False)
    return sock
