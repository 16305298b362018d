"""Where a benchmark's published figures go: `bench/results/<name>.json`, which the README quotes."""

from __future__ import annotations

import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def publish(name: str, result: dict) -> Path:
    """Write `result` as bench/results/<name>.json (indented, so a re-publish diffs line by line)."""
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {path}")
    return path
