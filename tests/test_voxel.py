"""Voxel hex8 meshes from masks: geometry, orientation, coarsening, labels, real CT data."""
from __future__ import annotations

import numpy as np
import pytest
from conftest import require_shared

import femur_fe as ff
from femur_fe.errors import CTError


def _ct(shape=(6, 5, 4), direction=None, spacing=(0.5, 0.8, 1.2), origin=(3.0, -7.0, 11.0)):
    vals = np.arange(np.prod(shape), dtype=np.float64).reshape(shape) * 10.0 - 1000.0
    return ff.io.CTImage.from_array(vals, spacing=spacing, origin=origin, direction=direction, unit="HU",
                                 check_unit=False)


DIRECTIONS = {
    "identity": np.eye(3),
    "ras_flip": np.diag([-1.0, -1.0, 1.0]),
    "mirror": np.diag([-1.0, 1.0, 1.0]),  # det -1
    "rot_mirror": np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]) @ np.diag([1.0, 1.0, -1.0]),
    "rotation": np.array([[np.cos(0.3), -np.sin(0.3), 0], [np.sin(0.3), np.cos(0.3), 0], [0, 0, 1.0]]),
}


@pytest.mark.parametrize("name", sorted(DIRECTIONS))
def test_cube_of_voxels_geometry_and_orientation(name):
    ct = _ct(direction=DIRECTIONS[name])
    mask = np.zeros(ct.shape, dtype=bool)
    mask[1:4, 1:4, 1:4] = True
    mesh = ff.bone.hexmesh_from_mask(mask, ct)
    assert mesh.cell_type == "hexahedron" and mesh.n_cells == 27
    assert mesh.n_points == 64  # nodes shared between neighbours
    assert np.all(mesh.jacobian_determinants() > 0)
    assert mesh.validate().ok
    assert np.allclose(mesh.cell_volumes(), ct.voxel_volume_mm3)
    # element centroids are the voxel centres in world coordinates, values are the voxel values
    idx = np.argwhere(mask)
    assert np.allclose(mesh.cell_centroids(), ct.world_from_index(idx), atol=1e-12)
    assert np.array_equal(mesh.cell_data["hu"], ct.array[mask])


def test_coarsening_rules_and_averages():
    ct = _ct(shape=(4, 4, 4), spacing=(1.0, 1.0, 1.0), origin=(0, 0, 0))
    mask = np.zeros(ct.shape, dtype=bool)
    mask[0:2, 0:2, 0:2] = True          # full block (8/8)
    mask[2:4, 0:2, 0:2] = False
    mask[2, 0, 0] = True                # 1/8 of the next block
    mask[0:2, 2:4, 0:2] = True
    mask[0, 2, 0] = False               # 7/8
    maj = ff.bone.hexmesh_from_mask(mask, ct, coarsen=2)
    assert maj.n_cells == 2
    assert sorted(maj.cell_data["mask_fraction"].tolist()) == [0.875, 1.0]
    anyr = ff.bone.hexmesh_from_mask(mask, ct, coarsen=2, rule="any")
    assert anyr.n_cells == 3
    assert np.allclose(anyr.cell_volumes(), 8.0)
    # the 1/8 block's value is the single masked voxel's value
    sel = np.isclose(anyr.cell_data["mask_fraction"], 0.125)
    assert anyr.cell_data["hu"][sel][0] == ct.array[2, 0, 0]
    full = np.isclose(anyr.cell_data["mask_fraction"], 1.0)
    assert anyr.cell_data["hu"][full][0] == pytest.approx(ct.array[0:2, 0:2, 0:2].mean())
    # coarse element spans the outer faces of its voxels
    assert np.allclose(maj.bounds, [[-0.5, -0.5, -0.5], [1.5, 3.5, 1.5]])
    with pytest.raises(CTError, match="coarsen"):
        ff.bone.hexmesh_from_mask(mask, ct, coarsen=0)
    with pytest.raises(CTError, match="rule"):
        ff.bone.hexmesh_from_mask(mask, ct, rule="most")


def test_labels_become_cell_sets():
    ct = _ct(shape=(4, 2, 2), spacing=(1, 1, 1))
    lab = np.zeros(ct.shape, dtype=np.int64)
    lab[0:2] = 5
    lab[2:4] = 7
    lab[3, 1, 1] = 5
    mesh = ff.bone.hexmesh_from_mask(lab, ct)
    assert mesh.n_cells == 16
    assert len(mesh.cell_sets["label_5"]) == 9 and len(mesh.cell_sets["label_7"]) == 7
    coarse = ff.bone.hexmesh_from_mask(lab, ct, coarsen=2)
    assert coarse.cell_data["label"].tolist() == [5, 7]  # majority label per block


def test_bad_masks():
    ct = _ct()
    with pytest.raises(CTError, match="empty"):
        ff.bone.hexmesh_from_mask(np.zeros(ct.shape, dtype=bool), ct)
    with pytest.raises(CTError, match="shape"):
        ff.bone.hexmesh_from_mask(np.ones((2, 2, 2), dtype=bool), ct)
    a = ct.array.copy()
    a[1, 1, 1] = np.nan
    with pytest.raises(CTError, match="NaN"):
        ff.bone.hexmesh_from_mask(np.ones(ct.shape, dtype=bool), ct.with_array(a))


def test_density_ct_gives_density_in_g_cm3():
    ct = ff.io.CTImage.from_array(np.full((3, 3, 3), 250.0), unit="mg/cm3")
    mesh = ff.bone.hexmesh_from_mask(np.ones(ct.shape, dtype=bool), ct)
    assert "hu" not in mesh.cell_data
    assert np.allclose(mesh.cell_data["density"], 0.25)


# ------------------------------------------------------------------ real data
def test_totalseg_right_femur_and_lumbar_masks():
    base = require_shared("ct_totalseg_example")
    ct = ff.read_ct(base / "example_ct.nii.gz")
    expected = {"femur_right": (3782, 102.1), "vertebrae_L1": (2217, 59.9), "vertebrae_L2": (2283, 61.6),
                "vertebrae_L3": (2458, 66.4), "vertebrae_L4": (2463, 66.5), "vertebrae_L5": (2443, 66.0)}
    for name, (n_vox, vol_cm3) in expected.items():  # PROVENANCE.md table
        mask = ff.io.read_mask(base / "example_seg" / f"{name}.nii.gz", reference=ct)
        mesh = ff.bone.hexmesh_from_mask(mask, ct)
        assert mesh.n_cells == n_vox
        assert mesh.cell_volumes().sum() / 1000.0 == pytest.approx(vol_cm3, abs=0.06)
        assert np.all(mesh.jacobian_determinants() > 0)  # i and j axes are flipped (RAS file)
    femur = ff.io.read_mask(base / "example_seg" / "femur_right.nii.gz", reference=ct)
    mesh = ff.bone.hexmesh_from_mask(femur, ct)
    assert np.percentile(mesh.cell_data["hu"], [5, 50, 95]) == pytest.approx([-33, 154, 431], abs=3)
    coarse = ff.bone.hexmesh_from_mask(femur, ct, coarsen=2)
    assert coarse.validate().ok
    # majority coarsening keeps the volume within a few percent of the voxel volume
    assert coarse.cell_volumes().sum() == pytest.approx(mesh.cell_volumes().sum(), rel=0.15)
    # mesh lies where the mask is: every element centroid samples a masked voxel
    idx = np.rint(ct.index_from_world(mesh.cell_centroids())).astype(int)
    assert femur[tuple(idx.T)].all()


def test_verse_labels_and_density():
    base = require_shared("ct_verse004_L2_density")
    ct = ff.read_ct(base / "sub-verse004_0000_vertebra_21_im.nii.gz", unit="mg/cm3")
    labels = ff.io.read_labels(base / "sub-verse004_0000_vertebra_21_seg.nii.gz", reference=ct)
    counts = {1: 22553, 2: 11093, 3: 7761, 4: 12343, 5: 7015, 6: 6425}  # PROVENANCE.md
    mesh = ff.bone.hexmesh_from_mask(labels, ct)
    for lab, n in counts.items():
        assert len(mesh.cell_sets[f"label_{lab}"]) == n
    trab = mesh.cell_sets["label_1"]
    assert np.median(mesh.cell_data["density"][trab]) == pytest.approx(0.067, abs=0.002)  # 67 mg/cm3
    assert np.all(mesh.cell_data["density"][mesh.cell_sets["label_5"]] == 0.0)  # PMMA caps hold 0
    assert np.all(mesh.jacobian_determinants() > 0)
    body = ff.io.read_mask(base / "sub-verse004_0000_vertebra_21_seg.nii.gz", label=[1, 2], reference=ct)
    coarse = ff.bone.hexmesh_from_mask(body, ct, coarsen=3)
    assert coarse.validate().ok and coarse.n_cells < body.sum() / 20
