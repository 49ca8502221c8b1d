"""Strain and stress recovery from nodal displacements (small strain, isotropic linear elasticity).

Tensors are (..., 3, 3) symmetric with *tensor* shear components (eps_xy = gamma_xy / 2).

* ``at="quadrature"``: at the stiffness quadrature points, (m, q, 3, 3) (q = 1, 4, 8).
* ``at="centroid"``: at the centroid of the reference element (tet (1/4, 1/4, 1/4), hex
  (0, 0, 0)), (m, 3, 3). For affine elements this equals the element's volume average.
* ``at="node"``: volume-weighted average of the centroid values of the cells around each
  node, (n, 3, 3); nodes used by no cell get NaN.

Compiled kernel (parallel over elements) with the NumPy twin
:func:`femur_fe.fe.reference.strain`.
"""
from __future__ import annotations

import numpy as np

from ..errors import FemurFeError, MeshError
from . import _kernels
from .assembly import (
    check_mesh,
    check_poisson,
    check_young,
    unit_lame,
)
from .elements import quadrature, shape_gradients
from .mesh import Mesh
from .parallel import effective_n_threads
from .reference import CENTROID_XI

_AT = ("quadrature", "centroid", "node")
_MODE = {"tetra": _kernels.MODE_TET4, "tetra10": _kernels.MODE_ISO, "hexahedron": _kernels.MODE_ISO}


def _check_at(at) -> str:
    if at not in _AT:
        raise FemurFeError(f"at must be one of {', '.join(map(repr, _AT))}, got {at!r}")
    return at


def check_displacement(u, mesh: Mesh, name: str = "u") -> np.ndarray:
    """Return nodal displacements as C-contiguous float64 (n, 3); accepts (3n,) interleaved or (n, 3)."""
    arr = np.asarray(u)
    n = mesh.n_points
    if arr.dtype.kind not in "fiu":
        raise FemurFeError(f"{name} must be real displacements in mm, got dtype {arr.dtype}")
    if arr.shape == (3 * n,):
        arr = arr.reshape(n, 3)
    elif arr.shape != (n, 3):
        raise FemurFeError(f"{name} must have shape ({3 * n},) (interleaved DOFs) or ({n}, 3), "
                           f"got {arr.shape}")
    arr = np.ascontiguousarray(arr, dtype=np.float64)
    if not np.isfinite(arr).all():
        raise FemurFeError(f"{name} contains non-finite displacements; check the solver result")
    return arr


def _strain_points(mesh: Mesh, u: np.ndarray, xi: np.ndarray, n_threads: int | None) -> np.ndarray:
    dn = np.ascontiguousarray(shape_gradients(mesh.cell_type, xi), dtype=np.float64)
    out = np.empty((mesh.n_cells, len(xi), 3, 3))
    bad = np.zeros(mesh.n_cells, dtype=np.int8)
    _kernels.strain_at(_MODE[mesh.cell_type], mesh.points, mesh.cells, dn, u, out, bad,
                       effective_n_threads(n_threads))
    if bad.any():
        ids = np.flatnonzero(bad)
        raise MeshError(f"{len(ids)} cells have a non-positive Jacobian determinant (e.g. "
                        f"{ids[:10].tolist()}); strain is undefined there. Fix the mesh "
                        "(mesh.validate() lists inverted cells)")
    return out


def node_average(mesh: Mesh, values: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """Weighted average at the nodes of per-cell ``values`` (m, ...) -> (n, ...).

    ``weights`` (m,) default: cell volumes (mm^3); zero weights leave cells out. The cells
    define node-cell incidence (tet10 mid-edge nodes included). Nodes used by no (weighted)
    cell get NaN.
    """
    vals = np.asarray(values, dtype=np.float64)
    if vals.shape[:1] != (mesh.n_cells,):
        raise FemurFeError(f"values must have first dimension n_cells={mesh.n_cells}, got {vals.shape}")
    w = mesh.cell_volumes() if weights is None else np.asarray(weights, dtype=np.float64)
    if w.shape != (mesh.n_cells,):
        raise FemurFeError(f"weights must have shape ({mesh.n_cells},), got {w.shape}")
    flat = vals.reshape(mesh.n_cells, -1)
    k = mesh.cells.shape[1]
    idx = mesh.cells.ravel()
    den = np.bincount(idx, np.repeat(w, k), minlength=mesh.n_points)
    out = np.empty((mesh.n_points, flat.shape[1]))
    for c in range(flat.shape[1]):
        out[:, c] = np.bincount(idx, np.repeat(w * flat[:, c], k), minlength=mesh.n_points)
    with np.errstate(invalid="ignore", divide="ignore"):
        out /= den[:, None]
    out[den == 0] = np.nan
    return out.reshape((mesh.n_points,) + vals.shape[1:])


def strain(mesh: Mesh, u, at: str = "quadrature", *, n_threads: int | None = None) -> np.ndarray:
    """Small-strain tensors sym(grad u) (tensor shear), dimensionless.

    Parameters
    ----------
    mesh : Mesh
    u : nodal displacements in mm, (3n,) interleaved or (n, 3)
    at : "quadrature" -> (m, q, 3, 3); "centroid" -> (m, 3, 3); "node" -> (n, 3, 3)
    n_threads : threads (None = all cores)
    """
    check_mesh(mesh)
    at = _check_at(at)
    uu = check_displacement(u, mesh)
    if at == "quadrature":
        return _strain_points(mesh, uu, quadrature(mesh.cell_type).points, n_threads)
    eps = _strain_points(mesh, uu, CENTROID_XI[mesh.cell_type], n_threads)[:, 0]
    return eps if at == "centroid" else node_average(mesh, eps)


def _hooke(eps: np.ndarray, young: np.ndarray, poisson: float) -> np.ndarray:
    """sigma = E (lam_hat tr(eps) I + 2 mu_hat eps), ``young`` broadcastable to eps[..., 0, 0]."""
    lam, mu = unit_lame(poisson)
    tr = np.trace(eps, axis1=-2, axis2=-1)
    sig = (2.0 * mu) * eps
    idx = np.arange(3)
    sig[..., idx, idx] += (lam * tr)[..., None]
    return young[..., None, None] * sig


def stress(mesh: Mesh, u, young, poisson: float = 0.3, at: str = "quadrature", *,
           n_threads: int | None = None) -> np.ndarray:
    """Cauchy stress tensors in MPa of isotropic linear elasticity, same shapes as :func:`strain`.

    ``young`` (MPa): (m,) per element or (m, q) per quadrature point. With per-point moduli,
    ``at="centroid"`` uses the volume-weighted mean modulus of each element; ``at="node"``
    averages the centroid stresses (volume-weighted).
    """
    check_mesh(mesh)
    at = _check_at(at)
    nu = check_poisson(poisson)
    e = check_young(young, mesh)  # (m, 1) or (m, q)
    eps = strain(mesh, u, "quadrature" if at == "quadrature" else "centroid", n_threads=n_threads)
    if at == "quadrature":
        return _hooke(eps, np.broadcast_to(e, eps.shape[:2]), nu)
    sig = _hooke(eps, element_average_young(mesh, e), nu)
    return sig if at == "centroid" else node_average(mesh, sig)


def element_average_young(mesh: Mesh, young) -> np.ndarray:
    """Volume-weighted mean modulus (m,) MPa of per-element or per-quadrature-point moduli."""
    e = check_young(young, mesh)
    if e.shape[1] == 1:
        return e[:, 0].copy()
    rule = quadrature(mesh.cell_type)
    wdet = mesh.jacobian_determinants() * rule.weights
    return (wdet * e).sum(axis=1) / wdet.sum(axis=1)
