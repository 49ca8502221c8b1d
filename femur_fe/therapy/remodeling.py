"""Mechanobiological bone remodeling over months (strain-energy-density driven).

An explicit-Euler density update per element driven by the strain energy density per unit
mass (Huiskes/Weinans family) with a lazy zone, a baseline loss rate and therapy activity
factors; :class:`RemodelingModel` runs it over months on a mesh.

The method in full (equations, parameters, choices, sources): ``docs/therapy.md``, section
``femur_fe.therapy.remodeling``.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import scipy.sparse as sp

from ..errors import FemurFeError, ScenarioError, SolverError
from ..fe.assembly import StiffnessAssembler, element_stiffness
from ..fe.boxes import hex_grid
from ..fe.elements import FACES
from ..fe.loads import assemble_pressure
from ..fe.mesh import Mesh
from ..fe.recovery import node_average
from ..fe.reuse import ReusingSolver
from ..fe.topology import boundary_faces

log = logging.getLogger(__name__)

#: annual fractional BMD loss presets (SWAN, Greendale et al. 2012, J Bone Miner Res 27:111 [V];
#: midpoints of hip 1.0-1.4 %/yr and spine 1.8-2.3 %/yr)
BASELINE_LOSS_PRESETS: dict[str, float] = {"postmenopausal_hip": 0.012, "postmenopausal_spine": 0.020}


# ============================================================================ meshes and BCs
@dataclass(frozen=True)
class BoundaryConditions:
    """Supports and loads of a linear FE model, possibly with several load cases.

    Attributes
    ----------
    fixed_dofs : (k,) DOF ids ``3 * node + component`` with prescribed displacement
    fixed_values : None (all 0), (k,) mm, or (k, r) per load case
    forces : None, (3n,) N or (3n, r) per load case
    load_weights : (r,) relative weights n_i of the load cases in the remodeling stimulus
        (e.g. daily cycles); default equal
    name : label
    """

    fixed_dofs: np.ndarray
    fixed_values: np.ndarray | None = None
    forces: np.ndarray | None = None
    load_weights: np.ndarray | None = None
    name: str = "bc"

    def __post_init__(self) -> None:
        fd = np.asarray(self.fixed_dofs, dtype=np.int64).ravel()
        object.__setattr__(self, "fixed_dofs", fd)
        if self.fixed_values is not None:
            fv = np.asarray(self.fixed_values, dtype=np.float64)
            if fv.shape[:1] != (fd.size,) or fv.ndim > 2:
                raise FemurFeError(f"fixed_values must have shape ({fd.size},) or ({fd.size}, r), got {fv.shape}")
            object.__setattr__(self, "fixed_values", fv)
        if self.forces is not None:
            object.__setattr__(self, "forces", np.asarray(self.forces, dtype=np.float64))

    def n_cases(self) -> int:
        r = 1
        for a in (self.forces, self.fixed_values):
            if a is not None and a.ndim == 2:
                r = max(r, a.shape[1])
        return r

    def rhs(self, n_dofs: int) -> tuple[np.ndarray, np.ndarray]:
        """(forces (n_dofs, r), fixed values (k, r)) with all load cases as columns."""
        r = self.n_cases()
        f = np.zeros((n_dofs, r)) if self.forces is None else self.forces
        if f.ndim == 1:
            f = np.repeat(f[:, None], r, axis=1)
        if f.shape != (n_dofs, r):
            raise FemurFeError(f"forces must have shape ({n_dofs},) or ({n_dofs}, {r}), got {f.shape}")
        g = np.zeros((self.fixed_dofs.size, r)) if self.fixed_values is None else self.fixed_values
        if g.ndim == 1:
            g = np.repeat(g[:, None], r, axis=1)
        return f, g

    def weights(self) -> np.ndarray:
        r = self.n_cases()
        w = np.ones(r) if self.load_weights is None else np.asarray(self.load_weights, dtype=np.float64).ravel()
        if w.shape != (r,) or np.any(w < 0) or w.sum() <= 0:
            raise FemurFeError(f"load_weights must be {r} non-negative numbers with a positive sum, got {w}")
        return w / w.sum()


# ============================================================================ FE helpers
_ELEMENT_CACHE_BYTES = 256 * 2**20


class ElementMatrices:
    """Unit-modulus element stiffness matrices K̂_e (K_e = E_e K̂_e) for element energies.

    Kept in memory when they fit in 256 MB, otherwise recomputed in chunks on each call
    (with :func:`femur_fe.fe.assembly.element_stiffness`).
    """

    def __init__(self, mesh: Mesh, poisson: float, *, n_threads: int | None = None) -> None:
        self.mesh = mesh
        self.poisson = float(poisson)
        self.n_threads = n_threads
        k = 3 * mesh.nodes_per_cell
        self._per_elem = k * k * 8
        self._dofs = (3 * mesh.cells[:, :, None] + np.arange(3)).reshape(mesh.n_cells, k)
        self._cache = None
        if mesh.n_cells * self._per_elem <= _ELEMENT_CACHE_BYTES:
            self._cache = self._compute(np.arange(mesh.n_cells))

    def _compute(self, ids: np.ndarray) -> np.ndarray:
        sub = Mesh(self.mesh.points, self.mesh.cells[ids], self.mesh.cell_type)
        return element_stiffness(sub, None, self.poisson, n_threads=self.n_threads)

    def chunks(self):
        """Yield (element ids, K̂ (c, 3k, 3k))."""
        if self._cache is not None:
            yield np.arange(self.mesh.n_cells), self._cache
            return
        step = max(1, (_ELEMENT_CACHE_BYTES // 4) // self._per_elem)
        for a in range(0, self.mesh.n_cells, step):
            ids = np.arange(a, min(a + step, self.mesh.n_cells))
            yield ids, self._compute(ids)

    def bilinear(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """a_e^T K̂_e b_e per element for global vectors a, b (3n,) or (3n, r): (m,) or (m, r)."""
        one = a.ndim == 1
        a2 = a[:, None] if one else a
        b2 = b[:, None] if b.ndim == 1 else b
        out = np.empty((self.mesh.n_cells, a2.shape[1]))
        for ids, kh in self.chunks():
            d = self._dofs[ids]
            ae = a2[d]  # (c, 3k, r)
            be = b2[d]
            out[ids] = np.einsum("cir,cij,cjr->cr", ae, kh, be)
        return out[:, 0] if one else out

    def scatter(self, values_per_elem: np.ndarray, u: np.ndarray) -> np.ndarray:
        """Global vector sum_e values_e K̂_e u_e (3n,)."""
        out = np.zeros(self.mesh.n_dofs)
        for ids, kh in self.chunks():
            d = self._dofs[ids]
            fe = values_per_elem[ids, None] * np.einsum("cij,cj->ci", kh, u[d])
            np.add.at(out, d.ravel(), fe.ravel())
        return out


# ============================================================================ smoothing, checks
def cell_face_neighbours(mesh: Mesh) -> sp.csr_matrix:
    """(m, m) boolean adjacency of cells sharing a face (vertex corners compared)."""
    local = FACES[mesh.cell_type]
    nf = local.shape[0]
    n_vert = 4 if mesh.cell_type == "hexahedron" else 3
    faces = np.sort(mesh.cells[:, local[:, :n_vert]].reshape(-1, n_vert), axis=1)
    owner = np.repeat(np.arange(mesh.n_cells), nf)
    _, inv = np.unique(faces, axis=0, return_inverse=True)
    inv = inv.ravel()
    order = np.argsort(inv, kind="stable")
    s_inv, s_own = inv[order], owner[order]
    pair = np.flatnonzero(s_inv[1:] == s_inv[:-1])
    a, b = s_own[pair], s_own[pair + 1]
    adj = sp.coo_matrix((np.ones(2 * a.size, dtype=bool), (np.r_[a, b], np.r_[b, a])),
                        shape=(mesh.n_cells, mesh.n_cells)).tocsr()
    return adj


def checkerboard_index(mesh: Mesh, density, threshold: float, neighbours: sp.csr_matrix | None = None) -> float:
    """Fraction of cells that are a strict local extreme against ALL their face neighbours.

    A cell counts when its density is higher than every face neighbour's by more than
    ``threshold`` (g/cm^3), or lower than every one by more than ``threshold``; cells with
    fewer than two face neighbours are ignored. A perfect checkerboard gives 1 (every cell),
    a smooth field 0.
    """
    rho = np.asarray(density, dtype=np.float64)
    adj = cell_face_neighbours(mesh) if neighbours is None else neighbours
    adj = adj.tocsr()
    deg = np.diff(adj.indptr)
    rows = np.repeat(np.arange(mesh.n_cells), deg)
    diff = rho[rows] - rho[adj.indices]
    above = np.bincount(rows, diff > threshold, minlength=mesh.n_cells) == deg
    below = np.bincount(rows, diff < -threshold, minlength=mesh.n_cells) == deg
    ok = deg >= 2
    return float(np.count_nonzero((above | below) & ok) / max(np.count_nonzero(ok), 1))


class NodeSmoother:
    """Element -> node (volume-weighted mean, :func:`femur_fe.fe.recovery.node_average`) -> element
    (mean of corner nodes) averaging."""

    def __init__(self, mesh: Mesh, volumes: np.ndarray | None = None) -> None:
        m = mesh.n_cells
        self._mesh = mesh
        self._volumes = mesh.cell_volumes() if volumes is None else np.asarray(volumes, dtype=np.float64)
        corners = mesh.corner_cells
        kc = corners.shape[1]
        self._to_cells = sp.csr_matrix((np.full(m * kc, 1.0 / kc), (np.repeat(np.arange(m), kc), corners.ravel())),
                                       shape=(m, mesh.n_points))

    def __call__(self, values: np.ndarray) -> np.ndarray:
        return self._to_cells @ node_average(self._mesh, values, self._volumes)


# ============================================================================ parameters
@dataclass(frozen=True)
class RemodelingParameters:
    """Parameters of the rate law (see ``docs/therapy.md`` for the equation and units).

    Parameters
    ----------
    reference_stimulus : k in J/g, or ``"initial"`` (per element, the stimulus at t = 0)
    lazy_zone : s, half width of the lazy zone as a fraction of k, in [0, 1)
    formation_rate, resorption_rate : B_f, B_r in (g/cm^3)/month per J/g (>= 0)
    rho_min, rho_max : density bounds, g/cm^3
    smoothing : ``"node"`` (default, no checkerboard) or ``"element"``
    basal_turnover_per_year : r0 * 12, fraction of density turned over per year (>= 0)
    baseline_loss_per_year : net annual loss fraction p in [0, 0.5) (needs turnover >= -ln(1-p))
    stimulus_error : ``"absolute"`` (S - k, Weinans) or ``"relative"`` (rho (S - k)/k, B in 1/month)
    """

    reference_stimulus: float | str = "initial"
    lazy_zone: float = 0.0
    formation_rate: float = 1.0
    resorption_rate: float = 1.0
    rho_min: float = 0.01
    rho_max: float = 1.2
    smoothing: str = "node"
    basal_turnover_per_year: float = 0.0
    baseline_loss_per_year: float = 0.0
    stimulus_error: str = "absolute"

    def __post_init__(self) -> None:
        if self.stimulus_error not in ("absolute", "relative"):
            raise ScenarioError(f"stimulus_error must be 'absolute' or 'relative', got {self.stimulus_error!r}")
        k = self.reference_stimulus
        if isinstance(k, str):
            if k != "initial":
                raise ScenarioError(f"reference_stimulus must be a number (J/g) > 0 or 'initial', got {k!r}")
        elif not (math.isfinite(float(k)) and float(k) > 0):
            raise ScenarioError(f"reference_stimulus must be > 0 J/g (or 'initial'), got {k!r}")
        if not (0.0 <= self.lazy_zone < 1.0):
            raise ScenarioError(f"lazy_zone must be in [0, 1), got {self.lazy_zone!r}")
        for name in ("formation_rate", "resorption_rate", "basal_turnover_per_year"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v >= 0):
                raise ScenarioError(f"{name} must be a finite number >= 0, got {v!r}")
        if not (0.0 < self.rho_min < self.rho_max <= 2.0):
            raise ScenarioError(f"density bounds must satisfy 0 < rho_min < rho_max <= 2.0 g/cm^3 (apparent cortical "
                                f"bound; 1.2 for ash), got [{self.rho_min}, {self.rho_max}]")
        if self.smoothing not in ("node", "element"):
            raise ScenarioError(f"smoothing must be 'node' or 'element', got {self.smoothing!r}")
        p = self.baseline_loss_per_year
        if not (0.0 <= p < 0.5):
            raise ScenarioError(f"baseline_loss_per_year must be a fraction in [0, 0.5), e.g. 0.012 for 1.2 %/yr, "
                                f"got {p!r}")
        if -math.log1p(-p) > self.basal_turnover_per_year + 1e-15:
            raise ScenarioError(
                f"baseline_loss_per_year={p} needs basal_turnover_per_year >= {-math.log1p(-p):.4g} (the loss is "
                "an imbalance of resorption over formation, so turnover must be at least the loss); raise "
                "basal_turnover_per_year")

    @property
    def resorption_per_month(self) -> float:
        return self.basal_turnover_per_year / 12.0

    @property
    def formation_per_month(self) -> float:
        return self.resorption_per_month + math.log1p(-self.baseline_loss_per_year) / 12.0


@dataclass(frozen=True)
class Therapy:
    """Osteoblast/osteoclast activity factors over a time window, globally or locally.

    Parameters
    ----------
    formation_factor : multiplies formation (F); > 1 anabolic
    resorption_factor : multiplies resorption (R); < 1 antiresorptive
    start_months, duration_months : active window (duration None = to the end)
    region : None (everywhere), a (m,) weight array in [0, 1], or any object with
        ``weight(mesh, frame, density)`` (a scenario operator or Scenario)
    name : label
    """

    formation_factor: float = 1.0
    resorption_factor: float = 1.0
    start_months: float = 0.0
    duration_months: float | None = None
    region: Any = None
    name: str = "therapy"

    def __post_init__(self) -> None:
        for nm in ("formation_factor", "resorption_factor"):
            v = float(getattr(self, nm))
            if not (math.isfinite(v) and 0.0 <= v <= 100.0):
                raise ScenarioError(f"Therapy.{nm} must be in [0, 100] (1 = no change), got {v!r}")
        if not (self.start_months >= 0):
            raise ScenarioError(f"Therapy.start_months must be >= 0, got {self.start_months!r}")
        if self.duration_months is not None and not (self.duration_months > 0):
            raise ScenarioError(f"Therapy.duration_months must be > 0 or None, got {self.duration_months!r}")

    def active(self, t_months: float) -> bool:
        end = math.inf if self.duration_months is None else self.start_months + self.duration_months
        return self.start_months <= t_months < end

    def weight(self, mesh: Mesh, frame: Any = None, density=None) -> np.ndarray:
        if self.region is None:
            return np.ones(mesh.n_cells)
        if hasattr(self.region, "weight"):
            w = np.asarray(self.region.weight(mesh, frame, density), dtype=np.float64)
        else:
            w = np.asarray(self.region, dtype=np.float64)
        if w.shape != (mesh.n_cells,) or np.any(~np.isfinite(w)) or w.min() < 0 or w.max() > 1:
            raise ScenarioError(f"Therapy {self.name!r}: region weights must be ({mesh.n_cells},) values in [0, 1]")
        return w


def activity_factors(therapies: Sequence[Therapy], weights: Sequence[np.ndarray], t_months: float,
                     n_cells: int) -> tuple[np.ndarray, np.ndarray]:
    """(F, R) per element at time t: products of ``1 + (factor - 1) w`` of active therapies."""
    f = np.ones(n_cells)
    r = np.ones(n_cells)
    for th, w in zip(therapies, weights):
        if th.active(t_months):
            f *= 1.0 + (th.formation_factor - 1.0) * w
            r *= 1.0 + (th.resorption_factor - 1.0) * w
    return f, r


def density_rate(params: RemodelingParameters, rho: np.ndarray, stimulus: np.ndarray, k_ref: np.ndarray,
                 f_act: np.ndarray, r_act: np.ndarray) -> np.ndarray:
    """drho/dt in (g/cm^3)/month of the rate law (``docs/therapy.md``)."""
    s = params.lazy_zone
    up = np.maximum(stimulus - (1.0 + s) * k_ref, 0.0)
    down = np.maximum((1.0 - s) * k_ref - stimulus, 0.0)
    if params.stimulus_error == "relative":
        # elements with no reference stimulus (k = 0, unloaded at t = 0) get no mechanical term
        pos = k_ref > 0
        scale = np.where(pos, rho / np.where(pos, k_ref, 1.0), 0.0)
        up, down = up * scale, down * scale
    mech = f_act * params.formation_rate * up - r_act * params.resorption_rate * down
    basal = (f_act * params.formation_per_month - r_act * params.resorption_per_month) * rho
    return mech + basal


# ============================================================================ result
@dataclass
class RemodelingResult:
    """History of a remodeling run.

    Attributes
    ----------
    t_months : (k,) recorded times
    density : (k, m) recorded densities, g/cm^3 (row 0 = initial)
    stimulus : (k, m) (smoothed) stimulus at the recorded times, J/g
    mass_g : (k,) total mass sum rho V / 1000, g
    final_density : (m,) last good density
    completed : True if the requested time was reached
    stop_reason : why the run stopped early ("" when completed)
    n_steps, n_substeps : accepted steps and extra sub-steps
    solver : statistics of :class:`ReusingSolver` (setups, PCG solves/iterations, seconds)
    strain_energy : (k, r) total strain energy per load case, N mm
    """

    t_months: np.ndarray
    density: np.ndarray
    stimulus: np.ndarray
    mass_g: np.ndarray
    final_density: np.ndarray
    completed: bool
    stop_reason: str
    n_steps: int
    n_substeps: int
    solver: dict
    strain_energy: np.ndarray
    reference_stimulus: np.ndarray = field(repr=False, default=None)  # type: ignore[assignment]

    def summary(self) -> dict:
        return {"t_months": float(self.t_months[-1]), "completed": self.completed, "stop_reason": self.stop_reason,
                "n_steps": self.n_steps, "n_substeps": self.n_substeps,
                "mass_change_percent": float(100.0 * (self.mass_g[-1] / self.mass_g[0] - 1.0)),
                "solver": dict(self.solver)}


# ============================================================================ driver
class RemodelingModel:
    """FE model + rate law; :meth:`run` integrates the density over months.

    Parameters
    ----------
    mesh : Mesh
    law : density-modulus law with ``young(rho)`` (femur_fe.bone.materials), or a callable
    bc : :class:`BoundaryConditions` (one or more load cases)
    params : :class:`RemodelingParameters`
    poisson : Poisson ratio (default ``law.poisson`` if present, else 0.3)
    solver_method : LinearSolver method ("auto", "direct", "amg")
    rebuild_every, max_pcg_iterations : see :class:`ReusingSolver`
    n_threads : assembly threads (None = all cores; 1 is fastest for tiny models, where
        thread start-up dominates)
    """

    def __init__(self, mesh: Mesh, law, bc: BoundaryConditions, params: RemodelingParameters, *,
                 poisson: float | None = None, solver_method: str = "auto", rebuild_every: int = 10,
                 max_pcg_iterations: int = 30, n_threads: int | None = None) -> None:
        self.mesh = mesh
        self.law = law
        self.bc = bc
        self.params = params
        self.poisson = float(poisson if poisson is not None else getattr(law, "poisson", 0.3))
        self.assembler = StiffnessAssembler(mesh, self.poisson, n_threads=n_threads)
        self.volumes = mesh.cell_volumes()
        self.elements = ElementMatrices(mesh, self.poisson, n_threads=n_threads)
        self.smoother = NodeSmoother(mesh, self.volumes) if params.smoothing == "node" else None
        self.solver = ReusingSolver(self.assembler, bc.fixed_dofs, mesh, method=solver_method,
                                    rebuild_every=rebuild_every, max_pcg_iterations=max_pcg_iterations)
        self._f, self._g = bc.rhs(mesh.n_dofs)
        self._w = bc.weights()

    def young(self, rho: np.ndarray) -> np.ndarray:
        return np.asarray(self.law.young(rho) if hasattr(self.law, "young") else self.law(rho), dtype=np.float64)

    def stimulus(self, rho: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(smoothed stimulus S (m,) J/g, total strain energy per load case (r,) N mm)."""
        e = self.young(rho)
        u, _ = self.solver.solve(e, self._f, self._g)
        energy = 0.5 * e[:, None] * self.elements.bilinear(u, u)  # (m, r) N mm
        sed = energy / self.volumes[:, None]  # MPa = J/cm^3
        s = (sed @ self._w) / rho
        if self.smoother is not None:
            s = self.smoother(s)
        return s, energy.sum(axis=0)

    def run(self, density, months: float, *, dt_months: float = 1.0, therapies: Sequence[Therapy] = (),
            frame: Any = None, max_step_change_g_cm3: float = 0.05, max_halvings: int = 6,
            record_every: int = 1, callback: Callable[[float, np.ndarray], None] | None = None) -> RemodelingResult:
        """Integrate from t = 0 to ``months`` with explicit Euler steps of ``dt_months``.

        Parameters
        ----------
        density : (m,) initial density, g/cm^3 (clamped into the parameter bounds)
        months : end time, months
        dt_months : nominal step, months
        therapies : :class:`Therapy` terms (weights evaluated once on the initial density)
        frame : anatomy frame for therapy regions placed at landmarks
        max_step_change_g_cm3 : largest allowed density change of one element in one step
        max_halvings : how often a step may be halved before the run stops as unstable
        record_every : keep every k-th accepted step in the history (the last is always kept)
        callback : called as ``callback(t, density)`` after every accepted step
        """
        p = self.params
        rho0 = np.asarray(density, dtype=np.float64)
        if rho0.shape != (self.mesh.n_cells,) or not np.all(np.isfinite(rho0)):
            raise ScenarioError(f"density must be ({self.mesh.n_cells},) finite values in g/cm^3")
        if not (months > 0 and dt_months > 0):
            raise ScenarioError(f"months and dt_months must be > 0, got {months!r}, {dt_months!r}")
        if not (max_step_change_g_cm3 > 0):
            raise ScenarioError("max_step_change_g_cm3 must be > 0")
        rho = np.clip(rho0, p.rho_min, p.rho_max)
        weights = [th.weight(self.mesh, frame, rho) for th in therapies]
        s, energy = self.stimulus(rho)
        k_ref = s.copy() if p.reference_stimulus == "initial" else np.full_like(s, float(p.reference_stimulus))
        times, dens, stims, masses, energies = [0.0], [rho.copy()], [s.copy()], [self._mass(rho)], [energy]
        t = 0.0
        n_steps = n_sub = 0
        stop = ""
        eps = 1e-9 * months
        while t < months - eps:
            dt = min(dt_months, months - t)
            accepted = False
            for _halving in range(max_halvings + 1):
                f_act, r_act = activity_factors(therapies, weights, t, self.mesh.n_cells)
                rate = density_rate(p, rho, s, k_ref, f_act, r_act)
                if not np.all(np.isfinite(rate)):
                    stop = f"non-finite density rate at t = {t:.4g} months"
                    break
                # the change after clamping to the bounds (the clamp is part of the model)
                drho = np.clip(rho + dt * rate, p.rho_min, p.rho_max) - rho
                if np.max(np.abs(drho)) <= max_step_change_g_cm3:
                    accepted = True
                    break
                dt *= 0.5
                n_sub += 1
            if not accepted:
                stop = stop or (f"unstable at t = {t:.4g} months: a step of {dt * 2:.3g} months (after {max_halvings} "
                                f"halvings) still changes a density by more than {max_step_change_g_cm3} g/cm^3; "
                                "lower dt_months or the rates, or raise max_step_change_g_cm3")
                break
            new = rho + drho
            try:
                s_new, energy = self.stimulus(new)
            except (SolverError, FemurFeError) as exc:
                stop = f"FE solve failed at t = {t + dt:.4g} months: {exc}"
                break
            if not np.all(np.isfinite(s_new)):
                stop = f"non-finite stimulus at t = {t + dt:.4g} months"
                break
            rho, s, t = new, s_new, t + dt
            n_steps += 1
            if callback is not None:
                callback(t, rho)
            if n_steps % record_every == 0 or t >= months - eps:
                times.append(t)
                dens.append(rho.copy())
                stims.append(s.copy())
                masses.append(self._mass(rho))
                energies.append(energy)
        if stop:
            log.warning("remodeling stopped early: %s (last good state kept, t = %.4g months)", stop, t)
            if times[-1] != t:
                times.append(t)
                dens.append(rho.copy())
                stims.append(s.copy())
                masses.append(self._mass(rho))
                energies.append(energy)
        sv = self.solver
        stats = {"n_setups": sv.n_setups, "n_pcg_solves": sv.n_pcg_solves, "n_pcg_failures": sv.n_pcg_failures,
                 "pcg_iterations": sv.pcg_iterations,
                 "setup_seconds": sv.setup_seconds, "solve_seconds": sv.solve_seconds,
                 "method": sv.method}
        return RemodelingResult(np.array(times), np.array(dens), np.array(stims), np.array(masses), rho.copy(),
                                not stop, stop, n_steps, n_sub, stats, np.array(energies), k_ref)

    def _mass(self, rho: np.ndarray) -> float:
        return float(rho @ self.volumes) / 1000.0


# ============================================================================ Weinans plate
def weinans_plate(n: int = 20, *, smoothing: str = "node") -> tuple[Mesh, BoundaryConditions, RemodelingParameters, Callable]:
    """The Weinans 1992 plate benchmark (Weinans, Huiskes & Grootenboer 1992, J Biomech 25:1425) as a thin 3-D hex slab.

    1 x 1 plate, ``n`` x ``n`` cubic hex8 elements, one element thick (thickness 1/n);
    set-up of Pympo (lunabrun/Pympo ``utils/bc.py``, ``utils/inp.py`` [V-code]): bottom
    edge (y = 0) fixed in y (and z, to remove the out-of-plane rigid modes of the 3-D slab),
    bottom-left corner also in x; on the top edge (y = 1) a pressure decreasing linearly
    from 10 at x = 0 to 0 at x = 1 (per face: its mid-point value; per unit thickness, so
    stresses match the unit-thickness plate). E = 100 rho^2, nu = 0.3, rho0 = 0.8,
    k = 0.25, s = 0, B = 1, rho in [0.01, 1.74]. Consistent units (the benchmark is
    dimensionless).

    Returns (mesh, bc, params, law) with ``law(rho) = 100 rho^2``.
    """
    mesh = hex_grid((n, n, 1), (1.0, 1.0, 1.0 / n))
    pts = mesh.points
    tol = 1e-9
    bottom = np.flatnonzero(np.abs(pts[:, 1]) < tol)
    corner = bottom[np.abs(pts[bottom, 0]) < tol]
    fixed = np.unique(np.r_[3 * bottom + 1, 3 * bottom + 2, 3 * corner])
    faces, _ = boundary_faces(mesh)
    top = faces[np.all(np.abs(pts[faces, 1] - 1.0) < tol, axis=1)]
    xmid = pts[top, 0].mean(axis=1)
    f = assemble_pressure(mesh, top, 10.0 * (1.0 - xmid))
    bc = BoundaryConditions(fixed, forces=f, name="weinans1992_plate")
    params = RemodelingParameters(reference_stimulus=0.25, lazy_zone=0.0, formation_rate=1.0, resorption_rate=1.0,
                                  rho_min=0.01, rho_max=1.74, smoothing=smoothing)

    def law(rho):
        return 100.0 * np.asarray(rho) ** 2

    return mesh, bc, params, law


__all__ = ["BoundaryConditions", "RemodelingParameters", "Therapy", "RemodelingModel", "RemodelingResult",
           "ReusingSolver", "ElementMatrices", "NodeSmoother", "weinans_plate", "checkerboard_index",
           "cell_face_neighbours", "density_rate", "activity_factors", "BASELINE_LOSS_PRESETS"]
