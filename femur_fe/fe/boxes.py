"""Structured meshes of a box (tet4, tet10, hex8) for verification cases, benchmarks and tests.

:func:`structured_mesh` maps the parameter box [0, 1]^3 (optionally through a curved mapping);
:func:`box_mesh` is a box of cubes of edge ``h`` with optional random distortion of the
interior nodes; :func:`hex_grid` a hex8 box of given size and origin. One lattice and one
cell split serve all three.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from ..errors import FemurFeError
from .mesh import TET10_EDGES, Mesh, tet10_from_tet4

# Kuhn/Freudenthal split of a unit cube into 6 tets along the diagonal (0,0,0)-(1,1,1); the
# split is the same in every cell, so neighbouring cells share face diagonals (conforming).
_CUBE = np.array([[i, j, k] for k in (0, 1) for j in (0, 1) for i in (0, 1)])  # bit order x, y, z
_KUHN = [[0, 1, 3, 7], [0, 1, 5, 7], [0, 2, 3, 7], [0, 2, 6, 7], [0, 4, 5, 7], [0, 4, 6, 7]]
_HEX_VTK = [0, 1, 3, 2, 4, 5, 7, 6]  # cube-bit order -> VTK hexahedron order


def structured_mesh(shape: tuple[int, int, int], mapping: Callable[[np.ndarray], np.ndarray] | None = None,
                    cell_type: str = "tetra") -> tuple[Mesh, np.ndarray]:
    """Mapped structured mesh of the parameter box [0, 1]^3.

    Parameters
    ----------
    shape : number of hexahedral cells along each parameter axis.
    mapping : callable (p, 3) parameter points -> (p, 3) physical points in mm (default
        identity). tet10 mid-edge nodes are mapped too, so curved boundaries are
        represented to second order (isoparametric).
    cell_type : ``"tetra"`` (6 tets per cell), ``"tetra10"`` or ``"hexahedron"``.

    Returns
    -------
    mesh, params : the mesh and the (n, 3) parameter coordinates of its nodes (for
        selecting boundary nodes exactly, e.g. ``params[:, 2] == 1``).
    """
    nx, ny, nz = (int(s) for s in shape)
    g = np.stack(np.meshgrid(np.arange(nx + 1), np.arange(ny + 1), np.arange(nz + 1), indexing="ij"), -1)
    lattice = g.reshape(-1, 3)
    nid = np.arange(len(lattice)).reshape(nx + 1, ny + 1, nz + 1)
    ci, cj, ck = (a.ravel() for a in np.meshgrid(np.arange(nx), np.arange(ny), np.arange(nz), indexing="ij"))
    corner = np.stack([nid[ci + a, cj + b, ck + c] for a, b, c in _CUBE], axis=1)  # (m, 8) cube-bit order
    params = lattice / np.array([nx, ny, nz], dtype=float)
    if cell_type == "hexahedron":
        cells = corner[:, _HEX_VTK]
    else:
        cells = np.vstack([corner[:, t] for t in _KUHN])
        # orient positively in parameter space (the mapping is assumed orientation preserving)
        x = params[cells]
        vol = np.einsum("ij,ij->i", np.cross(x[:, 1] - x[:, 0], x[:, 2] - x[:, 0]), x[:, 3] - x[:, 0])
        cells[vol < 0] = cells[vol < 0][:, [0, 2, 1, 3]]
        if cell_type == "tetra10":  # mid-edge nodes in parameter space, then mapped (isoparametric)
            lin = tet10_from_tet4(Mesh(params, cells, "tetra"))
            cells, params = lin.cells, lin.points
        elif cell_type != "tetra":
            raise FemurFeError(f"cell_type must be 'tetra', 'tetra10' or 'hexahedron', got {cell_type!r}")
    pts = params.copy() if mapping is None else np.asarray(mapping(params), dtype=np.float64)
    return Mesh(pts, cells, cell_type), params


def box_mesh(cell_type: str, nx: int, ny: int, nz: int, h: float = 1.0, distortion: float = 0.0,
             seed: int = 0) -> Mesh:
    """A box of ``nx * ny * nz`` cubes of edge ``h`` mm.

    ``distortion``: interior nodes move by a uniform random vector of up to ``distortion * h``
    per component (0.2 keeps every element valid). ``cell_type``: ``"tetra"``, ``"tetra10"``
    (straight mid-edge nodes moved with their edge) or ``"hexahedron"``.
    """
    mesh, params = structured_mesh((nx, ny, nz), mapping=lambda p: p * (h * np.array([nx, ny, nz], dtype=float)),
                                   cell_type=cell_type)
    if not distortion:
        return mesh
    corners = mesh.cells[:, :4] if cell_type != "hexahedron" else mesh.cells
    vertex = np.zeros(mesh.n_points, dtype=bool)
    vertex[np.unique(corners)] = True
    inner = vertex & np.all((params > 0) & (params < 1), axis=1)
    pts = mesh.points.copy()
    rng = np.random.default_rng(seed)
    pts[inner] += distortion * h * rng.uniform(-1, 1, (int(inner.sum()), 3))
    if cell_type == "tetra10":  # mid-edge nodes stay at the middle of their (straight) edge
        edges = mesh.cells[:, TET10_EDGES]
        pts[mesh.cells[:, 4:].ravel()] = 0.5 * (pts[edges[..., 0]] + pts[edges[..., 1]]).reshape(-1, 3)
    return Mesh(pts, mesh.cells, cell_type)


def hex_grid(shape: Sequence[int], size: Sequence[float] = (1.0, 1.0, 1.0),
             origin: Sequence[float] = (0.0, 0.0, 0.0)) -> Mesh:
    """Hex8 mesh of a box: ``shape`` = (nx, ny, nz) cells, ``size`` and ``origin`` in mm."""
    if len(shape) != 3 or min(int(v) for v in shape) < 1:
        raise FemurFeError(f"hex_grid shape must be three integers >= 1, got {shape!r}")
    o, s = np.asarray(origin, dtype=float), np.asarray(size, dtype=float)
    return structured_mesh(tuple(int(v) for v in shape), mapping=lambda p: o + p * s, cell_type="hexahedron")[0]
