"""Write a solved load case as an Abaqus input deck that CalculiX (``ccx``) also runs.

The deck (:func:`export_abaqus`) holds the FE model of femur_fe in the load frame (see
:mod:`femur_fe.io.deck`): nodes; C3D4 / C3D10 / C3D8 elements (femur_fe's tet10 and hex8 node orders
are Abaqus's: mid-edge nodes on edges 1-2, 2-3, 3-1, 1-4, 2-4, 3-4; hex faces S1..S6 as listed in
``FACE_LABELS``); one ``*MATERIAL`` + ``*SOLID SECTION`` per distinct modulus (exact) or per Bonemat bin;
node sets, element sets and element-face surfaces of every region, cap and the bone; the supports as
``*BOUNDARY`` on the load-frame components femur_fe holds; the rigid loading plate as a reference node
(its rotations as degrees of freedom 4-6) with a ``*COUPLING`` / ``*KINEMATIC`` constraint on the
plate's surface, or, with ``tie="equations"``, as the small-rotation rigid-body ``*EQUATION`` s
femur_fe itself enforces (``u_i = U + theta x (x_i - x_ref)``, the rotation stored as the translations
of a second node, the CalculiX convention); the plate DOFs femur_fe prescribes (with the case's
displacement along the load in displacement mode) as ``*BOUNDARY`` on the reference node, the case's
force as ``*CLOAD``; one ``*STATIC`` step (linear: no NLGEOM) with ``*NODE FILE`` / ``*EL FILE`` field
output and ``*NODE PRINT, TOTALS=ONLY`` of RF on the plate reference node and on every support, so the
``.dat`` file holds the total reactions.

CalculiX linearises kinematic couplings once in a linear step (CalculiX User's Manual, "Kinematic and
Distributing Coupling"), so both tie forms give femur_fe's constraint exactly.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import FemurFeError
from .atomic import atomic_path
from .deck import PLATE_DOFS, Deck, ExportReport, build_deck, material_members

log = logging.getLogger(__name__)

ELEMENT_TYPES = {"tetra": "C3D4", "tetra10": "C3D10", "hexahedron": "C3D8"}
#: femur_fe node index -> Abaqus node position, per cell type (identity: same conventions)
NODE_ORDER = {"tetra": np.arange(4), "tetra10": np.arange(10), "hexahedron": np.arange(8)}
#: Abaqus face label of each local face of femur_fe.fe.elements.FACES
FACE_LABELS = {"tetra": ("S1", "S2", "S3", "S4"), "tetra10": ("S1", "S2", "S3", "S4"),
               "hexahedron": ("S1", "S2", "S3", "S4", "S5", "S6")}
TIE_FORMS = ("auto", "coupling", "equations")
_PER_LINE = 16  # Abaqus: at most 16 entries on a data line
_NUM = "{:.12e}"  # 13 significant digits, at most 20 characters (CalculiX reads fields of 20)


def _ids_block(ids: np.ndarray) -> list[str]:
    """1-based ids, 16 per line; a contiguous range as one GENERATE line is left to the caller."""
    one = np.asarray(ids, dtype=np.int64) + 1
    return [", ".join(map(str, one[i:i + _PER_LINE].tolist())) for i in range(0, len(one), _PER_LINE)]


def _set_lines(keyword: str, name: str, ids: np.ndarray) -> list[str]:
    ids = np.asarray(ids, dtype=np.int64)
    if len(ids) > 2 and np.array_equal(ids, np.arange(ids[0], ids[0] + len(ids))):
        return [f"*{keyword}, {keyword}={name}, GENERATE", f"{ids[0] + 1}, {ids[-1] + 1}, 1"]
    return [f"*{keyword}, {keyword}={name}"] + _ids_block(ids)


def _rigid_equations(deck: Deck, ref: int, rot: int) -> list[str]:
    """``u_ic - U_c - (theta x r_i)_c = 0`` for every tied node i and component c (1-based node ids)."""
    p = deck.plate
    r = deck.points[p.nodes] - p.reference_point
    # (theta x r)_x = ty rz - tz ry ; _y = tz rx - tx rz ; _z = tx ry - ty rx
    coef = {0: ((1, r[:, 2]), (2, -r[:, 1])), 1: ((2, r[:, 0]), (0, -r[:, 2])), 2: ((0, r[:, 1]), (1, -r[:, 0]))}
    lines = [(f"** rigid plate: u_i = U + theta x (x_i - x_ref), U = translations of node {ref}, "
              f"theta = translations of node {rot} (rad)"), "*EQUATION"]
    for k, node in enumerate(p.nodes.tolist()):
        for c in range(3):
            terms = [(node + 1, c + 1, 1.0), (ref, c + 1, -1.0)]
            terms += [(rot, j + 1, -float(v[k])) for j, v in coef[c] if v[k] != 0.0]
            lines.append(str(len(terms)))
            for i in range(0, len(terms), 4):
                lines.append(", ".join(f"{n}, {d}, {_NUM.format(a)}" for n, d, a in terms[i:i + 4]))
    return lines


def write_abaqus(deck: Deck, path: str | os.PathLike, *, tie: str = "auto",
                 print_displacements: bool = False) -> ExportReport:
    """Write ``deck`` to ``path`` (.inp); see the module docstring. Returns an :class:`ExportReport`.

    ``tie``: ``"coupling"`` (``*COUPLING``/``*KINEMATIC`` on the plate surface), ``"equations"``
    (``*EQUATION``), ``"auto"`` = coupling when boundary faces cover exactly the tied nodes, else
    equations. ``print_displacements`` adds ``*NODE PRINT`` of U for every node (the ``.dat`` then
    holds all displacements with 7 significant digits, for comparisons).
    """
    if tie not in TIE_FORMS:
        raise FemurFeError(f"tie must be one of {', '.join(TIE_FORMS)}, got {tie!r}")
    plate = deck.plate
    if tie == "auto":
        tie = "coupling" if plate.surface is not None else "equations"
    if tie == "coupling" and plate.surface is None:
        raise FemurFeError(f"the plate's {len(plate.nodes)} tied nodes are not exactly the nodes of a set of boundary "
                           "faces, so a surface-based *COUPLING cannot express the tie; use tie='equations' "
                           "(--tie equations)")
    etype = ELEMENT_TYPES[deck.cell_type]
    n = len(deck.points)
    ref = n + 1
    rot = n + 2
    out: list[str] = ["** " + line for line in deck.header_lines()]
    out += ["*HEADING", f"femur_fe load case {deck.case_name} ({deck.bone}), load frame, mm N MPa"]
    out.append("*NODE, NSET=NALL")
    pts = deck.points
    out += [f"{i + 1}, {_NUM.format(x)}, {_NUM.format(y)}, {_NUM.format(z)}" for i, (x, y, z) in enumerate(pts.tolist())]
    rp = plate.reference_point
    out += [f"*NODE, NSET={plate.name}_REF", f"{ref}, {_NUM.format(rp[0])}, {_NUM.format(rp[1])}, {_NUM.format(rp[2])}"]
    if tie == "equations":
        out += [f"*NODE, NSET={plate.name}_ROT", f"{rot}, {_NUM.format(rp[0])}, {_NUM.format(rp[1])}, {_NUM.format(rp[2])}"]
    # elements, grouped by material so each material's element set is written with its elements
    conn = deck.cells[:, NODE_ORDER[deck.cell_type]] + 1
    members = material_members(deck)
    for name, ids in zip(deck.material_names, members):
        if len(ids) == 0:
            continue
        out.append(f"*ELEMENT, TYPE={etype}, ELSET=E{name}")
        out += [", ".join(map(str, row)) for row in np.column_stack([ids + 1, conn[ids]]).tolist()]
    for name, ids in deck.element_sets.items():
        out += _set_lines("ELSET", name, ids)
    for name, ids in deck.node_sets.items():
        if name == "NALL":
            continue
        out += _set_lines("NSET", name, ids)
    labels = FACE_LABELS[deck.cell_type]
    for name, (cells, local) in deck.surfaces.items():
        out.append(f"*SURFACE, NAME=S_{name}, TYPE=ELEMENT")
        out += [f"{c + 1}, {labels[f]}" for c, f in zip(cells.tolist(), local.tolist())]
    for k, name in enumerate(deck.material_names):
        out += [f"*MATERIAL, NAME={name}", "*ELASTIC", f"{_NUM.format(deck.material_young[k])}, {deck.poisson!r}"]
        if len(members[k]):
            out.append(f"*SOLID SECTION, ELSET=E{name}, MATERIAL={name}")
    if tie == "coupling":
        out += [f"*COUPLING, CONSTRAINT NAME={plate.name}, REF NODE={ref}, SURFACE=S_{plate.surface}",
                "*KINEMATIC", "1, 3"]
    else:
        out += _rigid_equations(deck, ref, rot)
    # ---- the step
    out += ["*STEP", "*STATIC"]
    out.append("*BOUNDARY")
    for s in deck.supports:
        comps = s.components
        if comps == (0, 1, 2):
            out.append(f"{s.name}, 1, 3")
        else:
            out += [f"{s.name}, {c + 1}, {c + 1}" for c in comps]
    for dof, val in plate.prescribed.items():
        node, d = (ref, dof + 1) if (dof < 3 or tie == "coupling") else (rot, dof - 2)
        out.append(f"{node}, {d}, {d}, {_NUM.format(val)}")
    free_loads = [(d, v) for d, v in enumerate(plate.load.tolist()) if v != 0.0]
    if free_loads:
        if any(d >= 3 for d, _ in free_loads) and tie == "equations":
            raise FemurFeError("a moment on the plate cannot be applied through the equation form; use tie='coupling'")
        out.append("*CLOAD")
        out += [f"{ref}, {d + 1}, {_NUM.format(v)}" for d, v in free_loads]
    out += ["*NODE FILE", "U, RF", "*EL FILE", "S, E"]
    # the plate's total reaction: on the reference node (coupling) and as the sum over the tied nodes
    # (CalculiX reports the force of *EQUATION constraints on the tied nodes only, 0 on the reference node)
    if tie == "coupling":
        out += [f"*NODE PRINT, NSET={plate.name}_REF, TOTALS=ONLY", "RF"]
    out += [f"*NODE PRINT, NSET={plate.name}_REF", "U", f"*NODE PRINT, NSET={plate.name}, TOTALS=ONLY", "RF"]
    if tie == "equations":
        out += [f"*NODE PRINT, NSET={plate.name}_ROT", "U"]
    for s in deck.supports:
        out += [f"*NODE PRINT, NSET={s.name}, TOTALS=ONLY", "RF"]
    if print_displacements:
        out += ["*NODE PRINT, NSET=NALL", "U"]
    out.append("*END STEP")
    path = Path(path)
    with atomic_path(path) as tmp:
        Path(tmp).write_text("\n".join(out) + "\n", encoding="ascii")
    log.info("wrote %s: %d nodes, %d %s elements, %d materials, plate tie by %s", path, n, len(deck.cells), etype,
             len(deck.material_names), tie)
    return ExportReport(path, "abaqus", n, len(deck.cells), len(deck.material_names), tie, deck.binning,
                        tuple(deck.node_sets), tuple(deck.element_sets), tuple(f"S_{s}" for s in deck.surfaces))


def export_abaqus(analysis: Any, result: Any, path: str | os.PathLike, *, n_materials: int | None = None,
                  gap_mpa: float | None = None, grouping: str = "max", tie: str = "auto",
                  print_displacements: bool = False) -> ExportReport:
    """Write the solved case (``analysis`` = :class:`femur_fe.Analysis`, ``result`` = its
    :class:`femur_fe.Result`) as an Abaqus/CalculiX ``.inp`` deck.

    ``n_materials`` / ``gap_mpa`` bin the bone moduli Bonemat-style (:func:`femur_fe.io.deck.bin_moduli`;
    ``grouping`` ``"max"`` or ``"mean"``) and report the binning error; by default every distinct modulus
    is its own material. ``tie`` and ``print_displacements``: see :func:`write_abaqus`.
    """
    deck = build_deck(analysis, result, n_materials=n_materials, gap_mpa=gap_mpa, grouping=grouping)
    return write_abaqus(deck, path, tie=tie, print_displacements=print_displacements)


__all__ = ["ELEMENT_TYPES", "FACE_LABELS", "NODE_ORDER", "PLATE_DOFS", "ExportReport", "export_abaqus", "write_abaqus"]
