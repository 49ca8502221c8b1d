"""Mesh value object, validation and meshio round trips."""
from __future__ import annotations

import numpy as np
import pytest

import femur_fe as ff
from femur_fe.fe.elements import (
    quadrature,
    reference_nodes,
    shape_functions,
    shape_gradients,
)


def _unit_tet():
    return ff.Mesh(np.array([[0.0, 0, 0], [10, 0, 0], [0, 10, 0], [0, 0, 10]]), [[0, 1, 2, 3]], "tetra")


def _box_hex(n=2, h=5.0):
    import itertools
    g = np.arange(n + 1) * h
    pts = np.array([[x, y, z] for z in g for y in g for x in g])
    idx = lambda i, j, k: i + (n + 1) * (j + (n + 1) * k)  # noqa: E731
    cells = [[idx(i, j, k), idx(i + 1, j, k), idx(i + 1, j + 1, k), idx(i, j + 1, k),
              idx(i, j, k + 1), idx(i + 1, j, k + 1), idx(i + 1, j + 1, k + 1), idx(i, j + 1, k + 1)]
             for i, j, k in itertools.product(range(n), repeat=3)]
    return ff.Mesh(pts, cells, "hexahedron")


@pytest.mark.parametrize("ct", ["tetra", "tetra10", "hexahedron"])
def test_shape_functions_nodal_and_partition_of_unity(ct):
    xi = reference_nodes(ct)
    np.testing.assert_allclose(shape_functions(ct, xi), np.eye(len(xi)), atol=1e-14)
    q = quadrature(ct)
    np.testing.assert_allclose(shape_functions(ct, q.points).sum(axis=1), 1.0, atol=1e-14)
    np.testing.assert_allclose(shape_gradients(ct, q.points).sum(axis=1), 0.0, atol=1e-13)


@pytest.mark.parametrize("ct", ["tetra", "tetra10", "hexahedron"])
def test_shape_gradients_match_finite_differences(ct, rng):
    xi = rng.uniform(0.05, 0.2, size=(3, 3))
    g = shape_gradients(ct, xi)
    h = 1e-6
    for a in range(3):
        d = np.zeros(3)
        d[a] = h
        fd = (shape_functions(ct, xi + d) - shape_functions(ct, xi - d)) / (2 * h)
        np.testing.assert_allclose(g[:, :, a], fd, atol=1e-8)


def test_mesh_volume_and_bounds():
    m = _unit_tet()
    assert m.cell_volumes()[0] == pytest.approx(1000.0 / 6.0, rel=1e-14)
    h = _box_hex(2, 5.0)
    assert h.cell_volumes().sum() == pytest.approx(1000.0, rel=1e-13)
    np.testing.assert_allclose(h.bounds, [[0, 0, 0], [10, 10, 10]])


def test_validate_reports_each_problem_with_ids():
    m = _box_hex(2, 5.0)
    assert m.validate().ok
    # inverted: swap layers of cell 3
    cells = m.cells.copy()
    cells[3] = cells[3][[4, 5, 6, 7, 0, 1, 2, 3]]
    rep = ff.Mesh(m.points, cells, "hexahedron").validate()
    assert list(rep.inverted_cells) == [3] and not rep.ok
    assert "inverted" in str(rep) and "[3]" in str(rep)
    # degenerate: collapse a tet
    pts = np.array([[0.0, 0, 0], [10, 0, 0], [0, 10, 0], [5, 5, 0]])
    rep = ff.Mesh(pts, [[0, 1, 2, 3]], "tetra").validate()
    assert list(rep.degenerate_cells) == [0]
    # orphan, duplicate, non-finite
    pts = np.vstack([_unit_tet().points, [[50.0, 50, 50], [0, 0, 0]]])
    rep = ff.Mesh(pts, [[0, 1, 2, 3]], "tetra").validate()
    assert set(rep.orphan_nodes) == {4, 5}
    assert [tuple(sorted(p)) for p in rep.duplicate_nodes] == [(0, 5)]
    pts[1, 0] = np.nan
    rep = ff.Mesh(pts, [[0, 1, 2, 3]], "tetra").validate()
    assert list(rep.nonfinite_nodes) == [1] and not rep.ok
    # metres
    rep = _unit_tet().scaled(1e-3).validate()
    assert rep.suspected_metres and "scale the mesh by 1000" in str(rep)
    with pytest.raises(ff.errors.MeshError, match="metres"):
        _unit_tet().scaled(1e-3).validate(raise_on_error=True)


def test_mirror_keeps_positive_jacobians():
    for m in (_unit_tet(), _box_hex(2)):
        mir = m.transformed(np.diag([-1.0, 1, 1]))
        assert (mir.jacobian_determinants() > 0).all()
        assert mir.validate().ok


def test_bad_constructor_input_names_the_problem():
    with pytest.raises(ff.errors.MeshError, match=r"shape \(n, 3\)"):
        ff.Mesh(np.zeros((4, 2)), [[0, 1, 2, 3]])
    with pytest.raises(ff.errors.MeshError, match="unsupported cell type 'wedge'"):
        ff.Mesh(np.zeros((4, 3)), [[0, 1, 2, 3]], "wedge")
    with pytest.raises(ff.errors.MeshError, match="0-based"):
        ff.Mesh(np.zeros((4, 3)), [[1, 2, 3, 4]])


@pytest.mark.parametrize("suffix", [".vtu", ".msh", ".inp", ".bdf", ".mesh"])
def test_meshio_round_trip(tmp_path, suffix):
    m = _box_hex(2, 5.0).with_node_set("bottom", [0, 1, 2]).with_cell_data(E=np.arange(8.0))
    out = ff.write_mesh(tmp_path / f"box{suffix}", m)
    back = ff.read_mesh(out, units="mm")
    assert back.cell_type == "hexahedron"
    np.testing.assert_allclose(back.points, m.points)
    np.testing.assert_array_equal(back.cells, m.cells)
    if suffix == ".vtu":
        np.testing.assert_allclose(back.cell_data["E"], np.arange(8.0))
        np.testing.assert_array_equal(back.node_sets["bottom"], [0, 1, 2])  # stored as a 0/1 point array
    if suffix in (".vtu", ".inp"):
        assert set(back.node_sets) == {"bottom"}


def test_read_mesh_converts_metres_with_warning(tmp_path, caplog):
    m = _unit_tet().scaled(1e-3)
    ff.write_mesh(tmp_path / "m.vtu", m)
    back = ff.read_mesh(tmp_path / "m.vtu")
    np.testing.assert_allclose(back.points, _unit_tet().points)
    assert "metres" in caplog.text


def test_read_mesh_rejects_surface(tmp_path):
    import meshio
    meshio.write(tmp_path / "s.vtu", meshio.Mesh(np.eye(3), [("triangle", [[0, 1, 2]])]))
    with pytest.raises(ff.errors.MeshError, match="surface cells"):
        ff.read_mesh(tmp_path / "s.vtu")


@pytest.mark.parametrize("ct", ["tetra", "tetra10", "hexahedron"])
def test_physical_gradients_reproduce_linear_field(ct, rng):
    from femur_fe.fe.elements import shape_gradients_physical

    a = np.array([[2.0, 0.3, 0.1], [0.2, 1.5, 0.4], [0.1, 0.2, 3.0]])
    x = reference_nodes(ct) @ a + 1.0  # distorted (sheared) element
    g = rng.normal(size=(3, 3))
    grad, det = shape_gradients_physical(ct, x, np.arange(len(x))[None], quadrature(ct).points)
    du = np.einsum("mqkb,ki->mqib", grad, x @ g.T)
    np.testing.assert_allclose(du, np.broadcast_to(g, du.shape), atol=1e-12)
    assert (det > 0).all()


def test_atomic_write_gives_normal_permissions(tmp_path):
    import os
    import stat

    from femur_fe.io import write_text_atomic

    p = write_text_atomic(tmp_path / "a.txt", "x")
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(p.stat().st_mode) == 0o666 & ~umask


def test_element_mask_from_mask_or_ids():
    from femur_fe.fe.mesh import element_mask

    np.testing.assert_array_equal(element_mask([0, 2], 4, "x"), [True, False, True, False])
    np.testing.assert_array_equal(element_mask(np.array([False, True]), 2, "x"), [False, True])
    with pytest.raises(ff.FemurFeError, match=r"elastic_elements ids must be in \[0, 4\)"):
        element_mask([4], 4, "elastic_elements")
    with pytest.raises(ff.FemurFeError, match=r"x mask must have shape \(3,\)"):
        element_mask(np.ones(2, dtype=bool), 3, "x")
