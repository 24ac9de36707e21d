"""llama.cpp's converter (`convert_hf_to_gguf.py`, its `conversion` package and `gguf-py`), current
version: the one the `llama-cpp-python` 0.3.36 sdist vendors, the llama.cpp the current engine is
built from.

`HALO_LLAMA_CPP_SRC=DIR` names an unpacked llama.cpp source tree to use instead (offline); else
the tree the engine's library was built in, when the caller knows one (`make patch-and-build
HOST=llama.cpp` unpacks the same sdist's llama.cpp there); otherwise the sdist is downloaded once
with pip (by name, version and sha256) and only the converter's files are kept, under the cache
directory.
"""

from __future__ import annotations

import os
import shutil
import tarfile
import tempfile
from pathlib import Path

from halo_client.testing.pypi_files import FetchError, pip_download

SDIST = "llama-cpp-python==0.3.36"
SDIST_SHA256 = "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"
SOURCE_ENV = "HALO_LLAMA_CPP_SRC"
_VENDORED = "vendor/llama.cpp/"
_KEEP = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/")


def has_converter(tree: Path) -> bool:
    return (tree / "convert_hf_to_gguf.py").is_file() and (tree / "gguf-py").is_dir()


def llama_cpp_tree(cache: Path, built_from: Path | None = None) -> Path:
    """A llama.cpp source tree with the current converter: `$HALO_LLAMA_CPP_SRC`, else `built_from`
    (or the first of its parents) if it has the converter, else the sdist's converter files
    extracted under `cache` (downloaded the first time)."""
    if value := os.environ.get(SOURCE_ENV):
        return Path(value)
    if built_from is not None:
        for candidate in (built_from, *built_from.parents):
            if has_converter(candidate):
                return candidate
    target = cache / f"llama.cpp-{SDIST.split('==')[1]}"
    if (target / ".complete").is_file():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        archive = pip_download(SDIST, SDIST_SHA256, Path(tmp), sdist=True)
        staging = Path(tmp) / "tree"
        with tarfile.open(archive) as tar:
            for member in tar.getmembers():
                _, _, inside = member.name.partition("/")
                if not inside.startswith(_VENDORED) or not member.isfile():
                    continue
                relative = inside[len(_VENDORED):]
                if not relative.startswith(_KEEP):
                    continue
                source = tar.extractfile(member)
                if source is None:
                    raise FetchError(f"{archive.name}: cannot read {member.name}")
                out = staging / relative
                out.parent.mkdir(parents=True, exist_ok=True)
                with source, open(out, "wb") as dst:
                    shutil.copyfileobj(source, dst)
        if not (staging / "convert_hf_to_gguf.py").is_file():
            raise FetchError(f"{archive.name} holds no {_VENDORED}convert_hf_to_gguf.py")
        (staging / ".complete").write_text(SDIST_SHA256 + "\n")
        shutil.rmtree(target, ignore_errors=True)
        os.replace(staging, target)
    return target
