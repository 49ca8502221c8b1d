"""Load-spreading caps (PMMA embedding) built onto a surface region of a tet or voxel mesh.

A cap is a layer of tetrahedra extruded from the region's boundary faces along a fixed
axis to a flat top plane (the way a bone end is potted in PMMA for a test): every
region node ``p`` gets a partner ``p + (h - p.a) a`` on the plane ``x.a = h`` with
``h = max(p.a) + thickness``. The concave parts of the region are therefore filled and the
top is flat, as in a testing machine. Each prism between a face and its top copy is split
into three tetrahedra with the vertex-ordering rule of Dompierre et al. (1999), so the
split of a shared side face is the same in both neighbouring prisms and the cap is
conforming. tet10 meshes get mid-edge nodes on the cap; nodes on the bone/cap interface
edges are shared with the bone.

On a voxel (hex8) mesh the cap is voxels too (:func:`add_voxel_cap`), as in Ogo and ParOSol
models: every voxel column under the region is filled from the bone surface up to one flat top
along the voxel axis closest to the cap axis, so the model stays a voxel model.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from ..errors import RegionError
from ..fe.mesh import Mesh

log = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class Cap:
    """Cap elements added to a mesh.

    Attributes
    ----------
    name : region name the cap sits on
    cells : (c, k) cap cell ids are ``first_cell + arange(c)`` in the combined mesh
    top_nodes : node ids (combined mesh) of the flat top surface (where the plate acts)
    interface_nodes : bone node ids the cap is bonded to
    axis : (3,) unit extrusion axis (pointing away from the bone)
    """

    name: str
    first_cell: int
    n_cells: int
    top_nodes: np.ndarray
    interface_nodes: np.ndarray
    axis: np.ndarray
    thickness_mm: float


def _split_prisms(bottom: np.ndarray, top: np.ndarray) -> np.ndarray:
    """Split prisms (bottom tri ids, matching top tri ids) into 3 tets each (Dompierre rule)."""
    tets = []
    for tri, ttri in zip(bottom, top):
        r = int(np.argmin(tri))  # rotate so the smallest global id comes first
        a, b, c = np.roll(tri, -r)
        a2, b2, c2 = np.roll(ttri, -r)
        if b < c:  # side face (b, c, c2, b2) split along b-c2
            tets += [(a, b, c, c2), (a, b, b2, c2), (a, a2, b2, c2)]
        else:  # split along c-b2
            tets += [(a, c, b, b2), (a, c, c2, b2), (a, a2, c2, b2)]
    return np.asarray(tets, dtype=np.int64)


def _orient(points: np.ndarray, tets: np.ndarray) -> np.ndarray:
    p = points[tets]
    vol = np.einsum("ij,ij->i", np.cross(p[:, 1] - p[:, 0], p[:, 2] - p[:, 0]), p[:, 3] - p[:, 0])
    tets = tets.copy()
    neg = vol < 0
    tets[neg] = tets[neg][:, [0, 2, 1, 3]]
    return tets


def add_cap(mesh: Mesh, faces: np.ndarray, axis, thickness_mm: float, name: str = "cap",
            min_alignment: float = 0.05) -> tuple[Mesh, Cap]:
    """Return ``mesh`` with a cap extruded from ``faces`` along ``axis`` and the :class:`Cap`.

    Parameters
    ----------
    mesh : tet4 or tet10 mesh (the cap cells are appended after the bone cells, new nodes
        after the bone nodes, so bone ids are unchanged)
    faces : (f, 3|6) outward-oriented boundary faces of the region
    axis : direction pointing away from the bone through the cap (normalised here)
    thickness_mm : thickness of the cap over the outermost region node, mm (> 0)
    min_alignment : smallest allowed cos(angle) between a face's outward normal and
        ``axis``; faces more oblique than that would make inverted or sliver cap elements.
    """
    if mesh.cell_type not in ("tetra", "tetra10"):
        raise RegionError(f"cap {name!r}: PMMA caps are built on tetrahedral meshes, got {mesh.cell_type}; "
                          "use kind = 'rigid' caps for hexahedral meshes")
    if not thickness_mm > 0:
        raise RegionError(f"cap {name!r}: thickness_mm must be > 0, got {thickness_mm!r}")
    a = np.asarray(axis, dtype=np.float64)
    a = a / np.linalg.norm(a)
    tri = np.asarray(faces, dtype=np.int64)[:, :3]
    if len(tri) == 0:
        raise RegionError(f"cap {name!r}: the region has no boundary faces to put a cap on")
    p = mesh.points[tri]
    nrm = np.cross(p[:, 1] - p[:, 0], p[:, 2] - p[:, 0])
    nrm /= np.linalg.norm(nrm, axis=1)[:, None]
    cosang = nrm @ a
    bad = np.count_nonzero(cosang < min_alignment)
    if bad:
        raise RegionError(
            f"cap {name!r}: {bad} of {len(tri)} region faces face away from the cap axis (more than "
            f"{np.degrees(np.arccos(min_alignment)):.0f} deg off), so a flat-topped cap cannot be extruded; "
            "make the region smaller (patch_angle_deg / depth_mm / radius_mm) or use kind = 'rigid' caps")
    nodes = np.unique(tri)
    h = float((mesh.points[nodes] @ a).max()) + float(thickness_mm)
    top_pts = mesh.points[nodes] + (h - mesh.points[nodes] @ a)[:, None] * a[None, :]
    n0 = mesh.n_points
    top_id = np.full(n0, -1, dtype=np.int64)
    top_id[nodes] = n0 + np.arange(len(nodes))
    pts = np.vstack([mesh.points, top_pts])
    tets = _orient(pts, _split_prisms(tri, top_id[tri]))
    cells = tets
    if mesh.cell_type == "tetra10":
        pts, cells = _promote_tet10(mesh, pts, tets)
    top_nodes = top_id[nodes]
    if mesh.cell_type == "tetra10":  # mid-edge nodes on the top face too
        top_set = set(top_nodes.tolist())
        extra = [cells[:, 4 + e] for e in range(6)]
        edges = [(0, 1), (1, 2), (0, 2), (0, 3), (1, 3), (2, 3)]
        mids = []
        for e, (i, j) in enumerate(edges):
            on_top = np.array([(x in top_set) and (y in top_set) for x, y in zip(cells[:, i], cells[:, j])])
            mids.append(extra[e][on_top])
        top_nodes = np.unique(np.concatenate([top_nodes] + mids))
    vol = _tet_volumes(pts, cells[:, :4])
    if (vol <= 0).any():
        raise RegionError(f"cap {name!r}: {np.count_nonzero(vol <= 0)} cap elements are degenerate; "
                          "use a smaller region or kind = 'rigid'")
    cd = {}
    for k, v in mesh.cell_data.items():
        fill = np.zeros((len(cells),) + v.shape[1:], dtype=v.dtype)
        cd[k] = np.concatenate([v, fill])
    pd = {}
    for k, v in mesh.point_data.items():
        fill = np.zeros((len(pts) - mesh.n_points,) + v.shape[1:], dtype=v.dtype)
        pd[k] = np.concatenate([v, fill])
    out = Mesh(pts, np.vstack([mesh.cells, cells]), mesh.cell_type, mesh.node_sets, mesh.cell_sets, cd, pd)
    cap = Cap(name, mesh.n_cells, len(cells), np.asarray(top_nodes, dtype=np.int64), nodes, a, float(thickness_mm))
    log.info("cap %r: %d elements, %d top nodes, thickness %.3g mm over the outermost node", name, len(cells),
             len(top_nodes), thickness_mm)
    return out, cap


def _tet_volumes(points: np.ndarray, tets: np.ndarray) -> np.ndarray:
    p = points[tets]
    return np.einsum("ij,ij->i", np.cross(p[:, 1] - p[:, 0], p[:, 2] - p[:, 0]), p[:, 3] - p[:, 0]) / 6.0


def _promote_tet10(mesh: Mesh, pts: np.ndarray, tets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Add mid-edge nodes to cap tets, reusing the bone's mid-edge nodes on shared edges."""
    edges = [(0, 1), (1, 2), (0, 2), (0, 3), (1, 3), (2, 3)]
    known: dict[tuple[int, int], int] = {}
    bc = mesh.cells
    for e, (i, j) in enumerate(edges):
        for x, y, mid in zip(bc[:, i], bc[:, j], bc[:, 4 + e]):
            known[(min(x, y), max(x, y))] = int(mid)
    new_pts = []
    nxt = len(pts)
    out = np.empty((len(tets), 10), dtype=np.int64)
    out[:, :4] = tets
    for t, tet in enumerate(tets):
        for e, (i, j) in enumerate(edges):
            key = (min(tet[i], tet[j]), max(tet[i], tet[j]))
            mid = known.get(key)
            if mid is None:
                mid = nxt
                nxt += 1
                known[key] = mid
                new_pts.append(0.5 * (pts[tet[i]] + pts[tet[j]]))
            out[t, 4 + e] = mid
    if new_pts:
        pts = np.vstack([pts, np.asarray(new_pts)])
    return pts, out


#: largest angle between the cap axis and the voxel axis a voxel cap is extruded along
MAX_VOXEL_CAP_TILT_DEG = 30.0


def add_voxel_cap(mesh: Mesh, faces: np.ndarray, axis, thickness_mm: float, name: str = "cap") -> tuple[Mesh, Cap]:
    """Return the voxel ``mesh`` with a cap of voxels on ``faces`` and the :class:`Cap`.

    The cap grows along the voxel axis ``g`` closest to ``axis`` (at most
    :data:`MAX_VOXEL_CAP_TILT_DEG` away): each voxel column whose bone surface face (a region face
    facing along ``g``) is at level ``k0`` gets voxels from ``k0`` to the common top level
    ``max(k0) + ceil(thickness / h)``, ``h`` the voxel size along ``g``. Interface nodes are the
    bone's; the top nodes form the flat face the plate acts on.
    """
    if mesh.cell_type != "hexahedron":
        raise RegionError(f"cap {name!r}: voxel caps are built on hex8 voxel meshes, got {mesh.cell_type}")
    if not thickness_mm > 0:
        raise RegionError(f"cap {name!r}: thickness_mm must be > 0, got {thickness_mm!r}")
    a = np.asarray(axis, dtype=np.float64)
    a = a / np.linalg.norm(a)
    x0 = mesh.points[mesh.cells[0]]
    edges = np.stack([x0[1] - x0[0], x0[3] - x0[0], x0[4] - x0[0]])  # voxel edge vectors (VTK hex order)
    lengths = np.linalg.norm(edges, axis=1)
    units = edges / lengths[:, None]
    cosines = units @ a
    g = int(np.argmax(np.abs(cosines)))
    tilt = float(np.degrees(np.arccos(min(1.0, abs(cosines[g])))))
    if tilt > MAX_VOXEL_CAP_TILT_DEG:
        raise RegionError(f"cap {name!r}: the load axis is {tilt:.0f} deg from the nearest voxel axis (more than "
                          f"{MAX_VOXEL_CAP_TILT_DEG:.0f}), so voxel caps cannot have a flat top; use tetrahedra "
                          "(mesh_type = 'tet', CLI --mask-mesh tet) or [caps] kind = 'rigid'")
    sign = 1 if cosines[g] > 0 else -1
    inv = np.linalg.inv(edges.T)
    ijk = np.rint((mesh.points - x0[0]) @ inv.T).astype(np.int64)  # integer grid index of every node
    quads = np.asarray(faces, dtype=np.int64)[:, :4]
    if len(quads) == 0:
        raise RegionError(f"cap {name!r}: the region has no boundary faces to put a cap on")
    fq = ijk[quads]
    flat = np.all(fq[:, :, g] == fq[:, :1, g], axis=1)  # faces normal to g
    p = mesh.points[quads]
    nrm = np.cross(p[:, 1] - p[:, 0], p[:, 2] - p[:, 0])
    facing = (nrm @ units[g]) * sign > 0
    sel = flat & facing
    if not sel.any():
        raise RegionError(f"cap {name!r}: no region face faces along the cap axis; use [caps] kind = 'rigid'")
    others = [ax for ax in range(3) if ax != g]
    cols: dict[tuple[int, int], int] = {}
    for q in fq[sel]:
        col = (int(q[:, others[0]].min()), int(q[:, others[1]].min()))
        level = int(q[0, g])
        cols[col] = max(cols[col], level) if sign > 0 and col in cols else (
            min(cols[col], level) if col in cols else level)
    n_layers = int(np.ceil(float(thickness_mm) / lengths[g] - 1e-9))
    levels = np.array(list(cols.values()))
    top = int(levels.max() + n_layers) if sign > 0 else int(levels.min() - n_layers)
    node_of = {tuple(k): i for i, k in enumerate(ijk.tolist())}
    new_pts: list[np.ndarray] = []

    def node(idx: tuple[int, int, int]) -> int:
        nid = node_of.get(idx)
        if nid is None:
            nid = mesh.n_points + len(new_pts)
            node_of[idx] = nid
            new_pts.append(x0[0] + np.asarray(idx, dtype=np.float64) @ edges)
        return nid

    corner = np.array([[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0], [0, 0, 1], [1, 0, 1], [1, 1, 1], [0, 1, 1]])
    bone_cells = {tuple(c) for c in ijk[mesh.cells[:, 0]].tolist()}  # lower corner of every bone voxel
    hexes = []
    for (c0, c1), k0 in cols.items():
        rng = range(k0, top) if sign > 0 else range(top, k0)
        for k in rng:
            low = [0, 0, 0]
            low[g], low[others[0]], low[others[1]] = k, c0, c1
            if tuple(low) in bone_cells:
                raise RegionError(f"cap {name!r}: bone lies above the region in the cap's path; use a smaller "
                                  "region or [caps] kind = 'rigid'")
            hexes.append([node(tuple(int(v) for v in np.asarray(low) + cc)) for cc in corner])
    cells = np.asarray(hexes, dtype=np.int64)
    pts = np.vstack([mesh.points] + ([np.asarray(new_pts)] if new_pts else []))
    top_nodes = np.unique([nid for idx, nid in node_of.items() if idx[g] == top and nid >= mesh.n_points])
    interface = np.unique(quads[sel])
    cd = {k: np.concatenate([v, np.zeros((len(cells),) + v.shape[1:], dtype=v.dtype)])
          for k, v in mesh.cell_data.items()}
    pd = {k: np.concatenate([v, np.zeros((len(pts) - mesh.n_points,) + v.shape[1:], dtype=v.dtype)])
          for k, v in mesh.point_data.items()}
    out = Mesh(pts, np.vstack([mesh.cells, cells]), "hexahedron", mesh.node_sets, mesh.cell_sets, cd, pd)
    cap = Cap(name, mesh.n_cells, len(cells), top_nodes.astype(np.int64), interface, sign * units[g],
              float(n_layers * lengths[g]))
    log.info("voxel cap %r: %d voxels, %d top nodes, %d layers over the outermost voxel (%.0f deg from the load "
             "axis)", name, len(cells), len(top_nodes), n_layers, tilt)
    return out, cap
