"""A load case on a bone model: regions, caps, the prepared Analysis, Result, failure criteria,
fracture risk and the subject.
"""
from __future__ import annotations

from .caps import add_cap
from .failure import (
    ApparentStrain,
    DensityYieldStress,
    LinearStrength,
    MaxPrincipalStrain,
    Pistoia,
    RiskField,
    SiteYieldStrain,
    failure_criterion,
    linear_strength,
)
from .prepare import Analysis, characteristic_length_mm, prepare, run_nonlinear
from .regions import (
    Region,
    frame_for,
    load_direction,
    regions_mesh,
    select_region,
    select_regions,
    wedge_hinge,
)
from .result import Result
from .risk import (
    Classification,
    ImpactForce,
    classify_strength,
    factor_of_risk,
    fall_impact_force,
    summary_fields,
)
from .subject import Subject

__all__ = [
    "Analysis",
    "ApparentStrain",
    "Classification",
    "DensityYieldStress",
    "ImpactForce",
    "LinearStrength",
    "MaxPrincipalStrain",
    "Pistoia",
    "Region",
    "Result",
    "RiskField",
    "SiteYieldStrain",
    "Subject",
    "add_cap",
    "classify_strength",
    "factor_of_risk",
    "failure_criterion",
    "fall_impact_force",
    "frame_for",
    "linear_strength",
    "load_direction",
    "prepare",
    "regions_mesh",
    "characteristic_length_mm",
    "run_nonlinear",
    "select_region",
    "select_regions",
    "summary_fields",
    "wedge_hinge",
]
