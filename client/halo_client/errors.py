"""Every error halo_client raises derives from `HaloError`.

Messages say what happened, where (the server URL when there is one) and what to do, so a
CLI can print `str(error)` as its one line and a program can branch on the class.
"""

from __future__ import annotations


class HaloError(Exception):
    """Base of every error halo_client raises."""


class ServerUnreachable(HaloError):
    """Nothing answered at the server URL (refused, DNS failure, connection reset early)."""

    def __init__(self, url: str, detail: str = "") -> None:
        self.url = url
        hint = (
            "Start a server first: `halo-client serve` (reference model), "
            "`halo-client mock-server` (test double), or a patched KoboldCPP "
            "(`make serve MODEL=…`), or pass --url / set HALO_URL."
        )
        super().__init__(f"No Halo Weave server answered at {url}{f' ({detail})' if detail else ''}. {hint}")


class ProtocolError(HaloError):
    """The server sent something the contract does not allow (bad frame, bad JSON, wrong order).

    This is never the user's fault: it means the server and client disagree on `api_spec/`.
    """


class FrameError(ProtocolError):
    """A binary attention frame failed validation (truncated, wrong magic, dtype, or shape)."""


class ServerError(HaloError):
    """The server answered with a contract error body or an `error` message."""

    def __init__(self, code: str, message: str, url: str = "", status: int | None = None) -> None:
        self.code = code
        self.server_message = message
        self.url = url
        self.status = status
        where = f" from {url}" if url else ""
        super().__init__(f"{code}{where}: {message}")


class Unauthorized(ServerError):
    """The server has a password and the request did not carry the right one."""

    def __init__(self, message: str, url: str = "", status: int | None = 401) -> None:
        super().__init__("UNAUTHORIZED", f"{message} Pass --password (or HALO_PASSWORD) "
                         "with the server's --password.", url, status)


class ServerBusy(ServerError):
    """Another generation is running on the server; try again when it is done."""


class RequestTimeout(HaloError):
    """The server stopped answering for longer than the client's timeout."""

    def __init__(self, url: str, seconds: float, what: str) -> None:
        self.url = url
        self.seconds = seconds
        super().__init__(
            f"{url} did not answer {what} within {seconds:g} s. The model may be loading or "
            "stuck; raise the timeout (--timeout) or check the server's console."
        )
