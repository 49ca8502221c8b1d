"""Run files (``case.toml`` in every run folder): complete, validated, and running them again
gives the same numbers."""
from __future__ import annotations

import json
import tomllib

import pytest

import femur_fe as ff
from femur_fe.case.runfile import is_run_file, load_run_file
from femur_fe.commands.cli import main
from femur_fe.errors import LoadCaseError


@pytest.fixture(scope="module")
def vertebra_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "first"
    res = ff.run("vertebral_compression", {"bundled": "vertebra"}, subject=ff.Subject("female", 60.0, 160.0),
                 out=out)
    return res, out


def test_run_folder_holds_a_complete_run_file(vertebra_run):
    res, out = vertebra_run
    path = out / "case.toml"
    assert is_run_file(path)
    data = tomllib.loads(path.read_text(encoding="utf-8"))
    assert data["kind"] == "run" and data["nonlinear"] is False
    # every key of the validated case, the [bone] table and the subject
    assert data["case"] == res.case.to_dict()
    assert data["bone"] == {"bundled": "vertebra", "state": "osteoporotic", "units": "auto"}
    assert data["subject"] == {"sex": "female", "body_mass_kg": 60.0, "height_cm": 160.0}
    rf = load_run_file(path)
    assert rf.case == res.case and rf.subject == res.subject


def test_running_the_run_file_again_gives_the_same_numbers(vertebra_run, tmp_path, capsys):
    res, out = vertebra_run
    assert main(["run", str(out / "case.toml"), "-o", str(tmp_path / "again")]) == 0
    printed = capsys.readouterr().out
    assert "case.toml" in printed and "QC picture: qc.png" in printed
    assert (tmp_path / "again" / "qc.png").is_file()      # drawn before the solve, kept in the folder
    again = json.loads((tmp_path / "again" / "summary.json").read_text())
    first = json.loads((out / "summary.json").read_text())
    # same model, same direct solve: only floating-point summation order could differ
    assert again["stiffness_N_per_mm"] == pytest.approx(first["stiffness_N_per_mm"], rel=1e-12)
    assert again["strength_linear_N"] == pytest.approx(first["strength_linear_N"], rel=1e-12)
    assert again["case"] == first["case"] and again["subject"] == first["subject"]
    assert again["classification"]["label"] == first["classification"]["label"]
    # the folder it wrote is a run folder with the same run file
    assert load_run_file(tmp_path / "again" / "case.toml").case == res.case


def test_run_file_options_override_and_bad_keys_are_refused(vertebra_run, tmp_path, capsys):
    _res, out = vertebra_run
    text = (out / "case.toml").read_text(encoding="utf-8")
    bad = tmp_path / "bad.toml"
    bad.write_text(text.replace("nonlinear = false", "nonlinaer = false"), encoding="utf-8")
    with pytest.raises(LoadCaseError, match="nonlinaer"):
        load_run_file(bad)
    assert main(["run", str(bad), "-o", str(tmp_path / "x")]) == 2
    assert "nonlinaer" in capsys.readouterr().err
    # --set applies to the run file's case; --state replaces its bone's state
    assert main(["run", str(out / "case.toml"), "--bundled", "vertebra", "--state", "healthy",
                 "--set", "loading.displacement_mm=0.1", "--no-qc", "-o", str(tmp_path / "healthy")]) == 0
    assert not (tmp_path / "healthy" / "qc.png").exists()
    s = json.loads((tmp_path / "healthy" / "summary.json").read_text())
    assert s["case"]["loading"]["displacement_mm"] == 0.1
    assert s["specimen"]["state"] == "healthy"
    first = json.loads((out / "summary.json").read_text())
    assert s["stiffness_N_per_mm"] > 1.5 * first["stiffness_N_per_mm"]
