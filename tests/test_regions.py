"""Regions from frames: same anatomical places in any pose and when mirrored, known geometry
of the head patch, endplates, explicit overrides, errors, and the regions command."""
from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from femur_fe.analysis.regions import (
    frame_for,
    load_direction,
    regions_mesh,
    select_regions,
    wedge_hinge,
)
from femur_fe.case.loadcase import load_case
from femur_fe.errors import RegionError
from femur_fe.fe.mesh import Mesh

MIRROR = np.diag([-1.0, 1.0, 1.0])


def _tets(points, faces) -> Mesh:
    """Tet4 mesh of a closed surface, keeping the surface triangles (TetGen -pY, no quality: fast)."""
    import tetgen

    nodes, elems = tetgen.TetGen(np.asarray(points, float), np.asarray(faces)).tetrahedralize(switches="pYQ")[:2]
    return Mesh(nodes, elems, "tetra")


@pytest.fixture(scope="module")
def synth_mesh():
    from test_anatomy import synthetic_femur

    return _tets(*synthetic_femur(spacing=2.0))


@pytest.fixture(scope="module")
def femur_mesh():
    from conftest import require_shared
    from test_anatomy import _read

    return _tets(*_read(require_shared("femur_gfxmorph", "femur.stl")))


@pytest.fixture(scope="module")
def body_mesh():
    from conftest import require_shared
    from test_anatomy import _read

    return _tets(*_read(require_shared("lumbar_vhm_remus", "L3_body.obj"), scale=1000.0))


@pytest.fixture(scope="module")
def l3_mesh():
    from conftest import require_shared
    from test_anatomy import _read

    return _tets(*_read(require_shared("lumbar_mean_clouthier", "mean_L3.stl")))


FALL = load_case({"schema_version": 1})
STANCE = load_case({"schema_version": 1, "loading": {"direction": "stance"}})
COMPRESSION = load_case({"schema_version": 1, "bone": "vertebra"})


def _node_sets(regs):
    return {k: set(r.nodes.tolist()) for k, r in regs.items()}


def test_sideways_fall_regions_on_synthetic_femur(synth_mesh):
    frame = frame_for(synth_mesh, FALL)
    assert frame.side == "right"
    regs = select_regions(synth_mesh, FALL, frame)
    d = load_direction(FALL.loading, frame)
    # the fall load points laterally (+x for this right femur), posteriorly and slightly proximally:
    # d = -cos10 cos15 medial - cos10 sin15 anterior + sin10 proximal
    expected = (-np.cos(np.radians(10)) * np.cos(np.radians(15)) * frame.medial
                - np.cos(np.radians(10)) * np.sin(np.radians(15)) * frame.anterior
                + np.sin(np.radians(10)) * frame.proximal)
    assert np.allclose(d, expected) and d[0] > 0.8
    head = regs["head_contact"]
    # a spherical cap of half-angle 30 deg has its area centroid at R (1 + cos 30) / 2 from the centre
    dist = np.linalg.norm(head.centroid - frame.head_centre)
    assert dist == pytest.approx(frame.head_radius * (1 + np.cos(np.radians(30))) / 2, rel=0.03)
    # ... on the axis -d, and area 2 pi R^2 (1 - cos 30) (faceted surface: a few % smaller)
    assert (head.centroid - frame.head_centre) @ -d / dist > np.cos(np.radians(3))
    cap = 2 * np.pi * frame.head_radius**2 * (1 - np.cos(np.radians(30)))
    assert head.area == pytest.approx(cap, rel=0.1)
    assert np.all(np.linalg.norm(synth_mesh.points[head.nodes] - frame.head_centre, axis=1)
                  < 1.15 * frame.head_radius)
    troch = regs["trochanter_contact"]
    assert troch.normal @ d > 0.8  # faces the support, opposite the head patch
    assert np.linalg.norm(troch.centroid - frame.greater_trochanter) < 30
    distal = regs["distal_cut"]
    # the flat distal cut of the synthetic bone at z = -150: its disc of radius 14 mm, less the
    # rim that marching cubes (2 mm voxels) chamfers: between pi 12^2 and pi 14^2
    assert np.allclose(synth_mesh.points[distal.nodes, 2], -150.0, atol=1.0)
    assert np.pi * 12.0**2 < distal.area < np.pi * 14.0**2
    assert distal.normal @ [0, 0, -1] > 0.99
    assert set(regs["head_contact"].nodes).isdisjoint(regs["trochanter_contact"].nodes)
    # faces, ids and areas are consistent with the mesh boundary
    from femur_fe.fe.topology import boundary_faces

    bf, _ = boundary_faces(synth_mesh)
    assert np.array_equal(bf[head.face_ids], head.faces)
    assert np.all(head.face_areas > 0)


def test_stance_patch_is_on_top_of_the_head(synth_mesh):
    regs = select_regions(synth_mesh, STANCE)
    frame = frame_for(synth_mesh, STANCE)
    v = regs["head_contact"].centroid - frame.head_centre
    assert v @ frame.proximal > 0.8 * np.linalg.norm(v)
    assert set(regs) == {"head_contact", "distal_cut"}


@pytest.mark.parametrize("seed, mirror", [(5, False), (6, True)])
def test_regions_follow_the_bone_synthetic(synth_mesh, seed, mirror):
    ref = _node_sets(select_regions(synth_mesh, FALL))
    m = Rotation.random(random_state=seed).as_matrix() @ (MIRROR if mirror else np.eye(3))
    moved = synth_mesh.transformed(m, translation=(40.0, -7.0, 300.0))  # node ids are kept
    frame = frame_for(moved, FALL)
    assert frame.side == ("left" if mirror else "right")
    got = _node_sets(select_regions(moved, FALL, frame))
    assert got == ref


def test_whole_femur_regions_rotated_and_mirrored(femur_mesh):
    ref_frame = frame_for(femur_mesh, FALL)
    ref = select_regions(femur_mesh, FALL, ref_frame)
    head = ref["head_contact"]
    assert np.linalg.norm(head.centroid - ref_frame.head_centre) == pytest.approx(
        ref_frame.head_radius * (1 + np.cos(np.radians(30))) / 2, rel=0.05)
    # distal_cut of a whole femur is the condylar end
    assert femur_mesh.points[ref["distal_cut"].nodes, 2].max() < ref_frame.distal_end[2] + 10
    m = Rotation.random(random_state=7).as_matrix() @ MIRROR
    moved = femur_mesh.transformed(m, translation=(-100.0, 20.0, 5.0))
    got = select_regions(moved, FALL)
    assert _node_sets(got) == _node_sets(ref)
    for k in ref:
        assert np.allclose(got[k].centroid, ref[k].centroid @ m.T + [-100.0, 20.0, 5.0], atol=1e-6)
        assert got[k].area == pytest.approx(ref[k].area, rel=1e-9)


def test_vertebral_body_endplates(body_mesh):
    case = COMPRESSION.with_values({"anatomy.superior": [0.0, 0.0, 1.0]})
    frame = frame_for(body_mesh, case)
    regs = select_regions(body_mesh, case, frame)
    sup, inf = regs["superior_endplate"], regs["inferior_endplate"]
    # the idealised body has flat endplates of about 15 cm^2 (PROVENANCE) and they face +-z
    assert sup.area == pytest.approx(1500, rel=0.2) and inf.area == pytest.approx(1500, rel=0.2)
    assert sup.normal[2] > 0.95 and inf.normal[2] < -0.95
    h = frame.to_local(body_mesh.points)[:, 2]
    assert h[sup.nodes].min() > 0.4 * frame.height_mm and h[inf.nodes].max() < -0.4 * frame.height_mm
    assert np.allclose(load_direction(case.loading, frame), -frame.axis)
    m = Rotation.random(random_state=8).as_matrix()
    moved = body_mesh.transformed(m)
    case_m = COMPRESSION.with_values({"anatomy.superior": (np.array([0.0, 0.0, 1.0]) @ m.T).tolist()})
    assert _node_sets(select_regions(moved, case_m)) == _node_sets(regs)


def test_full_vertebra_endplates_exclude_posterior_elements(l3_mesh):
    frame = frame_for(l3_mesh, COMPRESSION)
    regs = select_regions(l3_mesh, COMPRESSION, frame)
    for name in ("superior_endplate", "inferior_endplate"):
        loc = frame.to_local(l3_mesh.points[regs[name].nodes])
        # all on the body, none on the pedicles/processes behind its posterior wall
        assert loc[:, 1].min() > -0.6 * frame.depth_mm
        assert 500 < regs[name].area < 2500
    wedge = load_case({"schema_version": 1, "bone": "vertebra",
                       "loading": {"direction": "wedge", "flexion_deg": 2.0}})
    point, axis, angle = wedge_hinge(wedge.loading, frame)
    # rotating the anterior point of the superior endplate about the hinge moves it down
    a = frame.superior_centre + 0.4 * frame.depth_mm * frame.anterior - point
    moved = np.cross(angle * axis, a)  # small rotation
    assert moved @ frame.axis < 0
    assert np.isclose(np.linalg.norm((point - frame.superior_centre)), 0.5 * frame.depth_mm)


def test_explicit_node_sets_override(synth_mesh):
    ids = np.arange(10, 40)
    mesh = synth_mesh.with_node_set("cup", ids)
    case = load_case({"schema_version": 1,
                      "regions": {"head_contact": {"node_set": "cup"}, "distal_cut": {"nodes": [1, 2, 3, 3]}}})
    regs = select_regions(mesh, case)
    assert np.array_equal(regs["head_contact"].nodes, ids)
    assert regs["distal_cut"].nodes.tolist() == [1, 2, 3]
    assert set(regs["trochanter_contact"].nodes)  # still automatic
    # a case made only of explicit regions needs no frame at all
    only = load_case({"schema_version": 1, "regions": {"a": {"nodes": [0, 1, 2]}, "b": {"node_set": "cup"}},
                      "boundary": [{"region": "a", "apply": "load"}, {"region": "b", "fix": "all"}],
                      "loading": {"direction": "vector", "vector": [1, 0, 0]}})
    regs = select_regions(mesh, only)
    assert regs["a"].nodes.tolist() == [0, 1, 2]


def test_region_errors_name_region_and_fix(synth_mesh):
    case = load_case({"schema_version": 1, "regions": {"head_contact": {"patch_angle_deg": 0.5}}})
    with pytest.raises(RegionError, match=r"'head_contact'.*selected \d+ nodes.*patch_angle_deg.*node_set"):
        select_regions(synth_mesh, case)
    case = load_case({"schema_version": 1, "regions": {"head_contact": {"node_set": "nope"}}})
    with pytest.raises(RegionError, match="node set 'nope' is not in the mesh"):
        select_regions(synth_mesh, case)
    case = load_case({"schema_version": 1, "regions": {"distal_cut": {"nodes": [0, 10**9]}}})
    with pytest.raises(RegionError, match="outside"):
        select_regions(synth_mesh, case)
    case = load_case({"schema_version": 1, "regions": {"trochanter_contact": {"min_area_mm2": 1e6}}})
    with pytest.raises(RegionError, match="trochanter_contact.*depth_mm or radius_mm"):
        select_regions(synth_mesh, case)


def test_regions_mesh_and_cli(synth_mesh, tmp_path):
    from femur_fe.commands.cli import main
    from femur_fe.io import read_mesh, write_mesh

    regs = select_regions(synth_mesh, FALL)
    rm = regions_mesh(synth_mesh, regs)
    for k, r in regs.items():
        assert rm.point_data[f"region_{k}"].sum() == r.n_nodes
        assert np.array_equal(rm.node_sets[k], r.nodes)
    mesh_path = tmp_path / "femur.vtu"
    write_mesh(mesh_path, synth_mesh)
    case_path = tmp_path / "case.toml"
    case_path.write_text(FALL.to_toml())
    out = tmp_path / "out" / "regions.vtu"
    assert main(["regions", str(case_path), "--mesh", str(mesh_path), "-o", str(out)]) == 0
    back = read_mesh(out)
    for k, r in regs.items():
        assert np.array_equal(np.flatnonzero(back.point_data[f"region_{k}"]), r.nodes)
    info = json.loads((tmp_path / "out" / "regions_frame.json").read_text(encoding="utf-8"))
    assert info["frame"]["side"] == "right" and set(info["regions"]) == set(regs)
    import meshio

    lm = meshio.read(tmp_path / "out" / "regions_landmarks.vtu")
    assert len(lm.points) == len(info["landmark_names"])
    assert np.allclose(lm.points[info["landmark_names"].index("head_centre")], info["frame"]["head_centre"])


# --------------------------------------------------------------------------- bundled parametric bones
@pytest.mark.parametrize("side", ["right", "left"])
def test_parametric_femur(side):
    bones = pytest.importorskip("femur_fe.bone.bundled")
    bone = bones.make_femur(side=side, element_size=4.0)
    frame = frame_for(bone.mesh, FALL)
    assert frame.side == side
    assert np.linalg.norm(frame.head_centre - bone.landmarks["head_centre"]) < 0.5
    assert abs(frame.head_radius - float(bone.landmarks["head_radius"])) < 0.5
    assert frame.shaft_axis @ bone.landmarks["shaft_axis"] > np.cos(np.radians(2.0))
    regs = select_regions(bone.mesh, FALL, frame)
    # the automatic distal cut covers the generator's cut nodes and stays at the distal end
    distal = regs["distal_cut"]
    assert set(bone.mesh.node_sets["distal_cut"].tolist()) <= set(distal.nodes.tolist())
    s = frame.axial(bone.mesh.points)
    s_faces = frame.axial(bone.mesh.points[distal.faces].mean(axis=1))
    # (the slab is measured from the lowest face centroid, a fraction of an element above the lowest node)
    assert s_faces.max() <= s.min() + FALL.regions["distal_cut"].depth_mm + 1.0
    assert np.linalg.norm(regs["trochanter_contact"].centroid - bone.landmarks["greater_trochanter"]) < 30


def test_parametric_vertebra():
    bones = pytest.importorskip("femur_fe.bone.bundled")
    bone = bones.make_vertebra(element_size=3.0)
    frame = frame_for(bone.mesh, COMPRESSION)
    # generator frame is LPS: superior +z, anterior -y
    assert frame.axis[2] > 0.99 and frame.anterior[1] < -0.99
    regs = select_regions(bone.mesh, COMPRESSION, frame)
    h = frame.to_local(bone.mesh.points)[:, 2]
    sup, inf = regs["superior_endplate"], regs["inferior_endplate"]
    assert h[sup.nodes].min() > 0.3 * frame.height_mm and h[inf.nodes].max() < -0.3 * frame.height_mm
    assert sup.normal[2] > 0.95 and inf.normal[2] < -0.95
    # most of the body's cross-section (an ellipse of the frame's width and depth) is covered
    ellipse = np.pi * frame.width_mm * frame.depth_mm / 4
    assert sup.area > 0.5 * ellipse and inf.area > 0.5 * ellipse
