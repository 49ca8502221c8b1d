"""Matrix-free voxel solver: compiled kernels vs NumPy twins, and answers vs the assembled direct solver."""
from __future__ import annotations

import numpy as np
import pytest

import femur_fe as ff
from femur_fe.bone import Kopperdahl2002, hexmesh_from_mask
from femur_fe.errors import LoadCaseError, MaterialError, MeshError, UnderConstrainedError
from femur_fe.fe import RigidTie, _voxel
from femur_fe.fe.assembly import assemble_stiffness
from femur_fe.fe.solvers import LinearSolver
from femur_fe.fe.voxel_solver import (
    VoxelGrid,
    VoxelSolver,
    _coarsen,
    _Level,
    chebyshev_step_numpy,
    diagonal_numpy,
    is_voxel_mesh,
    matvec_numpy,
    prolong_numpy,
    restrict_numpy,
)
from femur_fe.io import read_labels

VERSE = ("ct_verse004_L2_density",)


def _holey_grid(n: int = 9, seed: int = 0) -> VoxelGrid:
    """A box of voxels with a through-hole, a cavity and a notch (non-convex, several layers)."""
    mask = np.ones((n, n + 1, n + 3), dtype=bool)
    mask[n // 3:n // 2 + 1, n // 3:n // 2 + 1, :] = False  # through-hole along axis 2
    mask[1:3, -3:-1, 2:4] = False  # internal cavity
    mask[-2:, :2, -3:] = False  # notch at a corner
    return VoxelGrid(mask, spacing=(0.5, 0.6, 0.7), origin=(1.0, -2.0, 3.0))


def _lognormal(m: int, seed: int) -> np.ndarray:
    """Log-uniform E over 100-20,000 MPa, uncorrelated: the contrast of cortical vs trabecular voxels."""
    rng = np.random.default_rng(seed)
    return np.exp(rng.uniform(np.log(100.0), np.log(20000.0), m))


def _faces(grid: VoxelGrid) -> tuple[np.ndarray, np.ndarray]:
    ijk = grid.node_ijk()
    return np.flatnonzero(ijk[:, 2] == 0), np.flatnonzero(ijk[:, 2] == grid.shape[2])


def _level(grid: VoxelGrid, young: np.ndarray, poisson: float = 0.3, fixed=None, dtype=np.float64) -> _Level:
    fixed = np.zeros(0, dtype=np.int64) if fixed is None else fixed
    return _Level(grid.mask, grid.elem_flat, grid.cells, grid.node_flat, grid._node_map, young, grid.axes, poisson,
                  fixed, 2, dtype)


def _rel(a, b) -> float:
    return float(np.linalg.norm(np.asarray(a) - np.asarray(b)) / np.linalg.norm(b))


# ----------------------------------------------------------------------------- kernels
def test_kernels_match_numpy_twins():
    grid = _holey_grid()
    young = _lognormal(grid.n_cells, 1)
    lv = _level(grid, young)
    rng = np.random.default_rng(2)
    x = rng.standard_normal(grid.n_dofs)
    y = np.empty_like(x)
    _voxel.matvec(lv.cells, lv.layer_ptr, young, lv.khat, x, y, 2)
    ref = matvec_numpy(grid.cells, young, lv.khat64, x)
    # 1e-12: same products summed in another order (a few ulps of the largest entry)
    assert np.abs(y - ref).max() <= 1e-12 * np.abs(ref).max()
    d = lv.diagonal()
    assert np.abs(d - diagonal_numpy(grid.cells, young, lv.khat64, grid.n_dofs)).max() <= 1e-12 * d.max()

    # full coarsening, then semi-coarsening of a sheet one element thick along axis 0
    thin = VoxelGrid(np.ones((1, 7, 6), dtype=bool), spacing=(0.5, 0.6, 0.7))
    for lv, x in ((lv, x), (_level(thin, _lognormal(thin.n_cells, 2)), rng.standard_normal(thin.n_dofs))):
        coarse = _coarsen(lv, 2, np.float64)
        args = (lv.node_flat, tuple(lv.node_dims), coarse.node_map, tuple(coarse.node_dims), coarse.shift)
        xc = rng.standard_normal(coarse.n)
        xf = np.zeros(lv.n)
        _voxel.prolong_add(lv.node_flat, lv.node_dims, coarse.node_map.reshape(-1), coarse.node_dims, coarse.shift,
                           xc, xf, 2)
        ref = prolong_numpy(*args, xc)
        assert np.abs(xf - ref).max() <= 1e-12 * np.abs(ref).max()
        rc = np.empty(coarse.n)
        _voxel.restrict(coarse.node_flat, coarse.node_dims, lv.node_map.reshape(-1), lv.node_dims, coarse.shift, x,
                        rc, 2)
        ref = restrict_numpy(*args, x, coarse.n_nodes)
        assert np.abs(rc - ref).max() <= 1e-12 * np.abs(ref).max()
        # restriction is the exact transpose of prolongation: <P xc, x> = <xc, P^T x>
        assert abs(xf @ x - xc @ rc) <= 1e-12 * np.abs(xf).sum() * np.abs(x).max()
        # constants are interpolated exactly (partition of unity)
        one = np.zeros(lv.n)
        _voxel.prolong_add(lv.node_flat, lv.node_dims, coarse.node_map.reshape(-1), coarse.node_dims, coarse.shift,
                           np.ones(coarse.n), one, 2)
        assert np.allclose(one, 1.0, rtol=0, atol=1e-14)
    assert coarse.shift.tolist() == [0, 1, 1] and coarse.shape == (1, 4, 3)

    dvec, xs, b, ax, invd = (rng.standard_normal(lv.n) for _ in range(5))
    d_ref, x_ref = chebyshev_step_numpy(dvec, xs, b, ax, invd, 0.7, 1.3)
    _voxel.chebyshev_step(dvec, xs, b, ax, invd, 0.7, 1.3, 2)
    assert np.abs(dvec - d_ref).max() <= 1e-12 * np.abs(d_ref).max()
    assert np.abs(xs - x_ref).max() <= 1e-12 * np.abs(x_ref).max()


def test_kernels_float32_and_thread_count_determinism():
    grid = _holey_grid(11)
    young = _lognormal(grid.n_cells, 3)
    lv = _level(grid, young)
    x = np.random.default_rng(4).standard_normal(grid.n_dofs)
    ys = []
    for nt in (1, 2, 3):
        y = np.empty_like(x)
        _voxel.matvec(lv.cells, lv.layer_ptr, young, lv.khat, x, y, nt)
        ys.append(y)
    # layers of one parity share no node and are summed in a fixed order: bitwise equal
    assert np.array_equal(ys[0], ys[1]) and np.array_equal(ys[0], ys[2])
    y32 = np.empty(grid.n_dofs, dtype=np.float32)
    _voxel.matvec(lv.cells, lv.layer_ptr, young.astype(np.float32), lv.khat.astype(np.float32),
                  x.astype(np.float32), y32, 2)
    # float32 storage and arithmetic: ~1e-6 relative
    assert np.abs(y32 - ys[0]).max() <= 2e-5 * np.abs(ys[0]).max()


def test_matvec_and_diagonal_match_assembled_matrix():
    grid = _holey_grid()
    young = _lognormal(grid.n_cells, 5)
    k = assemble_stiffness(grid.to_mesh(), young, 0.27)
    lv = _level(grid, young, 0.27)
    x = np.random.default_rng(6).standard_normal(grid.n_dofs)
    y = np.empty_like(x)
    _voxel.matvec(lv.cells, lv.layer_ptr, young, lv.khat, x, y, 2)
    ref = k @ x
    assert np.abs(y - ref).max() <= 1e-12 * np.abs(ref).max()
    assert np.abs(lv.diagonal() - k.diagonal()).max() <= 1e-12 * k.diagonal().max()


# ----------------------------------------------------------------------------- solves
def test_heterogeneous_dirichlet_matches_direct_solver():
    grid = _holey_grid(12)
    young = _lognormal(grid.n_cells, 7)
    bottom, top = _faces(grid)
    fixed = np.concatenate([(3 * bottom[:, None] + np.arange(3)).ravel(), 3 * top + 2])
    values = np.concatenate([np.zeros(3 * bottom.size), np.full(top.size, -0.05)])
    f = np.zeros(grid.n_dofs)
    f[3 * top] = 0.4  # shear on the displaced face
    k = assemble_stiffness(grid.to_mesh(), young, 0.3)
    ref = LinearSolver(k, fixed, points=grid.points, method="direct").solve(f, values)
    # coarse_max_dofs=500: four levels, so the whole hierarchy is exercised on a small model
    vs = VoxelSolver(grid, young, 0.3, fixed, rtol=1e-11, coarse_max_dofs=500)
    assert len(vs.mg.levels) >= 3
    sol = vs.solve(f, values)
    # rtol 1e-11 on the residual: the displacement error is below cond * 1e-11, 1e-8 leaves 3 decades
    assert _rel(sol.u, ref.u) < 1e-8
    assert _rel(sol.reactions, ref.reactions) < 1e-8
    assert sol.report.residual <= 1e-11
    # at the default rtol 1e-8 the stiffness (reaction over the displaced face) still agrees to 1e-8:
    # it is an energy, its error is quadratic in the displacement error
    sol8 = VoxelSolver(grid, young, 0.3, fixed, coarse_max_dofs=500).solve(f, values)
    fz, fz_ref = sol8.reaction_force(top)[2], ref.reaction_force(top)[2]
    assert abs(fz - fz_ref) <= 1e-8 * abs(fz_ref)


def test_rigid_ties_match_direct_solver():
    grid = _holey_grid(10)
    young = _lognormal(grid.n_cells, 8)
    bottom, top = _faces(grid)
    pts = grid.points
    fixed = (3 * bottom[:, None] + np.arange(3)).ravel()
    k = assemble_stiffness(grid.to_mesh(), young, 0.3)
    f = np.zeros(grid.n_dofs)
    f[3 * top[:5] + 1] = 0.2
    ties = [
        # a plate held parallel and pushed down (the vertebra case)
        RigidTie(top, pts[top].mean(0), prescribed={"uz": -0.02, "rx": 0, "ry": 0, "rz": 0}, name="plate"),
        # a femoral-head-like cap: all six reference DOFs free, loaded off-centre
        RigidTie(top, pts[top].mean(0) + [0.3, -0.2, 2.0], force=[3.0, -2.0, -40.0], moment=[5.0, -3.0, 2.0],
                    name="head"),
    ]
    direct = {}
    for tie in ties:
        direct[tie.name] = LinearSolver(k, fixed, points=pts, method="direct", constraints=[tie])
        ref = direct[tie.name].solve(f)
        sol = VoxelSolver(grid, young, 0.3, fixed, ties=[tie], rtol=1e-11, coarse_max_dofs=500).solve(f)
        assert _rel(sol.u, ref.u) < 1e-8, tie.name
        tr, tv = ref.ties[tie.name], sol.ties[tie.name]
        for a, b in ((tv.force, tr.force), (tv.moment, tr.moment), (tv.displacement, tr.displacement),
                     (tv.rotation, tr.rotation)):
            assert np.abs(a - b).max() <= 1e-8 * max(np.abs(b).max(), 1e-30) + 1e-12 * np.abs(tr.force).max()
    # a per-solve override of the prescribed plate displacement and of the head load
    vs = VoxelSolver(grid, young, 0.3, fixed, ties=[ties[0]], rtol=1e-11, coarse_max_dofs=500)
    ls = direct["plate"]
    a, b = vs.solve(f, tie_values={"plate": {"uz": -0.05}}), ls.solve(f, tie_values={"plate": {"uz": -0.05}})
    assert _rel(a.u, b.u) < 1e-8
    # several load cases at once: one column each, as LinearSolver
    f2 = np.stack([f, np.roll(f, 7)], axis=1)
    a, b = vs.solve(f2), ls.solve(f2)
    assert a.u.shape == b.u.shape == (grid.n_dofs, 2) and _rel(a.u, b.u) < 1e-8
    assert a.ties["plate"].force.shape == (3, 2)
    assert np.abs(a.ties["plate"].force - b.ties["plate"].force).max() <= 1e-8 * np.abs(b.ties["plate"].force).max()


def test_float32_moduli_and_float32_multigrid_keep_the_answer():
    grid = _holey_grid(12)
    young = _lognormal(grid.n_cells, 9).astype(np.float32)
    bottom, top = _faces(grid)
    fixed = (3 * bottom[:, None] + np.arange(3)).ravel()
    f = np.zeros(grid.n_dofs)
    f[3 * top + 2] = -1.0
    ref = LinearSolver(assemble_stiffness(grid.to_mesh(), young.astype(np.float64), 0.3), fixed,
                       points=grid.points, method="direct").solve(f)
    vs = VoxelSolver(grid, young, 0.3, fixed, rtol=1e-11, coarse_max_dofs=500, mg_dtype=np.float32)
    assert vs.young.dtype == np.float32
    sol = vs.solve(f)
    # the float32 preconditioner changes the iterates only; CG in float64 meets rtol on the true operator
    assert _rel(sol.u, ref.u) < 1e-8


def test_rotated_voxel_mesh_matches_direct_solver():
    """A voxel mesh rotated into a load frame (as the pipeline does) is still a voxel model."""
    grid = _holey_grid(8)
    young = _lognormal(grid.n_cells, 10)
    c, s = np.cos(0.4), np.sin(0.4)
    rot = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]]) @ np.array([[1.0, 0, 0], [0, c, -s], [0, s, c]])
    perm = np.random.default_rng(11).permutation(grid.n_cells)  # cell order of the mesh is arbitrary
    young = young[perm]
    bottom, top = _faces(grid)
    fixed = (3 * bottom[:, None] + np.arange(3)).ravel()
    f = np.zeros(grid.n_dofs)
    f[3 * top + 2] = -1.0
    f[3 * top + 0] = 0.3
    # a rotation, and a mirror (Mesh.transformed reorders the cells to keep them positive)
    for transform in (rot, np.diag([1.0, -1.0, 1.0]) @ rot):
        mesh = grid.to_mesh().transformed(transform)
        mesh = ff.Mesh(mesh.points, mesh.cells[perm], "hexahedron")
        ref = LinearSolver(assemble_stiffness(mesh, young, 0.3), fixed, points=mesh.points,
                           method="direct").solve(f)
        sol = VoxelSolver(mesh, young, 0.3, fixed, rtol=1e-11).solve(f)
        assert _rel(sol.u, ref.u) < 1e-8


def test_verse_l2_with_pmma_caps_and_plate_matches_direct_solver(shared_data):
    """The real L2 vertebra (holes, posterior arch, PMMA caps as voxels) at 3 mm: plate on the
    superior cap (rotations held, pushed 0.2 mm), inferior face clamped."""
    folder = shared_data(*VERSE)
    ct = ff.read_ct(folder / "sub-verse004_0000_vertebra_21_im.nii.gz", unit="mg/cm3")
    labels = read_labels(folder / "sub-verse004_0000_vertebra_21_seg.nii.gz", reference=ct)
    mesh = hexmesh_from_mask(labels, ct, coarsen=3)
    young = Kopperdahl2002(e_min_mpa=10.0).young(mesh.cell_data["density"])
    for lab in (5, 6):  # the upstream model's PMMA caps
        young[mesh.cell_sets[f"label_{lab}"]] = 2500.0
    z = mesh.points[:, 2]
    bottom = np.flatnonzero(z <= z.min() + 1e-6)
    top = np.flatnonzero(z >= z.max() - 1e-6)
    fixed = (3 * bottom[:, None] + np.arange(3)).ravel()
    plate = RigidTie(top, mesh.points[top].mean(0), prescribed={"uz": -0.2, "rx": 0, "ry": 0, "rz": 0},
                        name="plate")
    f = np.zeros(3 * mesh.n_points)
    ref = LinearSolver(assemble_stiffness(mesh, young, 0.3), fixed, points=mesh, method="direct",
                       constraints=[plate]).solve(f)
    vs = VoxelSolver(mesh, young, 0.3, fixed, ties=[plate], rtol=1e-11, coarse_max_dofs=800)
    assert len(vs.mg.levels) >= 3
    sol = vs.solve(f)
    assert _rel(sol.u, ref.u) < 1e-8
    fz, fz_ref = sol.ties["plate"].force[2], ref.ties["plate"].force[2]
    assert abs(fz - fz_ref) <= 1e-8 * abs(fz_ref)
    assert fz < 0  # the plate pushes the bone down (force the tie applies to the mesh)


# ----------------------------------------------------------------------------- refusals
def test_refuses_what_it_cannot_solve():
    grid = _holey_grid(6)
    young = np.full(grid.n_cells, 1000.0)
    bottom, top = _faces(grid)
    fixed = (3 * bottom[:, None] + np.arange(3)).ravel()
    with pytest.raises(UnderConstrainedError, match="rigid-body modes"):
        VoxelSolver(grid, young, 0.3, 3 * bottom + 2)  # only uz held: sliding and spinning are free
    bad = young.copy()
    bad[3] = 0.0
    with pytest.raises(MaterialError, match="> 0 MPa"):
        VoxelSolver(grid, bad, 0.3, fixed)
    with pytest.raises(MaterialError, match="per element"):
        VoxelSolver(grid, young[:-1], 0.3, fixed)
    plate = RigidTie(bottom, [0.0, 0.0, 0.0], prescribed=["ux", "uy", "uz", "rx", "ry", "rz"], name="p")
    with pytest.raises(LoadCaseError, match="also have fixed DOFs"):
        VoxelSolver(grid, young, 0.3, fixed, ties=[plate])
    mesh = grid.to_mesh()
    assert is_voxel_mesh(mesh) and is_voxel_mesh(mesh.transformed(np.diag([1.0, -1.0, 1.0])))
    warped = mesh.points.copy()
    warped[mesh.cells[0, 6]] += 0.05
    assert not is_voxel_mesh(ff.Mesh(warped, mesh.cells, "hexahedron"))
    with pytest.raises(MeshError, match="LinearSolver"):
        VoxelSolver(ff.Mesh(warped, mesh.cells, "hexahedron"), young, 0.3, fixed)
    with pytest.raises(MeshError, match="hex8"):
        VoxelSolver(ff.Mesh(mesh.points, mesh.cells[:, :4], "tetra"), 1000.0, 0.3, fixed)


def test_pipeline_analysis_on_voxels_gives_the_pipelines_answer(shared_data):
    """What ``Analysis.solver_for`` would hand the voxel solver: the load-frame mesh (rotated voxels),
    the moduli, the supports and the plate tie of ``prepare`` (vertebral compression, rigid caps)."""
    from femur_fe.case.presets import resolve_case_path

    folder = shared_data(*VERSE)
    ct = ff.read_ct(folder / "sub-verse004_0000_vertebra_21_im.nii.gz", unit="mg/cm3")
    labels = read_labels(folder / "sub-verse004_0000_vertebra_21_seg.nii.gz", reference=ct)
    bone = np.where(labels <= 4, labels, 0).astype(labels.dtype)  # the bone without the upstream caps
    mesh = hexmesh_from_mask(bone, ct, coarsen=3)
    # the reference is the assembled direct solver ("auto" would hand a voxel model to the voxel
    # solver itself, at the case's rtol of 1e-8)
    case = ff.load_case(resolve_case_path("vertebral_compression")).with_values({"caps.kind": "rigid",
                                                                                   "solver.method": "direct"})
    model = ff.Model.from_density(mesh, mesh.cell_data["density"], Kopperdahl2002(e_min_mpa=10.0),
                               density_type="qct")
    an = ff.prepare(case, model)
    assert is_voxel_mesh(an.fe_mesh)
    ref = an.solver_for()
    vs = VoxelSolver(an.fe_mesh, an.fe_young(), model.poisson, an.fixed_dofs, ties=[an.tie], rtol=1e-11)
    load = {an.tie.name: [0.0, 0.0, 1.0, 0.0, 0.0, 0.0]}  # the unit plate force the pipeline solves for
    a, b = vs.solve(np.zeros(vs.n_dofs), tie_loads=load), ref.solve(np.zeros(ref.n_dofs), tie_loads=load)
    assert _rel(a.u, b.u) < 1e-8
    uz, uz_ref = a.ties[an.tie.name].displacement[2], b.ties[an.tie.name].displacement[2]
    assert abs(uz - uz_ref) <= 1e-8 * abs(uz_ref)


def test_warns_about_voxels_hinged_on_an_edge_or_a_corner(caplog):
    mask = np.zeros((5, 5, 5), dtype=bool)
    mask[:3, :3, :3] = True
    mask[3, 3, 3] = True  # touches the block at one corner node
    mask[3, 0, 3] = True  # touches it along one edge
    mask[0, 3, 0] = mask[0, 4, 0] = True  # a face neighbour: rigidly attached, no warning for it
    grid = VoxelGrid(mask)
    bottom, top = _faces(grid)
    with caplog.at_level("WARNING", logger="femur_fe.voxel_solver"):
        VoxelSolver(grid, 1000.0, 0.3, (3 * bottom[:, None] + np.arange(3)).ravel())
    msgs = [r.getMessage() for r in caplog.records if "hinges" in r.getMessage()]
    assert len(msgs) == 1 and msgs[0].startswith("2 group(s) of 2 voxel(s)")
    caplog.clear()
    with caplog.at_level("WARNING", logger="femur_fe.voxel_solver"):
        grid = _holey_grid(6)
        bottom, top = _faces(grid)
        VoxelSolver(grid, 1000.0, 0.3, (3 * bottom[:, None] + np.arange(3)).ravel())
    assert not [r for r in caplog.records if "hinges" in r.getMessage()]
