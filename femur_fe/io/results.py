"""The result-folder format, both ways: :func:`write_run_folder` writes it, :func:`read_result`
reads it back for plots and reports.

:func:`read_result` checks that the folder is complete: both files present, every field
that the run pipeline writes present with the right shape, and the summary keys the
viewers and reports use. A missing piece raises :class:`femur_fe.errors.FemurFeError`
naming what is missing and which command writes it. Optional fields (``risk``: only when a
failure criterion ran; ``nonlinear_curve``: only with the nonlinear analysis) are checked
when asked for (:meth:`StoredResult.cell_field`, :meth:`StoredResult.require_summary`).

Units: mm, N, MPa, g/cm^3.
"""
from __future__ import annotations

import json
import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from ..errors import FemurFeError
from ..fe.mesh import Mesh
from . import read_mesh
from .atomic import write_json_atomic, write_text_atomic
from .mesh_io import write_mesh

log = logging.getLogger(__name__)

RESULT_FILE = "result.vtu"
SUMMARY_FILE = "summary.json"
#: the FE model as solved beyond the bone mesh of result.vtu: load frame, caps, regions, supports, plate
FE_MODEL_FILE = "fe_model.json"
FE_MODEL_VERSION = 1
#: how a result folder is written (for error messages)
WRITTEN_BY = ("`femur-fe run CASE.toml ... --out DIR` or femur_fe.run(case, bone, out=DIR) "
              "(femur_fe.Result.write)")
#: point fields every result has: name -> number of components
REQUIRED_POINT_FIELDS = {"displacement": 3}
#: cell fields every result has: name -> number of components (1 = scalar)
REQUIRED_CELL_FIELDS = {"strain": 6, "stress": 6, "von_mises": 1, "principal_strain": 3, "sed": 1,
                        "effective_strain": 1, "young_modulus": 1, "density": 1}
#: cell fields written only in some runs: name -> (components, what writes them)
OPTIONAL_CELL_FIELDS = {"risk": (1, "a failure criterion: run the case with strength evaluation "
                                    "(femur_fe.run) and a [failure] section")}
#: summary keys every result has
REQUIRED_SUMMARY_KEYS = ("stiffness_N_per_mm", "reaction_forces_N", "load_direction", "case", "inputs",
                         "femur_fe_version")
#: optional summary keys and what writes them
OPTIONAL_SUMMARY_KEYS = {
    "nonlinear_curve": "the nonlinear analysis (femur_fe.run(..., nonlinear=True) / `femur-fe run --nonlinear`)",
    "strength_linear_N": "a failure criterion (femur_fe.run)",
    "strength_nonlinear_N": "the nonlinear analysis (femur_fe.run(..., nonlinear=True))",
    "factor_of_risk": "a failure criterion with a subject (fall impact force) in the load case",
}


def _components(arr: np.ndarray) -> int:
    return 1 if arr.ndim == 1 else int(np.prod(arr.shape[1:]))


@dataclass(eq=False)
class StoredResult:
    """A result folder read back from disk (what :func:`read_result` returns).

    Attributes
    ----------
    path : the result folder
    grid : pyvista.UnstructuredGrid of ``result.vtu`` (point and cell data as written)
    summary : the parsed ``summary.json``
    """

    path: Path
    grid: Any
    summary: dict
    _mesh: Any = field(default=None, repr=False)

    # ------------------------------------------------------------------ basic data
    @property
    def name(self) -> str:
        """A label: the folder name."""
        return self.path.name

    @property
    def n_points(self) -> int:
        return int(self.grid.n_points)

    @property
    def n_cells(self) -> int:
        return int(self.grid.n_cells)

    @property
    def points(self) -> np.ndarray:
        """(n, 3) node coordinates, mm."""
        return np.asarray(self.grid.points, dtype=np.float64)

    @property
    def displacement(self) -> np.ndarray:
        """(n, 3) nodal displacement, mm."""
        return np.asarray(self.grid.point_data["displacement"], dtype=np.float64)

    @property
    def bone(self) -> str | None:
        """``"femur"``/``"vertebra"`` (from the resolved case), or None."""
        return self.summary.get("bone") or self.case.get("bone")

    @property
    def case(self) -> dict:
        """The resolved load case (dict) embedded in the summary."""
        c = self.summary.get("case")
        return c if isinstance(c, dict) else {}

    @property
    def case_name(self) -> str:
        return str(self.summary.get("case_name") or self.case.get("name") or self.name)

    @property
    def load_direction(self) -> np.ndarray:
        """(3,) unit vector of the load on the loaded region (input frame)."""
        d = np.asarray(self.summary["load_direction"], dtype=np.float64)
        n = np.linalg.norm(d)
        return d / n if n > 0 else d

    @property
    def loaded_region(self) -> str | None:
        """Name of the region the load is applied to (``apply = "load"`` in the case)."""
        for b in self.case.get("boundary", []) or []:
            if isinstance(b, dict) and b.get("apply") == "load":
                return str(b.get("region"))
        return None

    @property
    def region_names(self) -> list[str]:
        """Regions stored as ``region_<name>`` point arrays, in file order."""
        return [k[len("region_"):] for k in self.grid.point_data.keys() if k.startswith("region_")]

    def region_nodes(self, name: str) -> np.ndarray:
        """Node ids of region ``name`` (from its 0/1 point array)."""
        key = f"region_{name}"
        if key not in self.grid.point_data:
            raise FemurFeError(f"{self.path}: no region {name!r}; regions in this result: "
                               f"{', '.join(self.region_names) or 'none'}")
        return np.flatnonzero(np.asarray(self.grid.point_data[key]) > 0)

    def region_centroid(self, name: str) -> np.ndarray:
        """Centroid of region ``name``: from the summary when written, else the node mean, mm."""
        reg = (self.summary.get("regions") or {}).get(name) or {}
        if "centroid" in reg:
            return np.asarray(reg["centroid"], dtype=np.float64)
        return self.points[self.region_nodes(name)].mean(axis=0)

    def cell_field(self, name: str) -> np.ndarray:
        """A cell-data array by name (e.g. ``"risk"``); clear error when the run did not write it."""
        if name not in self.grid.cell_data:
            hint = OPTIONAL_CELL_FIELDS.get(name, (None, WRITTEN_BY))[1]
            raise FemurFeError(f"{self.path / RESULT_FILE} has no cell field {name!r}; it is written by {hint}. "
                               f"Cell fields present: {', '.join(self.grid.cell_data.keys())}")
        return np.asarray(self.grid.cell_data[name])

    def require_summary(self, key: str) -> Any:
        """``summary[key]``; clear error naming what writes it when absent or null."""
        if self.summary.get(key) is None:
            what = OPTIONAL_SUMMARY_KEYS.get(key, WRITTEN_BY)
            raise FemurFeError(f"{self.path / SUMMARY_FILE} has no {key!r}; it is written by {what}")
        return self.summary[key]

    @property
    def mesh(self):
        """The result mesh as a :class:`femur_fe.Mesh` (read on first use)."""
        if self._mesh is None:
            self._mesh = read_mesh(self.path / RESULT_FILE)
        return self._mesh

    # ------------------------------------------------------------------ anatomy
    def frame(self):
        """The anatomical frame the run used (from ``summary["frame"]``), or None when it wrote none.

        The frame is rebuilt with the parts the viewers use (basis, landmarks, axes).
        """
        stored = self.summary.get("frame")
        if self.bone in ("femur", "vertebra") and isinstance(stored, dict) and "basis" in stored:
            return _frame_from_dict(stored, self.bone)
        return None


def _frame_from_dict(d: dict, bone: str):
    """Rebuild the parts of a frame the viewers use from ``frame.to_dict()`` output."""
    basis = np.asarray(d["basis"], dtype=np.float64)
    if bone == "femur":
        return SimpleNamespace(bone="femur", basis=basis, head_centre=np.asarray(d["head_centre"], dtype=float),
                               neck_axis=np.asarray(d["neck_axis"], dtype=float),
                               shaft_axis=np.asarray(d["shaft_axis"], dtype=float), anterior=basis[1],
                               proximal=basis[2], origin=np.asarray(d["head_centre"], dtype=float))
    centre = np.asarray(d["body_centre"], dtype=float)
    return SimpleNamespace(bone="vertebra", basis=basis, body_centre=centre, origin=centre, anterior=basis[1],
                           axis=basis[2], right=basis[0])


# ---------------------------------------------------------------------------------------------- FE model
def _ids(a) -> list:
    return np.asarray(a, dtype=np.int64).ravel().tolist()


def write_run_folder(out_dir: str | os.PathLike, result: Any) -> Path:
    """Write a run folder from a :class:`femur_fe.analysis.result.Result`: ``result.vtu`` (the
    mesh with ``displacement`` (mm), a ``region_<name>`` 0/1 node flag per region and the element
    fields), ``summary.json`` and, when the analysis is known, ``fe_model.json``. Each file is
    written atomically; returns the folder."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pd = {"displacement": result.displacement}
    for k, reg in result.regions.items():
        flag = np.zeros(result.mesh.n_points, dtype=np.uint8)
        flag[reg.nodes] = 1
        pd[f"region_{k}"] = flag
    mesh = Mesh(result.mesh.points, result.mesh.cells, result.mesh.cell_type, cell_data=result.element_fields(),
                point_data=pd)
    write_mesh(out / "result.vtu", mesh)
    write_json_atomic(out / "summary.json", result.summary())
    if result.analysis is not None:
        write_fe_model(out, result.analysis, result)
    return out


def write_fe_model(out_dir: str | os.PathLike, analysis: Any, result: Any) -> Path:
    """Write ``fe_model.json``: what a prepared analysis adds to the bone mesh of ``result.vtu``.

    ``analysis`` is a :class:`femur_fe.analysis.Analysis`, ``result`` one of its results (read by
    attribute). Stored, so that :func:`femur_fe.studies.stored.load_analysis` rebuilds the analysis
    without the anatomy: the load-frame rotation and direction, the anatomical frame, the cap elements and
    nodes (load frame, as solved; ids continue those of ``result.vtu``), every region (nodes, faces),
    the nodes each support/plate acts on, the fixed DOFs, the rigid plate (tied nodes, reference point,
    prescribed DOFs) and its rotation and moment in this result. Units: mm, N, rad; ids 0-based.
    """
    an = analysis
    fe = an.fe_mesh
    nb, mb = int(an.n_bone_nodes), int(an.n_bone_cells)
    tie = an.tie
    frame = getattr(an, "frame", None)
    data = {
        "format_version": FE_MODEL_VERSION,
        "about": "femur_fe FE model as solved: load frame x' = rotation @ x (load along +z'); bone nodes and "
                 "cells are those of result.vtu, cap nodes/cells follow them; mm, N, rad; ids 0-based",
        "rotation": np.asarray(an.rotation, dtype=float).tolist(),
        "direction": np.asarray(an.direction, dtype=float).tolist(),
        "frame": frame.to_dict() if hasattr(frame, "to_dict") else None,
        "height_mm": an.height_mm,
        "cell_type": fe.cell_type,
        "n_bone_nodes": nb,
        "n_bone_cells": mb,
        "cap_young_mpa": float(an.case.caps.young_mpa),
        "cap_points": fe.points[nb:].tolist(),
        "cap_cells": fe.cells[mb:].tolist(),
        "caps": {name: {"first_cell": int(c.first_cell), "n_cells": int(c.n_cells), "top_nodes": _ids(c.top_nodes),
                        "interface_nodes": _ids(c.interface_nodes), "axis": np.asarray(c.axis, float).tolist(),
                        "thickness_mm": float(c.thickness_mm)} for name, c in an.caps.items()},
        "regions": {name: {"kind": r.kind, "nodes": _ids(r.nodes), "faces": np.asarray(r.faces).tolist(),
                           "face_ids": _ids(r.face_ids), "face_areas": np.asarray(r.face_areas, float).tolist(),
                           "centroid": np.asarray(r.centroid, float).tolist(),
                           "normal": np.asarray(r.normal, float).tolist()} for name, r in an.regions.items()},
        "region_fe_nodes": {name: _ids(v) for name, v in an.region_fe_nodes.items()},
        "bc_bone_nodes": _ids(an.bc_bone_nodes),
        "fixed_dofs": _ids(an.fixed_dofs),
        "tie": {"name": tie.name, "node_ids": _ids(tie.node_ids),
                "reference_point": np.asarray(tie.reference_point, float).tolist(),
                "prescribed": {k: float(v) for k, v in tie.prescribed.items()},
                "force": np.asarray(tie.force, float).tolist(), "moment": np.asarray(tie.moment, float).tolist()},
        "plate_rotation_rad": None if result.plate_rotation is None else np.asarray(result.plate_rotation).tolist(),
        "plate_moment_Nmm": None if result.plate_moment is None else np.asarray(result.plate_moment).tolist(),
    }
    # compact: the node and face lists make up most of it (one number per line would triple the size)
    return write_text_atomic(Path(out_dir) / FE_MODEL_FILE, json.dumps(data, separators=(",", ":")) + "\n")


def read_fe_model(path: str | os.PathLike) -> dict:
    """``fe_model.json`` of a result folder as a dict of NumPy arrays and plain values (see
    :func:`write_fe_model`); a clear error when the folder has none or it is from another version."""
    folder = _result_paths(path)
    f = folder / FE_MODEL_FILE
    if not f.is_file():
        raise FemurFeError(f"{folder} has no {FE_MODEL_FILE} (the FE model with caps, regions and the loading plate); "
                           f"it was written by an older femur_fe: re-run the case ({WRITTEN_BY})")
    try:
        d = json.loads(f.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise FemurFeError(f"{f} is not valid JSON ({exc}); re-run the case ({WRITTEN_BY})") from exc
    if not isinstance(d, dict) or d.get("format_version") != FE_MODEL_VERSION:
        raise FemurFeError(f"{f} has format_version {d.get('format_version') if isinstance(d, dict) else None!r}, "
                           f"this femur_fe reads {FE_MODEL_VERSION}; re-run the case with this version ({WRITTEN_BY})")
    i64, f64 = np.int64, np.float64
    try:
        out = dict(d)
        out["rotation"] = np.asarray(d["rotation"], dtype=f64).reshape(3, 3)
        out["direction"] = np.asarray(d["direction"], dtype=f64).reshape(3)
        out["cap_points"] = np.asarray(d["cap_points"], dtype=f64).reshape(-1, 3)
        out["cap_cells"] = np.asarray(d["cap_cells"], dtype=i64).reshape(len(d["cap_cells"]), -1)
        out["caps"] = {k: {**c, "top_nodes": np.asarray(c["top_nodes"], dtype=i64),
                           "interface_nodes": np.asarray(c["interface_nodes"], dtype=i64),
                           "axis": np.asarray(c["axis"], dtype=f64)} for k, c in d["caps"].items()}
        out["regions"] = {k: {**r, "nodes": np.asarray(r["nodes"], dtype=i64),
                              "faces": np.asarray(r["faces"], dtype=i64).reshape(len(r["faces"]), -1),
                              "face_ids": np.asarray(r["face_ids"], dtype=i64),
                              "face_areas": np.asarray(r["face_areas"], dtype=f64),
                              "centroid": np.asarray(r["centroid"], dtype=f64),
                              "normal": np.asarray(r["normal"], dtype=f64)} for k, r in d["regions"].items()}
        out["region_fe_nodes"] = {k: np.asarray(v, dtype=i64) for k, v in d["region_fe_nodes"].items()}
        out["bc_bone_nodes"] = np.asarray(d["bc_bone_nodes"], dtype=i64)
        out["fixed_dofs"] = np.asarray(d["fixed_dofs"], dtype=i64)
        t = d["tie"]
        out["tie"] = {**t, "node_ids": np.asarray(t["node_ids"], dtype=i64),
                      "reference_point": np.asarray(t["reference_point"], dtype=f64)}
        for key in ("plate_rotation_rad", "plate_moment_Nmm"):
            out[key] = None if d.get(key) is None else np.asarray(d[key], dtype=f64)
    except (KeyError, TypeError, ValueError) as exc:
        raise FemurFeError(f"{f} is incomplete or malformed ({type(exc).__name__}: {exc}); re-run the case "
                           f"({WRITTEN_BY})") from exc
    return out


def _result_paths(path: str | os.PathLike) -> Path:
    p = Path(path)
    if p.is_file() and p.name in (RESULT_FILE, SUMMARY_FILE):
        return p.parent
    return p


def read_result(path: str | os.PathLike) -> StoredResult:
    """Read and check a result folder written by :meth:`femur_fe.analysis.prepare.Result.write`.

    Parameters
    ----------
    path : the folder (or its ``result.vtu`` / ``summary.json``)

    Returns
    -------
    StoredResult with the pyvista grid, the summary and helpers (regions, load, frame).

    Raises
    ------
    FemurFeError naming the missing file, field or summary key and the command that writes it.
    """
    import pyvista as pv

    folder = _result_paths(path)
    if not folder.is_dir():
        raise FemurFeError(f"result folder {folder} does not exist; it is written by {WRITTEN_BY}")
    missing_files = [f for f in (RESULT_FILE, SUMMARY_FILE) if not (folder / f).is_file()]
    if missing_files:
        raise FemurFeError(f"result folder {folder} lacks {' and '.join(missing_files)}; both are written by "
                           f"{WRITTEN_BY}. Files present: {', '.join(sorted(p.name for p in folder.iterdir())) or 'none'}")
    try:
        summary = json.loads((folder / SUMMARY_FILE).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise FemurFeError(f"{folder / SUMMARY_FILE} is not valid JSON ({exc}); re-run the case to rewrite it "
                           f"({WRITTEN_BY})") from exc
    if not isinstance(summary, dict):
        raise FemurFeError(f"{folder / SUMMARY_FILE} must hold a JSON object, got {type(summary).__name__}")
    missing_keys = [k for k in REQUIRED_SUMMARY_KEYS if k not in summary]
    if missing_keys:
        raise FemurFeError(f"{folder / SUMMARY_FILE} lacks key(s) {', '.join(missing_keys)}; re-run the case with "
                           f"this femur_fe version ({WRITTEN_BY})")
    try:
        grid = pv.read(folder / RESULT_FILE)
    except Exception as exc:  # VTK raises several types for unreadable files
        raise FemurFeError(f"{folder / RESULT_FILE} cannot be read as a VTK unstructured grid ({exc}); "
                           f"re-run the case ({WRITTEN_BY})") from exc
    if grid.n_cells == 0 or grid.n_points == 0:
        raise FemurFeError(f"{folder / RESULT_FILE} holds an empty mesh; re-run the case ({WRITTEN_BY})")
    problems = []
    for assoc, data, required, n in (("point", grid.point_data, REQUIRED_POINT_FIELDS, grid.n_points),
                                     ("cell", grid.cell_data, REQUIRED_CELL_FIELDS, grid.n_cells)):
        for name, ncomp in required.items():
            if name not in data:
                problems.append(f"{assoc} field {name!r} is missing")
                continue
            arr = np.asarray(data[name])
            if arr.shape[0] != n or _components(arr) != ncomp:
                problems.append(f"{assoc} field {name!r} has shape {arr.shape}, expected ({n}{', ' + str(ncomp) if ncomp > 1 else ''})")
    for name, (ncomp, _) in OPTIONAL_CELL_FIELDS.items():
        if name in grid.cell_data:
            arr = np.asarray(grid.cell_data[name])
            if arr.shape[0] != grid.n_cells or _components(arr) != ncomp:
                problems.append(f"cell field {name!r} has shape {arr.shape}, expected ({grid.n_cells},)")
    if problems:
        raise FemurFeError(f"{folder / RESULT_FILE} is incomplete: {'; '.join(problems)}. It is written by "
                           f"{WRITTEN_BY}; re-run the case with this femur_fe version")
    d = np.asarray(summary["load_direction"], dtype=float)
    if d.shape != (3,) or not np.isfinite(d).all():
        raise FemurFeError(f"{folder / SUMMARY_FILE}: load_direction must be 3 finite numbers, got "
                           f"{summary['load_direction']!r}; re-run the case ({WRITTEN_BY})")
    return StoredResult(folder, grid, summary)


def as_result(obj: Any) -> StoredResult:
    """A :class:`StoredResult` from a StoredResult, a result folder or a written pipeline Result."""
    if isinstance(obj, StoredResult):
        return obj
    if isinstance(obj, (str, os.PathLike)):
        return read_result(obj)
    if hasattr(obj, "write") and hasattr(obj, "summary") and hasattr(obj, "displacement"):
        # an in-memory femur_fe.analysis.prepare.Result: write it with its own writer and read it back

        with tempfile.TemporaryDirectory(prefix="femur_fe_result_") as tmp:
            stored = read_result(obj.write(Path(tmp) / "result"))
        stored.path = Path(str(getattr(obj.case, "name", "result")))
        stored._mesh = obj.mesh
        return stored
    raise FemurFeError(f"expected a result folder (path) or a StoredResult from femur_fe.read_result, got "
                       f"{type(obj).__name__}; write a pipeline Result first with result.write(DIR)")


__all__ = ["StoredResult", "read_result", "as_result", "read_fe_model", "write_fe_model", "RESULT_FILE",
           "SUMMARY_FILE", "FE_MODEL_FILE"]
