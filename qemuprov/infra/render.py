"""Plain-text tables and JSON output. Plain text so that pipes, logs and golden tests see stable bytes."""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Sequence
from typing import Any


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Cells may come from a manifest someone sent: none can move the terminal's cursor or break a row."""
    cells = [[str(h) for h in headers]] + [["" if c is None else safe_text(str(c)) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
             for row in cells]
    return "\n".join(lines)


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def safe_text(text: str) -> str:
    """Text from outside (a manifest, a registry) made safe to print on one line: control characters, newlines
    among them, become "?", so nothing printed can end a comment or move the terminal's cursor."""
    return _CONTROL.sub("?", text)


def shell_comment(text: str) -> str:
    """A line for `eval "$(...)"` that the shell can only ignore."""
    return f"# {safe_text(text)}" if text else "#"


def xml_comment(text: str) -> str:
    """The text of an XML comment that cannot end early: no "--", and no "-" at its end."""
    cleaned = safe_text(text)
    while "--" in cleaned:
        cleaned = cleaned.replace("--", "- -")
    return cleaned.rstrip("-")


def print_json(data: Any) -> None:
    json.dump(data, sys.stdout, indent=2, sort_keys=False, default=str)
    sys.stdout.write("\n")


def yes_no(value: bool | None) -> str:
    return "?" if value is None else ("yes" if value else "no")


_COLOURS = {"PASS": "\033[32m", "WARN": "\033[33m", "FAIL": "\033[31m"}


def checks(items: Sequence[Any], colour: bool | None = None) -> str:
    """virt-host-validate style: `AREA: what ... : STATUS`, then the detail and the hint, indented."""
    if colour is None:  # https://no-color.org: any non-empty NO_COLOR turns colour off
        colour = sys.stdout.isatty() and not os.environ.get("NO_COLOR")
    width = max((len(f"{c.area}: {c.what}") for c in items), default=0)
    lines = []
    for check in items:
        status = str(check.status)
        shown = f"{_COLOURS[status]}{status}\033[0m" if colour else status
        lines.append(f"{f'{check.area}: {check.what}'.ljust(width)} : {shown}")
        if check.detail:
            lines.append(f"    {check.detail}")
        if check.hint and status != "PASS":
            lines.append(f"    hint: {check.hint}")
    return "\n".join(lines)
