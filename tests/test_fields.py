"""Tests of femur_fe.fe.fields: Voigt packing, principal strains, von Mises, SED, EES, nodal averages."""
from __future__ import annotations

import numpy as np
import pytest

import femur_fe as ff
from femur_fe.errors import FemurFeError
from femur_fe.fe.fields import (
    effective_strain,
    element_fields,
    principal_strains,
    principal_values,
    strain_energy_density,
    tensor_from_voigt,
    voigt_from_tensor,
    von_mises,
)
from femur_fe.fe.recovery import node_average


def _sym(rng, shape):
    a = rng.normal(size=shape + (3, 3))
    return 0.5 * (a + np.swapaxes(a, -1, -2))


def _isotropic_stress(eps, young, nu):
    lam = young * nu / ((1 + nu) * (1 - 2 * nu))
    mu = young / (2 * (1 + nu))
    tr = np.trace(eps, axis1=-2, axis2=-1)
    return 2 * mu * eps + lam * tr[..., None, None] * np.eye(3)


def test_voigt_order_and_round_trip(rng):
    t = np.array([[1.0, 4.0, 6.0], [4.0, 2.0, 5.0], [6.0, 5.0, 3.0]])
    np.testing.assert_array_equal(voigt_from_tensor(t), [1, 2, 3, 4, 5, 6])  # xx yy zz xy yz xz
    many = _sym(rng, (7, 2))
    np.testing.assert_array_equal(tensor_from_voigt(voigt_from_tensor(many)), many)
    with pytest.raises(FemurFeError, match=r"\(\.\.\., 3, 3\)"):
        voigt_from_tensor(np.zeros((4, 6)))
    with pytest.raises(FemurFeError, match=r"\(\.\.\., 6\)"):
        tensor_from_voigt(np.zeros((4, 3, 3)))


def test_principal_strains_sorted_and_reconstruct(rng):
    eps = _sym(rng, (50,))
    w, v = principal_strains(eps)
    assert np.all(np.diff(w, axis=-1) <= 0)
    # V diag(w) V^T reproduces the tensor; columns are unit vectors
    rec = np.einsum("nik,nk,njk->nij", v, w, v)
    np.testing.assert_allclose(rec, eps, atol=1e-12)
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-12)
    np.testing.assert_allclose(principal_values(eps), w)
    # a diagonal tensor with shuffled entries: values sorted, directions the axes
    w1, v1 = principal_strains(np.diag([-0.002, 0.003, 0.001]))
    np.testing.assert_allclose(w1, [0.003, 0.001, -0.002])
    np.testing.assert_allclose(np.abs(v1[:, 0]), [0, 1, 0], atol=1e-15)
    np.testing.assert_allclose(np.abs(v1[:, 2]), [1, 0, 0], atol=1e-15)


def test_von_mises_known_states():
    assert von_mises(np.diag([-50.0, 0, 0])) == pytest.approx(50.0)  # uniaxial
    tau = np.zeros((3, 3))
    tau[0, 1] = tau[1, 0] = 10.0
    assert von_mises(tau) == pytest.approx(np.sqrt(3) * 10.0)  # pure shear
    assert von_mises(np.eye(3) * 7.0) == pytest.approx(0.0, abs=1e-12)  # hydrostatic
    # classical formula in principal stresses
    s = np.diag([30.0, -10.0, 5.0])
    ref = np.sqrt(0.5 * ((30 + 10) ** 2 + (-10 - 5) ** 2 + (5 - 30) ** 2))
    assert von_mises(s) == pytest.approx(ref)


def test_sed_and_effective_strain(rng):
    young, nu = 1500.0, 0.3
    eps = _sym(rng, (20,)) * 1e-3
    sig = _isotropic_stress(eps, young, nu)
    sed = strain_energy_density(sig, eps)
    # independent: 0.5 * sigma_voigt . eps_engineering (engineering shear = 2 * tensor shear)
    sv, ev = voigt_from_tensor(sig), voigt_from_tensor(eps)
    ev[:, 3:] *= 2.0
    np.testing.assert_allclose(sed, 0.5 * np.sum(sv * ev, axis=1), rtol=1e-12)
    assert np.all(sed > 0)
    # uniaxial stress: eps = diag(e, -nu e, -nu e) -> SED = E e^2 / 2 -> EES = |e|
    e = 0.004
    eps_u = np.diag([e, -nu * e, -nu * e])
    sig_u = _isotropic_stress(eps_u, young, nu)
    np.testing.assert_allclose(sig_u, np.diag([young * e, 0, 0]), atol=1e-12)
    assert effective_strain(strain_energy_density(sig_u, eps_u), young) == pytest.approx(e, rel=1e-12)
    with pytest.raises(FemurFeError, match="young must be > 0"):
        effective_strain(np.ones(3), np.array([1.0, 0.0, 1.0]))


def _two_tets():
    # tets 0 and 1 share the face (1, 2, 3); node 5 is an orphan
    pts = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1], [2, 2, 2], [9, 9, 9]], dtype=float)
    cells = np.array([[0, 1, 2, 3], [1, 2, 3, 4]])
    if np.linalg.det(pts[cells[1, 1:]] - pts[cells[1, 0]]) < 0:
        cells[1] = cells[1][[0, 2, 1, 3]]
    return ff.Mesh(pts, cells, "tetra")


def test_nodal_average_volume_weighted():
    mesh = _two_tets()
    vol = mesh.cell_volumes()
    assert vol[0] == pytest.approx(1 / 6)
    assert vol[1] > vol[0]
    vals = np.array([1.0, 4.0])
    out = node_average(mesh, vals)
    # node 0 only in tet 0, node 4 only in tet 1, shared nodes: (V0*1 + V1*4)/(V0+V1)
    assert out[0] == pytest.approx(1.0)
    assert out[4] == pytest.approx(4.0)
    shared = (vol[0] * 1 + vol[1] * 4) / vol.sum()
    np.testing.assert_allclose(out[[1, 2, 3]], shared)
    assert np.isnan(out[5])  # orphan
    # tensors: same weights per component; explicit volumes override
    t = np.stack([np.eye(3), 2 * np.eye(3)])
    tn = node_average(mesh, t, np.array([1.0, 3.0]))
    np.testing.assert_allclose(tn[1], 1.75 * np.eye(3))
    with pytest.raises(FemurFeError, match="first dimension"):
        node_average(mesh, np.ones(3))


def test_element_fields_keys_and_shapes(rng):
    eps = _sym(rng, (5,)) * 1e-3
    sig = _isotropic_stress(eps, 1000.0, 0.3)
    out = element_fields(eps, sig, np.full(5, 1000.0))
    assert set(out) == {"strain", "stress", "von_mises", "principal_strain", "sed", "effective_strain"}
    assert out["strain"].shape == (5, 6) and out["principal_strain"].shape == (5, 3)
    np.testing.assert_allclose(out["effective_strain"], np.sqrt(2 * out["sed"] / 1000.0))
