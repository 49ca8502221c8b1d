"""3-D views of results with PyVista: fields, regions, load arrow, clipping, comparisons, animations.

Entry points
------------
* :func:`plot` -- one result: a field on the bone (scalar bar with units), the load regions
  as coloured points, the load arrow (along ``load_direction``, tip at the loaded region's
  centroid), optionally clipped through the femoral neck axis (femur) or mid-sagittally
  (vertebra). Displacement is shown on the deformed shape, warped by a factor written in
  the title.
* :func:`plot_comparison` -- baseline and scenario side by side (linked cameras, one colour
  range) plus a difference map (scenario - baseline, symmetric diverging colours).
* :func:`animate_density` -- a GIF of density over time (remodeling runs), one fixed
  colour range.

Display handling: with ``screenshot=FILE.png`` the view is rendered off-screen and saved
atomically (works on headless machines: the VTK wheel renders through EGL/OSMesa). Without
``screenshot`` an interactive window opens, which needs a display; on Linux without
``DISPLAY``/``WAYLAND_DISPLAY`` (or with ``pyvista.OFF_SCREEN = True``) a
:class:`femur_fe.errors.FemurFeError` is raised at once instead of waiting for a window.

Views are deterministic: fixed window size, theme (white background, no anti-aliasing),
camera from the anatomical frame (femur: from anterior, proximal up; vertebra: from
anterior, superior up; clipped views look at the cut face), fixed colour maps.

Fields (names and aliases, see :data:`FIELDS`): ``density`` (g/cm^3), ``modulus`` (MPa),
``displacement`` (mm, magnitude), ``von_mises`` (MPa), ``principal_strain_max`` /
``principal_strain_min`` (microstrain), ``risk`` (demand/capacity at the applied load),
``sed`` (MPa), ``effective_strain`` (microstrain); any other array of ``result.vtu`` by its
name.
"""
from __future__ import annotations

import logging
import math
import os
import sys
import weakref
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..bone.anatomy import femur_frame, vertebra_frame
from ..errors import FemurFeError
from ..fe.mesh import Mesh
from ..io import atomic_path, meshio_from_mesh
from ..io.results import StoredResult, as_result, read_result

log = logging.getLogger(__name__)

#: default window size of single views (pixels); comparisons are three times as wide
WINDOW_SIZE = (800, 600)
#: fixed colours of the standard regions (others cycle through _EXTRA_COLOURS)
REGION_COLOURS = {"head_contact": "#d62728", "trochanter_contact": "#1f77b4", "distal_cut": "#7f7f7f",
                  "superior_endplate": "#d62728", "inferior_endplate": "#1f77b4"}
_EXTRA_COLOURS = ("#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22")
LOAD_COLOUR = "#000000"
#: colour of values beyond a robust (99th percentile) colour range
BEYOND_COLOUR = "#ff00ff"
#: percentile of |value| that ends a robust colour range
ROBUST_PERCENTILE = 99.0


# =========================================================================== fields
@dataclass(frozen=True)
class FieldSpec:
    """How a named field is drawn.

    Attributes
    ----------
    name : canonical name
    array : array in result.vtu
    association : ``"cell"`` or ``"point"``
    label : scalar-bar title with units
    cmap : matplotlib colour map name
    component : column of a multi-component array, or ``"magnitude"``, or None (scalar)
    scale : factor applied to the stored values (e.g. 1e6 for microstrain)
    symmetric : colour range symmetric about 0
    warp : show on the deformed shape by default
    robust : default colour range up to the 99th percentile of |value| (peaks at the
        supports would otherwise flatten the map); values beyond are drawn in
        :data:`BEYOND_COLOUR` and the scalar bar says so
    fmt : printf format of the scalar-bar labels
    """

    name: str
    array: str
    association: str
    label: str
    cmap: str
    component: int | str | None = None
    scale: float = 1.0
    symmetric: bool = False
    warp: bool = False
    robust: bool = False
    fmt: str = "%.3g"

    def values(self, res: StoredResult) -> np.ndarray:
        data = res.grid.point_data if self.association == "point" else res.grid.cell_data
        if self.array not in data:
            if self.association == "cell":
                res.cell_field(self.array)  # raises with the hint about what writes it
            raise FemurFeError(f"{res.path}: no {self.association} field {self.array!r}")
        a = np.asarray(data[self.array], dtype=np.float64)
        if self.component == "magnitude":
            a = np.linalg.norm(a.reshape(len(a), -1), axis=1)
        elif self.component is not None:
            a = a.reshape(len(a), -1)[:, int(self.component)]
        elif a.ndim > 1:
            a = np.linalg.norm(a.reshape(len(a), -1), axis=1)
        return a * self.scale


FIELDS: dict[str, FieldSpec] = {
    "density": FieldSpec("density", "density", "cell", "density (g/cm^3)", "viridis"),
    "modulus": FieldSpec("modulus", "young_modulus", "cell", "Young's modulus (MPa)", "plasma"),
    "displacement": FieldSpec("displacement", "displacement", "point", "displacement (mm)", "turbo",
                              component="magnitude", warp=True),
    "von_mises": FieldSpec("von_mises", "von_mises", "cell", "von Mises stress (MPa)", "turbo", robust=True),
    "principal_strain_max": FieldSpec("principal_strain_max", "principal_strain", "cell",
                                      "max principal strain (microstrain)", "coolwarm", component=0, scale=1e6,
                                      symmetric=True, robust=True, fmt="%.0f"),
    "principal_strain_min": FieldSpec("principal_strain_min", "principal_strain", "cell",
                                      "min principal strain (microstrain)", "coolwarm", component=2, scale=1e6,
                                      symmetric=True, robust=True, fmt="%.0f"),
    "risk": FieldSpec("risk", "risk", "cell", "failure risk (demand/capacity)", "YlOrRd"),
    "sed": FieldSpec("sed", "sed", "cell", "strain energy density (MPa)", "magma", robust=True),
    "effective_strain": FieldSpec("effective_strain", "effective_strain", "cell", "effective strain (microstrain)",
                                  "magma", scale=1e6, robust=True, fmt="%.0f"),
}
#: alternative names accepted by :func:`field_spec` (lower case, spaces/dashes as underscores)
ALIASES = {
    "young_modulus": "modulus", "young": "modulus", "e": "modulus", "elastic_modulus": "modulus",
    "u": "displacement", "displacements": "displacement",
    "vonmises": "von_mises", "vm": "von_mises", "mises": "von_mises", "von_mises_stress": "von_mises",
    "max_principal_strain": "principal_strain_max", "principal_max": "principal_strain_max",
    "e1": "principal_strain_max", "strain_max": "principal_strain_max", "max_principal": "principal_strain_max",
    "min_principal_strain": "principal_strain_min", "principal_min": "principal_strain_min",
    "e3": "principal_strain_min", "strain_min": "principal_strain_min", "min_principal": "principal_strain_min",
    "failure_risk": "risk", "risk_factor": "risk",
    "rho": "density", "strain_energy_density": "sed",
}


def _norm(name: str) -> str:
    return name.strip().lower().replace(" ", "_").replace("-", "_")


def available_fields(res: StoredResult | str | os.PathLike) -> list[str]:
    """Field names that can be drawn for ``res`` (named fields first, then other arrays)."""
    res = as_result(res)
    out = [k for k, s in FIELDS.items()
           if s.array in (res.grid.point_data if s.association == "point" else res.grid.cell_data)]
    named_arrays = {s.array for s in FIELDS.values()}
    for data in (res.grid.cell_data, res.grid.point_data):
        for k in data.keys():
            if k not in named_arrays and k not in out and not k.startswith("vtk"):
                out.append(k)
    return out


def field_spec(res: StoredResult, field: str) -> FieldSpec:
    """The :class:`FieldSpec` of ``field`` for ``res``; FemurFeError listing the available fields."""
    if not isinstance(field, str) or not field.strip():
        raise FemurFeError(f"field must be a non-empty name, got {field!r}; available: "
                           f"{', '.join(available_fields(res))}")
    key = _norm(field)
    key = ALIASES.get(key, key)
    if key in FIELDS:
        spec = FIELDS[key]
        spec.values(res)  # raises a clear error when the run did not write it (e.g. risk)
        return spec
    for assoc, data in (("cell", res.grid.cell_data), ("point", res.grid.point_data)):
        if field in data:
            return FieldSpec(field, field, assoc, field, "viridis")
    raise FemurFeError(f"unknown field {field!r}; available fields for {res.path}: "
                       f"{', '.join(available_fields(res))}")


# =========================================================================== display
def display_available() -> bool:
    """True when an interactive window can open (Linux/BSD: DISPLAY or WAYLAND_DISPLAY set)."""
    if sys.platform.startswith(("linux", "freebsd", "openbsd", "netbsd")):
        return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
    return True


def _check_interactive() -> None:
    import pyvista as pv

    if getattr(pv, "OFF_SCREEN", False):
        raise FemurFeError("pyvista.OFF_SCREEN is True, so no window can open; pass screenshot='FILE.png' "
                           "(femur-fe view DIR --screenshot FILE.png) to save the view instead")
    if not display_available():
        raise FemurFeError("no display (DISPLAY and WAYLAND_DISPLAY are unset), so no window can open; pass "
                           "screenshot='FILE.png' (femur-fe view DIR --screenshot FILE.png) to render off-screen")


def _theme():
    import pyvista as pv

    th = pv.themes.DocumentTheme()
    th.background = "white"
    th.font.color = "black"
    th.font.family = "arial"
    th.anti_aliasing = None
    th.smooth_shading = False
    th.show_scalar_bar = False
    return th


#: VTK's documented run-time choice of OpenGL window class (VTK >= 9.4)
_VTK_WINDOW_VARIABLE = "VTK_DEFAULT_OPENGL_WINDOW"


@contextmanager
def _offscreen_window_class(off_screen: bool):
    """Name VTK's EGL window while an off-screen render window is created on a machine without display.

    VTK >= 9.4 chooses the OpenGL window class when a render window is created: on Linux it
    tries X first and, without a display, logs "bad X server connection" before falling back
    to EGL (and then to OSMesa). Off-screen views never need X, so without a display the EGL
    class is named through ``VTK_DEFAULT_OPENGL_WINDOW`` for the creation of this window only
    (VTK still falls back to OSMesa when EGL cannot start). A value set by the user is kept,
    and nothing changes when a display is available or VTK was built without EGL.
    """
    if not off_screen or display_available() or _VTK_WINDOW_VARIABLE in os.environ:
        yield
        return
    import vtkmodules.vtkRenderingOpenGL2 as gl

    if not hasattr(gl, "vtkEGLRenderWindow"):
        yield
        return
    os.environ[_VTK_WINDOW_VARIABLE] = "vtkEGLRenderWindow"
    try:
        yield
    finally:
        os.environ.pop(_VTK_WINDOW_VARIABLE, None)


def _new_plotter(window_size, off_screen: bool, shape=(1, 1)):
    import pyvista as pv

    with _offscreen_window_class(off_screen):
        return pv.Plotter(off_screen=off_screen, window_size=[int(window_size[0]), int(window_size[1])],
                          shape=shape, theme=_theme(), border=False)


def _finish(plotter, screenshot) -> Path | None:
    """Save (atomically) or show the plotter; always closes it."""
    try:
        if screenshot is not None:
            path = Path(screenshot)
            if path.suffix.lower() != ".png":
                raise FemurFeError(f"screenshot must be a .png file, got {str(screenshot)!r}")
            with atomic_path(path) as tmp:
                plotter.screenshot(str(tmp))
            return path
        plotter.show()
        return None
    finally:
        plotter.close()


# =========================================================================== geometry helpers
def _unit(v) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64)
    n = np.linalg.norm(v)
    return v / n if n > 0 else v


_FITTED: dict[str, Any] = {}


def result_frame(res: StoredResult):
    """The anatomical frame of a result: the one the run stored, else fitted on the result's outer
    surface (older result folders; cached per folder), else None."""
    frame = res.frame()
    if frame is not None or res.bone not in ("femur", "vertebra"):
        return frame
    key = str(res.path)
    if key not in _FITTED:
        surf = res.grid.extract_surface(algorithm="dataset_surface").triangulate()
        anat = res.case.get("anatomy") or {}
        try:
            if res.bone == "femur":
                side = anat.get("side")
                _FITTED[key] = femur_frame(surf, side=None if side in (None, "auto") else side)
            else:
                ant, sup = anat.get("anterior"), anat.get("superior")
                _FITTED[key] = vertebra_frame(surf, anterior=None if isinstance(ant, str) else ant,
                                              superior=None if isinstance(sup, str) else sup)
        except FemurFeError as exc:
            log.warning("%s: no anatomical %s frame (%s); views use the bounding box", res.path, res.bone, exc)
            _FITTED[key] = None
    return _FITTED[key]


def clip_plane(res: StoredResult) -> tuple[np.ndarray, np.ndarray, str]:
    """(origin, unit normal, description) of the default section of a result.

    Femur: the plane through the head centre that contains the neck axis and the shaft
    axis (it cuts the neck lengthwise). Vertebra: the mid-sagittal plane (normal = the
    right axis, through the body centre). Otherwise, or when no frame can be fitted: the
    plane through the bounding-box centre normal to x.
    """
    frame = result_frame(res)
    if frame is not None and getattr(frame, "bone", None) == "femur":
        n = np.cross(np.asarray(frame.neck_axis, float), np.asarray(frame.shaft_axis, float))
        if np.linalg.norm(n) > 1e-6:
            n = _unit(n)
            if n @ np.asarray(frame.anterior, float) < 0:
                n = -n  # keep the posterior half, look at the cut from anterior
            return np.asarray(frame.head_centre, float), n, "femoral neck axis"
    if frame is not None and getattr(frame, "bone", None) == "vertebra":
        return np.asarray(frame.body_centre, float), _unit(frame.basis[0]), "mid-sagittal"
    lo, hi = np.asarray(res.grid.bounds).reshape(3, 2).T
    return 0.5 * (lo + hi), np.array([1.0, 0.0, 0.0]), "bounding-box mid-plane (x)"


def _view_axes(res: StoredResult) -> tuple[np.ndarray, np.ndarray]:
    """(direction from the focal point to the camera, view-up) for the default view."""
    frame = result_frame(res)
    if frame is not None and getattr(frame, "bone", None) in ("femur", "vertebra"):
        return _unit(frame.basis[1]), _unit(frame.basis[2])
    return np.array([0.0, -1.0, 0.0]), np.array([0.0, 0.0, 1.0])


def _nice(x: float) -> float:
    """1, 2 or 5 times a power of ten, not above ``x`` (x > 0)."""
    e = math.floor(math.log10(x))
    m = x / 10 ** e
    return (5.0 if m >= 5 else 2.0 if m >= 2 else 1.0) * 10 ** e


def warp_factor(res: StoredResult, target_fraction: float = 0.08) -> float:
    """Automatic displacement magnification: max displacement shown as ~8 % of the bone size."""
    umax = float(np.linalg.norm(res.displacement, axis=1).max())
    diag = float(res.grid.length)
    if umax <= 0 or diag <= 0:
        return 1.0
    return _nice(target_fraction * diag / umax)


def _clim(values: np.ndarray, spec: FieldSpec, clim=None) -> tuple[float, float]:
    if clim is not None:
        lo, hi = (float(clim[0]), float(clim[1]))
        if not (np.isfinite(lo) and np.isfinite(hi) and hi > lo):
            raise FemurFeError(f"clim must be two finite numbers (low < high), got {clim!r}")
        return lo, hi
    v = values[np.isfinite(values)]
    if v.size == 0:
        return 0.0, 1.0
    if spec.symmetric:
        a = np.abs(v)
        m = float(np.percentile(a, ROBUST_PERCENTILE) if spec.robust else a.max()) or float(a.max()) or 1.0
        return -m, m
    lo, hi = float(v.min()), float(v.max())
    if spec.robust:
        hi = float(np.percentile(v, ROBUST_PERCENTILE))
        lo = float(np.percentile(v, 100.0 - ROBUST_PERCENTILE)) if lo < 0 else lo
    if spec.name == "risk":
        lo = 0.0
    if hi <= lo:
        hi = lo + (abs(lo) * 1e-3 or 1.0)
    return lo, hi


def _font(window_size) -> int:
    """Text size (points) for a window width: 12 at 800 px, at least 8."""
    return max(8, int(round(12 * int(window_size[0]) / 800)))


def _scalar_bar_args(title: str, fmt: str = "%.3g", font: int = 10, n_labels: int = 4,
                     viewport_h: float | None = None) -> dict:
    """Horizontal bar in the lower right; its title is drawn above it by :func:`_title_scalar_bar`.

    The box is 12 % of the viewport high, and at least 2.8 label heights (``viewport_h``,
    pixels) so that the bar and its tick labels fit inside it.
    """
    height = 0.12 if not viewport_h else max(0.12, 2.8 * (font + 4) / float(viewport_h))
    return dict(title=title, vertical=False, position_x=0.3, position_y=0.02, width=0.6, height=height,
                n_labels=n_labels, fmt=fmt, title_font_size=font + 5, label_font_size=font + 4, color="black",
                font_family="arial", bold=False, unconstrained_font_size=True)


def _title_scalar_bar(plotter, args: dict, viewport_px: Sequence[float]) -> None:
    """Move the title of the scalar bar made with ``args`` above its box (active subplot).

    vtkScalarBarActor lays its title out inside the bar's box at the size the box allows;
    with fixed (unconstrained) font sizes the title then overlaps the tick labels. The bar
    keeps only its labels (they fit the box) and the title becomes a text actor above the
    box, its baseline on the box's top edge, centred on the bar as far as the viewport
    (``viewport_px``, width and height in pixels) allows; a title wider than the viewport
    gets a smaller font.
    """
    import vtkmodules.vtkRenderingCore as rc

    bar = plotter.scalar_bars[args["title"]]
    bar.SetTitle("")
    text = rc.vtkTextActor()
    text.SetInput(args["title"])
    prop = text.GetTextProperty()
    prop.SetFontSize(int(args["title_font_size"]))
    prop.SetFontFamilyToArial()
    prop.SetColor(0.0, 0.0, 0.0)
    prop.SetJustificationToCentered()
    prop.SetVerticalJustificationToBottom()
    vw = float(viewport_px[0])
    box = [0, 0, 0, 0]
    width = box[1] - box[0] if rc.vtkTextRenderer().GetBoundingBox(prop, args["title"], box, 72) else 0
    if width > 0.96 * vw:
        prop.SetFontSize(max(6, int(args["title_font_size"] * 0.96 * vw / width)))
        width = 0.96 * vw
    half = 0.5 * width / vw
    x = min(args["position_x"] + 0.5 * args["width"], 1.0 - half - 0.01)
    coord = text.GetPositionCoordinate()
    coord.SetCoordinateSystemToNormalizedViewport()
    coord.SetValue(max(x, half + 0.01), args["position_y"] + args["height"])
    plotter.add_actor(text, reset_camera=False, name=f"bar title {args['title']}")


@dataclass
class _Prepared:
    mesh: Any          # pyvista grid to draw (warped, clipped)
    values: np.ndarray
    warp: float
    plane: tuple | None
    deformed_points: np.ndarray


#: outer surface of each result's mesh, and of its default section, with the original ids (extracted once)
_SURFACES: "weakref.WeakKeyDictionary[StoredResult, dict]" = weakref.WeakKeyDictionary()
#: cell data of a clipped section: index of the element each piece comes from
_CELL_ID = "_femur_fe_cell"


def _outer_surface(res: StoredResult, section: bool = False):
    """The outer surface of ``res`` as PolyData (cached per result).

    ``section=False``: the whole bone, with ``vtkOriginalPointIds``/``vtkOriginalCellIds``.
    ``section=True``: the surface of the part behind :func:`clip_plane` (the cut face
    included), with :data:`_CELL_ID` naming the element each face comes from.
    A view draws only this surface; extracting it once per result instead of in the mapper
    of every view halves the rendering time of a report's views.
    """
    cache = _SURFACES.setdefault(res, {})
    if section not in cache:
        grid = res.grid.copy(deep=False)
        grid.clear_data()
        if section:
            origin, normal, _ = clip_plane(res)
            grid.cell_data[_CELL_ID] = np.arange(grid.n_cells)
            grid = grid.clip(normal=normal, origin=origin, crinkle=False)
            if grid.n_cells == 0:
                raise FemurFeError("the clipping plane leaves no elements to draw; view without clip")
        cache[section] = grid.extract_surface(pass_pointid=True, pass_cellid=True, algorithm="dataset_surface")
    return cache[section]


def _prepare(res: StoredResult, spec: FieldSpec, *, warp: float | None, clip: bool,
             values: np.ndarray | None = None) -> _Prepared:
    vals = spec.values(res) if values is None else values
    factor = (warp_factor(res) if spec.warp else 0.0) if warp is None else float(warp)
    if factor < 0 or not np.isfinite(factor):
        raise FemurFeError(f"warp must be a finite factor >= 0, got {warp!r}")
    pts = res.points + factor * res.displacement if factor else res.points
    plane = None
    if clip and spec.association == "cell" and not factor:  # element values on the undeformed section
        origin, normal, _ = clip_plane(res)
        plane = (origin, normal)
        surf = _outer_surface(res, section=True)
        grid = surf.copy(deep=False)
        grid.cell_data["_values"] = np.asarray(vals)[np.asarray(surf.cell_data[_CELL_ID])]
    elif clip:  # point values or a deformed shape: clip the volume, interpolating the point values
        grid = res.grid.copy(deep=False)
        grid.clear_data()
        if spec.association == "point":
            grid.point_data["_values"] = vals
        else:
            grid.cell_data["_values"] = vals
        if factor:
            grid.points = pts
        origin, normal, _ = clip_plane(res)
        plane = (origin, normal)
        grid = grid.clip(normal=normal, origin=origin, crinkle=False)
        if grid.n_cells == 0:
            raise FemurFeError("the clipping plane leaves no elements to draw; view without clip")
    else:
        surf = _outer_surface(res)
        grid = surf.copy(deep=False)
        pid = np.asarray(surf.point_data["vtkOriginalPointIds"])
        if spec.association == "point":
            grid.point_data["_values"] = np.asarray(vals)[pid]
        else:
            grid.cell_data["_values"] = np.asarray(vals)[np.asarray(surf.cell_data["vtkOriginalCellIds"])]
        if factor:
            grid.points = pts[pid]
    return _Prepared(grid, vals, factor, plane, pts)


def _add_regions(plotter, res: StoredResult, prep: _Prepared, size: float) -> None:
    extra = iter(_EXTRA_COLOURS * 4)
    for name in res.region_names:
        nodes = res.region_nodes(name)
        if nodes.size == 0:
            continue
        p = prep.deformed_points[nodes]
        if prep.plane is not None:
            p = p[(p - prep.plane[0]) @ prep.plane[1] <= 0]
            if len(p) == 0:
                continue
        colour = REGION_COLOURS.get(name) or next(extra)
        plotter.add_points(p, color=colour, point_size=max(size, 3.0), render_points_as_spheres=True,
                           label=name.replace("_", " "), reset_camera=False)


def _add_load_arrow(plotter, res: StoredResult, prep: _Prepared) -> None:
    import pyvista as pv

    name = res.loaded_region
    if name is None or name not in res.region_names:
        return
    nodes = res.region_nodes(name)
    tip = prep.deformed_points[nodes].mean(axis=0) if prep.warp else res.region_centroid(name)
    d = res.load_direction
    length = 0.3 * float(res.grid.length)
    arrow = pv.Arrow(start=tip - length * d, direction=d, scale=length, tip_length=0.25, tip_radius=0.08,
                     shaft_radius=0.025)
    plotter.add_mesh(arrow, color=LOAD_COLOUR, label="load", reset_camera=False)


def _set_camera(plotter, res: StoredResult, plane, bounds_from=None) -> None:
    direction, up = _view_axes(res)
    if plane is not None:
        direction = _unit(plane[1])
        if abs(direction @ up) > 0.95:  # looking along the up axis: pick another up
            up = _unit(np.cross(direction, [1.0, 0.0, 0.0])) if abs(direction[0]) < 0.9 else np.array([0, 0, 1.0])
    lo, hi = np.asarray((bounds_from or res.grid).bounds).reshape(3, 2).T
    focal = 0.5 * (lo + hi)
    dist = 3.0 * float(np.linalg.norm(hi - lo))
    plotter.camera_position = [tuple(focal + dist * direction), tuple(focal), tuple(up)]
    plotter.reset_camera()
    plotter.camera.zoom(0.9)  # room for the legend and the scalar bar


def _draw_result(plotter, res: StoredResult, spec: FieldSpec, *, warp, clip, clim, cmap, title,
                 show_regions: bool, show_load: bool, scalar_bar: bool = True, values=None,
                 bar_title: str | None = None, font: int = 10, mark_beyond: bool = True) -> tuple[float, float]:
    """Draw one result in the active subplot; returns the colour range used.

    ``mark_beyond``: values outside the colour range in :data:`BEYOND_COLOUR` (else in the
    end colours of the map, which keeps the sign readable on a diverging map).
    """
    prep = _prepare(res, spec, warp=warp, clip=clip, values=values)
    lims = _clim(prep.values, spec, clim)
    finite = prep.values[np.isfinite(prep.values)]
    beyond = bool(finite.size and (finite.max() > lims[1] * (1 + 1e-12) + 1e-300 or
                                   finite.min() < lims[0] - abs(lims[0]) * 1e-12 - 1e-300))
    label = bar_title or spec.label
    viewport_w = plotter.window_size[0] / plotter.shape[1]
    viewport_h = plotter.window_size[1] / plotter.shape[0]
    if prep.warp:
        plotter.add_mesh(_outer_surface(res), color="#bbbbbb", opacity=0.25, reset_camera=False)
    extra = dict(above_color=BEYOND_COLOUR, below_color=BEYOND_COLOUR) if beyond and mark_beyond else {}
    bar_args = _scalar_bar_args(label, spec.fmt, font, 4 if viewport_w >= 300 else 3, viewport_h)
    plotter.add_mesh(prep.mesh, scalars="_values", cmap=cmap or spec.cmap, clim=lims, show_scalar_bar=scalar_bar,
                     scalar_bar_args=bar_args, nan_color="#cccccc", show_edges=False, **extra)
    if scalar_bar:
        _title_scalar_bar(plotter, bar_args, (viewport_w, viewport_h))
    if show_regions:
        _add_regions(plotter, res, prep, 1.2 * font)
    if show_load:
        _add_load_arrow(plotter, res, prep)
    n_entries = (len(res.region_names) if show_regions else 0) + (1 if show_load and res.loaded_region else 0)
    if n_entries:
        # the legend text scales with its box: a fixed height per entry keeps the font constant
        plotter.add_legend(bcolor="white", border=False, size=(0.3, min(0.5, 2.0 * font * n_entries / viewport_h)),
                           loc="upper left", face="circle", font_family="arial")
    text = title if title is not None else _default_title(res, prep, beyond and mark_beyond)
    if text:
        plotter.add_text(text, position="upper_right", font_size=font, color="black", font="arial")
    _set_camera(plotter, res, prep.plane)
    return lims


def _default_title(res: StoredResult, prep: _Prepared, beyond: bool) -> str:
    lines = [res.case_name]
    if prep.warp:
        lines.append(f"deformation x{prep.warp:g}")
    if prep.plane is not None:
        lines.append("section: " + clip_plane(res)[2])
    if beyond:
        lines.append("magenta: beyond colour range")
    return "\n".join(lines)


# =========================================================================== public API
def plot(result, field: str = "von_mises", *, screenshot: str | os.PathLike | None = None, clip: bool = False,
         warp: float | None = None, clim: Sequence[float] | None = None, cmap: str | None = None,
         show_regions: bool = True, show_load: bool = True, title: str | None = None,
         window_size: Sequence[int] = WINDOW_SIZE) -> Path | None:
    """Show one field of a result (interactive window, or a PNG with ``screenshot``).

    Parameters
    ----------
    result : result folder (``result.vtu`` + ``summary.json``), a :class:`StoredResult` or an
        in-memory pipeline Result
    field : see :data:`FIELDS` (``density``, ``modulus``, ``displacement``, ``von_mises``,
        ``principal_strain_max``, ``principal_strain_min``, ``risk``...) or any array name
    screenshot : PNG path: render off-screen and save (atomically); no window
    clip : section through the femoral neck axis (femur) / mid-sagittal plane (vertebra)
    warp : displacement magnification (default: automatic for ``displacement``, 0 otherwise)
    clim : colour range (low, high) in the field's units (default: data range; symmetric
        about 0 for principal strains; from 0 for risk)
    show_regions, show_load : draw the load/support regions and the load arrow
    window_size : (width, height) pixels

    Returns
    -------
    The screenshot path, or None after an interactive window was closed.

    Raises
    ------
    FemurFeError for an unknown field (listing the available ones), an incomplete result
    folder, or no display without ``screenshot``.
    """
    res = as_result(result)
    spec = field_spec(res, field)
    if screenshot is None:
        _check_interactive()
    plotter = _new_plotter(window_size, off_screen=screenshot is not None)
    _draw_result(plotter, res, spec, warp=warp, clip=clip, clim=clim, cmap=cmap, title=title,
                 show_regions=show_regions, show_load=show_load, font=_font(window_size))
    return _finish(plotter, screenshot)


def _check_same_mesh(a: StoredResult, b: StoredResult) -> None:
    if a.n_points != b.n_points or a.n_cells != b.n_cells:
        raise FemurFeError(f"{a.path} ({a.n_points} nodes, {a.n_cells} elements) and {b.path} ({b.n_points} nodes, "
                           f"{b.n_cells} elements) are on different meshes; a comparison needs the same mesh "
                           "(a scenario is the baseline model with a new density)")
    tol = 1e-6 * max(float(a.grid.length), 1.0)
    if not np.allclose(a.points, b.points, rtol=0.0, atol=tol):
        raise FemurFeError(f"{a.path} and {b.path} have the same sizes but different node coordinates (more than "
                           f"{tol:.2g} mm apart); compare results computed on the same mesh")


def difference_range(diff: np.ndarray) -> tuple[float, float]:
    """Colour range of a change map: symmetric about 0, up to the 99th percentile of |change|.

    A few elements next to the supports or inside a local graft change far more than the
    rest; a range up to the largest change would draw everything else in the centre colour.
    The robust range keeps the pattern visible; larger changes take the end colours. When
    the largest change is within 1.25 times the percentile (no outliers), or 99 % of the
    elements do not change, the range goes up to the largest change; (-1, 1) when nothing
    changes.
    """
    a = np.abs(np.asarray(diff, dtype=np.float64))
    a = a[np.isfinite(a)]
    if a.size == 0 or a.max() <= 0:
        return -1.0, 1.0
    m = float(np.percentile(a, ROBUST_PERCENTILE))
    if m <= 0 or a.max() <= 1.25 * m:
        m = float(a.max())
    return -m, m


def _fmt_num(x: float) -> str:
    return f"{x:.2g}" if abs(x) < 0.01 or abs(x) >= 1000 else f"{x:.3g}"


def plot_comparison(baseline, scenario, field: str = "density", *, screenshot: str | os.PathLike | None = None,
                    difference: bool = True, clip: bool = False, clim: Sequence[float] | None = None,
                    diff_clim: Sequence[float] | None = None, show_regions: bool = False,
                    show_load: bool = True, labels: Sequence[str] | None = None,
                    window_size: Sequence[int] | None = None) -> Path | None:
    """Baseline and scenario side by side (linked cameras, one colour range) + a difference map.

    Parameters
    ----------
    baseline, scenario : result folders (or StoredResults) on the same mesh
    field : field name as in :func:`plot`; both results must have it (e.g. ``"risk"``
        needs a failure criterion in both runs). Displacement is compared unwarped.
    difference : add a third panel with scenario - baseline (diverging colours, symmetric
        range; e.g. the change in density in g/cm^3, the change in risk)
    clim : common colour range of the two result panels (default: range over both)
    diff_clim : colour range of the difference panel (default: :func:`difference_range`,
        +- the 99th percentile of |change|; larger changes in the end colours)
    labels : titles of the two result panels (default: "baseline: <folder>", "scenario: <folder>")
    window_size : default (1200, 400) with the difference panel, (800, 400) without

    Returns
    -------
    The screenshot path, or None after an interactive window was closed.
    """
    base, scen = as_result(baseline), as_result(scenario)
    _check_same_mesh(base, scen)
    spec_b, spec_s = field_spec(base, field), field_spec(scen, field)
    vb, vs = spec_b.values(base), spec_s.values(scen)
    if clim is None:
        both = np.concatenate([vb[np.isfinite(vb)], vs[np.isfinite(vs)]])
        clim = _clim(both, spec_b)
    diff = vs - vb
    if diff_clim is None:
        diff_clim = difference_range(diff)
    if screenshot is None:
        _check_interactive()
    n = 3 if difference else 2
    size = window_size or (400 * n, 400)
    plotter = _new_plotter(size, off_screen=screenshot is not None, shape=(1, n))
    font = _font((size[0] / n, size[1]))
    names = list(labels) if labels is not None else [f"baseline: {base.name}", f"scenario: {scen.name}"]
    if len(names) != 2:
        raise FemurFeError(f"labels must be two titles (baseline, scenario), got {labels!r}")
    nowarp = 0.0
    for i, (res, spec, label) in enumerate(((base, spec_b, names[0]), (scen, spec_s, names[1]))):
        plotter.subplot(0, i)
        _draw_result(plotter, res, spec, warp=nowarp, clip=clip, clim=clim, cmap=None, title=label,
                     show_regions=show_regions, show_load=show_load, scalar_bar=(i == 1), font=font)
    if difference:
        plotter.subplot(0, 2)
        dspec = FieldSpec(f"change_{spec_b.name}", spec_b.array, spec_b.association,
                          f"change in {spec_b.label}", "RdBu_r", symmetric=True)
        finite = np.abs(diff[np.isfinite(diff)])
        text = "change (scenario - baseline)"
        if finite.size and finite.max() > diff_clim[1] * (1 + 1e-9):
            text += f"\nbeyond +/-{_fmt_num(diff_clim[1])}: end colours"
        _draw_result(plotter, base, dspec, warp=nowarp, clip=clip, clim=diff_clim, cmap=None, title=text,
                     show_regions=False, show_load=False, values=diff, font=font, mark_beyond=False)
    plotter.link_views()
    return _finish(plotter, screenshot)


def _grid_of(mesh) -> Any:
    """A pyvista grid from a femur_fe Mesh, a pyvista dataset or a result folder."""
    import pyvista as pv

    if isinstance(mesh, pv.DataSet):
        return mesh.copy(deep=False)
    if isinstance(mesh, (str, os.PathLike, StoredResult)):
        return as_result(mesh).grid.copy(deep=False)

    if isinstance(mesh, Mesh):
        return pv.from_meshio(meshio_from_mesh(mesh))
    raise FemurFeError(f"mesh must be a femur_fe.Mesh, a pyvista grid or a result folder, got {type(mesh).__name__}")


def animate_density(mesh, densities_over_time, times, path: str | os.PathLike, *, fps: float = 4.0,
                    clim: Sequence[float] | None = None, cmap: str = "viridis", clip: bool = False,
                    time_unit: str = "months", title: str = "density",
                    window_size: Sequence[int] = (480, 360)) -> Path:
    """Write a GIF of element density over time (remodeling runs), one fixed colour range.

    Parameters
    ----------
    mesh : femur_fe.Mesh, pyvista grid or result folder whose cells match the densities
    densities_over_time : (k, m) density per recorded time and element, g/cm^3
        (e.g. ``RemodelingResult.density``)
    times : (k,) recorded times (e.g. ``RemodelingResult.t_months``), in ``time_unit``
    path : output ``.gif`` (written atomically)
    fps : frames per second
    clim : colour range, g/cm^3 (default: min and max over all frames)
    clip : mid-plane section normal to x through the bounding-box centre
    window_size : (width, height) pixels of each frame

    Returns
    -------
    The GIF path.
    """
    import imageio.v3 as iio


    grid = _grid_of(mesh)
    rho = np.asarray(densities_over_time, dtype=np.float64)
    t = np.asarray(times, dtype=np.float64).ravel()
    if rho.ndim != 2 or rho.shape[1] != grid.n_cells:
        raise FemurFeError(f"densities_over_time must have shape (k, {grid.n_cells}) (one row per time, one "
                           f"value per element, g/cm^3), got {rho.shape}")
    if t.shape != (rho.shape[0],):
        raise FemurFeError(f"times must have one value per density row ({rho.shape[0]},), got {t.shape}")
    if rho.shape[0] < 1 or not np.isfinite(rho).all():
        raise FemurFeError("densities_over_time must be finite with at least one row")
    if not (fps > 0 and np.isfinite(fps)):
        raise FemurFeError(f"fps must be > 0, got {fps!r}")
    out = Path(path)
    if out.suffix.lower() != ".gif":
        raise FemurFeError(f"path must end in .gif, got {str(path)!r}")
    spec = FieldSpec("density", "density", "cell", f"{title} (g/cm^3)", cmap)
    lims = _clim(rho.ravel(), spec, clim)
    grid.clear_data()
    grid.cell_data["_values"] = rho[0]
    lo, hi = np.asarray(grid.bounds).reshape(3, 2).T
    draw = grid
    if clip:
        draw = grid.clip(normal=(1.0, 0.0, 0.0), origin=0.5 * (lo + hi), crinkle=False)
    plotter = _new_plotter(window_size, off_screen=True)
    frames = []
    try:
        bar_args = _scalar_bar_args(spec.label, viewport_h=window_size[1])
        plotter.add_mesh(draw, scalars="_values", cmap=cmap, clim=lims, scalar_bar_args=bar_args, show_scalar_bar=True)
        _title_scalar_bar(plotter, bar_args, window_size)
        label = plotter.add_text("", position="upper_edge", font_size=10, color="black")
        focal = 0.5 * (lo + hi)
        direction = np.array([1.0, 0.0, 0.0]) if clip else np.array([0.0, -1.0, 0.0])
        plotter.camera_position = [tuple(focal + 3 * np.linalg.norm(hi - lo) * direction), tuple(focal), (0, 0, 1)]
        plotter.reset_camera()
        for k in range(rho.shape[0]):
            if clip:
                vals = grid.copy(deep=False)
                vals.cell_data["_values"] = rho[k]
                draw.copy_from(vals.clip(normal=(1.0, 0.0, 0.0), origin=0.5 * (lo + hi), crinkle=False))
            else:
                draw.cell_data["_values"] = rho[k]
            label.SetText(7, f"{title}, t = {t[k]:g} {time_unit}")  # 7 = upper edge
            plotter.render()
            frames.append(plotter.screenshot(return_img=True))
    finally:
        plotter.close()
    with atomic_path(out) as tmp:
        iio.imwrite(tmp, np.stack(frames), extension=".gif", duration=int(round(1000.0 / fps)), loop=0)
    return out


__all__ = ["FIELDS", "ALIASES", "FieldSpec", "available_fields", "field_spec", "display_available", "clip_plane",
           "warp_factor", "plot", "plot_comparison", "difference_range", "animate_density", "read_result"]
