"""`qemuprov completion bash|zsh|fish`: the shell code that completes qemuprov's commands, options, recipe names
and install names (argcomplete, as virtme-ng does), and the completers themselves. A completer answers fast and
never fails: a broken recipe or install simply offers nothing."""

from __future__ import annotations

import argparse
import contextlib
from typing import Any

from qemuprov.commands.base import Command
from qemuprov.recipe import RecipeBook, default_layers
from qemuprov.records import installs

SHELLS = ("bash", "zsh", "fish")


def recipe_names(prefix: str, parsed_args: argparse.Namespace, **_: Any) -> list[str]:
    layers = [*(getattr(parsed_args, "recipes", None) or ()), *(getattr(parsed_args, "sub_recipes", None) or ())]
    with contextlib.suppress(Exception):  # a completer must never print a traceback into the user's prompt
        return [n for n in RecipeBook(default_layers(layers)).names() if n.startswith(prefix)]
    return []


def install_names(prefix: str, **_: Any) -> list[str]:
    with contextlib.suppress(Exception):
        return sorted({e.name for e in installs.list_installs() if e.name.startswith(prefix)})
    return []


COMPLETERS = {"RECIPE": recipe_names, "NAME|PREFIX": install_names}


def attach(parser: argparse.ArgumentParser) -> None:
    """Give every positional named RECIPE or NAME|PREFIX its completer, in every subcommand."""
    for action in parser._actions:  # argparse keeps no public list of a parser's actions
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                attach(sub)
        elif not action.option_strings and action.metavar in COMPLETERS:
            action.completer = COMPLETERS[str(action.metavar)]  # type: ignore[attr-defined]


def cmd_completion(args: argparse.Namespace) -> int:
    import argcomplete

    print(argcomplete.shellcode(["qemuprov"], shell=args.shell), end="")
    return 0


def _arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("shell", choices=SHELLS, help="the shell to complete in")


COMPLETION = Command(
    "completion", "print the shell code that completes qemuprov (bash, zsh, fish)", cmd_completion, _arguments,
    description="Print the shell code that completes qemuprov's commands, options, recipe names and install "
                "names. bash: eval \"$(qemuprov completion bash)\" in ~/.bashrc; zsh: the same in ~/.zshrc; "
                "fish: qemuprov completion fish > ~/.config/fish/completions/qemuprov.fish")
