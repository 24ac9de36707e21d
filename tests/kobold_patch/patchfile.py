"""Reading kobold_patch/'s unified diff without a KoboldCPP tree: its files, and new files' text."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType

PATCH = Path(__file__).resolve().parents[2] / "kobold_patch" / "halo-weave-koboldcpp-v1.76.patch"

_DIFF = re.compile(r"^diff --git a/(\S+) b/(\S+)$")
_HUNK = re.compile(r"^@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@")


def sections(text: str | None = None) -> dict[str, list[str]]:
    """path -> the lines of its section of the diff (header included)."""
    text = PATCH.read_text() if text is None else text
    out: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in text.splitlines():
        m = _DIFF.match(line)
        if m:
            current = out.setdefault(m.group(2), [])
        if current is not None:
            current.append(line)
    return out


def new_file_text(path: str) -> str:
    """The whole text of a file the patch creates."""
    lines = sections()[path]
    if not any(line.startswith("new file mode") for line in lines):
        raise ValueError(f"{path} is not a new file in the patch")
    body = []
    in_hunk = False
    for line in lines:
        if _HUNK.match(line):
            in_hunk = True
            continue
        if in_hunk and line.startswith("+"):
            body.append(line[1:])
        elif in_hunk and line.startswith("\\"):
            continue
    return "\n".join(body) + "\n"


def load_halo_api(tmp_dir: Path) -> ModuleType:
    """halo_api.py as the patch adds it to KoboldCPP, imported as a module."""
    path = tmp_dir / "halo_api.py"
    path.write_text(new_file_text("halo_api.py"))
    spec = importlib.util.spec_from_file_location("halo_api_under_test", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module
