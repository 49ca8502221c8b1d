"""Baseline-versus-scenario comparisons and the demo, on the bundled bones."""
from __future__ import annotations

import csv
import json

import pytest

import femur_fe as ff
from femur_fe.commands.cli import main


def _spec(**extra):
    d = {
        "schema_version": 1, "case": "vertebral_compression",
        "bone": {"bundled": "vertebra", "state": "osteopenic"},
        "subject": {"sex": "female"},
        "comparison": {"reference": "uniform_5", "time_points_months": [0.0, 12.0, 24.0]},
        "scenario": [
            {"name": "unchanged", "density_type": "qct", "operator": [{"type": "uniform", "percent": 0.0}]},
            {"name": "uniform_5", "density_type": "qct", "operator": [{"type": "uniform", "percent": 5.0}]},
            {"name": "gain_3_per_year", "months": 24.0, "density_type": "qct",
             "operator": [{"type": "annual_change", "percent_per_year": 3.0}]},
        ],
    }
    d.update(extra)
    return d


def test_compare_rows_files_and_consistency(tmp_path):
    spec = ff.studies.load_comparison(_spec())
    res = ff.compare(spec, tmp_path)
    rows = {r["scenario"]: r for r in res.rows}
    assert list(rows)[0] == "baseline"
    # a scenario that changes nothing reproduces the baseline (same prepared analysis, CG to rtol 1e-8)
    assert rows["unchanged"]["strength_N"] == pytest.approx(rows["baseline"]["strength_N"], rel=1e-6)
    assert rows["unchanged"]["added_mass_g"] == 0.0
    # +5 % density everywhere: mass added = 5 % of the baseline mass, strength and stiffness up
    base_model = res.baseline.model
    assert rows["uniform_5"]["added_mass_g"] == pytest.approx(0.05 * base_model.bone_mass_g(), rel=1e-9)
    assert rows["uniform_5"]["strength_change_percent"] > 0 and rows["uniform_5"]["stiffness_change_percent"] > 0
    # Rayleigh bound: every bone element's modulus rises by a factor in [1, max ratio] and the
    # PMMA caps (in series) are unchanged, so 0 < stiffness gain <= (max ratio - 1)
    ratio = base_model.with_density(base_model.density * 1.05).young / base_model.young
    assert 0.0 < rows["uniform_5"]["stiffness_change_percent"] <= 100.0 * (ratio.max() - 1.0)
    # time course: strength grows monotonically with a positive rate; t = 0 equals the baseline
    tc = [r for r in res.timecourse if r["scenario"] == "gain_3_per_year"]
    assert [r["months"] for r in tc] == [0.0, 12.0, 24.0]
    assert tc[0]["strength_N"] == pytest.approx(rows["baseline"]["strength_N"], rel=1e-6)
    assert tc[0]["strength_N"] < tc[1]["strength_N"] < tc[2]["strength_N"]
    # files
    data = json.loads((tmp_path / "comparison.json").read_text(encoding="utf-8"))
    assert [r["scenario"] for r in data["rows"]] == list(rows)
    with open(tmp_path / "comparison.csv") as fh:
        assert len(list(csv.DictReader(fh))) == 4
    for name in ("baseline", "unchanged", "uniform_5", "gain_3_per_year"):
        s = json.loads((tmp_path / name / "summary.json").read_text(encoding="utf-8"))
        assert s["strength_linear_N"] > 0
    for png in ("strength_gain.png", "strength_vs_time.png"):
        assert (tmp_path / png).stat().st_size > 5000


def test_bad_comparison_input_is_named(tmp_path):
    with pytest.raises(ff.errors.LoadCaseError, match="top level: unknown key .extra_table."):
        ff.studies.load_comparison(_spec(extra_table={}))
    with pytest.raises(ff.errors.ScenarioError, match="density_type"):
        ff.compare(ff.studies.load_comparison(_spec(scenario=[
            {"name": "x", "density_type": "ash", "operator": [{"type": "uniform", "percent": 1.0}]}])), tmp_path)


def test_fit_annual_rate_refuses_a_scenario_in_another_density_type():
    # an ash scenario on a qct law would apply the ash bound and ash g/cm^3 gains to qct values
    spec = ff.studies.load_comparison(_spec(scenario=[
        {"name": "x", "density_type": "ash", "operator": [{"type": "annual_change", "percent_per_year": 1.0}]}],
        comparison={"reference": "x", "time_points_months": [0.0]}))
    with pytest.raises(ff.errors.ScenarioError, match="density_type = 'qct'"):
        ff.studies.fit_annual_rate(spec, "x", 5.0)


def test_demo_vertebra(tmp_path, capsys):
    assert main(["demo", "--bone", "vertebra", "-q", "-o", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "standard_care" in out and "regenerative_36mo" in out
    rows = json.loads((tmp_path / "comparison.json").read_text(encoding="utf-8"))["rows"]
    std = next(r for r in rows if r["scenario"] == "standard_care")
    # the standard-care rate was fitted to +18.2 % (Keaveny 2014); 0.1 % covers solver tolerance
    assert std["strength_change_percent"] == pytest.approx(18.2, abs=0.1)
    assert (tmp_path / "report.html").stat().st_size > 10_000


@pytest.mark.slow
def test_demo_femur(tmp_path, capsys):
    """The README's main job (about a minute)."""
    assert main(["demo", "-q", "-o", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "comparison.json").read_text(encoding="utf-8"))["rows"]
    std = next(r for r in rows if r["scenario"] == "standard_care")
    assert std["strength_change_percent"] == pytest.approx(5.3, abs=0.1)
    assert {r["scenario"] for r in rows} == {"baseline", "no_treatment", "standard_care", "regenerative_12mo"}
