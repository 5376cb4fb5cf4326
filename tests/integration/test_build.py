"""A real QEMU 7.2 tree, built with the host runner, installed, probed; then the fault cases."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
from pathlib import Path

import filelock
import jsonschema

from qemuprov.records import manifest
from tests.integration.conftest import TAG, TREE, Built, Env


def test_build_installs_qemu_and_virtiofsd_on_path(built: Built) -> None:
    bin_dir = built.prefix / "bin"
    assert sorted(p.name for p in bin_dir.iterdir()) == ["qemu-system-aarch64", "qemu-system-x86_64", "virtiofsd"]
    version = subprocess.run([bin_dir / "qemu-system-x86_64", "--version"], capture_output=True, text=True)
    assert version.returncode == 0 and "QEMU emulator version 7.2" in version.stdout
    daemon = subprocess.run([bin_dir / "virtiofsd", "--help"], capture_output=True, text=True)
    assert daemon.returncode == 0 and "-o source=PATH" in daemon.stdout
    assert not any(built.prefix.parent.glob(".qemuprov-*")), "staging directories were left behind"


def test_manifest_records_the_build(qenv: Env, built: Built) -> None:
    m = built.manifest
    jsonschema.validate(m, json.loads(manifest.SCHEMA_FILE.read_text()))  # the schema shipped for CI users
    commit = subprocess.run(["git", "-C", str(TREE), "rev-parse", f"{TAG}^{{commit}}"], capture_output=True,
                            text=True).stdout.strip()
    assert m["source"]["commit"] == commit  # type: ignore[index]
    argv = [a["arg"] for a in m["plan"]["configure"]]  # type: ignore[index]
    assert "--target-list=x86_64-softmmu,aarch64-softmmu" in argv and "--enable-virtiofsd" in argv
    assert argv[-1] == "--disable-werror"  # the recipe's extra arguments come last
    # the host compilers are part of the command line that reproduces the build
    assert m["reproduce"].startswith("CC=clang CXX=clang++ qemuprov ")  # type: ignore[union-attr]
    assert "fixture-7.2" in m["reproduce"]  # type: ignore[operator]
    # configure runs only when the build tree is new or configured otherwise (a rerun of the suite reuses it)
    assert {"build", "install", "probe"} <= set(m["timings"])  # type: ignore[arg-type]
    assert m["virtiofsd"]["flavour"] == "c" and m["virtiofsd"]["wrapper"] is False  # type: ignore[index]
    # Debian's tree has no firmware blobs: the install points at the distribution's firmware.
    assert "/usr/share/seabios" in m["firmware"]  # type: ignore[operator]
    # scripts/test installs clang, so the host build compiles with it, through ccache's masquerade link.
    assert "clang" in m["tools"]["cc"]  # type: ignore[index]
    assert compilers_used(qenv, "fixture-7.2") == {"clang"}


def test_the_install_describes_its_own_virtiofsd_for_libvirt(built: Built) -> None:
    """share/qemu/vhost-user/ (QEMU's docs/interop/vhost-user.json) names the installed daemon, not the
    configure prefix QEMU's own descriptor names, which exists on no machine."""
    vhost_user = built.prefix / "share" / "qemu" / "vhost-user"
    (descriptor,) = [json.loads(p.read_text()) for p in vhost_user.glob("*.json")]
    assert descriptor["type"] == "fs" and descriptor["binary"] == str(built.prefix / "bin" / "virtiofsd")
    assert os.access(descriptor["binary"], os.X_OK)


def test_probe_of_the_install(qenv: Env, built: Built) -> None:
    result = qenv.run("probe", str(built.prefix), "--json")
    assert result.returncode == 0, result.stderr
    by_name = {Path(p["path"]).name: p for p in json.loads(result.stdout)}
    for arch in ("x86_64", "aarch64"):
        q = by_name[f"qemu-system-{arch}"]
        assert q["version"].startswith("7.2.") and q["arch"] == arch
        assert q["vhost_user_fs"] is True and q["dax"] is False
    assert by_name["virtiofsd"]["flavour"] == "c"


def test_list_and_env(qenv: Env, built: Built) -> None:
    listing = qenv.run("list", "--json")
    listed = {e["name"]: e for e in json.loads(listing.stdout)}  # other tests install beside it
    assert listed["fixture-7.2"]["prefix"] == str(built.prefix) and listed["fixture-7.2"]["damaged"] is None
    env = qenv.run("env", "fixture-7.2")
    assert env.stdout.strip() == f'export PATH={built.prefix / "bin"}:"$PATH"'
    shell = subprocess.run(["bash", "-c", env.stdout + "command -v virtiofsd qemu-system-aarch64"],
                           capture_output=True, text=True)
    assert shell.stdout.split() == [str(built.prefix / "bin" / "virtiofsd"),
                                    str(built.prefix / "bin" / "qemu-system-aarch64")]
    osv = qenv.run("env", "fixture-7.2", "--osv")
    assert "--qemu-path" in osv.stdout and "--virtio-fs-dax" not in osv.stdout


def test_unchanged_rebuild_is_up_to_date(qenv: Env, built: Built) -> None:
    result = qenv.run("build", "fixture-7.2", "--runner", "host")
    assert result.returncode == 0, result.stderr
    assert "up to date" in result.stdout
    assert json.loads((built.prefix / "qemuprov.json").read_text())["built_at"] == built.manifest["built_at"]


def test_failed_build_leaves_the_previous_install_working(qenv: Env, built: Built) -> None:
    qenv.write_recipe("broken-configure", 'extends = "fixture-7.2"\n[qemu]\nconfigure = ["--enable-no-such-feature"]\n')
    result = qenv.run("build", "broken-configure", "--runner", "host", "--prefix", str(built.prefix))
    assert result.returncode == 1
    assert "configure failed" in result.stderr and "full log:" in result.stderr and "hint:" in result.stderr
    assert "Traceback" not in result.stderr
    after = json.loads((built.prefix / "qemuprov.json").read_text())
    assert after["built_at"] == built.manifest["built_at"]
    version = subprocess.run([built.prefix / "bin" / "qemu-system-x86_64", "--version"], capture_output=True)
    assert version.returncode == 0


def test_second_build_while_one_runs_is_refused(qenv: Env, built: Built) -> None:
    lock = filelock.FileLock(str(Path(qenv.vars["QEMUPROV_CACHE"]) / "locks" / "fixture-7.2.lock"))
    with lock.acquire(timeout=5):
        result = qenv.run("build", "fixture-7.2", "--runner", "host")
    assert result.returncode == 1
    assert "another qemuprov build of fixture-7.2 is running" in result.stderr


def test_missing_ref_is_one_line_exit_2(qenv: Env) -> None:
    qenv.write_recipe("no-such-tag", f'extends = "qemu-7.2"\n[qemu]\ngit = "file://{TREE}"\nref = "v9.9.9"\n')
    result = qenv.run("build", "no-such-tag", "--runner", "host")
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("qemuprov: error:")]
    assert errors == [f'qemuprov: error: qemu.ref: "v9.9.9" is neither a branch, a tag nor a commit of file://{TREE}']


def test_missing_local_repository_is_exit_2(qenv: Env) -> None:
    qenv.write_recipe("nowhere", 'extends = "qemu-7.2"\n[qemu]\ngit = "file:///nonexistent/qemu.git"\n')
    result = qenv.run("build", "nowhere", "--runner", "host")
    assert result.returncode == 2 and "qemu.git: cannot fetch file:///nonexistent/qemu.git: " \
        "'/nonexistent/qemu.git' does not appear to be a git repository" in result.stderr
    assert "point the recipe at a git repository" in result.stderr


def test_verify_the_built_install_with_distribution_firmware(qenv: Env, built: Built) -> None:
    # The Debian tree has no firmware blobs: verify must boot with the firmware directories the install recorded.
    qenv.verify_x86_64("fixture-7.2", "--arch", "x86_64")


def test_build_with_verify_records_the_result(qenv: Env, built: Built) -> None:
    result = qenv.run("build", "fixture-7.2", "--runner", "host", "--verify", timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "up to date" in result.stdout and "PASS" in result.stdout
    manifest = json.loads((built.prefix / "qemuprov.json").read_text())
    assert sorted((v["arch"], v["ok"]) for v in manifest["verify"]) == [("aarch64", True), ("x86_64", True)]


def test_cc_from_the_environment_chooses_the_compiler_and_no_pch_is_recorded(qenv: Env, built: Built) -> None:
    """One real build for both (each is a full compile of x86_64 on a cold machine, 5 to 6 minutes): CC=gcc, and
    --no-pch carried into the manifest's reproduce line. That --no-pch gives plain clang is test_phases'."""
    gcc = {**qenv.vars, "CC": "gcc", "CXX": "g++"}
    qenv.write_recipe("fixture-gcc", 'extends = "fixture-7.2"\n')
    result = qenv.run("build", "fixture-gcc", "--runner", "host", "--arch", "x86_64", "--no-pch", env=gcc)
    assert result.returncode == 0, result.stdout + result.stderr[-4000:]
    assert "precompiled" not in result.stderr
    manifest = json.loads((qenv.root / "fixture-gcc" / "qemuprov.json").read_text())
    assert manifest["tools"]["cc"].startswith("gcc ") and manifest["reproduce"].startswith("CC=gcc CXX=g++ qemuprov ")
    assert manifest["tools"]["precompiled_header"] is None and "--no-pch" in manifest["reproduce"]
    assert compilers_used(qenv, "fixture-gcc") == {"gcc"}
    assert not (host_build_dir(qenv, "fixture-gcc") / "qemuprov-pch").exists()
    assert {Path(entry["command"].split()[0]).name for entry in c_compiles(qenv, "fixture-gcc")} == {"gcc"}
    qenv.assert_up_to_date("fixture-gcc", "host", "--arch", "x86_64", "--no-pch", env=gcc)


def test_a_compiler_that_does_not_run_is_one_line_exit_2(qenv: Env, built: Built) -> None:
    result = qenv.run("build", "fixture-7.2", "--runner", "host", env={**qenv.vars, "CC": "no-such-cc"})
    assert result.returncode == 2 and "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("qemuprov: error:")]
    assert errors == ["qemuprov: error: CC=no-such-cc: this compiler does not run in the build environment (host)"]
    assert json.loads((built.prefix / "qemuprov.json").read_text())["built_at"] == built.manifest["built_at"]


def test_clang_compiles_against_a_precompiled_osdep_h(qenv: Env, built: Built, tmp_path: Path) -> None:
    assert built.manifest["tools"]["precompiled_header"] == "qemu/osdep.h"  # type: ignore[index]
    build_dir = host_build_dir(qenv, "fixture-7.2")
    assert len(list(build_dir.glob("qemuprov-pch/*.pch"))) >= 4  # common code, util, and each target
    assert not list(build_dir.glob("qemuprov-pch/*.failed"))
    # A spread of QEMU's objects, compiled again by plain clang: the same bytes.
    commands = [entry for entry in c_compiles(qenv, "fixture-7.2")
                if (build_dir / entry["output"]).exists()]  # what was built: not the tests
    sample = commands[:: len(commands) // 16]
    assert len(sample) >= 16
    env = {**os.environ, "CCACHE_DISABLE": "1"}
    for number, entry in enumerate(sample):
        argv = shlex.split(entry["command"])
        assert Path(argv[0]).name == "pch-cc"
        plain = plain_compile(argv[1:], tmp_path / f"{number}.o")
        result = subprocess.run(plain, cwd=entry["directory"], env=env, capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        assert (tmp_path / f"{number}.o").read_bytes() == (build_dir / entry["output"]).read_bytes(), entry["file"]


def plain_compile(argv: list[str], output: Path) -> list[str]:
    """A compile command without its depfile options, writing to output."""
    kept: list[str] = []
    words = iter(argv)
    for word in words:
        if word in ("-MQ", "-MF", "-o"):
            next(words)
        elif word != "-MD":
            kept.append(word)
    return [*kept, "-o", str(output)]


def host_build_dir(qenv: Env, recipe: str) -> Path:
    return Path(qenv.vars["QEMUPROV_CACHE"]) / "work" / recipe / "build"


def c_compiles(qenv: Env, recipe: str) -> list[dict[str, str]]:
    """The C entries of the host build tree's compile_commands.json."""
    commands = json.loads((host_build_dir(qenv, recipe) / "compile_commands.json").read_text())
    return [entry for entry in commands if entry["file"].endswith(".c")]


def compilers_used(qenv: Env, recipe: str) -> set[str]:
    """The compiler programs in the build tree's C compile commands (ccache's masquerade links keep their names),
    behind the precompiled-header wrapper where there is one."""
    programs = set()
    for entry in c_compiles(qenv, recipe):
        words = entry["command"].split()
        programs.add(Path(words[1] if Path(words[0]).name == "pch-cc" else words[0]).name)
    return programs


def test_build_verify_boots_the_staged_tree_before_the_swap(qenv: Env, built: Built) -> None:
    """--verify is a phase of the build: the guest boots with the staged install, before the swap, and only the
    build writes the manifest, with the result in it. Last in this module: it rebuilds the shared install."""
    result = qenv.run("build", "fixture-7.2", "--runner", "host", "--force", "--verify", timeout=900)
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    assert "==> verify: booting a guest over virtio-fs with the staged install" in result.stderr
    assert result.stderr.index("==> verify") < result.stderr.index("==> commit") and "PASS" in result.stdout
    record = json.loads((built.prefix / "qemuprov.json").read_text())
    assert sorted((v["arch"], v["ok"]) for v in record["verify"]) == [("aarch64", True), ("x86_64", True)]
    assert not list(qenv.root.glob(".qemuprov-*"))
