"""JSON files written whole or not at all: a temporary file beside the target, then one rename."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any


def write_atomic(path: Path, data: Any, indent: int | None = 2) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(data, indent=indent, default=str) + "\n")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def save_cache(path: Path, data: Any) -> None:
    """A cache is worth keeping, not worth failing for: where it cannot be written, say so and go on."""
    try:
        write_atomic(path, data, indent=None)
    except OSError as exc:
        print(f"qemuprov: note: cannot keep the cache {path}: {exc.strerror or exc}", file=sys.stderr)
