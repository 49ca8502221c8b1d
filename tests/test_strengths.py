"""Strengths reported together (summary.json "strengths"): each checked against its definition."""
from __future__ import annotations

import numpy as np
import pytest

import femur_fe as ff
from femur_fe.analysis.strengths import applicable, format_strengths, strengths


@pytest.fixture(scope="module")
def vertebra():
    return ff.run("vertebral_compression", {"bundled": "vertebra"})


def test_pistoia_strength_follows_its_definition(vertebra):
    res = vertebra
    table = strengths(res)
    # Pistoia et al. 2002: the load at which 2 % of the bone volume reaches an energy-equivalent
    # strain of 0.007, EES = sqrt(2 SED / E), SED = sigma:epsilon / 2; computed here from the
    # stresses and strains directly, volume-weighted over the elements
    sed = 0.5 * np.einsum("eij,eij->e", res.stress, res.strain)
    ees = np.sqrt(2.0 * sed / res.model.young)
    vol = res.mesh.cell_volumes()
    order = np.argsort(-ees)
    share = np.cumsum(vol[order]) / vol.sum()
    ees_star = ees[order][np.argmax(share >= 0.02)]
    expected = abs(res.load_force_N) * 0.007 / ees_star
    # same arithmetic on the same arrays: only summation order differs (1e-12); the 2 % cut
    # falls between elements of different EES, so an off-by-one would change it by far more
    assert table["pistoia"]["strength_N"] == pytest.approx(expected, rel=1e-12)
    k = np.argmax(share >= 0.02)
    assert abs(ees[order][k + 1] - ees_star) / ees_star > 1e-9
    assert table["pistoia"]["parameters"]["critical_strain"] == 0.007
    assert table["pistoia"]["parameters"]["critical_volume"] == 0.02
    assert not table["pistoia"]["case_criterion"]


def test_apparent_strain_is_the_case_criterion_of_the_vertebra(vertebra):
    res = vertebra
    table = strengths(res)
    assert set(table) == {"apparent_strain", "pistoia"}            # no nonlinear run, not a femur
    assert table["apparent_strain"]["case_criterion"] and table["apparent_strain"]["used_for_risk"]
    # Crawford 2003: 0.68 % apparent strain x stiffness x endplate-to-endplate height
    expected = 0.0068 * res.stiffness_N_per_mm * res.height_mm
    assert table["apparent_strain"]["strength_N"] == pytest.approx(expected, rel=1e-12)
    assert table["apparent_strain"]["strength_N"] == res.linear.strength_N
    # the summary holds the same table and the linear result is untouched by the extra criteria
    s = res.summary()
    assert s["strengths"] == table and s["strength_linear_N"] == res.linear.strength_N
    assert res.linear.criterion == "apparent_strain"
    lines = format_strengths(table)
    assert len(lines) == 2 and "Pistoia" in lines[1]


def test_femur_cases_add_the_principal_strain_criterion(vertebra):
    class Femur:
        case = type("C", (), {"bone": "femur"})()
        height_mm, plate_displacement_mm = 80.0, 1.0

    assert set(applicable(Femur())) == {"pistoia", "max_principal_strain"}
    assert set(applicable(vertebra)) == {"pistoia", "apparent_strain"}
