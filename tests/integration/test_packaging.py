"""A plain, non-editable `pip install .` into a fresh virtualenv carries the recipes and builder files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO
from tests.unit.test_recipe import SHIPPED_NAMES


def test_wheel_install_in_a_fresh_venv(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = subprocess.run([venv / "bin" / "pip", "install", "-q", "--disable-pip-version-check", str(REPO)],
                         capture_output=True, text=True)
    assert pip.returncode == 0, pip.stderr
    out = subprocess.run([venv / "bin" / "qemuprov", "recipes", "--json"], capture_output=True, text=True,
                         cwd=tmp_path)
    recipes = json.loads(out.stdout)
    assert [r["name"] for r in recipes] == SHIPPED_NAMES
    assert all("site-packages/qemuprov/_data/recipes" in r["path"] for r in recipes)
    show = subprocess.run([venv / "bin" / "qemuprov", "show", "virtio-fs-dev"], capture_output=True, text=True,
                          cwd=tmp_path)
    assert show.returncode == 0 and "dax=yes" in show.stdout
    # the shipped patch comes with the wheel, found by the recipe that names it
    show = subprocess.run([venv / "bin" / "qemuprov", "show", "virtiofsd-dax"], capture_output=True, text=True,
                          cwd=tmp_path)
    assert show.returncode == 0 and "site-packages/qemuprov/_data/patches/virtiofsd-1.14.0-dax-window.patch" \
        in show.stdout, show.stdout + show.stderr
    # every module of the checkout is installed (a .gitignore pattern such as build/ once left a layer out)
    site = next((venv / "lib").glob("python3*/site-packages/qemuprov"))
    ours = {p.relative_to(REPO / "qemuprov") for p in (REPO / "qemuprov").rglob("*.py") if "__pycache__" not in p.parts}
    assert ours <= {p.relative_to(site) for p in site.rglob("*.py")}
