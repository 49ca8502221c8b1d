"""Scenario operators on the density field, TOML parsing, bounds and mass accounting."""
from __future__ import annotations

import math

import numpy as np
import pytest

from femur_fe.case.scenarios import load_scenarios, scenarios_from_dict
from femur_fe.errors import ScenarioError
from femur_fe.fe.boxes import hex_grid
from femur_fe.therapy.cellmodels import CellTherapy, bone_mass_ratio
from femur_fe.therapy.scenarios import (
    DENSITY_UPPER_BOUND,
    AnnualChange,
    CellModelChange,
    CompartmentChange,
    CorticalThickening,
    DefectFill,
    LocalInjection,
    Scenario,
    UniformChange,
    available_landmarks,
    match_added_mass,
    maturation_fraction,
    resolve_landmark,
)


@pytest.fixture
def cube():
    """10 x 10 x 10 unit hex cells (1 mm^3 each), graded density 0.2..0.8 g/cm^3 along x."""
    mesh = hex_grid((10, 10, 10), (10.0, 10.0, 10.0))
    rho = 0.2 + 0.06 * np.floor(mesh.cell_centroids()[:, 0])
    return mesh, rho


def test_uniform_change_and_added_mass(cube):
    mesh, rho = cube
    out = Scenario("u", (UniformChange(5.0),)).apply(rho, mesh)
    np.testing.assert_allclose(out.density, 1.05 * rho, rtol=1e-15)
    # mass = sum drho V / 1000 with V = 1 mm^3: 0.05 * sum(rho) / 1000 g
    assert out.added_mass_g == pytest.approx(0.05 * rho.sum() / 1000.0, rel=1e-12)
    assert out.mass_after_g - out.mass_before_g == pytest.approx(out.added_mass_g, rel=1e-12)
    assert out.vbmd_after_g_cm3 == pytest.approx(1.05 * rho.mean(), rel=1e-12)


def test_compartment_by_threshold_and_cell_set(cube):
    mesh, rho = cube
    op = CompartmentChange("trabecular", gain_percent=10.0, cortical_threshold_g_cm3=0.5)
    new = op.apply(rho, mesh)
    trab = rho < 0.5
    np.testing.assert_allclose(new[trab], 1.1 * rho[trab], rtol=1e-15)
    np.testing.assert_array_equal(new[~trab], rho[~trab])
    m2 = mesh.with_cell_set("cortex", np.arange(100))
    new = CompartmentChange("cortical", gain_g_cm3=0.1, cortical_cell_set="cortex").apply(rho, m2)
    np.testing.assert_allclose(new[:100] - rho[:100], 0.1, rtol=1e-12)
    np.testing.assert_array_equal(new[100:], rho[100:])


def test_ellipsoid_injection_mass_is_exact(cube):
    mesh, rho = cube
    op = LocalInjection(center_mm=(5.0, 5.0, 5.0), radius_mm=(2.6, 2.6, 1.6), shape="ellipsoid", peak_gain_g_cm3=0.3)
    out = Scenario("inj", (op,)).apply(rho, mesh)
    c = mesh.cell_centroids() - 5.0
    inside = ((c / [2.6, 2.6, 1.6]) ** 2).sum(axis=1) <= 1.0
    assert inside.sum() > 10
    assert out.added_mass_g == pytest.approx(0.3 * inside.sum() / 1000.0, rel=1e-12)
    np.testing.assert_allclose(out.density[inside] - rho[inside], 0.3, atol=1e-14)


def test_gaussian_injection_mass_matches_integral():
    # fine grid, sigma = 2 mm: sum w V -> integral of exp(-r^2/2s^2) inside r < 3s
    # = (2 pi)^(3/2) s^3 * P(chi_3 < 3) with P = erf(3/sqrt 2) - sqrt(2/pi) 3 exp(-4.5) = 0.970709.
    # Midpoint rule with h = 0.5 mm (h/sigma = 0.25): error well below 1e-3 (measured 2e-5).
    mesh = hex_grid((28, 28, 28), (14.0, 14.0, 14.0))
    rho = np.full(mesh.n_cells, 0.4)
    op = LocalInjection(center_mm=(7.0, 7.0, 7.0), radius_mm=2.0, shape="gaussian", peak_gain_g_cm3=0.2)
    out = Scenario("g", (op,)).apply(rho, mesh)
    frac = math.erf(3 / math.sqrt(2)) - math.sqrt(2 / math.pi) * 3 * math.exp(-4.5)
    exact = 0.2 * (2 * math.pi) ** 1.5 * 2.0 ** 3 * frac / 1000.0
    assert out.added_mass_g == pytest.approx(exact, rel=1e-3)


def _frame():
    # a real FemurFrame value (as femur_fe.bone.femur_frame returns), with simple geometry
    FemurFrame = pytest.importorskip("femur_fe.bone.anatomy").FemurFrame
    return FemurFrame(head_centre=np.array([5.0, 5.0, 9.0]), head_radius=2.0, head_fit_rms=0.01, head_coverage=0.8,
                      neck_axis=np.array([0.0, 0.6, 0.8]), shaft_axis=np.array([0.0, 0.0, 1.0]),
                      shaft_point=np.array([5.0, 1.0, 2.0]), greater_trochanter=np.array([5.0, 1.0, 8.0]),
                      lesser_trochanter=np.array([5.0, 3.0, 4.0]), distal_end=np.array([5.0, 1.0, 0.0]),
                      side="right", basis=np.eye(3), neck_shaft_angle_deg=127.0, anteversion_deg=None,
                      length_mm=10.0, whole_bone=False)


def test_landmarks_resolved_through_a_femur_frame(cube):
    mesh, rho = cube
    fr = _frame()
    np.testing.assert_allclose(resolve_landmark(fr, "femoral_head_centre"), [5, 5, 9])
    # derived: 1.475 head radii from the head centre against the neck axis
    np.testing.assert_allclose(resolve_landmark(fr, "femoral_neck_centre"), [5, 5 - 2.95 * 0.6, 9 - 2.95 * 0.8])
    np.testing.assert_allclose(resolve_landmark(fr, "intertrochanteric"), [5, 2, 6])
    assert {"femoral_head_centre", "femoral_neck_centre", "intertrochanteric"} <= set(available_landmarks(fr))
    op = LocalInjection(landmark="intertrochanteric", radius_mm=1.0, shape="ellipsoid", peak_gain_g_cm3=0.1)
    new = op.apply(rho, mesh, frame=fr)
    changed = np.flatnonzero(new != rho)
    assert changed.size > 0
    assert np.linalg.norm(mesh.cell_centroids()[changed] - [5, 2, 6], axis=1).max() <= 1.0
    # explicit mapping of coordinates also works
    np.testing.assert_allclose(resolve_landmark({"vertebral_body_centre": (1, 2, 3)}, "vertebral_body_centre"),
                               [1, 2, 3])


def test_missing_landmark_and_frame_errors(cube):
    mesh, rho = cube
    op = LocalInjection(landmark="vertebral_body_centre", radius_mm=3.0, peak_gain_g_cm3=0.1)
    with pytest.raises(ScenarioError, match="vertebral_body_centre.*available landmarks: .*femoral_head_centre"):
        op.apply(rho, mesh, frame=_frame())
    with pytest.raises(ScenarioError, match="needs an anatomy frame"):
        op.apply(rho, mesh)


@pytest.mark.parametrize("ramp", ["logistic", "linear"])
def test_defect_fill_maturation_ramp(cube, ramp):
    mesh, rho = cube
    op = DefectFill(target_density_g_cm3=0.9, maturation_months=6.0, center_mm=(2.0, 5.0, 5.0), radius_mm=1.8,
                    start_density_g_cm3=0.05, ramp=ramp)
    inside = op.weight(mesh) > 0
    assert inside.sum() > 5
    for t, f in [(0.0, 0.0), (3.0, 0.5), (6.0, 1.0), (12.0, 1.0)]:
        new = op.apply(rho, mesh, t_months=t)
        np.testing.assert_allclose(new[inside], 0.05 + f * 0.85, rtol=1e-12)
        np.testing.assert_array_equal(new[~inside], rho[~inside])
    # S-shaped (logistic) vs straight (linear) at a quarter of the time
    f_q = maturation_fraction(1.5, 6.0, ramp)
    assert f_q == pytest.approx(0.25) if ramp == "linear" else f_q < 0.2
    with pytest.raises(ScenarioError, match="t_months"):
        op.apply(rho, mesh)


def test_defect_fill_lesion_as_imaged_keeps_denser_cells(cube):
    mesh, rho = cube
    op = DefectFill(target_density_g_cm3=0.5, maturation_months=4.0, cell_set="lesion", ramp="linear")
    m2 = mesh.with_cell_set("lesion", np.arange(mesh.n_cells))
    new = op.apply(rho, m2, t_months=2.0)
    low = rho <= 0.5
    np.testing.assert_allclose(new[low], rho[low] + 0.5 * (0.5 - rho[low]), rtol=1e-12)
    np.testing.assert_array_equal(new[~low], rho[~low])


def test_cortical_thickening_depth_and_cavity():
    # 6^3 box with the central 2^3 cells removed (an internal cavity = endosteal surface)
    mesh = hex_grid((6, 6, 6), (6.0, 6.0, 6.0))
    c = mesh.cell_centroids()
    keep = ~np.all((c > 2.0) & (c < 4.0), axis=1)
    from femur_fe.fe.mesh import Mesh

    mesh = Mesh(mesh.points, mesh.cells[keep], "hexahedron")
    c = mesh.cell_centroids()
    rho = np.full(mesh.n_cells, 0.4)
    op = CorticalThickening(depth_mm=0.6, gain_g_cm3=0.2)
    new = op.apply(rho, mesh)
    outer = np.any((c < 1.0) | (c > 5.0), axis=1)  # centroid 0.5 mm below the outer surface
    np.testing.assert_allclose(new[outer], 0.6)
    np.testing.assert_allclose(new[~outer], 0.4)  # incl. the cells lining the cavity
    assert outer.sum() == 6 ** 3 - 4 ** 3
    # excluding the bottom face (a "cut"): its layer is not thickened except where other faces are near
    bottom = np.flatnonzero(mesh.points[:, 2] < 1e-9)
    m2 = mesh.with_node_set("distal_cut", bottom)
    new2 = CorticalThickening(depth_mm=0.6, gain_g_cm3=0.2, exclude_node_sets=("distal_cut",)).apply(rho, m2)
    interior_bottom = (c[:, 2] < 1.0) & np.all((c[:, :2] > 1.0) & (c[:, :2] < 5.0), axis=1)
    assert interior_bottom.sum() == 16
    np.testing.assert_allclose(new2[interior_bottom], 0.4)


def test_annual_change_preset_compounds(cube):
    mesh, rho = cube
    new = AnnualChange(preset="postmenopausal_hip").apply(rho, mesh, t_months=36.0)
    np.testing.assert_allclose(new, rho * (1 - 0.012) ** 3, rtol=1e-14)
    new = AnnualChange(percent_per_year=-2.0, compartment="trabecular",
                       cortical_threshold_g_cm3=0.5).apply(rho, mesh, t_months=6.0)
    trab = rho < 0.5
    np.testing.assert_allclose(new[trab], rho[trab] * 0.98 ** 0.5, rtol=1e-14)
    np.testing.assert_array_equal(new[~trab], rho[~trab])


def test_cell_model_operator_uses_komarova(cube):
    mesh, rho = cube
    op = CellModelChange(alpha2_factor=1.05)
    new = op.apply(rho, mesh, t_months=12.0)
    ratio = bone_mass_ratio(CellTherapy(alpha2_factor=1.05), 12.0)
    assert ratio > 1.01
    np.testing.assert_allclose(new, rho * ratio, rtol=1e-12)


def test_bounds_and_parameter_errors(cube):
    mesh, rho = cube
    with pytest.raises(ScenarioError, match=r"target_density_g_cm3.*\(0, 1\.2\]"):
        Scenario("s", (DefectFill(target_density_g_cm3=1.5, maturation_months=3, center_mm=(1, 1, 1),
                                  radius_mm=1.0),), density_type="ash")
    Scenario("s", (DefectFill(target_density_g_cm3=1.5, maturation_months=3, center_mm=(1, 1, 1), radius_mm=1.0),),
             density_type="apparent")  # allowed for apparent density (bound 2.0)
    with pytest.raises(ScenarioError, match="radius_mm.*allowed"):
        LocalInjection(center_mm=(0, 0, 0), radius_mm=-1.0, peak_gain_g_cm3=0.1)
    with pytest.raises(ScenarioError, match="percent"):
        UniformChange(-100.0)
    with pytest.raises(ScenarioError, match="exactly one of landmark, center_mm"):
        LocalInjection(radius_mm=2.0, peak_gain_g_cm3=0.1)
    with pytest.raises(ScenarioError, match="mg/cm"):
        UniformChange(1.0).apply(rho * 1000, mesh)
    # capping at the bound is counted and reported, never silent
    out = Scenario("cap", (UniformChange(200.0),), density_type="ash").apply(rho, mesh)
    assert out.density.max() == DENSITY_UPPER_BOUND["ash"]
    assert out.n_capped == int(np.count_nonzero(3 * rho > 1.2)) > 0
    # input values already above the bound (CT chains) are kept, never lowered nor raised
    rho_hi = rho.copy()
    rho_hi[:5] = 1.4
    out = Scenario("cap2", (UniformChange(10.0),), density_type="ash").apply(rho_hi, mesh)
    np.testing.assert_array_equal(out.density[:5], 1.4)
    assert out.added_mass_g > 0 and out.n_capped == 5


TOML = """
[[scenario]]
name = "neck_injection"
months = 12
density_type = "ash"
[[scenario.operator]]
type = "injection"
center_mm = [5.0, 5.0, 5.0]
radius_mm = 2.0
peak_gain_g_cm3 = 0.1
maturation_months = 6
ramp = "linear"
[[scenario.operator]]
type = "annual_change"
preset = "postmenopausal_hip"

[[scenario]]
name = "standard_care"
[[scenario.operator]]
type = "uniform"
percent = 3.0
"""


def test_toml_round_trip(tmp_path, cube):
    mesh, rho = cube
    p = tmp_path / "sc.toml"
    p.write_text(TOML)
    scs = load_scenarios(p)
    assert [s.name for s in scs] == ["neck_injection", "standard_care"]
    sc = scs[0]
    assert sc.months == 12 and isinstance(sc.operators[0], LocalInjection)
    assert sc.operators[0].center_mm == (5.0, 5.0, 5.0)
    assert scenarios_from_dict({"scenario": [s.to_dict() for s in scs]}) == scs
    out = sc.apply(rho, mesh)
    assert out.t_months == 12.0 and len(out.per_operator) == 2
    assert out.per_operator[0]["added_mass_g"] > 0 > out.per_operator[1]["added_mass_g"]


@pytest.mark.parametrize("text,match", [
    ('[[scenario]]\nname="a"\n[[scenario.operator]]\ntype="uniform"\npercnt=3\n', r"unknown key 'percnt'; did you mean 'percent'.*allowed keys: type, percent"),
    ('[[scenario]]\nname="a"\n[[scenario.operator]]\ntype="magic"\n', r"type must be one of 'uniform'.*got 'magic'"),
    ('[[scenario]]\nname="a"\ncolour="red"\n', r"unknown key 'colour'.*allowed keys: name, operator"),
    ('[[scenario]]\nname="a"\n[[scenario]]\nname="a"\n', "duplicate scenario name"),
    ('title="x"\n[[scenario]]\nname="a"\n', "top level: unknown key 'title'"),
])
def test_toml_errors(tmp_path, text, match):
    p = tmp_path / "bad.toml"
    p.write_text(text)
    with pytest.raises(ScenarioError, match=match):
        load_scenarios(p)


def test_match_added_mass(cube):
    mesh, rho = cube
    op, out = match_added_mass(lambda g: LocalInjection(center_mm=(5, 5, 5), radius_mm=2.0, peak_gain_g_cm3=g),
                               rho, mesh, 0.01)
    assert out.added_mass_g == pytest.approx(0.01, rel=1e-6)
    _, out_u = match_added_mass(lambda g: UniformChange(100 * g), rho, mesh, 0.01)
    assert out_u.added_mass_g == pytest.approx(0.01, rel=1e-6)
    with pytest.raises(ScenarioError, match="cannot add"):
        match_added_mass(lambda g: LocalInjection(center_mm=(5, 5, 5), radius_mm=0.6, shape="ellipsoid",
                                                  peak_gain_g_cm3=g), rho, mesh, 1.0)


# ------------------------------------------------------------------------------ comparison
def test_comparison_rows_json_csv(tmp_path, cube):
    import csv
    import json

    from femur_fe.studies.compare import (
        ScenarioRecord,
        comparison_rows,
        format_table,
        write_comparison,
    )

    mesh, rho = cube
    outcome = Scenario("injection", (LocalInjection(center_mm=(5, 5, 5), radius_mm=2.0, peak_gain_g_cm3=0.2),),
                       months=12).apply(rho, mesh)
    base = ScenarioRecord("baseline", 4000.0, 2000.0, float(rho.mean()))
    care = ScenarioRecord.from_summary("standard_care", {"strength_linear_N": 4200.0, "stiffness_N_per_mm": 2050.0},
                                       Scenario("standard_care", (UniformChange(3.0),)).apply(rho, mesh))
    inj = ScenarioRecord.from_summary("injection", {"strength_linear_N": 4400.0, "stiffness_N_per_mm": 2100.0}, outcome)
    rows = comparison_rows(base, [care, inj], reference="standard_care")
    assert [r["scenario"] for r in rows] == ["baseline", "standard_care", "injection"]
    r = rows[2]
    assert r["strength_change_percent"] == pytest.approx(10.0)
    assert r["stiffness_change_percent"] == pytest.approx(5.0)
    assert r["added_mass_g"] == pytest.approx(outcome.added_mass_g)
    assert r["strength_gain_per_gram_N_per_g"] == pytest.approx(400.0 / outcome.added_mass_g)
    assert r["strength_vs_reference_percent"] == pytest.approx(100 * (4400 / 4200 - 1))
    assert r["better_than_reference"] is True and rows[1]["better_than_reference"] is None
    assert r["vbmd_mg_cm3"] == pytest.approx(1000 * outcome.vbmd_after_g_cm3)
    assert rows[0]["strength_gain_per_gram_N_per_g"] is None
    jp, cp = write_comparison(rows, tmp_path, meta={"reference": "standard_care"})
    data = json.loads(jp.read_text())
    assert data["reference"] == "standard_care" and data["rows"][2]["strength_N"] == 4400.0
    with open(cp) as fh:
        table = list(csv.DictReader(fh))
    assert float(table[2]["strength_change_percent"]) == pytest.approx(10.0)
    assert table[1]["strength_vs_reference_percent"] == ""  # the reference itself
    assert float(table[0]["strength_vs_reference_percent"]) == pytest.approx(100 * (4000 / 4200 - 1))
    assert "injection" in format_table(rows)
    with pytest.raises(ScenarioError, match="strength_linear_N"):
        ScenarioRecord.from_summary("x", {"stiffness_N_per_mm": 1.0})
    with pytest.raises(ScenarioError, match="unique"):
        comparison_rows(base, [care, care])
