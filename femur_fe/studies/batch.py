"""A folder of CTs with their segmenter masks in, one results table out (``femur-fe batch``).

Layouts understood (TotalSegmentator writes one NIfTI file per structure into a folder):

* ``CASE.nii.gz`` with ``CASE_seg/`` (or ``CASE_segmentations/``) beside it; a CT named
  ``NAME_ct.nii.gz`` also finds ``NAME_seg/`` (the case id is then ``NAME``);
* ``CASE/ct.nii.gz`` with ``CASE/seg/`` or ``CASE/segmentations/`` (one folder per case);
* a single CT with a ``seg/`` or ``segmentations/`` folder beside it.

Masks are named as TotalSegmentator names them: ``femur_left``, ``femur_right``,
``vertebrae_L1`` ... ``vertebrae_L5`` (``vertebrae_T12``...). A ``femur_*`` mask runs with the
femur case given, a ``vertebrae_*`` mask with the vertebra case (default presets:
``sideways_fall`` and ``vertebral_compression``).

Each (CT, bone) pair is one task of the sweep engine (:mod:`femur_fe.studies.sweep`), so a
batch runs on a local Dask cluster, on a running scheduler or serially, and running it again
into the same folder skips the rows that are finished. A bone the pipeline refuses (metal
next to the bone, a mask that is not a femur, a missing mask...) is a row with status
``refused`` and the one-line reason, not a failure of the batch. Rows whose task crashed are
``failed`` and run again on the next run.

Each row holds the case id, the bone, the status (``ok``, ``refused``, ``failed``) and its reason,
the stiffness (N/mm), the linear strength of the case's criterion and the other strengths that
apply (:mod:`femur_fe.analysis.strengths`: Pistoia, principal strain for a femur, apparent strain
for a vertebra; N), the nonlinear strength when run, the factor of risk and the classification
when a subject is given, the integral vBMD, the mesh, the calibration and the named warnings.

Output folder: ``batch_results.csv`` and ``batch_results.json`` (one row per CT and bone),
``runs/<case id>_<bone>/`` (the run folder of each bone: ``qc.png``, ``result.vtu``,
``summary.json``, ``case.toml``) and ``sweep/`` (the engine's records: manifest, one part per finished task).
"""
from __future__ import annotations

import logging
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from ..analysis.subject import Subject
from ..bone.specimen import Specimen
from ..case.loadcase import LoadCase
from ..diagnostics import merged
from ..errors import FemurFeError, OutputError, SweepError
from ..io.atomic import atomic_path, write_json_atomic
from ..io.tables import plain
from ..viz.qc import QC_NAME
from .run import as_case, run, write_result
from .sweep import SweepSpec, file_digest, register_task, run_sweep

log = logging.getLogger(__name__)

#: image file endings read as CTs and masks
IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd")
#: names of a case's mask folder when it is not ``CASE_seg``
SEG_FOLDERS = ("seg", "segmentations", "masks")
#: the load cases used when none is given, one per bone kind
DEFAULT_CASES = ("sideways_fall", "vertebral_compression")
#: the results table
TABLE_NAME = "batch_results"
#: columns of the results table, in order
COLUMNS = ("case_id", "bone", "status", "reason", "load_case", "stiffness_N_per_mm", "strength_linear_N",
           "criterion", "strength_pistoia_N", "strength_max_principal_strain_N", "strength_apparent_strain_N",
           "strength_nonlinear_N", "strength_used", "factor_of_risk", "classification",
           "integral_vbmd_mg_cm3", "n_elements", "element_size_mm", "calibration", "warnings", "run_folder")
_NAME = "femur_fe_batch"


def _stem(p: Path) -> str:
    name = p.name
    for s in IMAGE_SUFFIXES:
        if name.lower().endswith(s):
            return name[: -len(s)]
    return p.stem


def _is_image(p: Path) -> bool:
    return p.is_file() and p.name.lower().endswith(IMAGE_SUFFIXES)


def bone_kind(mask_name: str) -> str | None:
    """``"femur"`` for ``femur_left``/``femur_right``, ``"vertebra"`` for ``vertebrae_*``, else None."""
    n = mask_name.lower()
    if re.fullmatch(r"femur(_(left|right))?", n):
        return "femur"
    if re.fullmatch(r"vertebrae?_[ctls]\d+", n):
        return "vertebra"
    return None


@dataclass(frozen=True)
class BatchInput:
    """One CT of the folder and the folder of its masks."""

    case_id: str
    ct: Path
    seg: Path | None

    def masks(self) -> dict[str, Path]:
        """Mask name (file name without its ending) -> path."""
        if self.seg is None:
            return {}
        return {_stem(p): p for p in sorted(self.seg.iterdir()) if _is_image(p)}


def _seg_folder(ct: Path, alone: bool) -> Path | None:
    s = _stem(ct)
    names = [f"{s}_seg", f"{s}_segmentations"]
    if s.lower().endswith("_ct"):
        names += [f"{s[:-3]}_seg", f"{s[:-3]}_segmentations"]
    if alone:
        names += list(SEG_FOLDERS)
    for n in names:
        if (ct.parent / n).is_dir():
            return ct.parent / n
    return None


def _case_id(ct: Path) -> str:
    s = _stem(ct)
    if s.lower() in ("ct", "image", "img"):
        return ct.parent.name
    return s[:-3] if s.lower().endswith("_ct") and len(s) > 3 else s


def find_inputs(folder: str | os.PathLike) -> list[BatchInput]:
    """The CTs of ``folder`` (top level, or one sub-folder per case) and their mask folders.

    A CT without a mask folder is returned with ``seg=None`` (its rows say so). Images inside
    mask folders are masks, not CTs. Raises :class:`SweepError` for a folder with no CT.
    """
    root = Path(folder)
    if not root.is_dir():
        raise SweepError(f"FOLDER {root}: not a folder; give the folder that holds the CTs and their mask folders "
                         "(e.g. CASE.nii.gz + CASE_seg/)")
    out: list[BatchInput] = []
    dirs = [root] + sorted(p for p in root.iterdir() if p.is_dir())
    seg_dirs: set[Path] = set()
    per_dir: dict[Path, list[Path]] = {}
    for d in dirs:
        cts = [p for p in sorted(d.iterdir()) if _is_image(p)]
        per_dir[d] = cts
    for d, cts in per_dir.items():
        for ct in cts:
            seg_dirs.add(_seg_folder(ct, len(cts) == 1) or Path())
    for d, cts in per_dir.items():
        if d in seg_dirs or d.name in SEG_FOLDERS or d.name.endswith(("_seg", "_segmentations")):
            continue
        for ct in cts:
            out.append(BatchInput(_case_id(ct), ct, _seg_folder(ct, len(cts) == 1)))
    if not out:
        raise SweepError(f"FOLDER {root}: no CT found ({', '.join(IMAGE_SUFFIXES)} files at the top level or in one "
                         "sub-folder per case); expected e.g. CASE.nii.gz with its masks in CASE_seg/")
    ids = [i.case_id for i in out]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        raise SweepError(f"FOLDER {root}: case id {dup[0]!r} names two CTs; rename one of them")
    return out


def _cases_by_kind(cases: Sequence[LoadCase | str | os.PathLike] | None) -> dict[str, LoadCase]:
    out: dict[str, LoadCase] = {}
    for c in (cases or DEFAULT_CASES):
        case = as_case(c)
        if case.bone in out:
            raise SweepError(f"--case {c}: a {case.bone} case is given twice ({out[case.bone].name} and {case.name}); "
                             "give one case per bone kind (femur, vertebra)")
        out[case.bone] = case
    return out


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def plan(folder: str | os.PathLike, *, cases=None, bones: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """The rows of a batch before it runs: case id, bone, CT, mask, and the reason a row is refused
    before any work (no mask folder, no such mask, no case for that bone)."""
    by_kind = _cases_by_kind(cases)
    rows = []
    for inp in find_inputs(folder):
        masks = inp.masks()
        if inp.seg is None:
            rows.append({"case_id": inp.case_id, "bone": ",".join(bones or []) or "-", "ct": str(inp.ct), "mask": "",
                         "refused": f"no mask folder for {inp.ct.name} (expected {_stem(inp.ct)}_seg/ or seg/ "
                                    "beside it, as TotalSegmentator writes it)"})
            continue
        names = list(bones) if bones else [n for n in masks if bone_kind(n) in by_kind]
        if not names:
            rows.append({"case_id": inp.case_id, "bone": "-", "ct": str(inp.ct), "mask": "",
                         "refused": f"no mask in {inp.seg.name}/ for the bones of the cases given "
                                    f"({', '.join(sorted(by_kind))}); name them with --bone"})
        for name in names:
            kind = bone_kind(name)
            reason = ""
            if name not in masks:
                reason = (f"no mask {name}.nii.gz in {inp.seg}; masks there: "
                          f"{', '.join(sorted(masks)[:8]) or 'none'}")
            elif kind is None:
                reason = f"{name} is neither a femur nor a vertebra (femur_fe models femur_* and vertebrae_* masks)"
            elif kind not in by_kind:
                reason = f"no load case for a {kind}: add --case with a {kind} case (e.g. {DEFAULT_CASES[kind != 'femur']})"
            rows.append({"case_id": inp.case_id, "bone": name, "ct": str(inp.ct),
                         "mask": str(masks.get(name, "")), "refused": reason})
    return rows


@register_task("batch_bone")
def batch_task(inputs) -> dict[str, Any]:
    """One bone of a batch: the run pipeline on a CT and its mask; a refusal is an output row."""
    d = inputs.case
    row, settings = d["row"], d["settings"]
    if row["refused"]:
        return {"outcome": "refused", "reason": row["refused"]}
    kind = bone_kind(row["bone"])
    case = as_case(d["cases"][kind])
    table = {"ct": row["ct"], "mask": row["mask"], "name": f"{row['case_id']} {row['bone']}",
             "mesh_type": settings["mesh_type"]}
    if settings["calibration"]:
        table["calibration"] = settings["calibration"]
    if settings["element_size_mm"] > 0:
        table["element_size_mm"] = settings["element_size_mm"]
    subject = Subject.from_dict(d["subject"] or None)
    try:
        specimen = Specimen.from_dict(table, source=f"batch {row['case_id']}")
        folder = ""
        if settings["runs_dir"]:
            folder = str(Path(settings["runs_dir"]) / f"{row['case_id']}_{row['bone']}")
            Path(folder).mkdir(parents=True, exist_ok=True)
        res = run(case, specimen, subject=subject, nonlinear=settings["nonlinear"],
                  qc=Path(folder) / QC_NAME if folder else None)
    except FemurFeError as exc:   # a refused bone is a row with its reason
        if folder and not any(Path(folder).iterdir()):
            Path(folder).rmdir()   # refused before anything was drawn (a QC picture drawn is kept)
        return {"outcome": "refused", "reason": _one_line(exc)}
    if folder:
        write_result(res, folder, nonlinear=settings["nonlinear"])
    s = res.summary()
    cal = s["material"].get("calibration") or {}
    c = s.get("classification") or {}
    return {
        "outcome": "ok", "reason": "", "load_case": case.name,
        "stiffness_N_per_mm": res.stiffness_N_per_mm,
        "strength_linear_N": s.get("strength_linear_N"),
        "criterion": res.linear.criterion,
        **{f"strength_{k}_N": (s["strengths"].get(k) or {}).get("strength_N")
           for k in ("pistoia", "max_principal_strain", "apparent_strain")},
        "strength_nonlinear_N": s.get("strength_nonlinear_N"),
        "strength_used": s.get("strength_used"),
        "factor_of_risk": s.get("factor_of_risk"),
        "classification": c.get("label"),
        "integral_vbmd_mg_cm3": s["material"].get("integral_vbmd_mg_cm3"),
        "n_elements": int(s["n_elements"]),
        "element_size_mm": s.get("element_size_mm"),
        "calibration": cal.get("method") or "",
        "warnings": "; ".join(f"{w.name}: {_one_line(w.message)}" for w in merged(res.warnings)),
        "run_folder": folder,
    }


def batch_spec(folder: str | os.PathLike, out: str | os.PathLike, *, cases=None, bones: Sequence[str] | None = None,
               calibration: str | None = "internal", element_size_mm: float | None = None, mesh_type: str = "tet",
               subject: Subject | None = None, nonlinear: bool = False, runs: bool = True) -> SweepSpec:
    """The sweep of a batch: one task per (CT, bone) row of :func:`plan`."""
    by_kind = _cases_by_kind(cases)
    if calibration not in (None, "internal"):
        p = Path(calibration)
        if not p.is_file():
            raise SweepError(f"--calibration {calibration}: no such file; give 'internal' or a phantom calibration "
                             "JSON (docs/schemas.md)")
        calibration = str(p.resolve())
    if element_size_mm is not None and not (math.isfinite(element_size_mm) and 0.2 <= element_size_mm <= 20.0):
        raise SweepError(f"--size {element_size_mm}: give an element size in mm between 0.2 and 20")
    rows = plan(folder, cases=cases, bones=bones)
    digests: dict[str, str] = {}

    def digest(path: str) -> str:
        if path and path not in digests:
            digests[path] = file_digest(path)
        return digests.get(path, "")

    base = {
        "row": {"case_id": "", "bone": "", "ct": "", "mask": "", "ct_digest": "", "mask_digest": "", "refused": ""},
        "settings": {"calibration": calibration or "", "element_size_mm": float(element_size_mm or 0.0),
                     "mesh_type": mesh_type, "nonlinear": bool(nonlinear),
                     "runs_dir": str((Path(out) / "runs").resolve()) if runs else ""},
        "cases": {k: c.to_dict() for k, c in by_kind.items()},
        "subject": plain(subject.to_dict()) if subject is not None else {},
    }
    listed = []
    for r in rows:
        ct, mask = str(Path(r["ct"]).resolve()), str(Path(r["mask"]).resolve()) if r["mask"] else ""
        listed.append({"row.case_id": r["case_id"], "row.bone": r["bone"], "row.ct": ct, "row.mask": mask,
                       "row.ct_digest": digest(ct), "row.mask_digest": digest(mask), "row.refused": r["refused"]})
    return SweepSpec(base=base, method="list", cases=listed, task=batch_task, name=_NAME, retries=0,
                     description=f"femur-fe batch of {folder}")


def check_batch_dir(out: str | os.PathLike) -> Path:
    """Refuse an output folder that holds something other than an earlier batch (which is resumed)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OutputError(f"-o {out}: a file is in the way; give a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / "sweep" / "sweep.json").is_file():
        found = ", ".join(sorted(p.name for p in out.iterdir())[:5])
        raise OutputError(f"-o {out}: the folder holds {found} but no sweep/sweep.json: it is not a batch's results "
                          "folder; choose another folder (a batch resumes only into its own folder)")
    out.mkdir(parents=True, exist_ok=True)
    return out


def results_table(sweep_table) -> Any:
    """The batch table (one row per CT and bone, :data:`COLUMNS`) from the sweep's results table."""
    import pandas as pd

    recs = []
    for _, r in sweep_table.iterrows():
        rec = {"case_id": r.get("row.case_id"), "bone": r.get("row.bone")}
        if r.get("status") == "ok":
            rec["status"] = r.get("outcome")
            for k in COLUMNS[3:]:
                if k in r.index:
                    rec[k] = r[k]
        else:
            rec["status"] = "failed"
            rec["reason"] = _one_line(str(r.get("error", "")).splitlines()[0] if r.get("error") else r.get("status"))
        recs.append(rec)
    df = pd.DataFrame.from_records(recs, columns=list(COLUMNS))
    df = df.sort_values(["case_id", "bone"], kind="stable").reset_index(drop=True)
    df = df.astype(object)
    df = df.where(df.notna(), None)
    df["n_elements"] = pd.Series([None if v is None else int(v) for v in df["n_elements"]], index=df.index,
                                 dtype=object)
    return df


def run_batch(folder: str | os.PathLike, out: str | os.PathLike, *, cases=None, bones: Sequence[str] | None = None,
              calibration: str | None = "internal", element_size_mm: float | None = None, mesh_type: str = "tet",
              subject: Subject | None = None, nonlinear: bool = False, scheduler: str | None = None,
              n_workers: int | None = None, progress: bool | None = None, timeout_s: float | None = None,
              runs: bool = True):
    """Run (or resume) a batch; returns the results table (pandas, one row per CT and bone).

    Parameters
    ----------
    folder : the CTs and their mask folders (see the module docstring)
    out : results folder; running again into it skips the finished rows
    cases : load cases (presets, TOML paths or LoadCase), one per bone kind (default
        :data:`DEFAULT_CASES`)
    bones : mask names to run (default: every mask of a bone kind a case applies to)
    calibration : ``"internal"`` (phantomless, default for HU), a phantom JSON path, or None
        for the cases' own calibration
    element_size_mm : element size of the meshes built from the masks (default: the size rule)
    subject : sex, body mass, height: factor of risk and classification
    scheduler, n_workers, progress, timeout_s : as :func:`femur_fe.studies.sweep.run_sweep`
        (``scheduler="serial"`` runs in this process)
    runs : also write each bone's run folder into ``out/runs/``
    """
    _cases_by_kind(cases)  # an unknown case is refused before the output folder is made
    out = check_batch_dir(out)
    spec = batch_spec(folder, out, cases=cases, bones=bones, calibration=calibration,
                      element_size_mm=element_size_mm, mesh_type=mesh_type, subject=subject, nonlinear=nonlinear,
                      runs=runs)
    table = results_table(run_sweep(spec, out / "sweep", scheduler=scheduler, n_workers=n_workers,
                                    progress=progress, timeout_s=timeout_s))
    with atomic_path(out / f"{TABLE_NAME}.csv") as tmp:
        table.to_csv(tmp, index=False)
    write_json_atomic(out / f"{TABLE_NAME}.json", {"folder": str(Path(folder).resolve()),
                                                   "rows": table.to_dict(orient="records")})
    return table


def _text(v: Any) -> str:
    return v if isinstance(v, str) and v else "-"


def format_table(table) -> list[str]:
    """The results table as text lines (what ``femur-fe batch`` prints)."""
    lines = [f"{'case':<14s} {'bone':<15s} {'status':<8s} {'stiffness N/mm':>14s} {'strength N':>10s} "
             f"{'FoR':>5s}  classification"]

    def num(v: Any, fmt: str, width: int) -> str:
        return f"{v:{width}{fmt}}" if isinstance(v, (int, float)) and v == v else f"{'-':>{width}s}"

    for _, r in table.iterrows():
        lines.append(f"{str(r['case_id']):<14s} {str(r['bone']):<15s} {str(r['status']):<8s} "
                     f"{num(r['stiffness_N_per_mm'], '.0f', 14)} {num(r['strength_linear_N'], '.0f', 10)} "
                     f"{num(r['factor_of_risk'], '.2f', 5)}  {_text(r['classification'])}")
    for _, r in table.iterrows():
        if r["status"] != "ok":
            lines.append(f"  {r['case_id']} {r['bone']}: {r['status']}: {r['reason']}")
    return lines


__all__ = ["find_inputs", "plan", "bone_kind", "batch_spec", "run_batch", "results_table", "format_table",
           "BatchInput", "batch_task", "DEFAULT_CASES", "COLUMNS"]
