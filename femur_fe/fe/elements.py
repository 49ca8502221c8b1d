"""Reference elements: shape functions, gradients and quadrature rules.

Node orderings follow VTK/meshio:

* ``tetra`` (tet4): vertices 0..3 at (0,0,0), (1,0,0), (0,1,0), (0,0,1).
* ``tetra10``: vertices 0..3, then mid-edge nodes on edges
  (0,1), (1,2), (0,2), (0,3), (1,3), (2,3).
* ``hexahedron`` (hex8): (-1,-1,-1), (1,-1,-1), (1,1,-1), (-1,1,-1), then the same at z=+1.

Pure NumPy; the compiled kernels in ``ext/`` use the same conventions and are tested
against the reference implementations in :mod:`femur_fe.fe.reference`.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import MeshError

CELL_TYPES = ("tetra", "tetra10", "hexahedron")
NODES_PER_CELL = {"tetra": 4, "tetra10": 10, "hexahedron": 8}

_TET4_NODES = np.array([[0.0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]])
_TET10_EDGES = np.array([[0, 1], [1, 2], [0, 2], [0, 3], [1, 3], [2, 3]])
_HEX8_NODES = np.array(
    [[-1.0, -1, -1], [1, -1, -1], [1, 1, -1], [-1, 1, -1],
     [-1, -1, 1], [1, -1, 1], [1, 1, 1], [-1, 1, 1]]
)

# Surface facets of each cell (outward normal by right-hand rule on the listed order).
FACES = {
    "tetra": np.array([[0, 2, 1], [0, 1, 3], [1, 2, 3], [0, 3, 2]]),
    "tetra10": np.array([[0, 2, 1, 6, 5, 4], [0, 1, 3, 4, 8, 7], [1, 2, 3, 5, 9, 8], [0, 3, 2, 7, 9, 6]]),
    "hexahedron": np.array([[0, 3, 2, 1], [4, 5, 6, 7], [0, 1, 5, 4],
                            [1, 2, 6, 5], [2, 3, 7, 6], [3, 0, 4, 7]]),
}


def check_cell_type(cell_type: str) -> str:
    """Return ``cell_type`` if supported, else raise a :class:`MeshError` naming the options."""
    if cell_type not in CELL_TYPES:
        raise MeshError(
            f"unsupported cell type {cell_type!r}; femur_fe supports {', '.join(CELL_TYPES)} "
            "(convert other meshes with meshio or re-mesh the surface with femur_fe.bone.tetmesh_from_surface)"
        )
    return cell_type


def reference_nodes(cell_type: str) -> np.ndarray:
    """Reference coordinates of the element nodes, shape (k, 3)."""
    check_cell_type(cell_type)
    if cell_type == "tetra":
        return _TET4_NODES.copy()
    if cell_type == "tetra10":
        mids = 0.5 * (_TET4_NODES[_TET10_EDGES[:, 0]] + _TET4_NODES[_TET10_EDGES[:, 1]])
        return np.vstack([_TET4_NODES, mids])
    return _HEX8_NODES.copy()


def shape_functions(cell_type: str, xi: np.ndarray) -> np.ndarray:
    """Shape function values at reference points ``xi`` (q, 3); returns (q, k)."""
    xi = np.atleast_2d(np.asarray(xi, dtype=np.float64))
    x, y, z = xi[:, 0], xi[:, 1], xi[:, 2]
    if cell_type == "tetra":
        return np.stack([1.0 - x - y - z, x, y, z], axis=1)
    if cell_type == "tetra10":
        lam = np.stack([1.0 - x - y - z, x, y, z], axis=1)
        corner = lam * (2.0 * lam - 1.0)
        edge = 4.0 * lam[:, _TET10_EDGES[:, 0]] * lam[:, _TET10_EDGES[:, 1]]
        return np.hstack([corner, edge])
    if cell_type == "hexahedron":
        s = _HEX8_NODES
        return 0.125 * (1 + np.outer(x, s[:, 0])) * (1 + np.outer(y, s[:, 1])) * (1 + np.outer(z, s[:, 2]))
    check_cell_type(cell_type)
    raise AssertionError  # pragma: no cover


def shape_gradients(cell_type: str, xi: np.ndarray) -> np.ndarray:
    """Gradients of the shape functions w.r.t. reference coordinates; returns (q, k, 3)."""
    xi = np.atleast_2d(np.asarray(xi, dtype=np.float64))
    q = xi.shape[0]
    x, y, z = xi[:, 0], xi[:, 1], xi[:, 2]
    if cell_type == "tetra":
        g = np.array([[-1.0, -1, -1], [1, 0, 0], [0, 1, 0], [0, 0, 1]])
        return np.broadcast_to(g, (q, 4, 3)).copy()
    if cell_type == "tetra10":
        lam = np.stack([1.0 - x - y - z, x, y, z], axis=1)  # (q, 4)
        dlam = np.array([[-1.0, -1, -1], [1, 0, 0], [0, 1, 0], [0, 0, 1]])  # (4, 3)
        out = np.empty((q, 10, 3))
        out[:, :4, :] = (4.0 * lam - 1.0)[:, :, None] * dlam[None, :, :]
        a, b = _TET10_EDGES[:, 0], _TET10_EDGES[:, 1]
        out[:, 4:, :] = 4.0 * (lam[:, a, None] * dlam[None, b, :] + lam[:, b, None] * dlam[None, a, :])
        return out
    if cell_type == "hexahedron":
        s = _HEX8_NODES
        fx = 1 + np.outer(x, s[:, 0])
        fy = 1 + np.outer(y, s[:, 1])
        fz = 1 + np.outer(z, s[:, 2])
        return 0.125 * np.stack([s[:, 0] * fy * fz, fx * s[:, 1] * fz, fx * fy * s[:, 2]], axis=2)
    check_cell_type(cell_type)
    raise AssertionError  # pragma: no cover


@dataclass(frozen=True)
class Quadrature:
    """A quadrature rule on the reference element: ``points`` (q, 3), ``weights`` (q,).

    ``degree`` is the polynomial degree integrated exactly.
    """

    points: np.ndarray
    weights: np.ndarray
    degree: int


def quadrature(cell_type: str) -> Quadrature:
    """The default rule used for stiffness, exact for the element on affine geometry.

    tet4: 1 point (degree 1); tet10: 4 points (degree 2, exact for the stiffness of a
    straight-sided element); hex8: 2x2x2 Gauss (degree 3 per direction).
    """
    check_cell_type(cell_type)
    if cell_type == "tetra":
        return Quadrature(np.array([[0.25, 0.25, 0.25]]), np.array([1.0 / 6.0]), 1)
    if cell_type == "tetra10":
        a, b = 0.5854101966249685, 0.1381966011250105
        pts = np.array([[b, b, b], [a, b, b], [b, a, b], [b, b, a]])
        return Quadrature(pts, np.full(4, 1.0 / 24.0), 2)
    g = 1.0 / np.sqrt(3.0)
    pts = np.array([[i, j, k] for k in (-g, g) for j in (-g, g) for i in (-g, g)])
    return Quadrature(pts, np.ones(8), 3)


def n_quadrature_points(cell_type: str) -> int:
    """Number of quadrature points of the default rule for ``cell_type``."""
    return len(quadrature(cell_type).weights)


def jacobians(cell_type: str, points: np.ndarray, cells: np.ndarray, xi: np.ndarray) -> np.ndarray:
    """Jacobian matrices dX/dxi at reference points ``xi`` (q,3) for every cell: (m, q, 3, 3).

    ``J[e, p, a, b] = sum_k dN_k/dxi_a (xi_p) * X[cells[e, k], b]``.
    """
    dn = shape_gradients(cell_type, xi)  # (q, k, 3)
    x = points[cells]  # (m, k, 3)
    return np.einsum("qka,mkb->mqab", dn, x, optimize=True)


def shape_gradients_physical(
    cell_type: str, points: np.ndarray, cells: np.ndarray, xi: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Physical gradients dN/dX (m, q, k, 3) and Jacobian determinants (m, q)."""
    jac = jacobians(cell_type, points, cells, xi)
    det = np.linalg.det(jac)
    inv = np.linalg.inv(jac)  # dxi/dX
    dn = shape_gradients(cell_type, xi)  # (q, k, 3)
    # dN/dxi_a = sum_b J[a, b] dN/dX_b  =>  dN/dX_b = sum_a inv(J)[b, a] dN/dxi_a
    grad = np.einsum("qka,mqba->mqkb", dn, inv, optimize=True)
    return grad, det
