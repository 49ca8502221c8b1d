"""Rendering time of the comparison report (``report.html`` of ``femur-fe demo`` / ``femur-fe compare``).

Reference run: the same report without the 3-D views (tables and charts only), in the same
script, so that the ratio full / reference and the seconds per 3-D view can be compared
between machines and loads. The load average is printed with the table.

Run: ``python benchmarks/bench_report.py [--dir DEMO_OUT] [--repeat 2]``. Without ``--dir`` the
bundled femur demo is computed first into a temporary folder (about a minute).
"""
from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

from femur_fe.case.presets import loadcases_dir
from femur_fe.studies.compare import compare, load_comparison
from femur_fe.viz.report import write_comparison_report


def timed(folder: Path, render_3d: bool) -> tuple[float, list[tuple[float, str]]]:
    """Seconds to write the report, and the (time, line) of each progress line."""
    lines: list[tuple[float, str]] = []
    t0 = time.perf_counter()
    write_comparison_report(folder, render_3d=render_3d,
                            progress=lambda msg: lines.append((time.perf_counter() - t0, msg)))
    return time.perf_counter() - t0, lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dir", help="a comparison folder (femur-fe demo -o DIR); default: run the demo")
    ap.add_argument("--repeat", type=int, default=2, help="runs of each report (the fastest is shown)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench_report_") as tmp:
        if args.dir:
            folder = Path(tmp) / "cmp"
            shutil.copytree(args.dir, folder)
        else:
            folder = Path(tmp) / "demo"
            compare(load_comparison(loadcases_dir() / "scenarios" / "regeneration_demo.toml"), folder)
        ref = min(timed(folder, False)[0] for _ in range(args.repeat))
        runs = [timed(folder, True) for _ in range(args.repeat)]
        full, lines = min(runs, key=lambda r: r[0])
    views = [(t, msg) for t, msg in lines if msg.startswith("report: 3-D view")]
    read = next((t for t, msg in lines if "result folder(s) read" in msg), 0.0)
    per_view = (views[-1][0] - views[0][0]) / (len(views) - 1) if len(views) > 1 else float("nan")
    print(f"comparison folder {args.dir or 'bundled femur demo'}; load average {os.getloadavg()}")
    print(f"{'report':34s} {'seconds':>8s}")
    print(f"{'tables and charts (reference)':34s} {ref:8.1f}")
    print(f"{'full report':34s} {full:8.1f}")
    print(f"{'  reading the result folders':34s} {read:8.1f}")
    print(f"{'  per 3-D view (' + str(len(views)) + ' views)':34s} {per_view:8.2f}")
    print(f"ratio full / reference = {full / ref:.1f}")


if __name__ == "__main__":
    main()
