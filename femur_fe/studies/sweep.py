"""Parameter sweeps on Dask: spec, expansion, execution and a resumable results store.

A sweep is a *base case* (a load-case TOML path or preset name, a :class:`~femur_fe.case.loadcase.LoadCase` or
a plain dict) plus *parameters* addressed by their TOML key path (``material.a_mpa``,
``loading.adduction_deg``...), and three sweep-level inputs that are not part of the case:
``mesh`` (mesh files or a glob over a cohort folder), ``state`` (bone state) and
``scenario`` (a therapy scenario by name, with ``scenario.<key>`` parameters). The
parameters are expanded into tasks as a full ``grid``, ``random`` samples, a Latin
hypercube (``lhs``, :class:`scipy.stats.qmc.LatinHypercube`) or an explicit ``list``.

The method in full (equations, parameters, choices, sources): ``docs/sweeps.md``, section
``femur_fe.studies.sweep``.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import importlib
import itertools
import json
import logging
import math
import os
import signal
import socket
import sys
import threading
import time
import traceback
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from .._version import __version__
from ..analysis.prepare import prepare
from ..bone.materials import material_law_from_dict
from ..bone.model import Model
from ..bone.specimen import Specimen
from ..case.loadcase import LoadCase, load_case
from ..case.presets import resolve_case_path
from ..case.scenarios import scenarios_from_dict
from ..case.sweep import (
    BASELINE,
    DISTRIBUTION_KEYS,
    SPECIAL_KEYS,
    distribution,
    flatten_parameters,
    plain,
    sweep_table,
)
from ..errors import FemurFeError, LoadCaseError, SweepError
from ..fe.assembly import StiffnessAssembler
from ..fe.boxes import structured_mesh
from ..fe.solvers import LinearSolver
from ..io.atomic import atomic_path, write_json_atomic
from ..io.mesh_io import read_mesh
from ..io.tables import is_number, set_path
from ..io.toml_io import read_toml
from .run import case_for

log = logging.getLogger(__name__)

#: status values in the results table
STATUSES = ("ok", "failed", "timeout")
#: the default task: one FE case through the run pipeline
DEFAULT_TASK = "femur_fe.studies.sweep:pipeline_task"
#: the default task for a base in the :data:`COLUMN_CASE` layout
COLUMN_TASK = "femur_fe.studies.sweep:column_task"

_EVENT_TOPIC = "femur-fe-sweep"
_UNSET = object()


def _is_column_case(base: Any) -> bool:
    """True for a dict in the :data:`COLUMN_CASE` layout (the built-in column task's case)."""
    return (isinstance(base, Mapping) and {"geometry", "material", "density", "loading"} <= set(base)
            and isinstance(base.get("geometry"), Mapping) and "size_mm" in base["geometry"])
_MAX_ERROR_CHARS = 4000


# ============================================================================ parameters
@dataclass(frozen=True)
class Parameter:
    """One swept input.

    Attributes
    ----------
    key : TOML key path into the case (``"material.a_mpa"``) or ``"mesh"`` / ``"state"``
    kind : ``"values"`` (a finite list; ``choice``/``linspace``/``logspace``/``glob`` become
        values), ``"uniform"`` or ``"loguniform"`` (continuous, for ``random`` and ``lhs``)
    values : the finite values (kind ``"values"``)
    low, high : bounds of a continuous distribution (same unit as the key)
    """

    key: str
    kind: str = "values"
    values: tuple = ()
    low: float | None = None
    high: float | None = None

    @property
    def discrete(self) -> bool:
        return self.kind == "values"

    def from_unit(self, u: np.ndarray) -> list:
        """Map uniforms ``u`` in [0, 1) to parameter values (inverse CDF)."""
        u = np.asarray(u, dtype=float)
        if self.kind == "values":
            idx = np.minimum((u * len(self.values)).astype(int), len(self.values) - 1)
            return [self.values[i] for i in idx]
        if self.kind == "uniform":
            return [float(v) for v in self.low + u * (self.high - self.low)]
        lo, hi = math.log(self.low), math.log(self.high)
        return [float(v) for v in np.exp(lo + u * (hi - lo))]

    def to_dict(self) -> dict:
        if self.kind == "values":
            return {"values": [_jsonable(v) for v in self.values]}
        return {self.kind: [self.low, self.high]}


def _jsonable(v: Any) -> Any:
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, Path):
        return str(v)
    if _is_mesh(v):
        return f"<Mesh {v.n_points} points, {v.n_cells} {v.cell_type}, sha256 {_mesh_digest(v)[:12]}>"
    return v


def _is_mesh(v: Any) -> bool:
    return type(v).__name__ == "Mesh" and hasattr(v, "points") and hasattr(v, "cells")


def make_parameter(key: str, spec: Any, *, root: Path | None = None) -> Parameter:
    """Build a :class:`Parameter` from its spec (see :func:`femur_fe.case.sweep.distribution`)."""
    if isinstance(spec, Parameter) and isinstance(key, str) and key:
        return spec
    kind, values, low, high = distribution(key, spec, root=root)
    return Parameter(key, kind, values, low, high)


# ============================================================================ case access
def _has_loadcase_api(case: Any) -> bool:
    return hasattr(case, "with_values") and callable(case.with_values)


def _case_dict(case: Any) -> dict:
    if isinstance(case, Mapping):
        return copy.deepcopy(dict(case))
    if hasattr(case, "to_dict"):
        return case.to_dict()
    raise SweepError(f"base case of type {type(case).__name__} has no to_dict(); pass a TOML path, a dict "
                     "or a femur_fe LoadCase")


def _dict_with_values(base: Mapping, values: Mapping[str, Any]) -> dict:
    """Copy of ``base`` with dotted ``values`` set; every key path must already exist."""
    out = copy.deepcopy(dict(base))
    hint = f"; the parameter's table is not a sweep distribution; use one of {', '.join(DISTRIBUTION_KEYS)}"
    for key, value in values.items():
        out = set_path(out, key, value, SweepError, what="sweep parameter", strict=True, value_hint=hint)
    return out


def _apply(base: Any, values: Mapping[str, Any]) -> tuple[Any, dict]:
    """Apply dotted ``values`` to the base case; returns (case object, resolved dict)."""
    if not values:
        return base, _case_dict(base)
    if _has_loadcase_api(base):
        try:
            case = base.with_values(dict(values))
        except FemurFeError as exc:
            names = ", ".join(repr(k) for k in values)
            if len(values) == 1:
                raise SweepError(f"parameter {names}: {exc}") from exc
            bad = [k for k in values if not _key_ok(base, k, values[k])]
            names = ", ".join(repr(k) for k in bad) or names
            raise SweepError(f"parameter {names}: {exc}") from exc
        return case, _case_dict(case)
    d = _dict_with_values(base, values)
    return d, d


def _key_ok(base: Any, key: str, value: Any) -> bool:
    try:
        base.with_values({key: value})
        return True
    except FemurFeError:
        return False


def _load_base(base: Any, root: Path | None) -> Any:
    if base is None:
        return {}
    if isinstance(base, Mapping):
        return copy.deepcopy(dict(base))
    if _has_loadcase_api(base):
        return base
    if isinstance(base, (str, os.PathLike)):
        try:  # a TOML path (relative to the sweep file) or a preset name, as `femur-fe run` takes it
            path = resolve_case_path(base, root)
        except LoadCaseError as exc:
            raise SweepError(f"base case: {exc} (relative paths are relative to the sweep file)") from None
        return load_case(path)
    raise SweepError(f"base must be a load-case TOML path, a dict or a LoadCase, got {type(base).__name__}")


# ============================================================================ spec
@dataclass
class SweepSpec:
    """What to sweep.

    Parameters
    ----------
    base : load-case TOML path, :class:`~femur_fe.case.loadcase.LoadCase`, dict or None
    parameters : mapping key path -> spec (see :func:`make_parameter`), or Parameters
    method : ``"grid"`` (full factorial), ``"random"``, ``"lhs"`` (Latin hypercube) or
        ``"list"`` (explicit ``cases``)
    samples : number of tasks for ``random`` and ``lhs``
    seed : random seed for ``random`` and ``lhs``; drawn and recorded when None
    cases : for ``method="list"``: list of ``{key path: value}`` dicts
    task : the task function (callable or ``"package.module:function"``); it gets a
        :class:`TaskInputs` and returns a flat dict of scalar outputs. Default: the run
        pipeline (:func:`pipeline_task`; a dict base is then validated as a load case), or
        :func:`column_task` for a dict base in the :data:`COLUMN_CASE` layout
    timeout_s : per-task wall-clock limit in s (None: no limit)
    retries : extra attempts for a task that failed, timed out or crashed its worker
    name : sweep name (manifest and logs)
    root : folder that relative paths (base, mesh files, globs) are relative to
    scenarios : therapy scenarios (``[[scenario]]`` tables as in comparison files, see
        :mod:`femur_fe.therapy.scenarios`): the ``scenario`` parameter picks one by name (or
        ``"baseline"`` for none); ``scenario.<key>`` parameters set a key of the picked
        scenario (``scenario.months``) or of its operator (``scenario.percent`` when it has
        one operator, else ``scenario.operator.<i>.<key>``). One scenario and no
        ``scenario`` parameter: every task uses it.
    bone : the bone of every task (a ``[bone]`` table or :class:`~femur_fe.bone.specimen.Specimen`,
        as in run and comparison files); ``bone.<key>`` parameters change one of its keys per
        task (``bone.state``, ``bone.mesh`` with a glob over a cohort folder, ``bone.ct``...).
        Without it the pipeline task uses the bundled bone of the case's bone kind.
    """

    base: Any = None
    parameters: Any = field(default_factory=dict)
    method: str = "grid"
    samples: int | None = None
    seed: int | None = None
    cases: list | None = None
    task: Any = None
    timeout_s: float | None = None
    retries: int = 1
    name: str = "sweep"
    root: Path | None = None
    description: str = ""
    scenarios: Any = None
    bone: Any = None
    allow_import: bool = False

    def __post_init__(self) -> None:
        fields = {"name": self.name, "description": self.description, "base": self.base,
                  "parameters": self.parameters, "method": self.method, "samples": plain(self.samples),
                  "seed": plain(self.seed), "cases": self.cases, "task": self.task,
                  "timeout_s": plain(self.timeout_s), "retries": plain(self.retries), "scenario": self.scenarios,
                  "bone": self.bone, "allow_import": self.allow_import}
        checked = sweep_table({k: v for k, v in fields.items() if v is not None})
        self.samples, self.seed, self.retries = (checked.get(k) for k in ("samples", "seed", "retries"))
        self.timeout_s = checked.get("timeout_s")
        if self.root is not None:
            self.root = Path(self.root)
        if isinstance(self.bone, Specimen):
            self.bone = self.bone.to_dict()
        elif self.bone is not None and not isinstance(self.bone, Mapping):
            raise SweepError(f"bone must be a [bone] table or a Specimen, got {self.bone!r}")
        if isinstance(self.scenarios, Mapping):
            self.scenarios = [self.scenarios]
        self.scenarios = [dict(sc.to_dict() if hasattr(sc, "to_dict") else sc) for sc in (self.scenarios or [])]
        for i, sc in enumerate(self.scenarios):
            if "name" not in sc:
                raise SweepError(f"scenario #{i + 1} needs a name")
        names = [sc["name"] for sc in self.scenarios]
        if len(set(names)) != len(names) or BASELINE in names:
            raise SweepError(f"scenario names must be unique and not {BASELINE!r}, got {names}")
        if isinstance(self.parameters, Mapping):
            flat = flatten_parameters(self.parameters)
            self.parameters = tuple(make_parameter(k, v, root=self.root) for k, v in flat.items())
        else:
            self.parameters = tuple(p if isinstance(p, Parameter) else make_parameter(*p, root=self.root)
                                    for p in self.parameters)
        keys = [p.key for p in self.parameters]
        dup = sorted({k for k in keys if keys.count(k) > 1})
        if dup:
            raise SweepError(f"parameters given twice: {', '.join(dup)}")
        if self.method in ("random", "lhs"):
            if self.samples is None:
                raise SweepError(f"method {self.method!r} needs samples = a positive integer, got {self.samples!r}")
            if not self.parameters:
                raise SweepError(f"method {self.method!r} needs at least one parameter")
        elif self.samples is not None:
            raise SweepError(f"samples is only for method 'random' or 'lhs', not {self.method!r}")
        if self.method == "grid":
            cont = [p.key for p in self.parameters if not p.discrete]
            if cont:
                raise SweepError(f"parameter {cont[0]!r}: a {self.parameters[keys.index(cont[0])].kind} "
                                 "distribution cannot be gridded; give values or linspace, or use "
                                 "method = 'random' or 'lhs'")
        if self.method == "list":
            if not self.cases:
                raise SweepError("method 'list' needs cases = a non-empty list of {key path: value} tables")
            cases = []
            for i, c in enumerate(self.cases):
                if not isinstance(c, Mapping) or not c:
                    raise SweepError(f"cases[{i}] must be a non-empty table of key path = value, got {c!r}")
                cases.append(_flatten_values(c))
            self.cases = cases
        elif self.cases:
            raise SweepError(f"cases are only for method 'list', not {self.method!r}")
        if self.seed is None and self.method in ("random", "lhs"):
            self.seed = int(np.random.SeedSequence().entropy % (2**63))
            log.info("sweep %s: no seed given, drew seed %d (recorded in sweep.json and the results)",
                     self.name, self.seed)
        if self.task is not None and not (callable(self.task) or isinstance(self.task, str)):
            raise SweepError(f"task must be a callable or 'module:function', got {self.task!r}")

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_dict(cls, data: Mapping, *, root: str | os.PathLike | None = None, source: str = "") -> "SweepSpec":
        """Build a spec from the TOML layout (the keys of :func:`femur_fe.case.sweep.sweep_table`,
        documented in ``docs/schemas.md``)."""
        sweep_table(data, source)
        kw = dict(data)
        if "scenario" in kw:
            kw["scenarios"] = kw.pop("scenario")
        return cls(root=Path(root) if root is not None else None, **kw)

    @classmethod
    def from_toml(cls, path: str | os.PathLike) -> "SweepSpec":
        """Read a sweep TOML file; relative paths in it are relative to its folder."""
        path = Path(path)
        data = read_toml(path, SweepError, "sweep file (it does not exist)")
        data.setdefault("name", path.stem)
        return cls.from_dict(data, root=path.resolve().parent, source=str(path))

    # ------------------------------------------------------------------ description
    @property
    def task_name(self) -> str:
        return _task_name(self.resolved_task())

    def resolved_task(self, base: Any = _UNSET) -> Any:
        """The task: as given, else :data:`DEFAULT_TASK` (the run pipeline), or
        :data:`COLUMN_TASK` when the base is a dict in the :data:`COLUMN_CASE` layout."""
        if self.task is not None:
            return self.task
        if base is _UNSET:
            base = self.base if isinstance(self.base, Mapping) else None
        return COLUMN_TASK if _is_column_case(base) else DEFAULT_TASK

    def to_dict(self) -> dict:
        """JSON-able description (for ``sweep.json``)."""
        base = self.base
        if isinstance(base, (str, os.PathLike)):
            base_desc: Any = str(base)
        elif base is None:
            base_desc = None
        else:
            try:
                base_desc = _case_dict(base)
            except SweepError:
                base_desc = repr(base)
        return {
            "name": self.name,
            "description": self.description,
            "base": base_desc,
            "method": self.method,
            "samples": self.samples,
            "seed": self.seed,
            "parameters": {p.key: p.to_dict() for p in self.parameters},
            "cases": [{k: _jsonable(v) for k, v in c.items()} for c in (self.cases or [])] or None,
            "task": self.task_name,
            "timeout_s": self.timeout_s,
            "retries": self.retries,
            "scenarios": self.scenarios or None,
            "bone": dict(self.bone) if self.bone is not None else None,
            "root": str(self.root) if self.root else None,
        }

    # ------------------------------------------------------------------ expansion
    def points(self) -> list[dict[str, Any]]:
        """The parameter combinations, one dict per task, in spec order."""
        params = self.parameters
        if self.method == "list":
            return [dict(c) for c in self.cases]
        if not params:
            return [{}]
        if self.method == "grid":
            return [dict(zip([p.key for p in params], combo))
                    for combo in itertools.product(*[p.values for p in params])]
        n = int(self.samples)
        if self.method == "random":
            rng = np.random.default_rng(self.seed)
            u = rng.random((n, len(params)))
        else:
            from scipy.stats import qmc

            u = qmc.LatinHypercube(d=len(params), seed=np.random.default_rng(self.seed)).random(n)
        cols = [p.from_unit(u[:, j]) for j, p in enumerate(params)]
        return [{p.key: cols[j][i] for j, p in enumerate(params)} for i in range(n)]

    def expand(self) -> list["SweepTask"]:
        """Resolve every task: apply its values to the base case, hash its inputs.

        Raises :class:`SweepError` naming the parameter for a key path that the case does
        not have, a value the case rejects, or a missing mesh file.
        """
        base = _load_base(self.base, self.root)
        task = self.resolved_task(base)
        task_name = _task_name(task)
        fn = resolve_task(task, allow_import=self.allow_import)
        if isinstance(base, Mapping) and fn is pipeline_task:
            try:   # the pipeline runs load cases: validate the dict as one (errors name the key)
                base = load_case(base)
            except FemurFeError as exc:
                raise SweepError(f"base case: {exc}") from exc
        extra_identity = getattr(fn, "identity", None)
        tasks: list[SweepTask] = []
        seen: dict[str, int] = {}
        digests: dict[Any, str] = {}
        for i, point in enumerate(self.points()):
            special = {k: point[k] for k in SPECIAL_KEYS if k in point}
            sc_values = {k: v for k, v in point.items() if k.startswith("scenario.")}
            bone_values = {k[5:]: v for k, v in point.items() if k.startswith("bone.")}
            values = {k: v for k, v in point.items() if k not in SPECIAL_KEYS and k not in sc_values
                      and not k.startswith("bone.")}
            case, resolved = _apply(base, values)
            bone = self._resolve_bone(bone_values, special, digests)
            scenario = self._resolve_scenario(special.get("scenario"), sc_values)
            mesh = special.get("mesh")
            mesh_id = None
            if mesh is not None:
                mesh = self._resolve_mesh(mesh)
                mesh_id = _mesh_identity(mesh, digests)
            ident = {"task": task_name, "case": resolved, "mesh": mesh_id, "state": special.get("state")}
            if bone is not None:
                ident["bone"] = bone
            if scenario is not None:
                ident["scenario"] = scenario
            if extra_identity is not None:   # inputs the task uses beyond its own case (e.g. the base's)
                ident["extra"] = extra_identity(base, case)
            task_id = _digest(ident)
            if task_id in seen:
                log.info("sweep %s: task %d repeats task %d (same resolved inputs), kept once",
                         self.name, i, seen[task_id])
                continue
            seen[task_id] = i
            params = dict(point)
            if scenario is None:
                for k in sc_values:
                    params.pop(k)
            if mesh is not None:
                params["mesh"] = mesh if _is_mesh(mesh) else str(mesh)
            tasks.append(SweepTask(task_id=task_id, index=len(tasks), params=params, case=case,
                                   case_dict=resolved, mesh=mesh, state=special.get("state"),
                                   seed=self.seed, scenario=scenario, base_case=base,
                                   bone=None if bone is None else bone["bone"]))
        return tasks

    def _resolve_bone(self, values: Mapping[str, Any], special: Mapping[str, Any], digests: dict) -> dict | None:
        """The resolved ``[bone]`` table of a task and the content hash of its files (None: no bone)."""
        if self.bone is None and not values:
            return None
        clash = [k for k in ("mesh", "state") if k in special]
        if clash:
            raise SweepError(f"parameter {clash[0]!r} and a [bone] table: sweep bone.{clash[0]} instead")
        table = dict(self.bone or {})
        for k, v in values.items():
            table[k] = str(v) if isinstance(v, Path) else v
        try:
            specimen = Specimen.from_dict(table, base=self.root, source="sweep [bone]")
            files = specimen.files()
        except (FemurFeError, FileNotFoundError) as exc:
            where = ", ".join(f"bone.{k}" for k in values) or "[bone]"
            raise SweepError(f"{where}: {exc}") from exc
        hashes = {}
        for k, path in files.items():
            key = str(path)
            if key not in digests:
                digests[key] = file_digest(path)
            hashes[k] = digests[key]
        return {"bone": specimen.to_dict(), "files": hashes}

    def _resolve_scenario(self, name: Any, values: Mapping[str, Any]) -> dict | None:
        """The resolved scenario table of a task (None: baseline)."""
        known = [sc["name"] for sc in self.scenarios]
        if name is None:
            if len(known) > 1:
                raise SweepError(f"{len(known)} scenarios are defined ({', '.join(known)}); sweep over them with "
                                 f"parameter 'scenario' (names or {BASELINE!r})")
            name = known[0] if known else BASELINE
        if name == BASELINE:   # scenario.* values do not apply (the expansion drops them)
            if values and not known:
                raise SweepError(f"parameter {next(iter(values))!r} sets a scenario value but no scenario is "
                                 "defined; add a [[scenario]] table")
            return None
        if name not in known:
            raise SweepError(f"parameter 'scenario': no scenario named {name!r}; defined: "
                             f"{', '.join(known) or 'none'} (or {BASELINE!r})")
        table = copy.deepcopy(self.scenarios[known.index(name)])
        for key, value in values.items():
            parts = key.split(".")[1:]
            ops = table.get("operator", [])
            ops = [ops] if isinstance(ops, Mapping) else ops
            table["operator"] = ops
            if len(parts) == 1 and parts[0] not in table and len(ops) == 1:
                parts = ["operator", "0", parts[0]]      # scenario.percent -> its single operator
            node: Any = table
            for j, part in enumerate(parts):
                last = j == len(parts) - 1
                if isinstance(node, list):
                    if not part.isdigit() or int(part) >= len(node):
                        raise SweepError(f"parameter {key!r}: scenario {name!r} has {len(node)} operator(s); "
                                         f"use an index 0..{len(node) - 1}")
                    if last:
                        raise SweepError(f"parameter {key!r}: cannot replace a whole operator; set one of its keys")
                    node = node[int(part)]
                    continue
                if last:
                    if part not in node:
                        raise SweepError(f"parameter {key!r}: scenario {name!r} has no key {part!r} there (known: "
                                         f"{', '.join(sorted(node))}); set an existing key")
                    node[part] = value
                else:
                    if part not in node:
                        raise SweepError(f"parameter {key!r}: scenario {name!r} has no table {part!r}")
                    node = node[part]

        try:
            sc = scenarios_from_dict({"scenario": [table]})[0]
        except FemurFeError as exc:
            where = ", ".join(repr(k) for k in values) or "'scenario'"
            raise SweepError(f"parameter {where}: scenario {name!r}: {exc}") from exc
        return sc.to_dict()

    def _resolve_mesh(self, mesh: Any) -> Any:
        if _is_mesh(mesh):
            return mesh
        if not isinstance(mesh, (str, os.PathLike)):
            raise SweepError(f"parameter 'mesh': expected a mesh file path or a Mesh, got {mesh!r}")
        path = Path(mesh)
        if not path.is_absolute() and self.root is not None:
            path = self.root / path
        if not path.is_file():
            raise SweepError(f"parameter 'mesh': file {str(path)!r} does not exist "
                             "(relative paths are relative to the sweep file)")
        return str(path.resolve())


def _flatten_values(tree: Mapping, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(_flatten_values(v, key + "."))
        else:
            out[key] = plain(v)
    return out


@dataclass
class SweepTask:
    """One resolved task of a sweep (what the client keeps)."""

    task_id: str
    index: int
    params: dict
    case: Any
    case_dict: dict
    mesh: Any = None
    state: Any = None
    seed: int | None = None
    scenario: dict | None = None
    base_case: Any = None
    bone: dict | None = None

    def inputs(self, mesh: Any = None) -> "TaskInputs":
        return TaskInputs(task_id=self.task_id, index=self.index, params=dict(self.params), case=self.case,
                          mesh=self.mesh if mesh is None else mesh, state=self.state,
                          seed=_task_seed(self.seed, self.task_id), scenario=self.scenario,
                          base_case=self.base_case, bone=self.bone)


@dataclass
class TaskInputs:
    """What a task function receives.

    Attributes
    ----------
    task_id : stable id (hash of the resolved inputs)
    index : position in the expanded sweep
    params : the swept values of this task, by key path (``mesh`` as a path string)
    case : the resolved case (a LoadCase when the base was one, else a dict)
    mesh : mesh file path, a :class:`~femur_fe.fe.mesh.Mesh`, or None
    state : bone state or None
    seed : per-task integer seed (derived from the sweep seed and the task id) for
        stochastic tasks
    scenario : the resolved scenario table (:mod:`femur_fe.therapy.scenarios` TOML layout) or
        None for the baseline
    base_case : the sweep's base case before any parameter was applied
    bone : the resolved ``[bone]`` table of the task (:class:`~femur_fe.bone.specimen.Specimen`), or None
    """

    task_id: str
    index: int
    params: dict
    case: Any
    mesh: Any = None
    state: Any = None
    seed: int = 0
    scenario: dict | None = None
    base_case: Any = None
    bone: dict | None = None


def _task_seed(seed: int | None, task_id: str) -> int:
    h = int(task_id[:15], 16)
    return int(np.random.SeedSequence([h, seed or 0]).generate_state(1)[0])


def _canonical(v: Any) -> Any:
    if isinstance(v, Mapping):
        return {str(k): _canonical(x) for k, x in sorted(v.items(), key=lambda kv: str(kv[0]))}
    if isinstance(v, (list, tuple)):
        return [_canonical(x) for x in v]
    if isinstance(v, np.ndarray):
        return [_canonical(x) for x in v.tolist()]
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    if isinstance(v, (int, float, np.integer, np.floating)):
        f = float(v)
        return repr(f) if not math.isfinite(f) else f   # 5 and 5.0 hash alike
    if isinstance(v, Path):
        return str(v)
    if v is None or isinstance(v, str):
        return v
    if dataclasses.is_dataclass(v) and not isinstance(v, type):
        return _canonical(dataclasses.asdict(v))
    return repr(v)


def _digest(obj: Any) -> str:
    text = json.dumps(_canonical(obj), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:20]


_FILE_DIGESTS: dict[tuple, str] = {}


def file_digest(path: str | os.PathLike) -> str:
    """sha256 of a file's content (cached by path, size and mtime)."""
    st = os.stat(path)
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _FILE_DIGESTS:
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        _FILE_DIGESTS[key] = h.hexdigest()
    return _FILE_DIGESTS[key]


def _mesh_digest(mesh: Any) -> str:
    h = hashlib.sha256()
    h.update(mesh.cell_type.encode())
    h.update(np.ascontiguousarray(mesh.points).tobytes())
    h.update(np.ascontiguousarray(mesh.cells).tobytes())
    for name in sorted(mesh.node_sets):
        h.update(name.encode())
        h.update(np.ascontiguousarray(mesh.node_sets[name]).tobytes())
    for name in sorted(mesh.cell_data):
        h.update(name.encode())
        h.update(np.ascontiguousarray(mesh.cell_data[name]).tobytes())
    return h.hexdigest()


def _mesh_identity(mesh: Any, cache: dict) -> str:
    key = id(mesh) if _is_mesh(mesh) else mesh
    if key not in cache:
        cache[key] = "mesh:" + (_mesh_digest(mesh) if _is_mesh(mesh) else file_digest(mesh))
    return cache[key]


def load_sweep(path_or_spec: Any) -> SweepSpec:
    """A :class:`SweepSpec` from a TOML path, a dict (TOML layout) or a spec (returned as is)."""
    if isinstance(path_or_spec, SweepSpec):
        return path_or_spec
    if isinstance(path_or_spec, Mapping):
        return SweepSpec.from_dict(path_or_spec)
    if isinstance(path_or_spec, (str, os.PathLike)):
        return SweepSpec.from_toml(path_or_spec)
    raise SweepError(f"expected a sweep TOML path, a dict or a SweepSpec, got {type(path_or_spec).__name__}")


def expand_sweep(spec: Any) -> list[SweepTask]:
    """Expand a sweep (TOML path, dict or :class:`SweepSpec`) into resolved tasks."""
    return load_sweep(spec).expand()


# ============================================================================ task functions
def _task_name(task: Any) -> str:
    if isinstance(task, str):
        return task
    mod = getattr(task, "__module__", None) or "?"
    qual = getattr(task, "__qualname__", None) or getattr(task, "__name__", None) or repr(task)
    return f"{mod}:{qual}"


#: sweep tasks by name (``task = "pipeline"`` in a sweep file); :func:`register_task` adds one
TASKS: dict[str, Callable[..., Mapping]] = {}


def register_task(name: str | None = None) -> Callable[[Callable], Callable]:
    """Decorator: make a function ``f(TaskInputs) -> dict`` a sweep task called ``name``
    (default: its function name) in sweep files. The module defining it must be imported
    on the client and on the workers (e.g. by a Dask worker preload)."""
    def deco(fn: Callable) -> Callable:
        key = name or fn.__name__
        if not isinstance(key, str) or not key.isidentifier():
            raise SweepError(f"task name {key!r} must be an identifier")
        TASKS[key] = fn
        return fn
    return deco


def is_registered_task(task: Any) -> bool:
    """True for a callable, a registered name, or the full name of a registered function."""
    return callable(task) or (isinstance(task, str) and _registered(task) is not None)


def _registered(task: str) -> Callable | None:
    if task in TASKS:
        return TASKS[task]
    for fn in TASKS.values():
        full = _task_name(fn)
        if task in (full, full.replace(":", ".")):
            return fn
    return None


@dataclass
class ImportedTask:
    """A task imported by name on the opt-in ``allow_import``; a ``sys.exit`` inside it fails the
    task instead of ending the sweep."""

    name: str
    fn: Callable[..., Mapping]

    def __call__(self, inputs: "TaskInputs") -> Mapping:
        try:
            return self.fn(inputs)
        except SystemExit as exc:
            code = exc.code if exc.code is None or isinstance(exc.code, (int, str)) else type(exc.code).__name__
            raise SweepError(f"task {self.name!r} called sys.exit({code!r}); a task returns a dict of outputs or "
                             "raises an exception") from None

    def __getattr__(self, attr: str) -> Any:  # share_key, identity... of the wrapped function
        if attr in ("name", "fn"):
            raise AttributeError(attr)
        return getattr(self.fn, attr)


def resolve_task(task: Any, *, allow_import: bool = False) -> Callable[[TaskInputs], Mapping]:
    """A task callable from a callable, a registered name (:data:`TASKS`: ``pipeline``,
    ``column``, or their full names) or, only with ``allow_import``, any
    ``"package.module:function"``, which imports and runs that code."""
    if callable(task):
        return task
    if not isinstance(task, str) or not task:
        raise SweepError(f"task must be a callable, a registered task name or 'module:function', got {task!r}")
    fn = _registered(task)
    if fn is not None:
        return fn
    if not allow_import:
        raise SweepError(f"task {task!r} is not a registered sweep task ({', '.join(sorted(TASKS))}); a "
                         "'module:function' task imports and runs that code: allow it with allow_import = true in "
                         "the sweep file and --allow-import on the command line")
    if ":" in task:
        mod_name, _, attr = task.partition(":")
    else:
        mod_name, _, attr = task.rpartition(".")
    if not mod_name or not attr:
        raise SweepError(f"task {task!r}: write it as 'package.module:function'")
    try:
        obj: Any = importlib.import_module(mod_name)
    except ImportError as exc:
        raise SweepError(f"task {task!r}: cannot import module {mod_name!r} ({exc}); it must be importable "
                         "on the client and on every worker") from exc
    try:
        for part in attr.split("."):
            obj = getattr(obj, part)
    except AttributeError as exc:
        raise SweepError(f"task {task!r}: module {mod_name!r} has no {attr!r}") from exc
    if not callable(obj):
        raise SweepError(f"task {task!r} is not callable")
    return ImportedTask(task, obj)


def _flatten_outputs(out: Any) -> dict[str, Any]:
    if not isinstance(out, Mapping):
        raise SweepError(f"a task must return a dict of scalar outputs, got {type(out).__name__}")
    flat: dict[str, Any] = {}

    def put(key: str, v: Any) -> None:
        if isinstance(v, Mapping):
            for k, x in v.items():
                put(f"{key}.{k}", x)
        elif isinstance(v, (list, tuple, np.ndarray)):
            arr = np.asarray(v)
            if arr.ndim != 1 or arr.size > 16:
                raise SweepError(f"task output {key!r} has shape {arr.shape}; return scalars or vectors of "
                                 "at most 16 entries (write fields to files instead)")
            for i, x in enumerate(arr.tolist()):
                put(f"{key}_{i}", x)
        elif v is None or isinstance(v, (str, bool, int, float)):
            flat[key] = v
        elif isinstance(v, np.generic):
            flat[key] = v.item()
        else:
            raise SweepError(f"task output {key!r} is a {type(v).__name__}; return numbers, strings or bools")

    for k, v in out.items():
        put(str(k), v)
    return flat


# ============================================================================ worker cache
#: cache entries holding a solver set-up (factorisation or AMG hierarchy) kept per worker;
#: the engine sends the tasks of one density field to one worker in a row, so two suffice
SOLVER_CACHE_SIZE = int(os.environ.get("FEMUR_FE_SWEEP_SOLVERS", "2"))


class _LRU:
    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self.data: OrderedDict = OrderedDict()


_CACHE_LOCK = threading.RLock()
_CACHES: dict[str, _LRU] = {}
_STATS = [0, 0]   # hits, misses


def _bucket(name: str) -> _LRU:
    if name not in _CACHES:
        size = SOLVER_CACHE_SIZE if name == "solver" else int(os.environ.get("FEMUR_FE_SWEEP_CACHE", "8"))
        _CACHES[name] = _LRU(size)
    return _CACHES[name]


def worker_cache(key: Any, factory: Callable[[], Any], *, bucket: str = "default") -> Any:
    """Value for ``key`` from this process's LRU cache, built with ``factory()`` on a miss.

    Each Dask worker is a process with its own cache, so what a task function puts here
    (a mesh read from disk, a stiffness assembler, a factorised/AMG solver for one density
    field) is built once per worker and reused by later tasks with the same key. Entries
    live in named buckets with their own sizes: ``"default"`` (``FEMUR_FE_SWEEP_CACHE``
    entries, 8) and ``"solver"`` for entries holding a factorisation or AMG hierarchy
    (``FEMUR_FE_SWEEP_SOLVERS``, 2: memory heavy). Hits and misses are counted into the
    ``cache_hits`` / ``cache_misses`` columns of the results.
    """
    with _CACHE_LOCK:
        lru = _bucket(bucket)
        if key in lru.data:
            lru.data.move_to_end(key)
            _STATS[0] += 1
            return lru.data[key]
    value = factory()
    with _CACHE_LOCK:
        _STATS[1] += 1
        lru.data[key] = value
        lru.data.move_to_end(key)
        while len(lru.data) > max(lru.maxsize, 1):
            lru.data.popitem(last=False)
    return value


def clear_worker_cache() -> None:
    """Empty this process's sweep caches (counters reset too)."""
    with _CACHE_LOCK:
        _CACHES.clear()
        _STATS[0] = _STATS[1] = 0


def cache_stats() -> tuple[int, int]:
    """(hits, misses) of this process's sweep caches since start or the last clear."""
    return _STATS[0], _STATS[1]


def cached_mesh(mesh: Any):
    """The :class:`~femur_fe.fe.mesh.Mesh` for a path (read once per worker) or a Mesh (as is)."""
    if _is_mesh(mesh):
        return mesh

    st = os.stat(mesh)
    return worker_cache(("mesh", str(mesh), st.st_size, st.st_mtime_ns), lambda: read_mesh(mesh))


# ============================================================================ running one task
def _worker_identity() -> tuple[str, Any]:
    try:
        from distributed import get_worker

        w = get_worker()
        return str(w.address), w
    except (ImportError, ValueError):
        return f"local:{socket.gethostname()}:{os.getpid()}", None


def execute_task(fn: Any, inputs: TaskInputs, mesh: Any = None, record: Mapping | None = None) -> dict:
    """Run one task function and return its results (never raises for task errors).

    Used on the workers and by the serial executor. Returns ``{"row": ..., "written": bool}``
    where the row holds the parameters, the outputs, the status (``ok``/``failed``), the
    error message with the last traceback lines, the timings and where it ran. With
    ``record`` (``run``, ``attempt``, ``attempt_id``, ``sweep_seed``, ``part_dir``) the row is
    complete and, when ``part_dir`` is a folder this process can see, written there at once
    (atomically) so that a worker dying right after the task loses nothing.
    """
    if mesh is not None:
        inputs.mesh = mesh
    rec = dict(record or {})
    part_dir = rec.get("part_dir")
    if part_dir and os.path.isdir(part_dir):
        done = finished_part(part_dir, inputs.task_id, rec.get("run", 0))
        if done is not None:  # finished by a worker that died before the scheduler heard of it
            log.info("task %s: already finished in this run (%s); not run again", inputs.task_id, done.get("worker"))
            return {"row": done, "written": True}
    address, worker = _worker_identity()
    started = time.time()
    if worker is not None:
        with contextlib.suppress(Exception):
            worker.log_event(_EVENT_TOPIC, {"task_id": inputs.task_id, "event": "start", "time": started,
                                            "worker": address, "pid": os.getpid(), "host": socket.gethostname(),
                                            "attempt_id": (record or {}).get("attempt_id")})
    hits0, misses0 = cache_stats()
    t0, c0 = time.perf_counter(), time.process_time()
    meta: dict[str, Any] = {"status": "ok", "error": ""}
    outputs: dict[str, Any] = {}
    try:
        fn = resolve_task(fn)
        outputs = _flatten_outputs(fn(inputs))
    except Exception as exc:  # the row records any task failure; the sweep goes on
        tb = traceback.format_exc(limit=-4)
        meta["status"] = "failed"
        meta["error"] = f"{type(exc).__name__}: {exc}\n{tb}"[:_MAX_ERROR_CHARS]
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    hits1, misses1 = cache_stats()
    meta.update({
        "seconds": seconds,
        "cpu_s": cpu,
        "started_at": started,
        "finished_at": time.time(),
        "worker": address,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "cache_hits": hits1 - hits0,
        "cache_misses": misses1 - misses0,
    })
    row = _make_row(inputs, meta, outputs, attempts=rec.get("attempt", 1), run=rec.get("run", 0),
                    attempt_id=rec.get("attempt_id", ""), sweep_seed=rec.get("sweep_seed"))
    written = False
    if part_dir and os.path.isdir(part_dir):
        try:
            write_part(part_dir, row)
            written = True
        except Exception as exc:   # the client writes it instead
            log.warning("could not write the part of task %s in %s (%s); the client will", inputs.task_id,
                        part_dir, exc)
    return {"row": row, "written": written}


def finished_part(part_dir: str | os.PathLike, task_id: str, run: int) -> dict | None:
    """The row of ``task_id`` already written in ``part_dir`` by a successful attempt of this run
    (a task whose worker died after writing it is then not computed twice), else None."""
    import pandas as pd

    path = Path(part_dir) / f"{task_id}.parquet"
    if not path.is_file():
        return None
    try:
        row = pd.read_parquet(path).iloc[0].to_dict()
    except Exception:  # an unreadable part is recomputed and rewritten
        return None
    if row.get("status") != "ok" or int(row.get("run", -1)) != int(run):
        return None
    return row


def write_part(part_dir: str | os.PathLike, row: Mapping) -> Path:
    """Write one results row as ``part_dir/<task_id>.parquet``, atomically."""
    import pandas as pd

    path = Path(part_dir) / f"{row['task_id']}.parquet"
    with atomic_path(path) as tmp:
        pd.DataFrame([dict(row)]).to_parquet(tmp, index=False)
    return path


# ============================================================================ built-in FE task
#: base case of :func:`column_task`: a tet4 box column, density graded along z, clamped at
#: z = min, displacement-controlled at z = max along a direction tilted ``angle_deg`` from -z
COLUMN_CASE: dict[str, Any] = {
    "geometry": {"size_mm": [10.0, 10.0, 30.0], "divisions": [4, 4, 12]},
    "material": {"law": "power", "a_mpa": 10500.0, "b": 2.29, "density_type": "ash", "e_min_mpa": 0.1,
                 "poisson": 0.3},
    "density": {"bottom_g_cm3": 0.3, "top_g_cm3": 0.9, "scale": 1.0},
    "loading": {"angle_deg": 0.0, "azimuth_deg": 0.0, "displacement_mm": 0.05},
    "solver": {"method": "direct"},
}


def _box_mesh(size_mm: Sequence[float], divisions: Sequence[int]):
    """tet4 mesh of the box [0, size_mm] with ``divisions`` cells per axis (6 tets per cell)."""
    size = np.asarray(size_mm, dtype=float)
    div = np.asarray(divisions)
    if size.shape != (3,) or div.shape != (3,) or size.min() <= 0 or div.min() < 1:
        raise SweepError(f"geometry needs size_mm = 3 positive lengths (mm) and divisions = 3 positive counts, "
                         f"got {list(size_mm)!r}, {list(divisions)!r}")
    mesh, _ = structured_mesh(tuple(int(d) for d in div), mapping=lambda p: p * size)
    return mesh


def _column_parts(inputs: TaskInputs) -> tuple[dict, Any, Any]:
    case = inputs.case
    if not isinstance(case, Mapping):
        raise SweepError("column_task takes a dict base case like femur_fe.studies.sweep.COLUMN_CASE, "
                         f"got {type(case).__name__}")
    if inputs.mesh is not None:
        mesh = cached_mesh(inputs.mesh)
        mesh_key = ("mesh", _mesh_digest(mesh) if _is_mesh(inputs.mesh) else str(inputs.mesh))
    else:
        g = case["geometry"]
        mesh_key = ("box", tuple(map(float, g["size_mm"])), tuple(map(int, g["divisions"])))
        mesh = worker_cache(mesh_key, lambda: _box_mesh(g["size_mm"], g["divisions"]))
    return case, mesh, mesh_key


def _column_share(case: Mapping, mesh_key: Any, state: Any) -> str:
    return _digest({"mesh": repr(mesh_key), "state": state,
                    "case": {k: v for k, v in case.items() if k != "loading"}})


@register_task("column")
def column_task(inputs: TaskInputs) -> dict[str, Any]:
    """A real linear FE case on a column (the built-in test and demo task).

    The mesh is ``inputs.mesh`` (file or Mesh) or a tet4 box from ``geometry``; element
    density (g/cm^3) is ``mesh.cell_data["density"]`` when present, else a linear ramp
    from ``density.bottom_g_cm3`` at z = min to ``density.top_g_cm3`` at z = max, times
    ``density.scale``; Young's modulus from ``material`` (:func:`femur_fe.bone.materials.material_law_from_dict`).
    Nodes at z = min are clamped; nodes at z = max move by ``loading.displacement_mm``
    (mm) along d = (sin a cos p, sin a sin p, -cos a), a = ``angle_deg``, p = ``azimuth_deg``.

    Tasks that differ only in ``loading`` share the stiffness matrix and the solver set-up
    (factorisation or AMG hierarchy) through :func:`worker_cache`; :func:`column_task.share_key`
    tells the engine so that it sends them to the same worker.

    Returns stiffness_N_per_mm (reaction at the top along d over the imposed
    displacement), force_N, reaction_bottom_N (x, y, z), n_dofs, solver, iterations,
    residual, setup_s and solve_s.
    """
    case, mesh, mesh_key = _column_parts(inputs)
    mat = dict(case["material"])
    dens = case["density"]
    load = case["loading"]
    method = case.get("solver", {}).get("method", "direct")
    z = mesh.points[:, 2]
    zmin, zmax = float(z.min()), float(z.max())
    tol = 1e-6 * max(zmax - zmin, 1.0)
    bottom = np.flatnonzero(z <= zmin + tol)
    top = np.flatnonzero(z >= zmax - tol)
    fixed = np.concatenate([3 * bottom[:, None] + np.arange(3), 3 * top[:, None] + np.arange(3)]).ravel()

    def build_solver():
        law = material_law_from_dict(mat)
        if "density" in mesh.cell_data:
            rho = np.asarray(mesh.cell_data["density"], dtype=float)
        else:
            zc = mesh.cell_centroids()[:, 2]
            t = (zc - zmin) / max(zmax - zmin, 1e-300)
            rho = float(dens["bottom_g_cm3"]) + (float(dens["top_g_cm3"]) - float(dens["bottom_g_cm3"])) * t
        young = law.young(float(dens.get("scale", 1.0)) * rho)
        asm = worker_cache(("assembler", repr(mesh_key), float(law.poisson)),
                           lambda: StiffnessAssembler(mesh, law.poisson))
        return LinearSolver(asm.assemble(young), fixed, points=mesh, method=method)

    solver = worker_cache(("column-solver", _column_share(case, mesh_key, inputs.state)), build_solver,
                          bucket="solver")
    a, p = math.radians(float(load["angle_deg"])), math.radians(float(load.get("azimuth_deg", 0.0)))
    d = np.array([math.sin(a) * math.cos(p), math.sin(a) * math.sin(p), -math.cos(a)])
    delta = float(load["displacement_mm"])
    g = np.zeros(mesh.n_dofs)
    g[(3 * top[:, None] + np.arange(3)).ravel()] = np.tile(delta * d, len(top))
    sol = solver.solve(np.zeros(mesh.n_dofs), fixed_values=g)
    force = float(sol.reaction_force(top) @ d)
    return {
        "stiffness_N_per_mm": force / delta,
        "force_N": force,
        "reaction_bottom_N": sol.reaction_force(bottom),
        "n_dofs": int(mesh.n_dofs),
        "solver": sol.report.method,
        "iterations": int(sol.report.iterations),
        "residual": float(sol.report.residual),
        "setup_s": float(solver.setup_seconds),
        "solve_s": float(sol.report.solve_seconds),
    }


def _column_share_key(inputs: TaskInputs) -> str:
    case, _mesh, mesh_key = _column_parts(inputs)
    return _column_share(case, mesh_key, inputs.state)


column_task.share_key = _column_share_key  # type: ignore[attr-defined]


# ============================================================================ pipeline task
def _angle_keys(case: Any) -> dict[str, float]:
    return {k: float(v) for k, v in dict(case.loading.angles).items() if is_number(v)}


def _support_case(base: Any, case: Any) -> Any:
    """The case whose direction places the supports, caps and regions of a task.

    When the task keeps the base's load-direction kind (e.g. ``sideways_fall``) and only its
    angles differ, the supports are those of the base angles and the task's angles only turn
    the load (:meth:`femur_fe.analysis.prepare.Analysis.solve_directions`: "the cap does not move
    with the load, as in an experiment"), so all directions on one density field share the
    stiffness matrix and its factorisation. Otherwise the task's own case is used.
    """
    if base is None or not hasattr(base, "loading") or base.loading.direction != case.loading.direction:
        return case
    own, ref = _angle_keys(case), _angle_keys(base)
    if own == ref or set(own) != set(ref):
        return case
    return case.with_values({f"loading.{k}": v for k, v in ref.items()})


def _pipeline_identity(base: Any, case: Any) -> Any:
    """What a pipeline task depends on beyond its own case: the angles that place its supports."""
    if not hasattr(case, "loading"):
        return None
    return _angle_keys(_support_case(base, case))


def _task_specimen(inputs: TaskInputs, case: Any) -> Specimen | None:
    """The specimen of a pipeline task: its [bone] table, else the bundled bone of the case's bone kind
    (in ``state``); None for a mesh given as a sweep parameter (element densities in its cell data)."""
    if inputs.bone is not None:
        return Specimen.from_dict(inputs.bone, source="sweep [bone]")
    if inputs.mesh is None:
        return Specimen(bundled=case.bone, state=inputs.state or "osteoporotic")
    return None


def _pipeline_model(case: Any, inputs: TaskInputs, specimen: Specimen | None):
    """The bone model of a task (cached per worker)."""
    material = case.to_dict()["material"]
    if specimen is not None:
        key = ("model", _digest(specimen.to_dict()), _digest(material))
        return key, worker_cache(key, lambda: specimen.model(case.material))
    mesh_obj = inputs.mesh
    mesh_key = _mesh_digest(mesh_obj) if _is_mesh(mesh_obj) else str(mesh_obj)
    key = ("model", mesh_key, inputs.state, _digest(material))

    def build():
        mesh = cached_mesh(mesh_obj)
        name = f"density_{inputs.state}" if inputs.state else "density"
        if name not in mesh.cell_data:
            have = sorted(k for k in mesh.cell_data if k.startswith("density"))
            raise SweepError(f"mesh {mesh_key if not _is_mesh(mesh_obj) else '<Mesh>'} has no cell data {name!r} "
                             f"(has: {', '.join(have) or 'none'}); store the element densities (g/cm^3 of the "
                             f"material law's density type) as cell data {name!r}, or describe the bone in a "
                             "[bone] table (bone.mesh with bone.ct or [bone.density])")
        return Model.from_density(mesh, np.asarray(mesh.cell_data[name], dtype=float), case.material.build())

    return key, worker_cache(key, build)


@register_task("pipeline")
def pipeline_task(inputs: TaskInputs) -> dict[str, Any]:
    """One load case through the run pipeline (:mod:`femur_fe.analysis.prepare`): the default task.

    Bone: ``inputs.mesh`` None -> the bundled bone of ``case.bone`` in ``inputs.state``
    (mesh + synthetic QCT + its calibration); a mesh file or Mesh -> element densities from
    its cell data ``density_<state>`` (or ``density`` without a state). The scenario, if
    any, changes the densities (:meth:`femur_fe.therapy.scenarios.Scenario.apply`) before the solve.
    Load directions that differ from the base case only by their angles share the prepared
    analysis and the solver set-up of their density field (see :func:`_support_case`).

    Returns stiffness_N_per_mm, load_force_N, strength_linear_N (the case's failure
    criterion), criterion, bone_mass_g, integral_vbmd_mg_cm3, added_mass_g, load_direction
    (x, y, z), n_dofs and the solver's method, iterations and seconds.
    """


    case = inputs.case
    if not isinstance(case, LoadCase):
        raise SweepError("pipeline_task needs a load case as base (a TOML path or a LoadCase); for a plain dict "
                         "use another task, e.g. femur_fe.studies.sweep:column_task")
    specimen = _task_specimen(inputs, case)
    case = case_for(case, specimen)
    support = case_for(_support_case(inputs.base_case if inputs.base_case is not None else case, case), specimen)
    model_key, model = _pipeline_model(case, inputs, specimen)
    an_key = ("analysis", model_key, _digest(support.to_dict()))
    an = worker_cache(an_key, lambda: prepare(support, model), bucket="solver")
    outcome = None
    if inputs.scenario is not None:
        sc = scenarios_from_dict({"scenario": [inputs.scenario]})[0]
        sc_key = ("analysis-scenario", an_key, _digest(inputs.scenario))

        def build_scenario():
            oc = sc.apply(model.density, model.mesh, an.frame, volumes_mm3=model.volumes_mm3)
            m2 = model.with_density(oc.density)
            # same regions, caps, assembler (pattern); its own solver set-up for the new moduli
            return an.with_model(m2), oc

        an, outcome = worker_cache(sc_key, build_scenario, bucket="solver")
    angles = _angle_keys(case)
    if support is case or not angles:
        res = an.solve(strength=False)
    else:
        res = an.solve_directions([angles], strength=False)[0]
    res.evaluate_strength()
    m = res.model
    rep = res.solver
    return {
        "stiffness_N_per_mm": res.stiffness_N_per_mm,
        "load_force_N": res.load_force_N,
        "strength_linear_N": float(res.linear.strength_N),
        "criterion": res.linear.criterion,
        "bone_mass_g": m.bone_mass_g(),
        "integral_vbmd_mg_cm3": m.integral_vbmd_mg_cm3(),
        "added_mass_g": outcome.added_mass_g if outcome is not None else 0.0,
        "scenario_name": inputs.scenario["name"] if inputs.scenario else BASELINE,
        "load_direction": np.asarray(res.load_direction, dtype=float),
        "n_dofs": int(rep.n_dofs),
        "solver": rep.method,
        "iterations": int(rep.iterations),
        "setup_s": float(rep.setup_seconds),
        "solve_s": float(rep.solve_seconds),
        "warnings": "; ".join(str(w) for w in res.warnings),
    }


def _pipeline_share_key(inputs: TaskInputs) -> str:
    case = inputs.case
    support = _support_case(inputs.base_case if inputs.base_case is not None else case, case)
    mesh = inputs.mesh
    return _digest({"mesh": _mesh_digest(mesh) if _is_mesh(mesh) else mesh, "state": inputs.state,
                    "bone": inputs.bone, "material": case.to_dict()["material"], "support": support.to_dict(),
                    "scenario": inputs.scenario})


pipeline_task.share_key = _pipeline_share_key  # type: ignore[attr-defined]
pipeline_task.identity = _pipeline_identity  # type: ignore[attr-defined]


# ============================================================================ results store
_META_COLUMNS = ("task_id", "index", "status", "error", "attempts", "run", "attempt_id", "seconds", "cpu_s",
                 "started_at", "finished_at", "worker", "host", "pid", "cache_hits", "cache_misses",
                 "sweep_seed", "task_seed")


class ResultStore:
    """The results folder of one sweep.

    Layout: ``sweep.json`` (manifest: spec, seed, task ids and inputs, runs),
    ``parts/<task_id>.parquet`` (one row per finished task, written atomically when the
    task finishes), ``results.parquet`` and ``results.csv`` (all parts of the current
    tasks, consolidated atomically at the end of every run).
    """

    def __init__(self, out: str | os.PathLike) -> None:
        self.root = Path(out)
        self.parts = self.root / "parts"
        self.parts.mkdir(parents=True, exist_ok=True)
        for stale in self.parts.glob(".*.parquet"):   # temp files of a killed writer
            with contextlib.suppress(OSError):
                stale.unlink()

    @property
    def manifest_path(self) -> Path:
        return self.root / "sweep.json"

    def read_manifest(self) -> dict | None:
        if not self.manifest_path.exists():
            return None
        try:
            return json.loads(self.manifest_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            log.warning("%s unreadable (%s); writing a new manifest", self.manifest_path, exc)
            return None

    def write_manifest(self, data: dict) -> None:
        write_json_atomic(self.manifest_path, data)

    def part_path(self, task_id: str) -> Path:
        return self.parts / f"{task_id}.parquet"

    def write_part(self, row: Mapping) -> Path:
        return write_part(self.parts, row)

    def part_attempt(self, task_id: str) -> tuple[str, str] | None:
        """(attempt_id, status) of the part of ``task_id``, or None."""
        df = self.read_part(task_id)
        if df is None or not len(df) or "attempt_id" not in df.columns:
            return None
        return str(df["attempt_id"].iloc[0]), str(df["status"].iloc[0])

    def read_part(self, task_id: str):
        import pandas as pd

        path = self.part_path(task_id)
        try:
            return pd.read_parquet(path)
        except FileNotFoundError:
            return None
        except Exception as exc:  # a part that pyarrow cannot read is treated as not done
            log.warning("part %s unreadable (%s: %s); the task will run again", path, type(exc).__name__, exc)
            return None

    def statuses(self) -> dict[str, str]:
        """task_id -> status of every readable part."""
        out = {}
        for p in self.parts.glob("*.parquet"):
            if p.name.startswith("."):
                continue
            df = self.read_part(p.stem)
            if df is not None and len(df):
                out[p.stem] = str(df["status"].iloc[0])
        return out

    def consolidate(self, tasks: Sequence[SweepTask]):
        """Gather the parts of ``tasks`` into one table; write results.parquet and .csv atomically."""
        import pandas as pd

        records = []
        for t in tasks:
            df = self.read_part(t.task_id)
            if df is not None and len(df):
                rec = df.iloc[0].to_dict()
                rec["index"] = t.index   # position in the current spec (it may have been reordered)
                records.append(rec)
        if records:
            table = pd.DataFrame.from_records(records)
            table = table.sort_values("index", kind="stable").reset_index(drop=True)
        else:
            table = pd.DataFrame(columns=list(_META_COLUMNS))
        table = _order_columns(table, tasks)
        with atomic_path(self.root / "results.parquet") as tmp:
            table.to_parquet(tmp, index=False)
        with atomic_path(self.root / "results.csv") as tmp:
            table.to_csv(tmp, index=False)
        return table


def _order_columns(df, tasks: Sequence[SweepTask]):
    params: list[str] = []
    for t in tasks:
        for k in t.params:
            if k not in params:
                params.append(k)
    first = ["task_id", "index", "status"]
    meta = [c for c in _META_COLUMNS if c not in first]
    p = [c for c in params if c in df.columns]
    rest = [c for c in df.columns if c not in first and c not in meta and c not in p]
    cols = [c for c in first if c in df.columns] + p + rest + [c for c in meta if c in df.columns]
    return df[cols]


def _make_row(task: Any, meta: Mapping, outputs: Mapping, *, attempts: int, run: int, attempt_id: str,
              sweep_seed: int | None) -> dict:
    """One results row: ids, parameters, status and timings, outputs."""
    row: dict[str, Any] = {"task_id": task.task_id, "index": task.index}
    for k, v in task.params.items():
        row[k] = v if isinstance(v, (str, bool, int, float, type(None))) else str(_jsonable(v))
    row.update(meta)
    for k, v in outputs.items():
        row[k if k not in row else f"out.{k}"] = v
    row.update({"attempts": attempts, "run": run, "attempt_id": attempt_id, "sweep_seed": sweep_seed,
                "task_seed": _task_seed(sweep_seed, task.task_id)})
    return row


def _failure_meta(status: str, message: str, **extra) -> dict:
    meta = {"status": status, "error": message[:_MAX_ERROR_CHARS], "seconds": float("nan"),
            "started_at": float("nan"), "finished_at": time.time(), "worker": "", "host": "", "pid": -1,
            "cache_hits": 0, "cache_misses": 0}
    meta.update(extra)
    return meta


# ============================================================================ progress
class _Progress:
    """Progress on stderr: one self-overwriting line on a terminal, else a line per ~10 %."""

    def __init__(self, total: int, done: int, enabled: bool, name: str) -> None:
        self.total, self.done, self.enabled, self.name = total, done, enabled, name
        self.failed = 0
        self.t0 = time.perf_counter()
        self._last = 0.0
        self._last_done = -1
        self.tty = enabled and sys.stderr.isatty()
        self.step = max(1, math.ceil(total / 10))

    def update(self, status: str) -> None:
        self.done += 1
        if status != "ok":
            self.failed += 1
        self.show()

    def _line(self) -> str:
        width = 24
        frac = self.done / self.total if self.total else 1.0
        bar = "#" * int(round(width * frac)) + "-" * (width - int(round(width * frac)))
        return (f"{self.name} [{bar}] {self.done}/{self.total} tasks, {self.failed} failed, "
                f"{time.perf_counter() - self.t0:6.1f} s")

    def show(self, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.perf_counter()
        if self.tty:
            if force or now - self._last >= 0.2 or self.done == self.total:
                sys.stderr.write("\r" + self._line())
                sys.stderr.flush()
                self._last = now
            return
        changed = self.done != self._last_done
        if force or (changed and (self.done % self.step == 0 or self.done == self.total or now - self._last > 30)):
            sys.stderr.write(self._line() + "\n")
            sys.stderr.flush()
            self._last, self._last_done = now, self.done

    def close(self) -> None:
        if not self.enabled:
            return
        if self.tty:
            sys.stderr.write("\r" + self._line() + "\n")
        elif self._last_done != self.done:
            sys.stderr.write(self._line() + "\n")
        sys.stderr.flush()


# ============================================================================ execution
def _group_assignment(groups: dict[Any, list[SweepTask]], workers: list[str]) -> dict[str, str]:
    """task_id -> worker address, keeping tasks that share a stiffness matrix together.

    The groups are laid end to end and cut into ``len(workers)`` consecutive runs of equal
    length (to one task), one run per worker: every worker gets the same number of tasks,
    and at most ``len(groups) + len(workers) - 1`` (group, worker) pairs exist, i.e. that
    many solver set-ups in the whole sweep.
    """
    if not workers:
        return {}
    tasks = [t for g in groups.values() for t in g]
    n, w = len(tasks), len(workers)
    out = {}
    for i, t in enumerate(tasks):
        out[t.task_id] = workers[min(i * w // n, w - 1)]
    return out


def _share_key(fn: Callable, task: SweepTask) -> Any:
    key_fn = getattr(fn, "share_key", None)
    if key_fn is None:
        return task.task_id
    try:
        return key_fn(task.inputs())
    except Exception as exc:
        log.debug("share_key failed for task %s (%s); not grouped", task.task_id, exc)
        return task.task_id


def _connect(scheduler: str, connect_timeout_s: float):
    from distributed import Client

    try:
        return Client(scheduler, timeout=connect_timeout_s, set_as_default=False)
    except (OSError, TimeoutError) as exc:
        raise SweepError(
            f"cannot reach the Dask scheduler at {scheduler} within {connect_timeout_s:g} s "
            f"({type(exc).__name__}); start one (`dask scheduler` and `dask worker {scheduler}`), fix the "
            "address, or omit --scheduler to use a local cluster"
        ) from exc


@contextlib.contextmanager
def _client(scheduler: str | None, n_workers: int | None, connect_timeout_s: float):
    import dask

    if scheduler is not None:
        client = _connect(scheduler, connect_timeout_s)
        try:
            yield client, None
        finally:
            client.close()
        return
    from distributed import Client, LocalCluster

    n = n_workers or os.cpu_count() or 1
    # allowed-failures 0: a task that kills its worker fails at once (the engine retries it);
    # no work stealing: tasks stay on the worker holding their density field's solver set-up
    # (a stolen task would pay a whole factorisation for one cheap solve); a dead worker's
    # tasks still move (the restrictions are loose)
    with dask.config.set({"distributed.scheduler.allowed-failures": 0,
                          "distributed.scheduler.work-stealing": False,
                          "distributed.worker.daemon": False}):
        cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=":0",
                               silence_logs=logging.ERROR)
    client = Client(cluster, set_as_default=False)
    try:
        yield client, cluster
    finally:
        with contextlib.suppress(Exception):
            client.close()
        with contextlib.suppress(Exception):
            cluster.close()


def dashboard_address(client) -> str:
    """The Dask dashboard URL, with a note when bokeh (needed to render it) is missing."""
    link = client.dashboard_link
    try:
        import bokeh  # noqa: F401
    except ImportError:
        return f"{link} (install bokeh>=3.1 to view the Dask dashboard)"
    return link


def run_sweep(spec: Any, out: str | os.PathLike, *, scheduler: str | None = None, n_workers: int | None = None,
              progress: bool | None = None, timeout_s: float | None = None, retries: int | None = None,
              connect_timeout_s: float = 10.0, on_dashboard: Callable[[str], None] | None = None):
    """Run (or resume) a sweep; returns the results table (one row per task).

    Parameters
    ----------
    spec : :class:`SweepSpec`, a dict in the TOML layout, or a sweep TOML path
    out : results folder (created); running again into the same folder resumes
    scheduler : None for a local cluster, ``"tcp://host:port"`` for a running Dask
        scheduler, or ``"serial"`` to run the tasks one after the other in this process
        (no per-task timeout there)
    n_workers : local-cluster worker processes (default: one per core); each has one
        thread, so tasks never compete for a core
    progress : show a progress line on stderr (default: when stderr is a terminal)
    timeout_s, retries : override the spec's per-task time limit (s) and extra attempts
    connect_timeout_s : how long to try to reach ``scheduler`` before a SweepError
    on_dashboard : called with the dashboard address once the cluster is up

    Returns
    -------
    pandas.DataFrame with the parameter columns, the task outputs and ``task_id``,
    ``index``, ``status`` ("ok", "failed", "timeout"), ``error``, ``attempts``, ``run``,
    ``seconds`` (task wall time on the worker), ``cpu_s`` (CPU time of the worker process
    during the task, all its threads), ``started_at``/``finished_at`` (epoch s),
    ``worker``, ``host``, ``pid``, ``cache_hits``, ``cache_misses``, ``sweep_seed``,
    ``task_seed``. The same table is in ``out/results.parquet`` and ``out/results.csv``.
    """
    spec = load_sweep(spec)
    if timeout_s is not None or retries is not None:
        spec = dataclasses.replace(spec, parameters=spec.parameters,
                                   timeout_s=spec.timeout_s if timeout_s is None else timeout_s,
                                   retries=spec.retries if retries is None else retries)
    if n_workers is not None and (isinstance(n_workers, bool) or not isinstance(n_workers, int) or n_workers < 1):
        raise SweepError(f"n_workers must be a positive integer or None, got {n_workers!r}")
    task_ref = spec.resolved_task(_load_base(spec.base, spec.root))
    fn = resolve_task(task_ref, allow_import=spec.allow_import)
    if isinstance(fn, ImportedTask):
        task_ref = fn  # the workers get the imported task itself, never a name to import
    tasks = spec.expand()
    store = ResultStore(out)
    old = store.read_manifest() or {}
    run = int(len(old.get("runs", [])) + 1)
    statuses = store.statuses()
    todo = [t for t in tasks if statuses.get(t.task_id) != "ok"]
    n_done = len(tasks) - len(todo)
    stale = len(set(statuses) - {t.task_id for t in tasks})
    log.info("sweep %s: %d tasks, %d already finished, %d to run%s", spec.name, len(tasks), n_done, len(todo),
             f" ({stale} parts of other tasks kept in parts/)" if stale else "")
    run_info = {"run": run, "started_at": time.time(), "scheduler": scheduler or "local",
                "n_to_run": len(todo), "n_already_done": n_done}
    manifest = {
        "femur_fe_version": _version(),
        "spec": spec.to_dict(),
        "seed": spec.seed,
        "n_tasks": len(tasks),
        "tasks": [{"task_id": t.task_id, "index": t.index, "params": {k: _jsonable(v) for k, v in t.params.items()}}
                  for t in tasks],
        "runs": list(old.get("runs", [])) + [run_info],
    }
    store.write_manifest(manifest)
    show = sys.stderr.isatty() if progress is None else bool(progress)
    bar = _Progress(len(tasks), n_done, show, spec.name)
    try:
        if todo:
            if scheduler == "serial":
                _run_serial(fn, spec, todo, store, run, bar)
            else:
                _run_dask(fn, spec, todo, store, run, bar, scheduler, n_workers, connect_timeout_s, on_dashboard,
                          task_ref)
    finally:
        bar.close()
        table = store.consolidate(tasks)
        counts = table["status"].value_counts().to_dict() if len(table) else {}
        run_info.update({"finished_at": time.time(), "status_counts": {str(k): int(v) for k, v in counts.items()}})
        store.write_manifest(manifest)
    log.info("sweep %s: %s -> %s", spec.name, counts, store.root / "results.parquet")
    return table


def _version() -> str:
    return __version__


def _run_serial(fn, spec: SweepSpec, todo: list[SweepTask], store: ResultStore, run: int, bar: _Progress) -> None:
    if spec.timeout_s is not None:
        log.warning("sweep %s: scheduler='serial' cannot enforce timeout_s=%g s", spec.name, spec.timeout_s)
    groups: dict[Any, list[SweepTask]] = {}
    for t in todo:
        groups.setdefault(_share_key(fn, t), []).append(t)
    token = uuid.uuid4().hex[:8]
    for group in groups.values():
        for t in group:
            for attempt in range(1, spec.retries + 2):
                record = {"run": run, "attempt": attempt, "attempt_id": f"{run}-{token}-{attempt}",
                          "sweep_seed": spec.seed, "part_dir": str(store.parts)}
                res = execute_task(fn, t.inputs(), record=record)
                status = res["row"]["status"]
                if status == "ok" or attempt == spec.retries + 1:
                    break
                log.warning("task %s attempt %d failed: %s", t.task_id, attempt, res["row"]["error"].splitlines()[0])
            if not res["written"]:
                store.write_part(res["row"])
            bar.update(status)


def _run_dask(fn, spec: SweepSpec, todo: list[SweepTask], store: ResultStore, run: int, bar: _Progress,
              scheduler: str | None, n_workers: int | None, connect_timeout_s: float,
              on_dashboard: Callable[[str], None] | None, task_ref: Any = None) -> None:
    from distributed import wait

    with _client(scheduler, n_workers, connect_timeout_s) as (client, _cluster):
        dash = dashboard_address(client)
        log.info("sweep %s: Dask dashboard at %s", spec.name, dash)
        if on_dashboard is not None:
            on_dashboard(dash)
        workers = sorted(client.scheduler_info()["workers"])
        if not workers:
            with contextlib.suppress(Exception):
                client.wait_for_workers(1, timeout=connect_timeout_s)
            workers = sorted(client.scheduler_info()["workers"])
        if not workers:
            raise SweepError(f"the Dask cluster at {scheduler} has no workers after {connect_timeout_s:g} s; "
                             f"start some with `dask worker {scheduler}`")
        groups: dict[Any, list[SweepTask]] = {}
        for t in todo:
            groups.setdefault(_share_key(fn, t), []).append(t)
        placement = _group_assignment(groups, workers)
        ordered = [t for g in groups.values() for t in g]
        rank = {t.task_id: i for i, t in enumerate(ordered)}
        # in-memory meshes go to every worker once, not once per task
        scattered: dict[int, Any] = {}
        for t in ordered:
            if _is_mesh(t.mesh) and id(t.mesh) not in scattered:
                scattered[id(t.mesh)] = client.scatter(t.mesh, broadcast=True, hash=False)
        started: dict[str, dict] = {}

        def on_event(event) -> None:
            _, msg = event
            if isinstance(msg, dict) and msg.get("event") == "start":
                started[msg["attempt_id"]] = msg

        with contextlib.suppress(Exception):
            client.subscribe_topic(_EVENT_TOPIC, on_event)
        token = uuid.uuid4().hex[:8]
        attempts: dict[str, int] = {}
        future_task: dict[Any, tuple[SweepTask, str]] = {}
        fn_ref = task_ref if isinstance(task_ref, str) else fn
        n = len(ordered)

        serial = iter(range(1, 1 << 62))

        def submit(t: SweepTask):
            attempts[t.task_id] = attempt = attempts.get(t.task_id, 0) + 1
            attempt_id = f"{run}-{token}-{next(serial)}"    # unique per submission (also the Dask key)
            record = {"run": run, "attempt": attempt, "attempt_id": attempt_id, "sweep_seed": spec.seed,
                      "part_dir": str(store.parts.resolve())}
            mesh_arg = scattered.get(id(t.mesh)) if _is_mesh(t.mesh) else None
            inputs = t.inputs()
            if mesh_arg is not None:
                inputs.mesh = None
            w = placement.get(t.task_id)
            fut = client.submit(execute_task, fn_ref, inputs, mesh_arg, record,
                                key=f"femur-fe-sweep-{t.task_id}-{attempt_id}",
                                workers=[w] if w else None, allow_other_workers=True, pure=False,
                                priority=n - rank[t.task_id] if attempt == 1 else n + 1)
            future_task[fut] = (t, attempt_id)
            return fut

        def finish(t: SweepTask, row: dict, written: bool) -> None:
            status = row["status"]
            if status != "ok" and attempts[t.task_id] <= spec.retries:
                log.warning("task %s (%s) attempt %d %s: %s; retrying", t.task_id, _short(t.params),
                            attempts[t.task_id], status, str(row["error"]).splitlines()[0])
                pending.add(submit(t))
                return
            if not written:
                store.write_part(row)
            if status != "ok":
                log.warning("task %s (%s) %s: %s", t.task_id, _short(t.params), status,
                            str(row["error"]).splitlines()[0])
            bar.update(status)

        restarted: set[str] = set()
        collateral: dict[str, int] = {}
        pending = {submit(t) for t in ordered}
        try:
            while pending:
                try:
                    with client.as_current():
                        done, _ = wait(list(pending), timeout=0.5, return_when="FIRST_COMPLETED")
                except TimeoutError:
                    done = set()
                for fut in done:
                    if fut not in pending:
                        continue
                    pending.discard(fut)
                    t, attempt_id = future_task.pop(fut)
                    row, written, died_on = _collect(fut, t, attempt_id, store, attempts[t.task_id], run, spec.seed)
                    if died_on in restarted and collateral.get(t.task_id, 0) < 3:
                        # killed with a worker that we restarted to stop another, timed-out task
                        collateral[t.task_id] = collateral.get(t.task_id, 0) + 1
                        attempts[t.task_id] -= 1
                        log.info("task %s was on restarted worker %s; resubmitted", t.task_id, died_on)
                        pending.add(submit(t))
                        continue
                    finish(t, row, written)
                restarted.update(_check_timeouts(client, spec, pending, future_task, started, attempts, run, finish,
                                                 own_cluster=_cluster is not None))
                bar.show()
        finally:
            with contextlib.suppress(Exception):
                client.unsubscribe_topic(_EVENT_TOPIC)
            if pending:
                with contextlib.suppress(Exception):
                    client.cancel(list(pending))


def _short(params: Mapping) -> str:
    parts = []
    for k, v in params.items():
        v = _jsonable(v)
        if isinstance(v, str) and os.sep in v:
            v = os.path.basename(v)
        parts.append(f"{k}={v}")
    return ", ".join(parts)


def _collect(fut, t: SweepTask, attempt_id: str, store: ResultStore, attempt: int, run: int,
             sweep_seed: int | None) -> tuple[dict, bool, str | None]:
    """(row, written, died_on) of a done future; a part the task wrote before its worker died
    counts. ``died_on`` is the address of the worker that died running it (else None)."""
    from distributed import KilledWorker

    err: BaseException | None = None
    on_disk = store.part_attempt(t.task_id)
    if on_disk is not None and on_disk[0] == attempt_id:
        # the worker wrote the row: no transfer needed, and nothing is lost if that worker died since
        fut.release()
        return store.read_part(t.task_id).iloc[0].to_dict(), True, None
    if fut.status == "finished":
        try:
            res = fut.result(timeout=15)
            written = bool(res["written"]) and store.part_attempt(t.task_id) == (attempt_id, res["row"]["status"])
            fut.release()
            return res["row"], written, None
        except BaseException as exc:  # result lost with its worker, or not fetchable
            err = exc
    else:
        try:
            err = fut.exception(timeout=5) if fut.status in ("error", "cancelled") else None
        except BaseException as exc:
            err = exc
        if err is None:
            err = SweepError(f"the task's result was lost (future status {fut.status!r}) when a worker left")
    fut.release()
    on_disk = store.part_attempt(t.task_id)
    if on_disk is not None and on_disk[0] == attempt_id:   # written meanwhile, then its worker died
        return store.read_part(t.task_id).iloc[0].to_dict(), True, None
    died_on = None
    if isinstance(err, KilledWorker):
        died_on = getattr(err.last_worker, "address", None)
        msg = (f"the worker process died while running this task ({err}); the task crashed its worker "
               "(segfault, os._exit, out of memory) or the worker was killed")
    else:
        msg = f"{type(err).__name__}: {err}"
    meta = _failure_meta("failed", msg)
    row = _make_row(t, meta, {}, attempts=attempt, run=run, attempt_id=attempt_id, sweep_seed=sweep_seed)
    return row, False, died_on


def _check_timeouts(client, spec: SweepSpec, pending: set, future_task: dict, started: dict, attempts: dict,
                    run: int, finish: Callable, own_cluster: bool = False) -> set[str]:
    """Cancel tasks running longer than ``spec.timeout_s`` and stop their workers (returned).

    A worker of our own local cluster is killed (SIGKILL to its process; its nanny starts a
    fresh one at once); a worker of an external cluster is restarted through the scheduler
    (which waits a few seconds for the busy thread before killing the process).
    """
    restarted: set[str] = set()
    if spec.timeout_s is None:
        return restarted
    now = time.time()
    for fut in list(pending):
        t, attempt_id = future_task[fut]
        ev = started.get(attempt_id)
        if ev is None or fut.done() or now - ev["time"] <= spec.timeout_s:
            continue
        worker = ev.get("worker")
        pending.discard(fut)
        future_task.pop(fut)
        started.pop(attempt_id, None)
        fut.cancel()
        fut.release()
        how = "the worker was restarted to stop it"
        restarted.add(worker)
        pid = int(ev.get("pid", -1))
        try:
            if own_cluster and ev.get("host") == socket.gethostname() and pid > 0 and pid != os.getpid():
                os.kill(pid, getattr(signal, "SIGKILL", signal.SIGTERM))
            else:
                client.restart_workers([worker], timeout=max(30.0, 3 * spec.timeout_s))
        except Exception as exc:
            how = f"the worker could not be restarted ({type(exc).__name__}: {exc}); it may still be busy"
        msg = (f"task exceeded the per-task timeout of {spec.timeout_s:g} s on worker {worker}; {how}; "
               "raise timeout_s if the task needs longer")
        meta = _failure_meta("timeout", msg, seconds=now - ev["time"], started_at=ev["time"], worker=worker or "",
                             pid=ev.get("pid", -1))
        finish(t, _make_row(t, meta, {}, attempts=attempts[t.task_id], run=run, attempt_id=attempt_id,
                            sweep_seed=spec.seed), False)
    return restarted


def read_results(out: str | os.PathLike):
    """The consolidated results table of a sweep folder (``results.parquet``)."""
    import pandas as pd

    path = Path(out) / "results.parquet"
    if not path.exists():
        raise SweepError(f"{path} does not exist; run the sweep first (femur-fe sweep SWEEP.toml --out {out})")
    return pd.read_parquet(path)
