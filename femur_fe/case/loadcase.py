"""Load-case files: TOML schema, validation into frozen dataclasses, resolved dump.

A load case is a TOML file (``schema_version = 1``) with the tables ``[material]``,
``[anatomy]``, ``[loading]``, ``[caps]``, ``[regions.<name>]``, ``[[boundary]]``,
``[failure]``, ``[nonlinear]``, ``[solver]`` and ``[output]``; every key, default, range and
unit is listed in ``docs/schemas.md`` (generated from the validators here). Unknown keys are
rejected with the closest valid key suggested; wrong types and ranges are named with the
file and the table. :meth:`LoadCase.to_dict` returns the fully resolved case (every default
filled in), which :func:`load_case` reads back to an equal case, so results embed exactly
what was run. Units: mm, N, MPa, degrees.
"""
from __future__ import annotations

import inspect
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Callable, Mapping

from ..analysis.failure import ALIASES, CRITERIA, failure_criterion
from ..bone.calibration import DensityCalibration
from ..bone.materials import material_law
from ..errors import LoadCaseError
from ..io.tables import MISSING, Table, freeze, plain, set_path, typename
from ..io.toml_io import read_toml

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
BONES = ("femur", "vertebra")
DIRECTIONS = {"femur": ("sideways_fall", "stance", "vector"), "vertebra": ("axial", "wedge", "vector")}
#: direction-specific [loading] keys and their defaults (None: required)
DIRECTION_KEYS: dict[str, dict[str, Any]] = {
    # Zani et al. 2014, "A new paradigm for the in vitro simulation of sideways fall loading of
    # the proximal femur" [V]: the standard sideways-fall configuration
    "sideways_fall": {"adduction_deg": 10.0, "internal_rotation_deg": 15.0},
    # Bergmann et al. 2001 (HIP98, peak hip contact force in walking): about 13 deg from the
    # shaft axis in the frontal plane and 8 deg in the sagittal plane [M]; Bergmann 1993 [V]:
    # the force on the head acts from medial to lateral and from ventral to dorsal.
    "stance": {"frontal_deg": 13.0, "sagittal_deg": 8.0},
    "axial": {},
    "wedge": {"flexion_deg": None, "hinge": "posterior_edge"},
    "vector": {"vector": None},
}
MAPPING_METHODS = ("centroid", "element_average", "modulus_average", "quadrature")
MAPPING_ALIASES = {"integrate_hu": "element_average", "integrate_e": "modulus_average"}
REGION_KINDS: dict[str, dict[str, Any]] = {
    "head_patch": {"patch_angle_deg": 30.0},
    "trochanter_patch": {"depth_mm": 5.0, "radius_mm": 30.0},
    "distal_cut": {"depth_mm": 5.0, "volume": False},
    "superior_endplate": {"depth_mm": 5.0, "normal_angle_deg": 45.0},
    "inferior_endplate": {"depth_mm": 5.0, "normal_angle_deg": 45.0},
    "node_set": {"node_set": None},
    "nodes": {"nodes": None},
}
STANDARD_REGIONS = {"head_contact": "head_patch", "trochanter_contact": "trochanter_patch",
                    "distal_cut": "distal_cut", "superior_endplate": "superior_endplate",
                    "inferior_endplate": "inferior_endplate"}
DEFAULT_BOUNDARY = {
    # Bonelab/Ogo SidewaysFallFe [V-code]: head displaced, trochanter cap and
    # distal femur fixed
    "sideways_fall": (("head_contact", "apply", "load"), ("trochanter_contact", "fix", "all"),
                      ("distal_cut", "fix", "all")),
    # single-leg stance: head loaded, distal end fixed (Schileo et al. 2014, J Biomech 47:3531)
    "stance": (("head_contact", "apply", "load"), ("distal_cut", "fix", "all")),
    # vertebral compression (Bonelab/Ogo SpineCompressionFe) [V-code]
    "axial": (("superior_endplate", "apply", "load"), ("inferior_endplate", "fix", "all")),
    "wedge": (("superior_endplate", "apply", "load"), ("inferior_endplate", "fix", "all")),
}
#: [caps] young_mpa above this is no material (diamond is ~1.05e6 MPa)
CAPS_MAX_YOUNG_MPA = 1.2e6
#: smallest displacement (mm) or force (N) of [loading]: the solution scales with the load, and
#: smaller loads only lose precision
MIN_LOAD = 1e-6
#: [nonlinear] endpoint_percent below this is a fraction written where a percent is meant
MIN_ENDPOINT_PERCENT = 0.5
DEFAULT_FIELDS = ("displacement", "von_mises", "principal_strain", "young_modulus")


# =========================================================================== sections
@dataclass(frozen=True)
class Calibration:
    """``[material.calibration]``: what the CT holds and how it becomes density.

    ``ct_unit`` ``"HU"`` needs ``method = "internal"`` (phantomless, from the scan's own tissues;
    ``tissue_hu`` may give their mean HU) or ``slope``/``intercept`` (with ``unit``) or ``phantom``;
    ``"mg/cm3"``/``"g/cm3"`` CTs hold ``ct_density_type`` density already.
    ``qct_to_ash`` chooses the QCT -> ash relation used when the law needs ash/apparent
    density (:func:`femur_fe.bone.calibration.convert_density`).
    """

    ct_unit: str = "mg/cm3"
    ct_density_type: str = "qct"
    slope: float | None = None
    intercept: float | None = None
    unit: str = "mg/cm3"
    mineral: str = "k2hpo4"
    phantom: str = ""
    qct_to_ash: str = "keyak1994"
    source: str = ""
    method: str = "linear"
    tissue_hu: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))

    def density_calibration(self):
        """The :class:`femur_fe.bone.DensityCalibration` for an HU CT (None for a density CT)."""
        if self.ct_unit != "HU" or self.slope is None:
            return None

        return DensityCalibration.from_dict({"slope": self.slope, "intercept": self.intercept,
                                             "unit": self.unit, "mineral": self.mineral, "source": self.source})


@dataclass(frozen=True)
class Material:
    """``[material]``: density-modulus law (registry name + parameters) and mapping."""

    law: str
    poisson: float = 0.3
    e_min_mpa: float = 0.1
    mapping: str = "modulus_average"
    params: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    calibration: Calibration = field(default_factory=Calibration)

    def build(self):
        """The law object: ``femur_fe.bone.material_law(law, e_min_mpa=, poisson=, **params)``."""
        return material_law(self.law, e_min_mpa=self.e_min_mpa, poisson=self.poisson, **dict(self.params))


@dataclass(frozen=True)
class Anatomy:
    """``[anatomy]``: overrides for the automatic frame, world mm / directions ("auto" = found).

    Femur: side, head_centre_mm, head_radius_mm, shaft_axis, neck_axis, greater_trochanter_mm.
    Vertebra: anterior, superior, body_axis.
    """

    side: str = "auto"
    anterior: Any = "auto"
    superior: Any = "auto"
    head_centre_mm: Any = "auto"
    head_radius_mm: Any = "auto"
    shaft_axis: Any = "auto"
    neck_axis: Any = "auto"
    greater_trochanter_mm: Any = "auto"
    body_axis: Any = "auto"

    def overrides(self, bone: str) -> dict[str, Any]:
        """The keys of ``bone`` that are set (not "auto"), by [anatomy] name."""
        keys = FEMUR_ANATOMY_KEYS if bone == "femur" else VERTEBRA_ANATOMY_KEYS
        return {k: getattr(self, k) for k in keys if getattr(self, k) != "auto"}


#: [anatomy] keys and their kinds: side choice, points (world mm), directions, a length
FEMUR_ANATOMY_KEYS = {"side": "side", "head_centre_mm": "point", "head_radius_mm": "length",
                      "shaft_axis": "direction", "neck_axis": "direction", "greater_trochanter_mm": "point"}
VERTEBRA_ANATOMY_KEYS = {"anterior": "direction", "superior": "direction", "body_axis": "direction"}


@dataclass(frozen=True)
class Loading:
    """``[loading]``: control mode, magnitude and direction (angles in degrees)."""

    mode: str
    direction: str
    displacement_mm: float | None = None
    force_n: float | None = None
    angles: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))

    def __getattr__(self, name: str) -> Any:  # loading.adduction_deg etc.
        angles = self.__dict__.get("angles", {})
        if name in angles:
            return angles[name]
        raise AttributeError(f"Loading has no {name!r} (direction {self.__dict__.get('direction')!r} "
                             f"has {sorted(angles)})")

    @property
    def magnitude(self) -> float:
        """displacement_mm (displacement mode) or force_n (force mode)."""
        return float(self.displacement_mm if self.mode == "displacement" else self.force_n)


@dataclass(frozen=True)
class Caps:
    """``[caps]``: load-spreading caps on the loaded/supported regions (PMMA or rigid)."""

    kind: str = "pmma"
    young_mpa: float = 2500.0
    poisson: float = 0.3
    thickness_mm: float = 2.0
    regions: tuple[str, ...] = ()


@dataclass(frozen=True)
class RegionSpec:
    """``[regions.<name>]``: how a region is selected (automatic kind or explicit nodes)."""

    name: str
    kind: str
    params: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    min_nodes: int = 3
    min_area_mm2: float = 1.0

    def __getattr__(self, name: str) -> Any:
        params = self.__dict__.get("params", {})
        if name in params:
            return params[name]
        raise AttributeError(name)


@dataclass(frozen=True)
class Boundary:
    """``[[boundary]]``: ``apply = "load"`` or ``fix = "all" | "along_load" | "across_load"`` on a region
    (``across_load``: the two components perpendicular to the load, free along it)."""

    region: str
    apply: str | None = None
    fix: str | None = None


@dataclass(frozen=True)
class Failure:
    """``[failure]``: criterion name and parameters (``femur_fe.analysis.failure_criterion``), and which
    strength (``"linear"`` or ``"nonlinear"``, the latter when run) the factor of risk and the
    classification use."""

    criterion: str
    params: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    reference_strength: str = "nonlinear"

    def build(self):
        return failure_criterion(self.criterion, **dict(self.params))


@dataclass(frozen=True)
class Nonlinear:
    """``[nonlinear]``: strength definition of the nonlinear analysis (``femur_fe.analysis.run_nonlinear``)."""

    strength: str = "endpoint"
    endpoint_percent: float = 4.0
    characteristic_length_mm: float | None = None  # None = "auto"
    hardening: float = 0.0


@dataclass(frozen=True)
class Solver:
    """``[solver]``: linear solver choice (``femur_fe.fe.LinearSolver``)."""

    method: str = "auto"
    rtol: float = 1e-8
    maxiter: int = 5000


@dataclass(frozen=True)
class Output:
    """``[output]``: result fields, reaction regions and file format."""

    fields: tuple[str, ...] = DEFAULT_FIELDS
    reactions: tuple[str, ...] = ()
    format: str = "vtu"


# ----------------------------------------------------------------------------- section parsers
def _parse_calibration(raw: Any, source: str, bone: str) -> Calibration:
    t = Table(raw, "[material.calibration]", source, LoadCaseError, schema="load case [material.calibration]")
    ct_unit = t.get("ct_unit", "str", "mg/cm3", choices=("HU", "mg/cm3", "g/cm3"))
    ct_density_type = t.get("ct_density_type", "str", "qct", choices=("qct", "ash", "apparent"))
    slope = t.get("slope", "float", None)
    intercept = t.get("intercept", "float", None)
    unit = t.get("unit", "str", "mg/cm3", choices=("mg/cm3", "g/cm3"))
    mineral = t.get("mineral", "str", "k2hpo4", choices=("k2hpo4", "ha"))
    phantom = t.get("phantom", "str", "")
    qct_to_ash = t.get("qct_to_ash", "str", "schileo2008" if bone == "femur" else "keyak1994",
                       choices=("keyak1994", "keyak2005", "schileo2008", "identity"))
    src = t.get("source", "str", "")
    method = t.get("method", "str", "internal" if ct_unit == "HU" and slope is None and not phantom else "linear",
                   choices=("linear", "internal"), note="default: internal for an HU CT without slope/intercept")
    tissue_hu = t.get("tissue_hu", "table", {})
    t.finish()
    tissues = ("air", "adipose", "muscle", "blood", "cortical_bone")
    for k, v in tissue_hu.items():
        if k not in tissues:
            raise t.err(f"tissue_hu: unknown tissue {k!r}; tissues: {', '.join(tissues)}")
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not -1100 <= v <= 2500:
            raise t.err(f"tissue_hu.{k} = {v!r} must be a mean HU in -1100..2500")
    if method == "internal" and ct_unit != "HU":
        raise t.err(f"method = 'internal' calibrates an HU CT; ct_unit = {ct_unit!r} is already a density")
    if method == "internal" and (slope is not None or phantom):
        raise t.err("method = 'internal' fits the calibration from the scan; remove slope/intercept/phantom")
    if tissue_hu and method != "internal":
        raise t.err("tissue_hu is for method = 'internal'")
    if (slope is None) != (intercept is None):
        raise t.err("give both slope and intercept (HU -> QCT density), or neither")
    if slope is not None and phantom:
        raise t.err("give either slope/intercept or phantom, not both")
    if ct_unit == "HU" and method == "linear" and slope is None and not phantom:
        raise t.err("ct_unit = 'HU' needs a calibration: method = 'internal' (phantomless), slope and intercept "
                    "(with unit), or phantom = '<table>' (command line: --calibration internal or --calibration "
                    "PHANTOM.json)")
    if ct_unit != "HU" and (slope is not None or phantom):
        raise t.err(f"ct_unit = {ct_unit!r} is already a density: remove slope/intercept/phantom "
                    "(or set ct_unit = 'HU')")
    if slope is not None and slope <= 0:
        raise t.err(f"slope = {slope} must be > 0 (density increases with HU)")
    cal = Calibration(ct_unit, ct_density_type, slope, intercept, unit, mineral, phantom, qct_to_ash, src,
                      method, freeze({k: float(v) for k, v in tissue_hu.items()}))
    if slope is not None:
        try:
            cal.density_calibration()
        except LoadCaseError:
            raise
        except Exception as exc:  # MaterialError with the unit hint
            raise t.err(str(exc)) from None
    return cal


def _parse_material(raw: Any, source: str, bone: str) -> Material:
    t = Table(raw, "[material]", source, LoadCaseError, schema="load case [material]")
    law = t.get("law", "str", "morgan2003_femoral_neck" if bone == "femur" else "kopperdahl2002")
    poisson = t.get("poisson", "float", 0.3, lo=-1.0, hi=0.5, lo_open=True, hi_open=True)
    e_min = t.get("e_min_mpa", "float", 0.1, lo=0.0)
    mapping = t.get("mapping", "str", "modulus_average",
                    choices=MAPPING_METHODS + tuple(MAPPING_ALIASES))
    mapping = MAPPING_ALIASES.get(mapping, mapping)
    params = t.get("params", "table", {})
    cal = _parse_calibration(t.get("calibration", "table", {}), source, bone)
    t.finish()
    for k, v in params.items():
        if not isinstance(v, (int, float, str, bool, list)):
            raise t.err(f"params.{k} must be a number, string, boolean or array, got {typename(v)}")
    mat = Material(law, poisson, e_min, mapping, freeze(params), cal)
    try:
        mat.build()
    except Exception as exc:
        raise t.err(str(exc)) from None
    return mat


def _parse_anatomy(raw: Any, source: str, bone: str) -> Anatomy:
    t = Table(raw, "[anatomy]", source, LoadCaseError, schema="load case [anatomy]")
    values: dict[str, Any] = {}
    for key, kind in (FEMUR_ANATOMY_KEYS if bone == "femur" else VERTEBRA_ANATOMY_KEYS).items():
        if kind == "side":
            values[key] = t.get(key, "str", "auto", choices=("auto", "left", "right"))
            continue
        if kind == "length":
            v = t.get(key, "str_or_float", "auto", lo=0.0, lo_open=True)
        else:
            v = t.get(key, "str_or_vec3", "auto")
        what = {"point": "a point [x, y, z] in world mm", "direction": "a direction [x, y, z]",
                "length": "a length in mm"}[kind]
        if isinstance(v, str) and v != "auto":
            raise t.err(f"{key} must be 'auto' or {what}, got {v!r}")
        if kind == "direction" and not isinstance(v, str) and not any(v):
            raise t.err(f"{key} must be a non-zero direction, got {list(v)}")
        values[key] = v
    t.finish()
    return Anatomy(**values)


def _parse_loading(raw: Any, source: str, bone: str) -> Loading:
    t = Table(raw, "[loading]", source, LoadCaseError, schema="load case [loading]")
    mode = t.get("mode", "str", "displacement", choices=("displacement", "force"))
    direction = t.get("direction", "str", DIRECTIONS[bone][0], choices=DIRECTIONS[bone])
    disp_default = (1.0 if bone == "femur" else 0.2) if mode == "displacement" else None
    disp = t.get("displacement_mm", "float", disp_default)
    force = t.get("force_n", "float", None)
    angles: dict[str, Any] = {}
    for key, default in DIRECTION_KEYS[direction].items():
        if key == "vector":
            angles[key] = t.get(key, "vec3", MISSING if default is None else default)
        elif key == "hinge":
            angles[key] = t.get(key, "str", default, choices=("posterior_edge", "centre"))
        elif key == "flexion_deg":
            angles[key] = t.get(key, "float", MISSING if default is None else default, lo=0.0, hi=20.0,
                                lo_open=True)
        else:
            angles[key] = t.get(key, "float", default, lo=-90.0, hi=90.0)
    other = sorted({k for d in DIRECTION_KEYS.values() for k in d} - set(DIRECTION_KEYS[direction]))
    for key in other:
        if t.has(key):
            raise t.err(f"{key} does not apply to direction = {direction!r} (its keys: "
                        f"{', '.join(DIRECTION_KEYS[direction]) or 'none'})")
    t.finish()
    if direction == "wedge" and not t.has("displacement_mm"):
        disp = 0.0  # pure rotation about the hinge unless an axial displacement is given
    if mode == "displacement":
        if force is not None:
            raise t.err("force_n is given but mode = 'displacement'; set mode = 'force' or remove force_n")
        if direction == "wedge" and disp is not None and disp >= 0:
            pass
        elif disp is None or disp <= 0:
            raise t.err(f"displacement_mm must be > 0 (the magnitude along the load direction), got {disp!r}")
        if disp > 20:
            raise t.err(f"displacement_mm = {disp} is too large for a linear analysis (> 20 mm); units are mm")
        if 0 < disp < MIN_LOAD:
            raise t.err(f"displacement_mm = {disp:g} mm is below {MIN_LOAD:g} mm, under the round-off of the solution; "
                        "the results scale with the load: give a displacement in mm, e.g. 0.2")
    else:
        if force is None:
            raise t.err("mode = 'force' needs force_n (N, magnitude along the load direction)")
        if force <= 0:
            raise t.err(f"force_n must be > 0 N, got {force}")
        if force < MIN_LOAD:
            raise t.err(f"force_n = {force:g} N is below {MIN_LOAD:g} N, under the round-off of the solution; "
                        "the results scale with the load: give a force in N, e.g. 1000")
        if t.has("displacement_mm"):
            raise t.err("displacement_mm is given but mode = 'force'; remove it or set mode = 'displacement'")
        disp = None
        if direction == "wedge":
            raise t.err("direction = 'wedge' is a prescribed rotation: use mode = 'displacement'")
    return Loading(mode, direction, disp, force, freeze(angles))


def _parse_caps(raw: Any, source: str, bone: str, default_regions: tuple[str, ...]) -> Caps:
    t = Table(raw, "[caps]", source, LoadCaseError, schema="load case [caps]")
    kind = t.get("kind", "str", "pmma", choices=("none", "rigid", "pmma"))
    young = t.get("young_mpa", "float", 2500.0, lo=0.0, lo_open=True,
                  note=f"above {CAPS_MAX_YOUNG_MPA:g}: refused (no material; a rigid plate is kind = 'rigid')")
    if young > CAPS_MAX_YOUNG_MPA:
        raise t.err(f"young_mpa = {young:g} MPa is stiffer than any material (diamond ~1.05e6 MPa, steel 2.1e5, "
                    "PMMA 2500); for an ideally rigid plate use kind = 'rigid'")
    nu = t.get("poisson", "float", 0.3, lo=-1.0, hi=0.5, lo_open=True, hi_open=True)
    thick = t.get("thickness_mm", "float", 2.0 if bone == "femur" else 10.0, lo=0.0, lo_open=True)
    regions = t.get("regions", "strlist", default_regions if kind != "none" else ())
    t.finish()
    return Caps(kind, young, nu, thick, tuple(regions))


def _parse_region(name: str, raw: Any, source: str) -> RegionSpec:
    t = Table(raw, f"[regions.{name}]", source, LoadCaseError, schema="load case [regions.<name>]")
    if t.has("node_set") and t.has("nodes"):
        raise t.err("give either node_set or nodes, not both")
    implied = "node_set" if t.has("node_set") else "nodes" if t.has("nodes") else STANDARD_REGIONS.get(name)
    kind = t.get("kind", "str", MISSING if implied is None else implied, choices=tuple(REGION_KINDS))
    if implied in ("node_set", "nodes") and kind != implied:
        raise t.err(f"{implied} overrides the automatic selection: remove kind = {kind!r} (or the {implied} key)")
    params: dict[str, Any] = {}
    for key, default in REGION_KINDS[kind].items():
        if key == "node_set":
            params[key] = t.get(key, "str")
        elif key == "nodes":
            params[key] = t.get(key, "intlist")
            if any(i < 0 for i in params[key]):
                raise t.err("nodes must be 0-based node ids >= 0")
        elif key == "volume":
            params[key] = t.get(key, "bool", default)
        elif key.endswith("_deg"):
            params[key] = t.get(key, "float", default, lo=0.0, hi=90.0, lo_open=True)
        else:
            params[key] = t.get(key, "float", default, lo=0.0, lo_open=True)
    explicit = kind in ("node_set", "nodes")
    min_nodes = t.get("min_nodes", "int", 3 if not explicit else 1, lo=1)
    min_area = t.get("min_area_mm2", "float", 0.0 if explicit else 1.0, lo=0.0)
    other = sorted({k for d in REGION_KINDS.values() for k in d} - set(REGION_KINDS[kind]))
    for key in other:
        if t.has(key):
            raise t.err(f"{key} does not apply to kind = {kind!r} (its keys: {', '.join(REGION_KINDS[kind])}, "
                        "min_nodes, min_area_mm2)")
    t.finish()
    return RegionSpec(name, kind, freeze(params), min_nodes, min_area)


def _parse_boundary(raw: Any, source: str, i: int) -> Boundary:
    t = Table(raw, f"[[boundary]] #{i + 1}", source, LoadCaseError, schema="load case [[boundary]]")
    region = t.get("region", "str")
    apply = t.get("apply", "str", None, choices=("load",))
    fix = t.get("fix", "str", None, choices=("all", "along_load", "across_load"))
    t.finish()
    if (apply is None) == (fix is None):
        raise t.err(f"region {region!r} needs exactly one of apply = 'load' or fix = 'all' | 'along_load' | "
                    "'across_load'")
    return Boundary(region, apply, fix)


def _parse_failure(raw: Any, source: str, bone: str, direction: str) -> Failure:
    t = Table(raw, "[failure]", source, LoadCaseError, schema="load case [failure]")
    # vertebral compression: the whole-body apparent strain made for continuum vertebral models
    # (Crawford 2003); a wedge (rotation) has no compressed height, so it keeps Pistoia
    default = ("max_principal_strain" if bone == "femur" else "pistoia" if direction == "wedge"
               else "apparent_strain")
    crit = t.get("criterion", "str", default)
    params = t.get("params", "table", {})
    # femur: Schileo's linear criterion is the one validated against femoral fracture tests; the
    # perfectly plastic nonlinear model has no fracture and gives a limit load ~2x first failure.
    # vertebra: the clinical thresholds (4500 / 6500 N) are nonlinear FE strengths (BCT).
    reference = t.get("reference_strength", "str", "linear" if bone == "femur" else "nonlinear",
                      choices=("linear", "nonlinear"))
    t.finish()
    key = ALIASES.get(crit.strip().lower(), crit.strip().lower())
    try:
        failure_criterion(key, **params)
    except Exception as exc:
        raise t.err(str(exc)) from None
    # fill the criterion's defaults so the resolved case is complete
    sig = inspect.signature(CRITERIA[key].__init__)
    full = {p.name: p.default for p in sig.parameters.values()
            if p.name != "self" and p.default is not inspect.Parameter.empty and p.default is not None}
    full.update(params)
    return Failure(key, freeze(full), reference)


def _parse_nonlinear(raw: Any, source: str) -> Nonlinear:
    t = Table(raw, "[nonlinear]", source, LoadCaseError, schema="load case [nonlinear]")
    strength = t.get("strength", "str", "endpoint", choices=("endpoint", "peak"))
    pct = t.get("endpoint_percent", "float", 4.0, lo=0.0, hi=50.0, lo_open=True,
                note=f"below {MIN_ENDPOINT_PERCENT:g}: refused as a fraction written for a percent")
    if pct < MIN_ENDPOINT_PERCENT:
        raise t.err(f"endpoint_percent = {pct:g} is a percent of the characteristic length; {pct:g} looks like a "
                    f"fraction ({pct:g} = {100 * pct:g} %): write endpoint_percent = {100 * pct:g} (Ogo: 4.0)")
    raw_len = t.raw.get("characteristic_length_mm", "auto")
    if isinstance(raw_len, str):
        if raw_len != "auto":
            raise t.err(f"characteristic_length_mm must be \"auto\" or a length in mm > 0, got {raw_len!r}")
        t.get("characteristic_length_mm", "str", "auto")
        length = None
    else:
        length = t.get("characteristic_length_mm", "float", None, lo=0.0, lo_open=True)
    hardening = t.get("hardening", "float", 0.0, lo=0.0, hi=1.0, hi_open=True)
    t.finish()
    return Nonlinear(strength, pct, length, hardening)


def _parse_solver(raw: Any, source: str) -> Solver:
    t = Table(raw, "[solver]", source, LoadCaseError, schema="load case [solver]")
    method = t.get("method", "str", "auto",
                   choices=("auto", "direct", "amg", "voxel", "direct-superlu", "direct-cholmod"))
    rtol = t.get("rtol", "float", 1e-8, lo=0.0, hi=1e-2, lo_open=True)
    maxiter = t.get("maxiter", "int", 5000, lo=1)
    t.finish()
    return Solver(method, rtol, maxiter)


def _parse_output(raw: Any, source: str, default_reactions: tuple[str, ...]) -> Output:
    t = Table(raw, "[output]", source, LoadCaseError, schema="load case [output]")
    fields_ = t.get("fields", "strlist", DEFAULT_FIELDS)
    reactions = t.get("reactions", "strlist", default_reactions)
    fmt = t.get("format", "str", "vtu", choices=("vtu", "xdmf"))
    t.finish()
    return Output(tuple(fields_), tuple(reactions), fmt)


# ----------------------------------------------------------------------------- extension registry
@dataclass(frozen=True)
class _Extension:
    parse: Callable[[Mapping[str, Any], str], Any]
    to_dict: Callable[[Any], dict]


_EXTENSIONS: dict[str, _Extension] = {}
_CORE_KEYS = ("schema_version", "name", "description", "bone", "material", "anatomy", "loading", "caps",
              "regions", "boundary", "failure", "nonlinear", "solver", "output")


def register_section(name: str, parse: Callable[[Mapping[str, Any], str], Any],
                     to_dict: Callable[[Any], dict] | None = None) -> None:
    """Register a validator for an extra top-level table ``[name]`` (e.g. ``scenario``).

    ``parse(table, source)`` returns the validated object (raise :class:`LoadCaseError` with
    the source and key on bad input); ``to_dict(obj)`` returns the resolved table (default:
    ``obj.to_dict()``). The object is available as ``case.extensions[name]``; a case
    without the table has no entry.
    """
    if name in _CORE_KEYS:
        raise LoadCaseError(f"section name {name!r} is a core load-case key")
    _EXTENSIONS[name] = _Extension(parse, to_dict or (lambda obj: obj.to_dict()))


# =========================================================================== the load case
@dataclass(frozen=True)
class LoadCase:
    """A validated load case (see the module docstring for the tables and defaults)."""

    name: str
    description: str
    bone: str
    material: Material
    anatomy: Anatomy
    loading: Loading
    caps: Caps
    regions: Mapping[str, RegionSpec]
    boundary: tuple[Boundary, ...]
    failure: Failure
    solver: Solver
    output: Output
    nonlinear: Nonlinear = Nonlinear()
    extensions: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    schema_version: int = SCHEMA_VERSION
    source: str = field(default="<dict>", compare=False)

    # ------------------------------------------------------------------ views
    def region(self, name: str) -> RegionSpec:
        if name not in self.regions:
            raise LoadCaseError(f"{self.source}: no region {name!r}; defined: {', '.join(self.regions)}")
        return self.regions[name]

    @property
    def loaded_regions(self) -> tuple[str, ...]:
        return tuple(b.region for b in self.boundary if b.apply)

    @property
    def fixed_regions(self) -> tuple[str, ...]:
        return tuple(b.region for b in self.boundary if b.fix)

    def to_dict(self) -> dict[str, Any]:
        """The fully resolved case as plain TOML/JSON types; ``load_case(d)`` gives an equal case."""
        cal = self.material.calibration
        out: dict[str, Any] = {
            "schema_version": self.schema_version, "name": self.name, "description": self.description,
            "bone": self.bone,
            "material": {"law": self.material.law, "poisson": self.material.poisson,
                         "e_min_mpa": self.material.e_min_mpa, "mapping": self.material.mapping,
                         "params": dict(self.material.params),
                         "calibration": {k: (dict(getattr(cal, k)) if k == "tissue_hu" else getattr(cal, k))
                                         for k in Calibration.__dataclass_fields__}},
            "anatomy": {k: getattr(self.anatomy, k) for k in
                        (FEMUR_ANATOMY_KEYS if self.bone == "femur" else VERTEBRA_ANATOMY_KEYS)},
            "loading": {"mode": self.loading.mode, "direction": self.loading.direction,
                        "displacement_mm": self.loading.displacement_mm, "force_n": self.loading.force_n,
                        **dict(self.loading.angles)},
            "caps": {"kind": self.caps.kind, "young_mpa": self.caps.young_mpa, "poisson": self.caps.poisson,
                     "thickness_mm": self.caps.thickness_mm, "regions": self.caps.regions},
            "regions": {n: {"kind": r.kind, **dict(r.params), "min_nodes": r.min_nodes,
                            "min_area_mm2": r.min_area_mm2} for n, r in self.regions.items()},
            "boundary": [{k: v for k, v in (("region", b.region), ("apply", b.apply), ("fix", b.fix))
                          if v is not None} for b in self.boundary],
            "failure": {"criterion": self.failure.criterion, "params": dict(self.failure.params),
                        "reference_strength": self.failure.reference_strength},
            "nonlinear": {"strength": self.nonlinear.strength, "endpoint_percent": self.nonlinear.endpoint_percent,
                          "characteristic_length_mm": ("auto" if self.nonlinear.characteristic_length_mm is None
                                                       else self.nonlinear.characteristic_length_mm),
                          "hardening": self.nonlinear.hardening},
            "solver": {"method": self.solver.method, "rtol": self.solver.rtol, "maxiter": self.solver.maxiter},
            "output": {"fields": self.output.fields, "reactions": self.output.reactions,
                       "format": self.output.format},
        }
        if out["material"]["calibration"]["slope"] is None:
            for k in ("slope", "intercept"):
                out["material"]["calibration"].pop(k)
        for name, obj in self.extensions.items():
            out[name] = _EXTENSIONS[name].to_dict(obj) if name in _EXTENSIONS else obj
        return plain(out)

    def to_toml(self) -> str:
        """The resolved case as TOML text (reads back with :func:`load_case`)."""
        return dumps_toml(self.to_dict())

    def with_values(self, values: Mapping[str, Any]) -> "LoadCase":
        """A copy with values set by dotted key path, e.g. ``{"loading.adduction_deg": 5.0}``.

        Paths walk tables by key and arrays by 0-based index (``"boundary.1.fix"``). The
        result is validated again; an invalid path raises :class:`LoadCaseError` listing the
        valid keys at that level. Setting ``loading.direction`` drops the old direction's
        angles (the new direction's defaults apply).
        """
        d = self.to_dict()
        for path, value in values.items():
            parts = str(path).split(".")
            if parts[0] in _EXTENSIONS and parts[0] not in d:
                d[parts[0]] = {}
            if parts == ["loading", "direction"]:  # the new direction's angles and defaults apply
                for k in {k for dk in DIRECTION_KEYS.values() for k in dk}:
                    d["loading"].pop(k, None)
                if value == "wedge":
                    d["loading"].pop("force_n", None)
            if parts == ["loading", "mode"]:
                d["loading"].pop("displacement_mm" if value == "force" else "force_n", None)
            d = set_path(d, path, value, LoadCaseError, what=str(path), create=("regions",))
        return load_case(d, source=f"{self.source} with {', '.join(map(str, values))} set")


def load_case(path_or_dict: str | os.PathLike | Mapping[str, Any], *, source: str | None = None) -> LoadCase:
    """Read and validate a load case from a TOML file or a dict (e.g. ``LoadCase.to_dict()``).

    Raises
    ------
    LoadCaseError : naming the file, the table, the key, what was expected and the fix.
    """
    if isinstance(path_or_dict, Mapping):
        raw = dict(path_or_dict)
        src = source or "<dict>"
        stem = "load_case"
    else:
        p = Path(path_or_dict)
        src = source or str(p)
        raw = read_toml(p, LoadCaseError, "load-case file (presets are in the loadcases/ folder)")
        stem = p.stem
    top = Table(raw, "top level", src, LoadCaseError, schema="load case (top level)")
    version = top.get("schema_version", "int")
    if version != SCHEMA_VERSION:
        raise top.err(f"schema_version = {version} is not supported (this femur_fe reads {SCHEMA_VERSION})")
    name = top.get("name", "str", stem)
    description = top.get("description", "str", "")
    bone = top.get("bone", "str", "femur", choices=BONES)
    material = _parse_material(top.get("material", "table", {}), src, bone)
    anatomy = _parse_anatomy(top.get("anatomy", "table", {}), src, bone)
    loading = _parse_loading(top.get("loading", "table", {}), src, bone)
    # boundary (defaults from the load direction)
    braw = raw.get("boundary")
    top.allowed.append("boundary")
    if braw is None:
        if loading.direction not in DEFAULT_BOUNDARY:
            raise top.err(f"direction = {loading.direction!r} has no default boundary conditions: add "
                          "[[boundary]] tables (region + apply = 'load' or fix = 'all')")
        boundary = tuple(Boundary(r, *((v, None) if k == "apply" else (None, v)))
                         for r, k, v in DEFAULT_BOUNDARY[loading.direction])
    else:
        top.seen.add("boundary")
        if not isinstance(braw, list) or not all(isinstance(b, Mapping) for b in braw):
            raise top.err("boundary must be an array of tables ([[boundary]])")
        boundary = tuple(_parse_boundary(b, src, i) for i, b in enumerate(braw))
    if not any(b.apply for b in boundary):
        raise top.err("no [[boundary]] applies the load (add one with apply = 'load')")
    if not any(b.fix for b in boundary):
        raise top.err("no [[boundary]] fixes anything (add one with fix = 'all'); the bone would be free")
    # regions: declared + referenced standard ones
    rraw = top.get("regions", "table", {})
    regions: dict[str, RegionSpec] = {}
    for rname, rtab in rraw.items():
        regions[rname] = _parse_region(rname, rtab, src)
    used = list(dict.fromkeys([b.region for b in boundary]))
    caps_raw = top.get("caps", "table", {})
    for rname in used + [r for r in (caps_raw.get("regions") or []) if isinstance(r, str)]:
        if rname not in regions:
            if rname not in STANDARD_REGIONS:
                raise top.err(f"region {rname!r} is used but not defined; add [regions.{rname}] with a kind "
                              f"({', '.join(REGION_KINDS)}) or node_set/nodes (standard names: "
                              f"{', '.join(STANDARD_REGIONS)})")
            regions[rname] = _parse_region(rname, {}, src)
    for rname, spec in regions.items():
        fem = spec.kind in ("head_patch", "trochanter_patch", "distal_cut")
        vert = spec.kind in ("superior_endplate", "inferior_endplate")
        if (bone == "vertebra" and fem) or (bone == "femur" and vert):
            raise top.err(f"region {rname!r} of kind {spec.kind!r} does not apply to bone = {bone!r}")
    contact_kinds = ("head_patch", "trochanter_patch", "superior_endplate", "inferior_endplate")
    caps = _parse_caps(caps_raw, src, bone, tuple(r for r in used if regions[r].kind in contact_kinds))
    for r in caps.regions:
        if r not in regions:
            raise top.err(f"[caps] regions lists {r!r}, which is not a region")
    failure = _parse_failure(top.get("failure", "table", {}), src, bone, loading.direction)
    nonlinear = _parse_nonlinear(top.get("nonlinear", "table", {}), src)
    solver = _parse_solver(top.get("solver", "table", {}), src)
    output = _parse_output(top.get("output", "table", {}), src, tuple(used))
    for r in output.reactions:
        if r not in regions:
            raise top.err(f"[output] reactions lists {r!r}, which is not a region (defined: {', '.join(regions)})")
    ext = {}
    for ename, spec in _EXTENSIONS.items():
        if ename in raw:
            top.seen.add(ename)
            try:
                ext[ename] = spec.parse(raw[ename], src)
            except LoadCaseError:
                raise
            except Exception as exc:
                raise LoadCaseError(f"{src}: [{ename}]: {exc}") from None
    top.finish(extra_allowed=tuple(_EXTENSIONS))
    return LoadCase(name, description, bone, material, anatomy, loading, caps, MappingProxyType(regions),
                    boundary, failure, solver, output, nonlinear, MappingProxyType(ext), version, src)


# =========================================================================== TOML writer
def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v) or math.isinf(v):
            raise LoadCaseError(f"cannot write the non-finite number {v} to TOML")
        return repr(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, Mapping):
        return "{" + ", ".join(f"{_toml_key(k)} = {_toml_value(x)}" for k, x in v.items()) + "}"
    raise LoadCaseError(f"cannot write {type(v).__name__} to TOML")


def _toml_key(k: str) -> str:
    return k if k and all(c.isalnum() or c in "_-" for c in k) else _toml_value(str(k))


def dumps_toml(data: Mapping[str, Any]) -> str:
    """Minimal TOML writer for nested tables, arrays of tables and scalars/arrays."""
    lines: list[str] = []

    def emit(table: Mapping[str, Any], prefix: str) -> None:
        scalars = {k: v for k, v in table.items() if not isinstance(v, Mapping)
                   and not (isinstance(v, list) and v and all(isinstance(x, Mapping) for x in v))}
        for k, v in scalars.items():
            lines.append(f"{_toml_key(k)} = {_toml_value(v)}")
        for k, v in table.items():
            key = f"{prefix}{_toml_key(k)}"
            if isinstance(v, Mapping):
                lines.append("")
                lines.append(f"[{key}]")
                emit(v, key + ".")
            elif isinstance(v, list) and v and all(isinstance(x, Mapping) for x in v):
                for item in v:
                    lines.append("")
                    lines.append(f"[[{key}]]")
                    emit(item, key + ".")

    emit(data, "")
    return "\n".join(lines).lstrip("\n") + "\n"
