"""Plain NumPy twins of the compiled kernels in ``femur_fe.fe._kernels``.

These are slow, memory-hungry and written for clarity: they use the textbook
B-matrix (Voigt) formulation, while the kernels use an index formula, so the two are
independent implementations. Tests compare kernels and twins on random distorted
elements; use the twins only on small meshes.
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from .elements import jacobians, quadrature, shape_gradients
from .mesh import Mesh

#: reference-element centroid of each cell type (where ``at="centroid"`` evaluates)
CENTROID_XI = {
    "tetra": np.array([[0.25, 0.25, 0.25]]),
    "tetra10": np.array([[0.25, 0.25, 0.25]]),
    "hexahedron": np.array([[0.0, 0.0, 0.0]]),
}


def physical_gradients(cell_type: str, points: np.ndarray, cells: np.ndarray,
                       xi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Shape-function gradients dN/dX (m, q, k, 3) in 1/mm and det J (m, q) at points ``xi``.

    With ``J[a, b] = dX_b/dxi_a`` (:func:`femur_fe.fe.elements.jacobians`), the chain rule
    gives ``dN/dxi = J dN/dX``, solved here for every node.
    """
    jac = jacobians(cell_type, points, cells, xi)  # (m, q, 3, 3)
    dn = shape_gradients(cell_type, xi)  # (q, k, 3)
    det = np.linalg.det(jac)
    rhs = np.broadcast_to(dn.transpose(0, 2, 1)[None], (len(cells),) + dn.transpose(0, 2, 1).shape)
    grad = np.linalg.solve(jac, rhs).transpose(0, 1, 3, 2)  # (m, q, k, 3)
    return grad, det


def isotropic_voigt_d(young: float, poisson: float) -> np.ndarray:
    """6x6 isotropic elasticity matrix, Voigt order xx, yy, zz, yz, xz, xy (engineering shear)."""
    lam = young * poisson / ((1 + poisson) * (1 - 2 * poisson))
    mu = young / (2 * (1 + poisson))
    d = np.zeros((6, 6))
    d[:3, :3] = lam
    d[[0, 1, 2], [0, 1, 2]] += 2 * mu
    d[[3, 4, 5], [3, 4, 5]] = mu
    return d


def b_matrices(grad: np.ndarray) -> np.ndarray:
    """Strain-displacement matrices (..., 6, 3k) from gradients (..., k, 3), Voigt order."""
    k = grad.shape[-2]
    b = np.zeros(grad.shape[:-2] + (6, 3 * k))
    gx, gy, gz = grad[..., 0], grad[..., 1], grad[..., 2]
    b[..., 0, 0::3] = gx
    b[..., 1, 1::3] = gy
    b[..., 2, 2::3] = gz
    b[..., 3, 1::3] = gz
    b[..., 3, 2::3] = gy
    b[..., 4, 0::3] = gz
    b[..., 4, 2::3] = gx
    b[..., 5, 0::3] = gy
    b[..., 5, 1::3] = gx
    return b


def _young_qp(mesh: Mesh, young, nq: int) -> np.ndarray:
    if young is None:
        return np.ones((mesh.n_cells, nq))
    e = np.asarray(young, dtype=np.float64)
    if e.ndim == 0:
        return np.full((mesh.n_cells, nq), float(e))
    if e.ndim == 1:
        return np.repeat(e[:, None], nq, axis=1)
    return np.broadcast_to(e, (mesh.n_cells, nq))


def element_stiffness(mesh: Mesh, young=None, poisson: float = 0.3) -> np.ndarray:
    """Element stiffness matrices (m, 3k, 3k) in N/mm: sum_q w_q det J_q E_q B^T D B.

    ``young`` None (unit modulus), (m,) per element or (m, q) per quadrature point, MPa.
    """
    rule = quadrature(mesh.cell_type)
    grad, det = physical_gradients(mesh.cell_type, mesh.points, mesh.cells, rule.points)
    b = b_matrices(grad)  # (m, q, 6, 3k)
    d = isotropic_voigt_d(1.0, poisson)
    scale = _young_qp(mesh, young, len(rule.weights)) * det * rule.weights  # (m, q)
    return np.einsum("mq,mqik,ij,mqjl->mkl", scale, b, d, b, optimize=True)


def element_dofs(cells: np.ndarray) -> np.ndarray:
    """Interleaved global DOF ids (m, 3k) of every element."""
    return (3 * cells[:, :, None] + np.arange(3)).reshape(len(cells), -1)


def assemble_stiffness(mesh: Mesh, young, poisson: float = 0.3) -> sp.csr_matrix:
    """Global stiffness (3n, 3n) by summing :func:`element_stiffness` through a COO matrix."""
    ke = element_stiffness(mesh, young, poisson)
    dofs = element_dofs(mesh.cells)
    nd = dofs.shape[1]
    rows = np.repeat(dofs, nd, axis=1).ravel()
    cols = np.tile(dofs, (1, nd)).ravel()
    return sp.coo_matrix((ke.ravel(), (rows, cols)), shape=(mesh.n_dofs,) * 2).tocsr()


def strain(mesh: Mesh, u: np.ndarray, at: str = "quadrature") -> np.ndarray:
    """Small-strain tensors sym(grad u) (tensor shear) at the quadrature points (m, q, 3, 3)
    or at the reference centroid (m, 3, 3). ``u`` (n, 3) mm."""
    xi = quadrature(mesh.cell_type).points if at == "quadrature" else CENTROID_XI[mesh.cell_type]
    grad, _ = physical_gradients(mesh.cell_type, mesh.points, mesh.cells, xi)
    ue = np.asarray(u, dtype=np.float64).reshape(-1, 3)[mesh.cells]  # (m, k, 3)
    h = np.einsum("mkc,mqkd->mqcd", ue, grad)
    eps = 0.5 * (h + h.transpose(0, 1, 3, 2))
    return eps if at == "quadrature" else eps[:, 0]


def translates_of_first(points: np.ndarray, cells: np.ndarray, tol: float) -> bool:
    """True when every element equals element 0 translated (node by node within ``tol`` mm)."""
    x = points[cells]
    off = x - x[:, :1]
    return bool(len(cells)) and bool(np.all(np.abs(off - off[:1]) <= tol))


def sparsity_pattern(mesh: Mesh) -> sp.csr_matrix:
    """Boolean node-node pattern (n, n): nodes sharing an element (twin of the pattern kernel)."""
    m, k = mesh.cells.shape
    rows = np.repeat(mesh.cells, k, axis=1).ravel()
    cols = np.tile(mesh.cells, (1, k)).ravel()
    a = sp.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(mesh.n_points,) * 2)
    a.sum_duplicates()
    a.data[:] = 1.0
    return a


# ----------------------------------------------------------------------------- multigrid (femur_fe._amg)
def bsr_to_dense(indptr: np.ndarray, indices: np.ndarray, data: np.ndarray, n_cols: int) -> np.ndarray:
    """Dense matrix of a block sparse (BSR) triple; ``n_cols`` block columns."""
    nb, (r, c) = len(indptr) - 1, data.shape[1:]
    out = np.zeros((nb * r, n_cols * c), dtype=np.float64)
    for i in range(nb):
        for p in range(indptr[i], indptr[i + 1]):
            j = indices[p]
            out[i * r:(i + 1) * r, j * c:(j + 1) * c] += data[p]
    return out


def chebyshev_smooth(a: np.ndarray, dinv: np.ndarray, b: np.ndarray, x: np.ndarray, lower: float, upper: float,
                     degree: int) -> np.ndarray:
    """``degree`` steps of Chebyshev iteration for a x = b preconditioned by the block diagonal
    inverse ``dinv`` (nb, R, R), on the eigenvalue interval [lower, upper] (Saad 2003, Iterative
    Methods for Sparse Linear Systems, algorithm 12.1), dense; returns the new x."""
    nb, r = dinv.shape[:2]
    dmat = np.zeros((nb * r, nb * r))
    for i in range(nb):
        dmat[i * r:(i + 1) * r, i * r:(i + 1) * r] = dinv[i]
    theta, delta = 0.5 * (upper + lower), 0.5 * (upper - lower)
    sigma = theta / delta
    x = x.astype(np.float64).copy()
    res = b - a @ x
    d = dmat @ res / theta
    rho = 1.0 / sigma
    for _ in range(degree - 1):
        x = x + d
        res = b - a @ x
        rho_new = 1.0 / (2.0 * sigma - rho)
        d = rho_new * rho * d + 2.0 * rho_new / delta * (dmat @ res)
        rho = rho_new
    return x + d


def smoothed_prolongator(a: np.ndarray, dinv: np.ndarray, t: np.ndarray, weight: float) -> np.ndarray:
    """Dense ``P = T - weight D^-1 A T`` with D^-1 the block diagonal inverse (nb, R, R)."""
    nb, r = dinv.shape[:2]
    dmat = np.zeros((nb * r, nb * r))
    for i in range(nb):
        dmat[i * r:(i + 1) * r, i * r:(i + 1) * r] = dinv[i]
    return t - weight * dmat @ (a @ t)
