"""Anatomical frames from geometry alone: synthetic femur with known landmarks, the shared
whole femur (any pose, mirrored), proximal cuts, lumbar vertebrae; failures name the landmark."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from femur_fe.bone.anatomy import femur_frame, fit_sphere, vertebra_frame
from femur_fe.errors import RegionError

# --------------------------------------------------------------------------- synthetic femur
# A right femur in RAS-like coordinates (x patient right, y anterior, z superior), mm:
# spherical head on an anteverted neck, cylindrical shaft with a flat distal cut, a
# greater trochanter lateral to the neck and a lesser trochanter posteromedial below it.
HEAD_C = np.array([-40.0, 8.0, 30.0])
HEAD_R = 22.0


def _sd_capsule(p, a, b, r):
    ab = b - a
    t = np.clip(((p - a) @ ab) / (ab @ ab), 0, 1)
    return np.linalg.norm(p - (a + t[:, None] * ab), axis=1) - r


def synthetic_femur(spacing: float = 1.5):
    """(points, faces) of the synthetic right femur surface (marching cubes of an SDF union)."""
    import pyvista as pv

    lo, hi = np.array([-72.0, -40.0, -152.0]), np.array([40.0, 40.0, 62.0])
    dims = np.ceil((hi - lo) / spacing).astype(int) + 1
    grid = pv.ImageData(dimensions=dims, spacing=(spacing,) * 3, origin=lo)
    p = np.asarray(grid.points)
    shaft = np.maximum(np.linalg.norm(p[:, :2], axis=1) - 14.0, np.maximum(-150.0 - p[:, 2], p[:, 2] - 10.0))
    neck = _sd_capsule(p, np.array([0.0, 0.0, 0.0]), HEAD_C, 12.5)
    head = np.linalg.norm(p - HEAD_C, axis=1) - HEAD_R
    top = np.linalg.norm(p - np.array([0.0, 0.0, 5.0]), axis=1) - 16.0
    gt = np.linalg.norm((p - np.array([12.0, -4.0, 18.0])) / np.array([1.0, 1.0, 1.4]), axis=1) - 13.0
    lt = np.linalg.norm(p - np.array([-12.0, -12.0, -25.0]), axis=1) - 8.0
    sdf = np.minimum.reduce([shaft, neck, head, top, gt, lt])
    grid.point_data["sdf"] = sdf
    surf = grid.contour([0.0], scalars="sdf").triangulate().clean()
    faces = np.asarray(surf.faces).reshape(-1, 4)[:, 1:]
    return np.asarray(surf.points, dtype=float), faces


@pytest.fixture(scope="module")
def synth():
    return synthetic_femur()


@pytest.fixture(scope="module")
def synth_frame(synth):
    return femur_frame(synth)


MIRROR = np.diag([-1.0, 1.0, 1.0])


def _rot(seed):
    return Rotation.random(random_state=seed).as_matrix()


def test_sphere_fit_exact():
    rng = np.random.default_rng(0)
    v = rng.normal(size=(200, 3))
    v /= np.linalg.norm(v, axis=1)[:, None]
    c, r, rms = fit_sphere(3.0 + 7.5 * v)
    assert np.allclose(c, 3.0, atol=1e-10) and abs(r - 7.5) < 1e-10 and rms < 1e-10


def test_synthetic_femur_landmarks(synth):
    fr = femur_frame(synth)
    # marching cubes at 1.5 mm reproduces the sphere to a fraction of the spacing
    assert np.linalg.norm(fr.head_centre - HEAD_C) < 0.3
    assert abs(fr.head_radius - HEAD_R) < 0.3
    assert fr.side == "right"
    assert fr.shaft_axis @ [0, 0, 1] > np.cos(np.radians(1.0))
    # the frame is right-handed and RAS-like: x patient right, y anterior, z proximal
    assert np.allclose(fr.basis @ fr.basis.T, np.eye(3), atol=1e-12)
    assert np.linalg.det(fr.basis) > 0
    # anterior: normal of the shaft-neck plane; the neck is anteverted, so y tilts by atan(8/40)
    assert fr.anterior @ [0, 1, 0] > np.cos(np.radians(12.0))
    assert fr.medial @ [-1, 0, 0] > np.cos(np.radians(12.0))
    # neck-shaft angle of the construction: angle between (HEAD_C - (0,0,0)) and -z
    nsa = np.degrees(np.arccos(-HEAD_C[2] / np.linalg.norm(HEAD_C)))
    assert abs(fr.neck_shaft_angle_deg - nsa) < 4.0
    # greater trochanter lateral (+x) and at the top; lesser trochanter posteromedial and low
    assert fr.greater_trochanter[0] > 15 and fr.greater_trochanter[2] > 15
    lt = fr.lesser_trochanter
    assert lt[0] < -10 and lt[1] < -10 and -40 < lt[2] < -10
    assert fr.anteversion_deg is None and not fr.whole_bone
    assert "lesser_trochanter" in fr.side_cues


@pytest.mark.parametrize("seed, mirror", [(1, False), (2, True), (3, True)])
def test_synthetic_femur_any_pose_either_side(synth, synth_frame, seed, mirror):
    pts, faces = synth
    ref = synth_frame
    m = (_rot(seed) @ MIRROR) if mirror else _rot(seed)
    t = np.array([100.0, -50.0, 7.0]) * seed
    fr = femur_frame((pts @ m.T + t, faces))
    assert fr.side == ("left" if mirror else "right")
    assert np.linalg.norm(fr.head_centre - (ref.head_centre @ m.T + t)) < 1e-6
    # z, anterior and medial are anatomical: they transform with the bone, mirrored or not
    for name in ("proximal", "anterior", "medial"):
        assert np.allclose(getattr(fr, name), getattr(ref, name) @ m.T, atol=1e-6), name
    assert np.linalg.det(fr.basis) > 0
    assert np.allclose(fr.greater_trochanter, ref.greater_trochanter @ m.T + t, atol=1e-6)


def test_side_override_and_point_cloud(synth, synth_frame):
    pts, faces = synth
    fr = femur_frame(pts[::2])  # bare surface points: normals from neighbours, no orientation
    assert fr.side == "right" and np.linalg.norm(fr.head_centre - HEAD_C) < 0.5
    forced = femur_frame(synth, side="left")
    assert forced.side == "left" and np.allclose(forced.anterior, -synth_frame.anterior)
    with pytest.raises(RegionError, match="side must be"):
        femur_frame(synth, side="up")


# --------------------------------------------------------------------------- shared real femur
def _read(path, scale=1.0):
    import meshio

    m = meshio.read(path)
    f = np.vstack([c.data for c in m.cells if c.type == "triangle"])
    p, inv = np.unique(np.asarray(m.points, float) * scale, axis=0, return_inverse=True)
    return p, inv.ravel()[f]


@pytest.fixture(scope="module")
def real_femur():
    from conftest import require_shared

    return _read(require_shared("femur_gfxmorph", "femur.stl"))


@pytest.fixture(scope="module")
def real_frame(real_femur):
    return femur_frame(real_femur)


def test_whole_femur_frame(real_frame):
    fr = real_frame
    # femur_gfxmorph: head at the top (z about -57 .. -100), condyles at z about -471 (PROVENANCE)
    assert fr.whole_bone and fr.head_centre[2] > -100 and fr.distal_end[2] < -460
    assert 18 < fr.head_radius < 26 and fr.head_fit_rms < 0.05 * fr.head_radius
    assert fr.head_coverage > 0.6
    assert fr.shaft_axis[2] > 0.95
    # all four side cues agree (condyles posterior, lesser trochanter posteromedial, anterior bow,
    # greater trochanter posterior to the shaft-neck plane)
    assert set(fr.side_cues) == {"condyles", "lesser_trochanter", "anterior_bow", "greater_trochanter"}
    assert len({np.sign(v) for v in fr.side_cues.values()}) == 1
    # the file is a left femur in LPS scanner coordinates: lateral +x, posterior +y, superior +z
    assert fr.side == "left"
    assert fr.anterior[1] < -0.9 and fr.medial[0] < -0.9
    assert 115 < fr.neck_shaft_angle_deg < 140 and -5 < fr.anteversion_deg < 30
    assert fr.greater_trochanter[0] > fr.head_centre[0] + 30  # lateral of the head
    assert fr.lesser_trochanter[2] < fr.head_centre[2] - 1.5 * fr.head_radius


@pytest.mark.parametrize("seed, mirror", [(11, False), (12, True)])
def test_whole_femur_rotated_and_mirrored(real_femur, real_frame, seed, mirror):
    pts, faces = real_femur
    ref = real_frame
    if True:
        m = _rot(seed) @ MIRROR if mirror else _rot(seed)
        fr = femur_frame((pts @ m.T - 30.0, faces))
        assert fr.side == ("right" if mirror else "left")
        assert np.linalg.norm(fr.head_centre - (ref.head_centre @ m.T - 30.0)) < 1e-6
        assert np.allclose(fr.anterior, ref.anterior @ m.T, atol=1e-6)
        assert abs(fr.neck_shaft_angle_deg - ref.neck_shaft_angle_deg) < 1e-6


@pytest.mark.parametrize("cut_z", [-210.0])
def test_proximal_femur_cut(real_femur, real_frame, cut_z):
    import pyvista as pv

    pts, faces = real_femur
    poly = pv.PolyData(pts, np.hstack([np.full((len(faces), 1), 3), faces]).ravel())
    prox = poly.clip_closed_surface(normal=(0, 0, 1), origin=(0, 0, cut_z)).triangulate().clean()
    ref = real_frame
    fr = femur_frame(prox)
    assert not fr.whole_bone and fr.side == ref.side
    assert np.linalg.norm(fr.head_centre - ref.head_centre) < 0.5
    # the proximal shaft axis differs from the diaphysis chord of the bowed whole bone by a few degrees
    assert fr.shaft_axis @ ref.shaft_axis > np.cos(np.radians(10.0))


def test_short_proximal_femur_takes_the_cut_face_and_names_the_shaft_without_one(real_femur, real_frame):
    """A femur cut 71 mm below the head centre (24 mm below the lesser trochanter) has no shaft
    to slice: its flat cut face gives the shaft axis. Without a flat end (the cut face's points
    dropped from a bare point cloud) the refusal names the shaft and the override."""
    import pyvista as pv

    pts, faces = real_femur
    poly = pv.PolyData(pts, np.hstack([np.full((len(faces), 1), 3), faces]).ravel())
    prox = poly.clip_closed_surface(normal=(0, 0, 1), origin=(0, 0, -150.0)).triangulate().clean()
    fr = femur_frame(prox)
    assert fr.methods["shaft_axis"] == "cut_face_normal" and fr.side == real_frame.side
    assert fr.shaft_axis @ [0, 0, 1] > 1 - 1e-9  # the cut's normal
    assert np.linalg.norm(fr.head_centre - real_frame.head_centre) < 0.5
    assert fr.lesser_trochanter is not None and "lesser_trochanter" in fr.side_cues
    cloud = np.asarray(prox.points)
    with pytest.raises(RegionError, match="shaft axis not found.*no flat cut face.*anatomy.shaft_axis"):
        femur_frame(cloud[cloud[:, 2] > -149.0])


def test_non_femur_names_the_head():
    import pyvista as pv

    cube = pv.Cube(x_length=80, y_length=60, z_length=200).triangulate().subdivide(4)
    with pytest.raises(RegionError, match="femoral head not found.*node_set"):
        femur_frame(cube)
    with pytest.raises(RegionError, match="metres"):
        femur_frame(pv.Sphere(radius=0.02).triangulate())


# --------------------------------------------------------------------------- vertebrae
@pytest.fixture(scope="module")
def mean_l3():
    from conftest import require_shared

    return _read(require_shared("lumbar_mean_clouthier", "mean_L3.stl"))


@pytest.fixture(scope="module")
def body_l3():
    from conftest import require_shared

    return _read(require_shared("lumbar_vhm_remus", "L3_body.obj"), scale=1000.0)  # metres -> mm


def test_mean_l3_frame(mean_l3):
    fr = vertebra_frame(mean_l3)
    # PROVENANCE: z superior, bodies at +x (anterior), spinous processes at -x
    assert fr.posterior_elements and fr.anterior_method == "posterior_elements"
    assert fr.axis[2] > 0.95 and fr.anterior[0] > 0.95
    assert np.linalg.det(fr.basis) > 0 and np.allclose(fr.basis @ fr.basis.T, np.eye(3), atol=1e-12)
    # lumbar body dimensions (mm): height 25-35, depth 30-45, width 40-55
    assert 25 < fr.height_mm < 35 and 30 < fr.depth_mm < 45 and 40 < fr.width_mm < 55
    assert fr.superior_normal @ fr.axis > 0.9 and fr.inferior_normal @ fr.axis < -0.9
    assert fr.body_centre[0] > 0  # the body is anterior


@pytest.mark.parametrize("seed", [21])
def test_mean_l3_any_pose(mean_l3, seed):
    pts, faces = mean_l3
    ref = vertebra_frame(mean_l3)
    m = _rot(seed)
    fr = vertebra_frame((pts @ m.T + 5.0, faces))
    assert np.allclose(fr.basis, ref.basis @ m.T, atol=1e-6)
    assert np.linalg.norm(fr.superior_centre - (ref.superior_centre @ m.T + 5.0)) < 1e-6


def test_vertebral_body_without_posterior_elements(body_l3):
    fr = vertebra_frame(body_l3)
    assert not fr.posterior_elements and fr.anterior_method == "outline_shape"
    # PROVENANCE: +x anterior, +z superior; idealised flat, nearly parallel endplates
    assert fr.anterior[0] > 0.95 and fr.axis[2] > 0.95
    assert max(fr.endplate_flatness_mm) < 0.1
    assert 25 < fr.height_mm < 35 and 35 < fr.depth_mm < 45 and 44 < fr.width_mm < 55


@pytest.mark.parametrize("seed", [31, 32])
def test_vertebral_body_any_pose(body_l3, seed):
    pts, faces = body_l3
    ref = vertebra_frame(body_l3)
    m = _rot(seed)
    # anterior comes from the outline in any pose; superior needs the hint for a bare body
    fr = vertebra_frame((pts @ m.T, faces), superior=np.array([0, 0, 1.0]) @ m.T)
    assert fr.superior_method == "given" and fr.anterior_method == "outline_shape"
    assert np.allclose(fr.basis, ref.basis @ m.T, atol=1e-6)
    # without the hint the endplates are still found; only which one is superior is a convention
    fr2 = vertebra_frame((pts @ m.T, faces))
    assert abs(fr2.axis @ (ref.axis @ m.T)) > 1 - 1e-9 and fr2.anterior @ (ref.anterior @ m.T) > 1 - 1e-9


def test_vertebra_overrides(body_l3):
    ref = vertebra_frame(body_l3)
    fr = vertebra_frame(body_l3, anterior=[-1, 0, 0.2], superior=[0, 0, -1])
    assert fr.anterior_method == "given" and fr.anterior[0] < -0.95 and fr.axis[2] < -0.95
    assert np.isclose(fr.height_mm, ref.height_mm)


def test_non_vertebra_names_the_endplates():
    import pyvista as pv

    with pytest.raises(RegionError, match="endplate not found"):
        vertebra_frame(pv.Sphere(radius=20.0, theta_resolution=60, phi_resolution=60).triangulate())
