"""kobold_patch/ is a hooks-only diff plus files of its own, and the two agree with each other.

CI has no KoboldCPP tree, so what can be checked without one is checked here: the diff is
well formed and touches only what the README says, with small hooks; every symbol a hook calls
exists in the patch's files; the C structures and koboldcpp.py's ctypes mirrors agree (compiled,
when a C++ compiler is there). With HALO_KOBOLDCPP_SRC=DIR (a pristine v1.76 tree) the patch is
also applied for real.
"""

from __future__ import annotations

import ast
import ctypes
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.kobold_patch.patchfile import (
    HALO_API,
    KOBOLD_PATCH,
    NEW_FILES,
    PATCH,
    SRC,
    added_lines,
    halo_api_source,
    hunk_count_errors,
    load_halo_api,
    patch_figures,
    sections,
)

HOOKED = {"Makefile", "expose.cpp", "expose.h", "gpttype_adapter.cpp", "koboldcpp.py", "src/llama.cpp"}
needs_git = pytest.mark.skipif(
    shutil.which("git") is None,
    reason="needs git (apt-get install git); CI clones the repo with git, so this runs there")
needs_cxx = pytest.mark.skipif(
    shutil.which("g++") is None, reason="needs a C++ compiler (apt-get install g++), as building KoboldCPP does")


def test_hooks_touch_exactly_the_expected_existing_files() -> None:
    assert set(sections()) == HOOKED
    for path, lines in sections().items():
        assert not any(line.startswith(("new file mode", "deleted file mode")) for line in lines), path
    files = [p for p in SRC.rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    assert sorted(str(p.relative_to(SRC)) for p in files) == sorted(NEW_FILES)
    assert {"halo_api/__init__.py", "halo_api/server.py", "halo_api/stream.py"} <= set(NEW_FILES)


def test_the_readme_states_the_patchs_size_as_it_is() -> None:
    figures = patch_figures()
    assert figures in (KOBOLD_PATCH / "README.md").read_text(), (
        f"kobold_patch/README.md should say: {figures} (python -m tests.kobold_patch.patchfile prints it)")


def test_hunk_line_counts_add_up() -> None:
    """Every hunk holds as many old/new lines as its header says (what `git apply` checks first)."""
    assert hunk_count_errors(sections()) == []


@pytest.mark.process  # starts git
@needs_git
def test_git_reads_the_patch() -> None:
    out = subprocess.run(["git", "apply", "--numstat", str(PATCH)], capture_output=True, text=True, check=True)
    assert {line.split("\t")[2] for line in out.stdout.splitlines()} == HOOKED


def test_existing_files_get_small_hooks_only() -> None:
    """The substance lives in src/; existing files change by a few lines each."""
    for path, lines in sections().items():
        changed = sum(1 for line in lines if line[:1] in "+-" and not line.startswith(("+++", "---")))
        assert changed <= 70, f"{path} changes {changed} lines"


def _imports(tree: ast.AST) -> set[str]:
    modules: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:  # (relative: a sibling)
            modules.add(node.module.split(".")[0])
    return modules


def test_halo_api_is_standard_library_python_3_9() -> None:
    """KoboldCPP v1.76 runs on Python >= 3.9 with no packages of ours: each module of the package
    imports the standard library and its siblings only."""
    modules = sorted(HALO_API.glob("*.py"))
    assert (HALO_API / "__init__.py") in modules and len(modules) > 1
    for path in modules:
        tree = ast.parse(path.read_text(), feature_version=(3, 9))
        assert _imports(tree) <= set(sys.stdlib_module_names) | {"__future__"}, path.name


def test_koboldcpp_py_gains_no_top_level_import() -> None:
    assert not [line for line in added_lines("koboldcpp.py") if line.startswith(("import ", "from "))]


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


# ------------------------------------------------------------------ the hooks and the files agree

_HEADER = (SRC / "attention_export.h").read_text()
_SOURCE = (SRC / "attention_export.cpp").read_text()
_CALL = re.compile(r"\b(halo_[a-z0-9_]+)\s*\(")


def _declared(text: str) -> set[str]:
    """Functions declared at the top level of a C++ header."""
    return set(re.findall(r"^[a-z_ ]*?[\w:<>]+[ *&]+(halo_[a-z0-9_]+)\s*\(", text, re.M))


def test_every_function_the_cpp_hooks_call_is_declared_and_defined() -> None:
    called: set[str] = set()
    local: set[str] = set()
    for path in ("gpttype_adapter.cpp", "src/llama.cpp", "expose.cpp"):
        for line in added_lines(path):
            called.update(name for name in _CALL.findall(line) if not name.startswith("halo_api_"))
            local.update(re.findall(r"\bstruct (halo_[a-z_]+)\s*\{", line))  # the hooks' own RAII guard
    called -= local
    declared = _declared(_HEADER)
    assert called and called <= declared, called - declared
    defined = set(re.findall(r"^[\w:<> *&]+?\b(halo_[a-z0-9_]+)\s*\([^;{}]*\)\s*\{", _SOURCE, re.M))
    assert declared <= defined, declared - defined


def test_the_hooks_include_the_files_the_makefile_names() -> None:
    includes = {m for line in added_lines("gpttype_adapter.cpp") + added_lines("expose.cpp")
                for m in re.findall(r'#include "([^"]+)"', line)}
    assert includes == {"attention_export.h", "attention_export.cpp"}
    makefile = " ".join(added_lines("Makefile"))
    assert all(name in makefile and (SRC / name).is_file() for name in includes)


def test_generation_inputs_fields_the_cpp_reads_exist() -> None:
    read = set(re.findall(r"\binputs\.(halo_[a-z_]+)", _SOURCE))
    appended = {line.split("=")[0].split()[-1].lstrip("*") for line in added_lines("expose.h")}
    assert read and read <= appended, read - appended


def test_the_python_side_matches_the_exports_and_the_routes() -> None:
    halo = load_halo_api()
    exported = set(re.findall(r"\b(halo_api_[a-z_]+)\s*\(", " ".join(added_lines("expose.cpp"))))
    registered = set(re.findall(r"handle\.(halo_api_[a-z_]+)\.", halo_api_source()))
    assert exported and registered == exported
    kobold = "\n".join(added_lines("koboldcpp.py"))
    for name in set(re.findall(r"halo_api\.([a-z_]+)\(", kobold)):
        assert callable(getattr(halo, name, None)), f"koboldcpp.py calls halo_api.{name}, which does not exist"
    routed = re.search(r"not in \(([^)]*)\)", kobold)
    assert routed is not None
    assert set(ast.literal_eval(f"({routed.group(1)},)")) == set(halo.PATHS)


@pytest.mark.process  # starts g++
@needs_cxx
def test_attention_export_h_compiles_alone_as_cpp11() -> None:
    """The header is what expose.cpp sees: it must stand on its own (KoboldCPP builds C++11)."""
    subprocess.run(["g++", "-std=c++11", "-fsyntax-only", "-Wall", "-Werror", f"-I{SRC}", "-x", "c++", "-"],
                   input='#include "attention_export.h"\n', check=True, capture_output=True, text=True)


@pytest.mark.process  # starts g++
@needs_cxx
def test_ctypes_structures_match_the_compiled_c_layout(tmp_path: Path) -> None:
    """halo_api's ctypes mirrors of attention_export.h's structs, against the compiler's layout."""
    halo = load_halo_api()
    structs = {"halo_event_out": halo.EventOut, "halo_model_info_out": halo.ModelInfoOut}
    probe = ['#include "attention_export.h"', "#include <cstddef>", "#include <cstdio>", "int main() {"]
    for c_name, py in structs.items():
        probe.append(f'printf("{c_name} size %zu\\n", sizeof({c_name}));')
        probe += [f'printf("{c_name} {f} %zu\\n", offsetof({c_name}, {f}));' for f, _ in py._fields_]
    probe.append("return 0; }")
    (tmp_path / "probe.cpp").write_text("\n".join(probe))
    subprocess.run(["g++", "-std=c++11", f"-I{SRC}", "probe.cpp", "-o", "probe"], cwd=tmp_path, check=True,
                   capture_output=True, text=True)
    compiled = subprocess.run([str(tmp_path / "probe")], capture_output=True, text=True, check=True).stdout
    expected = []
    for c_name, py in structs.items():
        expected.append(f"{c_name} size {ctypes.sizeof(py)}")
        expected += [f"{c_name} {f} {getattr(py, f).offset}" for f, _ in py._fields_]
    assert compiled.split("\n")[:-1] == expected


@pytest.mark.skipif(not os.environ.get("HALO_KOBOLDCPP_SRC"),
                    reason="set HALO_KOBOLDCPP_SRC=DIR of a pristine KoboldCPP v1.76 tree to apply the patch "
                           "for real (done for kobold_patch/README.md's verification; in CI apply.sh runs on "
                           "stand-in trees: tests/kobold_patch/test_apply_script.py)")
@pytest.mark.process  # starts git
@needs_git
def test_applies_to_a_real_v1_76_tree(tmp_path: Path) -> None:
    tree = tmp_path / "koboldcpp"
    env = {**os.environ, "KOBOLDCPP_SRC": os.environ["HALO_KOBOLDCPP_SRC"]}
    done = subprocess.run(["bash", str(KOBOLD_PATCH / "apply.sh"), str(tree)], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    for name in NEW_FILES:
        assert (tree / name).read_bytes() == (SRC / name).read_bytes()
    assert "halo_attn_graph_hook(ctx, graph, kq, il)" in (tree / "src" / "llama.cpp").read_text()
