"""Answers that do not depend on the mesh: the element-size rule of Specimen, hex sizes on the voxel
grid, the --check-mesh re-run at 0.7x and its named warnings, and a shell density that averages
over each element."""
from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import require_shared

import femur_fe as ff
from femur_fe.bone.meshing import repair_surface, tetmesh_from_surface
from femur_fe.bone.specimen import DensitySpec, Specimen, hex_element_size, shell_fraction
from femur_fe.bone.voxel import hexmesh_from_mask, subdivide_mask
from femur_fe.commands.cli import main
from femur_fe.errors import LoadCaseError
from femur_fe.io.ct import CTImage
from femur_fe.studies.meshcheck import mesh_check_warnings


@pytest.mark.parametrize("size, voxel, at_most, expected", [
    (3.0, 3.0, False, 3.0),
    (2.5, 1.0, False, 2.0),   # nearest whole number of voxels (round half to even)
    (3.4, 1.0, False, 3.0),
    (2.1, 3.0, False, 1.5),   # below sqrt(0.5) voxel: a fraction of the voxel
    (2.2, 3.0, False, 3.0),
    (2.1, 3.0, True, 1.5),    # 0.7 x 3 mm on a 3 mm grid: half voxels
    (1.4, 1.0, True, 1.0),    # 0.7 x 2 mm on a 1 mm grid: one voxel
    (2.1, 1.0, True, 2.0),
    (0.7, 1.0, True, 0.5),
])
def test_hex_sizes_on_the_voxel_grid(size, voxel, at_most, expected):
    assert hex_element_size(size, voxel, at_most=at_most) == pytest.approx(expected)


def test_subdivided_voxels_keep_the_staircase():
    a = np.full((6, 5, 4), -1000.0)
    a[1:4, 1:3, 1:3] = 300.0
    a[2, 2, 2] = 3000.0
    direction = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])  # rotated grid
    ct = CTImage.from_array(a, spacing=(1.0, 2.0, 3.0), origin=(5.0, 6.0, 7.0), direction=direction)
    mask = a > 0
    coarse = hexmesh_from_mask(mask, ct)
    for n in (2, 3):
        fine_mask, fine_ct = subdivide_mask(mask, ct, n)
        fine = hexmesh_from_mask(fine_mask, fine_ct)
        assert fine.n_cells == coarse.n_cells * n ** 3
        np.testing.assert_allclose(fine.bounds, coarse.bounds, atol=1e-12)
        assert fine.cell_volumes().sum() == pytest.approx(coarse.cell_volumes().sum(), rel=1e-12)
        # every sub-voxel centre lies in the voxel whose value it took
        idx = np.rint(ct.index_from_world(fine_ct.world_from_index(np.argwhere(fine_mask)))).astype(int)
        assert np.array_equal(ct.array[tuple(idx.T)], fine_ct.array[fine_mask])


def test_mesh_check_warnings_are_named():
    rec = {"size_mm": 3.0, "refined_size_mm": 2.1, "stiffness_change_percent": -6.0,
           "strength_change_percent": 9.9, "strength_compared": "linear"}
    w = mesh_check_warnings(rec)
    assert [x["name"] for x in w] == ["mesh_dependent_stiffness"]
    assert "-6.0 %" in w[0]["message"] and "--size 2.1" in w[0]["message"]
    rec.update(stiffness_change_percent=4.9, strength_change_percent=-10.5, strength_compared="nonlinear")
    w = mesh_check_warnings(rec)
    assert [x["name"] for x in w] == ["mesh_dependent_strength"] and "nonlinear strength" in w[0]["message"]


def test_check_mesh_refuses_bones_it_does_not_mesh(tmp_path, capsys):
    rc = main(["run", "vertebral_compression", "--bundled", "vertebra", "--check-mesh", "-o", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 2 and "--check-mesh re-meshes the bone" in err and len(err.strip().splitlines()) == 1
    with pytest.raises(LoadCaseError, match="used as given"):
        Specimen.from_dict({"bundled": "femur"}).element_size()


def test_shell_density_does_not_depend_on_the_element_size():
    """A 20 mm ball with a 3 mm shell: the shell holds about 1 - (17/20)^3 = 38.6 % of the volume. The
    element-averaged shell fraction gives it on tetrahedra of 4 and 2.5 mm (a centroid rule jumps
    by whole element layers)."""
    import pyvista as pv

    surf = ff.io.Surface.from_pyvista(pv.Sphere(radius=20.0, theta_resolution=90, phi_resolution=90), "ball")
    surf, _ = repair_surface(surf)
    # the core deeper than 3 mm below the tessellated ball is the polyhedron scaled by (r_f - 3) / r_f,
    # with r_f the distance of its faces from the centre (0.01 mm spread over the faces)
    tri = surf.points[surf.faces]
    normal = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    r_f = np.mean(np.abs(np.einsum("fd,fd->f", tri[:, 0], normal)) / np.linalg.norm(normal, axis=1))
    core = surf.volume * ((r_f - 3.0) / r_f) ** 3
    spec = DensitySpec("apparent", cortical_g_cm3=1.8, trabecular_g_cm3=0.3, cortical_thickness_mm=3.0)
    masses = []
    for h in (4.0, 2.5):
        mesh = tetmesh_from_surface(surf, element_size=h)
        v = mesh.cell_volumes()
        f = shell_fraction(mesh, 3.0, surf)
        exact = 1.0 - core / v.sum()  # the mesh's chords cut the outside of the shell, not the core
        # exact depth at the nodes and edge midpoints, quadratic inside each element, 64 points per
        # element: 0.25 % at 4 mm, 0.03 % at 2.5 mm
        assert (f * v).sum() / v.sum() == pytest.approx(exact, rel=0.005)
        masses.append((spec.values(mesh, surf) * v).sum())
    assert masses[1] == pytest.approx(masses[0], rel=0.01)


def test_check_mesh_on_a_real_surface(tmp_path, capsys):
    """femur-fe run --check-mesh on the mean L3 surface (uniform density, 5 mm elements): the
    summary's mesh_check record holds the two runs' numbers and their changes."""
    stl = require_shared("lumbar_mean_clouthier", "mean_L3.stl")
    bone = tmp_path / "bone.toml"
    bone.write_text(f'[bone]\nmesh = "{stl}"\nelement_size_mm = 5.0\n'
                    '[bone.density]\ndensity_type = "qct"\nuniform_g_cm3 = 0.2\n')
    out = tmp_path / "run"
    rc = main(["run", "vertebral_compression", "--bone", str(bone), "--set", "anatomy.superior=[0, 0, 1]",
               "--check-mesh", "-o", str(out)])
    printed = capsys.readouterr().out
    assert rc == 0
    s = json.loads((out / "summary.json").read_text())
    mc = s["mesh_check"]
    assert mc["size_mm"] == 5.0 and mc["refined_size_mm"] == pytest.approx(3.5)
    assert s["element_size_mm"] == 5.0
    assert mc["refined_n_elements"] > mc["n_elements"]
    assert mc["stiffness_change_percent"] == pytest.approx(
        100 * (mc["refined_stiffness_N_per_mm"] / s["stiffness_N_per_mm"] - 1), rel=1e-12)
    assert mc["strength_compared"] == "linear" and mc["strength_N"] == s["strength_linear_N"]
    assert mc["passed"] == (abs(mc["stiffness_change_percent"]) <= 5 and abs(mc["strength_change_percent"]) <= 10)
    assert "mesh check: 5 -> 3.5 mm" in printed and "[mesh check 3.5 mm] solved:" in printed
