"""Nonlinear (material) strength: incremental, displacement-controlled secant analysis.

Material model (documented choice: a *secant-modulus, total-strain* model)
--------------------------------------------------------------------------
At every quadrature point the equivalent strain ratio is the asymmetric principal-strain
measure of the linear criterion (Schileo)::

    r = max(eps1+ / eps_t, eps3- / eps_c)        (eps1+ = max(eps1, 0), eps3- = max(-eps3, 0))

With ``r <= 1`` the point is elastic (modulus E). Beyond, the secant modulus is::

    E_s = E (1 + h (r - 1)) / r        (h = post-yield modulus ratio, 0 = perfectly plastic)

so the stress along the governing principal direction stays at ``E eps_y`` (perfectly
plastic plateau for ``h = 0``) while the Poisson ratio is unchanged. It is a monotonic
loading model (no unloading, no softening), cheap because only the element moduli change
and :class:`femur_fe.fe.StiffnessAssembler` re-assembles them quickly. ``E_s`` is floored at
``min_secant_ratio * E`` (default 1e-3: only reached at strains 1000x the yield strain) to
keep the matrix regular. Yield strains can be constants, per-element arrays, or derived
from a density-dependent yield stress (``SecantYield.from_yield_stress``: ``eps_c =
sigma_y(rho) / E``).

Solution method
---------------
Displacement control: all prescribed values (supports, loaded DOFs, rigid-tie reference
DOFs) are scaled by a load factor ``lam``. Each step starts from the proportionally scaled
previous solution and iterates secant (Kacanov) updates: moduli from the current strains,
then a correction from the secant system ``K_s du = -R`` solved (inexactly) by conjugate
gradients **preconditioned by the elastic solver** (the factorisation / AMG hierarchy of
the initial stiffness, set up once). Convergence is measured in the energy norm of the
residual, ``sqrt(R . K0^-1 R / (u . R_int)) < rtol``. A step that does not converge is cut
in half (up to ``max_cutbacks`` times); if it still fails the analysis stops, the result
is marked ``converged=False`` and only converged steps are returned.

Two strength definitions:

* ``peak`` (default here): the peak of the force-displacement curve. The peak counts as
  *reached* when the force drops, or when the incremental stiffness of a step falls below
  ``plateau_ratio`` times the elastic stiffness (the plateau of the perfectly plastic
  model). Without either, ``peak_reached`` is False and :func:`femur_fe.analysis.summary_fields`
  reports no nonlinear strength.
* ``endpoint`` (``endpoint_mm``): the largest force reached up to a prescribed displacement
  endpoint, as Ogo reports its nonlinear FAIM results (endpoint 4 % of a characteristic
  length for the hip and the spine [V-code]). A perfectly plastic model has no force drop,
  so its "peak" depends on how far the plateau is followed; the endpoint fixes that choice
  to a stated, geometry-scaled deformation. The load-case presets use it (``[nonlinear]``).
"""
from __future__ import annotations

import logging
import math
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import scipy.sparse as sp

from ..errors import FemurFeError, LoadCaseError
from .assembly import StiffnessAssembler
from .constraints import TIE_DOF_NAMES, RigidTie
from .elements import quadrature
from .fields import check_strain_limit
from .mesh import Mesh, element_mask
from .recovery import strain as strain_at
from .solvers import LinearSolver, _fixed_mask

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- yield model
@dataclass(frozen=True)
class SecantYield:
    """Yield strains of the secant model (fractions; scalars or (m,) per element).

    Attributes
    ----------
    tension, compression : yield strains (positive fractions); defaults 0.0073 / 0.0104
        (Bayraktar 2004 tissue values as used by Schileo 2014 [V])
    hardening : post-yield modulus ratio h in [0, 1) (0 = perfectly plastic)
    min_secant_ratio : numerical floor of E_s / E
    source : free text recorded in the report
    """

    tension: Any = 0.0073
    compression: Any = 0.0104
    hardening: float = 0.0
    min_secant_ratio: float = 1e-3
    source: str = "constant"

    def __post_init__(self) -> None:
        for name in ("tension", "compression"):
            v = np.asarray(getattr(self, name), dtype=np.float64)
            if v.ndim == 0:
                check_strain_limit(name, float(v))
            else:
                if v.ndim != 1 or not np.isfinite(v).all() or (v <= 0).any():
                    raise LoadCaseError(f"{name} must be a positive yield strain or an (m,) array of them")
                if v.max() >= 0.1:
                    raise LoadCaseError(f"{name} reaches {v.max():g}; yield strains are fractions (0.0073, "
                                        "not 0.73 %)")
        if not (0.0 <= float(self.hardening) < 1.0):
            raise LoadCaseError(f"hardening must be in [0, 1) (post-yield modulus / E), got {self.hardening!r}")
        if not (0.0 < float(self.min_secant_ratio) < 1.0):
            raise LoadCaseError(f"min_secant_ratio must be in (0, 1), got {self.min_secant_ratio!r}")

    @classmethod
    def default(cls, hardening: float = 0.0) -> "SecantYield":
        """The default yield strains 0.73 % / 1.04 % (Bayraktar 2004 as used by Schileo 2014)."""
        return cls(hardening=hardening, source="default: Bayraktar 2004 tissue yield strains as in Schileo 2014")

    @classmethod
    def from_criterion(cls, crit: Any, hardening: float = 0.0) -> "SecantYield":
        """Use the limits (``tension``, ``compression``) of a principal-strain criterion as yield strains."""
        return cls(crit.tension, crit.compression, hardening, source=f"criterion {crit.name}")

    @classmethod
    def from_yield_stress(cls, law: Any, density, young, tension_to_compression: float,
                          hardening: float = 0.0) -> "SecantYield":
        """Per-element yield strains from a density-dependent compressive yield stress ``law``
        (e.g. :class:`femur_fe.analysis.failure.DensityYieldStress`: ``yield_stress(rho)``).

        ``eps_c = sigma_y(rho) / E`` and ``eps_t = tension_to_compression * eps_c``.
        Elements whose yield stress is <= 0 (density below the law's intercept) get the
        smallest positive yield strain of the other elements (they are marrow-like and carry
        almost no load); their number is logged.
        """
        rho = np.asarray(density, dtype=np.float64)
        e = np.asarray(young, dtype=np.float64)
        if rho.shape != e.shape or rho.ndim != 1:
            raise FemurFeError("density and young must both have shape (m,)")
        ratio = float(tension_to_compression)
        if not (0 < ratio <= 2):
            raise LoadCaseError(f"tension_to_compression must be in (0, 2], got {tension_to_compression!r}")
        eps_c = law.yield_stress(rho) / e
        bad = ~(eps_c > 0)
        if bad.all():
            raise LoadCaseError("the yield-stress law gives no positive yield stress for any element "
                                "(check the density unit: g/cm^3)")
        if bad.any():
            log.warning("%d elements have a non-positive yield stress (density below %.4g g/cm^3); they get "
                        "the smallest positive yield strain", int(bad.sum()), -law.a_mpa / law.b_mpa)
            eps_c = np.where(bad, eps_c[~bad].min(), eps_c)
        return cls(ratio * eps_c, eps_c, hardening,
                   source=f"{law.name} {law.parameters()} / E, tension = {ratio:g} x compression")

    def per_element(self, m: int) -> tuple[np.ndarray, np.ndarray]:
        out = []
        for v in (self.tension, self.compression):
            a = np.asarray(v, dtype=np.float64)
            if a.ndim == 0:
                a = np.full(m, float(a))
            elif a.shape != (m,):
                raise FemurFeError(f"yield strain arrays must have shape ({m},), got {a.shape}")
            out.append(a)
        return out[0], out[1]

    def to_dict(self) -> dict:
        def summ(v):
            a = np.asarray(v, dtype=np.float64)
            return float(a) if a.ndim == 0 else {"min": float(a.min()), "max": float(a.max()),
                                                 "mean": float(a.mean())}

        return {"model": "secant total-strain, asymmetric principal-strain measure",
                "tension": summ(self.tension), "compression": summ(self.compression),
                "hardening": float(self.hardening), "min_secant_ratio": float(self.min_secant_ratio),
                "source": self.source}


def secant_modulus(strain_q: np.ndarray, young_q: np.ndarray, eps_t: np.ndarray, eps_c: np.ndarray,
                   hardening: float = 0.0, min_ratio: float = 1e-3) -> tuple[np.ndarray, np.ndarray]:
    """Secant moduli and strain ratios at points.

    Parameters
    ----------
    strain_q : (..., 3, 3) strains; young_q, eps_t, eps_c : (...) broadcastable

    Returns
    -------
    (E_s (...), r (...)) with ``r`` the equivalent strain ratio (> 1 = yielded).
    """
    w = np.linalg.eigvalsh(strain_q)  # ascending
    r = np.maximum(np.clip(w[..., 2], 0, None) / eps_t, np.clip(-w[..., 0], 0, None) / eps_c)
    ratio = np.ones_like(r)
    y = r > 1.0
    ratio[y] = (1.0 + hardening * (r[y] - 1.0)) / r[y]
    np.maximum(ratio, min_ratio, out=ratio)
    return young_q * ratio, r


# --------------------------------------------------------------------------- results
@dataclass
class NonlinearStep:
    """One converged (or the last failed) load step."""

    step: int
    load_factor: float
    displacement_mm: float
    force_N: float
    iterations: int
    preconditioner_solves: int
    residual: float
    n_yielded_points: int
    converged: bool
    seconds: float
    cutbacks: int = 0
    yielded_volume_mm3: float = 0.0


@dataclass
class NonlinearResult:
    """Result of :func:`nonlinear_strength`.

    ``curve_displacement_mm`` / ``curve_force_N`` start at (0, 0) and hold converged steps
    only. ``peak_force_N`` is the largest force on the curve; trust it as a strength only when
    ``peak_reached`` (and ``converged``) are True.
    """

    curve_displacement_mm: np.ndarray
    curve_force_N: np.ndarray
    peak_force_N: float
    peak_displacement_mm: float
    converged: bool
    peak_reached: bool
    steps: list[NonlinearStep]
    report: dict
    first_yield_force_N: float
    first_yield_displacement_mm: float
    elastic_stiffness_N_per_mm: float
    displacement: np.ndarray = field(repr=False)
    young_secant: np.ndarray = field(repr=False)
    strength_definition: str = "peak"
    endpoint_mm: float | None = None
    endpoint_reached: bool = False

    @property
    def strength_N(self) -> float | None:
        """The strength: the largest force on the curve once a peak was reached or, with an
        endpoint definition, once the endpoint displacement was reached; else None."""
        return float(self.peak_force_N) if (self.peak_reached or self.endpoint_reached) else None

    def to_dict(self) -> dict:
        """JSON-ready summary (curve included, no field arrays)."""
        return {
            "curve_displacement_mm": [float(v) for v in self.curve_displacement_mm],
            "curve_force_N": [float(v) for v in self.curve_force_N],
            "peak_force_N": float(self.peak_force_N), "peak_displacement_mm": float(self.peak_displacement_mm),
            "converged": bool(self.converged), "peak_reached": bool(self.peak_reached),
            "first_yield_force_N": float(self.first_yield_force_N),
            "first_yield_displacement_mm": float(self.first_yield_displacement_mm),
            "elastic_stiffness_N_per_mm": float(self.elastic_stiffness_N_per_mm),
            "strength_definition": self.strength_definition,
            "endpoint_mm": None if self.endpoint_mm is None else float(self.endpoint_mm),
            "endpoint_reached": bool(self.endpoint_reached),
            "steps": [asdict(s) for s in self.steps], "report": self.report,
        }


# --------------------------------------------------------------------------- helpers
class _DropInfo(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno > logging.INFO


@contextmanager
def _quiet(logger_name: str):
    """Drop INFO records of one logger (the per-solve reports of the preconditioner)."""
    lg = logging.getLogger(logger_name)
    f = _DropInfo()
    lg.addFilter(f)
    try:
        yield
    finally:
        lg.removeFilter(f)


def _unit(v, name: str) -> np.ndarray:
    d = np.asarray(v, dtype=np.float64).ravel()
    if d.shape != (3,) or not np.isfinite(d).all() or np.linalg.norm(d) == 0:
        raise LoadCaseError(f"{name} must be a non-zero 3-vector, got {v!r}")
    return d / np.linalg.norm(d)


def _node_ids(v, n: int, name: str) -> np.ndarray:
    ids = np.unique(np.asarray(v, dtype=np.int64).ravel())
    if ids.size == 0:
        raise LoadCaseError(f"{name} is empty")
    if ids.min() < 0 or ids.max() >= n:
        raise LoadCaseError(f"{name} must be node ids in [0, {n})")
    return ids


# --------------------------------------------------------------------------- main entry
def nonlinear_strength(
    mesh: Mesh,
    young,
    *,
    poisson: float = 0.3,
    fixed_dofs=None,
    fixed_values=None,
    ties: Sequence | None = None,
    load_nodes=None,
    load_direction=None,
    load_tie: str | None = None,
    max_displacement_mm: float | None = None,
    endpoint_mm: float | None = None,
    yield_model: Any = None,
    density=None,
    elastic_elements=None,
    n_steps: int = 12,
    auto_displacement_factor: float = 25.0,
    rtol: float = 1e-3,
    max_iterations: int = 40,
    max_inner: int = 25,
    inner_rtol: float = 0.3,
    max_cutbacks: int = 3,
    plateau_ratio: float = 0.02,
    stop_at_peak: bool = True,
    method: str = "auto",
    assembler=None,
    time_limit_s: float | None = None,
    progress: Callable[[str], None] | None = None,
) -> NonlinearResult:
    """Incremental displacement-controlled nonlinear strength (secant model, see module doc).

    Parameters
    ----------
    mesh : Mesh (tet4, tet10 or hex8), mm
    young : (m,) elastic Young's moduli, MPa (caps included)
    poisson : Poisson ratio
    fixed_dofs : DOF ids (3*node + component) or (3n,) bool mask of prescribed DOFs
        (supports; plus, in the explicit mode, loaded DOFs)
    fixed_values : prescribed values at ``lam = 1`` (full (3n,) vector or one per fixed
        DOF in the order given), mm; default 0. All prescribed values scale with ``lam``.
    ties : :class:`femur_fe.fe.RigidTie` list (e.g. PMMA-cap-like load spreading, distal
        fixation); prescribed reference values also scale with ``lam``; tie forces and
        moments must be zero (displacement control)
    load_nodes : node ids whose reaction force is the load (the loaded region). Without
        ``load_tie`` and with ``max_displacement_mm``/``auto``, all three DOFs of these
        nodes are prescribed to ``delta * load_direction`` (a rigid translation)
    load_direction : (3,) direction of the imposed displacement; the force is the
        reaction of ``load_nodes`` projected on it (N, positive in compression of the
        bone by the load)
    load_tie : name of a tie in ``ties`` whose translations ux, uy, uz (must be
        prescribed) are set to ``delta * load_direction``; ``load_nodes`` defaults to its nodes
    max_displacement_mm : final displacement delta (mm). None: ``auto_displacement_factor``
        times the displacement at first yield, extended by up to ``n_steps`` more steps of
        the same size when the peak has not been reached by then. In the explicit mode (neither rule above:
        loaded DOFs are in ``fixed_dofs``/``fixed_values``) the given BCs are the final
        state and this must be None.
    endpoint_mm : strength at a displacement endpoint (mm; load_tie/load_nodes modes, instead of
        ``max_displacement_mm``): the analysis runs to this displacement and the strength is the
        largest force reached up to it (an earlier force drop ends the analysis at that peak).
        This is how Ogo reports nonlinear FAIM strength (4 % of a characteristic length, see
        :func:`femur_fe.analysis.prepare.run_nonlinear`). None: strength = peak/plateau of the curve.
    yield_model : :class:`SecantYield`, a :class:`femur_fe.analysis.MaxPrincipalStrain` (its limits),
        a dict of SecantYield fields, or None (Schileo/Bayraktar 0.73 % / 1.04 %)
    density : (m,) g/cm^3; only recorded (density-dependent yield is built with
        ``SecantYield.from_yield_stress``)
    elastic_elements : bool mask or ids of elements that never yield (e.g. PMMA caps)
    n_steps : load steps after first yield
    rtol : energy-norm convergence tolerance of each step
    max_iterations, max_inner, inner_rtol : secant iterations per step; CG iterations per
        secant iteration and their relative (energy-norm) tolerance
    max_cutbacks : step halvings before giving up
    plateau_ratio : incremental / elastic stiffness below which the peak (plateau) counts as reached
        (peak definition only; with ``endpoint_mm`` only a force drop ends the analysis early)
    stop_at_peak : stop the analysis once the peak is reached
    method : elastic solver method for the preconditioner (see :class:`femur_fe.fe.LinearSolver`)
    assembler : an existing :class:`femur_fe.fe.StiffnessAssembler` of ``mesh`` with ``poisson``
    time_limit_s : stop (not converged) when the wall time exceeds this
    progress : called with one line per converged load step (force, displacement, yielded
        volume, secant iterations) and one after the elastic set-up

    Returns
    -------
    NonlinearResult
    """
    t_start = time.perf_counter()
    if not isinstance(mesh, Mesh):
        raise FemurFeError(f"mesh must be a femur_fe.Mesh, got {type(mesh).__name__}")
    n, m, ndof = mesh.n_points, mesh.n_cells, mesh.n_dofs
    e0 = np.asarray(young, dtype=np.float64)
    if e0.shape != (m,) or not np.isfinite(e0).all() or (e0 <= 0).any():
        raise FemurFeError(f"young must be (m,) = ({m},) finite positive moduli in MPa, got shape {e0.shape}")
    if int(n_steps) < 1 or int(max_iterations) < 1 or int(max_inner) < 1:
        raise FemurFeError("n_steps, max_iterations and max_inner must be >= 1")
    if not (0 < rtol < 1 and 0 < inner_rtol < 1):
        raise FemurFeError("rtol and inner_rtol must be in (0, 1)")

    # ---------------- yield model
    if yield_model is None:
        ym = SecantYield.default()
    elif isinstance(yield_model, SecantYield):
        ym = yield_model
    elif hasattr(yield_model, "tension") and hasattr(yield_model, "compression"):  # a principal-strain criterion
        ym = SecantYield.from_criterion(yield_model)
    elif isinstance(yield_model, dict):
        ym = SecantYield(**yield_model)
    else:
        raise LoadCaseError(f"yield_model must be a SecantYield, a MaxPrincipalStrain or a dict, got "
                            f"{type(yield_model).__name__}")
    eps_t, eps_c = ym.per_element(m)
    elastic = (np.zeros(m, dtype=bool) if elastic_elements is None
               else element_mask(elastic_elements, m, "elastic_elements"))
    if density is not None and np.asarray(density).shape != (m,):
        raise FemurFeError(f"density must have shape ({m},) g/cm^3")

    # ---------------- boundary conditions at lam = 1
    ties = list(ties or [])
    names = [t.name or f"tie{k}" for k, t in enumerate(ties)]
    for t, nm in zip(ties, names):
        if not isinstance(t, RigidTie):
            raise LoadCaseError(f"ties must be RigidTie objects, got {type(t).__name__}")
        if np.any(t.load != 0):
            raise LoadCaseError(f"RigidTie {nm!r} has a force/moment; nonlinear_strength is displacement "
                                "controlled: prescribe the tie's motion instead")
    mask, given = _fixed_mask(fixed_dofs, ndof)
    g1 = np.zeros(ndof)
    if fixed_values is not None:
        fv = np.asarray(fixed_values, dtype=np.float64).ravel()
        if fv.shape == (ndof,):
            g1[mask] = fv[mask]
        elif fv.shape == (len(given),):
            g1[given] = fv
        else:
            raise FemurFeError(f"fixed_values must have length {ndof} or {len(given)}")
    tie_vals1 = [t.prescribed_values.copy() for t in ties]
    direction = None if load_direction is None else _unit(load_direction, "load_direction")

    if load_tie is not None:
        if load_tie not in names:
            raise LoadCaseError(f"load_tie {load_tie!r} is not among the ties {names}")
        k = names.index(load_tie)
        if direction is None:
            raise LoadCaseError("load_tie needs load_direction")
        tie_pm = ties[k].prescribed_mask[:3]
        if np.abs(direction[~tie_pm]).max(initial=0.0) > 1e-12:
            raise LoadCaseError(f"load_tie {load_tie!r} must prescribe every translation the load direction has a "
                                f"component along (prescribed: {list(ties[k].prescribed)}, "
                                f"direction {direction.tolist()}); prescribe ux, uy and uz, or load along an axis "
                                "whose translation is prescribed")
        mode = "tie"
        if load_nodes is None:
            load_nodes = ties[k].node_ids
    elif max_displacement_mm is not None or (load_nodes is not None and direction is not None
                                             and not np.any(g1 != 0)
                                             and not any(np.any(v != 0) for v in tie_vals1)):
        mode = "nodes"
    else:
        mode = "explicit"
    if load_nodes is None or direction is None:
        raise LoadCaseError("nonlinear_strength needs load_nodes (the loaded region) and load_direction")
    load_nodes = _node_ids(load_nodes, n, "load_nodes")
    if mode in ("nodes", "tie") and (np.any(g1 != 0) or any(
            np.any(v != 0) for j, v in enumerate(tie_vals1) if names[j] != load_tie)):
        raise LoadCaseError("with load_nodes/load_tie driven loading the other prescribed values must be 0 "
                            "(supports); give the full final boundary conditions in fixed_values/ties and "
                            "max_displacement_mm=None instead")
    if mode == "nodes":
        ldofs = (3 * load_nodes[:, None] + np.arange(3)).ravel()
        if mask[ldofs].any():
            raise LoadCaseError("load_nodes already have prescribed DOFs in fixed_dofs; give the supports only "
                                "in fixed_dofs, or prescribe the loaded DOFs there and leave "
                                "max_displacement_mm=None")
        given = np.r_[given, ldofs]
        mask[ldofs] = True
        g1[ldofs] = np.tile(direction, len(load_nodes))  # per mm of delta (scaled below)
    elif mode == "tie":
        # unprescribed translations stay free (only prescribed entries are used)
        tie_vals1[names.index(load_tie)][:3] = direction
    elif max_displacement_mm is not None:
        raise LoadCaseError("max_displacement_mm is only used with load_tie or load_nodes-driven loading")
    if endpoint_mm is not None:
        if mode == "explicit":
            raise LoadCaseError("endpoint_mm is only used with load_tie or load_nodes-driven loading")
        if max_displacement_mm is not None:
            raise LoadCaseError("give either endpoint_mm (strength at a displacement endpoint) or "
                                "max_displacement_mm (peak definition), not both")
        if not (isinstance(endpoint_mm, (int, float)) and math.isfinite(endpoint_mm) and endpoint_mm > 0):
            raise LoadCaseError(f"endpoint_mm must be a displacement > 0 mm, got {endpoint_mm!r}")

    # ---------------- elastic set-up (pattern, K0, preconditioner)
    t0 = time.perf_counter()
    asm = assembler if assembler is not None else StiffnessAssembler(mesh, poisson)

    qw = np.asarray(quadrature(mesh.cell_type).weights, dtype=np.float64)
    q = len(qw)
    e0q = np.repeat(e0[:, None], q, axis=1)
    indptr, indices = asm.csr_structure()
    data = asm.assemble_data(e0q)
    k0 = sp.csr_matrix((data.copy(), indices, indptr), shape=(ndof, ndof))
    solver = LinearSolver(k0, given, points=mesh, method=method, constraints=ties)
    setup_s = time.perf_counter() - t0
    zero_f = np.zeros(ndof)
    zero_g = np.zeros(ndof)
    zero_ties = {nm: {TIE_DOF_NAMES[j]: 0.0 for j in np.flatnonzero(t.prescribed_mask)}
                 for t, nm in zip(ties, names)}

    def tie_values(lam: float) -> dict:
        return {nm: {TIE_DOF_NAMES[j]: float(lam * v[j]) for j in np.flatnonzero(t.prescribed_mask)}
                for t, nm, v in zip(ties, names, tie_vals1)}

    n_prec = [0]

    def precond(r: np.ndarray) -> np.ndarray:
        n_prec[0] += 1
        return solver.solve(r, zero_g, tie_values=zero_ties).u

    def force_of(reac: np.ndarray) -> float:
        return float(reac.reshape(-1, 3)[load_nodes].sum(axis=0) @ direction)

    def disp_of(u: np.ndarray, lam: float) -> float:
        if mode in ("nodes", "tie"):
            return lam  # lam is delta in mm in these modes
        return float(u.reshape(-1, 3)[load_nodes].mean(axis=0) @ direction)

    with _quiet("femur_fe.fe.solvers"):
        sol1 = solver.solve(zero_f, g1, tie_values=tie_values(1.0))
    u1 = sol1.u
    f1 = force_of(k0 @ u1)
    d1 = disp_of(u1, 1.0)
    if not f1 > 0:
        raise LoadCaseError(f"the elastic reaction along load_direction is {f1:.4g} N (not positive): the "
                            "load direction is opposite to the imposed displacement; flip load_direction")
    eps1 = strain_at(mesh, u1, "quadrature")
    _, r1 = secant_modulus(eps1, e0q, eps_t[:, None], eps_c[:, None])
    r1 = np.where(elastic[:, None], 0.0, r1)
    rmax = float(r1.max())
    if not rmax > 0:
        raise FemurFeError("the elastic solution has no strain in yielding elements; check the loads")
    lam_fy = 1.0 / rmax
    stiff = f1 / d1 if d1 != 0 else float("nan")
    if mode == "explicit":
        lam_max = 1.0
    elif endpoint_mm is not None:
        lam_max = float(endpoint_mm)
    elif max_displacement_mm is not None:
        lam_max = float(max_displacement_mm)
        if not lam_max > 0:
            raise LoadCaseError(f"max_displacement_mm must be > 0, got {max_displacement_mm!r}")
    else:
        lam_max = float(auto_displacement_factor) * lam_fy
    log.info("nonlinear: elastic stiffness %.4g N/mm, first yield at %.4g N (lambda %.4g), final lambda %.4g, "
             "yield %s, set-up %.2f s", stiff, f1 * lam_fy, lam_fy, lam_max, ym.to_dict(), setup_s)
    # volume of each quadrature point (det J is constant on tet4, straight-edged tet10 and
    # parallelepiped hex8 elements, so the element volume splits by the weights)
    vol_q = mesh.cell_volumes()[:, None] * (qw / qw.sum())[None, :]
    bone_volume = float(vol_q[~elastic].sum())
    if progress is not None:
        progress(f"nonlinear: elastic set-up {setup_s:.1f} s, first yield at {f1 * lam_fy:.0f} N "
                 f"({d1 * lam_fy:.3g} mm), "
                 + (f"steps to {lam_max:.3g} mm" if mode != "explicit" else "steps to the full load"))

    # ---------------- incremental loop
    hq = float(ym.hardening)
    et_q, ec_q = eps_t[:, None], eps_c[:, None]
    el_q = elastic[:, None]

    def secant(u):
        eps = strain_at(mesh, u, "quadrature")
        es, r = secant_modulus(eps, e0q, et_q, ec_q, hq, ym.min_secant_ratio)
        es = np.where(el_q, e0q, es)
        r = np.where(el_q, 0.0, r)
        return es, r

    buf = np.empty_like(data)

    def kmat(es):
        asm.assemble_data(es, out=buf)
        return sp.csr_matrix((buf, indices, indptr), shape=(ndof, ndof), copy=False)

    def solve_step(u_start: np.ndarray):
        """Secant iterations at fixed BCs; returns (u, converged, its, residual, es, r, reac)."""
        u = u_start.copy()
        inner_total = 0
        err = float("inf")
        for it in range(1, int(max_iterations) + 1):
            es, r = secant(u)
            kk = kmat(es)
            reac = kk @ u
            res = -reac  # external forces are zero: R = K_s u, the residual at free DOFs
            z = precond(res)
            rz = float(res @ z)
            energy = abs(float(u @ reac))
            err = math.sqrt(max(rz, 0.0) / energy) if energy > 0 else 0.0
            if err <= rtol:
                return u, True, it, err, es, r, reac, inner_total
            # inexact CG on K_s du = res, preconditioned by the elastic solver
            # (Polak-Ribiere beta: robust when the preconditioner is itself an inexact AMG-CG solve)
            du = np.zeros(ndof)
            p = z.copy()
            rz0 = rz
            for _ in range(int(max_inner)):
                kp = kk @ p
                pkp = float(p @ kp)
                if not pkp > 0:
                    break
                alpha = rz / pkp
                du += alpha * p
                res_old = res.copy()
                res -= alpha * kp
                z_new = precond(res)
                inner_total += 1
                rz_new = float(res @ z_new)
                if rz_new <= inner_rtol ** 2 * rz0:
                    break
                beta = max(0.0, float(z_new @ (res - res_old)) / rz)
                p = z_new + beta * p
                z, rz = z_new, rz_new
            u = u + du
            if not np.isfinite(u).all():
                break
        es, r = secant(u)
        return u, False, int(max_iterations), err, es, r, kmat(es) @ u, inner_total

    u_prev = np.zeros(ndof)
    lam_prev = 0.0
    curve_d, curve_f = [0.0], [0.0]
    steps: list[NonlinearStep] = []
    converged_all, peak_reached, stop_reason = True, False, "final displacement reached"
    es_last = e0q.copy()
    targets = [lam_fy] if lam_fy < lam_max else []
    targets += list(np.linspace(lam_fy if lam_fy < lam_max else 0.0, lam_max, int(n_steps) + 1)[1:])
    if lam_fy >= lam_max:
        log.warning("nonlinear: no element yields up to the final displacement (first yield at %.4g x the "
                    "final load); the curve stays linear", lam_fy / lam_max)
    k_step, idx, cut, dlam_cut = 0, 0, 0, None
    auto = mode != "explicit" and max_displacement_mm is None and endpoint_mm is None
    n_extended = 0
    drop_tol = max(1e-6, 10.0 * float(rtol))  # a smaller force drop is within the equilibrium tolerance
    with _quiet("femur_fe.fe.solvers"):
        while idx < len(targets):
            if time_limit_s is not None and time.perf_counter() - t_start > time_limit_s:
                converged_all, stop_reason = False, f"time limit {time_limit_s:g} s"
                break
            lam = targets[idx] if dlam_cut is None else min(lam_prev + dlam_cut, targets[idx])
            ts = time.perf_counter()
            pred = u1 * lam if lam_prev == 0.0 else u_prev * (lam / lam_prev)
            n0 = n_prec[0]
            u, ok, its, err, es, r, reac, inner = solve_step(pred)
            if not ok:
                if cut < int(max_cutbacks):
                    cut += 1
                    dlam_cut = 0.5 * (lam - lam_prev)
                    log.info("nonlinear: step to lambda %.4g did not converge (residual %.2e); cutting back",
                             lam, err)
                    continue
                steps.append(NonlinearStep(k_step + 1, float(lam), disp_of(u, lam), force_of(reac), its,
                                           n_prec[0] - n0, err, int((r > 1).sum()), False,
                                           time.perf_counter() - ts, cut))
                converged_all, stop_reason = False, f"step to lambda {lam:.4g} did not converge"
                log.warning("nonlinear: %s after %d cutbacks (energy residual %.2e); keeping the last converged "
                            "step", stop_reason, cut, err)
                break
            k_step += 1
            f = force_of(reac)
            d = disp_of(u, lam)
            yielded = r > 1.0 + 1e-9  # beyond yield by more than round-off (r = 1 at first yield)
            v_y = float(vol_q[yielded].sum())
            steps.append(NonlinearStep(k_step, float(lam), d, f, its, n_prec[0] - n0, err, int(yielded.sum()), True,
                                       time.perf_counter() - ts, cut, v_y))
            if progress is not None:
                progress(f"nonlinear step {k_step}: load {f:.0f} N at {d:.3g} mm, yielded {v_y:.0f} mm^3 "
                         f"({100.0 * v_y / bone_volume:.1f} % of the bone), {its} iterations"
                         + (f", {cut} cutbacks" if cut else ""))
            log.info("nonlinear step %d: displacement %.4g mm, force %.5g N, %d iterations, %d CG solves, "
                     "residual %.1e, %d yielded points, %.1f s", k_step, d, f, its, n_prec[0] - n0, err,
                     int(yielded.sum()), steps[-1].seconds)
            # peak / plateau detection
            if len(curve_f) >= 2 and d != curve_d[-1]:
                k_inc = (f - curve_f[-1]) / (d - curve_d[-1])
                if f < max(curve_f) * (1 - drop_tol) or (endpoint_mm is None and k_inc < plateau_ratio * stiff):
                    peak_reached = True
            curve_d.append(d)
            curve_f.append(f)
            u_prev, lam_prev, es_last = u, lam, es
            if lam >= targets[idx] * (1 - 1e-12):
                idx, cut, dlam_cut = idx + 1, 0, None
                if (idx == len(targets) and auto and not peak_reached and n_extended < int(n_steps)
                        and len(targets) >= 2):
                    targets.append(targets[-1] + (targets[-1] - targets[-2]))
                    n_extended += 1
            if peak_reached and stop_at_peak:
                stop_reason = "peak reached"
                break
    curve_d_a, curve_f_a = np.asarray(curve_d), np.asarray(curve_f)
    kpk = int(np.argmax(curve_f_a))
    endpoint_reached = bool(endpoint_mm is not None and converged_all and lam_prev >= lam_max * (1 - 1e-12))
    total_s = time.perf_counter() - t_start
    report = {
        "yield": ym.to_dict(), "mode": mode, "n_dofs": ndof, "n_cells": m, "cell_type": mesh.cell_type,
        "solver": solver.method, "setup_seconds": setup_s, "seconds": total_s, "stop_reason": stop_reason,
        "preconditioner_solves": n_prec[0], "rtol": rtol, "n_elastic_elements": int(elastic.sum()),
        "final_load_factor": float(targets[-1]) if targets else lam_max, "density_given": density is not None,
        "auto_extension_steps": n_extended, "inner_rtol": inner_rtol,
    }
    log.info("nonlinear strength: peak %.5g N at %.4g mm (%s; peak reached: %s; %d steps, %d preconditioner "
             "solves, %.1f s)", curve_f_a[kpk], curve_d_a[kpk], stop_reason, peak_reached, k_step, n_prec[0],
             total_s)
    return NonlinearResult(curve_d_a, curve_f_a, float(curve_f_a[kpk]), float(curve_d_a[kpk]), converged_all,
                           peak_reached, steps, report, float(f1 * lam_fy), float(d1 * lam_fy), float(stiff),
                           u_prev.reshape(-1, 3).copy(), es_last,
                           "peak" if endpoint_mm is None else "endpoint",
                           None if endpoint_mm is None else float(endpoint_mm), endpoint_reached)
