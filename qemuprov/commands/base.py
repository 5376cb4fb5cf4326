"""What a command module hands the front door: its commands, each with its arguments and its run()."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass

from qemuprov.recipe import RecipeBook, default_layers


def _no_arguments(parser: argparse.ArgumentParser) -> None:
    pass


@dataclass(frozen=True)
class Command:
    name: str
    summary: str
    run: Callable[[argparse.Namespace], int]
    arguments: Callable[[argparse.ArgumentParser], None] = _no_arguments
    json: bool = False  # takes --json
    description: str | None = None  # --help's text, where the summary is not enough


def book(args: argparse.Namespace) -> RecipeBook:
    """The recipes the command line names: shipped, the user's, QEMUPROV_RECIPES, --recipes."""
    return RecipeBook(default_layers(args.recipes or ()))
