"""Scenario files: ``[[scenario]]`` tables with ``[[scenario.operator]]`` entries.

Each scenario has ``name`` (letters, digits, ``_ . -``: it names an output folder),
``months``, ``density_type`` (``"ash"``, ``"apparent"`` or ``"qct"``) and ``description``;
each operator a ``type`` (:data:`femur_fe.therapy.scenarios.OPERATOR_TYPES`) and the fields
of that operator's class (:mod:`femur_fe.therapy.scenarios`). Unknown types and keys are
refused, naming the allowed ones.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

from ..errors import ScenarioError
from ..io.tables import Table
from ..io.toml_io import read_toml
from ..therapy.scenarios import OPERATOR_TYPES, Operator, Scenario


def operator_from_dict(data: Mapping[str, Any], where: str = "operator", source: str = "") -> Operator:
    """One operator from its TOML table (``type`` + the fields of its class)."""
    t = Table(data, where, source, ScenarioError, schema="scenario [[scenario.operator]] (type)")
    kind = t.get("type", "str", choices=tuple(OPERATOR_TYPES))
    cls = OPERATOR_TYPES[kind]
    op_table = Table(data, f"{where} (type {kind!r})", source, ScenarioError,
                     schema=f"scenario [[scenario.operator]] type = {kind!r}")
    op_table.get("type", "str")
    return op_table.dataclass(cls, skip=("type",))


def scenarios_from_dict(data: Mapping[str, Any], *, allow_other_keys: bool = False,
                        source: str = "") -> list[Scenario]:
    """Parse ``{"scenario": [ {...}, ... ]}`` (a TOML document) into scenarios.

    ``allow_other_keys``: accept other top-level keys (scenarios embedded in a bigger file,
    e.g. a comparison); otherwise only ``scenario`` and ``schema_version`` are allowed.
    """
    top = Table(data, "top level", source, ScenarioError, schema="scenario file (top level)")
    tables = top.get("scenario", "any", None)
    top.get("schema_version", "int", 1, choices=(1,))
    if not allow_other_keys:
        top.finish()
    if tables is None:
        raise top.err("no [[scenario]] tables found; write each scenario as a [[scenario]] table with name "
                      "and [[scenario.operator]] entries")
    if isinstance(tables, Mapping):
        tables = [tables]
    if not isinstance(tables, (list, tuple)):
        raise top.err(f"scenario must be an array of tables ([[scenario]]), got {tables!r}")
    out: list[Scenario] = []
    names: set[str] = set()
    for i, tab in enumerate(tables):
        t = Table(tab, f"[[scenario]] #{i + 1}", source, ScenarioError, schema="scenario [[scenario]]")
        name = t.get("name", "str")
        t.where = f"scenario {name!r}"
        ops_data = t.get("operator", "any", [])
        months = t.get("months", "float", None, lo=0.0, hi=1200.0)
        density_type = t.get("density_type", "str", "ash", choices=("ash", "apparent", "qct"))
        description = t.get("description", "str", "")
        t.finish()
        if isinstance(ops_data, Mapping):
            ops_data = [ops_data]
        if not isinstance(ops_data, (list, tuple)):
            raise t.err(f"operator must be an array of tables ([[scenario.operator]]), got {ops_data!r}")
        ops = tuple(operator_from_dict(o, f"scenario {name!r}, operator #{j + 1}", source)
                    for j, o in enumerate(ops_data))
        try:
            sc = Scenario(name, ops, months=months, density_type=density_type, description=description)
        except ScenarioError as exc:
            raise t.err(str(exc)) from None
        if sc.name in names:
            raise t.err(f"duplicate scenario name {sc.name!r}; names must be unique")
        names.add(sc.name)
        out.append(sc)
    return out


def load_scenarios(path: str | os.PathLike, *, allow_other_keys: bool = False) -> list[Scenario]:
    """Read ``[[scenario]]`` tables from a TOML file."""
    p = Path(path)
    data = read_toml(p, ScenarioError, "scenario file")
    return scenarios_from_dict(data, allow_other_keys=allow_other_keys, source=str(p))
