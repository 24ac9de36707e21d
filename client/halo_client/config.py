"""The settings file: one JSON file of the user's defaults that the command line and the
workbench both read, and the workbench writes.

Where: `$HALO_CONFIG` if set, else `$XDG_CONFIG_HOME/halo-weave/settings.json`, else
`~/.config/halo-weave/settings.json`. A missing file means the defaults. The file holds only
what differs from the defaults, and is validated with the very models the chat runs on
(`TrackerSettings`, `PrunerSettings`, `MemorySettings` and `SamplerSettings`, whose ranges are the contract's
`GenerateRequest` ones), so a value the command line would refuse is refused in the file too:
a damaged or out-of-range file is a `ConfigError` naming the file and the field, and it is never
overwritten by a program that could not read it. Writes are atomic (`atomic.write_atomic`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Final, Literal

import pydantic
from pydantic import BaseModel, ConfigDict, Field

from halo_client.atomic import write_atomic
from halo_client.conversation.memory import MemorySettings
from halo_client.conversation.pruner import PrunerSettings
from halo_client.conversation.tracker import TrackerSettings
from halo_client.display.scale import ScaleMode
from halo_client.errors import HaloError

ENV_PATH: Final = "HALO_CONFIG"
#: where the command line keeps the loaded settings for its commands (click's context meta)
META_KEY: Final = "halo_weave.config"
DEFAULT_SYSTEM_PROMPT: Final = "You are a helpful assistant."


class ConfigError(HaloError):
    """The settings file cannot be read, is not valid, or cannot be written."""


class SamplerSettings(BaseModel):
    """How replies are sampled: the `GenerateRequest` fields a user tunes, with the same ranges
    (tests/test_config.py checks each constraint against the contract's model)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_length: int = Field(200, ge=1)
    temperature: float = Field(0.7, ge=0.0)
    top_p: float = Field(0.92, gt=0.0, le=1.0)
    top_k: int = Field(100, ge=0)
    rep_pen: float = Field(1.1, gt=0.0)
    rep_pen_range: int = Field(320, ge=0)
    sampler_seed: int = Field(-1, ge=-1, lt=2**32)

    def request_fields(self) -> dict[str, Any]:
        """The sampler fields of a generation request (max_length is the chat's own)."""
        return self.model_dump(exclude={"max_length"})


class ViewSettings(BaseModel):
    """How the workbench draws: the heat scale (display/scale.py), the inspector's scale, and
    whether pruned text stays inline (struck through) and template tokens are shown."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    scale: ScaleMode = "percentile"
    inspector_scale: Literal["log", "linear"] = "log"
    show_pruned: bool = False
    show_template: bool = True


class Config(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    tracker: TrackerSettings = Field(default_factory=TrackerSettings)
    pruner: PrunerSettings = Field(default_factory=PrunerSettings)
    sampler: SamplerSettings = Field(default_factory=SamplerSettings)
    memory: MemorySettings = Field(default_factory=MemorySettings)
    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    view: ViewSettings = Field(default_factory=ViewSettings)

    def merged(self, changes: dict[str, Any]) -> Config:
        """This config with `changes` (a partial config: {"tracker": {"decay": 0.01}}) applied,
        validated as a whole; `pydantic.ValidationError` when a value is out of range."""
        data = self.model_dump()
        for key, value in changes.items():
            if isinstance(value, dict) and isinstance(data.get(key), dict):
                data[key] = {**data[key], **value}
            else:
                data[key] = value
        return Config.model_validate(data)


def config_path() -> Path:
    """Where the settings file is (it need not exist)."""
    explicit = os.environ.get(ENV_PATH)
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "halo-weave" / "settings.json"


def describe_error(error: pydantic.ValidationError) -> str:
    """A validation error in one line: each field and why, without pydantic's web links."""
    parts = []
    for item in error.errors(include_url=False):
        where = ".".join(str(p) for p in item["loc"]) or "the file"
        parts.append(f"{where}: {item['msg']}")
    return "; ".join(parts)


def load(path: Path | None = None) -> Config:
    """The settings in the file (defaults when there is none)."""
    path = path or config_path()
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return Config()
    except OSError as exc:
        raise ConfigError(f"the settings file {path} cannot be read: {exc.strerror}",
                          f"fix its permissions or point {ENV_PATH} at another file") from exc
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise ConfigError(f"the settings file {path} is not valid JSON ({exc})",
                          f"fix or delete it (it is left as it is), or point {ENV_PATH} at another file") from exc
    try:
        return Config.model_validate(data)
    except pydantic.ValidationError as exc:
        raise ConfigError(f"the settings file {path} has invalid values: {describe_error(exc)}",
                          f"fix or delete it (it is left as it is), or point {ENV_PATH} at another file") from exc


def save(config: Config, path: Path | None = None) -> Path:
    """Write `config` (only what differs from the defaults), atomically; returns the path."""
    path = path or config_path()
    data = json.dumps(config.model_dump(exclude_defaults=True), indent=2, sort_keys=True) + "\n"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, data.encode())
    except OSError as exc:
        raise ConfigError(f"the settings file {path} cannot be written: {exc.strerror}",
                          f"check the directory's permissions or point {ENV_PATH} at another file") from exc
    return path
