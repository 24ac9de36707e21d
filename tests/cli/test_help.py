"""Every option of every command says what it does (`halo-client COMMAND --help`)."""

from __future__ import annotations

from collections.abc import Iterator

import click

from halo_client.cli import main


def commands(group: click.Group, path: str = "halo-client") -> Iterator[tuple[str, click.Command]]:
    for name, command in group.commands.items():
        yield f"{path} {name}", command
        if isinstance(command, click.Group):
            yield from commands(command, f"{path} {name}")


def test_every_option_of_every_command_has_help() -> None:
    missing = [f"{path} {'/'.join(param.opts)}" for path, command in commands(main) for param in command.params
               if isinstance(param, click.Option) and not param.hidden and not (param.help or "").strip()]
    assert missing == []
