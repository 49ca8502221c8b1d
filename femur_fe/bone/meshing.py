"""From surfaces and masks to tetrahedral meshes: repair, remeshing, cutting, TetGen.

The functions here turn closed surfaces (:class:`femur_fe.io.surface.Surface`, read with
:func:`femur_fe.io.read_surface`) or a binary mask into quality tetrahedral meshes
(:class:`femur_fe.fe.mesh.Mesh`, tet4 or tet10) with TetGen.

The method in full (equations, parameters, choices, sources): ``docs/engine.md``, section
``femur_fe.bone.meshing``.
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field, replace
from typing import Sequence

import numpy as np

from ..errors import SurfaceError
from ..fe.mesh import Mesh, remove_orphan_nodes, tet10_from_tet4
from ..fe.topology import boundary_faces
from ..io.surface import (
    Surface,
    _face_components,
    _merge_exact_duplicates,
    surface_topology,
)
from .anatomy import FemurFrame, femur_frame

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- repair
@dataclass
class RepairReport:
    """What :func:`repair_surface` changed (counts before and after)."""

    source: str
    points_before: int
    faces_before: int
    points_after: int
    faces_after: int
    merged_points: int = 0
    degenerate_faces_removed: int = 0
    duplicate_faces_removed: int = 0
    components_before: int = 1
    components_dropped: int = 0
    holes_filled: int = 0
    boundary_edges_before: int = 0
    nonmanifold_edges_before: int = 0
    inconsistent_edges_before: int = 0
    orientation_flipped: bool = False
    meshfix_used: bool = False
    watertight_before: bool = False
    watertight_after: bool = False
    volume_mm3: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return (self.points_before != self.points_after or self.faces_before != self.faces_after
                or self.orientation_flipped or self.meshfix_used)

    def to_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        lines = [f"repair of {self.source}: {self.points_before} -> {self.points_after} points, "
                 f"{self.faces_before} -> {self.faces_after} triangles; watertight "
                 f"{self.watertight_before} -> {self.watertight_after}"]
        for name, val in (("merged duplicate points", self.merged_points),
                          ("degenerate faces removed", self.degenerate_faces_removed),
                          ("duplicate faces removed", self.duplicate_faces_removed),
                          ("components dropped", self.components_dropped),
                          ("holes filled", self.holes_filled),
                          ("boundary edges before", self.boundary_edges_before),
                          ("non-manifold edges before", self.nonmanifold_edges_before),
                          ("inconsistently oriented edges before", self.inconsistent_edges_before)):
            if val:
                lines.append(f"  {name}: {val}")
        if self.orientation_flipped:
            lines.append("  normals flipped to point outward")
        if self.meshfix_used:
            lines.append("  MeshFix repair applied")
        lines += [f"  {n}" for n in self.notes]
        return "\n".join(lines)


def repair_surface(surface: Surface, *, merge_tol: float | None = None, keep_largest: bool = True,
                   fix_intersections: bool = False) -> tuple[Surface, RepairReport]:
    """Make a surface closed, manifold and outward-oriented.

    Steps: merge points closer than ``merge_tol`` (default 1e-6 x the largest extent),
    remove degenerate (repeated-vertex or zero-area) and duplicate faces, keep the largest
    connected component (by area), then run MeshFix (pymeshfix) if the surface still has
    holes, non-manifold or inconsistently oriented edges (or always, with
    ``fix_intersections=True``: MeshFix also removes self-intersections, which the edge
    checks here cannot see); finally flip all faces if the enclosed volume is negative.

    Returns
    -------
    (surface, report)

    Raises
    ------
    SurfaceError
        when the result is still not watertight or encloses no volume.
    """
    topo0 = surface_topology(surface)
    rep = RepairReport(surface.source, surface.n_points, surface.n_faces, 0, 0,
                       components_before=topo0.n_components,
                       boundary_edges_before=topo0.boundary_edges,
                       nonmanifold_edges_before=topo0.nonmanifold_edges,
                       inconsistent_edges_before=topo0.inconsistent_edges,
                       watertight_before=topo0.watertight)
    ext = float(surface.extent.max()) if surface.n_points else 0.0
    tol = merge_tol if merge_tol is not None else 1e-6 * max(ext, 1.0)
    s = _merge_exact_duplicates(surface, tol=tol)
    rep.merged_points = surface.n_points - s.n_points  # includes unused points dropped
    # degenerate faces: repeated vertex ids or (near) zero area
    f = s.faces
    rep_ids = (f[:, 0] == f[:, 1]) | (f[:, 1] == f[:, 2]) | (f[:, 0] == f[:, 2])
    areas = s.face_areas()
    tiny = areas <= 1e-12 * max(ext, 1.0) ** 2
    bad = rep_ids | tiny
    rep.degenerate_faces_removed = int(bad.sum())
    f = f[~bad]
    # duplicate faces (same vertex set)
    _, first = np.unique(np.sort(f, axis=1), axis=0, return_index=True)
    first = np.sort(first)
    rep.duplicate_faces_removed = int(len(f) - len(first))
    f = f[first]
    s = _merge_exact_duplicates(Surface(s.points, f, s.source))
    if s.n_faces == 0:
        raise SurfaceError(f"{surface.source}: no non-degenerate triangles left; the file does not hold a "
                           "usable surface (check that it is a triangle surface in mm)")
    ncomp, flab = _face_components(s)
    if keep_largest and ncomp > 1:
        area_c = np.bincount(flab, weights=s.face_areas())
        keep = int(np.argmax(area_c))
        s = _merge_exact_duplicates(Surface(s.points, s.faces[flab == keep], s.source))
        rep.components_dropped = ncomp - 1
        rep.notes.append(f"kept the largest of {ncomp} components ({area_c[keep] / area_c.sum():.1%} of the area)")
    topo = surface_topology(s)
    if not topo.watertight or fix_intersections:
        import pymeshfix

        b_before = topo.boundary_edges
        mf = pymeshfix.MeshFix(s.points, s.faces.astype(np.int32))
        try:
            n_holes = int(mf.n_boundaries)
        except Exception:  # attribute missing in some versions
            n_holes = -1
        mf.repair(joincomp=False, remove_smallest_components=keep_largest)
        pts, faces = np.asarray(mf.points, dtype=np.float64), np.asarray(mf.faces, dtype=np.int64)
        if faces.ndim == 1:
            faces = faces.reshape(-1, 4)[:, 1:]
        rep.meshfix_used = True
        rep.holes_filled = n_holes if n_holes >= 0 else int(b_before > 0)
        if len(faces) == 0:
            raise SurfaceError(f"{surface.source}: MeshFix removed every triangle; the surface is too broken to "
                               "repair automatically. Re-export a closed surface from the segmentation "
                               "software, or rebuild it from the mask with femur_fe.bone.surface_from_mask")
        s = Surface(pts, faces, surface.source)
        topo = surface_topology(s)
    if s.volume < 0:
        s = Surface(s.points, s.faces[:, [0, 2, 1]], s.source)
        rep.orientation_flipped = True
    rep.points_after, rep.faces_after = s.n_points, s.n_faces
    rep.watertight_after = topo.watertight
    rep.volume_mm3 = s.volume
    if not topo.watertight or s.volume <= 0:
        raise SurfaceError(
            f"{surface.source}: could not be repaired to a closed surface ({topo.boundary_edges} boundary, "
            f"{topo.nonmanifold_edges} non-manifold, {topo.inconsistent_edges} flipped edges remain). "
            "Fix it in a mesh editor (e.g. MeshLab 'close holes' / 'remove non-manifold') or rebuild it "
            "from the segmentation mask with femur_fe.bone.surface_from_mask")
    log.info("%s", rep)
    return s, rep


# --------------------------------------------------------------------------- remeshing
def remesh_surface(surface: Surface, edge_length: float, *, method: str = "auto") -> Surface:
    """Remesh a closed surface to near-equilateral triangles of about ``edge_length`` mm.

    Methods
    -------
    ``"voxel"`` (isotropic remeshing through a voxel grid): the surface is voxelised on a
    grid of spacing ``0.8 * edge_length`` (``vtkPolyDataToImageStencil``), contoured with
    surface nets (``vtkSurfaceNets3D``, Frisken 2022: one vertex per boundary cell, quads
    split into two triangles, constrained smoothing) and every vertex is moved to the closest
    point of the input surface. This gives well-shaped triangles (quality typically > 0.4,
    most > 0.8) and keeps the geometry within the projection accuracy. Features thinner than
    about one grid cell can be lost, so the result is checked: it must be watertight and
    enclose the input volume within 3 %.
    ``"decimate"``: volume-preserving quadric decimation to the triangle count of an
    equilateral tiling (``area / (sqrt(3)/4 h^2)``), or linear subdivision (each triangle into
    four) when the surface is coarser than the target. Keeps thin features but can leave
    poorly shaped triangles.
    ``"auto"`` (default): ``"voxel"``, falling back to ``"decimate"`` when its checks fail.
    """
    h = float(edge_length)
    if not np.isfinite(h) or h <= 0:
        raise SurfaceError(f"edge_length must be a positive length in mm, got {edge_length!r}")
    if method not in ("auto", "voxel", "decimate"):
        raise SurfaceError(f"method must be 'auto', 'voxel' or 'decimate', got {method!r}")
    if method in ("auto", "voxel"):
        try:
            out = _remesh_voxel(surface, h)
            return out
        except SurfaceError as exc:
            if method == "voxel":
                raise
            log.warning("%s: voxel remeshing failed (%s); using quadric decimation instead", surface.source, exc)
    return _remesh_decimate(surface, h)


def _surface_nets(mask: np.ndarray, spacing: float | Sequence[float], origin: Sequence[float],
                  smoothing_iterations: int = 16) -> Surface:
    """Surface-nets contour of a boolean [i, j, k] mask on an axis-aligned grid (mm)."""
    import pyvista as pv

    grid = pv.ImageData(dimensions=mask.shape, spacing=tuple(np.broadcast_to(spacing, 3).astype(float)),
                        origin=tuple(float(o) for o in origin))
    grid.point_data["label"] = np.asarray(mask, dtype=np.uint8).ravel(order="F")
    poly = grid.contour_labels(output_mesh_type="triangles", smoothing=smoothing_iterations > 0,
                               smoothing_iterations=max(int(smoothing_iterations), 1), pad_background=True)
    return Surface.from_pyvista(poly.clean(), "<surface nets>")


def _remesh_voxel(surface: Surface, h: float) -> Surface:
    import pyvista as pv

    spacing = 0.8 * h
    ref = surface.to_pyvista()
    lo, hi = surface.bounds
    lo = np.floor(lo / spacing - 2) * spacing
    dims = np.ceil((hi - lo) / spacing).astype(int) + 3
    ref_img = pv.ImageData(dimensions=tuple(int(d) for d in dims), spacing=(spacing,) * 3, origin=tuple(lo))
    mask_img = ref.voxelize_binary_mask(reference_volume=ref_img)
    mask = np.asarray(mask_img.point_data[mask_img.point_data.keys()[0]]).reshape(tuple(dims), order="F") > 0
    if not mask.any():
        raise SurfaceError("the voxelised surface is empty (is it closed?)")
    from scipy.ndimage import label

    lab, nlab = label(mask)
    if nlab > 1:
        sizes = np.bincount(lab.ravel())[1:]
        mask = lab == (1 + int(np.argmax(sizes)))
    nets = _surface_nets(mask, spacing, lo)
    _, closest = ref.find_closest_cell(nets.points, return_closest_point=True)
    out = Surface(np.asarray(closest, dtype=float), nets.faces, surface.source)
    topo = out.topology()
    if not topo.watertight:
        out, _ = repair_surface(out)
    if out.volume < 0:
        out = Surface(out.points, out.faces[:, [0, 2, 1]], out.source)
    v0 = abs(surface.volume)
    if v0 > 0 and abs(out.volume - v0) > 0.03 * v0:
        raise SurfaceError(f"voxel remeshing changed the volume by {100 * (out.volume / v0 - 1):+.1f} % "
                           "(thin features lost); use a smaller edge length")
    return out


def _remesh_decimate(surface: Surface, h: float) -> Surface:
    poly = surface.to_pyvista()
    target = max(int(surface.area / (np.sqrt(3) / 4 * h * h)), 200)
    mean_edge = float(surface.edge_lengths().mean())
    if mean_edge > 1.25 * h:
        # linear subdivision quarters every triangle (shapes kept, geometry unchanged, so it
        # cannot create self-intersections) until the mean edge is at most the target
        n_sub = int(np.ceil(np.log2(mean_edge / h)))
        poly = poly.subdivide(max(n_sub, 1), subfilter="linear")
    elif poly.n_cells > 1.15 * target:
        red = 1.0 - target / poly.n_cells
        poly = poly.decimate(red, volume_preservation=True)
    out = Surface.from_pyvista(poly, surface.source)
    if not out.is_watertight:
        out, _ = repair_surface(out)
    return out


# --------------------------------------------------------------------------- tet meshing
def _regular_tet_volume(h: float) -> float:
    return h ** 3 / (6.0 * np.sqrt(2.0))


#: largest fraction of zero-volume TetGen cells dropped (with a warning) instead of refusing the mesh
MAX_DROPPED_DEGENERATE = 1e-4


def tetmesh_from_surface(surface: Surface, *, element_size: float | None = None, order: int = 1,
                         quality: tuple[float, float] = (1.5, 12.0), remesh: bool = True,
                         repair: bool | None = None) -> Mesh:
    """Fill a closed surface with tetrahedra (TetGen).

    Parameters
    ----------
    surface : closed triangle surface in mm
    element_size : target edge length in mm (``None``: keep the surface resolution and let
        TetGen choose the interior size). Sets TetGen's max volume to that of a regular
        tetrahedron of this edge and, with ``remesh``, the surface edge length.
    order : 1 (tet4, ``"tetra"``) or 2 (tet10, ``"tetra10"``, straight mid-edge nodes)
    quality : (max radius-edge ratio, min dihedral angle in degrees) for TetGen's quality
        refinement (``-q``); (1.5, 12) is reliable on bone surfaces
    remesh : when ``element_size`` is given, first remesh the surface to that edge length
        with :func:`remesh_surface` (default True); ``False`` keeps the input triangles (the
        boundary of the mesh is then exactly the input surface)
    repair : run :func:`repair_surface` first; ``None`` (default) repairs only when the
        surface is not watertight (with a warning), ``False`` raises instead

    Returns
    -------
    Mesh with node set ``"surface"`` (boundary nodes). All Jacobians are positive (checked
    with :meth:`Mesh.validate`); flat boundary slivers (two faces on the surface, minimum
    dihedral < 5 deg) are removed after TetGen.

    Raises
    ------
    SurfaceError when the surface cannot be repaired or TetGen fails even with relaxed
    quality bounds and after MeshFix.
    """
    if order not in (1, 2):
        raise SurfaceError(f"order must be 1 (tet4) or 2 (tet10), got {order!r}")
    if element_size is not None and (not np.isfinite(element_size) or element_size <= 0):
        raise SurfaceError(f"element_size must be a positive edge length in mm, got {element_size!r}")
    ratio, angle = (float(quality[0]), float(quality[1]))
    if ratio < 1.05 or not (0 <= angle < 30):
        raise SurfaceError(f"quality=(radius-edge ratio, min dihedral deg) must have ratio >= 1.05 and "
                           f"0 <= angle < 30 (TetGen may not terminate otherwise), got {quality!r}")
    if repair or (repair is None and not surface.is_watertight):
        if repair is None:
            log.warning("%s: surface is not watertight; repairing it (pass repair=False to fail instead)",
                        surface.source)
        surface, rep = repair_surface(surface)
    elif not surface.is_watertight:
        topo = surface.topology()
        raise SurfaceError(f"{surface.source}: surface is not closed ({topo.boundary_edges} boundary, "
                           f"{topo.nonmanifold_edges} non-manifold, {topo.inconsistent_edges} flipped edges); "
                           "repair it with femur_fe.bone.repair_surface or `femur-fe mesh --repair`")
    if surface.volume < 0:
        surface = Surface(surface.points, surface.faces[:, [0, 2, 1]], surface.source)
    if element_size is not None and remesh is not False:
        surface = remesh_surface(surface, element_size)
    # optmaxdihedral/opt_iterations: TetGen's flip-and-smooth optimisation pass removes most
    # slivers that Delaunay refinement leaves (tested on the shared femur: cells with a
    # dihedral < 5 deg drop from 1.4 % to 0.3 %); the boundary caps left are peeled below.
    kwargs = dict(quality=True, minratio=ratio, mindihedral=angle, order=1, steinerleft=-1,
                  optmaxdihedral=165.0, opt_iterations=10)
    if element_size is not None:
        kwargs["maxvolume"] = _regular_tet_volume(float(element_size))
    # TetGen's minimum-dihedral refinement occasionally hits an internal error on decimated
    # surfaces; fall back to radius-edge refinement only, then to MeshFix (which removes
    # self-intersections) before giving up. Each fallback is logged.
    attempts = [kwargs, dict(kwargs, mindihedral=0.0), dict(kwargs, mindihedral=0.0, minratio=max(ratio, 2.0))]
    nodes = elems = None
    errors = []
    for fixed in (False, True):
        if fixed:
            log.warning("%s: TetGen failed (%s); removing self-intersections with MeshFix and retrying",
                        surface.source, errors[-1])
            surface, _ = repair_surface(surface, fix_intersections=True)
        for i, kw in enumerate(attempts):
            try:
                nodes, elems = _run_tetgen(surface, kw)
                break
            except RuntimeError as exc:
                errors.append(str(exc))
                if i + 1 < len(attempts):
                    log.info("%s: TetGen failed with %s (%s); relaxing the quality bound", surface.source,
                             {k: kw[k] for k in ("minratio", "mindihedral")}, exc)
        if nodes is not None:
            if errors:
                log.warning("%s: meshed with relaxed TetGen quality bounds (radius-edge %.2f, min dihedral %.0f deg) "
                            "after: %s", surface.source, kw["minratio"], kw["mindihedral"], "; ".join(errors))
            break
    if nodes is None:
        raise SurfaceError(f"{surface.source}: TetGen failed ({'; '.join(errors)}) even after MeshFix. Remesh "
                           "the surface with a larger element size, or rebuild it from the mask with "
                           "femur_fe.bone.surface_from_mask")
    nodes = np.asarray(nodes, dtype=np.float64)
    elems = np.asarray(elems, dtype=np.int64)
    if len(elems) == 0:
        raise SurfaceError(f"{surface.source}: TetGen produced no tetrahedra; the surface is probably not "
                           "closed or self-intersects; repair it with femur_fe.bone.repair_surface")
    elems = _orient_positive(nodes, elems)
    elems = _peel_boundary_slivers(nodes, elems)
    mesh = Mesh(nodes, elems, "tetra")

    mesh = remove_orphan_nodes(mesh)
    if order == 2:
        mesh = tet10_from_tet4(mesh)
    mesh = mesh.with_node_set("surface", np.unique(_tet_boundary(mesh.cells[:, :4])[0]))
    rep = mesh.validate()
    n_bad = len(rep.degenerate_cells)
    if n_bad and replace(rep, degenerate_cells=rep.degenerate_cells[:0]).ok \
            and n_bad <= MAX_DROPPED_DEGENERATE * mesh.n_cells:
        # zero-volume cells carry no stiffness and no mass: dropping them changes no answer, while
        # their collapsed Jacobian would make the element matrices undefined
        keep = np.setdiff1d(np.arange(mesh.n_cells), rep.degenerate_cells)
        mesh = remove_orphan_nodes(Mesh(mesh.points, mesh.cells[keep], mesh.cell_type))
        mesh = mesh.with_node_set("surface", np.unique(_tet_boundary(mesh.cells[:, :4])[0]))
        log.warning("%s: %d zero-volume tetrahedra left by TetGen removed (of %d)", surface.source, n_bad,
                    mesh.n_cells + n_bad)
        rep = mesh.validate()
    if not rep.ok:
        raise SurfaceError(f"{surface.source}: the tet mesh failed validation: {rep}")
    log.info("%s: %d nodes, %d %s cells (min scaled Jacobian %.3g)", surface.source, mesh.n_points,
             mesh.n_cells, mesh.cell_type, rep.min_scaled_jacobian)
    return mesh


def _run_tetgen(surface: Surface, kwargs: dict) -> tuple[np.ndarray, np.ndarray]:
    import tetgen

    tg = tetgen.TetGen(surface.points, surface.faces.astype(np.int32))
    return tg.tetrahedralize(**kwargs)[:2]


def _orient_positive(nodes: np.ndarray, tets: np.ndarray) -> np.ndarray:
    p = nodes[tets]
    vol = np.einsum("ij,ij->i", np.cross(p[:, 1] - p[:, 0], p[:, 2] - p[:, 0]), p[:, 3] - p[:, 0])
    neg = vol < 0
    if neg.any():
        tets = tets.copy()
        tets[neg] = tets[neg][:, [0, 2, 1, 3]]
    return tets


_TET_FACES = np.array([[1, 2, 3], [0, 3, 2], [0, 1, 3], [0, 2, 1]])  # face i is opposite vertex i


def dihedral_angles(points: np.ndarray, tets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Minimum and maximum interior dihedral angle (degrees) of each tetrahedron.

    ``tets`` are (m, >=4) node ids (only the first four are used). A regular tetrahedron
    has 70.53 deg everywhere; slivers have a minimum near 0 and a maximum near 180.
    """
    p = np.asarray(points, dtype=float)[np.asarray(tets)[:, :4]]
    normals = []
    for i, (a, b, c) in enumerate(_TET_FACES):
        n = np.cross(p[:, b] - p[:, a], p[:, c] - p[:, a])
        n /= np.maximum(np.linalg.norm(n, axis=1), 1e-300)[:, None]
        # outward: away from the opposite vertex i
        sgn = np.sign(np.einsum("ij,ij->i", n, p[:, i] - p[:, a]))
        normals.append(-n * np.where(sgn == 0, 1.0, sgn)[:, None])
    ang = []
    for i in range(4):
        for j in range(i + 1, 4):
            cos = np.clip(np.einsum("ij,ij->i", normals[i], normals[j]), -1.0, 1.0)
            ang.append(180.0 - np.degrees(np.arccos(cos)))
    ang = np.array(ang).T
    return ang.min(axis=1), ang.max(axis=1)


def _tet_boundary(tets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Boundary faces of a tet4 connectivity: (faces (f, 3) outward, owning tet ids (f,)).

    Faces are matched by an int64 key of their sorted node ids (1-D sort, much faster than
    ``np.unique(axis=0)``).
    """
    f = tets[:, _TET_FACES].reshape(-1, 3)
    srt = np.sort(f, axis=1)
    n = np.int64(int(tets.max()) + 1)
    key = (srt[:, 0] * n + srt[:, 1]) * n + srt[:, 2]
    order = np.argsort(key, kind="stable")
    ks = key[order]
    single = np.ones(len(ks), dtype=bool)
    dup = ks[1:] == ks[:-1]
    single[1:] &= ~dup
    single[:-1] &= ~dup
    idx = order[single]
    return f[idx], idx // 4


def _boundary_face_count(tets: np.ndarray) -> np.ndarray:
    _, owner = _tet_boundary(tets)
    return np.bincount(owner, minlength=len(tets))


def _boundary_is_manifold(tets: np.ndarray) -> bool:
    bf, _ = _tet_boundary(tets)
    if not len(bf):
        return False
    e = np.sort(np.vstack([bf[:, [0, 1]], bf[:, [1, 2]], bf[:, [2, 0]]]), axis=1)
    n = np.int64(int(tets.max()) + 1)
    _, cnt = np.unique(e[:, 0] * n + e[:, 1], return_counts=True)
    return bool(np.all(cnt == 2))


def _peel_boundary_slivers(nodes: np.ndarray, tets: np.ndarray, min_dihedral_deg: float = 5.0,
                           max_rounds: int = 4) -> np.ndarray:
    """Remove flat boundary "caps": slivers with two faces on the boundary.

    Such a tet spans four surface nodes of a nearly flat surface patch; removing it swaps
    the local surface diagonal and changes the volume by the sliver's (tiny) volume. Tets
    with fewer boundary faces are kept (removing them would pinch the boundary).
    """
    out = tets
    for _ in range(max_rounds):
        cand = np.flatnonzero(_boundary_face_count(out) == 2)
        if not len(cand):
            break
        mn, _ = dihedral_angles(nodes, out[cand])
        bad = cand[mn < min_dihedral_deg]
        if not len(bad):
            break
        keep = np.ones(len(out), dtype=bool)
        keep[bad] = False
        if not _boundary_is_manifold(out[keep]):
            break
        log.debug("peeled %d boundary sliver caps", len(bad))
        out = out[keep]
    return out


def surface_from_mesh(mesh: Mesh) -> Surface:
    """The outer boundary of a volume mesh as a triangle surface (corner nodes, renumbered)."""
    tet = mesh.tet4() if mesh.cell_type == "tetra10" else mesh
    if tet.cell_type != "tetra":
        faces, _ = boundary_faces(tet)
        faces = np.vstack([faces[:, [0, 1, 2]], faces[:, [0, 2, 3]]])
    else:
        faces, _ = boundary_faces(tet)
    used = np.unique(faces)
    new = np.full(tet.n_points, -1, dtype=np.int64)
    new[used] = np.arange(len(used))
    return Surface(tet.points[used], new[faces[:, :3]], "<mesh boundary>")


# --------------------------------------------------------------------------- mask -> surface
def surface_from_mask(mask: np.ndarray, affine: np.ndarray | None = None, *,
                      spacing: Sequence[float] | None = None, origin: Sequence[float] | None = None,
                      direction: np.ndarray | None = None, smoothing_iterations: int = 20,
                      blur_sigma_voxels: float = 0.0, keep_largest: bool = True) -> Surface:
    """Closed surface of a boolean mask (marching cubes / VTK flying edges at 0.5).

    Parameters
    ----------
    mask : (ni, nj, nk) bool array indexed [i, j, k]
    affine : (4, 4) index -> world (mm) matrix: ``world = affine @ [i, j, k, 1]``.
        Alternatively give ``spacing`` (3,), ``origin`` (3,) and ``direction`` (3, 3)
        (columns = world directions of the i, j, k axes), as SimpleITK does.
    smoothing_iterations : windowed-sinc smoothing passes (0 = none); the pass band keeps the
        volume within about 1 %
    blur_sigma_voxels : optional Gaussian blur of the 0/1 image before contouring (0 = none)
    keep_largest : keep only the largest connected part of the surface

    Returns
    -------
    Surface in world mm, outward-oriented and watertight
    """
    import pyvista as pv

    m = np.asarray(mask)
    if m.ndim != 3:
        raise SurfaceError(f"mask must be a 3-D array, got shape {m.shape}")
    if m.dtype != bool:
        vals = np.unique(m)
        if not np.all(np.isin(vals, [0, 1])):
            raise SurfaceError(f"mask must be boolean or 0/1, got values {vals[:6]}; threshold it first "
                               "(e.g. mask = labels == 2)")
        m = m.astype(bool)
    if not m.any():
        raise SurfaceError("mask is empty (no True voxel); check the label value or the threshold")
    if affine is None:
        sp_ = np.asarray(spacing if spacing is not None else (1.0, 1.0, 1.0), dtype=float)
        org = np.asarray(origin if origin is not None else (0.0, 0.0, 0.0), dtype=float)
        dirm = np.asarray(direction if direction is not None else np.eye(3), dtype=float).reshape(3, 3)
        affine = np.eye(4)
        affine[:3, :3] = dirm * sp_[None, :]
        affine[:3, 3] = org
    affine = np.asarray(affine, dtype=float)
    if affine.shape != (4, 4) or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise SurfaceError(f"affine must be an invertible (4, 4) index->world matrix, got shape {affine.shape}")
    # pad by one voxel so the contour is closed at the array border
    vol = np.pad(m.astype(np.float32), 1)
    if blur_sigma_voxels > 0:
        from scipy.ndimage import gaussian_filter

        vol = gaussian_filter(vol, blur_sigma_voxels)
    grid = pv.ImageData(dimensions=vol.shape, spacing=(1.0, 1.0, 1.0), origin=(-1.0, -1.0, -1.0))
    grid.point_data["m"] = vol.ravel(order="F")
    surf = grid.contour([0.5], scalars="m", method="flying_edges")
    if surf.n_cells == 0:
        raise SurfaceError("marching cubes found no surface in the mask (is it a single voxel thick?)")
    surf = surf.triangulate().clean()
    if keep_largest:
        surf = surf.connectivity("largest")
    if smoothing_iterations > 0:
        surf = surf.smooth_taubin(n_iter=int(smoothing_iterations), pass_band=0.1,
                                  normalize_coordinates=True)
    s = Surface.from_pyvista(surf.extract_surface() if not isinstance(surf, pv.PolyData) else surf,
                             "<mask surface>")
    # index -> world
    pts = s.points @ affine[:3, :3].T + affine[:3, 3]
    s = Surface(pts, s.faces, "<mask surface>")
    if np.linalg.det(affine[:3, :3]) < 0:
        s = Surface(s.points, s.faces[:, [0, 2, 1]], s.source)
    s, _ = repair_surface(s)
    return s


# --------------------------------------------------------------------------- proximal femur cut
def cut_proximal_femur(surface_or_mesh: Surface | Mesh, distance_below_lesser_trochanter_mm: float = 50.0, *,
                       landmarks: FemurFrame | None = None,
                       element_size: float | None = None) -> Surface | Mesh:
    """Cut a femur with a plane perpendicular to the shaft axis below the lesser trochanter.

    The cut is capped (``vtkClipClosedSurface``) so the proximal part stays a closed
    surface. The shaft axis, head and lesser trochanter come from
    :func:`femur_fe.bone.anatomy.femur_frame` unless ``landmarks`` (a frame) is given.

    Parameters
    ----------
    surface_or_mesh : a closed femur :class:`Surface`, or a volume :class:`Mesh` whose
        boundary is cut and re-meshed (element size: ``element_size`` or the mean boundary
        edge length)
    distance_below_lesser_trochanter_mm : plane distance below the lesser trochanter along
        the shaft axis, mm (>= 0)

    Returns
    -------
    Surface (closed, outward) or Mesh (tet4/tet10 like the input) of the proximal part,
    with node set ``"distal_cut"`` on the cut face for a mesh.
    """

    d = float(distance_below_lesser_trochanter_mm)
    if not np.isfinite(d) or d < 0:
        raise SurfaceError(f"distance_below_lesser_trochanter_mm must be >= 0 mm, got {distance_below_lesser_trochanter_mm!r}")
    is_mesh = isinstance(surface_or_mesh, Mesh)
    surf = surface_from_mesh(surface_or_mesh) if is_mesh else surface_or_mesh
    if not surf.is_watertight:
        surf, _ = repair_surface(surf)
    origin, axis = proximal_cut_plane(surf, d, landmarks=landmarks)
    poly = surf.to_pyvista()
    # keep the side the normal points to
    clipped = poly.clip_closed_surface(normal=tuple(axis), origin=tuple(origin))
    out = Surface.from_pyvista(clipped.triangulate().clean(), surf.source + " (proximal cut)")
    if not out.is_watertight:
        out, _ = repair_surface(out)
    if out.volume < 0:
        out = Surface(out.points, out.faces[:, [0, 2, 1]], out.source)
    log.info("%s: cut %.1f mm below the lesser trochanter", surf.source, d)
    if not is_mesh:
        return out
    h = element_size or float(surf.edge_lengths().mean())
    order = 2 if surface_or_mesh.cell_type == "tetra10" else 1
    mesh = tetmesh_from_surface(out, element_size=h, order=order)
    return mesh.with_node_set("distal_cut", nodes_on_plane(mesh, origin, axis))


def nodes_on_plane(mesh: Mesh, origin, normal, tol_mm: float = 1e-3) -> np.ndarray:
    """Ids of mesh nodes within ``tol_mm`` of the plane through ``origin`` with ``normal``."""
    n = np.asarray(normal, dtype=float)
    n = n / np.linalg.norm(n)
    return np.flatnonzero(np.abs((mesh.points - np.asarray(origin, dtype=float)) @ n) < tol_mm)


def proximal_cut_plane(surface: Surface, distance_below_lesser_trochanter_mm: float, *,
                       landmarks: FemurFrame | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Plane of :func:`cut_proximal_femur`: (point on the plane, unit normal pointing proximally).

    ``landmarks`` is a :class:`~femur_fe.bone.anatomy.FemurFrame` (fitted here when not given;
    the side is not needed for a cut, so an undecidable side does not stop it).
    """
    d = float(distance_below_lesser_trochanter_mm)
    lm = landmarks or femur_frame((surface.points, surface.faces), require_side=False)
    axis = lm.shaft_axis
    if lm.lesser_trochanter is None:
        raise SurfaceError(f"{surface.source}: no lesser trochanter found (the bone ends "
                           f"{-float(lm.axial(surface.points).min()):.0f} mm below the head centre); a cut below it "
                           "needs the bone down to below the lesser trochanter")
    z_lt = lm.axial(lm.lesser_trochanter)
    z_cut = z_lt - d
    zmin = float(lm.axial(surface.points).min())
    if z_cut <= zmin + 1.0:
        raise SurfaceError(f"{surface.source}: the cut {d:.1f} mm below the lesser trochanter lies below the bone "
                           f"(only {z_lt - zmin:.1f} mm of bone below it); use a smaller distance")
    return lm.head_centre + z_cut * axis, axis
