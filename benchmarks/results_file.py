"""How the benchmark scripts keep their figures: one JSON file each, normally under benchmarks/results."""

from __future__ import annotations

import json
from pathlib import Path


def write(path: Path, results: dict[str, object]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n")
    print(f"written to {path}")
