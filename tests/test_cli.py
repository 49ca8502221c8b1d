"""The command line end to end: real bundled bone, real files, clean one-line errors."""
from __future__ import annotations

import json
import re

import pytest

from femur_fe.commands.cli import main


def test_run_bundled_vertebra_writes_results(tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(["run", "vertebral_compression", "--bundled", "vertebra", "--state", "osteoporotic",
               "--sex", "female", "-o", str(out)])
    assert rc == 0
    s = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    for key in ("stiffness_N_per_mm", "reaction_forces_N", "n_dofs", "solver", "case", "inputs",
                "femur_fe_version", "strength_linear_N", "criterion", "classification"):
        assert key in s, key
    # the case that ran carries the bundled scanner calibration (HU CT)
    assert s["case"]["material"]["calibration"]["ct_unit"] == "HU"
    # mesh, CT and calibration file sha256
    assert len(s["inputs"]) == 3 and all(len(h) == 64 for h in s["inputs"].values())
    assert s["bone"] == "vertebra" and s["specimen"]["bundled"] == "vertebra"
    assert s["material"]["calibration"]["method"] == "linear"
    forces = s["reaction_forces_N"]
    total = [sum(f[i] for f in forces.values()) for i in range(3)]
    assert max(abs(t) for t in total) <= 1e-6 * abs(s["load_force_N"])
    assert (out / "result.vtu").stat().st_size > 0
    printed = capsys.readouterr().out
    assert "linear strength" in printed
    # every stage prints one line with the elapsed time, in order
    stages = ["bone:", "CT:", "metal:", "calibration: linear", "mapping:", "material:", "regions:", "solved:",
              "strength: linear"]
    lines = [ln.strip() for ln in printed.splitlines()]
    at = [next(i for i, ln in enumerate(lines) if ln.startswith(st)) for st in stages]
    assert at == sorted(at)
    assert all(re.search(r"\(\d+\.\d s\)$", lines[i]) for i in at)
    # the spine thresholds are nonlinear strengths: without --nonlinear the CLI says the linear one stood in
    assert "run with --nonlinear" in printed and "linear:apparent_strain" in printed
    # the preset's whole-body criterion: strength = 0.0068 x stiffness x endplate-to-endplate height
    detail = s["strength_linear_detail"]
    assert s["criterion"]["name"] == "apparent_strain"
    assert s["strength_linear_N"] == pytest.approx(0.0068 * s["stiffness_N_per_mm"] * detail["height_mm"], rel=1e-12)
    # the endplate regions are inside the 28 mm body (concave endplates), PMMA layers not counted
    assert 20.0 < detail["height_mm"] < 28.0


def test_unknown_key_is_one_clean_line(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text('schema_version = 1\nbone = "femur"\n[material]\nlaw = "keller1994_combined"\nmodulus = 3\n')
    rc = main(["check", str(bad)])
    err = capsys.readouterr().err
    assert rc == 2
    assert "modulus" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_run_without_material_source_names_the_fix(tmp_path, capsys):
    from femur_fe.bone.bundled import bundled_bone

    rc = main(["run", "vertebral_compression", "--mesh", str(bundled_bone("vertebra").mesh), "-o", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 2 and "--ct" in err and "Traceback" not in err


@pytest.mark.parametrize("args", [["--help"], ["run", "--help"], ["demo", "--help"], ["compare", "--help"]])
def test_help_works(args, capsys):
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code == 0
