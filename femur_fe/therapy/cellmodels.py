"""Cell-population models of bone remodeling used as therapy-driven density drivers.

Komarova et al. 2003 (Bone 33:206) osteoclast/osteoblast ODE (:class:`Komarova2003`),
whose bone-mass output drives a density change per element.

The method in full (equations, parameters, choices, sources): ``docs/therapy.md``, section
``femur_fe.therapy.cellmodels``.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field, replace

import numpy as np

from ..errors import ScenarioError

log = logging.getLogger(__name__)

#: days per month used everywhere in femur_fe regeneration (mean Gregorian month)
DAYS_PER_MONTH = 365.25 / 12.0


def days_from_months(months: float | np.ndarray) -> float | np.ndarray:
    """Convert months to days (1 month = 365.25/12 = 30.4375 days)."""
    return months * DAYS_PER_MONTH


def months_from_days(days: float | np.ndarray) -> float | np.ndarray:
    """Convert days to months (1 month = 30.4375 days)."""
    return days / DAYS_PER_MONTH


def _check_positive(name: str, value: float, allow_zero: bool = False) -> float:
    value = float(value)
    ok = value >= 0 if allow_zero else value > 0
    if not (math.isfinite(value) and ok):
        bound = ">= 0" if allow_zero else "> 0"
        raise ScenarioError(f"{name} must be a finite number {bound}, got {value!r}")
    return value


@dataclass(frozen=True)
class CellTherapy:
    """Scale factors on the Komarova 2003 cell rates during a time window.

    Parameters
    ----------
    alpha1_factor : multiplies α1 (osteoclast production; < 1 = less osteoclastogenesis,
        e.g. RANKL inhibition)
    alpha2_factor : multiplies α2 (osteoblast production; > 1 = anabolic)
    beta1_factor : multiplies β1 (osteoclast removal/apoptosis)
    beta2_factor : multiplies β2 (osteoblast removal; < 1 = anti-apoptotic, anabolic)
    start_days : therapy start, days after t = 0
    duration_days : therapy length in days (``math.inf`` = until the end)

    All factors must be > 0 (0 would switch a population off and make the power laws
    singular). The factors are assumptions of a scenario, not measured drug effects.
    """

    alpha1_factor: float = 1.0
    alpha2_factor: float = 1.0
    beta1_factor: float = 1.0
    beta2_factor: float = 1.0
    start_days: float = 0.0
    duration_days: float = math.inf

    def __post_init__(self) -> None:
        for name in ("alpha1_factor", "alpha2_factor", "beta1_factor", "beta2_factor"):
            f = float(getattr(self, name))
            if not (math.isfinite(f) and 0.0 < f <= 100.0):
                raise ScenarioError(f"CellTherapy.{name} must be in (0, 100], got {f!r} "
                                    "(1 = no change; e.g. 1.05 for a 5 % increase)")
        _check_positive("CellTherapy.start_days", self.start_days, allow_zero=True)
        if not (float(self.duration_days) > 0):
            raise ScenarioError(f"CellTherapy.duration_days must be > 0, got {self.duration_days!r}")

    @property
    def end_days(self) -> float:
        return float(self.start_days) + float(self.duration_days)


@dataclass(frozen=True)
class CellTrajectory:
    """Solution of a cell-population model.

    Attributes
    ----------
    t_days : (k,) times, days
    x1 : (k,) osteoclasts (model units)
    x2 : (k,) osteoblasts (model units)
    z : (k,) bone mass (model units, % of the initial 100)
    """

    t_days: np.ndarray
    x1: np.ndarray
    x2: np.ndarray
    z: np.ndarray
    model: "Komarova2003" = field(repr=False, default=None)  # type: ignore[assignment]

    @property
    def t_months(self) -> np.ndarray:
        return self.t_days / DAYS_PER_MONTH

    def bone_mass_ratio(self, t_months: float | np.ndarray) -> float | np.ndarray:
        """z(t)/z(0) at ``t_months`` (linear interpolation of the dense output grid)."""
        t = np.asarray(t_months, dtype=float) * DAYS_PER_MONTH
        if np.any(t < self.t_days[0] - 1e-9) or np.any(t > self.t_days[-1] + 1e-9):
            raise ScenarioError(
                f"t_months must lie in [{self.t_days[0] / DAYS_PER_MONTH:.4g}, "
                f"{self.t_days[-1] / DAYS_PER_MONTH:.4g}] months (the simulated window), got {t_months!r}; "
                "simulate a longer window")
        out = np.interp(t, self.t_days, self.z) / self.z[0]
        return float(out) if np.ndim(out) == 0 else out


@dataclass(frozen=True)
class Komarova2003:
    """Komarova et al. 2003 osteoclast/osteoblast/bone-mass ODE (time in days).

    Defaults are the published parameters (Komarova et al. 2003, Bone 33:206; BioModels BIOMD0000000148):
    α1=3, α2=4, β1=0.2, β2=0.02, g11=0.5, g21=−0.5, g12=1, g22=0, k1=0.24, k2=0.0017.
    """

    alpha1: float = 3.0
    alpha2: float = 4.0
    beta1: float = 0.2
    beta2: float = 0.02
    g11: float = 0.5
    g21: float = -0.5
    g12: float = 1.0
    g22: float = 0.0
    k1: float = 0.24
    k2: float = 0.0017

    def __post_init__(self) -> None:
        for name in ("alpha1", "alpha2", "beta1", "beta2", "k1", "k2"):
            _check_positive(f"Komarova2003.{name}", getattr(self, name))
        if abs(self.gamma) < 1e-12:
            raise ScenarioError("Komarova2003 needs gamma = g12*g21 - (1-g11)*(1-g22) != 0 "
                                f"(got {self.gamma}); no unique steady state otherwise")

    @property
    def gamma(self) -> float:
        """γ = g12·g21 − (1 − g11)(1 − g22) (−1 for the published parameters)."""
        return self.g12 * self.g21 - (1.0 - self.g11) * (1.0 - self.g22)

    def steady_state(self) -> tuple[float, float]:
        """Non-trivial steady state (x̄1, x̄2); (1.0607, 212.13) for the defaults.

        x̄1 = (β1/α1)^((1−g22)/γ) (β2/α2)^(g21/γ), x̄2 = (β1/α1)^(g12/γ) (β2/α2)^((1−g11)/γ).
        """
        g = self.gamma
        r1 = self.beta1 / self.alpha1
        r2 = self.beta2 / self.alpha2
        x1 = r1 ** ((1.0 - self.g22) / g) * r2 ** (self.g21 / g)
        x2 = r1 ** (self.g12 / g) * r2 ** ((1.0 - self.g11) / g)
        return float(x1), float(x2)

    def treated(self, therapy: CellTherapy) -> "Komarova2003":
        """Model with the therapy's scale factors applied to α1, α2, β1, β2."""
        return replace(self, alpha1=self.alpha1 * therapy.alpha1_factor,
                       alpha2=self.alpha2 * therapy.alpha2_factor,
                       beta1=self.beta1 * therapy.beta1_factor,
                       beta2=self.beta2 * therapy.beta2_factor)

    def rhs(self, t: float, y: np.ndarray, reference: tuple[float, float] | None = None) -> np.ndarray:
        """Right-hand side d(x1, x2, z)/dt; ``reference`` = (x̄1, x̄2) of the bone-mass law."""
        x1, x2 = max(y[0], 1e-300), max(y[1], 1e-300)
        ref1, ref2 = reference if reference is not None else self.steady_state()
        dx1 = self.alpha1 * x1 ** self.g11 * x2 ** self.g21 - self.beta1 * x1
        dx2 = self.alpha2 * x1 ** self.g12 * x2 ** self.g22 - self.beta2 * x2
        dz = -self.k1 * max(x1 - ref1, 0.0) + self.k2 * max(x2 - ref2, 0.0)
        return np.array([dx1, dx2, dz])

    def simulate(self, t_end_days: float, y0: tuple[float, float, float] | None = None, *,
                 therapy: CellTherapy | None = None, n_out: int = 401,
                 rtol: float = 1e-9, atol: float = 1e-9) -> CellTrajectory:
        """Integrate from 0 to ``t_end_days`` with ``scipy.integrate.solve_ivp`` (LSODA).

        Parameters
        ----------
        t_end_days : end time, days (> 0)
        y0 : (x1, x2, z) at t = 0; default: the steady state with z = 100
        therapy : optional rate scaling over ``[start_days, end_days)``; the bone-mass law
            keeps the untreated steady state as reference
        n_out : number of output times (uniform grid, plus the therapy switch times)

        The interval is split at the therapy switch times so that the integrator never
        steps over a discontinuity of the right-hand side.
        """
        from scipy.integrate import solve_ivp

        t_end = _check_positive("t_end_days", t_end_days)
        ref = self.steady_state()
        if y0 is None:
            y0 = (ref[0], ref[1], 100.0)
        y = np.asarray(y0, dtype=float)
        if y.shape != (3,) or not np.all(np.isfinite(y)) or y[0] <= 0 or y[1] <= 0:
            raise ScenarioError(f"y0 must be (x1 > 0, x2 > 0, z) finite, got {y0!r}")
        cuts = [0.0, t_end]
        if therapy is not None:
            cuts += [c for c in (therapy.start_days, therapy.end_days) if 0.0 < c < t_end]
        cuts = sorted(set(cuts))
        grid = np.unique(np.concatenate([np.linspace(0.0, t_end, int(n_out)), cuts]))
        ts, ys = [np.array([0.0])], [y[:, None]]
        for a, b in zip(cuts[:-1], cuts[1:]):
            active = therapy is not None and therapy.start_days <= a < therapy.end_days
            model = self.treated(therapy) if active else self
            t_eval = grid[(grid > a) & (grid <= b)]
            sol = solve_ivp(model.rhs, (a, b), y, method="LSODA", t_eval=t_eval, args=(ref,),
                            rtol=rtol, atol=atol)
            if not sol.success:
                raise ScenarioError(f"Komarova2003 integration failed on [{a}, {b}] days: {sol.message}; "
                                    "check the therapy factors (extreme values make the ODE stiff)")
            ts.append(sol.t)
            ys.append(sol.y)
            y = sol.y[:, -1]
        t = np.concatenate(ts)
        yy = np.concatenate(ys, axis=1)
        return CellTrajectory(t, yy[0], yy[1], yy[2], model=self)


def bone_mass_ratio(therapy: CellTherapy | None, t_months: float | np.ndarray,
                    model: Komarova2003 | None = None) -> float | np.ndarray:
    """Relative bone mass z(t)/z(0) of the Komarova 2003 model started at its steady state.

    This is the density driver used by the ``cell_model`` scenario operator: element
    densities are multiplied by ``1 + w (ratio - 1)`` with a spatial weight w in [0, 1].

    Parameters
    ----------
    therapy : rate scaling (None = untreated: the ratio stays exactly 1)
    t_months : evaluation time(s), months (>= 0)
    model : the model (default: published parameters)
    """
    model = model or Komarova2003()
    t = np.asarray(t_months, dtype=float)
    if np.any(~np.isfinite(t)) or np.any(t < 0):
        raise ScenarioError(f"t_months must be finite and >= 0, got {t_months!r}")
    t_end = float(t.max()) if t.size else 0.0
    if t_end == 0.0:
        return 1.0 if np.ndim(t_months) == 0 else np.ones_like(t)
    traj = model.simulate(days_from_months(t_end), therapy=therapy)
    return traj.bone_mass_ratio(t_months)
