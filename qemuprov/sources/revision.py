"""A source as resolved: which revision of a tree a build takes. Sources make these records; the manifest and
lock files keep them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class SourceRecord:
    """Where a tree came from: a git URL at a ref resolved to a commit, or a tarball with its sha256."""

    url: str
    ref: str | None = None
    commit: str | None = None
    sha256: str | None = None

    @property
    def revision(self) -> str:
        """The commit, or sha256:<checksum> for a tarball: what the build's stamps and inputs key use."""
        return self.commit or f"sha256:{self.sha256}"



@dataclass(frozen=True)
class Resolution:
    """A source resolved once: the record the manifest keeps, and for git what to fetch."""

    record: SourceRecord
    refspec: str | None = None
    locked: Path | None = None  # the lock file the commit came from
