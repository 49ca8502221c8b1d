"""Checks every bone model passes: the mesh lies in its CT, the moduli are the bone's, not the floor's.

* :func:`check_ct_overlap`: a mesh whose elements lie mostly outside the CT gets its density
  from the CT's border voxels (the ``outside="nearest"`` policy), i.e. from nothing; it is
  refused, naming the likely length unit when a power of ten would put the mesh inside.
* :func:`floor_warnings`: the law's modulus floor ``e_min_mpa`` (0.1 MPa, as Ogo) keeps empty
  voxels from making the stiffness singular. It is a numerical guard, not bone: a floored
  fraction above :data:`FLOOR_WARN_FRACTION` of the bone volume is reported by name (the
  stiffness is then partly the floor's), above :data:`FLOOR_REFUSE_FRACTION` the model is
  refused (the number would describe the floor, e.g. a density of zero everywhere from a
  wrong unit or an empty ``density`` array).
"""
from __future__ import annotations

import logging
from typing import Any

import numpy as np

from ..diagnostics import RunWarning, warn
from ..errors import CTError, MaterialError, MeshError
from ..fe.mesh import Mesh

log = logging.getLogger(__name__)

#: floored fraction of the bone volume above which a run says so by name
FLOOR_WARN_FRACTION = 0.01
#: floored fraction of the bone volume above which a model is refused: most of the
#: stiffness would then come from e_min_mpa, not from the density
FLOOR_REFUSE_FRACTION = 0.5
#: fraction of the element centroids outside the CT above which a CT mapping is refused
OUTSIDE_REFUSE_FRACTION = 0.5
#: largest extent (mm) of any bone femur_fe models (a vertebral body to a whole femur), checked
#: before a surface is meshed; the bone kind's own range is checked by the analysis
ANY_BONE_EXTENT_MM = (10.0, 1000.0)
#: most tetrahedra a surface is meshed into (about 10 GB of stiffness matrix)
MAX_MESH_ELEMENTS = 20_000_000
#: length units and the factor that converts them to mm, with the fix to name
UNIT_HINTS = (("centimetres", 10.0, "--units cm / [bone] units = 'cm'"),
              ("metres", 1000.0, "--units m / [bone] units = 'm'"),
              ("inches", 25.4, "convert the mesh to mm (x25.4)"),
              ("tenths of a millimetre", 0.1, "convert the mesh to mm (x0.1)"),
              ("micrometres", 0.001, "convert the mesh to mm (x0.001)"))
#: largest modulus (MPa) a density-modulus law may give bone: 3x the stiffest cortical bone
#: (about 30 GPa); above it the law's coefficients or the density unit are wrong
MAX_BONE_MODULUS_MPA = 1e5


def floored_fraction(young: np.ndarray, law: Any, volumes_mm3: np.ndarray) -> tuple[float, int]:
    """(volume fraction, element count) of the elements whose modulus sits at the law's floor."""
    e_min = float(getattr(law, "e_min_mpa", 0.0) or 0.0)
    if law is None or e_min <= 0:
        return 0.0, 0
    at_floor = np.asarray(young) <= e_min * (1.0 + 1e-9)
    v = np.asarray(volumes_mm3, dtype=np.float64)
    total = float(v.sum())
    frac = float(v[at_floor].sum() / total) if total > 0 else float(at_floor.mean())
    return frac, int(np.count_nonzero(at_floor))


def floor_warnings(young: np.ndarray, density: np.ndarray, law: Any, volumes_mm3: np.ndarray, *,
                   what: str = "the bone") -> list[RunWarning]:
    """Named warning when more than 1 % of the volume is at the modulus floor; MaterialError
    above half of it (see the module docstring), and for moduli above any bone's
    (:data:`MAX_BONE_MODULUS_MPA`)."""
    e_max = float(np.max(young)) if np.size(young) else 0.0
    if e_max > MAX_BONE_MODULUS_MPA:
        rho = np.asarray(density, dtype=np.float64)
        raise MaterialError(f"the material law {type(law).__name__} gives moduli up to {e_max:.3g} MPa (density up to "
                            f"{np.max(rho):.4g} g/cm3); no bone is stiffer than about 30000 MPa: check the [material] "
                            "law and params (MPa, g/cm3) and the density unit (g/cm3, not mg/cm3)")
    frac, n = floored_fraction(young, law, volumes_mm3)
    if frac <= FLOOR_WARN_FRACTION:
        return []
    e_min = float(law.e_min_mpa)
    rho = np.asarray(density, dtype=np.float64)
    dens = f"density {np.min(rho):.3g} to {np.max(rho):.3g} g/cm3" if rho.size else "no density"
    where = (f"{100 * frac:.1f} % of the volume of {what} ({n} elements) has its modulus at the floor "
             f"e_min_mpa = {e_min:g} MPa ({type(law).__name__}, {dens})")
    if frac > FLOOR_REFUSE_FRACTION:
        raise MaterialError(f"{where}: the stiffness would be the floor's, not the bone's; check the density "
                            "source (the CT unit and --calibration, [bone.density], the mesh's 'density' cell "
                            "data) and the [material] law and params")
    return [warn("moduli_floored", f"{where}; those elements carry almost no load and the stiffness and "
                 "strength are lower than the density alone would give", log)]


def unit_hint(extent_mm: float, lo: float, hi: float) -> str:
    """Which length unit would bring ``extent_mm`` into [lo, hi], and the fix to name."""
    for unit, factor, fix in UNIT_HINTS:
        if lo <= extent_mm * factor <= hi and (factor > 1) == (extent_mm < lo):
            return f"it looks like {unit} (x{factor:g} = {extent_mm * factor:.0f} mm); {fix}"
    return "give the geometry in mm"


def check_extent(extent_mm: float, lo: float, hi: float, what: str) -> None:
    """MeshError when a bone's largest extent is outside [lo, hi] mm, naming the likely unit."""
    if not lo <= extent_mm <= hi:
        raise MeshError(f"the {what}'s largest extent is {extent_mm:.4g} mm but a bone measures {lo:g}-{hi:g} "
                        f"mm: {unit_hint(extent_mm, lo, hi)}")


def check_meshing_size(extent_mm: float, volume_mm3: float, element_size_mm: float, what: str,
                       units: str = "auto") -> None:
    """Refuse meshing a surface that is no bone in mm, or into more elements than fit in memory."""
    try:
        check_extent(extent_mm, *ANY_BONE_EXTENT_MM, what)
    except MeshError as exc:
        if units in ("auto", "mm"):
            raise
        raise MeshError(f"{exc} (it was read with units = {units!r}: is that the file's unit?)") from None
    n = abs(volume_mm3) / (element_size_mm ** 3 / (6.0 * np.sqrt(2.0)))  # regular tetrahedra of that edge
    if n > MAX_MESH_ELEMENTS:
        raise MeshError(f"meshing {what} at {element_size_mm:g} mm would make about {n / 1e6:.0f} million tetrahedra "
                        f"(at most {MAX_MESH_ELEMENTS / 1e6:.0f} million); use a larger element size (--size, "
                        "[bone] element_size_mm)")


def check_ct_overlap(mesh: Mesh, ct: Any) -> None:
    """Refuse a mesh whose element centroids lie mostly outside the CT (wrong unit or wrong scan)."""
    cen = mesh.cell_centroids()
    inside = _inside(ct, cen)
    frac_out = 1.0 - float(inside.mean()) if len(inside) else 1.0
    if frac_out <= OUTSIDE_REFUSE_FRACTION:
        return
    lo, hi = mesh.bounds
    b = ct.bounds
    hint = ""
    for unit, factor, fix in UNIT_HINTS:
        if _inside(ct, cen * factor).mean() > 0.5:
            hint = f"; x{factor:g} would put it inside: the mesh looks like {unit} ({fix})"
            break
    raise CTError(f"{100 * frac_out:.0f} % of the mesh's elements lie outside the CT (mesh "
                  f"{np.round(lo, 1).tolist()} .. {np.round(hi, 1).tolist()} mm, CT {np.round(b[0], 1).tolist()} .. "
                  f"{np.round(b[1], 1).tolist()} mm){hint or '; use the CT the mesh was made from (same frame, mm)'}")


def _inside(ct: Any, points: np.ndarray) -> np.ndarray:
    ijk = ct.index_from_world(points)
    lo = -0.5
    hi = np.asarray(ct.shape, dtype=np.float64) - 0.5
    return np.all((ijk >= lo) & (ijk <= hi), axis=1)


__all__ = ["floor_warnings", "floored_fraction", "check_ct_overlap", "check_extent", "check_meshing_size",
           "unit_hint", "FLOOR_WARN_FRACTION", "FLOOR_REFUSE_FRACTION", "ANY_BONE_EXTENT_MM", "MAX_BONE_MODULUS_MPA"]
