"""A solved femur_fe load case as a solver-neutral input deck (for the Abaqus/CalculiX and FEBio writers).

:func:`build_deck` collects from a prepared :class:`femur_fe.analysis.Analysis` and its
:class:`femur_fe.analysis.Result` everything another FE code needs to solve the same problem:

* the FE mesh **in the load frame** (``x' = R x``, the load along +z'; rows of ``R`` are
  ``an.rotation``), bone elements first, then the PMMA cap elements;
* Young's modulus per element (bone from the model, caps from ``[caps] young_mpa``) and the one
  Poisson ratio femur_fe uses for the whole model (the bone's);
* node sets, element sets and element-face surfaces of every region, cap and the bone;
* the supports (node set + load-frame components held at zero) and the rigid loading plate:
  tied nodes, reference point, the reference DOFs femur_fe prescribes (with their values for the
  case's load) and the load on the free ones.

Materials are exact per element (one material per distinct modulus) or binned into fewer materials
the way Bonemat groups them (:func:`bin_moduli`).

Units: mm, N, MPa, rad. Ids are 0-based here; the writers number from 1.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .._version import __version__
from ..errors import FemurFeError, LoadCaseError
from ..fe.constraints import FIX_COMPONENTS
from ..fe.elements import FACES, quadrature, shape_gradients
from ..fe.recovery import strain as recover_strain

log = logging.getLogger(__name__)

#: reference DOF names of a rigid plate, in the order of :data:`femur_fe.fe.constraints.TIE_DOF_NAMES`
PLATE_DOFS = ("ux", "uy", "uz", "rx", "ry", "rz")
BINNING_GROUPING = ("max", "mean")


@dataclass(frozen=True, eq=False)
class Support:
    """Nodes whose displacement components (load frame: 0 = x', 1 = y', 2 = z') are held at zero."""

    name: str
    region: str
    nodes: np.ndarray
    components: tuple[int, ...]


@dataclass(frozen=True, eq=False)
class Plate:
    """The rigid loading plate: tied nodes follow ``u = U + theta x (x - reference_point)``.

    ``prescribed`` maps reference DOF index (0..5 = ux, uy, uz, rx, ry, rz) to its value (mm, rad)
    for the case's load; ``load`` is the (6,) force (N) and moment (N mm) on the free DOFs.
    ``surface`` names the element-face surface that covers exactly the tied nodes, or None when
    no set of boundary faces does (then only a node-based constraint can express the tie).
    """

    name: str
    region: str
    nodes: np.ndarray
    reference_point: np.ndarray
    prescribed: dict
    load: np.ndarray
    surface: str | None


@dataclass(frozen=True)
class BinningReport:
    """How far binned moduli are from the exact per-element moduli.

    ``max_rel_error`` / ``mean_rel_error``: over bone elements, ``|E_bin - E| / E``;
    ``energy_rel_error``: strain-energy weighted mean of ``|E_bin - E| / E`` (first-order effect on the
    stiffness); ``stiffness_ratio_bounds``: rigorous bounds on ``K_binned / K`` from the femur_fe solution
    (upper: the femur_fe displacement field in the binned material, minimum potential energy; lower: its
    stress field, minimum complementary energy; the same Poisson ratio in both).
    """

    n_materials: int
    gap_mpa: float
    grouping: str
    max_rel_error: float
    mean_rel_error: float
    energy_rel_error: float
    stiffness_ratio_bounds: tuple[float, float]

    def to_dict(self) -> dict:
        return {"n_materials": self.n_materials, "gap_mpa": self.gap_mpa, "grouping": self.grouping,
                "max_rel_error": self.max_rel_error, "mean_rel_error": self.mean_rel_error,
                "energy_rel_error": self.energy_rel_error,
                "stiffness_ratio_bounds": list(self.stiffness_ratio_bounds)}

    def summary(self) -> str:
        lo, hi = self.stiffness_ratio_bounds
        return (f"{self.n_materials} materials (gap {self.gap_mpa:.4g} MPa, {self.grouping}): modulus error max "
                f"{100 * self.max_rel_error:.2f} %, mean {100 * self.mean_rel_error:.2f} %, energy-weighted "
                f"{100 * self.energy_rel_error:.3f} %; binned stiffness / femur_fe stiffness in "
                f"[{lo:.5f}, {hi:.5f}]")


@dataclass(eq=False)
class Deck:
    """Everything an input file needs (see the module docstring); built by :func:`build_deck`."""

    case_name: str
    bone: str
    points: np.ndarray  # (n, 3) load frame, mm
    cells: np.ndarray  # (m, k) 0-based
    cell_type: str
    poisson: float
    young: np.ndarray  # (m,) exact moduli, MPa
    material_of: np.ndarray  # (m,) material index per element
    material_young: np.ndarray  # (n_materials,) MPa
    material_names: list[str]
    parts: dict  # part name -> (first cell, stop cell): "BONE", "CAP_<region>"
    part_material: dict  # part name -> material name for single-material parts (caps), else None
    node_sets: dict  # name -> 0-based node ids
    element_sets: dict  # name -> 0-based cell ids
    surfaces: dict  # name -> (cell ids (f,), local face index (f,) into femur_fe.fe.elements.FACES)
    supports: list
    plate: Plate
    rotation: np.ndarray  # (3, 3): x' = R x
    direction: np.ndarray  # (3,) load direction, input frame
    loading_mode: str
    reference: dict  # femur_fe's answer in the load frame: plate displacement/force, reactions, stiffness
    binning: BinningReport | None = None
    notes: list = field(default_factory=list)

    @property
    def n_bone_cells(self) -> int:
        a, b = self.parts["BONE"]
        return b - a

    def header_lines(self) -> list[str]:
        """Plain-text description for the file header (units, frame, what femur_fe found)."""
        r = self.rotation
        ref = self.reference
        lines = [f"femur_fe {__version__} export of load case {self.case_name!r} ({self.bone})",
                 "units: mm, N, MPa (tonne/mm^3 if a density is added)",
                 "coordinates are in the load frame x' = R x (the load acts along +z' on the plate); R rows:",
                 *(f"  [{row[0]: .15f} {row[1]: .15f} {row[2]: .15f}]" for row in r),
                 ("load direction in the input frame: "
                  f"[{self.direction[0]:.15f} {self.direction[1]:.15f} {self.direction[2]:.15f}]"),
                 f"femur_fe result (load frame): plate displacement along z' {ref['plate_displacement_mm']:.9g} mm, "
                 f"plate force along z' {ref['load_force_N']:.9g} N"
                 + (f", stiffness {ref['stiffness_N_per_mm']:.9g} N/mm" if ref.get("stiffness_N_per_mm") else "")]
        for name, f in ref["reaction_forces_N"].items():
            lines.append(f"femur_fe reaction on {name} (N, load frame): [{f[0]:.9g} {f[1]:.9g} {f[2]:.9g}]")
        if self.binning is not None:
            lines.append("materials binned: " + self.binning.summary())
        lines += self.notes
        return lines


@dataclass(frozen=True)
class ExportReport:
    """What an export wrote: file, format, counts, tie form, binning error (None when exact)."""

    path: Path
    format: str
    n_nodes: int
    n_elements: int
    n_materials: int
    tie: str
    binning: BinningReport | None
    node_sets: tuple
    element_sets: tuple
    surfaces: tuple

    def to_dict(self) -> dict:
        return {"path": str(self.path), "format": self.format, "n_nodes": self.n_nodes,
                "n_elements": self.n_elements, "n_materials": self.n_materials, "tie": self.tie,
                "binning": None if self.binning is None else self.binning.to_dict(),
                "node_sets": list(self.node_sets), "element_sets": list(self.element_sets),
                "surfaces": list(self.surfaces)}



# ---------------------------------------------------------------------------------------------- faces
class BoundaryFaceIndex:
    """The boundary faces of a mesh with the cell and local face (row of ``FACES``) each belongs to."""

    def __init__(self, cells: np.ndarray, cell_type: str):
        local = FACES[cell_type]
        self.nv = 4 if cell_type == "hexahedron" else 3
        nf = local.shape[0]
        allf = cells[:, local].reshape(-1, local.shape[1])
        key = np.sort(allf[:, :self.nv], axis=1)
        _, inv, counts = np.unique(key, axis=0, return_inverse=True, return_counts=True)
        idx = np.flatnonzero(counts[inv.ravel()] == 1)
        self.faces = allf[idx]  # (f, kf) node ids
        self.cell = (idx // nf).astype(np.int64)
        self.local = (idx % nf).astype(np.int64)
        self._where = {k: i for i, k in enumerate(map(tuple, key[idx].tolist()))}

    def locate(self, faces: np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray]:
        """(cell ids, local face ids) of boundary ``faces`` (f, >= nv) given by their nodes."""
        rows = []
        for f in np.sort(np.asarray(faces)[:, :self.nv], axis=1).tolist():
            i = self._where.get(tuple(f))
            if i is None:
                raise FemurFeError(f"{what}: face {f} is not a boundary face of the FE mesh; the stored regions do "
                                   "not match the mesh (re-run the case)")
            rows.append(i)
        rows = np.asarray(rows, dtype=np.int64)
        return self.cell[rows], self.local[rows]

    def covering(self, nodes: np.ndarray):
        """(cell ids, local face ids) of the boundary faces whose nodes all lie in ``nodes``, or None
        unless those faces use every node of ``nodes``."""
        nodes = np.asarray(nodes, dtype=np.int64)
        member = np.zeros(int(max(self.faces.max(), nodes.max())) + 1, dtype=bool)
        member[nodes] = True
        sel = member[self.faces].all(axis=1)
        if not sel.any() or len(np.unique(self.faces[sel])) != len(np.unique(nodes)):
            return None
        order = np.lexsort((self.local[sel], self.cell[sel]))
        return self.cell[sel][order], self.local[sel][order]


# ---------------------------------------------------------------------------------------------- binning
def bin_moduli(young: np.ndarray, *, n_materials: int | None = None, gap_mpa: float | None = None,
               grouping: str = "max") -> tuple[np.ndarray, np.ndarray, float]:
    """Group moduli into bins of width ``gap_mpa`` the way Bonemat does.

    Bonemat (Taddei et al. 2004 Med Eng Phys 26:61; Zannoni et al. 1998 Med Eng Phys 20:735) assigns one
    material to all elements whose modulus falls in the same interval of width ``Egap``; the
    intervals are counted down from the highest modulus, and each material takes the largest
    (``grouping="max"``, Bonemat's default) or the mean modulus of its elements. Given
    ``n_materials`` instead, ``Egap = (E_max - E_min) / n_materials`` (the py_bonemat_abaqus rule, Pegg &
    Gill 2016 J Biomech 49:3116); intervals holding no element produce no material, so the count can be
    smaller.

    Returns (labels (m,) 0-based material index in order of increasing modulus, moduli (k,) MPa, gap MPa).
    """
    e = np.asarray(young, dtype=np.float64)
    if grouping not in BINNING_GROUPING:
        raise LoadCaseError(f"binning grouping must be one of {', '.join(BINNING_GROUPING)}, got {grouping!r}")
    if (n_materials is None) == (gap_mpa is None):
        raise LoadCaseError("give either the number of materials (--materials N) or the modulus gap (--gap-mpa E), "
                            "not both")
    emax, emin = float(e.max()), float(e.min())
    if gap_mpa is None:
        if int(n_materials) < 1:
            raise LoadCaseError(f"the number of materials must be >= 1, got {n_materials}")
        gap = (emax - emin) / int(n_materials)
    else:
        gap = float(gap_mpa)
        if not gap > 0:
            raise LoadCaseError(f"the modulus gap must be > 0 MPa, got {gap_mpa!r}")
    if gap == 0.0:  # one modulus for every element: nothing to bin
        return np.zeros(len(e), dtype=np.int64), np.array([emax]), 0.0
    # interval index counted down from E_max: [E_max - (j+1) gap, E_max - j gap), E_max itself in interval 0;
    # the lowest interval is closed below so E_min lands in interval n - 1 when gap = (E_max - E_min) / n
    j = np.floor((emax - e) / gap).astype(np.int64)
    if n_materials is not None:
        j = np.minimum(j, int(n_materials) - 1)
    uniq, labels = np.unique(-j, return_inverse=True)  # increasing modulus
    k = len(uniq)
    if grouping == "max":
        vals = np.full(k, -np.inf)
        np.maximum.at(vals, labels, e)
    else:
        vals = np.bincount(labels, weights=e, minlength=k) / np.bincount(labels, minlength=k)
    return labels.astype(np.int64), vals, gap


def element_energies(mesh, displacement: np.ndarray, young: np.ndarray, poisson: float) -> np.ndarray:
    """Strain energy (N mm) of every element for nodal ``displacement`` (n, 3), exact for the element's
    stiffness quadrature (the rule femur_fe assembles with)."""
    eps = recover_strain(mesh, np.ascontiguousarray(displacement), at="quadrature")  # (m, q, 3, 3)
    q = quadrature(mesh.cell_type)
    dn = shape_gradients(mesh.cell_type, q.points)  # (q, k, 3)
    jac = np.einsum("mka,qkb->mqab", mesh.points[mesh.cells], dn)
    det = np.linalg.det(jac)  # (m, q)
    lam = poisson / ((1 + poisson) * (1 - 2 * poisson))
    mu = 0.5 / (1 + poisson)
    tr = np.trace(eps, axis1=2, axis2=3)
    dens = 0.5 * (lam * tr ** 2 + 2 * mu * np.einsum("mqij,mqij->mq", eps, eps))  # per unit modulus
    return np.asarray(young, dtype=np.float64) * ((dens * det) @ q.weights)


def binning_report(res: Any, binned_bone: np.ndarray, gap: float, grouping: str, n_materials: int) -> BinningReport:
    """Errors of ``binned_bone`` (m,) against ``res.model.young`` with the energy bounds on the stiffness."""
    e = res.model.young
    rel = np.abs(binned_bone - e) / e
    u_e = element_energies(res.mesh, res.displacement, e, res.model.poisson)
    # strain energy = work of the plate (the supports do no work): force along the load times the plate
    # displacement (free plate DOFs carry no load) plus moment times rotation (prescribed rotations)
    total = 0.5 * float(res.load_force_N * res.plate_displacement_mm)
    if res.plate_rotation is not None and res.plate_moment is not None:
        total += 0.5 * float(np.asarray(res.plate_moment) @ np.asarray(res.plate_rotation))
    if not total > 0:
        raise FemurFeError("the result has no strain energy (zero load or displacement); the binning error "
                           "cannot be weighted")
    w = u_e / total
    w_rest = max(0.0, 1.0 - float(w.sum()))  # cap elements: same modulus in both models
    ratio = binned_bone / e
    upper = float(w @ ratio) + w_rest
    lower = 1.0 / (float(w @ (1.0 / ratio)) + w_rest)
    return BinningReport(int(n_materials), float(gap), grouping, float(rel.max()), float(rel.mean()),
                         float(w @ rel / max(float(w.sum()), 1e-300)), (lower, upper))


# ---------------------------------------------------------------------------------------------- the deck
def _set_name(name: str) -> str:
    out = "".join(c if c.isalnum() or c == "_" else "_" for c in str(name)).upper()
    if not out or not out[0].isalpha():
        out = "R_" + out
    return out


def build_deck(an: Any, res: Any, *, n_materials: int | None = None, gap_mpa: float | None = None,
               grouping: str = "max") -> Deck:
    """The :class:`Deck` of a prepared analysis ``an`` and its result ``res``.

    ``n_materials`` / ``gap_mpa``: bin the bone moduli Bonemat-style (:func:`bin_moduli`) and report the
    binning error (:class:`BinningReport`); by default every distinct modulus is its own material.
    """
    case = an.case
    fe = an.fe_mesh
    if res.model.mesh.n_cells != an.n_bone_cells:
        raise FemurFeError(f"the result has {res.model.mesh.n_cells} elements but the analysis {an.n_bone_cells}; "
                           "export a result together with the analysis that produced it")
    nb = an.n_bone_cells
    young = an.fe_young(res.model)
    poisson = float(res.model.poisson)
    # ---- materials
    binning = None
    if n_materials is None and gap_mpa is None:
        uniq, labels = np.unique(young, return_inverse=True)
        material_of, material_young = labels.astype(np.int64), uniq
        names = [f"M{i + 1}" for i in range(len(uniq))]
    else:
        lab, vals, gap = bin_moduli(res.model.young, n_materials=n_materials, gap_mpa=gap_mpa, grouping=grouping)
        binning = binning_report(res, vals[lab], gap, grouping, len(vals))
        cap_e = young[nb:]
        cap_uniq, cap_lab = np.unique(cap_e, return_inverse=True)
        material_of = np.concatenate([lab, len(vals) + cap_lab]).astype(np.int64)
        material_young = np.concatenate([vals, cap_uniq])
        names = [f"M{i + 1}" for i in range(len(vals))] + [f"PMMA{i + 1}" for i in range(len(cap_uniq))]
        log.info("materials binned: %s", binning.summary())
    # ---- parts and sets
    parts = {"BONE": (0, nb)}
    part_material = {"BONE": None}
    element_sets = {"BONE": np.arange(nb, dtype=np.int64)}
    node_sets = {"BONE": np.arange(an.n_bone_nodes, dtype=np.int64), "NALL": np.arange(fe.n_points, dtype=np.int64)}
    surfaces = {}
    lookup = BoundaryFaceIndex(fe.cells, fe.cell_type)
    bone_lookup = BoundaryFaceIndex(res.model.mesh.cells, fe.cell_type)
    for name, reg in an.regions.items():
        sn = _set_name(name)
        node_sets[sn] = np.asarray(reg.nodes, dtype=np.int64)
        if len(reg.faces):
            c, lf = bone_lookup.locate(reg.faces, f"region {name!r}")
            surfaces[sn] = (c, lf)
            element_sets[sn] = np.unique(c)
    for name, cap in an.caps.items():
        sn = "CAP_" + _set_name(name)
        parts[sn] = (int(cap.first_cell), int(cap.first_cell + cap.n_cells))
        cap_mat = np.unique(material_of[cap.first_cell:cap.first_cell + cap.n_cells])
        part_material[sn] = names[int(cap_mat[0])] if len(cap_mat) == 1 else None
        element_sets[sn] = np.arange(cap.first_cell, cap.first_cell + cap.n_cells, dtype=np.int64)
        node_sets[sn + "_TOP"] = np.asarray(cap.top_nodes, dtype=np.int64)
        node_sets[sn + "_INTERFACE"] = np.asarray(cap.interface_nodes, dtype=np.int64)
        top = lookup.covering(cap.top_nodes)
        if top is not None:
            surfaces[sn + "_TOP"] = top
    # ---- supports, checked against the analysis's fixed DOFs
    supports = []
    held = []
    for b in case.boundary:
        if not b.fix:
            continue
        nodes = np.asarray(an.region_fe_nodes[b.region], dtype=np.int64)
        comps = FIX_COMPONENTS[b.fix]
        sn = ("CAP_" + _set_name(b.region) + "_TOP") if b.region in an.caps else _set_name(b.region)
        node_sets.setdefault(sn, nodes)
        supports.append(Support(sn, b.region, nodes, comps))
        held.append((3 * nodes[:, None] + np.asarray(comps)).ravel())
    held = np.unique(np.concatenate(held)) if held else np.zeros(0, dtype=np.int64)
    if not np.array_equal(held, np.asarray(an.fixed_dofs, dtype=np.int64)):
        raise FemurFeError("the supports rebuilt from the load case do not match the analysis's fixed DOFs "
                           f"({len(held)} vs {len(an.fixed_dofs)}); export the analysis the result was solved with")
    # ---- the plate
    tie = an.tie
    plate_nodes = np.asarray(tie.node_ids, dtype=np.int64)
    pname = "PLATE_" + _set_name(tie.name)
    node_sets[pname] = plate_nodes
    psurf = lookup.covering(plate_nodes)
    if psurf is not None:
        surfaces[pname] = psurf
    prescribed = {PLATE_DOFS.index(k): float(v) for k, v in tie.prescribed.items()}
    load = np.zeros(6)
    loading = case.loading
    if loading.direction != "wedge":
        if 2 in prescribed:
            raise FemurFeError("the plate's displacement along the load is prescribed in the analysis; only the "
                               "wedge case does that")
        if loading.mode == "displacement":
            prescribed[2] = float(loading.displacement_mm)
        else:
            load[2] = float(loading.force_n)
    plate = Plate(pname, str(tie.name), plate_nodes, np.asarray(tie.reference_point, dtype=np.float64),
                  dict(sorted(prescribed.items())), load, pname if psurf is not None else None)
    R = np.asarray(an.rotation, dtype=np.float64)
    reference = {"plate_displacement_mm": float(res.plate_displacement_mm), "load_force_N": float(res.load_force_N),
                 "stiffness_N_per_mm": res.stiffness_N_per_mm,
                 "reaction_forces_N": {k: (R @ np.asarray(v, dtype=np.float64)).tolist()
                                       for k, v in res.reaction_forces.items()}}
    notes = []
    if abs(float(case.caps.poisson) - poisson) > 1e-12 and an.caps:
        notes.append(f"the caps use the bone's Poisson ratio {poisson:g} as in femur_fe (the case's caps.poisson "
                     f"{case.caps.poisson:g} is not used)")
    return Deck(str(case.name), str(case.bone), np.asarray(fe.points, dtype=np.float64), fe.cells, fe.cell_type,
                poisson, young, material_of, np.asarray(material_young, dtype=np.float64), names, parts,
                part_material, node_sets, element_sets, surfaces, supports, plate, R,
                np.asarray(an.direction, dtype=np.float64), str(loading.mode), reference, binning, notes)


def material_members(deck: Deck) -> list[np.ndarray]:
    """0-based element ids of each material of ``deck`` (ascending)."""
    order = np.argsort(deck.material_of, kind="stable")
    counts = np.bincount(deck.material_of, minlength=len(deck.material_names))
    return np.split(order, np.cumsum(counts)[:-1])
