"""One load case on one bone: prepare, solve, strength, optionally nonlinear, optionally written."""
from __future__ import annotations

from ..analysis.prepare import prepare, run_nonlinear
from ..analysis.result import Result
from ..bone.model import Model
from ..case.loadcase import LoadCase, load_case


def run_case(case, model: Model, *, out=None, strength: bool = True, nonlinear: bool = False,
             frame=None, regions=None, subject=None) -> Result:
    """Prepare and solve ``case`` on ``model``; optionally write ``out/result.vtu`` and ``summary.json``.

    ``case`` is a :class:`femur_fe.LoadCase` or a path/dict for :func:`femur_fe.load_case`.
    """
    if not isinstance(case, LoadCase):
        case = load_case(case)
    an = prepare(case, model, frame=frame, regions=regions)
    res = an.solve(strength=False)
    res.subject = subject
    if strength:
        res.evaluate_strength()
    if nonlinear:
        run_nonlinear(an, res)
    if out is not None:
        res.write(out)
    return res
