"""Tests of femur_fe.analysis.risk: fall impact force, factor of risk, classification, summary fields."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from femur_fe.analysis.failure import Pistoia
from femur_fe.analysis.risk import (
    FRAGILE_THRESHOLDS_N,
    classify_strength,
    factor_of_risk,
    fall_impact_force,
    summary_fields,
)
from femur_fe.errors import FemurFeError


def test_fall_force_spot_value_and_attenuation():
    # 8.25 g m (h/170)^0.5 computed for 65 kg, 165 cm -> 5183 N
    f = fall_impact_force(65.0, 165.0)
    assert f.peak_N == pytest.approx(5183, abs=0.5)
    assert f.attenuated_N is None and f.force_N == f.peak_N
    # formula: 8.25 g m sqrt(h/170); at h = 170 cm, F / m = 8.25 * 9.81
    assert fall_impact_force(80.0, 170.0).peak_N == pytest.approx(8.25 * 9.81 * 80.0)
    # 71 N per mm of trochanteric soft tissue
    g = fall_impact_force(65.0, 165.0, soft_tissue_mm=30.0)
    assert g.attenuated_N == pytest.approx(g.peak_N - 71.0 * 30.0)
    assert g.force_N == g.attenuated_N
    assert json.loads(json.dumps(g.to_dict()))["soft_tissue_mm"] == 30.0


@pytest.mark.parametrize("args, kw, msg", [
    ((65.0, 1.65), {}, "in cm, e.g. 165, not metres"),
    ((6.5, 165.0), {}, "body_mass_kg"),
    ((65.0, 165.0), dict(soft_tissue_mm=90.0), "attenuates the whole peak force"),
    ((65.0, 165.0), dict(soft_tissue_mm=-1.0), "soft_tissue_mm"),
    (("heavy", 165.0), {}, "must be a number"),
])
def test_fall_force_bad_input(args, kw, msg):
    with pytest.raises(FemurFeError, match=msg):
        fall_impact_force(*args, **kw)


def test_factor_of_risk():
    assert factor_of_risk(4000.0, 2000.0) == 2.0
    assert factor_of_risk(3000.0, 4000.0) == 0.75
    with pytest.raises(FemurFeError, match="strength_N"):
        factor_of_risk(3000.0, 0.0)


@pytest.mark.parametrize("strength, site, sex, label, band", [
    (3000.0, "hip", "female", "fragile", "moderately low"),  # threshold is inclusive
    (3000.1, "hip", "female", "not fragile", "moderately low"),
    (3400.0, "hip", "male", "fragile", "moderately low"),
    (3600.0, "femur", "M", "not fragile", "moderately low"),
    (1999.9, "hip", "female", "fragile", "very low"),
    (4000.0, "hip", "male", "not fragile", "not low"),
    (4500.0, "spine", "female", "fragile", None),
    (6000.0, "vertebra", "male", "fragile", None),
    (6500.1, "spine", "male", "not fragile", None),
])
def test_classification_thresholds(strength, site, sex, label, band):
    c = classify_strength(strength, site, sex)
    assert c.label == label and c.band == band
    assert c.threshold_N == FRAGILE_THRESHOLDS_N[(c.site, c.sex)]
    assert "Kopperdahl" in c.source


def test_classification_bad_input():
    with pytest.raises(FemurFeError, match="'hip' or 'spine'"):
        classify_strength(3000.0, "wrist", "female")
    with pytest.raises(FemurFeError, match="'female' or 'male'"):
        classify_strength(3000.0, "hip", "x")


def _one_voxel_pistoia(ees=0.001, load=150.0):
    """Pistoia strength of a single 1 mm voxel in uniaxial stress with EES = ees."""
    import femur_fe as ff

    pts = np.array([[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0], [0, 0, 1], [1, 0, 1], [1, 1, 1], [0, 1, 1.0]])
    mesh = ff.Mesh(pts, np.arange(8)[None], "hexahedron")
    strain = np.diag([ees, -0.3 * ees, -0.3 * ees])[None]
    stress = np.diag([1000.0 * ees, 0, 0])[None]
    return Pistoia().linear_strength(load, mesh, strain=strain, stress=stress, young=np.array([1000.0]))


def test_summary_fields_from_a_linear_strength():
    lin = _one_voxel_pistoia()
    assert lin.strength_N == pytest.approx(150.0 * 0.007 / 0.001)
    impact = fall_impact_force(65.0, 165.0)
    out = summary_fields(linear=lin, site="hip", sex="female", impact=impact)
    assert out["strength_linear_N"] == pytest.approx(1050.0)
    assert out["strength_nonlinear_N"] is None
    assert out["criterion"]["name"] == "pistoia"
    assert out["criterion"]["parameters"]["critical_volume"] == 0.02
    assert out["factor_of_risk"] == pytest.approx(impact.peak_N / lin.strength_N)
    assert out["classification"]["label"] == "fragile"  # 1050 N <= 3000 N
    assert out["classification"]["strength_source"] == "linear:pistoia"
    assert out["strength_used"] == "linear:pistoia"
    json.dumps(out)  # JSON-ready
    empty = summary_fields()
    assert empty["strength_linear_N"] is None and empty["classification"] is None
    assert math.isclose(summary_fields(linear=lin, impact=2000.0)["factor_of_risk"], 2000.0 / lin.strength_N)
