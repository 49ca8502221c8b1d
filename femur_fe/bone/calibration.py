"""Density calibration: HU -> mineral-equivalent (QCT) density -> ash -> apparent density.

All densities in this API are g/cm^3; functions with ``_mg`` in their name take and return
mg/cm^3 (as phantom certificates and CT files do). Density types are kept apart:

* ``qct``: mineral-equivalent density from a phantom (K2HPO4 or hydroxyapatite, ``mineral``);
* ``ash``: ash mass / bulk volume;
* ``apparent``: wet mass / bulk volume.

Evidence tags: [V] verified in the cited paper, [V-code] value as transcribed in an
established open code (e.g. Bonelab/Ogo), [M] from memory (coefficients not checked against the paper).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Mapping, Protocol, runtime_checkable

import numpy as np

from ..errors import CTError, MaterialError
from ..io.ct import CTImage
from ..io.tables import Table

log = logging.getLogger(__name__)

MINERALS = ("k2hpo4", "ha")
DENSITY_TYPES = ("qct", "ash", "apparent")

#: Schileo et al. 2008: ash / apparent density ratio, constant over the density range [V].
ASH_APPARENT_RATIO_SCHILEO2008 = 0.6


def clamp_negative(rho, *, what: str = "density", floor: float = 0.0) -> np.ndarray:
    """Return ``max(rho, floor)`` and log a warning saying how many values were clamped.

    Never silent: negative densities (fat/marrow below the water reference, partial volume at
    the bone surface) are physical for QCT but meaningless for a density-modulus law.
    """
    rho = np.asarray(rho, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        low = rho < floor
    n = int(np.count_nonzero(low))
    if n:
        log.warning("%d of %d %s values (%.3g %%) were below %g g/cm3 (min %.4g) and were clamped to %g",
                    n, rho.size, what, 100.0 * n / max(rho.size, 1), floor, float(np.nanmin(rho)), floor)
        rho = np.where(low, floor, rho)
    return rho


# ---------------------------------------------------------------------------------------------
# calibration objects
# ---------------------------------------------------------------------------------------------
@runtime_checkable
class HUCalibration(Protocol):
    """What femur_fe needs to turn HU into QCT (mineral-equivalent) density.

    Implemented by :class:`DensityCalibration` (a straight line, e.g. from a phantom) and by
    :class:`femur_fe.bone.internal_calibration.InternalCalibration` (the two-component curve of the
    phantomless calibration, quadratic in HU). Every function that takes a HU calibration
    (:func:`qct_from_hu`, :func:`calibrated_ct`, :func:`femur_fe.bone.mapping.map_density`,
    :func:`femur_fe.bone.mapping.map_young_modulus`) accepts any object with these members.

    Attributes
    ----------
    mineral : ``"k2hpo4"`` or ``"ha"``: the mineral the density is equivalent to
    """

    mineral: str

    def density(self, hu, *, clamp: bool = True) -> np.ndarray:
        """QCT density (g/cm^3) of HU values; negatives clamped to 0 with a warning if ``clamp``."""
        ...

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable record from which the calibration can be rebuilt."""
        ...


@dataclass(frozen=True)
class DensityCalibration:
    """Linear HU -> QCT density calibration: ``rho_qct = slope * HU + intercept`` (g/cm^3).

    Attributes
    ----------
    slope : g/cm^3 per HU
    intercept : g/cm^3
    mineral : ``"k2hpo4"`` or ``"ha"`` (hydroxyapatite) equivalent density
    source : free text: phantom, scanner, fit statistics or literature reference
    """

    slope: float
    intercept: float
    mineral: str = "k2hpo4"
    source: str = ""
    density_type: str = field(default="qct", init=False)

    def __post_init__(self) -> None:
        if not np.isfinite(self.slope) or self.slope <= 0:
            raise MaterialError(f"calibration slope must be positive and finite (g/cm3 per HU), got {self.slope!r}")
        if not np.isfinite(self.intercept):
            raise MaterialError(f"calibration intercept must be finite (g/cm3), got {self.intercept!r}")
        if self.slope > 0.01:
            raise MaterialError(f"calibration slope {self.slope} g/cm3 per HU is too large (typical 0.0008); "
                                "was it given in mg/cm3 per HU? use DensityCalibration.from_mg(...)")
        if self.mineral not in MINERALS:
            raise MaterialError(f"mineral must be one of {MINERALS}, got {self.mineral!r}")
        object.__setattr__(self, "slope", float(self.slope))
        object.__setattr__(self, "intercept", float(self.intercept))

    @classmethod
    def from_mg(cls, slope_mg_per_hu: float, intercept_mg: float, mineral: str = "k2hpo4",
                source: str = "") -> "DensityCalibration":
        """Build from coefficients in mg/cm^3 (per HU), as phantom reports give them."""
        return cls(slope_mg_per_hu / 1000.0, intercept_mg / 1000.0, mineral, source)

    def density(self, hu, *, clamp: bool = True) -> np.ndarray:
        """QCT density (g/cm^3) of HU values; negatives clamped to 0 with a warning if ``clamp``."""
        rho = self.slope * np.asarray(hu, dtype=np.float64) + self.intercept
        return clamp_negative(rho, what=f"QCT ({self.mineral})") if clamp else rho

    def hu(self, rho_qct) -> np.ndarray:
        """Inverse: HU giving QCT density ``rho_qct`` (g/cm^3)."""
        return (np.asarray(rho_qct, dtype=np.float64) - self.intercept) / self.slope

    def to_dict(self) -> dict[str, Any]:
        """Serialisable dict (units explicit), readable by :meth:`from_dict`."""
        return {"slope": self.slope, "intercept": self.intercept, "unit": "g/cm3",
                "mineral": self.mineral, "density_type": self.density_type, "source": self.source}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "DensityCalibration":
        """Read ``{"slope", "intercept", "unit": "g/cm3"|"mg/cm3", "mineral", "source"}``.

        ``unit`` is required: a calibration whose unit is implicit is a 1000x error waiting
        to happen.
        """
        t = Table(data, "calibration", "", MaterialError, schema="calibration JSON (phantom)")
        slope = t.get("slope", "float", lo=0.0, lo_open=True)
        intercept = t.get("intercept", "float")
        unit = t.get("unit", "str", choices=("g/cm3", "mg/cm3", "g/cc", "mg/cc"))
        mineral = t.get("mineral", "str", "k2hpo4", choices=("k2hpo4", "ha"))
        source = t.get("source", "str", "")
        t.get("density_type", "str", "qct", choices=("qct",))
        t.finish()
        scale = 1.0 if unit in ("g/cm3", "g/cc") else 1e-3
        if slope * scale > 0.01:  # the __post_init__ bound, said in the keys of this table
            fix = "unit = 'mg/cm3' if the slope is in mg/cm3 per HU" if scale == 1.0 else "check the slope"
            raise t.err(f"slope = {slope:g} {unit} per HU is too large (phantoms give about 0.8 mg/cm3 = 0.0008 "
                        f"g/cm3 per HU): {fix}")
        return cls(slope * scale, intercept * scale, mineral, source)


@dataclass(frozen=True)
class PhantomFit:
    """Result of :func:`fit_phantom_calibration`.

    ``calibration`` maps HU to density; ``r_value`` is the correlation of the fitted line;
    for the Mindways method ``sigma_ref``, ``beta_ref``, ``sigma_ct``, ``beta_ct`` are the
    QCT PRO coefficients (mg/cm^3 and HU); ``residuals_mg`` are rod density residuals.
    """

    calibration: DensityCalibration
    r_value: float
    residuals_mg: np.ndarray
    method: str
    sigma_ref: float = float("nan")
    beta_ref: float = float("nan")
    sigma_ct: float = float("nan")
    beta_ct: float = float("nan")


def fit_phantom_calibration(hu, density_mg, *, water_mg=None, mineral: str = "k2hpo4",
                            source: str = "") -> PhantomFit:
    """Fit HU -> mineral density from phantom rods by least squares.

    Parameters
    ----------
    hu : (n,) mean HU of each rod ROI
    density_mg : (n,) certified mineral density of each rod, mg/cm^3 (K2HPO4 or HA)
    water_mg : (n,) certified water density of each rod, mg/cm^3, for K2HPO4-in-water phantoms
        (Mindways). When given, the Mindways QCT PRO method is used [V-code: Ogo
        ``ogo/calib/mindways_calibration.py``, after QCT PRO User Guide v5.0]:
        fit ``HU - rho_water = sigma_ref * rho_K2HPO4 + beta_ref``; then
        ``sigma_CT = sigma_ref - 0.2174`` and ``beta_CT = beta_ref + 999.6``, so that
        ``rho_K2HPO4 = (HU - beta_CT) / sigma_CT``. Otherwise a plain line
        ``rho = slope * HU + intercept`` (solid HA or K2HPO4 rods).
    mineral : ``"k2hpo4"`` or ``"ha"``

    Returns
    -------
    PhantomFit
    """
    hu = np.asarray(hu, dtype=np.float64).ravel()
    rho = np.asarray(density_mg, dtype=np.float64).ravel()
    if hu.shape != rho.shape or hu.size < 2:
        raise MaterialError(f"need the same number (>= 2) of rod HU values and densities, got {hu.size} and {rho.size}")
    if not (np.all(np.isfinite(hu)) and np.all(np.isfinite(rho))):
        raise MaterialError("rod HU values and densities must be finite")
    if np.ptp(rho) == 0 or np.ptp(hu) == 0:
        raise MaterialError("rods must span different densities and HU values to fit a line")
    if water_mg is not None:
        water = np.asarray(water_mg, dtype=np.float64).ravel()
        if water.shape != hu.shape:
            raise MaterialError(f"water_mg needs one value per rod ({hu.size}), got {water.size}")
        if mineral != "k2hpo4":
            raise MaterialError("the Mindways (water_mg) method applies to K2HPO4-in-water phantoms only")
        sigma_ref, beta_ref = np.polyfit(rho, hu - water, 1)
        r = float(np.corrcoef(rho, hu - water)[0, 1])
        sigma_ct = sigma_ref - 0.2174
        beta_ct = beta_ref + 999.6
        cal = DensityCalibration.from_mg(1.0 / sigma_ct, -beta_ct / sigma_ct, mineral,
                                         source or f"Mindways QCT PRO fit of {hu.size} rods (r = {r:.5f})")
        resid = rho - (hu - beta_ct) / sigma_ct
        return PhantomFit(cal, r, resid, "mindways", float(sigma_ref), float(beta_ref), float(sigma_ct),
                          float(beta_ct))
    slope, intercept = np.polyfit(hu, rho, 1)
    r = float(np.corrcoef(hu, rho)[0, 1])
    cal = DensityCalibration.from_mg(slope, intercept, mineral,
                                     source or f"linear fit of {hu.size} {mineral} rods (r = {r:.5f})")
    return PhantomFit(cal, r, rho - (slope * hu + intercept), "linear")


# ---------------------------------------------------------------------------------------------
# conversions (g/cm^3)
# ---------------------------------------------------------------------------------------------
def check_hu_calibration(calibration) -> HUCalibration:
    """Return ``calibration`` if it is a :class:`HUCalibration`, else raise MaterialError naming the fix."""
    if not isinstance(calibration, HUCalibration):
        raise MaterialError("calibration must be a HU calibration: a femur_fe.bone.DensityCalibration (e.g. "
                            "DensityCalibration.from_mg(0.80028, 8.1229)) or the result of "
                            f"femur_fe.bone.internal_calibration(...), got {type(calibration).__name__}")
    return calibration


def qct_from_hu(hu, calibration: HUCalibration, *, clamp: bool = True) -> np.ndarray:
    """QCT (mineral-equivalent) density in g/cm^3 from HU; negatives clamped with a warning.

    ``calibration``: any :class:`HUCalibration` (a phantom line or the internal-calibration curve).
    """
    return check_hu_calibration(calibration).density(hu, clamp=clamp)


def qct_mg_from_hu(hu, calibration: HUCalibration, *, clamp: bool = True) -> np.ndarray:
    """QCT density in mg/cm^3 from HU."""
    return 1000.0 * qct_from_hu(hu, calibration, clamp=clamp)


def ash_from_k2hpo4_keyak1994(rho_k2hpo4) -> np.ndarray:
    """Ash density (g/cm^3) from K2HPO4-equivalent density (g/cm^3), Keyak, Lee & Skinner 1994.

    ``rho_ash = 1.06 * rho_K2HPO4 + 0.0389`` (i.e. 1.06 x + 38.9 in mg/cm^3). [V-code]: Ogo
    ``ogo/util/Helper.py::bmd_K2hpo4ToAsh``; primary: J Biomed Mater Res 1994, "Correlations
    between orthogonal mechanical properties and density of trabecular bone". Example:
    0.200 -> 0.2509 g/cm^3.
    """
    return 1.06 * np.asarray(rho_k2hpo4, dtype=np.float64) + 0.0389


def ash_mg_from_k2hpo4_mg_keyak1994(rho_k2hpo4_mg) -> np.ndarray:
    """Keyak 1994 in mg/cm^3: ``rho_ash = 1.06 * rho_K2HPO4 + 38.9`` [V-code]."""
    return 1.06 * np.asarray(rho_k2hpo4_mg, dtype=np.float64) + 38.9


def ash_from_k2hpo4_keyak2005(rho_k2hpo4) -> np.ndarray:
    """Ash density (g/cm^3) from K2HPO4 density (g/cm^3), Keyak et al. 2005 (Clin Orthop 437:219).

    ``rho_ash = 1.22 * rho_K2HPO4 + 0.0523``. **[M]**: coefficients from memory, not checked
    against the paper; prefer :func:`ash_from_k2hpo4_keyak1994` ([V-code]).
    """
    return 1.22 * np.asarray(rho_k2hpo4, dtype=np.float64) + 0.0523


def ash_from_qct_schileo2008(rho_qct) -> np.ndarray:
    """Ash density (g/cm^3) from QCT density (g/cm^3), Schileo et al. 2008 (J Biomech).

    ``rho_ash = 0.877 * rho_QCT + 0.0789``. The paper's finding that QCT and ash densities
    are linearly related but not equivalent (R^2 = 0.997) is [V]; these coefficients are
    **[M]** (commonly quoted, not checked against the paper).
    """
    return 0.877 * np.asarray(rho_qct, dtype=np.float64) + 0.0789


def apparent_from_ash(rho_ash, ratio: float = ASH_APPARENT_RATIO_SCHILEO2008) -> np.ndarray:
    """Apparent (wet) density from ash density, g/cm^3: ``rho_app = rho_ash / 0.6``.

    Schileo et al. 2008 measured ash/apparent = 0.598 +- 0.004 (cortical) and 0.598 +- 0.036
    (small trabecular specimens) and concluded a constant ratio holds [V].
    """
    if not 0.0 < ratio <= 1.0:
        raise MaterialError(f"ash/apparent ratio must be in (0, 1], got {ratio}")
    return np.asarray(rho_ash, dtype=np.float64) / ratio


def ash_from_apparent(rho_app, ratio: float = ASH_APPARENT_RATIO_SCHILEO2008) -> np.ndarray:
    """Ash density from apparent density, g/cm^3: ``rho_ash = 0.6 * rho_app`` (Schileo 2008 [V])."""
    if not 0.0 < ratio <= 1.0:
        raise MaterialError(f"ash/apparent ratio must be in (0, 1], got {ratio}")
    return np.asarray(rho_app, dtype=np.float64) * ratio


QCT_TO_ASH = {
    "keyak1994": ash_from_k2hpo4_keyak1994,
    "keyak2005": ash_from_k2hpo4_keyak2005,
    "schileo2008": ash_from_qct_schileo2008,
    "identity": lambda rho: np.asarray(rho, dtype=np.float64),
}


def convert_density(rho, from_type: str, to_type: str, *, qct_to_ash=None) -> np.ndarray:
    """Convert density (g/cm^3) between ``"qct"``, ``"ash"`` and ``"apparent"``.

    ``qct -> ash/apparent`` needs an explicit ``qct_to_ash`` (``"keyak1994"``, ``"keyak2005"``,
    ``"schileo2008"``, ``"identity"`` or a callable g/cm^3 -> g/cm^3) because the choice
    changes the result by tens of percent. ``ash/apparent -> qct`` is refused (no inverse
    relation is defined).
    """
    for name, t in (("from_type", from_type), ("to_type", to_type)):
        if t not in DENSITY_TYPES:
            raise MaterialError(f"{name} must be one of {DENSITY_TYPES}, got {t!r}")
    rho = np.asarray(rho, dtype=np.float64)
    if from_type == to_type:
        return rho
    if to_type == "qct":
        raise MaterialError(f"cannot convert {from_type} density back to QCT density; give the law QCT "
                            "density or choose a law that takes ash/apparent density")
    if from_type == "qct":
        if qct_to_ash is None:
            raise MaterialError(f"converting QCT density to {to_type} needs qct_to_ash= one of "
                                f"{sorted(QCT_TO_ASH)} or a callable (e.g. 'keyak1994' for K2HPO4 phantoms)")
        fn = qct_to_ash if callable(qct_to_ash) else QCT_TO_ASH.get(str(qct_to_ash))
        if fn is None:
            raise MaterialError(f"unknown qct_to_ash {qct_to_ash!r}; valid: {sorted(QCT_TO_ASH)} or a callable")
        rho = np.asarray(fn(rho), dtype=np.float64)
        from_type = "ash"
        if to_type == "ash":
            return rho
    if from_type == "ash" and to_type == "apparent":
        return apparent_from_ash(rho)
    return ash_from_apparent(rho)  # apparent -> ash


def calibrated_ct(ct, calibration: HUCalibration, *, clamp: bool = True):
    """Return a copy of a HU :class:`~femur_fe.io.ct.CTImage` converted to QCT density in g/cm^3."""
    if not isinstance(ct, CTImage):
        raise CTError(f"ct must be a CTImage, got {type(ct).__name__}")
    if ct.unit != "HU":
        raise CTError(f"calibrated_ct needs a CT in HU; this one is already in {ct.unit}")
    return ct.with_array(qct_from_hu(ct.array, calibration, clamp=clamp), unit="g/cm3")
