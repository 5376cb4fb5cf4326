"""The Rust virtiofsd (QEMU 8.0+ has no daemon of its own): fetch, the builder, cargo build of its tree with a
runner, the binary placed at libexec/virtiofsd in the staged prefix (the install step moves it onto PATH)."""

from __future__ import annotations

from pathlib import Path
from typing import IO

from qemuprov.building.context import Context, builder_image_record
from qemuprov.infra import paths
from qemuprov.infra.runners import LineCallback, Runner
from qemuprov.recipe import Crates, VirtiofsdSpec
from qemuprov.records.manifest import BuilderImageRecord
from qemuprov.sources.revision import Resolution

DEBIAN_REGISTRY = "/usr/share/cargo/registry"
# Offline, against the crates Debian packages: cargo resolves versions afresh from what is there.
DEBIAN_CARGO_CONFIG = f"""[source.crates-io]
replace-with = "debian"

[source.debian]
directory = "{DEBIAN_REGISTRY}"

[net]
offline = true
"""
# libseccomp-sys and capng link dynamically unless told where the static archives are. An explicit --target
# keeps crt-static off the proc-macros cargo builds for the host.
STATIC_ENV_SCRIPT = """
lib=$(dirname "$(gcc -print-file-name=libseccomp.a)")
export RUSTFLAGS="-C target-feature=+crt-static" LIBSECCOMP_LINK_TYPE=static LIBSECCOMP_LIB_PATH=$lib \\
       LIBCAPNG_LINK_TYPE=static LIBCAPNG_LIB_PATH=$lib
exec "$@" --target "$(rustc -vV | sed -n 's/^host: //p')"
"""


# target/release/virtiofsd, or target/<triple>/release/virtiofsd for a static build: the newest
STAGE_SCRIPT = """
built=$(ls -t "$1"/release/virtiofsd "$1"/*/release/virtiofsd 2>/dev/null | head -n 1)
[ -n "$built" ] || { echo "cargo left no virtiofsd under $1" >&2; exit 1; }
mkdir -p "$2" && cp -p "$built" "$2/virtiofsd"
"""


def build_with(ctx: Context, resolution: Resolution) -> BuilderImageRecord | None:
    """The recipe's virtiofsd, built and staged; the builder image it ran in."""
    spec = ctx.recipe.virtiofsd
    assert spec.tree is not None
    with ctx.phase("fetch", f"virtiofsd {spec.tree.describe()}", timing="virtiofsd-fetch"):
        src = ctx.ws.fetch("virtiofsd", ctx.recipe, resolution, ctx.report)
    runner = ctx.runner.for_builder(spec.builder or ctx.recipe.builder)
    if not runner.is_host:
        with ctx.phase("builder", f"virtiofsd: {runner.key}", timing="virtiofsd-builder"):
            runner.prepare(ctx.log, ctx.report.line)
    cargo_home = paths.cache_dir() / "cargo"
    cargo_home.mkdir(parents=True, exist_ok=True)
    online = spec.crates is Crates.REGISTRY
    with ctx.phase("virtiofsd", f"cargo build ({spec.crates.value} crates{', static' if spec.static else ''})",
                   timing="virtiofsd-build"):
        if crates := crate_count(src):
            ctx.report.expect_crates(crates)
        with runner.session(inputs=[src], outputs=[ctx.ws.staging], caches=[cargo_home], network=online,
                            work=ctx.ws.root):
            status = build(spec, src, ctx.ws.cargo_target, cargo_home, ctx.ws.staged, runner, ctx.log,
                           ctx.report.line)
    if status != 0:
        hint = "cargo could not fetch or compile a crate" if online else \
            'the builder lacks a crate or a library; with crates = "debian" use the debian-trixie-crates builder'
        ctx.fail("virtiofsd build", ["cargo", "build"], status, hint)
    return builder_image_record(runner)


def cargo_argv(spec: VirtiofsdSpec) -> list[str]:
    argv = ["cargo", "build", "--release"]
    argv += ["--offline"] if spec.crates is Crates.DEBIAN else ["--locked"]
    return ["sh", "-c", STATIC_ENV_SCRIPT, "sh", *argv] if spec.static else argv


def crate_count(src: Path) -> int | None:
    """How many crates cargo will compile, from the tree's Cargo.lock (for progress); None without one."""
    lock = src / "Cargo.lock"
    return lock.read_text().count("[[package]]") if lock.is_file() else None


def prepare_tree(src: Path, spec: VirtiofsdSpec) -> None:
    """Point cargo at Debian's crates when the recipe asks for them (their versions differ from Cargo.lock)."""
    config = src / ".cargo" / "config.toml"
    if spec.crates is Crates.DEBIAN:
        config.parent.mkdir(exist_ok=True)
        config.write_text(DEBIAN_CARGO_CONFIG)
        (src / "Cargo.lock").unlink(missing_ok=True)


def build(spec: VirtiofsdSpec, src: Path, target_dir: Path, cargo_home: Path, staged: Path, runner: Runner,
          log: IO[str], on_line: LineCallback | None = None) -> int:
    """Build and stage the daemon; the exit status of cargo (0: staged at libexec/virtiofsd)."""
    prepare_tree(src, spec)
    env = runner.env({"CARGO_HOME": str(cargo_home), "CARGO_TARGET_DIR": str(target_dir), "LC_ALL": "C"})
    status = runner.run(cargo_argv(spec), cwd=src, env=env, log=log, on_line=on_line)
    if status == 0:  # copied where the build ran: a remote engine's target dir is in its volume
        status = runner.run(["sh", "-c", STAGE_SCRIPT, "sh", str(target_dir), str(staged / "libexec")], cwd=src,
                            env=env, log=log, on_line=on_line)
    return status
