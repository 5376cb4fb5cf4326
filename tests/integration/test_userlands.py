"""The host-facing journey on other userlands: Debian 13 (trixie) and sid, each with its own python (3.13, 3.14),
QEMU (10.0, 11.1) and Rust virtiofsd (1.13, 1.14), in containers made from their own packages
(scripts/test-userland), as a normal user (uid 4242) with no container engine: doctor, a --cache-only install
from the suite's registry, env, and verify of the install and of the userland's own stack.

What differs from Debian 12 is written down as assertions: an entry built in the bookworm builder links
bookworm's libraries, which these userlands no longer carry under the same names, and qemuprov says so
instead of pretending the install works."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.integration.conftest import FIXTURES, VIRTIOFSD_TREE, Built, Env, checkout_wheel
from tests.integration.standin import make_tree
from tests.integration.test_binary_cache import _docker_config, _keypair

SUITES = {"trixie": ("10.0", "1.13"), "sid": ("11.1", "1.14")}
JOURNEY = r"""set -e
/opt/qemuprov/bin/pip install -q --disable-pip-version-check --no-deps /wheel/*.whl
# The trees belong to root here: the machine's admin trusts them, as on any shared machine.
git config --system --add safe.directory '*'
mkdir -p /home/journey/tmp && chown journey:journey /home/journey/tmp
exec setpriv --reuid=4242 --regid=4242 --init-groups env HOME=/home/journey TMPDIR=/home/journey/tmp \
  PATH=/opt/qemuprov/bin:/usr/bin:/bin sh -c '
q="/opt/qemuprov/bin/qemuprov --recipes /recipes"
step() { name=$1; shift; "$@" > /out/$name.out 2> /out/$name.err; echo $? > /out/$name.rc; }
step doctor $q doctor --json
step install-qemu $q build standin-journey --runner docker --cache "$QEMU_CACHE" --cache-only --json
step install-daemon $q build fixture-virtiofsd --runner docker --cache "$DAEMON_CACHE" --cache-only --json
step env $q env fixture-virtiofsd
step verify-install $q verify fixture-virtiofsd --accel tcg --json
step verify-own $q verify --qemu /usr/bin/qemu-system-x86_64 --virtiofsd /usr/libexec/virtiofsd --accel tcg --json
'
"""


@pytest.fixture(scope="module")
def entries(qenv: Env, engine: str, daemon_only: Built, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """In the suite's registry, signed: a stand-in QEMU from the bookworm builder, and the Rust virtiofsd alone from
    the trixie-crates builder; their recipes, and a wheel of this checkout."""
    host = os.environ.get("QEMUPROV_TEST_REGISTRY", "")
    if not host:
        pytest.fail("no test registry: run scripts/test, which starts one (QEMUPROV_TEST_REGISTRY)")
    base = tmp_path_factory.mktemp("journey")
    control = Path(qenv.vars["QEMUPROV_CACHE"]) / "work" / "standin-journey" / "control"
    qenv.write_recipe("standin-journey", make_tree(base / "tree", control))
    (base / "recipes").mkdir()
    for name in ("standin-journey", "fixture-virtiofsd"):
        (base / "recipes" / f"{name}.toml").write_text((qenv.recipes / f"{name}.toml").read_text())
    password = (FIXTURES / "registry" / "password").read_text().strip()
    docker = _docker_config(base / "docker", host, "qemuprov", password)
    key, pub = _keypair(base / "team")
    signed = {**qenv.vars, "DOCKER_CONFIG": docker, "QEMUPROV_SIGNING_KEY": key}
    urls = {"QEMU_CACHE": f"{host}/qemuprov/journey-qemu-{os.getpid()}",
            "DAEMON_CACHE": f"{host}/qemuprov/journey-daemon-{os.getpid()}"}
    built = qenv.run("build", "standin-journey", "--runner", "docker", "--cache", urls["QEMU_CACHE"], "--push",
                     env=signed)
    assert built.returncode == 0, built.stdout + built.stderr
    pushed = qenv.run("push", str(daemon_only.prefix), urls["DAEMON_CACHE"], env=signed)
    assert pushed.returncode == 0, pushed.stdout + pushed.stderr
    checkout_wheel(base / "wheel")
    subprocess.run(["chmod", "-R", "a+rX", str(base)], check=True)
    return {"base": str(base), "trees": f"{base / 'tree'} {VIRTIOFSD_TREE}", "docker": docker, "pub": pub, **urls}


def _journey(suite: str, entries: dict[str, str], out: Path) -> dict[str, tuple[int, str, str]]:
    out.mkdir()
    os.chmod(out, 0o777)
    mounts = [f"{entries['base']}/wheel:/wheel:ro", f"{entries['base']}/recipes:/recipes:ro",
              f"{entries['docker']}:/docker:ro", f"{entries['pub']}:/keys/pub:ro", f"{out}:/out",
              *(f"{tree}:{tree}:ro" for tree in entries["trees"].split())]
    argv = ["docker", "run", "--rm", "--network", "host", "--security-opt", "seccomp=unconfined",
            "--security-opt", "apparmor=unconfined", *(a for m in mounts for a in ("-v", m)),
            "-e", f"QEMU_CACHE={entries['QEMU_CACHE']}", "-e", f"DAEMON_CACHE={entries['DAEMON_CACHE']}",
            "-e", "DOCKER_CONFIG=/docker", "-e", "QEMUPROV_TRUSTED_KEYS=/keys/pub",
            f"qemuprov-test/userland-{suite}", "sh", "-c", JOURNEY]
    ran = subprocess.run(argv, capture_output=True, text=True, timeout=900, check=False)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    return {rc.stem: (int(rc.read_text()), (out / f"{rc.stem}.out").read_text(), (out / f"{rc.stem}.err").read_text())
            for rc in out.glob("*.rc")}


@pytest.mark.parametrize("suite", list(SUITES))
def test_the_journey_on_another_userland(suite: str, entries: dict[str, str], tmp_path: Path) -> None:
    qemu, virtiofsd = SUITES[suite]
    steps = _journey(suite, entries, tmp_path / "out")
    assert len(steps) == 6, steps
    for name, (_, _, err) in steps.items():
        assert "Traceback" not in err and "internal error" not in err, f"{name}: {err}"
    # doctor: the userland's own QEMU and its virtiofsd, which Debian keeps off PATH
    code, out, err = steps["doctor"]
    checks = json.loads(out)
    assert any(c["area"] == "QEMU" and f"QEMU {qemu}" in c["detail"] for c in checks), checks
    off_path = [c for c in checks if c["area"] == "virtiofsd" and c["what"] == "virtiofsd on PATH"]
    assert off_path and off_path[0]["status"] == "WARN" and "export PATH=" in off_path[0]["hint"], off_path
    # The bookworm-built QEMU entry links bookworm's libraries: refused in one line that names them, nothing installed.
    code, out, err = steps["install-qemu"]
    assert code == 1 and "error while loading shared libraries" in out, out + err
    assert "built in the debian-bookworm builder and links its libraries" in err, err
    # The Rust virtiofsd from the trixie-crates builder installs from the registry, with no engine, as this user.
    code, out, err = steps["install-daemon"]
    assert code == 0 and json.loads(out)["from_cache"] is True, out + err
    code, out, err = steps["env"]
    assert code == 0 and out.startswith("export PATH=/home/journey/.local/share/qemuprov/"), out + err
    # ... and serves the userland's own QEMU in a guest, as the distribution's own pair does.
    for name in ("verify-install", "verify-own"):
        code, out, err = steps[name]
        assert code == 0 and json.loads(out)[0]["ok"] is True, f"{name}: {out} {err}"
    assert f"virtiofsd {virtiofsd}" in steps["doctor"][1] or virtiofsd in steps["doctor"][1]
