"""bench's logic that no QEMU here can reach: DAX settings (the fork cannot be fetched; its probe and its guest's
lines are captured), fio's JSON read as untrusted, and the reading a user acts on."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from qemuprov import arches
from qemuprov.errors import UserError
from qemuprov.knowledge import dax
from qemuprov.knowledge.probe import QemuProbe, VirtiofsdProbe
from qemuprov.knowledge.probe_parse import properties_from_help, thread_pool_default, virtiofsd_facts
from qemuprov.proving import bench, bench_plan, guestkit
from qemuprov.proving.bench_plan import Amounts, GuestPlan, Setting
from qemuprov.proving.bench_results import FioOutputError, SettingResult, add_ratios, parse_fio, reading
from qemuprov.proving.guestkit import Kit
from qemuprov.proving.verify import virtiofsd_argv
from qemuprov.recipe import VirtiofsdFlavour
from tests.conftest import CAPTURES

DAX = CAPTURES / "qemu-6.1-dev-dax"
FIO = CAPTURES / "fio-3.33"
KIT = Kit(arches.X86_64, Path("/k/vmlinuz"), Path("/k/initrd"))


def _qemu(dax: bool, nine_p: bool = True, arch: str = "x86_64") -> QemuProbe:
    return QemuProbe("/q/qemu-system-" + arch, version="6.0.94", arch=arch, vhost_user_fs=True, dax=dax,
                     devices={"vhost-user-fs-pci": True, "virtio-9p-pci": nine_p})


def _daemon(capture: str) -> VirtiofsdProbe:
    facts = virtiofsd_facts((CAPTURES / capture / "virtiofsd-help.txt").read_text(), "")
    return VirtiofsdProbe("/d/virtiofsd", flavour=facts.flavour, thread_pool_default=facts.thread_pool_default)


@pytest.mark.parametrize(("capture", "default"), [("debian-11-qemu-5.2", 64), ("debian-7.2", 0),
                                                  ("qemu-6.1-dev-dax", 0), ("debian-13-rust-virtiofsd", 0)])
def test_the_thread_pool_default_is_the_daemons_own(capture: str, default: int) -> None:
    assert thread_pool_default((CAPTURES / capture / "virtiofsd-help.txt").read_text()) == default


def test_a_dax_build_compares_two_windows_one_smaller_than_the_data() -> None:
    qemu = _qemu(dax="cache-size" in properties_from_help((DAX / "device-vhost-user-fs-pci-help.txt").read_text()))
    amounts = Amounts.for_accel("tcg")
    windows = bench_plan.windows_for(qemu, bench_plan.asked_windows(qemu, []), amounts)
    assert windows[0] < amounts.size < windows[-1]
    names = [s.name for s in bench_plan.settings_for(qemu, _daemon("qemu-6.1-dev-dax"), windows, 0)]
    assert names == ["virtio-fs", "cache=none", "cache=always", "1 thread", "DAX 8M", "DAX 64M", "9p"]
    assert bench_plan.asked_windows(qemu, ["1G", "64M", "1024M"]) == [64 << 20, 1 << 30]


def test_window_options_are_refused_in_one_line() -> None:
    with pytest.raises(UserError, match="has no DAX window"):
        bench_plan.asked_windows(_qemu(dax=False), ["64M"])
    with pytest.raises(UserError, match="not a power of two"):
        bench_plan.asked_windows(_qemu(dax=True), ["48M"])
    with pytest.raises(UserError, match="2M or more"):
        bench_plan.asked_windows(_qemu(dax=True), ["1M"])
    with pytest.raises(UserError, match="is not a size"):
        bench_plan.asked_windows(_qemu(dax=True), ["lots"])
    assert bench_plan.windows_for(_qemu(dax=False), [], Amounts.for_accel("tcg")) == []


def test_each_daemon_is_spoken_to_in_its_own_words(tmp_path: Path) -> None:
    c, rust = _daemon("debian-7.2"), _daemon("debian-13-rust-virtiofsd")
    assert rust.flavour == VirtiofsdFlavour.RUST
    rust_settings = bench_plan.settings_for(_qemu(dax=False), rust, [], rust.thread_pool_default)
    assert [s.name for s in rust_settings][:3] == ["virtio-fs", "cache=never", "cache=always"]
    never = virtiofsd_argv(rust, tmp_path / "s", tmp_path, rust_settings[1].cache, rust_settings[1].threads)
    assert never[-2:] == ["--cache", "never"]
    one = virtiofsd_argv(c, tmp_path / "s", tmp_path, "auto", 1)
    assert "cache=auto" in one and one[-1] == "--thread-pool-size=1"
    # A daemon whose default pool is one thread gets no row that repeats it.
    assert "1 thread" not in [s.name for s in bench_plan.settings_for(_qemu(dax=False), c, [], 1)]


def test_the_command_lines_of_dax_and_9p(tmp_path: Path) -> None:
    qemu = _qemu(dax=True, arch="aarch64")
    """One boot: a device per setting, each virtio-fs device on its own daemon's socket; the guest learns the
    order from the kernel line."""
    qemu = _qemu(dax=True, arch="aarch64")
    settings = (Setting("virtio-fs", "", baseline=True), Setting("DAX 32M", "", window=32 << 20),
                Setting("9p", "", fs="9p"))
    plan = GuestPlan(settings, ("seqread",), 3, Amounts.for_accel("tcg"))
    argv = bench_plan.qemu_argv(qemu, KIT, plan, {0: tmp_path / "a.sock", 1: tmp_path / "b.sock"}, tmp_path,
                                "tcg", [], dax.Route.CACHE_SIZE)
    assert "vhost-user-fs-pci,chardev=vfs0,tag=qp0" in argv
    assert "vhost-user-fs-pci,chardev=vfs1,tag=qp1,cache-size=32M" in argv
    # QEMU 11.1's route: the DAX setting's device is the generic one, its tag and window the daemon's own
    shmem = bench_plan.qemu_argv(qemu, KIT, plan, {0: tmp_path / "a.sock", 1: tmp_path / "b.sock"}, tmp_path,
                                 "tcg", [], dax.Route.SHMEM)
    assert "vhost-user-fs-pci,chardev=vfs0,tag=qp0" in shmem
    assert f"vhost-user-test-device-pci,chardev=vfs1,{dax.GENERIC_FS_PROPERTIES}" in shmem
    patched = VirtiofsdProbe("/v", flavour="rust", version="1.14.0", dax_window=True)
    assert virtiofsd_argv(patched, tmp_path / "b.sock", tmp_path, "auto", None, "32M", "qp1")[-4:] == \
        ["--tag", "qp1", "--dax-window", "32M"]
    assert f"socket,id=vfs1,path={tmp_path / 'b.sock'}" in argv
    assert f"local,id=fs9p,path={tmp_path},security_model=none" in argv
    append = argv[argv.index("-append") + 1]
    assert "qemuprov.mounts=virtiofs:qp0:-,virtiofs:qp1:dax,9p:qemuprov9p:-" in append
    assert "console=ttyAMA0" in append and argv[argv.index("-serial") + 1] == "stdio"


ALL_WORKLOADS = FIO / "all-workloads.json"


def test_real_fio_output_is_read() -> None:
    got = parse_fio(ALL_WORKLOADS.read_text(), bench_plan.WORKLOAD_NAMES)
    assert set(got) == {"seqread", "randread", "seqwrite", "create", "stat", "unlink"}
    assert all(v > 0 for v in got.values())
    assert set(parse_fio(ALL_WORKLOADS.read_text(), ("seqread",))) == {"seqread"}


@pytest.mark.parametrize("text", ["", "fio: no such engine", "{", '{"jobs": []}', '{"jobs": [1]}',
                                  '{"jobs": [{"jobname": "seqread", "read": {"bw_bytes": -5}}]}',
                                  '{"jobs": [{"jobname": "seqread", "read": {"bw_bytes": "fast"}}]}',
                                  '{"jobs": [{"jobname": "seqread", "read": []}]}', "[" * 100000 + "]" * 100000,
                                  '{"jobs": ' + "[" * 100000 + "]" * 100000 + "}",
                                  "{" + " " * (5 << 20) + "}"])
def test_broken_or_hostile_fio_output_is_an_error_not_a_figure(text: str) -> None:
    with pytest.raises(FioOutputError):
        parse_fio(text, ("seqread",))


def test_every_measure_must_be_there() -> None:
    data = json.loads(ALL_WORKLOADS.read_text())
    data["jobs"] = [j for j in data["jobs"] if j["jobname"] != "unlink"]
    with pytest.raises(FioOutputError, match="unlink"):
        parse_fio(json.dumps(data), ("metadata",))


def _result(setting: Setting, **medians: float) -> SettingResult:
    result = SettingResult(setting, "tcg", ok=True, runs={m: [v * 0.9, v, v * 1.1] for m, v in medians.items()})
    result.summarize()
    return result


def test_the_reading_of_a_dax_build_where_the_small_window_collapses() -> None:
    results = [_result(Setting("virtio-fs", "", baseline=True), seqread=100, randread=1000),
               _result(Setting("DAX 32M", "", window=32 << 20), seqread=400, randread=200),
               _result(Setting("DAX 1G", "", window=1 << 30), seqread=650, randread=1500),
               _result(Setting("9p", "", fs="9p"), seqread=20, randread=900)]
    add_ratios(results)
    said = reading(results, True, Amounts.for_accel("kvm"))
    assert said.startswith("DAX 6.5x for sequential reads here (1G window)")
    assert "fell to 0.20x for random reads: keep the window above the working set" in said
    assert "virtio-fs 5.0x 9p" in said
    assert results[1].summaries["seqread"].spread_pct == 20.0


def test_a_qemu_without_the_window_never_reads_as_dax() -> None:
    results = [_result(Setting("virtio-fs", "", baseline=True), seqread=100),
               _result(Setting("cache=always", "", cache="always"), seqread=150)]
    add_ratios(results)
    said = reading(results, False, Amounts.for_accel("tcg"))
    assert said.startswith("no DAX window here") and "x for sequential reads here" not in said
    assert said.endswith("cache=always 1.50x cache=auto for sequential reads")  # 90-110 against 135-165


def test_a_ratio_inside_the_noise_says_so() -> None:
    results = [_result(Setting("virtio-fs", "", baseline=True), seqread=100, randread=1000),
               _result(Setting("1 thread", "", threads=1), seqread=100, randread=1050)]
    add_ratios(results)
    assert reading(results, False, Amounts.for_accel("tcg")).endswith(
        "a pool of 1 thread 1.05x the default for random reads (within the spread)")


def test_a_dax_mount_is_checked_against_the_guests_own_lines(tmp_path: Path) -> None:
    """The captured guest lines of a real DAX boot pass; a guest that mounted without dax is an error, not a
    DAX figure."""
    mounts = (DAX / "guest-proc-mounts-dax.txt").read_text().strip()
    window = (DAX / "guest-dmesg-dax.txt").read_text().strip()
    (tmp_path / "1-1.json").write_text(ALL_WORKLOADS.read_text())
    for line, ok in ((mounts, True), (mounts.replace(",dax=always", ""), False)):
        result = SettingResult(Setting("DAX 64M", "", window=64 << 20), "tcg")
        lines = [f"QEMUPROV: dax-window {window}", "QEMUPROV: wait 0", "QEMUPROV: mount-failed 0 no",
                 "QEMUPROV: wait 1", f"QEMUPROV: mounted 1 {line}", "QEMUPROV: end 1 1"]
        bench._judge(result, 1, lines, [], tmp_path, ("seqread",), 1)
        assert result.ok is ok, result.error
        assert result.window_seen == window
    assert "mounted without it" in result.error


def test_a_result_the_guest_linked_elsewhere_is_not_read(tmp_path: Path) -> None:
    """Through 9p as root the guest can make links in the share: the host reads no file through one, and no
    FIFO that would never end."""
    secret = tmp_path / "secret.json"
    secret.write_text(ALL_WORKLOADS.read_text())
    linked, fifo = tmp_path / "linked", tmp_path / "fifo"
    for results in (linked, fifo):
        results.mkdir()
    (linked / "0-1.json").symlink_to(secret)
    os.mkfifo(fifo / "0-1.json")
    for results in (linked, fifo):
        result = SettingResult(Setting("9p", "", fs="9p"), "tcg")
        bench._judge(result, 0, ["QEMUPROV: mounted 0 x"], [], results, bench_plan.WORKLOAD_NAMES, 1)
        assert not result.ok and result.error.startswith("repetition 1:"), result.error
    assert "not a regular file" in result.error


def test_a_guest_that_failed_to_mount_says_why(tmp_path: Path) -> None:
    result = SettingResult(Setting("9p", "", fs="9p"), "tcg")
    bench._judge(result, 2, ["QEMUPROV: mount-failed 2 mount: mounting qemuprov9p on /mnt failed: No such device"],
                 [], tmp_path, ("seqread",), 1)
    assert not result.ok and result.error.endswith("No such device")


def test_the_guest_inits_are_valid_shell_and_start_and_end_alike() -> None:
    bench_init = guestkit.init_script(bench.BENCH_PART, ("a", "b"))
    assert "${m%%:*}" in bench_init and "for m in a b;" in bench_init
    for init in (bench_init, guestkit.INIT):
        assert subprocess.run(["sh", "-n"], input=init, text=True).returncode == 0
        assert init.startswith(guestkit.INIT_START.split("MODULES")[0]) and init.endswith(guestkit.INIT_END)


def test_the_table_shows_each_row_its_accelerator_and_a_failure_with_its_reason() -> None:
    from qemuprov.commands.bench import _report, _text

    ok = _result(Setting("virtio-fs", "v", baseline=True), seqread=100)
    failed = SettingResult(Setting("DAX 8M", "d", window=8 << 20), "tcg", error="asked for DAX, but \x1b[2Jno")
    add_ratios([ok, failed])
    report = _report(_qemu(dax=True), _daemon("qemu-6.1-dev-dax"), {}, "tcg", [ok, failed], ("seqread",), 3,
                     Amounts.for_accel("tcg"), "dropped")
    text = _text(report, ("seqread",))
    table = text.splitlines()[1:4]
    assert table[0].split() == ["SETTING", "ACCEL", "SEQ", "READ", "MB/s"]
    assert table[1].split()[:3] == ["virtio-fs", "tcg", "100"] and table[2].split()[:4] == ["DAX", "8M", "tcg",
                                                                                            "FAILED"]
    assert "FAILED DAX 8M: asked for DAX, but ?[2Jno" in text  # the guest's words cannot move the cursor
    assert "read the ratios" in text and text.splitlines()[-1].startswith("reading: no DAX setting ran")


def test_a_results_directory_the_guest_replaced_with_a_link_is_not_read_through(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "0-1.json").write_text(ALL_WORKLOADS.read_text())  # a valid result, but not in the share
    share = tmp_path / "share"
    share.mkdir()
    (share / "results").symlink_to(elsewhere)
    result = SettingResult(Setting("9p", "", fs="9p"), "tcg")
    bench._judge(result, 0, ["QEMUPROV: mounted 0 x"], [], share / "results", bench_plan.WORKLOAD_NAMES, 1)
    assert not result.ok and result.error.startswith("repetition 1:"), result.error


def test_dropping_the_host_cache_opens_nothing_the_guest_put_in_the_data(tmp_path: Path) -> None:
    """share/data is the guest's to change: a FIFO would block the open for ever, a link to /dev would make
    root open device nodes; only regular files are opened, in a real directory."""
    import threading

    share = tmp_path / "share"
    (share / "data").mkdir(parents=True)
    (share / "data" / "seqread-1").write_bytes(b"x" * 4096)
    os.mkfifo(share / "data" / "fifo")
    (share / "data" / "watchdog").symlink_to("/dev/watchdog")
    done = threading.Event()
    threading.Thread(target=lambda: (bench.drop_host_cache(share), done.set()), daemon=True).start()
    assert done.wait(20), "drop_host_cache blocked on what the guest left"
    linked = tmp_path / "linked"
    linked.mkdir()
    (linked / "data").symlink_to("/dev")
    done.clear()
    threading.Thread(target=lambda: (bench.drop_host_cache(linked), done.set()), daemon=True).start()
    assert done.wait(20)


def test_only_an_ascii_number_is_a_setting_to_wait_for() -> None:
    assert bench.wait_number("3") == 3 and bench.wait_number("²") is None and bench.wait_number("-1") is None
    assert bench.wait_number("9" * 50) is None and bench.wait_number("") is None


# -- the picture, the exports and the trade-offs -------------------------------------------------------------------

REPORT = Path(__file__).parents[1] / "data" / "bench-report-debian72.json"  # Debian's 7.2 on x86_64, TCG


def _results_of(report: dict[str, object]) -> list[SettingResult]:
    from qemuprov.proving.bench_results import Summary

    found = []
    for s in report["settings"]:  # type: ignore[attr-defined]
        result = SettingResult(Setting(s["name"], s["what"], fs="9p" if s["name"] == "9p" else "virtiofs",
                                       baseline=s["name"] == "virtio-fs"), "tcg", ok=True)
        result.summaries = {m: Summary(**d) for m, d in s["results"].items()}
        found.append(result)
    return found


def test_the_picture_of_a_recorded_bench_is_stable() -> None:
    import json

    from qemuprov.proving import bench_picture

    report = json.loads(REPORT.read_text())
    drawn = bench_picture.picture(report)
    assert drawn + "\n" == (REPORT.parent / "bench-picture-debian72.txt").read_text()
    assert "\x1b" not in drawn  # plain: no terminal codes when piped
    coloured = bench_picture.picture(report, colour=True)
    assert "[red]=[/]" in coloured and "[green]=[/]" in coloured


def test_exports_carry_every_figure_and_no_formula() -> None:
    import csv
    import io
    import json

    from qemuprov.proving import bench_picture

    report = json.loads(REPORT.read_text())
    report["settings"][1]["name"] = "=HYPERLINK(\"x\")"  # a name from outside is text in a spreadsheet
    rows = list(csv.DictReader(io.StringIO(bench_picture.as_csv([report]))))
    assert len(rows) == 5 * 6 and rows[0]["setting"] == "virtio-fs" and rows[0]["ratio"] == "1.0"
    assert all(not r["setting"].startswith("=") for r in rows)
    markdown = bench_picture.as_markdown([report])
    assert "| setting | SEQ READ MB/s |" in markdown and "(0.05x)" in markdown


def test_the_reading_names_what_a_setting_costs_elsewhere() -> None:
    import json

    from qemuprov.proving import bench_results

    results = _results_of(json.loads(REPORT.read_text()))
    bench_results.add_ratios(results)
    said = bench_results.trade_offs(results, results[0])
    assert said == ["cache=none: 2.17x sequential writes, but 0.05x stat"], said


def test_the_recorded_results_draw_as_an_image(tmp_path: Path) -> None:
    out = tmp_path / "share.png"
    script = Path(__file__).parents[2] / "benchmarks" / "plot_share_speed.py"
    done = subprocess.run([sys.executable, str(script), "--out", str(out)], capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 20_000
    assert "(96 bars)" in done.stdout
