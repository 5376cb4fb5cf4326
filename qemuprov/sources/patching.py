"""A recipe's patches, applied in order to a fetched tree with `git apply` (outside a repository it patches the
files; it refuses paths that leave the tree). A patch that does not apply is bad input: one line naming the
recipe, the patch and what git said."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from qemuprov.errors import UserError
from qemuprov.recipe import Patch
from qemuprov.sources import gitcmd


def stamp(patches: Sequence[Patch]) -> str:
    """What a tree's fetch stamp adds for its patches: a change of any re-fetches and re-patches the tree."""
    return "".join(f" patch:{p.sha256}" for p in patches)


def apply(tree: Path, patches: Sequence[Patch], recipe: Path, section: str) -> None:
    for patch in patches:
        # No repository above the tree is looked for: its paths would be taken from that repository's top.
        done = gitcmd.run(["-C", tree, "apply", "--whitespace=nowarn", patch.location],
                          extra_env={"GIT_CEILING_DIRECTORIES": str(tree.parent)})
        if not done.ok:
            said = next((line.strip() for line in done.stderr.splitlines() if line.strip()), done.why())
            raise UserError(f"{recipe}: {section}.patches: {patch.name} does not apply to {tree}: {said[:300]}",
                            hint=f"refresh the patch for this tree ({patch.location}), or drop it from the recipe")
