"""The failures qemuprov reports to users. Each carries a hint that says what to do next."""

from __future__ import annotations


class QemuprovError(Exception):
    """Base class: a message for the user, an optional hint, and the exit code it maps to."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


class UserError(QemuprovError):
    """Bad input: a recipe, an argument, a name. Exit 2."""

    exit_code = 2


class BuildError(QemuprovError):
    """A configure, build or install step failed, or the result broke its recipe's promises. Exit 1."""


class InfraError(QemuprovError):
    """The machine could not do what was asked (missing program, engine down, timeout). Exit 1."""
