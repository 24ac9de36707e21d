"""LoCoMo's conversations as a conversations file for `halo-client eval pruning`.

    python bench/locomo_windows.py PATH [PATH ...] --out out/locomo/windows.jsonl
                                   [--chars 4400] [--per-conversation 2] [--questions 3] [--tune N]

PATH: LoCoMo's `locomo10.json` (a list of conversations), or the per-conversation files of
`data/multimodal_dialog/locomo10_v2/` in its `data/locomo10.zip` (github.com/snap-research/
locomo; not on a package registry, so bring your copy), or a folder of them. Each conversation
gives its windows with the most questions (`halo_client.evaluation.locomo` says how they are
cut and which questions are asked); the first N conversations' windows are split "tune", the
rest "report". `make bench-locomo LOCOMO=PATH` writes the file and runs the benchmark on it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from halo_client.evaluation.locomo import LocomoFormatError, windows


def _samples(paths: list[Path]) -> list[tuple[str, dict[str, Any]]]:
    files = [f for p in paths for f in (sorted(p.glob("*.json")) if p.is_dir() else [p])]
    samples = []
    for path in files:
        data = json.loads(path.read_text(encoding="utf-8"))
        items = data if isinstance(data, list) else [data]
        for k, sample in enumerate(items):
            name = sample.get("sample_id") if isinstance(sample, dict) else None
            name = name or (path.stem if len(items) == 1 else f"{path.stem}-{k}")
            samples.append((f"locomo-{name}", sample.get("conversation", sample) | {"qa": sample.get("qa", [])}))
    return samples


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--chars", type=int, default=4400, help="characters per window (about 4 per token)")
    parser.add_argument("--per-conversation", type=int, default=2)
    parser.add_argument("--questions", type=int, default=3, help="most questions per window")
    parser.add_argument("--tune", type=int, default=0, help="the first N conversations are for tuning")
    args = parser.parse_args(argv)
    try:
        samples = _samples(args.paths)
        lines = [window for k, (name, sample) in enumerate(samples)
                 for window in windows(sample, name, target_chars=args.chars, per_conversation=args.per_conversation,
                                       max_questions=args.questions,
                                       split="tune" if k < args.tune else "report")]
    except (OSError, ValueError, LocomoFormatError, AttributeError) as exc:
        print(f"locomo_windows: {exc}", file=sys.stderr)
        return 2
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    questions = sum(len(line["questions"]) for line in lines)
    print(f"{len(lines)} windows of {len(samples)} conversations, {questions} questions: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
