"""Finding and binding the Halo Weave libllama, without it: where it is looked for, what a wrong
file gives, and that the ctypes mirrors of halo_engine.h's structures match the compiled layout."""

from __future__ import annotations

import ctypes
import shutil
import subprocess
from pathlib import Path

import pytest

from halo_client.llama_cpp import LIB_ENV, LlamaLibraryError, default_library_paths, find_library, library
from halo_client.llama_cpp.library import EngineInfo, EngineParams, load_library

ENGINE = Path(__file__).resolve().parents[2] / "kobold_patch" / "llama.cpp"


def test_an_explicit_path_wins_over_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    explicit, env = tmp_path / "a.so", tmp_path / "b.so"
    explicit.write_bytes(b"")
    env.write_bytes(b"")
    monkeypatch.setenv(LIB_ENV, str(env))
    assert find_library(explicit) == explicit
    assert find_library() == env


def test_a_missing_library_says_how_to_build_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(LIB_ENV, str(tmp_path / "nope.so"))
    with pytest.raises(LlamaLibraryError, match="no such file") as caught:
        find_library()
    assert "make patch-and-build HOST=llama.cpp" in str(caught.value)
    monkeypatch.delenv(LIB_ENV)
    # as in a checkout with no build (this one may have one)
    monkeypatch.setattr(library, "default_library_paths", lambda: [tmp_path / "build" / "libllama.so"])
    with pytest.raises(LlamaLibraryError, match="No Halo Weave build"):
        find_library()


def test_the_defaults_are_where_make_puts_the_library() -> None:
    paths = [str(p) for p in default_library_paths()]
    assert any(p.endswith("build/llama.cpp-0.3.36/build-cpu/bin/libllama.so") for p in paths)
    assert paths.index(next(p for p in paths if "build-cuda/" in p)) < paths.index(
        next(p for p in paths if "build-cpu/" in p))


@pytest.mark.process  # starts g++
@pytest.mark.skipif(shutil.which("g++") is None, reason="needs a C++ compiler (apt-get install g++)")
def test_a_library_without_the_engine_is_refused(tmp_path: Path) -> None:
    (tmp_path / "x.c").write_text("int llama_decode(void) { return 0; }\n")
    subprocess.run(["gcc", "-shared", "-fPIC", "x.c", "-o", "libllama.so"], cwd=tmp_path, check=True)
    with pytest.raises(LlamaLibraryError, match="without Halo Weave"):
        load_library(tmp_path / "libllama.so")


@pytest.mark.process  # starts g++
@pytest.mark.skipif(shutil.which("g++") is None, reason="needs a C++ compiler (apt-get install g++)")
def test_ctypes_structures_match_the_compiled_layout(tmp_path: Path) -> None:
    """halo_engine.h compiled (with a stand-in llama.h: the header needs only LLAMA_API from it)."""
    (tmp_path / "llama.h").write_text("#pragma once\n#define LLAMA_API\n")
    structs = {"halo_engine_params": EngineParams, "halo_engine_info": EngineInfo}
    probe = ['#include "halo_engine.h"', "#include <cstddef>", "#include <cstdio>", "int main() {"]
    for c_name, py in structs.items():
        probe.append(f'printf("{c_name} size %zu\\n", sizeof({c_name}));')
        probe += [f'printf("{c_name} {f} %zu\\n", offsetof({c_name}, {f}));' for f, *_ in py._fields_]
    probe.append("return 0; }")
    (tmp_path / "probe.cpp").write_text("\n".join(probe))
    subprocess.run(["g++", "-std=c++17", f"-I{tmp_path}", f"-I{ENGINE}", "probe.cpp", "-o", "probe"], cwd=tmp_path,
                   check=True, capture_output=True, text=True)
    compiled = subprocess.run([str(tmp_path / "probe")], capture_output=True, text=True, check=True).stdout
    expected = []
    for c_name, py in structs.items():
        expected.append(f"{c_name} size {ctypes.sizeof(py)}")
        expected += [f"{c_name} {f} {getattr(py, f).offset}" for f, *_ in py._fields_]
    assert compiled.split("\n")[:-1] == expected


@pytest.mark.process  # starts gcc
@pytest.mark.skipif(shutil.which("gcc") is None, reason="needs a C compiler (apt-get install gcc)")
def test_a_second_build_in_one_process_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every build's libggml*.so have the same sonames: a second build (say the RPC one) would run
    on the first one's libggml, so it is refused with the reason rather than failing later."""
    monkeypatch.setattr(library, "_loaded", {})
    stub = "".join(f"void {name}(void) {{}}\n" for name in library._PROTOTYPES)
    for build in ("build-cpu", "build-cpu-rpc"):
        (tmp_path / build).mkdir()
        (tmp_path / build / "x.c").write_text(stub)
        subprocess.run(["gcc", "-shared", "-fPIC", "x.c", "-o", "libllama.so"], cwd=tmp_path / build, check=True)
    first = load_library(tmp_path / "build-cpu" / "libllama.so")
    assert load_library(tmp_path / "build-cpu" / "libllama.so") is first
    with pytest.raises(LlamaLibraryError, match=r"already serves the libllama at .*build-cpu/libllama\.so"):
        load_library(tmp_path / "build-cpu-rpc" / "libllama.so")
