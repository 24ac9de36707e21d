"""kobold_patch/apply.sh on small stand-in trees: idempotence, upgrades, refusals that change nothing.

The real patch needs a KoboldCPP v1.76 tree, which CI does not have; the script does not care what
the hooks and files say, so a stand-in tree, hooks and files exercise every branch of it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "kobold_patch" / "apply.sh"
PATCH_NAME = "halo-weave-koboldcpp-v1.76.patch"
NEW_FILES = ("halo_capture.h", "halo_capture.cpp", "attention_export.h", "attention_export.cpp", "halo_api/__init__.py",
             "halo_api/server.py")

pytestmark = [pytest.mark.process, pytest.mark.skipif(
    shutil.which("git") is None,
    reason="apply.sh needs git (apt-get install git); CI clones the repo with git, so these run there")]


def _patch(old: str, new: str) -> str:
    return (f"diff --git a/model.cpp b/model.cpp\n--- a/model.cpp\n+++ b/model.cpp\n"
            f"@@ -1,3 +1,3 @@\n line one\n-{old}\n+{new}\n line three\n")


def _write_files(kit: Path, version: str) -> None:
    (kit / "src" / "halo_api").mkdir(parents=True, exist_ok=True)
    for name in NEW_FILES:
        (kit / "src" / name).write_text(f"{name}, {version}\n")


def _files(tree: Path) -> dict[str, str]:
    return {name: (tree / name).read_text() for name in NEW_FILES if (tree / name).exists()}


@pytest.fixture
def kit(tmp_path: Path) -> Path:
    """A copy of kobold_patch/ (the script, stand-in hooks and files) and a stand-in v1.76 tree."""
    kit = tmp_path / "kobold_patch"
    kit.mkdir()
    shutil.copy(SCRIPT, kit / "apply.sh")
    (kit / PATCH_NAME).write_text(_patch("line two", "line two, hooked"))
    _write_files(kit, "v1")
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "koboldcpp.py").write_text('KcppVersion = "1.76"\n')
    (tree / "model.cpp").write_text("line one\nline two\nline three\n")
    return kit


def _patch_as_earlier_versions_did(tree: Path, files: tuple[str, ...]) -> None:
    """Patch `tree` as Halo Weave versions before apply.sh did: one diff carrying the hooks and
    `files` as `+` lines, kept in the tree as the patch it carries."""
    legacy = _patch("line two", "line two, hooked") + "".join(
        f"diff --git a/{name} b/{name}\nnew file mode 100644\n--- /dev/null\n+++ b/{name}\n@@ -0,0 +1 @@\n"
        f"+{name}, v0\n" for name in files)
    (tree.parent / "legacy.patch").write_text(legacy)
    subprocess.run(["git", "apply", str(tree.parent / "legacy.patch")], cwd=tree, check=True,
                   env={"PATH": "/usr/bin:/bin", "GIT_CEILING_DIRECTORIES": str(tree.parent)})
    shutil.copy(tree.parent / "legacy.patch", tree / ".halo-weave-applied.patch")


def run(kit: Path, tree: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(kit / "apply.sh"), str(tree)], capture_output=True, text=True)


def test_applies_once_then_leaves_the_tree_alone(kit: Path) -> None:
    tree = kit.parent / "tree"
    first, second = run(kit, tree), run(kit, tree)
    assert first.returncode == 0 and "patch applied" in first.stdout
    assert second.returncode == 0 and "already applied" in second.stdout
    assert (tree / "model.cpp").read_text() == "line one\nline two, hooked\nline three\n"
    assert _files(tree) == {name: f"{name}, v1\n" for name in NEW_FILES}


def test_an_applied_tree_is_not_rewritten(kit: Path) -> None:
    """A second run touches nothing, so `make` rebuilds nothing."""
    tree = kit.parent / "tree"
    assert run(kit, tree).returncode == 0
    stamps = {p: p.stat().st_mtime_ns for p in tree.rglob("*")}
    assert run(kit, tree).returncode == 0
    assert {p: p.stat().st_mtime_ns for p in tree.rglob("*")} == stamps


def test_a_newer_patch_replaces_the_older_one(kit: Path) -> None:
    tree = kit.parent / "tree"
    assert run(kit, tree).returncode == 0
    (kit / PATCH_NAME).write_text(_patch("line two", "line two, hooked better"))
    upgraded = run(kit, tree)
    assert upgraded.returncode == 0 and "replaced" in upgraded.stdout
    assert (tree / "model.cpp").read_text() == "line one\nline two, hooked better\nline three\n"


def test_newer_files_replace_the_older_ones_and_only_they_are_rewritten(kit: Path) -> None:
    """make rebuilds by file times: a swap that leaves a file as it was must leave its time too."""
    tree = kit.parent / "tree"
    assert run(kit, tree).returncode == 0
    old = 1_000_000_000_000_000_000
    for p in (tree / "model.cpp", tree / "attention_export.h", tree / "halo_api" / "server.py"):
        os.utime(p, ns=(old, old))
    (kit / "src" / "halo_api" / "server.py").write_text("server.py, v2\n")
    upgraded = run(kit, tree)
    assert upgraded.returncode == 0 and "replaced" in upgraded.stdout
    assert (tree / "halo_api" / "server.py").read_text() == "server.py, v2\n"
    assert (tree / "model.cpp").read_text() == "line one\nline two, hooked\nline three\n"
    assert (tree / "halo_api" / "server.py").stat().st_mtime_ns != old
    assert (tree / "model.cpp").stat().st_mtime_ns == old and (tree / "attention_export.h").stat().st_mtime_ns == old


def test_a_tree_patched_when_the_files_lived_inside_the_diff_is_upgraded(kit: Path) -> None:
    """Earlier Halo Weave versions carried the new files as `+` lines of the one diff."""
    tree = kit.parent / "tree"
    _patch_as_earlier_versions_did(tree, NEW_FILES)
    upgraded = run(kit, tree)
    assert upgraded.returncode == 0 and "replaced" in upgraded.stdout, upgraded.stderr
    assert _files(tree) == {name: f"{name}, v1\n" for name in NEW_FILES}


def test_a_tree_with_the_single_module_halo_api_is_upgraded_to_the_package(kit: Path) -> None:
    """Earlier versions installed one module, halo_api.py; a stale module next to the package would
    be harmless to Python (a package wins) but is removed with the older patch it came with."""
    tree = kit.parent / "tree"
    _patch_as_earlier_versions_did(tree, ("attention_export.h", "attention_export.cpp", "halo_api.py"))
    upgraded = run(kit, tree)
    assert upgraded.returncode == 0 and "replaced" in upgraded.stdout, upgraded.stderr
    assert not (tree / "halo_api.py").exists()
    assert _files(tree) == {name: f"{name}, v1\n" for name in NEW_FILES}


def test_the_package_without_its_init_is_refused(kit: Path) -> None:
    (kit / "src" / "halo_api" / "__init__.py").unlink()
    refused = run(kit, kit.parent / "tree")
    assert refused.returncode != 0 and "halo_api/__init__.py" in refused.stderr


def test_a_newer_patch_that_does_not_fit_leaves_the_old_one_in_place(kit: Path) -> None:
    tree = kit.parent / "tree"
    assert run(kit, tree).returncode == 0
    (kit / PATCH_NAME).write_text(_patch("a line this tree never had", "x"))
    refused = run(kit, tree)
    assert refused.returncode != 0 and "make kobold-clean" in refused.stderr
    assert (tree / "model.cpp").read_text() == "line one\nline two, hooked\nline three\n"


def test_an_edited_halo_file_is_not_overwritten(kit: Path) -> None:
    tree = kit.parent / "tree"
    assert run(kit, tree).returncode == 0
    (tree / "halo_api" / "server.py").write_text("my local fix\n")
    _write_files(kit, "v2")
    refused = run(kit, tree)
    assert refused.returncode != 0 and "make kobold-clean" in refused.stderr
    assert (tree / "halo_api" / "server.py").read_text() == "my local fix\n"
    assert (tree / "attention_export.h").read_text() == "attention_export.h, v1\n"


@pytest.mark.parametrize(("file", "text", "says"), [
    ("koboldcpp.py", 'KcppVersion = "1.75"\n', "KoboldCPP 1.75, the patch is for 1.76 only"),
    ("model.cpp", "line one\nmy own edit\nline three\n", "does not apply"),
    ("halo_api/__init__.py", "a file of the same name, not ours\n", "does not apply"),
], ids=["another version", "a modified tree", "a foreign file in the way"])
def test_refused_trees_are_left_unchanged(kit: Path, file: str, text: str, says: str) -> None:
    tree = kit.parent / "tree"
    (tree / file).parent.mkdir(exist_ok=True)
    (tree / file).write_text(text)
    before = {p: p.read_text() for p in tree.rglob("*") if p.is_file()}
    refused = run(kit, tree)
    assert refused.returncode != 0 and says in refused.stderr
    assert {p: p.read_text() for p in tree.rglob("*") if p.is_file()} == before


def test_a_source_tree_is_copied_not_modified(kit: Path, tmp_path: Path) -> None:
    source = kit.parent / "tree"
    target = tmp_path / "build" / "koboldcpp"
    done = subprocess.run(["bash", str(kit / "apply.sh"), str(target)], capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", "KOBOLDCPP_SRC": str(source)})
    assert done.returncode == 0, done.stderr
    assert (target / "model.cpp").read_text() == "line one\nline two, hooked\nline three\n"
    assert _files(target) == {name: f"{name}, v1\n" for name in NEW_FILES}
    assert (source / "model.cpp").read_text() == "line one\nline two\nline three\n"
    assert _files(source) == {}
