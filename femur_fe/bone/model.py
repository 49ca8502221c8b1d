"""A bone model: mesh + per-element density + material law -> Young's modulus.

Geometry is kept apart from the modulus: :meth:`Model.with_density` returns a model on
the same mesh whose moduli follow the new density, and the analysis layer
(:mod:`femur_fe.analysis.prepare`) reuses the assembled sparsity pattern and regions.
"""
from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..diagnostics import collecting, merged
from ..errors import CTError, LoadCaseError, MaterialError
from ..fe.mesh import Mesh
from ..io.ct import read_ct
from .checks import check_ct_overlap, floor_warnings
from .internal_calibration import internal_calibration
from .mapping import map_density, map_young_modulus
from .metal import check_metal

log = logging.getLogger(__name__)


def sha256_of(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file (or of every file in a folder, in sorted order)."""
    h = hashlib.sha256()
    p = Path(path)
    files = sorted(q for q in p.rglob("*") if q.is_file()) if p.is_dir() else [p]
    for q in files:
        with open(q, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


#: internal calibrations of CT files already calibrated in this process (file identity -> result)
_CALIBRATIONS: dict[tuple, Any] = {}


def _file_key(p: Any) -> tuple | None:
    """(resolved path, size, mtime) of a file, None for anything else (an array)."""
    if not isinstance(p, (str, os.PathLike)):
        return None
    st = Path(p).stat()
    return (str(Path(p).resolve()), st.st_size, st.st_mtime_ns)


def cached_internal_calibration(ct, ct_path, masks, tissue_hu):
    """:func:`internal_calibration`, computed once per process for the same CT file, mask files
    and given tissue HUs (a mesh check or several bones of one scan reuse it)."""
    key = None
    if ct_path is not None and (masks is None or isinstance(masks, dict)):
        mkeys = tuple(sorted((str(k), _file_key(v)) for k, v in (masks or {}).items()))
        if all(v is not None for _, v in mkeys):
            sample = np.ascontiguousarray(np.asarray(ct.array)[::7, ::7, ::7])  # the CT in memory, not only its file
            key = (_file_key(ct_path), ct.shape, hash(sample.tobytes()), mkeys,
                   tuple(sorted((tissue_hu or {}).items())))
    if key is not None and key in _CALIBRATIONS:
        return _CALIBRATIONS[key]
    ic = internal_calibration(ct, masks=masks, tissue_hu=tissue_hu)
    if key is not None:
        if len(_CALIBRATIONS) >= 4:
            _CALIBRATIONS.pop(next(iter(_CALIBRATIONS)))
        _CALIBRATIONS[key] = ic
    return ic


@dataclass(frozen=True, eq=False)
class Model:
    """Bone geometry and material.

    Attributes
    ----------
    mesh : the bone mesh (mm)
    density : (m,) g/cm^3 of ``density_type`` (the density the law takes)
    young : (m,) MPa
    law : the density-modulus law (None when moduli were given directly)
    density_type : ``"qct"``, ``"ash"`` or ``"apparent"``
    poisson : Poisson ratio of bone
    qct_density : (m,) QCT-equivalent mineral density, g/cm^3, when known (for vBMD)
    heterogeneity : (m,) ratio young / law(density) of the CT mapping (1 for point
        sampling; differs from 1 when E was integrated over each element, Bonemat V3);
        kept when the density changes so scenarios stay consistent with the baseline.
    inputs : file path -> sha256 of the inputs the model came from
    mapping : the mapping report as a dict (samples outside the CT, clamped densities)
    calibration : how the CT became density (method, slope/intercept, internal-calibration fit)
    warnings : named warnings of reading and building the model
        (:class:`femur_fe.diagnostics.RunWarning`; e.g. ``moduli_floored``)
    """

    mesh: Mesh
    density: np.ndarray
    young: np.ndarray
    law: Any = None
    density_type: str = "ash"
    poisson: float = 0.3
    qct_density: np.ndarray | None = None
    heterogeneity: np.ndarray | None = None
    inputs: dict = field(default_factory=dict)
    mapping: dict = field(default_factory=dict)
    calibration: dict = field(default_factory=dict)
    warnings: tuple = ()

    def __post_init__(self) -> None:
        m = self.mesh.n_cells
        rho = np.ascontiguousarray(self.density, dtype=np.float64)
        e = np.ascontiguousarray(self.young, dtype=np.float64)
        if rho.shape != (m,):
            raise MaterialError(f"density must have one value per element ({m},), got {rho.shape}")
        if e.shape != (m,):
            raise MaterialError(f"young must have one value per element ({m},) MPa, got {e.shape}")
        if not np.isfinite(rho).all():
            raise MaterialError(f"density has {np.count_nonzero(~np.isfinite(rho))} non-finite values "
                                "(NaN voxels under the mesh?); check the CT mapping report")
        if not (np.isfinite(e).all() and (e > 0).all()):
            raise MaterialError("young must be finite and > 0 MPa everywhere; set the law's e_min_mpa floor")
        if not (-1.0 < self.poisson < 0.5):
            raise MaterialError(f"poisson must be in (-1, 0.5), got {self.poisson}")
        object.__setattr__(self, "density", rho)
        object.__setattr__(self, "young", e)

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_density(cls, mesh: Mesh, density, law, *, density_type: str | None = None,
                     qct_density=None, **kw) -> "Model":
        """Model whose moduli are ``law.young(density)`` (density in the law's type, g/cm^3)."""
        dt = density_type or law.density_type
        if dt != law.density_type:
            raise MaterialError(f"law {type(law).__name__} takes {law.density_type} density, got {dt}; "
                                "convert with femur_fe.bone.convert_density first")
        rho = np.asarray(density, dtype=np.float64)
        with collecting() as found:
            young = law.young(rho)
            if np.isfinite(rho).all():
                floor_warnings(young, rho, law, mesh.cell_volumes())
        kw["warnings"] = merged(kw.get("warnings", ()), found)
        return cls(mesh, rho, young, law, dt, law.poisson, qct_density, None, **kw)

    @classmethod
    def from_ct(cls, mesh: Mesh, ct, material, *, outside: str = "nearest", n_steps: int = 3,
                ct_path: str | os.PathLike | None = None, calibration_masks=None,
                bone_name: str = "the bone", progress: Callable[[str], None] | None = None) -> "Model":
        """Map a CT onto ``mesh`` with the ``[material]`` section of a load case.

        ``material`` is a :class:`femur_fe.case.loadcase.Material`. Elements with samples outside
        the scan use the nearest voxel (``outside="nearest"``) and are reported in
        ``model.mapping``; use ``outside="error"`` to refuse them. An HU CT is calibrated as
        ``[material.calibration]`` says: ``method = "linear"`` (a phantom's slope and intercept)
        or ``"internal"`` (:func:`femur_fe.bone.internal_calibration` on this CT, helped by
        ``calibration_masks``: name -> label image, e.g. the segmenter's masks); what was used is
        recorded in ``model.calibration``.

        An HU CT is first checked for metal in or next to the bone
        (:func:`femur_fe.bone.metal.check_metal`, ``bone_name`` names the bone in the refusal);
        the check is recorded in ``model.mapping["metal"]``. ``progress`` is called with one line
        per stage (metal check, calibration, mapping).
        """
        with collecting() as found:
            model = cls._from_ct(mesh, ct, material, outside=outside, n_steps=n_steps, ct_path=ct_path,
                                 calibration_masks=calibration_masks, bone_name=bone_name, progress=progress)
            floor_warnings(model.young, model.density, model.law, mesh.cell_volumes())
        return replace(model, warnings=merged(model.warnings, found))

    @classmethod
    def _from_ct(cls, mesh: Mesh, ct, material, *, outside: str, n_steps: int, ct_path, calibration_masks,
                 bone_name: str, progress: Callable[[str], None] | None) -> "Model":
        say = progress or (lambda msg: log.info("%s", msg))
        law = material.build()
        cal = material.calibration
        check_ct_overlap(mesh, ct)
        metal = check_metal(ct, mesh, where=bone_name) if ct.unit == "HU" else None
        if metal is not None:
            say(f"metal: none in or next to {bone_name} (> {metal.threshold_hu:.0f} HU; "
                f"{metal.n_metal_in_ct} such voxels elsewhere in the CT)")
        if ct.unit == "HU" and cal.ct_unit != "HU":
            raise CTError(f"the CT holds HU but the load case says ct_unit = {cal.ct_unit!r}; calibrate it: "
                          "--calibration internal (phantomless) or --calibration PHANTOM.json (CLI), or "
                          "[material.calibration] ct_unit = 'HU' with method = 'internal' or slope/intercept")
        record: dict[str, Any] = {"ct_unit": cal.ct_unit, "ct_density_type": cal.ct_density_type,
                                  "qct_to_ash": cal.qct_to_ash}
        if cal.ct_unit == "HU" and cal.method == "internal":
            ic = cached_internal_calibration(ct, ct_path, calibration_masks or None, dict(cal.tissue_hu) or None)
            dcal = ic  # the two-component curve itself (HUCalibration), not a line through it
            record.update({**ic.to_dict(), "method": "internal"})
            say(f"calibration: internal, {ic.effective_energy_kev:.0f} keV, R^2 {ic.r_squared:.5f}, "
                + ", ".join(f"{k} {v.mean_hu:.0f} HU" for k, v in ic.tissues.items() if v.used))
        else:
            dcal = cal.density_calibration()
            if cal.ct_unit == "HU" and dcal is None:
                raise CTError("the CT is in HU and has no calibration: --calibration internal (phantomless) or "
                              "--calibration PHANTOM.json (CLI), or [material.calibration] method = 'internal' "
                              "or slope/intercept/unit")
            if dcal is not None:
                record.update(method="linear", **dcal.to_dict())
                say(f"calibration: linear, {record.get('slope'):.4g} x HU + {record.get('intercept'):.4g} "
                    f"{record.get('unit')}")
        method = material.mapping
        point_method = "element_average" if method in ("modulus_average", "element_average") else method
        if point_method == "quadrature":
            point_method = "element_average"  # the model keeps one density per element
        common = dict(calibration=dcal, ct_density_type=cal.ct_density_type, method=point_method,
                      n_steps=n_steps, outside=outside)
        rho = map_density(mesh, ct, density_type=law.density_type, qct_to_ash=cal.qct_to_ash, **common)
        qct = None
        if cal.ct_density_type == "qct" or cal.ct_unit == "HU":
            qct = map_density(mesh, ct, density_type="qct", **common).values
        if method == "modulus_average":
            e = map_young_modulus(mesh, ct, law, calibration=dcal, ct_density_type=cal.ct_density_type,
                                  qct_to_ash=cal.qct_to_ash, method="modulus_average", n_steps=n_steps,
                                  outside=outside).values
            base = law.young(rho.values)
            het = e / base
        else:
            e = law.young(rho.values)
            het = None
        say(f"mapping: {mesh.n_cells} elements, {method}")
        inputs = {str(ct_path): sha256_of(ct_path)} if ct_path else {}
        mapping = rho.report.to_dict() | {"n_elements_affected": rho.report.n_elements_affected}
        if metal is not None:
            mapping["metal"] = metal.to_dict()
        return cls(mesh, rho.values, e, law, law.density_type, law.poisson, qct, het, inputs, mapping, record)

    @classmethod
    def from_inputs(cls, mesh: Mesh, material, *, ct_path: str | os.PathLike | None = None,
                    ct_unit: str | None = None, mesh_path: str | os.PathLike | None = None,
                    outside: str = "nearest", missing_hint: str = "give a CT") -> "Model":
        """The model of a run: material from the CT at ``ct_path`` if given, else from the mesh's
        cell data ``density`` (g/cm^3 of the law's density type).

        ``ct_unit`` defaults to the case's ``[material.calibration] ct_unit``; the sha256 of the CT
        and of ``mesh_path`` are recorded in ``inputs``. Neither source -> LoadCaseError ending in
        ``missing_hint`` (how to give a CT in the caller's terms).
        """
        if ct_path is not None:
            ct = read_ct(ct_path, unit=ct_unit or material.calibration.ct_unit)
            model = cls.from_ct(mesh, ct, material, outside=outside, ct_path=ct_path)
        elif "density" in mesh.cell_data:
            model = cls.from_density(mesh, mesh.cell_data["density"], material.build())
        else:
            raise LoadCaseError("the material needs a CT or a mesh with cell data 'density' (g/cm^3 of the law's "
                                f"density type); {missing_hint}")
        if mesh_path is not None:
            model = replace(model, inputs={**model.inputs, str(mesh_path): sha256_of(mesh_path)})
        return model

    # ------------------------------------------------------------------ derived
    def with_density(self, density) -> "Model":
        """Same mesh and law, new density (g/cm^3 of ``density_type``); moduli recomputed.

        The CT mapping's within-element heterogeneity factor is kept, so an unchanged
        density gives exactly the baseline moduli. QCT density is scaled by the same
        per-element ratio (for vBMD reporting).
        """
        if self.law is None:
            raise MaterialError("this model has no material law (moduli were given directly); "
                                "build it with Model.from_density or Model.from_ct")
        rho = np.asarray(density, dtype=np.float64)
        if rho.shape != self.density.shape:
            raise MaterialError(f"density must have shape {self.density.shape}, got {rho.shape}")
        e = self.law.young(rho)
        if self.heterogeneity is not None:
            e = np.maximum(e * self.heterogeneity, self.law.e_min_mpa if self.law.e_min_mpa > 0 else 1e-9)
        qct = None
        if self.qct_density is not None:
            with np.errstate(invalid="ignore", divide="ignore"):
                ratio = np.where(self.density > 0, rho / self.density, 1.0)
            qct = self.qct_density * ratio
        with collecting() as found:
            if np.isfinite(rho).all() and np.isfinite(e).all():
                floor_warnings(e, rho, self.law, self.mesh.cell_volumes())
        kept = [w for w in self.warnings if w.name != "moduli_floored"]
        return replace(self, density=rho, young=e, qct_density=qct, warnings=merged(kept, found))

    @property
    def volumes_mm3(self) -> np.ndarray:
        return self.mesh.cell_volumes()

    def bone_mass_g(self, density=None) -> float:
        """Mass of bone mineral/tissue in g: sum density * volume (density type of the model)."""
        rho = self.density if density is None else np.asarray(density)
        return float(np.sum(rho * self.volumes_mm3) / 1000.0)

    def integral_vbmd_mg_cm3(self) -> float | None:
        """Volume-averaged QCT density over the whole bone, mg/cm^3 (None when unknown)."""
        if self.qct_density is None:
            return None
        v = self.volumes_mm3
        return float(np.sum(self.qct_density * v) / v.sum() * 1000.0)

    def trabecular_vbmd_mg_cm3(self, threshold_g_cm3: float = 0.35) -> float | None:
        """Volume-averaged QCT density of elements below ``threshold`` (trabecular compartment)."""
        if self.qct_density is None:
            return None
        v = self.volumes_mm3
        sel = self.qct_density < threshold_g_cm3
        if not sel.any():
            return None
        return float(np.sum(self.qct_density[sel] * v[sel]) / v[sel].sum() * 1000.0)
