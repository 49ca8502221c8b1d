"""The command line agrees with itself: preset names wherever a load case is taken, label masks
recognised by ``info``, the calibration JSON validated like the TOML tables, errors naming the
option that fixes them, classification / factor of risk saying what they need, output suffixes
checked, progress lines for slow steps and no VTK X-server warnings off-screen.

Real data: the clinical CT with its TotalSegmentator masks (``ct_totalseg_example``).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from femur_fe.analysis.risk import not_computed, summary_fields
from femur_fe.commands.cli import build_parser, main
from femur_fe.commands.info import describe, format_info, label_counts
from femur_fe.commands.run import case_and_specimen, not_computed_line
from femur_fe.errors import CTError
from femur_fe.io.ct import check_unit, read_labels
from femur_fe.studies.sweep import load_sweep

from conftest import require_shared

ROOT = Path(__file__).resolve().parents[1]
TOTALSEG = ("ct_totalseg_example",)


def _ct() -> Path:
    return require_shared(*TOTALSEG, "example_ct.nii.gz")


def _mask(name: str) -> Path:
    return require_shared(*TOTALSEG, "example_seg", f"{name}.nii.gz")


def _env() -> dict[str, str]:
    # the installed femur_fe (with its compiled kernels), not the source tree: no PYTHONPATH to ROOT
    return {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}


def _cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "femur_fe.commands.cli", *args], check=False, cwd=cwd, env=_env(),
                          capture_output=True, encoding="utf-8", timeout=600)


def _one_error_line(err: str, command: str) -> str:
    """The single error line of a refused command (no traceback)."""
    lines = [ln for ln in err.splitlines() if ln.startswith(f"femur-fe {command}: error:")]
    assert len(lines) == 1, err
    assert "Traceback" not in err and "internal error" not in err, err
    return lines[0]


@pytest.fixture(scope="module")
def phantom_json(tmp_path_factory) -> Path:
    """A phantom calibration JSON (0.8 mg/cm3 per HU, K2HPO4; a typical scanner slope)."""
    p = tmp_path_factory.mktemp("cal") / "phantom.json"
    p.write_text(json.dumps({"slope": 0.8, "intercept": 0.0, "unit": "mg/cm3", "mineral": "k2hpo4"}),
                 encoding="utf-8")
    return p


@pytest.fixture(scope="module")
def l1_run(tmp_path_factory, phantom_json) -> tuple[Path, str]:
    """`run` of the vertebral_compression preset on the clinical L1 mask (hex voxels, phantom JSON)."""
    out = tmp_path_factory.mktemp("l1") / "run"
    res = _cli(["run", "vertebral_compression", "--ct", str(_ct()), "--calibration", str(phantom_json),
                "--mask", str(_mask("vertebrae_L1")), "--mask-mesh", "hex", "-o", str(out)], cwd=out.parent)
    assert res.returncode == 0, res.stderr
    return out, res.stdout


# ------------------------------------------------------------------ 1. preset names everywhere
def test_check_takes_preset_names_and_set(capsys):
    assert main(["check", "sideways_fall", "--set", "loading.adduction_deg=20"]) == 0
    out = capsys.readouterr().out
    assert "sideways_fall: valid" in out
    assert "adduction_deg = 20" in out


def test_check_unknown_preset_lists_presets(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["check", "sideway_fall"]) == 2
    err = capsys.readouterr().err
    assert "no preset of that name" in err and "sideways_fall" in err and "vertebral_compression" in err


def test_every_command_taking_a_case_resolves_presets(tmp_path, capsys, monkeypatch):
    """Each subcommand with a free `case` argument goes through the one resolver (file or preset):
    an unknown name is refused by it, listing the presets, before any bone is built."""
    monkeypatch.chdir(tmp_path)
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    checked = []
    for name, parser in sub.choices.items():
        acts = {a.dest: a for a in parser._actions}
        if "case" not in acts or acts["case"].choices or acts["case"].option_strings:
            continue  # verify's case is a fixed benchmark name; batch's --case is an option (tested in test_batch)
        argv = [name, "no_such_preset_xyz"]
        if "bundled" in acts:
            argv += ["--bundled", "vertebra"]
        if "out" in acts and acts["out"].required:
            argv += ["-o", "out"]
        assert main(argv) == 2, name
        line = _one_error_line(capsys.readouterr().err, name)
        assert "no preset of that name" in line and "sideways_fall" in line, line
        checked.append(name)
    assert {"run", "check", "regions"} <= set(checked)


def test_sweep_base_takes_preset_name(tmp_path):
    spec = tmp_path / "sweep.toml"
    spec.write_text('name = "preset_base"\nbase = "stance"\nmethod = "grid"\n\n[parameters]\n'
                    '"loading.frontal_deg" = [5.0, 10.0]\n', encoding="utf-8")
    tasks = load_sweep(spec).expand()
    assert len(tasks) == 2
    assert {t.case_dict["loading"]["frontal_deg"] for t in tasks} == {5.0, 10.0}
    assert {t.case_dict["name"] for t in tasks} == {"stance"}


def test_regions_preset_on_clinical_femur_mask(tmp_path):
    """`regions` with a preset name on the TotalSegmentator right femur; -o without suffix gets .vtu,
    and the slow steps (meshing the mask, fitting the frame) print progress lines on stderr."""
    res = _cli(["regions", "sideways_fall", "--ct", str(_ct()), "--mask", str(_mask("femur_right")),
                "--calibration", "internal", "--mask-mesh", "hex", "-o", "femur_right_regions"], cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "femur_right_regions.vtu").is_file()
    frame = json.loads((tmp_path / "femur_right_regions_frame.json").read_text(encoding="utf-8"))
    assert frame["case"] == "sideways_fall"
    assert set(frame["regions"]) == {"head_contact", "trochanter_contact", "distal_cut"}
    progress = [ln for ln in res.stderr.splitlines() if ln.startswith("  ") and ln.endswith(" s)")]
    assert any("voxel mesh" in ln for ln in progress) and any("anatomical frame" in ln for ln in progress)


# ------------------------------------------------------------------ 2. info on label masks
def test_info_recognises_clinical_label_mask(capsys):
    mask = _mask("femur_right")
    assert main(["info", str(mask)]) == 0
    out = capsys.readouterr().out
    n = int(np.count_nonzero(read_labels(mask)))
    assert f"label mask (labels: 1; {n} voxels)" in out
    assert "CT volume" not in out and "g/cm3" not in out
    assert main(["info", str(_ct())]) == 0  # the CT itself is still a CT in HU
    out = capsys.readouterr().out
    assert "CT volume" in out and "unit:        HU" in out


def test_info_multilabel_mask_whose_unit_cannot_be_guessed(tmp_path):
    """Labels up to 117 (TotalSegmentator multi-label): not a density range, not HU; still a mask."""
    sitk = pytest.importorskip("SimpleITK")
    arr = np.zeros((6, 7, 8), dtype=np.uint8)
    arr[1:3, 1:3, 1:3] = 5
    arr[4, 4, 4:7] = 117
    img = sitk.GetImageFromArray(arr.transpose(2, 1, 0))
    img.SetSpacing((2.0, 2.0, 2.0))
    path = tmp_path / "multi.nii.gz"
    sitk.WriteImage(img, str(path))
    info = describe(path)
    assert info["kind"] == "label_mask"
    assert {k: v["voxels"] for k, v in info["labels"].items()} == {"5": 8, "117": 3}
    assert info["labels"]["5"]["volume_cm3"] == pytest.approx(8 * 8.0 / 1000.0)  # 8 voxels of 8 mm^3
    assert "label mask (labels: 5, 117; 8, 3 voxels each)" in format_info(info)


def test_label_counts_refuses_ct_values():
    hu = np.array([-1000.0, -100.0, 40.0, 1200.0])
    assert label_counts(hu) is None                          # negative: a CT in HU
    assert label_counts(np.array([0.0, 0.25, 1.1])) is None  # fractions: density
    assert label_counts(np.arange(300.0)) is None            # 300 distinct values: an image, not labels
    assert label_counts(np.array([0, 0, 2, 2, 2], dtype=np.int16)) == {0: 2, 2: 3}


# ------------------------------------------------------------------ 3. calibration JSON
@pytest.mark.parametrize("data, expected", [
    ({"slope": 0.8, "intercept": 8.0, "unit": "mg/cm3", "minral": "ha"},
     "unknown key 'minral'; did you mean 'mineral'"),
    ({"slope": -0.8, "intercept": 8.0, "unit": "mg/cm3"}, "slope = -0.8 is out of range: must be > 0"),
    ({"slope": 0.8, "intercept": 8.0}, "missing required key 'unit'"),
    ({"slope": 0.8, "intercept": 8.0, "unit": "g/cm3"}, "unit = 'mg/cm3' if the slope is in mg/cm3 per HU"),
    ({"slope": 0.8, "intercept": 8.0, "unit": "mg/cm3", "mineral": "bone"}, "mineral"),
])
def test_calibration_json_validated_like_toml(tmp_path, capsys, monkeypatch, data, expected):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "cal.json").write_text(json.dumps(data), encoding="utf-8")
    rc = main(["run", "sideways_fall", "--ct", str(_ct()), "--mask", str(_mask("femur_right")),
               "--calibration", "cal.json", "-o", "out"])
    assert rc == 2
    line = _one_error_line(capsys.readouterr().err, "run")
    assert expected in line
    assert "cal.json: calibration:" in line and "calibration: calibration" not in line
    assert "docs/schemas.md" in line
    assert not (tmp_path / "out").exists()


def test_calibration_json_documented():
    text = (ROOT / "docs" / "schemas.md").read_text(encoding="utf-8")
    section = text.split("## calibration JSON (phantom)")[1].split("\n## ")[0]
    for key in ("slope", "intercept", "unit", "mineral"):
        row = next(ln for ln in section.splitlines() if ln.startswith(f"| `{key}` |"))
        assert row.rstrip(" |").split("|")[-1].strip(), f"{key}: no note in docs/schemas.md"


# ------------------------------------------------------------------ 4. errors name the CLI option
def test_ct_unit_errors_name_the_options(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for unit, wanted in (("mg/cm3", ("--ct-unit HU", "--calibration internal")), ("g/cm3", ("--ct-unit",))):
        rc = main(["run", "sideways_fall", "--ct", str(_ct()), "--ct-unit", unit, "--mask",
                   str(_mask("femur_right")), "-o", "out"])
        assert rc == 2
        line = _one_error_line(capsys.readouterr().err, "run")
        assert all(w in line for w in wanted), line
        assert "femur_fe.bone" not in line, line


@pytest.mark.parametrize("vmin, vmax, unit", [(0.0, 1.0, "HU"), (10.0, 1500.0, "HU"), (0.0, 1.0, "mg/cm3"),
                                              (-1024.0, 2000.0, "mg/cm3"), (-1024.0, 2000.0, "g/cm3")])
def test_every_unit_check_names_ct_unit(vmin, vmax, unit):
    with pytest.raises(CTError) as exc:
        check_unit(vmin, vmax, unit, "ct.nii.gz")
    assert "--ct-unit" in str(exc.value) and "\n" not in str(exc.value)


def test_set_errors_speak_in_options(capsys):
    assert main(["check", "sideways_fall", "--set", "loading.adductin_deg=20"]) == 2
    line = _one_error_line(capsys.readouterr().err, "check")
    assert line.startswith("femur-fe check: error: --set loading.adductin_deg=20: ")
    assert "did you mean 'adduction_deg'" in line and "with_values" not in line


def test_set_refines_the_bone_calibration():
    """--calibration internal is applied before --set, so --set can give a tissue's HU for it (the
    fix the internal-calibration errors name)."""
    args = build_parser().parse_args(
        ["run", "vertebral_compression", "--ct", str(_ct()), "--mask", str(_mask("vertebrae_L1")),
         "--calibration", "internal", "--set", "material.calibration.tissue_hu.muscle=40", "-o", "x"])
    case, specimen = case_and_specimen(args)
    assert specimen.calibration == "internal"
    assert case.material.calibration.method == "internal" and case.material.calibration.ct_unit == "HU"
    assert case.material.calibration.tissue_hu == {"muscle": 40}


def test_mass_without_height_names_both_options(capsys):
    assert main(["run", "sideways_fall", "--bundled", "femur", "--sex", "female", "--mass", "60", "-o", "x"]) == 2
    assert "--mass and --height go together" in _one_error_line(capsys.readouterr().err, "run")


# ------------------------------------------------------------------ 5. classification says what it needs
class _Linear:
    strength_N = 2500.0
    criterion = "max_principal_strain"
    parameters = {"tension": 0.0073}


def test_not_computed_names_what_each_quantity_needs():
    s = summary_fields(linear=_Linear(), site="hip", sex=None, impact=None)
    assert s["classification"] is None and s["factor_of_risk"] is None
    assert s["not_computed"]["classification"]["needs"] == ["sex"]
    assert s["not_computed"]["factor_of_risk"]["needs"] == ["sex", "body_mass_kg", "height_cm"]
    assert not_computed_line(s["not_computed"]) == (
        'not computed: classification needs --sex; factor of risk needs --sex, --mass, --height '
        '(summary.json "not_computed")')
    s = summary_fields(linear=_Linear(), site="hip", sex="female", impact=None)
    assert s["classification"]["label"] == "fragile"  # 2500 N <= 3000 N (Kopperdahl 2014, women, hip)
    assert list(s["not_computed"]) == ["factor_of_risk"]
    assert not_computed_line(s["not_computed"]) == ('not computed: factor of risk needs --mass, --height '
                                                    '(summary.json "not_computed")')
    s = summary_fields(linear=_Linear(), site="hip", sex="female", impact=3000.0)
    assert "not_computed" not in s and s["factor_of_risk"] == pytest.approx(3000.0 / 2500.0)
    # the spine has no fall impact model: recorded with its reason, nothing an option can give
    spine = not_computed("spine", "male", None)
    assert spine["factor_of_risk"]["needs"] == [] and "hip only" in spine["factor_of_risk"]["reason"]
    assert not_computed_line(spine) == ""


def test_run_says_classification_needs_sex(l1_run):
    out, stdout = l1_run
    lines = [ln for ln in stdout.splitlines() if "not computed" in ln]
    assert lines == ['  not computed: classification needs --sex (summary.json "not_computed")']
    s = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert s["classification"] is None
    assert s["not_computed"]["classification"]["needs"] == ["sex"]
    assert "--sex" in s["not_computed"]["classification"]["reason"]
    assert s["not_computed"]["factor_of_risk"]["needs"] == []


def test_run_says_when_the_slow_steps_begin(l1_run):
    """Preparing (frame, regions, caps) and solving take seconds on a whole bone: a line says each
    has begun, and its result line follows."""
    lines = [ln.strip() for ln in l1_run[1].splitlines()]
    order = [next(i for i, ln in enumerate(lines) if ln.startswith(st)) for st in
             ("material:", "frame, regions, caps and supports ...", "regions:", "solving (", "solved:")]
    assert order == sorted(order)


# ------------------------------------------------------------------ 6. regions -o suffix
def test_regions_refuses_suffix_without_region_arrays(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["regions", "vertebral_compression", "--bundled", "vertebra", "-o", "regs.stl"]) == 2
    line = _one_error_line(capsys.readouterr().err, "regions")
    assert "-o regs.vtu" in line
    assert list(tmp_path.iterdir()) == []  # refused before any work


# ------------------------------------------------------------------ 7. progress, no X warnings
def test_export_prints_progress(l1_run, tmp_path, capsys):
    out, _ = l1_run
    assert main(["export", str(out), "-o", str(tmp_path / "l1.inp")]) == 0
    err = capsys.readouterr().err
    assert "reading the model of" in err and "writing" in err
    assert main(["export", str(out), "-o", str(tmp_path / "l1b.inp"), "--quiet"]) == 0
    assert capsys.readouterr().err == ""


def test_view_screenshot_without_display_has_no_x_warning(l1_run, tmp_path):
    out, _ = l1_run
    res = _cli(["view", str(out), "--screenshot", "l1.png", "--window-size", "200", "150"], cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "l1.png").stat().st_size > 0
    assert "bad X server" not in res.stderr and "X server" not in res.stdout


def test_output_into_a_closed_pipe_is_not_an_error(tmp_path):
    """`femur-fe check sideways_fall | head -1`: the reader stops early; no "Broken pipe" error."""
    p = subprocess.Popen([sys.executable, "-m", "femur_fe.commands.cli", "check", "sideways_fall"], cwd=tmp_path,
                         env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, encoding="utf-8")
    p.stdout.close()  # before the command writes anything (it first imports femur_fe)
    err = p.stderr.read()
    assert p.wait(timeout=120) == 0, err
    assert "Broken pipe" not in err and "Exception ignored" not in err


def test_batch_case_option_resolves_presets(tmp_path, capsys, monkeypatch):
    """`batch --case` goes through the same resolver, before any CT is read."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "scans" / "a_seg").mkdir(parents=True)
    (tmp_path / "scans" / "a.nii.gz").write_bytes(b"")
    (tmp_path / "scans" / "a_seg" / "vertebrae_L1.nii.gz").write_bytes(b"")
    assert main(["batch", "scans", "--case", "no_such_preset_xyz", "-o", "out"]) == 2
    line = _one_error_line(capsys.readouterr().err, "batch")
    assert "no preset of that name" in line and "sideways_fall" in line, line
    assert not (tmp_path / "out").exists()


def test_hu_ct_without_calibration_names_the_flags(tmp_path, capsys, monkeypatch, shared_data):
    """A CT declared HU with no calibration is refused naming --calibration, not a Python call."""
    monkeypatch.chdir(tmp_path)
    d = shared_data("ct_totalseg_example")
    assert main(["regions", "sideways_fall", "--ct", str(d / "example_ct.nii.gz"), "--ct-unit", "HU", "--mask",
                 str(d / "example_seg" / "femur_right.nii.gz"), "-o", "r.vtu", "-q"]) == 2
    line = _one_error_line(capsys.readouterr().err, "regions")
    assert "--calibration internal" in line and "with_values" not in line, line
