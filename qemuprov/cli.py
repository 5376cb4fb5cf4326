"""Command line: parse, call, render, choose the exit code. The only place that ends the process; the commands
themselves live in qemuprov/commands/."""

from __future__ import annotations

import argparse
import difflib
import errno
import os
import signal
import sys
import traceback
from collections.abc import Sequence

import argcomplete

from qemuprov import __version__
from qemuprov.commands import ALL, completion
from qemuprov.errors import QemuprovError
from qemuprov.infra import render

EXIT_CODES = """exit codes:
  0        ok
  1        a build or the infrastructure failed (network, engine, disk), or verify/bench found a failure
  2        bad input: a recipe, an argument, a setting (one line names it)
  3        outdated: an upgrade is due
  128+N    stopped by signal N (130 Ctrl-C, 143 SIGTERM, 129 SIGHUP)
  141      the reader of the output went away (| head)
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="qemuprov",
        description="Build, install and probe QEMU + virtiofsd for virtio-fs (with DAX where the "
                    "tree has it).",
        epilog=EXIT_CODES + "\n`qemuprov COMMAND --help` for each command.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"qemuprov {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of unexpected errors")
    parser.add_argument("--recipes", action="append", metavar="DIR",
                        help="an extra recipe directory (repeatable; also QEMUPROV_RECIPES)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for command in ALL:
        each: argparse.ArgumentParser = sub.add_parser(command.name, help=command.summary,
                                                       description=command.description or command.summary)
        each.add_argument("--recipes", action="append", dest="sub_recipes", metavar="DIR",
                          help="an extra recipe directory (repeatable; also before the command)")
        if command.json:
            each.add_argument("--json", action="store_true", help="machine-readable output")
        command.arguments(each)
        each.set_defaults(func=command.run)
    completion.attach(parser)
    return parser


def _command_typo(parser: argparse.ArgumentParser, argv: Sequence[str]) -> str | None:
    """The first word that should be a command and is none, with the commands it may have meant."""
    known = [c.name for c in ALL]
    words = iter(argv)
    for word in words:
        if word == "--recipes":
            next(words, None)
        elif word.startswith("-"):
            continue
        elif word in known:
            return None
        else:
            close = difflib.get_close_matches(word, known, n=3, cutoff=0.6)
            shown = render.safe_text(word)[:40]
            return f'"{shown}" is not a qemuprov command' + (f"; did you mean {' or '.join(close)}?" if close else "")
    return None


class Terminated(KeyboardInterrupt):
    """SIGTERM (or SIGHUP): cleaned up like Ctrl-C, and told apart by the exit status (128 + the signal)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _terminated(signum: int, frame: object) -> None:
    raise Terminated(signum)


def _handle_signals() -> None:
    """Ctrl-C, `kill`, a CI timeout or a closing terminal: clean up (containers, staging, child processes).
    SIGINT is handled even where the parent ignored it (a background job of a script, some CI wrappers): Python
    then installs no handler of its own, and a build would run on through every Ctrl-C. SIGHUP is left ignored
    where it is (nohup)."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _terminated)
    if signal.getsignal(signal.SIGHUP) is not signal.SIG_IGN:
        signal.signal(signal.SIGHUP, _terminated)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argcomplete.autocomplete(parser)  # only acts when the shell asks for completions
    words = list(sys.argv[1:] if argv is None else argv)
    if not [w for w in words if w not in ("--debug",)]:
        parser.print_help()  # `qemuprov` alone: the help, as git and docker give it
        return 0
    if (typo := _command_typo(parser, words)) is not None:
        print(f"qemuprov: error: {typo}", file=sys.stderr)
        print("hint: qemuprov --help lists the commands", file=sys.stderr)
        return 2
    args = parser.parse_args(words)
    args.recipes = [*(args.recipes or ()), *(args.sub_recipes or ())]  # --recipes before or after the command
    func = args.func
    _handle_signals()
    try:
        return func(args)
    except QemuprovError as exc:
        print(f"qemuprov: error: {render.safe_text(exc.message)}", file=sys.stderr)
        if exc.hint:
            print(f"hint: {render.safe_text(exc.hint)}", file=sys.stderr)
        if getattr(args, "json", False):  # a script reading stdout learns of the failure too
            render.print_json({"error": exc.message, "hint": exc.hint, "exit_code": exc.exit_code,
                               **({"reason": exc.reason} if hasattr(exc, "reason") else {})})
        return exc.exit_code
    except Terminated as exc:
        print(f"qemuprov: stopped by {signal.Signals(exc.signum).name}", file=sys.stderr)
        return 128 + exc.signum
    except KeyboardInterrupt:
        print("qemuprov: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `qemuprov show ... | head -1`: the reader has all it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error when Python flushes
        return 141
    except OSError as exc:  # a full disk, a read-only HOME, a cache path that is a file: the machine's state
        if args.debug:
            traceback.print_exc()
        if exc.errno is None:  # requests and the docker SDK derive their errors from OSError, without one
            print(f"qemuprov: error: {exc}", file=sys.stderr)
            return 1
        where = f": {exc.filename}" if exc.filename else ""
        print(f"qemuprov: error: {exc.strerror or exc}{where}", file=sys.stderr)
        what = "the disk is full: free space" if exc.errno == errno.ENOSPC else "check the permissions and free space"
        untouched = "; the previous install, if any, is untouched" if args.command == "build" else ""
        print(f"hint: {what} where qemuprov works (QEMUPROV_CACHE, QEMUPROV_ROOT or --prefix move its "
              f"directories){untouched}", file=sys.stderr)
        return 1
    except Exception as exc:  # an unexpected failure: one line, the traceback only on request
        if args.debug:
            traceback.print_exc()
        print(f"qemuprov: internal error: {type(exc).__name__}: {exc} (run with --debug for the traceback)",
              file=sys.stderr)
        return 1


__all__ = ["main"]
