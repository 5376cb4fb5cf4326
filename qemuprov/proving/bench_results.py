"""What `qemuprov bench` makes of fio's JSON: one figure per measure and repetition, medians with their spread,
ratios to the baseline setting, and the one-line reading. Pure; fio's output is the guest's, and still read as
untrusted (bounded, checked shapes)."""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass, field
from typing import Any

from qemuprov.proving.bench_plan import Amounts, Setting

MAX_RESULT_BYTES = 4 << 20

# measure -> (workload it comes from, unit, what the table calls it)
MEASURES = {
    "seqread": ("seqread", "MB/s", "SEQ READ MB/s"),
    "randread": ("randread", "IOPS", "4K RAND READ IOPS"),
    "seqwrite": ("seqwrite", "MB/s", "SEQ WRITE MB/s"),
    "create": ("metadata", "ops/s", "CREATE/s"),
    "stat": ("metadata", "ops/s", "STAT/s"),
    "unlink": ("metadata", "ops/s", "UNLINK/s"),
}


class FioOutputError(ValueError):
    pass


def _number(job: dict[str, Any], direction: str, key: str) -> float:
    value = job.get(direction, {}).get(key) if isinstance(job.get(direction), dict) else None
    if not isinstance(value, (int, float)) or value < 0:
        raise FioOutputError(f"fio's job {job.get('jobname')!r} has no {direction}.{key}")
    return float(value)


def parse_fio(text: str, workloads: tuple[str, ...]) -> dict[str, float]:
    """fio --output-format=json of one run of the workloads -> {measure: value}. fio may print notes before the
    JSON."""
    if len(text) > MAX_RESULT_BYTES:
        raise FioOutputError("fio's output is larger than any job's")
    start = text.find("{")
    try:
        data = json.loads(text[start:]) if start >= 0 else None
    except json.JSONDecodeError as exc:
        raise FioOutputError(f"fio's output is not JSON ({exc.msg})") from None
    except RecursionError:
        raise FioOutputError("fio's output nests deeper than any job's") from None
    jobs = data.get("jobs") if isinstance(data, dict) else None
    if not isinstance(jobs, list) or not jobs or not all(isinstance(j, dict) for j in jobs):
        raise FioOutputError("fio's output has no jobs")
    by_name = {str(j.get("jobname")): j for j in jobs}
    wanted = [m for m, (w, _, _) in MEASURES.items() if w in workloads]
    if missing := [m for m in wanted if m not in by_name]:
        raise FioOutputError(f"fio's output lacks the {', '.join(missing)} job")
    measured = {}
    for measure in wanted:
        job = by_name[measure]
        if measure in ("seqread", "seqwrite"):
            measured[measure] = _number(job, "write" if measure == "seqwrite" else "read", "bw_bytes") / 1e6
        elif measure == "randread":
            measured[measure] = _number(job, "read", "iops")
        else:  # fio counts creates, stats and unlinks as reads or writes, by engine and version
            measured[measure] = max(_number(job, "read", "iops"), _number(job, "write", "iops"))
    return measured


@dataclass
class Summary:
    unit: str
    values: list[float]
    median: float = 0.0
    low: float = 0.0
    high: float = 0.0
    spread_pct: float = 0.0  # (max - min) / median
    ratio: float | None = None  # to the baseline setting's median

    @classmethod
    def of(cls, unit: str, values: list[float]) -> Summary:
        median = statistics.median(values)
        spread = (max(values) - min(values)) / median * 100 if median > 0 else 0.0
        return cls(unit, [round(v, 2) for v in values], round(median, 2), round(min(values), 2),
                   round(max(values), 2), round(spread, 1))

    def cell(self) -> str:
        figure = f"{self.median:.0f}" if self.median >= 100 else f"{self.median:.1f}"
        return figure + f" ±{self.spread_pct:.0f}%" + (f" {self.ratio:.2f}x" if self.ratio is not None else "")


@dataclass
class SettingResult:
    setting: Setting
    accel: str
    ok: bool = False
    error: str = ""
    mount: str = ""  # the guest's /proc/mounts line for the share
    window_seen: str = ""  # the guest kernel's line for the DAX window
    seconds: float = 0.0
    daemon: list[str] | None = None
    qemu: list[str] = field(default_factory=list)
    runs: dict[str, list[float]] = field(default_factory=dict)  # measure -> one value per repetition
    summaries: dict[str, Summary] = field(default_factory=dict)

    def summarize(self) -> None:
        self.summaries = {m: Summary.of(MEASURES[m][1], v) for m, v in self.runs.items() if v}


def add_ratios(results: list[SettingResult]) -> None:
    base = next((r for r in results if r.setting.baseline and r.ok), None)
    if base is None:
        return
    for result in results:
        for measure, summary in result.summaries.items():
            against = base.summaries.get(measure)
            if against and against.median > 0 and result is not base:
                summary.ratio = round(summary.median / against.median, 2)


def _noise(a: Summary | None, b: Summary | None) -> str:
    """Said after a ratio whose two sides' ranges overlap: the difference may be the machine's, not the setting's."""
    return " (within the spread)" if a and b and a.low <= b.high and b.low <= a.high else ""


def _median(results: list[SettingResult], name: str, measure: str) -> float | None:
    found = next((r for r in results if r.setting.name == name and r.ok), None)
    summary = found.summaries.get(measure) if found else None
    return summary.median if summary and summary.median > 0 else None


def reading(results: list[SettingResult], dax: bool, amounts: Amounts) -> str:
    """One line a user can act on: what DAX, the cache modes, the thread pool and 9p did here."""
    base = next((r for r in results if r.setting.baseline and r.ok), None)
    if base is None:
        return "the baseline setting did not run: nothing to compare"
    said: list[str] = []
    windows = sorted((r for r in results if r.setting.window and r.ok), key=lambda r: r.setting.window or 0)
    if not dax:
        said.append("no DAX window here (this QEMU has none, or this virtiofsd cannot map into it)")
    elif not windows:
        said.append("no DAX setting ran (see the errors above)")
    else:
        biggest = windows[-1]
        sequential = biggest.summaries.get("seqread")
        if sequential and sequential.ratio:
            said.append(f"DAX {sequential.ratio:.1f}x for sequential reads here ({biggest.setting.window_text} window)"
                        + _noise(sequential, base.summaries.get("seqread")))
        small = [w for w in windows if (w.setting.window or 0) < amounts.size]
        random_small = small[0].summaries.get("randread") if small else None
        random_big = biggest.summaries.get("randread")
        if random_small and random_small.ratio and random_big and random_big.ratio and small[0] is not biggest:
            if random_small.ratio < 0.8 * random_big.ratio:
                said.append(f"a window smaller than the data ({small[0].setting.window_text} for "
                            f"{amounts.size >> 20}M) fell to {random_small.ratio:.2f}x for random reads: keep the "
                            "window above the working set")
            else:
                said.append(f"a window smaller than the data ({small[0].setting.window_text}) held "
                            f"{random_small.ratio:.2f}x for random reads")
    modes = [r for r in results if r.ok and r.setting.fs == "virtiofs" and not r.setting.window
             and r.setting.threads is None]
    best = max(modes, key=lambda r: r.summaries["seqread"].median if "seqread" in r.summaries else 0, default=None)
    if best is not None and best is not base and (s := best.summaries.get("seqread")) and s.ratio:
        said.append(f"{best.setting.name} {s.ratio:.2f}x cache={base.setting.cache} for sequential reads"
                    + _noise(s, base.summaries.get("seqread")))
    threads = next((r for r in results if r.ok and r.setting.threads is not None), None)
    measure = "randread" if threads and "randread" in threads.summaries else "seqread"
    if threads and (s := threads.summaries.get(measure)) and s.ratio:
        kind = "random" if measure == "randread" else "sequential"
        said.append(f"a pool of 1 thread {s.ratio:.2f}x the default for {kind} reads"
                    + _noise(s, base.summaries.get(measure)))
    nine_p = _median(results, "9p", "seqread")
    if nine_p and (ours := _median(results, base.setting.name, "seqread")):
        said.append(f"virtio-fs {ours / nine_p:.1f}x 9p for sequential reads")
    said += trade_offs(results, base)
    return "; ".join(said)


WORDS = {"seqread": "sequential reads", "randread": "random reads", "seqwrite": "sequential writes",
         "create": "creates", "stat": "stat", "unlink": "unlinks"}


def trade_offs(results: list[SettingResult], base: SettingResult) -> list[str]:
    """What a setting that wins somewhere costs elsewhere (cache=none reads faster but stats far slower), so nobody
    picks a setting by the one figure it wins; then the biggest loss of all, where that is another."""
    ratios = {r.setting.name: [(m, s.ratio) for m, s in r.summaries.items() if s.ratio is not None and s.ratio > 0]
              for r in results if r.ok and r is not base}
    priced = [(name, max(found, key=lambda i: i[1]), min(found, key=lambda i: i[1]))
              for name, found in ratios.items() if found]
    said, named = [], None
    deceptive = [p for p in priced if p[1][1] > 1.2 and p[2][1] < 0.8]
    if deceptive:
        name, (gained, gain), (lost, loss) = min(deceptive, key=lambda p: p[2][1])
        said.append(f"{name}: {gain:.2f}x {WORDS[gained]}, but {loss:.2f}x {WORDS[lost]}")
        named = (name, lost)
    if priced:
        name, _, (lost, loss) = min(priced, key=lambda p: p[2][1])
        if loss < 0.5 and (name, lost) != named:
            said.append(f"the biggest loss: {name} {loss:.2f}x for {WORDS[lost]}")
    return said
