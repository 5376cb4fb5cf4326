"""Shared fixtures: every test runs with its own HOME and XDG dirs, so nothing touches the user's."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

DATA = Path(__file__).parent / "data"
CAPTURES = DATA / "captures"
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    for var, sub in (("XDG_CONFIG_HOME", ".config"), ("XDG_DATA_HOME", ".local/share"),
                     ("XDG_CACHE_HOME", ".cache")):
        monkeypatch.setenv(var, str(home / sub))
    for var in ("QEMUPROV_RECIPES", "QEMUPROV_ROOT", "QEMUPROV_CACHE"):
        monkeypatch.delenv(var, raising=False)
    return home


def pytest_report_header() -> str:
    return f"qemuprov tests; uid={os.getuid()}"
