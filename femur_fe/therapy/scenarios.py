"""Therapy scenarios: composable operators on the per-element density field.

A :class:`Scenario` is a named list of operators (uniform or compartment change, injection,
defect fill, cortical thickening, annual change, cell model) applied in order to the element
densities (g/cm^3); scenarios are read from ``[[scenario]]`` tables (``docs/schemas.md``).

The method in full (equations, parameters, choices, sources): ``docs/therapy.md``, section
``femur_fe.therapy.scenarios``.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field, fields
from typing import Any, Callable, ClassVar, Mapping, Sequence

import numpy as np

from ..diagnostics import warn
from ..errors import OutputError, ScenarioError
from ..fe.mesh import Mesh
from ..io.outdir import safe_name
from ..fe.topology import boundary_faces
from .cellmodels import DAYS_PER_MONTH, CellTherapy, bone_mass_ratio

log = logging.getLogger(__name__)

#: upper density bound (fully dense cortical bone) per density type, g/cm^3 (see ``docs/therapy.md``)
DENSITY_UPPER_BOUND: dict[str, float] = {"apparent": 2.0, "ash": 1.2, "qct": 1.2}
#: absolute ceiling used to check operator parameters before the density type is known
_ABS_MAX = max(DENSITY_UPPER_BOUND.values())

#: canonical landmark names (see LANDMARK_ALIASES / resolve_landmark)
KNOWN_LANDMARKS = ("femoral_head_centre", "femoral_neck_centre", "intertrochanteric",
                   "vertebral_body_centre")

#: SWAN early-postmenopausal annual BMD loss, %/yr (Greendale et al. 2012, J Bone Miner Res 27:111) [V]:
#: hip 1.0-1.4 %/yr (midpoint 1.2), spine 1.8-2.3 %/yr (rounded midpoint 2.0).
ANNUAL_CHANGE_PRESETS: dict[str, float] = {
    "postmenopausal_hip": -1.2,
    "postmenopausal_spine": -2.0,
}

RAMPS = ("linear", "logistic")
SHAPES = ("ellipsoid", "gaussian")
COMPARTMENTS = ("trabecular", "cortical")
#: a Gaussian region is cut off where its weight is below exp(-4.5) = 0.011 (3 radii)
GAUSSIAN_CUTOFF_RADII = 3.0


# ---------------------------------------------------------------------------------- helpers
def _num(owner: str, name: str, value: Any, lo: float = -math.inf, hi: float = math.inf, *,
         lo_open: bool = False, hi_open: bool = False, unit: str = "") -> float:
    """Check a finite real in [lo, hi] (or open ends); raise ScenarioError naming it otherwise."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ScenarioError(f"{owner}.{name} must be a number{(' in ' + unit) if unit else ''}, got {value!r}") from None
    if isinstance(value, bool):
        raise ScenarioError(f"{owner}.{name} must be a number, got {value!r}")
    bad = (not math.isfinite(v) or v < lo or v > hi or (lo_open and v == lo) or (hi_open and v == hi))
    if bad:
        left = "(" if lo_open else "["
        right = ")" if hi_open else "]"
        u = f" {unit}" if unit else ""
        raise ScenarioError(f"{owner}.{name} = {value!r} is out of range; allowed {left}{lo:g}, {hi:g}{right}{u}")
    return v


def _choice(owner: str, name: str, value: Any, options: Sequence[str]) -> str:
    if value not in options:
        raise ScenarioError(f"{owner}.{name} = {value!r} is not allowed; choose one of {', '.join(options)}")
    return str(value)


def _check_density(density, mesh: Mesh) -> np.ndarray:
    rho = np.asarray(density, dtype=np.float64)
    if rho.shape != (mesh.n_cells,):
        raise ScenarioError(f"density must have shape ({mesh.n_cells},) (one value per cell, g/cm^3), got {rho.shape}")
    if not np.all(np.isfinite(rho)):
        raise ScenarioError("density contains NaN or inf; fix the density mapping before applying a scenario")
    if rho.size and rho.max() > 3.5:
        raise ScenarioError(f"density reaches {rho.max():.4g}, which looks like mg/cm^3; scenarios use g/cm^3 "
                            "(divide by 1000)")
    return rho


def _need_time(owner: str, t_months: float | None) -> float:
    if t_months is None:
        raise ScenarioError(f"{owner} depends on time: give t_months (months since therapy start) to apply(), "
                            "or set the scenario's months")
    return _num(owner, "t_months", t_months, 0.0, 1200.0, unit="months")


def maturation_fraction(t_months: float, maturation_months: float | None, ramp: str = "logistic") -> float:
    """Fraction f in [0, 1] of the final effect reached at ``t_months`` (see ``docs/therapy.md``).

    ``maturation_months=None`` means an immediate effect (f = 1 at any time >= 0).
    """
    if maturation_months is None:
        return 1.0
    t = float(t_months)
    big_t = float(maturation_months)
    if t <= 0.0:
        return 0.0
    if t >= big_t:
        return 1.0
    if ramp == "linear":
        return t / big_t
    k = 2.0 * math.log(19.0) / big_t

    def sig(x: float) -> float:
        return 1.0 / (1.0 + math.exp(-k * (x - 0.5 * big_t)))

    s0, s1 = sig(0.0), sig(big_t)
    return min(max((sig(t) - s0) / (s1 - s0), 0.0), 1.0)


#: canonical landmark name -> names a frame may use for it (first found wins)
LANDMARK_ALIASES: dict[str, tuple[str, ...]] = {
    "femoral_head_centre": ("femoral_head_centre", "head_centre"),
    "femoral_neck_centre": ("femoral_neck_centre", "neck_centre"),
    "intertrochanteric": ("intertrochanteric", "intertrochanteric_centre"),
    "vertebral_body_centre": ("vertebral_body_centre", "body_centre"),
}

#: neck-centre offset from the head centre along the neck axis, in head radii: the middle of
#: the 1.15-1.8 R band that femur_fe.bone.anatomy.femur_frame uses for its neck cross-sections
NECK_CENTRE_HEAD_RADII = 0.5 * (1.15 + 1.8)


def _derived_landmark(frame: Any, name: str) -> np.ndarray | None:
    """Landmarks computed from a FemurFrame when the frame does not list them.

    * ``femoral_neck_centre`` = head_centre - 1.475 head_radius * neck_axis (on the neck
      axis, in the middle of the neck section band used by the frame);
    * ``intertrochanteric`` = midpoint of the greater and lesser trochanter landmarks (the
      intertrochanteric line/crest joins them; their midpoint lies inside the region); on a
      femur truncated above the lesser trochanter, of the greater trochanter and the centre of
      the cut face (the frame's ``shaft_point``), which lies in the trochanteric region.
    """
    g = lambda a: getattr(frame, a, None)  # noqa: E731
    if name == "femoral_neck_centre" and all(g(a) is not None for a in ("head_centre", "head_radius", "neck_axis")):
        return np.asarray(g("head_centre"), float) - NECK_CENTRE_HEAD_RADII * float(g("head_radius")) * \
            np.asarray(g("neck_axis"), float)
    other = g("lesser_trochanter") if g("lesser_trochanter") is not None else g("shaft_point")
    if name == "intertrochanteric" and g("greater_trochanter") is not None and other is not None:
        return 0.5 * (np.asarray(g("greater_trochanter"), float) + np.asarray(other, float))
    return None


def available_landmarks(frame: Any) -> list[str]:
    """Landmark names :func:`resolve_landmark` can resolve with this frame."""
    table = _landmark_table(frame)
    out = set(table)
    for canon, names in LANDMARK_ALIASES.items():
        if any(n in table for n in names) or (not isinstance(frame, Mapping) and _derived_landmark(frame, canon)
                                              is not None):
            out.add(canon)
    return sorted(out)


def resolve_landmark(frame: Any, name: str) -> np.ndarray:
    """Coordinates (3,) mm of landmark ``name`` from an anatomy frame.

    ``frame`` may be a :func:`femur_fe.bone.femur_frame` / :func:`femur_fe.bone.vertebra_frame`
    object (its ``landmarks()`` table, or attributes) or a plain mapping
    ``{name: (x, y, z)}``. Canonical names (``femoral_head_centre``,
    ``femoral_neck_centre``, ``intertrochanteric``, ``vertebral_body_centre``) are looked
    up under the aliases of :data:`LANDMARK_ALIASES`; the neck centre and the
    intertrochanteric point are derived from a femur frame when it does not list them
    (see :func:`_derived_landmark`).

    Raises
    ------
    ScenarioError : no frame, or the frame has no such landmark (lists the available ones).
    """
    if frame is None:
        raise ScenarioError(
            f"landmark {name!r} needs an anatomy frame: pass frame=femur_fe.bone.femur_frame(mesh) (or "
            "femur_fe.bone.vertebra_frame(mesh)) to apply(), or give center_mm = [x, y, z] instead")
    table = _landmark_table(frame)
    pt = None
    for key in LANDMARK_ALIASES.get(name, (name,)):
        if key in table:
            pt = table[key]
            break
    if pt is None and not isinstance(frame, Mapping):
        pt = _derived_landmark(frame, name)
    if pt is None:
        raise ScenarioError(f"landmark {name!r} is not available in the given frame "
                            f"({type(frame).__name__}); available landmarks: "
                            f"{', '.join(available_landmarks(frame)) or '(none)'}")
    arr = np.asarray(pt, dtype=np.float64).ravel()
    if arr.shape != (3,) or not np.all(np.isfinite(arr)):
        raise ScenarioError(f"landmark {name!r} must resolve to 3 finite coordinates (mm), got {pt!r}")
    return arr


def _landmark_table(frame: Any) -> dict[str, Any]:
    if isinstance(frame, Mapping):
        return dict(frame)
    lm = getattr(frame, "landmarks", None)
    if callable(lm):
        lm = lm()
    if isinstance(lm, Mapping):
        return dict(lm)
    return {}


def _semi_axes(owner: str, radius_mm) -> np.ndarray:
    r = np.atleast_1d(np.asarray(radius_mm, dtype=np.float64))
    if r.shape not in ((1,), (3,)):
        raise ScenarioError(f"{owner}.radius_mm must be one radius or three semi-axes [rx, ry, rz] in mm, got {radius_mm!r}")
    for v in r:
        _num(owner, "radius_mm", v, 0.0, 1000.0, lo_open=True, unit="mm")
    return np.broadcast_to(r, (3,)).copy()


def _as_tuple(value) -> Any:
    if isinstance(value, (list, np.ndarray)):
        return tuple(_as_tuple(v) for v in value)
    return value


def _region_weight(owner: str, mesh: Mesh, frame: Any, *, landmark: str | None,
                   center_mm: Sequence[float] | None, radius_mm, shape: str,
                   cell_set: str | None = None) -> np.ndarray:
    """(m,) weights in [0, 1] of a spherical/ellipsoidal/Gaussian region or a cell set."""
    if cell_set is not None:
        if cell_set not in mesh.cell_sets:
            raise ScenarioError(f"{owner}.cell_set {cell_set!r} is not a cell set of the mesh; "
                                f"available: {', '.join(sorted(mesh.cell_sets)) or '(none)'}")
        w = np.zeros(mesh.n_cells)
        w[mesh.cell_sets[cell_set]] = 1.0
        return w
    c = resolve_landmark(frame, landmark) if landmark is not None else np.asarray(center_mm, dtype=np.float64)
    axes = _semi_axes(owner, radius_mm)
    q2 = (((mesh.cell_centroids() - c) / axes) ** 2).sum(axis=1)
    if shape == "ellipsoid":
        w = (q2 <= 1.0).astype(np.float64)
    else:
        w = np.exp(-0.5 * q2)
        w[q2 > GAUSSIAN_CUTOFF_RADII ** 2] = 0.0
    if not w.any():
        log.warning("%s: the region around %s (radius %s mm) contains no element centroid; the operator "
                    "does nothing (check the landmark/centre and the units, mm)", owner,
                    landmark or np.round(c, 2).tolist(), axes.tolist())
    return w


def _check_region(owner: str, landmark, center_mm, cell_set=None, allow_cell_set: bool = False) -> None:
    given = [x is not None for x in (landmark, center_mm, cell_set if allow_cell_set else None)]
    opts = "landmark, center_mm" + (" or cell_set" if allow_cell_set else "")
    if sum(given) != 1:
        raise ScenarioError(f"{owner} needs exactly one of {opts} to place it (got "
                            f"{sum(given)}); e.g. landmark = \"femoral_neck_centre\"")
    if landmark is not None and not isinstance(landmark, str):
        raise ScenarioError(f"{owner}.landmark must be a name such as {KNOWN_LANDMARKS[1]!r}, got {landmark!r}")
    if center_mm is not None:
        c = np.asarray(center_mm, dtype=np.float64)
        if c.shape != (3,) or not np.all(np.isfinite(c)):
            raise ScenarioError(f"{owner}.center_mm must be three finite coordinates [x, y, z] in mm, got {center_mm!r}")


def _gain_field(owner: str, rho: np.ndarray, w: np.ndarray, gain_g_cm3: float | None,
                gain_percent: float | None) -> np.ndarray:
    """Density change w * gain (absolute) or w * rho * percent / 100."""
    if gain_g_cm3 is not None:
        return w * gain_g_cm3
    return w * rho * (gain_percent / 100.0)


def _check_gain(owner: str, gain_g_cm3, gain_percent, names=("gain_g_cm3", "gain_percent")) -> None:
    if (gain_g_cm3 is None) == (gain_percent is None):
        raise ScenarioError(f"{owner} needs exactly one of {names[0]} (g/cm^3 added) or {names[1]} "
                            "(% of the local density)")
    if gain_g_cm3 is not None:
        _num(owner, names[0], gain_g_cm3, -_ABS_MAX, _ABS_MAX, unit="g/cm^3")
    if gain_percent is not None:
        _num(owner, names[1], gain_percent, -100.0, 1000.0, lo_open=True, unit="%")


def compartment_mask(owner: str, mesh: Mesh, density: np.ndarray, compartment: str,
                     cortical_threshold_g_cm3: float | None, cortical_cell_set: str | None) -> np.ndarray:
    """(m,) bool: cells of ``compartment`` (cortical = density >= threshold or in the cell set)."""
    if cortical_cell_set is not None:
        if cortical_cell_set not in mesh.cell_sets:
            raise ScenarioError(f"{owner}.cortical_cell_set {cortical_cell_set!r} is not a cell set of the mesh; "
                                f"available: {', '.join(sorted(mesh.cell_sets)) or '(none)'}")
        cort = np.zeros(mesh.n_cells, dtype=bool)
        cort[mesh.cell_sets[cortical_cell_set]] = True
    else:
        cort = np.asarray(density) >= float(cortical_threshold_g_cm3)
    return cort if compartment == "cortical" else ~cort


def _check_compartment(owner: str, compartment, threshold, cell_set, required: bool = True) -> None:
    if compartment is None and not required:
        if threshold is not None or cell_set is not None:
            raise ScenarioError(f"{owner}: cortical_threshold_g_cm3/cortical_cell_set need compartment = "
                                f"one of {', '.join(COMPARTMENTS)}")
        return
    _choice(owner, "compartment", compartment, COMPARTMENTS)
    if (threshold is None) == (cell_set is None):
        raise ScenarioError(f"{owner} with compartment {compartment!r} needs exactly one of "
                            "cortical_threshold_g_cm3 (cells at or above it are cortical, same density type "
                            "as the scenario) or cortical_cell_set (name of a mesh cell set)")
    if threshold is not None:
        _num(owner, "cortical_threshold_g_cm3", threshold, 0.0, _ABS_MAX, lo_open=True, unit="g/cm^3")


# ---------------------------------------------------------------------------------- operators
class Operator:
    """Base class of scenario operators (frozen dataclasses). See ``docs/therapy.md``."""

    kind: ClassVar[str] = ""
    #: True if the result depends on t_months
    time_dependent: ClassVar[bool] = False

    def apply(self, density, mesh: Mesh, frame: Any = None, t_months: float | None = None) -> np.ndarray:
        """New (m,) densities, g/cm^3 (never negative; not capped above, see Scenario)."""
        return np.maximum(self.apply_unclamped(density, mesh, frame, t_months), 0.0)

    def apply_unclamped(self, density, mesh: Mesh, frame: Any = None, t_months: float | None = None) -> np.ndarray:
        """New (m,) densities before negative values are clamped to 0 (:meth:`Scenario.apply` reports them)."""
        rho = _check_density(density, mesh)
        return np.asarray(self._apply(rho, mesh, frame, t_months), dtype=np.float64)

    def _apply(self, rho, mesh, frame, t_months) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def weight(self, mesh: Mesh, frame: Any = None, density=None) -> np.ndarray:
        """(m,) spatial weight in [0, 1] of where the operator acts (1 everywhere by default)."""
        return np.ones(mesh.n_cells)

    def check_upper_bound(self, upper: float, density_type: str) -> None:
        """Raise ScenarioError if a target parameter exceeds the density type's bound."""

    def to_dict(self) -> dict[str, Any]:
        """``{"type": kind, **fields}`` (the TOML table; None fields left out)."""
        out: dict[str, Any] = {"type": self.kind}
        for f in fields(self):  # type: ignore[arg-type]
            v = getattr(self, f.name)
            if v is not None:
                out[f.name] = list(v) if isinstance(v, tuple) else v
        return out

    @property
    def owner(self) -> str:
        return f"operator {self.kind!r}"


@dataclass(frozen=True)
class UniformChange(Operator):
    """Every element's density changes by ``percent`` (rho' = rho (1 + percent/100))."""

    percent: float
    kind: ClassVar[str] = "uniform"

    def __post_init__(self) -> None:
        _num(self.owner, "percent", self.percent, -100.0, 1000.0, lo_open=True, unit="%")

    def _apply(self, rho, mesh, frame, t_months):
        return rho * (1.0 + self.percent / 100.0)


@dataclass(frozen=True)
class CompartmentChange(Operator):
    """Change only the trabecular or the cortical compartment.

    Cortical cells are those with density >= ``cortical_threshold_g_cm3`` (same density
    type as the scenario, evaluated on the density the operator receives) or the cells of
    the mesh cell set ``cortical_cell_set``; trabecular = all others. The change is
    ``gain_percent`` of the local density or ``gain_g_cm3`` added.
    """

    compartment: str
    gain_percent: float | None = None
    gain_g_cm3: float | None = None
    cortical_threshold_g_cm3: float | None = None
    cortical_cell_set: str | None = None
    kind: ClassVar[str] = "compartment"

    def __post_init__(self) -> None:
        _check_compartment(self.owner, self.compartment, self.cortical_threshold_g_cm3, self.cortical_cell_set)
        _check_gain(self.owner, self.gain_g_cm3, self.gain_percent)

    def weight(self, mesh, frame=None, density=None):
        if density is None and self.cortical_cell_set is None:
            raise ScenarioError(f"{self.owner}.weight needs the density (the compartment is a density threshold)")
        return compartment_mask(self.owner, mesh, density, self.compartment, self.cortical_threshold_g_cm3,
                                self.cortical_cell_set).astype(np.float64)

    def _apply(self, rho, mesh, frame, t_months):
        w = self.weight(mesh, frame, rho)
        return rho + _gain_field(self.owner, rho, w, self.gain_g_cm3, self.gain_percent)


class _Maturing:
    """Optional maturation ramp shared by gain operators (fields ``maturation_months``, ``ramp``)."""

    maturation_months: float | None
    ramp: str

    def _check_maturation(self) -> None:
        _choice(self.owner, "ramp", self.ramp, RAMPS)  # type: ignore[attr-defined]
        if self.maturation_months is not None:
            _num(self.owner, "maturation_months", self.maturation_months, 0.0, 600.0,  # type: ignore[attr-defined]
                 lo_open=True, unit="months")

    @property
    def time_dependent(self) -> bool:
        return self.maturation_months is not None

    def _maturity(self, t_months: float | None) -> float:
        if self.maturation_months is None:
            return 1.0
        return maturation_fraction(_need_time(self.owner, t_months), self.maturation_months,  # type: ignore[attr-defined]
                                   self.ramp)


@dataclass(frozen=True)
class LocalInjection(_Maturing, Operator):
    """Localised bone gain around a landmark or a point (e.g. an injected biomaterial/cells).

    Region: centred on ``landmark`` (resolved through the anatomy frame) or ``center_mm``;
    ``radius_mm`` is one radius or three semi-axes (global x, y, z) in mm. ``shape``:
    ``"ellipsoid"`` (weight 1 inside, 0 outside) or ``"gaussian"`` (weight
    exp(-q²/2), q = normalised distance, i.e. ``radius_mm`` is the standard deviation; cut
    off at q = 3). Gain at the centre: ``peak_gain_g_cm3`` added, or ``peak_gain_percent``
    of the local density. Optional maturation: the gain grows with the ramp over
    ``maturation_months`` (None = immediate).
    """

    radius_mm: float | tuple = 10.0
    landmark: str | None = None
    center_mm: tuple | None = None
    shape: str = "gaussian"
    peak_gain_g_cm3: float | None = None
    peak_gain_percent: float | None = None
    maturation_months: float | None = None
    ramp: str = "logistic"
    kind: ClassVar[str] = "injection"

    def __post_init__(self) -> None:
        object.__setattr__(self, "center_mm", _as_tuple(self.center_mm))
        object.__setattr__(self, "radius_mm", _as_tuple(self.radius_mm))
        _check_region(self.owner, self.landmark, self.center_mm)
        _semi_axes(self.owner, self.radius_mm)
        _choice(self.owner, "shape", self.shape, SHAPES)
        _check_gain(self.owner, self.peak_gain_g_cm3, self.peak_gain_percent,
                    ("peak_gain_g_cm3", "peak_gain_percent"))
        self._check_maturation()

    def weight(self, mesh, frame=None, density=None):
        return _region_weight(self.owner, mesh, frame, landmark=self.landmark, center_mm=self.center_mm,
                              radius_mm=self.radius_mm, shape=self.shape)

    def _apply(self, rho, mesh, frame, t_months):
        w = self.weight(mesh, frame)
        return rho + self._maturity(t_months) * _gain_field(self.owner, rho, w, self.peak_gain_g_cm3,
                                                            self.peak_gain_percent)


@dataclass(frozen=True)
class DefectFill(Operator):
    """A defect or lytic lesion whose density rises to ``target_density_g_cm3`` over months.

    Region: ``landmark``/``center_mm`` + ``radius_mm`` (ellipsoid, weight 1 inside) or a
    mesh ``cell_set``. In the region, rho(t) = rho_start + f(t) (target - rho_start), with
    f the maturation ramp over ``maturation_months`` (``docs/therapy.md``) and rho_start =
    ``start_density_g_cm3`` (e.g. an empty surgical defect) or, if None, the density the
    operator receives (a lesion as imaged). Cells already denser than the target keep
    their density.
    """

    target_density_g_cm3: float
    maturation_months: float
    radius_mm: float | tuple | None = None
    landmark: str | None = None
    center_mm: tuple | None = None
    cell_set: str | None = None
    start_density_g_cm3: float | None = None
    ramp: str = "logistic"
    kind: ClassVar[str] = "defect_fill"
    time_dependent: ClassVar[bool] = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "center_mm", _as_tuple(self.center_mm))
        object.__setattr__(self, "radius_mm", _as_tuple(self.radius_mm))
        _check_region(self.owner, self.landmark, self.center_mm, self.cell_set, allow_cell_set=True)
        if self.cell_set is None:
            if self.radius_mm is None:
                raise ScenarioError(f"{self.owner} needs radius_mm (mm) with landmark/center_mm")
            _semi_axes(self.owner, self.radius_mm)
        _num(self.owner, "target_density_g_cm3", self.target_density_g_cm3, 0.0, _ABS_MAX, lo_open=True,
             unit="g/cm^3")
        if self.start_density_g_cm3 is not None:
            _num(self.owner, "start_density_g_cm3", self.start_density_g_cm3, 0.0, self.target_density_g_cm3,
                 unit="g/cm^3 (at most the target)")
        _num(self.owner, "maturation_months", self.maturation_months, 0.0, 600.0, lo_open=True, unit="months")
        _choice(self.owner, "ramp", self.ramp, RAMPS)

    def check_upper_bound(self, upper: float, density_type: str) -> None:
        _num(self.owner, "target_density_g_cm3", self.target_density_g_cm3, 0.0, upper, lo_open=True,
             unit=f"g/cm^3 ({density_type} density of fully dense cortical bone)")

    def weight(self, mesh, frame=None, density=None):
        return _region_weight(self.owner, mesh, frame, landmark=self.landmark, center_mm=self.center_mm,
                              radius_mm=self.radius_mm, shape="ellipsoid", cell_set=self.cell_set)

    def _apply(self, rho, mesh, frame, t_months):
        f = maturation_fraction(_need_time(self.owner, t_months), self.maturation_months, self.ramp)
        inside = self.weight(mesh, frame) > 0
        start = rho if self.start_density_g_cm3 is None else np.full_like(rho, self.start_density_g_cm3)
        filled = start + f * (self.target_density_g_cm3 - start)
        # cells already denser than the target are not part of the defect: left alone
        return np.where(inside & (rho <= self.target_density_g_cm3), filled, rho)


@dataclass(frozen=True)
class CorticalThickening(_Maturing, Operator):
    """Densify the elements within ``depth_mm`` below the periosteal (outer) surface.

    The periosteal surface is the connected component of the boundary surface that holds
    the node with the largest x (an extreme point always lies on the outer surface), so
    internal cavity surfaces are not thickened. Faces touching nodes of
    ``exclude_node_sets`` (e.g. a distal cut, which is boundary but not periosteum) are
    left out. An element is thickened if its centroid lies within ``depth_mm`` of the
    periosteal surface (exact point-to-triangle distance, quads split in two triangles,
    tet10 faces by their corner triangles). Gain: ``gain_g_cm3`` added or
    ``gain_percent``; optional maturation ramp.
    """

    depth_mm: float
    gain_g_cm3: float | None = None
    gain_percent: float | None = None
    exclude_node_sets: tuple = ()
    maturation_months: float | None = None
    ramp: str = "logistic"
    kind: ClassVar[str] = "cortical_thickening"

    def __post_init__(self) -> None:
        object.__setattr__(self, "exclude_node_sets", tuple(self.exclude_node_sets))
        _num(self.owner, "depth_mm", self.depth_mm, 0.0, 100.0, lo_open=True, unit="mm")
        _check_gain(self.owner, self.gain_g_cm3, self.gain_percent)
        self._check_maturation()

    def weight(self, mesh, frame=None, density=None):
        tris = periosteal_triangles(mesh, self.exclude_node_sets)
        if tris.size == 0:
            raise ScenarioError(f"{self.owner}: no periosteal surface left after excluding "
                                f"{list(self.exclude_node_sets)}")
        d = distance_to_triangles(mesh.cell_centroids(), mesh.points[tris])
        return (d <= self.depth_mm).astype(np.float64)

    def _apply(self, rho, mesh, frame, t_months):
        w = self.weight(mesh, frame)
        return rho + self._maturity(t_months) * _gain_field(self.owner, rho, w, self.gain_g_cm3, self.gain_percent)


def periosteal_triangles(mesh: Mesh, exclude_node_sets: Sequence[str] = ()) -> np.ndarray:
    """(t, 3) node ids of the outer boundary surface as triangles (see :class:`CorticalThickening`)."""
    import scipy.sparse as sp
    from scipy.sparse.csgraph import connected_components


    faces, _ = boundary_faces(mesh)
    if faces.size == 0:
        return np.zeros((0, 3), dtype=np.int64)
    nv = 4 if mesh.cell_type == "hexahedron" else 3
    corners = faces[:, :nv]
    a = np.concatenate([corners[:, i] for i in range(nv)])
    b = np.concatenate([corners[:, (i + 1) % nv] for i in range(nv)])
    g = sp.coo_matrix((np.ones(a.size), (a, b)), shape=(mesh.n_points, mesh.n_points)).tocsr()
    _, labels = connected_components(g, directed=False)
    nodes = np.unique(corners)
    extreme = nodes[np.argmax(mesh.points[nodes, 0])]
    keep = labels[corners[:, 0]] == labels[extreme]
    for name in exclude_node_sets:
        if name not in mesh.node_sets:
            raise ScenarioError(f"exclude_node_sets: {name!r} is not a node set of the mesh; available: "
                                f"{', '.join(sorted(mesh.node_sets)) or '(none)'}")
        keep &= ~np.isin(corners, mesh.node_sets[name]).any(axis=1)
    corners = corners[keep]
    if nv == 4:
        corners = np.vstack([corners[:, [0, 1, 2]], corners[:, [0, 2, 3]]])
    return corners


def periosteal_nodes(mesh: Mesh, exclude_node_sets: Sequence[str] = ()) -> np.ndarray:
    """Sorted corner-node ids of the outer boundary surface."""
    return np.unique(periosteal_triangles(mesh, exclude_node_sets))


def distance_to_triangles(points: np.ndarray, triangles: np.ndarray, k: int = 16) -> np.ndarray:
    """Distance (mm) from each point (p, 3) to the nearest of ``triangles`` (t, 3, 3).

    Candidates are the ``k`` triangles with the nearest centroids (KD-tree), so the result
    is exact unless the true nearest triangle is not among them (very skewed surface
    meshes); the exact closest-point-on-triangle formula (Ericson 2005, Real-Time Collision
    Detection 5.1.5) is used for each candidate.
    """
    from scipy.spatial import cKDTree

    pts = np.asarray(points, dtype=np.float64)
    tri = np.asarray(triangles, dtype=np.float64)
    k = int(min(k, len(tri)))
    _, idx = cKDTree(tri.mean(axis=1)).query(pts, k=k)
    idx = idx.reshape(len(pts), k)
    best = np.full(len(pts), np.inf)
    for j in range(k):
        t = tri[idx[:, j]]
        q = _closest_on_triangle(pts, t[:, 0], t[:, 1], t[:, 2])
        best = np.minimum(best, np.linalg.norm(pts - q, axis=1))
    return best


def _closest_on_triangle(p, a, b, c) -> np.ndarray:
    """Vectorised closest point on triangles (a, b, c) to points p (all (n, 3))."""
    ab, ac, ap = b - a, c - a, p - a
    d1 = (ab * ap).sum(1)
    d2 = (ac * ap).sum(1)
    bp = p - b
    d3 = (ab * bp).sum(1)
    d4 = (ac * bp).sum(1)
    cp = p - c
    d5 = (ab * cp).sum(1)
    d6 = (ac * cp).sum(1)
    va = d3 * d6 - d5 * d4
    vb = d5 * d2 - d1 * d6
    vc = d1 * d4 - d3 * d2
    with np.errstate(divide="ignore", invalid="ignore"):
        denom = 1.0 / (va + vb + vc)
        v = vb * denom
        w = vc * denom
        out = a + ab * v[:, None] + ac * w[:, None]  # interior (face region)
        # edge regions
        m_ab = (vc <= 0) & (d1 >= 0) & (d3 <= 0)
        t_ab = d1 / (d1 - d3)
        m_ac = (vb <= 0) & (d2 >= 0) & (d6 <= 0)
        t_ac = d2 / (d2 - d6)
        m_bc = (va <= 0) & ((d4 - d3) >= 0) & ((d5 - d6) >= 0)
        t_bc = (d4 - d3) / ((d4 - d3) + (d5 - d6))
    out = np.where(m_bc[:, None], b + (c - b) * t_bc[:, None], out)
    out = np.where(m_ac[:, None], a + ac * t_ac[:, None], out)
    out = np.where(m_ab[:, None], a + ab * t_ab[:, None], out)
    # vertex regions (take precedence)
    out = np.where(((d6 >= 0) & (d5 <= d6))[:, None], c, out)
    out = np.where(((d3 >= 0) & (d4 <= d3))[:, None], b, out)
    out = np.where(((d1 <= 0) & (d2 <= 0))[:, None], a, out)
    return out


@dataclass(frozen=True)
class AnnualChange(Operator):
    """Phenomenological drug-like or disease baseline: ``percent_per_year`` compounded.

    rho(t) = rho (1 + p/100)^(t/12), t in months, everywhere or in one compartment
    (``compartment`` with ``cortical_threshold_g_cm3`` or ``cortical_cell_set``). Give
    ``percent_per_year`` or a ``preset``: ``postmenopausal_hip`` (-1.2 %/yr) or
    ``postmenopausal_spine`` (-2.0 %/yr), SWAN early-postmenopausal BMD loss (Greendale et
    al. 2012 JBMR 27:111; hip 1.0-1.4 %/yr, spine 1.8-2.3 %/yr) [V].
    Drug effects (e.g. an antiresorptive) have no preset: they are scenario assumptions,
    or fitted with :mod:`femur_fe.therapy.rates`.
    """

    percent_per_year: float | None = None
    preset: str | None = None
    compartment: str | None = None
    cortical_threshold_g_cm3: float | None = None
    cortical_cell_set: str | None = None
    kind: ClassVar[str] = "annual_change"
    time_dependent: ClassVar[bool] = True

    def __post_init__(self) -> None:
        if (self.percent_per_year is None) == (self.preset is None):
            raise ScenarioError(f"{self.owner} needs exactly one of percent_per_year or preset "
                                f"(one of {', '.join(ANNUAL_CHANGE_PRESETS)})")
        if self.preset is not None:
            _choice(self.owner, "preset", self.preset, tuple(ANNUAL_CHANGE_PRESETS))
        else:
            _num(self.owner, "percent_per_year", self.percent_per_year, -50.0, 100.0, unit="%/yr")
        _check_compartment(self.owner, self.compartment, self.cortical_threshold_g_cm3, self.cortical_cell_set,
                           required=False)

    @property
    def rate_percent_per_year(self) -> float:
        return float(ANNUAL_CHANGE_PRESETS[self.preset] if self.preset else self.percent_per_year)

    def weight(self, mesh, frame=None, density=None):
        if self.compartment is None:
            return np.ones(mesh.n_cells)
        if density is None and self.cortical_cell_set is None:
            raise ScenarioError(f"{self.owner}.weight needs the density (the compartment is a density threshold)")
        return compartment_mask(self.owner, mesh, density, self.compartment, self.cortical_threshold_g_cm3,
                                self.cortical_cell_set).astype(np.float64)

    def _apply(self, rho, mesh, frame, t_months):
        t = _need_time(self.owner, t_months)
        factor = (1.0 + self.rate_percent_per_year / 100.0) ** (t / 12.0)
        w = self.weight(mesh, frame, rho)
        return rho * (1.0 + w * (factor - 1.0))


@dataclass(frozen=True)
class CellModelChange(Operator):
    """Density driven by the Komarova 2003 cell-population model (:mod:`femur_fe.therapy.cellmodels`).

    rho(t) = rho (1 + w (z(t)/z(0) - 1)) with z the model's bone mass under the therapy
    (factors on α1, α2, β1, β2 from ``start_months`` for ``duration_months``), w = 1
    everywhere or the weight of a region (``landmark``/``center_mm`` + ``radius_mm``,
    ``shape``). The factors are scenario assumptions (see ``docs/therapy.md``, cell models, for
    which knobs produce a change in this model).
    """

    alpha1_factor: float = 1.0
    alpha2_factor: float = 1.0
    beta1_factor: float = 1.0
    beta2_factor: float = 1.0
    start_months: float = 0.0
    duration_months: float | None = None
    landmark: str | None = None
    center_mm: tuple | None = None
    radius_mm: float | tuple | None = None
    shape: str = "gaussian"
    kind: ClassVar[str] = "cell_model"
    time_dependent: ClassVar[bool] = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "center_mm", _as_tuple(self.center_mm))
        object.__setattr__(self, "radius_mm", _as_tuple(self.radius_mm))
        self.therapy()  # validates the factors
        _num(self.owner, "start_months", self.start_months, 0.0, 600.0, unit="months")
        if self.duration_months is not None:
            _num(self.owner, "duration_months", self.duration_months, 0.0, 600.0, lo_open=True, unit="months")
        if self.landmark is not None or self.center_mm is not None:
            _check_region(self.owner, self.landmark, self.center_mm)
            if self.radius_mm is None:
                raise ScenarioError(f"{self.owner} with a landmark/center_mm needs radius_mm (mm)")
            _semi_axes(self.owner, self.radius_mm)
            _choice(self.owner, "shape", self.shape, SHAPES)

    def therapy(self):
        dur = math.inf if self.duration_months is None else self.duration_months * DAYS_PER_MONTH
        return CellTherapy(self.alpha1_factor, self.alpha2_factor, self.beta1_factor, self.beta2_factor,
                           start_days=self.start_months * DAYS_PER_MONTH, duration_days=dur)

    def weight(self, mesh, frame=None, density=None):
        if self.landmark is None and self.center_mm is None:
            return np.ones(mesh.n_cells)
        return _region_weight(self.owner, mesh, frame, landmark=self.landmark, center_mm=self.center_mm,
                              radius_mm=self.radius_mm, shape=self.shape)

    def _apply(self, rho, mesh, frame, t_months):
        t = _need_time(self.owner, t_months)
        ratio = float(bone_mass_ratio(self.therapy(), t))
        return rho * (1.0 + self.weight(mesh, frame) * (ratio - 1.0))


OPERATOR_TYPES: dict[str, type[Operator]] = {
    cls.kind: cls for cls in (UniformChange, CompartmentChange, LocalInjection, DefectFill,
                              CorticalThickening, AnnualChange, CellModelChange)
}


# ---------------------------------------------------------------------------------- scenario
def added_mass_g(density_before, density_after, volumes_mm3) -> float:
    """Bone mass added, g: ``sum (rho_after - rho_before) V / 1000`` (rho g/cm^3, V mm^3)."""
    d = np.asarray(density_after, dtype=np.float64) - np.asarray(density_before, dtype=np.float64)
    return float(d @ np.asarray(volumes_mm3, dtype=np.float64)) / 1000.0


def bone_mass_g(density, volumes_mm3) -> float:
    """Total mass ``sum rho V / 1000`` in g (ash mass for ash density)."""
    return float(np.asarray(density, dtype=np.float64) @ np.asarray(volumes_mm3, dtype=np.float64)) / 1000.0


def integral_vbmd(density, volumes_mm3) -> float:
    """Volume-weighted mean density (integral vBMD), g/cm^3."""
    v = np.asarray(volumes_mm3, dtype=np.float64)
    return float(np.asarray(density, dtype=np.float64) @ v / v.sum())


@dataclass(frozen=True)
class ScenarioOutcome:
    """Result of applying a scenario.

    Attributes
    ----------
    name : scenario name
    density : (m,) new density, g/cm^3
    added_mass_g : total mass added (g; negative = lost)
    mass_before_g, mass_after_g : total bone mass before/after, g
    vbmd_before_g_cm3, vbmd_after_g_cm3 : integral vBMD before/after, g/cm^3
    n_capped : number of element values capped at the density bounds (summed over operators)
    t_months : evaluation time used (None if no operator needed one)
    per_operator : list of ``{"type", "added_mass_g", "n_capped"}``
    """

    name: str
    density: np.ndarray
    added_mass_g: float
    mass_before_g: float
    mass_after_g: float
    vbmd_before_g_cm3: float
    vbmd_after_g_cm3: float
    n_capped: int
    t_months: float | None
    density_type: str
    per_operator: list = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (no arrays)."""
        return {k: getattr(self, k) for k in ("name", "added_mass_g", "mass_before_g", "mass_after_g",
                                               "vbmd_before_g_cm3", "vbmd_after_g_cm3", "n_capped", "t_months",
                                               "density_type", "per_operator")}


@dataclass(frozen=True)
class Scenario:
    """A named, ordered list of operators.

    Parameters
    ----------
    name : identifier (used in comparison tables and output folders)
    operators : operators applied in order
    months : default evaluation time, months since therapy start (for time-dependent operators)
    density_type : ``"ash"``, ``"apparent"`` or ``"qct"``: selects the upper density bound
    description : free text
    """

    name: str
    operators: tuple = ()
    months: float | None = None
    density_type: str = "ash"
    description: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise ScenarioError(f"scenario name must be a non-empty string, got {self.name!r}")
        try:  # the name becomes an output folder
            safe_name(self.name, "scenario name")
        except OutputError as exc:
            raise ScenarioError(str(exc)) from None
        object.__setattr__(self, "operators", tuple(self.operators))
        for op in self.operators:
            if not isinstance(op, Operator):
                raise ScenarioError(f"scenario {self.name!r}: operators must be femur_fe.therapy.scenarios operators, got "
                                    f"{type(op).__name__}")
        _choice(f"scenario {self.name!r}", "density_type", self.density_type, tuple(DENSITY_UPPER_BOUND))
        if self.months is not None:
            _num(f"scenario {self.name!r}", "months", self.months, 0.0, 1200.0, unit="months")
        for op in self.operators:
            op.check_upper_bound(self.upper_bound, self.density_type)

    @property
    def upper_bound(self) -> float:
        """Upper density bound, g/cm^3, for this scenario's density type (``docs/therapy.md``)."""
        return DENSITY_UPPER_BOUND[self.density_type]

    @property
    def time_dependent(self) -> bool:
        return any(op.time_dependent for op in self.operators)

    def apply(self, density, mesh: Mesh, frame: Any = None, t_months: float | None = None,
              *, volumes_mm3=None, warn_capped: bool = True) -> ScenarioOutcome:
        """Apply the operators in order; densities kept in [0, upper_bound] after each one.

        Parameters
        ----------
        density : (m,) g/cm^3 of ``density_type``
        mesh : the mesh (centroids, volumes, boundary, cell and node sets)
        frame : anatomy frame for landmark names (``femur_fe.bone.femur_frame(mesh)``...)
        t_months : evaluation time (default: ``self.months``)
        volumes_mm3 : optional precomputed ``mesh.cell_volumes()``
        warn_capped : log a warning when values are capped (always counted in ``n_capped``)
        """
        rho0 = _check_density(density, mesh)
        t = self.months if t_months is None else t_months
        if t is not None:
            t = _num(f"scenario {self.name!r}", "t_months", t, 0.0, 1200.0, unit="months")
        vol = mesh.cell_volumes() if volumes_mm3 is None else np.asarray(volumes_mm3, dtype=np.float64)
        rho = rho0.copy()
        per_op = []
        n_capped = 0
        upper = self.upper_bound
        n_above = int(np.count_nonzero(rho0 > upper))
        if n_above:
            log.info("scenario %r: %d input densities already exceed the %s bound %.3g g/cm^3 (max %.4g); they are "
                     "kept, and no operator raises them further", self.name, n_above, self.density_type, upper,
                     rho0.max())
        total_volume = float(vol.sum())
        for op in self.operators:
            new = op.apply_unclamped(rho, mesh, frame, t)
            below = new < 0.0
            n_zero = int(np.count_nonzero(below))
            zero_fraction = float(vol[below].sum() / total_volume) if n_zero and total_volume > 0 else 0.0
            if n_zero:
                msg = (f"scenario {self.name!r}, {op.owner}: the operator drives the density below 0 in "
                       f"{100 * zero_fraction:.1f} % of the volume ({n_zero} elements, down to {new.min():.3g} "
                       "g/cm3); those densities are clamped to 0, so the bone removed there is less than the "
                       "operator asks")
                if warn_capped:
                    warn("density_clamped_at_zero", msg, log)
                else:
                    log.debug("%s", msg)
                new = np.maximum(new, 0.0)
            # never above the bound, and never above an input value that already exceeds it
            cap = np.maximum(upper, rho)
            over = new > cap
            k = int(np.count_nonzero(over))
            if k:
                log.log(logging.WARNING if warn_capped else logging.DEBUG,
                        "scenario %r, %s: %d element densities would exceed the %s bound %.3g g/cm^3 and were capped",
                        self.name, op.owner, k, self.density_type, upper)
                new = np.where(over, cap, new)
            n_capped += k
            per_op.append({"type": op.kind, "added_mass_g": added_mass_g(rho, new, vol), "n_capped": k,
                           "n_clamped_at_zero": n_zero, "clamped_at_zero_volume_fraction": zero_fraction})
            rho = new
        return ScenarioOutcome(self.name, rho, added_mass_g(rho0, rho, vol), bone_mass_g(rho0, vol),
                               bone_mass_g(rho, vol), integral_vbmd(rho0, vol), integral_vbmd(rho, vol),
                               n_capped, t, self.density_type, per_op)

    def weight(self, mesh: Mesh, frame: Any = None, density=None) -> np.ndarray:
        """(m,) combined footprint: the maximum of the operators' weights (0 if no operators)."""
        if not self.operators:
            return np.zeros(mesh.n_cells)
        return np.max([op.weight(mesh, frame, density) for op in self.operators], axis=0)

    def to_dict(self) -> dict[str, Any]:
        """The resolved ``[[scenario]]`` table (round-trips through :func:`scenarios_from_dict`)."""
        out: dict[str, Any] = {"name": self.name, "density_type": self.density_type}
        if self.months is not None:
            out["months"] = self.months
        if self.description:
            out["description"] = self.description
        out["operator"] = [op.to_dict() for op in self.operators]
        return out


# ---------------------------------------------------------------------------------- mass matching
def match_added_mass(make_operator: Callable[[float], Operator], density, mesh: Mesh, target_g: float, *,
                     frame: Any = None, t_months: float | None = None, density_type: str = "ash",
                     bracket: tuple[float, float] = (0.0, 1.0), rtol: float = 1e-6,
                     max_iter: int = 200) -> tuple[Operator, ScenarioOutcome]:
    """Find the gain ``g`` for which ``make_operator(g)`` adds ``target_g`` grams of bone.

    The added mass is monotone in the gain but not linear once densities are capped, so
    ``g`` is found by bisection (bracket expanded by doubling). Used to compare scenarios
    with the SAME added mass (uniform vs injection vs optimal placement).

    Returns the operator and the outcome of the one-operator scenario.
    """
    target = _num("match_added_mass", "target_g", target_g, 0.0, math.inf, lo_open=True, unit="g")
    vol = mesh.cell_volumes()

    def outcome(g: float) -> ScenarioOutcome:
        sc = Scenario("match", (make_operator(g),), density_type=density_type)
        return sc.apply(density, mesh, frame, t_months, volumes_mm3=vol, warn_capped=False)

    lo, hi = bracket
    m_hi = outcome(hi).added_mass_g
    for _ in range(60):
        if m_hi >= target:
            break
        try:
            m_next = outcome(2.0 * hi if hi > 0 else 1.0).added_mass_g
        except ScenarioError:  # the gain left the operator's allowed range
            m_next = m_hi
        if m_next <= m_hi * (1 + 1e-12):
            break
        lo, hi = hi, 2.0 * hi if hi > 0 else 1.0
        m_hi = m_next
    if m_hi < target:
        raise ScenarioError(f"match_added_mass: cannot add {target:g} g with this operator (at most {m_hi:.4g} g "
                            "before the density bound caps every element); enlarge the region or lower the target")
    for _ in range(max_iter):
        mid = 0.5 * (lo + hi)
        m = outcome(mid).added_mass_g
        if abs(m - target) <= rtol * target:
            lo = hi = mid
            break
        if m < target:
            lo = mid
        else:
            hi = mid
    g = 0.5 * (lo + hi)
    op = make_operator(g)
    return op, outcome(g)


# ---------------------------------------------------------------------------------- TOML
__all__ = ["Scenario", "ScenarioOutcome", "Operator", "UniformChange", "CompartmentChange", "LocalInjection",
           "DefectFill", "CorticalThickening", "AnnualChange", "CellModelChange", "OPERATOR_TYPES",
           "DENSITY_UPPER_BOUND", "ANNUAL_CHANGE_PRESETS", "maturation_fraction", "resolve_landmark", "available_landmarks",
           "LANDMARK_ALIASES", "added_mass_g", "bone_mass_g",
           "integral_vbmd", "match_added_mass", "periosteal_nodes", "periosteal_triangles",
           "distance_to_triangles", "compartment_mask"]
