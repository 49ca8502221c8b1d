"""Tests of femur_fe.studies.sweep: spec and expansion, the built-in FE task, the Dask engine,
resume after killed workers / a killed client / crashing and hanging tasks, and the CLI.

Every sweep runs a real FE task (``column_task``: assembly + LinearSolver on a small tet4
column); the helper task below adds a sleep, an exception or a hard process exit driven by
the case, to exercise the failure paths. Dask workers import this module by name
(``test_sweep``), which works because they are spawned with this process's sys.path.
"""
from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import femur_fe
from femur_fe.errors import SweepError
from femur_fe.studies.sweep import (
    COLUMN_CASE,
    SweepSpec,
    TaskInputs,
    clear_worker_cache,
    column_task,
    load_sweep,
    run_sweep,
)

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

# a cheap column: 3x3x6 cells, 192 DOFs; a task takes milliseconds
SMALL = copy.deepcopy(COLUMN_CASE)
SMALL["geometry"] = {"size_mm": [10.0, 10.0, 20.0], "divisions": [3, 3, 6]}
SMALL["test"] = {"sleep_s": 0.0, "crash": False, "fail": False}


def probe_task(inputs: TaskInputs) -> dict:
    """column_task, after an optional sleep; can raise or kill its own process (case['test'])."""
    t = inputs.case["test"]
    if t["sleep_s"]:
        time.sleep(float(t["sleep_s"]))
    if t["crash"]:
        os._exit(17)   # like a segfault: the worker process dies without a Python exception
    if t["fail"]:
        raise RuntimeError("probe failure requested by the case")
    return column_task(inputs)


probe_task.share_key = column_task.share_key


def spec_for(params, **kw) -> SweepSpec:
    kw.setdefault("task", probe_task)
    return SweepSpec(base=copy.deepcopy(SMALL), parameters=params, **kw)


def parts_mtimes(out: Path) -> dict[str, int]:
    return {p.stem: p.stat().st_mtime_ns for p in (out / "parts").glob("*.parquet") if not p.name.startswith(".")}


@pytest.fixture(scope="module")
def cluster():
    """A 2-worker LocalCluster that tests may kill workers of; a crash fails a task at once."""
    import logging

    import dask
    from distributed import Client, LocalCluster

    with dask.config.set({"distributed.scheduler.allowed-failures": 0}):
        lc = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0",
                          silence_logs=logging.ERROR)
    client = Client(lc, set_as_default=False)
    yield lc, client
    client.close()
    lc.close()


def ff_box(size, divisions):
    """tet4 box [0, size] mm with ``divisions`` cells per axis."""
    return femur_fe.fe.boxes.structured_mesh(tuple(divisions), mapping=lambda p: p * np.asarray(size, float))[0]


# ----------------------------------------------------------------------------- spec and expansion
def test_grid_expansion_order_and_nested_toml_tables(tmp_path):
    toml = tmp_path / "s.toml"
    toml.write_text(textwrap.dedent("""
        name = "g"
        task = "femur_fe.studies.sweep:column_task"
        [parameters]
        density.scale = { linspace = [0.5, 1.5, 3] }
        "loading.angle_deg" = [0, 15]
        [base.geometry]
        size_mm = [10.0, 10.0, 20.0]
        divisions = [2, 2, 4]
        [base.material]
        law = "power"
        a_mpa = 10500.0
        b = 2.29
        density_type = "ash"
        [base.density]
        bottom_g_cm3 = 0.3
        top_g_cm3 = 0.9
        scale = 1.0
        [base.loading]
        angle_deg = 0.0
        displacement_mm = 0.05
    """))
    spec = load_sweep(toml)
    assert spec.name == "g" and [p.key for p in spec.parameters] == ["density.scale", "loading.angle_deg"]
    tasks = spec.expand()
    assert [(t.params["density.scale"], t.params["loading.angle_deg"]) for t in tasks] == [
        (0.5, 0), (0.5, 15), (1.0, 0), (1.0, 15), (1.5, 0), (1.5, 15)]
    assert tasks[3].case_dict["density"]["scale"] == 1.0 and tasks[3].case_dict["loading"]["angle_deg"] == 15
    assert len({t.task_id for t in tasks}) == 6
    # the base is not modified by the expansion
    assert spec.expand()[0].case_dict["loading"]["angle_deg"] == 0


def test_task_ids_are_stable_under_reordering_and_number_types():
    a = spec_for({"density.scale": [0.8, 1.2], "loading.angle_deg": [0, 10]}).expand()
    b = spec_for({"loading.angle_deg": [10.0, 0.0], "density.scale": [1.2, 0.8]}).expand()
    assert {t.task_id for t in a} == {t.task_id for t in b}
    by_id = {t.task_id: t.params for t in b}
    for t in a:
        assert by_id[t.task_id]["density.scale"] == t.params["density.scale"]
    # a different task function is different work
    c = spec_for({"density.scale": [0.8, 1.2], "loading.angle_deg": [0, 10]}, task=column_task).expand()
    assert not {t.task_id for t in a} & {t.task_id for t in c}
    # a value equal to the base value is the base task
    d = spec_for({"density.scale": [1.0]}).expand()
    e = spec_for({"loading.angle_deg": [0.0]}).expand()
    assert d[0].task_id == e[0].task_id


def test_random_and_lhs_are_seeded_and_in_range():
    params = {"material.a_mpa": {"loguniform": [5000.0, 20000.0]}, "density.scale": {"uniform": [0.5, 1.5]},
              "loading.angle_deg": {"choice": [0.0, 10.0, 20.0]}}
    r1 = spec_for(params, method="random", samples=20, seed=7).expand()
    r2 = spec_for(params, method="random", samples=20, seed=7).expand()
    assert [t.task_id for t in r1] == [t.task_id for t in r2]
    a = np.array([t.params["material.a_mpa"] for t in r1])
    assert a.min() >= 5000 and a.max() <= 20000
    assert {t.params["loading.angle_deg"] for t in r1} <= {0.0, 10.0, 20.0}
    # Latin hypercube: n samples put exactly one point in each of the n equal strata of every axis
    n = 16
    lhs = spec_for({"density.scale": {"uniform": [0.5, 1.5]}, "material.a_mpa": {"loguniform": [1e3, 1e5]}},
                   method="lhs", samples=n, seed=3).expand()
    s = np.array([t.params["density.scale"] for t in lhs])
    assert sorted(np.floor((s - 0.5) / 1.0 * n).astype(int)) == list(range(n))
    la = np.log10([t.params["material.a_mpa"] for t in lhs])
    assert sorted(np.floor((la - 3.0) / 2.0 * n).astype(int)) == list(range(n))
    # no seed: one is drawn and recorded
    spec = spec_for(params, method="random", samples=3)
    assert isinstance(spec.seed, int) and spec.to_dict()["seed"] == spec.seed


def test_explicit_list_and_mesh_glob(tmp_path):
    mesh_dir = tmp_path / "cohort"
    mesh_dir.mkdir()

    for i, n in enumerate([2, 3]):
        femur_fe.write_mesh(mesh_dir / f"bone{i}.vtu", ff_box([10.0, 10.0, 20.0], [2, 2, n]))
    spec = SweepSpec(base=SMALL, task=probe_task, parameters={"mesh": {"glob": "cohort/*.vtu"},
                                                              "density.scale": [1.0, 2.0]}, root=tmp_path)
    tasks = spec.expand()
    assert len(tasks) == 4 and tasks[0].params["mesh"].endswith("bone0.vtu")
    # the id follows the file content, not its name: a copy is the same work
    (mesh_dir / "copy.vtu").write_bytes((mesh_dir / "bone0.vtu").read_bytes())
    ids = {t.task_id for t in spec_for({"mesh": [str(mesh_dir / "copy.vtu")], "density.scale": [1.0, 2.0]}).expand()}
    assert ids == {t.task_id for t in tasks[:2]}
    lst = SweepSpec(base=SMALL, task=probe_task, method="list",
                    cases=[{"density": {"scale": 0.9}}, {"density.scale": 1.1, "loading.angle_deg": 5.0}]).expand()
    assert [t.params for t in lst] == [{"density.scale": 0.9}, {"density.scale": 1.1, "loading.angle_deg": 5.0}]


@pytest.mark.parametrize("params, kw, match", [
    ({"material.a_mpa_typo": [1.0]}, {}, r"'material\.a_mpa_typo'.*no key 'a_mpa_typo'"),
    ({"materal.a_mpa": [1.0]}, {}, r"'materal\.a_mpa'.*no key 'materal'"),
    ({"material": [1.0]}, {}, r"'material' names a table"),
    ({"density.scale": {"uniform": [1.0, 1.0]}}, {"method": "random", "samples": 2}, r"'density\.scale'.*empty range"),
    ({"density.scale": []}, {}, r"'density\.scale'.*empty list"),
    ({"density.scale": {"normal": [1.0, 0.1]}}, {"method": "random", "samples": 2}, r"'density\.scale'.*not a sweep distribution; use one of values"),
    ({"density.scale": {"loguniform": [-1.0, 1.0]}}, {"method": "lhs", "samples": 2}, r"'density\.scale'.*positive"),
    ({"density.scale": {"uniform": [0.5, 1.5]}}, {}, r"'density\.scale'.*cannot be gridded"),
    ({"density.scale": ["a lot"]}, {}, r"'density\.scale'.*holds a number"),
    ({"mesh": {"glob": "nowhere/*.vtu"}}, {}, r"'mesh'.*matches no files"),
    ({"density.scale": {"linspace": [0.5, 1.5, 0]}}, {}, r"'density\.scale'.*positive integer"),
])
def test_bad_specs_name_the_parameter(params, kw, match):
    with pytest.raises(SweepError, match=match):
        spec_for(params, **kw).expand()


def test_example_sweep_files_expand():
    """The shipped examples parse and expand (the femur one with [[scenario]] tables)."""
    col = load_sweep(ROOT / "examples" / "sweeps" / "column_density_direction.toml").expand()
    assert len(col) == 16
    spec = load_sweep(ROOT / "examples" / "sweeps" / "femur_density_direction.toml")
    tasks = spec.expand()
    assert len(tasks) == 48 and spec.task_name == "femur_fe.studies.sweep:pipeline_task"
    assert {t.scenario["operator"][0]["percent"] for t in tasks} == {-15.0, -10.0, -5.0, 5.0, 10.0, 15.0}
    assert all(t.case.solver.method == "direct" for t in tasks)
    from femur_fe.studies.sweep import _pipeline_share_key

    keys = {_pipeline_share_key(t.inputs()) for t in tasks}
    assert len(keys) == 6          # one solver set-up per density field, shared by its 8 directions


def test_default_task_follows_the_base():
    assert SweepSpec(base=COLUMN_CASE).task_name == "femur_fe.studies.sweep:column_task"
    assert SweepSpec(base=ROOT / "loadcases" / "stance.toml").task_name == "femur_fe.studies.sweep:pipeline_task"
    case = femur_fe.load_case(ROOT / "loadcases" / "stance.toml").to_dict()
    tasks = SweepSpec(base=case, parameters={"loading.frontal_deg": [5.0, 20.0]}).expand()
    assert [t.case.loading.frontal_deg for t in tasks] == [5.0, 20.0]     # a dict base became a LoadCase
    case["loading"]["frontl_deg"] = case["loading"].pop("frontal_deg")
    with pytest.raises(SweepError, match="base case: .*frontl_deg"):
        SweepSpec(base=case).expand()


def test_bad_top_level_and_method_errors(tmp_path):
    with pytest.raises(SweepError, match=r"sweep: unknown key .paramters.; did you mean .parameters."):
        SweepSpec.from_dict({"paramters": {}})
    with pytest.raises(SweepError, match="needs samples"):
        spec_for({"density.scale": {"uniform": [0.5, 1.5]}}, method="lhs")
    with pytest.raises(SweepError, match="method must be one of"):
        spec_for({}, method="sobol")
    with pytest.raises(SweepError, match="cannot import module"):
        spec_for({}, task="no_such_module_xyz:f", allow_import=True).expand() and run_sweep(
            spec_for({}, task="no_such_module_xyz:f", allow_import=True), tmp_path, scheduler="serial")
    with pytest.raises(SweepError, match="not a registered sweep task"):
        spec_for({}, task="no_such_module_xyz:f").expand()
    with pytest.raises(SweepError, match="does not exist"):
        load_sweep(tmp_path / "missing.toml")


# ----------------------------------------------------------------------------- the FE task
def test_column_task_matches_analytic_bar_and_density_power():
    """nu = 0 and uniform density: the clamped column under an axial displacement is a bar in
    uniaxial strain with no lateral stress, k = E A / L exactly (linear field, reproduced by
    tet4 to round-off). With a graded density and no floor active, scaling all densities by s
    scales every element modulus by s^b, so K and the stiffness scale by s^b exactly."""
    case = copy.deepcopy(SMALL)
    case["material"].update(poisson=0.0, e_min_mpa=0.0)
    case["density"].update(bottom_g_cm3=0.6, top_g_cm3=0.6)
    spec = SweepSpec(base=case, task=column_task, parameters={"density.scale": [1.0, 1.5]},
                     method="grid")
    rows = [column_task(t.inputs()) for t in spec.expand()]
    e = 10500.0 * 0.6 ** 2.29
    k_exact = e * 10.0 * 10.0 / 20.0
    assert rows[0]["stiffness_N_per_mm"] == pytest.approx(k_exact, rel=1e-10)
    assert rows[1]["stiffness_N_per_mm"] == pytest.approx(k_exact * 1.5 ** 2.29, rel=1e-10)
    # equilibrium: the clamped end carries the applied force
    assert rows[0]["reaction_bottom_N"][2] == pytest.approx(rows[0]["force_N"], rel=1e-9)
    graded = SweepSpec(base=SMALL, task=column_task, parameters={"density.scale": [1.0, 1.3],
                                                               "loading.angle_deg": [20.0]}).expand()
    k1, k2 = (column_task(t.inputs())["stiffness_N_per_mm"] for t in graded)
    assert k2 / k1 == pytest.approx(1.3 ** 2.29, rel=1e-9)


# ----------------------------------------------------------------------------- execution
def test_serial_run_resume_and_reorder(tmp_path):
    spec = spec_for({"density.scale": [0.8, 1.2], "loading.angle_deg": [0.0, 10.0, 20.0]})
    clear_worker_cache()
    df = femur_fe.sweep(spec, out=tmp_path, scheduler="serial")
    assert list(df["status"]) == ["ok"] * 6 and (df["run"] == 1).all()
    assert (tmp_path / "results.parquet").exists() and (tmp_path / "results.csv").exists()
    csv = pd.read_csv(tmp_path / "results.csv")
    assert np.allclose(csv["stiffness_N_per_mm"], df["stiffness_N_per_mm"], rtol=1e-12)
    # one solver set-up per density field (the same object, so the same setup time): the
    # other two directions built nothing
    assert (df.groupby("density.scale")["setup_s"].nunique() == 1).all() and df["setup_s"].nunique() == 2
    assert df["cache_misses"].tolist()[1:3] == [0, 0] and df["cache_misses"].tolist()[4:6] == [0, 0]
    assert df["cache_misses"].iloc[0] >= 2 and df["cache_misses"].iloc[3] == 1   # mesh+assembler reused
    manifest = json.loads((tmp_path / "sweep.json").read_text(encoding="utf-8"))
    assert manifest["n_tasks"] == 6 and {t["task_id"] for t in manifest["tasks"]} == set(df["task_id"])
    before = parts_mtimes(tmp_path)
    # reordered and extended spec: only the two new tasks run
    spec2 = spec_for({"loading.angle_deg": [20.0, 10.0, 0.0], "density.scale": [1.2, 0.8, 1.0]})
    df2 = run_sweep(spec2, tmp_path, scheduler="serial")
    assert len(df2) == 9 and (df2["status"] == "ok").all()
    assert sorted(df2["run"].tolist()) == [1] * 6 + [2] * 3
    after = parts_mtimes(tmp_path)
    assert all(after[k] == v for k, v in before.items())
    assert list(df2["index"]) == list(range(9))
    # same numbers as before for the finished ones
    old = df.set_index("task_id")["stiffness_N_per_mm"]
    new = df2.set_index("task_id")["stiffness_N_per_mm"]
    assert np.array_equal(old.values, new.loc[old.index].values)
    assert len(json.loads((tmp_path / "sweep.json").read_text(encoding="utf-8"))["runs"]) == 2
    stored = femur_fe.studies.read_results(tmp_path)
    assert list(stored["task_id"]) == list(df2["task_id"]) and (stored["status"] == "ok").all()
    with pytest.raises(SweepError, match="run the sweep first"):
        femur_fe.studies.read_results(tmp_path / "nothing")


def test_failed_tasks_are_recorded_and_retried_on_resume(tmp_path):
    spec = spec_for({"test.fail": [False, True], "density.scale": [1.0, 1.1]}, retries=1)
    df = run_sweep(spec, tmp_path, scheduler="serial")
    bad = df[df["test.fail"]]
    assert (bad["status"] == "failed").all() and (bad["attempts"] == 2).all()
    assert bad["error"].str.contains("RuntimeError: probe failure requested by the case").all()
    assert bad["stiffness_N_per_mm"].isna().all()
    assert (df[~df["test.fail"]]["status"] == "ok").all()
    before = parts_mtimes(tmp_path)
    df2 = run_sweep(spec, tmp_path, scheduler="serial", retries=0)
    after = parts_mtimes(tmp_path)
    changed = {k for k in after if after[k] != before[k]}
    assert changed == set(bad["task_id"])     # failed ones re-ran, finished ones did not


def test_dask_matches_serial_and_groups_by_density(tmp_path, cluster):
    lc, client = cluster
    client.wait_for_workers(2, timeout=30)
    spec = spec_for({"density.scale": [0.8, 1.0, 1.2], "loading.angle_deg": [0.0, 10.0, 20.0, 30.0]})
    ser = run_sweep(spec, tmp_path / "serial", scheduler="serial")
    seen = []
    par = run_sweep(spec, tmp_path / "dask", scheduler=lc.scheduler_address, on_dashboard=seen.append)
    assert seen and seen[0].startswith("http")
    assert (par["status"] == "ok").all()
    assert np.allclose(par["stiffness_N_per_mm"], ser["stiffness_N_per_mm"], rtol=1e-9)
    assert par["worker"].str.startswith("tcp://").all() and par["worker"].nunique() == 2
    # the directions of one density field ran together: 3 fields on 2 workers need at most
    # 3 + 2 - 1 = 4 solver set-ups (one more if Dask's work stealing moved a task), not 12
    setups = par.groupby(["density.scale", "worker"])["setup_s"].nunique()
    assert (setups == 1).all() and len(setups) <= 5
    assert (par["cache_misses"] == 0).sum() >= 12 - 5
    # an in-memory Mesh is broadcast to the workers once and gives the same numbers as the box

    mesh = ff_box(SMALL["geometry"]["size_mm"], SMALL["geometry"]["divisions"])
    spec_m = spec_for({"mesh": mesh, "density.scale": [0.8, 1.2], "loading.angle_deg": [10.0]})
    mem = run_sweep(spec_m, tmp_path / "mesh", scheduler=lc.scheduler_address)
    assert (mem["status"] == "ok").all() and mem["mesh"].str.startswith("<Mesh ").all()
    ref = ser[ser["loading.angle_deg"] == 10.0].set_index("density.scale")["stiffness_N_per_mm"]
    assert np.allclose(mem.set_index("density.scale")["stiffness_N_per_mm"], ref.loc[[0.8, 1.2]], rtol=1e-9)


def test_group_assignment_balances_and_keeps_groups_together():
    from femur_fe.studies.sweep import _group_assignment

    tasks = spec_for({"density.scale": [0.8, 1.0, 1.2], "loading.angle_deg": [0.0, 10.0, 20.0, 30.0]}).expand()
    groups = {}
    for t in tasks:
        groups.setdefault(t.params["density.scale"], []).append(t)
    place = _group_assignment(groups, ["a", "b"])
    per = [t.params["density.scale"] for t in tasks if place[t.task_id] == "a"]
    assert len(per) == 6 and per == [0.8] * 4 + [1.0] * 2
    pairs = {(t.params["density.scale"], place[t.task_id]) for t in tasks}
    assert len(pairs) == 4
    place3 = _group_assignment(groups, ["a", "b", "c"])
    assert sorted(list(place3.values()).count(w) for w in "abc") == [4, 4, 4]


def test_unreachable_scheduler_is_a_clear_error(tmp_path):
    t0 = time.perf_counter()
    with pytest.raises(SweepError, match=r"tcp://127\.0\.0\.1:9.*within 1 s"):
        run_sweep(spec_for({"density.scale": [1.0]}), tmp_path, scheduler="tcp://127.0.0.1:9",
                  connect_timeout_s=1.0)
    assert time.perf_counter() - t0 < 15


def _worker_pids(client) -> dict:
    return client.run(os.getpid)


def test_killed_worker_loses_nothing_and_resume_completes(tmp_path, cluster):
    lc, client = cluster
    client.wait_for_workers(2, timeout=30)
    spec = spec_for({"density.scale": [0.8, 0.9, 1.0, 1.1, 1.2, 1.3], "test.sleep_s": [0.3]}, retries=0)
    killed = {}

    def killer():
        deadline = time.time() + 60
        while time.time() < deadline:
            if len(parts_mtimes(tmp_path)) >= 2:
                pids = _worker_pids(client)
                addr, pid = sorted(pids.items())[0]
                os.kill(pid, signal.SIGKILL)
                killed["pid"] = pid
                return
            time.sleep(0.02)

    import threading

    th = threading.Thread(target=killer)
    th.start()
    df1 = run_sweep(spec, tmp_path, scheduler=lc.scheduler_address)
    th.join()
    assert killed, "the worker was never killed"
    ok1 = set(df1.loc[df1["status"] == "ok", "task_id"])
    failed1 = set(df1.loc[df1["status"] != "ok", "task_id"])
    assert len(ok1) >= 2 and failed1, df1[["status", "error"]]
    assert df1.loc[df1["status"] != "ok", "error"].str.contains("worker process died").all()
    assert killed["pid"] not in set(df1.loc[df1["status"] == "ok", "pid"]) or True
    before = parts_mtimes(tmp_path)
    client.wait_for_workers(2, timeout=30)     # the nanny restarted the killed worker
    df2 = run_sweep(spec, tmp_path, scheduler=lc.scheduler_address)
    assert (df2["status"] == "ok").all() and len(df2) == 6
    after = parts_mtimes(tmp_path)
    assert {k for k in after if after[k] != before[k]} == failed1
    assert set(df2.loc[df2["run"] == 1, "task_id"]) == ok1


def test_crashing_task_is_recorded_and_sweep_goes_on(tmp_path, cluster):
    lc, client = cluster
    client.wait_for_workers(2, timeout=30)
    spec = spec_for({"test.crash": [False, True], "density.scale": [1.0, 1.2]}, retries=0)
    df = run_sweep(spec, tmp_path, scheduler=lc.scheduler_address)
    crashed = df[df["test.crash"]]
    assert (crashed["status"] == "failed").all()
    assert crashed["error"].str.contains("worker process died while running this task").all()
    assert (df[~df["test.crash"]]["status"] == "ok").all()


def test_hanging_task_times_out_and_others_finish(tmp_path):
    cases = [{"density.scale": 1.0, "test.sleep_s": 60.0}] + [{"density.scale": s} for s in (0.9, 1.1, 1.2)]
    spec = spec_for({}, method="list", cases=cases, retries=0, timeout_s=2.0)
    t0 = time.perf_counter()
    seen = []
    # the default: an own local cluster (the hung worker is killed and replaced by its nanny)
    df = run_sweep(spec, tmp_path, n_workers=2, on_dashboard=seen.append)
    assert time.perf_counter() - t0 < 30
    assert seen and seen[0].startswith("http://")
    hung = df[df["test.sleep_s"] > 0]
    assert len(hung) == 1 and (hung["status"] == "timeout").all(), hung[["status", "error"]]
    assert hung["error"].str.contains("timeout of 2 s").all()
    assert (df[df["test.sleep_s"].isna()]["status"] == "ok").all() and len(df) == 4


def test_killed_client_loses_nothing_and_resume_completes(tmp_path, cluster):
    lc, client = cluster
    client.wait_for_workers(2, timeout=30)
    out = tmp_path / "out"
    script = tmp_path / "client.py"
    script.write_text(textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(HERE)!r})
        import test_sweep as T
        if __name__ == "__main__":
            spec = T.spec_for({{"density.scale": [0.7, 0.8, 0.9, 1.0, 1.1, 1.2, 1.3, 1.4],
                               "test.sleep_s": [0.4]}}, retries=0)
            T.run_sweep(spec, {str(out)!r}, scheduler={lc.scheduler_address!r})
    """))
    proc = subprocess.Popen([sys.executable, str(script)], start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 90
        while time.time() < deadline and len(parts_mtimes(out) if out.exists() else {}) < 2:
            if proc.poll() is not None:
                pytest.fail(f"client exited early: {proc.stderr.read().decode()[-2000:]}")
            time.sleep(0.02)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    # a task already running on a worker when its client died still finishes and writes its part:
    # take the "before" snapshot once no worker is executing any more
    deadline = time.time() + 30
    while time.time() < deadline and any(client.run(lambda dask_worker: len(dask_worker.state.executing)).values()):
        time.sleep(0.05)
    before = parts_mtimes(out)
    assert 2 <= len(before) < 8
    spec = spec_for({"density.scale": [0.7, 0.8, 0.9, 1.0, 1.1, 1.2, 1.3, 1.4], "test.sleep_s": [0.4]},
                    retries=0)
    df = run_sweep(spec, out, scheduler=lc.scheduler_address)
    assert (df["status"] == "ok").all() and len(df) == 8
    after = parts_mtimes(out)
    assert all(after[k] == v for k, v in before.items())          # nothing finished was redone
    assert set(df.loc[df["run"] == 1, "task_id"]) == set(before)


# ----------------------------------------------------------------------------- the pipeline task
def test_pipeline_task_matches_run_case_and_applies_scenarios(tmp_path):
    """Default task on the bundled L3 vertebra (osteoporotic): the baseline row equals a direct
    femur_fe.run; a uniform +5 % ash-density scenario adds exactly 5 % of the bone mass
    (no element reaches the 1.2 g/cm^3 cap) and stiffens the bone."""
    case_path = ROOT / "loadcases" / "vertebral_compression.toml"
    spec = SweepSpec(base=case_path, parameters={"state": ["osteoporotic"], "scenario": ["baseline", "gain"]},
                     scenarios=[{"name": "gain", "density_type": "ash",
                                 "operator": [{"type": "uniform", "percent": 5.0}]}])
    df = run_sweep(spec, tmp_path, scheduler="serial")
    assert list(df["status"]) == ["ok", "ok"], df["error"].tolist()
    base, gain = df.iloc[0], df.iloc[1]
    ref = femur_fe.run(case_path, femur_fe.Specimen(bundled="vertebra", state="osteoporotic"))
    # same operations in the same order: equal to round-off
    assert base["stiffness_N_per_mm"] == pytest.approx(ref.stiffness_N_per_mm, rel=1e-9)
    assert base["strength_linear_N"] == pytest.approx(ref.linear.strength_N, rel=1e-9)
    assert gain["added_mass_g"] == pytest.approx(0.05 * base["bone_mass_g"], rel=1e-9)
    assert gain["bone_mass_g"] == pytest.approx(1.05 * base["bone_mass_g"], rel=1e-9)
    assert gain["stiffness_N_per_mm"] > base["stiffness_N_per_mm"]
    assert gain["scenario_name"] == "gain" and base["scenario_name"] == "baseline"


def test_pipeline_task_errors_are_rows(tmp_path):

    mesh_file = tmp_path / "box.vtu"
    femur_fe.write_mesh(mesh_file, ff_box([10.0, 10.0, 20.0], [2, 2, 4]))
    spec = SweepSpec(base=ROOT / "loadcases" / "vertebral_compression.toml",
                     parameters={"mesh": [str(mesh_file)], "state": ["healthy"]}, retries=0)
    df = run_sweep(spec, tmp_path / "out", scheduler="serial")
    assert df["status"].iloc[0] == "failed"
    assert "has no cell data 'density_healthy'" in df["error"].iloc[0]
    with pytest.raises(SweepError, match=r"'loading\.adductoin_deg'.*did you mean 'adduction_deg'"):
        SweepSpec(base=ROOT / "loadcases" / "sideways_fall.toml",
                  parameters={"loading.adductoin_deg": [5.0]}).expand()
    with pytest.raises(SweepError, match=r"'scenario': no scenario named 'magic'"):
        SweepSpec(base=ROOT / "loadcases" / "sideways_fall.toml", parameters={"scenario": ["magic"]}).expand()
    with pytest.raises(SweepError, match=r"'scenario\.percent'.*percent"):
        SweepSpec(base=ROOT / "loadcases" / "sideways_fall.toml", parameters={"scenario.percent": [-150.0]},
                  scenarios=[{"name": "u", "operator": [{"type": "uniform", "percent": 1.0}]}]).expand()


# ----------------------------------------------------------------------------- CLI
def test_cli_dry_run_and_run(tmp_path, capsys):
    from femur_fe.commands.cli import main

    toml = ROOT / "examples" / "sweeps" / "column_density_direction.toml"
    assert main(["sweep", str(toml), "--out", str(tmp_path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "16 tasks (grid)" in out
    assert main(["sweep", str(toml), "--out", str(tmp_path), "--scheduler", "serial", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "16 ok, 0 failed, 0 timeout" in out
    df = pd.read_parquet(tmp_path / "results.parquet")
    assert len(df) == 16 and (df["status"] == "ok").all()
    # stiffness falls with the tilt of the load and rises with density
    piv = df.pivot(index="density.scale", columns="loading.angle_deg", values="stiffness_N_per_mm")
    assert (np.diff(piv.values, axis=0) > 0).all() and (np.diff(piv.values, axis=1) < 0).all()
    assert main(["sweep", str(tmp_path / "nope.toml"), "--out", str(tmp_path)]) == 2


def test_a_task_finished_by_a_dead_worker_is_not_run_again(tmp_path):
    """A worker can die after writing a task's part and before the scheduler hears of it; Dask then
    runs the task again elsewhere. The second attempt finds the part of this run and returns it."""
    from femur_fe.studies.sweep import execute_task

    calls = []

    def task(inputs):
        calls.append(inputs.task_id)
        return {"value": 1.5}

    inputs = TaskInputs(task_id="abc123", index=0, params={"x": 1}, case={})
    record = {"run": 2, "attempt": 1, "attempt_id": "first", "sweep_seed": 0, "part_dir": str(tmp_path)}
    first = execute_task(task, inputs, record=record)
    assert first["written"] and calls == ["abc123"]
    again = execute_task(task, inputs, record={**record, "attempt_id": "second"})
    assert calls == ["abc123"] and again["written"]
    assert again["row"]["attempt_id"] == "first" and again["row"]["value"] == 1.5
    # a part of an earlier run, or of a failed attempt, is computed again
    execute_task(task, inputs, record={**record, "run": 3})
    assert calls == ["abc123", "abc123"]
