"""Fetch source trees: git through a bare cache per URL (GitPython), or a tarball checked against its sha256."""

from __future__ import annotations

import collections
import configparser
import hashlib
import lzma
import os
import shutil
import subprocess
import tarfile
import tempfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import requests

from qemuprov.errors import InfraError, UserError
from qemuprov.infra import config, http, paths, unpack
from qemuprov.infra.progress import Reporter
from qemuprov.recipe import Source
from qemuprov.sources import gitcmd
from qemuprov.sources.revision import Resolution, SourceRecord

MIRROR_HINT = ("check the URL and your network; offline, point the URL at a local mirror with "
               "`git config --global url.<mirror>.insteadOf <url>` or a recipe that extends this one")


@dataclass(frozen=True)
class Fetched:
    tree: Path
    commit: str | None  # for git sources
    sha256: str | None  # for tarballs


def mirror_dir(url: str) -> Path:
    digest = hashlib.sha256(url.encode()).hexdigest()[:16]
    name = Path(urlparse(url).path).name.removesuffix(".git") or "repo"
    return paths.cache_dir() / "git" / f"{name}-{digest}.git"


def _is_local(url: str) -> bool:
    return url.startswith(("/", "file://"))


def git_failure(section: str, url: str, stderr: str) -> UserError | InfraError:
    """git's own reason (its first `fatal:` line, not the advice after it). A local path that is no repository
    is the recipe's fault (exit 2); a refused mirror or a remote that does not answer is the environment's (1)."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    fatal = [line.removeprefix("fatal: ") for line in lines if line.startswith("fatal:")]
    reason = fatal[0] if fatal else (lines[-1] if lines else "git failed")
    fix = next((line for line in lines if line.startswith("git config") and "safe.directory" in line), None)
    message = f"{section}.git: cannot fetch {url}: {reason}"
    if fix:
        return InfraError(message, hint=f"if you trust that repository: {fix}")
    if _is_local(url) and "does not appear to be a git repository" in reason:
        return UserError(message, hint="point the recipe at a git repository (a directory with .git, or a bare one)")
    return InfraError(message, hint=MIRROR_HINT)


def ls_remote(url: str, patterns: tuple[str, ...] = (), flags: tuple[str, ...] = ()) -> dict[str, str]:
    """`git ls-remote` of url: ref name -> commit. A tag is named by what it points at (its peeled `^{}` line
    wins over the tag object's), so an annotated tag names its commit. GitFailed where git fails."""
    listing = gitcmd.output(["ls-remote", *flags, "--", url, *patterns])
    refs: dict[str, str] = {}
    for line in listing.splitlines():
        sha, _, name = line.partition("\t")
        if name.endswith("^{}"):
            refs[name.removesuffix("^{}")] = sha
        else:
            refs.setdefault(name, sha)
    return refs


def resolve_ref(url: str, ref: str, section: str) -> tuple[str, str]:
    """(commit, refspec) for a branch or tag; a full commit id is taken as it is."""
    try:
        refs = ls_remote(url, patterns=(ref, f"{ref}^{{}}"))
    except gitcmd.GitFailed as exc:
        raise git_failure(section, url, exc.stderr) from None
    for name in (f"refs/tags/{ref}", f"refs/heads/{ref}", ref):
        if name in refs:
            return refs[name], f"+{name}:{name}"
    if len(ref) == 40 and all(c in "0123456789abcdef" for c in ref):
        return ref, ref
    raise UserError(f'{section}.ref: "{ref}" is neither a branch, a tag nor a commit of {url}',
                    hint=f"git ls-remote {url} lists what is there")


def _fetch_into_mirror(url: str, refspec: str, section: str, report: Reporter | None = None) -> Path:
    """The bare mirror of url (made on first use), with refspec fetched into it."""
    mirror = mirror_dir(url)
    if not (mirror / "HEAD").exists():
        # Initialise in a temporary directory, then rename: a half-made cache never looks like a good one.
        mirror.parent.mkdir(parents=True, exist_ok=True)
        _remove_abandoned_inits(mirror.parent)
        tmp = Path(tempfile.mkdtemp(prefix=f".init-{os.getpid()}-", dir=mirror.parent))
        try:
            gitcmd.output(["init", "-q", "--bare", tmp])
        except gitcmd.GitFailed as exc:
            raise InfraError(f"cannot make a git mirror in {tmp}: {exc.stderr.strip()[-300:]}") from None
        tmp.rename(mirror)
    _git_fetch(mirror, url, refspec, section, report)
    return mirror


def _git_fetch(mirror: Path, url: str, refspec: str, section: str, report: Reporter | None) -> None:
    """git fetch, its progress (which it writes with carriage returns) passed to the reporter as it comes."""
    args = ["-C", str(mirror), "fetch", "--progress", "--depth=1", "--no-tags", "--", url, refspec]
    said: collections.deque[str] = collections.deque(maxlen=100)

    def each(line: str) -> None:
        if line:
            said.append(line)
            if report is not None:
                report.line(line)

    try:
        gitcmd.stream(args, on_line=each)
    except gitcmd.GitFailed as exc:
        raise git_failure(section, url, "\n".join([*said, exc.stderr])) from None


def _remove_abandoned_inits(directory: Path) -> None:
    """What a fetch killed while it made a mirror left behind (its pid is in the name and no longer runs)."""
    paths.remove_dead_leftovers(directory, ".init-*", lambda name: name.split("-")[1], pidless=True)


def _export(mirror: Path, commit: str, dest: Path) -> None:
    """Write the tree of `commit` into dest (no .git: the build never changes the cache). git archive piped into
    tar: three times faster than unpacking in Python, for a tree of 20,000 files. The mirror is ours (its objects
    came through git's own checks), so tar's own rules suffice."""
    dest.mkdir(parents=True, exist_ok=True)
    archive = subprocess.Popen(["git", "-C", str(mirror), "archive", "--format=tar", commit],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=gitcmd.env())
    assert archive.stdout is not None
    try:
        unpack = subprocess.run(["tar", "-x", "-C", str(dest)], stdin=archive.stdout, capture_output=True,
                                check=False, timeout=gitcmd.fetch_timeout())
    except subprocess.TimeoutExpired:
        archive.kill()
        raise InfraError(f"writing the tree of {commit} into {dest} did not finish in time") from None
    finally:
        archive.stdout.close()
    archive_error = archive.stderr.read() if archive.stderr else b""
    if archive.wait() != 0 or unpack.returncode != 0:
        problem = (archive_error or unpack.stderr).decode(errors="replace").strip()
        raise InfraError(f"cannot write the tree of {commit} into {dest}: {problem[-300:]}")


def _submodules(mirror: Path, commit: str, url: str) -> list[tuple[str, str, str]]:
    """(path, url, commit) of the submodules a build needs: all but the firmware sources under roms/."""
    try:
        text = gitcmd.output(["-C", mirror, "show", f"{commit}:.gitmodules"])
    except gitcmd.GitFailed:
        return []
    config = configparser.ConfigParser()
    config.read_string(text)
    wanted = []
    for section in config.sections():
        path, sub_url = config[section].get("path"), config[section].get("url")
        if not path or not sub_url or path.startswith("roms/"):
            continue
        if sub_url.startswith("../"):
            sub_url = url.rstrip("/").rsplit("/", 1)[0] + "/" + sub_url[3:]
        entry = gitcmd.output(["-C", mirror, "ls-tree", commit, "--", path]).split()
        if len(entry) >= 3 and entry[1] == "commit":
            wanted.append((path, sub_url, entry[2]))
    return wanted


def resolve(source: Source, section: str = "qemu") -> Resolution:
    """The commit a git ref names now (checked against the recipe's pin), or the tarball's checksum."""
    if not source.git:
        return Resolution(SourceRecord(source.url, source.ref, None, source.sha256))
    assert source.ref is not None
    commit, refspec = resolve_ref(source.git, source.ref, section)
    if source.commit and not commit.startswith(source.commit):
        raise UserError(f"{section}.commit: {source.ref} is now {commit}, but the recipe pins {source.commit}",
                        hint="update the pin, or set ref to the pinned commit")
    return Resolution(SourceRecord(source.git, source.ref, commit), refspec)


def _commit_in_mirror(source: Source, resolution: Resolution, section: str,
                      report: Reporter | None = None) -> Path:
    """The mirror holding the resolved commit: fetched unless a locked commit is there already. A locked commit
    the remote no longer serves (its tag moved, its branch was rewritten) is named in one line."""
    assert source.git is not None
    commit = str(resolution.record.commit)
    mirror = mirror_dir(source.git)
    if resolution.locked and (mirror / "HEAD").exists() and gitcmd.run(
            ["-C", mirror, "cat-file", "-e", f"{commit}^{{commit}}"]).ok:
        return mirror
    try:
        return _fetch_into_mirror(source.git, str(resolution.refspec), section, report)
    except (UserError, InfraError) as exc:
        if resolution.locked and "not our ref" in exc.message:
            raise UserError(f"{section}: the locked commit {commit} of {source.git} is gone: the remote no longer "
                            f"serves it ({resolution.locked})",
                            hint=f"lock again to build what {source.ref} names now: qemuprov lock RECIPE") from None
        raise


def submodule_commits(source: Source, resolution: Resolution, section: str) -> dict[str, str]:
    """path -> commit of the submodules a build of this commit needs."""
    mirror = _commit_in_mirror(source, resolution, section)
    return {path: commit for path, _, commit in _submodules(mirror, str(resolution.record.commit), str(source.git))}


def fetch_git(source: Source, dest: Path, section: str = "qemu", report: Reporter | None = None,
              resolution: Resolution | None = None) -> Fetched:
    assert source.git is not None
    resolution = resolution or resolve(source, section)
    commit = str(resolution.record.commit)
    mirror = _commit_in_mirror(source, resolution, section, report)
    if dest.exists():
        shutil.rmtree(dest)
    _export(mirror, commit, dest)
    for path, sub_url, sub_commit in _submodules(mirror, commit, source.git):
        if any((dest / path).iterdir()) if (dest / path).is_dir() else False:
            continue
        sub_mirror = _fetch_into_mirror(sub_url, sub_commit, f"{section} submodule {path}", report)
        _export(sub_mirror, sub_commit, dest / path)
    return Fetched(dest, commit, None)


DOWNLOAD_LIMIT = 4 << 30  # QEMU's release tarballs are about 130 MB


def download_limit() -> int:
    return config.limit("QEMUPROV_DOWNLOAD_LIMIT", "download", DOWNLOAD_LIMIT)


class TooLarge(Exception):
    """A download that goes on past its limit."""


TARBALL_HINT = "check the URL and your network, or download it yourself and use a file:// URL"


def fetch_tarball(source: Source, dest: Path, section: str = "qemu", report: Reporter | None = None) -> Fetched:
    assert source.tarball is not None and source.sha256 is not None
    store = paths.cache_dir() / "tarballs" / f"{source.sha256}-{Path(urlparse(source.tarball).path).name}"
    if not store.exists():
        _download_checked(source, store, section, report)
    if dest.exists():
        shutil.rmtree(dest)
    tmp = Path(tempfile.mkdtemp(prefix=".unpack-", dir=dest.parent))
    try:
        _unpack(store, tmp, source, section)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    entries = list(tmp.iterdir())
    (entries[0] if len(entries) == 1 and entries[0].is_dir() else tmp).rename(dest)
    shutil.rmtree(tmp, ignore_errors=True)
    return Fetched(dest, None, source.sha256)


def _unpack(store: Path, into: Path, source: Source, section: str) -> None:
    try:
        unpack.unpack(store, into)
    except unpack.UnsafeArchive as exc:
        raise UserError(f"{section}.tarball: {source.tarball} is unsafe to unpack: {exc}",
                        hint="use the project's own release tarball") from None
    except (tarfile.TarError, EOFError, zlib.error, lzma.LZMAError) as exc:
        raise UserError(f"{section}.tarball: {source.tarball} is not a tarball that can be unpacked ({exc})",
                        hint="the sha256 matches, so the recipe names the wrong file: point it at a .tar.xz, "
                             ".tar.bz2 or .tar.gz release") from None


def _download_checked(source: Source, store: Path, section: str, report: Reporter | None) -> None:
    """Download into STORE.part, resuming what an earlier, interrupted download left there where the server takes
    a Range request; check the sha256; then rename. A partial download survives a network fault for the next
    try; a wrong checksum removes it."""
    assert source.tarball is not None
    store.parent.mkdir(parents=True, exist_ok=True)
    partial = store.with_suffix(store.suffix + ".part")
    have = partial.stat().st_size if partial.exists() else 0
    try:
        with _stream(source.tarball, have) as (start, total, chunks):
            digest = hashlib.sha256()
            with partial.open("r+b" if partial.exists() else "wb") as out:
                out.truncate(start)  # start < have: the server sent the whole file again
                while start and (piece := out.read(1 << 20)):
                    digest.update(piece)
                done, most = start, download_limit()
                for chunk in chunks:
                    digest.update(chunk)
                    out.write(chunk)
                    done += len(chunk)
                    if done > most:
                        raise TooLarge(f"more than {most >> 20} MiB came (QEMUPROV_DOWNLOAD_LIMIT or [limits] "
                                       "download in config.toml raises the limit)")
                    if report is not None and total:
                        report.progress(done, total, "MB")
    except FileNotFoundError:
        partial.unlink(missing_ok=True)
        raise UserError(f"{section}.tarball: {source.tarball}: no such file", hint="check the path") from None
    except TooLarge as exc:
        partial.unlink(missing_ok=True)
        raise InfraError(f"{section}.tarball: {source.tarball}: {exc}", hint=TARBALL_HINT) from None
    except requests.exceptions.SSLError as exc:
        raise InfraError(f"{section}.tarball: cannot download {source.tarball}: "
                         f"{http.describe_failure(exc, source.tarball)}", hint=http.TRUST_HINT) from None
    except requests.exceptions.ProxyError as exc:
        raise InfraError(f"{section}.tarball: cannot download {source.tarball}: "
                         f"{http.describe_failure(exc, source.tarball)}",
                         hint="check HTTPS_PROXY (or HTTP_PROXY), or name the host in NO_PROXY") from None
    except (OSError, requests.RequestException) as exc:
        raise InfraError(f"{section}.tarball: cannot download {source.tarball}: {_short(exc)}",
                         hint=TARBALL_HINT + " (the next try resumes the download)") from None
    if digest.hexdigest() != source.sha256:
        partial.unlink(missing_ok=True)
        raise UserError(f"{section}.sha256: {source.tarball} has sha256 {digest.hexdigest()}, "
                        f"the recipe says {source.sha256}", hint="check the URL, or update the checksum")
    partial.rename(store)


@contextmanager
def _stream(url: str, offset: int) -> Iterator[tuple[int, int | None, Iterator[bytes]]]:
    """(where the bytes start, the whole size where known, the bytes): from offset where the server honours a
    Range request, else from 0."""
    if url.startswith("file://"):
        with open(urlparse(url).path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            yield 0, size, iter(lambda: handle.read(1 << 20), b"")
        return
    headers = {"Range": f"bytes={offset}-"} if offset else {}
    with http.session() as client, client.get(url, stream=True, timeout=60, headers=headers,
                                               proxies=http.proxies_for(url)) as response:
        response.raise_for_status()
        start = offset if response.status_code == 206 else 0
        length = response.headers.get("Content-Length")
        total = start + int(length) if length and length.isdigit() else None
        yield start, total, response.iter_content(1 << 16)  # small: a drop loses little of what came


def _short(exc: Exception) -> str:
    """requests/urllib3 nest their causes in long reprs: the innermost reason is what a user can act on."""
    text = str(exc)
    for marker in ("Caused by ", "Failed to establish a new connection: "):
        text = text.rsplit(marker, 1)[-1]
    return text.strip("()'\" ")[:200] or type(exc).__name__


def fetch(source: Source, dest: Path, section: str = "qemu", report: Reporter | None = None,
          resolution: Resolution | None = None) -> Fetched:
    """report: where git's and the download's progress go; resolution: the source as resolved before."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    if source.git:
        return fetch_git(source, dest, section, report, resolution)
    return fetch_tarball(source, dest, section, report)
