"""Where does new bone help most? Adjoint sensitivity of strength to element density.

Model: linear elasticity K(rho) u = f with prescribed displacements g on the fixed DOFs
(free DOFs F, prescribed P), element stiffness K_e = E(rho_e) K̂_e (constant Poisson
ratio), so dK/drho_e = E'(rho_e) K̂_e.

The method in full (equations, parameters, choices, sources): ``docs/therapy.md``, section
``femur_fe.therapy.sensitivity``.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from ..errors import FemurFeError, ScenarioError
from ..fe.assembly import StiffnessAssembler
from ..fe.mesh import Mesh
from ..fe.reference import CENTROID_XI, physical_gradients
from ..fe.solvers import LinearSolver
from .remodeling import BoundaryConditions, ElementMatrices

log = logging.getLogger(__name__)


def young_and_derivative(law, rho: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(E (m,) MPa, dE/drho (m,) MPa per g/cm^3) of a law (see ``docs/therapy.md``)."""
    rho = np.asarray(rho, dtype=np.float64)
    young = law.young if hasattr(law, "young") else law
    e = np.asarray(young(rho), dtype=np.float64)
    if hasattr(law, "dyoung"):
        return e, np.asarray(law.dyoung(rho), dtype=np.float64)
    h = 1e-6 * np.maximum(np.abs(rho), 1e-3)
    de = (np.asarray(young(rho + h), dtype=np.float64) - np.asarray(young(np.maximum(rho - h, 0.0)), dtype=np.float64))
    return e, de / (rho + h - np.maximum(rho - h, 0.0))


def centroid_gradients(mesh: Mesh) -> np.ndarray:
    """Shape-function gradients dN_a/dX at the element centroids, (m, k, 3) in 1/mm."""
    grad, _ = physical_gradients(mesh.cell_type, mesh.points, mesh.cells, CENTROID_XI[mesh.cell_type])
    return grad[:, 0]


def centroid_strains(cells: np.ndarray, grad: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Small strains (m, 3, 3) at the centroids from displacements u (3n,) and gradients (m, k, 3)."""
    ue = u.reshape(-1, 3)[cells]  # (m, k, 3)
    gu = np.einsum("mai,maj->mij", ue, grad)  # du_i/dX_j
    return 0.5 * (gu + gu.transpose(0, 2, 1))


def pnorm_risk(eps: np.ndarray, include: np.ndarray, tension: float, compression: float,
               p: float) -> tuple[float, float, np.ndarray]:
    """(R_p, max RF, dR_p/deps (m, 3, 3)) of the asymmetric principal-strain risk (``docs/therapy.md``)."""
    w, v = np.linalg.eigh(eps)  # ascending
    r1 = np.maximum(w[:, 2], 0.0) / tension
    r3 = np.maximum(-w[:, 0], 0.0) / compression
    rmax = float(max(r1[include].max(), r3[include].max()))
    if rmax == 0.0:
        return 0.0, 0.0, np.zeros_like(eps)
    # scaled p-norm for overflow safety: R = rmax (sum (r/rmax)^p)^(1/p)
    ssum = float(((r1[include] / rmax) ** p).sum() + ((r3[include] / rmax) ** p).sum())
    big_r = rmax * ssum ** (1.0 / p)
    # dR/dr_k = (r_k / R)^(p-1)
    c1 = np.where(include, (r1 / big_r) ** (p - 1), 0.0) / tension
    c3 = np.where(include, (r3 / big_r) ** (p - 1), 0.0) / compression
    n1 = v[:, :, 2]
    n3 = v[:, :, 0]
    t = c1[:, None, None] * np.einsum("mi,mj->mij", n1, n1) - c3[:, None, None] * np.einsum("mi,mj->mij", n3, n3)
    return big_r, rmax, t


def adjoint_load(cells: np.ndarray, grad: np.ndarray, t: np.ndarray, n_points: int) -> np.ndarray:
    """h (3 n_points,) with h_a = sum_e T_e G_{e,a} (dR/du for strain sensitivities T)."""
    he = np.einsum("mij,maj->mai", t, grad)  # (m, k, 3)
    h = np.zeros((n_points, 3))
    np.add.at(h, cells.ravel(), he.reshape(-1, 3))
    return h.ravel()


@dataclass(frozen=True)
class StrengthProblem:
    """One load case for strength sensitivities.

    Parameters
    ----------
    mesh : Mesh
    law : density-modulus law (``young(rho)``, optional ``dyoung(rho)``) or a callable
    bc : :class:`femur_fe.therapy.remodeling.BoundaryConditions` with ONE load case
    load_nodes : node ids where the reaction force is measured (their loaded DOFs must be
        fixed, i.e. displacement control; with force control F is the applied force)
    direction : (3,) load direction (normalised here); F = direction . reaction sum
    tension, compression : strain limits eps_t, eps_c (Schileo/Bayraktar 0.0073 / 0.0104)
    p : exponent of the p-norm risk aggregate (larger = closer to the max, less smooth)
    include_elements : bool (m,) mask of elements in the risk aggregate; default: those
        not touching a fixed or load node
    poisson : Poisson ratio (default law.poisson or 0.3)
    solver_method : ``"direct"`` (default, exact adjoints) or ``"amg"``/``"auto"``
    """

    mesh: Mesh
    law: Any
    bc: BoundaryConditions
    load_nodes: np.ndarray
    direction: Sequence[float]
    tension: float = 0.0073
    compression: float = 0.0104
    p: float = 8.0
    include_elements: np.ndarray | None = None
    poisson: float | None = None
    solver_method: str = "direct"

    def __post_init__(self) -> None:
        d = np.asarray(self.direction, dtype=np.float64)
        if d.shape != (3,) or not np.linalg.norm(d) > 0:
            raise FemurFeError(f"direction must be a non-zero 3-vector, got {self.direction!r}")
        object.__setattr__(self, "direction", d / np.linalg.norm(d))
        object.__setattr__(self, "load_nodes", np.asarray(self.load_nodes, dtype=np.int64).ravel())
        if self.bc.n_cases() != 1:
            raise FemurFeError("StrengthProblem takes one load case; build one problem per load case")
        if not (self.p >= 1):
            raise FemurFeError(f"p must be >= 1 (p-norm exponent), got {self.p!r}")
        for nm in ("tension", "compression"):
            v = getattr(self, nm)
            if not (0 < v < 0.1):
                raise FemurFeError(f"{nm} must be a strain fraction in (0, 0.1), e.g. 0.0073; got {v!r}")


@dataclass
class SensitivityResult:
    """Measures and their gradients w.r.t. element density (per g/cm^3).

    Attributes
    ----------
    reaction_N : F along the direction, N
    risk_pnorm : R_p (dimensionless, at the applied load)
    risk_max : max RF over included elements (centroid strains)
    strength_N : F / R_p (smooth, conservative linear strength)
    strength_max_N : F / risk_max (the non-smooth max-based value, for reporting)
    compliance_Nmm : f^T u (force control; 0 without applied forces)
    d_reaction, d_risk, d_strength, d_compliance : (m,) gradients (per g/cm^3), or None
    d_strength_per_gram : (m,) strength gain per gram of bone added in each element, N/g
    displacement : (3n,) mm
    stiffness_N_per_mm, d_stiffness : whole-bone stiffness and its gradient (pipeline
        analyses, :class:`AnalysisSensitivity`), else None
    """

    reaction_N: float
    risk_pnorm: float
    risk_max: float
    strength_N: float
    strength_max_N: float
    compliance_Nmm: float
    displacement: np.ndarray
    d_reaction: np.ndarray | None = None
    d_risk: np.ndarray | None = None
    d_strength: np.ndarray | None = None
    d_compliance: np.ndarray | None = None
    d_strength_per_gram: np.ndarray | None = None
    stiffness_N_per_mm: float | None = None
    d_stiffness: np.ndarray | None = None

    def fields(self) -> dict[str, np.ndarray]:
        """Per-element arrays for the result file (cell data)."""
        out = {}
        for name in ("d_strength", "d_strength_per_gram", "d_reaction", "d_risk", "d_compliance", "d_stiffness"):
            v = getattr(self, name)
            if v is not None:
                out[f"sensitivity_{name[2:]}"] = v
        return out

    def summary(self) -> dict:
        return {k: float(getattr(self, k)) for k in ("reaction_N", "risk_pnorm", "risk_max", "strength_N",
                                                      "strength_max_N", "compliance_Nmm")}


class StrengthSensitivity:
    """Evaluate a :class:`StrengthProblem` and its adjoint gradients for many densities.

    The sparsity pattern, centroid gradients and unit element matrices are built once.
    ``n_threads``: assembly threads (None = all cores; 1 is fastest for tiny models).
    """

    def __init__(self, problem: StrengthProblem, *, n_threads: int | None = None) -> None:
        pr = problem
        self.problem = pr
        mesh = pr.mesh
        self.poisson = float(pr.poisson if pr.poisson is not None else getattr(pr.law, "poisson", 0.3))
        self.assembler = StiffnessAssembler(mesh, self.poisson, n_threads=n_threads)
        self.elements = ElementMatrices(mesh, self.poisson, n_threads=n_threads)
        self.grad = centroid_gradients(mesh)
        self.volumes = mesh.cell_volumes()
        self._f, self._g = pr.bc.rhs(mesh.n_dofs)
        fixed = np.zeros(mesh.n_dofs, dtype=bool)
        fixed[pr.bc.fixed_dofs] = True
        self._fixed = fixed
        if pr.include_elements is None:
            bc_nodes = np.zeros(mesh.n_points, dtype=bool)
            bc_nodes[np.unique(pr.bc.fixed_dofs // 3)] = True
            bc_nodes[pr.load_nodes] = True
            inc = ~bc_nodes[mesh.cells].any(axis=1)
        else:
            inc = np.asarray(pr.include_elements, dtype=bool)
            if inc.shape != (mesh.n_cells,):
                raise FemurFeError(f"include_elements must be a ({mesh.n_cells},) bool mask")
        if not inc.any():
            raise FemurFeError("no element left in the risk aggregate (all touch a BC node); pass include_elements")
        self.include = inc
        # direction on the loaded nodes' fixed DOFs (reaction measure)
        dvec = np.zeros(mesh.n_dofs)
        ld = (3 * pr.load_nodes[:, None] + np.arange(3)).ravel()
        dvec[ld] = np.tile(pr.direction, pr.load_nodes.size)
        self._d_fixed = np.where(fixed, dvec, 0.0)
        self._d_all = dvec
        self.displacement_control = bool(np.any(self._d_fixed != 0))

    # ------------------------------------------------------------------ pieces
    def _strains(self, u: np.ndarray) -> np.ndarray:
        return centroid_strains(self.problem.mesh.cells, self.grad, u)

    def _risk(self, eps: np.ndarray) -> tuple[float, float, np.ndarray]:
        pr = self.problem
        return pnorm_risk(eps, self.include, pr.tension, pr.compression, pr.p)

    def _adjoint_load(self, t: np.ndarray) -> np.ndarray:
        return adjoint_load(self.problem.mesh.cells, self.grad, t, self.problem.mesh.n_points)

    # ------------------------------------------------------------------ main
    def evaluate(self, density, *, gradient: bool = True) -> SensitivityResult:
        """Solve, evaluate the measures and (optionally) all gradients by the adjoint method."""
        pr = self.problem
        mesh = pr.mesh
        rho = np.asarray(density, dtype=np.float64)
        if rho.shape != (mesh.n_cells,) or not np.all(np.isfinite(rho)):
            raise FemurFeError(f"density must be ({mesh.n_cells},) finite values in g/cm^3")
        e, de = young_and_derivative(pr.law, rho)
        k = self.assembler.assemble(e)
        solver = LinearSolver(k, pr.bc.fixed_dofs, points=mesh, method=pr.solver_method, rtol=1e-12)
        sol = solver.solve(self._f[:, 0], self._g[:, 0])
        u = np.asarray(sol.u)
        reac = np.asarray(sol.reactions)
        f_ext = self._f[:, 0]
        if self.displacement_control:
            reaction = float(self._d_fixed @ reac)
        else:
            reaction = float(self._d_all @ f_ext)
        compliance = float(f_ext @ u)
        eps = self._strains(u)
        big_r, rmax, t = self._risk(eps)
        strength = reaction / big_r if big_r > 0 else np.inf
        strength_max = reaction / rmax if rmax > 0 else np.inf
        res = SensitivityResult(reaction, big_r, rmax, strength, strength_max, compliance, u)
        if not gradient:
            return res
        zero_g = np.zeros(pr.bc.fixed_dofs.size)
        # risk adjoint
        h = self._adjoint_load(t)
        lam = np.asarray(solver.solve(np.where(self._fixed, 0.0, h), zero_g).u)
        res.d_risk = -de * self.elements.bilinear(lam, u)
        # reaction adjoint
        if self.displacement_control:
            a = np.asarray(solver.solve(np.zeros(mesh.n_dofs), self._d_fixed[pr.bc.fixed_dofs]).u)
            res.d_reaction = de * self.elements.bilinear(a, u)
        else:
            res.d_reaction = np.zeros(mesh.n_cells)
        res.d_compliance = -de * self.elements.bilinear(u, u)
        if big_r > 0:
            res.d_strength = res.d_reaction / big_r - reaction * res.d_risk / big_r ** 2
        else:
            res.d_strength = np.zeros(mesh.n_cells)
        res.d_strength_per_gram = res.d_strength * 1000.0 / self.volumes
        return res


# ============================================================================ pipeline analyses
class AnalysisSensitivity:
    """Adjoint strength and stiffness sensitivities of a prepared pipeline analysis.

    Works on :func:`femur_fe.analysis.prepare.prepare`'s ``Analysis`` (bone + PMMA caps, rigid
    loading plate tied to the loaded region, supports), with the case's own load
    direction: the plate is loaded by a unit force (the model is linear, so the strength
    F / R_p does not depend on the magnitude, whatever the case's loading mode). The
    adjoint solves reuse the analysis' solver (ties included: the adjoint of the tied system
    is the tied system). Only bone densities vary; caps keep their modulus.

    Measures: ``strength_N`` = 1 N / R_p (p-norm of the Schileo risk over bone elements not
    touching a boundary-condition node, as the pipeline's criteria exclude BC artefacts),
    ``stiffness_N_per_mm`` = 1 / C with the compliance C = plate displacement per N.
    E'(rho) is the derivative of ``model.with_density(rho).young`` (law, floor and the CT
    heterogeneity factor included), by central differences (``docs/therapy.md``).

    Same interface as :class:`StrengthSensitivity` (``evaluate``, ``volumes``), so
    :func:`optimal_placement` works on it.
    """

    def __init__(self, analysis, model=None, *, p: float = 8.0, tension: float = 0.0073,
                 compression: float = 0.0104, include_elements: np.ndarray | None = None) -> None:
        an = analysis
        self.analysis = an
        self.model = model or an.model
        nb = an.n_bone_cells
        self.bone = Mesh(an.fe_mesh.points, an.fe_mesh.cells[:nb], an.fe_mesh.cell_type)
        self.elements = ElementMatrices(self.bone, self.model.poisson)
        self.grad = centroid_gradients(self.bone)
        self.volumes = self.model.mesh.cell_volumes()
        self.p, self.tension, self.compression = float(p), float(tension), float(compression)
        if include_elements is None:
            bcn = np.zeros(an.n_bone_nodes, dtype=bool)
            bcn[np.asarray(an.bc_bone_nodes, dtype=np.int64)] = True
            inc = ~bcn[self.model.mesh.cells].any(axis=1)
        else:
            inc = np.asarray(include_elements, dtype=bool)
        if inc.shape != (nb,) or not inc.any():
            raise FemurFeError(f"include_elements must be a ({nb},) bool mask selecting at least one bone element")
        self.include = inc
        self._assembler = None

    def _young(self, rho: np.ndarray) -> np.ndarray:
        return self.model.with_density(np.maximum(rho, 0.0)).young

    def _solver(self, m):
        """A fresh solver for model ``m`` (the analysis' own solver settings and plate tie).

        Not ``Analysis.solver_for``: its cache is keyed on ``id(model.young)``, and a freed
        array's id can be reused by the next density's array, which would return the solver
        of an earlier density.
        """
        an = self.analysis
        if self._assembler is None:
            self._assembler = StiffnessAssembler(an.fe_mesh, m.poisson)
        k = self._assembler.assemble(an.fe_young(m))
        s = an.case.solver
        return LinearSolver(k, an.fixed_dofs, points=an.fe_mesh, method=s.method, rtol=s.rtol, maxiter=s.maxiter,
                            constraints=[an.tie])

    def evaluate(self, density, *, gradient: bool = True) -> SensitivityResult:
        an = self.analysis
        rho = np.asarray(density, dtype=np.float64)
        m = self.model.with_density(rho)
        solver = self._solver(m)
        n = solver.n_dofs
        d_prime = an.rotation @ an.direction
        load = {an.tie.name: np.concatenate([d_prime, np.zeros(3)])}
        sol = solver.solve(np.zeros(n), tie_loads=load)
        u = np.asarray(sol.u)
        compliance = float(sol.ties[an.tie.name].displacement @ d_prime)  # mm per N
        eps = centroid_strains(self.bone.cells, self.grad, u)  # bone cells on all FE points
        big_r, rmax, t = pnorm_risk(eps, self.include, self.tension, self.compression, self.p)
        res = SensitivityResult(1.0, big_r, rmax, 1.0 / big_r if big_r > 0 else np.inf,
                                1.0 / rmax if rmax > 0 else np.inf, compliance, u,
                                stiffness_N_per_mm=1.0 / compliance if compliance > 0 else None)
        if not gradient:
            return res
        _, de = young_and_derivative(self._young, rho)
        h = adjoint_load(self.bone.cells, self.grad, t, self.bone.n_points)
        lam = np.asarray(solver.solve(h).u)
        res.d_risk = -de * self.elements.bilinear(lam, u)
        res.d_reaction = np.zeros(rho.size)
        res.d_compliance = -de * self.elements.bilinear(u, u)
        res.d_strength = -res.d_risk / big_r ** 2 if big_r > 0 else np.zeros(rho.size)
        res.d_stiffness = -res.d_compliance / compliance ** 2
        res.d_strength_per_gram = res.d_strength * 1000.0 / self.volumes
        return res


# ============================================================================ placement
@dataclass
class PlacementResult:
    """Outcome of :func:`optimal_placement`.

    Attributes
    ----------
    density : (m,) final density, g/cm^3
    base_density : (m,) density before placement, g/cm^3
    added_mass_g : mass actually added, g
    strength_N : (rounds + 1,) smooth strength after each round (index 0 = baseline)
    strength_max_N : (rounds + 1,) max-based strength after each round
    """

    density: np.ndarray
    base_density: np.ndarray
    added_mass_g: float
    strength_N: np.ndarray
    strength_max_N: np.ndarray

    @property
    def delta(self) -> np.ndarray:
        """(m,) density added, g/cm^3."""
        return self.density - self.base_density


def optimal_placement(sens: StrengthSensitivity, density, added_mass_g: float, *, upper: float,
                      n_rounds: int = 8, max_step_g_cm3: float = 0.1) -> PlacementResult:
    """Place a fixed bone mass where it raises the (smooth) linear strength most.

    Greedy gradient allocation with re-linearisation: in each of ``n_rounds`` rounds,
    ``added_mass_g / n_rounds`` grams go to the elements with the largest strength gain
    per gram (``d_strength_per_gram`` > 0), each taking at most ``max_step_g_cm3`` per
    round (a trust region: the gradient is only locally valid) and never exceeding
    ``upper`` (g/cm^3, e.g. :data:`femur_fe.therapy.scenarios.DENSITY_UPPER_BOUND`; elements already
    above it get nothing, as in :meth:`femur_fe.therapy.scenarios.Scenario.apply`). Gradients are
    recomputed after every round.

    Raises
    ------
    ScenarioError : if the mass cannot be placed (no element with positive gain and room).
    """
    vol = sens.volumes
    rho0 = np.asarray(density, dtype=np.float64).copy()
    if not (added_mass_g > 0):
        raise ScenarioError(f"added_mass_g must be > 0, got {added_mass_g!r}")
    if not (upper > 0):
        raise ScenarioError(f"upper must be a density bound > 0 g/cm^3, got {upper!r}")
    if n_rounds < 1 or not (max_step_g_cm3 > 0):
        raise ScenarioError("n_rounds must be >= 1 and max_step_g_cm3 > 0")
    rho = rho0.copy()
    strengths, smax = [], []
    per_round = added_mass_g / n_rounds
    for rnd in range(n_rounds):
        res = sens.evaluate(rho)
        strengths.append(res.strength_N)
        smax.append(res.strength_max_N)
        eff = res.d_strength_per_gram
        room = np.clip(upper - rho, 0.0, max_step_g_cm3)  # inputs above the bound get no more
        cand = np.flatnonzero((eff > 0) & (room > 1e-12))
        if cand.size == 0:
            raise ScenarioError(f"optimal_placement: round {rnd + 1}: no element with positive strength gain and room "
                                "below the density bound; lower the added mass or raise max_step_g_cm3")
        order = cand[np.argsort(-eff[cand], kind="stable")]
        cap_mass = room[order] * vol[order] / 1000.0  # g each element can take this round
        cum = np.cumsum(cap_mass)
        n_full = int(np.searchsorted(cum, per_round))
        if n_full >= order.size:
            raise ScenarioError(f"optimal_placement: round {rnd + 1} can place only {cum[-1]:.4g} of {per_round:.4g} g "
                                "in elements with positive gain; raise max_step_g_cm3 or n_rounds")
        full = order[:n_full]
        rho[full] += room[full]
        left = per_round - (cum[n_full - 1] if n_full else 0.0)
        last = order[n_full]
        rho[last] += left * 1000.0 / vol[last]
        log.debug("placement round %d: %d elements filled, strength %.6g N", rnd + 1, n_full + 1, res.strength_N)
    final = sens.evaluate(rho, gradient=False)
    strengths.append(final.strength_N)
    smax.append(final.strength_max_N)
    return PlacementResult(rho, rho0, float((rho - rho0) @ vol) / 1000.0, np.array(strengths), np.array(smax))


__all__ = ["StrengthProblem", "StrengthSensitivity", "AnalysisSensitivity", "SensitivityResult", "optimal_placement",
           "PlacementResult", "young_and_derivative", "centroid_gradients", "centroid_strains", "pnorm_risk",
           "adjoint_load"]
