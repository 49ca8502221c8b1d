"""Map CT values onto a finite-element mesh (Bonemat-style), in world coordinates.

Methods (``method=``):

* ``"centroid"``: the CT value at each element's reference centroid (trilinear interpolation).
* ``"element_average"`` (Bonemat V2): the element mean of the CT value,
  ``int_e HU dV / V_e``, integrated with ``n_steps`` points per element direction placed by the
  element's own shape functions (Gauss-Legendre on hexahedra, collapsed Gauss-Jacobi on
  tetrahedra: exact for polynomials of degree ``2 n_steps - 1`` in the reference coordinates,
  so a linear field on any tet4/tet10/hex8 element is integrated exactly for ``n_steps >= 2``).
* ``"modulus_average"`` (Bonemat V3): the element mean of E(rho(HU(x))) with the same rule
  (only in :func:`map_young_modulus`).
* ``"quadrature"``: values at the element's stiffness quadrature points
  (:func:`femur_fe.fe.elements.quadrature`), shape (m, q), as ``assemble_stiffness`` takes them.

Interpolation is trilinear between voxel centres (``scipy.ndimage.map_coordinates``, order 1).
The scan covers the voxels' outer faces (index -0.5 .. n - 0.5); within the outer half voxel
the border value is used. Points beyond that are *outside*; points whose interpolation
touches a NaN voxel are *NaN samples*. Both are counted in a :class:`MappingReport` and
handled by ``outside=``:

* ``"error"`` (default): raise :class:`~femur_fe.errors.CTError` naming the elements;
* ``"nearest"``: outside points take the nearest border voxel's value; NaN samples use the
  trilinear weights of their non-NaN neighbours only (error if all eight are NaN);
* ``"value"``: both take ``fill_value`` (in the CT's unit).

A mesh that lies completely outside the CT raises CTError whatever the policy (wrong frame or
units). Meshes are taken in the CT's LPS world frame; pass ``frame="RAS"`` for a mesh in RAS.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.ndimage import map_coordinates
from scipy.special import roots_jacobi

from ..diagnostics import warn
from ..errors import CTError, MaterialError
from ..fe.elements import quadrature, shape_functions, shape_gradients
from ..fe.mesh import Mesh
from ..io.ct import CTImage, lps_from_ras
from .calibration import DENSITY_TYPES, HUCalibration, convert_density
from .materials import DensityModulusLaw

log = logging.getLogger(__name__)

METHODS = ("centroid", "element_average", "modulus_average", "quadrature")
POLICIES = ("error", "nearest", "value")
_SAMPLES_PER_CHUNK = 1_000_000


# ---------------------------------------------------------------------------------------------
# report and result
# ---------------------------------------------------------------------------------------------
@dataclass
class MappingReport:
    """What happened during a mapping: sample counts and the elements with problem samples."""

    method: str
    n_elements: int
    samples_per_element: int
    n_samples_outside: int = 0
    n_samples_nan: int = 0
    elements_outside: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    elements_nan: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    policy: str = "error"
    fill_value: float | None = None
    n_densities_clamped: int = 0
    frame: str = "LPS"

    @property
    def n_samples(self) -> int:
        return self.n_elements * self.samples_per_element

    @property
    def elements_affected(self) -> np.ndarray:
        """Sorted ids of elements with at least one outside or NaN sample."""
        return np.union1d(self.elements_outside, self.elements_nan)

    @property
    def n_elements_affected(self) -> int:
        return int(self.elements_affected.size)

    @property
    def ok(self) -> bool:
        return self.n_samples_outside == 0 and self.n_samples_nan == 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method, "n_elements": self.n_elements,
            "samples_per_element": self.samples_per_element,
            "n_samples_outside": self.n_samples_outside, "n_samples_nan": self.n_samples_nan,
            "n_elements_affected": self.n_elements_affected,
            "elements_affected": self.elements_affected.tolist(),
            "policy": self.policy, "fill_value": self.fill_value,
            "n_densities_clamped": self.n_densities_clamped, "frame": self.frame,
        }

    def __str__(self) -> str:
        if self.ok:
            return (f"mapping ({self.method}): {self.n_elements} elements x {self.samples_per_element} samples, "
                    "all inside the CT and finite")
        return (f"mapping ({self.method}): {self.n_samples_outside} samples outside the CT in "
                f"{self.elements_outside.size} elements {_head(self.elements_outside)}, "
                f"{self.n_samples_nan} samples on NaN voxels in {self.elements_nan.size} elements "
                f"{_head(self.elements_nan)}; policy {self.policy!r}")


@dataclass
class MappingResult:
    """Mapped values: (m,) per element or (m, q) per quadrature point, with unit and report."""

    values: np.ndarray
    unit: str
    quantity: str
    report: MappingReport


def _incomplete_message(report: MappingReport) -> str:
    """The named warning of a mapping with samples outside the CT or on NaN voxels (the same text
    for every mapping method, so that one bone mapped twice warns once)."""
    took = {"nearest": "the nearest voxel's value", "value": f"the value {report.fill_value!r}"}.get(
        report.policy, f"policy {report.policy!r}")
    parts = []
    if report.n_samples_outside:
        parts.append(f"{report.n_samples_outside} CT samples of {report.elements_outside.size} elements "
                     f"{_head(report.elements_outside)} lie outside the scan (the bone reaches its edge)")
    if report.n_samples_nan:
        parts.append(f"{report.n_samples_nan} samples of {report.elements_nan.size} elements "
                     f"{_head(report.elements_nan)} fall on NaN voxels")
    return "; ".join(parts) + f"; they take {took}"


def _head(ids, n: int = 10) -> str:
    ids = np.asarray(ids).tolist()
    return "[" + ", ".join(str(i) for i in ids[:n]) + (", ...]" if len(ids) > n else "]")


# ---------------------------------------------------------------------------------------------
# reference-element sampling rules
# ---------------------------------------------------------------------------------------------
def _gauss_jacobi_01(n: int, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """Nodes/weights on [0, 1] for weight (1 - u)**alpha (exact to degree 2n - 1)."""
    t, w = roots_jacobi(n, alpha, 0.0)
    return (t + 1.0) / 2.0, w / 2.0 ** (alpha + 1.0)


def integration_rule(cell_type: str, n_steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Sub-sampling rule on the reference element: points (n_steps**3, 3) and weights.

    Hexahedron: tensor Gauss-Legendre on [-1, 1]^3 (weights sum to 8). Tetrahedron (tet4,
    tet10): Stroud conical product (collapsed coordinates x = u, y = (1-u) v,
    z = (1-u)(1-v) w with Gauss-Jacobi weights (1-u)^2, (1-v)); weights sum to 1/6. Both are
    exact for polynomials of degree 2 n_steps - 1 in the reference coordinates.
    """
    if not (isinstance(n_steps, (int, np.integer)) and 1 <= n_steps <= 12):
        raise CTError(f"n_steps must be an integer in 1..12 (samples per element direction), got {n_steps!r}")
    n = int(n_steps)
    if cell_type == "hexahedron":
        g, w = np.polynomial.legendre.leggauss(n)
        pts = np.array([[a, b, c] for c in g for b in g for a in g])
        wts = np.array([wa * wb * wc for wc in w for wb in w for wa in w])
        return pts, wts
    if cell_type in ("tetra", "tetra10"):
        u, wu = _gauss_jacobi_01(n, 2.0)
        v, wv = _gauss_jacobi_01(n, 1.0)
        s, ws = _gauss_jacobi_01(n, 0.0)
        pts, wts = [], []
        for a in range(n):
            for b in range(n):
                for c in range(n):
                    pts.append([u[a], (1 - u[a]) * v[b], (1 - u[a]) * (1 - v[b]) * s[c]])
                    wts.append(wu[a] * wv[b] * ws[c])
        return np.array(pts), np.array(wts)
    raise CTError(f"unsupported cell type {cell_type!r} for mapping")


def _reference_centroid(cell_type: str) -> np.ndarray:
    return np.array([[0.0, 0.0, 0.0]]) if cell_type == "hexahedron" else np.array([[0.25, 0.25, 0.25]])


def _det3(j: np.ndarray) -> np.ndarray:
    """Determinants of (..., 3, 3) matrices by cofactors (faster than LU for tiny matrices)."""
    return (j[..., 0, 0] * (j[..., 1, 1] * j[..., 2, 2] - j[..., 1, 2] * j[..., 2, 1])
            - j[..., 0, 1] * (j[..., 1, 0] * j[..., 2, 2] - j[..., 1, 2] * j[..., 2, 0])
            + j[..., 0, 2] * (j[..., 1, 0] * j[..., 2, 1] - j[..., 1, 1] * j[..., 2, 0]))


# ---------------------------------------------------------------------------------------------
# trilinear sampling in index space
# ---------------------------------------------------------------------------------------------
def _sample_index(ct: CTImage, coords: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Trilinear values at continuous indices ``coords`` (3, n); returns (values, outside, nan).

    Outside points get the value at their position clamped onto the voxel-centre box (the
    nearest border value); NaN samples hold NaN. ``coords`` is not modified.
    """
    hi = np.asarray(ct.shape, dtype=np.float64)[:, None] - 1.0
    outside = ((coords < -0.5) | (coords > hi + 0.5)).any(axis=0)
    clipped = np.clip(coords, 0.0, hi)
    vals = map_coordinates(ct.array, clipped, order=1, mode="nearest", prefilter=False, output=np.float64)
    return vals, outside, np.isnan(vals)


def _renormalised_trilinear(ct: CTImage, ijk: np.ndarray) -> np.ndarray:
    """Trilinear interpolation ignoring NaN voxels (weights renormalised); NaN if all 8 are NaN."""
    shape = np.asarray(ct.shape)
    c = np.clip(ijk, 0.0, shape - 1.0)
    i0 = np.floor(c).astype(np.int64)
    i0 = np.minimum(i0, np.maximum(shape - 2, 0))
    f = c - i0
    num = np.zeros(len(c))
    den = np.zeros(len(c))
    for dx in (0, 1):
        for dy in (0, 1):
            for dz in (0, 1):
                idx = np.minimum(i0 + np.array([dx, dy, dz]), shape - 1)
                w = (np.where(dx, f[:, 0], 1 - f[:, 0]) * np.where(dy, f[:, 1], 1 - f[:, 1])
                     * np.where(dz, f[:, 2], 1 - f[:, 2]))
                v = ct.array[idx[:, 0], idx[:, 1], idx[:, 2]].astype(np.float64)
                ok = ~np.isnan(v)
                num += np.where(ok, w * np.nan_to_num(v), 0.0)
                den += np.where(ok, w, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 1e-12, num / np.where(den > 0, den, 1.0), np.nan)


def _check_policy(outside: str, fill_value: float | None) -> None:
    if outside not in POLICIES:
        raise CTError(f"outside must be one of {POLICIES}, got {outside!r}")
    if outside == "value" and (fill_value is None or not np.isfinite(fill_value)):
        raise CTError("outside='value' needs a finite fill_value (in the CT's unit), e.g. fill_value=-1000 for HU")


def _mesh_points_lps(mesh: Mesh, frame: str) -> np.ndarray:
    if frame == "LPS":
        return mesh.points
    if frame == "RAS":
        return lps_from_ras(mesh.points)
    raise CTError(f"frame must be 'LPS' (the CT's world frame) or 'RAS', got {frame!r}")


def _check_overlap(points_lps: np.ndarray, ct: CTImage) -> None:
    ijk = ct.index_from_world(points_lps)
    lo, hi = ct.index_bounds
    mlo, mhi = ijk.min(axis=0), ijk.max(axis=0)
    if np.any(mhi < lo) or np.any(mlo > hi):
        mb = np.vstack([points_lps.min(axis=0), points_lps.max(axis=0)])
        raise CTError(
            f"the mesh lies completely outside the CT: mesh bounds {np.round(mb, 2).tolist()} mm, CT bounds "
            f"{np.round(ct.bounds, 2).tolist()} mm (LPS). Check the frame (a RAS mesh needs frame='RAS'), "
            "the units (mesh in m instead of mm?) and that the mesh was made from this CT")


def sample_ct(ct: CTImage, points, *, outside: str = "error", fill_value: float | None = None,
              frame: str = "LPS") -> np.ndarray:
    """CT values (CT unit) at world points (n, 3) mm by trilinear interpolation.

    ``outside`` policy as in the module docstring (counts are logged; "error" raises).
    """
    _check_policy(outside, fill_value)
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    if frame == "RAS":
        pts = lps_from_ras(pts)
    elif frame != "LPS":
        raise CTError(f"frame must be 'LPS' or 'RAS', got {frame!r}")
    ijk = ct.index_from_world(pts)
    vals, out, nan = _sample_index(ct, np.ascontiguousarray(ijk.T))
    nan &= ~out
    if out.any() or nan.any():
        msg = f"{int(out.sum())} points outside the CT, {int(nan.sum())} on NaN voxels"
        if outside == "error":
            raise CTError(f"{msg} (first point ids {_head(np.flatnonzero(out | nan))}); pass outside='nearest' "
                          "or outside='value' with fill_value to accept them")
        log.warning("%s; policy %r", msg, outside)
        vals = _apply_policy(ct, ijk, vals, out, nan, outside, fill_value)
    return vals


def _apply_policy(ct, ijk, vals, out, nan, policy, fill_value):
    vals = vals.copy()
    if policy == "value":
        vals[out | nan] = fill_value
        return vals
    # nearest: outside samples already hold the clamped (nearest border) value, unless NaN there
    bad = np.isnan(vals)
    if bad.any():
        vals[bad] = _renormalised_trilinear(ct, ijk[bad])
        still = np.isnan(vals)
        if still.any():
            raise CTError(f"{int(still.sum())} samples in the mesh have only NaN/inf voxels around them: the CT "
                          "has no data inside the bone there; repair or re-export the CT (or map with "
                          "outside='value' and a fill_value)")
    return vals


# ---------------------------------------------------------------------------------------------
# the mesh mapper
# ---------------------------------------------------------------------------------------------
def _ct_values_to_modulus(ct_unit: str, law, calibration, ct_density_type: str, qct_to_ash):
    """Return (f(values) -> (E MPa, n_clamped)) for the modulus chain HU/density -> rho -> E."""
    if not isinstance(law, DensityModulusLaw):
        raise MaterialError(f"law must be a femur_fe material law (femur_fe.bone.material_law(...)), got {type(law).__name__}")
    density_type, to_rho = _ct_values_to_density(ct_unit, calibration, ct_density_type)
    # fail fast on an impossible density conversion
    convert_density(np.zeros(1), density_type, law.density_type, qct_to_ash=qct_to_ash)

    def fn(values: np.ndarray) -> tuple[np.ndarray, int]:
        rho = to_rho(values)
        neg = rho < 0
        n = int(np.count_nonzero(neg))
        if n:
            rho = np.where(neg, 0.0, rho)
        return law.young_from_density(rho, density_type, qct_to_ash=qct_to_ash), n

    return fn


def _ct_values_to_density(ct_unit: str, calibration, ct_density_type: str):
    if ct_density_type not in DENSITY_TYPES:
        raise MaterialError(f"ct_density_type must be one of {DENSITY_TYPES}, got {ct_density_type!r}")
    if ct_unit == "HU":
        if not isinstance(calibration, HUCalibration):
            raise CTError("the CT is in HU: pass calibration=femur_fe.bone.DensityCalibration(...) (phantom fit or "
                          "literature slope/intercept) or the result of femur_fe.bone.internal_calibration(...) to "
                          "convert HU to density (CLI: --calibration PHANTOM.json or --calibration internal)")
        return "qct", lambda v: calibration.density(v, clamp=False)
    if calibration is not None:
        raise CTError(f"the CT is already in {ct_unit}; do not pass a HU calibration")
    scale = 1e-3 if ct_unit == "mg/cm3" else 1.0
    return ct_density_type, lambda v: v * scale


def _map(mesh: Mesh, ct: CTImage, *, method: str, n_steps: int, outside: str, fill_value, frame: str,
         transform=None) -> tuple[np.ndarray, MappingReport]:
    """Core loop: sample, apply policy, transform samples (e.g. to E), integrate per element."""
    if not isinstance(mesh, Mesh):
        raise CTError(f"mesh must be a femur_fe.Mesh, got {type(mesh).__name__}")
    if not isinstance(ct, CTImage):
        raise CTError(f"ct must be a femur_fe.io.CTImage (femur_fe.read_ct), got {type(ct).__name__}")
    if method not in METHODS:
        raise CTError(f"method must be one of {METHODS}, got {method!r}")
    _check_policy(outside, fill_value)
    if mesh.n_cells == 0:
        raise CTError("the mesh has no cells to map")
    pts = _mesh_points_lps(mesh, frame)
    used = np.zeros(mesh.n_points, dtype=bool)
    used[mesh.cells.ravel()] = True
    _check_overlap(pts[used], ct)

    ct_type = mesh.cell_type
    if method == "centroid":
        xi, w = _reference_centroid(ct_type), None
    elif method == "quadrature":
        q = quadrature(ct_type)
        xi, w = q.points, None
    else:
        xi, w = integration_rule(ct_type, n_steps)
    n_s = len(xi)
    nfun_t = np.ascontiguousarray(shape_functions(ct_type, xi).T)  # (k, s)
    # weights: det J is constant on tet4 elements, so it cancels in the element mean
    need_det = w is not None and ct_type != "tetra"
    dn = shape_gradients(ct_type, xi) if need_det else None  # (s, k, 3)
    m = mesh.n_cells
    out_vals = np.empty((m, n_s)) if method == "quadrature" else np.empty(m)
    report = MappingReport(method, m, n_s, policy=outside, fill_value=fill_value, frame=frame)
    el_out, el_nan = [], []
    chunk = max(1, _SAMPLES_PER_CHUNK // n_s)
    # the index-from-world map is affine, so interpolating node indices with the shape functions
    # gives the sample indices exactly; det J in index space is det J in mm times a constant,
    # which cancels in the weighted mean
    node_ijk = np.ascontiguousarray(ct.index_from_world(pts).T)  # (3, n)
    n_clamped = 0
    for start in range(0, m, chunk):
        stop = min(m, start + chunk)
        cells = mesh.cells[start:stop]
        c = stop - start
        coords = np.empty((3, c * n_s))
        for d in range(3):
            coords[d] = (node_ijk[d][cells] @ nfun_t).ravel()  # (c, k) @ (k, s)
        vals, out, nan = _sample_index(ct, coords)
        nan &= ~out
        if out.any() or nan.any():
            ids = np.arange(start, stop).repeat(n_s)
            el_out.append(np.unique(ids[out]))
            el_nan.append(np.unique(ids[nan]))
            report.n_samples_outside += int(out.sum())
            report.n_samples_nan += int(nan.sum())
            if outside != "error":
                vals = _apply_policy(ct, coords.T, vals, out, nan, outside, fill_value)
        if outside == "error" and (report.n_samples_outside or report.n_samples_nan):
            continue  # keep counting, raise below
        vals = vals.reshape(c, n_s)
        if transform is not None:
            vals, n_c = transform(vals)
            n_clamped += n_c
        if w is None:
            out_vals[start:stop] = vals if method == "quadrature" else vals[:, 0]
        elif not need_det:
            out_vals[start:stop] = vals @ (w / w.sum())
        else:
            ie = np.stack([node_ijk[d][cells] for d in range(3)], axis=-1)  # (c, k, 3)
            jac = np.einsum("ska,ckb->csab", dn, ie, optimize=True)
            wdet = _det3(jac) * w[None, :]
            out_vals[start:stop] = np.einsum("cs,cs->c", wdet, vals) / wdet.sum(axis=1)
    report.elements_outside = np.unique(np.concatenate(el_out)) if el_out else np.zeros(0, dtype=np.int64)
    report.elements_nan = np.unique(np.concatenate(el_nan)) if el_nan else np.zeros(0, dtype=np.int64)
    report.n_densities_clamped = n_clamped
    if not report.ok:
        if outside == "error":
            raise CTError(f"{report}. Pass outside='nearest' (border/neighbour values) or outside='value' with "
                          "fill_value to accept them, or fix the mesh/CT alignment")
        warn("ct_mapping_incomplete", _incomplete_message(report), log)
    if n_clamped:
        log.warning("%d of %d samples had negative density after calibration and were clamped to 0 before the "
                    "material law", n_clamped, report.n_samples)
    return out_vals, report


def map_ct(mesh: Mesh, ct: CTImage, *, method: str = "element_average", n_steps: int = 3,
           outside: str = "error", fill_value: float | None = None, frame: str = "LPS") -> MappingResult:
    """Map raw CT values onto the elements of ``mesh``.

    Parameters
    ----------
    mesh : tet4, tet10 or hex8 :class:`~femur_fe.fe.mesh.Mesh` in mm, in the CT's LPS world frame
        (or RAS with ``frame="RAS"``).
    ct : :class:`~femur_fe.io.ct.CTImage`
    method : ``"centroid"``, ``"element_average"`` (Bonemat V2) or ``"quadrature"``
    n_steps : sub-samples per element direction for ``"element_average"`` (n_steps**3 points)
    outside, fill_value : policy for samples outside the scan or on NaN voxels (module docstring)

    Returns
    -------
    MappingResult with ``values`` (m,) or (m, q) in ``"HU"`` or ``"g/cm3"`` (mg/cm^3 CTs are
    converted to g/cm^3), quantity ``"hu"`` or ``"density"``.
    """
    if method == "modulus_average":
        raise CTError("method='modulus_average' needs a material law: use femur_fe.bone.map_young_modulus")
    vals, report = _map(mesh, ct, method=method, n_steps=n_steps, outside=outside, fill_value=fill_value,
                        frame=frame)
    if ct.unit == "mg/cm3":
        return MappingResult(vals / 1000.0, "g/cm3", "density", report)
    return MappingResult(vals, ct.unit, "hu" if ct.unit == "HU" else "density", report)


def map_density(mesh: Mesh, ct: CTImage, *, calibration: HUCalibration | None = None,
                density_type: str = "qct", ct_density_type: str = "qct", qct_to_ash=None,
                method: str = "element_average", n_steps: int = 3, outside: str = "error",
                fill_value: float | None = None, frame: str = "LPS", clamp: bool = True) -> MappingResult:
    """Element (or quadrature-point) density in g/cm^3 of type ``density_type``.

    HU CTs need ``calibration`` (any :class:`~femur_fe.bone.calibration.HUCalibration`: a phantom
    line or the internal-calibration curve); every HU sample is converted to QCT density before
    the element average, so a curved calibration gives the mean density, not the density of the
    mean HU. Density CTs hold ``ct_density_type`` (default QCT). Negative densities are clamped to
    0 with a warning when ``clamp``.
    """
    if method == "modulus_average":
        raise CTError("method='modulus_average' needs a material law: use femur_fe.bone.map_young_modulus")
    unit = "HU" if ct.unit == "HU" else "g/cm3"
    src_type, to_rho = _ct_values_to_density(unit, calibration, ct_density_type)
    if unit == "HU":
        vals, report = _map(mesh, ct, method=method, n_steps=n_steps, outside=outside, fill_value=fill_value,
                            frame=frame, transform=lambda v: (to_rho(v), 0))
        res = MappingResult(vals, "g/cm3", "density", report)
        rho = vals
    else:
        res = map_ct(mesh, ct, method=method, n_steps=n_steps, outside=outside, fill_value=fill_value,
                     frame=frame)
        rho = to_rho(res.values)
    rho = convert_density(rho, src_type, density_type, qct_to_ash=qct_to_ash)
    if clamp:
        neg = rho < 0
        res.report.n_densities_clamped = int(np.count_nonzero(neg))
        if res.report.n_densities_clamped:
            log.warning("%d of %d mapped %s densities were negative and clamped to 0 g/cm3",
                        res.report.n_densities_clamped, rho.size, density_type)
            rho = np.where(neg, 0.0, rho)
    return MappingResult(rho, "g/cm3", f"{density_type}_density", res.report)


def map_young_modulus(mesh: Mesh, ct: CTImage, law, *, calibration: HUCalibration | None = None,
                      ct_density_type: str = "qct", qct_to_ash=None, method: str = "modulus_average",
                      n_steps: int = 3, outside: str = "error", fill_value: float | None = None,
                      frame: str = "LPS") -> MappingResult:
    """Young's modulus (MPa) per element, or per quadrature point with ``method="quadrature"``.

    ``"modulus_average"`` (Bonemat V3, default) integrates E(rho(HU(x))) over each element;
    ``"element_average"`` applies the law to the element-average density (Bonemat V2);
    ``"centroid"`` and ``"quadrature"`` apply it to point samples. The chain is HU ->
    ``calibration`` -> QCT density (or the CT's density of ``ct_density_type``) -> the law's
    density type (``qct_to_ash`` when needed) -> ``law``. Negative densities are clamped to 0
    with one warning giving the count.
    """
    unit = "HU" if ct.unit == "HU" else "g/cm3"
    fn = _ct_values_to_modulus(unit, law, calibration, ct_density_type, qct_to_ash)
    scale = 1e-3 if ct.unit == "mg/cm3" else 1.0
    if method == "modulus_average":
        vals, report = _map(mesh, ct, method=method, n_steps=n_steps, outside=outside, fill_value=fill_value,
                            frame=frame, transform=lambda v: fn(v * scale))
        return MappingResult(vals, "MPa", "young_modulus", report)
    res = map_ct(mesh, ct, method=method, n_steps=n_steps, outside=outside, fill_value=fill_value, frame=frame)
    e, n_c = fn(res.values)
    res.report.n_densities_clamped = n_c
    if n_c:
        log.warning("%d of %d mapped densities were negative and clamped to 0 before the material law",
                    n_c, res.values.size)
    return MappingResult(e, "MPa", "young_modulus", res.report)
