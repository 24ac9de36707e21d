"""kobold_patch/ without a KoboldCPP tree: the hooks diff's sections, and the patch's own files."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType

KOBOLD_PATCH = Path(__file__).resolve().parents[2] / "kobold_patch"
#: the hooks into KoboldCPP's existing files
PATCH = KOBOLD_PATCH / "halo-weave-koboldcpp-v1.76.patch"
#: the patch's own files, which apply.sh copies to the top of the KoboldCPP tree
SRC = KOBOLD_PATCH / "src"
#: the Python package koboldcpp.py imports (standard library only, Python >= 3.9)
HALO_API = SRC / "halo_api"
NEW_FILES = ("halo_capture.h", "halo_capture.cpp", "attention_export.h", "attention_export.cpp",
             *sorted(str(p.relative_to(SRC)) for p in HALO_API.glob("*.py")))

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


def added_lines(path: str) -> list[str]:
    """The lines the hooks add to one file, without their `+`."""
    return [line[1:] for line in sections()[path] if line.startswith("+") and not line.startswith("+++")]


def halo_api_source() -> str:
    """Every module of the halo_api package, one after the other."""
    return "\n".join(p.read_text() for p in sorted(HALO_API.glob("*.py")))


def load_halo_api() -> ModuleType:
    """kobold_patch/src/halo_api/, imported as a package of its own (it is not part of halo_client)."""
    spec = importlib.util.spec_from_file_location("halo_api_under_test", HALO_API / "__init__.py",
                                                  submodule_search_locations=[str(HALO_API)])
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def patch_figures() -> str:
    """The patch's size as kobold_patch/README.md states it: the files of its own and their lines,
    the existing files the hooks touch and the lines they add and remove."""
    lines = sum((SRC / name).read_bytes().count(b"\n") for name in NEW_FILES)
    hooks = sections()
    added = removed = 0
    for body in hooks.values():
        added += sum(1 for line in body if line.startswith("+") and not line.startswith("+++"))
        removed += sum(1 for line in body if line.startswith("-") and not line.startswith("---"))
    return (f"{len(NEW_FILES)} files copied (`src/`, {lines:,} lines), "
            f"hooks into {len(hooks)} files (+{added} / -{removed})")


def hunk_count_errors(sections: dict[str, list[str]]) -> list[str]:
    """The files of a diff whose hunks hold other line counts than their headers say (what
    `git apply` checks first)."""
    bad = []
    for path, lines in sections.items():
        i = 0
        while i < len(lines):
            m = _HUNK.match(lines[i])
            i += 1
            if not m:
                continue
            old, new = int(m.group(2) or 1), int(m.group(4) or 1)
            while (old > 0 or new > 0) and i < len(lines):
                tag = lines[i][:1]
                if tag in (" ", "", "-"):
                    old -= 1
                if tag in (" ", "", "+"):
                    new -= 1
                if tag not in (" ", "", "-", "+", "\\"):
                    bad.append(f"{path}: unexpected line in a hunk: {lines[i]!r}")
                i += 1
            if old != 0 or new != 0:
                bad.append(f"{path}: a hunk's line counts do not match its header")
    return bad


if __name__ == "__main__":  # python -m tests.kobold_patch.patchfile: the figures for the README
    print(patch_figures())
