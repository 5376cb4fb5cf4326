"""DAX on today's QEMU: qemuprov's patch on the Rust virtiofsd 1.14.0 maps files into the shared memory region of
QEMU 11.1's generic vhost-user device. The daemon is built by qemuprov from the shipped virtiofsd-dax recipe
(offline, Debian sid's crates); the QEMU is Debian sid's own 1:11.1.3 for both arches, run in the sid userland
as a normal user, exactly as a user whose distribution ships QEMU 11.1 would. The guest is the suite's kit."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from qemuprov import arches
from qemuprov.proving import fio, guestkit
from tests.integration.conftest import VIRTIOFSD_14_TREE, Built, Env, checkout_wheel

SID = "qemuprov-test/userland-sid"
RUN = r"""set -e
/opt/qemuprov/bin/pip install -q --disable-pip-version-check --no-deps /wheel/*.whl
mkdir -p /home/journey/.cache/qemuprov /home/journey/tmp
cp -r /kits /home/journey/.cache/qemuprov/guest
chown -R journey:journey /home/journey/.cache /home/journey/tmp
exec setpriv --reuid=4242 --regid=4242 --init-groups env HOME=/home/journey TMPDIR=/home/journey/tmp \
  PATH=/opt/qemuprov/bin:/usr/bin:/bin sh -c '
q=/opt/qemuprov/bin/qemuprov
step() { name=$1; shift; "$@" > /out/$name.out 2> /out/$name.err; echo $? > /out/$name.rc; }
step probe $q probe /usr/bin/qemu-system-x86_64 /usr/libexec/virtiofsd /dax/bin/virtiofsd
step verify-dax $q verify --qemu /usr/bin/qemu-system-x86_64 --qemu /usr/bin/qemu-system-aarch64 \
  --virtiofsd /dax/bin/virtiofsd --accel tcg --json
step verify-unpatched $q verify --qemu /usr/bin/qemu-system-x86_64 --virtiofsd /usr/libexec/virtiofsd \
  --accel tcg --json
step verify-osv $q verify --osv --qemu /usr/bin/qemu-system-x86_64 --virtiofsd /dax/bin/virtiofsd --accel tcg --json
step bench $q bench --qemu /usr/bin/qemu-system-x86_64 --virtiofsd /dax/bin/virtiofsd --quick --accel tcg --json
'
"""


@pytest.fixture(scope="module")
def on_sid(qenv: Env, dax_daemon: Built, tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[int, str, str]]:
    """One container of the sid userland runs every step; their exit codes and outputs by name."""
    base = tmp_path_factory.mktemp("dax-sid")
    checkout_wheel(base / "wheel")
    kits = base / "kits"  # the suite's guest kits (made here once), so the container fetches nothing
    os.environ["QEMUPROV_CACHE"] = qenv.vars["QEMUPROV_CACHE"]
    try:
        for arch in (arches.X86_64, arches.AARCH64):
            kit = guestkit.ensure_kit(arch)
            shutil.copytree(kit.kernel.parent, kits / kit.kernel.parent.name)
        bench_kit = guestkit.ensure_kit(arches.X86_64, guestkit.GENERIC)  # and bench's guest, with its fio
        shutil.copytree(bench_kit.kernel.parent, kits / bench_kit.kernel.parent.name)
        shutil.copytree(fio.ensure_fio(arches.X86_64).parent, kits / fio.cached(arches.X86_64).parent.name)
    finally:
        del os.environ["QEMUPROV_CACHE"]
    out = base / "out"
    out.mkdir()
    subprocess.run(["chmod", "-R", "a+rX", str(base), str(dax_daemon.prefix.parent)], check=True)
    os.chmod(out, 0o777)
    mounts = [f"{base / 'wheel'}:/wheel:ro", f"{kits}:/kits:ro", f"{dax_daemon.prefix}:/dax:ro", f"{out}:/out"]
    # --shm-size: OSv's run.py line backs its 2 GiB guest with a file in /dev/shm, which a container keeps at 64 MiB
    argv = ["docker", "run", "--rm", "--network", "none", "--shm-size", "2304m", "--security-opt", "seccomp=unconfined",
            "--security-opt", "apparmor=unconfined", *(a for m in mounts for a in ("-v", m)), SID, "sh", "-c", RUN]
    ran = subprocess.run(argv, capture_output=True, text=True, timeout=900, check=False)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    return {rc.stem: (int(rc.read_text()), (out / f"{rc.stem}.out").read_text(), (out / f"{rc.stem}.err").read_text())
            for rc in out.glob("*.rc")}


def test_the_patched_daemon_is_built_with_its_patch_recorded_and_offers_the_window(dax_daemon: Built,
                                                                                  qenv: Env) -> None:
    recipe = dax_daemon.manifest["recipe"]
    (patch,) = recipe["virtiofsd"]["patches"]  # type: ignore[index]
    assert patch["name"] == "virtiofsd-1.14.0-dax-window.patch" and len(patch["sha256"]) == 64
    (daemon,) = [p for p in dax_daemon.manifest["probe"] if p["kind"] == "virtiofsd"]  # type: ignore[attr-defined]
    assert daemon["version"] == "1.14.0" and daemon["dax_window"] is True
    # the tree was patched (in this run or an earlier one: its stamp names the patch, which a change re-applies)
    work = Path(qenv.vars["QEMUPROV_CACHE"]) / "work" / "fixture-virtiofsd-dax"
    assert (work / "virtiofsd-src" / "src" / "dax.rs").is_file()
    assert f"patch:{patch['sha256']}" in (work / "virtiofsd-src.stamp").read_text()


def test_the_patchs_own_checks_pass_their_rust_unit_tests(dax_daemon: Built, qenv: Env) -> None:
    """The window's checks (ranges outside it, misaligned, past a file offset, a remap in place, a refused map),
    run offline with cargo in the builder the daemon was built in, on the tree as qemuprov patched it."""
    image = dax_daemon.manifest["builder_image"]["tag"]  # type: ignore[index]
    tree = Path(qenv.vars["QEMUPROV_CACHE"]) / "work" / "fixture-virtiofsd-dax" / "virtiofsd-src"
    target = Path(qenv.vars["QEMUPROV_CACHE"]) / "work" / "fixture-virtiofsd-dax" / "virtiofsd-target"
    ran = subprocess.run(["docker", "run", "--rm", "--network", "none", "-v", f"{tree}:/src", "-v",
                          f"{target}:/target", "-e", "CARGO_TARGET_DIR=/target", "-w", "/src", image,
                          "cargo", "test", "--release", "--offline", "--lib", "dax::"],
                         capture_output=True, text=True, timeout=900, check=False)
    assert ran.returncode == 0, ran.stdout[-3000:] + ran.stderr[-3000:]
    assert "test result: ok. 8 passed" in ran.stdout, ran.stdout[-2000:]


def test_a_patch_that_does_not_apply_is_one_line_naming_it(qenv: Env, dax_daemon: Built, tmp_path: Path) -> None:
    recipes = tmp_path / "recipes"
    recipes.mkdir()
    (recipes / "stale.patch").write_text("--- a/src/main.rs\n+++ b/src/main.rs\n@@ -1,1 +1,1 @@\n-no such line\n+x\n")
    (recipes / "stale-dax.toml").write_text(
        f'format = 1\nname = "stale-dax"\nextends = "virtiofsd"\n[virtiofsd]\ngit = "file://{VIRTIOFSD_14_TREE}"\n'
        'ref = "v1.14.0-debian"\nbuilder = "debian-sid-crates"\ncrates = "debian"\npatches = ["stale.patch"]\n')
    result = qenv.run("--recipes", str(recipes), "build", "stale-dax", "--runner", "docker")
    assert result.returncode == 2, result.stdout + result.stderr
    (line,) = [ln for ln in result.stderr.splitlines() if ln.startswith("qemuprov: error:")]
    assert f"{recipes / 'stale-dax.toml'}: virtiofsd.patches: stale.patch does not apply to" in line, line
    missing = qenv.run("--recipes", str(recipes), "show", "stale-dax")
    assert missing.returncode == 0  # the patch is there: show lists it
    (recipes / "stale.patch").unlink()
    missing = qenv.run("--recipes", str(recipes), "show", "stale-dax")
    assert missing.returncode == 2 and 'virtiofsd.patches: no patch file "stale.patch"' in missing.stderr


def test_probe_says_which_side_lacks_what(on_sid: dict[str, tuple[int, str, str]]) -> None:
    code, out, err = on_sid["probe"]
    assert code == 0, out + err
    qemu_row = next(line for line in out.splitlines() if "qemu-system-x86_64" in line and "11.1.3" in line)
    assert " shmem " in qemu_row, out
    assert "DAX with qemu-system-x86_64 and /dax/bin/virtiofsd: yes, through shmem" in out, out
    unpatched = next(line for line in out.splitlines()
                     if line.startswith("DAX with qemu-system-x86_64 and /usr/libexec"))
    assert "offers none: add qemuprov's patched daemon (qemuprov build virtiofsd-dax)" in unpatched
    assert "--dax-window" in unpatched


def test_verify_maps_a_file_through_the_window_on_both_arches(on_sid: dict[str, tuple[int, str, str]]) -> None:
    code, out, err = on_sid["verify-dax"]
    assert code == 0, out + err
    results = {r["arch"]: r for r in json.loads(out)}
    assert set(results) == {"x86_64", "aarch64"}
    for arch, result in results.items():
        assert result["ok"] is True, result
        assert (result["dax"], result["dax_status"], result["dax_route"]) == (True, "yes", "shmem"), result
        window = [ln for ln in result["log"] if ln.startswith("QEMUPROV: dax-window")]
        assert window and "Cache len: 0x4000000" in window[0], result["log"]
        assert any("dax=always" in ln for ln in result["log"] if ln.startswith("QEMUPROV: dax-mount")), arch
        # the host changed the file while the guest had it mapped: the guest saw it through the window at once
        assert result["dax_sees_host_changes"] is True, result["log"]


def test_the_unpatched_daemon_gives_no_dax_and_says_what_to_add(on_sid: dict[str, tuple[int, str, str]]) -> None:
    code, out, err = on_sid["verify-unpatched"]
    assert code == 0, out + err
    (result,) = json.loads(out)
    assert result["ok"] is True and (result["dax"], result["dax_status"]) == (False, "no"), result
    assert "qemuprov build virtiofsd-dax" in result["dax_reason"] and "--dax-window" in result["dax_reason"]


def test_osv_on_this_route_is_told_why_and_pointed_to_the_fork(on_sid: dict[str, tuple[int, str, str]]) -> None:
    code, out, err = on_sid["verify-osv"]
    assert code == 0, out + err
    (result,) = json.loads(out)
    assert result["ok"] is True and result["dax_status"] == "-", result
    assert "MSI-X" in result["dax_reason"] and "qemuprov build virtio-fs-dev" in result["dax_reason"]


def test_bench_compares_the_window_above_and_below_the_data_on_qemu_11_1(
        on_sid: dict[str, tuple[int, str, str]]) -> None:
    code, out, err = on_sid["bench"]
    assert code == 0, out[-2000:] + err[-3000:]
    (report,) = json.loads(out)
    rows = {row["name"]: row for row in report["settings"]}
    windows = [row for row in rows.values() if row["name"].startswith("DAX ")]
    assert len(windows) == 2, list(rows)  # one window smaller than the data, one well above it
    assert rows["virtio-fs"]["ok"], rows["virtio-fs"]["error"]
    for row in windows:
        assert row["ok"], f"{row['name']}: {row['error']}"
        assert "dax" in row["mount"] and row["dax_window"], row
        assert any(arg.startswith("vhost-user-test-device-pci,") for arg in row["qemu_argv"]), row["qemu_argv"]
        assert "--dax-window" in row["virtiofsd_argv"], row["virtiofsd_argv"]
        assert row["results"]["seqread"]["median"] > 0


def test_a_recipe_with_patches_locks_and_installs_as_before(qenv: Env, dax_daemon: Built) -> None:
    """lock pins the sources, not the patches; the locked build is the same install (its inputs unchanged)."""
    locked = qenv.run("lock", "fixture-virtiofsd-dax")
    lock_file = qenv.recipes / "fixture-virtiofsd-dax.lock"
    try:
        assert locked.returncode == 0 and lock_file.is_file(), locked.stdout + locked.stderr
        again = qenv.run("build", "fixture-virtiofsd-dax", "--runner", "docker")
        assert again.returncode == 0 and "up to date" in again.stdout, again.stdout + again.stderr[-2000:]
    finally:
        lock_file.unlink(missing_ok=True)
