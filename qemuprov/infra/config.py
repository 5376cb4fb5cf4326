"""~/.config/qemuprov/config.toml: settings users keep rather than type (the binary cache, the shared compiler
cache, limits). Each section is a table; a file that does not parse, or a key of the wrong type, is one line
naming the file and the key."""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import TypeVar

from qemuprov.errors import UserError
from qemuprov.infra import paths, safefile

_T = TypeVar("_T")
_SIZE = re.compile(r"^([0-9]+)\s*([KMGT]?)i?B?$", re.IGNORECASE)
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def file() -> Path:
    return paths.user_recipes_dir().parent / "config.toml"


def table(section: str) -> dict[str, object]:
    where = file()
    try:
        found = tomllib.loads(safefile.read_text(where)).get(section, {})
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError, RecursionError) as exc:
        raise UserError(f"{where}: cannot read it ({type(exc).__name__}: {str(exc)[:200]})",
                        hint="fix or remove the file") from None
    if not isinstance(found, dict):
        raise UserError(f"{where}: [{section}] must be a table")
    return found


def value(section: str, key: str, expected: type[_T], what: str) -> _T | None:
    """`key` of `[section]`, which must be an `expected` (what: how to say that type to a user); None: not set."""
    found = table(section).get(key)
    if found is None:
        return None
    if not isinstance(found, expected) or (expected is int and isinstance(found, bool)):
        raise UserError(f"{file()}: [{section}] {key} must be {what}, not {type(found).__name__} {found!r:.60}",
                        hint=f"fix {key} in [{section}] of the file, or remove it")
    return found


def setting(flag: str | None, env: str, section: str, key: str, what: str = "a string in quotes") -> str | None:
    """The one precedence of a setting: the command-line flag, else $ENV, else `key` of `[section]` in config.toml
    (checked even where a flag or the environment wins, so a broken file is found now); None: not set."""
    configured = value(section, key, str, what)
    return flag or os.environ.get(env) or configured


def switch(env: str, section: str, key: str) -> bool:
    """A yes-or-no setting: $ENV=1 or 0, else `key = true|false` of `[section]`, else no."""
    configured = value(section, key, bool, "true or false")
    found = os.environ.get(env)
    if found not in (None, "", "0", "1"):
        raise UserError(f'{env}: "{found[:20]}" is neither 1 nor 0', hint=f"1 or 0, or `{key} = true` in [{section}] "
                                                                          f"of {file()}")
    return found == "1" if found else configured is True


def size(text: str, where: str) -> int:
    """A size such as 4G, 512M or 1048576 (bytes); where names the setting for the error."""
    match = _SIZE.match(text.strip())
    if not match:
        raise UserError(f'{where}: "{text[:40]}" is not a size', hint="give bytes or a size such as 512M or 8G")
    return int(match.group(1)) * _UNITS[match.group(2).upper()]


def limit(env: str, key: str, default: int) -> int:
    """A size limit: $ENV, else `[limits] KEY` in config.toml, else default."""
    found = setting(None, env, "limits", key, 'a size in quotes, e.g. "8G"')
    if not found:
        return default
    return size(found, env if os.environ.get(env) else f"{file()}: [limits] {key}")


def seconds(env: str, default: float, most: float = 86400) -> float:
    """A time limit from $ENV (seconds, more than 0 and at most `most`), else default."""
    text = os.environ.get(env)
    if not text:
        return default
    try:
        found = float(text)
    except ValueError:
        found = -1
    if not 0 < found <= most:
        raise UserError(f'{env}: "{text[:40]}" is not a number of seconds', hint=f"e.g. {default:g}")
    return found
