"""The tests of what qemuprov takes from outside (archives, a hostile registry, hostile tarball servers) again on
Debian 12's own python3, 3.11.2, which has no tarfile extraction filters: `requires-python` says 3.11, and
Debian 12 is the builder base. scripts/test makes that venv (QEMUPROV_TEST_USER_VENV)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.integration.conftest import FIXTURES

MODULES = ["tests/unit/test_unpack.py", "tests/integration/test_hostile_registry.py",
           "tests/integration/test_bad_sources.py"]


def test_the_hostile_input_tests_pass_on_debian_python_3_11_2(tmp_path: Path) -> None:
    venv = Path(os.environ.get("QEMUPROV_TEST_USER_VENV", FIXTURES / "user-venv"))
    python = venv / "bin" / "python"
    if not python.exists():
        pytest.fail(f"no Debian-python venv at {venv}: run scripts/test, which makes it")
    version = subprocess.run([python, "-c", "import sys, tarfile; print(sys.version.split()[0], "
                                            "hasattr(tarfile, 'data_filter'))"],
                             capture_output=True, text=True, check=True).stdout.split()
    assert version[0].startswith("3.11."), version
    result = subprocess.run([python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--basetemp",
                             str(tmp_path / "inner"), *MODULES], cwd=REPO, capture_output=True, text=True,
                            timeout=900, check=False)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert " passed" in result.stdout.splitlines()[-1] and "failed" not in result.stdout.splitlines()[-1]
