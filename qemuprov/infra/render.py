"""Plain-text tables and JSON output. Plain text so that pipes, logs and golden tests see stable bytes."""

from __future__ import annotations

import json
import os
import re
import sys
import unicodedata
from collections.abc import Sequence
from typing import Any

from qemuprov.errors import UserError


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Cells may come from a manifest someone sent: none can move the terminal's cursor or break a row."""
    cells = [[str(h) for h in headers]] + [["" if c is None else safe_text(str(c)) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
             for row in cells]
    return "\n".join(lines)


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def _escaped(char: str) -> str:
    return f"\\x{ord(char):02x}" if ord(char) < 0x100 else f"\\u{ord(char):04x}" if ord(char) < 0x10000 \
        else f"\\U{ord(char):08x}"


def safe_text(text: str) -> str:
    """Text from outside (a manifest, a registry, an engine, a guest) made safe to print on one line: control
    characters, newlines among them, become "?", so nothing printed can end a comment or move the terminal's
    cursor; format characters (bidi overrides, zero-width joiners and spaces) are shown escaped, so no name can
    pass for another or reorder the line around it."""
    return "".join(_escaped(c) if unicodedata.category(c) in ("Cf", "Cs", "Co") else c
                   for c in _CONTROL.sub("?", text))


_NOT_XML = re.compile("[^\x09\x0a\x0d\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def check_xml_text(text: str, what: str) -> str:
    """text, where XML 1.0 can hold it; a UserError naming what holds a character it cannot (a document with one
    does not parse, and no escape exists for it)."""
    found = _NOT_XML.search(text)
    if found:
        raise UserError(f"{what} holds the character {_escaped(found.group())}, which an XML document (libvirt's "
                        f"domain) cannot hold: {safe_text(text)[:120]}", hint="rename it, or choose another path")
    return text


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
