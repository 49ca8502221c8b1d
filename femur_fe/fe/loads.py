"""Consistent nodal load vectors: body force, surface traction and pressure.

All vectors are (3n,) with interleaved DOFs (``dof = 3*node + component``), in N.
Loads are *consistent*: ``f_a = integral N_a t dA`` (or ``N_a b dV``) with the element's
own shape functions, not lumped. Quadrature is exact for polynomial integrands:

* body force: degree 1 (tet4), 5 (tet10: quadratic N times the cubic det J of a curved
  element), 2x2x2 Gauss (hex8: trilinear N times det J of degree <= 2 per direction).
* pressure (load along the area-weighted normal ``x_xi x x_eta``, a polynomial): exact on
  any tri3, tri6 or quad4 face, flat or curved/warped.
* traction (force per area): exact on flat faces (tri3; straight-sided tri6; planar quad4).
  On curved faces the area element is not a polynomial and the rule (degree 5 on
  triangles, 2x2 Gauss on quads) is an approximation.
"""
from __future__ import annotations

import numpy as np
from scipy.special import roots_jacobi, roots_legendre

from ..errors import LoadCaseError, MeshError
from .assembly import check_mesh
from .elements import jacobians, shape_functions
from .mesh import Mesh

#: number of nodes of a boundary face for each volume cell type (tri3, tri6, quad4)
FACE_NODES = {"tetra": 3, "tetra10": 6, "hexahedron": 4}
_CHUNK = 65536  # elements per chunk in the body-force integration (bounds temporary memory)


# ----------------------------------------------------------------------------- quadrature rules
def simplex_rule(dim: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Collapsed (Stroud conical product) Gauss rule on the unit simplex of dimension 2 or 3.

    ``n`` points per direction integrate polynomials of total degree ``2n - 1`` exactly.
    Returns points (n**dim, dim) and weights summing to the simplex volume (1/2 or 1/6).
    """
    # u in [0,1] with weight (1-u)^(dim-1), v with (1-v)^(dim-2), w plain Gauss-Legendre
    rules = []
    for alpha in range(dim - 1, -1, -1):
        t, w = roots_jacobi(n, alpha, 0) if alpha else roots_legendre(n)
        rules.append(((t + 1) / 2, w / 2 ** (alpha + 1)))
    grids = np.meshgrid(*[r[0] for r in rules], indexing="ij")
    wts = np.prod(np.meshgrid(*[r[1] for r in rules], indexing="ij"), axis=0).ravel()
    u = [g.ravel() for g in grids]
    if dim == 2:
        pts = np.stack([u[0], u[1] * (1 - u[0])], axis=1)
    else:
        pts = np.stack([u[0], u[1] * (1 - u[0]), u[2] * (1 - u[0]) * (1 - u[1])], axis=1)
    return pts, wts


def _gauss_square(n: int) -> tuple[np.ndarray, np.ndarray]:
    t, w = roots_legendre(n)
    x, y = np.meshgrid(t, t, indexing="ij")
    return np.stack([x.ravel(), y.ravel()], axis=1), np.outer(w, w).ravel()


def face_shape(kf: int, xi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Shape functions (q, kf) and reference gradients (q, kf, 2) of a tri3, tri6 or quad4 face.

    Node orders: tri3 corners (0,0), (1,0), (0,1); tri6 adds mid-edge nodes (0-1), (1-2),
    (2-0); quad4 corners (-1,-1), (1,-1), (1,1), (-1,1) (counter-clockwise).
    """
    x, y = xi[:, 0], xi[:, 1]
    q = len(xi)
    if kf == 4:
        sx = np.array([-1.0, 1, 1, -1])
        sy = np.array([-1.0, -1, 1, 1])
        fx = 1 + np.outer(x, sx)
        fy = 1 + np.outer(y, sy)
        n = 0.25 * fx * fy
        dn = 0.25 * np.stack([sx * fy, fx * sy], axis=2)
        return n, dn
    lam = np.stack([1 - x - y, x, y], axis=1)  # (q, 3)
    dlam = np.array([[-1.0, -1], [1, 0], [0, 1]])  # (3, 2)
    if kf == 3:
        return lam, np.broadcast_to(dlam, (q, 3, 2)).copy()
    e = np.array([[0, 1], [1, 2], [2, 0]])
    n = np.hstack([lam * (2 * lam - 1), 4 * lam[:, e[:, 0]] * lam[:, e[:, 1]]])
    dn = np.empty((q, 6, 2))
    dn[:, :3] = (4 * lam - 1)[:, :, None] * dlam[None]
    dn[:, 3:] = 4 * (lam[:, e[:, 0], None] * dlam[None, e[:, 1]] + lam[:, e[:, 1], None] * dlam[None, e[:, 0]])
    return n, dn


def _face_rule(kf: int) -> tuple[np.ndarray, np.ndarray]:
    if kf == 4:
        return _gauss_square(2)
    return simplex_rule(2, 1 if kf == 3 else 3)


# ----------------------------------------------------------------------------- checks
def _check_faces(mesh: Mesh, faces, name: str = "faces") -> np.ndarray:
    kf = FACE_NODES[mesh.cell_type]
    arr = np.asarray(faces)
    if arr.ndim != 2 or arr.shape[1] != kf or (arr.size and arr.dtype.kind not in "iu"):
        raise MeshError(f"{name} must be an integer array of shape (f, {kf}) (the faces of this "
                        f"{mesh.cell_type!r} mesh as returned by femur_fe.fe.topology.boundary_faces), "
                        f"got {arr.dtype} {arr.shape}")
    arr = np.ascontiguousarray(arr, dtype=np.int64)
    if arr.size and (arr.min() < 0 or arr.max() >= mesh.n_points):
        raise MeshError(f"{name} reference node ids in [{arr.min()}, {arr.max()}] but the mesh has "
                        f"{mesh.n_points} points (ids are 0-based)")
    return arr


def _check_vectors(value, count: int, name: str, unit: str, what: str) -> np.ndarray:
    arr = np.asarray(value)
    if arr.dtype.kind not in "fiu":
        raise LoadCaseError(f"{name} must be real numbers in {unit}, got dtype {arr.dtype}")
    if arr.shape == (3,):
        arr = np.broadcast_to(arr, (count, 3))
    elif arr.shape != (count, 3):
        raise LoadCaseError(f"{name} must have shape (3,) or ({count}, 3) (one vector per {what}) "
                            f"in {unit}, got {arr.shape}")
    arr = np.asarray(arr, dtype=np.float64)
    if not np.isfinite(arr).all():
        raise LoadCaseError(f"{name} contains non-finite values; give finite {unit}")
    return arr


def _scatter(n_points: int, nodes: np.ndarray, weights: np.ndarray, vec: np.ndarray) -> np.ndarray:
    """f[3*nodes[e,a] + c] += weights[e,a] * vec[e,c]; returns (3n,)."""
    out = np.empty((n_points, 3))
    idx = nodes.ravel()
    for c in range(3):
        out[:, c] = np.bincount(idx, (weights * vec[:, c:c + 1]).ravel(), minlength=n_points)
    return out.ravel()


# ----------------------------------------------------------------------------- loads
def assemble_body_force(mesh: Mesh, force_density) -> np.ndarray:
    """Consistent nodal forces (3n,) in N of a body force density (N/mm^3).

    ``force_density``: (3,) uniform or (m, 3) per element. The nodal forces of each element
    sum to ``force_density * volume`` (partition of unity).
    """
    check_mesh(mesh)
    b = _check_vectors(force_density, mesh.n_cells, "force_density", "N/mm^3", "cell")
    ct = mesh.cell_type
    if ct == "hexahedron":
        t, w = roots_legendre(2)
        xi = np.array([[x, y, z] for z in t for y in t for x in t])
        wq = np.array([a * b_ * c for c in w for b_ in w for a in w])
    else:
        xi, wq = simplex_rule(3, 1 if ct == "tetra" else 3)
    nq = shape_functions(ct, xi)  # (q, k)
    weights = np.empty(mesh.cells.shape)
    for s in range(0, mesh.n_cells, _CHUNK):
        cells = mesh.cells[s:s + _CHUNK]
        det = np.linalg.det(jacobians(ct, mesh.points, cells, xi))  # (c, q)
        weights[s:s + _CHUNK] = (det * wq) @ nq  # (c, k): integral of N_a over the element
    return _scatter(mesh.n_points, mesh.cells, weights, b)


def _face_integrals(mesh: Mesh, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per face and node: integral of N_a dA (f, kf) and of N_a * (x_xi x x_eta) (f, kf, 3)."""
    kf = faces.shape[1]
    xi, wq = _face_rule(kf)
    n, dn = face_shape(kf, xi)  # (q, kf), (q, kf, 2)
    x = mesh.points[faces]  # (f, kf, 3)
    tangents = np.einsum("qka,fkc->fqac", dn, x)  # (f, q, 2, 3)
    normal = np.cross(tangents[:, :, 0], tangents[:, :, 1])  # (f, q, 3), |.| = dA/dxi deta
    area = np.linalg.norm(normal, axis=2)
    scalar = (area * wq) @ n  # (f, kf)
    vector = np.einsum("fqc,q,qk->fkc", normal, wq, n)
    return scalar, vector, area @ wq


def assemble_traction(mesh: Mesh, faces, traction) -> np.ndarray:
    """Consistent nodal forces (3n,) in N of a surface traction (N/mm^2) on boundary faces.

    ``faces``: (f, kf) node ids (tri3 / tri6 / quad4 for tet4 / tet10 / hex8 meshes, e.g.
    from :func:`femur_fe.fe.topology.boundary_faces`); ``traction``: (3,) or (f, 3) N/mm^2.
    Exact on flat faces; the forces then sum to ``traction * area``.
    """
    check_mesh(mesh)
    fc = _check_faces(mesh, faces)
    t = _check_vectors(traction, len(fc), "traction", "N/mm^2", "face")
    if len(fc) == 0:
        return np.zeros(mesh.n_dofs)
    scalar, _, area = _face_integrals(mesh, fc)
    if not (area > 0).all():
        bad = np.flatnonzero(~(area > 0))
        raise MeshError(f"{len(bad)} faces have zero area (e.g. {bad[:5].tolist()}); remove "
                        "degenerate faces before applying a traction")
    return _scatter(mesh.n_points, fc, scalar, t)


def assemble_pressure(mesh: Mesh, faces, pressure) -> np.ndarray:
    """Consistent nodal forces (3n,) in N of a pressure (MPa) on boundary faces.

    Positive pressure pushes into the body, along the inward normal (faces must be
    oriented with outward normals, as :func:`femur_fe.fe.topology.boundary_faces` returns
    them). ``pressure``: scalar or (f,) MPa. Exact on any face shape, so the forces of a
    uniform pressure on a closed surface sum to zero.
    """
    check_mesh(mesh)
    fc = _check_faces(mesh, faces)
    p = np.asarray(pressure)
    if p.dtype.kind not in "fiu":
        raise LoadCaseError(f"pressure must be real numbers in MPa, got dtype {p.dtype}")
    if p.ndim == 0:
        p = np.full(len(fc), float(p))
    elif p.shape != (len(fc),):
        raise LoadCaseError(f"pressure must be a scalar or have shape ({len(fc)},) (one value per "
                            f"face) in MPa, got {p.shape}")
    p = np.asarray(p, dtype=np.float64)
    if not np.isfinite(p).all():
        raise LoadCaseError("pressure contains non-finite values; give finite MPa")
    if len(fc) == 0:
        return np.zeros(mesh.n_dofs)
    _, vector, _ = _face_integrals(mesh, fc)  # (f, kf, 3)
    out = np.empty((mesh.n_points, 3))
    idx = fc.ravel()
    for c in range(3):
        out[:, c] = np.bincount(idx, (-p[:, None] * vector[:, :, c]).ravel(), minlength=mesh.n_points)
    return out.ravel()
