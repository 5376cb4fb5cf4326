"""The command line's manners, as users have them from git, Docker and pip: the help when nothing is asked,
"did you mean" for a mistyped command, every positional explained, the exit codes listed whole, hints that name
only what exists, and completion driven as the shell drives it."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest

from qemuprov import cli


def _qemuprov(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "qemuprov", *args], capture_output=True, text=True, timeout=60,
                          check=False, env={**os.environ, **env})


def test_qemuprov_alone_prints_the_help() -> None:
    result = _qemuprov()
    assert result.returncode == 0 and result.stdout.startswith("usage: qemuprov") and "build" in result.stdout


def test_a_mistyped_command_gets_did_you_mean() -> None:
    result = _qemuprov("buidl", "qemu-7.2")
    assert result.returncode == 2
    assert result.stderr.splitlines()[0] == 'qemuprov: error: "buidl" is not a qemuprov command; did you mean build?'
    far = _qemuprov("--recipes", "/tmp", "frobnicate")
    assert far.returncode == 2 and "did you mean" not in far.stderr and '"frobnicate" is not' in far.stderr


def test_the_help_lists_every_exit_code() -> None:
    text = _qemuprov("--help").stdout
    for code in ("0 ", "1 ", "2 ", "3 ", "128+N", "141"):
        assert f"\n  {code}" in text, code


def test_every_positional_of_every_command_says_what_it_is() -> None:
    parser = cli.build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, sub in commands.choices.items():
        for action in sub._actions:
            if not action.option_strings:
                assert action.help, f"qemuprov {name}: {action.metavar or action.dest} has no help text"


def test_a_hint_names_only_a_recipe_that_exists(isolated_home: Path) -> None:
    nope = _qemuprov("remove", "nope")
    assert nope.returncode == 2 and "qemuprov build nope" not in nope.stderr and "qemuprov recipes" in nope.stderr
    real = _qemuprov("env", "qemu-7.2")
    assert real.returncode == 2 and "hint: qemuprov build qemu-7.2" in real.stderr


def _complete(line: str, tmp_path: Path, **env: str) -> list[str]:
    """What bash would offer for line, asked as the shell code of `qemuprov completion bash` asks."""
    out = tmp_path / "completions"
    result = _qemuprov(_ARGCOMPLETE="1", _ARGCOMPLETE_SHELL="bash", COMP_LINE=line, COMP_POINT=str(len(line)),
                       _ARGCOMPLETE_IFS="\n", _ARGCOMPLETE_STDOUT_FILENAME=str(out), COMP_TYPE="9", **env)
    assert result.returncode == 0, result.stderr
    return [w.strip() for w in out.read_text().split("\n") if w.strip()]


def test_completion_offers_commands_options_recipes_and_installs(isolated_home: Path, tmp_path: Path) -> None:
    from tests.manifests import manifest_json

    assert "build" in _complete("qemuprov bu", tmp_path) and "bench" in _complete("qemuprov be", tmp_path)
    assert "--runner" in _complete("qemuprov build --ru", tmp_path)
    recipes = _complete("qemuprov build qemu-", tmp_path)
    assert "qemu-7.2" in recipes and all(r.startswith("qemu-") for r in recipes)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "zzz-mine.toml").write_text('format = 1\nname = "zzz-mine"\nextends = "qemu-7.2"\n')
    assert _complete(f"qemuprov --recipes {mine} build zzz", tmp_path) == ["zzz-mine"]
    root = tmp_path / "root"
    for name in ("qemu-7.2", "qemu-10.0"):
        (root / name).mkdir(parents=True)
        (root / name / "qemuprov.json").write_text(manifest_json(name=name, prefix=str(root / name)))
    assert sorted(_complete("qemuprov env qemu", tmp_path, QEMUPROV_ROOT=str(root))) == ["qemu-10.0", "qemu-7.2"]
    assert _complete("qemuprov remove qemu-1", tmp_path, QEMUPROV_ROOT=str(root)) == ["qemu-10.0"]


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_completion_prints_shell_code_the_shell_accepts(shell: str, tmp_path: Path) -> None:
    result = _qemuprov("completion", shell)
    assert result.returncode == 0 and "qemuprov" in result.stdout
    if shell == "bash":
        (tmp_path / "c.sh").write_text(result.stdout)
        checked = subprocess.run(["bash", "-n", str(tmp_path / "c.sh")], capture_output=True, text=True)
        assert checked.returncode == 0, checked.stderr
    assert _qemuprov("completion", "tcsh").returncode == 2


def test_every_command_that_prints_a_result_takes_json() -> None:
    parser = cli.build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    takes = {name for name, sub in commands.choices.items() if any("--json" in a.option_strings for a in sub._actions)}
    # env prints shell lines for eval, completion prints shell code: neither is a result
    assert set(commands.choices) - takes == {"env", "completion"}, set(commands.choices) - takes


def test_remove_json_says_what_went(tmp_path: Path) -> None:
    import json

    from tests.manifests import manifest_json

    root = tmp_path / "root"
    (root / "q").mkdir(parents=True)
    (root / "q" / "qemuprov.json").write_text(manifest_json(name="q", prefix=str(root / "q")))
    result = _qemuprov("remove", "q", "--json", QEMUPROV_ROOT=str(root))
    assert result.returncode == 0 and json.loads(result.stdout) == {"removed": "q", "prefix": str(root / "q")}
