"""Mesh topology: boundary faces, node adjacency, connected components."""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from .elements import FACES
from .mesh import Mesh


def boundary_faces(mesh: Mesh) -> tuple[np.ndarray, np.ndarray]:
    """Faces on the outer boundary, oriented with outward normals.

    Returns
    -------
    faces : (f, kf) int64 node ids (tri3 for tet4, tri6 for tet10, quad4 for hex8)
    cell_ids : (f,) the cell each face belongs to
    """
    local = FACES[mesh.cell_type]  # (nf, kf)
    nf = local.shape[0]
    all_faces = mesh.cells[:, local].reshape(-1, local.shape[1])  # (m*nf, kf)
    n_vert = 4 if mesh.cell_type == "hexahedron" else 3
    key = np.sort(all_faces[:, :n_vert], axis=1)
    _, inverse, counts = np.unique(key, axis=0, return_inverse=True, return_counts=True)
    on_boundary = counts[inverse.ravel()] == 1
    idx = np.flatnonzero(on_boundary)
    return all_faces[idx], idx // nf


def boundary_nodes(mesh: Mesh) -> np.ndarray:
    """Sorted ids of nodes on the outer boundary."""
    faces, _ = boundary_faces(mesh)
    return np.unique(faces)


def face_normals_areas(points: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unit outward normals (f, 3) and areas (f,) of faces (vertex corners only, mm^2)."""
    if faces.shape[1] in (4, 8):  # quads: split along a diagonal
        p = points[faces[:, :4]]
        n = 0.5 * np.cross(p[:, 2] - p[:, 0], p[:, 3] - p[:, 1])
    else:
        p = points[faces[:, :3]]
        n = 0.5 * np.cross(p[:, 1] - p[:, 0], p[:, 2] - p[:, 0])
    area = np.linalg.norm(n, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        unit = n / area[:, None]
    return unit, area


def node_adjacency(mesh: Mesh) -> sp.csr_matrix:
    """Boolean (n, n) node-node adjacency through shared cells (diagonal included)."""
    m, k = mesh.cells.shape
    rows = np.repeat(mesh.cells, k, axis=1).ravel()
    cols = np.tile(mesh.cells, (1, k)).ravel()
    a = sp.csr_matrix((np.ones(len(rows), dtype=bool), (rows, cols)), shape=(mesh.n_points,) * 2)
    a.sum_duplicates()
    return a


def connected_components(mesh: Mesh) -> tuple[int, np.ndarray]:
    """Number of node-connected components and a label per node (orphans get their own label)."""
    from scipy.sparse.csgraph import connected_components as cc

    return cc(node_adjacency(mesh), directed=False)
