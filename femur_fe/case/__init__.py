"""Problems described as data: load cases, comparisons and scenario files, read and validated
with one mechanism (:mod:`femur_fe.io.tables`); the bundled presets."""
from __future__ import annotations

from .comparison import ComparisonSpec, load_comparison
from .loadcase import LoadCase, load_case, register_section
from .presets import loadcases_dir, resolve_case_path
from .scenarios import load_scenarios, operator_from_dict, scenarios_from_dict

__all__ = [
    "ComparisonSpec",
    "LoadCase",
    "load_case",
    "load_comparison",
    "load_scenarios",
    "loadcases_dir",
    "operator_from_dict",
    "register_section",
    "resolve_case_path",
    "scenarios_from_dict",
]
