"""End-to-end load cases: equilibrium, rigid-cap compression vs E*A/L, pose invariance, outputs."""
from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import require_shared

import femur_fe as ff
from femur_fe.analysis.prepare import prepare
from femur_fe.bone.model import Model
from femur_fe.errors import LoadCaseError


def _cylinder(radius=3.0, length=96.0, size=2.0):
    """Tet4 cylinder along z from TetGen with a volume bound (no surface remeshing)."""
    import pyvista as pv
    import tetgen

    surf = pv.Cylinder(center=(0, 0, length / 2), direction=(0, 0, 1), radius=radius, height=length,
                       resolution=24, capping=True).triangulate().clean()
    nodes, tets = tetgen.TetGen(surf).tetrahedralize(order=1, quality=True, maxvolume=size**3 / 6.0)[:2]
    mesh = ff.Mesh(nodes, tets, "tetra")
    mesh = ff.Mesh(mesh.points, mesh.cells[:, [0, 2, 1, 3]]) if (mesh.jacobian_determinants() < 0).all() else mesh
    z = mesh.points[:, 2]
    return (mesh.with_node_set("bottom", np.flatnonzero(z < 1e-6))
                .with_node_set("top", np.flatnonzero(z > length - 1e-6)))


def _cylinder_case(**loading):
    return ff.load_case({
        "schema_version": 1, "name": "cylinder", "bone": "vertebra",
        "material": {"law": "power", "params": {"a_mpa": 1000.0, "b": 1.0, "density_type": "apparent"}},
        "loading": {"mode": "force", "force_n": 500.0, "direction": "vector", "vector": [0.0, 0.0, -1.0],
                    **loading},
        "caps": {"kind": "rigid", "regions": []},
        "regions": {"top": {"node_set": "top"}, "bottom": {"node_set": "bottom"}},
        "boundary": [{"region": "top", "apply": "load"}, {"region": "bottom", "fix": "all"}],
        "failure": {"criterion": "max_principal_strain"},
    })


@pytest.fixture(scope="module")
def cylinder():
    return _cylinder()


@pytest.mark.parametrize("poisson, tol", [(0.0, 1e-6), (0.3, 0.01)])
def test_cylinder_through_rigid_cap_matches_EA_over_L(cylinder, poisson, tol):
    """A bar pressed by a rigid plate: k = E A / L.

    With nu = 0 the bonded ends restrain nothing and the linear tet4 field is exact, so the
    only error is the solver's (1e-6 covers rtol and round-off; A is the faceted area of the
    mesh, volume / length). With nu = 0.3 the plate and the fixed base stop the lateral
    expansion of the end faces and stiffen the bar; for L/D = 16 that end effect stays
    below 1 % (measured 0.63 %; 1.2 % at L/D = 8).
    """
    mesh = cylinder
    e = 2000.0
    model = Model(mesh, np.full(mesh.n_cells, 2.0), np.full(mesh.n_cells, e), None, "apparent", poisson)
    res = ff.run(_cylinder_case(), model)
    area = mesh.cell_volumes().sum() / 96.0
    expected = e * area / 96.0
    assert res.stiffness_N_per_mm == pytest.approx(expected, rel=tol)
    # force control: the plate force is the requested 500 N
    assert res.load_force_N == pytest.approx(500.0, rel=1e-6)  # CG rtol 1e-8 + round-off


def test_reactions_balance_and_displacement_control_scales(cylinder):
    mesh = cylinder
    model = Model(mesh, np.full(mesh.n_cells, 1.0), np.full(mesh.n_cells, 1500.0), None, "apparent", 0.3)
    res_f = ff.run(_cylinder_case(), model)
    total = sum(np.asarray(v) for v in res_f.reaction_forces.values())
    # equilibrium of the whole bone: 1e-6 relative to the load (the direct solve is exact to
    # ~1e-12; 1e-6 also bounds the cap and region bookkeeping)
    assert np.linalg.norm(total) <= 1e-6 * 500.0
    case_d = _cylinder_case().with_values({"loading.mode": "displacement", "loading.displacement_mm": 0.05})
    res_d = ff.run(case_d, model)
    assert res_d.plate_displacement_mm == pytest.approx(0.05, rel=1e-10)
    assert res_d.stiffness_N_per_mm == pytest.approx(res_f.stiffness_N_per_mm, rel=1e-9)
    # linear strength is load-independent
    assert res_d.linear.strength_N == pytest.approx(res_f.linear.strength_N, rel=1e-9)


def test_linear_strength_of_uniform_bar_is_analytic(cylinder):
    """Uniform bar in compression: first node reaches eps_c = 1.04 % at F = E A eps_c (nu = 0)."""
    mesh = cylinder
    model = Model(mesh, np.full(mesh.n_cells, 1.0), np.full(mesh.n_cells, 1000.0), None, "apparent", 0.0)
    res = ff.run(_cylinder_case(), model)
    area = mesh.cell_volumes().sum() / 96.0
    assert res.linear.strength_N == pytest.approx(1000.0 * area * 0.0104, rel=1e-6)


def test_nonlinear_strength_of_uniform_bar_through_the_pipeline(cylinder):
    """run_nonlinear on a uniform bar (nu = 0, perfectly plastic, yield 1.04 % in compression).

    * The loading plate keeps the linear case's constraints, so the elastic stiffness of the
      nonlinear run is the linear stiffness (same system, 1e-9).
    * Endpoint definition: characteristic length = top-to-bottom distance (96 mm), endpoint
      4 % = 3.84 mm, beyond yield at 1.04 % x 96 mm; the uniform bar yields everywhere at once
      so the force up to the endpoint is the plateau E A eps_c (rtol 1e-3 of the secant
      iterations -> 1e-3).
    * Peak definition: the same plateau.
    """
    from femur_fe.analysis.prepare import run_nonlinear

    mesh = cylinder
    e = 1000.0
    model = Model(mesh, np.full(mesh.n_cells, 1.0), np.full(mesh.n_cells, e), None, "apparent", 0.0)
    area = mesh.cell_volumes().sum() / 96.0
    an = prepare(_cylinder_case(), model)
    res = an.solve()
    nl = run_nonlinear(an, res)
    assert nl.elastic_stiffness_N_per_mm == pytest.approx(res.stiffness_N_per_mm, rel=1e-9)
    assert nl.report["characteristic_length_mm"] == pytest.approx(96.0, rel=1e-9)
    assert nl.endpoint_mm == pytest.approx(0.04 * 96.0, rel=1e-9) and nl.endpoint_reached
    assert nl.strength_N == pytest.approx(e * area * 0.0104, rel=1e-3)
    s = res.strength_summary
    from femur_fe.analysis.risk import summary_fields

    assert s["strength_nonlinear_N"] == pytest.approx(nl.strength_N)
    # a vertebral case refers the factor of risk and the classification to the nonlinear strength ...
    assert s["reference_strength"] == "nonlinear" and s["strength_used"] == "nonlinear"
    assert "strength_used_note" not in s
    # before the nonlinear run the linear strength stood in, and the summary said so
    before = summary_fields(linear=res.linear, site="spine", sex="female", reference="nonlinear")
    assert before["strength_used"] == "linear:max_principal_strain" and "--nonlinear" in before["strength_used_note"]
    # ... a case with reference_strength = "linear" (the femur default) keeps the linear one
    lin = summary_fields(linear=res.linear, nonlinear=nl, site="spine", sex="female", reference="linear")
    assert lin["strength_used"] == "linear:max_principal_strain"
    assert lin["classification"]["strength_N"] == pytest.approx(res.linear.strength_N)
    assert lin["strength_nonlinear_N"] == pytest.approx(nl.strength_N)  # still reported
    assert _cylinder_case().with_values({"failure.reference_strength": "linear"}).failure.reference_strength == "linear"
    with pytest.raises(LoadCaseError, match="reference_strength"):
        _cylinder_case().with_values({"failure.reference_strength": "best"})
    assert s["nonlinear"]["strength_definition"] == "endpoint"
    assert s["nonlinear"]["characteristic_length_mm"] == pytest.approx(96.0)
    an2 = prepare(_cylinder_case().with_values({"nonlinear.strength": "peak"}), model)
    nl2 = run_nonlinear(an2, an2.solve())
    assert nl2.strength_definition == "peak" and nl2.peak_reached
    assert nl2.strength_N == pytest.approx(e * area * 0.0104, rel=1e-3)


def test_results_written(tmp_path, cylinder):
    mesh = cylinder
    model = Model(mesh, np.full(mesh.n_cells, 1.0), np.full(mesh.n_cells, 1500.0), None, "apparent", 0.3)
    ff.run(_cylinder_case(), model, out=tmp_path)
    s = json.loads((tmp_path / "summary.json").read_text(encoding="utf-8"))
    for key in ("stiffness_N_per_mm", "reaction_forces_N", "n_dofs", "solver", "case", "inputs",
                "femur_fe_version", "strength_linear_N", "criterion", "classification"):
        assert key in s
    assert set(s["reaction_forces_N"]) == {"top", "bottom"}
    back = ff.read_mesh(tmp_path / "result.vtu")
    for f in ("strain", "stress", "von_mises", "young_modulus", "density", "risk", "principal_strain"):
        assert f in back.cell_data
    assert back.point_data["displacement"].shape == (mesh.n_points, 3)


def test_bad_boundary_region_is_named(cylinder):
    case = ff.load_case({
        "schema_version": 1, "bone": "vertebra", "material": {"law": "kopperdahl2002"},
        "loading": {"direction": "vector", "vector": [0.0, 0.0, -1.0]},
        "caps": {"kind": "rigid", "regions": []},
        "regions": {"top": {"node_set": "top"}, "bottom": {"node_set": "bottom"}},
        "boundary": [{"region": "top", "apply": "load"}, {"region": "bottom", "fix": "along_load"}],
    })
    model = Model(cylinder, np.full(cylinder.n_cells, 1.0), np.full(cylinder.n_cells, 1500.0))
    with pytest.raises(ff.errors.UnderConstrainedError, match="translation"):
        ff.run(case, model)


# ----------------------------------------------------------------------------- femur, real geometry
@pytest.fixture(scope="module")
def proximal_femur():
    from femur_fe.bone.meshing import cut_proximal_femur, tetmesh_from_surface
    from femur_fe.io.surface import read_surface

    path = require_shared("femur_gfxmorph", "femur.stl")
    surf = cut_proximal_femur(read_surface(path), 60.0)
    mesh = tetmesh_from_surface(surf, element_size=4.0)
    c = mesh.cell_centroids()
    rho = 0.35 + 0.25 * np.abs(np.sin(c[:, 0] / 17.0) * np.cos(c[:, 2] / 23.0))  # heterogeneous ash density
    return mesh, rho


def _fall_stiffness(mesh, rho):
    law = ff.bone.material_law("keller1994_combined")
    case = ff.load_case("loadcases/sideways_fall.toml")
    res = ff.run(case, Model.from_density(mesh, rho, law))
    total = sum(np.asarray(v) for v in res.reaction_forces.values())
    assert np.linalg.norm(total) <= 1e-6 * abs(res.load_force_N)
    return res


def test_sideways_fall_invariant_under_rigid_motion_and_mirroring(proximal_femur):
    """Stiffness of one femur changes < 1 % under rotation+translation and mirroring."""
    mesh, rho = proximal_femur
    base = _fall_stiffness(mesh, rho)
    assert 300.0 < base.stiffness_N_per_mm < 20000.0  # plausible whole-femur range, N/mm
    rng = np.random.default_rng(7)
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    q *= np.sign(np.linalg.det(q))
    moved = _fall_stiffness(mesh.transformed(q, [120.0, -40.0, 300.0]), rho)
    assert moved.stiffness_N_per_mm == pytest.approx(base.stiffness_N_per_mm, rel=0.01)
    mirrored = _fall_stiffness(mesh.transformed(np.diag([-1.0, 1.0, 1.0])), rho)
    assert mirrored.stiffness_N_per_mm == pytest.approx(base.stiffness_N_per_mm, rel=0.01)


def test_many_fall_directions_reuse_one_setup(proximal_femur):
    mesh, rho = proximal_femur
    law = ff.bone.material_law("keller1994_combined")
    an = prepare(ff.load_case("loadcases/sideways_fall.toml"), Model.from_density(mesh, rho, law))
    dirs = [None] + [{"adduction_deg": a, "internal_rotation_deg": r} for a in (0.0, 20.0) for r in (0.0, 30.0)]
    res = an.solve_directions(dirs)
    assert an._solver is not None
    # the case's own direction equals a fresh single solve
    single = an.solve()
    assert res[0].stiffness_N_per_mm == pytest.approx(single.stiffness_N_per_mm, rel=1e-10)
    ks = [r.stiffness_N_per_mm for r in res]
    assert len(set(np.round(ks, 6))) == len(ks)  # directions differ
    for r in res:
        assert np.linalg.norm(sum(np.asarray(v) for v in r.reaction_forces.values())) <= 1e-6 * r.load_force_N


def test_density_change_reuses_setup_and_matches_fresh_solve(proximal_femur):
    """A scenario solved with CG preconditioned by the baseline set-up equals a fresh solve.

    Tolerance 1e-6: both solves meet rtol = 1e-8 on their own matrix; the stiffness is a
    ratio of solution components, so its error is of the order of rtol times the condition
    of the load/displacement map, far below 1e-6 here.
    """
    mesh, rho = proximal_femur
    law = ff.bone.material_law("keller1994_combined")
    case = ff.load_case("loadcases/sideways_fall.toml")
    model = Model.from_density(mesh, rho, law)
    an = prepare(case, model)
    an.solve()
    new = model.with_density(rho * 1.1)
    reused = an.solve(model=new)
    assert reused.solver.method == "cg-reuse"
    fresh = ff.run(case, new)
    assert reused.stiffness_N_per_mm == pytest.approx(fresh.stiffness_N_per_mm, rel=1e-6)
    assert reused.linear.strength_N == pytest.approx(fresh.linear.strength_N, rel=1e-6)
