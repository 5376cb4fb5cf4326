"""OSv's scripts/run.py as captured (tests/data/captures/osv-run-py): its option list as a parser that refuses
what run.py refuses, and its --dry-run QEMU and virtiofsd lines as argv lists."""

from __future__ import annotations

import argparse
import re
import shlex
from pathlib import Path

CAPTURE = Path(__file__).parent / "data" / "captures" / "osv-run-py"
_OPTION = re.compile(r"^  (-\S.*?)(?:  +\S.*)?$")


class Refused(Exception):
    """run.py's argparse would have stopped with this message."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise Refused(message)


def run_py_parser() -> argparse.ArgumentParser:
    """A parser with exactly the options of run-py-help.txt, each taking a value where run.py's does."""
    parser = _Parser(prog="run", add_help=False)
    text = (CAPTURE / "run-py-help.txt").read_text()
    for line in text.split("\noptions:\n", 1)[1].splitlines():
        match = _OPTION.match(line)
        if not match:
            continue
        specs = [s.strip() for s in match.group(1).split(", ")]
        flags = [s.split()[0] for s in specs]
        value = specs[-1].split(maxsplit=1)[1] if " " in specs[-1] else None
        if value is None:
            parser.add_argument(*flags, action="store_true")
        elif value.startswith("{"):
            parser.add_argument(*flags, choices=value.strip("{}").split(","))
        elif value.startswith("["):
            parser.add_argument(*flags, nargs="?")
        else:
            parser.add_argument(*flags, action="append")
    return parser


def run_py_words(line: str) -> list[str]:
    """The arguments of a printed run.py line, less `sudo env PATH=...` and the script's own path."""
    words = shlex.split(line)
    return words[words.index("./scripts/run.py") + 1:]


def dry_run(name: str) -> tuple[list[str], list[str]]:
    """(virtiofsd argv, QEMU argv) from a --dry-run capture: one argument per line, continued with ' \\'."""
    text = (CAPTURE / name).read_text()
    commands = []
    for block in re.split(r"\n(?=virtiofsd \\|\S*qemu-system-\S+ \\)", text):
        lines = block.split(" \\\n")
        if lines[0].startswith(("virtiofsd", "PREFIX", "qemu-system")):
            commands.append([piece.rstrip("\n") for piece in lines])
    daemon, qemu = commands
    return _split_words(daemon), _split_words(qemu)


def _split_words(pieces: list[str]) -> list[str]:
    """Each captured piece is one option with its value ('-m 2G'), or a lone word."""
    words: list[str] = []
    for piece in pieces:
        words += piece.split(" ", 1) if piece.startswith("-") else [piece]
    return words
