"""One solved load case: displacements, strains and stresses of the bone, reactions, stiffness,
strength and the summary written to ``summary.json``."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from .._version import __version__
from ..bone.model import Model
from ..diagnostics import as_dicts, merged
from ..fe.fields import element_fields
from ..fe.mesh import Mesh
from ..fe.recovery import node_average, strain, stress
from ..io.results import write_run_folder
from .risk import summary_fields
from .strengths import strengths

log = logging.getLogger(__name__)


@dataclass(eq=False)
class Result:
    """One solved load case (fields in the input frame, bone elements only)."""

    mesh: Mesh
    case: Any
    model: Model
    displacement: np.ndarray  # (n, 3) mm
    strain: np.ndarray  # (m, 3, 3)
    stress: np.ndarray  # (m, 3, 3) MPa
    reaction_forces: dict  # region -> (3,) N, force the support/plate exerts on the bone
    load_direction: np.ndarray
    load_force_N: float
    plate_displacement_mm: float
    stiffness_N_per_mm: float | None
    solver: Any
    bc_nodes: np.ndarray
    regions: dict
    plate_rotation: np.ndarray | None = None
    plate_moment: np.ndarray | None = None
    height_mm: float | None = None  # loaded-to-support distance along the load (characteristic_length_mm)
    linear: Any = None  # femur_fe.analysis.failure.LinearStrength
    nonlinear: Any = None  # femur_fe.fe.nonlinear.NonlinearResult
    strength_summary: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)
    subject: Any = None  # femur_fe.analysis.subject.Subject
    frame: Any = None  # the anatomical frame of the analysis (FemurFrame / VertebraFrame)
    cell_fields: dict = field(default_factory=dict)  # extra (m,) arrays written to result.vtu
    warnings: list = field(default_factory=list)  # named warnings (femur_fe.diagnostics.RunWarning) of this run
    _strain_nodal: np.ndarray | None = None
    analysis: Any = None  # the Analysis that solved it, without its solver set-up (fe_model.json comes from it)

    @classmethod
    def from_solution(cls, an: Any, m: Model, u, reactions, d, load_force, plate_disp, stiffness, report,
                      plate_rotation=None, plate_moment=None) -> "Result":
        mesh = m.mesh
        flat = np.ascontiguousarray(u.ravel())
        eps = strain(mesh, flat, at="centroid")
        sig = stress(mesh, flat, m.young, m.poisson, at="centroid")
        return cls(mesh, an.case, m, u, eps, sig, reactions, d, load_force, plate_disp, stiffness, report,
                   an.bc_bone_nodes, an.regions, plate_rotation, plate_moment, frame=an.frame,
                   analysis=replace(an, assembler=None, _solver=None))  # the model, not the factorisation

    @property
    def strain_nodal(self) -> np.ndarray:
        if self._strain_nodal is None:
            self._strain_nodal = node_average(self.mesh, self.strain)
        return self._strain_nodal

    def evaluate_strength(self, criterion=None):
        """Linear strength with the case's (or the given) failure criterion; fills ``linear``."""
        self.linear = self.evaluate_criterion(criterion or self.case.failure.build())
        self._update_summary()
        return self.linear

    def evaluate_criterion(self, crit):
        """Linear strength of any failure criterion on this solution (``linear`` is left as it is)."""
        return crit.linear_strength(abs(self.load_force_N), self.mesh, strain=self.strain,
                                    young=self.model.young, stress=self.stress, density=self.model.density,
                                    strain_nodal=self.strain_nodal, bc_nodes=self.bc_nodes,
                                    density_type=self.model.density_type,
                                    plate_displacement_mm=self.plate_displacement_mm, height_mm=self.height_mm)

    def _update_summary(self, *, impact=None) -> None:
        subj = self.subject
        site = "hip" if self.case.bone == "femur" else "spine"
        sex = getattr(subj, "sex", None)
        if impact is None and subj is not None and site == "hip":
            impact = subj.impact_force()
        self.strength_summary = summary_fields(linear=self.linear, nonlinear=self.nonlinear, site=site, sex=sex,
                                               impact=impact, reference=self.case.failure.reference_strength)

    # ------------------------------------------------------------------ derived fields
    def element_fields(self) -> dict[str, np.ndarray]:
        f = element_fields(self.strain, self.stress, self.model.young)
        f["young_modulus"] = self.model.young
        f["density"] = self.model.density
        if self.linear is not None:
            f["risk"] = np.nan_to_num(self.linear.risk.element, nan=0.0)
        f.update(self.cell_fields)
        return f

    def summary(self) -> dict[str, Any]:
        s = {
            "femur_fe_version": __version__,
            "case_name": self.case.name,
            "bone": self.case.bone,
            "stiffness_N_per_mm": self.stiffness_N_per_mm,
            "load_force_N": self.load_force_N,
            "plate_displacement_mm": self.plate_displacement_mm,
            "load_direction": self.load_direction.tolist(),
            "reaction_forces_N": {k: np.asarray(v).tolist() for k, v in self.reaction_forces.items()},
            "equilibrium_residual_N": float(np.linalg.norm(sum(np.asarray(v) for v in self.reaction_forces.values()))),
            "n_dofs": int(self.solver.n_dofs),
            "n_nodes": self.mesh.n_points,
            "n_elements": self.mesh.n_cells,
            "cell_type": self.mesh.cell_type,
            "solver": self.solver.as_dict(),
            "regions": {k: v.to_dict() for k, v in self.regions.items()},
            "frame": self.frame.to_dict() if hasattr(self.frame, "to_dict") else None,  # read by the viewers
            "material": {"law": type(self.model.law).__name__ if self.model.law is not None else None,
                         "density_type": self.model.density_type, "poisson": self.model.poisson,
                         "young_min_mpa": float(self.model.young.min()),
                         "young_max_mpa": float(self.model.young.max()),
                         "bone_mass_g": self.model.bone_mass_g(),
                         "integral_vbmd_mg_cm3": self.model.integral_vbmd_mg_cm3(),
                         "mapping": self.model.mapping, "calibration": self.model.calibration},
            "case": self.case.to_dict(),
            "inputs": dict(self.model.inputs),
        }
        if self.plate_rotation is not None and self.case.loading.direction == "wedge":
            s["plate_rotation_rad"] = self.plate_rotation.tolist()
            s["plate_moment_Nmm"] = self.plate_moment.tolist()
        s.update(self.strength_summary)
        if self.linear is not None:
            s["strength_linear_detail"] = self.linear.to_dict()
            s["strengths"] = strengths(self)
        if self.subject is not None:
            s["subject"] = self.subject.to_dict()
        if self.nonlinear is not None:
            s["nonlinear_curve"] = {"displacement_mm": list(map(float, self.nonlinear.curve_displacement_mm)),
                                    "force_N": list(map(float, self.nonlinear.curve_force_N))}
        s.update(self.extra)
        s["warnings"] = as_dicts(merged(self.warnings))
        return s

    def write(self, out_dir) -> "Path":
        """Write ``result.vtu``, ``summary.json`` and (when the analysis is known) ``fe_model.json`` into
        ``out_dir`` (atomically); returns the folder."""
        return write_run_folder(out_dir, self)
