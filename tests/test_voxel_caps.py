"""PMMA caps as voxels on voxel models, and the matrix-free voxel solver chosen automatically by a run."""
from __future__ import annotations

import numpy as np
import pytest
from conftest import require_shared

import femur_fe as ff
from femur_fe.analysis.caps import add_voxel_cap
from femur_fe.errors import RegionError
from femur_fe.fe.boxes import hex_grid
from femur_fe.fe.topology import boundary_faces


def _top_faces(mesh, z):
    faces, _ = boundary_faces(mesh)
    on = np.all(np.isclose(mesh.points[faces[:, :4], 2], z), axis=1)
    return faces[on]


def test_voxel_cap_fills_every_column_to_one_flat_top():
    """A 4x3x2 block of 1 mm voxels with a step on top: the cap fills each column to the same top plane,
    thickness counted over the highest bone face, every new cell a voxel of the grid."""
    mesh = hex_grid((4, 3, 3), (4.0, 3.0, 3.0))
    c = mesh.cell_centroids()
    keep = ~((c[:, 0] < 2.0) & (c[:, 2] > 2.0))  # remove the top layer over x < 2: a 1 mm step
    mesh = ff.fe.mesh.remove_orphan_nodes(ff.Mesh(mesh.points, mesh.cells[keep], "hexahedron"))
    faces = np.vstack([_top_faces(mesh, 3.0), _top_faces(mesh, 2.0)])
    out, cap = add_voxel_cap(mesh, faces, [0.0, 0.0, 1.0], 2.0)
    assert np.allclose(out.points[cap.top_nodes, 2], 5.0)  # 3 mm bone top + 2 mm
    # columns over the step get 3 voxels, the others 2: 6 x 3 + 6 x 2
    assert cap.n_cells == 6 * 3 + 6 * 2
    assert ff.fe.is_voxel_mesh(out)
    assert np.isclose(out.cell_volumes()[mesh.n_cells:], 1.0).all()
    with pytest.raises(RegionError, match="deg from the nearest voxel axis"):
        add_voxel_cap(mesh, faces, [1.0, 0.0, 1.2], 2.0)


def test_voxel_run_uses_the_matrix_free_solver_and_matches_the_assembled_one():
    """The VerSe L2 density CT as 3 mm voxels (bone labels 1-4) with voxel PMMA caps: the run picks the
    matrix-free solver; the assembled direct solver on the same model gives the same stiffness (CG to
    rtol 1e-10 here: the stiffness error is quadratic in the displacement error)."""
    d = require_shared("ct_verse004_L2_density")
    bone = {"ct": str(d / "sub-verse004_0000_vertebra_21_im.nii.gz"), "ct_unit": "mg/cm3",
            "mask": str(d / "sub-verse004_0000_vertebra_21_seg.nii.gz"), "labels": [1, 2, 3, 4],
            "mesh_type": "hex", "element_size_mm": 3.0}
    case = ff.load_case("loadcases/vertebral_compression.toml").with_values({"solver.rtol": 1e-10})
    vox = ff.run(case, bone)
    assert vox.solver.method.startswith("voxel")
    direct = ff.run(case.with_values({"solver.method": "direct"}), bone)
    assert not direct.solver.method.startswith("voxel")
    assert vox.stiffness_N_per_mm == pytest.approx(direct.stiffness_N_per_mm, rel=1e-8)
    assert vox.linear.strength_N == pytest.approx(direct.linear.strength_N, rel=1e-8)
