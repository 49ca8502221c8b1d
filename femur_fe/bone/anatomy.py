"""Anatomical frames of a femur and of a vertebra, found from the geometry alone.

Both frames work on a surface in any pose (any rotation and translation), in mm, and do
not need landmarks, a template or a side label. Inputs can be a volume
:class:`~femur_fe.fe.mesh.Mesh` (its boundary is used), a :class:`~femur_fe.io.surface.Surface`,
a ``(points, faces)`` pair, a pyvista ``PolyData``, a ``meshio.Mesh`` with triangles, a
surface file name, or a bare ``(n, 3)`` array of *surface* points (normals are then
estimated from neighbours, with no orientation).

The method in full (equations, parameters, choices, sources): ``docs/anatomy.md``, section
``femur_fe.bone.anatomy``.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from ..errors import RegionError
from ..fe.mesh import Mesh
from ..fe.topology import boundary_faces

log = logging.getLogger(__name__)

_EXPLICIT_HINT = ("give explicit node sets in the load case instead ([regions.<name>] node_set = \"...\" "
                  "or nodes = [...]), or fix the geometry")


# =========================================================================== surface input
@dataclass(frozen=True)
class _Cloud:
    """Surface samples: vertex positions, unit normals, area weights."""

    points: np.ndarray
    normals: np.ndarray
    weights: np.ndarray
    oriented: bool
    faces: np.ndarray | None
    source: str
    face_normals: np.ndarray | None = None  # smoothed per-face normals of a voxel (staircase) surface

    @property
    def total_area(self) -> float:
        return float(self.weights.sum())


def _staircase_normals(pts: np.ndarray, faces: np.ndarray, fn: np.ndarray,
                       fa: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Smoothed (vertex, face) normals when the surface is a voxel staircase, else None.

    The boundary of a hexahedral voxel mesh has face normals along three orthogonal
    directions only; its vertex normals then follow the steps, not the bone. When six
    directions carry more than 90 % of the area, each normal is replaced by the area-weighted
    mean face normal within 2.5 voxel edges (the median edge length), which restores the
    normal of the underlying surface to within a few degrees.
    """
    from scipy.spatial import cKDTree

    unit = fn / np.maximum(np.linalg.norm(fn, axis=1), 1e-300)[:, None]
    key = np.round(unit, 3)
    _, inv = np.unique(key, axis=0, return_inverse=True)
    area = np.bincount(inv.ravel(), weights=fa)
    if np.sort(area)[-6:].sum() < 0.9 * fa.sum():
        return None
    edge = float(np.median(np.linalg.norm(pts[faces[:, 1]] - pts[faces[:, 0]], axis=1)))
    cent = pts[faces].mean(axis=1)
    tree = cKDTree(cent)
    radius = 2.5 * edge
    wn = fn  # area-weighted normals (|fn| = 2 x face area)

    def smooth(q: np.ndarray) -> np.ndarray:
        out = np.zeros((len(q), 3))
        for i, nb in enumerate(tree.query_ball_point(q, r=radius)):
            out[i] = wn[nb].sum(axis=0)
        return out / np.maximum(np.linalg.norm(out, axis=1), 1e-300)[:, None]

    log.debug("surface is a voxel staircase: normals smoothed over %.1f mm", radius)
    return smooth(pts), smooth(cent)


def _as_triangles(obj: Any) -> tuple[np.ndarray, np.ndarray | None, str]:
    """(points, triangle faces or None, description) from any accepted input."""
    if isinstance(obj, Mesh):
        faces, _ = boundary_faces(obj)
        faces = faces[:, :4] if obj.cell_type == "hexahedron" else faces[:, :3]
        if faces.shape[1] == 4:
            faces = np.vstack([faces[:, [0, 1, 2]], faces[:, [0, 2, 3]]])
        return obj.points, faces, "mesh boundary"
    if isinstance(obj, (str, bytes)) or hasattr(obj, "__fspath__"):
        import meshio

        m = meshio.read(obj)
        tri = [c.data for c in m.cells if c.type == "triangle"]
        if not tri:
            raise RegionError(f"{obj}: no triangles to take a surface from; pass a surface file or a volume Mesh")
        pts, inv = np.unique(np.asarray(m.points, dtype=float), axis=0, return_inverse=True)
        return pts, inv.ravel()[np.vstack(tri)], str(obj)
    is_pyvista = type(obj).__module__.split(".")[0] == "pyvista"
    if not is_pyvista and hasattr(obj, "points") and hasattr(obj, "faces") and np.asarray(obj.faces).ndim == 2:
        return np.asarray(obj.points, dtype=float), np.asarray(obj.faces, dtype=np.int64), \
            getattr(obj, "source", "surface")
    if is_pyvista:  # PolyData (or any dataset: its outer surface)
        if not hasattr(obj, "triangulate") or not hasattr(obj, "faces"):
            obj = obj.extract_surface()
        poly = obj.triangulate()
        faces = np.asarray(poly.faces).reshape(-1, 4)[:, 1:]
        return np.asarray(poly.points, dtype=float), faces, "pyvista surface"
    if hasattr(obj, "cells") and hasattr(obj, "points"):  # meshio.Mesh
        tri = [c.data for c in obj.cells if c.type == "triangle"]
        if not tri:
            raise RegionError("meshio mesh has no triangle cells; convert volume meshes with femur_fe.Mesh")
        return np.asarray(obj.points, dtype=float), np.vstack(tri).astype(np.int64), "meshio surface"
    if isinstance(obj, tuple) and len(obj) == 2:
        return np.asarray(obj[0], dtype=float), np.asarray(obj[1], dtype=np.int64), "(points, faces)"
    pts = np.asarray(obj, dtype=float)
    if pts.ndim != 2 or pts.shape[1] != 3:
        raise RegionError(f"expected a Mesh, a surface, (points, faces) or (n, 3) surface points; got an array "
                          f"of shape {pts.shape}")
    return pts, None, "point cloud"


def _cloud(obj: Any) -> _Cloud:
    pts, faces, source = _as_triangles(obj)
    if not np.isfinite(pts).all():
        raise RegionError(f"{source}: non-finite coordinates; clean the geometry first")
    if faces is not None and len(faces):
        used = np.unique(faces)
        remap = np.full(len(pts), -1, dtype=np.int64)
        remap[used] = np.arange(len(used))
        pts = pts[used]
        faces = remap[faces]
        p0, p1, p2 = pts[faces[:, 0]], pts[faces[:, 1]], pts[faces[:, 2]]
        fn = np.cross(p1 - p0, p2 - p0)
        fa = 0.5 * np.linalg.norm(fn, axis=1)
        # a closed surface wound inwards has negative signed volume: flip it
        vol = np.einsum("ij,ij->i", p0, fn).sum() / 6.0
        if vol < 0:
            fn = -fn
            faces = faces[:, [0, 2, 1]]
        vn = np.zeros_like(pts)
        np.add.at(vn, faces.ravel(), np.repeat(fn, 3, axis=0))
        nn = np.linalg.norm(vn, axis=1)
        vn = vn / np.where(nn > 0, nn, 1.0)[:, None]
        va = np.zeros(len(pts))
        np.add.at(va, faces.ravel(), np.repeat(fa / 3.0, 3))
        stair = _staircase_normals(pts, faces, fn, fa)
        if stair is not None:
            vn = stair[0]
        cloud = _Cloud(pts, vn, va, True, faces, source, None if stair is None else stair[1])
    else:
        from scipy.spatial import cKDTree

        if len(pts) < 50:
            raise RegionError(f"{source}: {len(pts)} points are too few to fit an anatomical frame")
        tree = cKDTree(pts)
        k = min(16, len(pts))
        dist, idx = tree.query(pts, k=k)
        nb = pts[idx] - pts[idx].mean(axis=1, keepdims=True)
        cov = np.einsum("nki,nkj->nij", nb, nb)
        _, vecs = np.linalg.eigh(cov)
        vn = vecs[:, :, 0]
        # area per point from the local density: k neighbours within a disc of radius r_k
        area = np.pi * dist[:, -1] ** 2 / (k - 1)
        cloud = _Cloud(pts, vn, area, False, None, source)
    ext = float((cloud.points.max(0) - cloud.points.min(0)).max())
    if ext < 1.0:
        raise RegionError(f"{source}: largest extent {ext:.3g} < 1: the coordinates look like metres; femur_fe "
                          "works in mm (scale by 1000)")
    return cloud


def _unit(v: np.ndarray) -> np.ndarray:
    n = float(np.linalg.norm(v))
    if n == 0:
        raise RegionError("zero-length direction while fitting a frame")
    return np.asarray(v, dtype=float) / n


def _perp(v: np.ndarray, axis: np.ndarray) -> np.ndarray:
    return v - np.multiply.outer(v @ axis, axis) if v.ndim > 1 else v - (v @ axis) * axis


def _wmean(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    return (x * w[:, None]).sum(0) / w.sum()


def _pca(points: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(weighted mean, eigenvalues ascending, eigenvectors as columns)."""
    m = _wmean(points, w)
    d = points - m
    cov = (d * w[:, None]).T @ d / w.sum()
    vals, vecs = np.linalg.eigh(cov)
    return m, vals, vecs


def _fit_line(points: np.ndarray, w: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    w = np.ones(len(points)) if w is None else w
    m, _, vecs = _pca(points, w)
    return m, vecs[:, -1]


def fit_sphere(points: np.ndarray, weights: np.ndarray | None = None) -> tuple[np.ndarray, float, float]:
    """(Area-)weighted least-squares sphere: algebraic fit refined by Gauss-Newton.

    Returns (centre (3,), radius mm, weighted RMS of the radial residual mm).
    """
    p = np.asarray(points, dtype=float)
    w = np.ones(len(p)) if weights is None else np.asarray(weights, dtype=float)
    if len(p) < 4:
        raise RegionError(f"a sphere fit needs at least 4 points, got {len(p)}")
    sw = np.sqrt(w)
    a = np.hstack([2 * p, np.ones((len(p), 1))]) * sw[:, None]
    b = (p**2).sum(1) * sw
    sol, *_ = np.linalg.lstsq(a, b, rcond=None)
    c = sol[:3]
    r = float(np.sqrt(max(sol[3] + c @ c, 1e-12)))
    for _ in range(10):  # geometric refinement
        d = p - c
        dist = np.linalg.norm(d, axis=1)
        dist = np.where(dist > 0, dist, 1e-12)
        res = dist - r
        jac = np.hstack([-d / dist[:, None], -np.ones((len(p), 1))])
        step, *_ = np.linalg.lstsq(jac * sw[:, None], -res * sw, rcond=None)
        c = c + step[:3]
        r = r + float(step[3])
        if np.linalg.norm(step) < 1e-9 * max(r, 1.0):
            break
    res = np.linalg.norm(p - c, axis=1) - r
    rms = float(np.sqrt((w * res**2).sum() / w.sum()))
    return c, float(r), rms


# =========================================================================== femur
@dataclass(frozen=True)
class FemurFrame:
    """Anatomical frame and landmarks of a femur (all coordinates in the input's frame, mm).

    Attributes
    ----------
    head_centre : (3,) centre of the femoral head sphere, mm (also the frame origin)
    head_radius : mm
    head_fit_rms : RMS radial residual of the head sphere fit, mm
    head_coverage : fraction of the head sphere's area covered by its inlier surface
    neck_axis : (3,) unit vector from the neck to the head centre
    shaft_axis : (3,) unit vector along the shaft, pointing proximally (= basis z)
    shaft_point : (3,) a point on the shaft axis, mm
    greater_trochanter : (3,) landmark point on the surface, mm
    lesser_trochanter : (3,) landmark point on the surface, mm, or None when the bone ends
        above it (a femur truncated through the trochanteric region)
    distal_end : (3,) the most distal point of the bone projected on the shaft axis, mm
    side : ``"left"`` or ``"right"``
    basis : (3, 3) rows x (patient right), y (anterior), z (proximal); right-handed
    neck_shaft_angle_deg : true angle between neck axis and distal shaft axis, degrees
    anteversion_deg : neck anteversion vs the posterior condylar line (None without condyles)
    length_mm : extent of the bone along the shaft axis, mm
    whole_bone : True when the distal condyles are present
    side_cues : the signed votes used for the side (positive = anterior along +q), for audit
    methods : how each landmark was obtained (``head``, ``shaft_axis``, ``neck_axis``,
        ``greater_trochanter``, ``side``): a method name or ``"given"`` (an ``[anatomy]`` override)
    """

    head_centre: np.ndarray
    head_radius: float
    head_fit_rms: float
    head_coverage: float
    neck_axis: np.ndarray
    shaft_axis: np.ndarray
    shaft_point: np.ndarray
    greater_trochanter: np.ndarray
    lesser_trochanter: np.ndarray | None
    distal_end: np.ndarray
    side: str
    basis: np.ndarray
    neck_shaft_angle_deg: float
    anteversion_deg: float | None
    length_mm: float
    whole_bone: bool
    side_cues: Mapping[str, float] = field(default_factory=dict)
    methods: Mapping[str, str] = field(default_factory=dict)

    bone = "femur"

    @property
    def origin(self) -> np.ndarray:
        return self.head_centre

    @property
    def proximal(self) -> np.ndarray:
        return self.basis[2]

    @property
    def anterior(self) -> np.ndarray:
        return self.basis[1]

    @property
    def medial(self) -> np.ndarray:
        """Unit vector towards the body midline (-x for a right femur, +x for a left one)."""
        return -self.basis[0] if self.side == "right" else self.basis[0]

    @property
    def lateral(self) -> np.ndarray:
        return -self.medial

    def to_local(self, points) -> np.ndarray:
        """Coordinates of points in the frame (origin head centre, axes x, y, z), mm."""
        return (np.asarray(points, dtype=float) - self.origin) @ self.basis.T

    def vector_to_global(self, v) -> np.ndarray:
        """A direction given as (x, y, z) components in the frame, in input coordinates."""
        return np.asarray(v, dtype=float) @ self.basis

    def axial(self, points) -> np.ndarray:
        """Signed distance along the shaft axis from the head centre (mm, + proximal)."""
        return (np.asarray(points, dtype=float) - self.head_centre) @ self.shaft_axis

    def landmarks(self) -> dict[str, np.ndarray]:
        out = {"head_centre": self.head_centre, "greater_trochanter": self.greater_trochanter,
               "lesser_trochanter": self.lesser_trochanter, "distal_end": self.distal_end,
               "shaft_point": self.shaft_point}
        return {k: v for k, v in out.items() if v is not None}

    def to_dict(self) -> dict:
        """JSON-ready summary (lists and floats)."""
        out = {"bone": "femur", "side": self.side, "head_radius_mm": self.head_radius,
               "head_fit_rms_mm": self.head_fit_rms, "head_coverage": self.head_coverage,
               "neck_shaft_angle_deg": self.neck_shaft_angle_deg, "anteversion_deg": self.anteversion_deg,
               "length_mm": self.length_mm, "whole_bone": self.whole_bone,
               "neck_axis": self.neck_axis.tolist(), "shaft_axis": self.shaft_axis.tolist(),
               "basis": self.basis.tolist(), "side_cues": dict(self.side_cues), "methods": dict(self.methods),
               "lesser_trochanter": None}
        out.update({k: v.tolist() for k, v in self.landmarks().items()})
        return out


#: Plausibility bounds of the automatic femur landmarks (adult human femora). Head radius:
#: adult head diameters are about 40-55 mm (women ~43, men ~48-50 mm) [M]; neck-shaft angle:
#: 129.2 +- 7.3 deg in 375 adult femora, coxa vara below ~120 deg, coxa valga above ~140 deg
#: (Toogood, Skalak & Cooperman 2009, Clin Orthop Relat Res 467:876) [M]. A value outside is
#: refused with the override that fixes it.
HEAD_RADIUS_RANGE_MM = (17.0, 30.0)
NECK_SHAFT_ANGLE_RANGE_DEG = (110.0, 150.0)
#: smallest fraction of a sphere the head inliers must cover: a spherical cap of half-angle
#: 66 deg. The femoral head measures 0.8 on a 1 mm surface and about 0.5 on a 3 mm CT mask
#: (the neck and the blurred head-neck junction take the rest); the condyles, the trochanters
#: and a bone end cut flat stay far below it or fail the residual test.
MIN_HEAD_COVERAGE = 0.3

_OVERRIDE_HINT = {
    "head": "set anatomy.head_centre_mm = [x, y, z] and anatomy.head_radius_mm (world mm; --set "
            "anatomy.head_centre_mm=[x,y,z] on the command line)",
    "shaft_axis": "set anatomy.shaft_axis = [x, y, z] (a direction along the shaft; --set "
                  "anatomy.shaft_axis=[x,y,z])",
    "neck_axis": "set anatomy.neck_axis = [x, y, z] (a direction along the femoral neck; --set "
                 "anatomy.neck_axis=[x,y,z])",
    "greater_trochanter": "set anatomy.greater_trochanter_mm = [x, y, z] (world mm)",
    "side": "set anatomy.side = \"left\" or \"right\" (--set anatomy.side=right)",
}


def _hough_sphere(cloud: _Cloud, radii: np.ndarray, bin_mm: float) -> list[tuple[float, np.ndarray, float]]:
    """Best vote bin per radius: list of (area, centre, radius), strongest first."""
    out = []
    signs = (1.0,) if cloud.oriented else (1.0, -1.0)
    offsets = np.array([[i, j, k] for i in (-1, 0, 1) for j in (-1, 0, 1) for k in (-1, 0, 1)])
    for r in radii:
        votes = np.vstack([cloud.points - s * r * cloud.normals for s in signs])
        w = np.tile(cloud.weights, len(signs))
        key = np.floor(votes / bin_mm).astype(np.int64)
        kmin = key.min(0) - 1
        dims = key.max(0) - kmin + 2
        code = ((key - kmin) * np.array([dims[1] * dims[2], dims[2], 1])).sum(1)
        uniq, inv = np.unique(code, return_inverse=True)
        acc = np.bincount(inv.ravel(), weights=w)
        # sum each bin with its 26 neighbours (votes split across bin edges)
        ucoord = np.stack(np.unravel_index(uniq, dims), axis=1)
        tot = np.zeros(len(uniq))
        for off in offsets:
            nb = ucoord + off
            ok = ((nb >= 0) & (nb < dims)).all(1)
            c2 = np.ravel_multi_index(nb[ok].T, dims)
            pos = np.searchsorted(uniq, c2)
            pos = np.minimum(pos, len(uniq) - 1)
            hit = uniq[pos] == c2
            idx = np.flatnonzero(ok)[hit]
            tot[idx] += acc[pos[hit]]
        i = int(np.argmax(tot))
        sel = np.flatnonzero((np.abs(np.stack(np.unravel_index(code, dims), 1) - ucoord[i]) <= 1).all(1))
        centre = _wmean(votes[sel], w[sel])
        out.append((float(tot[i]), centre, float(r)))
    out.sort(key=lambda t: -t[0])
    return out


def _sphere_inliers(cloud: _Cloud, centre: np.ndarray, r: float, tol: float) -> np.ndarray:
    """Samples within ``tol * r`` (at least 0.75 mm) of the sphere whose normals point away from the centre."""
    d = cloud.points - centre
    dist = np.linalg.norm(d, axis=1)
    radial = (d * cloud.normals).sum(1) / np.maximum(dist, 1e-12)
    align = radial if cloud.oriented else np.abs(radial)
    return (np.abs(dist - r) < max(tol * r, 0.75)) & (align > 0.85)


def _refine_head(cloud: _Cloud, centre: np.ndarray, r: float) -> tuple[np.ndarray, float, float, float, np.ndarray]:
    """Robust sphere fit from a seed: trimmed least squares iterated to a fixed point.

    The inlier band (radial residual within 15 %, 10 %, then 8 % of R, normals pointing away
    from the centre) shrinks over the first passes; the 8 % pass is then repeated until the
    inlier set no longer changes (at most 20 times). Outliers (neck, fovea, a flattened or
    blurred head-neck junction) have no weight once outside the band, which makes the fit a
    redescending M-estimator seeded by the Hough vote. Returns centre, R, RMS, coverage
    (inlier area / 4 pi R^2) and the inlier mask.
    """
    p, w = cloud.points, cloud.weights
    inl = np.zeros(len(p), bool)
    rms = np.inf
    schedule = (0.15, 0.1, 0.08, 0.08) + (0.08,) * 20
    for i, tol in enumerate(schedule):
        new = _sphere_inliers(cloud, centre, r, tol)
        if new.sum() < 10:
            break
        if i >= 4 and np.array_equal(new, inl):
            break
        inl = new
        centre, r, rms = fit_sphere(p[inl], w[inl])
    coverage = float(w[inl].sum() / (4 * np.pi * r**2)) if inl.any() else 0.0
    return centre, float(r), float(rms), coverage, inl


def _slice_centroids(p: np.ndarray, w: np.ndarray, origin: np.ndarray, axis: np.ndarray,
                     t0: float, t1: float, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Area-weighted centroids of the surface samples in n slabs t in [t0, t1] along axis."""
    t = (p - origin) @ axis
    edges = np.linspace(t0, t1, n + 1)
    cents, ts = [], []
    for a, b in zip(edges[:-1], edges[1:]):
        s = (t >= a) & (t < b)
        if s.sum() >= 6:
            cents.append(_wmean(p[s], w[s]))
            ts.append(0.5 * (a + b))
    return np.array(cents).reshape(-1, 3), np.array(ts)


def _vec3(value: Any, name: str) -> np.ndarray | None:
    if value is None or isinstance(value, str):
        return None
    v = np.asarray(value, dtype=float).reshape(-1)
    if v.shape != (3,) or not np.isfinite(v).all():
        raise RegionError(f"anatomy.{name} must be three finite numbers [x, y, z], got {value!r}")
    return v


def _find_head(cloud: _Cloud, centroid: np.ndarray, e1: np.ndarray, length: float,
               centre: np.ndarray | None, radius: float | None) -> tuple[np.ndarray, float, float, float, np.ndarray, str]:
    """Femoral head: (centre, R, rms, coverage, inlier mask, method)."""
    p, w = cloud.points, cloud.weights
    if centre is not None:
        if radius is None:  # the radius from the surface around the given centre
            d = p - centre
            dist = np.linalg.norm(d, axis=1)
            radial = (d * cloud.normals).sum(1) / np.maximum(dist, 1e-12)
            near = (dist > 8.0) & (dist < 40.0) & ((radial if cloud.oriented else np.abs(radial)) > 0.85)
            if w[near].sum() <= 0:
                raise RegionError(f"femur frame: no head surface within 8-40 mm of anatomy.head_centre_mm "
                                  f"{np.round(centre, 1).tolist()} in {cloud.source}; check the point (world mm) or "
                                  "also set anatomy.head_radius_mm")
            order = np.argsort(dist[near])
            cw = np.cumsum(w[near][order])
            radius = float(dist[near][order][np.searchsorted(cw, 0.5 * cw[-1])])
        inl = _sphere_inliers(cloud, centre, radius, 0.08)
        res = np.linalg.norm(p[inl] - centre, axis=1) - radius
        rms = float(np.sqrt((w[inl] * res**2).sum() / w[inl].sum())) if inl.any() else float("nan")
        cov = float(w[inl].sum() / (4 * np.pi * radius**2))
        return np.asarray(centre, float), float(radius), rms, cov, inl, "given"
    t_all = (p - centroid) @ e1
    cands = _hough_sphere(cloud, np.arange(8.0, 40.5, 1.0), 2.0)
    tried = []
    for area, c0, r0 in cands[:6]:
        c, r, rms, cov, inl = _refine_head(cloud, c0, r0)
        tc = float((c - centroid) @ e1)
        at_end = max(t_all.max() - tc, tc - t_all.min()) > 0.6 * length  # near one end
        tried.append(f"R={r:.1f} mm coverage {cov:.0%} rms {rms:.2f} mm")
        if 8.0 <= r <= 40.0 and cov >= MIN_HEAD_COVERAGE and rms <= 0.05 * r and at_end:
            if radius is not None:
                r = float(radius)
            return c, r, rms, cov, inl, "sphere_fit"
    raise RegionError(
        f"femur frame: femoral head not found in {cloud.source}: no near-spherical region of radius 8-40 mm "
        f"covering >= {MIN_HEAD_COVERAGE:.0%} of a sphere with an RMS residual <= 5 % of R at an end of the bone "
        f"(best tries: {'; '.join(tried[:3]) or 'none'}). Is this a femur, in mm? {_OVERRIDE_HINT['head']}, "
        f"or {_EXPLICIT_HINT}")


def _flat_end_face(cloud: _Cloud, hc: np.ndarray, hr: float) -> tuple[np.ndarray, np.ndarray, float] | None:
    """The flat face that ends a cut or truncated bone: (centroid, outward normal, area mm^2) or None.

    A cut face is a supporting plane of the bone (all of the bone lies on one side of it) and
    is flat to a fraction of a millimetre, which no natural bone surface is over several
    square centimetres. For each of 2000 near-uniform directions n, the samples within 1 mm
    of the supporting plane ``max(p . n)`` with normals within 10 deg of n are counted by
    area; the five best separate directions are refined by the mean normal of their samples
    and scored by the area within 0.5 mm of the plane with normals within 5 deg (a smoothed
    3 mm CT mask's cut face keeps about 90 % of its area by that test, the flattest natural
    region of the bundled femur 20 % of a 4 cm^2 patch); the face's normal is that of the
    plane fitted through those samples. The best is a cut face when it covers
    at least a disc of half a head radius and does not pass through the head (its plane at
    least one head radius from the head centre).
    """
    p, n, w = cloud.points, cloud.normals, cloud.weights
    dirs = _fibonacci_sphere(2000)
    pf = p.astype(np.float32)
    scores = np.zeros(len(dirs))
    for k in range(0, len(dirs), 250):
        dk = dirs[k:k + 250]
        proj = pf @ dk.T.astype(np.float32)
        al = n @ dk.T
        on = (proj > proj.max(axis=0) - 1.0) & ((al if cloud.oriented else np.abs(al)) > np.cos(np.radians(10.0)))
        scores[k:k + 250] = w @ on
    seeds: list[np.ndarray] = []
    for i in np.argsort(-scores):
        if scores[i] <= 0 or len(seeds) == 5:
            break
        if all(dirs[i] @ s_ < np.cos(np.radians(20.0)) for s_ in seeds):
            seeds.append(dirs[i])
    best = None
    for u in seeds:
        for tol_mm, tol_deg in ((1.0, 10.0), (0.5, 5.0), (0.5, 5.0)):
            proj, al = p @ u, n @ u
            on = (proj > proj.max() - tol_mm) & ((al if cloud.oriented else np.abs(al)) > np.cos(np.radians(tol_deg)))
            if w[on].sum() <= 0:
                break
            nn = n[on] if cloud.oriented else n[on] * np.sign(al[on])[:, None]
            u = _unit(_wmean(nn, w[on]))
        else:
            proj, al = p @ u, n @ u
            on = (proj > proj.max() - 0.5) & ((al if cloud.oriented else np.abs(al)) > np.cos(np.radians(5.0)))
            area = float(w[on].sum())
            if best is None or area > best[2]:
                c_on, _, vecs_on = _pca(p[on], w[on])  # the plane through the face's points
                best = (c_on, vecs_on[:, 0] if vecs_on[:, 0] @ u > 0 else -vecs_on[:, 0], area)
    if best is None or best[2] < np.pi * (0.5 * hr) ** 2 or (best[0] - hc) @ best[1] < hr:
        return None
    return best


def femur_frame(geometry: Any, *, side: str | None = None, head_centre: Sequence[float] | None = None,
                head_radius: float | None = None, shaft_axis: Sequence[float] | None = None,
                neck_axis: Sequence[float] | None = None, greater_trochanter: Sequence[float] | None = None,
                require_side: bool = True) -> FemurFrame:
    """Fit the anatomical frame of a (whole, proximal or truncated) femur; see ``docs/anatomy.md``.

    Parameters
    ----------
    geometry : Mesh, Surface, (points, faces), pyvista PolyData, meshio.Mesh, file name or
        (n, 3) surface points, in mm, any pose, either side
    side : ``"left"`` / ``"right"`` to override the side detection (``None`` or ``"auto"``:
        detect)
    head_centre, head_radius : override the head sphere (input coordinates, mm); a centre
        without a radius takes the radius from the surface around it
    shaft_axis, neck_axis : override the axes (directions in input coordinates; the sign is
        free: the shaft axis is turned to point proximally, the neck axis towards the head)
    greater_trochanter : override the greater trochanter point (input coordinates, mm)
    require_side : when False, an undecidable side does not raise: the frame takes the
        majority (or ``"right"`` without any cue) and records ``methods["side"] =
        "unresolved"`` (for uses that need the axes only, such as a proximal cut)

    Raises
    ------
    RegionError naming the landmark that could not be found, or the implausible value (head
    radius outside 17-30 mm, neck-shaft angle outside 110-150 deg) and the ``[anatomy]``
    override that fixes it.
    """
    if side not in (None, "auto", "left", "right"):
        raise RegionError(f"side must be 'left', 'right' or 'auto', got {side!r}")
    given_hc = _vec3(head_centre, "head_centre_mm")
    given_shaft = _vec3(shaft_axis, "shaft_axis")
    given_neck = _vec3(neck_axis, "neck_axis")
    given_gt = _vec3(greater_trochanter, "greater_trochanter_mm")
    given_r = None if head_radius is None or isinstance(head_radius, str) else float(head_radius)
    if given_r is not None and not (np.isfinite(given_r) and given_r > 0):
        raise RegionError(f"anatomy.head_radius_mm must be a positive length in mm, got {head_radius!r}")
    methods: dict[str, str] = {}
    cloud = _cloud(geometry)
    p, w = cloud.points, cloud.weights
    centroid, _, vecs = _pca(p, w)
    e1 = vecs[:, -1]
    t_all = (p - centroid) @ e1
    length = float(t_all.max() - t_all.min())

    # ---- 1. head
    hc, hr, hrms, hcov, head_inl, methods["head"] = _find_head(cloud, centroid, e1, length, given_hc, given_r)
    if methods["head"] != "given" and given_r is None and not (
            HEAD_RADIUS_RANGE_MM[0] <= hr <= HEAD_RADIUS_RANGE_MM[1]):
        raise RegionError(
            f"femur frame: femoral head radius {hr:.1f} mm (sphere fit, coverage {hcov:.0%}, RMS {hrms:.2f} mm) is "
            f"outside the adult range {HEAD_RADIUS_RANGE_MM[0]:g}-{HEAD_RADIUS_RANGE_MM[1]:g} mm in {cloud.source}: "
            f"the sphere found is not the femoral head, or the bone is not in mm. {_OVERRIDE_HINT['head']}")
    if (hc - centroid) @ e1 < 0:
        e1 = -e1
    # ---- 2. shaft axis. A bone ending in a flat cut face less than 3.5 head radii below the
    # head centre (a proximal femur cut close under the lesser trochanter, or truncated by the
    # scan through the trochanteric region) has no shaft to measure: the cut face is taken as
    # perpendicular to the shaft (a saw cut across the shaft, or the scanner's axial plane,
    # which lies within about 5-15 deg of the shaft of a supine patient). Otherwise the seed
    # is the direction the normals of the surface far from the head are perpendicular to (a
    # tube's axis; flat cut faces excluded), refined through cross-section centroids (slab
    # limits recomputed along each refined axis).
    d_lo = 3.0 * hr
    face = _flat_end_face(cloud, hc, hr)
    short_cut = face is not None and (face[0] - hc) @ face[1] < 3.5 * hr
    if given_shaft is not None:
        axis = _unit(given_shaft)
        axis = axis if axis @ (hc - centroid) >= 0 else -axis
        shaft_method = "given"
    elif short_cut:
        axis = -face[1]
        shaft_method = "cut_face_normal"
        log.warning("femur frame: %s ends %.0f mm below the head centre in a flat cut face (%.0f mm^2) with no "
                    "shaft below the trochanters to measure: the shaft axis is taken as the normal of the cut "
                    "face (the cut assumed perpendicular to the shaft); %s", cloud.source,
                    float((hc - face[0]) @ axis), face[2], _OVERRIDE_HINT["shaft_axis"])
    else:
        axis = e1
        shaft_method = "cross_section_centroids"
        far = np.linalg.norm(p - hc, axis=1) > 2.8 * hr
        if w[far].sum() > 0:
            for _ in range(3):
                sel = far & (np.abs(cloud.normals @ axis) < 0.6)
                if w[sel].sum() <= 0:
                    break
                nrm = cloud.normals[sel]
                _, vecs_n = np.linalg.eigh((nrm * w[sel, None]).T @ nrm)
                new = vecs_n[:, 0]
                axis = new if new @ axis > 0 else -new
    whole = False
    shaft_r = None
    d_all = (hc - p) @ axis
    d_max = float(d_all.max())
    if shaft_method == "cut_face_normal" or (shaft_method == "given" and d_max - max(3.0, 0.1 * (d_max - d_lo))
                                             - d_lo < 0.5 * hr):
        # no shaft to slice: the point on the axis is the cut face's (or the distal end's) centroid
        if face is not None:
            shaft_point = face[0]
            shaft_r = float(np.sqrt(face[2] / np.pi))  # the cut section's equivalent radius
        else:
            end = d_all > d_max - 0.1 * hr
            shaft_point = _wmean(p[end], w[end])
        d_hi = d_max
    else:
        for _ in range(4):
            d_all = (hc - p) @ axis  # distance below the head centre along the axis
            d_max = float(d_all.max())
            whole = d_max > 10.0 * hr
            d_hi = 0.75 * d_max if whole else d_max - max(3.0, 0.1 * (d_max - d_lo))
            if d_hi - d_lo < 0.5 * hr:
                if face is not None:
                    how = (f"its flat end is {float((face[0] - hc) @ face[1]):.0f} mm below the head centre, "
                           "too far from a cross-section to be taken as one")
                else:
                    how = "no flat cut face at the distal end"
                raise RegionError(
                    f"femur frame: shaft axis not found in {cloud.source}: only {max(d_max - d_lo, 0):.0f} mm of "
                    f"shaft below 3 head radii ({d_lo:.0f} mm) under the head centre and {how}; include at least "
                    f"{hr:.0f} mm more shaft, or {_OVERRIDE_HINT['shaft_axis']}")
            n_slices = int(np.clip((d_hi - d_lo) / 4.0, 3, 12))
            cents, _ = _slice_centroids(p, w, hc, -axis, d_lo, d_hi, n_slices)
            if len(cents) < 3:
                raise RegionError(f"femur frame: shaft axis not found in {cloud.source} (too few cross-sections). "
                                  f"{_OVERRIDE_HINT['shaft_axis']}, or {_EXPLICIT_HINT}")
            pt, new = _fit_line(cents)
            shaft_point = pt
            if shaft_method == "given":  # a given direction: only the point on the axis is measured
                break
            axis = new if new @ axis > 0 else -new
    methods["shaft_axis"] = shaft_method
    z = axis
    rel = hc - shaft_point
    if np.linalg.norm(_perp(rel, z)) < 0.3 * hr:
        raise RegionError(f"femur frame: the head centre lies on the shaft axis in {cloud.source}; this is not a "
                          f"femur-like shape. {_OVERRIDE_HINT['shaft_axis']}, or {_EXPLICIT_HINT}")
    # ---- 3. neck axis
    dh = p - hc
    if given_neck is not None:
        neck = _unit(given_neck)
        neck = neck if neck @ (hc - shaft_point) > 0 else -neck
        methods["neck_axis"] = "given"
    else:
        dist = np.linalg.norm(dh, axis=1)
        u0 = _unit(_perp(shaft_point - hc, z) * 1.0 - 0.6 * hr * z)  # towards the neck: lateral and distal
        band = (dist > 1.15 * hr) & (dist < 1.8 * hr) & ~head_inl & ((dh @ u0) > 0.3 * dist)
        if w[band].sum() <= 0:
            raise RegionError(f"femur frame: femoral neck not found next to the head in {cloud.source}. "
                              f"{_OVERRIDE_HINT['neck_axis']}, or {_EXPLICIT_HINT}")
        u = _unit(_wmean(p[band], w[band]) - hc)
        for _ in range(3):
            s = dh @ u
            radial = np.linalg.norm(dh - np.outer(s, u), axis=1)
            sel = (s > 1.1 * hr) & (s < 1.8 * hr) & (radial < 1.0 * hr)
            if w[sel].sum() <= 0:
                break
            u = _unit(_wmean(p[sel], w[sel]) - hc)
        neck = -u  # from the neck to the head
        methods["neck_axis"] = "cross_section_centroids"
    medial = _unit(_perp(neck, z))
    q = _unit(np.cross(z, neck))
    nsa = float(np.degrees(np.arccos(np.clip(neck @ -z, -1, 1))))
    if not NECK_SHAFT_ANGLE_RANGE_DEG[0] <= nsa <= NECK_SHAFT_ANGLE_RANGE_DEG[1]:
        measured = [k for k in ("shaft_axis", "neck_axis") if methods[k] != "given"]
        if measured:
            raise RegionError(
                f"femur frame: neck-shaft angle {nsa:.1f} deg (shaft axis from {methods['shaft_axis']}, neck axis "
                f"from {methods['neck_axis']}) is outside {NECK_SHAFT_ANGLE_RANGE_DEG[0]:g}-"
                f"{NECK_SHAFT_ANGLE_RANGE_DEG[1]:g} deg in {cloud.source}: an axis is wrong. "
                + "; or ".join(_OVERRIDE_HINT[k] for k in measured))
        log.warning("femur frame: the given shaft and neck axes make a neck-shaft angle of %.1f deg", nsa)
    # ---- landmarks in the shaft frame
    ax = (p - hc) @ z  # + proximal, 0 at head level
    rvec = _perp(p - shaft_point, z)
    rlen = np.linalg.norm(rvec, axis=1)
    med_c = (rvec @ medial) / np.maximum(rlen, 1e-12)
    # lesser trochanter: most prominent point of the medial flare below the neck
    lt_band = (ax < -1.6 * hr) & (ax > -4.0 * hr) & (med_c > 0.0)
    neck_dist = np.linalg.norm(np.cross(p - hc, neck), axis=1)
    lt_band &= neck_dist > 1.0 * hr
    if shaft_r is None:
        shaft_sel = (-ax > d_lo) & (-ax < d_hi)
        shaft_r = float(np.median(rlen[shaft_sel])) if shaft_sel.any() else float("nan")
    lt_point, lt_prom = None, 0.0
    if lt_band.any() and np.isfinite(shaft_r):
        i = np.flatnonzero(lt_band)[np.argmax(rlen[lt_band])]
        lt_point, lt_prom = p[i], float(rlen[i] - shaft_r)
    # greater trochanter: most proximal-lateral point on the lateral side
    if given_gt is not None:
        gt_point = given_gt
        methods["greater_trochanter"] = "given"
    else:
        gt_band = (med_c < -0.2) & (ax > -2.5 * hr)
        if not gt_band.any():
            raise RegionError(f"femur frame: greater trochanter not found in {cloud.source} (no surface lateral to "
                              f"the shaft axis near the head level). {_OVERRIDE_HINT['greater_trochanter']}, or "
                              f"{_EXPLICIT_HINT}")
        score = ax - (p - shaft_point) @ medial
        gi = np.flatnonzero(gt_band)[np.argmax(score[gt_band])]
        gt_point = p[gi]
        methods["greater_trochanter"] = "surface_extreme"
    # ---- 4. side cues (positive = anterior is +q)
    cues: dict[str, float] = {}
    if lt_point is not None and lt_prom > 0.1 * shaft_r:
        v = _perp(lt_point - shaft_point, z)
        cues["lesser_trochanter"] = float(-np.sign(v @ q)) * min(1.0, abs(v @ q) / (0.2 * np.linalg.norm(v)))
    # greater trochanter: the trochanteric region (lateral of the neck, from 1.5 head radii
    # below to half a radius above the head centre) lies posterior to the shaft-neck plane (the
    # trochanter overhangs the trochanteric fossa and the intertrochanteric crest behind the
    # anteverted neck). Offset of its area centroid from the plane, in head radii; counted
    # from 0.1 R (measured: 0.22 R on the shared whole femur, 0.34 R on the clinical right
    # femur mask, 0.03 R on the smooth synthetic femora, where it does not count).
    troch = (ax > -1.5 * hr) & (ax < 0.5 * hr) & (-(dh @ medial) > 1.2 * hr)
    if w[troch].sum() > 0:
        off = float(_wmean(dh[troch], w[troch]) @ q) / hr
        if abs(off) >= 0.1:
            cues["greater_trochanter"] = float(-np.sign(off)) * min(1.0, abs(off) / 0.2)
    distal_t = float(((p - shaft_point) @ z).min())
    if whole:
        dist_sel = ((p - shaft_point) @ z) < distal_t + 0.08 * (d_max)
        off = _perp(_wmean(p[dist_sel], w[dist_sel]) - shaft_point, z) @ q
        if abs(off) > 0.05 * hr:
            cues["condyles"] = float(-np.sign(off))
        # anterior bow of the diaphysis
        cents, ts = _slice_centroids(p, w, hc, -z, d_lo, d_hi, 16)
        if len(cents) >= 5:
            offs = _perp(cents - shaft_point, z) @ q
            coef = np.polyfit(ts, offs, 2)[0] * (d_hi - d_lo) ** 2 / 8.0  # sagitta, mm
            if abs(coef) > 0.5:
                cues["anterior_bow"] = float(-np.sign(coef))
    weights = {"condyles": 2.0, "lesser_trochanter": 1.5, "anterior_bow": 1.0, "greater_trochanter": 1.0}
    vote = sum(weights[k] * np.sign(v) for k, v in cues.items())
    signs = {np.sign(v) for v in cues.values() if v != 0}
    if side in ("left", "right"):
        s_ant = 1.0 if side == "left" else -1.0
        methods["side"] = "given"
        if cues and len(signs) == 1 and next(iter(signs)) != s_ant:
            log.warning("femur frame: side=%r given, but the geometry suggests the other side (cues %s)",
                        side, cues)
    elif not cues or vote == 0 or (len(signs) > 1 and abs(vote) < 2.0):
        if require_side:
            raise RegionError(
                f"femur frame: the side (left/right) of {cloud.source} is ambiguous: anterior cues {cues or 'none'} "
                "(condyles, lesser trochanter, anterior bow, greater trochanter); "
                f"{_OVERRIDE_HINT['side']} in the load case (femur_frame(..., side=...)).")
        s_ant = 1.0 if vote > 0 else -1.0
        methods["side"] = "unresolved"
    else:
        if len(signs) > 1:
            log.warning("femur frame: side cues disagree (%s); majority vote used", cues)
        s_ant = float(np.sign(vote))
        methods["side"] = "cues"
    anterior = s_ant * q
    side_name = "left" if s_ant > 0 else "right"
    x = np.cross(anterior, z)
    basis = np.vstack([x, anterior, z])
    # ---- 6. anteversion from the posterior condylar line
    antev = None
    if whole:
        dsel = ((p - shaft_point) @ z) < distal_t + 0.12 * d_max
        pd = p[dsel]
        side_m = (pd - shaft_point) @ medial
        post = -(pd @ anterior)
        pts2 = []
        for half in (side_m > np.median(side_m), side_m <= np.median(side_m)):
            if half.any():
                pts2.append(pd[half][np.argmax(post[half])])
        if len(pts2) == 2:
            cond = _perp(pts2[0] - pts2[1], z)
            cond = _unit(cond) if cond @ medial > 0 else -_unit(cond)
            cond_ant = _unit(np.cross(z, cond))
            cond_ant = cond_ant if cond_ant @ anterior > 0 else -cond_ant
            nproj = _unit(_perp(neck, z))
            antev = float(np.degrees(np.arctan2(nproj @ cond_ant, nproj @ cond)))
    distal_end = shaft_point + distal_t * z
    return FemurFrame(hc, hr, hrms, hcov, neck, z, shaft_point, gt_point, lt_point,
                      distal_end, side_name, basis, nsa, antev, float(ax.max() - ax.min()), whole, cues, methods)


# =========================================================================== vertebra
@dataclass(frozen=True, eq=False)
class VertebralBody:
    """The vertebral body of a vertebra surface, separated from the posterior elements.

    Found by a morphological opening of the solid (:func:`vertebral_body`): a voxel grid
    (aligned with the principal axes of the surface and centred on its area centroid, so
    that the result does not depend on the pose) holds the distance, mm, from each voxel to
    the body; points within ``tolerance_mm`` of the body belong to it.

    Attributes
    ----------
    centre : (3,) grid centre, mm;  axes : (3, 3) grid axes as columns
    spacing : voxel size, mm;  half : (3,) half the grid size in voxels
    distance : distance from each voxel to the body, mm (0 inside)
    opening_radius_mm : radius of the ball the body was opened with
    tolerance_mm : points this close to the opened body belong to the body (the opening rounds
        the rim of the body by up to 0.41 of the radius)
    volume_mm3 : body volume (opened voxels)
    """

    centre: np.ndarray
    axes: np.ndarray
    spacing: float
    half: np.ndarray
    distance: np.ndarray
    opening_radius_mm: float
    tolerance_mm: float
    volume_mm3: float

    def distance_to(self, points) -> np.ndarray:
        """Distance (mm) of points (input coordinates) from the body: trilinear in the grid, inf outside it."""
        from scipy.ndimage import map_coordinates

        idx = (np.asarray(points, dtype=float).reshape(-1, 3) - self.centre) @ self.axes / self.spacing + self.half
        inside = ((idx >= 0) & (idx <= np.asarray(self.distance.shape) - 1)).all(axis=1)
        out = np.full(len(idx), np.inf)
        out[inside] = map_coordinates(self.distance, idx[inside].T, order=1, mode="nearest")
        return out

    def contains(self, points) -> np.ndarray:
        """True for points (input coordinates) on or in the vertebral body."""
        return self.distance_to(points) <= self.tolerance_mm


def vertebral_body(geometry: Any) -> VertebralBody | None:
    """Separate the vertebral body from the posterior elements by a morphological opening.

    The closed surface is voxelised (about 1 mm voxels) on a grid aligned with its principal
    axes. The body is the thickest part of a vertebra: the largest inscribed ball sits in it
    (lumbar: radius 6-8 mm, half the body height), while the pedicles, laminae and processes
    are thinner. An opening with a ball of half that radius (the set swept by every ball of
    that radius inside the solid) removes them; the body is the opened component that holds
    the deepest voxel. Endplates and dimensions are then taken on the body only, so that the
    articular and spinous processes, which rise above and hang below the endplates, are never
    taken for them. Returns None without a closed triangle surface (a bare point cloud).
    """
    import pyvista as pv
    from scipy import ndimage

    cloud = geometry if isinstance(geometry, _Cloud) else _cloud(geometry)
    if cloud.faces is None:
        return None
    pts, faces = cloud.points, cloud.faces
    tri = pts[faces]
    area = 0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)
    centre = (tri.mean(axis=1) * area[:, None]).sum(0) / area.sum()
    d = pts - centre
    _, axes = np.linalg.eigh(d.T @ d)
    q = d @ axes
    ext = 2.0 * np.abs(q).max(0)
    h = max(1.0, float(ext.max()) / 150.0)
    half = np.ceil(np.abs(q).max(0) / h) + 2
    dims = (2 * half + 1).astype(int)
    grid = pv.ImageData(dimensions=tuple(int(x) for x in dims), spacing=(h, h, h), origin=tuple(-half * h))
    poly = pv.PolyData(q, np.hstack([np.full((len(faces), 1), 3), faces]).ravel())
    img = poly.voxelize_binary_mask(reference_volume=grid)
    solid = np.asarray(img.point_data[img.point_data.keys()[0]]).reshape(tuple(dims), order="F") > 0
    vol = abs(float(np.einsum("ij,ij->i", tri[:, 0], np.cross(tri[:, 1], tri[:, 2])).sum()) / 6.0)
    if not solid.any() or abs(solid.sum() * h**3 - vol) > 0.15 * vol:
        log.info("vertebral body: %s does not voxelise to its enclosed volume (%.0f vs %.0f mm^3); no body "
                 "separation", cloud.source, solid.sum() * h**3, vol)
        return None
    depth = ndimage.distance_transform_edt(solid) * h
    r = 0.5 * float(depth.max())
    core, _ = ndimage.label(depth > r)
    deepest = np.unravel_index(int(np.argmax(depth)), depth.shape)
    body = (ndimage.distance_transform_edt(core != core[deepest]) * h <= r) & solid
    dist = (ndimage.distance_transform_edt(~body) * h).astype(np.float32)
    return VertebralBody(centre, axes, h, half, dist, r, 0.45 * r + h, float(body.sum() * h**3))


@dataclass(frozen=True)
class VertebraFrame:
    """Anatomical frame of a vertebral body (input coordinates, mm).

    Attributes
    ----------
    superior_centre, inferior_centre : (3,) centres of the endplate plane fits, mm
    superior_normal, inferior_normal : (3,) outward unit normals of the endplates
    body_centre : (3,) midpoint of the endplate centres (the frame origin), mm
    basis : (3, 3) rows x (patient right), y (anterior), z (superior along the body axis)
    height_mm, depth_mm, width_mm : body height (between endplate centres), antero-posterior
        depth and lateral width at mid-height, mm
    posterior_elements : True when posterior elements (pedicles, arch) were found
    anterior_method, superior_method : how the anterior and superior directions were set
        (``"posterior_elements"``, ``"outline_shape"``, ``"given"``, ``"input_z"``)
    endplate_flatness_mm : RMS distance of the endplate samples from their planes, mm
    endplate_areas_mm2 : areas of the flat superior and inferior endplate patches, mm^2
    axis_method : ``"paired_endplates"`` or ``"given"``
    body : the :class:`VertebralBody` the endplates were taken from (None for a point cloud)
    """

    superior_centre: np.ndarray
    inferior_centre: np.ndarray
    superior_normal: np.ndarray
    inferior_normal: np.ndarray
    body_centre: np.ndarray
    basis: np.ndarray
    height_mm: float
    depth_mm: float
    width_mm: float
    posterior_elements: bool
    anterior_method: str
    superior_method: str
    endplate_flatness_mm: tuple[float, float]
    endplate_areas_mm2: tuple[float, float] = (float("nan"), float("nan"))
    axis_method: str = "paired_endplates"
    body: VertebralBody | None = None

    bone = "vertebra"

    @property
    def origin(self) -> np.ndarray:
        return self.body_centre

    @property
    def axis(self) -> np.ndarray:
        """Body axis, inferior to superior (= basis z)."""
        return self.basis[2]

    @property
    def anterior(self) -> np.ndarray:
        return self.basis[1]

    @property
    def right(self) -> np.ndarray:
        return self.basis[0]

    def to_local(self, points) -> np.ndarray:
        return (np.asarray(points, dtype=float) - self.origin) @ self.basis.T

    def vector_to_global(self, v) -> np.ndarray:
        return np.asarray(v, dtype=float) @ self.basis

    def in_body(self, points) -> np.ndarray:
        """True for points (input coordinates) of the vertebral body.

        With a separated body (:class:`VertebralBody`): within its tolerance of the body.
        Without (a point cloud): within 0.55 of the body's width and depth around its centre.
        """
        if self.body is not None:
            return self.body.contains(points)
        loc = self.to_local(points)
        return (np.abs(loc[:, 0]) <= 0.55 * self.width_mm) & (np.abs(loc[:, 1]) <= 0.55 * self.depth_mm)

    def landmarks(self) -> dict[str, np.ndarray]:
        return {"superior_centre": self.superior_centre, "inferior_centre": self.inferior_centre,
                "body_centre": self.body_centre,
                "anterior_point": self.body_centre + 0.5 * self.depth_mm * self.anterior}

    def to_dict(self) -> dict:
        out = {"bone": "vertebra", "height_mm": self.height_mm, "depth_mm": self.depth_mm,
               "width_mm": self.width_mm, "posterior_elements": self.posterior_elements,
               "anterior_method": self.anterior_method, "superior_method": self.superior_method,
               "axis_method": self.axis_method,
               "endplate_flatness_mm": list(self.endplate_flatness_mm),
               "endplate_areas_mm2": list(self.endplate_areas_mm2), "basis": self.basis.tolist(),
               "superior_normal": self.superior_normal.tolist(), "inferior_normal": self.inferior_normal.tolist(),
               "body_volume_mm3": None if self.body is None else self.body.volume_mm3}
        out.update({k: v.tolist() for k, v in self.landmarks().items()})
        return out


def _fibonacci_sphere(n: int) -> np.ndarray:
    i = np.arange(n) + 0.5
    phi = np.arccos(1 - 2 * i / n)
    theta = np.pi * (1 + 5**0.5) * i
    return np.stack([np.cos(theta) * np.sin(phi), np.sin(theta) * np.sin(phi), np.cos(phi)], 1)


def _paired_flat_direction(normals: np.ndarray, w: np.ndarray, cos_tol: float) -> np.ndarray:
    """Direction u maximising min(area with n.u > cos_tol, area with n.u < -cos_tol)."""
    from scipy.spatial import cKDTree

    # area histogram of the normals on 4000 near-uniform directions, then the paired score
    # of each direction from the histogram (4000 x 4000) instead of from every face
    dirs = _fibonacci_sphere(4000)
    _, nearest = cKDTree(dirs).query(normals)
    hist = np.bincount(nearest, weights=w, minlength=len(dirs))
    occupied = hist > 0
    cosm = (dirs @ dirs[occupied].T).astype(np.float32)
    up = (cosm > cos_tol) @ hist[occupied]
    dn = (cosm < -cos_tol) @ hist[occupied]
    score = np.minimum(up, dn)
    best_u = dirs[int(np.argmax(score))]
    u = best_u
    for _ in range(5):  # refine: mean normals of the two clusters
        d = normals @ u
        up, dn = d > cos_tol, d < -cos_tol
        if not up.any() or not dn.any():
            break
        u = _unit(_unit(_wmean(normals[up], w[up])) - _unit(_wmean(normals[dn], w[dn])))
    return u


def _face_cloud(cloud: _Cloud) -> tuple[_Cloud, Any]:
    """Per-face samples (centroid, unit normal, area) and the face graph (shared vertices).

    Flat CAD faces are often long triangles whose vertices sit only on the rim, so the
    endplates are sampled per face, not per vertex. Without faces, the vertex samples and a
    radius graph are returned.
    """
    import scipy.sparse as sp

    if cloud.faces is None:
        from scipy.spatial import cKDTree

        r = 2.5 * float(np.sqrt(np.median(cloud.weights)))
        tree = cKDTree(cloud.points)
        return cloud, tree.sparse_distance_matrix(tree, r, output_type="coo_matrix").tocsr()
    f = cloud.faces
    tri = cloud.points[f]
    fn = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    area = 0.5 * np.linalg.norm(fn, axis=1)
    keep = area > 0
    f, tri, fn, area = f[keep], tri[keep], fn[keep], area[keep]
    fn = fn / (2 * area)[:, None] if cloud.face_normals is None else cloud.face_normals[keep]
    nf = len(f)
    inc = sp.csr_matrix((np.ones(3 * nf), (np.repeat(np.arange(nf), 3), f.ravel())),
                        shape=(nf, len(cloud.points)))
    graph = (inc @ inc.T).tocsr()
    return _Cloud(tri.mean(1), fn, area, True, f, cloud.source), graph


def _largest_patch(samples: _Cloud, graph, sel: np.ndarray) -> np.ndarray:
    """Mask of the largest (by area) connected group among the selected samples."""
    from scipy.sparse.csgraph import connected_components

    idx = np.flatnonzero(sel)
    if len(idx) < 1:
        return np.zeros(len(sel), bool)
    _, lab = connected_components(graph[idx][:, idx], directed=False)
    area = np.bincount(lab, weights=samples.weights[idx])
    out = np.zeros(len(sel), bool)
    out[idx[lab == np.argmax(area)]] = True
    return out


def _fit_plane(points: np.ndarray, w: np.ndarray, towards: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    c, _, vecs = _pca(points, w)
    n = vecs[:, 0]
    n = n if n @ towards > 0 else -n
    rms = float(np.sqrt((w * ((points - c) @ n) ** 2).sum() / w.sum()))
    return c, n, rms


def _outline_bulge(xy: np.ndarray) -> tuple[float, float]:
    """Outward curvature (1/mm) of the +y and -y outlines of a 2-D section over its central 60 % in x."""
    x, y = xy[:, 0], xy[:, 1]
    lo, hi = np.percentile(x, [20, 80])
    edges = np.linspace(lo, hi, 13)
    xs, top, bot = [], [], []
    for a, b in zip(edges[:-1], edges[1:]):
        s = (x >= a) & (x < b)
        if s.sum() >= 2:
            xs.append(0.5 * (a + b))
            top.append(y[s].max())
            bot.append(y[s].min())
    if len(xs) < 4:
        return 0.0, 0.0
    c_top = np.polyfit(xs, top, 2)[0]
    c_bot = np.polyfit(xs, bot, 2)[0]
    return float(-c_top), float(c_bot)


def vertebra_frame(geometry: Any, *, anterior: Sequence[float] | None = None,
                   superior: Sequence[float] | None = None,
                   body_axis: Sequence[float] | None = None) -> VertebraFrame:
    """Fit the anatomical frame of a vertebra or a vertebral body; see ``docs/anatomy.md``.

    Parameters
    ----------
    geometry : Mesh, Surface, (points, faces), pyvista PolyData, meshio.Mesh, file name or
        (n, 3) surface points, mm, any pose
    anterior, superior : optional approximate directions (input coordinates) overriding the
        automatic choice of the anterior side and of the superior endplate; only their sign
        relative to the fitted axes is used
    body_axis : optional direction of the body axis (input coordinates, either sign)
        replacing the paired-endplate search; the endplates are then the body's faces facing
        along it

    Raises
    ------
    RegionError naming the landmark (endplates, body) that could not be found.
    """
    vcloud = _cloud(geometry)
    cloud_points_all = vcloud.points
    cloud, graph = _face_cloud(vcloud)
    p, nrm, w = cloud.points, cloud.normals, cloud.weights
    total = cloud.total_area
    body = vertebral_body(vcloud)
    body_sel = body.contains(p) if body is not None else np.ones(len(p), bool)
    if body is not None and w[body_sel].sum() < 0.2 * total:
        log.info("vertebra frame: the opened body of %s holds only %.0f %% of the surface; body separation not used",
                 cloud.source, 100 * w[body_sel].sum() / total)
        body, body_sel = None, np.ones(len(p), bool)
    body_area = float(w[body_sel].sum())
    given_axis = _vec3(body_axis, "body_axis")
    cos_ep = np.cos(np.radians(25.0))
    if given_axis is not None:
        u, axis_method = _unit(given_axis), "given"
    else:
        u, axis_method = _paired_flat_direction(nrm[body_sel], w[body_sel], cos_ep), "paired_endplates"
    cos_patch = np.cos(np.radians(35.0))
    d = nrm @ u
    if not cloud.oriented:  # unoriented normals: split the flat samples by position instead
        flat = np.abs(d) > cos_patch
        t = p @ u
        mid = np.median(t[flat]) if flat.any() else 0.0
        up_sel, dn_sel = flat & (t > mid), flat & (t <= mid)
    else:
        up_sel, dn_sel = d > cos_patch, d < -cos_patch
    patch_up = _largest_patch(cloud, graph, up_sel & body_sel)
    patch_dn = _largest_patch(cloud, graph, dn_sel & body_sel)
    for name, patch in (("one endplate", patch_up), ("the other endplate", patch_dn)):
        if w[patch].sum() < 0.03 * body_area:
            raise RegionError(
                f"vertebra frame: {name} not found in {cloud.source}: no flat patch of >= 3 % of the vertebral body's "
                f"surface area facing along the body axis (found {w[patch].sum():.0f} mm^2 of {body_area:.0f} mm^2). "
                f"Is this a vertebra, in mm? Set anatomy.body_axis = [x, y, z], or {_EXPLICIT_HINT}")
    c_up, n_up, rms_up = _fit_plane(p[patch_up], w[patch_up], u)
    c_dn, n_dn, rms_dn = _fit_plane(p[patch_dn], w[patch_dn], -u)
    for name, patch, rms in (("one endplate", patch_up, rms_up), ("the other endplate", patch_dn, rms_dn)):
        size = float(np.sqrt(w[patch].sum() / np.pi))  # radius of a disc of the patch's area
        if rms > 0.07 * size:
            raise RegionError(
                f"vertebra frame: {name} not found in {cloud.source}: the patch facing along the body axis is "
                f"curved, not a plate (RMS {rms:.2f} mm off its plane over a {size:.0f} mm radius; a lumbar "
                f"endplate is within about 4 %). Is this a vertebra? {_EXPLICIT_HINT}")
    axis = _unit(n_up - n_dn)
    # body: inside the endplate outlines (2-D, perpendicular to the axis), between the plates
    from matplotlib.path import Path as _MplPath
    from scipy.spatial import ConvexHull

    e_a = _unit(np.cross(axis, [1.0, 0, 0] if abs(axis[0]) < 0.9 else [0, 1.0, 0]))
    e_b = np.cross(axis, e_a)
    centre0 = 0.5 * (c_up + c_dn)

    def proj(x):
        return np.stack([(x - centre0) @ e_a, (x - centre0) @ e_b], 1)

    ep = p[patch_up | patch_dn] if cloud.faces is None else \
        cloud_points_all[np.unique(cloud.faces[patch_up | patch_dn])]
    ep2 = proj(ep)
    hull = ConvexHull(ep2)
    hv = ep2[hull.vertices]
    hc2 = hv.mean(0)
    poly = _MplPath(hc2 + 1.15 * (hv - hc2))
    tax = (p - centre0) @ axis
    t_up, t_dn = (c_up - centre0) @ axis, (c_dn - centre0) @ axis
    margin = 0.15 * (t_up - t_dn)
    in_body = poly.contains_points(proj(p)) & (tax < t_up + margin) & (tax > t_dn - margin)
    post = ~in_body
    has_post = w[post].sum() > 0.10 * total
    # ---- superior
    sup_sign, sup_method = 1.0, "input_z"
    if superior is not None:
        sup_sign, sup_method = (1.0 if axis @ np.asarray(superior, float) >= 0 else -1.0), "given"
    elif has_post:
        # the pedicles join the upper body while the arch (laminae, spinous and inferior
        # articular processes) hangs lower: the attachment lies above the arch's centroid
        from scipy.spatial import cKDTree

        h = t_up - t_dn
        tpost = _wmean(tax[post, None], w[post])[0]
        dist_body, _ = cKDTree(p[in_body]).query(p[post])
        att = np.flatnonzero(post)[dist_body < 3.0]
        tatt = _wmean(tax[att, None], w[att])[0] if len(att) else tpost
        cue = (tatt - tpost) / h
        log.debug("vertebra frame: posterior elements centroid at %.2f, attachment at %.2f of the height "
                  "along %s", (tpost - t_dn) / h, (tatt - t_dn) / h, np.round(axis, 3))
        if abs(cue) >= 0.05:
            sup_sign, sup_method = (1.0 if cue > 0 else -1.0), "posterior_elements"
        else:
            sup_sign = 1.0 if axis[2] >= 0 else -1.0
            log.warning("vertebra frame: %s: the posterior elements do not tell superior from inferior "
                        "(attachment %.2f vs centroid %.2f of the height); taking the input's +z as superior "
                        "(set [anatomy] superior = [x, y, z] to override)", cloud.source, (tatt - t_dn) / h,
                        (tpost - t_dn) / h)
    else:
        sup_sign = 1.0 if axis[2] >= 0 else -1.0
        log.info("vertebra frame: no posterior elements in %s; taking the endplate facing the input's +z as "
                 "superior (set [anatomy] superior = [x, y, z] to override)", cloud.source)
    if sup_sign > 0:
        sc, sn, si, inn, flat = c_up, n_up, c_dn, n_dn, (rms_up, rms_dn)
    else:
        sc, sn, si, inn, flat = c_dn, n_dn, c_up, n_up, (rms_dn, rms_up)
    z = sup_sign * axis
    # ---- anterior
    # mid-height section of the body, from the surface vertices
    vp = cloud_points_all
    vtax = (vp - centre0) @ axis
    v_in = (body.contains(vp) if body is not None else poly.contains_points(proj(vp))) & \
        (vtax < t_up + margin) & (vtax > t_dn - margin)
    mid_sel = v_in & (np.abs(vtax - 0.5 * (t_up + t_dn)) < 0.3 * (t_up - t_dn))
    if mid_sel.sum() < 10:
        mid_sel = v_in
    sec = vp[mid_sel]
    if anterior is not None:
        a_dir = _unit(_perp(np.asarray(anterior, float), z))
        ant_method = "given"
    elif has_post:
        a_dir = _unit(_perp(_wmean(p[in_body], w[in_body]) - _wmean(p[post], w[post]), z))
        ant_method = "posterior_elements"
    else:
        xy = proj(sec)
        m2 = xy.mean(0)
        cov = np.cov((xy - m2).T)
        vals, vecs2 = np.linalg.eigh(cov)
        ap2 = vecs2[:, 0]  # minor axis of the section: antero-posterior
        lr2 = vecs2[:, 1]
        loc = np.stack([(xy - m2) @ lr2, (xy - m2) @ ap2], 1)
        bulge_pos, bulge_neg = _outline_bulge(loc)
        if abs(bulge_pos - bulge_neg) < 1e-3:
            raise RegionError(
                f"vertebra frame: anterior side of {cloud.source} not found: the body section is symmetric "
                f"(outline curvatures {bulge_pos:.4f} and {bulge_neg:.4f} 1/mm) and there are no posterior elements; "
                "set [anatomy] anterior = [x, y, z] (an approximate direction) in the load case")
        sgn = 1.0 if bulge_pos > bulge_neg else -1.0
        a_dir = _unit(_perp(sgn * (ap2[0] * e_a + ap2[1] * e_b), z))
        ant_method = "outline_shape"
    x = np.cross(a_dir, z)
    basis = np.vstack([x, a_dir, z])
    body_c = 0.5 * (sc + si)
    loc_sec = (sec - body_c) @ basis.T
    depth = float(np.ptp(loc_sec[:, 1]))
    width = float(np.ptp(loc_sec[:, 0]))
    height = float((sc - si) @ z)
    if height > 1.2 * max(depth, width):
        raise RegionError(f"vertebra frame: the body of {cloud.source} is taller ({height:.0f} mm) than wide "
                          f"({max(depth, width):.0f} mm); the endplates found are not those of a vertebral body. "
                          f"{_EXPLICIT_HINT}")
    if height <= 0:
        raise RegionError(f"vertebra frame: endplates of {cloud.source} are not on opposite sides of the body "
                          f"(height {height:.1f} mm). {_EXPLICIT_HINT}")
    areas = (float(w[patch_up].sum()), float(w[patch_dn].sum()))
    return VertebraFrame(sc, si, sn, inn, body_c, basis, height, depth, width, bool(has_post), ant_method,
                         sup_method, (float(flat[0]), float(flat[1])), areas if sup_sign > 0 else areas[::-1],
                         axis_method, body)
