"""Internal (phantomless) density calibration of a clinical CT in HU.

Michalski, Besler, Michalak & Boyd 2020 (Med Eng Phys 78:55): reference tissues sampled in
the scan give the effective beam energy and a linear HU -> K2HPO4 mg/cm^3 calibration
(:func:`internal_calibration`, :func:`sample_tissues`, :class:`InternalCalibration`).

The method in full (equations, parameters, choices, sources): ``docs/calibration.md``, section
``femur_fe.bone.internal_calibration``.
"""
from __future__ import annotations

import functools
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ..errors import CTError, MaterialError
from ..io.ct import CTImage, _sitk, read_labels, read_mask, suffix_of
from .calibration import DensityCalibration, HUCalibration, clamp_negative

log = logging.getLogger(__name__)

#: Reference tissues, in Ogo's order of labels 91..95 (adipose, air, blood, cortical bone, muscle).
TISSUES = ("air", "adipose", "muscle", "blood", "cortical_bone")
#: Tissues without which no calibration is made.
REQUIRED_TISSUES = ("air", "adipose", "muscle")
#: Ogo's ROI label values (``ogo/dat/OgoMasterLabels.py``: 91 Adipose, 92 Air, 93 Blood,
#: 94 Cortical Bone, 95 Skeletal Muscle).
ROI_LABELS = {"adipose": 91, "air": 92, "blood": 93, "cortical_bone": 94, "muscle": 95}
_ALIASES = {
    "air": "air", "adipose": "adipose", "fat": "adipose", "adipose_tissue": "adipose",
    "muscle": "muscle", "skeletal_muscle": "muscle", "blood": "blood",
    "cortical_bone": "cortical_bone", "bone": "cortical_bone", "cortical": "cortical_bone",
}

#: ICRU-44 elemental mass fractions (NIST, Hubbell & Seltzer 1995, NISTIR 5632, Table 2) [V: the same
#: fractions appear in two independent code bases that cite that table].
ICRU44_COMPOSITION: dict[str, dict[str, float]] = {
    "adipose": {"H": 0.114, "C": 0.598, "N": 0.007, "O": 0.278, "Na": 0.001, "S": 0.001, "Cl": 0.001},
    "blood": {"H": 0.102, "C": 0.110, "N": 0.033, "O": 0.745, "Na": 0.001, "P": 0.001, "S": 0.002,
              "Cl": 0.003, "K": 0.002, "Fe": 0.001},
    "cortical_bone": {"H": 0.034, "C": 0.155, "N": 0.042, "O": 0.435, "Na": 0.001, "Mg": 0.002,
                      "P": 0.103, "S": 0.003, "Ca": 0.225},
    "muscle": {"H": 0.102, "C": 0.143, "N": 0.034, "O": 0.710, "Na": 0.001, "P": 0.002, "S": 0.003,
               "Cl": 0.001, "K": 0.004},
}
#: ICRU-44 nominal mass densities, g/cm^3 (same NIST table); air from xraydb. Used only by
#: :func:`physical_tissue_hu` (forward model for tests and checks), not by the calibration.
ICRU44_DENSITY = {"adipose": 0.95, "blood": 1.06, "cortical_bone": 1.92, "muscle": 1.05}
#: Chemical formulas of the non-tissue materials (Ogo's definitions).
FORMULAS = {"water": "H2O", "k2hpo4": "K2HPO4", "triglyceride": "C55H98O6", "cha": "Ca10P6O26H2"}
MATERIALS = TISSUES + tuple(FORMULAS)
SECOND_COMPONENTS = ("triglyceride", "water")

#: Default energy search: 40-150 keV in 0.5 keV steps. Clinical CT runs at 70-150 kVp and its
#: effective energy lies below the tube voltage; Ogo's 1-200 keV grid has the same 0.5 keV step.
DEFAULT_ENERGIES_KEV = (40.0, 150.0, 0.5)
#: Smallest accepted R^2 of HU against mass attenuation at the effective energy. Ogo's five-tissue fit
#: on the VerSe L2 scan reaches 0.99897; a sample from the wrong tissue (contrast in blood, fat in
#: the muscle ROI, partial-volume bone) drops R^2 below 0.99.
DEFAULT_MIN_R2 = 0.99
#: Smallest number of voxels in a sampled tissue (after outlier trimming): the standard error of
#: the mean is then below 1/7 of the tissue's standard deviation.
DEFAULT_MIN_VOXELS = 50
#: Plausible mean HU of each tissue: Ogo's ``--tissue_checks`` windows (air -1000 -30/+20,
#: adipose -100 +-30, blood 20 +-40, muscle 30 +-35, cortical bone 1200 +-250) widened for
#: fatty muscle, lean fat and dense cortex at low tube voltage (up to the metal threshold). Outside the
#: window a required tissue is refused and an optional tissue is not used.
PLAUSIBLE_HU = {
    "air": (-1100.0, -850.0),
    "adipose": (-160.0, -40.0),
    "muscle": (-30.0, 100.0),
    "blood": (-20.0, 100.0),
    "cortical_bone": (950.0, 2500.0),
}
#: HU windows of the automatic sampler (voxels outside are not candidates): fat -190..-30 and skeletal
#: muscle -29..150 HU (Mitsiopoulos et al. 1998, J Appl Physiol 85:115, the windows of CT body
#: composition); air -1150..-800.
SAMPLING_HU = {"air": (-1150.0, -800.0), "adipose": (-190.0, -30.0), "muscle": (-29.0, 150.0),
               "blood": (-20.0, 150.0)}
METAL_HU = 2500.0
#: Smallest accepted mass-attenuation difference between K2HPO4 and the second component (cm^2/g) at
#: the effective energy. It is 0.033 at 97 keV and 0.010 at 120 keV, and the two cross near 144 keV;
#: below 0.01 an error of 1e-4 cm^2/g (0.06 %) in the fitted mass attenuation moves the K2HPO4 density
#: by more than 10 mg/cm^3.
MIN_SPLIT_CONTRAST = 0.01

_VESSEL_WORDS = ("aorta", "vena_cava", "iliac_artery", "iliac_vena", "heart", "portal_vein")
_MUSCLE_WORDS = ("autochthon", "iliopsoas", "psoas", "gluteus", "muscle", "quadriceps", "sartorius")
_BONE_WORDS = ("femur", "hip", "vertebra", "sacrum", "rib", "humerus", "scapula", "clavicula", "sternum",
               "skull", "bone", "patella", "tibia", "fibula", "pelvis", "costal", "spine", "coccyx")


# =============================================================================================
# attenuation data
# =============================================================================================
def _xraydb():
    try:
        import xraydb
    except ImportError as exc:  # pragma: no cover - dependency declared in pyproject
        raise MaterialError("internal calibration needs the xraydb package (pip install xraydb)") from exc
    return xraydb


@functools.lru_cache(maxsize=16)
def _table(energies_kev: tuple[float, ...]) -> dict[str, np.ndarray]:
    """Mass attenuation (cm^2/g) of every material at ``energies_kev``; cached (xraydb is sqlite)."""
    xdb = _xraydb()
    e_ev = np.asarray(energies_kev, dtype=np.float64) * 1000.0
    out: dict[str, np.ndarray] = {}
    for name, comp in ICRU44_COMPOSITION.items():
        total = sum(comp.values())
        out[name] = sum(w / total * np.asarray(xdb.mu_elam(el, e_ev), dtype=np.float64)
                        for el, w in comp.items())
    formula, rho_air = xdb.get_material("air")
    out["air"] = np.asarray(xdb.material_mu(formula, e_ev, density=rho_air), dtype=np.float64) / rho_air
    for name, formula in FORMULAS.items():
        out[name] = np.asarray(xdb.material_mu(formula, e_ev, density=1.0), dtype=np.float64)
    for arr in out.values():
        arr.setflags(write=False)
    return out


def energy_grid(start_kev: float = DEFAULT_ENERGIES_KEV[0], stop_kev: float = DEFAULT_ENERGIES_KEV[1],
                step_kev: float = DEFAULT_ENERGIES_KEV[2]) -> np.ndarray:
    """Candidate effective energies, keV, ``start..stop`` inclusive in ``step`` steps."""
    if not (0 < start_kev < stop_kev) or step_kev <= 0:
        raise MaterialError(f"energy grid needs 0 < start < stop and step > 0 (keV), got {start_kev}, "
                            f"{stop_kev}, {step_kev}")
    n = round((stop_kev - start_kev) / step_kev) + 1
    return start_kev + step_kev * np.arange(n)


def mass_attenuation(material: str, energies_kev) -> np.ndarray:
    """Mass attenuation coefficient mu/rho (cm^2/g) of a material at energies in keV (xraydb).

    ``material``: one of :data:`MATERIALS` (tissues by their ICRU-44 composition, ``air``, ``water``,
    ``k2hpo4``, ``triglyceride``, ``cha``) or an alias such as ``"fat"``.
    """
    name = _ALIASES.get(str(material).lower(), str(material).lower())
    if name not in MATERIALS:
        raise MaterialError(f"unknown material {material!r}; known: {', '.join(MATERIALS)}")
    e = np.atleast_1d(np.asarray(energies_kev, dtype=np.float64))
    if e.ndim != 1 or not np.all(np.isfinite(e)) or np.any(e < 1.0):
        raise MaterialError(f"energies must be finite keV values of at least 1 keV, got {energies_kev!r}")
    return _table(tuple(float(x) for x in e))[name].copy()


def physical_tissue_hu(energy_kev: float) -> dict[str, float]:
    """HU of the ICRU-44 tissues at nominal density for a monoenergetic beam of ``energy_kev``.

    ``HU = 1000 (rho mu/rho / mu_water - 1)``: a forward model used to make synthetic scans and to
    check samples, not part of the calibration.
    """
    _, rho_air = _xraydb().get_material("air")
    dens = dict(ICRU44_DENSITY, air=rho_air)
    return {t: float(mixture_hu(energy_kev, {t: dens[t]})) for t in TISSUES}


def mixture_hu(energy_kev: float, partial_densities: Mapping[str, Any]) -> np.ndarray:
    """HU of voxels holding materials at given partial densities, for a monoenergetic beam.

    ``HU = 1000 (sum_m rho_m (mu/rho)_m / (mu/rho)_water - 1)`` with water at 1 g/cm^3 and
    ``partial_densities`` material -> g/cm^3 (scalars or arrays of one shape; materials of
    :data:`MATERIALS`). A forward model for synthetic scans and checks: e.g. a K2HPO4 solution of
    ``k`` g/cm^3 in the Mindways model is ``{"k2hpo4": k, "water": 0.9996 - 0.2174 k}``.
    """
    tab = _table((float(energy_kev),))
    mu_w = float(tab["water"][0])
    total = None
    for name, rho in partial_densities.items():
        key = _ALIASES.get(str(name).lower(), str(name).lower())
        if key not in tab:
            raise MaterialError(f"unknown material {name!r}; known: {', '.join(MATERIALS)}")
        term = np.asarray(rho, dtype=np.float64) * float(tab[key][0])
        total = term if total is None else total + term
    if total is None:
        raise MaterialError("mixture_hu needs at least one material")
    return 1000.0 * (total / mu_w - 1.0)


# =============================================================================================
# result types
# =============================================================================================
@dataclass(frozen=True)
class TissueSample:
    """Mean HU of one reference tissue and where it came from.

    Attributes
    ----------
    name : one of :data:`TISSUES`
    mean_hu, std_hu : HU (NaN when not found)
    n_voxels : voxels in the mean (0 for a value given directly)
    used : whether the tissue entered the fit
    source : ``"automatic"``, ``"roi mask"``, ``"given"`` or ``"not found"``
    note : why it is not used, or how it was sampled
    """

    name: str
    mean_hu: float
    std_hu: float
    n_voxels: int
    used: bool
    source: str
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"mean_hu": _num(self.mean_hu), "std_hu": _num(self.std_hu), "n_voxels": int(self.n_voxels),
                "used": bool(self.used), "source": self.source, "note": self.note}


def _num(x: float) -> float | None:
    return None if not np.isfinite(x) else float(x)


@dataclass(frozen=True, eq=False)
class InternalCalibration:
    """Result of :func:`internal_calibration` / :func:`fit_internal_calibration`.

    Attributes
    ----------
    tissues : name -> :class:`TissueSample` (all of :data:`TISSUES`, used or not)
    effective_energy_kev : energy with the largest R^2, keV
    r_squared : R^2 of HU against mass attenuation at that energy
    energies_kev : (start, stop, step) of the energy search, keV
    mass_attenuation_cm2_g : mu/rho of every material at the effective energy, cm^2/g
    hu_to_mass_attenuation_slope, hu_to_mass_attenuation_intercept : cm^2/g per HU, cm^2/g
    hu_to_density_slope, hu_to_density_intercept : g/cm^3 per HU, g/cm^3 ("Archimedean" density)
    second_component : ``"triglyceride"`` (Ogo) or ``"water"``
    linear_hu : HU values over which :meth:`density_calibration` fits its straight line by default:
        the 1st..99th percentiles of the bone-mask HUs (so the line is a least-squares fit over the
        bone voxels' HU distribution), or 0..1000 HU evenly
    attenuation_source : description of the attenuation data
    roi_labels : uint8 [i, j, k] label image of the voxels sampled (Ogo labels), or None
    """

    tissues: Mapping[str, TissueSample]
    effective_energy_kev: float
    r_squared: float
    energies_kev: tuple[float, float, float]
    mass_attenuation_cm2_g: Mapping[str, float]
    hu_to_mass_attenuation_slope: float
    hu_to_mass_attenuation_intercept: float
    hu_to_density_slope: float
    hu_to_density_intercept: float
    second_component: str = "triglyceride"
    linear_hu: tuple[float, ...] = tuple(np.linspace(0.0, 1000.0, 99).tolist())
    attenuation_source: str = ""
    roi_labels: np.ndarray | None = field(default=None, repr=False)
    _geometry: tuple | None = field(default=None, repr=False)

    #: the calibration gives K2HPO4-equivalent QCT density (:class:`~femur_fe.bone.calibration.HUCalibration`)
    mineral = "k2hpo4"
    density_type = "qct"

    # ------------------------------------------------------------------ conversions
    def mass_attenuation_of_hu(self, hu) -> np.ndarray:
        """Fitted mass attenuation (cm^2/g) of HU values."""
        return self.hu_to_mass_attenuation_slope * np.asarray(hu, dtype=np.float64) + \
            self.hu_to_mass_attenuation_intercept

    def archimedean_density(self, hu) -> np.ndarray:
        """Fitted total (Archimedean) density (g/cm^3) of HU values."""
        return self.hu_to_density_slope * np.asarray(hu, dtype=np.float64) + self.hu_to_density_intercept

    def k2hpo4_density(self, hu) -> np.ndarray:
        """K2HPO4-equivalent density (g/cm^3) of HU values, two-component model (quadratic in HU).

        Ogo ``InternalCalibration.predict`` (there in mg/cm^3; the voxel volume cancels).
        """
        u2 = self.mass_attenuation_cm2_g[self.second_component]
        uk = self.mass_attenuation_cm2_g["k2hpo4"]
        return self.archimedean_density(hu) * (self.mass_attenuation_of_hu(hu) - u2) / (uk - u2)

    def k2hpo4_mg(self, hu) -> np.ndarray:
        """K2HPO4-equivalent density in mg/cm^3 of HU values (see :meth:`k2hpo4_density`)."""
        return 1000.0 * self.k2hpo4_density(hu)

    def density(self, hu, *, clamp: bool = True) -> np.ndarray:
        """K2HPO4-equivalent density (g/cm^3) of HU values on the two-component curve, negatives
        clamped to 0 with a warning if ``clamp`` (the signature of :meth:`DensityCalibration.density`)."""
        rho = self.k2hpo4_density(hu)
        return clamp_negative(rho, what="internal-calibration K2HPO4") if clamp else rho

    def linear_fit(self, hu_range: tuple[float, float] | None = None) -> dict[str, Any]:
        """Straight line through :meth:`k2hpo4_density` with the smallest relative error.

        Fitted over ``hu_range`` (evenly spaced HU) when given, else over :attr:`linear_hu` (by default
        the percentiles of the bone voxels' HU, i.e. weighted like the voxels), by least squares of the
        relative error ``(line - curve) / max(curve, 50 mg/cm^3)``: a relative density error is what
        the density-modulus power law turns into a modulus error. Returns slope (g/cm^3 per HU),
        intercept (g/cm^3), the HU range, and the largest deviation of the line from the curve over
        those HUs in mg/cm^3 and in percent (where the curve is at least 50 mg/cm^3).
        """
        if hu_range is None:
            h = np.asarray(self.linear_hu, dtype=np.float64)
        else:
            lo, hi = float(hu_range[0]), float(hu_range[1])
            if not (np.isfinite(lo) and np.isfinite(hi) and hi > lo):
                raise MaterialError(f"hu_range must be (low, high) with high > low in HU, got {hu_range!r}")
            h = np.linspace(lo, hi, 401)
        k = self.k2hpo4_density(h)
        w = 1.0 / np.maximum(np.abs(k), 0.05)
        a = np.column_stack([h, np.ones_like(h)]) * w[:, None]
        slope, intercept = np.linalg.lstsq(a, k * w, rcond=None)[0]
        dev = slope * h + intercept - k
        big = k >= 0.05
        rel = 100.0 * float(np.max(np.abs(dev[big] / k[big]))) if big.any() else float("nan")
        return {"slope": float(slope), "intercept": float(intercept), "hu_range": [float(h.min()), float(h.max())],
                "weighting": "even in HU" if hu_range is not None or self._even_linear_hu() else
                "bone-voxel HU percentiles",
                "max_deviation_mg_cm3": 1000.0 * float(np.max(np.abs(dev))), "max_deviation_percent": rel}

    def _even_linear_hu(self) -> bool:
        d = np.diff(np.asarray(self.linear_hu, dtype=np.float64))
        return bool(d.size and np.allclose(d, d[0]))

    def density_calibration(self, hu_range: tuple[float, float] | None = None) -> DensityCalibration:
        """The straight line of :meth:`linear_fit` as a :class:`DensityCalibration` (HU -> K2HPO4 g/cm^3).

        By default the line is fitted over the bone voxels' HU distribution (:attr:`linear_hu`), so it
        is closest where most bone voxels are; the curve is convex, so the line under-estimates the
        densest (cortical) voxels. The largest deviation over the range is logged and kept in the
        ``source`` text; :meth:`density` gives the curve itself.
        """
        fit = self.linear_fit(hu_range)
        lo, hi = fit["hu_range"]
        msg = (f"internal calibration (Michalski 2020 / Ogo): {self.effective_energy_kev:g} keV, "
               f"R2 = {self.r_squared:.6f}, tissues {', '.join(self.used_tissues)}; straight line through the "
               f"two-component curve over {lo:.0f}..{hi:.0f} HU ({fit['weighting']}), max deviation "
               f"{fit['max_deviation_mg_cm3']:.1f} mg/cm3 ({fit['max_deviation_percent']:.1f} %)")
        if fit["max_deviation_percent"] > 5.0:
            log.warning("internal calibration: the straight HU->K2HPO4 line deviates from the two-component "
                        "curve by up to %.1f %% (%.1f mg/cm3) over %.0f..%.0f HU; the curve itself is "
                        "InternalCalibration.density", fit["max_deviation_percent"], fit["max_deviation_mg_cm3"],
                        lo, hi)
        return DensityCalibration(fit["slope"], fit["intercept"], "k2hpo4", msg)

    # ------------------------------------------------------------------ reporting
    @property
    def used_tissues(self) -> tuple[str, ...]:
        return tuple(t for t in TISSUES if self.tissues[t].used)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable summary (for summary.json); units in the keys or a ``unit`` field."""
        lin = self.linear_fit()
        return {
            "method": "internal",
            "reference": "Michalski et al. 2020, Med Eng Phys 78:55 (Ogo InternalCalibration)",
            "tissues": {t: self.tissues[t].to_dict() for t in TISSUES},
            "tissues_used": list(self.used_tissues),
            "effective_energy_kev": float(self.effective_energy_kev),
            "r_squared": float(self.r_squared),
            "energy_search_kev": [float(x) for x in self.energies_kev],
            "mass_attenuation_cm2_g": {k: float(v) for k, v in self.mass_attenuation_cm2_g.items()},
            "hu_to_mass_attenuation": {"slope": float(self.hu_to_mass_attenuation_slope),
                                       "intercept": float(self.hu_to_mass_attenuation_intercept),
                                       "unit": "cm2/g (slope per HU)"},
            "hu_to_density": {"slope": float(self.hu_to_density_slope),
                              "intercept": float(self.hu_to_density_intercept), "unit": "g/cm3 (slope per HU)"},
            "second_component": self.second_component,
            "hu_to_k2hpo4_linear": {"slope": lin["slope"], "intercept": lin["intercept"],
                                    "unit": "g/cm3 (slope per HU)", "hu_range": lin["hu_range"],
                                    "weighting": lin["weighting"],
                                    "max_deviation_mg_cm3": lin["max_deviation_mg_cm3"],
                                    "max_deviation_percent": lin["max_deviation_percent"]},
            "attenuation_data": self.attenuation_source,
            "linear_fit_hu": [float(x) for x in self.linear_hu],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "InternalCalibration":
        """Rebuild the calibration from its :meth:`to_dict` record (e.g. read back from summary.json).

        The curve (:meth:`density`) needs only the recorded line coefficients and mass attenuations,
        so the rebuilt calibration gives the same densities as the original to the last digit. The
        recorded straight line (``hu_to_k2hpo4_linear``), when present, must be reproduced from the
        record (relative 1e-9), else MaterialError: the record was edited inconsistently. The ROI
        label image is not part of the record.
        """
        if not isinstance(data, Mapping):
            raise MaterialError(f"an internal calibration record is a mapping (summary.json 'calibration'), got "
                                f"{type(data).__name__}")
        if data.get("method") != "internal":
            raise MaterialError(f"not an internal calibration record: method = {data.get('method')!r} (expected "
                                "'internal'); a phantom line is read with DensityCalibration.from_dict")

        def get(*keys: str):
            node: Any = data
            for k in keys:
                if not isinstance(node, Mapping) or k not in node:
                    raise MaterialError(f"internal calibration record lacks {'.'.join(keys)!r}")
                node = node[k]
            return node

        def num(*keys: str) -> float:
            v = get(*keys)
            try:
                x = float(v)
            except (TypeError, ValueError):
                raise MaterialError(f"internal calibration record: {'.'.join(keys)} must be a number, got {v!r}") from None
            if not np.isfinite(x):
                raise MaterialError(f"internal calibration record: {'.'.join(keys)} must be finite, got {v!r}")
            return x

        second = str(get("second_component"))
        if second not in SECOND_COMPONENTS:
            raise MaterialError(f"internal calibration record: second_component must be one of {SECOND_COMPONENTS}, "
                                f"got {second!r}")
        mu = {str(k): float(v) for k, v in dict(get("mass_attenuation_cm2_g")).items()}
        for k in ("k2hpo4", second):
            if k not in mu or not np.isfinite(mu[k]) or mu[k] <= 0:
                raise MaterialError(f"internal calibration record: mass_attenuation_cm2_g lacks a positive {k!r}")
        tissues: dict[str, TissueSample] = {}
        for t in TISSUES:
            rec = dict(get("tissues", t))

            def _f(key: str) -> float:
                v = rec.get(key)
                return float("nan") if v is None else float(v)

            tissues[t] = TissueSample(t, _f("mean_hu"), _f("std_hu"), int(rec.get("n_voxels", 0)),
                                      bool(rec.get("used", False)), str(rec.get("source", "")),
                                      str(rec.get("note", "")))
        search = [float(x) for x in get("energy_search_kev")]
        if len(search) != 3:
            raise MaterialError("internal calibration record: energy_search_kev must be [start, stop, step] in keV")
        lin_hu = data.get("linear_fit_hu")
        cal = cls(
            tissues=tissues, effective_energy_kev=num("effective_energy_kev"), r_squared=num("r_squared"),
            energies_kev=(search[0], search[1], search[2]), mass_attenuation_cm2_g=mu,
            hu_to_mass_attenuation_slope=num("hu_to_mass_attenuation", "slope"),
            hu_to_mass_attenuation_intercept=num("hu_to_mass_attenuation", "intercept"),
            hu_to_density_slope=num("hu_to_density", "slope"), hu_to_density_intercept=num("hu_to_density", "intercept"),
            second_component=second,
            linear_hu=tuple(np.linspace(0.0, 1000.0, 99).tolist()) if lin_hu is None else
            tuple(float(x) for x in lin_hu),
            attenuation_source=str(data.get("attenuation_data", "")))
        rec_line = data.get("hu_to_k2hpo4_linear")
        if isinstance(rec_line, Mapping) and "slope" in rec_line:
            lin = cal.linear_fit()
            for key in ("slope", "intercept"):
                want = float(rec_line[key])
                if not np.isclose(lin[key], want, rtol=1e-9, atol=1e-12):
                    raise MaterialError(f"internal calibration record is inconsistent: hu_to_k2hpo4_linear.{key} = "
                                        f"{want!r} but the recorded curve and linear_fit_hu give {lin[key]!r}")
        return cal

    def roi_label_image(self) -> np.ndarray:
        """uint8 [i, j, k] image of the sampled voxels (91 adipose, 92 air, 93 blood, 94 cortical
        bone, 95 muscle; 0 elsewhere). CTError when the tissue HUs were given directly."""
        if self.roi_labels is None:
            raise CTError("no ROI label image: the tissue HUs were given directly, not sampled from a CT")
        return self.roi_labels

    def write_roi_labels(self, path: str | os.PathLike) -> Path:
        """Write :meth:`roi_label_image` on the CT grid (NIfTI/NRRD/MHA), atomically; returns the path."""
        labels = self.roi_label_image()

        path = Path(path)
        if suffix_of(path) not in (".nii", ".nii.gz", ".nrrd", ".mha", ".mhd"):
            raise CTError(f"{path}: write the ROI labels as .nii, .nii.gz, .nrrd, .mha or .mhd")
        spacing, origin, direction = self._geometry  # type: ignore[misc]
        sitk = _sitk()
        img = sitk.GetImageFromArray(np.ascontiguousarray(labels.transpose(2, 1, 0)))
        img.SetSpacing(tuple(float(s) for s in spacing))
        img.SetOrigin(tuple(float(s) for s in origin))
        img.SetDirection(tuple(float(s) for s in np.asarray(direction).ravel()))
        path.parent.mkdir(parents=True, exist_ok=True)
        tmpdir = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
        try:
            sitk.WriteImage(img, str(tmpdir / path.name), True)
            for f in sorted(tmpdir.iterdir(), key=lambda p: p.name == path.name):
                os.replace(f, path.parent / f.name)
        finally:
            shutil.rmtree(tmpdir, ignore_errors=True)
        return path

    def summary_lines(self) -> list[str]:
        """Human-readable lines: tissue table, energy, R^2, fitted lines."""
        lines = [f"{'tissue':>14s} {'mean HU':>9s} {'std':>7s} {'voxels':>7s}  used  source"]
        for t in TISSUES:
            s = self.tissues[t]
            mean = f"{s.mean_hu:9.1f}" if np.isfinite(s.mean_hu) else f"{'-':>9s}"
            std = f"{s.std_hu:7.1f}" if np.isfinite(s.std_hu) else f"{'-':>7s}"
            lines.append(f"{t:>14s} {mean} {std} {s.n_voxels:7d}  {'yes' if s.used else 'no ':4s}  {s.source}"
                         + (f" ({s.note})" if s.note else ""))
        lin = self.linear_fit()
        lo, hi = lin["hu_range"]
        lines += [
            f"effective energy {self.effective_energy_kev:g} keV, R2 = {self.r_squared:.6f}",
            (f"HU -> mu/rho: {self.hu_to_mass_attenuation_slope:.6g} HU + "
             f"{self.hu_to_mass_attenuation_intercept:.6f} cm2/g"),
            f"HU -> density: {self.hu_to_density_slope:.6g} HU + {self.hu_to_density_intercept:.6f} g/cm3",
            (f"HU -> K2HPO4 line over {lo:.0f}..{hi:.0f} HU: {1000 * lin['slope']:.4f} HU + "
             f"{1000 * lin['intercept']:.2f} mg/cm3 (max deviation {lin['max_deviation_mg_cm3']:.1f} mg/cm3, "
             f"{lin['max_deviation_percent']:.1f} %)"),
        ]
        return lines


# =============================================================================================
# the fit
# =============================================================================================
def _canonical(name: str) -> str:
    key = str(name).strip().lower().replace(" ", "_").replace("-", "_")
    if key not in _ALIASES:
        raise MaterialError(f"unknown tissue {name!r}; use one of {', '.join(TISSUES)}")
    return _ALIASES[key]


def _r_squared_per_energy(hu: np.ndarray, u: np.ndarray) -> np.ndarray:
    """R^2 of the line hu -> u[e, :] for every row e (Pearson r squared, as scipy linregress)."""
    hc = hu - hu.mean()
    uc = u - u.mean(axis=1, keepdims=True)
    num = (uc @ hc) ** 2
    den = (hc @ hc) * np.einsum("ij,ij->i", uc, uc)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / den, 0.0)


def fit_internal_calibration(tissues: Mapping[str, TissueSample | float], *,
                             energies_kev=None, attenuation: Mapping[str, np.ndarray] | None = None,
                             min_r2: float = DEFAULT_MIN_R2, second_component: str = "triglyceride",
                             linear_hu=None,
                             roi_labels: np.ndarray | None = None, geometry: tuple | None = None,
                             check_plausible: bool = True, energy_kev: float | None = None) -> InternalCalibration:
    """Fit the internal calibration to tissue HUs (Michalski 2020 / Ogo ``InternalCalibration.fit``).

    Parameters
    ----------
    tissues : tissue name -> mean HU (float) or :class:`TissueSample`. Samples with ``used=False``
        are reported but not fitted. Air, adipose and muscle are required; blood and cortical bone
        are optional.
    energies_kev : candidate energies, keV (default :func:`energy_grid`, 40-150 keV, 0.5 keV step)
    attenuation : material -> mu/rho (cm^2/g) at ``energies_kev`` (default: xraydb, see
        :func:`mass_attenuation`); needs the used tissues, ``water``, ``k2hpo4`` and the second
        component.
    min_r2 : refuse a best fit with R^2 below this
    second_component : ``"triglyceride"`` (Ogo) or ``"water"``
    linear_hu : HU values over which :meth:`InternalCalibration.density_calibration` fits its line by
        default (default 0..1000 HU evenly)
    check_plausible : refuse a required tissue (and drop an optional one) whose mean HU is outside
        :data:`PLAUSIBLE_HU`
    energy_kev : the effective energy when it is known (e.g. a virtual monoenergetic image of a
        dual-energy scanner), keV: no search; R^2 is reported at that energy

    Raises
    ------
    MaterialError : a required tissue missing or implausible, R^2 < ``min_r2``, best energy at the
        edge of the search range, unknown tissue or second component.
    """
    if second_component not in SECOND_COMPONENTS:
        raise MaterialError(f"second_component must be one of {SECOND_COMPONENTS}, got {second_component!r}")
    samples: dict[str, TissueSample] = {}
    for name, value in tissues.items():
        t = _canonical(name)
        if isinstance(value, TissueSample):
            samples[t] = value if value.name == t else TissueSample(t, value.mean_hu, value.std_hu,
                                                                    value.n_voxels, value.used, value.source,
                                                                    value.note)
        else:
            v = float(value)
            if not np.isfinite(v):
                raise MaterialError(f"tissue HU of {t} must be a finite number, got {value!r}")
            samples[t] = TissueSample(t, v, float("nan"), 0, True, "given")
    for t in TISSUES:
        samples.setdefault(t, TissueSample(t, float("nan"), float("nan"), 0, False, "not found",
                                           "not sampled and not given"))
    if check_plausible:
        for t in TISSUES:
            s = samples[t]
            lo, hi = PLAUSIBLE_HU[t]
            if s.used and not lo <= s.mean_hu <= hi:
                if t in REQUIRED_TISSUES:
                    raise MaterialError(f"{t} mean {s.mean_hu:.1f} HU ({s.source}) is outside the plausible "
                                        f"{lo:g}..{hi:g} HU: the sample is not {t}; give its HU "
                                        f"(--set material.calibration.tissue_hu.{t}=HU) or an ROI mask for it")
                note = f"mean {s.mean_hu:.1f} HU outside the plausible {lo:g}..{hi:g} HU"
                if t == "blood" and s.mean_hu > hi:
                    note += " (contrast-enhanced?)"
                elif t == "cortical_bone" and s.mean_hu < lo:
                    note += " (partial volume: voxels larger than the cortex)"
                log.warning("internal calibration: %s not used: %s", t, note)
                samples[t] = TissueSample(t, s.mean_hu, s.std_hu, s.n_voxels, False, s.source, note)
    for t in REQUIRED_TISSUES:
        if not samples[t].used:
            raise MaterialError(f"internal calibration needs {t}: {samples[t].note or 'not used'}; give "
                                f"tissue_hu={{'{t}': ...}} or an ROI mask for it")
    used = [t for t in TISSUES if samples[t].used]

    if energy_kev is not None:
        if energies_kev is not None or attenuation is not None:
            raise MaterialError("give either energy_kev (a known effective energy) or energies_kev/attenuation "
                                "(an energy search), not both")
        if not (np.isfinite(energy_kev) and 1.0 <= float(energy_kev) <= 1000.0):
            raise MaterialError(f"energy_kev must be a finite energy in keV (1..1000), got {energy_kev!r}")
        energies = np.array([float(energy_kev)])
    elif energies_kev is None:
        energies = energy_grid()
    else:
        energies = np.asarray(energies_kev, dtype=np.float64).ravel()
        if energies.size < 3 or np.any(np.diff(energies) <= 0):
            raise MaterialError("energies_kev must be at least 3 increasing energies in keV")
    if attenuation is None:
        attenuation = _table(tuple(float(x) for x in energies))
        source = (f"xraydb {getattr(_xraydb(), '__version__', '?')} (Elam, Ravel & Sieber 2002); ICRU-44 "
                  "tissue compositions (NIST Table 2), xraydb dry air, chemical formulas for water, K2HPO4, "
                  "triglyceride C55H98O6 and CHA")
    else:
        source = "user-supplied mass attenuation table"
    needed = set(used) | {"water", "k2hpo4", second_component}
    missing = needed - set(attenuation)
    if missing:
        raise MaterialError(f"attenuation table lacks {sorted(missing)}")
    table = {k: np.asarray(v, dtype=np.float64).ravel() for k, v in attenuation.items()}
    for k, v in table.items():
        if v.shape != energies.shape:
            raise MaterialError(f"attenuation[{k!r}] has {v.size} values for {energies.size} energies")

    hu = np.array([samples[t].mean_hu for t in used])
    u = np.column_stack([table[t] for t in used])          # (n_energy, n_tissue)
    r2 = _r_squared_per_energy(hu, u)
    best = int(np.argmax(r2))                                # first maximum, as Ogo's strict '>'
    e_best, r2_best = float(energies[best]), float(r2[best])
    lo_e, hi_e = float(energies[0]), float(energies[-1])
    step = float(np.median(np.diff(energies))) if energies.size > 1 else 0.0
    if energies.size > 1 and (best == 0 or best == energies.size - 1):
        raise MaterialError(f"internal calibration: the best effective energy {e_best:g} keV is at the edge of "
                            f"the search range {lo_e:g}..{hi_e:g} keV, so it is not a maximum of R2; check the "
                            f"tissue HUs ({_fmt(samples, used)}) or widen energies_kev")
    if r2_best < min_r2:
        raise MaterialError(f"internal calibration: R2 = {r2_best:.5f} of HU against mass attenuation is below "
                            f"{min_r2:g} (tissues {_fmt(samples, used)}); one tissue sample is wrong (contrast, "
                            "partial volume, artefact): inspect the ROI labels or give tissue_hu")
    mu = {k: float(v[best]) for k, v in table.items()}
    u_used = np.array([mu[t] for t in used])
    s_u, i_u = np.polyfit(hu, u_used, 1)
    mu_w = mu["water"]
    rho = (hu / 1000.0 * mu_w + mu_w) / u_used              # Ogo _determine_hu_to_density (water 1 g/cm3)
    s_r, i_r = np.polyfit(hu, rho, 1)
    contrast = mu["k2hpo4"] - mu[second_component]
    if contrast < MIN_SPLIT_CONTRAST:
        raise MaterialError(f"internal calibration: at the effective energy {e_best:g} keV K2HPO4 and "
                            f"{second_component} differ by {contrast:.4f} cm2/g in mass attenuation (< "
                            f"{MIN_SPLIT_CONTRAST}; they cross near 144 keV), so the two-component split would "
                            "amplify errors tenfold or more; check the tissue HUs or use a phantom calibration")
    return InternalCalibration(
        tissues=samples, effective_energy_kev=e_best, r_squared=r2_best, energies_kev=(lo_e, hi_e, step),
        mass_attenuation_cm2_g=mu, hu_to_mass_attenuation_slope=float(s_u),
        hu_to_mass_attenuation_intercept=float(i_u), hu_to_density_slope=float(s_r),
        hu_to_density_intercept=float(i_r), second_component=second_component,
        linear_hu=tuple(np.linspace(0.0, 1000.0, 99).tolist()) if linear_hu is None else
        tuple(float(x) for x in np.asarray(linear_hu, dtype=np.float64).ravel()), attenuation_source=source,
        roi_labels=roi_labels, _geometry=geometry)


def _fmt(samples: Mapping[str, TissueSample], used: Sequence[str]) -> str:
    return ", ".join(f"{t} {samples[t].mean_hu:.0f}" for t in used)


# =============================================================================================
# automatic sampling
# =============================================================================================
@dataclass(frozen=True)
class SamplingOptions:
    """Parameters of :func:`sample_tissues` (lengths in mm, values in HU)."""

    body_threshold_hu: float = -500.0     # midway between air (-1000) and fat (-100)
    metal_hu: float = METAL_HU
    metal_margin_mm: float = 10.0         # 3-D dilation around metal voxels
    streak_margin_mm: float = 10.0        # axial slices within this of a metal slice are skipped
    edge_margin_mm: float = 10.0          # in-plane distance from the image border
    air_clearance_mm: float = 10.0        # air voxels this far from any object (body, table, tubes)
    skin_mm: float = 4.0                  # subcutaneous shell starts below the skin
    fat_shell_mm: float = 30.0            # ... and is this thick
    muscle_depth_mm: float = 10.0         # muscle voxels at least this deep inside the body
    bone_clearance_mm: float = 6.0        # soft-tissue samples this far from bone
    gas_clearance_mm: float = 10.0        # muscle this far from gas inside the body (bowel, lung)
    muscle_near_bone_mm: float = 40.0     # last resort: muscle within this of a bone mask
    paraspinal_lateral_mm: float = 50.0   # paraspinal ROI: within this of the vertebra's mid-plane ...
    paraspinal_reach_mm: float = 50.0     # ... and of the vertebra mask, posterior to its centroid
    gluteal_reach_mm: float = 60.0        # gluteal ROI: within this of the femur mask, posterior to
    gluteal_medial_mm: float = 20.0       # the femur centroid and at most this medial of it
    max_bimodality: float = 5.0 / 9.0     # a muscle region with a larger bimodality coefficient is refused
    bone_hu: float = 300.0                # bone by threshold where no bone mask is given
    cortical_volume_mm3: float = 900.0    # Ogo get_cortical_bone: 899 densest voxels below the
    cortical_skip_mm3: float = 50.0       # 50 densest (at 1 mm voxels)
    trim_mad: float = 3.0                 # samples trimmed to median +- trim_mad * 1.4826 MAD


def _classify_masks(masks, ct, named: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """Group masks into ``bone``, ``vessel``, ``muscle`` and ``other`` boolean arrays; when ``named`` is
    a dict, every bone and muscle mask is also put there under its (lower-case) name."""

    groups = {g: np.zeros(ct.shape, dtype=bool) for g in ("bone", "vessel", "muscle", "other")}
    if masks is None:
        return groups
    if isinstance(masks, Mapping):
        items = list(masks.items())
    elif isinstance(masks, (str, os.PathLike, np.ndarray)):
        items = [("bone", masks)]
    else:
        items = [(f"bone_{i}", m) for i, m in enumerate(masks)]
    for name, m in items:
        key = Path(str(name)).name.lower()
        # an empty mask (a structure outside the field of view) is allowed: it selects nothing
        arr = read_labels(m, reference=ct) != 0 if isinstance(m, (str, os.PathLike)) else _as_mask(m, ct, key)
        if any(w in key for w in _VESSEL_WORDS):
            groups["vessel"] |= arr
        elif any(w in key for w in _MUSCLE_WORDS):
            groups["muscle"] |= arr
            if named is not None:
                named[key] = named.get(key, False) | arr
        elif any(w in key for w in _BONE_WORDS):
            groups["bone"] |= arr
            if named is not None:
                named[key] = named.get(key, False) | arr
        else:
            groups["other"] |= arr
    return groups


def _as_mask(m, ct, name: str) -> np.ndarray:
    arr = np.asarray(m)
    if arr.shape != ct.shape:
        raise CTError(f"mask {name!r} has shape {arr.shape} but the CT has {ct.shape}; masks must be "
                      "[i, j, k] arrays on the CT grid (or label files)")
    return arr != 0


def _dist(mask: np.ndarray, spacing) -> np.ndarray:
    """Distance (mm) of every voxel to the nearest True voxel of ``mask`` (inf when none)."""
    from scipy.ndimage import distance_transform_edt

    if not mask.any():
        return np.full(mask.shape, np.inf)
    return distance_transform_edt(~mask, sampling=spacing)


def _depth(mask: np.ndarray, spacing) -> np.ndarray:
    """Distance (mm) of voxels inside ``mask`` to the nearest voxel outside (0 outside)."""
    from scipy.ndimage import distance_transform_edt

    return distance_transform_edt(mask, sampling=spacing)


def _largest_component(mask: np.ndarray) -> np.ndarray:
    from scipy.ndimage import label

    lab, n = label(mask)
    if n <= 1:
        return mask.copy()
    counts = np.bincount(lab.ravel())
    counts[0] = 0
    return lab == int(np.argmax(counts))


def _interior(mask: np.ndarray) -> np.ndarray:
    """Voxels of ``mask`` whose 6 face neighbours are all in ``mask`` (no partial volume)."""
    from scipy.ndimage import binary_erosion

    return binary_erosion(mask, border_value=0)


def body_mask(ct, threshold_hu: float = -500.0, *, axial_axis: int | None = None) -> np.ndarray:
    """Body outline: threshold, opening (removes the table and thin blankets), largest component,
    holes filled in 3-D and in every axial slice (bowel gas and lungs become body)."""
    from scipy.ndimage import binary_fill_holes

    hu = np.nan_to_num(np.asarray(ct.array, dtype=np.float32), nan=-1000.0)
    obj = hu > threshold_hu
    sp = ct.spacing
    r = max(3.0, float(np.max(sp)))          # opening radius: at least one voxel, 3 mm
    opened = _dist(~obj, sp) > r              # erosion by r ...
    opened = _dist(opened, sp) <= r           # ... then dilation by r
    body = _largest_component(opened & obj if opened.any() else obj)
    if not body.any():
        raise CTError("no body found in the CT (no voxel above "
                      f"{threshold_hu:g} HU); is it a CT in HU?")
    body = binary_fill_holes(body)
    ax = _axial_axis(ct) if axial_axis is None else axial_axis
    moved = np.moveaxis(body, ax, 0)
    for s in range(moved.shape[0]):
        if moved[s].any():
            moved[s] = binary_fill_holes(moved[s])
    return body


def _axial_axis(ct) -> int:
    """Image axis closest to the patient's superior-inferior (world z) direction."""
    return int(np.argmax(np.abs(np.asarray(ct.direction)[2, :])))


def _trimmed(values: np.ndarray, k: float) -> np.ndarray:
    """Boolean keep-mask: within median +- k * 1.4826 MAD (all kept when MAD is 0)."""
    if values.size == 0:
        return np.zeros(0, dtype=bool)
    med = float(np.median(values))
    mad = 1.4826 * float(np.median(np.abs(values - med)))
    if mad <= 0:
        return np.ones(values.size, dtype=bool)
    return np.abs(values - med) <= k * mad


def sample_tissues(ct, masks=None, *, options: SamplingOptions | None = None,
                   roi_masks: Mapping[str, Any] | None = None, min_voxels: int = DEFAULT_MIN_VOXELS,
                   required: Sequence[str] = REQUIRED_TISSUES) -> tuple[dict[str, TissueSample], np.ndarray]:
    """Sample the reference tissues of a HU CT automatically (or from ROI masks).

    Rules (lengths in :class:`SamplingOptions`):

    * **metal**: voxels above 2500 HU, dilated by 10 mm, and every axial slice within 10 mm of a
      metal slice (metal streaks run in the axial plane) are excluded from all samples.
    * **body**: threshold -500 HU, opening by 3 mm (cuts the table and blankets off), largest
      component, holes filled in 3-D and per axial slice.
    * **air**: outside the body, at least 10 mm from any voxel above -500 HU (body, table, tubes),
      10 mm from the in-plane image border, not the padding value outside the reconstruction circle,
      -1150..-800 HU.
    * **adipose**: the subcutaneous shell 4-34 mm below the body outline, fat window -190..-30 HU,
      only voxels whose 6 neighbours are fat too, 6 mm from bone.
    * **skeletal muscle**: from muscle masks when given (e.g. TotalSegmentator ``autochthon_*``,
      ``iliopsoas_*``, ``gluteus_*``), else the paraspinal region behind the vertebra masks and the
      gluteal region behind the femur masks, each used only if unimodal (:func:`_muscle_roi`), else
      body voxels within 40 mm of a bone mask (or of bone by a 300 HU threshold); always in the
      muscle window -29..150 HU with 6 muscle neighbours, at least 10 mm deep in the body, 6 mm from
      bone, 10 mm from gas inside the body, outside any organ mask. The note of the muscle sample
      names the region(s) used with their voxel counts and mean HU.
    * **blood**: only from vessel masks (``aorta``, ``inferior_vena_cava``, ...), eroded by one voxel;
      otherwise not used.
    * **cortical bone**: the outer shell (one voxel) of the bone masks; the densest 0.9 cm^3 below
      the densest 0.05 cm^3 (Ogo ``get_cortical_bone``); used only when its mean is plausible for
      fully cortical bone (>= 950 HU).

    Every automatic sample is trimmed to median +- 3 robust SD (1.4826 MAD). ``roi_masks``
    (tissue -> mask array or label file) replace the automatic ROI of that tissue (trimmed the same
    way). A tissue of ``required`` with fewer than ``min_voxels`` voxels raises CTError.

    Returns
    -------
    (samples, roi_labels): tissue -> :class:`TissueSample`; uint8 [i, j, k] label image of the
    voxels used (Ogo labels, :data:`ROI_LABELS`).
    """

    if not isinstance(ct, CTImage):
        raise CTError(f"ct must be a femur_fe CTImage (read it with femur_fe.read_ct), got {type(ct).__name__}")
    if ct.unit != "HU":
        raise CTError(f"internal calibration needs a CT in HU; this one is in {ct.unit} (already calibrated): "
                      "read the original scan with unit='HU' (CLI: --ct-unit HU)")
    opt = options or SamplingOptions()
    sp = ct.spacing
    vv = float(np.prod(sp))
    hu = np.asarray(ct.array, dtype=np.float32)
    finite = np.isfinite(hu)
    hu = np.where(finite, hu, np.float32(-1000.0))
    named: dict[str, np.ndarray] = {}
    groups = _classify_masks(masks, ct, named)
    ax = _axial_axis(ct)

    # ---------------------------------------------------------------- exclusions
    excluded = ~finite
    metal = hu > opt.metal_hu
    if metal.any():
        excluded |= _dist(metal, sp) <= opt.metal_margin_mm
        slices = np.flatnonzero(np.moveaxis(metal, ax, 0).reshape(metal.shape[ax], -1).any(axis=1))
        pos = np.arange(metal.shape[ax]) * sp[ax]
        near = np.min(np.abs(pos[:, None] - pos[slices][None, :]), axis=1) <= opt.streak_margin_mm
        shape = [1, 1, 1]
        shape[ax] = -1
        excluded |= near.reshape(shape)
        log.info("internal calibration: %d metal voxels (> %g HU); %d axial slices excluded for streaks",
                 int(metal.sum()), opt.metal_hu, int(near.sum()))
    vmin = float(hu[finite].min()) if finite.any() else -1000.0
    pad = np.zeros(ct.shape, dtype=bool)
    if vmin <= -1024.0:
        is_min = hu == vmin
        if is_min.sum() > 0.01 * hu.size:     # constant fill outside the reconstruction circle
            pad = _dist(is_min, sp) <= float(np.max(sp[:2])) * 2.0
    edge = np.ones(ct.shape, dtype=bool)
    for a in range(3):
        if a == ax:
            continue
        idx = np.arange(ct.shape[a])
        d = np.minimum(idx, ct.shape[a] - 1 - idx) * sp[a]
        shape = [1, 1, 1]
        shape[a] = -1
        edge &= (d >= opt.edge_margin_mm).reshape(shape)

    body = body_mask(ct, opt.body_threshold_hu, axial_axis=ax)
    objects = hu > opt.body_threshold_hu
    depth = _depth(body, sp)
    bone = groups["bone"] if groups["bone"].any() else (hu > opt.bone_hu) & body & ~metal
    d_bone = _dist(bone, sp)
    ok = ~excluded & edge

    roi: dict[str, np.ndarray] = {}
    roi["air"] = (~body & ok & ~pad & (_dist(objects, sp) >= opt.air_clearance_mm)
                  & _in(hu, SAMPLING_HU["air"]))
    fat_range = _interior(_in(hu, SAMPLING_HU["adipose"]))
    roi["adipose"] = (body & ok & fat_range & (depth > opt.skin_mm) & (depth <= opt.skin_mm + opt.fat_shell_mm)
                      & (d_bone >= opt.bone_clearance_mm))
    muscle_range = _interior(_in(hu, SAMPLING_HU["muscle"]))
    gas = body & (hu < -300.0)
    base = (body & ok & muscle_range & (depth >= opt.muscle_depth_mm) & (d_bone >= opt.bone_clearance_mm)
            & (_dist(gas, sp) >= opt.gas_clearance_mm) & ~groups["other"] & ~groups["vessel"])
    roi["muscle"], muscle_note = _muscle_roi(hu, base, named, groups, d_bone, body, ct, opt, min_voxels)
    if groups["vessel"].any():
        roi["blood"] = _interior(groups["vessel"]) & ok & _in(hu, (-200.0, 600.0))
    shell = groups["bone"] & ~_interior(groups["bone"]) & ok & (hu < opt.metal_hu)

    # ---------------------------------------------------------------- user ROI masks
    given_roi: dict[str, np.ndarray] = {}
    for name, m in (roi_masks or {}).items():
        t = _canonical(name)
        arr = read_mask(m, reference=ct) if isinstance(m, (str, os.PathLike)) else _as_mask(m, ct, t)
        given_roi[t] = arr & finite

    labels = np.zeros(ct.shape, dtype=np.uint8)
    samples: dict[str, TissueSample] = {}
    notes = {"air": "outside the body, clear of table and edges", "adipose": "subcutaneous shell",
             "muscle": muscle_note, "blood": "vessel masks", "cortical_bone": "dense shell of the bone masks"}
    for t in TISSUES:
        if t in given_roi:
            sel, source, note = given_roi[t], "roi mask", ""
        elif t == "cortical_bone":
            sel, source, note = _cortical(hu, shell, vv, opt), "automatic", notes[t]
        else:
            sel, source, note = roi.get(t), "automatic", notes[t]
        if sel is None or not sel.any():
            why = {"blood": "no vessel mask (give masks['aorta'] or tissue_hu['blood'])",
                   "cortical_bone": "no bone mask", "muscle": f"no candidate voxel: {muscle_note}"}.get(
                       t, "no candidate voxel")
            samples[t] = TissueSample(t, float("nan"), float("nan"), 0, False, "not found", why)
            continue
        idx = np.flatnonzero(sel.ravel())
        vals = hu.ravel()[idx].astype(np.float64)
        if t != "cortical_bone":
            keep = _trimmed(vals, opt.trim_mad)
            idx, vals = idx[keep], vals[keep]
        n = int(vals.size)
        used = n >= min_voxels
        if not used and t == "cortical_bone" and source == "automatic":
            note = (f"the densest {opt.cortical_volume_mm3:g} mm3 of the bone shell is only {n} voxels of "
                    f"{vv:.3g} mm3 (< {min_voxels}): voxels too coarse for a fully cortical sample")
        elif not used:
            note = f"only {n} voxels (< {min_voxels})" + (f"; {note}" if note else "")
        samples[t] = TissueSample(t, float(vals.mean()), float(vals.std(ddof=1)) if n > 1 else 0.0, n, used,
                                  source, note)
        labels.ravel()[idx] = ROI_LABELS[t]
    for t in required:
        s = samples[_canonical(t)]
        if not s.used:
            raise CTError(f"internal calibration: too few {t} voxels ({s.n_voxels} < {min_voxels}"
                          f"{'; ' + s.note if s.note else ''}); the scan may not contain enough {t}: give its HU "
                          f"(CLI --set material.calibration.tissue_hu.{t}=HU, TOML [material.calibration.tissue_hu] "
                          f"{t} = HU) or a phantom calibration (--calibration PHANTOM.json)")
    return samples, labels


def bimodality_coefficient(values) -> float:
    """Sarle's bimodality coefficient ``(g^2 + 1) / (k + 3 (n-1)^2 / ((n-2)(n-3)))`` of a sample
    (g skewness, k excess kurtosis, both bias-corrected). Above 5/9 (its value for a uniform
    distribution) the sample is taken to be bimodal (SAS Institute 1990; Pfister et al. 2013,
    Front Psychol 4:700). NaN for fewer than 4 values."""
    from scipy.stats import kurtosis, skew

    v = np.asarray(values, dtype=np.float64).ravel()
    n = v.size
    if n < 4 or np.ptp(v) == 0:
        return float("nan")
    g = float(skew(v, bias=False))
    k = float(kurtosis(v, bias=False))
    return (g * g + 1.0) / (k + 3.0 * (n - 1) ** 2 / ((n - 2) * (n - 3)))


def _muscle_roi(hu: np.ndarray, base: np.ndarray, named: Mapping[str, np.ndarray], groups: Mapping[str, np.ndarray],
                d_bone: np.ndarray, body: np.ndarray, ct, opt: "SamplingOptions",
                min_voxels: int) -> tuple[np.ndarray, str]:
    """Skeletal-muscle ROI and a note saying which region it is.

    In order of preference: (1) the muscle masks (``autochthon_*``, ``iliopsoas_*``, ``gluteus_*``...);
    (2) anatomical regions located from the bone masks: **paraspinal** (erector spinae) behind each
    vertebra mask (``vertebra*``): posterior to the mask's centroid, within ``paraspinal_lateral_mm`` of
    its mid-sagittal plane, ``paraspinal_reach_mm`` of the mask and its axial extent; nothing but
    muscle and fat lies there (no bowel, bladder or kidney), and **gluteal** around each femur mask
    (``femur*``): posterior to its centroid, at most ``gluteal_medial_mm`` medial of it (the pelvic
    contents lie medial), within ``gluteal_reach_mm`` of the mask;
    (3) soft tissue within ``muscle_near_bone_mm`` of bone (may hold bowel or bladder wall). Each
    candidate region (each vertebra, each femur) needs ``min_voxels`` voxels in the muscle window
    and a unimodal HU distribution (:func:`bimodality_coefficient` <= ``max_bimodality``); the
    accepted regions of the first class that has any are united.
    """
    if groups["muscle"].any():
        names = sorted(k for k in named if any(w in k for w in _MUSCLE_WORDS))
        return base & _interior(groups["muscle"]), "from muscle masks: " + ", ".join(names)
    idx = np.argwhere(base)
    if idx.size == 0:
        return base, "no soft tissue in the muscle window"
    world = np.asarray(ct.world_from_index(idx.astype(np.float64)))
    vals = hu[tuple(idx.T)]
    post = 1                                    # world y (LPS) grows towards posterior
    regions: list[tuple[str, np.ndarray]] = []

    def located(word: str):
        """(name, world coordinates of the mask, its centroid, candidates' distance to it) per mask."""
        for key in sorted(k for k in named if word in k):
            if named[key].any():
                w = np.asarray(ct.world_from_index(np.argwhere(named[key]).astype(np.float64)))
                yield key, w, w.mean(axis=0), _dist(named[key], ct.spacing)[tuple(idx.T)]

    for key, w, c, d in located("vertebra"):
        sel = ((world[:, 2] >= w[:, 2].min()) & (world[:, 2] <= w[:, 2].max()) & (world[:, post] >= c[post])
               & (np.abs(world[:, 0] - c[0]) <= opt.paraspinal_lateral_mm) & (d <= opt.paraspinal_reach_mm))
        regions.append((f"paraspinal at {key}", sel))
    mid_x = float(np.mean(np.asarray(ct.world_from_index(np.argwhere(body)[:: max(1, int(body.sum()) // 20000)]
                                                         .astype(np.float64)))[:, 0]))
    for key, w, c, d in located("femur"):
        lateral = 1.0 if c[0] >= mid_x else -1.0
        sel = ((world[:, post] >= c[post]) & ((world[:, 0] - c[0]) * lateral >= -opt.gluteal_medial_mm)
               & (d <= opt.gluteal_reach_mm))
        regions.append((f"gluteal at {key}", sel))
    accepted, rejected = [], []
    for name, sel in regions:
        v = vals[sel].astype(np.float64)
        v = v[_trimmed(v, opt.trim_mad)]
        bc = bimodality_coefficient(v)
        if v.size < min_voxels:
            rejected.append(f"{name}: {v.size} voxels")
        elif not bc <= opt.max_bimodality:
            rejected.append(f"{name}: bimodal (coefficient {bc:.2f})")
        else:
            accepted.append((name, sel, v))
    if rejected:
        log.info("internal calibration: muscle regions not used: %s", "; ".join(rejected))
    if accepted:
        sel = np.zeros(len(idx), dtype=bool)
        for _, s_, _ in accepted:
            sel |= s_
        out = np.zeros(hu.shape, dtype=bool)
        out[tuple(idx[sel].T)] = True
        parts = ", ".join(f"{n} ({v.size} voxels, {v.mean():.1f} HU)" for n, _, v in accepted)
        return out, "anatomical: " + parts
    near = base & (d_bone <= opt.muscle_near_bone_mm)
    v = hu[near].astype(np.float64)
    bc = bimodality_coefficient(v[_trimmed(v, opt.trim_mad)]) if v.size else float("nan")
    note = f"soft tissue within {opt.muscle_near_bone_mm:g} mm of bone (no paraspinal or gluteal region"
    note += f": {'; '.join(rejected)})" if rejected else ")"
    if v.size and not bc <= opt.max_bimodality:
        return np.zeros(hu.shape, dtype=bool), note + f" is bimodal (coefficient {bc:.2f})"
    return near, note


def _in(hu: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    return (hu >= window[0]) & (hu <= window[1])


def _cortical(hu: np.ndarray, shell: np.ndarray, voxel_volume: float, opt: SamplingOptions) -> np.ndarray | None:
    """The densest ``cortical_volume_mm3`` of the shell below its densest ``cortical_skip_mm3``."""
    idx = np.flatnonzero(shell.ravel())
    if idx.size == 0:
        return None
    n_take = max(1, round(opt.cortical_volume_mm3 / voxel_volume))
    n_skip = round(opt.cortical_skip_mm3 / voxel_volume)
    order = idx[np.argsort(hu.ravel()[idx], kind="stable")]
    top = order[max(0, order.size - n_skip - n_take): max(0, order.size - n_skip)]
    sel = np.zeros(hu.size, dtype=bool)
    sel[top] = True
    return sel.reshape(hu.shape)


# =============================================================================================
# one-call entry point
# =============================================================================================
def internal_calibration(ct=None, masks=None, tissue_hu: Mapping[str, float] | None = None,
                         roi_masks: Mapping[str, Any] | None = None, *,
                         energies_kev=None, energy_kev: float | None = None, min_r2: float = DEFAULT_MIN_R2,
                         min_voxels: int = DEFAULT_MIN_VOXELS, second_component: str = "triglyceride",
                         linear_hu_range: tuple[float, float] | None = None,
                         options: SamplingOptions | None = None) -> InternalCalibration:
    """Internal (phantomless) calibration of a HU CT: sample tissues, fit, return the calibration.

    Parameters
    ----------
    ct : :class:`~femur_fe.io.ct.CTImage` in HU (may be None when ``tissue_hu`` gives air, adipose and
        muscle)
    masks : segmentation masks on the CT grid: a mapping name -> bool/int array or label file
        (TotalSegmentator-style names: bones such as ``femur_right``, ``vertebrae_L1`` give the
        cortical-bone sample and keep soft-tissue samples away from bone; vessels such as ``aorta``
        give blood; muscles such as ``autochthon_left`` give muscle; any other name is avoided), or a
        sequence of bone masks.
    tissue_hu : tissue -> mean HU given directly (overrides sampling for those tissues)
    roi_masks : tissue -> mask array or label file giving that tissue's ROI
    energies_kev, energy_kev, min_r2, second_component : see :func:`fit_internal_calibration`
    min_voxels : smallest voxel count of a sampled tissue
    linear_hu_range : HU range (evenly weighted) of the straight line of
        :meth:`InternalCalibration.density_calibration`; default the 1st..99th percentiles of the HU of
        the bone-mask voxels (a fit weighted like the voxels), or 0..1000 HU without bone masks

    Returns
    -------
    InternalCalibration; ``.density_calibration()`` gives the :class:`DensityCalibration` used by
    the rest of femur_fe, ``.to_dict()`` the summary.json record.
    """
    given = {_canonical(k): float(v) for k, v in (tissue_hu or {}).items()}
    samples: dict[str, TissueSample] = {}
    labels = None
    geometry = None
    lin_hu = None
    if ct is not None:

        if not isinstance(ct, CTImage):
            raise CTError(f"ct must be a femur_fe CTImage (read it with femur_fe.read_ct), got {type(ct).__name__}")
        if ct.unit != "HU":
            raise CTError(f"internal calibration needs a CT in HU; this one is in {ct.unit} (already calibrated): "
                          "read the original scan with unit='HU' (CLI: --ct-unit HU)")
        if not all(t in given for t in TISSUES):
            # the required tissues given directly are not sampled (and need not be present)
            samples, labels = sample_tissues(ct, masks, options=options, roi_masks=roi_masks,
                                             min_voxels=min_voxels,
                                             required=tuple(t for t in REQUIRED_TISSUES if t not in given))
        geometry = (ct.spacing.copy(), ct.origin.copy(), ct.direction.copy())
        bone = _classify_masks(masks, ct)["bone"] if masks is not None else None
        if bone is not None and bone.any():
            vals = np.asarray(ct.array)[bone & (np.asarray(ct.array) < METAL_HU)]
            if vals.size:
                lin_hu = np.percentile(vals, np.arange(1, 100))
    elif roi_masks:
        raise CTError("roi_masks need the CT they belong to: pass ct=")
    elif not all(t in given for t in REQUIRED_TISSUES):
        raise MaterialError("internal calibration needs a CT in HU or tissue_hu with at least "
                            f"{', '.join(REQUIRED_TISSUES)}")
    for t, v in given.items():
        samples[t] = TissueSample(t, v, float("nan"), 0, True, "given")
    if linear_hu_range is not None:
        lo, hi = float(linear_hu_range[0]), float(linear_hu_range[1])
        if not (np.isfinite(lo) and np.isfinite(hi) and hi > lo):
            raise MaterialError(f"linear_hu_range must be (low, high) in HU with high > low, got {linear_hu_range!r}")
        lin_hu = np.linspace(lo, hi, 401)
    cal = fit_internal_calibration(samples, energies_kev=energies_kev, energy_kev=energy_kev, min_r2=min_r2,
                                   second_component=second_component, linear_hu=lin_hu,
                                   roi_labels=labels, geometry=geometry)
    for line in cal.summary_lines():
        log.info("internal calibration: %s", line)
    return cal


def hu_calibration_from_dict(data: Mapping[str, Any]) -> HUCalibration:
    """Rebuild a HU calibration from its ``to_dict()`` record: ``method = "internal"`` gives an
    :class:`InternalCalibration`, anything else a :class:`DensityCalibration` (phantom line)."""
    if isinstance(data, Mapping) and data.get("method") == "internal":
        return InternalCalibration.from_dict(data)
    return DensityCalibration.from_dict(data)


def trabecular_core(mask, spacing, depth_mm: float = 6.0) -> np.ndarray:
    """Trabecular ROI of a vertebra mask: the interior of the vertebral body.

    Voxels at least ``depth_mm`` inside the mask (the cortical shell and its partial-volume voxels lie
    within ``depth_mm`` of the surface), opened by a ball of radius ``depth_mm / 2`` (removes the
    pedicle and posterior-element remnants thinner than ``depth_mm``), largest connected part.
    Returns a boolean array; CTError when nothing is that deep.
    """
    m = np.asarray(mask) != 0
    sp = np.asarray(spacing, dtype=np.float64)
    core = np.zeros(m.shape, dtype=bool)
    if m.any():
        nz = np.nonzero(m)
        box = tuple(slice(max(int(v.min()) - 1, 0), int(v.max()) + 2) for v in nz)   # work on the bounding box
        sub = m[box]
        deep = _depth(sub, sp) >= depth_mm
        r = 0.5 * depth_mm
        opened = deep & (_dist(_depth(deep, sp) > r, sp) <= r)
        core[box] = _largest_component(opened if opened.any() else deep)
    if not core.any():
        raise CTError(f"no voxel of the mask is {depth_mm:g} mm inside it; use a smaller depth_mm or a "
                      "finer CT")
    return core
