"""How the package is laid out: which layer may import which, and facts stated once."""

from __future__ import annotations

import ast
from pathlib import Path

import halo_client

PACKAGE = Path(halo_client.__file__).parent


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return found


def test_the_reference_model_does_not_import_the_conversation_layer() -> None:
    """`reference/` is a model server's side; the chat (`conversation/`) is a client's."""
    offenders = {str(p.relative_to(PACKAGE)): sorted(m for m in imported_modules(p)
                                                      if m.startswith("halo_client.conversation"))
                 for p in (PACKAGE / "reference").glob("*.py")}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_chatml_and_the_default_system_prompt_are_written_once() -> None:
    sources = {p: p.read_text() for p in PACKAGE.rglob("*.py")}
    chatml = [p for p, text in sources.items() if "message['role'] + '\\\\n' + message['content']" in text]
    assert [p.name for p in chatml] == ["chatml.py"]
    prompt = [p for p, text in sources.items() if '"You are a helpful assistant."' in text]
    assert [p.name for p in prompt] == ["config.py"]
