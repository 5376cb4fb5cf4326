"""qemuprov bench: how fast the share is in a guest, and which settings make it faster."""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

from qemuprov.commands.base import Command
from qemuprov.commands.verify import target_arguments, targets_of
from qemuprov.errors import UserError
from qemuprov.infra import paths, render
from qemuprov.infra.progress import Reporter
from qemuprov.knowledge import dax, probe
from qemuprov.proving import bench, bench_picture, bench_plan, bench_results, fio, guestkit, verify
from qemuprov.proving.bench import measures_of
from qemuprov.proving.bench_results import MEASURES, Summary
from qemuprov.recipe import split_arches

MAX_REPETITIONS = 20
TCG_CAVEAT = "under TCG (no KVM) absolute figures mean little: read the ratios"


def cmd_bench(args: argparse.Namespace) -> int:
    if not 1 <= args.repetitions <= MAX_REPETITIONS:
        raise UserError(f"--repetitions: {args.repetitions} is not between 1 and {MAX_REPETITIONS}",
                        hint="3 or more give a spread worth reading")
    for option, value in (("--export-csv", args.export_csv), ("--export-markdown", args.export_markdown)):
        if value and not Path(value).absolute().parent.is_dir():
            raise UserError(f"{option} {value}: its directory does not exist", hint="name a file in a directory")
    targets = targets_of(args, "bench")
    wanted = split_arches(args.arch) if args.arch is not None else None
    cache = probe.ProbeCache()
    daemon = verify.checked_daemon(targets.virtiofsd, cache, "bench")
    every = [q for path in targets.qemus if (q := verify.checked_qemu(path, cache, None)) is not None]
    cache.save()
    have = sorted(q.arch for q in every)
    if wanted and (missing := [a for a in wanted if a not in have]):
        raise UserError(f"--arch: {', '.join(missing)} is not among the QEMUs given (have: {', '.join(have)})",
                        hint="build the arch into the install (recipe arches), or leave --arch out")
    qemus = [q for q in every if not wanted or q.arch in wanted]
    workloads = ("seqread",) if args.quick else bench_plan.WORKLOAD_NAMES
    for qemu in qemus:  # all the bad input first, before KVM is tried or anything is fetched
        if not qemu.vhost_user_fs:
            raise UserError(f"QEMU {qemu.path} has no vhost-user-fs-pci device: there is no virtio-fs to measure")
    asked = {qemu.path: bench_plan.asked_windows(qemu, args.window or [], daemon) for qemu in qemus}
    plans = []
    for qemu in qemus:
        accel = verify.choose_accel(Path(qemu.path), qemu.target, args.accel)
        amounts = bench_plan.Amounts.for_accel(accel)
        windows = bench_plan.windows_for(qemu, asked[qemu.path], amounts, daemon)
        plans.append((qemu, accel, amounts, bench_plan.settings_for(qemu, daemon, windows,
                                                                    daemon.thread_pool_default)))
    reports = []
    report = Reporter()
    for qemu, accel, amounts, settings in plans:
        arch = qemu.target
        share = bench.bench_dir()
        try:
            kit = bench.prepare(qemu, guestkit.ensure_kit(arch, guestkit.GENERIC), share)
            bench.make_data(share / "share", amounts, args.repetitions, workloads)
            results, host_cache = bench.run(bench.Bench(qemu, daemon, kit, accel, targets.firmware, workloads,
                                                        args.repetitions, amounts), settings, share / "share", report)
            bench_results.add_ratios(results)
            guest = {**kit.record(), "fio": f"{fio.VERSION} (Debian {fio.SUITE}'s source, static)",
                     "fio_sha256": guestkit.sha256_of(fio.cached(arch))}
            reports.append(_report(qemu, daemon, guest, accel, results, workloads, args.repetitions, amounts,
                                   host_cache))
        finally:
            paths.remove_tree(share)  # the guest's: any depth
    if args.export_csv:
        Path(args.export_csv).write_text(bench_picture.as_csv(reports))
    if args.export_markdown:
        Path(args.export_markdown).write_text(bench_picture.as_markdown(reports))
    if args.json:
        render.print_json(reports)
    else:
        for number, arch_report in enumerate(reports):
            print(("\n" if number else "") + _text(arch_report, workloads) + "\n")
            show_picture(arch_report)
    return 0 if all(s["ok"] for r in reports for s in r["settings"]) else 1


def show_picture(report: dict[str, Any]) -> None:
    """Coloured on a terminal, plain when piped or under NO_COLOR (https://no-color.org)."""
    colour = sys.stdout.isatty() and not os.environ.get("NO_COLOR")
    drawn = bench_picture.picture(report, colour)
    if not drawn:
        return
    if colour:
        from rich.console import Console

        Console(highlight=False).print(drawn)
    else:
        print(drawn)


def _report(qemu: Any, daemon: Any, kit: dict[str, str], accel: str, results: list[Any], workloads: tuple[str, ...],
            repetitions: int, amounts: Any, host_cache: str) -> dict[str, Any]:

    return {
        "arch": qemu.arch, "accel": accel, "caveat": TCG_CAVEAT if accel == "tcg" else "",
        "qemu": {"path": qemu.path, "version": qemu.version, "dax": qemu.dax,
                 "dax_route": str(route) if (route := dax.offered(qemu, daemon)) else None},
        "virtiofsd": {"path": daemon.path, "flavour": str(daemon.flavour), "version": daemon.version,
                      "thread_pool_default": daemon.thread_pool_default},
        "kit": kit, "workloads": list(workloads), "repetitions": repetitions, "amounts": asdict(amounts),
        "work": amounts.describe(),
        "host_page_cache": host_cache,
        "guest_page_cache": "dropped before each repetition (drop_caches in the guest), after one small "
                            "unmeasured run that warms TCG's code",
        "settings": [{"name": r.setting.name, "what": r.setting.what, "window": r.setting.window,
                      "accel": r.accel, "ok": r.ok,
                      "error": r.error, "mount": r.mount, "dax_window": r.window_seen, "seconds": r.seconds,
                      "virtiofsd_argv": r.daemon, "qemu_argv": r.qemu,
                      "results": {m: asdict(s) for m, s in r.summaries.items()}} for r in results],
        "reading": bench_results.reading(results, route is not None, amounts),
        "warnings": probe.pairing_warnings(qemu, daemon),
    }


def _text(report: dict[str, Any], workloads: tuple[str, ...]) -> str:
    measures = measures_of(workloads)
    headers = ("SETTING", "ACCEL", *(MEASURES[m][2] for m in measures))
    rows = [(s["name"], s["accel"], *(Summary(**s["results"][m]).cell() if m in s["results"] else "-"
                                      for m in measures)) if s["ok"] else
            (s["name"], s["accel"], "FAILED", *([""] * (len(measures) - 1))) for s in report["settings"]]
    head = (f"{report['arch']}: QEMU {report['qemu']['version']} ({report['qemu']['path']}), virtiofsd "
            f"{report['virtiofsd']['version'] or '?'} ({report['virtiofsd']['flavour']}), "
            f"{report['repetitions']} repetitions of each job: median ±spread (max-min over median), ratio to "
            "the first row")
    lines = [head, render.table(headers, rows)]
    lines += [f"FAILED {s['name']}: {render.safe_text(s['error'])}" for s in report["settings"] if not s["ok"]]
    lines += [f"each job: {report['work']}",
              f"host page cache: {report['host_page_cache']}; guest page cache: {report['guest_page_cache']}"]
    if report["caveat"]:
        lines.append(f"note: {report['caveat']}")
    lines += [f"warning: {warning}" for warning in report["warnings"]]
    lines.append(f"reading: {report['reading']}")
    return "\n".join(lines)


def _arguments(p: argparse.ArgumentParser) -> None:
    target_arguments(p)
    p.add_argument("--quick", action="store_true", help="only the sequential read, in every setting")
    p.add_argument("--window", action="append", metavar="SIZE",
                   help="a DAX window to compare (a power of two, e.g. 32M or 1G; repeatable; default: half the "
                        "data set and four times it); only for a QEMU with the DAX window")
    p.add_argument("--repetitions", type=int, default=3, metavar="N", help="runs of each job (default 3)")
    p.add_argument("--export-csv", metavar="FILE", help="also write every figure as CSV (one row per setting and "
                                                        "measure: median, low, high, spread, ratio)")
    p.add_argument("--export-markdown", metavar="FILE", help="also write the results as Markdown tables")


BENCH = Command("bench", "measure the share in a guest: DAX, cache modes, thread pool, 9p", cmd_bench, _arguments,
                json=True,
                description="For each arch: boot the guest kit with fio in it, once per setting (virtiofsd's "
                            "cache modes and thread pool, DAX windows where the QEMU has them, 9p where it has "
                            "virtio-9p), and run sequential and random reads, a sequential write and a metadata "
                            "workload, each a fixed amount of work, repeated; print medians, spread and ratios, "
                            "and a one-line reading.")
