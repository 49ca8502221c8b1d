"""One mechanism for every input table (load cases, bones, scenarios, comparisons, sweeps).

A :class:`Table` takes typed keys out of one TOML/JSON table: wrong types, values outside
their range or choices, missing required keys and unknown keys (with the closest valid key
suggested) raise the caller's error class with the file and the table named. Every key a
validator asks for is recorded in :data:`SCHEMA` (table, key, kind, default, choices,
range), which is what ``docs/schemas.md`` is generated from, so the documentation and
the validators cannot drift apart.

:func:`set_path` sets a value by dotted key path (``"loading.adduction_deg"``,
``"boundary.1.fix"``) in a nested dict: the one setter behind ``LoadCase.with_values``,
``--set`` on the command line and sweep parameters.
"""
from __future__ import annotations

import copy
import dataclasses
import difflib
import math
import numbers
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Mapping

from ..errors import FemurFeError

MISSING = object()

#: kinds a key may have (see :meth:`Table.get`)
KINDS = ("float", "int", "str", "bool", "vec3", "str_or_vec3", "str_or_float", "strlist", "intlist",
         "floatlist", "table", "any")


def typename(v: Any) -> str:
    """The TOML name of a Python value's type (for messages)."""
    return {bool: "boolean", int: "integer", float: "float", str: "string", list: "array", tuple: "array",
            dict: "table"}.get(type(v), type(v).__name__)


@dataclass(frozen=True)
class KeySpec:
    """What a validator accepts for one key (recorded for the documentation)."""

    table: str
    key: str
    kind: str
    default: Any
    choices: tuple | None = None
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    note: str = ""

    @property
    def required(self) -> bool:
        return self.default is MISSING

    def range_text(self) -> str:
        """Allowed values as text: the choices, or the interval."""
        if self.choices is not None:
            return ", ".join(f"`{c}`" if isinstance(c, str) else f"`{c!r}`" for c in self.choices)
        parts = []
        if self.lo is not None:
            parts.append(f"{'>' if self.lo_open else '≥'} {self.lo:g}")
        if self.hi is not None:
            parts.append(f"{'<' if self.hi_open else '≤'} {self.hi:g}")
        return ", ".join(parts)


#: schema name -> key -> KeySpec, filled as validators run
SCHEMA: dict[str, dict[str, KeySpec]] = {}


def _check_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


class Table:
    """Typed keys of one table; unknown keys are reported with a suggestion.

    Parameters
    ----------
    raw : the table (a mapping; None is an empty table)
    where : how the table is named in messages, e.g. ``"[loading]"``
    source : the file (or ``"<dict>"``) named in messages
    error : the exception class raised (a :class:`femur_fe.errors.FemurFeError` subclass)
    schema : the name the keys are documented under (default: ``where``); tables with
        variable names (``[regions.head_contact]``) give a generic one
        (``"load case [regions.<name>]"``)
    """

    def __init__(self, raw: Any, where: str, source: str, error: type[FemurFeError] = FemurFeError, *,
                 schema: str | None = None):
        self.error = error
        self.where = where
        self.source = source
        self.schema = schema or where
        if raw is None:
            raw = {}
        if not isinstance(raw, Mapping):
            raise self.err(f"must be a table, got {typename(raw)} {raw!r}")
        self.raw = dict(raw)
        self.seen: set[str] = set()
        self.allowed: list[str] = []

    def err(self, msg: str) -> FemurFeError:
        """The error to raise, naming the file and the table."""
        prefix = f"{self.source}: " if self.source else ""
        return self.error(f"{prefix}{self.where}: {msg}")

    def has(self, key: str) -> bool:
        return key in self.raw

    def _record(self, key: str, kind: str, default: Any, choices, lo, hi, lo_open, hi_open, note: str) -> None:
        keys = SCHEMA.setdefault(self.schema, {})
        if key not in keys:
            d = default if default is MISSING or not isinstance(default, (list, tuple)) else list(default)
            keys[key] = KeySpec(self.schema, key, kind, d, None if choices is None else tuple(choices), lo, hi,
                                lo_open, hi_open, note)

    def get(self, key: str, kind: str, default: Any = MISSING, *, choices=None, lo=None, hi=None,
            lo_open: bool = False, hi_open: bool = False, note: str = "") -> Any:
        """The value of ``key`` checked against ``kind`` (one of :data:`KINDS`), ``choices`` and the
        interval [lo, hi] (open ends with ``lo_open``/``hi_open``); ``default`` when absent
        (required when no default is given). ``note`` documents a default that depends on
        other keys."""
        self.allowed.append(key)
        self._record(key, kind, default, choices, lo, hi, lo_open, hi_open, note)
        if key not in self.raw:
            if default is MISSING:
                close = difflib.get_close_matches(key, [str(k) for k in self.raw], n=1)
                hint = f" ({close[0]!r} is not a key: a typo?)" if close else ""
                raise self.err(f"missing required key {key!r}{hint}")
            return default
        self.seen.add(key)
        v = self.raw[key]
        name = f"{key} = {v!r}"
        if kind == "float" or (kind == "str_or_float" and not isinstance(v, str)):
            if not _check_number(v):
                raise self.err(f"{key} must be a number, got {typename(v)} {v!r}")
            v = float(v)
            if not math.isfinite(v):
                raise self.err(f"{name} must be finite")
        elif kind == "int":
            if isinstance(v, bool) or not isinstance(v, int):
                raise self.err(f"{key} must be an integer, got {typename(v)} {v!r}")
        elif kind == "str":
            if not isinstance(v, str):
                raise self.err(f"{key} must be a string, got {typename(v)} {v!r}")
        elif kind == "bool":
            if not isinstance(v, bool):
                raise self.err(f"{key} must be true or false, got {typename(v)} {v!r}")
        elif kind in ("vec3", "str_or_vec3"):
            if kind == "str_or_vec3" and isinstance(v, str):
                pass
            elif not (isinstance(v, (list, tuple)) and len(v) == 3 and all(_check_number(x) for x in v)):
                raise self.err(f"{key} must be {'a string or ' if kind == 'str_or_vec3' else ''}an array of "
                               f"3 numbers [x, y, z], got {v!r}")
            else:
                v = tuple(float(x) for x in v)
                if not all(math.isfinite(x) for x in v):
                    raise self.err(f"{key} must be finite, got {list(v)}")
        elif kind == "strlist":
            if not (isinstance(v, (list, tuple)) and all(isinstance(x, str) for x in v)):
                raise self.err(f"{key} must be an array of strings, got {v!r}")
            v = tuple(v)
        elif kind == "intlist":
            if not (isinstance(v, (list, tuple)) and all(isinstance(x, int) and not isinstance(x, bool) for x in v)):
                raise self.err(f"{key} must be an array of integers, got {v!r}")
            v = tuple(v)
        elif kind == "floatlist":
            if not (isinstance(v, (list, tuple)) and all(_check_number(x) for x in v)):
                raise self.err(f"{key} must be an array of numbers, got {v!r}")
            v = tuple(float(x) for x in v)
            if not all(math.isfinite(x) for x in v):
                raise self.err(f"{key} must hold finite numbers, got {list(v)}")
        elif kind == "table":
            if not isinstance(v, Mapping):
                raise self.err(f"{key} must be a table, got {typename(v)} {v!r}")
            v = dict(v)
        if choices is not None and v not in choices:
            close = difflib.get_close_matches(str(v), [str(c) for c in choices], n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise self.err(f"{key} must be one of {', '.join(repr(c) for c in choices)}, got {v!r}{hint}")
        for x in (v if kind in ("floatlist", "intlist") else (v,)):
            if not _check_number(x):
                continue
            if lo is not None and (x < lo or (lo_open and x == lo)):
                raise self.err(f"{name} is out of range: must be {'>' if lo_open else '>='} {lo}")
            if hi is not None and (x > hi or (hi_open and x == hi)):
                raise self.err(f"{name} is out of range: must be {'<' if hi_open else '<='} {hi}")
        return v

    def finish(self, extra_allowed=()) -> None:
        """Refuse keys no :meth:`get` asked for (``extra_allowed`` are accepted too)."""
        allowed = list(dict.fromkeys(self.allowed + list(extra_allowed)))
        for key in self.raw:
            if key not in self.seen and key not in extra_allowed:
                close = difflib.get_close_matches(str(key), allowed, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise self.err(f"unknown key {key!r}{hint} (allowed keys: {', '.join(allowed) or 'none'})")

    def describe(self, cls: type, *, skip: tuple[str, ...] = ()) -> None:
        """Record the keys :meth:`dataclass` accepts for ``cls`` (for the documentation), without a table."""
        for f in dataclasses.fields(cls):
            if not f.init or f.name in skip:
                continue
            default = _field_default(f)
            self._record(f.name, _kind_of(default), default, None, None, None, False, False, "")

    def dataclass(self, cls: type, *, skip: tuple[str, ...] = (), fixed: Mapping[str, Any] | None = None) -> Any:
        """Build the dataclass ``cls`` from the table: one key per init field (typed by the
        field's default), unknown keys refused; ``fixed`` keys are set by the caller.
        Errors raised by the class itself (``__post_init__`` checks) are re-raised naming
        the table."""
        kw = dict(fixed or {})
        names = [f.name for f in dataclasses.fields(cls) if f.init and f.name not in kw]
        for key in self.raw:  # unknown keys first: a misspelt key is named, not reported as missing
            if key not in names and key not in skip:
                close = difflib.get_close_matches(str(key), names, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise self.err(f"unknown key {key!r}{hint} (allowed keys: {', '.join(list(skip) + names)})")
        for f in dataclasses.fields(cls):
            if not f.init or f.name in skip or f.name in kw:
                continue
            default = _field_default(f)
            kind = _kind_of(default)
            v = self.get(f.name, kind, default)
            kw[f.name] = tuple(v) if isinstance(v, list) else v
        self.finish(extra_allowed=skip)
        try:
            return cls(**kw)
        except FemurFeError as exc:
            raise self.err(str(exc)) from None
        except (TypeError, ValueError) as exc:
            raise self.err(str(exc)) from None


def _field_default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return MISSING


def _kind_of(default: Any) -> str:
    if isinstance(default, bool):
        return "bool"
    if isinstance(default, (int, float)) and not isinstance(default, bool):
        return "float" if isinstance(default, float) else "str_or_float"
    if isinstance(default, str):
        return "str"
    if isinstance(default, Mapping):
        return "table"
    return "any"


def freeze(d: Mapping[str, Any]) -> Mapping[str, Any]:
    """Read-only copy of a flat table (lists become tuples)."""
    return MappingProxyType({k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items()})


def plain(v: Any) -> Any:
    """TOML/JSON-ready copy: tuples -> lists, mappings -> dicts, None dropped from tables."""
    if isinstance(v, Mapping):
        return {k: plain(x) for k, x in v.items() if x is not None}
    if isinstance(v, (tuple, list)):
        return [plain(x) for x in v]
    return v


def set_path(data: Mapping[str, Any], path: str, value: Any, error: type[FemurFeError] = FemurFeError, *,
             what: str = "", create: tuple[str, ...] = (), strict: bool = False, value_hint: str = "") -> dict:
    """A deep copy of ``data`` with ``value`` set at the dotted key ``path``.

    Tables are walked by key, arrays by 0-based index (``"boundary.1.fix"``). A missing
    key is refused naming the valid keys at that level, unless the path starts with one of
    ``create`` (e.g. ``"regions"``: a new region table). ``strict``: the last key must exist
    too, hold a value (not a table), and a number stays a number. ``what`` prefixes messages;
    ``value_hint`` is appended where the path walks into a value.
    """
    out = copy.deepcopy(dict(data))
    parts = str(path).split(".")
    pre = f"{what}: " if what else ""
    node: Any = out
    for i, key in enumerate(parts[:-1]):
        where = ".".join(parts[:i]) or "the top level"
        if isinstance(node, list):
            if not key.isdigit() or int(key) >= len(node):
                raise error(f"{pre}{path!r}: {where} is an array of {len(node)} tables; use an index "
                            f"0..{len(node) - 1}")
            node = node[int(key)]
            continue
        if not isinstance(node, dict):
            raise error(f"{pre}{path!r}: {where!r} is a value ({node!r}), not a table{value_hint}")
        if key not in node:
            if ".".join(parts[:i]) in create:
                node[key] = {}
            else:
                valid = sorted(map(str, node))
                close = difflib.get_close_matches(key, valid, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise error(f"{pre}{path!r}: no key {key!r} in {where}{hint}; valid keys: {', '.join(valid)}")
        node = node[key]
    last = parts[-1]
    if isinstance(node, list):
        raise error(f"{pre}{path!r}: cannot replace a whole array element; set its keys")
    if not isinstance(node, dict):
        raise error(f"{pre}{path!r}: {'.'.join(parts[:-1])!r} is a value ({node!r}), not a table{value_hint}")
    if strict:
        where = ".".join(parts[:-1]) or "the top level"
        if last not in node:
            valid = sorted(map(str, node))
            close = difflib.get_close_matches(last, valid, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise error(f"{pre}{path!r}: no key {last!r} in {where}{hint}; valid keys: {', '.join(valid) or 'none'}")
        old = node[last]
        if isinstance(old, dict):
            raise error(f"{pre}{path!r} names a table, not a value; address one of its keys "
                        f"({', '.join(sorted(map(str, old)))})")
        if is_number(old) and not is_number(value):
            raise error(f"{pre}{path!r}: the table holds a number ({old!r}) there, got {value!r}")
    node[last] = list(value) if isinstance(value, tuple) else value
    return out


def is_number(v: Any) -> bool:
    """A real number (NumPy scalars included), not a boolean."""
    return isinstance(v, numbers.Real) and not isinstance(v, bool)
