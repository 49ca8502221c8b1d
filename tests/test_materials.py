"""Density-modulus laws: spot values of the published laws, options, registry, density types."""
from __future__ import annotations

import logging

import numpy as np
import pytest

import femur_fe as ff
from femur_fe.errors import MaterialError

# (registry name, density g/cm3 of the law's type, E in MPa) -- spot values computed from the published equations
SPOT_VALUES = [
    ("morgan2003_femoral_neck", 0.5, 2438.7),
    ("morgan2003_vertebra", 0.2, 384.1),
    ("morgan2003_tibia", 0.3, 1516.7),
    ("morgan2003_greater_trochanter", 0.3, 1087.7),
    ("keyak1994_chain", 0.200, 442.6),
    ("kopperdahl2002_linear", 0.2, 611.3),
    ("eberle2013", 0.5, 5587.6),
]


@pytest.mark.parametrize("name,rho,expected", SPOT_VALUES)
def test_spot_values(name, rho, expected):
    # the reference values are printed to 0.1 MPa, i.e. < 1e-4 relative for all of them
    assert ff.bone.material_law(name).young(rho) == pytest.approx(expected, rel=1e-4)


def test_schileo_chain_spot_value():
    law = ff.bone.material_law("morgan2003_femoral_neck")
    # rho_ash = 0.6 -> rho_app = 1.0 -> 6850 MPa
    assert law.young_from_density(0.6, "ash") == pytest.approx(6850.0, rel=1e-12)


def test_formulas_vectorised_and_exact():
    rho = np.linspace(0.05, 1.5, 11)
    assert np.allclose(ff.bone.Keller1994(variant="spine").young(rho), 1890 * rho ** 1.92, rtol=1e-14)
    assert np.allclose(ff.bone.Keller1994(variant="combined").young(rho), 10500 * rho ** 2.29, rtol=1e-14)
    assert np.allclose(ff.bone.Kopperdahl2002(form="ogo_power").young(rho), 2980 * rho ** 1.05, rtol=1e-14)
    assert np.allclose(ff.bone.KopperdahlKeaveny1998().young(rho), np.maximum(2100 * rho - 80, 0.1), rtol=1e-14)
    assert np.allclose(ff.bone.Keaveny1997().young(rho), np.maximum(1540 * rho - 58, 0.1), rtol=1e-14)
    assert np.allclose(ff.bone.CarterHayes1977(strain_rate_per_s=1.0).young(rho), 3790 * rho ** 3, rtol=1e-14)
    assert np.allclose(ff.bone.CarterHayes1977(strain_rate_per_s=0.01).young(rho),
                       3790 * 0.01 ** 0.06 * rho ** 3, rtol=1e-14)
    assert np.allclose(ff.bone.PowerLaw(a_mpa=6850, b=1.49).young(rho), 6850 * rho ** 1.49, rtol=1e-14)
    assert np.allclose(ff.bone.LinearLaw(slope_mpa=3230, intercept_mpa=-34.7, density_type="qct").young(rho),
                       np.maximum(3230 * rho - 34.7, 0.1), rtol=1e-14)
    assert ff.bone.material_law("morgan2003").young(rho).shape == rho.shape


def test_floor_cortical_override_and_poisson():
    law = ff.bone.PowerLaw(a_mpa=10500, b=2.29, density_type="ash", e_min_mpa=5.0,
                      cortical_threshold=1.0, cortical_modulus_mpa=20000.0, poisson=0.35)
    e = law.young([0.0, 0.02, 0.5, 1.0, 1.4])
    assert e[0] == 5.0 and e[1] == 5.0  # 10500 * 0.02^2.29 = 1.36 MPa < floor
    assert e[2] == pytest.approx(10500 * 0.5 ** 2.29)
    assert e[3] == e[4] == 20000.0
    assert law.poisson == 0.35
    with pytest.raises(MaterialError, match="both"):
        ff.bone.PowerLaw(a_mpa=1000, b=2, cortical_threshold=1.0)
    with pytest.raises(MaterialError, match="poisson"):
        ff.bone.PowerLaw(a_mpa=1000, b=2, poisson=0.5)


def test_no_floor_makes_nonpositive_modulus_an_error():
    law = ff.bone.Kopperdahl2002(form="linear", e_min_mpa=0.0)
    assert law.young(0.2) == pytest.approx(611.3)
    with pytest.raises(MaterialError, match="e_min_mpa"):
        law.young([0.005, 0.2])


def test_negative_density_clamped_with_warning(caplog):
    law = ff.bone.material_law("keller1994_combined")
    with caplog.at_level(logging.WARNING):
        e = law.young([-0.1, -0.02, 0.3])
    assert e[0] == e[1] == 0.1  # clamped to rho 0 -> E 0 -> floor 0.1 MPa
    assert "2 of 3" in caplog.text
    with pytest.raises(MaterialError, match="NaN"):
        law.young([0.2, np.nan])


def test_density_type_conversion_or_refusal():
    neck = ff.bone.material_law("morgan2003_femoral_neck")  # apparent
    assert neck.density_type == "apparent"
    assert neck.young_from_density(0.3, "ash") == pytest.approx(6850 * 0.5 ** 1.49)
    with pytest.raises(MaterialError, match="qct_to_ash"):
        neck.young_from_density(0.3, "qct")
    e = neck.young_from_density(0.2, "qct", qct_to_ash="keyak1994")
    assert e == pytest.approx(6850 * ((1.06 * 0.2 + 0.0389) / 0.6) ** 1.49)
    eberle = ff.bone.material_law("eberle2013")  # qct
    with pytest.raises(MaterialError, match="back to QCT"):
        eberle.young_from_density(0.5, "apparent")
    keller = ff.bone.material_law("keller1994_combined")  # ash
    assert keller.young_from_density(0.5, "apparent") == pytest.approx(10500 * 0.3 ** 2.29)


def test_piecewise_law():
    law = ff.bone.PiecewiseLaw(thresholds=(0.3, 1.0),
                          laws=(ff.bone.PowerLaw(a_mpa=1000, b=2), ff.bone.LinearLaw(slope_mpa=2000, intercept_mpa=-90),
                                ff.bone.PowerLaw(a_mpa=15000, b=1)))
    e = law.young([0.1, 0.3, 0.5, 1.0, 1.5])
    assert e == pytest.approx([10.0, 510.0, 910.0, 15000.0, 22500.0])
    assert law.density_type == "apparent"
    back = ff.bone.material_law_from_dict(law.to_dict())
    assert np.allclose(back.young([0.1, 0.5, 1.5]), law.young([0.1, 0.5, 1.5]))
    with pytest.raises(MaterialError, match="same density type"):
        ff.bone.PiecewiseLaw(thresholds=(0.3,), laws=(ff.bone.PowerLaw(a_mpa=1, b=1, density_type="ash"),
                                                 ff.bone.PowerLaw(a_mpa=1, b=1)))
    with pytest.raises(MaterialError, match="len\\(laws\\)"):
        ff.bone.PiecewiseLaw(thresholds=(0.3, 0.5), laws=(ff.bone.PowerLaw(a_mpa=1, b=1),))


def test_registry_names_params_and_roundtrip():
    names = ff.bone.material_law_names()
    for required in ("morgan2003_femoral_neck", "keller1994_combined", "power", "linear", "piecewise",
                     "kopperdahl2002_ogo_power", "carter_hayes1977", "keyak1994_chain"):
        assert required in names
    with pytest.raises(MaterialError, match="valid names: .*morgan2003_femoral_neck"):
        ff.bone.material_law("morgan2030")
    with pytest.raises(MaterialError, match="does not take"):
        ff.bone.material_law("morgan2003_femoral_neck", a_mpa=5)
    with pytest.raises(MaterialError, match="fixes"):
        ff.bone.material_law("morgan2003_vertebra", site="tibia")
    p = ff.bone.material_law("power", a_mpa=10500.0, b=2.29, density_type="ash", e_min_mpa=0.1, poisson=0.3)
    assert p.young(0.5) == pytest.approx(10500 * 0.5 ** 2.29)
    for name in names:
        if name == "piecewise":
            continue
        kw = {"a_mpa": 1000.0, "b": 2.0} if name == "power" else {"slope_mpa": 1000.0} if name == "linear" else {}
        law = ff.bone.material_law(name, **kw)
        again = ff.bone.material_law_from_dict(law.to_dict())
        assert type(again) is type(law) and again == law


def test_yield_relations():
    k = ff.bone.Kopperdahl2002(form="linear")
    assert k.yield_stress_mpa(0.2) == pytest.approx(-0.750 + 24.9 * 0.2)
    assert ff.bone.Kopperdahl2002(form="ogo_power").yield_stress_mpa(0.2) == pytest.approx(37.4 * 0.2 ** 1.39)
    assert ff.bone.Morgan2003(site="femoral_neck").yield_strain() == pytest.approx(0.0085)
    with pytest.raises(MaterialError, match="compression"):
        ff.bone.Morgan2003(site="vertebra").yield_strain("tension")
    assert ff.bone.KopperdahlKeaveny1998().yield_strain("tension") == pytest.approx(0.0078)


def test_bad_law_parameters():
    with pytest.raises(MaterialError, match="site"):
        ff.bone.Morgan2003(site="skull")
    with pytest.raises(MaterialError, match="a_mpa > 0"):
        ff.bone.PowerLaw(a_mpa=-1.0, b=2.0)
    with pytest.raises(MaterialError, match="density_type"):
        ff.bone.PowerLaw(a_mpa=1000.0, b=2.0, density_type="wet")
