"""qemuprov doctor: is this host ready for virtio-fs, and for building QEMU?"""

from __future__ import annotations

import argparse
from dataclasses import asdict

from qemuprov.commands.base import Command
from qemuprov.host import doctor
from qemuprov.infra import render


def cmd_doctor(args: argparse.Namespace) -> int:
    checks = doctor.run_checks()
    if args.json:
        render.print_json([asdict(c) for c in checks])
    else:
        print(render.checks(checks))
    return 1 if any(c.status == doctor.Verdict.FAIL for c in checks) else 0


DOCTOR = Command("doctor", "is this host ready for virtio-fs, and for building QEMU?", cmd_doctor, json=True,
                 description="One line per check: PASS, WARN or FAIL, with a hint for each problem. "
                             "Exit 1 when any check fails.")
