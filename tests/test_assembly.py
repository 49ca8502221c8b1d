"""Verification of global stiffness assembly, load vectors and strain/stress recovery.

The independent reference is scikit-fem (same mesh, same heterogeneous moduli, same
quadrature points). Tolerance 1e-10 relative in the Frobenius norm: both codes integrate
the same polynomials exactly in double precision, so they agree to ~1e-15; 1e-10 leaves
room for summation-order effects on larger meshes while any wrong term (O(1) relative)
is caught.
"""
from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import scipy.sparse.linalg as spla

import femur_fe
from femur_fe.errors import FemurFeError, LoadCaseError, MaterialError, MeshError
from femur_fe.fe import reference
from femur_fe.fe.assembly import (
    StiffnessAssembler,
    assemble_stiffness,
    element_stiffness,
)
from femur_fe.fe.boxes import box_mesh
from femur_fe.fe.elements import quadrature, reference_nodes, shape_functions
from femur_fe.fe.loads import assemble_body_force, assemble_pressure, assemble_traction
from femur_fe.fe.mesh import TET10_EDGES, Mesh, tet10_from_tet4
from femur_fe.fe.recovery import strain, stress
from femur_fe.fe.topology import boundary_faces

CELL_TYPES = ["tetra", "tetra10", "hexahedron"]
NQ = {"tetra": 1, "tetra10": 4, "hexahedron": 8}


def distorted(cell_type: str, n=(3, 3, 2), seed: int = 3) -> Mesh:
    return box_mesh(cell_type, *n, h=1.7, distortion=0.22, seed=seed)


def frob_rel(a: sp.spmatrix, b: sp.spmatrix) -> float:
    return float(sp.linalg.norm(a - b) / sp.linalg.norm(b))


# ----------------------------------------------------------------------------- scikit-fem
def skfem_stiffness(mesh: Mesh, young: np.ndarray, nu: float) -> sp.csr_matrix:
    """scikit-fem's global matrix, reordered to femur_fe's interleaved DOFs."""
    from skfem import (
        Basis,
        ElementHex1,
        ElementTetP1,
        ElementTetP2,
        ElementVector,
        MeshHex,
        MeshTet,
        asm,
    )
    from skfem.models.elasticity import lame_parameters, linear_elasticity

    ct = mesh.cell_type
    rule = quadrature(ct)
    if ct == "hexahedron":
        # skfem's local node j sits at ElementHex1.doflocs[j] in [0,1]^3; ours at 2*that-1
        ref = reference_nodes(ct)
        perm = [int(np.flatnonzero(np.all(np.abs(ref - (2 * r - 1)) < 1e-12, axis=1))[0])
                for r in ElementHex1.doflocs]
        smesh = MeshHex(mesh.points.T.copy(), mesh.cells[:, perm].T.copy(), sort_t=False)
        xq, wq, elem = (rule.points.T + 1) / 2, rule.weights / 8, ElementHex1()
    else:
        nv = int(mesh.cells[:, :4].max()) + 1  # tet10 meshes here list vertices first
        smesh = MeshTet(mesh.points[:nv].T.copy(), mesh.cells[:, :4].T.copy(), sort_t=False)
        xq, wq = rule.points.T, rule.weights
        elem = ElementTetP1() if ct == "tetra" else ElementTetP2()
    basis = Basis(smesh, ElementVector(elem), quadrature=(xq, wq))
    # same physical quadrature points in both codes (so per-point moduli mean the same thing)
    ours = np.einsum("qk,mkc->cmq", shape_functions(ct, rule.points), mesh.points[mesh.cells])
    assert np.abs(basis.mapping.F(xq) - ours).max() < 1e-12
    e = young[:, None] if young.ndim == 1 else young
    k = asm(linear_elasticity(*lame_parameters(e, nu)), basis)
    dof = np.empty(mesh.n_dofs, dtype=np.int64)
    nverts = smesh.p.shape[1]
    for c in range(3):
        dof[3 * np.arange(nverts) + c] = basis.nodal_dofs[c]
    if ct == "tetra10":
        edges = np.sort(smesh.edges.T, axis=1)
        key = edges[:, 0] * nverts + edges[:, 1]
        pairs = np.sort(mesh.cells[:, :4][:, TET10_EDGES].reshape(-1, 2), axis=1)
        order = np.argsort(key)
        eidx = order[np.searchsorted(key[order], pairs[:, 0] * nverts + pairs[:, 1])]
        assert np.array_equal(key[eidx], pairs[:, 0] * nverts + pairs[:, 1])
        mids = mesh.cells[:, 4:].ravel()
        for c in range(3):
            dof[3 * mids + c] = basis.edge_dofs[c][eidx]
    return k[dof][:, dof].tocsr()


@pytest.mark.parametrize("cell_type", CELL_TYPES)
@pytest.mark.parametrize("per_qp", [False, True])
def test_global_matrix_equals_scikit_fem(cell_type, per_qp):
    mesh = distorted(cell_type)
    if cell_type == "tetra10":  # straight-sided tet10 of a distorted tet4 mesh
        mesh = tet10_from_tet4(distorted("tetra"))
    rng = np.random.default_rng(42)
    young = rng.uniform(100.0, 20000.0, (mesh.n_cells, NQ[cell_type]) if per_qp else mesh.n_cells)
    k = assemble_stiffness(mesh, young, 0.3)
    k_ref = skfem_stiffness(mesh, young, 0.3)
    assert k.shape == (mesh.n_dofs, mesh.n_dofs)
    assert frob_rel(k, k_ref) < 1e-10


@pytest.mark.parametrize("cell_type", CELL_TYPES)
def test_matrix_format_and_exact_symmetry(cell_type):
    mesh = distorted(cell_type)
    k = femur_fe.fe.assemble_stiffness(mesh, np.full(mesh.n_cells, 1000.0))
    assert isinstance(k, sp.csr_matrix)
    assert k.indices.dtype == np.int32 and k.indptr.dtype == np.int32
    assert k.has_sorted_indices
    assert (k - k.T).nnz == 0  # bitwise symmetric
    k.check_format(full_check=True)


def rigid_modes(points: np.ndarray) -> np.ndarray:
    """(3n, 6) translations and infinitesimal rotations, interleaved DOFs."""
    n = len(points)
    r = np.zeros((n, 3, 6))
    for c in range(3):
        r[:, c, c] = 1.0
        axis = np.zeros(3)
        axis[c] = 1.0
        r[:, :, 3 + c] = np.cross(axis, points - points.mean(axis=0))
    return r.reshape(3 * n, 6)


@pytest.mark.parametrize("cell_type", CELL_TYPES)
def test_element_matrices_psd_with_six_rigid_modes(cell_type):
    mesh = distorted(cell_type, n=(2, 2, 1))
    young = np.random.default_rng(0).uniform(10, 1000, (mesh.n_cells, NQ[cell_type]))
    ke = element_stiffness(mesh, young, 0.3)
    for e in range(mesh.n_cells):
        w = np.linalg.eigvalsh(ke[e])
        # zero eigenvalues are ~1e-16 * lambda_max in double precision; genuine ones are
        # well above 1e-8 * lambda_max for these mildly distorted elements
        tol = 1e-10 * w[-1]
        assert np.sum(np.abs(w) < tol) == 6
        assert w.min() > -tol
        r = rigid_modes(mesh.points[mesh.cells[e]])
        assert np.abs(ke[e] @ r).max() < 1e-12 * np.abs(ke[e]).max() * np.abs(r).max()


@pytest.mark.parametrize("cell_type", CELL_TYPES)
def test_global_matrix_annihilates_rigid_modes(cell_type):
    mesh = distorted(cell_type)
    k = assemble_stiffness(mesh, np.random.default_rng(1).uniform(1, 5, mesh.n_cells))
    r = rigid_modes(mesh.points)
    assert np.abs(k @ r).max() < 1e-12 * abs(k).max() * np.abs(r).max()


@pytest.mark.parametrize("cell_type", CELL_TYPES)
def test_scaling_with_young_is_exact(cell_type):
    mesh = distorted(cell_type)
    young = np.random.default_rng(2).uniform(1, 5, mesh.n_cells)
    asm = StiffnessAssembler(mesh)
    k1, k2 = asm.assemble(young), asm.assemble(2.0 * young)
    assert np.array_equal(k2.data, 2.0 * k1.data)  # multiplying by 2 is exact in binary


@pytest.mark.parametrize("cell_type", CELL_TYPES)
def test_rotation_invariance(cell_type):
    mesh = distorted(cell_type)
    young = np.random.default_rng(3).uniform(1, 5, (mesh.n_cells, NQ[cell_type]))
    q, _ = np.linalg.qr(np.random.default_rng(4).normal(size=(3, 3)))
    if np.linalg.det(q) < 0:
        q[:, 0] *= -1
    k = assemble_stiffness(mesh, young)
    k_rot = assemble_stiffness(mesh.transformed(q, (5.0, -2.0, 1.0)), young)
    big_q = sp.kron(sp.identity(mesh.n_points), q, format="csr")
    assert frob_rel(big_q.T @ k_rot @ big_q, k) < 1e-12


@pytest.mark.parametrize("cell_type", CELL_TYPES)
def test_reassembly_equals_fresh_assembly(cell_type):
    mesh = distorted(cell_type)
    rng = np.random.default_rng(5)
    asm = StiffnessAssembler(mesh, 0.25)
    assert asm.n_dofs == mesh.n_dofs and asm.pattern_seconds >= 0
    for young in (rng.uniform(1, 9, mesh.n_cells), rng.uniform(1, 9, (mesh.n_cells, NQ[cell_type]))):
        k_re = asm.assemble(young)
        k_new = assemble_stiffness(mesh, young, 0.25)
        assert asm.nnz == k_re.nnz == k_new.nnz
        assert np.array_equal(k_re.indices, k_new.indices) and np.array_equal(k_re.data, k_new.data)


@pytest.mark.parametrize("mesh_kind", ["tetra", "tetra10", "hexahedron", "voxel"])
def test_one_and_two_threads_bitwise_equal(mesh_kind):
    mesh = box_mesh("hexahedron", 4, 3, 3, h=0.5) if mesh_kind == "voxel" else distorted(mesh_kind, n=(4, 3, 3))
    young = np.random.default_rng(6).uniform(1, 9, (mesh.n_cells, NQ[mesh.cell_type]))
    a1 = StiffnessAssembler(mesh, n_threads=1)
    a2 = StiffnessAssembler(mesh, n_threads=2)
    assert a2.n_threads == 2
    k1, k2 = a1.assemble(young), a2.assemble(young)
    assert np.array_equal(k1.indptr, k2.indptr) and np.array_equal(k1.indices, k2.indices)
    assert np.array_equal(k1.data, k2.data)
    assert np.array_equal(element_stiffness(mesh, young, n_threads=1), element_stiffness(mesh, young, n_threads=2))
    u = np.random.default_rng(7).normal(size=mesh.n_dofs)
    assert np.array_equal(strain(mesh, u, n_threads=1), strain(mesh, u, n_threads=2))


def test_voxel_template_path():
    vox = box_mesh("hexahedron", 4, 3, 2, h=0.37)
    vox = vox.with_points(vox.points + np.array([1000.0, -250.0, 3.0]))  # far from the origin
    asm = StiffnessAssembler(vox)
    assert asm.uses_template
    rng = np.random.default_rng(8)
    for young in (rng.uniform(1, 9, vox.n_cells), rng.uniform(1, 9, (vox.n_cells, 8))):
        k = asm.assemble(young)
        k_ref = reference.assemble_stiffness(vox, young)
        assert frob_rel(k, k_ref) < 1e-12
        assert (k - k.T).nnz == 0
    # one slightly moved node: not all elements are translates any more -> general path
    pts = vox.points.copy()
    pts[7] += 1e-6
    assert not StiffnessAssembler(vox.with_points(pts)).uses_template
    assert not StiffnessAssembler(distorted("hexahedron")).uses_template


def test_orphan_nodes_give_empty_rows():
    mesh = distorted("tetra")
    extra = Mesh(np.vstack([mesh.points, [[100.0, 0, 0]]]), mesh.cells, "tetra")
    k = assemble_stiffness(extra, np.ones(mesh.n_cells))
    assert k.shape == (extra.n_dofs,) * 2
    assert k[-3:].nnz == 0
    assert frob_rel(k[:-3, :-3], assemble_stiffness(mesh, np.ones(mesh.n_cells))) == 0.0


@pytest.mark.parametrize("cell_type", ["tetra10", "hexahedron"])
def test_patch_test_linear_field_reproduced(cell_type):
    """Prescribe a linear displacement on the boundary of a homogeneous body: the FE solution
    is exact inside (a linear field is an equilibrium state only for uniform moduli)."""
    mesh = distorted(cell_type, n=(3, 3, 3))
    k = assemble_stiffness(mesh, np.full(mesh.n_cells, 700.0), 0.3)
    a = np.array([[1e-3, 2e-4, -3e-4], [5e-4, -1e-3, 1e-4], [0.0, 3e-4, 2e-3]])
    u_exact = (mesh.points @ a.T).ravel()
    fixed = np.zeros(mesh.n_dofs, dtype=bool)
    bn = np.unique(boundary_faces(mesh)[0])
    for c in range(3):
        fixed[3 * bn + c] = True
    free = ~fixed
    rhs = -k[free][:, fixed] @ u_exact[fixed]
    u_free = spla.spsolve(k[free][:, free].tocsc(), rhs)
    assert np.abs(u_free - u_exact[free]).max() < 1e-10 * np.abs(u_exact).max()


# ----------------------------------------------------------------------------- loads
@pytest.mark.parametrize("cell_type", CELL_TYPES)
def test_body_force_total_and_first_moment(cell_type):
    mesh = distorted(cell_type)
    if cell_type == "tetra10":  # curve the tet10 mesh: move mid-edge nodes
        pts = mesh.points.copy()
        nv = int(mesh.cells[:, :4].max()) + 1
        pts[nv:] += 0.05 * np.random.default_rng(1).uniform(-1, 1, pts[nv:].shape)
        mesh = mesh.with_points(pts)
    b = np.array([0.3, -1.2, 2.5])
    f = assemble_body_force(mesh, b).reshape(-1, 3)
    vol, xq = _volume_moments(mesh)
    assert np.allclose(f.sum(axis=0), b * vol, rtol=1e-13)
    # first moment: sum_a x_a f_a = b * integral(x dV) since x = sum_a N_a x_a
    assert np.allclose(mesh.points.T @ f, np.outer(xq, b), rtol=1e-12, atol=1e-12 * np.abs(xq).max())
    per_cell = np.tile(b, (mesh.n_cells, 1))
    assert np.array_equal(assemble_body_force(mesh, per_cell), f.ravel())


def _volume_moments(mesh: Mesh) -> tuple[float, np.ndarray]:
    """Volume and integral of x over the mesh, by a higher-order rule (degree 7 simplex /
    4^3 Gauss) than the loads use, exact for curved tet10 (det J cubic, x quadratic)."""
    from femur_fe.fe.elements import jacobians
    from femur_fe.fe.loads import simplex_rule

    if mesh.cell_type == "hexahedron":
        t, w = np.polynomial.legendre.leggauss(4)
        xi = np.array([[a, b, c] for a in t for b in t for c in t])
        wq = np.array([a * b * c for a in w for b in w for c in w])
    else:
        xi, wq = simplex_rule(3, 4)
    det = np.linalg.det(jacobians(mesh.cell_type, mesh.points, mesh.cells, xi))
    x = np.einsum("qk,mkc->mqc", shape_functions(mesh.cell_type, xi), mesh.points[mesh.cells])
    return float(np.einsum("mq,q->", det, wq)), np.einsum("mq,q,mqc->c", det, wq, x)


def test_tet10_body_force_is_consistent_not_lumped():
    mesh = box_mesh("tetra10", 1, 1, 1)
    f = assemble_body_force(Mesh(mesh.points, mesh.cells[:1], "tetra10"), [0, 0, 1.0]).reshape(-1, 3)[:, 2]
    vol = Mesh(mesh.points, mesh.cells[:1], "tetra10").cell_volumes()[0]
    c = mesh.cells[0]
    assert np.allclose(f[c[:4]], -vol / 20, rtol=1e-13) and np.allclose(f[c[4:]], vol / 5, rtol=1e-13)


@pytest.mark.parametrize("cell_type", CELL_TYPES)
def test_traction_total_and_moment_on_flat_faces(cell_type):
    mesh = box_mesh(cell_type, 3, 2, 2, h=1.5, distortion=0.2, seed=5)  # boundary stays flat
    faces, _ = boundary_faces(mesh)
    top = faces[np.all(mesh.points[faces][:, :, 2] > 2 * 1.5 - 1e-9, axis=1)]
    assert len(top)
    t = np.array([1.5, -0.5, 3.0])
    f = assemble_traction(mesh, top, t).reshape(-1, 3)
    area = 3 * 1.5 * 2 * 1.5
    assert np.allclose(f.sum(axis=0), t * area, rtol=1e-13)
    centroid = np.array([3 * 1.5 / 2, 2 * 1.5 / 2, 2 * 1.5])
    assert np.allclose(mesh.points.T @ f, np.outer(centroid * area, t), rtol=1e-12)


@pytest.mark.parametrize("cell_type", CELL_TYPES)
def test_pressure_closed_surface_and_single_face(cell_type):
    mesh = distorted(cell_type)
    if cell_type == "tetra10":  # curved faces: the area-weighted normal is still integrated exactly
        pts = mesh.points.copy()
        nv = int(mesh.cells[:, :4].max()) + 1
        pts[nv:] += 0.08 * np.random.default_rng(2).uniform(-1, 1, pts[nv:].shape)
        mesh = mesh.with_points(pts)
    faces, _ = boundary_faces(mesh)
    f = assemble_pressure(mesh, faces, 2.0).reshape(-1, 3)
    assert np.abs(f.sum(axis=0)).max() < 1e-12 * np.abs(f).sum()
    if cell_type == "tetra10":
        return
    # the box bottom (z = 0, outward normal -z): pressure pushes along +z
    bottom = faces[np.all(np.abs(mesh.points[faces][:, :, 2]) < 1e-12, axis=1)]
    f = assemble_pressure(mesh, bottom, 2.0).reshape(-1, 3)
    area = 3 * 1.7 * 3 * 1.7
    assert np.allclose(f.sum(axis=0), [0, 0, 2.0 * area], rtol=1e-13, atol=1e-12)
    # traction -p n gives the same nodal forces on a flat face
    g = assemble_traction(mesh, bottom, [0, 0, 2.0]).reshape(-1, 3)
    assert np.allclose(f, g, rtol=1e-13, atol=1e-13)


# ----------------------------------------------------------------------------- recovery
@pytest.mark.parametrize("cell_type", CELL_TYPES)
def test_strain_of_linear_field_is_exact(cell_type):
    mesh = distorted(cell_type)
    grad = np.array([[1e-3, 4e-4, -2e-4], [-3e-4, 2e-3, 5e-4], [6e-4, 1e-4, -1e-3]])
    u = mesh.points @ grad.T + np.array([0.1, -0.2, 0.3])
    eps_exact = 0.5 * (grad + grad.T)
    nq = NQ[cell_type]
    eq = strain(mesh, u, at="quadrature")
    assert eq.shape == (mesh.n_cells, nq, 3, 3)
    for at, shape in (("quadrature", (mesh.n_cells, nq)), ("centroid", (mesh.n_cells,)), ("node", (mesh.n_points,))):
        eps = strain(mesh, u.ravel(), at=at)
        assert eps.shape == shape + (3, 3)
        assert np.abs(eps - eps_exact).max() < 1e-12 * np.abs(eps_exact).max()


def test_tet10_strain_of_quadratic_field_is_exact():
    mesh = tet10_from_tet4(distorted("tetra"))
    rng = np.random.default_rng(10)
    quad = rng.normal(size=(3, 3, 3)) * 1e-3  # u_c = sum_ab Q[c,a,b] x_a x_b + linear part
    lin = rng.normal(size=(3, 3)) * 1e-3

    def field(x):
        return np.einsum("cab,...a,...b->...c", quad, x, x) + x @ lin.T

    def grad(x):  # du_c/dx_d
        return np.einsum("cdb,...b->...cd", quad, x) + np.einsum("cad,...a->...cd", quad, x) + lin

    u = field(mesh.points)
    for at, xi in (("quadrature", quadrature("tetra10").points), ("centroid", np.array([[0.25] * 3]))):
        x = np.einsum("qk,mkc->mqc", shape_functions("tetra10", xi), mesh.points[mesh.cells])
        h = grad(x)
        expected = 0.5 * (h + np.swapaxes(h, -1, -2))
        got = strain(mesh, u, at=at)
        if at == "centroid":
            expected = expected[:, 0]
        assert np.abs(got - expected).max() < 1e-12 * np.abs(expected).max()


@pytest.mark.parametrize("cell_type", CELL_TYPES)
def test_stress_uniaxial(cell_type):
    mesh = distorted(cell_type)
    e, nu, strain_x = 1500.0, 0.3, 1e-3
    u = mesh.points * np.array([strain_x, -nu * strain_x, -nu * strain_x])
    young = np.full(mesh.n_cells, e)
    expected = np.zeros((3, 3))
    expected[0, 0] = e * strain_x
    for at in ("quadrature", "centroid", "node"):
        sig = stress(mesh, u, young, nu, at=at)
        assert np.abs(sig - expected).max() < 1e-10 * e * strain_x
    # per-point moduli: stress scales pointwise
    yq = np.random.default_rng(0).uniform(100, 200, (mesh.n_cells, NQ[cell_type]))
    sig = stress(mesh, u, yq, nu, at="quadrature")
    assert np.allclose(sig[..., 0, 0], yq * strain_x, rtol=1e-10)


def test_node_values_are_volume_weighted_averages():
    mesh = distorted("tetra")
    u = np.random.default_rng(11).normal(size=(mesh.n_points, 3))
    ec = strain(mesh, u, at="centroid")
    en = strain(mesh, u, at="node")
    vol = mesh.cell_volumes()
    node = 5
    around = np.flatnonzero((mesh.cells == node).any(axis=1))
    expected = (vol[around, None, None] * ec[around]).sum(axis=0) / vol[around].sum()
    assert np.allclose(en[node], expected, rtol=1e-13, atol=1e-15)
    assert np.array_equal(en, np.swapaxes(en, 1, 2))


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("young, match", [
    (-1.0, "> 0"), (np.nan, "finite"), ("x", "dtype"), (np.ones(3), "length 3"),
    (np.ones((5, 5)), "shape"), (np.array([1 + 1j]), "dtype"),
])
def test_bad_young_raises_material_error(young, match):
    mesh = distorted("tetra")
    y = young
    if isinstance(young, float):
        y = np.full(mesh.n_cells, 2.0)
        y[3] = young
    with pytest.raises(MaterialError, match=match):
        assemble_stiffness(mesh, y)


@pytest.mark.parametrize("poisson", [0.5, -1.0, 0.7, float("nan"), "0.3", None])
def test_bad_poisson_raises_material_error(poisson):
    mesh = distorted("tetra")
    with pytest.raises(MaterialError, match="poisson"):
        StiffnessAssembler(mesh, poisson)


def test_bad_mesh_raises_mesh_error():
    mesh = distorted("tetra")
    with pytest.raises(MeshError, match="femur_fe.Mesh"):
        assemble_stiffness(mesh.points, np.ones(mesh.n_cells))
    inverted = Mesh(mesh.points, mesh.cells[:, [0, 2, 1, 3]], "tetra")
    with pytest.raises(MeshError, match="Jacobian"):
        assemble_stiffness(inverted, np.ones(mesh.n_cells))
    with pytest.raises(MeshError, match="Jacobian"):
        element_stiffness(inverted)
    with pytest.raises(MeshError, match="Jacobian"):
        strain(inverted, np.zeros(mesh.n_dofs))
    pts = mesh.points.copy()
    pts[0, 0] = np.inf
    with pytest.raises(MeshError, match="non-finite"):
        assemble_stiffness(Mesh(pts, mesh.cells, "tetra"), np.ones(mesh.n_cells))
    broken = Mesh(mesh.points, mesh.cells, "tetra")
    object.__setattr__(broken, "cells", mesh.cells.astype(np.int32))
    with pytest.raises(MeshError, match="int64"):
        StiffnessAssembler(broken)
    young = np.ones(mesh.n_cells)
    broken_ids = Mesh(mesh.points, mesh.cells.copy(), "tetra")
    broken_ids.cells[0, 0] = 10**9
    with pytest.raises(MeshError, match="node ids"):
        assemble_stiffness(broken_ids, young)


def test_bad_load_and_recovery_arguments():
    mesh = distorted("hexahedron")
    faces, _ = boundary_faces(mesh)
    with pytest.raises(LoadCaseError, match="force_density"):
        assemble_body_force(mesh, [1.0, 2.0])
    with pytest.raises(LoadCaseError, match="non-finite"):
        assemble_body_force(mesh, [1.0, np.nan, 0])
    with pytest.raises(LoadCaseError, match="traction"):
        assemble_traction(mesh, faces, np.ones((len(faces) + 1, 3)))
    with pytest.raises(MeshError, match="faces"):
        assemble_traction(mesh, faces[:, :3], [0, 0, 1.0])
    with pytest.raises(MeshError, match="faces"):
        assemble_pressure(mesh, faces + mesh.n_points, 1.0)
    with pytest.raises(LoadCaseError, match="pressure"):
        assemble_pressure(mesh, faces, np.ones(2))
    with pytest.raises(FemurFeError, match="u must have shape"):
        strain(mesh, np.zeros(5))
    with pytest.raises(FemurFeError, match="at must be"):
        strain(mesh, np.zeros(mesh.n_dofs), at="gauss")
    with pytest.raises(MaterialError):
        stress(mesh, np.zeros(mesh.n_dofs), np.ones(3))
    with pytest.raises(FemurFeError, match="n_threads"):
        StiffnessAssembler(mesh, n_threads=0)


@pytest.mark.parametrize("cell_type", CELL_TYPES)
def test_cached_geometry_gives_bitwise_identical_matrix(cell_type):
    mesh = distorted(cell_type)
    rng = np.random.default_rng(12)
    cached = StiffnessAssembler(mesh, cache_geometry=True)
    plain = StiffnessAssembler(mesh, cache_geometry=False)
    assert cached.caches_geometry and not plain.caches_geometry
    for young in (rng.uniform(1, 9, mesh.n_cells), rng.uniform(1, 9, (mesh.n_cells, NQ[cell_type]))):
        assert np.array_equal(cached.assemble(young).data, plain.assemble(young).data)
    with pytest.raises(MeshError, match="cache_geometry"):
        StiffnessAssembler(mesh, cache_geometry="yes")


def test_assemble_data_in_place_matches_assemble():
    mesh = distorted("tetra")
    asm = StiffnessAssembler(mesh)
    rng = np.random.default_rng(13)
    k = asm.assemble(rng.uniform(1, 9, mesh.n_cells))
    young = rng.uniform(1, 9, mesh.n_cells)
    asm.assemble_data(young, out=k.data)
    assert np.array_equal(k.data, asm.assemble(young).data)
    with pytest.raises(FemurFeError, match="out must be"):
        asm.assemble_data(young, out=np.empty(3))
