"""``femur-fe sweep``: run or resume a parameter sweep on Dask.

Example::

    femur-fe sweep examples/sweeps/column_density_direction.toml --out runs/col
    femur-fe sweep SWEEP.toml --out runs/s1 --scheduler tcp://10.0.0.5:8786
    femur-fe sweep SWEEP.toml --out runs/s1 --dry-run      # list the tasks only

Running the same command again resumes: finished tasks are kept, failed ones re-run.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from ..errors import OutputError, SweepError
from ..io.outdir import check_output_dir
from ..studies.sweep import TASKS, expand_sweep, is_registered_task, load_sweep, run_sweep


def check_sweep_dir(out, name: str) -> Path:
    """Refuse a results folder that holds something other than this sweep (a sweep folder is
    resumable: one that holds this sweep's files is reused), or that cannot be written."""
    out = Path(out)
    if out.is_dir() and any(out.iterdir()):
        manifest = out / "sweep.json"
        if not manifest.is_file():
            found = ", ".join(sorted(p.name for p in out.iterdir())[:5])
            raise OutputError(f"--out {out}: the folder holds {found} but no sweep.json: it is not a sweep's "
                              "results folder; choose another folder (a sweep resumes only into its own folder)")
        try:
            old = json.loads(manifest.read_text(encoding="utf-8")).get("spec", {}).get("name")
        except (OSError, ValueError, AttributeError) as exc:
            raise OutputError(f"--out {out}: {manifest} is unreadable ({exc}); choose another folder") from None
        if old != name:
            raise OutputError(f"--out {out} holds the results of sweep {old!r}, not {name!r}; choose another folder "
                              "(a sweep resumes only into its own folder)")
        if not os.access(out, os.W_OK | os.X_OK):
            raise OutputError(f"--out {out}: the folder is not writable")
        return out
    check_output_dir(out, option="--out")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"--out {out}: cannot create it ({exc.strerror or exc})") from None
    return out


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
    p.add_argument("--allow-import", action="store_true",
                   help="run a task given as 'module:function': this imports and RUNS that code on the client and "
                        "every worker (the sweep file must say allow_import = true too); registered tasks "
                        "(pipeline, column) need no opt-in")
    p.add_argument("--no-progress", action="store_true", help="no progress line on stderr")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:

    if getattr(args, "verbose", 0) < 2:   # Dask's own INFO chatter only with -vv
        import distributed  # noqa: F401  (sets its logger levels on import: override after it)

        for name in ("distributed", "bokeh", "tornado"):
            logging.getLogger(name).setLevel(logging.WARNING)

    spec = load_sweep(args.spec)
    task = spec.resolved_task()
    if not is_registered_task(task) and not args.allow_import:
        raise SweepError(f"task {task!r} is not a registered sweep task ({', '.join(sorted(TASKS))}); running a "
                         "'module:function' imports and runs that code: pass --allow-import (and set "
                         "allow_import = true in the sweep file)")
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

    check_sweep_dir(args.out, spec.name)
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
