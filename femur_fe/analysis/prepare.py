"""Run a load case on a bone model: frame, regions, caps, constraints, solve, fields, strength.

How a case becomes an FE problem
--------------------------------
1. The anatomical frame and the regions come from the bone geometry
   (:func:`femur_fe.analysis.regions.select_regions`); the load direction from the frame and the
   ``[loading]`` angles (:func:`femur_fe.analysis.regions.load_direction`).
2. The problem is solved in a *load frame*: the bone is rotated so that the load direction
   is +z'. "Along the load" supports and the plate motions are then ordinary DOF
   constraints. Results are rotated back, so everything written is in the input frame.
3. ``[caps] kind = "pmma"`` adds a PMMA layer (E = ``caps.young_mpa``) to each capped region,
   extruded along the load axis to a flat top (:mod:`femur_fe.analysis.caps`); the plate acts on the
   flat top. ``kind = "rigid"`` ties the region nodes to the plate directly.
4. The loaded region is tied to a rigid plate (:class:`femur_fe.fe.RigidTie`): for the femur
   its reference point is the head centre and it may rotate and slide freely (a load
   through the joint centre); for the vertebra the plate stays parallel (rotations held).
   A unit force along z' is solved and the solution scaled to the requested displacement
   or force (exact: the model is linear and the free plate DOFs carry no load). The wedge
   case prescribes the plate rotation instead.
5. Supports: ``fix = "all"`` holds all DOFs of the region (or of its cap's top),
   ``fix = "along_load"`` only the component along the load, ``fix = "across_load"`` the two
   components perpendicular to it (the region slides freely along the load).

Several load directions on one model (:meth:`Analysis.solve_directions`) reuse the
assembled matrix and the solver set-up (factorisation or AMG hierarchy): only the
right-hand side changes. A new density (:meth:`Analysis.solve` with ``model=``) reuses the
sparsity pattern, regions and caps.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from typing import Any, Mapping, Sequence

import numpy as np

from ..bone.model import Model
from ..diagnostics import collecting, merged, warn
from ..errors import LoadCaseError, RegionError
from ..fe.assembly import StiffnessAssembler
from ..fe.constraints import FIX_COMPONENTS, RigidTie
from ..fe.mesh import Mesh
from ..fe.nonlinear import SecantYield, nonlinear_strength
from ..fe.solvers import LinearSolver
from ..fe.voxel_solver import VoxelSolver, is_voxel_mesh
from .caps import add_cap, add_voxel_cap
from .checks import (
    check_bone_size,
    check_coincident_nodes,
    check_mesh_resolution,
    check_modulus_contrast,
    check_poisson,
)
from .failure import MaxPrincipalStrain
from .regions import frame_for, load_direction, select_regions, wedge_hinge
from .result import Result

log = logging.getLogger(__name__)


def _load_frame(d: np.ndarray, prefer: np.ndarray | None = None) -> np.ndarray:
    """Rotation matrix with rows (e1, e2, d): e1 is ``prefer`` made orthogonal to d."""
    d = d / np.linalg.norm(d)
    cands = [prefer] if prefer is not None else []
    cands += [np.array([1.0, 0, 0]), np.array([0, 1.0, 0])]
    for c in cands:
        c = np.asarray(c, dtype=float)
        e1 = c - (c @ d) * d
        if np.linalg.norm(e1) > 1e-6:
            e1 /= np.linalg.norm(e1)
            break
    e2 = np.cross(d, e1)
    return np.vstack([e1, e2, d])


class _GlobalFrame:
    """Stand-in frame for cases with explicit regions and a global load vector."""

    basis = np.eye(3)

    def vector_to_global(self, v) -> np.ndarray:
        return np.asarray(v, dtype=float)


GLOBAL_FRAME = _GlobalFrame()


@dataclass(eq=False)
class Analysis:
    """A load case prepared on a model: regions, caps, constraints and the assembler.

    Build with :func:`prepare`; solve with :meth:`solve` / :meth:`solve_directions`.
    """

    case: Any
    model: Model
    frame: Any
    regions: dict
    direction: np.ndarray  # (3,) global unit load direction
    rotation: np.ndarray  # (3,3) rows e1, e2, d: x' = R x
    fe_mesh: Mesh  # bone + caps, in the load frame
    caps: dict
    tie: Any
    fixed_dofs: np.ndarray
    region_fe_nodes: dict  # region -> node ids in fe_mesh where its support/plate acts
    bc_bone_nodes: np.ndarray
    assembler: Any = None
    _solver: Any = None  # full set-up for self.model (factorisation or AMG hierarchy)
    prepare_seconds: float = 0.0
    height_mm: float | None = None  # characteristic_length_mm, None without a supported region along the load
    _voxel: bool | None = None
    warnings: tuple = ()  # named warnings of the model and of the preparation (femur_fe.diagnostics)

    @property
    def n_bone_nodes(self) -> int:
        return self.model.mesh.n_points

    @property
    def n_bone_cells(self) -> int:
        return self.model.mesh.n_cells

    @property
    def loaded_region(self) -> str:
        return self.case.loaded_regions[0]

    def with_model(self, model: Model) -> "Analysis":
        """A copy for ``model`` (same mesh, new density) sharing regions, caps, supports and
        the assembler (sparsity pattern), with its own full solver set-up for the new moduli."""
        if model.mesh is not self.model.mesh and model.mesh.n_cells != self.model.mesh.n_cells:
            raise LoadCaseError("with_model needs a model on the same mesh (only the density may change)")
        return replace(self, model=model, _solver=None)

    @property
    def voxel(self) -> bool:
        """True when the FE model (bone and caps) is made of voxels: the matrix-free voxel solver applies."""
        if self._voxel is None:
            self._voxel = is_voxel_mesh(self.fe_mesh)
        return self._voxel

    def fe_young(self, model: Model | None = None) -> np.ndarray:
        m = model or self.model
        n_cap = self.fe_mesh.n_cells - self.n_bone_cells
        return np.concatenate([m.young, np.full(n_cap, float(self.case.caps.young_mpa))])

    def solver_for(self, model: Model | None = None):
        """The :class:`femur_fe.fe.LinearSolver` for ``model``'s moduli.

        The analysis's own model gets a full set-up (factorisation or AMG hierarchy), kept
        for the life of the analysis. Another model on the same mesh (a density change) is
        solved by CG preconditioned with that set-up: no new factorisation, a few
        iterations for moderate changes, same ``rtol`` on the new matrix.
        """
        m = model or self.model
        if m is self.model and self._solver is not None:
            return self._solver
        s = self.case.solver
        if s.method == "voxel" or (s.method == "auto" and self.voxel):
            if not self.voxel:
                raise LoadCaseError("[solver] method = 'voxel' needs a voxel model (hex8 cells of one size: CLI "
                                    "--mask-mesh hex, [bone] mesh_type = 'hex'); use method = 'auto'")
            # matrix-free: one template element matrix times the moduli (no assembled matrix)
            solver = VoxelSolver(self.fe_mesh, self.fe_young(m), m.poisson, self.fixed_dofs, ties=[self.tie],
                                 rtol=s.rtol, maxiter=s.maxiter)
            if m is self.model:
                self._solver = solver
            return solver
        if self.assembler is None:
            self.assembler = StiffnessAssembler(self.fe_mesh, m.poisson)
        base = None
        if m is not self.model:
            base = self.solver_for(self.model)
        K = self.assembler.assemble(self.fe_young(m))
        solver = LinearSolver(K, self.fixed_dofs, points=self.fe_mesh, method=s.method, rtol=s.rtol,
                              maxiter=s.maxiter, constraints=[self.tie], preconditioner=base)
        if m is self.model:
            self._solver = solver
        return solver

    # ------------------------------------------------------------------ solving
    def _plate_force_solution(self, solver, direction_prime: np.ndarray):
        n = solver.n_dofs
        load = np.concatenate([direction_prime, np.zeros(3)])
        return solver.solve(np.zeros(n), tie_loads={self.tie.name: load})

    def solve(self, model: Model | None = None, *, strength: bool = True, subject: Any = None) -> "Result":
        """Solve the case (optionally on a model with new density) and return the result.

        ``subject`` (:class:`femur_fe.Subject`) is attached before the strength is evaluated, so
        the factor of risk and the classification are in the result."""
        return self.solve_directions([None], model=model, strength=strength, subject=subject)[0]

    def solve_directions(self, directions: Sequence[np.ndarray | Mapping | None], *,
                         model: Model | None = None, strength: bool = True,
                         subject: Any = None) -> list["Result"]:
        """Solve several load directions on the same matrix and solver set-up.

        ``directions``: each item is None (the case's own direction), a (3,) global vector, or
        a mapping of loading angles (e.g. ``{"adduction_deg": 20, "internal_rotation_deg": 0}``)
        evaluated in the bone's frame. Regions and supports stay those of the case's own
        direction (the cap does not move with the load, as in an experiment).
        """
        m = model or self.model
        solver = self.solver_for(m)
        out = []
        for item in directions:
            if item is None:
                d = self.direction
            elif isinstance(item, Mapping):
                d = load_direction(_with_angles(self.case.loading, item), self.frame)
            else:
                d = np.asarray(item, dtype=float)
                if d.shape != (3,) or not np.isfinite(d).all() or np.linalg.norm(d) == 0:
                    raise LoadCaseError(f"load direction must be a finite non-zero 3-vector, got {item!r}")
                d = d / np.linalg.norm(d)
            out.append(self._solve_one(solver, m, d, strength=strength, subject=subject))
        return out

    def _solve_one(self, solver, m: Model, d: np.ndarray, *, strength: bool, subject: Any = None) -> "Result":
        with collecting() as found:
            res = self._solve_one_(solver, m, d, strength=strength, subject=subject)
        own = [w for w in self.warnings if w not in self.model.warnings]  # the preparation's own
        res.warnings = list(merged(m.warnings, own, found))
        return res

    def _solve_one_(self, solver, m: Model, d: np.ndarray, *, strength: bool, subject: Any = None) -> "Result":
        t0 = time.perf_counter()
        R = self.rotation
        loading = self.case.loading
        name = self.tie.name
        if loading.direction == "wedge":
            sol = solver.solve(np.zeros(solver.n_dofs))
            scale = 1.0
        else:
            sol = self._plate_force_solution(solver, R @ d)
            disp_d = float(sol.ties[name].displacement @ (R @ d))
            if not disp_d > 0:
                raise LoadCaseError(f"the loaded plate moves {disp_d:.3g} mm along the load under a unit force: "
                                    "the supports do not resist the load; check the [[boundary]] regions")
            if loading.mode == "displacement":
                scale = float(loading.displacement_mm) / disp_d
            else:
                scale = float(loading.force_n)
        u_fe = sol.u * scale
        reac_fe = sol.reactions * scale
        tie_res = sol.ties[name]
        nb = self.n_bone_nodes
        u = (u_fe[: 3 * nb].reshape(-1, 3)) @ R  # back to the input frame
        # the tie's reduced reaction T^T K u is the total force the plate exerts on the bone
        # (the applied load on free plate DOFs plus the reaction on prescribed ones)
        plate_force_prime = tie_res.force * scale
        reactions = {}
        for reg, nodes in self.region_fe_nodes.items():
            if reg == self.loaded_region:
                reactions[reg] = plate_force_prime @ R
            else:
                dofs = (3 * nodes[:, None] + np.arange(3)).ravel()
                reactions[reg] = reac_fe[dofs].reshape(-1, 3).sum(axis=0) @ R
        load_force = float(reactions[self.loaded_region] @ d)
        plate_disp = float((tie_res.displacement * scale) @ (R @ d))
        if loading.direction == "wedge":
            stiffness = load_force / plate_disp if abs(plate_disp) > 1e-12 else None
        else:  # the unit-force solution: independent of the load's magnitude (no round-off or underflow)
            stiffness = float(sol.ties[name].force @ (R @ d)) / disp_d
        res = Result.from_solution(self, m, u, reactions, d, load_force, plate_disp, stiffness, sol.report,
                                   plate_rotation=(tie_res.rotation * scale) @ R,
                                   plate_moment=(tie_res.moment * scale) @ R)
        res.height_mm = self.height_mm
        res.subject = subject
        if strength:
            res.evaluate_strength()
        log.info("solved %s: stiffness %s N/mm, load %.4g N, %.2f s", self.case.name,
                 "n/a" if stiffness is None else f"{stiffness:.1f}", load_force, time.perf_counter() - t0)
        return res


def _with_angles(loading, angles: Mapping):
    merged = dict(loading.angles)
    for k, v in angles.items():
        if k not in merged:
            raise LoadCaseError(f"loading angle {k!r} does not exist for direction {loading.direction!r}; "
                                f"valid: {sorted(merged)}")
        merged[k] = float(v)
    return replace(loading, angles=merged)


def prepare(case, model: Model, *, frame=None, regions=None) -> Analysis:
    """Prepare ``case`` on ``model``: frame, regions, load frame, caps, supports and plate.

    The checks of :mod:`femur_fe.analysis.checks` run first (bone size against its kind,
    resolution, coincident nodes, Poisson ratios, modulus contrast); warnings raised while
    preparing are kept in ``Analysis.warnings`` with the model's."""
    with collecting() as found:
        an = _prepare(case, model, frame=frame, regions=regions)
    an.warnings = merged(model.warnings, found)
    return an


def _prepare(case, model: Model, *, frame, regions) -> Analysis:
    t0 = time.perf_counter()
    mesh = model.mesh
    if len(case.loaded_regions) != 1:
        raise LoadCaseError(f"{case.source}: exactly one [[boundary]] entry must have apply = 'load', found "
                            f"{len(case.loaded_regions)} ({', '.join(case.loaded_regions) or 'none'})")
    needs_frame = any(s.kind not in ("node_set", "nodes") for s in case.regions.values())
    anatomical = frame is None and (needs_frame or case.loading.direction != "vector")
    if anatomical:
        check_bone_size(mesh, case.bone)
        check_mesh_resolution(mesh, case.bone)
    check_coincident_nodes(mesh)
    check_poisson(case, mesh, model.poisson)
    check_modulus_contrast(model.young, case.caps.young_mpa if case.caps.kind == "pmma" and case.caps.regions
                           else None)
    if frame is None:
        # explicit regions with an explicit vector need no anatomy: the vector is global
        frame = frame_for(mesh, case) if (needs_frame or case.loading.direction != "vector") else GLOBAL_FRAME
    if regions is None:
        regions = select_regions(mesh, case, frame)
    for b in case.boundary:
        if b.region not in regions:
            raise LoadCaseError(f"{case.source}: [[boundary]] names region {b.region!r} which is not defined; "
                                f"defined regions: {', '.join(regions)}")
    d = load_direction(case.loading, frame)
    prefer = None
    if case.loading.direction == "wedge":
        hinge, axis, angle = wedge_hinge(case.loading, frame)
        prefer = axis
    R = _load_frame(d, prefer)
    fe = mesh.transformed(R)
    caps = {}
    zprime = np.array([0.0, 0.0, 1.0])
    if case.caps.kind == "pmma":
        for reg in case.caps.regions:
            if reg not in regions:
                raise LoadCaseError(f"{case.source}: [caps] regions names {reg!r} which is not defined")
            r = regions[reg]
            if len(r.faces) == 0:
                raise RegionError(f"region {reg!r} has no surface faces for a PMMA cap; use [caps] kind = 'rigid'")
            nrm = R @ r.normal
            axis = zprime if nrm @ zprime >= 0 else -zprime
            if reg == case.loaded_regions[0]:
                axis = -zprime  # the plate pushes along +z' into the bone: the cap faces -z'
            build = add_voxel_cap if fe.cell_type == "hexahedron" else add_cap
            fe, cap = build(fe, r.faces, axis, case.caps.thickness_mm, name=reg)
            caps[reg] = cap
    region_fe_nodes = {name: (caps[name].top_nodes if name in caps else regions[name].nodes)
                       for name in regions if name in {b.region for b in case.boundary}}
    fixed = []
    for b in case.boundary:
        if not b.fix:
            continue
        nodes = region_fe_nodes[b.region]
        comps = np.asarray(FIX_COMPONENTS[b.fix])
        fixed.append((3 * nodes[:, None] + comps).ravel())
    fixed_dofs = np.unique(np.concatenate(fixed)) if fixed else np.zeros(0, dtype=np.int64)
    load_name = case.loaded_regions[0]
    load_nodes = region_fe_nodes[load_name]
    if case.bone == "femur" and regions[load_name].kind == "head_patch":
        ref = R @ np.asarray(frame.head_centre, dtype=float)
    else:
        ref = fe.points[load_nodes].mean(axis=0)
    if case.loading.direction == "wedge":
        ref = R @ hinge
        prescribed = {"rx": float(angle), "ry": 0.0, "rz": 0.0, "uz": float(case.loading.displacement_mm or 0.0)}
    elif case.bone == "vertebra":
        prescribed = {"rx": 0.0, "ry": 0.0, "rz": 0.0}
    else:
        prescribed = {}
    tie = RigidTie(load_nodes, ref, prescribed=prescribed, name=load_name)
    bc_nodes = np.unique(np.concatenate([regions[b.region].nodes for b in case.boundary]))
    an = Analysis(case, model, frame, regions, d, R, fe, caps, tie, fixed_dofs, region_fe_nodes, bc_nodes)
    try:
        an.height_mm = characteristic_length_mm(an)  # the geometry is fixed: once per analysis
    except LoadCaseError:
        an.height_mm = None  # no supported region along the load (only whole-body criteria need it)
    an.prepare_seconds = time.perf_counter() - t0
    log.info("prepared %s: %d bone + %d cap elements, %d DOFs, regions %s (%.2f s)", case.name, mesh.n_cells,
             fe.n_cells - mesh.n_cells, fe.n_dofs, {k: v.n_nodes for k, v in regions.items()}, an.prepare_seconds)
    return an


def characteristic_length_mm(an: Analysis) -> float:
    """Length (mm) that scales the nonlinear endpoint: the distance along the load between the
    centroid of the loaded region and that of the farthest supported region (bone nodes).

    Femur sideways fall: head contact to trochanter contact, about the bone's span along the
    fall direction (Ogo uses the model span along the load axis); vertebra: superior to
    inferior endplate (Ogo: body top to body bottom) [V-code].
    """
    z = an.fe_mesh.points[: an.n_bone_nodes, 2]  # load frame: the load acts along +z'
    z_load = float(z[an.regions[an.loaded_region].nodes].mean())
    fixed = [r for r in an.case.fixed_regions if r in an.regions]
    if not fixed:
        raise LoadCaseError("the nonlinear endpoint needs a supported region (a [[boundary]] with fix)")
    length = max(abs(float(z[an.regions[r].nodes].mean()) - z_load) for r in fixed)
    if not length > 0:
        raise LoadCaseError("the loaded and supported regions are at the same height along the load; set "
                            "[nonlinear] characteristic_length_mm")
    return length


def run_nonlinear(an: Analysis, res: Result, *, progress=None, **kw):
    """Nonlinear strength of a solved case (displacement control of the loaded plate).

    The loading plate keeps the constraints of the linear analysis (free in the directions the
    linear case leaves free) and is driven along the load, so the first point of the curve lies
    on the linear stiffness. The strength definition comes from the case's ``[nonlinear]``
    table: by default the largest force up to a displacement of ``endpoint_percent`` (4 %) of
    :func:`characteristic_length_mm` (Ogo's hip and spine reporting endpoint [V-code]).
    The linear solver set-up of the analysis (factorisation or AMG hierarchy) preconditions
    the nonlinear iterations: no second set-up. ``progress`` gets one line per load step.
    Keyword arguments go to :func:`femur_fe.fe.nonlinear_strength` (they override the table).
    """
    with collecting() as found:
        nl = _run_nonlinear(an, res, progress=progress, **kw)
    res.warnings = list(merged(res.warnings, found))
    return nl


def nonlinear_arguments(an: Analysis, model: Model) -> dict[str, Any]:
    """Keyword arguments of :func:`femur_fe.fe.nonlinear_strength` for this analysis: Poisson ratio,
    fixed DOFs, the loading-plate tie driven along the load (``load_tie``), the secant yield
    model of the case's failure criterion and the elastic (cap) elements."""
    crit = an.case.failure.build()
    hardening = an.case.nonlinear.hardening
    yield_model = (SecantYield.from_criterion(crit, hardening=hardening) if isinstance(crit, MaxPrincipalStrain)
                   else SecantYield.default(hardening=hardening))
    tie = RigidTie(an.tie.node_ids, an.tie.reference_point, prescribed={**an.tie.prescribed, "uz": 1.0},
                   name=an.tie.name)
    return dict(poisson=model.poisson, fixed_dofs=an.fixed_dofs, ties=[tie], load_tie=tie.name,
                load_direction=np.array([0.0, 0.0, 1.0]), yield_model=yield_model,
                elastic_elements=np.arange(an.n_bone_cells, an.fe_mesh.n_cells))


def _run_nonlinear(an: Analysis, res: Result, *, progress=None, **kw):
    case = an.case
    if case.loading.direction == "wedge":
        raise LoadCaseError("nonlinear strength is run for translational loads (not the wedge case)")
    opts = case.nonlinear
    args = nonlinear_arguments(an, res.model)
    elastic = args["elastic_elements"]
    extra = {}
    length = None
    if opts.strength == "endpoint" and "max_displacement_mm" not in kw and "endpoint_mm" not in kw:
        # characteristic_length_mm(an) is only called again to raise its error when there is no height
        length = opts.characteristic_length_mm or an.height_mm or characteristic_length_mm(an)
        extra["endpoint_mm"] = opts.endpoint_percent / 100.0 * length
    solver = an.solver_for(res.model)
    if isinstance(solver, LinearSolver) and "preconditioner" not in kw:
        extra["preconditioner"] = solver  # a voxel solver has no assembled set-up to share
    extra.update(kw)
    nl = nonlinear_strength(an.fe_mesh, an.fe_young(res.model), **args,
                            density=np.concatenate([res.model.density, np.zeros(len(elastic))]),
                            assembler=an.assembler, progress=progress, **extra)
    if length is not None:
        nl.report["characteristic_length_mm"] = float(length)
        nl.report["endpoint_percent"] = float(opts.endpoint_percent)
    if nl.endpoint_mm is not None and nl.endpoint_reached and not nl.first_yield_displacement_mm < nl.endpoint_mm:
        # the force at an endpoint before first yield is an elastic load, not a strength
        nl.endpoint_reached = False
        how = (f" ({opts.endpoint_percent:g} % of {length:.1f} mm; set [nonlinear] endpoint_percent, Ogo: 4 %)"
               if length is not None else "")
        res.warnings = list(merged(res.warnings, [warn(
            "nonlinear_endpoint_elastic", f"no element yields up to the nonlinear endpoint {nl.endpoint_mm:.3g} mm"
            f"{how}; first yield at {nl.first_yield_displacement_mm:.3g} mm, so the curve has no strength to report "
            "(strength_nonlinear_N is null)", log)]))
    res.nonlinear = nl
    res._update_summary()
    return nl
