"""The strengths of one solved case side by side (``summary.json`` ``"strengths"``).

Different tools report different strengths for the same model; a run reports each one that
applies to its bone and load case, with its definition, next to the one the case uses:

* ``pistoia``: Pistoia et al. 2002 (Bone 30:842) criterion, the load at which 2 % of the bone
  volume reaches an energy-equivalent strain of 0.7 % (:class:`~femur_fe.analysis.failure.Pistoia`,
  n88tools defaults) — every case;
* ``max_principal_strain``: Schileo et al. 2008 (J Biomech) asymmetric principal strain limits at a node,
  the femur default (:class:`~femur_fe.analysis.failure.MaxPrincipalStrain`) — femur cases;
* ``apparent_strain``: whole-body apparent strain of 0.68 %, stiffness x height (Crawford,
  Cann & Keaveny 2003, Bone 33:744; parosol-py's vertebra default) — plate-loaded vertebra cases;
* ``reaction_at_deformation``: the largest reaction force of the nonlinear analysis up to its
  endpoint displacement (Ogo's reporting endpoint) — when the nonlinear analysis ran.

A linear strength is the load of the linear solution scaled until its criterion is met, so
each one costs a pass over the element fields, no solve. The entry of the case's own criterion
is the ``strength_linear_N`` of the summary (``"case_criterion": true``); ``"used_for_risk"`` marks
the strength the factor of risk and the classification use. Units: N.
"""
from __future__ import annotations

import logging
from typing import Any

from ..errors import FemurFeError
from .failure import ApparentStrain, FailureCriterion, MaxPrincipalStrain, Pistoia

log = logging.getLogger(__name__)

SOURCES = {
    "pistoia": "Pistoia et al. 2002, Bone 30:842 (n88tools defaults)",
    "max_principal_strain": "Schileo et al. 2008, J Biomech (0.73 % / 1.04 % principal strain at a node)",
    "apparent_strain": "Crawford, Cann & Keaveny 2003, Bone 33:744 (parosol-py vertebra default)",
    "reaction_at_deformation": "largest reaction up to the endpoint displacement (Ogo's nonlinear endpoint)",
}


def applicable(result: Any) -> dict[str, FailureCriterion]:
    """The linear criteria that apply to ``result``'s bone and load case (default parameters)."""
    out: dict[str, FailureCriterion] = {"pistoia": Pistoia()}
    if result.case.bone == "femur":
        out["max_principal_strain"] = MaxPrincipalStrain()
    elif (result.height_mm is not None and result.plate_displacement_mm is not None
          and result.plate_displacement_mm > 0):
        out["apparent_strain"] = ApparentStrain()
    return out


def strengths(result: Any) -> dict[str, dict[str, Any]]:
    """Name -> ``{"strength_N", "kind", "parameters", "source", "case_criterion", "used_for_risk"}`` for every strength
    that applies to a solved :class:`~femur_fe.analysis.result.Result` (its linear strength evaluated)."""
    lin = result.linear
    used = result.strength_summary.get("strength_used")
    out: dict[str, dict[str, Any]] = {}
    if lin is not None:
        out[lin.criterion] = {"strength_N": float(lin.strength_N), "kind": "linear",
                              "parameters": dict(lin.parameters), "source": SOURCES.get(lin.criterion, ""),
                              "case_criterion": True, "used_for_risk": used == f"linear:{lin.criterion}"}
        for name, crit in applicable(result).items():
            if name in out:
                continue
            try:
                s = result.evaluate_criterion(crit)
            except FemurFeError as exc:   # e.g. no plate displacement: the strength does not apply
                log.info("strength %s does not apply: %s", name, exc)
                continue
            out[name] = {"strength_N": float(s.strength_N), "kind": "linear", "parameters": dict(s.parameters),
                         "source": SOURCES[name], "case_criterion": False, "used_for_risk": False}
    nl = result.strength_summary.get("strength_nonlinear_N")
    if result.nonlinear is not None and nl is not None:
        out["reaction_at_deformation"] = {
            "strength_N": float(nl), "kind": "nonlinear",
            "parameters": {"endpoint_mm": result.nonlinear.endpoint_mm,
                           "definition": result.nonlinear.strength_definition},
            "source": SOURCES["reaction_at_deformation"],
            "case_criterion": False, "used_for_risk": used == "nonlinear"}
    return out


def format_strengths(table: dict[str, dict[str, Any]]) -> list[str]:
    """One line per strength (what ``femur-fe run`` prints)."""
    lines = []
    for name, e in table.items():
        mark = "".join(m for k, m in (("case_criterion", "; the case's criterion"),
                                      ("used_for_risk", "; used for the risk")) if e.get(k))
        lines.append(f"{name:<24s} {e['strength_N']:10.1f} N  ({e['source']}{mark})")
    return lines
