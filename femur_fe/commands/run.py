"""``femur-fe run CASE.toml --mesh M [--ct CT] [--mask MASK] --out DIR``: one load case, results on disk."""
from __future__ import annotations

import sys
from pathlib import Path

import tomllib

from ..analysis.prepare import prepare, run_nonlinear
from ..analysis.subject import Subject
from ..bone.bundled import bundled_bone
from ..bone.meshing import repair_surface, surface_from_mask, tetmesh_from_surface
from ..bone.model import Model
from ..bone.voxel import hexmesh_from_mask
from ..case.loadcase import load_case
from ..case.presets import resolve_case_path
from ..errors import LoadCaseError
from ..io import read_mesh
from ..io.ct import read_ct, read_mask
from ..io.surface import read_surface
from ..studies.compare import with_ct_calibration

SURFACE_SUFFIXES = (".stl", ".obj", ".ply", ".vtp")


def add_bone_arguments(p) -> None:
    """The bone-source options shared by ``run`` and ``regions`` (mesh, surface, mask, CT, --set)."""
    p.add_argument("case", help="load-case TOML file or preset name (e.g. sideways_fall)")
    p.add_argument("--mesh", help="volume mesh (.vtu/.msh/.inp...) or closed surface (.stl/.obj/.ply/.vtp)")
    p.add_argument("--ct", help="CT volume (NIfTI/NRRD/MHA/DICOM folder) for the material")
    p.add_argument("--ct-unit", choices=("HU", "mg/cm3", "g/cm3"),
                   help="unit of --ct (default: [material.calibration] ct_unit of the case)")
    p.add_argument("--mask", help="mask/label image: mesh the bone from it when --mesh is not given")
    p.add_argument("--label", type=int, action="append", help="label value(s) of --mask (default: any > 0)")
    p.add_argument("--mask-mesh", choices=("tet", "hex"), default="tet",
                   help="mesh built from --mask: tetrahedra from its surface or hex voxels (default %(default)s)")
    p.add_argument("--size", type=float, default=3.0, help="element size in mm when meshing (default %(default)s)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a case value by TOML key path, e.g. loading.adduction_deg=20 or "
                        "anatomy.head_centre_mm=[x,y,z]")


def register(sub) -> None:
    p = sub.add_parser("run", help="run a load case on a bone (mesh or surface, optionally a CT)",
                       description="Run a load case: writes DIR/result.vtu and DIR/summary.json.")
    add_bone_arguments(p)
    p.add_argument("--bundled", choices=("femur", "vertebra"),
                   help="use a bundled bone (mesh + synthetic QCT + its calibration) instead of --mesh/--ct")
    p.add_argument("--state", choices=("healthy", "osteopenic", "osteoporotic"), default="osteoporotic",
                   help="bone state of --bundled (default %(default)s)")
    p.add_argument("--calibration", help="HU -> mineral density calibration JSON (slope, intercept, unit); "
                                         "sets the case's [material.calibration] for an HU CT")
    p.add_argument("--out", "-o", required=True, help="output folder")
    p.add_argument("--nonlinear", action="store_true", help="also run the nonlinear strength analysis")
    p.add_argument("--sex", choices=("female", "male"), help="subject sex (fragility classification)")
    p.add_argument("--mass", type=float, help="body mass in kg (fall impact force, factor of risk)")
    p.add_argument("--height", type=float, help="height in cm (fall impact force, factor of risk)")
    p.set_defaults(func=run)


def _parse_value(text: str):
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def load_bone_mesh(args, case):
    """The bone mesh from --mesh (volume or surface) or from --mask (+ --ct)."""
    if args.mesh:
        path = Path(args.mesh)
        if path.suffix.lower() in SURFACE_SUFFIXES:
            surf, report = repair_surface(read_surface(path))
            return tetmesh_from_surface(surf, element_size=args.size)
        return read_mesh(path)
    if not args.mask:
        raise LoadCaseError("give the bone as --mesh FILE, or as --mask MASK (with --ct CT)")

    ref = read_ct(args.ct, unit=args.ct_unit or case.material.calibration.ct_unit) if args.ct else None
    label = args.label if args.label else None
    mask = read_mask(args.mask, label=label if label is None or len(label) > 1 else label[0], reference=ref)
    if args.mask_mesh == "hex":
        geom = ref if ref is not None else read_ct(args.mask, unit="mg/cm3", check_unit=False)
        spacing = float(min(geom.spacing))
        return hexmesh_from_mask(mask, geom, coarsen=max(1, int(round(args.size / spacing))))

    geom = ref if ref is not None else read_ct(args.mask, unit="mg/cm3", check_unit=False)
    return tetmesh_from_surface(surface_from_mask(mask, geom.affine), element_size=args.size)


def case_from_args(args):
    """The load case of ``args.case`` with the ``--set KEY=VALUE`` overrides applied."""
    case = load_case(resolve_case_path(args.case))
    if args.set:
        values = {}
        for item in args.set:
            if "=" not in item:
                raise LoadCaseError(f"--set {item!r}: use KEY=VALUE, e.g. loading.adduction_deg=20")
            k, v = item.split("=", 1)
            values[k.strip()] = _parse_value(v.strip())
        case = case.with_values(values)
    return case


def run(args) -> int:
    case = case_from_args(args)
    if args.bundled:
        if args.mesh or args.ct or args.mask:
            raise LoadCaseError("--bundled replaces --mesh/--ct/--mask: give one or the other")
        files = bundled_bone(args.bundled, args.state)
        args.mesh, args.ct = str(files.mesh), str(files.ct)
        args.calibration = args.calibration or str(files.calibration)
    if args.calibration:
        case = with_ct_calibration(case, args.calibration)
    mesh = load_bone_mesh(args, case)
    model = Model.from_inputs(mesh, case.material, ct_path=args.ct, ct_unit=args.ct_unit, mesh_path=args.mesh,
                              missing_hint="give --ct CT (or --bundled)")
    subject = Subject(args.sex, args.mass, args.height) if args.sex else None
    if (args.mass or args.height) and not args.sex:
        raise LoadCaseError("--mass/--height need --sex as well (female or male)")
    an = prepare(case, model)
    res = an.solve(strength=False)
    res.subject = subject
    res.evaluate_strength()
    if args.nonlinear:
        run_nonlinear(an, res)
    out = res.write(args.out)
    s = res.summary()
    print(f"{case.name}: {mesh.n_cells} elements, {s['n_dofs']} DOFs, solver {s['solver']['method']} "
          f"({s['solver']['setup_seconds'] + s['solver']['solve_seconds']:.1f} s)")
    if res.stiffness_N_per_mm is not None:
        print(f"  stiffness           {res.stiffness_N_per_mm:10.1f} N/mm")
    for reg, f in s["reaction_forces_N"].items():
        print(f"  reaction {reg:<18s} [{f[0]:9.1f} {f[1]:9.1f} {f[2]:9.1f}] N")
    crit = s.get("criterion") or {}
    print(f"  linear strength     {s['strength_linear_N']:10.1f} N  ({crit.get('name')}: {crit.get('parameters')})")
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
    if s.get("factor_of_risk") is not None:
        print(f"  factor of risk      {s['factor_of_risk']:10.2f}")
    c = s.get("classification")
    if c:
        print(f"  classification      {c['label']} (threshold {c['threshold_N']:.0f} N, {c['site']}, {c['sex']}; "
              f"{c['source'].split(';')[0]})")
        print(f"  strength used       {s.get('strength_used')}")
    if s.get("strength_used_note") and (c or s.get("factor_of_risk") is not None):
        print(f"  note: {s['strength_used_note']}")
    print(f"  written: {out / 'result.vtu'}, {out / 'summary.json'}", file=sys.stdout)
    return 0
