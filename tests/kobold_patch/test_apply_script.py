"""kobold_patch/apply.sh on small stand-in trees: idempotence, upgrades, refusals that change nothing.

The real patch needs a KoboldCPP v1.76 tree, which CI does not have; the script does not care what
the patch says, so a stand-in tree and patch exercise every branch of it.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "kobold_patch" / "apply.sh"
PATCH_NAME = "halo-weave-koboldcpp-v1.76.patch"

pytestmark = [pytest.mark.process, pytest.mark.skipif(
    shutil.which("git") is None,
    reason="apply.sh needs git (apt-get install git); CI clones the repo with git, so these run there")]


def _patch(old: str, new: str) -> str:
    return (f"diff --git a/model.cpp b/model.cpp\n--- a/model.cpp\n+++ b/model.cpp\n"
            f"@@ -1,3 +1,3 @@\n line one\n-{old}\n+{new}\n line three\n")


@pytest.fixture
def kit(tmp_path: Path) -> Path:
    """A copy of kobold_patch/ (the script and a stand-in patch) and a stand-in v1.76 tree."""
    kit = tmp_path / "kobold_patch"
    kit.mkdir()
    shutil.copy(SCRIPT, kit / "apply.sh")
    (kit / PATCH_NAME).write_text(_patch("line two", "line two, hooked"))
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "koboldcpp.py").write_text('KcppVersion = "1.76"\n')
    (tree / "model.cpp").write_text("line one\nline two\nline three\n")
    return kit


def run(kit: Path, tree: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(kit / "apply.sh"), str(tree)], capture_output=True, text=True)


def test_applies_once_then_leaves_the_tree_alone(kit: Path) -> None:
    tree = kit.parent / "tree"
    first, second = run(kit, tree), run(kit, tree)
    assert first.returncode == 0 and "patch applied" in first.stdout
    assert second.returncode == 0 and "already applied" in second.stdout
    assert (tree / "model.cpp").read_text() == "line one\nline two, hooked\nline three\n"


def test_a_newer_patch_replaces_the_older_one(kit: Path) -> None:
    tree = kit.parent / "tree"
    assert run(kit, tree).returncode == 0
    (kit / PATCH_NAME).write_text(_patch("line two", "line two, hooked better"))
    upgraded = run(kit, tree)
    assert upgraded.returncode == 0 and "replaced" in upgraded.stdout
    assert (tree / "model.cpp").read_text() == "line one\nline two, hooked better\nline three\n"


def test_a_newer_patch_that_does_not_fit_leaves_the_old_one_in_place(kit: Path) -> None:
    tree = kit.parent / "tree"
    assert run(kit, tree).returncode == 0
    (kit / PATCH_NAME).write_text(_patch("a line this tree never had", "x"))
    refused = run(kit, tree)
    assert refused.returncode != 0 and "make kobold-clean" in refused.stderr
    assert (tree / "model.cpp").read_text() == "line one\nline two, hooked\nline three\n"


@pytest.mark.parametrize(("file", "text", "says"), [
    ("koboldcpp.py", 'KcppVersion = "1.75"\n', "KoboldCPP 1.75, the patch is for 1.76 only"),
    ("model.cpp", "line one\nmy own edit\nline three\n", "does not apply"),
], ids=["another version", "a modified tree"])
def test_refused_trees_are_left_unchanged(kit: Path, file: str, text: str, says: str) -> None:
    tree = kit.parent / "tree"
    (tree / file).write_text(text)
    before = {p.name: p.read_text() for p in tree.iterdir()}
    refused = run(kit, tree)
    assert refused.returncode != 0 and says in refused.stderr
    assert {p.name: p.read_text() for p in tree.iterdir()} == before


def test_a_source_tree_is_copied_not_modified(kit: Path, tmp_path: Path) -> None:
    source = kit.parent / "tree"
    target = tmp_path / "build" / "koboldcpp"
    done = subprocess.run(["bash", str(kit / "apply.sh"), str(target)], capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", "KOBOLDCPP_SRC": str(source)})
    assert done.returncode == 0, done.stderr
    assert (target / "model.cpp").read_text() == "line one\nline two, hooked\nline three\n"
    assert (source / "model.cpp").read_text() == "line one\nline two\nline three\n"
