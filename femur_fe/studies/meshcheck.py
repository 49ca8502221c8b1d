"""Does the answer depend on the mesh? The same run with elements 0.7 times the size.

:func:`check_mesh` re-runs a case on a bone that femur_fe meshes (a mask or a surface) at
``REFINEMENT`` (0.7) times the element size of the run and reports the change of the
stiffness and of the strength the case uses (linear, or nonlinear when it was run and the case
refers to it). The refined run reads the same files (an internal calibration of the same CT
is computed once per process). A change beyond ``STIFFNESS_LIMIT_PERCENT`` (5 %) or
``STRENGTH_LIMIT_PERCENT`` (10 %) is a named warning (``mesh_dependent_stiffness``,
``mesh_dependent_strength``) in ``summary.json`` ``warnings`` and in the log; the numbers are
``summary.json`` ``mesh_check``.
"""
from __future__ import annotations

import logging
import time
from typing import Any

from ..analysis.result import Result
from ..analysis.subject import Subject
from ..bone.specimen import Specimen
from ..diagnostics import warn
from ..errors import LoadCaseError
from .run import Progress, as_case, run

log = logging.getLogger(__name__)

#: refined element size / element size of the run
REFINEMENT = 0.7
#: largest accepted change of the stiffness between the run and its refinement, percent
STIFFNESS_LIMIT_PERCENT = 5.0
#: largest accepted change of the strength between the run and its refinement, percent
STRENGTH_LIMIT_PERCENT = 10.0


def _change(coarse: float | None, fine: float | None) -> float | None:
    if coarse is None or fine is None or coarse == 0:
        return None
    return 100.0 * (fine / coarse - 1.0)


def compared_strength(res: Result) -> tuple[str, float | None]:
    """(``"linear"`` or ``"nonlinear"``, N): the strength the case uses for risk."""
    s = res.strength_summary
    if s.get("strength_used") == "nonlinear":
        return "nonlinear", s.get("strength_nonlinear_N")
    return "linear", s.get("strength_linear_N")


def check_mesh(case: Any, specimen: Specimen, result: Result, *, subject: Subject | None = None,
               nonlinear: bool = False, factor: float = REFINEMENT, progress: Progress | None = None) -> dict:
    """Re-run ``case`` on ``specimen`` meshed ``factor`` times finer and compare with ``result``.

    Returns the ``mesh_check`` record ({size_mm, refined_size_mm, stiffness_change_percent,
    strength_change_percent, ...}); it is also stored in ``result.extra["mesh_check"]``, and
    each limit exceeded adds a named warning to ``result.warnings``.
    """
    if not specimen.builds_mesh:
        raise LoadCaseError(f"{specimen.label}: --check-mesh re-meshes the bone finer, which needs a bone femur_fe "
                            "meshes (--mask, or a surface such as .stl); a bundled bone or a volume mesh is used as "
                            "given: mesh it yourself at two sizes instead")
    t0 = time.perf_counter()
    case = as_case(case)
    size = specimen.element_size()
    fine = specimen.refined(factor)

    def say(msg: str) -> None:
        (progress or (lambda m: log.info("%s", m)))(f"[mesh check {fine.element_size_mm:.3g} mm] {msg}")

    res2 = run(case, fine, subject=subject, nonlinear=nonlinear, progress=say)
    kind, strength = compared_strength(result)
    kind2, strength2 = compared_strength(res2)
    if kind2 != kind:  # e.g. the nonlinear analysis reached its endpoint in one run only
        strength2 = res2.strength_summary.get(f"strength_{kind}_N")
    rec: dict[str, Any] = {
        "size_mm": float(size), "refined_size_mm": float(fine.element_size_mm),
        "stiffness_change_percent": _change(result.stiffness_N_per_mm, res2.stiffness_N_per_mm),
        "strength_change_percent": _change(strength, strength2),
        "strength_compared": kind,
        "n_elements": result.mesh.n_cells, "refined_n_elements": res2.mesh.n_cells,
        "stiffness_N_per_mm": result.stiffness_N_per_mm, "refined_stiffness_N_per_mm": res2.stiffness_N_per_mm,
        "strength_N": strength, "refined_strength_N": strength2,
        "limits_percent": {"stiffness": STIFFNESS_LIMIT_PERCENT, "strength": STRENGTH_LIMIT_PERCENT},
        "seconds": time.perf_counter() - t0,
    }
    if kind == "nonlinear":
        rec["linear_strength_change_percent"] = _change(result.strength_summary.get("strength_linear_N"),
                                                        res2.strength_summary.get("strength_linear_N"))
    warnings = mesh_check_warnings(rec)
    rec["passed"] = not warnings
    result.extra["mesh_check"] = rec
    for w in warnings:
        result.warnings.append(warn(w["name"], w["message"], log))
    return rec


def mesh_check_warnings(rec: dict) -> list[dict[str, str]]:
    """The named warnings of a ``mesh_check`` record (empty when both changes are within limits)."""
    out = []
    for what, limit, name in (("stiffness", STIFFNESS_LIMIT_PERCENT, "mesh_dependent_stiffness"),
                              ("strength", STRENGTH_LIMIT_PERCENT, "mesh_dependent_strength")):
        ch = rec.get(f"{what}_change_percent")
        if ch is None or abs(ch) <= limit:
            continue
        label = f"{rec.get('strength_compared')} strength" if what == "strength" else what
        out.append({"name": name, "message": (
            f"the {label} changes by {ch:+.1f} % when the elements shrink from {rec['size_mm']:.3g} to "
            f"{rec['refined_size_mm']:.3g} mm (limit {limit:g} %): the answer depends on the mesh; run with "
            f"--size {rec['refined_size_mm']:.3g} and --check-mesh again")})
    return out


def format_mesh_check(rec: dict) -> str:
    """One line for the CLI."""
    def pct(v: float | None) -> str:
        return "n/a" if v is None else f"{v:+.1f} %"
    return (f"mesh check: {rec['size_mm']:.3g} -> {rec['refined_size_mm']:.3g} mm ({rec['n_elements']} -> "
            f"{rec['refined_n_elements']} elements): stiffness {pct(rec['stiffness_change_percent'])}, "
            f"{rec['strength_compared']} strength {pct(rec['strength_change_percent'])} (limits "
            f"{rec['limits_percent']['stiffness']:g} % / {rec['limits_percent']['strength']:g} %)")

