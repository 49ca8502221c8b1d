"""The Specimen ([bone] table): one description of a bone for run, compare and sweep, with the same
keys and the same errors; CT + mask + internal calibration and surface + density bones end to end on
real data."""
from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import require_shared

import femur_fe as ff
from femur_fe.bone.specimen import DensitySpec, Specimen, surface_depth_mm
from femur_fe.commands.cli import main
from femur_fe.errors import FemurFeError, LoadCaseError, MaterialError


def _clinical(level: str = "L3") -> dict:
    """A lumbar vertebra of the clinical CT as 3 mm voxels (fast; the tet path is run by the CLI test)."""
    d = require_shared("ct_totalseg_example")
    return {"ct": str(d / "example_ct.nii.gz"), "ct_unit": "HU", "calibration": "internal",
            "mask": str(d / "example_seg" / f"vertebrae_{level}.nii.gz"), "mesh_type": "hex",
            "element_size_mm": 3.0}


def _surface_bone() -> dict:
    return {"mesh": str(require_shared("lumbar_mean_clouthier", "mean_L3.stl")), "element_size_mm": 3.0,
            "density": {"density_type": "qct", "cortical_g_cm3": 0.35, "trabecular_g_cm3": 0.15,
                        "cortical_thickness_mm": 1.5}}


@pytest.mark.parametrize("table, words", [
    ({"bundled": "femur", "mesh": "x.vtu"}, ["bundled = 'femur' is a whole bone", "remove mesh"]),
    ({}, ["say where the bone comes from", "--bundled"]),
    ({"mask": "m.nii.gz"}, ["a mask needs the CT", "--ct"]),
    ({"mesh": "a.vtu", "mask": "m.nii.gz", "ct": "c.nii.gz"}, ["give mesh or mask, not both"]),
    ({"bundled": "tibia"}, ["bundled must be one of"]),
    ({"bundled": "femur", "stat": "healthy"}, ["unknown key 'stat'", "did you mean 'state'"]),
    ({"mesh": "a.stl", "calibration": "internal"}, ["calibration applies to a CT"]),
    ({"ct": "c.nii.gz", "mask": "m.nii.gz", "calibration": "phantom.txt"}, ["'internal' or a calibration JSON"]),
    ({"ct": "c.nii.gz", "mask": "m.nii.gz", "calibration": {"slope": 1.0}}, ["calibration:", "intercept"]),
    ({"mesh": "a.stl", "density": {"density_type": "qct", "uniform_g_cm3": 150.0}}, ["mg/cm^3? divide by 1000"]),
    ({"mesh": "a.stl", "density": {"density_type": "qct", "uniform_g_cm3": 0.2, "cortical_g_cm3": 1.0}},
     ["not both"]),
    ({"mesh": "a.stl", "density": {"density_type": "qct", "cortical_g_cm3": 0.1, "trabecular_g_cm3": 0.3,
                                   "cortical_thickness_mm": 1.0}}, ["below trabecular_g_cm3"]),
    ({"mesh": "a.stl", "element_size_mm": 0.01}, ["element_size_mm", "out of range"]),
])
def test_bad_bone_tables_are_named(table, words):
    with pytest.raises(FemurFeError) as info:
        Specimen.from_dict(table, source="bone.toml")
    msg = str(info.value)
    assert "[bone" in msg
    for w in words:
        assert w in msg, (w, msg)


def test_bone_table_round_trip_and_relative_paths(tmp_path):
    (tmp_path / "scan").mkdir()
    sp = Specimen.from_dict({"ct": "scan/ct.nii.gz", "mask": "scan/seg.nii.gz", "labels": [2, 3],
                             "calibration": "internal", "mesh_type": "hex"}, base=tmp_path)
    assert sp.ct == tmp_path / "scan" / "ct.nii.gz" and sp.labels == (2, 3)
    again = Specimen.from_dict(sp.to_dict())
    assert again.to_dict() == sp.to_dict()
    with pytest.raises(FileNotFoundError, match="--ct"):
        sp.files()
    bundled = Specimen.from_dict({"bundled": "vertebra", "state": "healthy"})
    assert bundled.label == "bundled vertebra (healthy)"
    vals = bundled.calibration_values("mg/cm3")
    assert vals["material.calibration.ct_unit"] == "HU" and vals["material.calibration.method"] == "linear"
    assert Specimen.from_dict({"bundled": "femur"}).to_dict() == {"bundled": "femur", "state": "osteoporotic",
                                                                  "units": "auto"}


def test_density_spec_shell_and_core():
    """A 20 mm cube of 2 mm hexes with a 3 mm shell: the outer layer of elements (centroid 1 mm deep)
    is cortical, the rest (centroids 3 mm or more deep) trabecular."""
    mesh, _ = ff.fe.boxes.structured_mesh((10, 10, 10), mapping=lambda p: 20.0 * p, cell_type="hexahedron")
    depth = surface_depth_mm(mesh)
    assert depth.min() == pytest.approx(1.0) and depth.max() == pytest.approx(9.0)
    spec = DensitySpec("qct", cortical_g_cm3=0.8, trabecular_g_cm3=0.2, cortical_thickness_mm=2.0)
    rho = spec.values(mesh)
    n_shell = 10 ** 3 - 8 ** 3
    assert np.count_nonzero(rho == 0.8) == n_shell and np.count_nonzero(rho == 0.2) == 8 ** 3


def test_density_type_must_match_the_law():
    sp = Specimen.from_dict({"mesh": "x.stl", "density": {"density_type": "ash", "uniform_g_cm3": 0.3}})
    mesh, _ = ff.fe.boxes.structured_mesh((2, 2, 2), mapping=lambda p: 10.0 * p)
    case = ff.load_case("loadcases/vertebral_compression.toml")
    with pytest.raises(MaterialError, match="takes qct density"):
        sp.model(case.material, mesh=mesh)


def test_run_ct_mask_internal_calibration_clinical(tmp_path, capsys):
    """femur-fe run on the clinical CT (HU, 3 mm, no phantom) with a TotalSegmentator mask and the
    internal calibration: the fit, the tissues and the bone are recorded in summary.json."""
    b = _clinical("L3")
    out = tmp_path / "run"
    rc = main(["run", "vertebral_compression", "--ct", b["ct"], "--ct-unit", "HU", "--calibration", "internal",
               "--mask", b["mask"], "--size", "2", "-o", str(out)])
    printed = capsys.readouterr().out
    assert rc == 0, printed
    s = json.loads((out / "summary.json").read_text())
    cal = s["material"]["calibration"]
    assert cal["method"] == "internal" and {"air", "adipose", "muscle"} <= set(cal["tissues_used"])
    assert cal["r_squared"] > 0.99 and 60 <= cal["effective_energy_kev"] <= 140
    assert s["case"]["material"]["calibration"]["method"] == "internal"
    assert s["specimen"]["calibration"] == "internal"
    assert s["specimen"]["mask"].endswith("vertebrae_L3.nii.gz")
    assert s["stiffness_N_per_mm"] > 0 and s["strength_linear_N"] > 0
    assert "internal:" in printed and "keV" in printed
    # every stage printed one line with the elapsed time
    for stage in ("bone:", "meshed", "material:", "regions:", "solved:"):
        assert stage in printed


def _write_comparison(path, bone: dict, case: str = "vertebral_compression") -> None:
    lines = ["schema_version = 1", f'case = "{case}"']
    if bone.get("mesh_type") == "hex":  # PMMA caps are extruded from tetrahedral surfaces
        lines.append('case_values = {"caps.kind" = "rigid"}')
    lines.append("[bone]")
    for k, v in bone.items():
        if isinstance(v, dict):
            continue
        lines.append(f"{k} = {json.dumps(v)}")
    for k, v in bone.items():
        if isinstance(v, dict):
            lines.append(f"[bone.{k}]")
            lines += [f"{kk} = {json.dumps(vv)}" for kk, vv in v.items()]
    lines += ["[comparison]", 'reference = "plus5"',
              "[[scenario]]", 'name = "plus5"', 'density_type = "qct"',
              "[[scenario.operator]]", 'type = "uniform"', "percent = 5.0"]
    path.write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("kind", ["ct_mask_internal", "surface_density"])
def test_compare_accepts_every_kind_of_bone(tmp_path, kind):
    bone = _clinical("L2") if kind == "ct_mask_internal" else _surface_bone()
    spec = tmp_path / "cmp.toml"
    _write_comparison(spec, bone)
    assert main(["compare", str(spec), "-q", "-o", str(tmp_path / "out")]) == 0
    rows = {r["scenario"]: r for r in json.loads((tmp_path / "out" / "comparison.json").read_text())["rows"]}
    assert rows["plus5"]["strength_N"] > rows["baseline"]["strength_N"]
    assert rows["plus5"]["added_mass_g"] > 0
    base = json.loads((tmp_path / "out" / "baseline" / "summary.json").read_text())
    if kind == "ct_mask_internal":
        assert base["material"]["calibration"]["method"] == "internal"
    else:
        assert base["specimen"]["density"]["cortical_thickness_mm"] == 1.5


@pytest.mark.parametrize("kind", ["ct_mask_internal", "surface_density"])
def test_sweep_accepts_every_kind_of_bone(tmp_path, kind):
    """A [bone] table in a sweep file, and a bone.<key> parameter changing it per task."""
    bone = _clinical("L2") if kind == "ct_mask_internal" else _surface_bone()
    base = ff.case.loadcases_dir() / "vertebral_compression.toml"
    swept = ({"bone.calibration": ["internal", {"slope": 0.8, "intercept": 8.0, "unit": "mg/cm3",
                                                "mineral": "k2hpo4"}], "caps.kind": ["rigid"]}
             if kind == "ct_mask_internal"
             else {"bone.density.uniform_g_cm3": None})
    if kind == "surface_density":
        bone = {k: v for k, v in bone.items() if k != "density"}
        swept = {"bone.density": [{"density_type": "qct", "uniform_g_cm3": 0.15},
                                  {"density_type": "qct", "uniform_g_cm3": 0.30}],
                 "caps.kind": ["rigid"]}  # no PMMA layer: a uniform bone's stiffness is proportional to E
    spec = ff.SweepSpec(base=base, bone=bone, parameters=swept, method="grid")
    df = ff.sweep(spec, tmp_path, scheduler="serial")
    assert list(df["status"]) == ["ok", "ok"], df["error"].tolist()
    k = df["stiffness_N_per_mm"].to_numpy()
    assert np.all(k > 0)
    if kind == "surface_density":  # Kopperdahl 2002 is linear in density: E(0.30) / E(0.15) known exactly
        law = ff.bone.material_law("kopperdahl2002")
        ratio = law.young(np.array([0.30]))[0] / law.young(np.array([0.15]))[0]
        assert k[1] / k[0] == pytest.approx(ratio, rel=1e-6)


def test_bone_errors_are_the_same_everywhere(tmp_path, capsys):
    """The same bad [bone] key is refused with the same words by run, compare and sweep."""
    bad = {"bundled": "vertebra", "stat": "healthy"}
    with pytest.raises(LoadCaseError, match="unknown key 'stat'"):
        ff.run("vertebral_compression", bad)
    spec = tmp_path / "cmp.toml"
    _write_comparison(spec, bad)
    assert main(["compare", str(spec), "-q", "-o", str(tmp_path / "o")]) == 2
    assert "unknown key 'stat'" in capsys.readouterr().err
    sweep = ff.SweepSpec(base=ff.case.loadcases_dir() / "vertebral_compression.toml", bone=bad)
    with pytest.raises(FemurFeError, match="unknown key 'stat'"):
        sweep.expand()
