"""Simulated therapy: density-change scenarios, bone remodeling, cell models, strength sensitivity.
"""
from __future__ import annotations

from .cellmodels import CellTherapy, Komarova2003
from .remodeling import (
    BoundaryConditions,
    RemodelingModel,
    RemodelingParameters,
    RemodelingResult,
    Therapy,
)
from .scenarios import (
    AnnualChange,
    CellModelChange,
    CompartmentChange,
    CorticalThickening,
    DefectFill,
    LocalInjection,
    Scenario,
    ScenarioOutcome,
    UniformChange,
    match_added_mass,
)
from .sensitivity import StrengthProblem, StrengthSensitivity, optimal_placement

__all__ = [
    "AnnualChange",
    "BoundaryConditions",
    "CellModelChange",
    "CellTherapy",
    "CompartmentChange",
    "CorticalThickening",
    "DefectFill",
    "Komarova2003",
    "LocalInjection",
    "RemodelingModel",
    "RemodelingParameters",
    "RemodelingResult",
    "Scenario",
    "ScenarioOutcome",
    "StrengthProblem",
    "StrengthSensitivity",
    "Therapy",
    "UniformChange",
    "match_added_mass",
    "optimal_placement",
]
