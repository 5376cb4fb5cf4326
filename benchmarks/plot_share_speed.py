#!/usr/bin/env python3
"""Draw the recorded share figures (benchmarks/results/share_speed.json, written by share_speed.py) as one image
for docs/speed.md: per run (a QEMU, an arch), each setting's ratio to plain virtio-fs for every measure, on a log
scale around 1x, so the trade-offs show at a glance (cache=none's faster reads beside its slower metadata).
matplotlib comes with the test extra (pip install -e ".[test]"); qemuprov itself never needs it.

Usage: benchmarks/plot_share_speed.py [RESULTS.json] [--out PNG]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

HERE = Path(__file__).resolve().parent
MEASURES = {"seqread": "seq read", "randread": "4K rand read", "seqwrite": "seq write", "create": "create",
            "stat": "stat", "unlink": "unlink"}


def plot(results: dict[str, object], out: Path) -> int:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = results["runs"]
    assert isinstance(runs, dict)
    columns = 2 if len(runs) > 1 else 1
    rows = (len(runs) + columns - 1) // columns
    fig, axes = plt.subplots(rows, columns, figsize=(6 * columns, 4.2 * rows), squeeze=False)
    flat = [ax for row in axes for ax in row]
    drawn = 0
    top = len(MEASURES) - 1  # the first measure on top
    for ax, (name, run) in zip(flat, runs.items(), strict=False):
        medians = run["medians"]
        base = medians.get("virtio-fs") or {}
        settings = [s for s in medians if s != "virtio-fs"]
        height = 0.8 / max(len(settings), 1)
        for index, setting in enumerate(settings):
            ratios = [(medians[setting].get(m) or 0) / base[m] if base.get(m) else float("nan") for m in MEASURES]
            ys = [top - row + 0.4 - index * height for row in range(len(MEASURES))]
            ax.barh(ys, [r - 1 if r >= 1 else -(1 - r) for r in ratios], left=1, height=height, label=setting)
            drawn += sum(1 for r in ratios if r == r)
        ax.axvline(1, color="black", linewidth=0.8)
        ax.set_xscale("log")
        ax.set_yticks([top - row + 0.4 - (len(settings) - 1) * height / 2 for row in range(len(MEASURES))],
                      list(MEASURES.values()))
        ax.set_title(f"{name} ({run.get('accel', '?')})", fontsize=10)
        ax.set_xlabel("x plain virtio-fs (cache=auto), log scale")
        ax.grid(axis="x", which="both", alpha=0.3)
    for ax in flat[len(runs):]:
        ax.axis("off")
    flat[0].legend(loc="lower left", fontsize=8)
    fig.suptitle("qemuprov bench: each setting against plain virtio-fs (right: faster, left: slower)")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return drawn


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="?", default=str(HERE / "results" / "share_speed.json"))
    parser.add_argument("--out", default=str(HERE.parent / "docs" / "images" / "share-speed.png"))
    args = parser.parse_args()
    bars = plot(json.loads(Path(args.results).read_text()), Path(args.out))
    print(f"wrote {args.out} ({bars} bars)")


if __name__ == "__main__":
    main()
