"""A build whose output is hostile (or merely broken), brought out over the copy transport through a whole
`build` against the suite's real engine: what the container left in its staging is input from outside, and
nothing in it may make host code reach beside the staging."""

from __future__ import annotations

from pathlib import Path

from tests.integration.conftest import Env
from tests.integration.standin import make_tree

# From $2/share, n+2 levels up is the staging's parent (n: the components of the prefix below DESTDIR): by the
# archive's own rule the link stays inside, yet after the move it names the install root, or $HOME.
CLIMB_TO_STAGING_PARENT = r"""
rel=${2#"$3"}; n=$(printf %s "$rel" | tr -cd / | wc -c); up=""; i=0
while [ "$i" -lt $((n + 2)) ]; do up="../$up"; i=$((i + 1)); done
ln -s "${up}TARGET" "$2/share/qemu"
"""


def test_links_out_of_the_staging_harm_nothing_beside_it(qenv: Env, engine: str, tmp_path: Path) -> None:
    home = tmp_path / "home"
    (home / "Documents").mkdir(parents=True)
    (home / "Documents" / "thesis.tex").write_text("years of work\n")
    (home / ".bashrc").write_text("# mine\n")
    for name, target in (("root", ""), ("documents", "Documents")):
        recipe = f"standin-planted-{name}"
        control = Path(qenv.vars["QEMUPROV_CACHE"]) / "work" / recipe / "control"
        plant = CLIMB_TO_STAGING_PARENT.replace("TARGET", target)
        qenv.write_recipe(recipe, make_tree(tmp_path / f"tree-{name}", control, plant=plant))
        result = qenv.run("build", recipe, "--runner", "docker", "--prefix", str(home / f"qemu-{name}"),
                          env={**qenv.vars, "QEMUPROV_CONTAINER_TRANSPORT": "copy"})
        assert result.returncode == 1, result.stdout + result.stderr
        errors = [ln for ln in result.stderr.splitlines() if ln.startswith("qemuprov: error: ")]
        assert len(errors) == 1 and "share/qemu: a symlink to" in errors[0] and "may lead outside" in errors[0], \
            result.stderr
        assert "Traceback" not in result.stderr
        assert (home / "Documents" / "thesis.tex").read_text() == "years of work\n"
        assert (home / ".bashrc").read_text() == "# mine\n"
        assert sorted(p.name for p in home.iterdir()) == [".bashrc", "Documents"], list(home.iterdir())
