"""Checks every analysis passes before it is solved (called by :func:`femur_fe.analysis.prepare`).

Each one refuses an input whose result femur_fe can tell would be wrong, naming the problem
and the key or option that fixes it:

* :func:`check_bone_size`: the mesh's largest extent against the anatomical range of the
  bone kind (:data:`EXTENT_RANGE_MM`); a vertebra of 9 mm is one in centimetres, a femur of
  4000 mm one in tenths of a millimetre. Only for cases that find the anatomy (explicit node
  sets with a global load vector describe any body).
* :func:`check_mesh_resolution`: at least :data:`MIN_ELEMENTS` elements before the anatomy is
  searched (a handful of elements has no head, neck or endplates to find).
* :func:`check_coincident_nodes`: coincident, unmerged nodes are an internal crack; the
  specimen readers merge them with a report, a mesh built in Python must be merged first.
* :func:`check_poisson`: linear tetrahedra lock when nearly incompressible (the volumetric
  constraint of a constant-strain element), giving stiffnesses orders of magnitude too high
  (the bundled vertebra: 123x at nu = 0.49999); refused above :data:`TET4_MAX_POISSON`, as are
  fully integrated hex8, which lock the same way (Hughes, The Finite Element Method, 1987, ch. 4).
  The assembly takes one Poisson ratio for the whole model, so caps with another one than the
  bone are refused instead of silently given the bone's.
* :func:`check_modulus_contrast`: moduli spanning more than :data:`MAX_MODULUS_CONTRAST` cannot
  be solved in double precision (the soft part's stiffness is below the rounding of the stiff
  part's); a cap of 1e300 MPa is a typo, not a rigid plate.
"""
from __future__ import annotations

import numpy as np

from ..bone.checks import unit_hint
from ..errors import LoadCaseError, MaterialError, MeshError
from ..fe.merge import coincident_node_pairs
from ..fe.mesh import Mesh

#: largest extent (mm) a bone of each kind can have: a vertebral body (cervical bodies are
#: about 15 mm wide) up to a segment with its neighbours; a truncated proximal femur (the
#: clinical CT's femur is 93 mm across) up to a whole femur of a tall adult
EXTENT_RANGE_MM = {"vertebra": (12.0, 200.0), "femur": (60.0, 800.0)}
#: fewest elements a mesh of a whole bone may have when the anatomy is searched on it
MIN_ELEMENTS = 200
#: largest Poisson ratio accepted on linear (tet4) elements
TET4_MAX_POISSON = 0.45
#: linear elements that lock volumetrically (fully integrated trilinear hexahedra as well)
LOCKING_CELL_TYPES = {"tetra": "linear tetrahedra (tet4)", "hexahedron": "fully integrated linear hexahedra (hex8)"}
#: largest ratio between the stiffest and the softest element modulus
MAX_MODULUS_CONTRAST = 1e12
def largest_extent_mm(mesh: Mesh) -> float:
    """The largest side of the mesh's bounding box (mm when the mesh is in mm)."""
    lo, hi = mesh.bounds
    return float(np.max(hi - lo))


def check_bone_size(mesh: Mesh, bone: str) -> None:
    """Refuse a femur or vertebra mesh whose size is outside its anatomical range (wrong unit)."""
    if bone not in EXTENT_RANGE_MM:
        return
    lo, hi = EXTENT_RANGE_MM[bone]
    ext = largest_extent_mm(mesh)
    if not lo <= ext <= hi:
        raise MeshError(f"the mesh's largest extent is {ext:.4g} mm but a {bone} measures {lo:g}-{hi:g} mm: "
                        f"{unit_hint(ext, lo, hi)}")


def check_mesh_resolution(mesh: Mesh, bone: str) -> None:
    """Refuse a mesh too coarse to hold the anatomy of a whole bone."""
    if mesh.n_cells < MIN_ELEMENTS:
        raise MeshError(f"the mesh has {mesh.n_cells} elements: too few to find the {bone}'s anatomy and resolve "
                        f"its strains (at least {MIN_ELEMENTS}); mesh the whole bone with elements of about 2-3 mm "
                        "(--size 3 with --mask or a surface, or `femur-fe mesh SURFACE --size 3`)")


def check_coincident_nodes(mesh: Mesh) -> None:
    """Refuse coincident unmerged nodes (an internal crack femur_fe cannot model)."""
    pairs = coincident_node_pairs(mesh)
    if len(pairs):
        raise MeshError(f"the mesh has {len(pairs)} pairs of coincident, unmerged nodes (e.g. nodes "
                        f"{int(pairs[0, 0])} and {int(pairs[0, 1])}): the elements on either side are not "
                        "connected (a crack); merge them with femur_fe.fe.merge.merge_coincident_nodes(mesh) "
                        "(the --mesh option and [bone] mesh do it and report it)")


def check_poisson(case, mesh: Mesh, bone_poisson: float) -> None:
    """Refuse near-incompressible tet4 and caps whose Poisson ratio differs from the bone's."""
    caps = case.caps
    has_caps = caps.kind == "pmma" and len(caps.regions) > 0
    if mesh.cell_type in LOCKING_CELL_TYPES:
        kind = LOCKING_CELL_TYPES[mesh.cell_type]
        for key, nu in (("[material] poisson", bone_poisson), ("[caps] poisson", caps.poisson if has_caps else None)):
            if nu is not None and nu > TET4_MAX_POISSON:
                raise MaterialError(
                    f"{key} = {nu:g} on {kind}: nearly incompressible linear elements lock and the stiffness "
                    f"comes out far too high; use poisson <= {TET4_MAX_POISSON:g} (bone: 0.3) or quadratic "
                    "tetrahedra (`femur-fe mesh SURFACE --order 2`, or femur_fe.fe.tet10_from_tet4)")
    if has_caps and abs(caps.poisson - bone_poisson) > 1e-12:
        raise LoadCaseError(f"[caps] poisson = {caps.poisson:g} differs from [material] poisson = {bone_poisson:g}: the "
                            "assembly takes one Poisson ratio for the whole model, so the caps would get the bone's; "
                            f"set both to the same value (e.g. --set caps.poisson={bone_poisson:g})")


def check_modulus_contrast(bone_young: np.ndarray, caps_young: float | None) -> None:
    """Refuse moduli whose ratio double precision cannot solve (e.g. caps of 1e300 MPa)."""
    e = np.asarray(bone_young, dtype=np.float64)
    lo, hi = float(e.min()), float(e.max())
    parts = [("the bone", lo, hi)]
    if caps_young is not None:
        parts.append(("the caps ([caps] young_mpa)", float(caps_young), float(caps_young)))
    emin = min(p[1] for p in parts)
    emax = max(p[2] for p in parts)
    if emin > 0 and emax / emin <= MAX_MODULUS_CONTRAST:
        return
    stiff = max(parts, key=lambda p: p[2])[0]
    soft = min(parts, key=lambda p: p[1])[0]
    raise MaterialError(f"the moduli span {emin:.3g} to {emax:.3g} MPa (ratio {emax / emin:.3g}, {soft} to {stiff}): "
                        f"beyond what a double-precision solve resolves (ratio <= {MAX_MODULUS_CONTRAST:.0e}); "
                        "check [caps] young_mpa (PMMA 2500 MPa; a rigid plate is [caps] kind = 'rigid') and the "
                        "[material] law and e_min_mpa")


__all__ = ["check_bone_size", "check_mesh_resolution", "check_coincident_nodes", "check_poisson",
           "check_modulus_contrast", "largest_extent_mm", "EXTENT_RANGE_MM", "MIN_ELEMENTS", "TET4_MAX_POISSON",
           "MAX_MODULUS_CONTRAST"]
