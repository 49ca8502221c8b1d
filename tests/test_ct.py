"""CT volumes: geometry, readers/writers, unit checks, NaN reporting, masks."""
from __future__ import annotations

import gzip
import logging
import struct

import numpy as np
import pytest
from conftest import gias3_file, require_shared

import femur_fe as ff
from femur_fe.errors import CTError


def _rotation(rng) -> np.ndarray:
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    return q  # orthonormal, det +-1


def _hu_volume(shape=(12, 10, 8), rng=None) -> np.ndarray:
    rng = rng or np.random.default_rng(0)
    a = rng.normal(40.0, 300.0, size=shape)
    a.flat[0] = -1000.0  # air
    a.flat[-1] = 1500.0  # cortical bone
    return a


# ------------------------------------------------------------------ geometry
def test_affine_and_world_index_roundtrip(rng):
    d = _rotation(rng)
    ct = ff.io.CTImage.from_array(_hu_volume(), spacing=(0.5, 0.7, 1.3), origin=(10.0, -20.0, 5.0), direction=d)
    a = ct.affine
    assert np.allclose(a[:3, :3], d @ np.diag([0.5, 0.7, 1.3]), atol=1e-15)
    assert np.allclose(a[:3, 3], [10.0, -20.0, 5.0])
    ijk = rng.uniform(-1, 12, size=(50, 3))
    xyz = ct.world_from_index(ijk)
    hom = np.c_[ijk, np.ones(50)] @ a.T
    assert np.allclose(xyz, hom[:, :3], atol=1e-12)
    assert np.allclose(ct.index_from_world(xyz), ijk, atol=1e-12)
    # voxel [0,0,0] centre is the origin
    assert np.allclose(ct.world_from_index([0, 0, 0]), ct.origin)


def test_bounds_and_orientation_of_flipped_image():
    ct = ff.io.CTImage.from_array(_hu_volume((4, 5, 6)), spacing=(2.0, 1.0, 3.0), origin=(0, 0, 0),
                               direction=np.diag([-1.0, -1.0, 1.0]))
    assert ct.orientation == "RAS"
    # i runs towards -x: voxel faces from +1 mm down to -(4-0.5)*2 = -7 mm
    assert np.allclose(ct.bounds, [[-7.0, -4.5, -1.5], [1.0, 0.5, 16.5]])


def test_bad_geometry_rejected():
    with pytest.raises(CTError, match="spacing"):
        ff.io.CTImage.from_array(_hu_volume(), spacing=(1.0, 0.0, 1.0))
    with pytest.raises(CTError, match="orthonormal"):
        ff.io.CTImage.from_array(_hu_volume(), direction=np.diag([1.0, 2.0, 1.0]))
    with pytest.raises(CTError, match="3-D"):
        ff.io.CTImage.from_array(np.zeros((4, 4)))


# ------------------------------------------------------------------ unit checks
@pytest.mark.parametrize("values,unit,match", [
    (np.linspace(0.0, 3.0, 60), "HU", "g/cm3"),          # densities declared as HU
    (np.linspace(20.0, 900.0, 60), "HU", "mg/cm3"),      # min > 0: not a body CT in HU
    (np.linspace(-1000.0, 1500.0, 60), "g/cm3", "mg/cm3"),
    (np.linspace(-1000.0, 1500.0, 60), "mg/cm3", "HU"),  # air at -1000: HU
    (np.linspace(0.0, 1.2, 60), "mg/cm3", "g/cm3"),
])
def test_unit_contradicting_values_raises(values, unit, match):
    with pytest.raises(CTError, match=match):
        ff.io.CTImage.from_array(values.reshape(3, 4, 5), unit=unit)
    # the escape hatch exists and is explicit
    ct = ff.io.CTImage.from_array(values.reshape(3, 4, 5), unit=unit, check_unit=False)
    assert ct.unit == unit


def test_auto_unit(tmp_path):
    arr = np.linspace(-0.1, 1.8, 60).reshape(3, 4, 5)
    np.save(tmp_path / "g.npy", arr)
    assert ff.read_ct(tmp_path / "g.npy", spacing=(1, 1, 1)).unit == "g/cm3"
    np.save(tmp_path / "hu.npy", _hu_volume())
    assert ff.read_ct(tmp_path / "hu.npy", spacing=(1, 1, 1)).unit == "HU"
    np.save(tmp_path / "amb.npy", np.linspace(-200.0, 1800.0, 60).reshape(3, 4, 5))
    with pytest.raises(CTError, match="cannot tell the unit"):
        ff.read_ct(tmp_path / "amb.npy", spacing=(1, 1, 1))
    assert ff.read_ct(tmp_path / "amb.npy", spacing=(1, 1, 1), unit="mg/cm3").unit == "mg/cm3"


def test_nan_voxels_counted_and_reported(tmp_path, caplog):
    a = _hu_volume()
    a[2, 3, 4] = np.nan
    a[5, 5, 5] = np.nan
    ct = ff.io.CTImage.from_array(a)
    assert ct.n_nan == 2
    assert ct.summary()["n_nan"] == 2
    assert np.isfinite(ct.value_range).all()
    ff.io.write_ct(tmp_path / "nan.mha", ct)
    with caplog.at_level(logging.WARNING, logger="femur_fe.io.ct"):
        back = ff.read_ct(tmp_path / "nan.mha")
    assert back.n_nan == 2
    assert "2 NaN voxels" in caplog.text


# ------------------------------------------------------------------ file formats
@pytest.mark.parametrize("name", ["ct.nii.gz", "ct.nii", "ct.nrrd", "ct.mha", "ct.mhd"])
def test_write_read_roundtrip_keeps_geometry(tmp_path, rng, name):
    d = _rotation(rng)
    if np.linalg.det(d) > 0:
        d[:, 0] *= -1  # a mirrored grid: the hardest case
    ct = ff.io.CTImage.from_array(_hu_volume(rng=rng).astype(np.float32), spacing=(0.6, 0.8, 2.5),
                               origin=(-100.0, 30.0, 700.0), direction=d, unit="HU")
    path = ff.io.write_ct(tmp_path / name, ct)
    back = ff.read_ct(path)
    assert back.unit == "HU"
    assert back.shape == ct.shape
    assert np.array_equal(back.array, ct.array)  # [i, j, k] order preserved
    # NIfTI stores the transform in float32 (sform): relative precision ~1e-7
    assert np.allclose(back.affine, ct.affine, atol=1e-4)
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert leftovers == []  # atomic write left no temporary files


def test_density_unit_stored_in_nrrd_header(tmp_path):
    ct = ff.io.CTImage.from_array(np.linspace(-150.0, 1200.0, 60).reshape(3, 4, 5), unit="mg/cm3")
    ff.io.write_ct(tmp_path / "d.nrrd", ct)
    assert ff.read_ct(tmp_path / "d.nrrd").unit == "mg/cm3"  # the range alone is ambiguous
    with pytest.raises(CTError, match="write_ct supports"):
        ff.io.write_ct(tmp_path / "d.npy", ct)


def test_index_order_against_voxel_positions(tmp_path):
    """A single bright voxel at [i, j, k] = [3, 1, 2] must land at its world position."""
    a = np.full((5, 4, 3), -1000.0)
    a[3, 1, 2] = 1000.0
    ct = ff.io.CTImage.from_array(a, spacing=(1.0, 2.0, 3.0), origin=(10.0, 20.0, 30.0))
    back = ff.read_ct(ff.io.write_ct(tmp_path / "p.nii.gz", ct))
    ijk = np.argwhere(back.array == 1000.0)[0]
    assert ijk.tolist() == [3, 1, 2]
    assert np.allclose(back.world_from_index(ijk), [13.0, 22.0, 36.0], atol=1e-4)


def test_npy_needs_spacing_and_reads_gias3_hip_image():
    path = gias3_file("hip_test_image.npy")
    with pytest.raises(CTError, match="spacing"):
        ff.read_ct(path)
    # the gias3 example ships no geometry; 1 mm isotropic is an assumption of this test
    ct = ff.read_ct(path, spacing=(1.0, 1.0, 1.0))
    raw = np.load(path)
    assert ct.shape == (60, 60, 60)
    assert ct.unit == "HU"  # guessed from air at -987 HU
    assert ct.value_range == (float(raw.min()), float(raw.max())) == (-987.0, 1551.0)
    assert np.array_equal(ct.array, raw.astype(np.float32))
    with pytest.raises(CTError, match="looks like"):
        ff.read_ct(path, spacing=(1.0, 1.0, 1.0), unit="g/cm3")


def test_dicom_series_folder(tmp_path):
    """Write a real DICOM series (int16 + rescale) with SimpleITK and read the folder back."""
    import SimpleITK as sitk

    rng = np.random.default_rng(3)
    hu = np.round(_hu_volume((6, 5, 4), rng)).astype(np.int16)  # [i, j, k]
    spacing = (0.7, 0.9, 2.0)
    origin = np.array([-50.0, 20.0, 100.0])
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    series = "1.2.826.0.1.3680043.2.1125.1.99999.1"
    for k in range(hu.shape[2]):
        sl = sitk.GetImageFromArray(hu[:, :, k].T.astype(np.int16))  # (j, i) array -> image (i, j)
        sl.SetSpacing(spacing[:2])
        pos = origin + np.array([0.0, 0.0, spacing[2] * k])
        tags = {
            "0008|0060": "CT", "0020|000e": series, "0020|000d": "1.2.826.0.1.3680043.2.1125.1.99999",
            "0008|0016": "1.2.840.10008.5.1.4.1.1.2", "0008|0018": f"{series}.{k + 1}",
            "0020|0032": "\\".join(f"{v:.4f}" for v in pos), "0020|0037": "1\\0\\0\\0\\1\\0",
            "0020|0013": str(k + 1), "0018|0050": f"{spacing[2]:.4f}",
            "0028|1052": "0", "0028|1053": "1",
        }
        for key, val in tags.items():
            sl.SetMetaData(key, val)
        writer.SetFileName(str(tmp_path / f"slice{k:03d}.dcm"))
        writer.Execute(sl)
    ct = ff.read_ct(tmp_path)
    assert ct.unit == "HU"  # from the DICOM modality
    assert ct.shape == hu.shape
    assert np.array_equal(ct.array, hu.astype(np.float32))
    assert np.allclose(ct.spacing, spacing, atol=1e-4)
    assert np.allclose(ct.origin, origin, atol=1e-4)
    assert np.allclose(ct.direction, np.eye(3), atol=1e-6)
    with pytest.raises(CTError, match="DICOM headers"):
        ff.read_ct(tmp_path, spacing=(1, 1, 1))


def test_missing_and_unsupported_files(tmp_path):
    with pytest.raises(CTError, match="no such file"):
        ff.read_ct(tmp_path / "absent.nii.gz")
    (tmp_path / "x.txt").write_text("hello")
    with pytest.raises(CTError, match="unsupported"):
        ff.read_ct(tmp_path / "x.txt")


# ------------------------------------------------------------------ real data
def _nifti_sform(path) -> np.ndarray:
    """RAS sform of a NIfTI-1 header read with struct (independent of SimpleITK)."""
    with gzip.open(path, "rb") as fh:
        hdr = fh.read(348)
    assert struct.unpack("<i", hdr[:4])[0] == 348
    rows = [struct.unpack("<4f", hdr[o:o + 16]) for o in (280, 296, 312)]
    return np.vstack([np.array(rows), [0, 0, 0, 1]])


def test_totalseg_ct_geometry_and_frame():
    path = require_shared("ct_totalseg_example", "example_ct.nii.gz")
    ct = ff.read_ct(path)
    assert ct.shape == (122, 101, 112)
    assert np.allclose(ct.spacing, 3.0)
    assert ct.unit == "HU"
    assert ct.value_range == (-1207.0, 3382.0)  # PROVENANCE.md
    assert ct.orientation == "RAS"  # nib.aff2axcodes = R,A,S per PROVENANCE.md
    # LPS affine = diag(-1,-1,1,1) @ RAS sform of the file header
    assert np.allclose(ct.affine, ff.io.ct.LPS_FROM_RAS @ _nifti_sform(path), atol=1e-3)


def test_verse_density_ct_needs_explicit_unit():
    path = require_shared("ct_verse004_L2_density", "sub-verse004_0000_vertebra_21_im.nii.gz")
    with pytest.raises(CTError, match="cannot tell the unit"):
        ff.read_ct(path)  # -214..1894 could be HU or mg/cm3: refuse to guess
    ct = ff.read_ct(path, unit="mg/cm3")
    assert ct.shape == (100, 89, 74)
    lo, hi = ct.value_range
    assert lo == pytest.approx(-214.258, abs=1e-3) and hi == pytest.approx(1893.543, abs=1e-3)
    assert np.allclose(ct.density_g_cm3().max(), hi / 1000.0)
    with pytest.raises(CTError, match="looks like"):
        ff.read_ct(path, unit="g/cm3")


# ------------------------------------------------------------------ masks
def test_read_mask_label_file_and_threshold():
    base = require_shared("ct_totalseg_example")
    ct = ff.read_ct(base / "example_ct.nii.gz")
    femur = ff.io.read_mask(base / "example_seg" / "femur_right.nii.gz", reference=ct)
    assert femur.dtype == bool and femur.shape == ct.shape
    assert int(femur.sum()) == 3782  # PROVENANCE.md
    assert np.median(ct.array[femur]) == pytest.approx(154, abs=2)  # HU p50 per PROVENANCE.md
    bone = ff.io.read_mask(base / "example_seg" / "femur_right.nii.gz", threshold=200.0, reference=ct)
    assert 0 < bone.sum() < femur.sum()
    assert np.all(ct.array[bone] >= 200.0)
    thr = ff.io.read_mask(threshold=(200.0, 1000.0), reference=ct)
    assert np.all((ct.array[thr] >= 200) & (ct.array[thr] <= 1000))
    with pytest.raises(CTError, match="empty"):
        ff.io.read_mask(threshold=5000.0, reference=ct)
    with pytest.raises(CTError, match="no voxel has label"):
        ff.io.read_mask(base / "example_seg" / "femur_right.nii.gz", label=7, reference=ct)


def test_mask_on_another_grid_is_refused():
    ct = ff.read_ct(require_shared("ct_totalseg_example", "example_ct.nii.gz"))
    other = require_shared("ct_verse004_L2_density", "sub-verse004_0000_vertebra_21_seg.nii.gz")
    with pytest.raises(CTError, match=r"shape .*spacing .*origin .*direction"):
        ff.io.read_mask(other, reference=ct)
    with pytest.raises(CTError, match="shape"):
        ff.io.read_mask(np.ones((3, 3, 3), dtype=bool), reference=ct)


def test_mask_with_shifted_origin_names_the_difference(tmp_path):
    ct = ff.io.CTImage.from_array(_hu_volume((6, 6, 6)), spacing=(1, 1, 1))
    lab = ff.io.CTImage.from_array(np.ones((6, 6, 6)), spacing=(1, 1, 1), origin=(0, 0, 2.0), check_unit=False)
    ff.io.write_ct(tmp_path / "lab.nrrd", lab)
    with pytest.raises(CTError, match="origin") as exc:
        ff.io.read_mask(tmp_path / "lab.nrrd", reference=ct)
    assert "shape" not in str(exc.value) and "spacing" not in str(exc.value)


# ------------------------------------------------------------------ femur-fe info
def _info(argv, capsys):
    import argparse

    from femur_fe.commands import info

    parser = argparse.ArgumentParser(prog="femur-fe")
    info.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["info", *map(str, argv)])
    rc = args.func(args)
    return rc, capsys.readouterr().out


def test_info_ct(tmp_path, capsys):
    a = _hu_volume((6, 5, 4))
    a[1, 1, 1] = np.nan
    ct = ff.io.CTImage.from_array(a, spacing=(0.5, 0.5, 2.0), direction=np.diag([-1.0, 1.0, 1.0]))
    ff.io.write_ct(tmp_path / "v.nrrd", ct)
    rc, out = _info([tmp_path / "v.nrrd"], capsys)
    assert rc == 0
    assert "6 x 5 x 4" in out and "(0.5, 0.5, 2) mm" in out and "RPS" in out and "NaN voxels:  1" in out
    rc, out = _info([tmp_path / "v.nrrd", "--json"], capsys)
    import json

    d = json.loads(out)
    assert d["kind"] == "ct" and d["unit"] == "HU" and d["n_nan"] == 1
    assert d["value_min"] == pytest.approx(np.nanmin(a)) and d["value_max"] == pytest.approx(np.nanmax(a))
    np.save(tmp_path / "v.npy", a)
    rc, out = _info([tmp_path / "v.npy", "--spacing", 1, 1, 1, "--json"], capsys)
    assert json.loads(out)["spacing_mm"] == [1.0, 1.0, 1.0]


def test_info_surface_and_mesh(tmp_path, capsys):
    import json

    import pyvista as pv

    pv.Sphere(radius=20.0).save(tmp_path / "ball.stl")
    rc, out = _info([tmp_path / "ball.stl", "--json"], capsys)
    d = json.loads(out)
    assert d["kind"] == "surface" and d["watertight"] is True and d["n_triangles"] == pv.Sphere().n_cells
    assert d["units_guess"].startswith("mm")
    pv.Sphere(radius=0.02).clip("z").save(tmp_path / "cup.stl")  # open, and in metres
    rc, out = _info([tmp_path / "cup.stl"], capsys)
    assert "watertight:  no" in out and "metres?" in out

    ct = ff.io.CTImage.from_array(_hu_volume((6, 6, 6)), spacing=(1.0, 1.0, 1.0))
    mask = np.zeros(ct.shape, dtype=bool)
    mask[1:5, 1:4, 2:5] = True
    ff.write_mesh(tmp_path / "vox.vtu", ff.bone.hexmesh_from_mask(mask, ct))
    rc, out = _info([tmp_path / "vox.vtu"], capsys)
    assert rc == 0
    assert "hexahedron" in out and "36 cells" in out and "status:      OK" in out and "hu" in out
    d = json.loads(_info([tmp_path / "vox.vtu", "--json"], capsys)[1])
    assert d["volume"] == pytest.approx(36.0) and d["min_scaled_jacobian"] == pytest.approx(1.0)
    with pytest.raises(FileNotFoundError):
        _info([tmp_path / "none.vtu"], capsys)
