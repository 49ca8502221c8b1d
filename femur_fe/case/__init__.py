"""Problems described as data: the load-case TOML schema and the bundled presets.
"""
from __future__ import annotations

from .loadcase import LoadCase, load_case, register_section
from .presets import loadcases_dir

__all__ = [
    "LoadCase",
    "load_case",
    "loadcases_dir",
    "register_section",
]
