"""kobold_patch/llama.cpp/: small hooks into three llama.cpp files, the substance in files of its
own, and the two agree. With the pinned llama.cpp tree at hand (HALO_LLAMA_CPP_SRC, or a build
under build/llama.cpp-0.3.36) the hooks are also applied for real."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.kobold_patch.patchfile import hunk_count_errors, sections

ROOT = Path(__file__).resolve().parents[2]
ENGINE = ROOT / "kobold_patch" / "llama.cpp"
CORE = ROOT / "kobold_patch" / "src"
HOOKS = ENGINE / "halo-weave-llama.cpp.patch"
HOOKED = {"src/llama-graph.cpp", "src/llama-context.cpp", "src/CMakeLists.txt"}


def _sections() -> dict[str, list[str]]:
    return sections(HOOKS.read_text())


def _added(path: str) -> list[str]:
    return [line[1:] for line in _sections()[path] if line.startswith("+") and not line.startswith("+++")]


def test_hooks_touch_three_files_with_a_few_lines_each() -> None:
    sections = _sections()
    assert set(sections) == HOOKED
    for path, lines in sections.items():
        changed = [line for line in lines if line[:1] in "+-" and not line.startswith(("+++", "---"))]
        assert all(line.startswith("+") for line in changed), f"{path}: the hooks only add lines"
        assert len(changed) <= 4, f"{path} gains {len(changed)} lines"


def test_hunk_line_counts_add_up() -> None:
    assert hunk_count_errors(_sections()) == []


def test_what_the_hooks_call_is_declared_and_defined() -> None:
    header = (ENGINE / "halo_hooks.h").read_text()
    source = (ENGINE / "halo_engine.cpp").read_text()
    called = set(re.findall(r"\b(halo_attn_[a-z_]+)\b", " ".join(_added("src/llama-graph.cpp")
                                                                 + _added("src/llama-context.cpp"))))
    assert called == {"halo_attn_softmax_hook", "halo_attn_decode_scope"}
    for name in called:
        assert re.search(rf"\b{name}\b", header), name
        assert re.search(rf"^(void |){name}(::{name}|)\(", source, re.M), name
    compiled = set(re.findall(r"\b(halo_\w+\.cpp)\b", " ".join(_added("src/CMakeLists.txt"))))
    assert compiled == {"halo_capture.cpp", "halo_engine.cpp"}
    assert (CORE / "halo_capture.cpp").is_file() and (ENGINE / "halo_engine.cpp").is_file()


def test_the_build_script_pins_the_sdist_by_version_and_hash() -> None:
    script = (ENGINE / "build.sh").read_text()
    assert "VERSION=0.3.36" in script and "--require-hashes" in script
    assert re.search(r"^SHA256=[0-9a-f]{64}$", script, re.M)
    assert "-DGGML_NATIVE=OFF" in script


def _pinned_tree() -> Path | None:
    given = os.environ.get("HALO_LLAMA_CPP_SRC")
    if given:
        return Path(given)
    built = ROOT / "build" / "llama.cpp-0.3.36"
    return built if (built / ".halo-llama-version").is_file() else None


@pytest.mark.process  # starts git
@pytest.mark.skipif(shutil.which("git") is None, reason="needs git (apt-get install git)")
def test_the_hooks_apply_to_the_pinned_llama_cpp(tmp_path: Path) -> None:
    tree = _pinned_tree()
    if tree is None:
        pytest.skip("needs the pinned llama.cpp tree: HALO_LLAMA_CPP_SRC=DIR (vendor/llama.cpp of "
                    "llama-cpp-python 0.3.36), or build/llama.cpp-0.3.36 from make patch-and-build HOST=llama.cpp "
                    "(CI builds it first)")
    for path in HOOKED:
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(tree / path, tmp_path / path)
    env = {**os.environ, "GIT_CEILING_DIRECTORIES": str(tmp_path.parent)}
    applied = (tree / "src" / "halo_engine.cpp").is_file()  # a built tree carries the hooks already
    args = ["git", "apply", "--check", *(["--reverse"] if applied else []), str(HOOKS)]
    done = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
