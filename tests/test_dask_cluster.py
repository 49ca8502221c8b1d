"""A sweep on a Dask cluster started the way an administrator starts one.

``dask scheduler`` and two ``dask worker`` processes are launched from their own command lines
on localhost (``python -m distributed.cli.dask_scheduler`` / ``dask_worker`` when the ``dask``
entry point is not installed), the example column sweep runs through ``femur-fe sweep
--scheduler tcp://127.0.0.1:PORT`` in its own process, and the worker (nanny and worker
process) that wrote the first result is killed as soon as that result is on disk. Every task
must then be in the results table exactly once, finished, with one part file each; a second
run into the same folder must find nothing left to do; the killed worker's rows must be those
it finished before it died, and the other worker must have taken over the rest.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("distributed", reason="distributed (dask[distributed]) is not installed")
pd = pytest.importorskip("pandas")

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "sweeps" / "column_density_direction.toml"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def dask_command(role: str) -> list[str]:
    """``dask scheduler`` / ``dask worker`` next to this Python, else the module form."""
    exe = Path(sys.executable).with_name("dask")
    if exe.exists() or shutil.which("dask"):
        return [str(exe) if exe.exists() else shutil.which("dask"), role]
    return [sys.executable, "-m", f"distributed.cli.dask_{role}"]


def start(cmd: list[str], log: Path) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    # the workers import the femur_fe this test imports (the installed one, with its kernels), never the
    # source tree: its folder is left off the path and the processes start outside it
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p and Path(p).resolve() != ROOT)
    return subprocess.Popen(cmd, stdout=log.open("wb"), stderr=subprocess.STDOUT, env=env, cwd=log.parent,
                            start_new_session=True)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait(timeout=30)


def wait_for_workers(address: str, n: int, timeout: float) -> None:
    from distributed import Client

    with Client(address, timeout=timeout, set_as_default=False) as c:
        c.wait_for_workers(n, timeout=timeout)


def finished_parts(out: Path) -> list[Path]:
    return [p for p in (out / "parts").glob("*.parquet") if not p.name.startswith(".")] if (out / "parts").is_dir() \
        else []


def test_sweep_on_command_line_cluster_survives_a_killed_worker(tmp_path):
    # the example sweep with a finer column (each density field's factorisation takes a fraction of
    # a second) and more density fields, so the sweep is still running when a worker is killed
    text = EXAMPLE.read_text(encoding="utf-8")
    assert "divisions = [4, 4, 12]" in text and "linspace = [0.7, 1.3, 4]" in text
    text = text.replace("divisions = [4, 4, 12]", "divisions = [9, 9, 27]")
    text = text.replace("linspace = [0.7, 1.3, 4]", "linspace = [0.7, 1.3, 10]")
    spec = tmp_path / "sweep.toml"
    spec.write_text(text, encoding="utf-8")
    n_tasks = 10 * 4
    out = tmp_path / "out"

    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    procs: list[subprocess.Popen] = []
    try:
        procs.append(start(dask_command("scheduler") + ["--host", "127.0.0.1", "--port", str(port),
                                                        "--no-dashboard"], tmp_path / "scheduler.log"))
        workers = [start(dask_command("worker") + [address, "--nthreads", "1", "--nworkers", "1", "--no-dashboard",
                                                   "--name", f"w{i}"], tmp_path / f"worker{i}.log")
                   for i in range(2)]
        procs += workers
        wait_for_workers(address, 2, timeout=60)

        sweep = start([sys.executable, "-m", "femur_fe.commands.cli", "sweep", str(spec), "--out", str(out),
                       "--scheduler", address, "--no-progress", "--allow-import"], tmp_path / "sweep.log")
        procs.append(sweep)
        t0 = time.time()
        while not finished_parts(out) and sweep.poll() is None and time.time() - t0 < 120:
            time.sleep(0.05)
        n_before_kill = len(finished_parts(out))
        assert 0 < n_before_kill < n_tasks, (
            f"{n_before_kill} of {n_tasks} tasks finished before the kill; the test needs a sweep in progress "
            f"(sweep log: {(tmp_path / 'sweep.log').read_text(errors='replace')[-2000:]})")
        # kill the worker (nanny and worker process: one process group) that finished the first result
        first = pd.read_parquet(finished_parts(out)[0])
        group = os.getpgid(int(first["pid"].iloc[0]))
        victim = next((w for w in workers if w.pid == group), None)
        assert victim is not None, f"the first result came from pid {int(first['pid'].iloc[0])}, not a worker"
        killed_at = time.time()
        stop(victim)
        rc = sweep.wait(timeout=180)
        log = (tmp_path / "sweep.log").read_text(errors="replace")
        assert rc == 0, log[-3000:]
        assert f"{n_tasks} tasks: {n_tasks} ok, 0 failed, 0 timeout" in log

        table = pd.read_csv(out / "results.csv")
        # every task once, finished, in the first run, in one attempt of the engine
        assert len(table) == n_tasks and table["task_id"].is_unique
        assert (table["status"] == "ok").all() and (table["run"] == 1).all()
        assert len(finished_parts(out)) == n_tasks
        assert table["attempt_id"].is_unique
        # the grid is complete: each (density, angle) point exactly once
        assert not table.duplicated(["density.scale", "loading.angle_deg"]).any()
        assert table.groupby("density.scale").size().eq(4).all()
        # the killed worker's rows are the ones it finished before it died; the rest ran on the other
        by_worker = table.groupby("worker")
        died = table.loc[table["pid"] == int(first["pid"].iloc[0]), "worker"].unique()
        assert len(died) == 1 and table["worker"].nunique() == 2, table[["task_id", "worker", "finished_at"]]
        assert (by_worker.get_group(died[0])["finished_at"] <= killed_at).all()
        assert (by_worker.get_group([w for w in by_worker.groups if w != died[0]][0])["finished_at"]
                > killed_at).any()
        # the numbers do not depend on where a task ran: stiffness rises with density, falls with tilt
        piv = table.pivot(index="density.scale", columns="loading.angle_deg", values="stiffness_N_per_mm")
        assert (np.diff(piv.values, axis=0) > 0).all() and (np.diff(piv.values, axis=1) < 0).all()

        # resuming finds every task done and runs nothing
        again = subprocess.run([sys.executable, "-m", "femur_fe.commands.cli", "sweep", str(spec), "--out", str(out),
                                "--scheduler", address, "--no-progress", "--allow-import"],
                               capture_output=True, text=True, timeout=120, cwd=tmp_path,
                               env=dict(os.environ, PYTHONPATH=os.pathsep.join(
                                   p for p in sys.path if p and Path(p).resolve() != ROOT)))
        assert again.returncode == 0, again.stderr[-2000:]
        runs = json.loads((out / "sweep.json").read_text())["runs"]
        assert [r["n_to_run"] for r in runs] == [n_tasks, 0]
        table2 = pd.read_csv(out / "results.csv")
        assert len(table2) == n_tasks and (table2["run"] == 1).all()
        assert table2.set_index("task_id")["finished_at"].equals(table.set_index("task_id")["finished_at"])
    finally:
        for p in reversed(procs):
            stop(p)
