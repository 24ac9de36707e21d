"""How the command line reports a library error: one line on stderr, exit code 2.

The library's errors say what happened and, in `hint`, what to do in the library's terms; here
the hint becomes the command line's own (its flags and environment variables).
"""

from __future__ import annotations

import click

from halo_client.conversation.chat import ContextBudgetExceeded
from halo_client.conversation.session import SessionModelMismatch
from halo_client.errors import HaloError, RequestTimeout, ServerUnreachable, Unauthorized, joined
from halo_client.reference.model_store import ModelFetchError
from halo_client.serving.listen import PortTaken

#: the exit code of every failure a user can fix (bad input, no server, wrong password)
EXIT_USAGE = 2

_HINTS: tuple[tuple[type[HaloError], str], ...] = (
    (ServerUnreachable, "Start a server first: `halo-client serve` (reference model), `halo-client mock-server` "
                        "(test double), or a patched KoboldCPP (`make serve MODEL=…`); or pass --url / set HALO_URL."),
    (Unauthorized, "Pass --password (or set HALO_PASSWORD) with the server's --password."),
    (RequestTimeout, "The model may be loading or stuck: raise --timeout or check the server's console."),
    (ContextBudgetExceeded, "Shorten the message or the system prompt, or lower --max-length."),
    (ModelFetchError, "Check the network, or pass --model PATH of a GGUF file you have."),
    (SessionModelMismatch, "Use a server with that model, or load it anyway with --force-model."),
    (PortTaken, "Stop what uses it, or pass another --port (0: any free one)."),
)


def describe(error: HaloError) -> str:
    """The one line the command line prints for `error`."""
    hint = next((text for kind, text in _HINTS if isinstance(error, kind)), error.hint)
    return joined(error.message, hint)


def report(error: HaloError) -> None:
    click.echo(f"halo-client: {describe(error)}", err=True)
