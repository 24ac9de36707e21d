"""README's pruning demo is the real output of the command it shows (issue 21, item 8).

The example is a scripted chat (docs/demo-pruning.txt) at temperature 0, so it is the same on
every run; the test runs `halo-client demo` with README's CHAT_ARGS exactly as `make demo` does
(another port and session file) and compares. With HALO_UPDATE_DOCS=1 it writes the real output
into README instead (after a change that changes what the model writes)."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.model, pytest.mark.process]

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
EXAMPLE = re.compile(r'```sh\nrm -f halo-demo-session\.json\nmake demo CHAT_ARGS="([^"]*)" < (\S+)\n```\n\n'
                     r"```text\n(.*?)\n```", re.S)


def test_the_readme_pruning_demo_is_what_the_demo_does(tmp_path: Path) -> None:
    text = README.read_text()
    found = EXAMPLE.search(text)
    assert found, "README's pruning demo (a `make demo CHAT_ARGS=... < FILE` block and its output) is missing"
    chat_args, script, shown = shlex.split(found.group(1)), ROOT / found.group(2), found.group(3)
    result = subprocess.run([sys.executable, "-m", "halo_client.cli", "demo", "--port", "0", "--session",
                             str(tmp_path / "demo.json"), *chat_args], stdin=script.open(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, timeout=900,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert result.returncode == 0, result.stdout
    output = result.stdout[result.stdout.index("you> "):].rstrip("\n")
    if os.environ.get("HALO_UPDATE_DOCS") == "1":
        README.write_text(text[: found.start(3)] + output + text[found.end(3):])
        return
    # what the example is for: pruning happens, within the budget, ranked by the newest message's
    # attention rather than by age; the fact goes with the older text, and a later question in other
    # words (no word of the fact) brings it back by meaning
    pruned = [line for line in output.splitlines() if line.startswith("  pruned ")]
    assert pruned and "over the budget" not in output, output
    assert all("(question's attention " in line for line in pruned), pruned
    first = re.search(r"pruned sentence (\d+) ", pruned[0])
    assert first and int(first.group(1)) > 1, "the oldest sentence would go first by age alone"
    assert any("My locker code is 4817." in line for line in pruned), "the fact went with the older text"
    recalled = [line for line in output.splitlines() if line.startswith("  recalled ")]
    assert len(recalled) == 1 and "by meaning (similarity " in recalled[0] and "My locker code is 4817." in recalled[0]
    assert "My locker code is 4817." in output.split("\nsystem:\n", 1)[1], "/show: the fact is back"
    assert output == shown, ("README's pruning demo is not what the command prints now; update it with "
                             "HALO_UPDATE_DOCS=1 pytest tests/cli/test_readme_demo.py")
