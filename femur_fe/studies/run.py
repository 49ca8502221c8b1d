"""One load case on one bone: the solve -> strength -> nonlinear sequence, in one place.

:func:`run` is what ``femur-fe run`` does, what a comparison does for its baseline and what
the default sweep task does: read the case, build the bone model from the
:class:`~femur_fe.bone.specimen.Specimen` (its calibration applied to the case), prepare the
analysis (frame, regions, caps, supports), solve, evaluate the strength with the subject
attached, optionally run the nonlinear analysis, optionally write the result folder.
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from ..analysis.prepare import Analysis, prepare, run_nonlinear
from ..analysis.result import Result
from ..analysis.subject import Subject
from ..bone.model import Model
from ..bone.specimen import Specimen
from ..case.loadcase import LoadCase, load_case
from ..case.presets import resolve_case_path
from ..case.runfile import is_run_file, load_run_file, write_run_file
from ..errors import LoadCaseError
from ..io.outdir import check_output_dir, output_folder, write_or_fallback
from ..viz.qc import write_qc_picture

log = logging.getLogger(__name__)

Progress = Callable[[str], None]


def as_case(case: LoadCase | str | os.PathLike | Mapping[str, Any], base: Path | None = None) -> LoadCase:
    """A load case from a LoadCase, a TOML path, a preset name (``"sideways_fall"``), a run file
    (``case.toml`` of a run folder: its ``[case]``) or a dict."""
    if isinstance(case, LoadCase):
        return case
    if isinstance(case, Mapping):
        return load_case(case)
    path = resolve_case_path(case, base)
    if is_run_file(path):
        return load_run_file(path).case
    return load_case(path)


def as_specimen(bone: Specimen | Mapping[str, Any], base: Path | None = None) -> Specimen:
    """A specimen from a Specimen or a ``[bone]`` table."""
    if isinstance(bone, Specimen):
        return bone
    return Specimen.from_dict(bone, base=base)


def case_for(case: LoadCase, specimen: Specimen | None) -> LoadCase:
    """The case with the specimen's calibration (and CT unit) in ``[material.calibration]``."""
    if specimen is None:
        return case
    values = specimen.calibration_values(case.material.calibration.ct_unit)
    if not values:
        return case
    try:
        return case.with_values(values)
    except LoadCaseError as exc:
        given = ", ".join(f"{k.rsplit('.', 1)[-1]} = {v!r}" for k, v in values.items())
        raise LoadCaseError(f"{specimen.label} sets {given}: {exc}") from None


@dataclass
class Prepared:
    """A case prepared on a specimen's model, ready for :func:`solve` (baseline and scenarios)."""

    case: LoadCase
    specimen: Specimen | None
    model: Model
    analysis: Analysis
    element_size_mm: float | None = None  # of a mesh built from a mask or a surface


def prepare_run(case: LoadCase | str | os.PathLike | Mapping[str, Any],
                bone: Specimen | Mapping[str, Any] | Model, *, progress: Progress | None = None) -> Prepared:
    """Case, model and prepared analysis of one bone (the part of :func:`run` before the solve)."""
    t0 = time.perf_counter()
    say = _say(progress, t0)
    case = as_case(case)
    if isinstance(bone, Model):
        specimen, model = None, bone
    else:
        specimen = as_specimen(bone)
        case = case_for(case, specimen)
        say(f"bone: {specimen.label}")
        model = specimen.model(case.material, progress=say)
        say(f"material: {model.mesh.n_cells} elements, E {model.young.min():.0f}-{model.young.max():.0f} MPa")
    say("frame, regions, caps and supports ...")  # a step of seconds on a whole bone: say it has begun
    an = prepare(case, model)
    say(f"regions: {', '.join(f'{k} {v.n_nodes} nodes' for k, v in an.regions.items())}")
    size = specimen.element_size() if specimen is not None and specimen.builds_mesh else None
    return Prepared(case, specimen, model, an, size)


def solve(prep: Prepared, *, model: Model | None = None, subject: Subject | None = None, nonlinear: bool = False,
          progress: Progress | None = None) -> Result:
    """Solve a prepared run (optionally on a model with new density): stiffness, strength (with the
    subject attached), nonlinear strength when asked."""
    t0 = time.perf_counter()
    say = _say(progress, t0)
    say(f"solving ({prep.analysis.model.mesh.n_cells} elements, solver {prep.case.solver.method}) ...")
    res = prep.analysis.solve(model=model, subject=subject, strength=False)
    stiff = f", stiffness {res.stiffness_N_per_mm:.0f} N/mm" if res.stiffness_N_per_mm is not None else ""
    say(f"solved: {res.solver.n_dofs} DOFs, {res.solver.method}{stiff}")
    res.evaluate_strength()
    say(f"strength: linear {res.linear.strength_N:.0f} N ({res.linear.criterion})")
    if nonlinear:
        run_nonlinear(prep.analysis, res, progress=say)
        nl = res.strength_summary.get("strength_nonlinear_N")
        say(f"nonlinear strength {nl:.0f} N" if nl is not None else "nonlinear strength not reached")
    if prep.specimen is not None:
        res.extra["specimen"] = prep.specimen.to_dict()
    if prep.element_size_mm is not None:
        res.extra["element_size_mm"] = prep.element_size_mm
    return res


def run(case: LoadCase | str | os.PathLike | Mapping[str, Any], specimen: Specimen | Mapping[str, Any] | Model, *,
        subject: Subject | None = None, nonlinear: bool = False, out: str | os.PathLike | None = None,
        overwrite: bool = False, progress: Progress | None = None, qc: str | os.PathLike | None = None) -> Result:
    """Run one load case on one bone and return the complete :class:`Result`.

    Parameters
    ----------
    case : a LoadCase, a TOML path, a preset name (``"sideways_fall"``) or a dict
    specimen : where the bone comes from (:class:`Specimen` or its ``[bone]`` table); a
        :class:`Model` is used as it is
    subject : sex, body mass and height (factor of risk, fragility classification)
    nonlinear : also run the nonlinear strength analysis
    out : folder for ``result.vtu`` and ``summary.json``, checked before any work and written
        whole (:func:`femur_fe.io.outdir.output_folder`)
    overwrite : replace an existing output folder written by femur_fe (else it is refused)
    progress : called with one line per stage (the CLI prints them); default: logging
    qc : PNG path of a picture of the prepared model (mesh coloured by modulus, regions, caps,
        load), written before the solve (:func:`femur_fe.viz.qc.write_qc_picture`; skipped with
        a logged warning when PyVista cannot render)

    Named warnings of every stage are in ``Result.warnings`` (and ``summary.json``).
    """
    if out is not None:
        check_output_dir(out, overwrite=overwrite)
    say = _say(progress, time.perf_counter())
    prep = prepare_run(case, specimen, progress=say)
    if qc is not None and write_qc_picture(prep.analysis, qc) is not None:
        say(f"QC picture: {Path(qc).name}")
    res = solve(prep, subject=subject, nonlinear=nonlinear, progress=say)
    if out is not None:
        with output_folder(out, overwrite=overwrite) as tmp:
            write_or_fallback(lambda d: write_result(res, d, nonlinear=nonlinear), tmp)
    return res


def write_result(res: Result, folder: str | os.PathLike, *, nonlinear: bool | None = None) -> Path:
    """Write a run folder: ``result.vtu``, ``summary.json``, ``fe_model.json`` (:meth:`Result.write`)
    and ``case.toml``, the run file that runs it again (:mod:`femur_fe.case.runfile`)."""
    out = res.write(folder)
    write_run_file(res, out, nonlinear=nonlinear)
    return out


def _say(progress: Progress | None, t0: float) -> Progress:
    """``progress`` with the time since ``t0`` appended to each line (a callback made here is
    returned as it is, so the stages of one run share one clock)."""
    if getattr(progress, "timed", False):
        return progress

    def say(msg: str) -> None:
        line = f"{msg} ({time.perf_counter() - t0:.1f} s)"
        if progress is None:
            log.info("%s", line)
        else:
            progress(line)
    say.timed = True  # type: ignore[attr-defined]
    return say
