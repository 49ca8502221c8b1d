"""Density calibration: phantom fits (Mindways test vector), conversions, serialisation."""
from __future__ import annotations

import logging

import numpy as np
import pytest

import femur_fe as ff
from femur_fe.errors import CTError, MaterialError

# Bonelab/Ogo archived Mindways calibration test (mindways_calibration.py) [V-code]
ROD_K2HPO4 = [375.83, 157.05, 58.88, -53.40, -51.83]
ROD_WATER = [923.20, 1119.52, 1103.57, 1056.95, 1012.25]
ROD_HU = [462.936, 345.738, 176.712, -35.378, -69.549]


def test_mindways_test_vector():
    fit = ff.bone.fit_phantom_calibration(ROD_HU, ROD_K2HPO4, water_mg=ROD_WATER)
    assert fit.method == "mindways"
    # reference values are printed to 5-6 significant digits: 1e-4 absolute covers that rounding
    assert fit.sigma_ref == pytest.approx(1.46696, abs=1e-4)
    assert fit.beta_ref == pytest.approx(-1009.750, abs=1e-4)
    assert fit.sigma_ct == pytest.approx(1.24956, abs=1e-4)
    assert fit.beta_ct == pytest.approx(-10.150, abs=1e-4)
    assert fit.r_value == pytest.approx(0.99985, abs=1e-5)
    cal = fit.calibration
    assert cal.slope * 1000 == pytest.approx(0.80028, rel=1e-4)
    assert cal.intercept * 1000 == pytest.approx(8.1229, rel=1e-4)
    pred = ff.bone.qct_mg_from_hu(ROD_HU, cal, clamp=False)
    assert pred == pytest.approx([378.60, 284.81, 149.54, -20.19, -47.54], rel=1e-4)
    assert cal.mineral == "k2hpo4" and "Mindways" in cal.source


def test_linear_phantom_fit_recovers_line():
    hu = np.array([-20.0, 100.0, 400.0, 800.0])
    rho = 0.7 * hu + 12.0  # HA rods, mg/cm3
    fit = ff.bone.fit_phantom_calibration(hu, rho, mineral="ha")
    assert fit.calibration.slope == pytest.approx(0.0007, rel=1e-12)
    assert fit.calibration.intercept == pytest.approx(0.012, rel=1e-12)
    assert np.allclose(fit.residuals_mg, 0.0, atol=1e-9)
    assert fit.r_value == pytest.approx(1.0)


def test_phantom_fit_rejects_bad_input():
    with pytest.raises(MaterialError, match="same number"):
        ff.bone.fit_phantom_calibration([1.0, 2.0], [1.0, 2.0, 3.0])
    with pytest.raises(MaterialError, match="different"):
        ff.bone.fit_phantom_calibration([1.0, 1.0], [5.0, 5.0])
    with pytest.raises(MaterialError, match="K2HPO4"):
        ff.bone.fit_phantom_calibration(ROD_HU, ROD_K2HPO4, water_mg=ROD_WATER, mineral="ha")


def test_calibration_dict_roundtrip_and_units():
    cal = ff.bone.DensityCalibration.from_mg(0.80028, 8.1229, source="Mindways test")
    d = cal.to_dict()
    assert d["unit"] == "g/cm3" and d["density_type"] == "qct"
    assert ff.bone.DensityCalibration.from_dict(d) == cal
    mg = ff.bone.DensityCalibration.from_dict({"slope": 0.80028, "intercept": 8.1229, "unit": "mg/cm3"})
    assert mg.slope == pytest.approx(cal.slope) and mg.intercept == pytest.approx(cal.intercept)
    with pytest.raises(MaterialError, match="'unit'"):
        ff.bone.DensityCalibration.from_dict({"slope": 0.8, "intercept": 8.0})
    with pytest.raises(MaterialError, match="unknown key 'slop'; did you mean 'slope'"):
        ff.bone.DensityCalibration.from_dict({"slope": 0.8, "intercept": 8.0, "unit": "mg/cm3", "slop": 1})
    with pytest.raises(MaterialError, match="from_mg"):
        ff.bone.DensityCalibration(0.8, 8.0)  # mg coefficients passed as g/cm3
    assert cal.hu(cal.density(300.0, clamp=False)) == pytest.approx(300.0)


def test_negative_density_clamped_with_count(caplog):
    cal = ff.bone.DensityCalibration.from_mg(0.8, 0.0)
    with caplog.at_level(logging.WARNING, logger="femur_fe.bone.calibration"):
        rho = ff.bone.qct_from_hu([-100.0, -50.0, 0.0, 500.0], cal)
    assert rho.tolist() == [0.0, 0.0, 0.0, pytest.approx(0.4)]
    assert "2 of 4" in caplog.text and "clamped" in caplog.text
    assert ff.bone.qct_from_hu([-100.0], cal, clamp=False)[0] == pytest.approx(-0.08)


def test_density_conversions_spot_values():
    # Keyak et al. 1994 (J Biomed Mater Res 28:1329) computed: 200 mg/cm3 K2HPO4 -> 250.9 mg/cm3 ash
    assert ff.bone.ash_from_k2hpo4_keyak1994(0.200) == pytest.approx(0.2509, rel=1e-12)
    assert ff.bone.ash_mg_from_k2hpo4_mg_keyak1994(200.0) == pytest.approx(250.9, rel=1e-12)
    # Ogo clamp check: -31 mg/cm3 -> 6.04 mg/cm3 ash
    assert ff.bone.ash_mg_from_k2hpo4_mg_keyak1994(-31.0) == pytest.approx(6.04, rel=1e-12)
    # Schileo 2008: ash / 0.6
    assert ff.bone.apparent_from_ash(0.6) == pytest.approx(1.0)
    assert ff.bone.ash_from_apparent(1.0) == pytest.approx(0.6)
    assert ff.bone.ash_from_qct_schileo2008(0.0) == pytest.approx(0.0789)
    assert ff.bone.ash_from_k2hpo4_keyak2005(1.0) == pytest.approx(1.2723)


def test_convert_density_refuses_ambiguous_paths():
    with pytest.raises(MaterialError, match="qct_to_ash"):
        ff.bone.convert_density(0.3, "qct", "apparent")
    with pytest.raises(MaterialError, match="back to QCT"):
        ff.bone.convert_density(0.3, "ash", "qct")
    app = ff.bone.convert_density(0.2, "qct", "apparent", qct_to_ash="keyak1994")
    assert app == pytest.approx((1.06 * 0.2 + 0.0389) / 0.6)
    assert ff.bone.convert_density(0.3, "apparent", "ash") == pytest.approx(0.18)
    assert ff.bone.convert_density(0.3, "qct", "ash", qct_to_ash=lambda r: 2 * r) == pytest.approx(0.6)


def test_calibrated_ct():
    a = np.linspace(-1000.0, 1500.0, 60).reshape(3, 4, 5)
    ct = ff.io.CTImage.from_array(a, unit="HU")
    cal = ff.bone.DensityCalibration.from_mg(0.8, 10.0)
    dens = ff.bone.calibrated_ct(ct, cal)
    assert dens.unit == "g/cm3"
    assert np.allclose(dens.array, np.maximum(0.0008 * a + 0.01, 0.0))
    with pytest.raises(CTError, match="HU"):
        ff.bone.calibrated_ct(dens, cal)
