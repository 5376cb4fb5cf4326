"""How the benchmark scripts keep their figures: one JSON file each, normally under benchmarks/results."""

from __future__ import annotations

import json
from pathlib import Path


def write(path: Path, results: dict[str, object]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n")
    print(f"written to {path}")


def print_ratios(results: dict[str, object], keys: tuple[str, ...], base: str = "a_osv_flow_s") -> None:
    """Each figure in seconds and as a ratio of the base, measured in the same run."""
    width = max(len(k) for k in keys) + 4
    reference = float(results[base])  # type: ignore[arg-type]
    print(f"\n{'step':<{width}}{'seconds':>10}{'x (a)':>9}")
    for key in keys:
        seconds = float(results[key])  # type: ignore[arg-type]
        print(f"{key:<{width}}{seconds:>10.2f}{seconds / reference:>9.3f}")


def finish(results: dict[str, object], keys: tuple[str, ...], path: Path, scratch: Path, *lines: str) -> None:
    """The end of a benchmark run: the ratios, any lines of detail, the JSON file, and where the logs are."""
    print_ratios(results, keys)
    for line in lines:
        print(line)
    write(path, results)
    print(f"logs in {scratch}")
