"""Metal in or next to the bone: implants are refused before any density is mapped.

A hip or spinal implant in the bone mask would be mapped as bone of impossible density (the
CT saturates at about 3071 HU on 12-bit scanners), and its streak artefacts corrupt the
voxels around it, so a model built on it has no meaning. :func:`check_metal` finds CT voxels
above :data:`METAL_HU` that the bone covers or touches and refuses the model with their
count and location; :func:`metal_near_mesh` only reports them.

"Covers or touches" is measured on the CT grid: the voxels holding a node or a sample point
of an element (the same sub-element points the Bonemat-style mapping integrates over, at
least one per voxel), grown by one voxel in every direction (26-neighbourhood). The mapping
interpolates between the 8 voxels around each sample, so this is every voxel whose value can
reach the material, plus the next layer.

Threshold: 2500 HU, the metal threshold of the internal calibration
(:data:`femur_fe.bone.internal_calibration.METAL_HU`). Dense cortical bone stays below about
2000 HU at 80-140 kV (Ogo's cortical-bone check window is 1200 +- 250 HU [V-code]; on the
shared clinical CT the densest voxel of the TotalSegmentator bone masks away from the implant is
1262 HU),
while titanium and cobalt-chromium implants saturate 12-bit CT at 3071 HU. The check applies
to CTs in HU; a CT already calibrated to density carries no HU to test.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.ndimage import binary_dilation

from ..errors import MetalError
from ..fe.elements import shape_functions
from ..fe.mesh import Mesh
from ..io.ct import CTImage
from .internal_calibration import METAL_HU
from .mapping import integration_rule

log = logging.getLogger(__name__)

#: sample points per chunk when locating the voxels a mesh covers
_CHUNK = 2_000_000


@dataclass(frozen=True)
class MetalReport:
    """Metal voxels (HU above ``threshold_hu``) that the bone covers or touches.

    Attributes
    ----------
    threshold_hu : metal threshold, HU
    n_voxels : number of such voxels (0: no metal at the bone)
    max_hu : highest value among them (None without metal)
    centre_mm : (3,) their centroid, world LPS mm (None without metal)
    lower_mm, upper_mm : (3,) corners of their bounding box, world LPS mm (None without metal)
    n_metal_in_ct : metal voxels anywhere in the CT (e.g. an implant on the other side)
    """

    threshold_hu: float
    n_voxels: int
    max_hu: float | None = None
    centre_mm: tuple[float, float, float] | None = None
    lower_mm: tuple[float, float, float] | None = None
    upper_mm: tuple[float, float, float] | None = None
    n_metal_in_ct: int = 0

    @property
    def found(self) -> bool:
        return self.n_voxels > 0

    def to_dict(self) -> dict[str, Any]:
        return {"threshold_hu": float(self.threshold_hu), "n_voxels": int(self.n_voxels),
                "max_hu": self.max_hu, "centre_mm": None if self.centre_mm is None else list(self.centre_mm),
                "lower_mm": None if self.lower_mm is None else list(self.lower_mm),
                "upper_mm": None if self.upper_mm is None else list(self.upper_mm),
                "n_metal_in_ct": int(self.n_metal_in_ct)}

    def message(self, where: str = "the bone") -> str:
        """One line naming the metal, where it is, and the fix."""
        c = ", ".join(f"{v:.0f}" for v in self.centre_mm)
        lo = ", ".join(f"{v:.0f}" for v in self.lower_mm)
        hi = ", ".join(f"{v:.0f}" for v in self.upper_mm)
        return (f"metal in {where}: {self.n_voxels} CT voxels above {self.threshold_hu:.0f} HU (up to "
                f"{self.max_hu:.0f} HU) lie in or next to the bone, centred at ({c}) mm, from ({lo}) to ({hi}) mm "
                "(world LPS): an implant, which the model would take for bone; choose another bone (e.g. the "
                "other side) or give a mask that leaves out the implant and the voxels next to it")


def covered_voxels(mesh: Mesh, ct: CTImage, lower: np.ndarray, upper: np.ndarray) -> np.ndarray:
    """Boolean array over the index box ``[lower, upper)`` of the voxels holding a node or a
    sample point of an element of ``mesh`` (mesh in the CT's world frame, mm).

    The number of sample points per element direction follows the element size in voxels, so
    there is at least one sample per voxel an element spans.
    """
    shape = tuple(int(v) for v in upper - lower)
    covered = np.zeros(shape, dtype=bool)
    node_ijk = ct.index_from_world(mesh.points)
    span = np.ptp(node_ijk[mesh.cells[:, :4] if mesh.cell_type != "hexahedron" else mesh.cells], axis=1)
    n_steps = int(np.clip(np.ceil(np.percentile(span.max(axis=1), 95)) + 1, 2, 8))
    xi, _ = integration_rule(mesh.cell_type, n_steps)
    nfun_t = np.ascontiguousarray(shape_functions(mesh.cell_type, xi).T)  # (k, s)

    def mark(ijk: np.ndarray) -> None:
        idx = np.rint(ijk).astype(np.int64) - lower
        ok = np.all((idx >= 0) & (idx < np.asarray(shape)), axis=1)
        covered[tuple(idx[ok].T)] = True

    mark(node_ijk)
    chunk = max(1, _CHUNK // len(xi))
    for start in range(0, mesh.n_cells, chunk):
        cells = mesh.cells[start:start + chunk]
        pts = np.stack([node_ijk[:, d][cells] @ nfun_t for d in range(3)], axis=-1)  # (c, s, 3)
        mark(pts.reshape(-1, 3))
    return covered


def metal_near_mesh(ct: CTImage, mesh: Mesh, *, threshold_hu: float = METAL_HU) -> MetalReport:
    """Metal voxels of an HU ``ct`` that ``mesh`` covers or touches (see the module docstring)."""
    if ct.unit != "HU":
        raise MetalError(f"the metal check reads HU; this CT holds {ct.unit}")
    with np.errstate(invalid="ignore"):
        metal = np.asarray(ct.array) > threshold_hu
    n_all = int(np.count_nonzero(metal))
    if n_all == 0:
        return MetalReport(float(threshold_hu), 0)
    ijk = ct.index_from_world(mesh.points)
    shape = np.asarray(ct.shape)
    lower = np.clip(np.floor(ijk.min(axis=0)).astype(np.int64) - 2, 0, shape)
    upper = np.clip(np.ceil(ijk.max(axis=0)).astype(np.int64) + 3, 0, shape)
    box = tuple(slice(int(a), int(b)) for a, b in zip(lower, upper))
    metal_box = metal[box]
    if np.any(upper <= lower) or not metal_box.any():
        return MetalReport(float(threshold_hu), 0, n_metal_in_ct=n_all)
    touched = binary_dilation(covered_voxels(mesh, ct, lower, upper), structure=np.ones((3, 3, 3), dtype=bool))
    hit = metal_box & touched
    n = int(np.count_nonzero(hit))
    if n == 0:
        return MetalReport(float(threshold_hu), 0, n_metal_in_ct=n_all)
    idx = np.argwhere(hit) + lower
    world = ct.world_from_index(idx.astype(np.float64))
    values = np.asarray(ct.array)[tuple(idx.T)]
    return MetalReport(float(threshold_hu), n, float(values.max()), tuple(map(float, world.mean(axis=0))),
                       tuple(map(float, world.min(axis=0))), tuple(map(float, world.max(axis=0))), n_all)


def check_metal(ct: CTImage, mesh: Mesh, *, where: str = "the bone", threshold_hu: float = METAL_HU) -> MetalReport:
    """:func:`metal_near_mesh`, raising :class:`femur_fe.errors.MetalError` when the bone covers
    or touches metal. CTs not in HU are not checked (an empty report is returned)."""
    if ct.unit != "HU":
        return MetalReport(float(threshold_hu), 0)
    rep = metal_near_mesh(ct, mesh, threshold_hu=threshold_hu)
    if rep.found:
        raise MetalError(rep.message(where))
    if rep.n_metal_in_ct:
        log.info("metal check: %d voxels above %.0f HU in the CT, none in or next to %s", rep.n_metal_in_ct,
                 threshold_hu, where)
    return rep
