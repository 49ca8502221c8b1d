"""No silent wrong number, no write outside the output folder.

One test per input that femur_fe can know to be wrong and per check that every run passes, each asserting
the exit code of ``femur-fe`` and its message (or the named warning in summary.json), plus a
property-based fuzz test over load-case TOML values: a clear one-line error, or a finite,
positive result, never a traceback.
"""
from __future__ import annotations

import copy
import json
import logging
import math
import os
from pathlib import Path

import numpy as np
import pytest
import pyvista as pv
import SimpleITK as sitk
from conftest import require_shared
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import femur_fe as ff
from femur_fe.analysis.checks import check_bone_size, check_modulus_contrast, check_poisson
from femur_fe.analysis.prepare import prepare, run_nonlinear
from femur_fe.bone.checks import check_meshing_size
from femur_fe.bone.model import Model
from femur_fe.bone.specimen import Specimen
from femur_fe.case.presets import resolve_case_path
from femur_fe.commands.cli import main
from femur_fe.diagnostics import collecting, warn
from femur_fe.errors import CTError, MaterialError, MeshError, OutputError, ScenarioError, SurfaceError, SweepError
from femur_fe.fe.boxes import box_mesh
from femur_fe.fe.merge import merge_coincident_nodes
from femur_fe.io.ct import read_ct
from femur_fe.io.nifti_raw import nonfinite_voxels
from femur_fe.io.outdir import MARKER, output_folder, safe_name, write_or_fallback
from femur_fe.studies.run import case_for
from femur_fe.studies.sweep import resolve_task, run_sweep
from femur_fe.therapy.scenarios import LocalInjection, Scenario

BONE = ff.bone.bundled_bone("vertebra", "osteoporotic")


def cli(capsys, *args) -> tuple[int, str, str]:
    """Run ``femur-fe ARGS``; (exit code, stdout, stderr)."""
    rc = main([str(a) for a in args])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def one_error_line(err: str, *needles: str) -> str:
    """The single ``error:`` line of stderr; it names every needle and holds no traceback."""
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ": error: " in ln]
    assert len(lines) == 1, err
    for n in needles:
        assert n in lines[0], f"{n!r} not in {lines[0]!r}"
    return lines[0]


@pytest.fixture(scope="module")
def vertebra_mesh():
    return ff.read_mesh(BONE.mesh)


@pytest.fixture(scope="module")
def vertebra_ct():
    return read_ct(BONE.ct, unit="HU")


def _write_ct_like(path: Path, ct, array) -> Path:
    img = sitk.GetImageFromArray(np.ascontiguousarray(np.asarray(array, dtype=np.float32).transpose(2, 1, 0)))
    img.SetSpacing(tuple(map(float, ct.spacing)))
    img.SetOrigin(tuple(map(float, ct.origin)))
    img.SetDirection(tuple(map(float, ct.direction.ravel())))
    sitk.WriteImage(img, str(path))
    return path


def _cracked(mesh, partial: bool = True):
    """The mesh with the nodes shared across its mid-plane duplicated for the upper elements."""
    upper = mesh.cell_centroids()[:, 2] > np.median(mesh.points[:, 2])
    shared = np.intersect1d(np.unique(mesh.cells[~upper]), np.unique(mesh.cells[upper]))
    if partial:  # a crack over part of the plane: the two halves stay connected elsewhere
        shared = shared[mesh.points[shared, 1] < np.median(mesh.points[shared, 1])]
    new = np.arange(mesh.n_points)
    new[shared] = mesh.n_points + np.arange(len(shared))
    cells = mesh.cells.copy()
    cells[upper] = new[cells[upper]]
    return ff.Mesh(np.vstack([mesh.points, mesh.points[shared]]), cells, "tetra"), len(shared)


# ======================================================================== inputs known to be wrong
def test_row_mesh_in_centimetres_refused_naming_the_unit(tmp_path, capsys, vertebra_mesh):
    cm = ff.io.write_mesh(tmp_path / "cm.vtu", vertebra_mesh.scaled(0.1))
    rc, out, err = cli(capsys, "run", "vertebral_compression", "--mesh", cm, "--ct", BONE.ct, "--calibration",
                       BONE.calibration, "-o", tmp_path / "out")
    assert rc == 2
    one_error_line(err, "centimetres", "--units cm", "vertebra")
    assert not (tmp_path / "out").exists()
    # the fix the message names restores the bone's size exactly
    back = ff.read_mesh(cm, units="cm")
    assert np.allclose(back.points, vertebra_mesh.points, rtol=1e-6, atol=1e-6)


def test_row_crack_is_merged_with_a_named_warning(tmp_path, capsys, vertebra_mesh):
    cracked, n = _cracked(vertebra_mesh)
    assert n > 300
    merged, report = merge_coincident_nodes(cracked)
    # the merged mesh is the intact one, node for node: its stiffness is the intact stiffness
    assert report.n_pairs == n and report.n_removed == n
    np.testing.assert_array_equal(merged.cells, vertebra_mesh.cells)
    np.testing.assert_array_equal(merged.points, vertebra_mesh.points)
    path = ff.io.write_mesh(tmp_path / "cracked.vtu", cracked.with_cell_data(density=np.full(cracked.n_cells, 0.15)))
    rc, out, err = cli(capsys, "run", "vertebral_compression", "--mesh", path, "-o", tmp_path / "out")
    assert rc == 0, err
    assert "nodes_merged" in out
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    names = [w["name"] for w in summary["warnings"]]
    assert "nodes_merged" in names
    assert summary["n_nodes"] == vertebra_mesh.n_points


def test_unmerged_mesh_refused_by_prepare(vertebra_mesh):
    cracked, _ = _cracked(vertebra_mesh)
    case = ff.load_case(resolve_case_path("vertebral_compression"))
    model = Model.from_density(cracked, np.full(cracked.n_cells, 0.15), case.material.build())
    with pytest.raises(MeshError, match="coincident, unmerged nodes.*merge_coincident_nodes"):
        prepare(case, model)


def test_row_hu_ct_without_unit_or_calibration_refused(tmp_path, capsys):
    rc, out, err = cli(capsys, "run", "vertebral_compression", "--mesh", BONE.mesh, "--ct", BONE.ct,
                       "-o", tmp_path / "out")
    assert rc == 2
    one_error_line(err, "do not tell HU from mg/cm3", "--ct-unit", "--calibration")


@pytest.mark.parametrize("suffix", [".nii.gz", ".mha"])
def test_row_nan_voxels_inside_the_bone_refused_in_every_format(tmp_path, capsys, vertebra_ct, vertebra_mesh,
                                                                 suffix):
    arr = vertebra_ct.array.astype(np.float32)
    i, j, k = np.round(vertebra_ct.index_from_world(vertebra_mesh.points.mean(axis=0)[None])[0]).astype(int)
    arr[i - 5:i + 5, j - 5:j + 5, k - 3:k + 3] = np.nan
    ct = _write_ct_like(tmp_path / f"nan{suffix}", vertebra_ct, arr)
    rc, out, err = cli(capsys, "run", "vertebral_compression", "--mesh", BONE.mesh, "--ct", ct, "--calibration",
                       BONE.calibration, "-o", tmp_path / "out")
    assert rc == 2
    one_error_line(err, "NaN/inf voxels", "no data inside the bone")
    assert "ct_nan_voxels" not in out  # refused: no number printed


def test_nan_and_inf_voxels_counted_in_nifti(tmp_path, capsys, vertebra_ct):
    """ITK reads NaN/inf NIfTI voxels as 0: the raw data is checked."""
    arr = vertebra_ct.array.astype(np.float32)
    arr[0, 0, :3] = np.nan
    arr[1, 2, 3] = np.inf
    path = _write_ct_like(tmp_path / "ct.nii.gz", vertebra_ct, arr)
    assert sitk.GetArrayFromImage(sitk.ReadImage(str(path))).min() >= -16  # what ITK alone returns
    mask = nonfinite_voxels(path)
    assert mask.shape == arr.shape and mask.sum() == 4 and mask[1, 2, 3] and mask[0, 0, :3].all()
    with collecting() as found:
        ct = read_ct(path, unit="HU")
    assert ct.n_nan == 4
    assert [w.name for w in found] == ["ct_nan_voxels"]
    rc, out, err = cli(capsys, "info", path, "--unit", "HU")
    assert rc == 0 and "NaN voxels:  4" in out


def test_sparse_nan_voxels_are_a_named_warning_of_the_model(tmp_path, vertebra_ct, vertebra_mesh):
    arr = vertebra_ct.array.astype(np.float32)
    cen = vertebra_mesh.cell_centroids()
    for c in cen[:: len(cen) // 20]:  # one voxel under 20 element centroids: their neighbours fill them
        arr[tuple(np.floor(vertebra_ct.index_from_world(c[None])[0]).astype(int))] = np.nan
    ct = _write_ct_like(tmp_path / "nan1.nii.gz", vertebra_ct, arr)
    case = ff.load_case(resolve_case_path("vertebral_compression"))
    spec = Specimen(mesh_path=Path(BONE.mesh), ct=ct, calibration=Path(BONE.calibration))
    case = case_for(case, spec)
    model = spec.model(case.material, mesh=vertebra_mesh)
    names = [w.name for w in model.warnings]
    assert "ct_nan_voxels" in names and "ct_mapping_incomplete" in names
    assert np.isfinite(model.young).all()


def test_row_near_incompressible_tet4_refused(tmp_path, capsys):
    rc, out, err = cli(capsys, "run", "vertebral_compression", "--bundled", "vertebra", "--set",
                       "material.poisson=0.49999", "-o", tmp_path / "out")
    assert rc == 2
    one_error_line(err, "poisson = 0.49999", "tet4", "0.45", "--order 2")


def test_row_caps_poisson_differing_from_the_bone_refused(tmp_path, capsys):
    rc, out, err = cli(capsys, "run", "vertebral_compression", "--bundled", "vertebra", "--set", "caps.poisson=0.4",
                       "-o", tmp_path / "out")
    assert rc == 2
    one_error_line(err, "[caps] poisson = 0.4", "[material] poisson = 0.3", "caps.poisson=0.3")


def test_poisson_check_covers_hex8_and_spares_tet10():
    case = ff.load_case(resolve_case_path("vertebral_compression"))
    with pytest.raises(MaterialError, match="hex8"):
        check_poisson(case, box_mesh("hexahedron", 2, 2, 2), 0.49)
    check_poisson(case, box_mesh("tetra10", 1, 1, 1), 0.3)  # same nu as the caps: accepted
    with pytest.raises(MaterialError, match="tet4"):
        check_poisson(case.with_values({"caps.poisson": 0.46, "material.poisson": 0.46}), box_mesh("tetra", 1, 1, 1),
                      0.46)


def test_row_endpoint_percent_given_as_a_fraction_refused(tmp_path, capsys):
    rc, out, err = cli(capsys, "run", "vertebral_compression", "--bundled", "vertebra", "--nonlinear", "--set",
                       "nonlinear.endpoint_percent=0.04", "-o", tmp_path / "out")
    assert rc == 2
    one_error_line(err, "endpoint_percent = 0.04", "fraction", "endpoint_percent = 4")


#: a column pressed by a rigid plate: explicit node-set regions, no anatomy (fast)
COLUMN_CASE = {
    "schema_version": 1, "name": "column", "bone": "vertebra",
    "material": {"law": "power", "params": {"a_mpa": 3000.0, "b": 1.0, "density_type": "apparent"}},
    "loading": {"mode": "displacement", "displacement_mm": 0.01, "direction": "vector", "vector": [0.0, 0.0, -1.0]},
    "caps": {"kind": "rigid", "regions": []},
    "regions": {"top": {"node_set": "top"}, "bottom": {"node_set": "bottom"}},
    "boundary": [{"region": "top", "apply": "load"}, {"region": "bottom", "fix": "all"}],
    "failure": {"criterion": "max_principal_strain"},
    "solver": {"method": "direct"},
}


def _column_case(**values):
    case = ff.load_case(copy.deepcopy(COLUMN_CASE))
    return case.with_values(values) if values else case


def _column(n: int = 3, layers: int = 8, h: float = 1.5):
    mesh = box_mesh("tetra", n, n, layers, h)
    z = mesh.points[:, 2]
    return mesh.with_node_set("bottom", np.flatnonzero(z < 1e-9)).with_node_set(
        "top", np.flatnonzero(z > layers * h - 1e-9))


def test_nonlinear_endpoint_before_first_yield_reports_no_strength():
    """An endpoint the curve reaches before any element yields gives an elastic load, not a
    strength: strength_nonlinear_N is null and the run says why by name."""
    case = _column_case(**{"nonlinear.endpoint_percent": 0.5})
    mesh = _column()
    model = Model.from_density(mesh, np.full(mesh.n_cells, 0.3), case.material.build())
    an = prepare(case, model)
    res = an.solve()
    run_nonlinear(an, res, n_steps=2)
    assert res.strength_summary["strength_nonlinear_N"] is None
    names = [w["name"] for w in res.summary()["warnings"]]
    assert "nonlinear_endpoint_elastic" in names


def test_row_density_all_zero_refused(tmp_path, capsys):
    rc, out, err = cli(capsys, "run", "vertebral_compression", "--mesh", BONE.mesh, "--density", "0",
                       "-o", tmp_path / "out")
    assert rc == 2
    one_error_line(err, "100.0 % of the volume", "e_min_mpa", "floor")


@pytest.mark.parametrize("zero_fraction, refused", [(0.1, False), (0.6, True)])
def test_floored_moduli_warned_with_the_fraction_or_refused(zero_fraction, refused):
    mesh = _column(4, 10)
    rho = np.full(mesh.n_cells, 0.3)
    rho[: int(round(zero_fraction * mesh.n_cells))] = 0.0  # equal volumes: the element fraction is the volume one
    law = _column_case().material.build()
    if refused:
        with pytest.raises(MaterialError, match=r"60\.0 % of the volume.*floor"):
            Model.from_density(mesh, rho, law)
        return
    model = Model.from_density(mesh, rho, law)
    (w,) = [w for w in model.warnings if w.name == "moduli_floored"]
    assert "10.0 % of the volume" in w.message
    # a new density recomputes it
    assert not [w for w in model.with_density(np.full(mesh.n_cells, 0.3)).warnings if w.name == "moduli_floored"]


def test_row_negative_scenario_gain_refused_naming_the_scenario(tmp_path, capsys):
    spec = tmp_path / "lesion.toml"
    spec.write_text('schema_version = 1\ncase = "vertebral_compression"\n[bone]\nbundled = "vertebra"\n'
                    '[comparison]\nreference = "none"\n[[scenario]]\nname = "lesion"\ndensity_type = "qct"\n'
                    '[[scenario.operator]]\ntype = "injection"\nlandmark = "vertebral_body_centre"\nradius_mm = 15.0\n'
                    'shape = "gaussian"\npeak_gain_g_cm3 = -1.5\n')
    rc, out, err = cli(capsys, "compare", spec, "-o", tmp_path / "out", "-q")
    assert rc == 2
    one_error_line(err, "scenario 'lesion'", "below 0", "floor")
    assert not (tmp_path / "out").exists()  # the folder appears complete or not at all


def test_scenario_clamping_at_zero_is_a_named_warning_with_the_fraction():
    mesh = _column(4, 10)
    rho = np.full(mesh.n_cells, 0.2)
    sc = Scenario("hole", (LocalInjection(center_mm=(3.0, 3.0, 7.5), radius_mm=3.0, peak_gain_g_cm3=-0.5),),
                  density_type="apparent")
    with collecting() as found:
        oc = sc.apply(rho, mesh)
    (w,) = [w for w in found if w.name == "density_clamped_at_zero"]
    frac = oc.per_operator[0]["clamped_at_zero_volume_fraction"]
    assert 0 < frac < 1 and f"{100 * frac:.1f} % of the volume" in w.message
    assert oc.density.min() == 0.0


@pytest.mark.parametrize("name", ["../../escaped", "/tmp/abs_escaped", "baseline", "..", "a/b"])
def test_row_scenario_names_that_would_leave_the_folder_refused(tmp_path, capsys, name):
    spec = tmp_path / "cmp.toml"
    spec.write_text('schema_version = 1\ncase = "vertebral_compression"\n[bone]\nbundled = "vertebra"\n'
                    f'[[scenario]]\nname = {json.dumps(name)}\ndensity_type = "qct"\n'
                    '[[scenario.operator]]\ntype = "uniform"\npercent = 5.0\n')
    rc, out, err = cli(capsys, "compare", spec, "-o", tmp_path / "a" / "b", "-q")
    assert rc == 2
    one_error_line(err, repr(name), "scenario name")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cmp.toml"]


def test_safe_name():
    assert safe_name("regenerative_12mo.v2") == "regenerative_12mo.v2"
    for bad in ("", ".", "..", "a..b", "-x", "a b", "x/y", "C:\\x", "é", "a" * 101):
        with pytest.raises(OutputError):
            safe_name(bad)
    with pytest.raises(OutputError, match="writes itself"):
        safe_name("Comparison.json", reserved=("comparison.json",))


def _sweep_file(tmp_path: Path, task: str, allow: bool = False) -> Path:
    p = tmp_path / "sweep.toml"
    p.write_text(f'name = "s"\ntask = "{task}"\n' + ("allow_import = true\n" if allow else "")
                 + '[parameters]\n"density.scale" = [1.0]\n[base.geometry]\nsize_mm = [4.0, 4.0, 8.0]\n'
                 'divisions = [2, 2, 4]\n[base.material]\nlaw = "power"\na_mpa = 1000.0\nb = 1.0\n'
                 'density_type = "ash"\n[base.density]\nbottom_g_cm3 = 0.5\ntop_g_cm3 = 0.5\n'
                 'scale = 1.0\n[base.loading]\ndisplacement_mm = 0.01\n')
    return p


def test_row_sweep_import_task_needs_the_opt_in(tmp_path, capsys):
    spec = _sweep_file(tmp_path, "sys:exit")
    rc, out, err = cli(capsys, "sweep", spec, "-o", tmp_path / "out", "--scheduler", "serial")
    assert rc == 2
    one_error_line(err, "'sys:exit' is not a registered sweep task", "--allow-import", "allow_import = true")
    assert not (tmp_path / "out").exists()
    with pytest.raises(SweepError, match="allow_import = true"):
        resolve_task("sys:exit")
    # with both opt-ins, a sys.exit inside the task fails that task and the sweep goes on
    table = run_sweep(_sweep_file(tmp_path, "sys:exit", allow=True), tmp_path / "s2", scheduler="serial",
                      progress=False, retries=0)
    assert list(table["status"]) == ["failed"] and "called sys.exit" in table["error"][0]
    # registered names need no opt-in
    assert resolve_task("column") is resolve_task("femur_fe.studies.sweep:column_task")
    rc, out, err = cli(capsys, "sweep", _sweep_file(tmp_path, "column"), "-o", tmp_path / "dry", "--dry-run")
    assert rc == 0 and "1 tasks" in out


def test_sweep_folder_holding_something_else_refused(tmp_path, capsys):
    other = tmp_path / "run_out"
    other.mkdir()
    (other / "summary.json").write_text("{}")
    rc, out, err = cli(capsys, "sweep", _sweep_file(tmp_path, "column"), "-o", other, "--scheduler", "serial")
    assert rc == 2
    one_error_line(err, "no sweep.json", "not a sweep's results folder")
    assert sorted(p.name for p in other.iterdir()) == ["summary.json"]


@pytest.mark.parametrize("where", ["file", "parent_file", "unwritable"])
def test_row_output_folder_unusable_refused_before_any_work(tmp_path, capsys, monkeypatch, where):
    (tmp_path / "afile").write_text("x")
    out = {"file": tmp_path / "afile", "parent_file": tmp_path / "afile" / "sub", "unwritable": tmp_path / "ro" / "o"}
    if where == "unwritable":
        (tmp_path / "ro").mkdir()
        real = os.access
        monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == tmp_path / "ro" else real(p, mode))
    rc, stdout, err = cli(capsys, "run", "vertebral_compression", "--bundled", "vertebra", "-o", out[where])
    assert rc == 2
    one_error_line(err, {"file": "a file is in the way", "parent_file": "is a file, not a folder",
                         "unwritable": "not writable"}[where])
    assert "bone:" not in stdout  # nothing was computed


@pytest.mark.parametrize("command", ["run", "check", "compare", "sweep"])
def test_row_binary_toml_is_one_clear_line(tmp_path, capsys, command):
    bad = tmp_path / "bad.toml"
    bad.write_bytes(b'name = "x"\n\xff\xfe\x00\x81 binary\n')
    extra = {"run": ["--bundled", "vertebra", "-o", tmp_path / "o"], "sweep": ["-o", tmp_path / "o"]}
    rc, out, err = cli(capsys, command, bad, *extra.get(command, []))
    assert rc == 2
    one_error_line(err, "not a text file in UTF-8", "0xff")


@pytest.mark.filterwarnings("ignore:The VTK reader:UserWarning")  # pyvista's own report of the broken STL
def test_row_broken_files_raise_femur_fe_errors(tmp_path, capsys):
    good = ff.io.write_mesh(tmp_path / "good.vtu", box_mesh("tetra", 2, 2, 2))
    broken = tmp_path / "broken.vtu"
    broken.write_bytes(good.read_bytes()[: good.stat().st_size // 3])
    with pytest.raises(MeshError, match="could not be read as a mesh"):  # meshio calls sys.exit here
        ff.read_mesh(broken)
    stl = tmp_path / "broken.stl"
    stl.write_bytes(b"solid x\n facet normal 0 0 \xff garbage")
    with pytest.raises(SurfaceError):
        ff.read_surface(stl)
    mask = tmp_path / "mask.nii.gz"
    mask.write_bytes(b"\x1f\x8b not a gzip stream")
    with pytest.raises(CTError):
        ff.io.read_labels(mask)
    cal = tmp_path / "cal.json"
    cal.write_bytes(b"\xff\xfe{")
    rc, out, err = cli(capsys, "run", "vertebral_compression", "--mesh", BONE.mesh, "--ct", BONE.ct,
                       "--calibration", cal, "-o", tmp_path / "out")
    assert rc == 2
    one_error_line(err, "not a calibration JSON")
    rc, out, err = cli(capsys, "run", "vertebral_compression", "--mesh", broken, "-o", tmp_path / "out")
    assert rc == 2
    one_error_line(err, "could not be read as a mesh")


def test_row_existing_output_folder_refused_without_overwrite(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "plus10").mkdir()
    (out / "comparison.json").write_text("{}")
    rc, stdout, err = cli(capsys, "run", "vertebral_compression", "--bundled", "vertebra", "-o", out)
    assert rc == 2
    one_error_line(err, "exists", "--overwrite")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    rc, stdout, err = cli(capsys, "run", "vertebral_compression", "--bundled", "vertebra", "-o", tmp_path / "mine",
                          "--overwrite")
    assert rc == 2
    one_error_line(err, "femur_fe did not write")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "mine"


def test_output_folder_is_written_whole(tmp_path):
    out = tmp_path / "out"
    with output_folder(out) as tmp:
        assert tmp.name.startswith("out.partial-") and not out.exists()
        (tmp / "a.txt").write_text("1")
    assert sorted(p.name for p in out.iterdir()) == [MARKER, "a.txt"]
    # replaced whole: a stale file of the earlier run does not survive
    (out / "stale_scenario").mkdir()
    with output_folder(out, overwrite=True) as tmp:
        (tmp / "b.txt").write_text("2")
    assert sorted(p.name for p in out.iterdir()) == [MARKER, "b.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
    # an interrupted run leaves a recognisably incomplete folder and says where it is
    with pytest.raises(ScenarioError, match=r"written so far are in .*new\.partial-\d+ \(incomplete\)"):
        with output_folder(tmp_path / "new") as tmp:
            (tmp / "baseline").mkdir()
            raise ScenarioError("scenario 'x' refused")
    assert not (tmp_path / "new").exists()
    assert len(list(tmp_path.glob("new.partial-*"))) == 1
    # nothing written: nothing left behind
    with pytest.raises(ScenarioError):
        with output_folder(tmp_path / "empty"):
            raise ScenarioError("refused before writing")
    assert not list(tmp_path.glob("empty*"))


def test_failed_final_write_says_where_the_results_are(tmp_path):
    def write(folder: Path):
        if folder.name == "full":
            raise OSError(28, "No space left on device")
        (folder / "summary.json").write_text("{}")

    with pytest.raises(OutputError, match="written to .*femur_fe_results_") as exc:
        write_or_fallback(write, tmp_path / "full")
    spare = Path(str(exc.value).rsplit("written to ", 1)[1].split(" instead")[0])
    assert (spare / "summary.json").is_file()


def test_row_ten_element_mesh_and_absurd_caps_named(tmp_path, capsys, vertebra_mesh):
    used = np.unique(vertebra_mesh.cells[:10])
    ten = ff.Mesh(vertebra_mesh.points[used], np.searchsorted(used, vertebra_mesh.cells[:10]), "tetra",
                  cell_data={"density": np.full(10, 0.2)})
    path = ff.io.write_mesh(tmp_path / "ten.vtu", ten)
    rc, out, err = cli(capsys, "run", "vertebral_compression", "--mesh", path, "-o", tmp_path / "o1")
    assert rc == 2
    one_error_line(err, "10 elements", "too few")
    rc, out, err = cli(capsys, "run", "vertebral_compression", "--bundled", "vertebra", "--set",
                       "caps.young_mpa=1e300", "-o", tmp_path / "o2")
    assert rc == 2
    one_error_line(err, "stiffer than any material", "kind = 'rigid'")
    with pytest.raises(MaterialError, match="beyond what a double-precision solve"):
        check_modulus_contrast(np.array([1e-9, 2e4]), 2500.0)


# ======================================================================== checks of every run
@pytest.mark.parametrize("bone, factor, unit", [("femur", 0.1, "centimetres"), ("femur", 10.0, "tenths"),
                                                ("vertebra", 0.001, "metres"), ("vertebra", 1000.0, "micrometres")])
def test_bone_size_against_its_kind(bone, factor, unit):
    b = ff.bone.bundled_bone(bone, "osteoporotic")
    mesh = ff.read_mesh(b.mesh, units="mm")
    check_bone_size(mesh, bone)
    with pytest.raises(MeshError, match=unit):
        check_bone_size(mesh.scaled(factor), bone)


def test_surface_checked_before_it_is_meshed(tmp_path, capsys):
    """A surface read in the wrong unit is refused before TetGen (a vertebra read as metres is a
    90 m block, whose meshing would not fit in memory), naming the unit it was read in."""
    surf = ff.io.Surface.from_pyvista(pv.Sphere(radius=20.0).triangulate(), source="ball")
    path = ff.io.write_surface(tmp_path / "ball.stl", surf)
    rc, out, err = cli(capsys, "run", "vertebral_compression", "--mesh", path, "--units", "m", "--density", "0.2",
                       "-o", tmp_path / "o")
    assert rc == 2
    one_error_line(err, "4e+04 mm", "micrometres", "read with units = 'm'")
    with pytest.raises(MeshError, match="million tetrahedra"):
        check_meshing_size(400.0, 1.5e6, 0.2, "femur.stl")


def test_api_run_checks_the_output_folder_before_any_work(tmp_path):
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "summary.json").write_text("{}")
    with pytest.raises(OutputError, match="--overwrite"):
        ff.run("vertebral_compression", {"bundled": "vertebra", "state": "osteoporotic"}, out=tmp_path / "old")


def test_mesh_outside_its_ct_refused(vertebra_mesh, vertebra_ct):
    case = case_for(ff.load_case(resolve_case_path("vertebral_compression")),
                                   Specimen(bundled="vertebra"))
    shifted = vertebra_mesh.transformed(np.eye(3), translation=(0.0, 0.0, 300.0))
    with pytest.raises(CTError, match="outside the CT"):
        Model.from_ct(shifted, vertebra_ct, case.material)


def test_metre_surfaces_of_the_shared_data_convert_with_a_named_warning():
    path = require_shared("lumbar_vhm_remus", "L3_body.obj")
    with collecting() as found:
        surf = ff.read_surface(path)
    assert [w.name for w in found] == ["mesh_units_converted"]
    assert 30 < float(surf.extent.max()) < 60  # a lumbar body in mm


def test_plain_log_warnings_are_collected_once():
    log = logging.getLogger("femur_fe.some_module")
    with collecting() as outer:
        with collecting() as inner:
            log.warning("plain %s", "message")
            warn("named_one", "a named message")
    assert [w.name for w in inner] == ["some_module", "named_one"]
    assert outer == inner


# ======================================================================== fuzz
_FUZZ_KEYS = {
    "loading.displacement_mm": st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-5, 50)),
    "loading.vector": st.lists(st.floats(-2, 2), min_size=2, max_size=4),
    "material.poisson": st.floats(-1.5, 0.7),
    "material.e_min_mpa": st.one_of(st.floats(-1, 1e4), st.just(float("nan"))),
    "material.params.a_mpa": st.one_of(st.floats(-1e3, 1e30), st.text(max_size=3)),
    "material.params.b": st.floats(-3, 5),
    "caps.young_mpa": st.floats(-1, 1e307),
    "failure.params.tension": st.floats(-0.1, 2.0),
    "solver.rtol": st.floats(0, 1),
}


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return "nan" if math.isnan(v) else ("inf" if v == math.inf else "-inf" if v == -math.inf else repr(v))
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, str):
        return json.dumps(v)
    return str(v)


@pytest.fixture(scope="module")
def fuzz_column(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fuzz")
    mesh = _column(3, 6, 2.0)
    ff.io.write_mesh(folder / "column.vtu", mesh.with_cell_data(density=np.full(mesh.n_cells, 0.3)))
    return folder


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(values=st.dictionaries(st.sampled_from(sorted(_FUZZ_KEYS)), st.none(), min_size=1, max_size=3).flatmap(
    lambda d: st.fixed_dictionaries({k: _FUZZ_KEYS[k] for k in d})))
def test_fuzz_load_case_values_give_a_clear_error_or_a_finite_result(fuzz_column, capsys, values):
    base = copy.deepcopy(COLUMN_CASE)
    for key, v in values.items():
        d = base
        *head, last = key.split(".")
        for k in head:
            d = d.setdefault(k, {})
        d[last] = v
    lines = []

    def emit(prefix, table):
        scalars = {k: v for k, v in table.items() if not isinstance(v, dict) and k != "boundary"}
        if prefix:
            lines.append(f"[{prefix}]")
        lines.extend(f"{k} = {_toml_value(v)}" for k, v in scalars.items())
        for k, v in table.items():
            if isinstance(v, dict):
                emit(f"{prefix}.{k}" if prefix else k, v)

    emit("", {k: v for k, v in base.items() if k != "boundary"})
    for b in base["boundary"]:
        lines.append("[[boundary]]")
        lines.extend(f"{k} = {_toml_value(v)}" for k, v in b.items())
    case = fuzz_column / "case.toml"
    case.write_text("\n".join(lines) + "\n")
    out = fuzz_column / "out"
    rc, stdout, err = cli(capsys, "run", case, "--mesh", fuzz_column / "column.vtu", "-o", out, "--overwrite")
    assert rc in (0, 2), err  # 3 would be an internal error
    assert "Traceback" not in err
    event(f"exit {rc}")
    if rc == 2:
        one_error_line(err)
        return
    s = json.loads((out / "summary.json").read_text())
    for key in ("stiffness_N_per_mm", "load_force_N", "strength_linear_N"):
        assert math.isfinite(s[key]) and s[key] > 0, (key, s[key], values)
    assert 0 < s["material"]["young_min_mpa"] <= s["material"]["young_max_mpa"] < 1e7
