"""Nonlinear (material) strength: incremental, displacement-controlled secant analysis.

A secant-modulus, total-strain material with the asymmetric principal-strain measure of the
linear criterion, loaded by increasing prescribed displacement; strength is the peak of the
force-displacement curve (inexact Newton-Krylov steps, adaptive step size).

The method in full (equations, parameters, choices, sources): ``docs/strength.md``, section
``femur_fe.fe.nonlinear``.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import scipy.sparse as sp

import psutil

from ..errors import FemurFeError, LoadCaseError, SolverError
from .assembly import StiffnessAssembler, unit_lame
from .constraints import RigidTie, TieReduction
from .elements import quadrature
from .fields import check_strain_limit
from .krylov import gmres, pcg
from .mesh import Mesh, element_mask
from .solvers import DEFAULT_MAXITER, LinearSolver, _fixed_mask
from .strain_operator import StrainOperator, strain_operator_nbytes, unit_isotropic_stress

log = logging.getLogger(__name__)

ITERATIONS = ("newton", "secant")
#: relative preconditioned residual of the elastic solution (first yield, elastic stiffness)
ELASTIC_RTOL = 1e-8
#: smallest linear tolerance (forcing term) of an inexact Newton iteration: the linearisation
#: of a model with kinks (yield onset, tension/compression switch) is not worth solving closer
NEWTON_MIN_FORCING = 0.05
#: GMRES restart length (Krylov vectors kept)
GMRES_RESTART = 40
#: step halvings of the Newton update before a secant (Kacanov) update is taken instead
LINE_SEARCH_STEPS = 3
#: adaptive steps: first step after first yield (x the nominal step), growth after a step that
#: reached STEP_CONTROL_RTOL (or rtol if larger) in at most EASY_ITERATIONS evaluations,
#: shrinking after HARD_ITERATIONS or more (a tolerance of its own, so that a strict rtol
#: does not shrink the steps),
#: longest step (x the nominal, endpoint definition only; the peak definition keeps the nominal
#: step because its plateau test compares the slope over one step)
FIRST_STEP_FRACTION = 0.5
STEP_CONTROL_RTOL = 1e-3
EASY_ITERATIONS = 2
HARD_ITERATIONS = 5
STEP_GROWTH = 1.5
STEP_SHRINK = 0.5
MAX_STEP_GROWTH = 2.0
#: most DOFs a reused preconditioner may leave free beyond the nonlinear problem's and still be
#: corrected exactly (one preconditioner application each at set-up)
MAX_BORDER_DOFS = 12
#: a last step shorter than this fraction of the current step is merged into the one before
STEP_MERGE = 0.25


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


# --------------------------------------------------------------------------- the model at points (Voigt)
def principal_strain_extremes(eps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Largest and smallest principal strains of Voigt strains ``eps`` (6, P) (xx, yy, zz, yz,
    xz, xy, engineering shear), in closed form: the trigonometric solution of the
    characteristic cubic (Smith 1961, Commun ACM 4:168). Agrees with ``numpy.linalg.eigvalsh``
    to 1e-8 of the strain magnitude (tested; the trigonometric form keeps ~half the digits where two
    principal strains coincide, ~1e-15 elsewhere), at a fraction of its cost.
    """
    a11, a22, a33 = eps[0], eps[1], eps[2]
    a23, a13, a12 = 0.5 * eps[3], 0.5 * eps[4], 0.5 * eps[5]
    q = (a11 + a22 + a33) / 3.0
    b11, b22, b33 = a11 - q, a22 - q, a33 - q
    p1 = a12 * a12 + a13 * a13 + a23 * a23
    p = np.sqrt((b11 * b11 + b22 * b22 + b33 * b33 + 2.0 * p1) / 6.0)
    det = b11 * (b22 * b33 - a23 * a23) - a12 * (a12 * b33 - a23 * a13) + a13 * (a12 * a23 - b22 * a13)
    p3 = 2.0 * p ** 3
    c = np.divide(det, p3, out=np.zeros_like(det), where=p3 > 0)
    phi = np.arccos(np.clip(c, -1.0, 1.0)) / 3.0
    two_p = 2.0 * p
    return q + two_p * np.cos(phi), q + two_p * np.cos(phi + 2.0 * np.pi / 3.0)


def principal_direction(eps: np.ndarray, value: np.ndarray) -> np.ndarray:
    """Unit eigenvectors (P, 3) of Voigt strains ``eps`` (6, P) for the eigenvalues ``value`` (P,):
    the largest cross product of two rows of ``eps - value I``. Where that matrix has rank one
    (``value`` repeated) any unit vector orthogonal to its largest row is an eigenvector, and
    any unit vector where it vanishes (``eps`` a multiple of the identity)."""
    a11, a22, a33 = eps[0] - value, eps[1] - value, eps[2] - value
    a23, a13, a12 = 0.5 * eps[3], 0.5 * eps[4], 0.5 * eps[5]
    rows3 = np.stack([np.stack([a11, a12, a13], axis=1), np.stack([a12, a22, a23], axis=1),
                      np.stack([a13, a23, a33], axis=1)], axis=1)  # (P, 3, 3)
    r0, r1, r2 = rows3[:, 0], rows3[:, 1], rows3[:, 2]
    c = np.stack([np.cross(r0, r1), np.cross(r0, r2), np.cross(r1, r2)], axis=1)
    norm = np.linalg.norm(c, axis=2)
    idx = np.arange(len(value))
    pick = np.argmax(norm, axis=1)
    v, nv = c[idx, pick], norm[idx, pick]
    rnorm = np.linalg.norm(rows3, axis=2)
    top = np.argmax(rnorm, axis=1)
    rmax = rnorm[idx, top]
    rank1 = nv <= 1e-10 * rmax * rmax  # value repeated: the rows are parallel
    if rank1.any():
        row = rows3[idx, top][rank1]
        axis = np.eye(3)[np.argmin(np.abs(row), axis=1)]  # the axis least aligned with the row
        v[rank1] = np.cross(row, axis)
        nv[rank1] = np.linalg.norm(v[rank1], axis=1)
    out = np.zeros_like(v)
    ok = nv > 0
    out[ok] = v[ok] / nv[ok, None]
    out[~ok, 0] = 1.0
    return out


class _PointState:
    """The secant model evaluated at all quadrature points for one displacement."""

    __slots__ = ("eps", "r", "ratio", "unit_stress", "tension", "lmax", "lmin", "ws")


class _PointMaterial:
    """Secant model at the quadrature points (P,): moduli, yield strains, weights.

    ``evaluate`` gives the secant moduli ratio ``E_s / E`` and the weighted stress
    ``w E_s D1 eps``; ``tangent`` the consistent tangent as an operator on strain
    increments: ``dsigma = E_s D1 deps + E dratio/dr (D1 eps) (dr/deps . deps)``, where
    ``dr/deps = n n / eps_y`` (``n`` the principal direction of the governing principal
    strain, negative in compression). It is not symmetric (rank one per yielded point).
    """

    def __init__(self, young_q, eps_t_q, eps_c_q, elastic_q, hardening: float, floor: float, poisson: float,
                 weights) -> None:
        self.young = young_q
        self.eps_t, self.eps_c, self.elastic = eps_t_q, eps_c_q, elastic_q
        self.h, self.floor = float(hardening), float(floor)
        self.lam, self.mu = unit_lame(poisson)
        self.wy = weights * young_q
        self.bone_volume = float(weights[~elastic_q].sum())
        self.weights = weights

    def evaluate(self, eps: np.ndarray) -> _PointState:
        st = _PointState()
        st.eps = eps
        lmax, lmin = principal_strain_extremes(eps)
        rt = np.maximum(lmax, 0.0) / self.eps_t
        rc = np.maximum(-lmin, 0.0) / self.eps_c
        r = np.maximum(rt, rc)
        r[self.elastic] = 0.0
        ratio = np.ones_like(r)
        y = r > 1.0
        ratio[y] = self.h + (1.0 - self.h) / r[y]
        np.maximum(ratio, self.floor, out=ratio)
        st.r, st.ratio, st.tension, st.lmax, st.lmin = r, ratio, rt >= rc, lmax, lmin
        st.unit_stress = unit_isotropic_stress(eps, self.lam, self.mu)
        st.ws = st.unit_stress * (self.wy * ratio)
        return st

    def elastic_increment(self):
        """Weighted stress increment of a strain increment with the elastic moduli."""
        coef = self.wy

        def apply(de: np.ndarray) -> np.ndarray:
            return unit_isotropic_stress(de, self.lam, self.mu, coef)
        return apply

    def yielded_volume_percent(self, st: _PointState) -> float:
        if self.bone_volume <= 0:
            return 0.0
        return 100.0 * float(self.weights[st.r > 1.0].sum()) / self.bone_volume

    def secant(self, st: _PointState):
        """Weighted stress increment of a strain increment at fixed secant moduli."""
        coef = self.wy * st.ratio

        def apply(de: np.ndarray) -> np.ndarray:
            return unit_isotropic_stress(de, self.lam, self.mu, coef)
        return apply

    def tangent(self, st: _PointState):
        """Weighted stress increment of a strain increment, consistent tangent."""
        secant = self.secant(st)
        idx = np.flatnonzero((st.r > 1.0) & (st.ratio > self.floor))
        if idx.size == 0:
            return secant
        r = st.r[idx]
        tens = st.tension[idx]
        n = principal_direction(st.eps[:, idx], np.where(tens, st.lmax[idx], st.lmin[idx]))
        g = np.stack([n[:, 0] ** 2, n[:, 1] ** 2, n[:, 2] ** 2, n[:, 1] * n[:, 2], n[:, 0] * n[:, 2],
                      n[:, 0] * n[:, 1]])  # (6, Y): dr/deps in Voigt (engineering shear)
        g *= np.where(tens, 1.0 / self.eps_t[idx], -1.0 / self.eps_c[idx])
        # w E dratio/dr (D1 eps): dratio/dr = -(1 - h) / r^2
        a = st.unit_stress[:, idx] * (-self.wy[idx] * (1.0 - self.h) / (r * r))

        def apply(de: np.ndarray) -> np.ndarray:
            out = secant(de)
            out[:, idx] += a * np.einsum("ij,ij->j", g, de[:, idx])
            return out
        return apply


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
    yielded_volume_percent: float = 0.0
    linear_iterations: int = 0


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
    max_iterations: int = 25,
    max_inner: int = 80,
    inner_rtol: float = 0.3,
    max_cutbacks: int = 4,
    plateau_ratio: float = 0.02,
    stop_at_peak: bool = True,
    method: str = "auto",
    assembler=None,
    time_limit_s: float | None = None,
    iteration: str = "newton",
    adaptive: bool = True,
    preconditioner: LinearSolver | None = None,
    progress: Callable[[str], None] | None = None,
) -> NonlinearResult:
    """Incremental displacement-controlled nonlinear strength (secant model, see ``docs/strength.md``).

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
    n_steps : nominal number of load steps after first yield (the adaptive steps start at half
        and grow to at most twice that size; ``adaptive=False``: exactly these steps)
    rtol : energy-norm convergence tolerance of each step (see ``docs/strength.md``; 1e-3 keeps the
        strength within 0.1 % of a strict reference on the tested models)
    max_iterations : residual evaluations per step (Newton or secant updates + 1) before a cutback
    max_inner : Krylov iterations per update (GMRES for Newton, PCG for secant updates)
    inner_rtol : largest relative tolerance of those Krylov solves
    max_cutbacks : step halvings before giving up
    plateau_ratio : incremental / elastic stiffness below which the peak (plateau) counts as reached
        (peak definition only; with ``endpoint_mm`` only a force drop ends the analysis early)
    stop_at_peak : stop the analysis once the peak is reached
    method : elastic solver method for the preconditioner (see :class:`femur_fe.fe.LinearSolver`)
    assembler : an existing :class:`femur_fe.fe.StiffnessAssembler` of ``mesh`` with ``poisson``
    time_limit_s : stop (not converged) when the wall time exceeds this
    iteration : ``"newton"`` (default) or ``"secant"`` (Kacanov updates only)
    adaptive : adapt the step size (default) or take ``n_steps`` equal steps after first yield
    preconditioner : a :class:`femur_fe.fe.LinearSolver` already set up on this mesh with the same
        ties and a subset of the prescribed DOFs (e.g. the linear analysis, whose plate moves
        under a force): its factorisation / AMG hierarchy preconditions the iterations and no
        new set-up is made (``method`` and ``assembler`` are then unused)
    progress : called with one line per converged load step

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
    if iteration not in ITERATIONS:
        raise FemurFeError(f"iteration must be one of {ITERATIONS}, got {iteration!r}")

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

    # ---------------- elastic set-up: reduced space, strain operator, preconditioner
    t0 = time.perf_counter()
    q = len(quadrature(mesh.cell_type).weights)
    e0q = np.repeat(e0, q)
    red = TieReduction(n, mesh.points, ties)
    if preconditioner is None:
        asm = assembler if assembler is not None else StiffnessAssembler(mesh, poisson)
        k0 = asm.assemble(e0q.reshape(m, q))
        solver = LinearSolver(k0, given, points=mesh, method=method, constraints=ties)
        del k0
    else:
        solver = preconditioner
    fixed_all = mask | getattr(solver, "fixed_mask", np.zeros(ndof, dtype=bool))
    fz = red.fixed_z(fixed_all)
    free = np.flatnonzero(~fz)
    presc = np.flatnonzero(fz)
    if free.size == 0:
        raise FemurFeError("every DOF is prescribed: nothing to solve (check fixed_dofs)")
    precond_free = _preconditioner_on(solver, red, fz)
    tmat = red.T.tocsc() if not red.identity else sp.identity(ndof, format="csc")
    zp1 = np.zeros(red.n_z)  # prescribed z values at lam = 1
    zp1[: red.n_master] = g1[red.master_dofs]
    for k, (t, v) in enumerate(zip(ties, tie_vals1)):
        d_k = red.tie_dof(k)
        zp1[d_k[t.prescribed_mask]] = v[t.prescribed_mask]
    zp1[free] = 0.0
    up = tmat @ zp1  # displacement per unit load factor from the prescribed values
    gload = np.zeros(ndof)
    gload.reshape(-1, 3)[load_nodes] = direction  # force = gload . internal forces
    nf = free.size
    columns = sp.hstack([tmat[:, free], sp.csc_matrix(up[:, None]), sp.csc_matrix(gload[:, None])]).tocsr()
    need = strain_operator_nbytes(mesh) + columns.nnz * 12
    avail = psutil.virtual_memory().available
    if need > 0.5 * avail:
        raise FemurFeError(f"the nonlinear analysis needs ~{need / 2**30:.1f} GB for its strain operator "
                           f"({m} {mesh.cell_type} cells), more than half the available {avail / 2**30:.1f} GB; "
                           "use a coarser mesh (larger element size)")
    so = StrainOperator(mesh, columns)
    del columns
    ym_q = _PointMaterial(e0q, np.repeat(eps_t, q), np.repeat(eps_c, q), np.repeat(elastic, q), ym.hardening,
                          ym.min_secant_ratio, poisson, so.weights)
    tload = tmat[(3 * load_nodes[:, None] + np.arange(3)).ravel()][:, free].tocsr()
    setup_s = time.perf_counter() - t0

    n_prec = [0]

    def precond(r: np.ndarray) -> np.ndarray:
        n_prec[0] += 1
        return precond_free(r)

    ybuf = np.zeros(nf + 2)

    def strains(x: np.ndarray, lam: float) -> np.ndarray:
        ybuf[:nf] = x
        ybuf[nf] = lam
        return so.strain(ybuf)

    def state(x: np.ndarray, lam: float):
        st = ym_q.evaluate(strains(x, lam))
        g = so.forces_weighted(st.ws)
        return st, g[:nf], float(g[nf]), float(g[nf + 1])  # state, R (free), up . f, force

    def operator(apply_point):
        def matvec(v: np.ndarray) -> np.ndarray:
            ybuf[:nf] = v
            ybuf[nf] = 0.0
            return so.forces_weighted(apply_point(so.strain(ybuf)))[:nf]
        return matvec

    def energy_error(x, lam, r_free, work_p, z) -> float:
        energy = abs(float(x @ r_free) + lam * work_p)  # u . f_int
        rz = float(r_free @ z)
        return math.sqrt(max(rz, 0.0) / energy) if energy > 0 else 0.0

    def disp_of(x: np.ndarray, lam: float) -> float:
        if mode in ("nodes", "tie"):
            return lam  # lam is delta in mm in these modes
        ul = (tload @ x + lam * up.reshape(-1, 3)[load_nodes].ravel()).reshape(-1, 3)
        return float(ul.mean(axis=0) @ direction)

    # ---------------- elastic solution at lam = 1 (tight: it fixes the first yield and the stiffness)
    elastic_stress = ym_q.elastic_increment()
    rhs = -so.forces_weighted(elastic_stress(strains(np.zeros(nf), 1.0)))[:nf]
    x_el, its_el, rel_el = pcg(operator(elastic_stress), precond, rhs, rtol=ELASTIC_RTOL, maxiter=DEFAULT_MAXITER)
    if rel_el > ELASTIC_RTOL:
        raise SolverError(f"the elastic solution did not converge ({its_el} CG iterations, relative residual "
                          f"{rel_el:.1e}); check the constraints and the moduli")
    eps1 = strains(x_el, 1.0)
    st1 = ym_q.evaluate(eps1)  # its strain ratios r; the elastic force uses the elastic moduli
    f1 = float(so.forces_weighted(elastic_stress(eps1))[nf + 1])
    d1 = disp_of(x_el, 1.0)
    if not f1 > 0:
        raise LoadCaseError(f"the elastic reaction along load_direction is {f1:.4g} N (not positive): the "
                            "load direction is opposite to the imposed displacement; flip load_direction")
    rmax = float(st1.r.max())
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
             "yield %s, %s preconditioner, set-up %.2f s (elastic solve %d CG iterations)", stiff, f1 * lam_fy,
             lam_fy, lam_max, ym.to_dict(), solver.method, setup_s, its_el)

    # ---------------- one load step: Newton (or secant) iterations at fixed prescribed values
    counters = {"line_search": 0, "secant_fallback": 0, "linear": 0}

    def solve_step(x_start: np.ndarray, lam: float):
        """Returns (x, converged, iterations, error, state, force, linear iterations, iterations to
        the step-control tolerance)."""
        x = x_start.copy()
        st, r_free, wp, force = state(x, lam)
        z = precond(r_free)
        err = energy_error(x, lam, r_free, wp, z)
        lin = 0
        its_ctrl = None
        ctrl_tol = max(float(rtol), STEP_CONTROL_RTOL)
        for it in range(1, int(max_iterations) + 1):
            if its_ctrl is None and err <= ctrl_tol:
                its_ctrl = it
            if err <= rtol:
                return x, True, it, err, st, force, lin, its_ctrl
            if it == int(max_iterations) or not np.isfinite(err):
                break
            if iteration == "newton":
                # inexact Newton: the linear tolerance follows the distance to the tolerance
                eta = min(float(inner_rtol), max(NEWTON_MIN_FORCING, 0.5 * rtol / err))
                dx, k, _ = gmres(operator(ym_q.tangent(st)), precond, -r_free, z0=-z, rtol=eta,
                                 maxiter=int(max_inner), restart=GMRES_RESTART)
            else:
                dx, k, _ = pcg(operator(ym_q.secant(st)), precond, -r_free, z0=-z, rtol=float(inner_rtol),
                               maxiter=int(max_inner))
            lin += k
            accepted = False
            alpha = 1.0
            for _ in range(LINE_SEARCH_STEPS if iteration == "newton" else 1):
                x_try = x + alpha * dx
                st_t, r_t, wp_t, f_t = state(x_try, lam)
                z_t = precond(r_t)
                err_t = energy_error(x_try, lam, r_t, wp_t, z_t)
                if iteration != "newton" or err_t < err:
                    accepted = True
                    break
                counters["line_search"] += 1
                alpha *= 0.5
            if not accepted:
                # the Newton direction does not reduce the residual here (a kink of the model):
                # one secant (Kacanov) step, always a descent-free but convergent fixed-point update
                counters["secant_fallback"] += 1
                dx, k, _ = pcg(operator(ym_q.secant(st)), precond, -r_free, z0=-z, rtol=float(inner_rtol),
                               maxiter=int(max_inner))
                lin += k
                x_try = x + dx
                st_t, r_t, wp_t, f_t = state(x_try, lam)
                z_t = precond(r_t)
                err_t = energy_error(x_try, lam, r_t, wp_t, z_t)
            log.debug("nonlinear lambda %.5g iteration %d: residual %.3e -> %.3e, force %.6g -> %.6g N, %d linear",
                      lam, it, err, err_t, force, f_t, k)
            x, st, r_free, wp, force, z, err = x_try, st_t, r_t, wp_t, f_t, z_t, err_t
        return x, False, int(max_iterations), err, st, force, lin, its_ctrl

    # ---------------- incremental loop with adaptive steps
    def say(step: NonlinearStep) -> None:
        line = (f"nonlinear step {step.step}: load {step.force_N:.4g} N, plate displacement "
                f"{step.displacement_mm:.4g} mm, yielded {step.yielded_volume_percent:.2f} % of the bone volume, "
                f"{step.iterations} iterations ({step.linear_iterations} linear), "
                f"{time.perf_counter() - t_start:.1f} s")
        log.info("%s", line)
        if progress is not None:
            progress(line)

    if lam_fy >= lam_max:
        log.warning("nonlinear: no element yields up to the final displacement (first yield at %.4g x the "
                    "final load); the curve stays linear", lam_fy / lam_max)
    lam_start = lam_fy if lam_fy < lam_max else 0.0
    dlam0 = (lam_max - lam_start) / int(n_steps)  # the nominal step after first yield
    dlam_max = dlam0 * (MAX_STEP_GROWTH if (adaptive and endpoint_mm is not None) else 1.0)
    dlam_min = dlam0 / 2 ** int(max_cutbacks)
    dlam = dlam0 * (FIRST_STEP_FRACTION if adaptive else 1.0)
    # the secant iteration converges linearly: it needs about three times the evaluations
    easy, hard = (EASY_ITERATIONS, HARD_ITERATIONS) if iteration == "newton" else (3 * EASY_ITERATIONS,
                                                                                    3 * HARD_ITERATIONS)
    auto = mode != "explicit" and max_displacement_mm is None and endpoint_mm is None
    hist: list[tuple[float, np.ndarray]] = [(0.0, np.zeros(nf))]
    curve_d, curve_f, curve_lam = [0.0], [0.0], [0.0]
    peak_hist = hist
    steps: list[NonlinearStep] = []
    converged_all, peak_reached, stop_reason = True, False, "final displacement reached"
    st_last, x_last = None, np.zeros(nf)
    k_step, cut, n_extended, refined = 0, 0, 0, False
    drop_tol = max(1e-6, 10.0 * float(rtol))  # a smaller force drop is within the equilibrium tolerance
    lam_prev = 0.0
    while lam_prev < lam_max * (1 - 1e-12):
        if time_limit_s is not None and time.perf_counter() - t_start > time_limit_s:
            converged_all, stop_reason = False, f"time limit {time_limit_s:g} s"
            break
        if lam_prev == 0.0 and lam_fy < lam_max:
            lam = lam_fy
        else:
            lam = min(lam_prev + dlam, lam_max)
            if lam_max - lam < STEP_MERGE * dlam:
                lam = lam_max  # no sliver of a last step
        ts = time.perf_counter()
        n0 = n_prec[0]
        (l_a, x_a), (l_b, x_b) = hist[-2] if len(hist) >= 2 else hist[-1], hist[-1]
        if l_b == 0.0:
            pred = x_el * lam
        else:
            pred = x_b + (x_b - x_a) * ((lam - l_b) / (l_b - l_a))
        x, ok, its, err, st, f, lin, its_ctrl = solve_step(pred, lam)
        counters["linear"] += lin
        if not ok:
            if cut < int(max_cutbacks):
                cut += 1
                dlam = 0.5 * (lam - lam_prev)
                log.info("nonlinear: step to lambda %.4g did not converge (residual %.2e); cutting back",
                         lam, err)
                continue
            steps.append(NonlinearStep(k_step + 1, float(lam), disp_of(x, lam), f, its, n_prec[0] - n0, err,
                                       int((st.r > 1).sum()), False, time.perf_counter() - ts, cut,
                                       ym_q.yielded_volume_percent(st), lin))
            converged_all, stop_reason = False, f"step to lambda {lam:.4g} did not converge"
            log.warning("nonlinear: %s after %d cutbacks (energy residual %.2e); keeping the last converged "
                        "step", stop_reason, cut, err)
            break
        k_step += 1
        d = disp_of(x, lam)
        step = NonlinearStep(k_step, float(lam), d, f, its, n_prec[0] - n0, err, int((st.r > 1).sum()), True,
                             time.perf_counter() - ts, cut, ym_q.yielded_volume_percent(st), lin)
        steps.append(step)
        say(step)
        dlam_used = lam - lam_prev
        # peak / plateau detection
        fmax = max(curve_f)
        dropped = len(curve_f) >= 2 and f < fmax * (1 - drop_tol)
        if dropped and adaptive and not refined and dlam_used > 2 * dlam_min:
            # a force drop after a large step: go back to the highest point and locate the peak
            # with steps a quarter as long
            kmax = int(np.argmax(curve_f))
            hist = list(peak_hist)
            del curve_d[kmax + 1:], curve_f[kmax + 1:], curve_lam[kmax + 1:]
            lam_prev = curve_lam[kmax]
            dlam = max(dlam_used / 4.0, dlam_min)
            refined = True
            log.info("nonlinear: force drop at %.4g mm; refining from %.4g mm", d, curve_d[-1])
            continue
        if len(curve_f) >= 2 and d != curve_d[-1]:
            k_inc = (f - curve_f[-1]) / (d - curve_d[-1])
            if dropped or (endpoint_mm is None and k_inc < plateau_ratio * stiff):
                peak_reached = True
        curve_d.append(d)
        curve_f.append(f)
        curve_lam.append(lam)
        hist = [hist[-1], (lam, x)]
        if f >= fmax:
            peak_hist = hist
        st_last, x_last = st, x
        if lam_prev > 0.0:
            # adapt the next step to the iterations this one needed
            if adaptive and its_ctrl <= easy and cut == 0:
                dlam = min(dlam * STEP_GROWTH, dlam_max)
            elif adaptive and its_ctrl >= hard:
                dlam = max(dlam * STEP_SHRINK, dlam_min)
        lam_prev, cut = lam, 0
        if (lam_prev >= lam_max * (1 - 1e-12) and auto and not peak_reached and n_extended < int(n_steps)):
            lam_max += dlam0
            n_extended += 1
        if peak_reached and stop_at_peak:
            stop_reason = "peak reached"
            break
    curve_d_a, curve_f_a = np.asarray(curve_d), np.asarray(curve_f)
    kpk = int(np.argmax(curve_f_a))
    endpoint_reached = bool(endpoint_mm is not None and converged_all and lam_prev >= lam_max * (1 - 1e-12))
    total_s = time.perf_counter() - t_start
    z_last = np.zeros(red.n_z)
    z_last[free] = x_last
    z_last[presc] = lam_prev * zp1[presc]
    u_last = np.asarray(tmat @ z_last)
    report = {
        "yield": ym.to_dict(), "mode": mode, "n_dofs": ndof, "n_cells": m, "cell_type": mesh.cell_type,
        "solver": solver.method, "setup_seconds": setup_s, "seconds": total_s, "stop_reason": stop_reason,
        "preconditioner_solves": n_prec[0], "rtol": rtol, "n_elastic_elements": int(elastic.sum()),
        "final_load_factor": float(lam_max), "density_given": density is not None,
        "auto_extension_steps": n_extended, "inner_rtol": inner_rtol, "iteration": iteration,
        "adaptive": bool(adaptive), "linear_iterations": counters["linear"],
        "line_search_cuts": counters["line_search"], "secant_fallbacks": counters["secant_fallback"],
        "elastic_cg_iterations": its_el, "preconditioner_reused": preconditioner is not None,
        "strain_operator_mb": so.nbytes / 2**20,
        "convergence": f"energy norm of the residual sqrt(R.M R / u.f_int) <= {rtol:g} per step "
                       "(M: the elastic preconditioner)",
    }
    log.info("nonlinear strength: peak %.5g N at %.4g mm (%s; peak reached: %s; %d steps, %d preconditioner "
             "solves, %.1f s)", curve_f_a[kpk], curve_d_a[kpk], stop_reason, peak_reached, k_step, n_prec[0],
             total_s)
    return NonlinearResult(curve_d_a, curve_f_a, float(curve_f_a[kpk]), float(curve_d_a[kpk]), converged_all,
                           peak_reached, steps, report, float(f1 * lam_fy), float(d1 * lam_fy), float(stiff),
                           u_last.reshape(-1, 3).copy(),
                           (e0q if st_last is None else e0q * st_last.ratio).reshape(m, q),
                           "peak" if endpoint_mm is None else "endpoint",
                           None if endpoint_mm is None else float(endpoint_mm), endpoint_reached)


def _preconditioner_on(solver: Any, red: TieReduction, fixed_z: np.ndarray):
    """``r -> M r`` on the free entries of ``z`` (``~fixed_z``) from a :class:`LinearSolver` set-up:
    its factorisation (one forward/back substitution) or one AMG V-cycle.

    The solver may leave a few more DOFs free than the nonlinear problem (e.g. the loading
    plate moves under a force in the linear case and is displaced here). With ``S`` the
    solver's operator on its free DOFs and ``E`` those extra DOFs, the inverse of the matrix
    restricted to the nonlinear free DOFs F is ``S_FF - S_FE (S_EE)^-1 S_EF`` (the inverse of a
    principal submatrix, exact for a factorisation); ``S E`` costs one application per extra
    DOF, once. Without the correction every Krylov solve would need one more iteration per
    extra DOF.
    """
    if not isinstance(solver, LinearSolver):
        raise LoadCaseError(f"preconditioner must be a femur_fe.fe.LinearSolver, got {type(solver).__name__}")
    sred = solver.red
    same_ties = (sred.n_z == red.n_z and len(sred.ties) == len(red.ties)
                 and all(np.array_equal(a.node_ids, b.node_ids) and np.allclose(a.reference_point, b.reference_point)
                         for a, b in zip(sred.ties, red.ties)))
    if not same_ties:
        raise LoadCaseError("preconditioner was set up with other rigid ties (node sets or reference points "
                            "differ); pass a solver of the same constraints or none")
    s_fixed = sred.fixed_z(solver.fixed_mask)
    if (s_fixed & ~fixed_z).any():
        raise LoadCaseError("preconditioner prescribes DOFs that are free in the nonlinear problem; pass a solver "
                            "whose prescribed DOFs are a subset of the nonlinear ones")
    fn = solver.free_preconditioner().matvec
    s_free = np.flatnonzero(~s_fixed)
    free = np.flatnonzero(~fixed_z)
    if np.array_equal(s_free, free):
        return lambda r: np.asarray(fn(r)).reshape(-1)
    pos = np.searchsorted(s_free, free)
    n_s = s_free.size
    extra = np.setdiff1d(np.arange(n_s), pos)
    if extra.size > MAX_BORDER_DOFS:  # many extra DOFs: restriction only (a few more Krylov iterations each)
        extra = extra[:0]
    w = np.empty((free.size, extra.size))
    c = np.empty((extra.size, extra.size))
    for j, e in enumerate(extra):
        v = np.zeros(n_s)
        v[e] = 1.0
        col = np.asarray(fn(v)).reshape(-1)
        w[:, j] = col[pos]
        c[:, j] = col[extra]
    c = 0.5 * (c + c.T)
    cinv_wt = np.linalg.solve(c, w.T) if extra.size else w.T

    def apply(r: np.ndarray) -> np.ndarray:
        v = np.zeros(n_s)
        v[pos] = r
        y = np.asarray(fn(v)).reshape(-1)[pos]
        if extra.size:
            y -= w @ (cinv_wt @ r)
        return y
    return apply
