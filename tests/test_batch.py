"""``femur-fe batch``: folder layouts, rows refused with their reason, one table, resume."""
from __future__ import annotations

import json

import pandas as pd
import pytest

from femur_fe.commands.cli import main
from femur_fe.errors import SweepError
from femur_fe.studies.batch import bone_kind, find_inputs, plan


def touch(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def test_totalsegmentator_layouts_are_found(tmp_path):
    touch(tmp_path / "a.nii.gz")
    for m in ("femur_right", "vertebrae_L2", "hip_left"):
        touch(tmp_path / "a_seg" / f"{m}.nii.gz")
    touch(tmp_path / "b_ct.nii.gz")
    touch(tmp_path / "b_seg" / "vertebrae_L1.nii.gz")
    touch(tmp_path / "c" / "ct.nii.gz")
    touch(tmp_path / "c" / "segmentations" / "femur_left.nii.gz")
    touch(tmp_path / "d.nii")                     # a CT without masks
    found = {i.case_id: i for i in find_inputs(tmp_path)}
    assert sorted(found) == ["a", "b", "c", "d"]
    assert found["a"].seg == tmp_path / "a_seg" and found["b"].seg == tmp_path / "b_seg"
    assert found["c"].seg == tmp_path / "c" / "segmentations" and found["d"].seg is None
    assert sorted(found["a"].masks()) == ["femur_right", "hip_left", "vertebrae_L2"]

    rows = {(r["case_id"], r["bone"]): r["refused"] for r in plan(tmp_path)}
    # default bones: every femur and vertebra mask; the hip is not a bone femur_fe models
    assert rows[("a", "femur_right")] == "" and rows[("a", "vertebrae_L2")] == ""
    assert ("a", "hip_left") not in rows
    assert rows[("b", "vertebrae_L1")] == "" and rows[("c", "femur_left")] == ""
    assert "no mask folder" in rows[("d", "-")]
    named = {(r["case_id"], r["bone"]): r["refused"]
             for r in plan(tmp_path, cases=["vertebral_compression"], bones=["vertebrae_L2", "hip_left",
                                                                             "femur_right"])}
    assert named[("a", "vertebrae_L2")] == ""
    assert "neither a femur nor a vertebra" in named[("a", "hip_left")]
    assert "no load case for a femur" in named[("a", "femur_right")]
    assert "no mask vertebrae_L2.nii.gz" in named[("b", "vertebrae_L2")]
    assert (bone_kind("femur_left"), bone_kind("vertebrae_T12"), bone_kind("sacrum")) == ("femur", "vertebra", None)


def test_folder_without_ct_and_two_cases_of_one_bone_are_refused(tmp_path):
    with pytest.raises(SweepError, match="no CT found"):
        find_inputs(tmp_path)
    touch(tmp_path / "a.nii.gz")
    touch(tmp_path / "a_seg" / "femur_right.nii.gz")
    with pytest.raises(SweepError, match="femur case is given twice"):
        plan(tmp_path, cases=["sideways_fall", "stance"])


def test_batch_on_the_clinical_ct_refuses_the_implant_and_resumes(shared_data, tmp_path, capsys):
    folder = shared_data("ct_totalseg_example")
    out = tmp_path / "out"
    argv = ["batch", str(folder), "-o", str(out), "--bone", "vertebrae_L1", "--bone", "femur_left",
            "--size", "5", "--sex", "female", "--no-progress"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "2 rows: 1 ok, 1 refused, 0 failed" in printed
    table = pd.read_csv(out / "batch_results.csv")
    rows = json.loads((out / "batch_results.json").read_text())["rows"]
    assert [(r["case_id"], r["bone"], r["status"]) for r in rows] == [("example", "femur_left", "refused"),
                                                                       ("example", "vertebrae_L1", "ok")]
    left, l1 = rows
    # the left hip holds an implant: one line naming the metal, no numbers
    assert left["reason"].startswith("metal in") and "\n" not in left["reason"]
    assert left["stiffness_N_per_mm"] is None
    # the vertebra: the numbers of its run folder, internal calibration, classified (sex given)
    summary = json.loads((out / "runs" / "example_vertebrae_L1" / "summary.json").read_text())
    assert l1["stiffness_N_per_mm"] == summary["stiffness_N_per_mm"] > 0
    assert l1["strength_linear_N"] == summary["strength_linear_N"] > 0
    assert l1["calibration"] == "internal" and l1["element_size_mm"] == 5.0
    # the strengths that apply to a vertebra, side by side (summary.json "strengths")
    assert l1["strength_apparent_strain_N"] == l1["strength_linear_N"]
    assert l1["strength_pistoia_N"] == summary["strengths"]["pistoia"]["strength_N"] > 0
    assert l1["strength_max_principal_strain_N"] is None
    assert (out / "runs" / "example_vertebrae_L1" / "qc.png").is_file()
    assert not (out / "runs" / "example_femur_left").exists()     # refused before any model was built
    assert isinstance(l1["n_elements"], int)
    assert l1["classification"] in ("fragile", "not fragile")
    assert (out / "runs" / "example_vertebrae_L1" / "case.toml").is_file()
    assert list(table["bone"]) == ["femur_left", "vertebrae_L1"]

    # run again: nothing is recomputed, the table is the same
    assert main(argv) == 0
    capsys.readouterr()
    runs = json.loads((out / "sweep" / "sweep.json").read_text())["runs"]
    assert [r["n_to_run"] for r in runs] == [2, 0]
    assert pd.read_csv(out / "batch_results.csv").equals(table)

    # an output folder that holds something else is refused
    touch(tmp_path / "other" / "x.txt")
    assert main(["batch", str(folder), "-o", str(tmp_path / "other"), "--no-progress"]) == 2
    assert "not a batch's results folder" in capsys.readouterr().err
