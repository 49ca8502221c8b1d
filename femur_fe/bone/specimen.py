"""Where a bone comes from, as data: the ``[bone]`` table of run, comparison and sweep files.

A :class:`Specimen` is one of

* a bundled bone: ``bundled = "femur" | "vertebra"`` and ``state`` (mesh + synthetic QCT + the
  scanner calibration it was made with);
* a CT and a mask: ``ct``, ``mask`` (a label image on the CT grid, e.g. a TotalSegmentator
  mask), ``labels`` to keep, ``mesh_type`` (tetrahedra from the mask's surface, or hex voxels),
  ``element_size_mm``; ``calibration`` for an HU CT;
* a mesh (volume mesh or closed surface) and a CT: ``mesh``, ``ct``;
* a mesh or surface and a density: ``mesh`` and a ``[bone.density]`` table (uniform, or a
  cortical shell of given thickness around a trabecular core), or a mesh whose cell data
  ``density`` holds the element densities.

``calibration`` (HU CTs): ``"internal"`` (phantomless, from the patient's own air, fat, muscle,
blood and cortical bone: :func:`femur_fe.bone.internal_calibration`), a JSON file (a phantom
fit: ``slope``, ``intercept``, ``unit``, ``mineral``; or the ``to_dict()`` of an internal
calibration), or a table of the same keys. Paths are relative to the file the table is in.
The same keys are the ``femur-fe run`` options (``--ct``, ``--mask``, ``--label``...), so a
bone described on the command line, in a comparison file and in a sweep is one thing, with
the same checks.

:meth:`Specimen.mesh` builds or reads the mesh (mm) and :meth:`Specimen.model` the
:class:`~femur_fe.bone.model.Model` for a load case's ``[material]`` table.
"""
from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
from scipy.spatial import cKDTree

from ..diagnostics import collecting, merged, warn
from ..errors import AmbiguousUnitError, CTError, FemurFeError, LoadCaseError, MaterialError, SurfaceError
from ..fe.elements import shape_functions
from ..fe.merge import merge_coincident_nodes
from ..fe.mesh import Mesh, tet10_from_tet4
from ..fe.topology import boundary_faces
from ..io.ct import CTImage, read_ct, read_mask, suffix_of
from ..io.mesh_io import read_mesh
from ..io.surface import Surface, read_surface
from ..io.tables import Table, plain
from .bundled import BONES, STATES, bundled_bone
from .calibration import DensityCalibration
from .checks import check_meshing_size
from .mapping import integration_rule
from .meshing import repair_surface, surface_from_mask, tetmesh_from_surface
from .model import Model, cached_internal_calibration, sha256_of
from .voxel import hexmesh_from_mask, subdivide_mask

log = logging.getLogger(__name__)

SURFACE_SUFFIXES = (".stl", ".obj", ".ply", ".vtp")
MESH_TYPES = ("tet", "hex")
#: length units of a mesh or surface file (auto: metres detected and converted)
UNITS = ("auto", "mm", "cm", "m")
CT_UNITS = ("HU", "mg/cm3", "g/cm3")
DENSITY_TYPES = ("qct", "ash", "apparent")
#: the default element size rule (:func:`default_element_size`), mm and ratios
MAX_ELEMENT_SIZE_MM = 3.0
MIN_CT_ELEMENT_SIZE_MM = 2.0
CHORD_ELEMENTS = 6
SHELL_ELEMENT_RATIO = 0.8
SCHEMA = "bone [bone]"


@dataclass(frozen=True)
class DensitySpec:
    """``[bone.density]``: the density of a bone given without a CT, in g/cm^3 of ``density_type``.

    Either ``uniform_g_cm3`` everywhere, or ``cortical_g_cm3`` within ``cortical_thickness_mm``
    of the bone surface and ``trabecular_g_cm3`` inside (each element takes the volume average,
    :meth:`values`).
    ``density_type`` must be the one the load case's material law takes.
    """

    density_type: str
    uniform_g_cm3: float | None = None
    cortical_g_cm3: float | None = None
    trabecular_g_cm3: float | None = None
    cortical_thickness_mm: float | None = None

    def __post_init__(self) -> None:
        shell = (self.cortical_g_cm3, self.trabecular_g_cm3, self.cortical_thickness_mm)
        if self.uniform_g_cm3 is not None and any(v is not None for v in shell):
            raise MaterialError("give uniform_g_cm3, or cortical_g_cm3 + trabecular_g_cm3 + "
                                "cortical_thickness_mm, not both")
        if self.uniform_g_cm3 is None and any(v is None for v in shell):
            raise MaterialError("give uniform_g_cm3, or all of cortical_g_cm3, trabecular_g_cm3 and "
                                "cortical_thickness_mm")
        if self.cortical_g_cm3 is not None and self.cortical_g_cm3 < self.trabecular_g_cm3:
            raise MaterialError(f"cortical_g_cm3 = {self.cortical_g_cm3} is below trabecular_g_cm3 = "
                                f"{self.trabecular_g_cm3}; the shell is the denser compartment")

    def values(self, mesh: Mesh, surface: Surface | None = None) -> np.ndarray:
        """(m,) element densities, g/cm^3.

        With a shell, each element takes the volume average of the two densities over its
        volume: ``trabecular + f (cortical - trabecular)`` with ``f`` the fraction of its
        volume within ``cortical_thickness_mm`` of the bone surface (:func:`shell_fraction`;
        ``surface``: the bone's input surface, default the mesh boundary). Averaging the density
        over the element, rather than taking the value at its centroid, keeps the bone's mass
        and stiffness independent of the element size.
        """
        if self.uniform_g_cm3 is not None:
            return np.full(mesh.n_cells, float(self.uniform_g_cm3))
        f = shell_fraction(mesh, float(self.cortical_thickness_mm), surface)
        return float(self.trabecular_g_cm3) + f * (float(self.cortical_g_cm3) - float(self.trabecular_g_cm3))

    def to_dict(self) -> dict[str, Any]:
        return plain({k: getattr(self, k) for k in self.__dataclass_fields__})


def _segment_distance(p: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Distance from points p to segments ab (all (..., 3))."""
    ab = b - a
    t = np.clip(np.einsum("...d,...d->...", p - a, ab) / np.maximum(np.einsum("...d,...d->...", ab, ab), 1e-300),
                0.0, 1.0)
    return np.linalg.norm(p - (a + t[..., None] * ab), axis=-1)


def point_triangle_distance(p: np.ndarray, tri: np.ndarray) -> np.ndarray:
    """Exact distance from points p (..., 3) to triangles tri (..., 3, 3): to the plane when the
    projection falls inside the triangle, else to the nearest edge."""
    a, b, c = tri[..., 0, :], tri[..., 1, :], tri[..., 2, :]
    n = np.cross(b - a, c - a)
    nn = np.maximum(np.einsum("...d,...d->...", n, n), 1e-300)
    w = p - a
    # barycentric coordinates of the projection of p on the plane
    u = np.einsum("...d,...d->...", np.cross(w, c - a), n) / nn   # weight of b
    v = np.einsum("...d,...d->...", np.cross(b - a, w), n) / nn   # weight of c
    inside = (u >= 0) & (v >= 0) & (u + v <= 1)
    plane = np.abs(np.einsum("...d,...d->...", w, n)) / np.sqrt(nn)
    edge = np.minimum(np.minimum(_segment_distance(p, a, b), _segment_distance(p, b, c)), _segment_distance(p, c, a))
    return np.where(inside, plane, edge)


def surface_depth_mm(mesh: Mesh, points: np.ndarray | None = None, surface: Surface | None = None, *,
                     candidates: int = 10) -> np.ndarray:
    """Distance (mm) from points (default: the element centroids) to the bone surface.

    The surface is ``surface`` (default the mesh boundary); the distance is the exact distance
    to the nearest of the ``candidates`` triangles whose centroids are nearest to the point.
    """
    if surface is not None:
        tri = surface.points[surface.faces]
    else:
        faces, _ = boundary_faces(mesh)
        tri = mesh.points[faces[:, :3]]
    pts = mesh.cell_centroids() if points is None else np.asarray(points, dtype=np.float64)
    flat = pts.reshape(-1, 3)
    k = min(int(candidates), len(tri))
    _, idx = cKDTree(tri.mean(axis=1)).query(flat, k=k)
    idx = idx.reshape(len(flat), k)
    out = np.empty(len(flat))
    step = max(1, 400_000 // k)
    for i in range(0, len(flat), step):
        j = idx[i:i + step]
        out[i:i + step] = point_triangle_distance(flat[i:i + step, None, :], tri[j]).min(axis=1)
    return out.reshape(pts.shape[:-1])


def shell_fraction(mesh: Mesh, thickness_mm: float, surface: Surface | None = None, *, n_steps: int = 4) -> np.ndarray:
    """(m,) fraction of each element's volume within ``thickness_mm`` of the bone surface.

    The depth below the surface (:func:`surface_depth_mm`) is computed exactly at the nodes
    (and, for tet4 meshes, at the edge midpoints), interpolated with the element's (tet10 for
    tetrahedra) shape functions to the ``n_steps**3`` points of the CT-mapping rule
    (:func:`femur_fe.bone.mapping.integration_rule`) and compared with the thickness there; the
    fraction is the weighted share of the points (det J is constant on tet4, straight-edged
    tet10 and parallelepiped hex8 elements). The quadratic interpolation follows the curved
    depth field of a curved bone surface (on a 20 mm ball, 4 mm elements: 0.3 % of the shell).
    """
    geo = tet10_from_tet4(mesh) if mesh.cell_type == "tetra" else mesh
    depth = surface_depth_mm(geo, geo.points, surface)
    xi, w = integration_rule(geo.cell_type, n_steps)
    at_points = depth[geo.cells] @ shape_functions(geo.cell_type, xi).T  # (m, s)
    return (at_points < thickness_mm) @ (w / w.sum())


@dataclass(frozen=True)
class Specimen:
    """One bone and where it comes from (see the module docstring for the keys)."""

    bundled: str | None = None
    state: str = "osteoporotic"
    mesh_path: Path | None = None
    ct: Path | None = None
    ct_unit: str | None = None
    mask: Path | None = None
    labels: tuple[int, ...] = ()
    mesh_type: str = "tet"
    element_size_mm: float | None = None
    calibration: Any = None
    density: DensitySpec | None = None
    units: str = "auto"
    name: str = ""
    source: str = field(default="<dict>", compare=False)

    def __post_init__(self) -> None:
        where = f"{self.source}: [bone]" if self.source else "[bone]"
        if self.bundled is not None:
            if self.bundled not in BONES:
                raise LoadCaseError(f"{where}: bundled must be one of {', '.join(BONES)}, got {self.bundled!r}")
            other = [k for k, v in (("mesh", self.mesh_path), ("ct", self.ct), ("mask", self.mask),
                                    ("density", self.density)) if v is not None]
            if other:
                raise LoadCaseError(f"{where}: bundled = {self.bundled!r} is a whole bone (mesh, CT and "
                                    f"calibration); remove {', '.join(other)}")
        else:
            if self.mesh_path is None and self.mask is None:
                raise LoadCaseError(f"{where}: say where the bone comes from: bundled = 'femur' | 'vertebra', "
                                    "mesh = PATH (volume mesh or closed surface), or ct = PATH with mask = PATH "
                                    "(CLI: --bundled, --mesh, or --ct with --mask)")
            if self.mesh_path is not None and self.mask is not None:
                raise LoadCaseError(f"{where}: give mesh or mask, not both (the mask is meshed when there is "
                                    "no mesh)")
            if self.ct is not None and self.density is not None:
                raise LoadCaseError(f"{where}: the density comes from the CT or from [bone.density], not both")
            if self.mask is not None and self.ct is None and self.density is None:
                raise LoadCaseError(f"{where}: a mask needs the CT it was drawn on (ct = PATH, CLI --ct) or a "
                                    "[bone.density] table")
        if self.state not in STATES:
            raise LoadCaseError(f"{where}: state must be one of {', '.join(STATES)}, got {self.state!r}")
        if self.calibration is not None and self.ct is None and self.bundled is None:
            raise LoadCaseError(f"{where}: calibration applies to a CT; give ct = PATH too")
        if self.mesh_type not in MESH_TYPES:
            raise LoadCaseError(f"{where}: mesh_type must be one of {', '.join(MESH_TYPES)}, got {self.mesh_type!r}")

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_dict(cls, table: Mapping[str, Any], *, base: str | os.PathLike | None = None,
                  source: str = "<dict>") -> "Specimen":
        """The specimen of a ``[bone]`` table; relative paths are taken relative to ``base``."""
        t = Table(table, "[bone]", source, LoadCaseError, schema=SCHEMA)
        root = Path(base) if base is not None else None

        def path(key: str) -> Path | None:
            v = t.get(key, "str", None)
            if v is None:
                return None
            p = Path(v).expanduser()
            return p if p.is_absolute() or root is None else root / p

        bundled = t.get("bundled", "str", None, choices=BONES)
        state = t.get("state", "str", "osteoporotic", choices=STATES)
        mesh_path = path("mesh")
        ct = path("ct")
        ct_unit = t.get("ct_unit", "str", None, choices=CT_UNITS + ("auto",),
                        note="default: the load case's [material.calibration] ct_unit")
        mask = path("mask")
        labels = t.get("labels", "intlist", ())
        mesh_type = t.get("mesh_type", "str", "tet", choices=MESH_TYPES)
        size = t.get("element_size_mm", "str_or_float", "auto", lo=0.2, hi=20.0)
        if isinstance(size, str) and size != "auto":
            raise t.err(f"element_size_mm must be 'auto' or a length in mm, got {size!r}")
        cal = t.get("calibration", "any", None, note="'internal', a JSON file, or a table (slope, intercept, "
                    "unit, mineral)")
        if cal is not None:
            cal = _calibration_value(cal, t, root)
        dens = t.get("density", "table", None)
        units = t.get("units", "str", "auto", choices=UNITS)
        name = t.get("name", "str", "")
        t.finish()
        density = None
        if dens is not None:
            dt = Table(dens, "[bone.density]", source, LoadCaseError, schema="bone [bone.density]")
            density = dt.dataclass(DensitySpec)
            if density.density_type not in DENSITY_TYPES:
                raise dt.err(f"density_type must be one of {', '.join(DENSITY_TYPES)}, got "
                             f"{density.density_type!r}")
            for k in ("uniform_g_cm3", "cortical_g_cm3", "trabecular_g_cm3"):
                v = getattr(density, k)
                if v is not None and not 0.0 <= v <= 3.0:
                    raise dt.err(f"{k} = {v} is outside 0-3 g/cm^3 (a density in mg/cm^3? divide by 1000)")
            if density.cortical_thickness_mm is not None and not 0.2 <= density.cortical_thickness_mm <= 10:
                raise dt.err(f"cortical_thickness_mm = {density.cortical_thickness_mm} is outside 0.2-10 mm")
        return cls(bundled, state, mesh_path, ct, ct_unit, mask, tuple(labels), mesh_type,
                   None if size == "auto" else float(size), cal, density, units, name, source)

    # ------------------------------------------------------------------ description
    @property
    def label(self) -> str:
        """A short name for logs and tables."""
        if self.name:
            return self.name
        if self.bundled:
            return f"bundled {self.bundled} ({self.state})"
        p = self.mask if self.mask is not None else self.mesh_path
        return p.name if p is not None else "bone"

    def to_dict(self) -> dict[str, Any]:
        """The resolved ``[bone]`` table (absolute paths); :meth:`from_dict` reads it back."""
        d: dict[str, Any] = {"name": self.name or None, "bundled": self.bundled,
                             "state": self.state if self.bundled else None,
                             "mesh": _abs(self.mesh_path), "ct": _abs(self.ct), "ct_unit": self.ct_unit,
                             "mask": _abs(self.mask), "labels": list(self.labels) or None,
                             "mesh_type": self.mesh_type if self.mask is not None else None,
                             "element_size_mm": self.element_size_mm, "units": self.units,
                             "calibration": (str(self.calibration) if isinstance(self.calibration, Path)
                                             else self.calibration),
                             "density": None if self.density is None else self.density.to_dict()}
        return plain(d)

    def with_values(self, **changes: Any) -> "Specimen":
        """A copy with fields changed (validated again)."""
        return replace(self, **changes)

    # ------------------------------------------------------------------ files
    def files(self) -> dict[str, Path]:
        """The input files (mesh, ct, mask, calibration) that exist for this specimen."""
        if self.bundled:
            b = bundled_bone(self.bundled, self.state)
            return {"mesh": b.mesh, "ct": b.ct, "calibration": b.calibration}
        out = {k: p for k, p in (("mesh", self.mesh_path), ("ct", self.ct), ("mask", self.mask)) if p is not None}
        if isinstance(self.calibration, Path):
            out["calibration"] = self.calibration
        for k, p in out.items():
            if not p.exists():
                flag = {"mesh": "--mesh", "ct": "--ct", "mask": "--mask", "calibration": "--calibration"}[k]
                raise FileNotFoundError(f"[bone] {k} = {p}: no such file (CLI {flag})")
        return out

    def calibration_values(self, ct_unit_of_case: str) -> dict[str, Any]:
        """The load-case ``[material.calibration]`` values this specimen sets (dotted keys).

        A bundled bone sets its scanner's phantom calibration; ``calibration = "internal"``
        sets ``method = "internal"``; a JSON file or table sets slope/intercept/unit/mineral;
        ``ct_unit`` sets the CT unit.
        """
        cal = self.calibration
        if self.bundled:
            cal = bundled_bone(self.bundled, self.state).calibration
        out: dict[str, Any] = {}
        if self.ct_unit not in (None, "auto"):
            out["material.calibration.ct_unit"] = self.ct_unit
        if cal is None:
            return out
        pre = "material.calibration."
        if cal == "internal":
            return {**out, pre + "ct_unit": "HU", pre + "method": "internal"}
        data = _read_calibration(cal) if isinstance(cal, Path) else dict(cal)
        if data.get("method") == "internal" or "effective_energy_kev" in data:
            values = {pre + "ct_unit": "HU", pre + "method": "internal"}
            tissues = data.get("tissue_hu") or {k: v["mean_hu"] for k, v in (data.get("tissues") or {}).items()
                                                if isinstance(v, Mapping) and v.get("used")}
            if tissues:
                values[pre + "tissue_hu"] = {k: float(v) for k, v in tissues.items()}
            return {**out, **values}
        dc = DensityCalibration.from_dict(data)
        d = dc.to_dict()
        values = {pre + "ct_unit": "HU", pre + "method": "linear", pre + "slope": float(d["slope"]),
                  pre + "intercept": float(d["intercept"]), pre + "unit": d["unit"]}
        if d.get("mineral"):
            values[pre + "mineral"] = d["mineral"]
        values[pre + "source"] = str(d.get("source") or (cal.name if isinstance(cal, Path) else "[bone] calibration"))
        return {**out, **values}

    def calibration_masks(self) -> dict[str, Path]:
        """Label images that help an internal calibration stay away from bone and metal and find
        muscle and vessels: the specimen's mask and every other mask in its folder (a
        TotalSegmentator output folder)."""
        if self.mask is None:
            return {}
        if self.mask.is_dir():
            folder = self.mask
        else:
            folder = self.mask.parent
        found = {_mask_name(p): p for p in sorted(folder.iterdir())
                 if p.is_file() and suffix_of(p) in (".nii", ".nii.gz", ".nrrd", ".mha", ".mhd")}
        if not self.mask.is_dir():
            found.setdefault(_mask_name(self.mask), self.mask)
        return found

    # ------------------------------------------------------------------ building
    @property
    def builds_mesh(self) -> bool:
        """True when femur_fe meshes the bone (from a mask, or a surface file), so an element
        size applies; False for a bundled bone or a volume mesh, which are used as given."""
        if self.bundled is not None:
            return False
        if self.mask is not None:
            return True
        return self.mesh_path is not None and self.mesh_path.suffix.lower() in SURFACE_SUFFIXES

    def element_size(self, ct: CTImage | None = None) -> float:
        """Element size (mm) of the mesh built from the mask or the surface: ``element_size_mm``
        when given, else :func:`default_element_size` of this bone and CT voxel (for hex
        voxel meshes, the nearest size the voxel grid allows: :func:`hex_element_size`)."""
        if not self.builds_mesh:
            raise LoadCaseError(f"{self.label}: the mesh is used as given (a bundled bone or a volume mesh); an "
                                "element size applies to bones meshed from a mask (--mask) or a surface (.stl...)")
        if self.element_size_mm is not None:
            size = float(self.element_size_mm)
        else:
            voxel, volume, area = self.geometry_measures(ct)
            shell = self.density.cortical_thickness_mm if self.density is not None else None
            size = default_element_size(volume, area, voxel, shell)
        if self.mesh_type == "hex" and self.mask is not None:
            size = hex_element_size(size, self._voxel_mm(ct))
        return size

    def refined(self, factor: float = 0.7, ct: CTImage | None = None) -> "Specimen":
        """The same specimen meshed ``factor`` times finer (``element_size_mm`` set explicitly).

        Hex voxel meshes take the largest size the voxel grid allows at or below ``factor``
        times the current size (a block of fewer voxels, or a voxel cut into n^3 sub-voxels)."""
        if not 0.0 < factor < 1.0:
            raise LoadCaseError(f"refinement factor must be in (0, 1), got {factor!r}")
        size = self.element_size(ct)
        target = factor * size
        if self.mesh_type == "hex" and self.mask is not None:
            target = hex_element_size(target, self._voxel_mm(ct), at_most=True)
        return self.with_values(element_size_mm=float(target))

    def geometry_measures(self, ct: CTImage | None = None) -> tuple[float | None, float, float]:
        """(largest CT voxel spacing in mm or None without a CT, bone volume mm^3, bone surface
        area mm^2) of a bone meshed from a mask or a surface (the inputs of the size rule)."""
        files = self.files()
        if self.mask is not None:
            geom = ct if ct is not None else read_ct(files["mask"], unit="mg/cm3", check_unit=False)
            volume, area = _mask_measures(str(files["mask"]), self.labels, files["mask"].stat().st_mtime_ns)
            return float(max(geom.spacing)), volume, area
        path = files["mesh"]
        volume, area = _surface_measures(str(path), self.units, path.stat().st_mtime_ns)
        voxel = None
        if ct is not None:
            voxel = float(max(ct.spacing))
        elif "ct" in files:
            voxel = float(max(read_ct(files["ct"], unit="mg/cm3", check_unit=False).spacing))
        return voxel, volume, area

    def _voxel_mm(self, ct: CTImage | None) -> float:
        """Smallest spacing of the mask's grid (the hex voxel edge), mm."""
        geom = ct if ct is not None else read_ct(self.files()["mask"], unit="mg/cm3", check_unit=False)
        return float(min(geom.spacing))

    def read_ct(self, ct_unit: str) -> CTImage | None:
        """The CT of the specimen (None without one); ``ct_unit`` is used when the specimen gives none."""
        files = self.files()
        if "ct" not in files:
            return None
        if self.ct_unit is not None or self.calibration is not None or self.bundled:
            unit = self.ct_unit if self.ct_unit is not None else ct_unit
            return read_ct(files["ct"], unit=unit)
        # the unit is a property of this file: the load case's ct_unit is a default, no statement about it
        try:
            return read_ct(files["ct"], unit="auto")
        except AmbiguousUnitError as exc:
            raise AmbiguousUnitError(f"{exc.args[0].split(';')[0]}; say what it holds: --ct-unit HU with "
                                     "--calibration internal|PHANTOM.json, or --ct-unit mg/cm3 (or g/cm3) "
                                     "([bone] ct_unit, calibration)") from None

    def mesh(self, ct: CTImage | None = None, *, progress: Callable[[str], None] | None = None) -> Mesh:
        """The bone mesh (mm): read, meshed from a surface, or meshed from the mask on ``ct``'s grid."""
        say = progress or (lambda msg: log.info("%s", msg))
        files = self.files()
        if "mesh" in files:
            path = files["mesh"]
            if path.suffix.lower() in SURFACE_SUFFIXES:
                raw = read_surface(path, units=self.units)
                size = self.element_size(ct)
                check_meshing_size(float(raw.extent.max()), raw.volume, size, path.name, self.units)
                surf, report = repair_surface(raw)
                mesh = _tetmesh(surf, size, path.name)
                say(f"meshed {path.name}: {mesh.n_cells} tetrahedra at {size:g} mm")
                return mesh
            return _merged(read_mesh(path, units=self.units), path)
        geom = ct if ct is not None else read_ct(files["mask"], unit="mg/cm3", check_unit=False)
        labels = list(self.labels) or None
        mask = read_mask(files["mask"], label=labels if labels is None or len(labels) > 1 else labels[0],
                         reference=geom)
        size = self.element_size(geom)
        if self.mesh_type == "hex":
            spacing = float(min(geom.spacing))
            if size >= spacing * (1 - 1e-9):
                mesh = hexmesh_from_mask(mask, geom, coarsen=int(round(size / spacing)))
            else:
                mesh = hexmesh_from_mask(*subdivide_mask(mask, geom, int(round(spacing / size))))
            say(f"voxel mesh of {files['mask'].name}: {mesh.n_cells} hexahedra of {size:.3g} mm")
        else:
            # meshed in the image's own frame (voxel axes in mm) and then placed in the world, so that
            # the mesh does not depend on where the scan puts the bone (moved, rotated or mirrored)
            local = np.diag([*np.asarray(geom.spacing, dtype=float), 1.0])
            mesh = _tetmesh(surface_from_mask(mask, local), size, files["mask"].name)
            mesh = mesh.transformed(np.asarray(geom.direction, dtype=float), geom.origin)
            say(f"meshed {files['mask'].name}: {mesh.n_cells} tetrahedra at {size:g} mm")
        return mesh

    def model(self, material: Any, *, mesh: Mesh | None = None, ct: CTImage | None = None,
              outside: str = "nearest", progress: Callable[[str], None] | None = None) -> Model:
        """The bone model for a load case's ``[material]`` (law, mapping, calibration).

        Density from the CT (calibrated as the case's ``[material.calibration]`` says, after
        :meth:`calibration_values` were applied to the case), from ``[bone.density]``, or from
        the mesh's cell data ``density``.
        """
        with collecting() as found:
            model = self._model(material, mesh=mesh, ct=ct, outside=outside, progress=progress)
        return replace(model, warnings=merged(found, model.warnings))

    def _model(self, material: Any, *, mesh: Mesh | None, ct: CTImage | None, outside: str,
               progress: Callable[[str], None] | None) -> Model:
        law = material.build()
        if self.density is not None and self.density.density_type != law.density_type:
            raise MaterialError(f"[bone.density] gives {self.density.density_type} density but the material "
                                f"law {material.law!r} takes {law.density_type} density; set density_type = "
                                f"{law.density_type!r} with values of that density")
        files = self.files() if mesh is None or self.ct is not None or self.bundled else {}
        if ct is None and "ct" in files:
            ct = self.read_ct(material.calibration.ct_unit)
            if progress is not None:
                progress(f"CT: {files['ct'].name}, {'x'.join(map(str, ct.shape))} voxels of "
                         f"{'x'.join(f'{v:g}' for v in ct.spacing)} mm, {ct.unit}")
        masks = self.calibration_masks() if ct is not None and material.calibration.method == "internal" else None
        if mesh is None:
            if ct is not None and ct.unit == "HU" and material.calibration.method == "internal":
                # calibrate first (cached for the model below): a scan without the tissues the internal
                # calibration needs is refused before the bone is meshed
                tissue_hu = dict(material.calibration.tissue_hu) or None
                cached_internal_calibration(ct, files["ct"], masks or None, tissue_hu)
            mesh = self.mesh(ct, progress=progress)
        if ct is not None:
            model = Model.from_ct(mesh, ct, material, outside=outside, ct_path=files["ct"], calibration_masks=masks,
                                  bone_name=self.label, progress=progress)
        elif self.density is not None:
            surface = None
            if "mesh" in files and files["mesh"].suffix.lower() in SURFACE_SUFFIXES:
                surface, _ = repair_surface(read_surface(files["mesh"], units=self.units))  # the input surface
            model = Model.from_density(mesh, self.density.values(mesh, surface), law)
        elif "density" in mesh.cell_data:
            model = Model.from_density(mesh, mesh.cell_data["density"], law)
        else:
            raise LoadCaseError(f"{self.label}: the material needs a CT (ct = PATH, CLI --ct), a [bone.density] "
                                "table (CLI --density), or a mesh with cell data 'density' (g/cm^3 of the law's "
                                "density type)")
        inputs = dict(model.inputs)
        for k in ("mesh", "mask", "calibration"):
            if k in files:
                inputs[str(files[k])] = sha256_of(files[k])
        return replace(model, inputs=inputs)


# ----------------------------------------------------------------------------- element size
def default_element_size(volume_mm3: float, area_mm2: float, voxel_mm: float | None = None,
                         shell_mm: float | None = None) -> float:
    """The default element size (mm) of a bone meshed from a mask or a surface.

    ``h = min(3 mm, L / 6, max(2 mm, CT voxel), 0.8 x cortical shell)``, rounded to 0.01 mm:

    * 3 mm (``MAX_ELEMENT_SIZE_MM``) at most: at 3 mm every CT bone of ``benchmarks/real_bones.py``
      (the clinical right femur, L1-L5, the VerSe L2) is within 5 % (stiffness) and 10 %
      (strength) of its 0.7x refinement; at 4 mm the clinical femur's stiffness is 4.2 % below
      its 3 mm value, close to the limit (``real_bones.py --sizes 4,3,2.5,2.1,1.75,1.5``);
    * ``L / 6`` (``CHORD_ELEMENTS``): six elements along the bone's mean chord ``L = 4 V / A``
      (Cauchy's mean chord length of a body of volume V and surface area A: 18 mm for a lumbar
      vertebra with its posterior elements, 29 mm for a proximal femur), so that a small bone
      is not meshed with a few elements across;
    * ``max(2 mm, CT voxel)`` (``MIN_CT_ELEMENT_SIZE_MM``): the CT voxel (its largest spacing)
      when finer than 3 mm, since a finer CT resolves the cortex that coarser elements would
      smear, but not below 2 mm (cost: a 1 mm CT of a femur would otherwise give millions of
      tetrahedra);
    * ``0.8 x`` the cortical thickness of a ``[bone.density]`` shell (``SHELL_ELEMENT_RATIO``):
      the shell's modulus step is then crossed by more than one element layer (the femur STL
      with a 3 mm shell: its linear strength moves 12.5 % from 3 to 2.1 mm, 6.6 % from 2.5 to
      1.75 mm).
    """
    if not (volume_mm3 > 0 and area_mm2 > 0):
        raise LoadCaseError(f"the bone has volume {volume_mm3:.4g} mm^3 and area {area_mm2:.4g} mm^2; an element "
                            "size needs a closed bone surface")
    h = min(MAX_ELEMENT_SIZE_MM, 4.0 * volume_mm3 / area_mm2 / CHORD_ELEMENTS)
    if voxel_mm is not None:
        h = min(h, max(MIN_CT_ELEMENT_SIZE_MM, float(voxel_mm)))
    if shell_mm is not None:
        h = min(h, SHELL_ELEMENT_RATIO * float(shell_mm))
    return round(h, 2)


def hex_element_size(size_mm: float, voxel_mm: float, *, at_most: bool = False) -> float:
    """The hex voxel-mesh element size the grid allows nearest to ``size_mm``: ``c`` voxels
    (``c >= 1``, blocks of c^3 voxels) or ``1/n`` of a voxel (each voxel cut into n^3); with
    ``at_most``, the largest allowed size not above ``size_mm``."""
    if not (size_mm > 0 and voxel_mm > 0):
        raise LoadCaseError(f"element size and voxel must be > 0 mm, got {size_mm!r} and {voxel_mm!r}")
    r = size_mm / voxel_mm
    if at_most:
        return voxel_mm * math.floor(r + 1e-9) if r >= 1 - 1e-9 else voxel_mm / math.ceil(1 / r - 1e-9)
    return voxel_mm * max(1, round(r)) if r >= math.sqrt(0.5) else voxel_mm / max(2, round(1 / r))


def _tetmesh(surface: Surface, size: float, name: str) -> Mesh:
    """:func:`tetmesh_from_surface` at ``size``; when TetGen fails on the surface remeshed at that
    size (an internal TetGen error on a few sizes of a few surfaces), the surface remeshed 3 %
    finer, then 3 % coarser, with a warning naming the size used."""
    try:
        return tetmesh_from_surface(surface, element_size=size)
    except SurfaceError as first:
        for other in (0.97 * size, 1.03 * size):
            try:
                mesh = tetmesh_from_surface(surface, element_size=other)
            except SurfaceError:
                continue
            log.warning("%s: TetGen failed on the surface remeshed at %.3g mm (%s); meshed at %.3g mm instead",
                        name, size, str(first).split(";")[0], other)
            return mesh
        raise


@lru_cache(maxsize=32)
def _mask_measures(path: str, labels: tuple[int, ...], mtime_ns: int) -> tuple[float, float]:
    """(volume mm^3, area mm^2) of the smoothed surface of a mask (cached per file version)."""
    geom = read_ct(path, unit="mg/cm3", check_unit=False)
    lab = list(labels) or None
    mask = read_mask(path, label=lab if lab is None or len(lab) > 1 else lab[0], reference=geom)
    surf = surface_from_mask(mask, geom.affine)
    return float(surf.volume), float(surf.area)


@lru_cache(maxsize=32)
def _surface_measures(path: str, units: str, mtime_ns: int) -> tuple[float, float]:
    """(volume mm^3, area mm^2) of a surface file after repair (cached per file version)."""
    surf, _ = repair_surface(read_surface(path, units=units))
    return float(surf.volume), float(surf.area)


# ----------------------------------------------------------------------------- helpers
def _merged(mesh: Mesh, path: Path) -> Mesh:
    """``mesh`` with its coincident nodes merged (named warning when there were any)."""
    out, report = merge_coincident_nodes(mesh)
    if report.n_pairs:
        warn("nodes_merged", f"{path.name}: {report}; the elements on either side were not connected (an "
             "internal crack, which femur_fe cannot model) and are joined now", log)
    return out


def _abs(p: Path | None) -> str | None:
    return None if p is None else str(Path(p).resolve())


def _mask_name(p: Path) -> str:
    name = p.name
    for suf in (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd"):
        if name.endswith(suf):
            return name[: -len(suf)]
    return name


def _calibration_value(v: Any, t: Table, root: Path | None) -> Any:
    """``"internal"``, a JSON path or a table, checked."""
    if isinstance(v, str):
        if v == "internal":
            return v
        p = Path(v).expanduser()
        p = p if p.is_absolute() or root is None else root / p
        if p.suffix.lower() != ".json":
            raise t.err(f"calibration = {v!r}: give 'internal' or a calibration JSON file (.json)")
        return p
    if isinstance(v, Mapping):
        _check_calibration_table(dict(v), t.err)
        return dict(v)
    raise t.err(f"calibration must be 'internal', a JSON file path or a table, got {v!r}")


def _check_calibration_table(d: dict, err: Callable[[str], FemurFeError]) -> None:
    if d.get("method") == "internal" or "effective_energy_kev" in d:
        return
    try:
        DensityCalibration.from_dict(d)
    except (FemurFeError, KeyError, TypeError, ValueError) as exc:
        msg = str(exc) if str(exc).startswith("calibration") else f"calibration: {exc}"
        raise err(f"{msg}; a phantom calibration has slope, intercept, unit ('mg/cm3' or "
                  "'g/cm3') and mineral ('k2hpo4' or 'ha') (docs/schemas.md)") from None


def _read_calibration(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"calibration file {path} not found (CLI --calibration)") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CTError(f"{path}: not a calibration JSON ({exc}); see docs/schemas.md") from None
    except OSError as exc:
        raise CTError(f"{path}: cannot be read as a calibration JSON ({exc.strerror or exc})") from None
    if not isinstance(data, dict):
        raise CTError(f"{path}: a calibration JSON holds one object (slope, intercept, unit, mineral)")
    _check_calibration_table(data, lambda msg: CTError(f"{path}: {msg}"))
    return data
