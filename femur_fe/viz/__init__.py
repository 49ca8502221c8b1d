"""Charts (matplotlib), 3-D views (PyVista) and the HTML report.
"""
from __future__ import annotations

from .charts import (
    plot_load_displacement,
    plot_strength_gain,
    plot_strength_time,
    plot_sweep_scatter,
    plot_tornado,
    sensitivity_table,
)
from .palette import scenario_colours
from .report import write_comparison_report, write_report
from .views import animate_density, available_fields, plot, plot_comparison

__all__ = [
    "animate_density",
    "available_fields",
    "plot",
    "plot_comparison",
    "plot_load_displacement",
    "plot_strength_gain",
    "plot_strength_time",
    "plot_sweep_scatter",
    "plot_tornado",
    "scenario_colours",
    "sensitivity_table",
    "write_comparison_report",
    "write_report",
]
