"""A stand-in QEMU tree for tests of qemuprov's own handling (kills, full disks, locks, a lost engine): its
configure, make and make install take as long as the test says and install the host's real QEMU 7.2 and C
virtiofsd, which the tree carries (so it builds in a container too), so the build probes and verifies like a
real one in seconds. Each step writes its pid to the control directory, which a container build sees when it is
WORK/control (QEMUPROV_CACHE/work/RECIPE/control)."""

from __future__ import annotations

import secrets
import shutil
import subprocess
from pathlib import Path

STEP = r"""#!/bin/sh
# standin-step PHASE [DESTDIR]: sleep as long as CONTROL/PHASE.delay says, then do the phase's work.
control=%(control)s
src=$(cd "$(dirname "$0")" && pwd)
# A build container sees the work dir at another path: there the control dir is found beside the source (and
# made, where the engine cannot see this machine's files and the work dir is a volume of its own).
[ -d "$control" ] || { control=$src/../control; mkdir -p "$control"; }
echo $$ > "$control/$1.pid"
delay=$(cat "$control/$1.delay" 2>/dev/null || echo 0)
sleep "$delay" &
wait $!
case "$1" in
  configure) step="sh $src/standin-step"
             printf 'PREFIX=%%s\nall:\n\t%%s compile\ninstall:\n\t%%s install "$(DESTDIR)$(PREFIX)" "$(DESTDIR)"\n' \
               "$2" "$step" "$step" > Makefile ;;
  compile) if [ -f "$src/payload/paths" ]; then printf '#line 1 "%%s/trace-events"\n' "$src" > standin-paths.h; fi
           cp $src/payload/qemu-system-x86_64 qemu-system-x86_64 \
             && cc -I. -MD -MF standin.o.d -c "$src/payload/standin.c" -o standin.o
           if [ -f "$control/compile.bytes" ]; then head -c "$(cat "$control/compile.bytes")" /dev/zero > filler; fi ;;
  install) mkdir -p "$2/bin" "$2/libexec" "$2/share" && cp qemu-system-x86_64 "$2/bin/" \
             && cp $src/payload/virtiofsd "$2/libexec/" && cp "$src/payload/standin.c" "$2/share/standin" \
             || exit 1
           if [ -f "$src/payload/plant" ]; then . "$src/payload/plant"; fi ;;
esac
"""

CONFIGURE = """#!/bin/sh
for a in "$@"; do case "$a" in --prefix=*) prefix=${a#--prefix=};; esac; done
exec sh "$(dirname "$0")/standin-step" configure "$prefix"
"""

RECIPE = """[qemu]
git = "file://%(tree)s"
ref = "v7.2-standin"
arches = ["x86_64"]

[virtiofsd]
source = "qemu"

[expect]
arches = ["x86_64"]
virtiofsd = "c"
"""


def make_tree(tree: Path, control: Path, generated_paths: bool = False, plant: str = "") -> str:
    """Create the stand-in as a git repository with a tag; returns the recipe body that builds it.
    generated_paths: its C file includes a header made at build time that names the source dir, as QEMU's
    trace headers do (`#line N "/abs/src/.../trace-events"`). plant: shell run at the end of make install, with
    $2 the staged prefix and $3 DESTDIR (what a hostile or broken build leaves in its output)."""
    control.mkdir(parents=True, exist_ok=True)
    tree.mkdir(parents=True)
    (tree / "VERSION").write_text("7.2.0\n")
    (tree / "configure").write_text(CONFIGURE)
    (tree / "standin-step").write_text(STEP % {"control": control})
    seccomp = tree / "tools" / "virtiofsd" / "passthrough_seccomp.c"
    seccomp.parent.mkdir(parents=True)
    seccomp.write_text("SCMP_SYS(rseq),\n")  # no rseq wrapper: bin/virtiofsd is the daemon itself
    (tree / "util").mkdir()
    (tree / "util" / "cutils.c").write_text("get_relocated_path\n")  # relocatable, as QEMU is from 5.2 on
    for name in ("configure", "standin-step"):
        (tree / name).chmod(0o755)
    (tree / "payload").mkdir()
    for binary in ("/usr/bin/qemu-system-x86_64", "/usr/lib/qemu/virtiofsd"):
        shutil.copy2(binary, tree / "payload")
    # one C file, through ccache like QEMU's, and of its own: no other stand-in's object matches it
    code = f"int standin_{secrets.token_hex(8)}(void) {{ return 42; }}\n"
    if generated_paths:
        (tree / "payload" / "paths").touch()
        code = '#include "standin-paths.h"\n' + code
    (tree / "payload" / "standin.c").write_text(code)
    if plant:
        (tree / "payload" / "plant").write_text(plant)
    git = ["git", "-C", str(tree), "-c", "user.name=t", "-c", "user.email=t@localhost"]
    subprocess.run([*git[:3], "init", "-q", "-b", "main"], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-qm", "stand-in"], check=True)
    subprocess.run([*git, "tag", "v7.2-standin"], check=True)
    return 'builder = "debian-bookworm"\n' + RECIPE % {"tree": tree}


def set_delays(control: Path, **seconds: float) -> None:
    for phase in ("configure", "compile", "install"):
        (control / f"{phase}.delay").write_text(str(seconds.get(phase, 0)))
        (control / f"{phase}.pid").unlink(missing_ok=True)
