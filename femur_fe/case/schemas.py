"""The input schemas as documentation: every key of every table, generated from the validators.

:func:`exercise` runs the validators (:class:`femur_fe.io.tables.Table`) over the bundled presets
and over inputs that reach every branch (each load direction, region kind, failure criterion,
bone kind, operator type), so :data:`femur_fe.io.tables.SCHEMA` holds every key they accept;
:func:`markdown` renders it. ``docs/schemas.md`` is this output (``python -m femur_fe.case.schemas
> docs/schemas.md``); a test regenerates it and compares, so the documentation and the
validators cannot drift apart.
"""
from __future__ import annotations

import inspect
import sys
from typing import Any

from ..analysis.failure import CRITERIA
from ..analysis.subject import Subject
from ..bone.calibration import DensityCalibration
from ..bone.specimen import Specimen
from ..io.tables import MISSING, SCHEMA, KeySpec, Table
from ..therapy.scenarios import OPERATOR_TYPES
from .comparison import load_comparison
from .loadcase import DIRECTIONS, REGION_KINDS, load_case
from .runfile import load_run_file
from .presets import loadcases_dir
from .scenarios import load_scenarios
from .sweep import distribution, sweep_table

#: defaults that depend on other keys, and other facts a reader needs beside the key table
NOTES: dict[tuple[str, str], str] = {
    ("load case (top level)", "bone"): "selects the defaults marked femur / vertebra below",
    ("load case [material]", "law"): "femur: `morgan2003_femoral_neck`; vertebra: `kopperdahl2002`; names: "
                                     "`femur_fe.bone.material_law_names()`",
    ("load case [material]", "params"): "extra parameters of the law (e.g. `a_mpa`, `b` for `power`)",
    ("load case [material.calibration]", "qct_to_ash"): "femur: `schileo2008`; vertebra: `keyak1994`",
    ("load case [material.calibration]", "method"): "`internal` when ct_unit = `HU` and no slope/intercept is "
                                                    "given, else `linear`",
    ("load case [material.calibration]", "tissue_hu"): "mean HU of `air`, `adipose`, `muscle`, `blood`, "
                                                       "`cortical_bone` (internal calibration)",
    ("load case [anatomy]", "side"): "femur only",
    ("load case [anatomy]", "head_centre_mm"): "femur only: `auto` or the head centre [x, y, z] (world mm)",
    ("load case [anatomy]", "head_radius_mm"): "femur only: `auto` or the head radius",
    ("load case [anatomy]", "shaft_axis"): "femur only: `auto` or a direction [x, y, z] along the shaft (either sign)",
    ("load case [anatomy]", "neck_axis"): "femur only: `auto` or a direction [x, y, z] along the neck (either sign)",
    ("load case [anatomy]", "greater_trochanter_mm"): "femur only: `auto` or a point [x, y, z] (world mm)",
    ("load case [anatomy]", "anterior"): "vertebra only: `auto` or an approximate direction [x, y, z]",
    ("load case [anatomy]", "superior"): "vertebra only: `auto` or an approximate direction [x, y, z]",
    ("load case [anatomy]", "body_axis"): "vertebra only: `auto` or a direction [x, y, z] (either sign)",
    ("load case [loading]", "direction"): "femur: `sideways_fall`, `stance`, `vector`; vertebra: `axial`, "
                                          "`wedge`, `vector`",
    ("load case [loading]", "displacement_mm"): "femur 1.0, vertebra 0.2 (wedge: extra axial displacement, 0)",
    ("load case [loading]", "force_n"): "required when mode = `force`",
    ("load case [loading]", "adduction_deg"): "sideways_fall",
    ("load case [loading]", "internal_rotation_deg"): "sideways_fall",
    ("load case [loading]", "frontal_deg"): "stance",
    ("load case [loading]", "sagittal_deg"): "stance",
    ("load case [loading]", "flexion_deg"): "wedge (required)",
    ("load case [loading]", "hinge"): "wedge",
    ("load case [loading]", "vector"): "vector (required): in the anatomical frame (x right, y anterior, z "
                                       "proximal/superior)",
    ("load case [caps]", "thickness_mm"): "femur 2.0, vertebra 10.0",
    ("load case [caps]", "regions"): "default: the contact regions used by [[boundary]]",
    ("load case [regions.<name>]", "kind"): "implied by the standard names head_contact, trochanter_contact, "
                                            "distal_cut, superior_endplate, inferior_endplate",
    ("load case [failure]", "criterion"): "femur: `max_principal_strain`; vertebra: `apparent_strain` "
                                          "(wedge: `pistoia`); aliases: `schileo`, `kopperdahl2002`, "
                                          "`crawford2003`",
    ("load case [failure]", "params"): "the criterion's parameters (table below)",
    ("load case [failure]", "reference_strength"): "femur: `linear`; vertebra: `nonlinear` (when it was run)",
    ("load case [nonlinear]", "characteristic_length_mm"): "`auto` (loaded-to-support distance) or a length",
    ("load case [output]", "reactions"): "default: the regions of [[boundary]]",
    ("bone [bone]", "ct_unit"): "default: the load case's [material.calibration] ct_unit",
    ("bone [bone]", "element_size_mm"): "for meshes built from a mask or a surface: `auto` = min(3 mm, mean chord "
                                        "4V/A / 6, max(2 mm, CT voxel), 0.8 x [bone.density] cortical thickness) "
                                        "(Specimen.element_size), or a length",
    ("bone [bone]", "calibration"): "`internal`, a calibration JSON file, or a table of its keys",
    ("calibration JSON (phantom)", "slope"): "density per HU in `unit` (density = slope x HU + intercept), at most "
                                             "0.01 g/cm3 per HU; e.g. `{\"slope\": 0.80028, \"intercept\": 8.1229, "
                                             "\"unit\": \"mg/cm3\", \"mineral\": \"k2hpo4\"}`",
    ("calibration JSON (phantom)", "intercept"): "density at 0 HU, in `unit`",
    ("calibration JSON (phantom)", "unit"): "unit of slope (per HU) and intercept",
    ("calibration JSON (phantom)", "mineral"): "equivalent mineral of the phantom rods: K2HPO4 or hydroxyapatite",
    ("calibration JSON (phantom)", "density_type"): "the calibration gives QCT (equivalent mineral) density",
}

#: defaults shown in words where they depend on other keys
DEFAULT_TEXT: dict[tuple[str, str], str] = {
    ("load case (top level)", "name"): "the file name",
    ("load case [material]", "law"): "by bone",
    ("load case [material.calibration]", "qct_to_ash"): "by bone",
    ("load case [material.calibration]", "method"): "by ct_unit",
    ("load case [loading]", "direction"): "by bone",
    ("load case [loading]", "displacement_mm"): "by bone",
    ("load case [caps]", "thickness_mm"): "by bone",
    ("load case [caps]", "regions"): "from [[boundary]]",
    ("load case [regions.<name>]", "kind"): "by name",
    ("load case [failure]", "criterion"): "by bone",
    ("load case [failure]", "reference_strength"): "by bone",
    ("load case [output]", "reactions"): "from [[boundary]]",
    ("load case [regions.<name>]", "min_nodes"): "3 (1 for node_set / nodes)",
    ("load case [regions.<name>]", "min_area_mm2"): "1.0 (0 for node_set / nodes)",
}

#: order of the sections in the document
ORDER = ["load case (top level)", "load case [material]", "load case [material.calibration]", "load case [anatomy]",
         "load case [loading]", "load case [caps]", "load case [regions.<name>]", "load case [[boundary]]",
         "load case [failure]", "load case [failure.params]", "load case [nonlinear]", "load case [solver]",
         "load case [output]", "bone [bone]", "bone [bone.density]", "calibration JSON (phantom)",
         "comparison (top level)", "comparison [comparison]", "subject [subject]", "scenario file (top level)",
         "scenario [[scenario]]", "scenario [[scenario.operator]] (type)", "sweep (top level)",
         "sweep [parameters] distribution"]
UNITS = (("_percent_per_year", "%/yr"), ("_mm2", "mm²"), ("_mm3", "mm³"), ("_mm", "mm"), ("_mpa", "MPa"),
         ("_deg", "degrees"), ("_g_cm3", "g/cm³"), ("_mg_cm3", "mg/cm³"), ("_kg", "kg"), ("_cm", "cm"),
         ("_months", "months"), ("_days", "days"), ("_percent", "%"), ("_s", "s"), ("_n", "N"), ("_kev", "keV"))


def _unit(key: str) -> str:
    k = key.lower()
    if k in ("months", "percent"):
        return {"months": "months", "percent": "%"}[k]
    for suffix, unit in UNITS:
        if k.endswith(suffix):
            return unit
    return ""


def _record_criteria() -> None:
    """``[failure.params]``: the parameters of every criterion, from their signatures."""
    keys = SCHEMA.setdefault("load case [failure.params]", {})
    for name, cls in CRITERIA.items():
        for p in inspect.signature(cls.__init__).parameters.values():
            if p.name == "self" or p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
                continue
            key = f"{name}.{p.name}"
            default = MISSING if p.default is inspect.Parameter.empty else p.default
            keys.setdefault(key, KeySpec("load case [failure.params]", key, "any", default,
                                         note=f"criterion `{name}`"))


def _record_operators() -> None:
    """One section per operator type, from the operator classes' fields."""
    for kind, cls in OPERATOR_TYPES.items():
        t = Table({"type": kind}, "operator", "", schema=f"scenario [[scenario.operator]] type = {kind!r}")
        t.get("type", "str")
        t.describe(cls, skip=("type",))


def exercise() -> None:
    """Run every validator over inputs that reach every key (fills :data:`SCHEMA`)."""
    root = loadcases_dir()
    for path in sorted(root.glob("*.toml")):
        load_case(path)
    for bone, directions in DIRECTIONS.items():
        for d in directions:
            loading: dict[str, Any] = {"direction": d}
            if d == "vector":
                loading["vector"] = [0.0, 0.0, -1.0]
            if d == "wedge":
                loading["flexion_deg"] = 5.0
            case: dict[str, Any] = {"schema_version": 1, "bone": bone, "loading": loading}
            if d == "vector":
                case["boundary"] = [{"region": "a", "apply": "load"}, {"region": "b", "fix": "all"}]
                case["regions"] = {"a": {"nodes": [0, 1, 2]}, "b": {"nodes": [3, 4, 5]}}
            load_case(case)
    load_case({"schema_version": 1, "loading": {"mode": "force", "force_n": 1000.0},
               "nonlinear": {"characteristic_length_mm": 50.0},
               "material": {"calibration": {"ct_unit": "HU", "method": "internal", "tissue_hu": {"air": -1000.0}}}})
    load_case({"schema_version": 1, "material": {"calibration": {"ct_unit": "HU", "slope": 0.8, "intercept": 8.0,
                                                                 "unit": "mg/cm3"}}})
    regions = {}
    for kind, params in REGION_KINDS.items():
        regions[f"r_{kind}"] = {"kind": kind, **{k: ("x" if k == "node_set" else [0, 1, 2] if k == "nodes" else v)
                                                for k, v in params.items() if v is not None or k in ("node_set",
                                                                                                     "nodes")}}
    for kind in REGION_KINDS:
        bone = "vertebra" if "endplate" in kind else "femur"
        table = {k: v for k, v in regions.items() if k == f"r_{kind}"}
        load_case({"schema_version": 1, "bone": bone, "regions": table})
    _record_criteria()
    Specimen.from_dict({"mesh": "bone.stl", "density": {"density_type": "qct", "uniform_g_cm3": 0.2}})
    Specimen.from_dict({"ct": "ct.nii.gz", "mask": "m.nii.gz", "labels": [1], "calibration": "internal",
                        "mesh_type": "hex", "element_size_mm": 2.0, "ct_unit": "HU", "units": "mm", "name": "x"})
    DensityCalibration.from_dict({"slope": 0.8, "intercept": 8.0, "unit": "mg/cm3"})
    Subject.from_dict({"sex": "female", "body_mass_kg": 60.0, "height_cm": 160.0})
    for path in sorted((root / "scenarios").glob("*.toml")):
        load_comparison(path)
        load_scenarios(path, allow_other_keys=True)
    load_run_file({"case": {"schema_version": 1}, "bone": {"bundled": "femur"}, "subject": {"sex": "female"}})
    _record_operators()
    sweep_table({"name": "s", "method": "lhs", "samples": 4, "seed": 1, "parameters": {}})
    distribution("loading.adduction_deg", {"uniform": [0.0, 20.0]})


def markdown() -> str:
    """``docs/schemas.md``: one table per input table."""
    SCHEMA.clear()  # the record of this exercise only: first-seen defaults do not depend on earlier parses
    exercise()
    lines = ["# Input schemas", "",
             "Every key femur_fe accepts, per table, with its type, default, allowed values and unit. "
             "Generated from the validators by `python -m femur_fe.case.schemas` (a test checks this file "
             "against them). Units: mm, N, MPa, g/cm³, degrees. Unknown keys are refused with the closest "
             "valid key suggested.", "",
             "Files: load cases (`loadcases/*.toml`), a bone (`[bone]` in run, comparison and sweep files, "
             "`femur-fe run --bone FILE`), comparison files (`femur-fe compare`), scenario tables "
             "(`[[scenario]]`), the phantom calibration JSON (`--calibration FILE.json`), sweep files "
             "(`femur-fe sweep`; a parameter is a key path = values or a distribution table).", ""]
    names = [n for n in ORDER if n in SCHEMA] + sorted(n for n in SCHEMA if n not in ORDER)
    for name in names:
        lines += [f"## {name}", "", "| key | type | default | allowed | unit | note |",
                  "| --- | --- | --- | --- | --- | --- |"]
        for key, spec in SCHEMA[name].items():
            default = DEFAULT_TEXT.get((name, key)) or (
                "required" if spec.required else ("–" if spec.default is None else f"`{spec.default}`"))
            note = NOTES.get((name, key), spec.note)
            lines.append(f"| `{key}` | {spec.kind} | {default} | {spec.range_text()} | {_unit(key)} | {note} |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover
    sys.stdout.write(markdown())

