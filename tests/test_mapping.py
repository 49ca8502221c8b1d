"""CT -> mesh mapping: exact integration of linear fields, policies, frames, modulus chain, graded bar."""
from __future__ import annotations

import logging

import numpy as np
import pytest
from conftest import require_shared
from scipy.spatial import Delaunay

import femur_fe as ff
from femur_fe.bone.mapping import integration_rule
from femur_fe.errors import CTError, MaterialError
from femur_fe.fe.elements import quadrature, shape_functions

GRAD = np.array([3.0, -2.0, 5.0])  # HU per mm
C0 = 120.0


def _linear_ct(direction=None, spacing=(0.9, 1.1, 1.3), shape=(40, 36, 30), origin=None):
    """A CT whose value is the linear field C0 + GRAD . x of the world (LPS) position.

    By default the grid is centred on the world origin whatever its direction.
    """
    d = np.eye(3) if direction is None else np.asarray(direction)
    if origin is None:
        origin = -d @ (np.asarray(spacing) * (np.asarray(shape) - 1) / 2.0)
    base = ff.io.CTImage.from_array(np.zeros(shape), spacing, origin, d, check_unit=False)
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1).reshape(-1, 3)
    vals = (base.world_from_index(ijk) @ GRAD + C0).reshape(shape)
    return base.with_array(vals)


def _field(x):
    return x @ GRAD + C0


def _tet4_mesh(rng, n=60, half=6.0):
    pts = rng.uniform(-half, half, size=(n, 3))
    tets = Delaunay(pts).simplices.astype(np.int64)
    v = pts[tets]
    det = np.einsum("ij,ij->i", np.cross(v[:, 1] - v[:, 0], v[:, 2] - v[:, 0]), v[:, 3] - v[:, 0])
    tets[det < 0] = tets[det < 0][:, [0, 2, 1, 3]]
    keep = np.abs(det) > 1e-3
    return ff.Mesh(pts, tets[keep], "tetra")


def _kuhn_tets(hexes: ff.Mesh) -> ff.Mesh:
    """Split every hex into 6 well-shaped tets around its 0-6 diagonal (orientation fixed)."""
    split = np.array([[0, 1, 2, 6], [0, 2, 3, 6], [0, 3, 7, 6], [0, 7, 4, 6], [0, 4, 5, 6], [0, 5, 1, 6]])
    tets = hexes.cells[:, split].reshape(-1, 4)
    v = hexes.points[tets]
    det = np.einsum("ij,ij->i", np.cross(v[:, 1] - v[:, 0], v[:, 2] - v[:, 0]), v[:, 3] - v[:, 0])
    tets[det < 0] = tets[det < 0][:, [0, 2, 1, 3]]
    return ff.Mesh(hexes.points, tets, "tetra")


def _tet10_mesh(tet4: ff.Mesh, rng, bend=0.0):
    edges = np.array([[0, 1], [1, 2], [0, 2], [0, 3], [1, 3], [2, 3]])
    pairs = np.sort(tet4.cells[:, edges].reshape(-1, 2), axis=1)
    uniq, inv = np.unique(pairs, axis=0, return_inverse=True)
    mids = 0.5 * (tet4.points[uniq[:, 0]] + tet4.points[uniq[:, 1]])
    if bend:
        lengths = np.linalg.norm(tet4.points[uniq[:, 0]] - tet4.points[uniq[:, 1]], axis=1)
        mids = mids + bend * lengths[:, None] * rng.uniform(-1, 1, size=mids.shape)
    cells = np.hstack([tet4.cells, tet4.n_points + inv.reshape(-1, 6)])
    return ff.Mesh(np.vstack([tet4.points, mids]), cells, "tetra10")


def _hex_mesh(rng, n=4, half=6.0, distort=0.0, shear=None):
    g = np.linspace(-half, half, n + 1)
    pts = np.stack(np.meshgrid(g, g, g, indexing="ij"), axis=-1).reshape(-1, 3)
    interior = np.all(np.abs(pts) < half - 1e-9, axis=1)
    pts[interior] += distort * (2 * half / n) * rng.uniform(-1, 1, size=(interior.sum(), 3))
    if shear is not None:
        pts = pts @ np.asarray(shear).T
    idx = np.arange((n + 1) ** 3).reshape(n + 1, n + 1, n + 1)
    c = idx[:-1, :-1, :-1].ravel()
    s1, s2 = (n + 1) ** 2, n + 1
    cells = np.stack([c, c + s1, c + s1 + s2, c + s2, c + 1, c + s1 + 1, c + s1 + s2 + 1, c + s2 + 1], axis=1)
    return ff.Mesh(pts, cells, "hexahedron")


ROT = np.linalg.qr(np.array([[0.8, -0.3, 0.2], [0.1, 0.9, 0.4], [-0.5, 0.2, 0.7]]))[0]


# ------------------------------------------------------------------ rules
@pytest.mark.parametrize("cell_type,total", [("hexahedron", 8.0), ("tetra", 1 / 6), ("tetra10", 1 / 6)])
@pytest.mark.parametrize("n", [1, 2, 3, 5])
def test_integration_rule_exactness(cell_type, total, n):
    pts, w = integration_rule(cell_type, n)
    assert len(w) == n ** 3 and w.sum() == pytest.approx(total, rel=1e-13)
    deg = 2 * n - 1
    if cell_type == "hexahedron":  # x^deg y^(deg-1) integrates to 0 or 2/(p+1) per direction
        exact = (2 / (deg + 1) if deg % 2 == 0 else 0.0) * (2 / deg if (deg - 1) % 2 == 0 else 0.0) * 2
        assert (w * pts[:, 0] ** deg * pts[:, 1] ** (deg - 1)).sum() == pytest.approx(exact, abs=1e-13)
    else:  # int_T x^a y^b z^c = a! b! c! / (a+b+c+3)!, with a+b+c = deg
        from math import factorial
        a, b, c = deg, 0, 0
        if deg >= 3:
            a, b, c = deg - 2, 1, 1
        exact = factorial(a) * factorial(b) * factorial(c) / factorial(a + b + c + 3)
        approx = (w * pts[:, 0] ** a * pts[:, 1] ** b * pts[:, 2] ** c).sum()
        assert approx == pytest.approx(exact, rel=1e-12)


# ------------------------------------------------------------------ exact linear fields
@pytest.mark.parametrize("direction", [None, ROT, np.diag([-1.0, -1.0, 1.0]) @ ROT])
def test_linear_field_tet4_exact(rng, direction):
    ct = _linear_ct(direction)
    mesh = _tet4_mesh(rng)
    exact = _field(mesh.cell_centroids())  # mean of a linear field over a tet = value at the centroid
    scale = np.abs(exact).max()
    for method in ("centroid", "element_average"):
        res = ff.bone.map_ct(mesh, ct, method=method)
        assert res.unit == "HU" and res.report.ok
        assert np.max(np.abs(res.values - exact)) < 1e-10 * scale
    q = ff.bone.map_ct(mesh, ct, method="quadrature")
    assert q.values.shape == (mesh.n_cells, 1)


def test_linear_field_tet10_exact_straight_and_curved(rng):
    ct = _linear_ct(ROT)
    tet4 = _tet4_mesh(rng)
    straight = _tet10_mesh(tet4, rng)
    exact = _field(tet4.cell_centroids())
    res = ff.bone.map_ct(straight, ct, method="element_average", n_steps=2)
    assert np.max(np.abs(res.values - exact)) < 1e-10 * np.abs(exact).max()
    curved = _tet10_mesh(_kuhn_tets(_hex_mesh(rng, n=3)), rng, bend=0.04)
    assert np.all(curved.jacobian_determinants() > 0)
    # on a curved element f(x(xi)) det J has degree 5: exact from n_steps = 3 on
    a3 = ff.bone.map_ct(curved, ct, method="element_average", n_steps=3).values
    a6 = ff.bone.map_ct(curved, ct, method="element_average", n_steps=6).values
    assert np.max(np.abs(a3 - a6)) < 1e-10 * np.abs(a6).max()
    straight_mean = _field(curved.tet4().cell_centroids())
    assert np.max(np.abs(a3 - straight_mean)) > 1e-3  # the curvature really moved the mean
    # quadrature samples equal the field at the physical quadrature points
    q = ff.bone.map_ct(curved, ct, method="quadrature")
    xq = np.einsum("qk,mkd->mqd", shape_functions("tetra10", quadrature("tetra10").points), curved.points[curved.cells])
    assert q.values.shape == (curved.n_cells, 4)
    assert np.max(np.abs(q.values - _field(xq))) < 1e-10 * np.abs(a6).max()


def test_linear_field_hex8_exact(rng):
    ct = _linear_ct(np.diag([-1.0, 1.0, 1.0]) @ ROT)  # mirrored, rotated grid
    shear = np.array([[1.0, 0.2, 0.0], [0.0, 1.0, 0.1], [0.0, 0.0, 0.9]])
    affine = _hex_mesh(rng, shear=shear)
    exact = _field(affine.cell_centroids())  # parallelepipeds: mean = value at vertex mean
    res = ff.bone.map_ct(affine, ct, method="element_average", n_steps=2)
    assert np.max(np.abs(res.values - exact)) < 1e-10 * np.abs(exact).max()
    distorted = _hex_mesh(rng, distort=0.2)
    assert np.all(distorted.jacobian_determinants() > 0)
    a2 = ff.bone.map_ct(distorted, ct, method="element_average", n_steps=2).values
    a7 = ff.bone.map_ct(distorted, ct, method="element_average", n_steps=7).values
    assert np.max(np.abs(a2 - a7)) < 1e-10 * np.abs(a7).max()
    q = ff.bone.map_ct(distorted, ct, method="quadrature")
    xq = np.einsum("qk,mkd->mqd", shape_functions("hexahedron", quadrature("hexahedron").points),
                   distorted.points[distorted.cells])
    assert q.values.shape == (distorted.n_cells, 8)
    assert np.max(np.abs(q.values - _field(xq))) < 1e-10 * np.abs(a7).max()


# ------------------------------------------------------------------ outside / NaN / frames
def test_outside_policies(rng):
    ct = _linear_ct(shape=(10, 10, 10), spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0))
    # voxel faces span [-0.5, 9.5]; shift a hex mesh so its last layer of elements pokes out
    mesh = _hex_mesh(rng, n=4, half=2.0)
    # x in [6.5, 10.5]: the last layer of elements (centroids at x = 10) is outside
    mesh = mesh.with_points(mesh.points + np.array([8.5, 4.5, 4.5]))
    with pytest.raises(CTError, match="outside the CT") as exc:
        ff.bone.map_ct(mesh, ct, method="centroid")
    assert "outside='nearest'" in str(exc.value)
    res = ff.bone.map_ct(mesh, ct, method="centroid", outside="value", fill_value=-1000.0)
    rep = res.report
    xc = mesh.cell_centroids()
    out = xc[:, 0] > 9.5
    assert rep.n_samples_outside == out.sum() == 16
    assert rep.elements_affected.tolist() == np.flatnonzero(out).tolist()
    assert np.all(res.values[out] == -1000.0)
    assert np.allclose(res.values[~out], _field(xc[~out]))
    near = ff.bone.map_ct(mesh, ct, method="centroid", outside="nearest")
    clamped = xc[out].copy()
    clamped[:, 0] = 9.0  # nearest voxel-centre plane
    assert np.allclose(near.values[out], _field(clamped))
    assert near.report.n_elements_affected == 16
    with pytest.raises(CTError, match="fill_value"):
        ff.bone.map_ct(mesh, ct, outside="value")


def test_mesh_completely_outside_raises_whatever_the_policy(rng):
    ct = _linear_ct(shape=(10, 10, 10), spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0))
    mesh = _hex_mesh(rng, n=2, half=1.0)
    far = mesh.with_points(mesh.points + 100.0)
    for policy, fill in (("error", None), ("nearest", None), ("value", 0.0)):
        with pytest.raises(CTError, match="completely outside"):
            ff.bone.map_ct(far, ct, outside=policy, fill_value=fill)
    with pytest.raises(CTError, match="completely outside"):
        ff.bone.map_ct(mesh.scaled(1e-3).with_points(mesh.scaled(1e-3).points + 100.0), ct)


def test_nan_voxels_reported_and_handled(rng):
    ct = _linear_ct(shape=(12, 12, 12), spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0))
    a = ct.array.copy()
    a[5, 5, 5] = np.nan
    nct = ct.with_array(a)
    mesh = _hex_mesh(rng, n=4, half=2.0).with_points(_hex_mesh(rng, n=4, half=2.0).points + 5.0)  # [3, 7]^3
    with pytest.raises(CTError, match="NaN"):
        ff.bone.map_ct(mesh, nct, method="element_average")
    res = ff.bone.map_ct(mesh, nct, method="element_average", outside="nearest")
    rep = res.report
    assert rep.n_samples_nan > 0 and rep.n_samples_outside == 0
    # only elements within one voxel of [5,5,5] can touch it
    xc = mesh.cell_centroids()
    assert np.all(np.max(np.abs(xc[rep.elements_nan] - 5.0), axis=1) < 2.0)
    assert np.all(np.isfinite(res.values))
    # renormalised interpolation of a linear field is not exact, but stays between its neighbours
    ok = np.setdiff1d(np.arange(mesh.n_cells), rep.elements_nan)
    assert np.allclose(res.values[ok], _field(xc[ok]))
    val = ff.bone.map_ct(mesh, nct, method="centroid", outside="value", fill_value=0.0)
    assert val.report.n_samples_nan == np.count_nonzero(val.values == 0.0)


def test_ras_frame(rng):
    ct = _linear_ct(ROT)
    mesh = _tet4_mesh(rng)
    ras_mesh = mesh.with_points(ff.io.ras_from_lps(mesh.points))
    a = ff.bone.map_ct(mesh, ct, method="centroid").values
    b = ff.bone.map_ct(ras_mesh, ct, method="centroid", frame="RAS").values
    assert np.allclose(a, b, rtol=0, atol=1e-9)
    pts = mesh.cell_centroids()
    assert np.allclose(ff.bone.sample_ct(ct, pts), _field(pts))


# ------------------------------------------------------------------ density and modulus chain
def test_modulus_average_constant_and_jensen(rng):
    cal = ff.bone.DensityCalibration.from_mg(0.8, 0.0)
    const = ff.io.CTImage.from_array(np.full((20, 20, 20), 500.0), spacing=(1, 1, 1), origin=(-10, -10, -10),
                                  check_unit=False)
    mesh = _tet4_mesh(rng, half=5.0)
    law = ff.bone.material_law("keyak1994_chain")
    e = ff.bone.map_young_modulus(mesh, const, law, calibration=cal)
    assert e.unit == "MPa" and np.allclose(e.values, law.young(0.4), rtol=1e-12)
    ct = _linear_ct()  # HU from about -80 to 320 inside the mesh
    v3 = ff.bone.map_young_modulus(mesh, ct, law, calibration=cal, method="modulus_average").values
    v2 = ff.bone.map_young_modulus(mesh, ct, law, calibration=cal, method="element_average").values
    assert np.all(v3 >= v2 * (1 - 1e-12))  # E convex in HU: mean of E >= E of mean (Jensen)
    with pytest.raises(CTError, match="calibration"):
        ff.bone.map_young_modulus(mesh, ct, law)
    with pytest.raises(MaterialError, match="qct_to_ash"):
        ff.bone.map_young_modulus(mesh, ct, ff.bone.material_law("morgan2003_femoral_neck"), calibration=cal)


def test_map_density_types_and_clamp(rng, caplog):
    ct = _linear_ct()
    mesh = _tet4_mesh(rng)
    cal = ff.bone.DensityCalibration.from_mg(0.8, -100.0)  # HU 60..180 in the mesh: some negative densities
    hu = ff.bone.map_ct(mesh, ct).values
    with caplog.at_level(logging.WARNING):
        qct = ff.bone.map_density(mesh, ct, calibration=cal)
    rho = 0.0008 * hu - 0.1
    n_neg = int(np.count_nonzero(rho < 0))
    assert n_neg > 0 and qct.report.n_densities_clamped == n_neg
    assert f"{n_neg} of {mesh.n_cells}" in caplog.text
    assert np.allclose(qct.values, np.maximum(rho, 0.0))
    app = ff.bone.map_density(mesh, ct, calibration=cal, density_type="apparent", qct_to_ash="keyak1994")
    assert np.allclose(app.values, np.maximum((1.06 * rho + 0.0389) / 0.6, 0.0))
    dens = ff.io.CTImage.from_array(np.full((10, 10, 10), 300.0), unit="mg/cm3", origin=(-5, -5, -5))
    small = _tet4_mesh(rng, half=3.0)
    r = ff.bone.map_ct(small, dens)
    assert r.unit == "g/cm3" and np.allclose(r.values, 0.3)
    e = ff.bone.map_young_modulus(small, dens, ff.bone.material_law("eberle2013"))
    assert np.allclose(e.values, 12486 * 0.3 ** 1.16)
    with pytest.raises(CTError, match="already in"):
        ff.bone.map_density(small, dens, calibration=cal)


def test_totalseg_femur_modulus_mapping():
    base = require_shared("ct_totalseg_example")
    ct = ff.read_ct(base / "example_ct.nii.gz")
    mask = ff.io.read_mask(base / "example_seg" / "femur_right.nii.gz", reference=ct)
    mesh = ff.bone.hexmesh_from_mask(mask, ct, coarsen=2)
    centroid = ff.bone.map_ct(mesh, ct, method="centroid")
    assert centroid.report.ok
    # a coarse element's centroid lies at the corner shared by its 8 voxels: the trilinear value
    # there is the mean of those 8 voxels, which equals the cell's "hu" when the block is full
    full = mesh.cell_data["mask_fraction"] == 1.0
    assert np.allclose(centroid.values[full], mesh.cell_data["hu"][full], atol=1e-9)
    cal = ff.bone.DensityCalibration.from_mg(0.80028, 8.1229, source="Mindways test vector (assumed)")
    law = ff.bone.material_law("keyak1994_chain")
    e = ff.bone.map_young_modulus(mesh, ct, law, calibration=cal, n_steps=2)
    assert e.report.n_densities_clamped > 0  # marrow/fat below the K2HPO4 zero
    # 6 mm elements on a 3 mm scan: partial volume keeps moduli far below cortical values
    assert np.all(e.values >= 0.1) and 300 < np.percentile(e.values, 95) < 5000
    v2 = ff.bone.map_young_modulus(mesh, ct, law, calibration=cal, n_steps=2, method="element_average")
    assert np.all(e.values >= v2.values * (1 - 1e-12))  # E convex in HU (Jensen)


# ------------------------------------------------------------------ graded bar (mapping + laws + FE)
def _bar_solution(mesh, young, length, force, area):
    k = ff.fe.assemble_stiffness(mesh, young, poisson=0.0)
    x = mesh.points
    left = np.flatnonzero(np.isclose(x[:, 0], 0.0))
    right = np.flatnonzero(np.isclose(x[:, 0], length))
    f = np.zeros(mesh.n_dofs)
    f[3 * right] = force / len(right)  # square end face of bilinear quads: equal nodal shares
    # nu = 0: the exact 3-D solution is uniaxial with u_y = u_z = 0, so fixing them is consistent
    fixed = np.concatenate([3 * left, 3 * np.arange(mesh.n_points) + 1, 3 * np.arange(mesh.n_points) + 2])
    sol = ff.fe.solve(k, f, fixed)
    return sol.u[3 * right].mean()


@pytest.mark.parametrize("method", ["modulus_average", "quadrature"])
def test_graded_bar_end_displacement(method):
    length, width, n_el = 40.0, 2.0, 40
    rho0, slope = 0.2, 0.015  # g/cm3 and g/cm3 per mm: rho from 0.2 to 0.8 along the bar
    a_mpa, b = 6850.0, 1.49
    # density CT (QCT, g/cm3) linear in x; voxels 0.5 mm, bar well inside
    nx, ny = 100, 12
    vals = rho0 + slope * ((np.arange(nx) * 0.5 - 4.0)[:, None, None] + np.zeros((1, ny, ny)))
    ct = ff.io.CTImage.from_array(vals, spacing=(0.5, 0.5, 0.5), origin=(-4.0, -2.0, -2.0), unit="g/cm3")
    g = np.linspace(0.0, length, n_el + 1)
    yz = np.array([0.0, width])
    pts = np.stack(np.meshgrid(g, yz, yz, indexing="ij"), axis=-1).reshape(-1, 3)
    idx = np.arange(pts.shape[0]).reshape(n_el + 1, 2, 2)
    c = idx[:-1, 0, 0]
    cells = np.stack([c, c + 4, c + 6, c + 2, c + 1, c + 5, c + 7, c + 3], axis=1)
    mesh = ff.Mesh(pts, cells, "hexahedron")
    assert np.all(mesh.jacobian_determinants() > 0)
    law = ff.bone.PowerLaw(a_mpa=a_mpa, b=b, density_type="qct", e_min_mpa=0.0)
    e = ff.bone.map_young_modulus(mesh, ct, law, method=method).values
    force, area = 100.0, width * width
    u = _bar_solution(mesh, e, length, force, area)
    # u(L) = F/A int_0^L dx / (a (rho0 + s x)^b)
    r1, r0 = rho0 + slope * length, rho0
    exact = force / area / a_mpa * (r1 ** (1 - b) - r0 ** (1 - b)) / (slope * (1 - b))
    # 40 elements along a 16x stiffness gradient: discretisation error ~ (dE/E per element)^2/12
    # ~ 0.1 %; 0.5 % leaves a 5x margin over it
    assert u == pytest.approx(exact, rel=5e-3)
    if method == "modulus_average":
        # with element-constant E the FE bar is a series of springs: exact to round-off
        series = force / area * np.sum((g[1:] - g[:-1]) / e)
        assert u == pytest.approx(series, rel=1e-9)


def test_curved_hu_calibration_converts_every_sample(rng):
    """Any HU calibration with ``density(hu, clamp=)`` and ``mineral`` (the HUCalibration protocol) maps a
    HU CT; a curve is applied to every sample before the element average (a convex curve: mean density
    above the density of the mean HU, Jensen), a line gives the same numbers as DensityCalibration."""
    from femur_fe.bone.internal_calibration import fit_internal_calibration

    ct = _linear_ct()
    mesh = _tet4_mesh(rng)
    line = ff.bone.DensityCalibration.from_mg(0.8, 8.0)

    class Line:                      # the protocol, without being a DensityCalibration
        mineral = "k2hpo4"

        def density(self, hu, *, clamp=True):
            return line.density(hu, clamp=clamp)

        def to_dict(self):
            return line.to_dict()

    assert isinstance(Line(), ff.bone.HUCalibration)
    # averaging densities instead of HU changes a line's result only by rounding
    assert np.allclose(ff.bone.map_density(mesh, ct, calibration=Line()).values,
                       ff.bone.map_density(mesh, ct, calibration=line).values, rtol=1e-12)
    curve = fit_internal_calibration({"air": -997.5, "adipose": -105.7, "muscle": 23.5})
    hu_mean = ff.bone.map_ct(mesh, ct).values
    rho = ff.bone.map_density(mesh, ct, calibration=curve, clamp=False).values
    assert np.all(rho >= curve.density(hu_mean, clamp=False) - 1e-12)
    assert np.any(rho > curve.density(hu_mean, clamp=False) + 1e-9)
    cen = ff.bone.map_density(mesh, ct, calibration=curve, method="centroid", clamp=False).values
    assert np.allclose(cen, curve.density(ff.bone.map_ct(mesh, ct, method="centroid").values, clamp=False),
                       rtol=1e-12)
    law = ff.bone.material_law("keyak1994_chain")
    e = ff.bone.map_young_modulus(mesh, ct, law, calibration=curve, method="centroid").values
    assert np.allclose(e, law.young_from_density(np.maximum(cen, 0.0), "qct", qct_to_ash=None), rtol=1e-12)
    assert np.allclose(ff.bone.qct_from_hu([0.0, 200.0], curve, clamp=False), curve.density([0.0, 200.0], clamp=False))
    with pytest.raises(MaterialError, match="must be a HU calibration"):
        ff.bone.qct_from_hu([0.0], object())
