"""A quality-control picture of a prepared analysis, drawn before the solve (``qc.png``).

What the solver will see, in one off-screen view: the bone's mesh (element edges on its
surface) coloured by Young's modulus on a logarithmic scale, the PMMA caps (translucent
grey), the loaded region (red) and the supported regions (blue and other colours) as points,
and the load arrow. The view is in the load frame (the load along +z', drawn upwards),
looking along the frame's first axis, so every case is drawn the same way. A wrong region,
a cap in the wrong place or a modulus map with holes is visible before any solve.

When PyVista is missing or cannot render off-screen, no picture is written and a warning is
logged; the run goes on.
"""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .views import REGION_COLOURS, _EXTRA_COLOURS, LOAD_COLOUR, _finish, _grid_of, _new_plotter

log = logging.getLogger(__name__)

#: file name of the picture in a run folder
QC_NAME = "qc.png"
QC_WINDOW = (900, 700)
LOADED_COLOUR = "#d62728"
SUPPORT_COLOURS = ("#1f77b4", "#2ca02c", "#9467bd", "#17becf")


def _draw(an: Any, plotter, window_size: Sequence[int]) -> None:
    import pyvista as pv

    mesh = an.fe_mesh
    n_bone = int(an.n_bone_cells)
    young = np.asarray(an.fe_young(), dtype=float)
    grid = _grid_of(mesh)
    bone = grid.extract_cells(np.arange(n_bone)).extract_surface(algorithm="dataset_surface")
    cell_ids = np.asarray(bone.cell_data["vtkOriginalCellIds"])
    bone.clear_data()
    bone.cell_data["E"] = young[:n_bone][cell_ids]
    lo = max(float(np.percentile(young[:n_bone], 1)), 1e-3)
    hi = max(float(young[:n_bone].max()), lo * 1.01)
    font = 11
    plotter.add_mesh(bone, scalars="E", cmap="viridis", log_scale=True, clim=(lo, hi), show_edges=True,
                     edge_color="#303030", line_width=0.5, edge_opacity=0.25,
                     scalar_bar_args={"title": "Young's modulus (MPa)", "fmt": "%.0f", "n_labels": 4,
                                      "vertical": True, "position_x": 0.86, "position_y": 0.1, "height": 0.6,
                                      "width": 0.05, "title_font_size": font, "label_font_size": font})
    if mesh.n_cells > n_bone:
        caps = grid.extract_cells(np.arange(n_bone, mesh.n_cells))
        plotter.add_mesh(caps, color="#c8c8c8", opacity=0.45, show_edges=True, edge_color="#808080",
                         label="PMMA caps")
    loaded = set(an.case.loaded_regions)
    supports = iter(SUPPORT_COLOURS + _EXTRA_COLOURS)
    for name, nodes in an.region_fe_nodes.items():
        nodes = np.asarray(nodes, dtype=np.int64)
        if nodes.size == 0:
            continue
        if name in loaded:
            colour, role = LOADED_COLOUR, "load"
        else:
            colour, role = next(supports, REGION_COLOURS.get(name, "#7f7f7f")), "support"
        plotter.add_points(mesh.points[nodes], color=colour, point_size=7.0, render_points_as_spheres=True,
                           label=f"{name.replace('_', ' ')} ({role})", reset_camera=False)
    lo_b, hi_b = mesh.points.min(axis=0), mesh.points.max(axis=0)
    size = float(np.linalg.norm(hi_b - lo_b))
    for name in loaded:   # the load along +z' in the load frame, tip at the loaded region
        nodes = np.asarray(an.region_fe_nodes.get(name, []), dtype=np.int64)
        if nodes.size:
            tip = mesh.points[nodes].mean(axis=0)
            length = 0.3 * size
            plotter.add_mesh(pv.Arrow(start=tip - length * np.array([0.0, 0.0, 1.0]), direction=(0.0, 0.0, 1.0),
                                      scale=length, tip_length=0.25, tip_radius=0.08, shaft_radius=0.025),
                             color=LOAD_COLOUR, label="load direction", reset_camera=False)
            break
    plotter.add_legend(bcolor="white", border=False, size=(0.34, 0.2), loc="upper left", face="circle",
                       font_family="arial")
    n_cap = mesh.n_cells - n_bone
    text = (f"{an.case.name}: {n_bone} bone elements ({mesh.cell_type})"
            + (f" + {n_cap} cap elements" if n_cap else "")
            + f"\nE {young[:n_bone].min():.0f}-{young[:n_bone].max():.0f} MPa; load frame, load along +z'")
    plotter.add_text(text, position="lower_left", font_size=font - 1, color="black", font="arial")
    focal = 0.5 * (lo_b + hi_b)
    plotter.camera_position = [tuple(focal + 3.0 * size * np.array([1.0, 0.0, 0.0])), tuple(focal), (0.0, 0.0, 1.0)]
    plotter.reset_camera()
    plotter.camera.zoom(0.85)


def write_qc_picture(an: Any, path: str | os.PathLike, *,
                     window_size: Sequence[int] = QC_WINDOW) -> Path | None:
    """Draw a prepared :class:`~femur_fe.analysis.prepare.Analysis` into ``path`` (PNG, off-screen).

    Returns the path, or None (with a logged warning) when PyVista is missing or cannot render.
    """
    t0 = time.perf_counter()
    try:
        import pyvista  # noqa: F401
    except ImportError:
        log.warning("%s not written: PyVista is not installed (pip install pyvista)", Path(path).name)
        return None
    try:
        plotter = _new_plotter(window_size, off_screen=True)
    except Exception as exc:  # no OpenGL context (EGL/OSMesa/X): the run goes on without the picture
        log.warning("%s not written: PyVista cannot render off-screen here (%s: %s)", Path(path).name,
                    type(exc).__name__, exc)
        return None
    _draw(an, plotter, window_size)
    try:
        out = _finish(plotter, path)
    except (RuntimeError, OSError, ValueError) as exc:   # the render itself failed
        log.warning("%s not written: PyVista could not render it (%s: %s)", Path(path).name, type(exc).__name__, exc)
        return None
    log.info("QC picture %s written in %.2f s", out, time.perf_counter() - t0)
    return out
