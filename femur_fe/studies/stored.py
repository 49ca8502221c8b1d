"""Rebuild a solved analysis from its result folder, without the anatomy or the CT.

A folder written by :meth:`femur_fe.analysis.Result.write` (``femur-fe run``) holds the bone mesh with
its moduli and fields (``result.vtu``), the resolved load case and the reactions (``summary.json``), and
the FE model as solved (``fe_model.json``: load frame, caps, regions, supports, rigid plate). From them
:func:`load_analysis` returns the :class:`~femur_fe.analysis.prepare.Analysis` and its
:class:`~femur_fe.analysis.result.Result` as they were: the FE mesh is rebuilt bit for bit (the bone
nodes rotated exactly as :func:`~femur_fe.analysis.prepare.prepare` rotates them, the cap nodes stored in
the load frame), so re-solving it reproduces the run and exporting it (``femur-fe export``) writes the
model that was solved.
"""
from __future__ import annotations

import logging
import os

import numpy as np

from ..analysis.caps import Cap
from ..analysis.prepare import GLOBAL_FRAME, Analysis
from ..analysis.regions import Region
from ..analysis.result import Result
from ..bone.model import Model
from ..case.loadcase import load_case
from ..errors import FemurFeError
from ..fe.constraints import RigidTie
from ..fe.fields import tensor_from_voigt
from ..fe.mesh import Mesh
from ..io.results import SUMMARY_FILE, _frame_from_dict, read_fe_model, read_result

log = logging.getLogger(__name__)


def load_analysis(path: str | os.PathLike) -> tuple[Analysis, Result]:
    """The analysis and result stored in the result folder ``path`` (see the module docstring).

    Raises :class:`femur_fe.errors.FemurFeError` naming what is missing (e.g. a folder written before
    ``fe_model.json`` existed: re-run the case).
    """
    stored = read_result(path)
    fm = read_fe_model(stored.path)
    s = stored.summary
    case = load_case(s["case"], source=str(stored.path / SUMMARY_FILE))
    grid_mesh = stored.mesh
    bone = Mesh(grid_mesh.points, grid_mesh.cells, grid_mesh.cell_type)
    if (bone.n_points, bone.n_cells, bone.cell_type) != (fm["n_bone_nodes"], fm["n_bone_cells"], fm["cell_type"]):
        raise FemurFeError(f"{stored.path}: result.vtu has {bone.n_points} nodes and {bone.n_cells} {bone.cell_type} "
                           f"cells but fe_model.json was written for {fm['n_bone_nodes']} nodes and "
                           f"{fm['n_bone_cells']} {fm['cell_type']} cells; the folder mixes two runs: re-run the case")
    mat = s.get("material") or {}
    young = stored.cell_field("young_modulus").astype(np.float64)
    density = stored.cell_field("density").astype(np.float64)
    law = case.material.build() if mat.get("law") else None
    model = Model(bone, density, young, law, str(mat.get("density_type", "ash")), float(mat["poisson"]))
    R = fm["rotation"]
    fe_bone = bone.transformed(R)
    fe_mesh = Mesh(np.vstack([fe_bone.points, fm["cap_points"]]),
                   np.vstack([fe_bone.cells, fm["cap_cells"].reshape(-1, fe_bone.cells.shape[1])]), bone.cell_type)
    regions = {name: Region(name, r["kind"], r["nodes"], r["faces"], r["face_ids"], r["face_areas"], r["centroid"],
                            r["normal"]) for name, r in fm["regions"].items()}
    caps = {name: Cap(name, int(c["first_cell"]), int(c["n_cells"]), c["top_nodes"], c["interface_nodes"], c["axis"],
                      float(c["thickness_mm"])) for name, c in fm["caps"].items()}
    t = fm["tie"]
    tie = RigidTie(t["node_ids"], t["reference_point"], prescribed=t["prescribed"], force=t["force"],
                   moment=t["moment"], name=t["name"])
    frame = _frame_from_dict(fm["frame"], case.bone) if isinstance(fm.get("frame"), dict) else GLOBAL_FRAME
    an = Analysis(case, model, frame, regions, fm["direction"], R, fe_mesh, caps, tie, fm["fixed_dofs"],
                  fm["region_fe_nodes"], fm["bc_bone_nodes"])
    an.height_mm = fm.get("height_mm")
    reactions = {k: np.asarray(v, dtype=np.float64) for k, v in s["reaction_forces_N"].items()}
    res = Result(bone, case, model, stored.displacement, tensor_from_voigt(stored.cell_field("strain")),
                 tensor_from_voigt(stored.cell_field("stress")), reactions, stored.load_direction,
                 float(s["load_force_N"]), float(s["plate_displacement_mm"]), s.get("stiffness_N_per_mm"), None,
                 an.bc_bone_nodes, regions, fm["plate_rotation_rad"], fm["plate_moment_Nmm"], an.height_mm,
                 analysis=an)
    log.info("rebuilt %s from %s: %d bone + %d cap elements", case.name, stored.path, bone.n_cells,
             fe_mesh.n_cells - bone.n_cells)
    return an, res


__all__ = ["load_analysis"]
