"""Exceptions raised by femur_fe.

Every error is a subclass of :class:`FemurFeError` (itself a ``ValueError`` so that
argument checks behave as users of NumPy/SciPy expect). The CLI catches
``FemurFeError`` and prints its message without a traceback, so messages must name
the problem *and* the fix.
"""
from __future__ import annotations


class FemurFeError(ValueError):
    """Base class of all femur_fe errors (bad input, failed checks)."""


class MeshError(FemurFeError):
    """A mesh is invalid: inverted elements, wrong units, unsupported cell type..."""


class SurfaceError(FemurFeError):
    """A surface cannot be read, repaired or meshed."""


class CTError(FemurFeError):
    """A CT volume or mask is unusable (wrong unit, mismatched transform, empty mask...)."""


class AmbiguousUnitError(CTError):
    """The unit of a CT is neither stored in the file nor given, and its values do not tell it."""


class MetalError(CTError):
    """Metal (an implant) lies in or next to the bone in the CT."""


class OutputError(FemurFeError):
    """An output folder cannot be written, or would mix or overwrite what it must not."""


class MaterialError(FemurFeError):
    """A material law or calibration got values outside its range."""


class LoadCaseError(FemurFeError):
    """A load-case file or object is invalid (unknown key, bad value, empty region...)."""


class RegionError(LoadCaseError):
    """An anatomical region or landmark could not be found or selects too few nodes."""


class SolverError(FemurFeError):
    """A linear or nonlinear solve failed."""


class ConvergenceError(SolverError):
    """An iterative solve did not reach its tolerance within its iteration limit."""


class UnderConstrainedError(SolverError):
    """Boundary conditions leave at least one rigid-body mode free."""


class ScenarioError(FemurFeError):
    """A regeneration scenario has a parameter out of physical range."""


class SweepError(FemurFeError):
    """A sweep specification is invalid."""
