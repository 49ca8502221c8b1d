"""``femur-fe sweep``: run or resume a parameter sweep on Dask.

Example::

    femur-fe sweep examples/sweeps/column_density_direction.toml --out runs/col
    femur-fe sweep SWEEP.toml --out runs/s1 --scheduler tcp://10.0.0.5:8786
    femur-fe sweep SWEEP.toml --out runs/s1 --dry-run      # list the tasks only

Running the same command again resumes: finished tasks are kept, failed ones re-run.
"""
from __future__ import annotations

import argparse
import logging
import sys

from ..studies.sweep import expand_sweep, load_sweep, run_sweep


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "sweep",
        help="run or resume a parameter sweep (local Dask cluster or a running scheduler)",
        description=(
            "Expand a sweep TOML (base case + parameters by key path: grid, random, lhs or list) and run "
            "every task on Dask; results go to OUT/results.parquet and OUT/results.csv, one row per task. "
            "Run again with the same --out to resume: finished tasks are not recomputed."
        ),
    )
    p.add_argument("spec", help="sweep TOML file")
    p.add_argument("--out", "-o", required=True, help="results folder (created; reused to resume)")
    p.add_argument("--scheduler", default=None,
                   help="address of a running Dask scheduler, e.g. tcp://host:8786, or 'serial' to run in this "
                        "process (default: a local cluster)")
    p.add_argument("--workers", type=int, default=None,
                   help="local-cluster worker processes, one thread each (default: one per core)")
    p.add_argument("--timeout", type=float, default=None, help="per-task time limit in s (overrides the spec)")
    p.add_argument("--retries", type=int, default=None,
                   help="extra attempts for failed/timed-out/crashed tasks (overrides the spec)")
    p.add_argument("--connect-timeout", type=float, default=10.0,
                   help="seconds to wait for --scheduler before giving up (default %(default)s)")
    p.add_argument("--dry-run", action="store_true", help="validate and list the tasks, run nothing")
    p.add_argument("--no-progress", action="store_true", help="no progress line on stderr")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:

    if getattr(args, "verbose", 0) < 2:   # Dask's own INFO chatter only with -vv
        import distributed  # noqa: F401  (sets its logger levels on import: override after it)

        for name in ("distributed", "bokeh", "tornado"):
            logging.getLogger(name).setLevel(logging.WARNING)

    spec = load_sweep(args.spec)
    if args.dry_run:
        tasks = expand_sweep(spec)
        print(f"{spec.name}: {len(tasks)} tasks ({spec.method}"
              f"{', seed ' + str(spec.seed) if spec.seed is not None else ''}), task function {spec.task_name}")
        for t in tasks:
            params = ", ".join(f"{k}={v}" for k, v in t.params.items())
            print(f"  {t.task_id}  {params}")
        return 0

    def show_dashboard(addr: str) -> None:
        print(f"Dask dashboard: {addr}", file=sys.stderr, flush=True)

    table = run_sweep(spec, args.out, scheduler=args.scheduler, n_workers=args.workers,
                      progress=not args.no_progress, timeout_s=args.timeout, retries=args.retries,
                      connect_timeout_s=args.connect_timeout, on_dashboard=show_dashboard)
    counts = table["status"].value_counts().to_dict() if len(table) else {}
    summary = ", ".join(f"{counts.get(s, 0)} {s}" for s in ("ok", "failed", "timeout"))
    print(f"{spec.name}: {len(table)} tasks: {summary}")
    print(f"results: {args.out}/results.parquet, {args.out}/results.csv")
    bad = table[table["status"] != "ok"] if len(table) else table
    for _, row in bad.head(5).iterrows():
        first = str(row.get("error", "")).splitlines()[0] if row.get("error") else ""
        print(f"  {row['status']}: task {row['task_id']}: {first}")
    if len(bad) > 5:
        print(f"  ... and {len(bad) - 5} more (column 'error' of the results)")
    return 0 if len(bad) == 0 else 1
