"""Fit remodeling rate parameters to published treatment trajectories of FE strength.

Target [V]: Keaveny et al. 2014, J Bone Miner Res 29:158 (FREEDOM, doi 10.1002/jbmr.2024),
hip FE strength vs baseline: denosumab +5.3 % at 12 months and +8.6 % at 36 months, placebo
-5.6 % at 36 months (:data:`KEAVENY2014_HIP`). Fitted with the defaults: B = 0.0481 per month,
p = 0.0570 per year, R = 0.634. These are FITTED model parameters, NOT MEASURED rates.

The method in full (equations, parameters, choices, sources): ``docs/therapy.md``, section
``femur_fe.therapy.rates``.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from ..bone.materials import material_law
from ..errors import ScenarioError
from .remodeling import (
    BoundaryConditions,
    RemodelingModel,
    RemodelingParameters,
    Therapy,
    hex_grid,
)
from .sensitivity import StrengthProblem, StrengthSensitivity

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StrengthTarget:
    """One published point: ``arm`` ("placebo" or "treatment"), time, % strength change."""

    arm: str
    months: float
    change_percent: float
    source: str = ""


KEAVENY2014_HIP: tuple[StrengthTarget, ...] = (
    StrengthTarget("treatment", 12.0, 5.3, "Keaveny 2014 JBMR (FREEDOM), denosumab hip FE strength, 12 mo"),
    StrengthTarget("treatment", 36.0, 8.6, "Keaveny 2014 JBMR (FREEDOM), denosumab hip FE strength, 36 mo"),
    StrengthTarget("placebo", 36.0, -5.6, "Keaveny 2014 JBMR (FREEDOM), placebo hip FE strength, 36 mo"),
)

#: assumed basal turnover per year (trabecular order of magnitude [M]); see ``docs/therapy.md``
DEFAULT_BASAL_TURNOVER_PER_YEAR = 0.30


@dataclass
class CalibrationResult:
    """Fitted rates (FITTED, not measured) and how well they reproduce the targets.

    Attributes
    ----------
    mechanical_rate_per_month : B
    baseline_loss_per_year : p
    resorption_factor : R of the treatment arm
    basal_turnover_per_year : r0 (input, not fitted)
    predicted_percent : predicted % strength change at each target
    residuals_percent : predicted - target, percentage points
    params : the fitted :class:`~femur_fe.therapy.remodeling.RemodelingParameters`
    therapy : the fitted :class:`~femur_fe.therapy.remodeling.Therapy`
    """

    mechanical_rate_per_month: float
    baseline_loss_per_year: float
    resorption_factor: float
    basal_turnover_per_year: float
    predicted_percent: np.ndarray
    residuals_percent: np.ndarray
    targets: tuple
    params: object = field(repr=False, default=None)
    therapy: object = field(repr=False, default=None)

    def to_dict(self) -> dict:
        return {"fitted_not_measured": True,
                "mechanical_rate_per_month": self.mechanical_rate_per_month,
                "baseline_loss_per_year": self.baseline_loss_per_year,
                "resorption_factor": self.resorption_factor,
                "basal_turnover_per_year_assumed": self.basal_turnover_per_year,
                "targets": [vars(t) for t in self.targets],
                "predicted_percent": self.predicted_percent.tolist(),
                "residuals_percent": self.residuals_percent.tolist()}


class UniformBlock:
    """A 10 mm hex8 cube, uniform density, 1000 N uniaxial compression with roller supports.

    ``strength(rho)`` is the FE linear strength (N) of the max-principal-strain criterion
    (Schileo limits) computed by :class:`femur_fe.therapy.sensitivity.StrengthSensitivity`.
    """

    def __init__(self, law) -> None:
        self.mesh = hex_grid((1, 1, 1), (10.0, 10.0, 10.0))
        pts = self.mesh.points
        bot = np.flatnonzero(pts[:, 2] < 1e-9)
        top = np.flatnonzero(pts[:, 2] > 10 - 1e-9)
        origin = bot[np.argmin(np.linalg.norm(pts[bot], axis=1))]
        xnode = bot[np.argmin(np.linalg.norm(pts[bot] - [10.0, 0, 0], axis=1))]
        fixed = np.unique(np.r_[3 * bot + 2, 3 * origin, 3 * origin + 1, 3 * xnode + 1])
        f = np.zeros(self.mesh.n_dofs)
        f[3 * top + 2] = -1000.0 / top.size
        self.bc = BoundaryConditions(fixed, forces=f, name="uniform_block")
        self.law = law
        self._sens = StrengthSensitivity(StrengthProblem(self.mesh, law, self.bc, top, (0, 0, -1), p=1.0,
                                                         include_elements=np.ones(1, dtype=bool)), n_threads=1)

    def strength(self, rho) -> float:
        return float(self._sens.evaluate(np.asarray(rho, dtype=float), gradient=False).strength_N)


def predict(block: UniformBlock, rho0: float, targets: Sequence[StrengthTarget], *, mechanical_rate: float,
            baseline_loss: float, resorption_factor: float, basal_turnover: float,
            dt_months: float = 1.0) -> np.ndarray:
    """Predicted % strength change at each target's arm and time."""
    params = RemodelingParameters(reference_stimulus="initial", stimulus_error="relative",
                                  formation_rate=mechanical_rate, resorption_rate=mechanical_rate,
                                  basal_turnover_per_year=basal_turnover, baseline_loss_per_year=baseline_loss,
                                  rho_max=2.0)
    model = RemodelingModel(block.mesh, block.law, block.bc, params, solver_method="direct", n_threads=1)
    s0 = block.strength(np.full(1, rho0))
    horizon = max(t.months for t in targets)
    out = np.empty(len(targets))
    for arm in ("placebo", "treatment"):
        idx = [i for i, t in enumerate(targets) if t.arm == arm]
        if not idx:
            continue
        th = [Therapy(resorption_factor=resorption_factor, name="treatment")] if arm == "treatment" else []
        res = model.run(np.full(1, rho0), months=horizon, dt_months=dt_months, therapies=th)
        if not res.completed:
            raise ScenarioError(f"calibration run ({arm}) stopped: {res.stop_reason}")
        for i in idx:
            k = int(np.argmin(np.abs(res.t_months - targets[i].months)))
            if abs(res.t_months[k] - targets[i].months) > 1e-9:
                raise ScenarioError(f"target time {targets[i].months} months is not a multiple of dt_months={dt_months}")
            out[i] = 100.0 * (block.strength(res.density[k]) / s0 - 1.0)
    return out


def fit_rates(law=None, targets: Sequence[StrengthTarget] = KEAVENY2014_HIP, *, rho0: float = 0.5,
              basal_turnover_per_year: float = DEFAULT_BASAL_TURNOVER_PER_YEAR,
              x0: Sequence[float] = (0.03, 0.02, 0.3)) -> CalibrationResult:
    """Least-squares fit of (B, p, R) to the targets (see ``docs/therapy.md``).

    Parameters
    ----------
    law : density-modulus law (default Morgan 2003 femoral neck, apparent density)
    targets : published points (default :data:`KEAVENY2014_HIP`)
    rho0 : initial uniform density, g/cm^3 of the law's type
    basal_turnover_per_year : assumed r0 (not identifiable; see ``docs/therapy.md``)
    x0 : start values (B per month, p per year, R)

    Returns a :class:`CalibrationResult`; the fitted values are FITTED, not measured.
    """
    from scipy.optimize import least_squares


    if law is None:
        law = material_law("morgan2003_femoral_neck")
    if not (0 < basal_turnover_per_year <= 1.0):
        raise ScenarioError(f"basal_turnover_per_year must be in (0, 1], got {basal_turnover_per_year!r}")
    block = UniformBlock(law)
    targets = tuple(targets)
    goal = np.array([t.change_percent for t in targets])
    p_max = min(0.2, 1.0 - math.exp(-basal_turnover_per_year))  # keeps turnover >= -ln(1 - p)

    def resid(x):
        pred = predict(block, rho0, targets, mechanical_rate=x[0], baseline_loss=x[1], resorption_factor=x[2],
                       basal_turnover=basal_turnover_per_year)
        return pred - goal

    lo = np.array([1e-4, 0.0, 0.0])
    hi = np.array([2.0, p_max * (1 - 1e-9), 1.0])
    sol = least_squares(resid, np.clip(np.asarray(x0, dtype=float), lo, hi), bounds=(lo, hi), x_scale=[0.01, 0.01, 0.1],
                        diff_step=1e-4, xtol=1e-10, ftol=1e-10)
    b, p, r = (float(v) for v in sol.x)
    pred = resid(sol.x) + goal
    log.info("fitted rates (not measured): B = %.4g /month, p = %.4g /yr, R = %.4g; residuals %s pp",
             b, p, r, np.round(pred - goal, 4).tolist())
    params = RemodelingParameters(reference_stimulus="initial", stimulus_error="relative", formation_rate=b,
                                  resorption_rate=b, basal_turnover_per_year=basal_turnover_per_year,
                                  baseline_loss_per_year=p, rho_max=2.0)
    return CalibrationResult(b, p, r, basal_turnover_per_year, pred, pred - goal, targets, params,
                             Therapy(resorption_factor=r, name="denosumab_fitted"))


__all__ = ["StrengthTarget", "KEAVENY2014_HIP", "CalibrationResult", "UniformBlock", "predict", "fit_rates",
           "DEFAULT_BASAL_TURNOVER_PER_YEAR"]
