"""~/.config/qemuprov/config.toml: settings users keep rather than type (the binary cache, the shared compiler
cache). Each section is a table; a file that does not parse is one line naming it."""

from __future__ import annotations

import tomllib

from qemuprov import paths
from qemuprov.errors import UserError


def table(section: str) -> dict[str, object]:
    file = paths.user_recipes_dir().parent / "config.toml"
    try:
        found = tomllib.loads(file.read_text()).get(section, {})
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise UserError(f"{file}: cannot read it ({exc})", hint="fix or remove the file") from None
    if not isinstance(found, dict):
        raise UserError(f"{file}: [{section}] must be a table")
    return found
