"""Sparse strain-displacement operator: strains at the quadrature points and internal forces.

``B`` maps nodal displacements (3n, interleaved, mm) to the small strains at every
quadrature point of the stiffness rule (:func:`femur_fe.fe.elements.quadrature`), in Voigt
order xx, yy, zz, yz, xz, xy with *engineering* shear (gamma = 2 eps), stored component by
component: ``(B u).reshape(6, P)`` holds one contiguous row per component, so point-wise
material laws work on contiguous arrays. With ``w`` the quadrature weights times the
Jacobian determinants (mm^3), the internal forces of a stress field ``s`` (6, P) MPa are
``B^T (w s)`` (N), and for isotropic moduli ``E`` (P,) the
stiffness is ``B^T diag(w E) D1 B`` (``D1`` the unit-modulus isotropic matrix): the matrix
that :class:`femur_fe.fe.StiffnessAssembler` assembles. A material whose stress depends
nonlinearly on the strain (:mod:`femur_fe.fe.nonlinear`) is evaluated with two sparse
products and point-wise arithmetic, without re-assembling a matrix.

Size: ``9 k`` stored values per quadrature point (k nodes per cell): 36 per tet4, 360 per
tet10 and 576 per hex8 element (12 bytes each).
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from ..errors import FemurFeError, MeshError
from .elements import quadrature, shape_gradients_physical
from .mesh import Mesh

#: stored values per quadrature point and node of the cell (3 normal + 6 shear entries)
VALUES_PER_POINT_NODE = 9


def strain_operator_nbytes(mesh: Mesh) -> int:
    """Bytes of :class:`StrainOperator` for ``mesh`` (values and column indices of ``B``)."""
    k = mesh.cells.shape[1]
    nq = len(quadrature(mesh.cell_type).weights)
    return int(mesh.n_cells * nq * (VALUES_PER_POINT_NODE * k * 12 + 6 * 4 + 8) + 8)


class StrainOperator:
    """``B`` (6P, 3n) CSR and the point weights ``w`` (P,) of a mesh (P = cells x points per cell).

    Row ``c P + p`` is strain component ``c`` at point ``p``; point ``p`` is quadrature point
    ``p % q`` of cell ``p // q``.

    Parameters
    ----------
    mesh : Mesh (tet4, tet10 or hex8), mm
    columns : optional (3n, c) sparse matrix ``T``; the operator then acts on ``z`` with
        ``u = T z`` (``B T`` is stored instead of ``B``), e.g. the master-slave map of rigid
        ties restricted to the free DOFs.
    """

    def __init__(self, mesh: Mesh, columns: sp.spmatrix | None = None) -> None:
        if not isinstance(mesh, Mesh):
            raise FemurFeError(f"mesh must be a femur_fe.Mesh, got {type(mesh).__name__}")
        rule = quadrature(mesh.cell_type)
        grad, det = shape_gradients_physical(mesh.cell_type, mesh.points, mesh.cells, rule.points)
        if not (det > 0).all():
            bad = np.flatnonzero((det <= 0).any(axis=1))
            raise MeshError(f"{len(bad)} cells have a non-positive Jacobian determinant (e.g. {bad[:10].tolist()}); "
                            "fix the mesh (mesh.validate() lists inverted cells)")
        m, q, k, _ = grad.shape
        npts = m * q
        g = grad.reshape(npts, k, 3)
        nodes = np.repeat(mesh.cells, q, axis=0).astype(np.int64)  # (P, k)
        dof = 3 * nodes
        # rows xx, yy, zz (k entries per point), then yz, xz, xy (2k entries); CSR built directly
        spec = [[(0, 0)], [(1, 1)], [(2, 2)], [(1, 2), (2, 1)], [(0, 2), (2, 0)], [(0, 1), (1, 0)]]
        cols, vals = [], []
        for parts in spec:
            cols.append(np.concatenate([dof + comp for comp, _ in parts], axis=1).ravel())
            vals.append(np.concatenate([g[:, :, axis] for _, axis in parts], axis=1).ravel())
        lengths = np.repeat(np.array([k, k, k, 2 * k, 2 * k, 2 * k], dtype=np.int64), npts)
        indptr = np.zeros(6 * npts + 1, dtype=np.int64)
        np.cumsum(lengths, out=indptr[1:])
        b = sp.csr_matrix((np.concatenate(vals), np.concatenate(cols), indptr), shape=(6 * npts, 3 * mesh.n_points))
        del cols, vals
        b.sum_duplicates()
        if columns is not None:
            if columns.shape[0] != 3 * mesh.n_points:
                raise FemurFeError(f"columns must have {3 * mesh.n_points} rows, got {columns.shape[0]}")
            b = (b @ sp.csr_matrix(columns)).tocsr()
        if b.nnz < 2**31 - 1:
            b.indices = b.indices.astype(np.int32)
            b.indptr = b.indptr.astype(np.int32)
        self.B = b
        self.weights = (det * rule.weights[None, :]).ravel()
        self.n_points = npts
        self.points_per_cell = q

    @property
    def nbytes(self) -> int:
        return int(self.B.data.nbytes + self.B.indices.nbytes + self.B.indptr.nbytes + self.weights.nbytes)

    def strain(self, z: np.ndarray) -> np.ndarray:
        """Strains (6, P), Voigt order xx, yy, zz, yz, xz, xy, engineering shear."""
        return (self.B @ z).reshape(6, -1)

    def forces(self, stress: np.ndarray) -> np.ndarray:
        """Internal forces ``B^T (w s)`` (N) of a stress field ``s`` (6, P) MPa, Voigt order."""
        return self.B.T @ (stress * self.weights[None, :]).ravel()

    def forces_weighted(self, ws: np.ndarray) -> np.ndarray:
        """``B^T ws`` for a stress field already multiplied by the point weights."""
        return self.B.T @ ws.ravel()


def unit_isotropic_stress(eps: np.ndarray, lam: float, mu: float, scale: np.ndarray | None = None) -> np.ndarray:
    """Stress (6, P) of a unit Young's modulus for Voigt strains ``eps`` (6, P) (engineering
    shear), with the unit Lame constants ``lam``, ``mu`` (:func:`femur_fe.fe.assembly.unit_lame`);
    times ``scale`` (P,) per point when given (moduli, weights)."""
    out = np.multiply(eps, mu)  # shear rows: mu gamma
    normal = out[:3]
    normal *= 2.0
    tr = eps[0] + eps[1]
    tr += eps[2]
    tr *= lam
    normal += tr
    if scale is not None:
        out *= scale
    return out


def voigt_to_tensor(eps: np.ndarray) -> np.ndarray:
    """(6, P) Voigt strains (engineering shear) -> (P, 3, 3) tensors (tensor shear)."""
    t = np.empty(eps.shape[1:] + (3, 3))
    t[..., 0, 0], t[..., 1, 1], t[..., 2, 2] = eps[0], eps[1], eps[2]
    t[..., 1, 2] = t[..., 2, 1] = 0.5 * eps[3]
    t[..., 0, 2] = t[..., 2, 0] = 0.5 * eps[4]
    t[..., 0, 1] = t[..., 1, 0] = 0.5 * eps[5]
    return t
