"""The settings file (halo_client/config.py) as the command line's defaults.

click's `default_map` gives an option a default from outside the command line: flags still win,
then the settings file, then each option's own default. Only what the file sets is mapped (it
holds only what differs from the defaults), so e.g. `generate` keeps its shorter `--max-length`
unless the user chose one.
"""

from __future__ import annotations

from typing import Any

from halo_client.config import Config

#: the tracker's and pruner's options (cli/options.py) -> (section of the file, field)
_TUNING = {
    "max_context_tokens": ("pruner", "max_context_tokens"),
    "granularity": ("pruner", "granularity"),
    "protect_exchanges": ("pruner", "protect_exchanges"),
    "recent_share": ("pruner", "recent_share"),
    **{name: ("tracker", name) for name in ("aggregation", "distance_mode", "min_distance", "distance_scale",
                                            "accumulation", "decay", "boost")},
}
#: the options whose settings a saved session keeps: a flag typed for a resumed chat wins over them
SESSION_OPTIONS: dict[str, tuple[str, str]] = {**_TUNING, "memory": ("memory", "enabled")}
#: command -> option -> (section, field); section None: a top-level field of the file
_CHAT = {**_TUNING, "max_length": ("sampler", "max_length"), "temperature": ("sampler", "temperature"),
         "system": (None, "system_prompt"), "scale": ("view", "scale"),
         "memory": ("memory", "enabled")}
_OPTIONS: dict[str, dict[str, tuple[str | None, str]]] = {
    "chat": _CHAT,
    "demo": _CHAT,
    "generate": {**_TUNING, "max_length": ("sampler", "max_length"), "temperature": ("sampler", "temperature"),
                 "seed": ("sampler", "sampler_seed")},
}


def default_map(config: Config) -> dict[str, dict[str, Any]]:
    """`{command: {option: value}}` for what `config` sets."""
    chosen = config.model_dump(exclude_defaults=True)
    commands: dict[str, dict[str, Any]] = {}
    for command, options in _OPTIONS.items():
        values = {}
        for option, (section, field) in options.items():
            source = chosen if section is None else chosen.get(section, {})
            if field in source:
                values[option] = source[field]
        if values:
            commands[command] = values
    return commands
