"""Compiled kernels against their NumPy twins in femur_fe.fe.reference.

Tolerance: the kernels and the twins evaluate the same integrals in double precision
with different formulations (index formula vs B^T D B, cofactor inverse vs LU solve), so
they differ by a few ulps per term; 1e-12 relative to the largest entry leaves a margin of
~1000x over that and would catch any wrong term (which shows up at O(1)).
"""
from __future__ import annotations

from math import factorial

import numpy as np
import pytest
import scipy.sparse as sp

import femur_fe
from femur_fe.errors import FemurFeError
from femur_fe.fe import _kernels, reference
from femur_fe.fe.assembly import StiffnessAssembler, element_stiffness
from femur_fe.fe.boxes import box_mesh
from femur_fe.fe.elements import quadrature, reference_nodes
from femur_fe.fe.loads import face_shape, simplex_rule
from femur_fe.fe.mesh import Mesh
from femur_fe.fe.recovery import strain

CELL_TYPES = ["tetra", "tetra10", "hexahedron"]
NQ = {"tetra": 1, "tetra10": 4, "hexahedron": 8}
RTOL = 1e-12


def random_elements(cell_type: str, m: int, seed: int, curved: bool = True) -> Mesh:
    """``m`` disconnected, randomly distorted, rotated and scaled elements (all det J > 0)."""
    rng = np.random.default_rng(seed)
    ref = reference_nodes(cell_type)
    k = len(ref)
    pts = []
    for _ in range(m):
        while True:
            x = ref + 0.15 * rng.uniform(-1, 1, ref.shape)
            if cell_type == "tetra10" and not curved:
                x[4:] = 0.5 * (x[[0, 1, 0, 0, 1, 2]] + x[[1, 2, 2, 3, 3, 3]])
            q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
            a = q * rng.uniform(0.5, 3.0, 3)  # rotation/reflection times axis scaling
            if np.linalg.det(a) < 0:
                a[:, 0] *= -1
            x = x @ a.T + rng.normal(scale=10, size=3)
            cand = Mesh(x, np.arange(k)[None], cell_type)
            if (cand.jacobian_determinants() > 0).all():
                pts.append(x)
                break
    return Mesh(np.vstack(pts), np.arange(m * k).reshape(m, k), cell_type)


def rel_err(a, b) -> float:
    a = a.toarray() if sp.issparse(a) else np.asarray(a)
    b = b.toarray() if sp.issparse(b) else np.asarray(b)
    return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.mark.parametrize("cell_type", CELL_TYPES)
@pytest.mark.parametrize("per_qp", [False, True])
def test_element_stiffness_matches_twin(cell_type, per_qp):
    mesh = random_elements(cell_type, 40, seed=7)
    rng = np.random.default_rng(3)
    young = rng.uniform(50, 20000, (mesh.n_cells, NQ[cell_type]) if per_qp else mesh.n_cells)
    ke = element_stiffness(mesh, young, 0.27)
    ke_ref = reference.element_stiffness(mesh, young, 0.27)
    assert ke.shape == (40, 3 * mesh.nodes_per_cell, 3 * mesh.nodes_per_cell)
    assert rel_err(ke, ke_ref) < RTOL
    # exact (bitwise) symmetry by construction of the kernel
    assert np.array_equal(ke, ke.transpose(0, 2, 1))


@pytest.mark.parametrize("cell_type", CELL_TYPES)
def test_unit_modulus_default_and_femur_fe_export(cell_type):
    mesh = random_elements(cell_type, 5, seed=1)
    assert rel_err(femur_fe.fe.element_stiffness(mesh), reference.element_stiffness(mesh, None)) < RTOL


@pytest.mark.parametrize("cell_type", CELL_TYPES)
def test_reference_gradients_are_exact_for_affine_elements(cell_type):
    # independent check of the twin itself: the gradient of the identity map x(X) is I
    rng = np.random.default_rng(2)
    ref = reference_nodes(cell_type)
    maps = [np.eye(3) + 0.3 * rng.uniform(-1, 1, (3, 3)) for _ in range(6)]
    pts = np.vstack([ref @ a.T + rng.normal(size=3) for a in maps])
    mesh = Mesh(pts, np.arange(len(pts)).reshape(6, -1), cell_type)
    assert (mesh.jacobian_determinants() > 0).all()
    grad, _ = reference.physical_gradients(cell_type, mesh.points, mesh.cells, quadrature(cell_type).points)
    x = mesh.points[mesh.cells]  # (m, k, 3)
    recon = np.einsum("mkc,mqkd->mqcd", x, grad)  # d x_c / d x_d = identity
    assert np.allclose(recon, np.eye(3), atol=1e-12)


@pytest.mark.parametrize("cell_type", CELL_TYPES)
@pytest.mark.parametrize("at", ["quadrature", "centroid"])
def test_strain_kernel_matches_twin(cell_type, at):
    mesh = random_elements(cell_type, 30, seed=11)
    u = np.random.default_rng(5).normal(size=(mesh.n_points, 3))
    eps = strain(mesh, u, at=at)
    eps_ref = reference.strain(mesh, u, at=at)
    assert eps.shape == eps_ref.shape
    assert rel_err(eps, eps_ref) < RTOL


@pytest.mark.parametrize("cell_type", CELL_TYPES)
def test_pattern_and_assembly_match_twin(cell_type):
    mesh = box_mesh(cell_type, 3, 2, 2, h=2.0, distortion=0.2, seed=4)
    asm = StiffnessAssembler(mesh, 0.3, n_threads=2)
    indptr, indices = asm.csr_structure()
    pattern = sp.csr_matrix((np.ones(len(indices)), indices, indptr), shape=(mesh.n_dofs,) * 2)
    node_pat = reference.sparsity_pattern(mesh)
    expected = sp.kron(node_pat, np.ones((3, 3)), format="csr")
    assert (pattern != expected).nnz == 0
    assert asm.nnz == expected.nnz
    young = np.random.default_rng(0).uniform(1, 10, (mesh.n_cells, NQ[cell_type]))
    k = asm.assemble(young)
    assert rel_err(k, reference.assemble_stiffness(mesh, young)) < RTOL


def test_translates_of_first_matches_twin():
    mesh = box_mesh("hexahedron", 3, 3, 2, h=0.5)
    moved = mesh.points.copy()
    moved[20, 0] += 1e-7
    for pts in (mesh.points, moved):
        for tol in (1e-12, 1e-6):
            assert _kernels.translates_of_first(np.ascontiguousarray(pts), mesh.cells, tol) == \
                reference.translates_of_first(pts, mesh.cells, tol)


@pytest.mark.parametrize("dim", [2, 3])
@pytest.mark.parametrize("n", [1, 2, 3])
def test_simplex_rule_integrates_monomials_exactly(dim, n):
    pts, w = simplex_rule(dim, n)
    deg = 2 * n - 1
    for a in range(deg + 1):
        for b in range(deg + 1 - a):
            for c in range(deg + 1 - a - b if dim == 3 else 1):
                val = w @ (pts[:, 0] ** a * pts[:, 1] ** b * (pts[:, 2] ** c if dim == 3 else 1))
                exact = factorial(a) * factorial(b) * factorial(c) / factorial(a + b + c + dim)
                assert val == pytest.approx(exact, rel=1e-13)


@pytest.mark.parametrize("kf", [3, 4, 6])
def test_face_shape_functions(kf):
    xi = np.random.default_rng(0).uniform(0, 0.4, (7, 2))
    n, dn = face_shape(kf, xi)
    assert np.allclose(n.sum(axis=1), 1.0, atol=1e-14)
    assert np.allclose(dn.sum(axis=1), 0.0, atol=1e-14)
    # gradients against central differences
    h = 1e-6
    for a in range(2):
        d = np.zeros(2)
        d[a] = h
        fd = (face_shape(kf, xi + d)[0] - face_shape(kf, xi - d)[0]) / (2 * h)
        assert np.allclose(fd, dn[:, :, a], atol=1e-8)


def test_openmp_is_enabled_on_this_machine():
    # gcc here supports OpenMP: a silently serial build must not pass
    assert femur_fe.fe.openmp_enabled() is True


def test_effective_n_threads_semantics():
    all_cores = _kernels.omp_max_threads()
    assert femur_fe.fe.effective_n_threads(None) == all_cores
    assert femur_fe.fe.effective_n_threads(-1) == all_cores
    assert femur_fe.fe.effective_n_threads(-all_cores - 5) == 1
    assert femur_fe.fe.effective_n_threads(3) == 3
    assert femur_fe.fe.effective_n_threads(np.int64(2)) == 2
    for bad in (0, 1.5, "2", True):
        with pytest.raises(FemurFeError, match="n_threads"):
            femur_fe.fe.effective_n_threads(bad)


@pytest.mark.parametrize("cell_type", CELL_TYPES)
def test_geometry_cache_matches_twin(cell_type):
    mesh = random_elements(cell_type, 20, seed=13)
    rule = quadrature(cell_type)
    asm = StiffnessAssembler(mesh, cache_geometry=True)
    grad, det = reference.physical_gradients(cell_type, mesh.points, mesh.cells, rule.points)
    expected = np.sqrt(det * rule.weights)[:, :, None, None] * grad
    assert rel_err(asm._geometry.reshape(len(expected), -1), expected.reshape(len(expected), -1)) < RTOL


def test_csr_structure_int64_matches_int32():
    # the int64 variant is what meshes with nnz >= 2**31 use; check it on a small mesh
    asm = StiffnessAssembler(box_mesh("tetra10", 2, 2, 1, distortion=0.1))
    ip32, ix32 = asm.csr_structure()
    ip64 = np.empty(asm.n_dofs + 1, dtype=np.int64)
    ix64 = np.empty(asm.nnz, dtype=np.int64)
    _kernels.csr_structure(asm._bptr, asm._bcols, ip64, ix64, 2)
    assert np.array_equal(ip32, ip64) and np.array_equal(ix32, ix64)
