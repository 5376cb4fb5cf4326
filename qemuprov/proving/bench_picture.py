"""bench's results as a picture: for each measure, one bar per setting on a log scale around the baseline (1x),
gains to the right, losses to the left, the spread of the repetitions as a whisker; coloured with rich on a
terminal, plain text when piped or under NO_COLOR. And the same figures as CSV or Markdown. Pure: a report
dict in (what `bench --json` prints), text out."""

from __future__ import annotations

import csv
import io
import math
from typing import Any

from qemuprov.infra.render import safe_text
from qemuprov.proving.bench_results import MEASURES

HALF = 20  # cells on each side of 1x
NAME_WIDTH = 14


def _ratios(setting: dict[str, Any], measure: str, base: dict[str, Any] | None) -> tuple[float, float, float] | None:
    """(ratio of the medians, of the lowest, of the highest repetition) to the baseline's median."""
    mine = setting["results"].get(measure) if setting["ok"] else None
    theirs = base["results"].get(measure) if base else None
    if not mine or not theirs or not theirs["median"] or mine["median"] <= 0:
        return None
    scale = theirs["median"]
    return mine["median"] / scale, max(mine["low"], 1e-9) / scale, max(mine["high"], 1e-9) / scale


def picture(report: dict[str, Any], colour: bool = False) -> str:
    settings = report["settings"]
    base = settings[0] if settings and settings[0]["ok"] else None
    measures = [m for m in MEASURES if any(m in s["results"] for s in settings if s["ok"])]
    blocks = []
    for measure in measures:
        rows = {s["name"]: r for s in settings if (r := _ratios(s, measure, base)) is not None}
        if len(rows) < 2 or base is None:
            continue
        span = max(max(abs(math.log2(v)) for v in r) for r in rows.values())
        per_doubling = HALF / max(span, 1.0)  # cells per doubling: the widest whisker fits
        unit = MEASURES[measure][1]
        lines = [f"{MEASURES[measure][2]}  (1x = {safe_text(base['name'])}, "
                 f"{base['results'][measure]['median']:.0f} {unit}; log scale, {2 ** (HALF / per_doubling):.3g}x "
                 f"at the edges)"]
        for name, (ratio, low, high) in rows.items():
            lines.append(f"  {safe_text(name)[:NAME_WIDTH]:<{NAME_WIDTH}} "
                         f"{_bar(ratio, low, high, per_doubling, colour)} {ratio:6.2f}x  "
                         f"({low:.2f}-{high:.2f}x)")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def _cell(ratio: float, per_doubling: float) -> int:
    return max(-HALF, min(HALF, round(math.log2(ratio) * per_doubling)))


def _bar(ratio: float, low: float, high: float, per_doubling: float, colour: bool) -> str:
    cells = [" "] * (2 * HALF + 1)
    for i in range(_cell(low, per_doubling), _cell(high, per_doubling) + 1):
        cells[HALF + i] = "-"
    end = _cell(ratio, per_doubling)
    bar = range(1, end + 1) if end > 0 else range(end, 0)
    for i in bar:
        cells[HALF + i] = "="
    cells[HALF] = "|"
    if not colour:
        return "".join(cells)
    paint = {"=": "green" if end > 0 else "red", "-": "grey50", "|": "bold", " ": ""}
    return "".join(f"[{paint[c]}]{c}[/]" if paint[c] else c for c in cells)


def rows(reports: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per arch, setting and measure, for the exports."""
    found = []
    for report in reports:
        base = report["settings"][0] if report["settings"] and report["settings"][0]["ok"] else None
        for setting in report["settings"]:
            for measure, summary in (setting["results"] if setting["ok"] else {}).items():
                ratios = _ratios(setting, measure, base)
                found.append({"arch": report["arch"], "accel": report["accel"], "setting": setting["name"],
                              "measure": measure, "unit": summary["unit"], "median": summary["median"],
                              "low": summary["low"], "high": summary["high"], "spread_pct": summary["spread_pct"],
                              "ratio": round(ratios[0], 3) if ratios else None,
                              "repetitions": len(summary["values"])})
    return found


def as_csv(reports: list[dict[str, Any]]) -> str:
    out = io.StringIO()
    fields = ["arch", "accel", "setting", "measure", "unit", "median", "low", "high", "spread_pct", "ratio",
              "repetitions"]
    writer = csv.DictWriter(out, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for row in rows(reports):
        writer.writerow({k: _csv_safe(v) for k, v in row.items()})
    return out.getvalue()


def _csv_safe(value: Any) -> Any:
    """A cell a spreadsheet would take for a formula (a setting name from outside) is quoted as text."""
    return f"'{value}" if isinstance(value, str) and value[:1] in ("=", "+", "-", "@") else value


def as_markdown(reports: list[dict[str, Any]]) -> str:
    lines = []
    for report in reports:
        measures = [m for m in MEASURES if any(m in s["results"] for s in report["settings"] if s["ok"])]
        lines += [f"### {report['arch']} ({report['accel']})", "",
                  "| setting | " + " | ".join(MEASURES[m][2] for m in measures) + " |",
                  "|---|" + "---:|" * len(measures)]
        for setting in report["settings"]:
            cells = []
            for measure in measures:
                summary = setting["results"].get(measure) if setting["ok"] else None
                ratio = _ratios(setting, measure, report["settings"][0]) if summary else None
                cells.append("failed" if not setting["ok"] else "-" if not summary else
                             f"{summary['median']:.0f} ±{summary['spread_pct']:.0f}%"
                             + (f" ({ratio[0]:.2f}x)" if ratio and setting is not report["settings"][0] else ""))
            name = safe_text(setting["name"]).replace("|", "\\|")
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines += ["", f"{report['reading']}", ""]
    return "\n".join(lines)
