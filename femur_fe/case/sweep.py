"""Sweep files: the top-level keys and the parameter distributions of a sweep.

Both are validated with :class:`femur_fe.io.tables.Table` (typed keys, ranges, unknown keys
refused with a suggestion) and documented in ``docs/schemas.md``. Running a sweep
(:class:`femur_fe.studies.sweep.SweepSpec`) takes what these functions return.
"""
from __future__ import annotations

import glob as _glob
import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from ..errors import SweepError
from ..io.tables import Table

#: sweep-level inputs that are not key paths of the load case
SPECIAL_KEYS = ("mesh", "state", "scenario")
#: ways to expand the parameters into tasks
METHODS = ("grid", "random", "lhs", "list")
#: keys that make a parameter table a distribution rather than a nested key path
DISTRIBUTION_KEYS = ("values", "choice", "linspace", "logspace", "uniform", "loguniform", "glob")
#: value of the ``scenario`` parameter meaning "no scenario" (the bone as it is)
BASELINE = "baseline"
#: parameters whose ``glob`` is a file pattern
GLOB_KEYS = ("mesh", "bone.mesh", "bone.ct", "bone.mask")

#: (key, kind, note) of a distribution table, in :data:`DISTRIBUTION_KEYS` order
_DISTRIBUTIONS = (
    ("values", "any", "a list of values (a bare list or value means the same)"),
    ("choice", "any", "a list of values"),
    ("linspace", "any", "[start, stop, count]: count evenly spaced values"),
    ("logspace", "any", "[start, stop, count]: geometrically spaced, start and stop > 0"),
    ("uniform", "any", "[low, high], high > low: continuous (method `random` or `lhs`)"),
    ("loguniform", "any", "[low, high], 0 < low < high: continuous (method `random` or `lhs`)"),
    ("glob", "str", "file pattern relative to the sweep file (" + ", ".join(GLOB_KEYS) + ")"),
)


def sweep_table(data: Any, source: str = "") -> dict[str, Any]:
    """The top-level keys of a sweep (a TOML document or the fields of a SweepSpec), checked.

    Returns the keys that are present, typed; unknown keys, wrong types and values out of
    range raise :class:`SweepError` naming the key. Keys that hold Python objects in a
    SweepSpec (``base``, ``task``, ``bone``, ``scenario``, ``parameters``, ``cases``) are
    checked further by the spec.
    """
    t = Table(data, "sweep", source, SweepError, schema="sweep (top level)")
    got = {
        "name": t.get("name", "str", "sweep", note="default: the sweep file's name"),
        "description": t.get("description", "str", ""),
        "base": t.get("base", "any", None, note="the base load case: a TOML path (relative to the sweep "
                                                "file) or a load-case table; a table in the column layout "
                                                "runs the column task"),
        "parameters": t.get("parameters", "any", {}, note="key path = values or a distribution table (below); "
                                                          "`mesh`, `state`, `scenario`, `scenario.<key>` and "
                                                          "`bone.<key>` are sweep inputs"),
        "method": t.get("method", "str", "grid", choices=METHODS),
        "samples": t.get("samples", "int", None, lo=1, note="number of tasks of `random` and `lhs` (required there)"),
        "seed": t.get("seed", "int", None, lo=0, note="`random` and `lhs`: drawn and recorded when absent"),
        "cases": t.get("cases", "any", None, note="method `list`: an array of {key path = value} tables"),
        "task": t.get("task", "any", None, note="`package.module:function` (registered tasks, or any with "
                                                "allow_import); default: the run pipeline"),
        "timeout_s": t.get("timeout_s", "float", None, lo=0.0, lo_open=True, note="per task; default: none"),
        "retries": t.get("retries", "int", 1, lo=0, note="extra attempts of a failed or timed-out task"),
        "scenario": t.get("scenario", "any", None, note="[[scenario]] tables as in comparison files"),
        "bone": t.get("bone", "any", None, note="the bone of every task, as the [bone] table of run files"),
        "allow_import": t.get("allow_import", "bool", False, note="allow a task from any importable module"),
    }
    t.finish()
    return {k: v for k, v in got.items() if t.has(k)}


def plain(v: Any) -> Any:
    """A NumPy scalar as the Python scalar (other values as they are)."""
    if isinstance(v, np.generic):
        return v.item()
    return v


def _number(name: str, v: Any, what: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
        raise SweepError(f"parameter {name!r}: {what} must be a number, got {v!r}")
    v = float(v)
    if not np.isfinite(v):
        raise SweepError(f"parameter {name!r}: {what} must be finite, got {v!r}")
    return v


def _bounds(name: str, kind: str, spec: Any) -> tuple[float, float]:
    if not isinstance(spec, (list, tuple)) or len(spec) != 2:
        raise SweepError(f"parameter {name!r}: {kind} needs [low, high], got {spec!r} "
                         f"(e.g. {{ {kind} = [0.5, 2.0] }})")
    lo, hi = (_number(name, x, f"{kind} bound") for x in spec)
    if not hi > lo:
        raise SweepError(f"parameter {name!r}: empty range {kind} = [{lo}, {hi}]; the high bound must "
                         "exceed the low bound")
    if kind == "loguniform" and lo <= 0:
        raise SweepError(f"parameter {name!r}: loguniform needs positive bounds, got [{lo}, {hi}]; "
                         "use uniform for ranges that include zero or negative values")
    return lo, hi


def _spaced(name: str, kind: str, spec: Any) -> tuple:
    if not isinstance(spec, (list, tuple)) or len(spec) != 3:
        raise SweepError(f"parameter {name!r}: {kind} needs [start, stop, count], got {spec!r}")
    lo, hi = (_number(name, x, f"{kind} bound") for x in spec[:2])
    n = spec[2]
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise SweepError(f"parameter {name!r}: {kind} count must be a positive integer, got {n!r}")
    if kind == "logspace":
        if lo <= 0 or hi <= 0:
            raise SweepError(f"parameter {name!r}: logspace needs positive start and stop, got [{lo}, {hi}]")
        vals = np.geomspace(lo, hi, int(n))
    else:
        vals = np.linspace(lo, hi, int(n))
    return tuple(float(v) for v in vals)


def glob_files(pattern: Any, root: Path | None) -> tuple:
    """The files matching ``pattern`` (relative to ``root``), sorted; none is an error."""
    if not isinstance(pattern, str) or not pattern:
        raise SweepError(f"parameter 'mesh': glob needs a pattern string, got {pattern!r}")
    full = pattern if os.path.isabs(pattern) or root is None else str(root / pattern)
    found = tuple(sorted(p for p in _glob.glob(full, recursive=True) if os.path.isfile(p)))
    if not found:
        raise SweepError(f"parameter 'mesh': the glob {full!r} matches no files; check the cohort folder")
    return found


def distribution(key: str, spec: Any, *, root: Path | None = None) -> tuple[str, tuple, float | None, float | None]:
    """``(kind, values, low, high)`` of one swept parameter from its spec.

    ``spec`` is a list of values, a single value, or a table with one of
    :data:`DISTRIBUTION_KEYS`: ``values``, ``choice`` (lists), ``linspace``/``logspace``
    ([start, stop, count]), ``uniform``/``loguniform`` ([low, high]) or, for files, ``glob``
    (pattern, relative to ``root``). A ``mesh`` string with wildcards is a glob too. ``kind``
    is ``"values"`` (a finite list) or ``"uniform"``/``"loguniform"`` (continuous).
    """
    if not isinstance(key, str) or not key or any(not part for part in key.split(".")):
        raise SweepError(f"parameter name {key!r} is not a key path; use dotted TOML keys like 'material.a_mpa'")
    if isinstance(spec, Mapping):
        kinds = [k for k in spec if k in DISTRIBUTION_KEYS]
        extra = [k for k in spec if k not in DISTRIBUTION_KEYS]
        if len(kinds) != 1 or extra:
            raise SweepError(
                f"parameter {key!r}: a table must have exactly one of {', '.join(DISTRIBUTION_KEYS)}, "
                f"got keys {sorted(spec)}"
            )
        t = Table(spec, f"parameter {key!r}", "", SweepError, schema="sweep [parameters] distribution")
        got = {k: t.get(k, kind, None, note=note) for k, kind, note in _DISTRIBUTIONS}
        t.finish()
        kind = kinds[0]
        arg = got[kind]
        if kind in ("uniform", "loguniform"):
            if key in SPECIAL_KEYS:
                raise SweepError(f"parameter {key!r} is categorical; give values or choice, not {kind}")
            lo, hi = _bounds(key, kind, arg)
            return kind, (), lo, hi
        if kind in ("linspace", "logspace"):
            return "values", _spaced(key, kind, arg), None, None
        if kind == "glob":
            if key not in GLOB_KEYS:
                raise SweepError(f"parameter {key!r}: glob is only for files (bone.mesh, bone.ct, bone.mask; a "
                                 "cohort folder pattern)")
            return "values", glob_files(arg, root), None, None
        values = arg if isinstance(arg, (list, tuple)) else [arg]
    elif isinstance(spec, (list, tuple, np.ndarray)):
        values = list(spec)
    else:
        values = [spec]
    if len(values) == 0:
        raise SweepError(f"parameter {key!r}: empty list of values; give at least one value")
    if key in ("scenario", "state") and not all(isinstance(v, str) for v in values):
        raise SweepError(f"parameter {key!r}: values must be names (strings), got {list(values)!r}")
    if key == "mesh":
        out: list = []
        for v in values:
            if isinstance(v, (str, os.PathLike)) and any(c in str(v) for c in "*?["):
                out.extend(glob_files(str(v), root))
            else:
                out.append(v)
        values = out
    return "values", tuple(plain(v) for v in values), None, None


def flatten_parameters(tree: Mapping, prefix: str = "") -> dict[str, Any]:
    """``{"material": {"a_mpa": [..]}}`` -> ``{"material.a_mpa": [..]}`` (distribution tables kept)."""
    out: dict[str, Any] = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and not any(d in v for d in DISTRIBUTION_KEYS):
            if not v:
                raise SweepError(f"parameter {key!r}: empty table; give values or a distribution")
            out.update(flatten_parameters(v, key + "."))
        else:
            out[key] = v
    return out
