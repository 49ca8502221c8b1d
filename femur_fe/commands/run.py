"""``femur-fe run CASE --mesh M | --ct CT --mask MASK | --bundled BONE -o DIR``: one load case, results on disk."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import tomllib

from ..analysis.risk import SUBJECT_INPUTS
from ..analysis.strengths import format_strengths
from ..analysis.subject import Subject
from ..bone.specimen import MESH_TYPES, UNITS, Specimen
from ..case.runfile import is_run_file, load_run_file
from ..diagnostics import merged
from ..errors import LoadCaseError
from ..io.outdir import output_folder, write_or_fallback
from ..io.toml_io import read_toml
from ..studies.meshcheck import check_mesh, format_mesh_check
from ..studies.run import as_case, case_for
from ..studies.run import run as run_case
from ..studies.run import write_result

#: [bone] keys and the options that set them
BONE_OPTIONS = {"bundled": "--bundled", "state": "--state", "mesh": "--mesh", "ct": "--ct", "ct_unit": "--ct-unit",
                "mask": "--mask", "labels": "--label", "mesh_type": "--mask-mesh", "element_size_mm": "--size",
                "calibration": "--calibration", "units": "--units"}


def add_bone_arguments(p) -> None:
    """The options that describe a bone (the keys of a ``[bone]`` table; see docs/schemas.md)."""
    g = p.add_argument_group("bone (the keys of a [bone] table)")
    g.add_argument("--bone", metavar="BONE.toml", help="a TOML file with a [bone] table (the options below override it)")
    g.add_argument("--bundled", choices=("femur", "vertebra"),
                   help="a bundled bone (mesh + synthetic QCT + its scanner calibration)")
    g.add_argument("--state", choices=("healthy", "osteopenic", "osteoporotic"),
                   help="bone state of --bundled (default osteoporotic)")
    g.add_argument("--mesh", help="volume mesh (.vtu/.msh/.inp...) or closed surface (.stl/.obj/.ply/.vtp)")
    g.add_argument("--ct", help="CT volume (NIfTI/NRRD/MHA/DICOM folder) for the material")
    g.add_argument("--ct-unit", choices=("HU", "mg/cm3", "g/cm3"),
                   help="unit of --ct (default: [material.calibration] ct_unit of the case)")
    g.add_argument("--calibration", help="HU -> density: 'internal' (phantomless, from the scan's air, fat, "
                                         "muscle, blood and cortical bone) or a phantom calibration JSON "
                                         "(slope, intercept, unit, mineral; docs/schemas.md)")
    g.add_argument("--mask", help="label image on the CT grid (e.g. a TotalSegmentator mask): the bone is meshed "
                                  "from it")
    g.add_argument("--label", type=int, action="append", help="label value(s) of --mask to keep (default: any > 0)")
    g.add_argument("--mask-mesh", choices=MESH_TYPES,
                   help="mesh built from --mask: tetrahedra from its surface or hex voxels (default tet)")
    g.add_argument("--size", type=float, help="element size in mm when meshing a mask or a surface")
    g.add_argument("--density", type=float, metavar="G_CM3",
                   help="uniform density (g/cm^3 of the material law's density type) for a mesh without CT")
    g.add_argument("--units", choices=UNITS, help="length unit of --mesh (default auto: metres detected and converted)")


def specimen_from_args(args, case=None) -> Specimen:
    """The Specimen the bone options describe (a --bone file first, the options over it)."""
    table: dict[str, Any] = {}
    base = None
    if args.bone:
        data = read_toml(args.bone, LoadCaseError, "bone file")
        table = dict(data.get("bone", data))
        base = Path(args.bone).parent
    given = {k: getattr(args, opt[2:].replace("-", "_")) for k, opt in BONE_OPTIONS.items()}
    if given["labels"] is not None:
        given["labels"] = list(given["labels"])
    for k, v in given.items():
        if v is None:
            continue
        if k in ("mesh", "ct", "mask") or (k == "calibration" and v != "internal"):
            v = str(Path(v).resolve())  # given on the command line: relative to the working folder
        table[k] = v
    if args.density is not None:
        if case is None:
            raise LoadCaseError("--density needs the load case (its material law gives the density type)")
        table["density"] = {"density_type": case.material.build().density_type, "uniform_g_cm3": args.density}
    return Specimen.from_dict(table, base=base, source=args.bone or "command line")


def register(sub) -> None:
    p = sub.add_parser("run", help="run a load case on a bone (bundled, mesh or surface, CT + mask)",
                       description="Run a load case: writes DIR/result.vtu and DIR/summary.json.")
    p.add_argument("case", help="load-case TOML file or preset name (e.g. sideways_fall), or the case.toml of a "
                                "run folder (runs it again: its bone and subject unless options replace them)")
    add_bone_arguments(p)
    p.add_argument("--out", "-o", required=True, help="output folder (written whole: an existing one is refused "
                                                      "unless --overwrite)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing output folder written by femur_fe (whole, never mixed)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a case value by TOML key path, e.g. loading.adduction_deg=20")
    p.add_argument("--nonlinear", action="store_true", help="also run the nonlinear strength analysis")
    p.add_argument("--qc", action=argparse.BooleanOptionalAction, default=True,
                   help="write DIR/qc.png before the solve: the mesh coloured by modulus, the load and support "
                        "regions, the caps (PyVista off-screen, under a second; skipped with a warning when it "
                        "cannot render; default on)")
    p.add_argument("--check-mesh", action="store_true",
                   help="run again with elements 0.7x the size and report the change of stiffness and strength "
                        "(summary.json mesh_check; a warning beyond 5 %% / 10 %%)")
    p.add_argument("--sex", choices=("female", "male"), help="subject sex (fragility classification)")
    p.add_argument("--mass", type=float, help="body mass in kg (fall impact force, factor of risk)")
    p.add_argument("--height", type=float, help="height in cm (fall impact force, factor of risk)")
    p.set_defaults(func=run)


def parse_value(text: str):
    """A ``--set`` value: TOML syntax (numbers, booleans, arrays, quoted strings), else the bare text."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def case_with_sets(case_arg: str, sets: list[str], specimen: Specimen | None = None):
    """The load case of ``case_arg`` (path or preset) with the ``--set KEY=VALUE`` overrides; with a
    specimen, its calibration (``--calibration``, ``--ct-unit``) is applied first, so that ``--set``
    refines it (e.g. ``material.calibration.tissue_hu.muscle=40`` with ``--calibration internal``)."""
    case = as_case(case_arg)
    if specimen is not None:
        case = case_for(case, specimen)
    if sets:
        values = {}
        for item in sets:
            if "=" not in item:
                raise LoadCaseError(f"--set {item!r}: use KEY=VALUE, e.g. loading.adduction_deg=20")
            k, v = item.split("=", 1)
            values[k.strip()] = parse_value(v.strip())
        if any(k.startswith("material.calibration.tissue_hu") for k in values):
            # tissue HUs are the input of the internal calibration: they imply it
            values.setdefault("material.calibration.method", "internal")
            values.setdefault("material.calibration.ct_unit", "HU")
        try:
            case = case.with_values(values)
        except LoadCaseError as exc:
            raise LoadCaseError(f"--set {' --set '.join(sets)}: {exc}") from None
    return case


def case_and_specimen(args) -> tuple[Any, Specimen]:
    """The case of ``args.case`` with the bone's calibration and the ``--set`` values, and the bone."""
    specimen = specimen_from_args(args, case_with_sets(args.case, args.set) if args.density is not None else None)
    return case_with_sets(args.case, args.set, specimen), specimen


def subject_from_args(args) -> Subject | None:
    if (args.mass or args.height) and not args.sex:
        raise LoadCaseError("--mass/--height need --sex as well (female or male)")
    if (args.mass is None) != (args.height is None):
        raise LoadCaseError("--mass and --height go together (the fall impact force needs both); give both or neither")
    return Subject(args.sex, args.mass, args.height) if args.sex else None


def progress_printer(quiet: bool = False):
    """A progress callback printing ``  line (T s)`` to stderr, T since its creation (None when quiet)."""
    if quiet:
        return lambda msg: None
    t0 = time.perf_counter()
    return lambda msg: print(f"  {msg} ({time.perf_counter() - t0:.1f} s)", file=sys.stderr, flush=True)


def print_warnings(warnings, indent: str = "  ") -> None:
    """The named warnings of a run, after its numbers (they are in summary.json too)."""
    ws = merged(warnings)
    if ws:
        print(f"{indent}warnings ({len(ws)}, also in summary.json \"warnings\"):")
        for w in ws:
            print(f"{indent}  {w.name}: {w.message}")


def not_computed_line(missing: dict) -> str:
    """One line naming what was not computed for lack of subject data, and the options that give it
    (summary.json ``not_computed``); empty when nothing an option can give is missing."""
    names = {"classification": "classification", "factor_of_risk": "factor of risk"}
    parts = [f"{names.get(k, k)} needs {', '.join(SUBJECT_INPUTS[n][0] for n in v['needs'])}"
             for k, v in missing.items() if v.get("needs")]
    if not parts:
        return ""
    return f"not computed: {'; '.join(parts)} (summary.json \"not_computed\")"


def input_files(specimen: Specimen, case_arg: str | None = None) -> list[Path]:
    """The files a run reads (an output folder must not hold them when it is replaced)."""
    try:
        files = [] if specimen.bundled else list(specimen.files().values())
    except FileNotFoundError:
        files = []
    if case_arg and Path(case_arg).exists():
        files.append(Path(case_arg))
    return files


def run(args) -> int:
    again = load_run_file(args.case) if is_run_file(args.case) else None
    bone_given = args.bone or args.density is not None or any(
        getattr(args, opt[2:].replace("-", "_")) is not None for opt in BONE_OPTIONS.values())
    if again is not None and not bone_given:
        specimen = again.specimen
        case = case_with_sets(args.case, args.set, specimen)
    else:
        case, specimen = case_and_specimen(args)
    subject = subject_from_args(args) or (again.subject if again is not None else None)
    if again is not None and again.nonlinear:
        args.nonlinear = True
    with output_folder(args.out, overwrite=args.overwrite, kind="run", inputs=input_files(specimen, args.case)) as tmp:
        res = run_case(case, specimen, subject=subject, nonlinear=args.nonlinear, out=None,
                       progress=lambda line: print(f"  {line}", flush=True),
                       qc=Path(tmp) / "qc.png" if args.qc else None)
        if args.check_mesh:
            check_mesh(case, specimen, res, subject=subject, nonlinear=args.nonlinear,
                       progress=lambda line: print(f"  {line}", flush=True))
        write_or_fallback(lambda d: write_result(res, d, nonlinear=args.nonlinear), tmp)
    out = Path(args.out)
    s = res.summary()
    print(f"{s['case_name']}: {s['n_elements']} elements, {s['n_dofs']} DOFs, solver {s['solver']['method']} "
          f"({s['solver']['setup_seconds'] + s['solver']['solve_seconds']:.1f} s)")
    cal = s["material"].get("calibration") or {}
    if cal.get("method") == "internal":
        print(f"  calibration         internal: {cal['effective_energy_kev']:.0f} keV, R^2 {cal['r_squared']:.5f}, "
              f"tissues {', '.join(cal.get('tissues_used', []))}")
    elif cal.get("method") == "linear":
        print(f"  calibration         {cal.get('slope')} x HU + {cal.get('intercept')} {cal.get('unit')}")
    if res.stiffness_N_per_mm is not None:
        print(f"  stiffness           {res.stiffness_N_per_mm:10.1f} N/mm")
    for reg, f in s["reaction_forces_N"].items():
        print(f"  reaction {reg:<18s} [{f[0]:9.1f} {f[1]:9.1f} {f[2]:9.1f}] N")
    crit = s.get("criterion") or {}
    params = ", ".join(f"{k} {v}" for k, v in (crit.get("parameters") or {}).items())
    detail = f"{crit.get('name')}: {params}" if params else f"{crit.get('name')}"
    print(f"  linear strength     {s['strength_linear_N']:10.1f} N  ({detail})")
    if s.get("strength_nonlinear_N") is not None:
        nls = s.get("nonlinear") or {}
        how = "peak of the curve"
        if nls.get("endpoint_mm") is not None:
            how = f"max force up to {nls['endpoint_mm']:.2f} mm"
            if nls.get("endpoint_percent") is not None:
                how += f" = {nls['endpoint_percent']:g} % of {nls['characteristic_length_mm']:.1f} mm"
        print(f"  nonlinear strength  {s['strength_nonlinear_N']:10.1f} N  ({how})")
    elif args.nonlinear:
        print("  nonlinear strength  not reached (see summary.json 'nonlinear': the last converged step is kept)")
    if len(s.get("strengths") or {}) > 1:
        print("  strengths (summary.json \"strengths\"):")
        for line in format_strengths(s["strengths"]):
            print(f"    {line}")
    if s.get("factor_of_risk") is not None:
        print(f"  factor of risk      {s['factor_of_risk']:10.2f}")
    c = s.get("classification")
    if c:
        print(f"  classification      {c['label']} (threshold {c['threshold_N']:.0f} N, {c['site']}, {c['sex']}; "
              f"{c['source'].split(';')[0]})")
        print(f"  strength used       {s.get('strength_used')}")
    if s.get("strength_used_note") and (c or s.get("factor_of_risk") is not None):
        print(f"  note: {s['strength_used_note']}")
    line = not_computed_line(s.get("not_computed") or {})
    if line:
        print(f"  {line}")
    if s.get("mesh_check"):
        print(f"  {format_mesh_check(s['mesh_check'])}")
    print_warnings(res.warnings)
    print(f"  written: {out / 'result.vtu'}, {out / 'summary.json'}, {out / 'case.toml'} (runs again: "
          f"femur-fe run {out / 'case.toml'} -o OUT)", file=sys.stdout)
    return 0
