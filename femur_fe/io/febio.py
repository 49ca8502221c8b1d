"""Write a solved load case as an FEBio 4.0 input file (``.feb``) and read its structure back.

Section names, element and facet names, node orders, boundary-condition and rigid-body types follow
FEBio's own 4.0 reader (febiosoftware/FEBio, ``FEBioXML/FEBioImport.cpp`` version 0x0400 map,
``FEBioMeshSection4.cpp``, ``FEBioMeshDomainsSection4.cpp``, ``FEBioMeshDataSection4.cpp``,
``FEBioRigidSection4.cpp``, ``FEBioOutputSection.cpp``) and the FEBio User Manual 4:

* ``Mesh``: ``Nodes``; one ``Elements`` block (``tet4``/``tet10``/``hex8``; FEBio's node orders equal
  femur_fe's: tet10 mid-edge nodes on edges 1-2, 2-3, 3-1, 1-4, 2-4, 3-4, ``FETet10::shape_fnc``) per
  part (the bone, or the bone per binned material, and each PMMA cap); ``NodeSet`` / ``ElementSet``
  as comma lists; ``Surface`` of ``tri3``/``tri6``/``quad4`` facets (outward normals).
* ``MeshDomains``: a ``SolidDomain`` per part. ``Material``: ``isotropic elastic`` bone with
  ``<E type="map">`` pointing at an ``ElementData`` map of the exact per-element moduli (or one material
  per Bonemat bin), PMMA, and a ``rigid body`` plate whose ``center_of_mass`` is femur_fe's reference point
  (FEBio rotates rigid bodies about it).
* ``Boundary``: ``zero displacement`` on the supports (x/y/z_dof in the load frame), ``rigid`` attaching the
  plate's tied nodes to the plate. ``Rigid``: ``rigid_fixed`` for the plate DOFs held at zero;
  in the step, ``rigid_displacement`` / ``rigid_rotation`` for prescribed values or ``rigid_force`` for the
  case's force, on load controller 1 (a linear ramp to 1).
* one ``STATIC`` step of one time step; ``Output``: plot file (displacement, stress, strain, reaction
  forces) and a log file with the supports' nodal reactions and the plate's rigid-body force and position.

FEBio solves large deformation (``isotropic elastic`` is St Venant-Kirchhoff), so its answer differs
from femur_fe's linear one by terms of the order of the strains; FEBio itself was not run on these
files (the CalculiX export is the one verified against femur_fe).
"""
from __future__ import annotations

import logging
import os
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import FemurFeError
from ..fe.elements import FACES
from .atomic import atomic_path
from .deck import Deck, ExportReport, build_deck, material_members

log = logging.getLogger(__name__)

FEB_VERSION = "4.0"
ELEMENT_TYPES = {"tetra": "tet4", "tetra10": "tet10", "hexahedron": "hex8"}
FACET_TYPES = {"tetra": "tri3", "tetra10": "tri6", "hexahedron": "quad4"}
#: femur_fe node index -> FEBio node position (identity: same conventions)
NODE_ORDER = {"tetra": np.arange(4), "tetra10": np.arange(10), "hexahedron": np.arange(8)}
_XYZ = ("x", "y", "z")
_ROT = ("Ru", "Rv", "Rw")
PLATE_MATERIAL = "plate"


def _num(v: float) -> str:
    return repr(float(v))


def _ids(ids: np.ndarray) -> str:
    return ",".join(map(str, (np.asarray(ids, dtype=np.int64) + 1).tolist()))


def _sub(parent: ET.Element, tag: str, text: Any = None, **attrib: Any) -> ET.Element:
    e = ET.SubElement(parent, tag, {k: str(v) for k, v in attrib.items()})
    if text is not None:
        e.text = str(text)
    return e


def write_febio(deck: Deck, path: str | os.PathLike) -> ExportReport:
    """Write ``deck`` as an FEBio 4.0 ``.feb`` file; see the module docstring."""
    path = Path(path)
    root = ET.Element("febio_spec", {"version": FEB_VERSION})
    root.append(ET.Comment(" " + " | ".join(deck.header_lines()).replace("--", "- -") + " "))
    _sub(root, "Module", type="solid")
    # ---- materials: bone (mapped E or one per bin), caps, rigid plate
    mats = _sub(root, "Material")
    mat_id = 0

    def material(name: str, young: float | None, mapped: str | None = None) -> None:
        nonlocal mat_id
        mat_id += 1
        m = _sub(mats, "material", id=mat_id, name=name, type="isotropic elastic")
        _sub(m, "density", "1")
        if mapped is not None:
            _sub(m, "E", mapped, type="map")
        else:
            _sub(m, "E", _num(young))
        _sub(m, "v", _num(deck.poisson))

    nb = deck.n_bone_cells
    members = material_members(deck)
    bone_parts = []  # (part name, material name, element ids)
    if deck.binning is None:
        material("bone", None, mapped="bone_E")
        bone_parts.append(("BONE", "bone", np.arange(nb, dtype=np.int64)))
    else:
        for name, ids in zip(deck.material_names, members):
            ids = ids[ids < nb]
            if len(ids):
                material(name, float(deck.material_young[deck.material_names.index(name)]))
                bone_parts.append((f"BONE_{name}", name, ids))
    cap_parts = []
    for part, (a, b) in deck.parts.items():
        if part == "BONE":
            continue
        e = np.unique(deck.young[a:b])
        if len(e) != 1:
            raise FemurFeError(f"cap {part} has {len(e)} different moduli; femur_fe caps have one")
        mname = part.lower()
        material(mname, float(e[0]))
        cap_parts.append((part, mname, np.arange(a, b, dtype=np.int64)))
    mat_id += 1
    plate_mat_id = mat_id
    pm = _sub(mats, "material", id=mat_id, name=PLATE_MATERIAL, type="rigid body")
    _sub(pm, "density", "1")
    _sub(pm, "center_of_mass", ",".join(_num(v) for v in deck.plate.reference_point))
    # ---- mesh
    mesh = _sub(root, "Mesh")
    nodes = _sub(mesh, "Nodes", name="all")
    for i, p in enumerate(deck.points.tolist()):
        _sub(nodes, "node", ",".join(map(repr, p)), id=i + 1)
    etype = ELEMENT_TYPES[deck.cell_type]
    conn = deck.cells[:, NODE_ORDER[deck.cell_type]] + 1
    for part, _, ids in bone_parts + cap_parts:
        block = _sub(mesh, "Elements", type=etype, name=part)
        for e, row in zip(ids.tolist(), conn[ids].tolist()):
            _sub(block, "elem", ",".join(map(str, row)), id=e + 1)
    part_names = {p for p, _, _ in bone_parts + cap_parts}
    for name, ids in deck.node_sets.items():
        if name != "NALL":
            _sub(mesh, "NodeSet", _ids(ids), name=name)
    for name, ids in deck.element_sets.items():
        if name not in part_names:  # every Elements block is already an element set of its name
            _sub(mesh, "ElementSet", _ids(ids), name=name)
    facet = FACET_TYPES[deck.cell_type]
    local = FACES[deck.cell_type]
    for name, (cells, lf) in deck.surfaces.items():
        s = _sub(mesh, "Surface", name=f"S_{name}")
        for k, (c, f) in enumerate(zip(cells.tolist(), lf.tolist())):
            _sub(s, facet, ",".join(map(str, (deck.cells[c, local[f]] + 1).tolist())), id=k + 1)
    doms = _sub(root, "MeshDomains")
    for part, mname, _ in bone_parts + cap_parts:
        _sub(doms, "SolidDomain", name=part, mat=mname)
    if deck.binning is None:
        md = _sub(root, "MeshData")
        ed = _sub(md, "ElementData", name="bone_E", elem_set="BONE")
        for k, e in enumerate(deck.young[:nb].tolist()):
            _sub(ed, "elem", repr(e), lid=k + 1)
    # ---- boundary conditions: supports and the plate attachment
    bnd = _sub(root, "Boundary")
    for s in deck.supports:
        bc = _sub(bnd, "bc", name=f"fix_{s.name}", node_set=s.name, type="zero displacement")
        for c in range(3):
            _sub(bc, f"{_XYZ[c]}_dof", int(c in s.components))
    plate = deck.plate
    bc = _sub(bnd, "bc", name="plate_nodes", node_set=plate.name, type="rigid")
    _sub(bc, "rb", PLATE_MATERIAL)
    fixed = [d for d, v in plate.prescribed.items() if v == 0.0]
    moving = [(d, v) for d, v in plate.prescribed.items() if v != 0.0]
    rigid = _sub(root, "Rigid")
    if fixed:
        rf = _sub(rigid, "rigid_bc", name="plate_held", type="rigid_fixed")
        _sub(rf, "rb", PLATE_MATERIAL)
        for d in range(6):
            _sub(rf, ("Rx_dof", "Ry_dof", "Rz_dof", "Ru_dof", "Rv_dof", "Rw_dof")[d], int(d in fixed))
    ld = _sub(root, "LoadData")
    lc = _sub(ld, "load_controller", id=1, name="ramp", type="loadcurve")
    _sub(lc, "interpolate", "LINEAR")
    pts = _sub(lc, "points")
    _sub(pts, "pt", "0,0")
    _sub(pts, "pt", "1,1")
    # ---- the step: prescribed plate motion or the case's force
    steps = _sub(root, "Step")
    step = _sub(steps, "step", id=1, name="load")
    ctl = _sub(step, "Control")
    _sub(ctl, "analysis", "STATIC")
    _sub(ctl, "time_steps", 1)
    _sub(ctl, "step_size", 1)
    srig = _sub(step, "Rigid")
    for d, v in moving:
        if d < 3:
            r = _sub(srig, "rigid_bc", name=f"plate_{_XYZ[d]}", type="rigid_displacement")
            _sub(r, "rb", PLATE_MATERIAL)
            _sub(r, "dof", _XYZ[d])
        else:
            r = _sub(srig, "rigid_bc", name=f"plate_{_ROT[d - 3]}", type="rigid_rotation")
            _sub(r, "rb", PLATE_MATERIAL)
            _sub(r, "dof", _ROT[d - 3])
        _sub(r, "value", _num(v), lc=1)
        _sub(r, "relative", 0)
    for d, v in enumerate(plate.load.tolist()):
        if v == 0.0:
            continue
        if d >= 3:
            r = _sub(srig, "rigid_load", name=f"plate_M{_XYZ[d - 3]}", type="rigid_moment")
            _sub(r, "rb", PLATE_MATERIAL)
            _sub(r, "dof", _ROT[d - 3])
        else:
            r = _sub(srig, "rigid_load", name=f"plate_F{_XYZ[d]}", type="rigid_force")
            _sub(r, "rb", PLATE_MATERIAL)
            _sub(r, "dof", ("Rx", "Ry", "Rz")[d])
        _sub(r, "value", _num(v), lc=1)
    # ---- output
    out = _sub(root, "Output")
    plot = _sub(out, "plotfile", type="febio")
    for var in ("displacement", "stress", "Lagrange strain", "reaction forces", "rigid force", "rigid position"):
        _sub(plot, "var", type=var)
    log_ = _sub(out, "logfile", file=path.with_suffix(".log").name)
    _sub(log_, "rigid_body_data", str(plate_mat_id), data="x;y;z;Fx;Fy;Fz;Mx;My;Mz", delim=",",
         file=path.with_suffix(".plate.txt").name)
    for s in deck.supports:
        _sub(log_, "node_data", data="Rx;Ry;Rz", delim=",", node_set=s.name,
             file=path.with_suffix(f".{s.name.lower()}_reactions.txt").name)
    ET.indent(root, space=" ")
    with atomic_path(path) as tmp:
        ET.ElementTree(root).write(tmp, encoding="ISO-8859-1", xml_declaration=True)
    n_mat = mat_id - 1
    log.info("wrote %s: FEBio %s, %d nodes, %d %s elements, %d deformable materials + rigid plate", path,
             FEB_VERSION, len(deck.points), len(deck.cells), etype, n_mat)
    return ExportReport(path, "febio", len(deck.points), len(deck.cells), n_mat, "rigid body", deck.binning,
                        tuple(k for k in deck.node_sets if k != "NALL"), tuple(deck.element_sets),
                        tuple(f"S_{s}" for s in deck.surfaces))


def export_febio(analysis: Any, result: Any, path: str | os.PathLike, *, n_materials: int | None = None,
                 gap_mpa: float | None = None, grouping: str = "max") -> ExportReport:
    """Write the solved case (``analysis`` = :class:`femur_fe.Analysis`, ``result`` = its
    :class:`femur_fe.Result`) as an FEBio 4.0 ``.feb`` file.

    Exact per-element moduli go into an ``ElementData`` map used by one bone material;
    ``n_materials`` / ``gap_mpa`` bin them Bonemat-style into materials instead (see
    :func:`femur_fe.io.deck.bin_moduli`) and report the binning error.
    """
    deck = build_deck(analysis, result, n_materials=n_materials, gap_mpa=gap_mpa, grouping=grouping)
    return write_febio(deck, path)


def read_febio(path: str | os.PathLike) -> dict:
    """The structure of a ``.feb`` file: version, element blocks, sets, surfaces, materials, maps, boundary
    conditions, rigid constraints, loads and outputs, as plain Python values (1-based ids as written)."""
    tree = ET.parse(path)
    root = tree.getroot()
    if root.tag != "febio_spec":
        raise FemurFeError(f"{path}: root element is <{root.tag}>, not <febio_spec>")

    def ints(text: str | None) -> list[int]:
        return [int(t) for t in (text or "").replace("\n", ",").split(",") if t.strip()]

    mesh = root.find("Mesh")
    info: dict[str, Any] = {"version": root.get("version"), "sections": [c.tag for c in root],
                            "module": root.find("Module").get("type") if root.find("Module") is not None else None}
    info["nodes"] = {int(n.get("id")): [float(v) for v in n.text.split(",")] for n in mesh.find("Nodes")}
    info["elements"] = {e.get("name"): {"type": e.get("type"),
                                        "ids": [int(x.get("id")) for x in e],
                                        "conn": [ints(x.text) for x in e]} for e in mesh.findall("Elements")}
    info["node_sets"] = {s.get("name"): ints(s.text) for s in mesh.findall("NodeSet")}
    info["element_sets"] = {s.get("name"): ints(s.text) for s in mesh.findall("ElementSet")}
    info["surfaces"] = {s.get("name"): [(f.tag, ints(f.text)) for f in s] for s in mesh.findall("Surface")}
    info["materials"] = {m.get("name"): {"id": int(m.get("id")), "type": m.get("type"),
                                         **{c.tag: (c.text, dict(c.attrib)) for c in m}}
                         for m in root.find("Material")}
    info["domains"] = {d.get("name"): d.get("mat") for d in root.find("MeshDomains")}
    md = root.find("MeshData")
    info["element_data"] = {} if md is None else {
        d.get("name"): {"elem_set": d.get("elem_set"),
                        "values": {int(e.get("lid")): float(e.text) for e in d}} for d in md.findall("ElementData")}
    info["boundary"] = [{"type": b.get("type"), "node_set": b.get("node_set"), **{c.tag: c.text for c in b}}
                        for b in root.find("Boundary")]

    def rigid_items(sec) -> list[dict]:
        return [] if sec is None else [{"kind": r.tag, "type": r.get("type"),
                                        **{c.tag: (c.text, dict(c.attrib)) for c in r}} for r in sec]

    info["rigid"] = rigid_items(root.find("Rigid"))
    info["steps"] = [{"control": {c.tag: c.text for c in s.find("Control")}, "rigid": rigid_items(s.find("Rigid"))}
                     for s in root.find("Step")]
    out = root.find("Output")
    info["plot_vars"] = [v.get("type") for v in out.find("plotfile")]
    info["log"] = [(r.tag, dict(r.attrib), r.text) for r in out.find("logfile")]
    return info


__all__ = ["ELEMENT_TYPES", "FACET_TYPES", "NODE_ORDER", "export_febio", "read_febio", "write_febio"]
