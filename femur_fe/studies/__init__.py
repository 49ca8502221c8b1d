"""Studies over runs: baseline-versus-therapy comparisons and parameter sweeps."""
from __future__ import annotations

from ..case.comparison import load_comparison
from .compare import compare, fit_annual_rate
from .run import Prepared, prepare_run, run, solve
from .stored import load_analysis
from .sweep import (
    SweepSpec,
    SweepTask,
    TaskInputs,
    expand_sweep,
    load_sweep,
    read_results,
    run_sweep,
    worker_cache,
)

__all__ = [
    "SweepSpec",
    "SweepTask",
    "TaskInputs",
    "compare",
    "expand_sweep",
    "fit_annual_rate",
    "load_analysis",
    "load_comparison",
    "load_sweep",
    "read_results",
    "Prepared",
    "prepare_run",
    "run",
    "solve",
    "run_sweep",
    "worker_cache",
]
