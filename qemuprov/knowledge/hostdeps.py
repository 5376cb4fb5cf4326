"""The build dependencies of QEMU on a Debian/Ubuntu host: one table, for doctor's check and the hints of a
failed build."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from qemuprov.infra import procs

HOST_TOOLS = {"cc": "build-essential", "ninja": "ninja-build", "meson": "meson", "pkg-config": "pkg-config",
              "python3": "python3", "flex": "flex", "bison": "bison", "git": "git"}
HOST_LIBS = {"glib-2.0": "libglib2.0-dev", "pixman-1": "libpixman-1-dev", "libseccomp": "libseccomp-dev",
             "libcap-ng": "libcap-ng-dev", "zlib": "zlib1g-dev",
             "slirp": "libslirp-dev"}  # -netdev user, which OSv's scripts/run.py uses
# No pkg-config file on Debian for these: QEMU looks for the library itself. libaio: aio=native (OSv's run.py).
HOST_HEADERS = {"libfdt.h": "libfdt-dev", "libaio.h": "libaio-dev"}


def missing_build_packages() -> list[str]:
    missing = [pkg for tool, pkg in HOST_TOOLS.items() if shutil.which(tool) is None]
    if shutil.which("pkg-config"):
        result = procs.run(["pkg-config", "--print-errors", "--exists", *HOST_LIBS], timeout=10)
        if not result.ok:
            missing += [pkg for lib, pkg in HOST_LIBS.items()
                        if not procs.run(["pkg-config", "--exists", lib], timeout=10).ok]
    else:
        missing += list(HOST_LIBS.values())
    missing += [pkg for header, pkg in HOST_HEADERS.items()
                if not any(Path(d, header).exists() for d in ("/usr/include", "/usr/local/include"))]
    return sorted(set(missing))


# How configure and meson name a missing dependency in their errors, where that is not the table's key.
LOG_NAMES = {**HOST_LIBS, **HOST_HEADERS, "seccomp": "libseccomp-dev", "cap-ng": "libcap-ng-dev",
             "cap_ng": "libcap-ng-dev", "fdt": "libfdt-dev", "ninja": "ninja-build"}


def package_missing_in(log_tail: str) -> str | None:
    """The Debian package a failed configure's log says is missing, if it says so."""
    for name, package in LOG_NAMES.items():
        if re.search(rf"(Dependency|header|library|Program)\W+\S*{re.escape(name)}\S*\W+not found", log_tail,
                     re.IGNORECASE) or (name in ("seccomp", "cap-ng") and "requires libcap-ng-devel" in log_tail):
            return package
    return None
