"""Real bones end to end through the command line: the README's real-bones table.

Every row is one ``femur-fe run`` in a fresh process (``python -m femur_fe.commands.cli``) with the
default settings: the element size of the size rule (``Specimen.element_size``), ``--calibration
internal`` for the CT in HU, ``--check-mesh`` (the same run at 0.7x the element size) and an example
subject for the factor of risk. The shared data are read from ``../shared/data`` (or
``$FEMUR_FE_SHARED/data``):

* ``ct_totalseg_example``: clinical CT in HU (3 mm) with TotalSegmentator masks: the right femur
  (sideways fall, stance), L1-L5 (compression, linear and nonlinear) and the left femur, whose
  implant must be refused;
* ``ct_verse004_L2_density``: VerSe L2, 1 mm, calibrated to K2HPO4 mg/cm^3 (Ogo); labels 1-4 are the
  bone (body and posterior process, trabecular and cortical), 5 and 6 the PMMA caps of the
  upstream FE model, which the preset builds itself;
* the gias3 hip CT crop (``pip install --no-deps gias3.examples``): 60^3 voxels in HU without
  geometry; 1 mm voxels are assumed and the femur is segmented by a threshold here;
* ``femur_gfxmorph/femur.stl`` (surface only) with the density of ``FEMUR_DENSITY``.

Options: ``--rows`` picks rows, ``--no-check-mesh`` skips the refinement, ``--sizes 3,2.1,1.5``
runs the convergence study (each CT bone at each size, linear), ``--pose`` runs the right femur
moved, rotated and mirrored (the CT and every mask moved with it, through the image geometry, so
no voxel is interpolated) and compares the sideways-fall strength. Timing: wall and CPU seconds
of each run (the CPU time of the process tree), the load average, and the ratio to a reference
run of the bundled vertebra in the same script. ``OPENBLAS_NUM_THREADS=1`` is set for the runs.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("FEMUR_FE_SHARED", ROOT.parent / "shared")) / "data"
CT_DIR = SHARED / "ct_totalseg_example"
VERSE = SHARED / "ct_verse004_L2_density"

#: example subject of the factor-of-risk column (a woman of average build): the sideways-fall
#: impact force comes from her mass and height (femur_fe.analysis.subject)
SUBJECT = ["--sex", "female", "--mass", "70", "--height", "165"]

#: density of the femur STL (apparent density, the density of the sideways-fall law, Morgan 2003
#: femoral neck E = 6850 rho_app^1.49): a cortical shell of 3 mm (femoral-shaft cortex, thinner
#: at the neck) at 1.85 g/cm^3, the wet apparent density of human cortical bone (Carter & Hayes
#: 1977, J Bone Joint Surg Am 59:954 [M]; E = 17.1 GPa with the law above), around a trabecular
#: core at 0.40 g/cm^3 (the Bologna chain of the preset from a proximal-femur trabecular QCT
#: density of 0.19 g/cm^3 K2HPO4: ash = 0.877 x 0.19 + 0.0789 = 0.246, apparent = ash / 0.6)
FEMUR_DENSITY = {"density_type": "apparent", "cortical_g_cm3": 1.85, "trabecular_g_cm3": 0.40,
                 "cortical_thickness_mm": 3.0}

#: published ranges of whole-bone strength and lumbar stiffness (N, N/mm)
FEMUR_STRENGTH_N = (1500.0, 8000.0)
VERTEBRA_STRENGTH_N = (1500.0, 10000.0)
LUMBAR_STIFFNESS_N_MM = (5000.0, 40000.0)


@dataclass
class Row:
    """One ``femur-fe run``."""

    name: str
    case: str
    args: list[str]
    bone: str  # "femur" | "vertebra"
    expect_refusal: str | None = None  # a substring of the one-line error the run must end with
    notes: list[str] = field(default_factory=list)


@dataclass
class Outcome:
    row: Row
    rc: int
    wall_s: float
    cpu_s: float
    stdout: str
    stderr: str
    summary: dict | None

    @property
    def error(self) -> str:
        lines = [ln for ln in self.stderr.splitlines() if "error:" in ln]
        return lines[-1].split("error:", 1)[1].strip() if lines else self.stderr.strip()[-300:]


def cli(args: list[str], out: Path, row: Row | None = None) -> Outcome:
    """Run ``femur-fe ARGS -o OUT`` in a fresh process; wall and CPU time of the child."""
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1")
    if out.exists():
        shutil.rmtree(out)  # a run folder of this script from an earlier run
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    out.parent.mkdir(parents=True, exist_ok=True)
    # started in the work folder: `-m femur_fe` imports the installed package, not a source tree in the cwd
    proc = subprocess.run([sys.executable, "-m", "femur_fe.commands.cli", *args, "-o", str(out)],
                          capture_output=True, text=True, encoding="utf-8", env=env, cwd=out.parent)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    summary = None
    if proc.returncode == 0 and (out / "summary.json").exists():
        summary = json.loads((out / "summary.json").read_text())
    row = row or Row(out.name, args[1], args, "")
    return Outcome(row, proc.returncode, wall, cpu, proc.stdout, proc.stderr, summary)


# ----------------------------------------------------------------------------- inputs made here
def femur_bone_toml(work: Path) -> Path:
    """``[bone]`` table of the femur STL with FEMUR_DENSITY."""
    p = work / "femur_stl_bone.toml"
    dens = "\n".join(f"{k} = {json.dumps(v)}" for k, v in FEMUR_DENSITY.items())
    p.write_text(f'[bone]\nmesh = "{SHARED / "femur_gfxmorph" / "femur.stl"}"\nname = "femur.stl"\n'
                 f"[bone.density]\n{dens}\n")
    return p


def gias3_inputs(work: Path) -> tuple[Path, Path] | None:
    """The gias3 hip crop as NIfTI (1 mm voxels assumed) and a femur mask: voxels above 250 HU,
    holes filled, opened by one voxel to cut the thin joint space to the acetabulum, the
    component at the image centre (the femoral head), grown back within the threshold."""
    try:
        import gias3.examples as ge
    except ImportError:
        return None
    from scipy import ndimage as ndi

    import femur_fe as ff

    src = Path(list(ge.__path__)[0]) / "data" / "hip_test_image.npy"
    ct = ff.read_ct(src, spacing=(1.0, 1.0, 1.0))
    bone = ndi.binary_fill_holes(ct.array > 250.0)
    core = ndi.binary_opening(bone, iterations=1)
    lab, _ = ndi.label(core)
    centre = tuple(s // 2 for s in lab.shape)
    pick = lab[centre] if lab[centre] else np.bincount(lab.ravel())[1:].argmax() + 1
    femur = ndi.binary_dilation(lab == pick, iterations=1) & bone
    d = work / "gias3"
    ct_path = ff.io.write_ct(d / "hip_ct.nii.gz", ct)
    mask_path = ff.io.write_ct(d / "seg" / "femur.nii.gz",
                               ff.io.CTImage.from_array(femur.astype(np.uint8), ct.spacing, ct.origin,
                                                        ct.direction, unit="mg/cm3", check_unit=False))
    return ct_path, mask_path


def posed_inputs(work: Path, pose: str) -> tuple[Path, Path]:
    """The clinical CT and every mask of its folder moved (``"moved"``), rotated (``"rotated"``)
    or mirrored (``"mirrored"``) through the image geometry (origin and direction): the voxels
    are unchanged, the world positions move exactly with the bone."""
    import femur_fe as ff

    if pose == "moved":
        m, t = np.eye(3), np.array([120.0, -80.0, 45.0])
    elif pose == "rotated":
        axis = np.array([1.0, 2.0, 0.5]) / np.linalg.norm([1.0, 2.0, 0.5])
        a = np.radians(35.0)
        k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
        m, t = np.eye(3) + np.sin(a) * k + (1 - np.cos(a)) * k @ k, np.zeros(3)
    elif pose == "mirrored":
        m, t = np.diag([-1.0, 1.0, 1.0]), np.zeros(3)
    else:
        raise ValueError(pose)
    d = work / f"pose_{pose}"

    def moved(img):
        return ff.io.CTImage(img.array, img.spacing, m @ img.origin + t, m @ img.direction, img.unit, img.source)

    ct = ff.read_ct(CT_DIR / "example_ct.nii.gz")
    ct_path = ff.io.write_ct(d / "example_ct.nii.gz", moved(ct))
    for p in sorted((CT_DIR / "example_seg").glob("*.nii.gz")):
        lab = ff.read_ct(p, unit="mg/cm3", check_unit=False)
        ff.io.write_ct(d / "example_seg" / p.name, moved(lab))
    return ct_path, d / "example_seg" / "femur_right.nii.gz"


# ----------------------------------------------------------------------------- rows
def ct_args(mask: str, *extra: str) -> list[str]:
    return ["--ct", str(CT_DIR / "example_ct.nii.gz"), "--calibration", "internal",
            "--mask", str(CT_DIR / "example_seg" / mask), *extra]


def reduced_rows(work: Path) -> list[Row]:
    """The rows the tests run: L3 linear and the femur STL, both at the default element size."""
    return [Row("L3, compression", "vertebral_compression",
                ["run", "vertebral_compression", *ct_args("vertebrae_L3.nii.gz"), *SUBJECT], "vertebra"),
            Row("femur STL + stated density, sideways fall", "sideways_fall",
                ["run", "sideways_fall", "--bone", str(femur_bone_toml(work)), *SUBJECT], "femur")]


def rows(work: Path, check_mesh: bool = True) -> list[Row]:
    """The rows of the README table."""
    cm = ["--check-mesh"] if check_mesh else []
    out = [
        Row("right femur, sideways fall", "sideways_fall",
            ["run", "sideways_fall", *ct_args("femur_right.nii.gz"), *SUBJECT, *cm], "femur"),
        Row("right femur, stance", "stance", ["run", "stance", *ct_args("femur_right.nii.gz"), *SUBJECT, *cm],
            "femur"),
        Row("left femur (implant), sideways fall", "sideways_fall",
            ["run", "sideways_fall", *ct_args("femur_left.nii.gz"), *SUBJECT], "femur", expect_refusal="metal in"),
    ]
    for level in range(1, 6):
        out.append(Row(f"L{level}, compression", "vertebral_compression",
                       ["run", "vertebral_compression", *ct_args(f"vertebrae_L{level}.nii.gz"), *SUBJECT, *cm],
                       "vertebra"))
        out.append(Row(f"L{level}, compression, nonlinear", "vertebral_compression",
                       ["run", "vertebral_compression", *ct_args(f"vertebrae_L{level}.nii.gz"), *SUBJECT,
                        "--nonlinear", *cm], "vertebra"))
    verse = ["--ct", str(VERSE / "sub-verse004_0000_vertebra_21_im.nii.gz"), "--ct-unit", "mg/cm3",
             "--mask", str(VERSE / "sub-verse004_0000_vertebra_21_seg.nii.gz"),
             "--label", "1", "--label", "2", "--label", "3", "--label", "4"]
    out.append(Row("VerSe L2 (density CT), compression", "vertebral_compression",
                   ["run", "vertebral_compression", *verse, *SUBJECT, *cm], "vertebra"))
    out.append(Row("VerSe L2 (density CT), compression, nonlinear", "vertebral_compression",
                   ["run", "vertebral_compression", *verse, *SUBJECT, "--nonlinear", *cm], "vertebra"))
    gias = gias3_inputs(work)
    if gias is not None:
        # a 60 mm crop around the hip joint holds no air and no subcutaneous fat, so the internal
        # calibration has nothing to fit (and no femoral shaft for the frame): it must be refused
        out.append(Row("gias3 hip crop (1 mm assumed), sideways fall", "sideways_fall",
                       ["run", "sideways_fall", "--ct", str(gias[0]), "--calibration", "internal", "--mask",
                        str(gias[1]), *SUBJECT, *cm], "femur", expect_refusal="internal calibration: too few air"))
    out.append(Row("femur STL + stated density, sideways fall", "sideways_fall",
                   ["run", "sideways_fall", "--bone", str(femur_bone_toml(work)), *SUBJECT, *cm], "femur"))
    return out


def slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name).strip("_").lower()


def run_row(row: Row, work: Path) -> Outcome:
    return cli(row.args, work / "runs" / slug(row.name), row)


# ----------------------------------------------------------------------------- reporting
def strength_of(s: dict) -> tuple[float | None, str]:
    if s.get("strength_used") == "nonlinear":
        return s.get("strength_nonlinear_N"), "nonlinear"
    return s.get("strength_linear_N"), "linear"


def check(o: Outcome) -> list[str]:
    """The published ranges and checks this outcome fails (empty = passes)."""
    r, s = o.row, o.summary
    if r.expect_refusal:
        if o.rc == 0:
            return ["ran, but must be refused"]
        return [] if r.expect_refusal in o.error else [f"refused for another reason: {o.error}"]
    if o.rc != 0 or s is None:
        return [f"failed: {o.error}"]
    bad = []
    strength, _ = strength_of(s)
    lo, hi = FEMUR_STRENGTH_N if r.bone == "femur" else VERTEBRA_STRENGTH_N
    if strength is None or not lo <= strength <= hi:
        bad.append(f"strength {strength} outside {lo:.0f}-{hi:.0f} N")
    if r.name.startswith("L") and not LUMBAR_STIFFNESS_N_MM[0] <= s["stiffness_N_per_mm"] <= LUMBAR_STIFFNESS_N_MM[1]:
        bad.append(f"stiffness {s['stiffness_N_per_mm']:.0f} outside 5-40 kN/mm")
    mc = s.get("mesh_check")
    if mc:
        for w in s.get("warnings") or []:
            if w["name"].startswith("mesh_dependent"):
                bad.append(w["name"])
    return bad


def fmt(v, spec: str = ".0f", none: str = "–") -> str:
    return none if v is None else format(v, spec)


def table(outcomes: list[Outcome], ref: Outcome) -> str:
    head = ("| bone, load case | elements (size mm) | time s (CPU s) | / reference | stiffness N/mm | strength N "
            "(used) | factor of risk | 0.7x: stiffness, strength % |")
    lines = [head, "| " + " | ".join(["---"] * 8) + " |"]
    for o in outcomes:
        s = o.summary
        if s is None:
            msg = o.error if len(o.error) < 160 else o.error[:157] + "..."
            lines.append(f"| {o.row.name} | – | {o.wall_s:.1f} ({o.cpu_s:.1f}) | – | refused: {msg} | | | |")
            continue
        strength, used = strength_of(s)
        lin = s.get("strength_linear_N")
        st = f"{fmt(strength)} ({used})" + (f", linear {lin:.0f}" if used == "nonlinear" else "")
        mc = s.get("mesh_check") or {}
        size = s.get("element_size_mm")
        ch = (f"{fmt(mc.get('stiffness_change_percent'), '+.1f')}, {fmt(mc.get('strength_change_percent'), '+.1f')}"
              if mc else "–")
        lines.append(f"| {o.row.name} | {s['n_elements']} ({fmt(size, '.3g')}) | {o.wall_s:.1f} ({o.cpu_s:.1f}) | "
                     f"{o.wall_s / ref.wall_s:.1f} | {s['stiffness_N_per_mm']:.0f} | {st} | "
                     f"{fmt(s.get('factor_of_risk'), '.2f')} | {ch} |")
    return "\n".join(lines)


def convergence(work: Path, sizes: list[float], only: list[str] | None = None) -> None:
    """Linear stiffness and strength of each CT bone at each element size (the size rule's data)."""
    cases = [("femur_right", "sideways_fall", ct_args("femur_right.nii.gz"))]
    cases += [(f"L{i}", "vertebral_compression", ct_args(f"vertebrae_L{i}.nii.gz")) for i in range(1, 6)]
    cases.append(("VerSe L2", "vertebral_compression",
                  ["--ct", str(VERSE / "sub-verse004_0000_vertebra_21_im.nii.gz"), "--ct-unit", "mg/cm3",
                   "--mask", str(VERSE / "sub-verse004_0000_vertebra_21_seg.nii.gz"),
                   "--label", "1", "--label", "2", "--label", "3", "--label", "4"]))
    cases.append(("femur STL", "sideways_fall", ["--bone", str(femur_bone_toml(work))]))
    if only:
        cases = [c for c in cases if any(k in c[0].lower() for k in only)]
    print("| bone | size mm | elements | time s (CPU s) | stiffness N/mm | linear strength N |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, case, args in cases:
        for h in sizes:
            o = cli(["run", case, *args, "--size", f"{h:g}"], work / "conv" / f"{slug(name)}_{h:g}")
            if o.summary is None:
                print(f"| {name} | {h:g} | – | {o.wall_s:.1f} ({o.cpu_s:.1f}) | failed: {o.error[:120]} | |", flush=True)
                continue
            s = o.summary
            print(f"| {name} | {h:g} | {s['n_elements']} | {o.wall_s:.1f} ({o.cpu_s:.1f}) | "
                  f"{s['stiffness_N_per_mm']:.0f} | {s['strength_linear_N']:.0f} |", flush=True)


def poses(work: Path) -> list[str]:
    """Sideways-fall strength of the right femur as given, moved, rotated and mirrored."""
    base = cli(["run", "sideways_fall", *ct_args("femur_right.nii.gz")], work / "pose" / "given")
    lines = ["| pose | strength N | stiffness N/mm | change of strength % |", "| --- | --- | --- | --- |"]
    if base.summary is None:
        return lines + [f"| given | failed: {base.error} | | |"]
    s0 = base.summary["strength_linear_N"]
    lines.append(f"| given | {s0:.0f} | {base.summary['stiffness_N_per_mm']:.0f} | – |")
    bad = []
    for pose in ("moved", "rotated", "mirrored"):
        ct_path, mask = posed_inputs(work, pose)
        o = cli(["run", "sideways_fall", "--ct", str(ct_path), "--calibration", "internal", "--mask", str(mask)],
                work / "pose" / pose)
        if o.summary is None:
            lines.append(f"| {pose} | failed: {o.error} | | |")
            bad.append(pose)
            continue
        s = o.summary["strength_linear_N"]
        ch = 100.0 * (s / s0 - 1.0)
        lines.append(f"| {pose} | {s:.0f} | {o.summary['stiffness_N_per_mm']:.0f} | {ch:+.2f} |")
        if abs(ch) > 2.0:
            bad.append(pose)
    if bad:
        lines.append(f"\nNOT within 2 %: {', '.join(bad)}")
    return lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", help="comma-separated substrings of the row names to run (default all)")
    ap.add_argument("--no-check-mesh", action="store_true", help="skip the 0.7x refinement of each run")
    ap.add_argument("--sizes", help="convergence study instead of the table: element sizes in mm, e.g. 3,2.1,1.5")
    ap.add_argument("--pose", action="store_true", help="also the moved / rotated / mirrored right femur")
    ap.add_argument("--work", help="folder for inputs made here and the run folders (default: a temporary one)")
    args = ap.parse_args(argv)
    if not CT_DIR.exists():
        print(f"shared data not found at {SHARED}", file=sys.stderr)
        return 2
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="real_bones_"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"load average {os.getloadavg()[0]:.1f} (2 cores); work folder {work}", flush=True)
    if args.sizes:
        convergence(work, [float(v) for v in args.sizes.split(",")],
                    [k.strip().lower() for k in args.rows.split(",")] if args.rows else None)
        return 0
    ref = cli(["run", "vertebral_compression", "--bundled", "vertebra"], work / "runs" / "reference")
    print(f"reference run (bundled vertebra, compression): {ref.wall_s:.1f} s wall, {ref.cpu_s:.1f} s CPU",
          flush=True)
    todo = rows(work, check_mesh=not args.no_check_mesh)
    if args.rows:
        keys = [k.strip().lower() for k in args.rows.split(",")]
        todo = [r for r in todo if any(k in r.name.lower() for k in keys)]
    outcomes, failures = [], []
    for r in todo:
        o = run_row(r, work)
        outcomes.append(o)
        bad = check(o)
        status = "ok" if not bad else "; ".join(bad)
        print(f"  {r.name}: {o.wall_s:.1f} s ({o.cpu_s:.1f} s CPU), rc {o.rc}: {status}", flush=True)
        if bad:
            failures.append((r.name, bad))
    print(f"\nload average {os.getloadavg()[0]:.1f} at the end\n")
    print(table(outcomes, ref))
    if args.pose:
        print()
        print("\n".join(poses(work)))
    if failures:
        print("\noutside the published ranges or checks:")
        for name, bad in failures:
            print(f"  {name}: {'; '.join(bad)}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
