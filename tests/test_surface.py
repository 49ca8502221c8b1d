"""Surfaces -> tet meshes: reading, repair, remeshing, TetGen meshing, proximal cut, masks.

All tests use real files (shared bone data, gias3.examples) or exactly known geometry
(spheres, balls in a mask). Element sizes are coarse to keep the file fast.
"""
from __future__ import annotations

import logging

import numpy as np
import pytest
from conftest import gias3_file, require_shared

import femur_fe as ff
from femur_fe.bone.anatomy import femur_frame
from femur_fe.bone.meshing import (
    nodes_on_plane,
    proximal_cut_plane,
    surface_topology,
)
from femur_fe.errors import SurfaceError
from femur_fe.fe.elements import reference_nodes
from femur_fe.io.surface import Surface


def _check_mesh(mesh, surface_volume, rel_vol=0.02):
    rep = mesh.validate()
    assert rep.ok, str(rep)
    assert len(rep.inverted_cells) == 0
    det = mesh.jacobian_determinants()
    assert det.min() > 0
    # a tet mesh of a closed surface fills it: volumes agree up to the remeshing chamfer
    # of sharp edges (< 2 % at these sizes; 0.01 % without remeshing)
    assert mesh.cell_volumes().sum() == pytest.approx(surface_volume, rel=rel_vol)


@pytest.fixture(scope="module")
def femur_stl():
    return ff.read_surface(require_shared("femur_gfxmorph", "femur.stl"))


def _icosphere(r=10.0, n=3):
    import pyvista as pv

    s = pv.Icosphere(radius=r, nsub=n)
    return ff.io.Surface.from_pyvista(s, "icosphere")


# --------------------------------------------------------------------------- reading
def test_read_femur_stl_is_closed_mm(femur_stl):
    s = femur_stl
    # PROVENANCE.md: 10,156 vertices, 20,308 triangles, 399.3 cm^3, 413.9 mm long
    assert (s.n_points, s.n_faces) == (10156, 20308)
    topo = s.topology()
    assert topo.watertight and topo.n_components == 1 and topo.euler == 2
    assert s.volume / 1000 == pytest.approx(399.3, abs=0.1)
    assert s.extent.max() == pytest.approx(413.9, abs=0.1)


def test_read_obj_in_metres_converts_with_warning(caplog):
    path = require_shared("lumbar_vhm_remus", "L3_body.obj")
    with caplog.at_level(logging.WARNING, logger="femur_fe.bone.meshing"):
        s = ff.read_surface(path)
    assert any("metres" in r.getMessage() for r in caplog.records)
    # per-facet duplicated vertices are merged: the body is one closed manifold
    assert s.is_watertight
    assert 30 < s.extent.max() < 60          # mm now (0.049 m before)
    raw = ff.read_surface(path, units="mm")
    assert raw.extent.max() < 1.0
    np.testing.assert_allclose(s.points, raw.points * 1000.0)


def test_unknown_suffix_and_missing_file(tmp_path):
    with pytest.raises(SurfaceError, match="no such file"):
        ff.read_surface(tmp_path / "nope.stl")
    bad = tmp_path / "x.xyz"
    bad.write_text("1 2 3\n")
    with pytest.raises(SurfaceError, match="unsupported surface format"):
        ff.read_surface(bad)


# --------------------------------------------------------------------------- repair
def test_repair_fills_holes_and_drops_components():
    ball = _icosphere(10.0, 3)
    f = ball.faces
    # punch a hole (remove 5 faces around vertex 0), add a duplicate face and a far small component
    around0 = np.flatnonzero((f == 0).any(axis=1))
    f_holed = np.delete(f, around0, axis=0)
    small = _icosphere(1.0, 1)
    pts = np.vstack([ball.points, small.points + 50.0])
    faces = np.vstack([f_holed, f_holed[:1], small.faces + ball.n_points])
    broken = Surface(pts, faces, "broken ball")
    topo = surface_topology(broken)
    assert topo.boundary_edges == len(around0) and topo.n_components == 2 and not topo.watertight
    fixed, rep = ff.bone.repair_surface(broken)
    assert fixed.is_watertight and rep.watertight_after and not rep.watertight_before
    assert rep.components_dropped == 1 and rep.duplicate_faces_removed == 1
    assert rep.holes_filled >= 1 and rep.meshfix_used
    assert rep.boundary_edges_before == len(around0)
    # the filled ball keeps (nearly) the icosphere volume
    assert fixed.volume == pytest.approx(ball.volume, rel=0.01)
    assert "holes filled" in str(rep)


def test_repair_flips_inward_surface():
    ball = _icosphere(5.0, 2)
    inward = Surface(ball.points, ball.faces[:, [0, 2, 1]], "inward")
    assert inward.volume < 0
    fixed, rep = ff.bone.repair_surface(inward)
    assert rep.orientation_flipped and fixed.volume == pytest.approx(-inward.volume)


def test_unrepairable_surface_raises_naming_file():
    tri = Surface(np.array([[0.0, 0, 0], [1, 0, 0], [0, 1, 0]]), [[0, 1, 2]], "one_triangle.stl")
    with pytest.raises(SurfaceError, match="one_triangle.stl"):
        ff.bone.repair_surface(tri)


def test_prox_femur_inp_is_repaired_and_meshed():
    s = ff.read_surface(gias3_file("prox_femur.inp"))
    assert s.n_faces == 9212
    assert not s.is_watertight            # open distal end (and its rim) in the file
    fixed, rep = ff.bone.repair_surface(s)
    assert fixed.is_watertight and rep.meshfix_used and rep.boundary_edges_before > 0
    mesh = ff.bone.tetmesh_from_surface(s, element_size=4.0)   # repairs automatically (warning)
    _check_mesh(mesh, fixed.volume, rel_vol=0.03)


# --------------------------------------------------------------------------- tet meshing
def test_femur_stl_tet4_and_tet10(femur_stl):
    m1 = ff.bone.tetmesh_from_surface(femur_stl, element_size=6.0)
    assert m1.cell_type == "tetra"
    _check_mesh(m1, femur_stl.volume)
    # element size is honoured: mean edge within a factor ~1.5 of the target
    e = m1.points[m1.cells[:, [0, 1, 0, 2, 0, 3, 1, 2, 1, 3, 2, 3]].reshape(-1, 2)]
    mean_edge = np.linalg.norm(e[:, 0] - e[:, 1], axis=1).mean()
    assert 6.0 / 1.6 < mean_edge < 6.0 * 1.2
    mn, _ = ff.bone.dihedral_angles(m1.points, m1.cells)
    assert np.percentile(mn, 1) > 8.0     # quality: 99 % of cells above 8 degrees
    m2 = ff.fe.tet10_from_tet4(m1)
    assert m2.cell_type == "tetra10" and m2.n_cells == m1.n_cells
    _check_mesh(m2, femur_stl.volume)
    # mid-edge nodes sit at the midpoints of the VTK/meshio edges (0,1),(1,2),(0,2),(0,3),(1,3),(2,3)
    ref = reference_nodes("tetra10")
    edges = [(0, 1), (1, 2), (0, 2), (0, 3), (1, 3), (2, 3)]
    for k, (a, b) in enumerate(edges):
        np.testing.assert_allclose(ref[4 + k], 0.5 * (ref[a] + ref[b]))
        np.testing.assert_allclose(m2.points[m2.cells[:, 4 + k]],
                                   0.5 * (m2.points[m2.cells[:, a]] + m2.points[m2.cells[:, b]]), atol=1e-12)
    # shared edges share their mid node: n_points = vertices + unique edges
    n_edges = len(np.unique(np.sort(m1.cells[:, np.array(edges)].reshape(-1, 2), axis=1), axis=0))
    assert m2.n_points == m1.n_points + n_edges


def test_order2_direct_and_bad_arguments(femur_stl):
    with pytest.raises(SurfaceError, match="order"):
        ff.bone.tetmesh_from_surface(femur_stl, order=3)
    with pytest.raises(SurfaceError, match="element_size"):
        ff.bone.tetmesh_from_surface(femur_stl, element_size=-1.0)
    with pytest.raises(SurfaceError, match="quality"):
        ff.bone.tetmesh_from_surface(femur_stl, quality=(1.0, 40.0))


def test_not_watertight_without_repair_raises():
    ball = _icosphere(10.0, 2)
    holed = Surface(ball.points, ball.faces[1:], "holed")
    with pytest.raises(SurfaceError, match="not closed"):
        ff.bone.tetmesh_from_surface(holed, repair=False)


def test_mean_L3_meshes():
    s = ff.read_surface(require_shared("lumbar_mean_clouthier", "mean_L3.stl"))
    assert s.is_watertight and s.topology().euler == 0      # genus 1 (vertebral foramen)
    mesh = ff.bone.tetmesh_from_surface(s, element_size=4.0)
    _check_mesh(mesh, s.volume, rel_vol=0.03)


def test_L3_body_obj_meshes():
    s = ff.read_surface(require_shared("lumbar_vhm_remus", "L3_body.obj"))
    mesh = ff.bone.tetmesh_from_surface(s, element_size=3.0, order=2)
    assert mesh.cell_type == "tetra10"
    # sharp prism edges are chamfered by the voxel remeshing: allow 3 %
    _check_mesh(mesh, s.volume, rel_vol=0.03)


def test_no_remesh_keeps_surface_exactly():
    ball = _icosphere(10.0, 3)
    mesh = ff.bone.tetmesh_from_surface(ball, element_size=3.0, remesh=False)
    # every input vertex is a mesh node and the volume equals the polyhedron's
    d = np.min(np.linalg.norm(mesh.points[mesh.node_sets["surface"]][:, None] - ball.points[None], axis=2), axis=0)
    assert d.max() < 1e-9
    assert mesh.cell_volumes().sum() == pytest.approx(ball.volume, rel=1e-9)


# --------------------------------------------------------------------------- proximal cut
def test_femur_landmarks_and_proximal_cut(femur_stl):
    lm = femur_frame((femur_stl.points, femur_stl.faces))
    # the head is at the top (z of about -57 mm is the top of the bone, PROVENANCE.md)
    assert lm.shaft_axis[2] > 0.95
    assert 18.0 < lm.head_radius < 28.0
    assert femur_stl.bounds[1, 2] - lm.head_centre[2] == pytest.approx(lm.head_radius, abs=4.0)
    drop = -lm.axial(lm.lesser_trochanter)
    assert 40.0 < drop < 90.0              # lesser trochanter 4-9 cm below the head centre
    cut = ff.bone.cut_proximal_femur(femur_stl, 50.0, landmarks=lm)
    assert cut.is_watertight and cut.volume > 0
    origin, normal = proximal_cut_plane(femur_stl, 50.0, landmarks=lm)
    z = (cut.points - origin) @ normal
    assert z.min() > -1e-6                  # nothing below the plane
    # the cap is flat: the cut's extent along the axis is head top -> plane
    top = (femur_stl.points - origin) @ normal
    assert z.max() == pytest.approx(top.max(), abs=1e-6)
    assert 100.0 < z.max() < 200.0
    # capped: the cap area equals the shaft cross-section found by the landmarks
    on_cap = np.abs(z[cut.faces]).max(axis=1) < 1e-6
    cap_area = cut.face_areas()[on_cap].sum()
    assert 300.0 < cap_area < 1200.0        # a shaft of ~20-38 mm diameter
    mesh = ff.bone.tetmesh_from_surface(cut, element_size=5.0)
    _check_mesh(mesh, cut.volume)
    ids = nodes_on_plane(mesh, origin, normal)
    assert len(ids) > 10


def test_cut_too_low_raises(femur_stl):
    with pytest.raises(SurfaceError, match="below the bone"):
        ff.bone.cut_proximal_femur(femur_stl, 500.0)


# --------------------------------------------------------------------------- masks
def test_surface_from_mask_ball_with_affine():
    n = 40
    sp = np.array([0.8, 1.0, 1.2])
    ijk = np.indices((n, n, n)).reshape(3, -1).T
    c_idx = np.array([20.0, 19.0, 18.0])
    r = 12.0
    rot = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])  # 90 deg about z
    affine = np.eye(4)
    affine[:3, :3] = rot * sp[None, :]
    affine[:3, 3] = [10.0, -5.0, 3.0]
    world = ijk @ affine[:3, :3].T + affine[:3, 3]
    centre = affine[:3, :3] @ c_idx + affine[:3, 3]
    mask = (np.linalg.norm(world - centre, axis=1) < r).reshape(n, n, n)
    s = ff.bone.surface_from_mask(mask, affine)
    assert s.is_watertight and s.volume > 0
    # analytic ball volume within 4 % at ~1 mm voxels
    assert s.volume == pytest.approx(4 / 3 * np.pi * r ** 3, rel=0.04)
    np.testing.assert_allclose(s.points.mean(axis=0), centre, atol=0.3)
    mesh = ff.bone.tetmesh_from_surface(s, element_size=3.0)
    _check_mesh(mesh, s.volume)
    # the same with spacing/origin/direction
    s2 = ff.bone.surface_from_mask(mask, spacing=sp, origin=affine[:3, 3], direction=rot)
    np.testing.assert_allclose(s2.points, s.points)


def test_surface_from_mask_rejects_bad_input():
    with pytest.raises(SurfaceError, match="empty"):
        ff.bone.surface_from_mask(np.zeros((5, 5, 5), bool), np.eye(4))
    with pytest.raises(SurfaceError, match="0/1"):
        ff.bone.surface_from_mask(np.full((5, 5, 5), 3), np.eye(4))


# --------------------------------------------------------------------------- CLI
def test_cli_mesh_writes_vtu(tmp_path, capsys):
    from femur_fe.commands.cli import main

    out = tmp_path / "L3.vtu"
    rc = main(["mesh", str(require_shared("lumbar_vhm_remus", "L3_body.obj")), "-o", str(out), "--size", "4"])
    assert rc == 0 and out.exists()
    mesh = ff.read_mesh(out)
    assert mesh.validate().ok and mesh.cell_type == "tetra"
    assert "min dihedral" in capsys.readouterr().out


def test_zero_volume_tetgen_cells_are_dropped_with_a_warning(monkeypatch, caplog):
    """TetGen's relaxed fallback can leave a zero-volume tet (seen on a thresholded hip-CT mask):
    it carries no stiffness, so it is removed with a warning; the volume is unchanged."""
    import femur_fe.bone.meshing as meshing

    ball = _icosphere(10.0, 3)
    real = meshing._run_tetgen

    def with_sliver(surface, kwargs):
        nodes, elems = real(surface, kwargs)
        nodes = np.asarray(nodes, dtype=np.float64)
        elems = np.asarray(elems, dtype=np.int64)
        # a flat tet: its fourth node is the centroid of the first three
        a, b, c = nodes[elems[0, :3]]
        extra = np.vstack([nodes, (a + b + c) / 3.0])
        sliver = np.array([[elems[0, 0], elems[0, 1], elems[0, 2], len(nodes)]])
        return extra, np.vstack([elems, sliver])

    monkeypatch.setattr(meshing, "MAX_DROPPED_DEGENERATE", 0.01)
    monkeypatch.setattr(meshing, "_run_tetgen", with_sliver)
    with caplog.at_level(logging.WARNING):
        mesh = ff.bone.tetmesh_from_surface(ball, element_size=3.0, remesh=False)
    assert "1 zero-volume tetrahedra left by TetGen removed" in caplog.text
    assert mesh.validate().ok
    assert mesh.cell_volumes().sum() == pytest.approx(ball.volume, rel=1e-9)
    monkeypatch.setattr(meshing, "MAX_DROPPED_DEGENERATE", 0.0)
    with pytest.raises(SurfaceError, match="degenerate cells"):
        ff.bone.tetmesh_from_surface(ball, element_size=3.0, remesh=False)
