"""Comparison files: one bone, one load case, the baseline against therapy scenarios.

A comparison file (TOML)::

    schema_version = 1
    case = "sideways_fall"                 # preset name or path (relative to this file)
    case_values = {"loading.adduction_deg" = 10.0}   # optional overrides of the case
    [bone]                                 # the bone: docs/schemas.md, "bone [bone]"
    bundled = "femur"
    state = "osteoporotic"
    [subject]
    sex = "female"
    body_mass_kg = 65.0
    height_cm = 162.0
    [comparison]
    reference = "standard_care"
    time_points_months = [0, 3, 6, 9, 12]  # strength against time for time-dependent scenarios
    nonlinear = false
    [[scenario]]                           # femur_fe.case.scenarios
    name = "standard_care"
    ...
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from ..analysis.subject import Subject
from ..bone.specimen import Specimen
from ..errors import LoadCaseError, ScenarioError
from ..io.tables import Table
from ..io.toml_io import read_toml
from .loadcase import LoadCase, load_case
from .presets import resolve_case_path
from .scenarios import scenarios_from_dict


@dataclass
class ComparisonSpec:
    """A parsed comparison file (see the module docstring)."""

    case: LoadCase
    specimen: Specimen
    scenarios: list
    subject: Subject | None = None
    reference: str | None = "standard_care"
    time_points_months: tuple[float, ...] = ()
    nonlinear: bool = False
    outside: str = "nearest"
    source: str = "<dict>"

    def to_dict(self) -> dict[str, Any]:
        return {"case": self.case.to_dict(), "bone": self.specimen.to_dict(),
                "subject": None if self.subject is None else self.subject.to_dict(),
                "reference": self.reference, "time_points_months": list(self.time_points_months),
                "nonlinear": self.nonlinear, "scenarios": [s.to_dict() for s in self.scenarios]}


def load_comparison(path_or_dict: str | os.PathLike | Mapping[str, Any], *,
                    base: Path | None = None) -> ComparisonSpec:
    """Read a comparison TOML (or dict); unknown keys are rejected with the allowed list.

    Paths (the case, the bone's files) are relative to the file's folder (``base`` for a dict,
    default the working folder).
    """
    if isinstance(path_or_dict, Mapping):
        data, src = dict(path_or_dict), "<dict>"
        base = base or Path.cwd()
    else:
        p = Path(path_or_dict)
        data = read_toml(p, LoadCaseError, "comparison file")
        src, base = str(p), p.parent
    top = Table(data, "top level", src, LoadCaseError, schema="comparison (top level)")
    version = top.get("schema_version", "int", 1, choices=(1,))
    del version
    case_ref = top.get("case", "any", note="preset name (e.g. 'sideways_fall') or TOML path")
    values = top.get("case_values", "table", {})
    bone = top.get("bone", "table")
    subject = top.get("subject", "table", None)
    cmp_raw = top.get("comparison", "table", {})
    scen = top.get("scenario", "any", None)
    top.finish()
    if isinstance(case_ref, LoadCase):
        case = case_ref
    elif isinstance(case_ref, str):
        case = load_case(resolve_case_path(case_ref, base))
    else:
        raise top.err(f"case must be a preset name such as 'sideways_fall' or a TOML path, got {case_ref!r}")
    if values:
        case = case.with_values(values)
    specimen = Specimen.from_dict(bone, base=base, source=src)
    c = Table(cmp_raw, "[comparison]", src, LoadCaseError, schema="comparison [comparison]")
    reference = c.get("reference", "str", "standard_care")
    times = c.get("time_points_months", "floatlist", (), lo=0.0)
    nonlinear = c.get("nonlinear", "bool", False)
    outside = c.get("outside", "str", "nearest", choices=("nearest", "error"))
    c.finish()
    if list(times) != sorted(times):
        raise c.err(f"time_points_months must be increasing, got {list(times)}")
    scenarios = scenarios_from_dict({"scenario": scen}, source=src) if scen else []
    if not scenarios:
        raise ScenarioError(f"{src}: no [[scenario]] tables; add at least one scenario to compare with the baseline")
    return ComparisonSpec(case, specimen, scenarios, Subject.from_dict(subject, where=f"{src}: [subject]"),
                          reference, tuple(times), nonlinear, outside, src)
