"""Baseline-versus-therapy comparisons on one bone: the question femur_fe exists to answer.

A comparison file (TOML) names a load case, a bone (bundled or mesh + CT), the subject,
and ``[[scenario]]`` tables (:mod:`femur_fe.therapy.scenarios`)::

    schema_version = 1
    case = "sideways_fall"                 # preset name or path (relative to this file)
    [bone]
    bundled = "femur"                      # or: mesh = "femur.vtu", ct = "femur_qct.nii.gz"
    state = "osteoporotic"
    [subject]
    sex = "female"
    body_mass_kg = 65.0
    height_cm = 162.0
    [comparison]
    reference = "standard_care"
    time_points_months = [0, 3, 6, 9, 12]  # strength against time for time-dependent scenarios
    [[scenario]]
    name = "standard_care"
    ...

:func:`compare` solves the baseline and every scenario on the same prepared analysis
(regions, caps, sparsity pattern reused; only the moduli change), writes one result folder
per run, ``comparison.json``/``comparison.csv``, ``timecourse.csv`` and PNG plots.
"""
from __future__ import annotations

import csv
import io
import json
import logging
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from ..analysis.prepare import prepare, run_nonlinear
from ..analysis.subject import Subject
from ..bone.bundled import bundled_bone
from ..bone.calibration import DensityCalibration
from ..bone.model import Model
from ..case.loadcase import LoadCase, load_case
from ..case.presets import resolve_case_path
from ..errors import LoadCaseError, ScenarioError
from ..io import read_mesh, write_json_atomic, write_text_atomic
from ..io.toml_io import read_toml
from ..therapy.scenarios import (
    AnnualChange,
    Scenario,
    resolve_landmark,
    scenarios_from_dict,
)
from ..therapy.sensitivity import AnalysisSensitivity
from ..viz.report import write_comparison_report
from .table import ScenarioRecord, comparison_rows, format_table, write_comparison

log = logging.getLogger(__name__)

_TOP_KEYS = {"schema_version", "case", "bone", "subject", "comparison", "scenario", "case_values"}
_BONE_KEYS = {"bundled", "state", "side", "mesh", "ct", "units"}
_CMP_KEYS = {"reference", "time_points_months", "nonlinear", "outside"}


@dataclass
class ComparisonSpec:
    """A parsed comparison file (see the module docstring)."""

    case: Any
    mesh_path: Path
    ct_path: Path | None
    scenarios: list
    subject: Any = None
    reference: str | None = "standard_care"
    time_points_months: tuple[float, ...] = ()
    nonlinear: bool = False
    outside: str = "nearest"
    source: str = "<dict>"
    bone_label: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"case": self.case.to_dict(), "mesh": str(self.mesh_path),
                "ct": None if self.ct_path is None else str(self.ct_path),
                "subject": None if self.subject is None else self.subject.to_dict(),
                "reference": self.reference, "time_points_months": list(self.time_points_months),
                "nonlinear": self.nonlinear, "scenarios": [s.to_dict() for s in self.scenarios],
                "bone": self.bone_label}


def load_comparison(path_or_dict, *, base: Path | None = None) -> ComparisonSpec:
    """Read a comparison TOML (or dict); unknown keys are rejected with the allowed list."""
    if isinstance(path_or_dict, Mapping):
        data, src = dict(path_or_dict), "<dict>"
        base = base or Path.cwd()
    else:
        p = Path(path_or_dict)
        data = read_toml(p, LoadCaseError, "comparison file")
        src, base = str(p), p.parent
    unknown = sorted(set(data) - _TOP_KEYS)
    if unknown:
        raise LoadCaseError(f"{src}: unknown top-level key(s) {unknown}; allowed: {sorted(_TOP_KEYS)}")
    if data.get("schema_version", 1) != 1:
        raise LoadCaseError(f"{src}: schema_version {data.get('schema_version')} not supported (1)")
    case_ref = data.get("case")
    if case_ref is None:
        raise LoadCaseError(f"{src}: 'case' is required (a preset name such as 'sideways_fall' or a TOML path)")
    case = case_ref if isinstance(case_ref, LoadCase) else load_case(resolve_case_path(case_ref, base))
    if data.get("case_values"):
        case = case.with_values(dict(data["case_values"]))
    bone = dict(data.get("bone", {}))
    unknown = sorted(set(bone) - _BONE_KEYS)
    if unknown:
        raise LoadCaseError(f"{src}: [bone] unknown key(s) {unknown}; allowed: {sorted(_BONE_KEYS)}")
    if "bundled" in bone:
        if "mesh" in bone or "ct" in bone:
            raise LoadCaseError(f"{src}: [bone] give either bundled = ... or mesh/ct, not both")
        files = bundled_bone(bone["bundled"], state=bone.get("state", "osteoporotic"))
        mesh_path, ct_path = Path(files.mesh), Path(files.ct)
        label = f"bundled {bone['bundled']} ({bone.get('state', 'osteoporotic')})"
        case = with_ct_calibration(case, files.calibration)
    elif "mesh" in bone:
        mesh_path = Path(bone["mesh"]) if Path(bone["mesh"]).is_absolute() else base / bone["mesh"]
        ct_path = None
        if "ct" in bone:
            ct_path = Path(bone["ct"]) if Path(bone["ct"]).is_absolute() else base / bone["ct"]
        label = str(mesh_path)
    else:
        raise LoadCaseError(f"{src}: [bone] needs bundled = 'femur'|'vertebra' (with state) or mesh = PATH "
                            "(and ct = PATH)")
    cmp = dict(data.get("comparison", {}))
    unknown = sorted(set(cmp) - _CMP_KEYS)
    if unknown:
        raise LoadCaseError(f"{src}: [comparison] unknown key(s) {unknown}; allowed: {sorted(_CMP_KEYS)}")
    times = tuple(float(t) for t in cmp.get("time_points_months", ()))
    if any(t < 0 for t in times) or list(times) != sorted(times):
        raise LoadCaseError(f"{src}: time_points_months must be increasing and >= 0, got {list(times)}")
    scenarios = scenarios_from_dict({"scenario": data.get("scenario", [])}) if data.get("scenario") else []
    if not scenarios:
        raise ScenarioError(f"{src}: no [[scenario]] tables; add at least one scenario to compare with the baseline")
    return ComparisonSpec(case, mesh_path, ct_path, scenarios, Subject.from_dict(data.get("subject")),
                          cmp.get("reference", "standard_care"), times, bool(cmp.get("nonlinear", False)),
                          str(cmp.get("outside", "nearest")), src, label)


def with_ct_calibration(case, calibration_json: str | os.PathLike):
    """``case`` with ``[material.calibration]`` set from a calibration JSON (HU -> mineral density).

    The JSON is the :meth:`femur_fe.bone.DensityCalibration.to_dict` of the scanner/phantom (the
    bundled bones ship one next to their synthetic QCT).
    """

    cal = DensityCalibration.from_dict(json.loads(Path(calibration_json).read_text(encoding="utf-8")))
    d = cal.to_dict()
    values = {"material.calibration.ct_unit": "HU", "material.calibration.slope": float(d["slope"]),
              "material.calibration.intercept": float(d["intercept"]), "material.calibration.unit": d["unit"]}
    if d.get("mineral"):
        values["material.calibration.mineral"] = d["mineral"]
    values["material.calibration.source"] = str(d.get("source") or Path(calibration_json).name)
    return case.with_values(values)


@dataclass
class ComparisonResult:
    """What :func:`compare` produced."""

    rows: list
    baseline: Any
    results: dict
    outcomes: dict
    timecourse: list = field(default_factory=list)
    files: dict = field(default_factory=dict)
    seconds: float = 0.0

    def table(self) -> str:
        return format_table(self.rows)


def anatomical_zones(frame, mesh, bone: str) -> tuple[list[str], np.ndarray]:
    """Zone names and a zone index per element: nearest anatomical landmark (Voronoi).

    Femur: head (head centre), neck (neck centre), trochanteric (intertrochanteric point),
    shaft (shaft point). Vertebra: anterior body, central body, posterior (posterior elements
    side, one body depth behind the centre).
    """
    if bone == "femur":
        pts = {"head": resolve_landmark(frame, "femoral_head_centre"),
               "neck": resolve_landmark(frame, "femoral_neck_centre"),
               "trochanteric": resolve_landmark(frame, "intertrochanteric"),
               "shaft": np.asarray(frame.shaft_point, dtype=float)}
    else:
        c, a = np.asarray(frame.body_centre, dtype=float), np.asarray(frame.anterior, dtype=float)
        pts = {"anterior_body": c + 0.35 * frame.depth_mm * a, "central_body": c,
               "posterior": c - 1.0 * frame.depth_mm * a}
    names = list(pts)
    cen = mesh.cell_centroids()
    d = np.stack([np.linalg.norm(cen - pts[n], axis=1) for n in names], axis=1)
    return names, np.argmin(d, axis=1)


def region_contributions(delta_rho, d_strength, strength_scale: float, volumes_mm3, zones, zone_of,
                         compartment) -> dict[str, Any]:
    """First-order (adjoint) contribution of each zone and compartment to a strength change.

    ``d_strength`` is the adjoint gradient of the smooth strength measure (N per g/cm^3);
    ``strength_scale`` rescales it to the linear strength of the result (ratio of the two
    measures at the baseline). Contributions are ``sum_e scale * dS/drho_e * delta_rho_e``
    over the elements of a zone; their total is a first-order estimate to compare with the FE
    change.
    """
    contrib = strength_scale * d_strength * delta_rho
    mass = delta_rho * volumes_mm3 / 1000.0
    out: dict[str, Any] = {"zones": {}, "compartments": {}, "first_order_total_N": float(contrib.sum())}
    for k, name in enumerate(zones):
        sel = zone_of == k
        out["zones"][name] = {"strength_N": float(contrib[sel].sum()), "added_mass_g": float(mass[sel].sum())}
    for name, sel in (("trabecular", ~compartment), ("cortical", compartment)):
        out["compartments"][name] = {"strength_N": float(contrib[sel].sum()), "added_mass_g": float(mass[sel].sum())}
    return out


def _strength(res, nonlinear: bool) -> float:
    if nonlinear and res.nonlinear is not None and res.strength_summary.get("strength_nonlinear_N"):
        return float(res.strength_summary["strength_nonlinear_N"])
    return float(res.linear.strength_N)


def _vbmd_g(model) -> float | None:
    v = model.integral_vbmd_mg_cm3()
    return None if v is None else v / 1000.0


def _check_density_type(sc, model, law: str) -> None:
    """Raise ScenarioError unless the scenario works on the density type of the model's law.

    Scenario bounds and absolute gains (g/cm^3) depend on the density type, so an ash scenario
    applied to apparent densities would be capped at the wrong bound and add the wrong mass.
    """
    if sc.density_type != model.density_type:
        raise ScenarioError(f"scenario {sc.name!r} is written for {sc.density_type} density but the material "
                            f"law {law!r} works on {model.density_type} density; set "
                            f"density_type = {model.density_type!r} in the scenario (and give its g/cm^3 "
                            f"values as {model.density_type} density)")


def _spec_model(spec: ComparisonSpec, mesh):
    """The baseline model of a comparison (CT of [bone], or the mesh's density cell data)."""
    return Model.from_inputs(mesh, spec.case.material, ct_path=spec.ct_path, mesh_path=spec.mesh_path,
                             outside=spec.outside, missing_hint=f"{spec.mesh_path}: add ct = PATH to [bone]")


def compare(spec: ComparisonSpec | str | os.PathLike, out: str | os.PathLike, *,
            progress: Callable[[str], None] | None = None) -> ComparisonResult:
    """Run baseline and scenarios; write result folders, comparison files and plots into ``out``."""
    t_start = time.perf_counter()
    if not isinstance(spec, ComparisonSpec):
        spec = load_comparison(spec)
    say = progress or (lambda msg: log.info("%s", msg))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    n_steps = 3 + len(spec.scenarios) + sum(len([t for t in spec.time_points_months if s.months is None
                                                 or abs(t - s.months) > 1e-9])
                                            for s in spec.scenarios if s.time_dependent)
    step = [0]

    def tick(msg: str) -> None:
        step[0] += 1
        say(f"[{step[0]}/{n_steps}] {msg} ({time.perf_counter() - t_start:.1f} s)")

    case = spec.case
    mesh = read_mesh(spec.mesh_path)
    model = _spec_model(spec, mesh)
    for sc in spec.scenarios:
        _check_density_type(sc, model, case.material.law)
    tick(f"model: {mesh.n_cells} elements, {spec.bone_label}")
    an = prepare(case, model)

    def solve(m, name: str, months=None):
        res = an.solve(model=m, strength=False)
        res.subject = spec.subject
        res.evaluate_strength()
        if spec.nonlinear:
            run_nonlinear(an, res)
        res.extra["scenario"] = name
        if months is not None:
            res.extra["months"] = months
        return res

    base = solve(model, "baseline")

    sens = AnalysisSensitivity(an, model).evaluate(model.density)
    base.cell_fields.update(sens.fields())
    # the smooth p-norm strength and the criterion's strength differ; scale the gradient to the latter
    s_scale = _strength(base, False) / sens.strength_N if sens.strength_N > 0 else 0.0
    zones, zone_of = anatomical_zones(an.frame, mesh, case.bone)
    cortical = (model.qct_density if model.qct_density is not None else model.density) >= 0.35
    base.write(out / "baseline")
    tick(f"baseline: strength {_strength(base, spec.nonlinear):.0f} N, stiffness {base.stiffness_N_per_mm:.0f} N/mm")
    records = []
    extras: dict[str, dict] = {"baseline": {"trabecular_vbmd_mg_cm3": model.trabecular_vbmd_mg_cm3()}}
    results, outcomes = {"baseline": base}, {}
    vol = mesh.cell_volumes()
    timecourse = [{"scenario": "baseline", "months": 0.0, "strength_N": _strength(base, spec.nonlinear),
                   "stiffness_N_per_mm": base.stiffness_N_per_mm, "added_mass_g": 0.0}]
    for sc in spec.scenarios:
        oc = sc.apply(model.density, mesh, an.frame, volumes_mm3=vol)
        m2 = model.with_density(oc.density)
        res = solve(m2, sc.name, oc.t_months)
        res.extra["scenario_outcome"] = oc.to_dict()
        contrib = region_contributions(oc.density - model.density, sens.d_strength, s_scale, vol, zones, zone_of,
                                       cortical)
        contrib["fe_change_N"] = _strength(res, False) - _strength(base, False)
        res.extra["strength_contributions"] = contrib
        res.cell_fields["density_change"] = oc.density - model.density
        res.write(out / sc.name)
        results[sc.name], outcomes[sc.name] = res, oc
        records.append(ScenarioRecord(sc.name, _strength(res, spec.nonlinear), res.stiffness_N_per_mm,
                                      _vbmd_g(m2), oc.added_mass_g, oc.t_months))
        extras[sc.name] = {"trabecular_vbmd_mg_cm3": m2.trabecular_vbmd_mg_cm3(), "contributions": contrib}
        tick(f"{sc.name}: strength {_strength(res, spec.nonlinear):.0f} N, bone added {oc.added_mass_g:+.2f} g")
        if sc.time_dependent:
            for t in spec.time_points_months:
                if oc.t_months is not None and abs(t - oc.t_months) < 1e-9:  # already solved above
                    oct_, r_t = oc, res
                else:
                    oct_ = sc.apply(model.density, mesh, an.frame, t_months=t, volumes_mm3=vol, warn_capped=False)
                    r_t = solve(model.with_density(oct_.density), sc.name, t)
                    tick(f"{sc.name} at {t:g} months: strength {_strength(r_t, spec.nonlinear):.0f} N")
                timecourse.append({"scenario": sc.name, "months": t, "strength_N": _strength(r_t, spec.nonlinear),
                                   "stiffness_N_per_mm": r_t.stiffness_N_per_mm, "added_mass_g": oct_.added_mass_g})
    base_rec = ScenarioRecord("baseline", _strength(base, spec.nonlinear), base.stiffness_N_per_mm, _vbmd_g(model),
                              0.0, 0.0)
    ref = spec.reference if any(s.name == spec.reference for s in spec.scenarios) else None
    rows = comparison_rows(base_rec, records, reference=ref)
    for row in rows:  # factor of risk and classification per run
        summ = results[row["scenario"]].strength_summary
        row["factor_of_risk"] = summ.get("factor_of_risk")
        cls = summ.get("classification") or {}
        row["classification"] = cls.get("label")
        row["trabecular_vbmd_mg_cm3"] = extras[row["scenario"]]["trabecular_vbmd_mg_cm3"]
        if "contributions" in extras[row["scenario"]]:
            row["strength_contributions"] = extras[row["scenario"]]["contributions"]
    meta = {"spec": spec.to_dict(), "strength_definition": "nonlinear" if spec.nonlinear else "linear",
            "zones": zones, "contribution_method": region_contributions.__doc__.split("\n\n")[1].strip(),
            "criterion": base.strength_summary.get("criterion"), "source": spec.source}
    jpath, cpath = write_comparison(rows, out, meta=meta)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=["scenario", "months", "strength_N", "stiffness_N_per_mm", "added_mass_g"],
                       lineterminator="\n")
    w.writeheader()
    w.writerows(timecourse)
    tpath = write_text_atomic(out / "timecourse.csv", buf.getvalue())
    files = {"comparison_json": jpath, "comparison_csv": cpath, "timecourse_csv": tpath}
    files.update(write_comparison_report(out, progress=say))
    result = ComparisonResult(rows, base, results, outcomes, timecourse, files, time.perf_counter() - t_start)
    write_json_atomic(out / "run_info.json", {"seconds": result.seconds, "files": {k: str(v) for k, v in files.items()}})
    tick("comparison written")
    return result


def fit_annual_rate(spec: ComparisonSpec | str | os.PathLike, scenario: str, target_percent: float, *,
                    tol_percent: float = 0.01, max_iter: int = 8) -> tuple[float, float]:
    """Fit the ``percent_per_year`` of a one-operator ``annual_change`` scenario to a strength gain.

    Solves the baseline and the scenario at its ``months`` for trial rates (secant
    iterations) until the linear strength gain is ``target_percent`` within ``tol_percent``.
    Used for the demo's standard-care arm (+5.3 % hip FE strength at 12 months, Keaveny 2014).

    Returns (rate in %/yr, achieved gain in %).
    """

    if not isinstance(spec, ComparisonSpec):
        spec = load_comparison(spec)
    sc = next((s for s in spec.scenarios if s.name == scenario), None)
    if sc is None or len(sc.operators) != 1 or not isinstance(sc.operators[0], AnnualChange):
        raise ScenarioError(f"scenario {scenario!r} must exist and have exactly one annual_change operator")
    mesh = read_mesh(spec.mesh_path)
    model = _spec_model(spec, mesh)
    _check_density_type(sc, model, spec.case.material.law)
    an = prepare(spec.case, model)

    def strength(m) -> float:
        r = an.solve(model=m, strength=False)
        return float(r.evaluate_strength().strength_N)

    s0 = strength(model)
    op = sc.operators[0]

    def gain(rate: float) -> float:
        s = Scenario(sc.name, (replace(op, percent_per_year=rate, preset=None),), months=sc.months,
                     density_type=sc.density_type)
        oc = s.apply(model.density, mesh, an.frame)
        return 100.0 * (strength(model.with_density(oc.density)) / s0 - 1.0)

    r0, r1 = 0.0, max(abs(op.rate_percent_per_year), 1.0)
    g0, g1 = 0.0, gain(r1)
    for _ in range(max_iter):
        if abs(g1 - target_percent) <= tol_percent:
            break
        if g1 == g0:
            raise ScenarioError("the strength does not change with the rate; cannot fit")
        r0, r1, g0 = r1, r1 + (target_percent - g1) * (r1 - r0) / (g1 - g0), g1
        g1 = gain(r1)
    log.info("fitted %s: %.4f %%/yr gives %+.3f %% strength (target %+.3f %%)", scenario, r1, g1, target_percent)
    return r1, g1
