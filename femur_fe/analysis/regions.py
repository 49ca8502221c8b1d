"""Boundary-condition regions selected from an anatomical frame and a load case.

Each region is a node set plus, for surface regions, the boundary faces it covers, so
pressure loads and PMMA caps can be built on it; the selection rules are the
``[regions.<name>]`` kinds of the load case.

The method in full (equations, parameters, choices, sources): ``docs/anatomy.md``, section
``femur_fe.analysis.regions``.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from ..bone.anatomy import femur_frame, vertebra_frame
from ..errors import LoadCaseError, RegionError
from ..fe.mesh import Mesh
from ..fe.topology import boundary_faces, face_normals_areas

log = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class Region:
    """Selected region: nodes and (for surface regions) boundary faces.

    Attributes
    ----------
    name, kind : region name and selection kind
    nodes : (k,) int64 sorted node ids
    faces : (f, kf) int64 boundary faces (node ids, outward orientation)
    face_ids : (f,) rows of ``boundary_faces(mesh)[0]``
    face_areas : (f,) mm^2
    """

    name: str
    kind: str
    nodes: np.ndarray
    faces: np.ndarray
    face_ids: np.ndarray
    face_areas: np.ndarray
    centroid: np.ndarray
    normal: np.ndarray

    @property
    def area(self) -> float:
        """Total face area, mm^2."""
        return float(self.face_areas.sum())

    @property
    def n_nodes(self) -> int:
        return int(len(self.nodes))

    def to_dict(self) -> dict:
        return {"name": self.name, "kind": self.kind, "n_nodes": self.n_nodes, "n_faces": int(len(self.faces)),
                "area_mm2": self.area, "centroid": self.centroid.tolist(), "normal": self.normal.tolist()}


# =========================================================================== frames and directions
def frame_for(mesh_or_geometry: Any, case) -> Any:
    """The anatomical frame of the case's bone, with the ``[anatomy]`` overrides applied."""
    o = case.anatomy.overrides(case.bone)
    if case.bone == "femur":
        return femur_frame(mesh_or_geometry, side=o.get("side"), head_centre=o.get("head_centre_mm"),
                           head_radius=o.get("head_radius_mm"), shaft_axis=o.get("shaft_axis"),
                           neck_axis=o.get("neck_axis"), greater_trochanter=o.get("greater_trochanter_mm"))
    return vertebra_frame(mesh_or_geometry, anterior=o.get("anterior"), superior=o.get("superior"),
                          body_axis=o.get("body_axis"))


def load_direction(loading, frame) -> np.ndarray:
    """Unit vector (input coordinates) of the load on the loaded region; see ``docs/anatomy.md``."""
    dirn = loading.direction
    if dirn == "vector":
        v = frame.vector_to_global(loading.vector)
        return v / np.linalg.norm(v)
    if dirn in ("axial", "wedge"):
        return -np.asarray(frame.basis[2])
    med, ant, prox = frame.medial, frame.anterior, frame.proximal
    if dirn == "sideways_fall":
        a, r = np.radians(loading.adduction_deg), np.radians(loading.internal_rotation_deg)
        d = -np.cos(a) * np.cos(r) * med - np.cos(a) * np.sin(r) * ant + np.sin(a) * prox
    elif dirn == "stance":
        f, s = np.radians(loading.frontal_deg), np.radians(loading.sagittal_deg)
        d = -prox - np.tan(f) * med - np.tan(s) * ant
    else:
        raise LoadCaseError(f"unknown load direction {dirn!r}")
    return d / np.linalg.norm(d)


def wedge_hinge(loading, frame) -> tuple[np.ndarray, np.ndarray, float]:
    """(hinge point, rotation axis, angle in rad) of a wedge load on the superior plate.

    The plate turns about ``axis`` (the frame's x, patient right) by ``angle`` so that the
    anterior edge moves down (flexion). The hinge is on the superior endplate centre, moved
    to the posterior edge (half the body depth) for ``hinge = "posterior_edge"``.
    """
    if loading.direction != "wedge":
        raise LoadCaseError(f"wedge_hinge needs direction = 'wedge', got {loading.direction!r}")
    point = np.asarray(frame.superior_centre, dtype=float)
    if loading.hinge == "posterior_edge":
        point = point - 0.5 * frame.depth_mm * frame.anterior
    axis = np.asarray(frame.basis[0], dtype=float)
    # rotation about +x (right) by +angle moves +y (anterior) points to +z: use -angle
    return point, axis, -float(np.radians(loading.flexion_deg))


# =========================================================================== selection
@dataclass(frozen=True)
class _Boundary:
    faces: np.ndarray
    centroids: np.ndarray
    normals: np.ndarray
    areas: np.ndarray


def _boundary(mesh: Mesh) -> _Boundary:
    faces, _ = boundary_faces(mesh)
    normals, areas = face_normals_areas(mesh.points, faces)
    nv = 4 if mesh.cell_type == "hexahedron" else 3
    cent = mesh.points[faces[:, :nv]].mean(axis=1)
    return _Boundary(faces, cent, normals, areas)


def _explicit(mesh: Mesh, spec, bnd: _Boundary) -> np.ndarray:
    if spec.kind == "node_set":
        name = spec.node_set
        if name not in mesh.node_sets:
            raise RegionError(f"region {spec.name!r}: node set {name!r} is not in the mesh (mesh node sets: "
                              f"{', '.join(sorted(mesh.node_sets)) or 'none'}); fix [regions.{spec.name}] node_set")
        nodes = np.asarray(mesh.node_sets[name], dtype=np.int64)
    else:
        nodes = np.asarray(spec.nodes, dtype=np.int64)
        bad = nodes[(nodes < 0) | (nodes >= mesh.n_points)]
        if len(bad):
            raise RegionError(f"region {spec.name!r}: node ids {bad[:5].tolist()} are outside [0, {mesh.n_points}) "
                              "(ids are 0-based)")
    return np.unique(nodes)


def _select_faces(spec, frame, d: np.ndarray, bnd: _Boundary) -> np.ndarray:
    """Boolean mask over boundary faces for an automatic region kind."""
    c, n = bnd.centroids, bnd.normals
    kind = spec.kind
    if kind == "head_patch":
        hc, r = frame.head_centre, frame.head_radius
        v = c - hc
        dist = np.linalg.norm(v, axis=1)
        u = v / np.maximum(dist, 1e-12)[:, None]
        on_sphere = (np.abs(dist - r) < 0.15 * r) & ((n * u).sum(1) > 0.5)
        return on_sphere & (u @ -d >= np.cos(np.radians(spec.patch_angle_deg)))
    if kind == "trochanter_patch":
        near = np.linalg.norm(c - frame.greater_trochanter, axis=1) < spec.radius_mm
        cand = near & (n @ d > np.cos(np.radians(60.0)))
        if not cand.any():
            return cand
        h = c @ d
        return cand & (h >= h[cand].max() - spec.depth_mm)
    if kind == "distal_cut":
        if getattr(frame, "methods", {}).get("shaft_axis") == "cut_face_normal":
            where = "above the lesser trochanter" if frame.lesser_trochanter is None else "close below the trochanters"
            log.warning(
                "region %r: the femur ends %.0f mm below the head centre, %s (a short proximal segment, less than 3.5 "
                "head radii): the distal support is its cut face, next to the trochanteric region; it can take part "
                "of the load and the first failure can sit next to it, so stiffness and strength differ from those "
                "of a longer proximal femur (benchmarks/truncated_femur.py); image the femur to 3.5 head radii or "
                "more below the head centre, or set [failure.params] exclude_margin_mm / fix = \"across_load\" on "
                "this region", spec.name, float(-frame.axial(c).min()), where)
        s = (c - frame.head_centre) @ frame.proximal
        sel = s <= s.min() + spec.depth_mm
        w = bnd.areas[sel]
        mean_n = (n[sel] * w[:, None]).sum(0)
        mean_n /= max(np.linalg.norm(mean_n), 1e-12)
        flat = (n[sel] @ mean_n) > np.cos(np.radians(25.0))
        if w[flat].sum() >= 0.5 * w.sum():
            # a flat cut face: take all of it (also when oblique to the shaft axis)
            p0 = (c[sel][flat] * w[flat, None]).sum(0) / w[flat].sum()
            return ((n @ mean_n) > np.cos(np.radians(25.0))) & (np.abs((c - p0) @ mean_n) < 1.0)
        return sel
    if kind in ("superior_endplate", "inferior_endplate"):
        sup = kind == "superior_endplate"
        centre = frame.superior_centre if sup else frame.inferior_centre
        normal = frame.superior_normal if sup else frame.inferior_normal
        if hasattr(frame, "in_body"):
            in_body = frame.in_body(c)
        else:  # a frame object without a body test (e.g. rebuilt from a summary)
            loc = frame.to_local(c)
            in_body = (np.abs(loc[:, 0]) <= 0.55 * frame.width_mm) & (np.abs(loc[:, 1]) <= 0.55 * frame.depth_mm)
        cand = in_body & (n @ normal >= np.cos(np.radians(spec.normal_angle_deg)))
        if not cand.any():
            return cand
        h = (c - centre) @ normal
        return cand & (h >= h[cand].max() - spec.depth_mm)
    raise LoadCaseError(f"region {spec.name!r}: unknown kind {spec.kind!r}")


_FIX_HINT = {
    "head_patch": "enlarge patch_angle_deg",
    "trochanter_patch": "enlarge depth_mm or radius_mm",
    "distal_cut": "enlarge depth_mm",
    "superior_endplate": "enlarge depth_mm or normal_angle_deg",
    "inferior_endplate": "enlarge depth_mm or normal_angle_deg",
    "node_set": "check the node set in the mesh",
    "nodes": "list more node ids",
}


def select_region(mesh: Mesh, spec, frame=None, direction: np.ndarray | None = None,
                  boundary: _Boundary | None = None) -> Region:
    """Select one region (a :class:`~femur_fe.case.loadcase.RegionSpec`) on ``mesh``.

    ``frame`` and ``direction`` (the load direction) are needed for the automatic kinds.
    """
    bnd = boundary if boundary is not None else _boundary(mesh)
    nv = 4 if mesh.cell_type == "hexahedron" else 3
    if spec.kind in ("node_set", "nodes"):
        nodes = _explicit(mesh, spec, bnd)
        member = np.zeros(mesh.n_points, bool)
        member[nodes] = True
        fmask = member[bnd.faces[:, :nv]].all(axis=1)
    else:
        if frame is None:
            raise RegionError(f"region {spec.name!r} ({spec.kind}) needs an anatomical frame")
        d = np.zeros(3) if direction is None else np.asarray(direction, dtype=float)
        fmask = _select_faces(spec, frame, d, bnd)
        nodes = np.unique(bnd.faces[fmask])
        if spec.kind == "distal_cut" and spec.volume and fmask.any():
            s_all = (mesh.points - frame.head_centre) @ frame.proximal
            s_cut = ((bnd.centroids[fmask] - frame.head_centre) @ frame.proximal).max()
            nodes = np.union1d(nodes, np.flatnonzero(s_all <= s_cut))
    fids = np.flatnonzero(fmask)
    areas = bnd.areas[fids]
    area = float(areas.sum())
    if len(nodes) < spec.min_nodes or area < spec.min_area_mm2:
        raise RegionError(
            f"region {spec.name!r} ({spec.kind}) selected {len(nodes)} nodes and {area:.3g} mm^2 of surface "
            f"(needs >= {spec.min_nodes} nodes and >= {spec.min_area_mm2:g} mm^2): {_FIX_HINT[spec.kind]} in "
            f"[regions.{spec.name}], or give an explicit node_set = \"...\" / nodes = [...]")
    if len(fids):
        cen = (bnd.centroids[fids] * areas[:, None]).sum(0) / max(area, 1e-300)
        nrm = (bnd.normals[fids] * areas[:, None]).sum(0)
        nn = np.linalg.norm(nrm)
        nrm = nrm / nn if nn > 0 else nrm
    else:
        cen, nrm = mesh.points[nodes].mean(0), np.zeros(3)
    return Region(spec.name, spec.kind, nodes.astype(np.int64), bnd.faces[fids], fids, areas, cen, nrm)


#: Plausibility of automatic vertebral endplates (lumbar endplates measure about 1000-2000
#: mm^2 and are nearly perpendicular to the body axis): a smaller, tilted or lopsided pair is
#: not the endplates (e.g. the tops of the articular or spinous processes) and is refused.
ENDPLATE_MIN_AREA_MM2 = 300.0
ENDPLATE_MAX_TILT_DEG = 30.0
ENDPLATE_MAX_AREA_RATIO = 2.0
_ENDPLATE_FIX = ("check the bone with `femur-fe regions`, set anatomy.body_axis = [x, y, z] or anatomy.superior = "
                 "[x, y, z] (--set anatomy.body_axis=[x,y,z]), or give explicit nodes ([regions.{name}] node_set = "
                 "\"...\")")


def check_endplates(regions: Mapping[str, Region], frame) -> None:
    """Refuse automatic endplate regions that cannot be the endplates of a vertebral body.

    Each ``superior_endplate`` / ``inferior_endplate`` region must cover at least
    :data:`ENDPLATE_MIN_AREA_MM2`, its mean normal must lie within :data:`ENDPLATE_MAX_TILT_DEG`
    of the body axis (outwards), and the two must not differ in area by more than
    :data:`ENDPLATE_MAX_AREA_RATIO`. Raises :class:`~femur_fe.errors.RegionError` naming the
    measured value and the fix.
    """
    plates = {n: r for n, r in regions.items() if r.kind in ("superior_endplate", "inferior_endplate")}
    for name, reg in plates.items():
        fix = _ENDPLATE_FIX.format(name=name)
        if reg.area < ENDPLATE_MIN_AREA_MM2:
            raise RegionError(
                f"region {name!r} ({reg.kind}) covers {reg.area:.0f} mm^2, less than {ENDPLATE_MIN_AREA_MM2:.0f} mm^2 "
                f"(a lumbar endplate is 1000-2000 mm^2): it is not the endplate of the vertebral body; {fix}")
        outward = np.asarray(frame.axis, dtype=float) * (1.0 if reg.kind == "superior_endplate" else -1.0)
        tilt = float(np.degrees(np.arccos(np.clip(reg.normal @ outward, -1.0, 1.0))))
        if tilt > ENDPLATE_MAX_TILT_DEG:
            raise RegionError(
                f"region {name!r} ({reg.kind}): its mean normal is {tilt:.0f} deg off the body axis (more than "
                f"{ENDPLATE_MAX_TILT_DEG:.0f} deg): it is not the endplate of the vertebral body; {fix}")
    if len(plates) == 2:
        (na, a), (nb, b) = plates.items()
        ratio = max(a.area, b.area) / max(min(a.area, b.area), 1e-300)
        if ratio > ENDPLATE_MAX_AREA_RATIO:
            small = na if a.area < b.area else nb
            raise RegionError(
                f"regions {na!r} and {nb!r} differ in area by {ratio:.1f}x ({a.area:.0f} and {b.area:.0f} mm^2; more "
                f"than {ENDPLATE_MAX_AREA_RATIO:g}x): one is not an endplate of the vertebral body; "
                + _ENDPLATE_FIX.format(name=small))


def select_regions(mesh: Mesh, case, frame=None) -> dict[str, Region]:
    """All regions of ``case`` on ``mesh``; the frame is fitted from the mesh when not given."""
    needs_frame = any(s.kind not in ("node_set", "nodes") for s in case.regions.values())
    if frame is None and needs_frame:
        frame = frame_for(mesh, case)
    d = load_direction(case.loading, frame) if frame is not None else None
    bnd = _boundary(mesh)
    out = {name: select_region(mesh, spec, frame, d, bnd) for name, spec in case.regions.items()}
    check_endplates(out, frame)
    names = list(out)
    for i, a in enumerate(names):  # a node both loaded and fixed would make the BCs contradictory
        for b in names[i + 1:]:
            both = np.intersect1d(out[a].nodes, out[b].nodes)
            if len(both) and {a, b} & set(case.loaded_regions) and {a, b} & set(case.fixed_regions):
                log.warning("regions %r and %r share %d nodes (loaded and fixed); shrink one of them",
                            a, b, len(both))
    return out


def regions_mesh(mesh: Mesh, regions: Mapping[str, Region]) -> Mesh:
    """Copy of ``mesh`` with a 0/1 point-data array ``region_<name>`` and a node set per region."""
    pd, ns = {}, dict(mesh.node_sets)
    for name, reg in regions.items():
        flag = np.zeros(mesh.n_points, dtype=np.uint8)
        flag[reg.nodes] = 1
        pd[f"region_{name}"] = flag
        ns[name] = reg.nodes
    return Mesh(mesh.points, mesh.cells, mesh.cell_type, ns, mesh.cell_sets, mesh.cell_data,
                {**mesh.point_data, **pd})
