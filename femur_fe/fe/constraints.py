"""Rigid-body modes, rigid multi-point constraints (:class:`RigidTie`) and under-constraint checks.

Conventions: displacement DOFs are interleaved, ``dof = 3 * node + component``;
lengths in mm, forces in N, moments in N mm, rotations in rad (small rotations).

A :class:`RigidTie` makes a set of nodes follow a rigid body with six reference DOFs
``(ux, uy, uz, rx, ry, rz)`` at a reference point ``x_ref``::

    u_i = U + theta x (x_i - x_ref)          for every tied node i

It is enforced by master-slave elimination ``u = T z + 0`` (the tied nodes' own DOFs
disappear; the tie's six reference DOFs are appended to the reduced vector ``z``), so no
penalty stiffness and no Lagrange multipliers are involved. See
:class:`femur_fe.fe.LinearSolver` for how ties are passed and prescribed.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

import numpy as np
import scipy.sparse as sp

from ..errors import LoadCaseError, SolverError

log = logging.getLogger(__name__)

TIE_DOF_NAMES = ("ux", "uy", "uz", "rx", "ry", "rz")
_AXES = ("x", "y", "z")
#: displacement components a support holds, in a load frame where the load acts along +z:
#: everything, only the component along the load, or the two perpendicular to it
FIX_COMPONENTS = {"all": (0, 1, 2), "along_load": (2,), "across_load": (0, 1)}


def rigid_body_modes(points: np.ndarray, center: np.ndarray | None = None) -> np.ndarray:
    """The six rigid-body modes of a point cloud, interleaved DOFs.

    Parameters
    ----------
    points : (n, 3) node coordinates, mm.
    center : (3,) point the rotations are taken about; default the centroid of ``points``
        (this keeps the columns well conditioned for AMG).

    Returns
    -------
    (3n, 6) float64: columns are translations along x, y, z (1 mm) and small rotations
    about x, y, z through ``center`` (1 rad, i.e. ``u = e_k x (x - center)``).
    """
    pts = np.asarray(points, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] != 3:
        raise SolverError(f"points must have shape (n, 3) in mm, got {pts.shape}")
    c = pts.mean(axis=0) if center is None else np.asarray(center, dtype=np.float64)
    r = pts - c
    n = len(pts)
    b = np.zeros((3 * n, 6))
    for k in range(3):
        b[k::3, k] = 1.0
    # e_x x r = (0, -rz, ry); e_y x r = (rz, 0, -rx); e_z x r = (-ry, rx, 0)
    b[1::3, 3], b[2::3, 3] = -r[:, 2], r[:, 1]
    b[0::3, 4], b[2::3, 4] = r[:, 2], -r[:, 0]
    b[0::3, 5], b[1::3, 5] = -r[:, 1], r[:, 0]
    return b


def _skew_rows(r: np.ndarray) -> np.ndarray:
    """(k, 3, 3) matrices S with S @ theta = theta x r for each row r."""
    s = np.zeros((len(r), 3, 3))
    s[:, 0, 1], s[:, 0, 2] = r[:, 2], -r[:, 1]
    s[:, 1, 0], s[:, 1, 2] = -r[:, 2], r[:, 0]
    s[:, 2, 0], s[:, 2, 1] = r[:, 1], -r[:, 0]
    return s


def _parse_tie_dofs(mapping, what: str, tie_name: str) -> dict[int, float]:
    """Map {"uy": -1.0, ...} (or an iterable of names, values 0) to {dof index: value}."""
    if mapping is None:
        return {}
    if isinstance(mapping, str):
        mapping = [mapping]
    if not isinstance(mapping, Mapping):
        mapping = {k: 0.0 for k in mapping}
    out = {}
    for key, val in mapping.items():
        if key not in TIE_DOF_NAMES:
            raise LoadCaseError(
                f"RigidTie {tie_name!r}: unknown reference DOF {key!r} in {what}; "
                f"use one of {', '.join(TIE_DOF_NAMES)} (u* displacement in mm, r* rotation in rad)"
            )
        v = float(val)
        if not np.isfinite(v):
            raise LoadCaseError(f"RigidTie {tie_name!r}: {what}[{key!r}] = {val!r} is not a finite number")
        out[TIE_DOF_NAMES.index(key)] = v
    return out


@dataclass(frozen=True, eq=False)
class RigidTie:
    """Rigid multi-point constraint: ``node_ids`` follow a rigid body with six reference DOFs.

    ``u_i = U + theta x (x_i - reference_point)`` (small rotations) for every node in
    ``node_ids``. The reference DOFs are ``ux, uy, uz`` (mm) and ``rx, ry, rz`` (rad). Each is
    either *prescribed* (listed in ``prescribed``, displacement control) or *free* and
    loaded by ``force`` (N) / ``moment`` (N mm) acting at the reference point.

    Parameters
    ----------
    node_ids : node ids (0-based) of the tied nodes, e.g. the surface nodes under a load cap.
        Use at least three non-collinear nodes unless the rotations are prescribed.
    reference_point : (3,) point of the rigid body whose motion the reference DOFs
        describe, mm (e.g. the centre of the femoral head).
    prescribed : ``{"uy": -1.0, "rx": 0.0, ...}`` reference DOFs held at the given values
        (or a list of names, held at 0). Which DOFs are prescribed is fixed when the
        solver is set up; their values can be changed for every solve with
        ``LinearSolver.solve(..., tie_values={name: {...}})``.
    force, moment : (3,) load applied at the reference point on the free reference DOFs
        (N, N mm); overridable per solve with ``tie_loads``. A load component on a
        prescribed DOF is an error.
    name : label used in messages, ``tie_values``/``tie_loads`` keys and results.

    Examples
    --------
    Push a cap down by 1 mm along -y with its rotations locked, support the distal end:

    >>> import numpy as np, femur_fe as ff
    >>> cap = ff.fe.RigidTie(head_nodes, reference_point=[0.0, 0.0, 400.0],
    ...                   prescribed={"ux": 0, "uy": -1.0, "uz": 0, "rx": 0, "ry": 0, "rz": 0},
    ...                   name="head_cap")                                   # doctest: +SKIP
    >>> solver = ff.fe.LinearSolver(K, fixed_dofs=distal_dofs, points=mesh.points,
    ...                          constraints=[cap])                          # doctest: +SKIP
    >>> sol = solver.solve(np.zeros(K.shape[0]))                             # doctest: +SKIP
    >>> sol.ties["head_cap"].force       # N the cap applies to the bone    # doctest: +SKIP
    >>> sol2 = solver.solve(np.zeros(K.shape[0]),
    ...                     tie_values={"head_cap": {"uy": -2.0}})           # doctest: +SKIP

    Load the same cap with a force instead (uy free, 1000 N downwards):

    >>> cap = ff.fe.RigidTie(head_nodes, [0.0, 0.0, 400.0], prescribed=["ux", "uz", "rx", "ry", "rz"],
    ...                   force=[0.0, -1000.0, 0.0], name="head_cap")        # doctest: +SKIP
    """

    node_ids: np.ndarray
    reference_point: np.ndarray
    prescribed: Mapping[str, float] | Sequence[str] | None = None
    force: np.ndarray = field(default_factory=lambda: np.zeros(3))
    moment: np.ndarray = field(default_factory=lambda: np.zeros(3))
    name: str = ""

    def __post_init__(self) -> None:
        ids = np.asarray(self.node_ids)
        if ids.size == 0:
            raise LoadCaseError(f"RigidTie {self.name!r}: node_ids is empty; select at least one node "
                                "(three non-collinear nodes to carry rotations)")
        if not np.issubdtype(ids.dtype, np.integer):
            raise LoadCaseError(f"RigidTie {self.name!r}: node_ids must be integer node ids, got dtype {ids.dtype}")
        ids = np.unique(ids.astype(np.int64).ravel())
        ref = np.asarray(self.reference_point, dtype=np.float64).ravel()
        if ref.shape != (3,) or not np.isfinite(ref).all():
            raise LoadCaseError(f"RigidTie {self.name!r}: reference_point must be 3 finite coordinates in mm, "
                                f"got {self.reference_point!r}")
        presc = _parse_tie_dofs(self.prescribed, "prescribed", self.name)
        load = np.concatenate([np.asarray(self.force, dtype=np.float64).ravel(),
                               np.asarray(self.moment, dtype=np.float64).ravel()])
        if load.shape != (6,) or not np.isfinite(load).all():
            raise LoadCaseError(f"RigidTie {self.name!r}: force and moment must be 3 finite numbers each (N, N mm)")
        object.__setattr__(self, "node_ids", ids)
        object.__setattr__(self, "reference_point", ref)
        object.__setattr__(self, "prescribed", {TIE_DOF_NAMES[k]: v for k, v in sorted(presc.items())})
        object.__setattr__(self, "force", load[:3])
        object.__setattr__(self, "moment", load[3:])
        _check_load_on_free(self.name, presc, load)

    @property
    def prescribed_mask(self) -> np.ndarray:
        """(6,) bool: which reference DOFs (ux..rz) are prescribed."""
        m = np.zeros(6, dtype=bool)
        m[[TIE_DOF_NAMES.index(k) for k in self.prescribed]] = True
        return m

    @property
    def prescribed_values(self) -> np.ndarray:
        """(6,) default prescribed values (mm, rad); 0 where free."""
        v = np.zeros(6)
        for k, val in self.prescribed.items():
            v[TIE_DOF_NAMES.index(k)] = val
        return v

    @property
    def load(self) -> np.ndarray:
        """(6,) default generalised load (Fx, Fy, Fz in N; Mx, My, Mz in N mm)."""
        return np.concatenate([self.force, self.moment])


def _check_load_on_free(name: str, presc: Mapping[int, float], load: np.ndarray) -> None:
    bad = [TIE_DOF_NAMES[k] for k in presc if load[k] != 0.0]
    if bad:
        raise LoadCaseError(
            f"RigidTie {name!r}: a load is given on prescribed reference DOF(s) {', '.join(bad)}; a DOF is "
            "either displacement-controlled or force-controlled: remove it from 'prescribed' or set its load to 0"
        )


@dataclass(frozen=True)
class TieResult:
    """Result at the reference point of one :class:`RigidTie`.

    ``force`` (N) and ``moment`` (N mm, about the reference point) are what the tie applies
    to the mesh: ``sum_i r_i`` and ``sum_i (x_i - x_ref) x r_i`` over the tied nodes with
    ``r = K u - f``, the same sign convention as :attr:`Solution.reactions`. On a free
    (force-controlled) DOF it equals the applied load; on a prescribed DOF it is the
    reaction. ``displacement`` (mm) and ``rotation`` (rad) are the reference DOFs.
    Arrays have a trailing load-case axis when several right-hand sides were solved.
    """

    name: str
    displacement: np.ndarray
    rotation: np.ndarray
    force: np.ndarray
    moment: np.ndarray

    def as_dict(self) -> dict:
        return {"name": self.name, "displacement_mm": self.displacement.tolist(),
                "rotation_rad": self.rotation.tolist(), "force_n": self.force.tolist(),
                "moment_nmm": self.moment.tolist()}


class TieReduction:
    """Master-slave map ``u = T z`` for a list of :class:`RigidTie` on a mesh of ``n`` nodes.

    ``z`` holds the DOFs of the nodes not in any tie (interleaved, in node order) followed
    by six reference DOFs per tie (ux, uy, uz, rx, ry, rz). With no ties, ``T`` is the
    identity and is never formed.
    """

    def __init__(self, n_nodes: int, points: np.ndarray | None, ties: Sequence[RigidTie]):
        self.n_nodes = int(n_nodes)
        self.ties = list(ties)
        self.names = _tie_names(self.ties)
        slave = tie_slave_index(self.n_nodes, self.ties, self.names)
        self.slave_of = slave  # (n,) tie index per node, -1 if not tied
        self.n_ties = len(self.ties)
        master_nodes = np.flatnonzero(slave < 0)
        self.master_dofs = (3 * master_nodes[:, None] + np.arange(3)).ravel()
        self.n_master = len(self.master_dofs)
        self.n_z = self.n_master + 6 * self.n_ties
        self.identity = self.n_ties == 0
        self.T: sp.csr_matrix | None = None
        if not self.identity:
            if points is None:
                raise SolverError("RigidTie constraints need node coordinates: pass points=mesh.points "
                                  "(or the Mesh) to LinearSolver")
            self.T = self._build_t(np.asarray(points, dtype=np.float64))

    def _build_t(self, points: np.ndarray) -> sp.csr_matrix:
        rows = [self.master_dofs]
        cols = [np.arange(self.n_master)]
        vals = [np.ones(self.n_master)]
        for k, tie in enumerate(self.ties):
            ids = tie.node_ids
            r = points[ids] - tie.reference_point
            base = self.n_master + 6 * k
            # translation part: u_ic += U_c
            for c in range(3):
                rows.append(3 * ids + c)
                cols.append(np.full(len(ids), base + c))
                vals.append(np.ones(len(ids)))
            # rotation part: u_i += theta x r_i = S_i theta
            s = _skew_rows(r)
            for c in range(3):
                for j in range(3):
                    rows.append(3 * ids + c)
                    cols.append(np.full(len(ids), base + 3 + j))
                    vals.append(s[:, c, j])
        t = sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                          shape=(3 * self.n_nodes, self.n_z))
        t.eliminate_zeros()
        return t

    # ------------------------------------------------------------------ maps
    def reduce_matrix(self, k: sp.csr_matrix) -> sp.csr_matrix:
        """``T^T K T``."""
        if self.identity:
            return k
        return (self.T.T @ (k @ self.T)).tocsr()

    def reduce_vector(self, f: np.ndarray) -> np.ndarray:
        """``T^T f`` for (3n,) or (3n, r)."""
        if self.identity:
            return f
        return self.T.T @ f

    def expand(self, z: np.ndarray) -> np.ndarray:
        """``u = T z`` for (n_z,) or (n_z, r)."""
        if self.identity:
            return z
        return self.T @ z

    def tie_dof(self, k: int) -> np.ndarray:
        """Indices in ``z`` of the six reference DOFs of tie ``k``."""
        return self.n_master + 6 * k + np.arange(6)

    def fixed_z(self, fixed_node_mask: np.ndarray) -> np.ndarray:
        """(n_z,) bool: prescribed entries of z (fixed node DOFs + prescribed tie DOFs)."""
        fz = np.zeros(self.n_z, dtype=bool)
        fz[: self.n_master] = fixed_node_mask[self.master_dofs]
        for k, tie in enumerate(self.ties):
            fz[self.tie_dof(k)] = tie.prescribed_mask
        return fz

    def z_index_of_node_dofs(self) -> np.ndarray:
        """(3n,) position in z of each node DOF, -1 for tied nodes."""
        pos = np.full(3 * self.n_nodes, -1, dtype=np.int64)
        pos[self.master_dofs] = np.arange(self.n_master)
        return pos

    def near_null_space(self, points: np.ndarray) -> np.ndarray:
        """(n_z, 6) rigid-body modes expressed in z (consistent with ``u = T z``).

        For tie reference DOFs the mode with translation t and rotation w about the centroid
        c gives ``U = t + w x (x_ref - c)`` and ``theta = w``.
        """
        pts = np.asarray(points, dtype=np.float64)
        c = pts.mean(axis=0)
        b_full = rigid_body_modes(pts, center=c)
        if self.identity:
            return b_full
        b = np.zeros((self.n_z, 6))
        b[: self.n_master] = b_full[self.master_dofs]
        for k, tie in enumerate(self.ties):
            ref = rigid_body_modes(tie.reference_point[None, :], center=c)  # (3, 6)
            rows = self.tie_dof(k)
            b[rows[:3]] = ref
            b[rows[3:], 3:] = np.eye(3)
        return b


def tie_slave_index(n_nodes: int, ties: Sequence[RigidTie], names: Sequence[str]) -> np.ndarray:
    """(n_nodes,) index of the tie each node follows, -1 for untied nodes.

    Raises :class:`LoadCaseError` for node ids outside the mesh and for nodes in two ties.
    """
    slave = np.full(int(n_nodes), -1, dtype=np.int64)
    for k, tie in enumerate(ties):
        ids = tie.node_ids
        if ids.max() >= n_nodes:
            raise LoadCaseError(f"RigidTie {names[k]!r}: node ids up to {ids.max()} but the mesh has "
                                f"{n_nodes} nodes (ids are 0-based)")
        clash = ids[slave[ids] >= 0]
        if clash.size:
            other = names[int(slave[clash[0]])]
            raise LoadCaseError(
                f"RigidTie {names[k]!r} and {other!r} share {clash.size} node(s), e.g. {clash[:5].tolist()}; "
                "a node can follow one rigid body only: make the node sets disjoint or merge the ties"
            )
        slave[ids] = k
    return slave


def _tie_names(ties: Sequence[RigidTie]) -> list[str]:
    names = [t.name or f"tie{k}" for k, t in enumerate(ties)]
    if len(set(names)) != len(names):
        raise LoadCaseError(f"RigidTie names must be unique, got {names}; give each tie its own name=")
    return names


def tie_overrides(names: Sequence[str], given, what: str) -> dict[int, object]:
    """Normalise a per-tie override mapping keyed by tie name or index to {index: value}."""
    if given is None:
        return {}
    if not isinstance(given, Mapping):
        if len(given) != len(names):
            raise SolverError(f"{what} must be a mapping {{tie name: ...}} or a sequence with one entry per "
                              f"tie ({len(names)}), got {len(given)} entries")
        given = dict(enumerate(given))
    out = {}
    for key, val in given.items():
        if isinstance(key, (int, np.integer)) and 0 <= int(key) < len(names):
            out[int(key)] = val
        elif key in names:
            out[names.index(key)] = val
        else:
            raise SolverError(f"{what}: unknown tie {key!r}; known ties are {names} (or indices 0..{len(names) - 1})")
    return out


# ---------------------------------------------------------------------- under-constraint check
def describe_free_modes(null: np.ndarray, center: np.ndarray, length: float, tol: float = 1e-6) -> list[str]:
    """Readable names of the rigid modes spanned by ``null`` (6, k) (translation, rotation about center).

    Axis-aligned translations and rotations contained in the span are named
    ("translation along x", "rotation about z through (x, y, z) mm"); whatever is left is
    described by its direction.
    """
    k = null.shape[1]
    if k == 0:
        return []
    q, _ = np.linalg.qr(null)
    names: list[str] = []
    found = []
    for a in range(3):
        e = np.zeros(6)
        e[a] = 1.0
        if np.linalg.norm(e - q @ (q.T @ e)) < tol:
            names.append(f"translation along {_AXES[a]}")
            found.append(e)
    rot = q[3:, :] / length  # rotation part in rad (null is in angle * length units)
    for a in range(3):
        if len(found) >= k:
            break
        target = np.zeros(3)
        target[a] = 1.0
        y, *_ = np.linalg.lstsq(rot, target, rcond=None)
        if np.linalg.norm(rot @ y - target) < tol:
            mode = q @ y
            v = mode[:3]  # translation of the centre for a unit rotation about axis a
            p = center + np.cross(target, v)  # the point of the axis closest to the centre
            p = np.where(np.abs(p) < 1e-9 * length, 0.0, p) + 0.0  # no "-1.8e-15" in messages
            names.append(f"rotation about {_AXES[a]} (axis through ({p[0]:.4g}, {p[1]:.4g}, {p[2]:.4g}) mm)")
            found.append(mode)
    if len(found) < k:
        rest = k - len(found)
        names.append(f"{rest} other rigid mode(s) (combined rotation and translation)")
    return names


def free_rigid_modes(points: np.ndarray, node_ids: np.ndarray, fixed_node_dofs: np.ndarray,
                     tie_rows: Iterable[tuple[np.ndarray, np.ndarray]] = ()) -> tuple[np.ndarray, np.ndarray, float]:
    """Rigid modes of a group of nodes left free by the constraints.

    Parameters
    ----------
    points : (n, 3) all node coordinates, mm.
    node_ids : nodes of the group.
    fixed_node_dofs : fixed global DOFs that belong to the group's nodes.
    tie_rows : for each tie attached to the group, (reference point (3,), prescribed mask (6,)).

    Returns
    -------
    null : (6, k) basis of the free modes (translation, rotation scaled by the group size),
    center : (3,) centroid used for the rotations, length : group size used for scaling.
    """
    pts = points[node_ids]
    center = pts.mean(axis=0)
    length = float(np.max(np.linalg.norm(pts - center, axis=1))) or 1.0
    rows = []
    if len(fixed_node_dofs):
        node = fixed_node_dofs // 3
        comp = fixed_node_dofs % 3
        b = rigid_body_modes(points[node], center=center)  # rows 3i+comp of the point list
        rows.append(b[3 * np.arange(len(node)) + comp])
    for ref, mask in tie_rows:
        b = np.zeros((6, 6))
        b[:3] = rigid_body_modes(np.asarray(ref)[None, :], center=center)
        b[3:, 3:] = np.eye(3)
        rows.append(b[mask])
    c = np.vstack(rows) if rows else np.zeros((0, 6))
    # parametrise rotations by (angle * length) so all six columns are lengths in mm, and
    # normalise the rows: neither changes the null space, both make the tolerance meaningful
    c = c * np.r_[1.0, 1.0, 1.0, 1.0 / length, 1.0 / length, 1.0 / length]
    norms = np.linalg.norm(c, axis=1)
    c = c[norms > 0] / norms[norms > 0, None]
    gram = c.T @ c
    w, v = np.linalg.eigh(gram)
    # a restrained mode has eigenvalue O(1) (>= ~1/n_rows for a handful of well spread
    # supports); 1e-10 relative leaves room for round-off in large meshes
    null = v[:, w <= 1e-10 * max(float(w.max()), 1.0)]
    return null, center, length
