"""The patch is a well-formed unified diff that touches what the README says, and no more."""

from __future__ import annotations

import ast
import shutil
import subprocess

import pytest

from tests.kobold_patch.patchfile import _HUNK, PATCH, new_file_text, sections

EXPECTED = {
    "Makefile", "attention_export.cpp", "attention_export.h", "expose.cpp", "expose.h",
    "gpttype_adapter.cpp", "halo_api.py", "koboldcpp.py", "src/llama.cpp",
}
NEW = {"attention_export.cpp", "attention_export.h", "halo_api.py"}


def test_patch_touches_exactly_the_expected_files() -> None:
    assert set(sections()) == EXPECTED
    for path, lines in sections().items():
        assert any(line.startswith("new file mode") for line in lines) == (path in NEW), path


def test_hunk_line_counts_add_up() -> None:
    """Every hunk holds as many old/new lines as its header says (what `git apply` checks first)."""
    for path, lines in sections().items():
        i = 0
        while i < len(lines):
            m = _HUNK.match(lines[i])
            i += 1
            if not m:
                continue
            old = int(m.group(2) or 1)
            new = int(m.group(4) or 1)
            while (old > 0 or new > 0) and i < len(lines):
                tag = lines[i][:1]
                if tag in (" ", ""):
                    old, new = old - 1, new - 1
                elif tag == "-":
                    old -= 1
                elif tag == "+":
                    new -= 1
                elif tag != "\\":
                    pytest.fail(f"{path}: unexpected line in a hunk: {lines[i]!r}")
                i += 1
            assert old == 0 and new == 0, f"{path}: a hunk's line counts do not match its header"


@pytest.mark.skipif(shutil.which("git") is None,
                    reason="needs git (apt-get install git); CI clones the repo with git, so this runs there")
def test_git_reads_the_patch() -> None:
    out = subprocess.run(["git", "apply", "--numstat", str(PATCH)], capture_output=True, text=True, check=True)
    assert {line.split("\t")[2] for line in out.stdout.splitlines()} == EXPECTED


def test_existing_files_get_small_hooks_only() -> None:
    """The substance lives in the new files; existing ones change by a few lines each."""
    for path, lines in sections().items():
        if path in NEW:
            continue
        changed = sum(1 for line in lines if line[:1] in "+-" and not line.startswith(("+++", "---")))
        assert changed <= 70, f"{path} changes {changed} lines"


def test_halo_api_is_standard_library_only() -> None:
    tree = ast.parse(new_file_text("halo_api.py"))
    modules: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            modules.add(node.module.split(".")[0])
    import sys

    assert modules <= set(sys.stdlib_module_names), modules - set(sys.stdlib_module_names)


def test_koboldcpp_py_gains_no_top_level_import() -> None:
    added = [line[1:] for line in sections()["koboldcpp.py"] if line.startswith("+") and not line.startswith("+++")]
    assert not [line for line in added if line.startswith(("import ", "from "))]


def test_new_structure_fields_are_appended_in_the_same_order_on_both_sides() -> None:
    """expose.h's structs are passed by value from ctypes: the C and Python field lists must agree."""
    c_fields = [line.split("=")[0].split()[-1].lstrip("*") for line in sections()["expose.h"]
                if line.startswith("+    const")]
    lines = sections()["koboldcpp.py"]
    removed = {line.split('"')[1] for line in lines if line.startswith("-") and line.strip("- ").startswith('("')}
    py_fields = [line.split('"')[1] for line in lines
                 if line.startswith("+") and line.strip("+ ").startswith('("') and line.split('"')[1] not in removed]
    assert c_fields == py_fields
    assert c_fields[0] == "attention_export" and "halo_attention" in c_fields
