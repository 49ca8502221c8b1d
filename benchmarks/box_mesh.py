"""Structured box meshes (tet4, tet10, hex8) with optional random node distortion.

Used by ``bench_assembly.py`` and by the assembly tests. A box of ``nx * ny * nz`` cubes of
edge ``h`` mm is split into hexahedra or into 6 tetrahedra per cube (Kuhn split along the
main diagonal, conforming between cubes); tet10 meshes get straight mid-edge nodes.
"""
from __future__ import annotations

import numpy as np

from femur_fe.fe.mesh import Mesh

# VTK hex corners: 0 (0,0,0) 1 (1,0,0) 2 (1,1,0) 3 (0,1,0) 4 (0,0,1) 5 (1,0,1) 6 (1,1,1) 7 (0,1,1)
_KUHN = np.array([[0, 1, 2, 6], [0, 1, 5, 6], [0, 3, 2, 6], [0, 3, 7, 6], [0, 4, 5, 6], [0, 4, 7, 6]])
_EDGES = np.array([[0, 1], [1, 2], [0, 2], [0, 3], [1, 3], [2, 3]])  # VTK tet10 edge order


def box_mesh(cell_type: str, nx: int, ny: int, nz: int, h: float = 1.0, distortion: float = 0.0,
             seed: int = 0) -> Mesh:
    """A box mesh of ``nx*ny*nz`` cubes of edge ``h`` mm.

    ``distortion``: interior nodes move by a uniform random vector of up to ``distortion*h``
    per component (0.2 keeps every element valid). ``cell_type``: "tetra", "tetra10" or
    "hexahedron".
    """
    ix, iy, iz = np.meshgrid(np.arange(nx + 1), np.arange(ny + 1), np.arange(nz + 1), indexing="ij")
    pts = h * np.stack([ix.ravel(), iy.ravel(), iz.ravel()], axis=1).astype(np.float64)
    nid = np.arange(len(pts)).reshape(nx + 1, ny + 1, nz + 1)
    i, j, k = (a.ravel() for a in np.meshgrid(np.arange(nx), np.arange(ny), np.arange(nz), indexing="ij"))
    hexes = np.stack([nid[i, j, k], nid[i + 1, j, k], nid[i + 1, j + 1, k], nid[i, j + 1, k],
                      nid[i, j, k + 1], nid[i + 1, j, k + 1], nid[i + 1, j + 1, k + 1],
                      nid[i, j + 1, k + 1]], axis=1).astype(np.int64)
    if distortion:
        rng = np.random.default_rng(seed)
        inner = ((ix > 0) & (ix < nx) & (iy > 0) & (iy < ny) & (iz > 0) & (iz < nz)).ravel()
        pts[inner] += distortion * h * rng.uniform(-1, 1, (int(inner.sum()), 3))
    if cell_type == "hexahedron":
        return Mesh(pts, hexes, "hexahedron")
    tets = hexes[:, _KUHN].reshape(-1, 4)
    # orient every tet positively (reference cube: the template decides the sign)
    cube = np.array([[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0], [0, 0, 1], [1, 0, 1], [1, 1, 1], [0, 1, 1.0]])
    tmpl = cube[_KUHN]
    neg = np.linalg.det(tmpl[:, 1:] - tmpl[:, :1]) < 0
    flip = np.tile(neg, len(hexes))
    tets[flip] = tets[flip][:, [0, 2, 1, 3]]
    if cell_type == "tetra":
        return Mesh(pts, tets, "tetra")
    if cell_type == "tetra10":
        return tet10_from_tet4(Mesh(pts, tets, "tetra"))
    raise ValueError(f"unknown cell type {cell_type!r}")


def tet10_from_tet4(mesh: Mesh) -> Mesh:
    """Straight-sided tet10 mesh: mid-edge nodes at the edge midpoints of a tet4 mesh."""
    cells = mesh.cells
    pairs = cells[:, _EDGES]  # (m, 6, 2)
    key = np.sort(pairs.reshape(-1, 2), axis=1)
    uniq, inv = np.unique(key, axis=0, return_inverse=True)
    mids = 0.5 * (mesh.points[uniq[:, 0]] + mesh.points[uniq[:, 1]])
    cells10 = np.hstack([cells, mesh.n_points + inv.reshape(len(cells), 6)])
    return Mesh(np.vstack([mesh.points, mids]), cells10, "tetra10")
