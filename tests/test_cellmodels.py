"""Komarova et al. 2003 (Bone 33:206) cell-population model."""
from __future__ import annotations

import math

import numpy as np
import pytest

from femur_fe.errors import ScenarioError
from femur_fe.therapy.cellmodels import (
    DAYS_PER_MONTH,
    CellTherapy,
    Komarova2003,
    bone_mass_ratio,
    days_from_months,
    months_from_days,
)


def test_steady_state_published_values():
    # closed form with gamma = -1: x1 = (a1/b1) sqrt(b2/a2) = 15 sqrt(0.005), x2 = 15 / sqrt(0.005)
    m = Komarova2003()
    assert m.gamma == pytest.approx(-1.0, abs=1e-15)
    x1, x2 = m.steady_state()
    assert x1 == pytest.approx(15 * math.sqrt(0.005), rel=1e-14)
    assert x2 == pytest.approx(15 / math.sqrt(0.005), rel=1e-14)
    # the 4-5 digit steady state of the published parameters (BioModels BIOMD0000000148)
    assert round(x1, 4) == 1.0607 and round(x2, 2) == 212.13
    # it is a fixed point of the right-hand side
    assert np.abs(m.rhs(0.0, np.array([x1, x2, 100.0]))).max() < 1e-12


def test_started_at_steady_state_bone_mass_stays_100():
    m = Komarova2003()
    tr = m.simulate(1000.0)
    x1, x2 = m.steady_state()
    # the ODE is at rest: only integrator round-off can move it (rtol = atol = 1e-9 per step; the
    # max() terms integrate positive round-off, measured drift 3.5e-9 over 1000 days)
    assert np.abs(tr.z - 100.0).max() < 1e-7
    assert np.abs(tr.x1 - x1).max() < 1e-9 and np.abs(tr.x2 - x2).max() < 1e-6


def test_transient_from_biomodels_start_is_one_remodeling_cycle():
    m = Komarova2003()
    tr = m.simulate(1000.0, (11.0, 212.0, 100.0))
    x1, x2 = m.steady_state()
    i_min = int(np.argmin(tr.z))
    # resorption first (osteoclast excess), then osteoblasts overshoot and refill
    assert tr.z[i_min] < 95.0 and tr.t_days[i_min] < 40.0
    assert tr.x2.max() > 1.5 * x2 and tr.t_days[np.argmax(tr.x2)] > tr.t_days[np.argmax(tr.x1)]
    # the cycle ends back at the steady state with (almost) the initial bone mass
    assert abs(tr.x1[-1] - x1) < 1e-5 and abs(tr.x2[-1] - x2) < 1e-3
    assert abs(tr.z[-1] - 100.0) < 0.1
    assert np.abs(np.diff(tr.z[-50:])).max() < 1e-6  # settled


def test_anabolic_therapy_long_run_rate_matches_closed_form():
    # alpha2 * h: new steady state x1 = x1bar / sqrt(h), x2 = x2bar sqrt(h) (gamma = -1), so
    # once settled dz/dt = k2 x2bar (sqrt(h) - 1) exactly (x1 below reference: no resorption)
    h = 1.05
    m = Komarova2003()
    tr = m.simulate(1500.0, therapy=CellTherapy(alpha2_factor=h))
    _, x2 = m.steady_state()
    sel = tr.t_days > 800
    slope = np.polyfit(tr.t_days[sel], tr.z[sel], 1)[0]
    assert slope == pytest.approx(m.k2 * x2 * (math.sqrt(h) - 1.0), rel=1e-6)


def test_lowered_osteoclast_production_alone_gives_no_change_documented():
    # a model property stated in the module doc: both populations drop below the reference
    r = bone_mass_ratio(CellTherapy(alpha1_factor=0.8), np.array([6.0, 12.0, 36.0]))
    assert np.abs(r - 1.0).max() < 1e-9


def test_therapy_window_stops_the_gain():
    th = CellTherapy(alpha2_factor=1.1, start_days=30.0, duration_days=365.0)
    tr = Komarova2003().simulate(3 * 365.0, therapy=th)
    before = tr.z[tr.t_days <= 30.0]
    assert np.abs(before - 100.0).max() < 1e-7
    late = tr.t_days > 900
    assert tr.z[late][0] > 101.0
    assert np.ptp(tr.z[late]) < 1e-3 * np.ptp(tr.z)  # plateau after the therapy


def test_bone_mass_ratio_months_and_units():
    assert DAYS_PER_MONTH == pytest.approx(30.4375)
    assert months_from_days(days_from_months(7.5)) == pytest.approx(7.5)
    r = bone_mass_ratio(CellTherapy(alpha2_factor=1.05), 12.0)
    tr = Komarova2003().simulate(365.25, therapy=CellTherapy(alpha2_factor=1.05))
    assert r == pytest.approx(tr.z[-1] / 100.0, rel=1e-9)
    assert bone_mass_ratio(None, 24.0) == pytest.approx(1.0, abs=1e-9)


@pytest.mark.parametrize("kw", [dict(alpha1_factor=0.0), dict(alpha2_factor=-1.0), dict(beta1_factor=float("nan")),
                                dict(duration_days=0.0), dict(start_days=-1.0)])
def test_bad_therapy_raises(kw):
    with pytest.raises(ScenarioError):
        CellTherapy(**kw)


def test_bad_inputs_raise():
    with pytest.raises(ScenarioError, match="k1"):
        Komarova2003(k1=-0.1)
    with pytest.raises(ScenarioError, match="y0"):
        Komarova2003().simulate(10.0, (0.0, 212.0, 100.0))
    tr = Komarova2003().simulate(30.0)
    with pytest.raises(ScenarioError, match="window"):
        tr.bone_mass_ratio(5.0)
