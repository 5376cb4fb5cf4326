"""Every setting follows one precedence (config.setting, config.switch): the flag, else the environment, else
config.toml; a broken file is found even where a flag wins."""

from __future__ import annotations

from pathlib import Path

import pytest

from qemuprov.errors import UserError
from qemuprov.infra import config


@pytest.fixture
def config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    for name in ("QEMUPROV_X", "QEMUPROV_Y"):
        monkeypatch.delenv(name, raising=False)
    (tmp_path / "qemuprov").mkdir()
    return tmp_path / "qemuprov" / "config.toml"


def test_flag_then_environment_then_file(config_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config_file.write_text('[s]\nk = "from-file"\n')
    assert config.setting(None, "QEMUPROV_X", "s", "k") == "from-file"
    monkeypatch.setenv("QEMUPROV_X", "from-env")
    assert config.setting(None, "QEMUPROV_X", "s", "k") == "from-env"
    assert config.setting("from-flag", "QEMUPROV_X", "s", "k") == "from-flag"
    config_file.write_text("[s]\nk = 3\n")
    with pytest.raises(UserError, match=r"\[s\] k must be"):
        config.setting("from-flag", "QEMUPROV_X", "s", "k")


def test_switch(config_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert config.switch("QEMUPROV_Y", "s", "on") is False
    config_file.write_text("[s]\non = true\n")
    assert config.switch("QEMUPROV_Y", "s", "on") is True
    monkeypatch.setenv("QEMUPROV_Y", "0")
    assert config.switch("QEMUPROV_Y", "s", "on") is False
    monkeypatch.setenv("QEMUPROV_Y", "yes")
    with pytest.raises(UserError, match="QEMUPROV_Y: \"yes\" is neither 1 nor 0"):
        config.switch("QEMUPROV_Y", "s", "on")


def test_limit_names_where_a_bad_size_came_from(config_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config_file.write_text('[limits]\nunpack = "lots"\n')
    with pytest.raises(UserError, match=r"config.toml: \[limits\] unpack: \"lots\" is not a size"):
        config.limit("QEMUPROV_X", "unpack", 1)
    monkeypatch.setenv("QEMUPROV_X", "2K")
    assert config.limit("QEMUPROV_X", "unpack", 1) == 2048
