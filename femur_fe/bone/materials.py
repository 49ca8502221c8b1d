"""Density-modulus laws for bone, vectorised, each named after its paper.

Every law is a small frozen dataclass that declares the density type it takes
(``"qct"``, ``"ash"`` or ``"apparent"``, all g/cm^3) and returns Young's modulus in MPa.
Common options (keyword-only, on every law):

* ``e_min_mpa`` (default 0.1 MPa, as Ogo): floor applied after the law; the number of
  floored values is logged. ``e_min_mpa=0`` disables the floor, and a non-positive modulus
  then raises :class:`~femur_fe.errors.MaterialError`.
* ``cortical_threshold`` / ``cortical_modulus_mpa``: optional override, E = cortical modulus
  where density >= threshold (density in the law's own type, g/cm^3).
* ``poisson`` (default 0.3; Bonemat uses 0.35 [V-code]).

Negative densities are clamped to 0 with a warning stating how many (never silently).
Laws are found by name with :func:`material_law` (used by load-case TOML files).

Evidence tags: [V] verified in the cited paper, [V-code] value as transcribed in an
established open code (secondary), [M] from memory, not verified against the paper.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, fields, replace
from typing import Any, ClassVar, Mapping

import numpy as np

from ..errors import MaterialError
from .calibration import (
    DENSITY_TYPES,
    ash_from_k2hpo4_keyak1994,
    clamp_negative,
    convert_density,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class DensityModulusLaw:
    """Base class: ``young(rho)`` in MPa from density (g/cm^3) of type ``density_type``."""

    e_min_mpa: float = 0.1
    poisson: float = 0.3
    cortical_threshold: float | None = None
    cortical_modulus_mpa: float | None = None

    density_type: ClassVar[str] = "apparent"
    registry_name: ClassVar[str] = ""

    def __post_init__(self) -> None:
        if not (np.isfinite(self.e_min_mpa) and self.e_min_mpa >= 0):
            raise MaterialError(f"e_min_mpa must be >= 0 MPa, got {self.e_min_mpa!r}")
        if not (-1.0 < self.poisson < 0.5):
            raise MaterialError(f"poisson must be in (-1, 0.5) for a stable isotropic material, got {self.poisson!r}")
        if (self.cortical_threshold is None) != (self.cortical_modulus_mpa is None):
            raise MaterialError("give both cortical_threshold (g/cm3) and cortical_modulus_mpa, or neither")
        if self.cortical_modulus_mpa is not None and not self.cortical_modulus_mpa > 0:
            raise MaterialError(f"cortical_modulus_mpa must be > 0, got {self.cortical_modulus_mpa!r}")
        if self.density_type not in DENSITY_TYPES:
            raise MaterialError(f"density_type must be one of {DENSITY_TYPES}, got {self.density_type!r}")

    # subclasses implement the bare formula (rho >= 0, g/cm^3 of density_type)
    def _raw(self, rho: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def young(self, rho) -> np.ndarray:
        """Young's modulus (MPa) of density ``rho`` (g/cm^3, of this law's ``density_type``)."""
        rho = np.asarray(rho, dtype=np.float64)
        n_nan = int(np.count_nonzero(~np.isfinite(rho)))
        if n_nan:
            raise MaterialError(f"{n_nan} of {rho.size} densities are NaN/inf; map the CT with an outside= "
                                "policy or fix the NaN voxels before applying a material law")
        rho = clamp_negative(rho, what=f"{self.density_type} density ({type(self).__name__})")
        e = np.asarray(self._raw(rho), dtype=np.float64)
        if self.cortical_threshold is not None:
            e = np.where(rho >= self.cortical_threshold, float(self.cortical_modulus_mpa), e)
        if self.e_min_mpa > 0:
            low = e < self.e_min_mpa
            n_low = int(np.count_nonzero(low))
            if n_low:
                log.info("%s: %d of %d moduli below the floor %g MPa were raised to it",
                         type(self).__name__, n_low, e.size, self.e_min_mpa)
                e = np.where(low, self.e_min_mpa, e)
        elif np.any(e <= 0):
            n = int(np.count_nonzero(e <= 0))
            raise MaterialError(f"{type(self).__name__}: {n} of {e.size} moduli are <= 0 MPa (densities too low "
                                "for this law); set e_min_mpa > 0 (e.g. 0.1) to floor them")
        return e

    __call__ = young

    def young_from_density(self, rho, density_type: str, *, qct_to_ash=None) -> np.ndarray:
        """Young's modulus (MPa) from density of any type, converted to this law's type.

        ash <-> apparent use Schileo 2008 (ratio 0.6 [V]); qct -> ash/apparent needs an explicit
        ``qct_to_ash`` (``"keyak1994"``, ``"schileo2008"``...; see
        :func:`femur_fe.bone.calibration.convert_density`); ash/apparent -> qct is refused.
        """
        return self.young(convert_density(rho, density_type, self.density_type, qct_to_ash=qct_to_ash))

    def with_options(self, **kwargs) -> "DensityModulusLaw":
        """Copy with changed options or coefficients (e.g. ``e_min_mpa=1.0``)."""
        return replace(self, **kwargs)

    def to_dict(self) -> dict[str, Any]:
        """``{"law": registry name, **parameters}``; :func:`material_law_from_dict` reads it back."""
        out: dict[str, Any] = {"law": self.registry_name}
        for f in fields(self):
            out[f.name] = getattr(self, f.name)
        return out


# ---------------------------------------------------------------------------------------------
# generic laws
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class PowerLaw(DensityModulusLaw):
    """``E = a_mpa * rho**b`` (MPa, rho in g/cm^3 of ``density_type``)."""

    a_mpa: float
    b: float
    density_type: str = "apparent"  # type: ignore[misc]
    registry_name: ClassVar[str] = "power"

    def __post_init__(self) -> None:
        super().__post_init__()
        if not (np.isfinite(self.a_mpa) and self.a_mpa > 0 and np.isfinite(self.b) and self.b > 0):
            raise MaterialError(f"power law needs a_mpa > 0 and b > 0, got a_mpa={self.a_mpa!r}, b={self.b!r}")
        if self.a_mpa < 10 and self.b > 1:
            log.warning("PowerLaw a_mpa=%g is tiny: with rho in g/cm3, E = a*rho^b would be < %g MPa; "
                        "was a given in GPa?", self.a_mpa, self.a_mpa)

    def _raw(self, rho):
        return self.a_mpa * rho ** self.b


@dataclass(frozen=True, kw_only=True)
class LinearLaw(DensityModulusLaw):
    """``E = intercept_mpa + slope_mpa * rho`` (MPa, rho in g/cm^3 of ``density_type``)."""

    slope_mpa: float
    intercept_mpa: float = 0.0
    density_type: str = "apparent"  # type: ignore[misc]
    registry_name: ClassVar[str] = "linear"

    def __post_init__(self) -> None:
        super().__post_init__()
        if not (np.isfinite(self.slope_mpa) and self.slope_mpa > 0 and np.isfinite(self.intercept_mpa)):
            raise MaterialError(f"linear law needs slope_mpa > 0 and a finite intercept, got "
                                f"slope_mpa={self.slope_mpa!r}, intercept_mpa={self.intercept_mpa!r}")

    def _raw(self, rho):
        return self.intercept_mpa + self.slope_mpa * rho


@dataclass(frozen=True, kw_only=True)
class PiecewiseLaw(DensityModulusLaw):
    """Different laws on density intervals split at ``thresholds`` (g/cm^3, increasing).

    ``laws[0]`` applies for rho < thresholds[0], ``laws[i]`` for thresholds[i-1] <= rho <
    thresholds[i], ``laws[-1]`` above the last threshold (as py_bonemat's 3-piece laws [V-code]).
    The sub-laws' bare formulas are used; this law's own floor/override apply to the result.
    All pieces must take the same density type.
    """

    thresholds: tuple[float, ...]
    laws: tuple[DensityModulusLaw, ...]
    density_type: str = ""  # type: ignore[misc]  # taken from the pieces
    registry_name: ClassVar[str] = "piecewise"

    def __post_init__(self) -> None:
        laws = tuple(material_law_from_dict(l) if isinstance(l, Mapping) else l for l in self.laws)
        object.__setattr__(self, "laws", laws)
        object.__setattr__(self, "thresholds", tuple(float(t) for t in self.thresholds))
        if len(laws) != len(self.thresholds) + 1:
            raise MaterialError(f"piecewise law needs len(laws) = len(thresholds) + 1, got {len(laws)} laws and "
                                f"{len(self.thresholds)} thresholds")
        if any(not isinstance(l, DensityModulusLaw) for l in laws):
            raise MaterialError("piecewise laws must be DensityModulusLaw objects or dicts with a 'law' key")
        if np.any(np.diff(self.thresholds) <= 0):
            raise MaterialError(f"piecewise thresholds must increase strictly, got {self.thresholds}")
        types = {l.density_type for l in laws}
        if len(types) != 1:
            raise MaterialError(f"all pieces must take the same density type, got {sorted(types)}")
        piece_type = types.pop()
        if self.density_type and self.density_type != piece_type:
            raise MaterialError(f"piecewise density_type {self.density_type!r} differs from its pieces' {piece_type!r}")
        object.__setattr__(self, "density_type", piece_type)
        super().__post_init__()

    def _raw(self, rho):
        piece = np.searchsorted(np.asarray(self.thresholds), rho, side="right")
        e = np.empty_like(rho)
        for i, law in enumerate(self.laws):
            sel = piece == i
            if np.any(sel):
                e[sel] = law._raw(rho[sel])
        return e

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        out["laws"] = [l.to_dict() for l in self.laws]
        out["thresholds"] = list(self.thresholds)
        out.pop("density_type", None)
        return out


# ---------------------------------------------------------------------------------------------
# laws from papers
# ---------------------------------------------------------------------------------------------
_MORGAN2003 = {
    # site: (a MPa, b, tag, compressive yield strain (Morgan & Keaveny 2001, [M]))
    "vertebra": (4730.0, 1.56, "[V]", 0.0077),
    "tibia": (15490.0, 1.93, "[V]", 0.0073),
    "greater_trochanter": (15010.0, 2.18, "[V]", 0.0070),
    "femoral_neck": (6850.0, 1.49, "[V]", 0.0085),
    "pooled": (8920.0, 1.83, "[M]", float("nan")),
}


@dataclass(frozen=True, kw_only=True)
class Morgan2003(DensityModulusLaw):
    """Morgan, Bayraktar & Keaveny 2003 (J Biomech 36:897), site-specific trabecular bone.

    ``E = a * rho_app**b`` (MPa, apparent density g/cm^3):

    ============================ ========= ====== ===== =======
    site                         a (MPa)   b      r^2   status
    ============================ ========= ====== ===== =======
    vertebra (T10-L5, n=61)      4730      1.56   0.73  [V]
    tibia (proximal, n=31)       15490     1.93   0.84  [V]
    greater_trochanter (n=23)    15010     2.18   0.82  [V]
    femoral_neck (n=27)          6850      1.49   0.85  [V]
    pooled                       8920      1.83   --    [M]
    ============================ ========= ====== ===== =======

    Site coefficients [V] from Table 9.4 of the Keaveny/Morgan "Bone Mechanics" handbook
    chapter. Validity: trabecular bone in the fitted range (about 0.1-1.0 g/cm^3 apparent; the
    exact per-site ranges are [M]); the Bologna/Bonemat group applies the femoral-neck law to
    the whole femur with rho_app = rho_ash / 0.6. Spot value: femoral neck rho_app = 0.5 ->
    2438.7 MPa.
    """

    site: str = "femoral_neck"
    density_type: ClassVar[str] = "apparent"
    registry_name: ClassVar[str] = "morgan2003"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.site not in _MORGAN2003:
            raise MaterialError(f"Morgan2003 site must be one of {sorted(_MORGAN2003)}, got {self.site!r}")

    @property
    def a_mpa(self) -> float:
        return _MORGAN2003[self.site][0]

    @property
    def b(self) -> float:
        return _MORGAN2003[self.site][1]

    def _raw(self, rho):
        return self.a_mpa * rho ** self.b

    def yield_strain(self, mode: str = "compression") -> float:
        """Site-mean apparent yield strain (dimensionless) of trabecular bone.

        Morgan & Keaveny 2001 site means in compression: vertebra 0.77 %, tibia 0.73 %,
        trochanter 0.70 %, femoral neck 0.85 % **[M]** (from memory). Yield strain is nearly
        independent of density within a site (Morgan et al. 2004, [V]). Tension values are only
        known as a range (0.61-0.75 % [M]) and are not offered.
        """
        if mode != "compression":
            raise MaterialError("Morgan2003.yield_strain: only mode='compression' has site values "
                                "(tension: 0.61-0.75 % range only, [M])")
        value = _MORGAN2003[self.site][3]
        if not np.isfinite(value):
            raise MaterialError("no pooled yield strain is recorded; use a site-specific Morgan2003 law")
        return value


@dataclass(frozen=True, kw_only=True)
class Keller1994(DensityModulusLaw):
    """Keller 1994 (J Biomech 27:1159), ash density (g/cm^3) power laws.

    * ``variant="spine"``: ``E = 1890 * rho_ash**1.92`` [V-code] (qctma-style law table).
    * ``variant="combined"``: ``E = 10500 * rho_ash**2.29``, the default law of Bonelab/Ogo
      (``default_E``, SidewaysFallFe: Emax 10500, exponent 2.29) [V-code for the numbers].
      **Caveat:** attributing this form to Keller 1994's pooled femur+spine data is [M]; it is
      called "keller1994_combined" because the codes using it do, not because the paper was read.

    Validity: human femoral and vertebral bone, ash density roughly 0.03-1.2 g/cm^3 [M].
    Spot value: Ogo chain rho_K2HPO4 = 0.200 -> rho_ash 0.2509 -> 442.6 MPa.
    """

    variant: str = "combined"
    density_type: ClassVar[str] = "ash"
    registry_name: ClassVar[str] = "keller1994"
    _COEF: ClassVar[dict] = {"spine": (1890.0, 1.92), "combined": (10500.0, 2.29)}

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.variant not in self._COEF:
            raise MaterialError(f"Keller1994 variant must be one of {sorted(self._COEF)}, got {self.variant!r}")

    def _raw(self, rho):
        a, b = self._COEF[self.variant]
        return a * rho ** b


@dataclass(frozen=True, kw_only=True)
class Keyak1994Chain(DensityModulusLaw):
    """Ogo/FAIM chain on K2HPO4 QCT density: Keyak 1994 to ash, then ``10500 * rho_ash**2.29``.

    ``rho_ash = 1.06 * rho_K2HPO4 + 0.0389`` (g/cm^3; Keyak, Lee & Skinner 1994 [V-code]) and
    ``E = 10500 * rho_ash**2.29`` (MPa; "keller1994_combined", numbers [V-code], attribution [M]).
    Takes QCT (K2HPO4-equivalent) density in g/cm^3. Ogo clamps rho_K2HPO4 below -0.031 g/cm^3
    (ash 0.006, E 0.087 MPa); here negatives are clamped to 0 (ash 0.0389 g/cm^3) with a warning,
    then the floor ``e_min_mpa`` applies. Spot value: 0.200 -> 442.6 MPa.
    """

    density_type: ClassVar[str] = "qct"
    registry_name: ClassVar[str] = "keyak1994_chain"

    def _raw(self, rho):
        return 10500.0 * ash_from_k2hpo4_keyak1994(rho) ** 2.29


@dataclass(frozen=True, kw_only=True)
class Kopperdahl2002(DensityModulusLaw):
    """Kopperdahl, Morgan & Keaveny 2002, vertebral trabecular bone, QCT density (g/cm^3).

    Two codes disagree on which relation is "Kopperdahl 2002" (Kopperdahl, Morgan & Keaveny
    2002, J Orthop Res 20:801; the primary paper was not checked):

    * ``form="linear"``: ``E = -34.7 + 3230 * rho`` MPa; yield stress
      ``sigma_y = -0.750 + 24.9 * rho`` MPa [V-code] (qctma-style MechanicalLaw table, which labels
      the density rho_app; Ogo calls the same linear law "Crawford et al. 2003 voxel").
    * ``form="ogo_power"``: ``E = 2980 * rho**1.05``; compressive yield ``sigma_yc = 37.4 * rho**1.39``
      [V-code] (Ogo ``material_laws.py``, input K2HPO4 mg/cm^3 / 1000); attribution to the
      paper unverified.

    Validity: vertebral trabecular bone, QCT density about 0.05-0.35 g/cm^3 [M]. The linear law
    is negative below 0.0107 g/cm^3: the floor ``e_min_mpa`` applies there.
    Spot value: linear, rho = 0.2 -> 611.3 MPa.
    """

    form: str = "linear"
    density_type: ClassVar[str] = "qct"
    registry_name: ClassVar[str] = "kopperdahl2002"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.form not in ("linear", "ogo_power"):
            raise MaterialError(f"Kopperdahl2002 form must be 'linear' or 'ogo_power', got {self.form!r}")

    def _raw(self, rho):
        if self.form == "linear":
            return -34.7 + 3230.0 * rho
        return 2980.0 * rho ** 1.05

    def yield_stress_mpa(self, rho) -> np.ndarray:
        """Compressive yield stress (MPa) of QCT density (g/cm^3), per ``form`` [V-code]; >= 0."""
        rho = clamp_negative(np.asarray(rho, dtype=np.float64), what="qct density (Kopperdahl2002 yield)")
        s = -0.750 + 24.9 * rho if self.form == "linear" else 37.4 * rho ** 1.39
        return np.maximum(s, 0.0)


@dataclass(frozen=True, kw_only=True)
class KopperdahlKeaveny1998(DensityModulusLaw):
    """Kopperdahl & Keaveny 1998 (J Biomech), vertebral trabecular bone.

    ``E = 2100 * rho_app - 80`` MPa, apparent density g/cm^3 [V-code]. Validity: vertebral
    trabecular bone, rho_app about 0.1-0.3 g/cm^3 [M]; negative below 0.038 g/cm^3 (floored).
    """

    density_type: ClassVar[str] = "apparent"
    registry_name: ClassVar[str] = "kopperdahl_keaveny1998"

    def _raw(self, rho):
        return 2100.0 * rho - 80.0

    def yield_strain(self, mode: str = "compression") -> float:
        """Mean yield strain: 0.84 % compression, 0.78 % tension **[M]** (from memory)."""
        values = {"compression": 0.0084, "tension": 0.0078}
        if mode not in values:
            raise MaterialError(f"mode must be 'compression' or 'tension', got {mode!r}")
        return values[mode]


@dataclass(frozen=True, kw_only=True)
class Keaveny1997(DensityModulusLaw):
    """Keaveny et al. 1997, lumbar vertebral trabecular bone: ``E = 1540 * rho_app - 58`` MPa.

    Apparent density g/cm^3 [V-code]. Validity: lumbar trabecular bone [M range]; negative
    below 0.038 g/cm^3 (floored).
    """

    density_type: ClassVar[str] = "apparent"
    registry_name: ClassVar[str] = "keaveny1997"

    def _raw(self, rho):
        return 1540.0 * rho - 58.0


@dataclass(frozen=True, kw_only=True)
class Eberle2013(DensityModulusLaw):
    """Eberle et al. 2013 (J Biomech 46:2152), femur, cohort-specific: ``E = 12486 * rho_QCT**1.16``.

    QCT density in g K2HPO4/cm^3 [V] (abstract; subject-specific a = 9307-15673, b = 0.68-1.40).
    Validity: whole human femora (17 specimens). Spot value: rho_QCT = 0.5 -> 5587.6 MPa.
    """

    density_type: ClassVar[str] = "qct"
    registry_name: ClassVar[str] = "eberle2013"

    def _raw(self, rho):
        return 12486.0 * rho ** 1.16


@dataclass(frozen=True, kw_only=True)
class CarterHayes1977(DensityModulusLaw):
    """Carter & Hayes 1977 (J Bone Joint Surg Am 59:954, "The compressive behavior of bone as a
    two-phase porous structure", doi 10.2106/00004623-197759070-00021 [V-title]).

    ``E = 3790 * strain_rate**0.06 * rho_app**3`` (MPa, apparent density g/cm^3, strain rate
    in 1/s, default 0.01 /s quasi-static). The constants 3790, 0.06 and 3 are **[M]**: a search
    of public pages and code found the paper's title but not the equation. Validity: cortical and
    trabecular bone, apparent density about 0.07-2.0 g/cm^3 [M].
    """

    strain_rate_per_s: float = 0.01
    density_type: ClassVar[str] = "apparent"
    registry_name: ClassVar[str] = "carter_hayes1977"

    def __post_init__(self) -> None:
        super().__post_init__()
        if not (np.isfinite(self.strain_rate_per_s) and self.strain_rate_per_s > 0):
            raise MaterialError(f"strain_rate_per_s must be > 0 (1/s), got {self.strain_rate_per_s!r}")

    def _raw(self, rho):
        return 3790.0 * self.strain_rate_per_s ** 0.06 * rho ** 3


# ---------------------------------------------------------------------------------------------
# registry
# ---------------------------------------------------------------------------------------------
_REGISTRY: dict[str, tuple[type[DensityModulusLaw], dict[str, Any]]] = {
    "power": (PowerLaw, {}),
    "linear": (LinearLaw, {}),
    "piecewise": (PiecewiseLaw, {}),
    "morgan2003": (Morgan2003, {}),
    "morgan2003_vertebra": (Morgan2003, {"site": "vertebra"}),
    "morgan2003_femoral_neck": (Morgan2003, {"site": "femoral_neck"}),
    "morgan2003_greater_trochanter": (Morgan2003, {"site": "greater_trochanter"}),
    "morgan2003_tibia": (Morgan2003, {"site": "tibia"}),
    "morgan2003_pooled": (Morgan2003, {"site": "pooled"}),
    "keller1994": (Keller1994, {}),
    "keller1994_spine": (Keller1994, {"variant": "spine"}),
    "keller1994_combined": (Keller1994, {"variant": "combined"}),
    "keyak1994_chain": (Keyak1994Chain, {}),
    "kopperdahl2002": (Kopperdahl2002, {}),
    "kopperdahl2002_linear": (Kopperdahl2002, {"form": "linear"}),
    "kopperdahl2002_ogo_power": (Kopperdahl2002, {"form": "ogo_power"}),
    "kopperdahl_keaveny1998": (KopperdahlKeaveny1998, {}),
    "keaveny1997": (Keaveny1997, {}),
    "eberle2013": (Eberle2013, {}),
    "carter_hayes1977": (CarterHayes1977, {}),
}


def material_law_names() -> list[str]:
    """Names accepted by :func:`material_law`."""
    return sorted(_REGISTRY)


def material_law(name: str, **params) -> DensityModulusLaw:
    """Build a law by registry name, e.g. ``material_law("morgan2003_femoral_neck", e_min_mpa=1)``.

    ``params`` are the class's fields (``a_mpa``, ``b``, ``density_type`` for ``"power"``;
    ``e_min_mpa``, ``poisson``, ``cortical_threshold``, ``cortical_modulus_mpa`` for all).

    Raises
    ------
    MaterialError : unknown name (lists valid names) or unknown/invalid parameter.
    """
    key = str(name).strip().lower()
    if key not in _REGISTRY:
        raise MaterialError(f"unknown material law {name!r}; valid names: {', '.join(material_law_names())}")
    cls, fixed = _REGISTRY[key]
    valid = {f.name for f in fields(cls) if f.init}
    unknown = set(params) - valid
    if unknown:
        raise MaterialError(f"material law {key!r} does not take {sorted(unknown)}; valid parameters: {sorted(valid)}")
    clash = {k for k in fixed if k in params and params[k] != fixed[k]}
    if clash:
        raise MaterialError(f"material law {key!r} fixes {', '.join(f'{k}={fixed[k]!r}' for k in clash)}; "
                            f"use {cls.registry_name!r} to choose them")
    kwargs = {**fixed, **params}
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise MaterialError(f"material law {key!r}: {exc}; valid parameters: {sorted(valid)}") from exc


def material_law_from_dict(data: Mapping[str, Any]) -> DensityModulusLaw:
    """Build a law from ``{"law": name, **params}`` (the inverse of ``law.to_dict()``)."""
    if "law" not in data:
        raise MaterialError(f"material specification needs a 'law' key (one of {', '.join(material_law_names())})")
    params = {k: v for k, v in data.items() if k != "law"}
    if "thresholds" in params:
        params["thresholds"] = tuple(params["thresholds"])
    if "laws" in params:
        params["laws"] = tuple(params["laws"])
    return material_law(str(data["law"]), **params)
