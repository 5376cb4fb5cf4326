"""The build's phases on their own, with a runner that records what it is asked to run instead of running it."""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO

import pytest

from qemuprov.building import qemu_steps
from qemuprov.building.context import STEP_FILE_SCRIPTS, Context, Options
from qemuprov.building.workspace import Workspace
from qemuprov.errors import BuildError, UserError
from qemuprov.infra.progress import Reporter
from qemuprov.infra.runners import HostRunner
from qemuprov.knowledge import plan
from qemuprov.recipe import RecipeBook, default_layers
from tests.unit.test_plan_install import make_tree


class FakeRunner(HostRunner):
    """The host runner, except that `sh -c` compiler probes get a compiler's --version and every other step
    prints a line and exits with the status given for it (0 by default), without running anything."""

    python = "python3"

    def __init__(self, compiler: str = "Debian clang version 14.0.6", statuses: dict[str, int] | None = None):
        self.compiler, self.statuses, self.calls = compiler, statuses or {}, []  # type: ignore[var-annotated]

    @property
    def tree_python(self) -> str | None:
        return None

    @property
    def compilers(self) -> dict[str, str]:  # type: ignore[override]
        return {}

    def run(self, argv: Sequence[str], *, cwd: Path, env: Mapping[str, str], log: IO[str],
            on_line: object = None) -> int:
        if argv[:2] == ["sh", "-c"] and argv[2] in STEP_FILE_SCRIPTS:  # the build dir and its stamp, for real
            return super().run(argv, cwd=cwd, env=env, log=log)
        self.calls.append(list(argv))
        log.write(f"$ {' '.join(argv)}\n")
        if argv[:2] == ["sh", "-c"] and "--version" in argv[2]:
            log.write(f"clang\n{self.compiler}\n" if self.compiler else "nocc\n")
            return 0
        log.write(f"{Path(argv[0]).name} says hello\n")
        return self.statuses.get(Path(argv[0]).name, 0)

    def env(self, extra: Mapping[str, str]) -> dict[str, str]:
        return dict(extra)


def _context(tmp_path: Path, runner: FakeRunner, meson: bool = False,
             precompiled_header: bool = True) -> tuple[Context, plan.Tree, plan.Plan]:
    recipe = RecipeBook(default_layers()).load("qemu-7.2")
    tree = plan.inspect(make_tree(tmp_path / "src", "7.2.0", ["virtiofsd", "tools"], virtiofsd=True,
                                  meson=meson))
    the_plan = plan.make_plan(recipe, tree, Path("/opt/q"), ("x86_64",))
    opts = Options(arches=("x86_64",), prefix=tmp_path / "prefix", runner=runner, jobs=2,  # type: ignore[arg-type]
                   precompiled_header=precompiled_header)
    log_path = tmp_path / "build.log"
    ws = Workspace(recipe.name, opts.prefix, tmp_path / "work", _log=(log_path.open("w"), log_path),
                   _staging=tmp_path / "staging")
    ctx = Context(recipe, opts, Reporter(io.StringIO()), ws)
    ws.root.mkdir()
    return ctx, tree, the_plan


def test_configure_runs_once_and_says_which_compiler(tmp_path: Path) -> None:
    runner = FakeRunner()
    ctx, tree, the_plan = _context(tmp_path, runner)
    first = qemu_steps.configure(ctx, tree, the_plan, "abc123")
    assert first.compiler == "Debian clang version 14.0.6" and first.precompiled_header is False  # no meson
    assert [c for c in runner.calls if c[0].endswith("/configure")] == [[str(tree.root / "configure"),
                                                                         *the_plan.argv]]
    assert "configure" in ctx.timings
    del ctx.timings["configure"]
    again = qemu_steps.configure(ctx, tree, the_plan, "abc123")  # the same source and arguments: no configure
    assert again == first and len([c for c in runner.calls if c[0].endswith("/configure")]) == 1
    assert "configure" not in ctx.timings
    qemu_steps.configure(ctx, tree, the_plan, "def456")  # another commit: configure again
    assert len([c for c in runner.calls if c[0].endswith("/configure")]) == 2


@pytest.mark.parametrize(("compiler", "asked", "pch"), [("Debian clang version 14.0.6", True, True),
                                                        ("Debian clang version 14.0.6", False, False),
                                                        ("gcc (Debian 12.2.0-14) 12.2.0", True, False)])
def test_the_precompiled_header_is_for_clang_and_meson_unless_refused(tmp_path: Path, compiler: str, asked: bool,
                                                                       pch: bool) -> None:
    """--no-pch (asked False) gives plain clang; gcc never gets the wrapper. The real builds: test_build's."""
    runner = FakeRunner(compiler)
    ctx, tree, the_plan = _context(tmp_path, runner, meson=True, precompiled_header=asked)
    configured = qemu_steps.configure(ctx, tree, the_plan, "abc123")
    assert configured.precompiled_header is pch
    (line,) = [c for c in runner.calls if c[0].endswith("/configure")]
    assert any("pch-cc" in arg for arg in line) is pch


def test_compile_and_install_run_make_with_destdir(tmp_path: Path) -> None:
    runner = FakeRunner()
    ctx, tree, the_plan = _context(tmp_path, runner)
    configured = qemu_steps.configure(ctx, tree, the_plan, "abc123")
    qemu_steps.compile_targets(ctx, tree, the_plan, configured)
    qemu_steps.install(ctx, tree, configured)
    assert runner.calls[-2:] == [["make", "-j2"], ["make", "install", f"DESTDIR={ctx.ws.staging}"]]
    assert {"build", "install"} <= set(ctx.timings)


def test_a_failed_step_shows_the_end_of_its_log_and_a_hint(tmp_path: Path) -> None:
    ctx, tree, the_plan = _context(tmp_path, FakeRunner(statuses={"make": 2}))
    configured = qemu_steps.configure(ctx, tree, the_plan, "abc123")
    with pytest.raises(BuildError) as failed:
        qemu_steps.compile_targets(ctx, tree, the_plan, configured)
    assert "build failed (exit status 2): make -j2" in failed.value.message
    assert "make says hello" in failed.value.message and str(ctx.ws.log_path) in failed.value.message
    assert "previous install" in failed.value.hint


def test_a_compiler_that_does_not_run_is_named_before_configure(tmp_path: Path) -> None:
    runner = FakeRunner(compiler="")
    ctx, tree, the_plan = _context(tmp_path, runner)
    with pytest.raises(UserError, match="CC=nocc: this compiler does not run"):
        qemu_steps.configure(ctx, tree, the_plan, "abc123")
    assert not [c for c in runner.calls if c[0].endswith("/configure")]
