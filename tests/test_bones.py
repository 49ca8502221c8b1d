"""Parametric default bones and their synthetic QCT volumes.

Geometry is checked by measuring landmarks back from the generated surfaces (sphere fits,
cross-section centroids) against the parameters; densities by region means of the stored
volumes against the documented state values; the committed files in ``meshes/`` are
checked to be exactly what the generator produces now (nothing stale).
"""
from __future__ import annotations

import json

import numpy as np
import pytest

import femur_fe as ff
from femur_fe.bone.bundled import (
    STATE_DENSITIES,
    STATES,
    SYNTHETIC_CALIBRATION,
    FemurParams,
    VertebraParams,
    _anat_from_world,
    _FemurGeom,
    hu_from_k2hpo4_mg,
    k2hpo4_mg_from_hu,
)
from femur_fe.bone.anatomy import femur_frame, fit_sphere
from femur_fe.errors import FemurFeError
from femur_fe.io.ct import read_ct


@pytest.fixture(scope="module")
def femur():
    return ff.bone.make_femur(element_size=3.0)


@pytest.fixture(scope="module")
def vertebra():
    return ff.bone.make_vertebra()   # the bundled resolution (2 mm): also compared with meshes/


def _angle_deg(a, b):
    return float(np.degrees(np.arccos(np.clip(a @ b / np.linalg.norm(a) / np.linalg.norm(b), -1, 1))))


# --------------------------------------------------------------------------- femur geometry
def test_femur_mesh_valid_and_closed(femur):
    assert femur.surface.is_watertight and femur.surface.topology().euler == 2
    rep = femur.mesh.validate()
    assert rep.ok and femur.mesh.jacobian_determinants().min() > 0
    # the tet mesh fills the surface (TetGen keeps the input surface)
    assert femur.mesh.cell_volumes().sum() == pytest.approx(femur.surface.volume, rel=1e-6)
    assert 150e3 < femur.surface.volume < 300e3            # 150-300 cm^3 for a 21 cm proximal femur
    assert len(femur.mesh.node_sets["distal_cut"]) > 20


def test_femur_head_centre_and_radius(femur):
    fp = femur.params
    p = femur.surface.points
    n = femur.landmarks["neck_axis"]
    c0 = femur.landmarks["head_centre"]
    d = p - c0
    # head cap: points away from the neck side (> 70 deg from the neck direction)
    cap = (np.linalg.norm(d, axis=1) < fp.head_diameter_mm) & (d @ -n < np.cos(np.radians(70)) * np.linalg.norm(d, axis=1))
    c, r, _ = fit_sphere(p[cap])
    # surface vertices lie on the implicit surface (Newton projection): sub-0.1 mm agreement
    np.testing.assert_allclose(c, [0.0, 0.0, 0.0], atol=0.1)
    assert r == pytest.approx(fp.head_diameter_mm / 2, abs=0.1)
    # the independent geometric landmark finder agrees within 2 mm
    lm = femur_frame((femur.surface.points, femur.surface.faces))
    assert np.linalg.norm(lm.head_centre - c0) < 2.0
    assert abs(lm.head_radius - r) < 1.5


def _section(bone, origin, normal, max_radius):
    """Cut the surface with a plane; return the contour segments (midpoints, lengths) within
    ``max_radius`` of ``origin`` (an exact polyline, independent of the vertex density)."""
    cut = bone.surface.to_pyvista().slice(normal=tuple(normal), origin=tuple(origin))
    lines = np.asarray(cut.lines).reshape(-1, 3)[:, 1:]
    a, b = cut.points[lines[:, 0]], cut.points[lines[:, 1]]
    mid, length = 0.5 * (a + b), np.linalg.norm(b - a, axis=1)
    keep = np.linalg.norm(mid - origin, axis=1) < max_radius
    return mid[keep], length[keep]


def _axis_through_sections(bone, points_on_axis, direction, max_radius):
    cents = []
    for o in points_on_axis:
        mid, length = _section(bone, o, direction, max_radius)
        cents.append((mid * length[:, None]).sum(axis=0) / length.sum())
    cents = np.array(cents)
    _, _, vt = np.linalg.svd(cents - cents.mean(axis=0))
    return (vt[0] if vt[0] @ direction > 0 else -vt[0]), cents


def _neck_axis_measured(bone):
    """Neck axis as in radiographic morphometry: from the head centre (sphere fit) through the
    centroid of the narrowest neck cross-section (the isthmus); planes normal to the nominal
    neck direction, 0.9 to 1.6 head radii from the head centre."""
    n = bone.landmarks["neck_axis"]
    R = bone.params.head_diameter_mm / 2
    p = bone.surface.points
    d = p - bone.landmarks["head_centre"]
    cap = (np.linalg.norm(d, axis=1) < 2 * R) & (d @ -n < np.cos(np.radians(70)) * np.linalg.norm(d, axis=1))
    centre, _, _ = fit_sphere(p[cap])
    best = None
    for t in np.linspace(0.9 * R, 1.6 * R, 8):
        mid, length = _section(bone, centre - t * n, n, 25.0)
        if best is None or length.sum() < best[0]:
            best = (length.sum(), (mid * length[:, None]).sum(axis=0) / length.sum())
    axis = centre - best[1]
    return axis / np.linalg.norm(axis), best[1]


def _shaft_axis_measured(bone):
    c = bone.landmarks["shaft_axis_point"]
    origins = [c + np.array([0.0, 0.0, z]) for z in np.linspace(-170, -110, 7)]
    axis, _ = _axis_through_sections(bone, origins, np.array([0.0, 0.0, 1.0]), 40.0)
    return axis


@pytest.mark.parametrize("nsa", [None, 138.0])
def test_neck_shaft_angle_measured_back(femur, nsa):
    bone = femur if nsa is None else ff.bone.make_femur(element_size=3.0, neck_shaft_angle_deg=nsa)
    neck, _ = _neck_axis_measured(bone)
    shaft = _shaft_axis_measured(bone)
    measured = _angle_deg(neck, -shaft)
    # 3-D neck-shaft angle within 1.5 degrees (the smooth blends shift the isthmus centroid by
    # a few tenths of a mm; 1 mm over the ~23 mm lever arm would be 2.5 degrees)
    assert measured == pytest.approx(bone.params.neck_shaft_angle_deg, abs=1.5)
    np.testing.assert_allclose(shaft, [0, 0, 1], atol=0.01)


def test_femur_anatomy_is_recognisable(femur):
    p = femur.surface.points
    q = _anat_from_world(p, "right")        # X lateral, Y anterior, Z superior
    g = _FemurGeom(femur.params)
    R = g.R
    # neck narrower than the head: the smallest neck cross-section is below the head diameter
    n = femur.landmarks["neck_axis"]
    widths = []
    for t in np.linspace(1.1 * R, 1.6 * R, 6):
        mid, _ = _section(femur, -t * n, n, 25.0)
        widths.append(max(np.linalg.norm(mid[:, None] - mid[None], axis=2).max(), 0.0))
    assert min(widths) < 0.8 * femur.params.head_diameter_mm
    # greater trochanter: the most lateral bone above the neck-shaft junction is lateral of the shaft
    upper = q[:, 2] > g.p0[2]
    i_gt = np.argmax(q[upper, 0])
    gt = q[upper][i_gt]
    assert gt[0] > g.axis_xy[0] + g.rs          # lateral of the shaft surface
    assert gt[2] > g.p0[2] + 10                  # superior
    # lesser trochanter: on the medial half, the largest radial prominence 45-75 mm below the
    # head centre is posterior and stands out of the shaft
    band = (q[:, 2] < -45) & (q[:, 2] > -75) & (q[:, 0] < g.axis_xy[0])
    rad = q[band, :2] - g.axis_xy
    k = np.argmax(np.linalg.norm(rad, axis=1))
    assert rad[k, 1] < 0                         # posterior (-Y)
    assert np.linalg.norm(rad[k]) > g.rs + 4.0
    # shaft: a round tube of the given diameter at the distal end, widening by 10 % towards the
    # neck (FemurParams docstring); exact section at z = -140 mm
    cut = femur.surface.to_pyvista().slice(normal=(0, 0, 1), origin=(0, 0, -140.0))
    rr = np.linalg.norm(cut.points[:, :2] - femur.landmarks["shaft_axis_point"][:2], axis=1)
    z0, z1 = g.z_cut - 20.0, g.p0[2] + 5.0
    expected = g.rs * (1 + 0.1 * (-140.0 - z0) / (z1 - z0))
    assert rr.mean() == pytest.approx(expected, abs=0.1) and rr.std() < 0.1
    # right femur in LPS: the head (medial) is at larger x than the greater trochanter
    assert femur.landmarks["head_centre"][0] > femur.landmarks["greater_trochanter"][0]


@pytest.mark.slow
def test_left_femur_is_mirror(femur):
    left = ff.bone.make_femur(element_size=3.0, side="left")
    np.testing.assert_allclose(left.surface.bounds[:, 0], -femur.surface.bounds[::-1, 0], atol=0.05)
    np.testing.assert_allclose(left.surface.bounds[:, 1:], femur.surface.bounds[:, 1:], atol=0.05)
    assert left.mesh.validate().ok
    assert left.mesh.cell_volumes().sum() == pytest.approx(femur.mesh.cell_volumes().sum(), rel=0.01)


def test_bad_parameters_are_rejected():
    with pytest.raises(FemurFeError, match="narrower than the head"):
        ff.bone.make_femur(neck_diameter_mm=50.0)
    with pytest.raises(FemurFeError, match="unknown FemurParams"):
        ff.bone.make_femur(neck_lenght_mm=50.0)
    with pytest.raises(FemurFeError, match="neck_shaft_angle_deg"):
        FemurParams(neck_shaft_angle_deg=90.0)
    with pytest.raises(FemurFeError, match="side"):
        ff.bone.make_femur(side="middle")
    with pytest.raises(FemurFeError, match="body_width_mm"):
        VertebraParams(body_width_mm=-3.0)


# --------------------------------------------------------------------------- vertebra geometry
def test_vertebra_geometry(vertebra):
    vp = vertebra.params
    s = vertebra.surface
    assert s.is_watertight and s.topology().euler == 0        # genus 1: the vertebral foramen
    assert vertebra.mesh.validate().ok
    p = s.points
    h = vp.body_height_mm / 2
    # endplate centres are concave by endplate_concavity_mm
    axis_pts = p[np.hypot(p[:, 0], p[:, 1]) < 2.0]
    assert axis_pts[:, 2].max() == pytest.approx(h - vp.endplate_concavity_mm, abs=0.2)
    assert axis_pts[:, 2].min() == pytest.approx(-h + vp.endplate_concavity_mm, abs=0.2)
    rim = p[(np.abs(p[:, 1]) < 3.0) & (np.abs(p[:, 0]) > 0.8 * vp.body_width_mm / 2) & (p[:, 1] < 0)]
    assert rim[:, 2].max() > h - 0.8          # the rim rises above the concave centre
    # body width 3 mm below the endplate rim (exact contour of a horizontal section)
    cut = s.to_pyvista().slice(normal=(0, 0, 1), origin=(0, 0, h - 3.0))
    body = cut.points[cut.points[:, 1] < 0]   # anterior half (-y in LPS): no posterior elements
    width = body[:, 0].max() - body[:, 0].min()
    waist = vp.waist_mm * (1 - ((h - 3.0) / h) ** 2)
    assert width == pytest.approx(vp.body_width_mm - 2 * waist, abs=0.3)
    # anterior-most point of the body at -depth/2; posterior elements behind (+y)
    # (the waist and the 3 mm rim fillet keep the surface up to ~0.6 mm inside the nominal depth)
    assert p[:, 1].min() == pytest.approx(-vp.body_depth_mm / 2, abs=0.8)
    assert p[:, 1].max() > vp.body_depth_mm / 2 + 30


def test_vertebra_regeneration_is_deterministic_and_bundle_is_current(vertebra):
    again = ff.bone.make_vertebra()
    np.testing.assert_array_equal(again.mesh.points, vertebra.mesh.points)
    np.testing.assert_array_equal(again.mesh.cells, vertebra.mesh.cells)
    bundled = ff.read_mesh(ff.bundled_bone("vertebra", "healthy").mesh)
    np.testing.assert_allclose(bundled.points, vertebra.mesh.points, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(bundled.cells, vertebra.mesh.cells)


# --------------------------------------------------------------------------- bundled files and QCT
def _region_means(name):
    """Mean K2HPO4 density (mg/cm^3) of fixed regions in each stored state volume."""
    out = {}
    for st in STATES:
        paths = ff.bundled_bone(name, st)
        ct = read_ct(paths.ct, unit="HU")
        rho = k2hpo4_mg_from_hu(ct.array)
        idx = np.indices(ct.shape).reshape(3, -1).T
        x = ct.world_from_index(idx).reshape(ct.shape + (3,))
        if name == "vertebra":
            vp = VertebraParams()
            q = _anat_from_world(x, "left")
            core = (np.abs(q[..., 2]) < vp.body_height_mm / 2 - 5) & (q[..., 1] > -vp.body_depth_mm / 2 + 6) \
                & (np.hypot(q[..., 0] / (vp.body_width_mm / 2 - 6), (q[..., 1]) / (vp.body_depth_mm / 2 - 6)) < 1)
            out[st] = {"trabecular": float(rho[core].mean()), "max": float(rho.max())}
        else:
            g = _FemurGeom(FemurParams())
            q = _anat_from_world(x, "right")
            r = np.hypot(q[..., 0] - g.axis_xy[0], q[..., 1] - g.axis_xy[1])
            shaft = np.abs(q[..., 2] + 150) < 20
            n = g.n
            t = -(q @ n)
            neck = (t > 1.15 * g.R) & (t < 1.5 * g.R) & (np.linalg.norm(q + t[..., None] * n, axis=-1) < 8.0)
            out[st] = {"neck": float(rho[neck].mean()), "cortex_ring": float(rho[shaft & (r > g.rs - 1.6) & (r < g.rs - 0.6)].mean()),
                       "cortical_voxels": int((shaft & (rho > 600)).sum()), "shape": ct.shape}
    return out


def test_bundled_files_small_and_consistent():
    for name in ("femur", "vertebra"):
        for st in STATES:
            paths = ff.bundled_bone(name, st)
            for p in paths:
                assert p.exists()
            assert paths.mesh.stat().st_size < 5e6 and paths.ct.stat().st_size < 5e6
            mesh = ff.read_mesh(paths.mesh)
            assert mesh.validate().ok and mesh.cell_type == "tetra"
            if name == "femur":
                assert 20_000 <= mesh.n_points <= 60_000
            ct = read_ct(paths.ct, unit="HU")
            assert ct.array.dtype == np.float32 and np.allclose(ct.array, np.rint(ct.array))
            assert np.allclose(ct.spacing, 1.0)
            # the CT covers the mesh with a margin
            lo, hi = ct.bounds
            assert np.all(mesh.bounds[0] > lo + 2) and np.all(mesh.bounds[1] < hi - 2)
        info = json.loads(paths.info.read_text())
        assert info["name"] == name and info["generator_version"] >= 1
    cal = json.loads(ff.bundled_bone("femur", "healthy").calibration.read_text())
    assert cal == json.loads(json.dumps(SYNTHETIC_CALIBRATION))
    from femur_fe.bone.calibration import DensityCalibration

    dc = DensityCalibration.from_dict(cal)
    ct, dc2 = ff.bone.load_bundled_qct("vertebra", "healthy")
    assert ct.unit == "HU" and dc2 == dc
    # 1000 mg/cm^3 K2HPO4 <-> HU round trip through both implementations
    hu = hu_from_k2hpo4_mg(1000.0)
    assert float(dc.density(hu)) * 1000 == pytest.approx(1000.0, rel=1e-12)


def test_vertebra_states_match_acr_categories():
    m = _region_means("vertebra")
    # documented means (meshes/README.md): 170 / 100 / 65 mg/cm^3 K2HPO4 within 8 %
    for st, target in (("healthy", 170.0), ("osteopenic", 100.0), ("osteoporotic", 65.0)):
        assert m[st]["trabecular"] == pytest.approx(target, rel=0.08)
    # ACR QCT categories: normal > 120, low bone mass 80-120, osteoporosis < 80
    assert m["healthy"]["trabecular"] > 120
    assert 80 <= m["osteopenic"]["trabecular"] <= 120
    assert m["osteoporotic"]["trabecular"] < 80


def test_femur_states_ordered_with_cortex():
    m = _region_means("femur")
    assert m["healthy"]["neck"] > m["osteopenic"]["neck"] > m["osteoporotic"]["neck"]
    # the cortical ring of the diaphysis carries the state's cortical density (noise averages out)
    for st in STATES:
        assert m[st]["cortex_ring"] == pytest.approx(STATE_DENSITIES["femur"][st]["cortical"], rel=0.03)
    # thinner cortex in osteoporosis: fewer voxels above 600 mg/cm^3 in the same shaft band
    c = [m[st]["cortical_voxels"] for st in STATES]
    assert c[0] > c[1] > c[2]
    assert c[2] < 0.75 * c[0]


def test_synthetic_qct_is_deterministic_and_bundle_is_current():
    ct = ff.bone.synthetic_qct("vertebra", "osteoporotic")
    again = ff.bone.synthetic_qct("vertebra", "osteoporotic")
    np.testing.assert_array_equal(ct.array, again.array)
    stored = read_ct(ff.bundled_bone("vertebra", "osteoporotic").ct, unit="HU")
    np.testing.assert_array_equal(stored.array, ct.array)
    np.testing.assert_allclose(stored.origin, ct.origin)
    with pytest.raises(FemurFeError, match="state"):
        ff.bone.synthetic_qct("vertebra", "fragile")


def test_cli_make_bone(tmp_path):
    from femur_fe.commands.cli import main

    rc = main(["make-bone", "vertebra", "-o", str(tmp_path), "--state", "healthy", "--size", "4",
               "--param", "body_height_mm=30", "--param", "posterior_elements=false"])
    assert rc == 0
    info = json.loads((tmp_path / "vertebra_L3.json").read_text())
    assert info["params"]["body_height_mm"] == 30.0 and info["params"]["posterior_elements"] is False
    assert (tmp_path / "vertebra_L3_healthy_qct.nii.gz").exists()
    assert not (tmp_path / "vertebra_L3_osteopenic_qct.nii.gz").exists()
    mesh = ff.read_mesh(tmp_path / "vertebra_L3.vtu")
    assert mesh.validate().ok
    # height between the rims (rounded by the 3 mm endplate fillet; default height 28)
    assert mesh.bounds[1, 2] - mesh.bounds[0, 2] == pytest.approx(30.0, abs=1.0)


def test_meshes_dir_lookup_order(tmp_path, monkeypatch):
    import shutil

    from femur_fe.bone.bundled import bundled_file_names, meshes_dir

    src = ff.bundled_bone("vertebra", "healthy")
    for p in src:
        shutil.copy(p, tmp_path / p.name)
    monkeypatch.setenv("FEMUR_FE_MESHES", str(tmp_path))
    assert meshes_dir() == tmp_path
    assert ff.bundled_bone("vertebra", "healthy").mesh == tmp_path / bundled_file_names("vertebra", "healthy")["mesh"]
    with pytest.raises(FemurFeError, match="bundled files missing"):
        ff.bundled_bone("femur", "healthy")            # not copied
    # an environment folder without the bundle falls back to the package / source tree
    monkeypatch.setenv("FEMUR_FE_MESHES", str(tmp_path / "empty"))
    assert meshes_dir() != tmp_path and ff.bundled_bone("femur", "healthy").mesh.exists()
    with pytest.raises(FemurFeError, match="name"):
        ff.bundled_bone("tibia")
