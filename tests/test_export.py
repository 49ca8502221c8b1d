"""Export to Abaqus/CalculiX (.inp) and FEBio 4.0 (.feb), verified by solving the decks with CalculiX.

CalculiX (``ccx``) runs when it is on PATH; otherwise these tests skip with the reason, and fail when
``FEMUR_FE_REQUIRE_TOOLS=1`` (CI installs calculix-ccx and sets it). Tolerance of the CalculiX
comparisons, 1e-6 relative: both codes solve the same linear system with direct solvers (residuals
~1e-12), so what is left is the 7 significant digits CalculiX prints in its ``.dat`` file (half a unit:
5e-7 of each value). A modelling difference (node order, a support component, the plate's free
rotations, a cap modulus or Poisson ratio) changes the answer by 1e-4 or more.
"""
from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
from conftest import require_shared

import femur_fe as ff
from femur_fe.analysis import prepare
from femur_fe.bone.meshing import cut_proximal_femur, tetmesh_from_surface
from femur_fe.bone.model import Model
from femur_fe.case.presets import resolve_case_path
from femur_fe.commands.cli import main as cli
from femur_fe.errors import FemurFeError
from femur_fe.fe.boxes import structured_mesh
from femur_fe.fe.elements import FACES, reference_nodes
from femur_fe.io.abaqus import FACE_LABELS
from femur_fe.io.abaqus import NODE_ORDER as ABAQUS_ORDER
from femur_fe.io.calculix import agreement, read_dat, run_ccx
from femur_fe.io.deck import bin_moduli, build_deck
from femur_fe.io.febio import NODE_ORDER as FEBIO_ORDER
from femur_fe.io.febio import read_febio
from femur_fe.io.surface import read_surface
from femur_fe.studies.stored import load_analysis

TOL = 1e-6  # see the module docstring


def require_ccx() -> None:
    if shutil.which("ccx"):
        return
    msg = "ccx (CalculiX) is not on PATH (Debian/Ubuntu: apt-get install calculix-ccx)"
    if os.environ.get("FEMUR_FE_REQUIRE_TOOLS") == "1":
        pytest.fail(msg + "; FEMUR_FE_REQUIRE_TOOLS=1 forbids skipping")
    pytest.skip(msg)


def _assert_agrees(an, res, inp, tie="auto", **kw):
    deck = build_deck(an, res, **kw)
    ff.io.abaqus.write_abaqus(deck, inp, tie=tie, print_displacements=True)
    run = run_ccx(inp)
    a = agreement(deck, res, run["dat"])
    assert a["displacement"] < TOL, a
    assert a["plate_displacement"] < TOL, a
    for name, err in a["reactions"].items():
        assert err < TOL, (name, a)
    # every support and the plate (tied nodes) were printed and compared
    expected = {s.name for s in deck.supports} | {deck.plate.name}
    if "*COUPLING" in inp.read_text():
        expected.add(deck.plate.name + "_REF")
    assert expected <= set(a["reactions"]), a
    return deck, a


# ---------------------------------------------------------------------------------------------- conventions
def test_node_orders_and_face_labels_match_abaqus_and_febio():
    """tet10/hex8 node orders and face labels against the conventions of the two codes.

    Abaqus C3D10 (Abaqus Analysis User's Guide, solid element library): nodes 5..10 on edges 1-2, 2-3,
    3-1, 1-4, 2-4, 3-4; FEBio FETet10::shape_fnc (FECore/FESolidElementShape.cpp): H[4..9] = 4 r1 r2,
    4 r2 r3, 4 r3 r1, 4 r1 r4, 4 r2 r4, 4 r3 r4 - the same edges. Faces: C3D4/C3D10 S1 = 1-2-3,
    S2 = 1-4-2, S3 = 2-4-3, S4 = 3-4-1; C3D8 S1 = 1-2-3-4, S2 = 5-8-7-6, S3 = 1-5-6-2, S4 = 2-6-7-3,
    S5 = 3-7-8-4, S6 = 4-8-5-1.
    """
    edges = [(0, 1), (1, 2), (2, 0), (0, 3), (1, 3), (2, 3)]
    for order in (ABAQUS_ORDER["tetra10"], FEBIO_ORDER["tetra10"]):
        x = reference_nodes("tetra10")[order]
        for k, (a, b) in enumerate(edges):
            assert np.allclose(x[4 + k], 0.5 * (x[a] + x[b]))

    def febio_tet10(r, s, t):
        r1, r2, r3, r4 = 1 - r - s - t, r, s, t
        return np.array([r1 * (2 * r1 - 1), r2 * (2 * r2 - 1), r3 * (2 * r3 - 1), r4 * (2 * r4 - 1),
                         4 * r1 * r2, 4 * r2 * r3, 4 * r3 * r1, 4 * r1 * r4, 4 * r2 * r4, 4 * r3 * r4])

    x = reference_nodes("tetra10")[FEBIO_ORDER["tetra10"]]
    assert np.allclose(np.array([febio_tet10(*p) for p in x]), np.eye(10))  # Kronecker delta at the nodes
    hex_febio = np.array([[-1, -1, -1], [1, -1, -1], [1, 1, -1], [-1, 1, -1], [-1, -1, 1], [1, -1, 1], [1, 1, 1],
                          [-1, 1, 1]], dtype=float)  # FEHex8::shape_fnc node signs
    assert np.array_equal(reference_nodes("hexahedron")[FEBIO_ORDER["hexahedron"]], hex_febio)
    abaqus_faces = {"tetra": [(1, 2, 3), (1, 4, 2), (2, 4, 3), (3, 4, 1)],
                    "hexahedron": [(1, 2, 3, 4), (5, 8, 7, 6), (1, 5, 6, 2), (2, 6, 7, 3), (3, 7, 8, 4), (4, 8, 5, 1)]}
    for ct, faces in abaqus_faces.items():
        nv = len(faces[0])
        for k, label in enumerate(FACE_LABELS[ct]):
            want = faces[int(label[1:]) - 1]
            # same node set, and the same cyclic order up to the orientation Abaqus uses (outward normal)
            got = tuple(int(i) + 1 for i in FACES[ct][k][:nv])
            assert set(got) == set(want)
            rots = [want[i:] + want[:i] for i in range(nv)]
            assert got in rots or got[::-1] in rots


def test_bonemat_binning_rule():
    e = np.array([1.0, 2.0, 3.0, 10.0, 6.5])
    lab, vals, gap = bin_moduli(e, n_materials=3)  # gap 3: (7, 10], (4, 7], [1, 4]
    assert gap == pytest.approx(3.0)
    assert np.array_equal(vals[lab], [3.0, 3.0, 3.0, 10.0, 6.5])
    lab, vals, _ = bin_moduli(e, n_materials=3, grouping="mean")
    assert np.allclose(vals[lab], [2.0, 2.0, 2.0, 10.0, 6.5])
    lab, vals, _ = bin_moduli(e, gap_mpa=100.0)  # one bin
    assert np.array_equal(vals[lab], np.full(5, 10.0))
    with pytest.raises(FemurFeError, match="not both"):
        bin_moduli(e, n_materials=3, gap_mpa=1.0)
    with pytest.raises(FemurFeError, match="> 0"):
        bin_moduli(e, gap_mpa=0.0)


# ---------------------------------------------------------------------------------------------- small boxes
def _box_case(bone, cap_kind, mode="displacement"):
    load = {"mode": "displacement", "displacement_mm": 0.05} if mode == "displacement" else {"mode": "force",
                                                                                            "force_n": 250.0}
    return ff.load_case({
        "schema_version": 1, "name": "box", "bone": bone,
        "material": {"law": "power", "params": {"a_mpa": 1000.0, "b": 1.0, "density_type": "apparent"}},
        "loading": {"direction": "vector", "vector": [0.3, -0.2, -1.0], **load},
        "caps": {"kind": cap_kind, "regions": ["top"] if cap_kind == "pmma" else [], "thickness_mm": 2.0},
        "regions": {"top": {"node_set": "top"}, "bottom": {"node_set": "bottom"}},
        "boundary": [{"region": "top", "apply": "load"}, {"region": "bottom", "fix": "all"}],
    })


def _box(cell_type):
    mesh, par = structured_mesh((3, 3, 5), lambda p: p * np.array([12.0, 10.0, 20.0]), cell_type=cell_type)
    mesh = mesh.with_node_set("top", np.flatnonzero(par[:, 2] == 1.0)).with_node_set(
        "bottom", np.flatnonzero(par[:, 2] == 0.0))
    rng = np.random.default_rng(3)
    e = rng.uniform(200.0, 3000.0, mesh.n_cells)  # heterogeneous, one modulus per element
    return Model(mesh, e / 1000.0, e, None, "apparent", 0.3)


@pytest.mark.parametrize("cell_type, bone, cap_kind, tie", [
    ("tetra10", "femur", "pmma", "coupling"),     # C3D10, PMMA cap, plate free to rotate
    ("tetra10", "femur", "pmma", "equations"),    # the same tie as *EQUATIONs
    ("hexahedron", "vertebra", "rigid", "auto"),  # C3D8, plate on the bone, rotations held
])
def test_small_models_agree_with_calculix(tmp_path, cell_type, bone, cap_kind, tie):
    require_ccx()
    an = prepare(_box_case(bone, cap_kind), _box(cell_type))
    res = an.solve(strength=False)
    deck, _ = _assert_agrees(an, res, tmp_path / "box.inp", tie=tie)
    assert deck.cell_type == cell_type and len(deck.material_names) == len(np.unique(an.fe_young(res.model)))
    assert ("*EQUATION" in (tmp_path / "box.inp").read_text()) == (tie == "equations")
    if bone == "femur":  # the free plate rotated: the check exercises the rotational coupling
        assert np.linalg.norm(res.plate_rotation) > 1e-5


def test_force_mode_and_tie_errors(tmp_path):
    require_ccx()
    an = prepare(_box_case("femur", "pmma", mode="force"), _box("tetra"))
    res = an.solve(strength=False)
    deck, a = _assert_agrees(an, res, tmp_path / "force.inp")
    assert a["plate_force_ccx_N"] == pytest.approx(250.0, rel=TOL)
    assert "*CLOAD" in (tmp_path / "force.inp").read_text()
    with pytest.raises(FemurFeError, match="tie must be"):
        ff.io.abaqus.write_abaqus(deck, tmp_path / "x.inp", tie="rbe2")


# ---------------------------------------------------------------------------------------------- bundled vertebra
@pytest.fixture(scope="module")
def vertebra_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("vertebra") / "run"
    assert cli(["run", "vertebral_compression", "--bundled", "vertebra", "-o", str(out)]) == 0
    return out


def test_run_folder_rebuilds_the_analysis(tmp_path):
    """fe_model.json + result.vtu + summary.json rebuild the solved model (caps, regions, supports, plate):
    re-solving it gives the run's answer to round-off (the same matrix, assembled in the same order)."""
    res0 = prepare(_box_case("femur", "pmma"), _box("tetra10")).solve(strength=False)
    res0.write(tmp_path)
    an, res = load_analysis(tmp_path)
    assert np.array_equal(an.fe_mesh.points, res0.analysis.fe_mesh.points)
    assert np.array_equal(an.fe_mesh.cells, res0.analysis.fe_mesh.cells)
    again = an.solve(strength=False)
    assert again.stiffness_N_per_mm == pytest.approx(res0.stiffness_N_per_mm, rel=1e-12)
    assert np.abs(again.displacement - res0.displacement).max() <= 1e-12 * np.abs(res0.displacement).max()
    assert np.array_equal(res.model.young, res0.model.young) and set(an.caps) == {"top"}


@pytest.fixture(scope="module")
def vertebra(vertebra_run):
    return load_analysis(vertebra_run)


def test_bundled_vertebra_agrees_with_calculix(vertebra_run, vertebra, tmp_path, capsys):
    require_ccx()
    inp = tmp_path / "vertebra.inp"
    assert cli(["export", str(vertebra_run), "--format", "abaqus", "-o", str(inp), "--print-displacements"]) == 0
    assert "ccx -i" in capsys.readouterr().out
    an, res = vertebra
    deck = build_deck(an, res)
    a = agreement(deck, res, run_ccx(inp)["dat"])
    assert a["displacement"] < TOL and a["plate_displacement"] < TOL, a
    assert set(a["reactions"]) == {"PLATE_SUPERIOR_ENDPLATE", "PLATE_SUPERIOR_ENDPLATE_REF",
                                   "CAP_INFERIOR_ENDPLATE_TOP"}
    assert max(a["reactions"].values()) < TOL, a
    text = inp.read_text()
    for card in ("*COUPLING", "*KINEMATIC", "*STATIC", "*NODE PRINT, NSET=PLATE_SUPERIOR_ENDPLATE_REF, TOTALS=ONLY",
                 "*NODE FILE", "*EL FILE", "CAP_INFERIOR_ENDPLATE_TOP, 1, 3"):
        assert card in text
    assert text.count("*MATERIAL") == len(np.unique(res.model.young)) + 1  # exact moduli + PMMA


def test_febio_file_reads_back_with_the_model(vertebra, tmp_path):
    an, res = vertebra
    deck = build_deck(an, res)
    feb = tmp_path / "vertebra.feb"
    ff.export_febio(an, res, feb)
    f = read_febio(feb)
    assert f["version"] == "4.0" and f["module"] == "solid"
    order = ["Module", "Material", "Mesh", "MeshDomains", "MeshData", "Boundary", "Rigid", "LoadData", "Step", "Output"]
    assert [s for s in f["sections"] if s in order] == order  # MeshData after MeshDomains (FEBio requires it)
    assert len(f["nodes"]) == an.fe_mesh.n_points
    assert np.allclose(np.array([f["nodes"][i + 1] for i in range(an.fe_mesh.n_points)]), an.fe_mesh.points,
                       rtol=0, atol=1e-12)
    assert {k: v["type"] for k, v in f["elements"].items()} == {"BONE": "tet4", "CAP_SUPERIOR_ENDPLATE": "tet4",
                                                                "CAP_INFERIOR_ENDPLATE": "tet4"}
    conn = {i: c for blk in f["elements"].values() for i, c in zip(blk["ids"], blk["conn"])}
    assert len(conn) == an.fe_mesh.n_cells
    assert np.array_equal(np.array([conn[i + 1] for i in range(an.fe_mesh.n_cells)]) - 1, an.fe_mesh.cells)
    # exact per-element moduli through a map on the bone domain
    assert f["materials"]["bone"]["E"] == ("bone_E", {"type": "map"})
    emap = f["element_data"]["bone_E"]
    assert emap["elem_set"] == "BONE"
    assert np.array_equal(np.array([emap["values"][k + 1] for k in range(an.n_bone_cells)]), res.model.young)
    assert f["materials"]["cap_superior_endplate"]["E"][0] == "2500.0"
    assert f["domains"] == {"BONE": "bone", "CAP_SUPERIOR_ENDPLATE": "cap_superior_endplate",
                            "CAP_INFERIOR_ENDPLATE": "cap_inferior_endplate"}
    # sets and surfaces of every region and cap, facets of the right kind
    for name, ids in deck.node_sets.items():
        if name != "NALL":
            assert f["node_sets"][name] == (ids + 1).tolist()
    for name, (cells, _) in deck.surfaces.items():
        facets = f["surfaces"][f"S_{name}"]
        assert len(facets) == len(cells) and {t for t, _ in facets} == {"tri3"}
    # the plate: a rigid body about femur_fe's reference point; rotations held, pushed 0.2 mm along z
    plate = f["materials"]["plate"]
    assert plate["type"] == "rigid body"
    assert np.allclose([float(v) for v in plate["center_of_mass"][0].split(",")], an.tie.reference_point)
    kinds = {(b["type"], b["node_set"]) for b in f["boundary"]}
    assert kinds == {("zero displacement", "CAP_INFERIOR_ENDPLATE_TOP"), ("rigid", "PLATE_SUPERIOR_ENDPLATE")}
    held = f["rigid"][0]
    assert held["type"] == "rigid_fixed" and [held[k][0] for k in ("Rx_dof", "Ry_dof", "Rz_dof", "Ru_dof", "Rv_dof",
                                                                   "Rw_dof")] == ["0", "0", "0", "1", "1", "1"]
    (push,) = f["steps"][0]["rigid"]
    assert push["type"] == "rigid_displacement" and push["dof"][0] == "z"
    assert float(push["value"][0]) == pytest.approx(0.2) and push["value"][1] == {"lc": "1"}
    assert f["steps"][0]["control"]["analysis"] == "STATIC"
    assert "reaction forces" in f["plot_vars"]
    assert ("rigid_body_data", "4") in {(t, text) for t, _, text in f["log"]}


def test_febio_binned_and_force_mode(tmp_path):
    an = prepare(_box_case("femur", "pmma", mode="force"), _box("tetra10"))
    res = an.solve(strength=False)
    rep = ff.export_febio(an, res, tmp_path / "box.feb", n_materials=4)
    f = read_febio(tmp_path / "box.feb")
    bone_parts = [k for k in f["elements"] if k.startswith("BONE_")]
    assert rep.binning is not None and len(bone_parts) == rep.binning.n_materials <= 4
    assert {v["type"] for v in f["elements"].values()} == {"tet10"}
    assert {t for s in f["surfaces"].values() for t, _ in s} == {"tri6"}
    assert "BONE" in f["element_sets"] and not f["element_data"]
    (load,) = f["steps"][0]["rigid"]
    assert load["type"] == "rigid_force" and load["dof"][0] == "Rz" and float(load["value"][0]) == 250.0
    assert not f["rigid"]  # free plate: nothing held


# ---------------------------------------------------------------------------------------------- real femur geometry
@pytest.fixture(scope="module")
def coarse_femur_run(tmp_path_factory):
    """The real femur surface (femur_gfxmorph), proximal 60 mm below the lesser trochanter kept,
    meshed at 4 mm (~18 k tet4), heterogeneous density, the sideways-fall preset."""
    surf = cut_proximal_femur(read_surface(require_shared("femur_gfxmorph", "femur.stl")), 60.0)
    mesh = tetmesh_from_surface(surf, element_size=4.0)
    c = mesh.cell_centroids()
    rho = 0.35 + 0.25 * np.abs(np.sin(c[:, 0] / 17.0) * np.cos(c[:, 2] / 23.0))
    model = Model.from_density(mesh, rho, ff.bone.material_law("keller1994_combined"))
    out = tmp_path_factory.mktemp("femur") / "run"
    prepare(ff.load_case(resolve_case_path("sideways_fall")), model).solve(strength=False).write(out)
    return out


def test_real_femur_sideways_fall_agrees_with_calculix(coarse_femur_run, tmp_path):
    require_ccx()
    an, res = load_analysis(coarse_femur_run)
    assert an.tie.prescribed == {}  # the head plate slides and rotates freely
    _, a = _assert_agrees(an, res, tmp_path / "femur.inp")
    assert set(a["reactions"]) == {"PLATE_HEAD_CONTACT", "PLATE_HEAD_CONTACT_REF", "CAP_TROCHANTER_CONTACT_TOP",
                                   "DISTAL_CUT"}


def test_binned_export_stays_within_the_reported_binning_error(coarse_femur_run, tmp_path):
    """Bonemat binning into 12 materials: the stiffness CalculiX finds lies within the bounds the export
    reports from femur_fe's own solution (energy theorems), and the binning changes it measurably."""
    require_ccx()
    an, res = load_analysis(coarse_femur_run)
    deck = build_deck(an, res, n_materials=12)
    rep = deck.binning
    lab, vals, _ = bin_moduli(res.model.young, n_materials=12)
    assert rep.max_rel_error == pytest.approx(np.max(np.abs(vals[lab] - res.model.young) / res.model.young))
    ff.io.abaqus.write_abaqus(deck, tmp_path / "binned.inp")
    d = read_dat(run_ccx(tmp_path / "binned.inp")["dat"])
    k_binned = d[("total force", deck.plate.name + "_REF")][2] / res.plate_displacement_mm
    ratio = k_binned / res.stiffness_N_per_mm
    lo, hi = rep.stiffness_ratio_bounds
    assert lo - TOL <= ratio <= hi + TOL, (ratio, rep)
    assert abs(ratio - 1.0) > 100 * TOL  # the binning error is real, not print noise
    assert len(deck.material_names) == rep.n_materials + 1  # bins + PMMA


# ---------------------------------------------------------------------------------------------- errors
def test_export_errors_name_the_fix(tmp_path, vertebra_run, capsys):
    assert cli(["export", str(vertebra_run), "-o", str(tmp_path / "x.txt")]) == 2
    assert "--format" in capsys.readouterr().err
    assert cli(["export", str(vertebra_run), "--format", "febio", "-o", str(tmp_path / "x.inp")]) == 2
    assert "does not match" in capsys.readouterr().err
    assert cli(["export", str(vertebra_run), "-o", str(tmp_path / "x.inp"), "--materials", "0"]) == 2
    assert ">= 1" in capsys.readouterr().err
    old = tmp_path / "old"
    old.mkdir()
    for name in ("result.vtu", "summary.json"):
        (old / name).write_bytes((vertebra_run / name).read_bytes())
    assert cli(["export", str(old), "-o", str(tmp_path / "x.inp")]) == 2
    err = capsys.readouterr().err
    assert "fe_model.json" in err and "re-run" in err and "Traceback" not in err


# ---------------------------------------------------------------------------------------------- full bundled femur
@pytest.mark.slow
def test_bundled_femur_agrees_with_calculix(tmp_path):
    """The full bundled femur (106 k tet4, one material per element; ccx needs ~1-2 min for the 106 k
    materials, so CI runs the coarse real femur above instead)."""
    require_ccx()
    out = tmp_path / "run"
    assert cli(["run", "sideways_fall", "--bundled", "femur", "-o", str(out)]) == 0
    an, res = load_analysis(out)
    _assert_agrees(an, res, tmp_path / "femur.inp")


@pytest.mark.slow
def test_bundled_vertebra_wedge_agrees_with_calculix(tmp_path):
    """Anterior wedge: the plate is rotated 1 deg about the posterior hinge (a prescribed rotation of the
    reference node) and held along the load; the rest as in the axial case."""
    require_ccx()
    out = tmp_path / "run"
    assert cli(["run", "vertebral_wedge", "--bundled", "vertebra", "-o", str(out)]) == 0
    an, res = load_analysis(out)
    assert abs(an.tie.prescribed["rx"]) == pytest.approx(np.radians(1.0))  # sign: the hinge axis direction
    _assert_agrees(an, res, tmp_path / "wedge.inp")
