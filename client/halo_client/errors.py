"""Every error halo_client raises derives from `HaloError`.

An error's `message` says what happened and where (the server URL when there is one); its
`hint` says what to do about it in the library's own terms (a constructor argument, a server
setting). `str(error)` is both, one line. A command-line front end renders the message with
hints of its own (its flags and environment variables): see `halo_client.cli.errors`.
"""

from __future__ import annotations

from halo_client.messages import ErrorCode


class HaloError(Exception):
    """Base of every error halo_client raises."""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return joined(self.message, self.hint)


def joined(message: str, hint: str) -> str:
    """`message` and `hint` as one line of sentences."""
    if not hint:
        return message
    return f"{message}{'' if message.rstrip().endswith(('.', '!', '?')) else '.'} {hint}"


class ServerUnreachable(HaloError):
    """Nothing answered at the server URL (refused, DNS failure, connection reset early)."""

    def __init__(self, url: str, detail: str = "") -> None:
        self.url = url
        super().__init__(f"No Halo Weave server answered at {url}{f' ({detail})' if detail else ''}.",
                         "Start one (a patched KoboldCPP, or halo_client's reference or mock server) or use "
                         "another URL.")


class ProtocolError(HaloError):
    """The server sent something the contract does not allow (bad frame, bad JSON, wrong order).

    This is never the user's fault: it means the server and client disagree on `api_spec/`.
    """


class FrameError(ProtocolError):
    """A binary attention frame failed validation (truncated, wrong magic, dtype, or shape)."""


class ServerError(HaloError):
    """The server answered with a contract error body or an `error` message."""

    def __init__(self, code: ErrorCode, message: str, url: str = "", status: int | None = None,
                 hint: str = "") -> None:
        self.code: ErrorCode = code
        self.server_message = message
        self.url = url
        self.status = status
        where = f" from {url}" if url else ""
        super().__init__(f"{code}{where}: {message}", hint)


class Unauthorized(ServerError):
    """The server has a password and the request did not carry the right one."""

    def __init__(self, message: str, url: str = "", status: int | None = 401) -> None:
        super().__init__("UNAUTHORIZED", message, url, status,
                         hint="Give the client the server's password (KoboldCPP's --password).")


class ServerBusy(ServerError):
    """Another generation is running on the server; try again when it is done."""


class RequestTimeout(HaloError):
    """The server stopped answering for longer than the client's timeout."""

    def __init__(self, url: str, seconds: float, what: str) -> None:
        self.url = url
        self.seconds = seconds
        super().__init__(f"{url} did not answer {what} within {seconds:g} s.",
                         "The model may be loading or stuck: raise the client's timeout or check the "
                         "server's console.")
