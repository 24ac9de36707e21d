"""`halo-client`: talk to a Halo Weave server from the terminal.

Commands live in modules of their own (`commands`, `chat_command`, `servers`, `evaluate`);
what they print is drawn by `render`, and every library error becomes one line and exit code 2
in one place (`errors`).
"""

from halo_client.cli import chat_command, commands, evaluate, servers, ui_command  # noqa: F401  (they register their commands)
from halo_client.cli.app import main

__all__ = ["main"]
