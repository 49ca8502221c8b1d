"""Voxel hexahedral meshes from CT masks (as Ogo/FAIM and n88 models are built).

Each (coarse) voxel becomes one hex8 element whose corners are the voxel's corners in world
coordinates (LPS mm, see :mod:`femur_fe.io.ct`); neighbouring elements share nodes. With
``coarsen=c`` blocks of c x c x c voxels (starting at voxel [0, 0, 0]) become one element:

* ``rule="majority"`` (default): the block is kept when more than half of its c**3 voxels
  are in the mask (voxels beyond the image edge count as outside);
* ``rule="any"``: kept when at least one voxel is in the mask (never loses bone, grows the
  surface by up to c - 1 voxels).

Cell data: ``"hu"`` (HU CTs) or ``"density"`` (g/cm^3, density CTs) = mean CT value of the
masked voxels in the block (NaN voxels ignored; a block of only NaN voxels is reported and
raises), ``"mask_fraction"`` = fraction of the block's voxels in the mask, and, for integer
label masks, ``"label"`` = the most frequent non-zero label of the block, with cell sets
``"label_<n>"``.
"""
from __future__ import annotations

import logging

import numpy as np

from ..errors import CTError
from ..fe.mesh import Mesh
from ..io.ct import CTImage

log = logging.getLogger(__name__)

# hex8 corner offsets (VTK order) in index units, relative to the voxel's lower corner
_CORNERS = np.array([[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0],
                     [0, 0, 1], [1, 0, 1], [1, 1, 1], [0, 1, 1]], dtype=np.int64)


def _blocks(a: np.ndarray, c: int, fill) -> np.ndarray:
    """Pad ``a`` to multiples of ``c`` and reshape to (NI, NJ, NK, c**3) blocks."""
    pad = [(0, (-n) % c) for n in a.shape]
    a = np.pad(a, pad, constant_values=fill)
    ni, nj, nk = (n // c for n in a.shape)
    return a.reshape(ni, c, nj, c, nk, c).transpose(0, 2, 4, 1, 3, 5).reshape(ni, nj, nk, c ** 3)


def hexmesh_from_mask(mask, ct: CTImage, *, coarsen: int = 1, rule: str = "majority") -> Mesh:
    """Hex8 voxel mesh (mm, LPS world frame) of the voxels of ``mask`` on the grid of ``ct``.

    Parameters
    ----------
    mask : (ni, nj, nk) bool, or integer labels (0 = background), on the CT grid
        (e.g. from :func:`femur_fe.io.read_mask` or :func:`femur_fe.io.ct.read_labels`).
    ct : the CT giving geometry and voxel values.
    coarsen : integer block size (1 = one element per voxel).
    rule : ``"majority"`` or ``"any"`` (see module docstring).

    Returns
    -------
    Mesh of cell type ``"hexahedron"``; all Jacobians positive, also for mirrored directions.

    Raises
    ------
    CTError : shape mismatch, bad coarsen/rule, empty result.
    """
    if not isinstance(ct, CTImage):
        raise CTError(f"ct must be a CTImage (femur_fe.read_ct), got {type(ct).__name__}")
    mask = np.asarray(mask)
    if mask.shape != ct.shape:
        raise CTError(f"mask has shape {mask.shape} but the CT has {ct.shape}; build the mask on the CT grid "
                      "(femur_fe.io.read_mask(..., reference=ct))")
    if not (isinstance(coarsen, (int, np.integer)) and coarsen >= 1):
        raise CTError(f"coarsen must be a positive integer (voxels per element edge), got {coarsen!r}")
    if rule not in ("majority", "any"):
        raise CTError(f"rule must be 'majority' or 'any', got {rule!r}")
    c = int(coarsen)
    is_labels = mask.dtype != bool
    if is_labels and not np.issubdtype(mask.dtype, np.integer):
        raise CTError(f"mask must be bool or integer labels, got dtype {mask.dtype}")
    inside = mask != 0 if is_labels else mask
    if not inside.any():
        raise CTError("the mask is empty: no voxel to mesh")

    # crop to the mask's bounding box (start aligned to the block grid) to bound memory
    lo = np.array([np.flatnonzero(inside.any(axis=tuple(b for b in range(3) if b != a)))[0] for a in range(3)])
    hi = np.array([np.flatnonzero(inside.any(axis=tuple(b for b in range(3) if b != a)))[-1] + 1 for a in range(3)])
    lo = (lo // c) * c
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    inside = inside[box]
    mask = mask[box]
    vals = ct.array[box]
    if c == 1:
        keep = inside
        idx = np.argwhere(keep)  # (m, 3) voxel indices, C order
        cell_vals = vals[keep].astype(np.float64)
        frac = np.ones(len(idx))
        labels = mask[keep].astype(np.int64) if is_labels else None
        n_nan_cells = int(np.count_nonzero(np.isnan(cell_vals)))
        if n_nan_cells:
            raise CTError(f"{n_nan_cells} masked voxels are NaN in the CT (e.g. voxel "
                          f"{(idx[np.isnan(cell_vals)][0] + lo).tolist()}); "
                          "repair the CT or remove them from the mask")
    else:
        blk_in = _blocks(inside, c, False)
        count = blk_in.sum(axis=3)
        keep = count * 2 > c ** 3 if rule == "majority" else count > 0
        if not keep.any():
            raise CTError(f"no {c}x{c}x{c} block is more than half inside the mask; use a smaller coarsen or "
                          "rule='any'")
        idx = np.argwhere(keep)
        blk_v = _blocks(vals.astype(np.float64, copy=False), c, np.nan)[keep]
        blk_m = blk_in[keep]
        with np.errstate(invalid="ignore"):
            good = blk_m & ~np.isnan(blk_v)
            n_good = good.sum(axis=1)
            cell_vals = np.where(good, blk_v, 0.0).sum(axis=1) / np.maximum(n_good, 1)
        if np.any(n_good == 0):
            bad = np.flatnonzero(n_good == 0)
            raise CTError(f"{bad.size} elements have only NaN CT voxels (e.g. voxels from "
                          f"{(idx[bad[0]] * c + lo).tolist()}); repair "
                          "the CT or remove them from the mask")
        n_nan_vox = int(np.count_nonzero(blk_m & np.isnan(blk_v)))
        if n_nan_vox:
            log.warning("%d masked voxels are NaN in the CT and were left out of their block averages", n_nan_vox)
        frac = count[keep] / float(c ** 3)
        labels = None
        if is_labels:
            blk_l = _blocks(np.where(inside, mask, 0).astype(np.int64), c, 0)[keep]
            present = np.unique(blk_l)
            present = present[present != 0]
            counts = np.stack([(blk_l == lab).sum(axis=1) for lab in present], axis=1)
            labels = present[np.argmax(counts, axis=1)]

    # nodes: corners of the kept (coarse) voxels on the (coarse) node grid, shared and renumbered
    grid_shape = np.array(keep.shape) + 1
    corner_ids = idx[:, None, :] + _CORNERS[None, :, :]  # (m, 8, 3) node-grid indices
    flat = np.ravel_multi_index(corner_ids.reshape(-1, 3).T, grid_shape)
    used, inverse = np.unique(flat, return_inverse=True)
    cells = inverse.reshape(-1, 8).astype(np.int64)
    node_ijk = np.stack(np.unravel_index(used, grid_shape), axis=1).astype(np.float64)
    points = ct.world_from_index(node_ijk * c + lo - 0.5)
    if np.linalg.det(ct.direction) < 0:
        cells = cells[:, [4, 5, 6, 7, 0, 1, 2, 3]]  # mirrored grid: swap layers to keep det J > 0

    cell_data: dict[str, np.ndarray] = {"mask_fraction": frac}
    if ct.unit == "HU":
        cell_data["hu"] = cell_vals
    else:
        cell_data["density"] = cell_vals / 1000.0 if ct.unit == "mg/cm3" else cell_vals
    cell_sets = {}
    if labels is not None:
        cell_data["label"] = labels
        for lab in np.unique(labels):
            cell_sets[f"label_{int(lab)}"] = np.flatnonzero(labels == lab)
    mesh = Mesh(points, cells, "hexahedron", cell_sets=cell_sets, cell_data=cell_data)
    log.info("voxel mesh: %d hex8 elements, %d nodes (coarsen %d, rule %s)", mesh.n_cells, mesh.n_points, c, rule)
    return mesh


def subdivide_mask(mask, ct: CTImage, n: int) -> tuple[np.ndarray, CTImage]:
    """The mask and the CT grid cut into ``n`` x ``n`` x ``n`` sub-voxels, cropped to the mask.

    Every voxel of the mask's bounding box becomes n^3 voxels of spacing ``spacing / n`` with
    its value (the same staircase geometry, finer elements): :func:`hexmesh_from_mask` on the
    result gives hexahedra of a fraction of the CT voxel, as a refinement of the one-voxel
    mesh. The returned CT holds the repeated voxel values (the material is still mapped from
    the original CT).
    """
    if not (isinstance(n, (int, np.integer)) and n >= 1):
        raise CTError(f"n must be a positive integer (sub-voxels per voxel edge), got {n!r}")
    mask = np.asarray(mask)
    inside = mask != 0
    if not inside.any():
        raise CTError("the mask is empty: no voxel to mesh")
    lo = np.array([np.flatnonzero(inside.any(axis=tuple(b for b in range(3) if b != a)))[0] for a in range(3)])
    hi = np.array([np.flatnonzero(inside.any(axis=tuple(b for b in range(3) if b != a)))[-1] + 1 for a in range(3)])
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))

    def fine(a: np.ndarray) -> np.ndarray:
        for ax in range(3):
            a = np.repeat(a, n, axis=ax)
        return a

    spacing = ct.spacing / n
    # centre of sub-voxel 0 of voxel lo: half a sub-voxel in from the voxel's lower corner
    origin = ct.world_from_index(lo - 0.5 + 0.5 / n)
    sub = CTImage(fine(ct.array[box]), spacing, origin, ct.direction, ct.unit, ct.source)
    return fine(mask[box]), sub
