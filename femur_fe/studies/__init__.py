"""Studies over runs: baseline-versus-therapy comparisons and parameter sweeps."""
from __future__ import annotations

from .compare import compare, fit_annual_rate, load_comparison, with_ct_calibration
from .run import run_case
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
    "load_comparison",
    "load_sweep",
    "read_results",
    "run_case",
    "run_sweep",
    "with_ct_calibration",
    "worker_cache",
]
