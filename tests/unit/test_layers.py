"""The folders are the layers (docs/architecture.md): a module imports only from its own folder and the folders
below it, and the shared vocabulary (errors, recipe). An import that runs upward fails here, naming it."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import REPO

# bottom to top
LAYERS = ("infra", "arches", "recipe", "sources", "knowledge", "records", "ci", "proving", "building", "host",
          "commands", "cli", "__main__")
VOCABULARY = ("errors", "__init__")  # below everything: every layer may say what went wrong


def _layer(module: str) -> int:
    """qemuprov.X.Y -> the rank of X; the vocabulary ranks below every layer."""
    parts = module.split(".")
    top = parts[1] if len(parts) > 1 else ""
    if top in VOCABULARY or not top:
        return -1
    return LAYERS.index(top)


def _imports(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("qemuprov"):
            if node.module == "qemuprov":  # from qemuprov import x: x is a folder or the vocabulary
                found += [f"qemuprov.{alias.name}" for alias in node.names if alias.name != "__version__"]
            else:
                found.append(node.module)
        elif isinstance(node, ast.Import):
            found += [alias.name for alias in node.names if alias.name.startswith("qemuprov")]
    return found


def test_nothing_imports_upward() -> None:
    package = REPO / "qemuprov"
    upward = []
    for path in sorted(package.rglob("*.py")):
        module = "qemuprov." + ".".join(path.relative_to(package).with_suffix("").parts)
        for target in _imports(path):
            if _layer(target) > _layer(module):
                upward.append(f"{module} imports {target}")
    assert upward == []


def test_every_module_is_in_a_layer_or_the_vocabulary() -> None:
    package = REPO / "qemuprov"
    tops = {p.relative_to(package).parts[0].removesuffix(".py") for p in package.rglob("*.py")}
    assert tops <= set(LAYERS) | set(VOCABULARY), tops - set(LAYERS) - set(VOCABULARY)


def test_only_the_workspace_makes_the_paths_of_a_build() -> None:
    """A build's work dir, its logs and stamps, and what is made beside a prefix come from one room
    (building/workspace.py, on infra/paths.py), so the cleanup of a killed build matches what was made."""
    makers = ("paths.work_dir(", "make_side_dir(", '"logs"', ".stamp", "build.log")
    allowed = {"qemuprov/building/workspace.py", "qemuprov/infra/paths.py"}
    found = [f"{path.relative_to(REPO)}:{number}: {line.strip()}"
             for path in sorted((REPO / "qemuprov").rglob("*.py")) if str(path.relative_to(REPO)) not in allowed
             for number, line in enumerate(path.read_text().splitlines(), 1)
             if any(maker in line for maker in makers) and not line.lstrip().startswith(("#", "def "))]
    assert found == []
