"""Verification cases with closed-form or published reference values.

Cases (units mm, N, MPa):

* ``le10``: NAFEMS LE10 thick elliptic plate under 1 MPa pressure, tet10; target
  sigma_yy at D = (2000, 0, 300) = -5.38 MPa (NAFEMS TNSB Rev. 3, 1990).
* ``cantilever``: 3-D cantilever (nu = 0) with a parabolic end shear; tip deflection vs the
  Timoshenko beam formula ``P L^3/(3 E I) + P L/(kappa G A)``, kappa = 5/6, which is exact for
  this elasticity solution (Timoshenko & Goodier, clamp with zero mean section rotation).
* ``lame``: thick-walled cylinder under internal pressure (plane strain) vs Lamé.

``femur-fe verify`` runs them; the test-suite checks them (``tests/test_verification.py``,
``tests/test_le10.py``).
"""
from __future__ import annotations

import math

import numpy as np

from .assembly import assemble_stiffness
from .boxes import structured_mesh
from .elements import (
    jacobians,
    quadrature,
    reference_nodes,
    shape_functions,
    shape_gradients,
)
from .loads import assemble_pressure, assemble_traction
from .mesh import Mesh
from .recovery import stress
from .solvers import solve
from .topology import boundary_faces

# --------------------------------------------------------------------------- NAFEMS LE10
LE10_TARGET = -5.38  # MPa, sigma_yy at D (NAFEMS, The Standard NAFEMS Benchmarks, TNSB Rev. 3, 1990)
_LE10_C = math.sqrt(2000.0**2 - 1000.0**2)  # the two ellipses are confocal: 3250^2 - 2750^2 = 3e6 too
_LE10_MU0 = math.acosh(2000.0 / _LE10_C)
_LE10_MU1 = math.acosh(3250.0 / _LE10_C)


def le10_mapping(p: np.ndarray) -> np.ndarray:
    """Parameter box -> LE10 quarter plate in elliptic coordinates (x = c cosh mu cos nu...).

    p[:, 0] in [0, 1] runs from the inner ellipse (D..A) to the outer one (C..B),
    p[:, 1] from the x axis (nu = 0, y = 0) to the y axis (nu = pi/2, x = 0),
    p[:, 2] from z = -300 to z = +300 mm.
    """
    mu = _LE10_MU0 + p[:, 0] * (_LE10_MU1 - _LE10_MU0)
    nu = p[:, 1] * (0.5 * math.pi)
    x = _LE10_C * np.cosh(mu) * np.cos(nu)
    y = _LE10_C * np.sinh(mu) * np.sin(nu)
    return np.column_stack([x, y, -300.0 + 600.0 * p[:, 2]])


def _faces_where(mesh: Mesh, params: np.ndarray, axis: int, value: float) -> np.ndarray:
    """Boundary faces whose nodes all lie on the parameter plane ``params[:, axis] == value``."""
    faces, _ = boundary_faces(mesh)
    on = np.abs(params[:, axis] - value) < 1e-12
    return faces[on[faces].all(axis=1)]


def _dofs(nodes: np.ndarray, comps) -> np.ndarray:
    return (3 * np.asarray(nodes)[:, None] + np.asarray(comps)).ravel()


def stress_at_node_extrapolated(mesh: Mesh, u: np.ndarray, node: int, young: float, poisson: float) -> np.ndarray:
    """Stress (3, 3) MPa at ``node``: each element around it evaluates its own strain field at
    the node (exact extrapolation of the element's polynomial strain), then the mean."""
    els, local = np.nonzero(mesh.cells == node)
    xi_nodes = reference_nodes(mesh.cell_type)
    ue = np.asarray(u).reshape(-1, 3)[mesh.cells[els]]  # (e, k, 3)
    lam = young * poisson / ((1 + poisson) * (1 - 2 * poisson))
    mu = young / (2 * (1 + poisson))
    sig = np.zeros((len(els), 3, 3))
    for i, (e, a) in enumerate(zip(els, local)):
        xi = xi_nodes[a:a + 1]
        jac = jacobians(mesh.cell_type, mesh.points, mesh.cells[e:e + 1], xi)[0, 0]  # J[a, b] = dX_b/dxi_a
        grad = np.linalg.solve(jac, shape_gradients(mesh.cell_type, xi)[0].T).T  # (k, 3) dN/dX
        h = ue[i].T @ grad  # du_c/dx_d
        eps = 0.5 * (h + h.T)
        sig[i] = lam * np.trace(eps) * np.eye(3) + 2 * mu * eps
    return sig.mean(axis=0)


def run_le10(shape: tuple[int, int, int] = (6, 12, 4), method: str = "auto") -> dict:
    """NAFEMS LE10 with tet10 on a mapped (elliptic-coordinate) mesh; returns sigma_yy at D."""
    if shape[2] % 2:
        raise ValueError("LE10 needs an even number of cells through the thickness (u_z = 0 at z = 0)")
    mesh, params = structured_mesh(shape, le10_mapping, "tetra10")
    young, nu = 210000.0, 0.3
    k = assemble_stiffness(mesh, young, nu)
    top = _faces_where(mesh, params, 2, 1.0)
    f = assemble_pressure(mesh, top, 1.0)  # 1 MPa on z = +300, pushing down
    on = lambda axis, v: np.flatnonzero(np.abs(params[:, axis] - v) < 1e-12)  # noqa: E731
    outer = on(0, 1.0)
    line_ee = outer[np.abs(params[outer, 2] - 0.5) < 1e-12]
    fixed = np.unique(np.concatenate([
        _dofs(on(1, 0.0), [1]),  # face DCD'C' (y = 0): u_y = 0
        _dofs(on(1, 1.0), [0]),  # face ABA'B' (x = 0): u_x = 0
        _dofs(outer, [0, 1]),    # outer face BCB'C': u_x = u_y = 0
        _dofs(line_ee, [2]),     # line EE' (outer face, z = 0): u_z = 0
    ]))
    sol = solve(k, f, fixed, points=mesh, method=method)
    d = int(np.flatnonzero(np.all(np.abs(params - [0.0, 0.0, 1.0]) < 1e-12, axis=1))[0])
    assert np.allclose(mesh.points[d], [2000.0, 0.0, 300.0])
    s_ext = stress_at_node_extrapolated(mesh, sol.u, d, young, nu)[1, 1]
    s_avg = stress(mesh, sol.u, young, nu, at="node")[d, 1, 1]
    # total load: 1 MPa on the top face area; the supports must carry it
    area = float(-f[2::3].sum())
    return dict(case="le10", cell_type="tetra10", shape=list(shape), n_dofs=mesh.n_dofs,
                sigma_yy_D=float(s_ext), sigma_yy_D_node_average=float(s_avg), reference=LE10_TARGET,
                rel_error=float(abs(s_ext - LE10_TARGET) / abs(LE10_TARGET)), load_n=area,
                reaction_z=float(sol.reactions[2::3].sum()), report=sol.report.as_dict())


# --------------------------------------------------------------------------- Lamé cylinder
def lame_exact(r: np.ndarray, a: float, b: float, p: float, young: float, nu: float):
    """Plane-strain Lamé solution: (u_r mm, sigma_r, sigma_theta MPa) at radii r (Timoshenko & Goodier, Theory of Elasticity, 1970)."""
    big_a = p * a * a / (b * b - a * a)
    big_b = p * a * a * b * b / (b * b - a * a)
    u_r = (1 + nu) / young * ((1 - 2 * nu) * big_a * r + big_b / r)
    return u_r, big_a - big_b / r**2, big_a + big_b / r**2


def run_lame(n: int = 4, cell_type: str = "tetra10", a: float = 10.0, b: float = 20.0, p: float = 10.0,
             young: float = 200000.0, nu: float = 0.3, method: str = "auto") -> dict:
    """Quarter of a thick cylinder (a <= r <= b, 0 <= theta <= 90 deg, 0 <= z <= h) under internal
    pressure, plane strain (u_z = 0 on both ends), symmetry on x = 0 and y = 0.

    Returns u_r at the bore, sigma_theta at the bore (element extrapolation at a node) and the
    displacement L2 error ``||u_h - u||_L2 / ||u||_L2`` (quadrature of the mesh's rule).
    """
    h = (b - a) / n

    def mapping(q):
        r = a + q[:, 0] * (b - a)
        t = q[:, 1] * 0.5 * math.pi
        return np.column_stack([r * np.cos(t), r * np.sin(t), q[:, 2] * h])

    mesh, params = structured_mesh((n, 2 * n, 1), mapping, cell_type)
    k = assemble_stiffness(mesh, young, nu)
    f = assemble_pressure(mesh, _faces_where(mesh, params, 0, 0.0), p)
    on = lambda axis, v: np.flatnonzero(np.abs(params[:, axis] - v) < 1e-12)  # noqa: E731
    fixed = np.unique(np.concatenate([_dofs(on(1, 0.0), [1]), _dofs(on(1, 1.0), [0]),
                                      _dofs(on(2, 0.0), [2]), _dofs(on(2, 1.0), [2])]))
    sol = solve(k, f, fixed, points=mesh, method=method)
    u = sol.u.reshape(-1, 3)
    # L2 error with the element's own quadrature rule (default rule; enough to observe rates)
    rule = quadrature(mesh.cell_type)
    nq = shape_functions(mesh.cell_type, rule.points)  # (q, k)
    xq = np.einsum("qk,mkc->mqc", nq, mesh.points[mesh.cells])
    uq = np.einsum("qk,mkc->mqc", nq, u[mesh.cells])
    w = np.linalg.det(jacobians(mesh.cell_type, mesh.points, mesh.cells, rule.points)) * rule.weights
    rq = np.hypot(xq[..., 0], xq[..., 1])
    ur_exact = lame_exact(rq, a, b, p, young, nu)[0]
    ue = np.stack([ur_exact * xq[..., 0] / rq, ur_exact * xq[..., 1] / rq, 0 * rq], axis=-1)
    l2 = math.sqrt(float((w * ((uq - ue) ** 2).sum(-1)).sum()) / float((w * (ue**2).sum(-1)).sum()))
    bore = int(np.flatnonzero(np.all(np.abs(params - [0.0, 0.0, 0.0]) < 1e-12, axis=1))[0])  # (a, 0, 0)
    u_exact, _, st_exact = lame_exact(np.array([a]), a, b, p, young, nu)
    s_theta = stress_at_node_extrapolated(mesh, sol.u, bore, young, nu)[1, 1]  # sigma_yy = sigma_theta on y = 0
    return dict(case="lame", cell_type=cell_type, n=n, h_mm=h, n_dofs=mesh.n_dofs, u_r_bore=float(u[bore, 0]),
                u_r_bore_exact=float(u_exact[0]), sigma_theta_bore=float(s_theta),
                sigma_theta_bore_exact=float(st_exact[0]), l2_error=l2, report=sol.report.as_dict())


# --------------------------------------------------------------------------- cantilever
def cantilever_exact(x: np.ndarray, P: float, L: float, c: float, thick: float, young: float) -> np.ndarray:
    """Exact 3-D displacement (nu = 0) of a cantilever x in [0, L], y in [-c, c], loaded at x = 0
    by a parabolic shear of resultant -P (along -y), held at x = L with zero mean section
    rotation (Timoshenko & Goodier, Theory of Elasticity, section 21, re-derived for this clamp).

    u = P x^2 y / (2EI) + d y - P y^3 / (6 I G),  v = -P x^3/(6EI) + (P c^2/(2IG) - d) x + h0,
    d = -P L^2/(2EI) + P c^2/(10 I G),  h0 = -P L^3/(3EI) - (2/5) P c^2 L/(I G),  w = 0;
    the tip deflection v(0, 0) = -(P L^3/(3EI) + P L/(kappa G A)) with kappa = 5/6 exactly.
    """
    g = young / 2.0  # nu = 0
    inertia = thick * (2 * c) ** 3 / 12.0
    X, Y = x[:, 0], x[:, 1]
    d = -P * L**2 / (2 * young * inertia) + P * c**2 / (10 * inertia * g)
    h0 = -P * L**3 / (3 * young * inertia) - 0.4 * P * c**2 * L / (inertia * g)
    u = P * X**2 * Y / (2 * young * inertia) + d * Y - P * Y**3 / (6 * inertia * g)
    v = -P * X**3 / (6 * young * inertia) + (P * c**2 / (2 * inertia * g) - d) * X + h0
    return np.column_stack([u, v, np.zeros_like(u)])


def run_cantilever(n: int = 2, cell_type: str = "tetra10", L: float = 100.0, c: float = 5.0,
                   thick: float = 10.0, P: float = 100.0, young: float = 10000.0, method: str = "auto") -> dict:
    """Cantilever, nu = 0: exact displacement imposed on the clamped end x = L, parabolic shear
    traction on the free end x = 0; tip deflection at the centroid of x = 0 vs
    ``P L^3/(3EI) + P L/(kappa G A)``. ``n`` cells through the depth 2c (aspect 1 cells)."""
    shape = (int(round(L / (2 * c))) * n, n, max(1, int(round(thick / (2 * c))) * n))

    def mapping(q):
        return np.column_stack([q[:, 0] * L, -c + 2 * c * q[:, 1], -thick / 2 + thick * q[:, 2]])

    mesh, params = structured_mesh(shape, mapping, cell_type)
    k = assemble_stiffness(mesh, young, 0.0)
    inertia = thick * (2 * c) ** 3 / 12.0
    free_end = _faces_where(mesh, params, 0, 0.0)
    # traction on x = 0 (outward normal -x): t_y = -tau_xy = -(P / 2I)(c^2 - y^2); per face the
    # mean over its nodes (the load is quadratic in y; per-face constant converges at O(h^2))
    yf = mesh.points[free_end, 1].mean(axis=1)
    ty = -(P / (2 * inertia)) * (c**2 - yf**2)
    f = assemble_traction(mesh, free_end, np.column_stack([0 * ty, ty, 0 * ty]))
    f *= P / abs(f[1::3].sum())  # exact resultant P (the per-face rule misses O(h^2) of it)
    clamp = np.flatnonzero(np.abs(params[:, 0] - 1.0) < 1e-12)
    g = np.zeros(mesh.n_dofs)
    g[_dofs(clamp, [0, 1, 2])] = cantilever_exact(mesh.points[clamp], P, L, c, thick, young).ravel()
    sol = solve(k, f, _dofs(clamp, [0, 1, 2]), g, points=mesh, method=method)
    tip_nodes = np.flatnonzero((np.abs(params[:, 0]) < 1e-12) & (np.abs(mesh.points[:, 1]) < 1e-9))
    tip = float(sol.u.reshape(-1, 3)[tip_nodes, 1].mean())
    area = 2 * c * thick
    exact_tip = -(P * L**3 / (3 * young * inertia) + P * L / (5.0 / 6.0 * young / 2.0 * area))
    uex = cantilever_exact(mesh.points, P, L, c, thick, young)
    err = float(np.sqrt(((sol.u.reshape(-1, 3) - uex) ** 2).sum() / (uex**2).sum()))
    return dict(case="cantilever", cell_type=cell_type, n=n, h_mm=2 * c / n, n_dofs=mesh.n_dofs, tip_deflection=tip,
                tip_deflection_timoshenko=exact_tip, rel_error=abs(tip - exact_tip) / abs(exact_tip),
                nodal_l2_error=err, report=sol.report.as_dict())


# --------------------------------------------------------------------------- CLI
