"""Metal in or next to the bone is refused (femur_fe.bone.metal), on synthetic CTs and on the
clinical CT whose left hip holds an implant."""
from __future__ import annotations

import numpy as np
import pytest

import femur_fe as ff
from femur_fe.bone.metal import check_metal, covered_voxels, metal_near_mesh
from femur_fe.commands.cli import main
from femur_fe.errors import CTError, MetalError
from femur_fe.fe.boxes import box_mesh
from femur_fe.io.ct import CTImage, read_mask

from conftest import require_shared


def _ct(metal_at=None, value=3071.0):
    """A 1 mm HU CT of 40^3 voxels (soft tissue, air below, bone in the box of :func:`_mesh`) with
    optional metal voxels at index boxes."""
    a = np.full((40, 40, 40), 40.0, dtype=np.float32)
    a[:, :, :3] = -1000.0
    a[10:21, 10:21, 10:21] = 300.0
    for sl in metal_at or []:
        a[sl] = value
    return CTImage.from_array(a, spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0), unit="HU")


def _mesh():
    """A tet4 box from 10 to 20 mm on each axis (voxel centres 10..20 lie on or inside it)."""
    mesh = box_mesh("tetra", 5, 5, 5, h=2.0)
    return mesh.with_points(mesh.points + 10.0)


def test_box_mesh_helper_covers_the_expected_voxels():
    mesh = _mesh()
    assert np.allclose(mesh.bounds, [[10, 10, 10], [20, 20, 20]])
    ct = _ct()
    cov = covered_voxels(mesh, ct, np.zeros(3, dtype=np.int64), np.array(ct.shape))
    idx = np.argwhere(cov)
    # every voxel whose centre is in [10, 20] (nearest-voxel rounding of points in the box) and no other
    assert idx.min() == 10 and idx.max() == 20
    assert cov[10:21, 10:21, 10:21].all()


@pytest.mark.parametrize("where, refused", [
    ((slice(14, 16), slice(14, 16), slice(14, 16)), True),   # inside the bone
    ((slice(21, 22), slice(14, 15), slice(14, 15)), True),   # the next voxel outside (touching)
    ((slice(22, 23), slice(14, 15), slice(14, 15)), False),  # two voxels away: not touching
    ((slice(0, 3), slice(0, 3), slice(0, 3)), False),        # elsewhere in the scan
])
def test_metal_inside_or_touching_is_refused(where, refused):
    ct = _ct([where])
    n = int(np.prod([s.stop - s.start for s in where]))
    rep = metal_near_mesh(ct, _mesh())
    assert rep.n_metal_in_ct == n
    if refused:
        assert rep.n_voxels == n and rep.max_hu == 3071.0
        centre = [0.5 * (s.start + s.stop - 1) for s in where]  # voxel centres at integer mm
        assert np.allclose(rep.centre_mm, centre)
        with pytest.raises(MetalError, match=rf"metal in the bone: {n} CT voxels above 2500 HU .*another bone"):
            check_metal(ct, _mesh())
    else:
        assert rep.n_voxels == 0 and not rep.found
        assert check_metal(ct, _mesh()).n_voxels == 0


def test_dense_bone_below_the_threshold_passes_and_density_cts_are_not_checked():
    # 2000 HU is dense cortical bone at low kV, not metal
    assert not metal_near_mesh(_ct([(slice(14, 16),) * 3], value=2000.0), _mesh()).found
    dens = CTImage.from_array(np.full((40, 40, 40), 3.0, dtype=np.float32), unit="g/cm3")
    assert check_metal(dens, _mesh()).n_voxels == 0
    with pytest.raises(MetalError, match="reads HU"):
        metal_near_mesh(dens, _mesh())
    assert issubclass(MetalError, CTError)


def test_metal_is_found_with_elements_much_larger_than_the_voxels():
    """A 0.25 mm CT under 2 mm elements: one metal voxel in the middle of an element is found
    (the sample points follow the element size in voxels)."""
    a = np.full((80, 80, 80), 40.0, dtype=np.float32)
    a[:, :, :3] = -1000.0
    a[60, 61, 59] = 3071.0  # world (15, 15.25, 14.75) mm: inside the box, between element nodes
    ct = CTImage.from_array(a, spacing=(0.25, 0.25, 0.25), unit="HU")
    rep = metal_near_mesh(ct, _mesh())
    assert rep.n_voxels == 1 and np.allclose(rep.centre_mm, [15.0, 15.25, 14.75])


def test_clinical_ct_left_femur_with_implant_is_refused_right_is_not(tmp_path, capsys):
    d = require_shared("ct_totalseg_example")
    ct_path = d / "example_ct.nii.gz"
    rc = main(["run", "sideways_fall", "--ct", str(ct_path), "--calibration", "internal",
               "--mask", str(d / "example_seg" / "femur_left.nii.gz"), "-o", str(tmp_path / "left")])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert len(err.splitlines()) == 1  # one line, no traceback
    # the scan has 429 voxels above 2500 HU, all within one voxel of the femur_left mask (counted on
    # the mask with a 3x3x3 dilation); the implant is in the left hip (+x in LPS)
    assert "metal in femur_left.nii.gz: 429 CT voxels above 2500 HU" in err
    assert "another bone" in err and "leaves out the implant" in err
    centre = [float(v) for v in err.split("centred at (")[1].split(")")[0].split(",")]
    assert centre[0] > 50
    # the right femur covers no metal: the same check on its mesh passes
    ct = ff.read_ct(ct_path)
    mask = read_mask(d / "example_seg" / "femur_right.nii.gz", reference=ct)
    mesh = ff.bone.hexmesh_from_mask(mask, ct)
    rep = check_metal(ct, mesh, where="femur_right")
    assert rep.n_voxels == 0 and rep.n_metal_in_ct == 429
