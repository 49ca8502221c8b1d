"""Compare therapy scenarios with the baseline (and with standard care): table, JSON, CSV.

Each scenario is summarised as a :class:`ScenarioRecord` (strength, stiffness, integral
vBMD, bone mass added). :func:`comparison_rows` turns a baseline and scenarios into rows
with changes against the baseline, the strength gained per gram of bone added, and the
difference to a *reference* scenario (e.g. ``"standard_care"``): "is this therapy worth
more than standard care?". :func:`write_comparison` writes ``comparison.json`` and
``comparison.csv`` atomically.

Units: N, N/mm, g/cm^3 (vBMD also in mg/cm^3 in the rows), g.
"""
from __future__ import annotations

import csv
import io
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..errors import ScenarioError
from ..io import write_json_atomic, write_text_atomic

#: column order of comparison.csv
COLUMNS = (
    "scenario", "months", "strength_N", "strength_change_N", "strength_change_percent", "stiffness_N_per_mm",
    "stiffness_change_percent", "vbmd_mg_cm3", "vbmd_change_percent", "added_mass_g",
    "strength_gain_per_gram_N_per_g", "strength_vs_reference_percent", "better_than_reference",
)


@dataclass(frozen=True)
class ScenarioRecord:
    """Summary numbers of one run (baseline or scenario).

    Attributes
    ----------
    name : scenario name (``"baseline"`` for the untreated state)
    strength_N : strength (linear or nonlinear, one definition for all records), N
    stiffness_N_per_mm : whole-bone stiffness, N/mm (optional)
    vbmd_g_cm3 : integral vBMD (volume-weighted mean density), g/cm^3 (optional)
    added_mass_g : bone mass added relative to the baseline, g (0 for the baseline)
    months : evaluation time, months (optional)
    """

    name: str
    strength_N: float
    stiffness_N_per_mm: float | None = None
    vbmd_g_cm3: float | None = None
    added_mass_g: float = 0.0
    months: float | None = None

    def __post_init__(self) -> None:
        if not (isinstance(self.strength_N, (int, float)) and math.isfinite(self.strength_N) and self.strength_N > 0):
            raise ScenarioError(f"record {self.name!r}: strength_N must be a finite number > 0 N, got {self.strength_N!r}")

    @classmethod
    def from_summary(cls, name: str, summary: Mapping[str, Any], outcome: Any = None, *,
                     strength_key: str = "strength_linear_N") -> "ScenarioRecord":
        """Build from a result ``summary.json`` mapping and an optional ScenarioOutcome.

        ``strength_key``: ``"strength_linear_N"`` or ``"strength_nonlinear_N"``.
        """
        if strength_key not in summary:
            raise ScenarioError(f"summary of {name!r} has no {strength_key!r}; run a failure criterion (linear) or "
                                f"the nonlinear analysis; available keys: {', '.join(sorted(summary))}")
        return cls(name, float(summary[strength_key]), _opt(summary.get("stiffness_N_per_mm")),
                   None if outcome is None else float(outcome.vbmd_after_g_cm3),
                   0.0 if outcome is None else float(outcome.added_mass_g),
                   None if outcome is None else outcome.t_months)


def _opt(v) -> float | None:
    return None if v is None else float(v)


def _pct(new: float | None, old: float | None) -> float | None:
    if new is None or old is None or old == 0:
        return None
    return 100.0 * (new / old - 1.0)


def comparison_rows(baseline: ScenarioRecord, scenarios: Sequence[ScenarioRecord], *,
                    reference: str | None = "standard_care") -> list[dict[str, Any]]:
    """Rows (baseline first) with changes vs the baseline and vs the reference scenario.

    ``strength_gain_per_gram_N_per_g`` = strength change / bone mass added, only for
    scenarios that added bone (None otherwise: for a scenario that lost bone the ratio is
    strength lost per gram lost, not a gain). ``strength_vs_reference_percent`` = strength relative to the
    ``reference`` scenario's strength (None if there is no such scenario), and
    ``better_than_reference`` is True when the scenario is stronger than the reference.
    """
    names = [s.name for s in scenarios]
    if len(set(names)) != len(names) or baseline.name in names:
        raise ScenarioError(f"scenario names must be unique and differ from the baseline's {baseline.name!r}: {names}")
    ref = next((s for s in scenarios if s.name == reference), None) if reference else None
    rows = []
    for rec in (baseline, *scenarios):
        d_strength = rec.strength_N - baseline.strength_N
        per_gram = d_strength / rec.added_mass_g if rec is not baseline and rec.added_mass_g > 0 else None
        vs_ref = _pct(rec.strength_N, ref.strength_N) if ref is not None and rec is not ref else None
        rows.append({
            "scenario": rec.name,
            "months": rec.months,
            "strength_N": rec.strength_N,
            "strength_change_N": d_strength,
            "strength_change_percent": _pct(rec.strength_N, baseline.strength_N),
            "stiffness_N_per_mm": rec.stiffness_N_per_mm,
            "stiffness_change_percent": _pct(rec.stiffness_N_per_mm, baseline.stiffness_N_per_mm),
            "vbmd_mg_cm3": None if rec.vbmd_g_cm3 is None else 1000.0 * rec.vbmd_g_cm3,
            "vbmd_change_percent": _pct(rec.vbmd_g_cm3, baseline.vbmd_g_cm3),
            "added_mass_g": rec.added_mass_g,
            "strength_gain_per_gram_N_per_g": per_gram,
            "strength_vs_reference_percent": vs_ref,
            "better_than_reference": None if vs_ref is None else bool(vs_ref > 0),
        })
    return rows


def format_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """Plain-text table of the main columns (for the CLI)."""
    cols = [("scenario", "scenario", "{}"), ("strength_N", "strength N", "{:.0f}"),
            ("strength_change_percent", "d strength %", "{:+.1f}"), ("stiffness_change_percent", "d stiffness %",
                                                                       "{:+.1f}"),
            ("vbmd_change_percent", "d vBMD %", "{:+.1f}"), ("added_mass_g", "mass added g", "{:.3f}"),
            ("strength_gain_per_gram_N_per_g", "N per g", "{:.0f}"),
            ("strength_vs_reference_percent", "vs reference %", "{:+.1f}")]
    table = [[h for _, h, _ in cols]]
    for r in rows:
        table.append(["-" if r.get(k) is None else fmt.format(r[k]) for k, _, fmt in cols])
    widths = [max(len(row[i]) for row in table) for i in range(len(cols))]
    lines = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))) for row in table]
    return "\n".join(lines)


def write_comparison(rows: Sequence[Mapping[str, Any]], out_dir: str | os.PathLike, *,
                     meta: Mapping[str, Any] | None = None) -> tuple[Path, Path]:
    """Write ``comparison.json`` ({"rows": [...], **meta}) and ``comparison.csv`` atomically."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = {"columns": list(COLUMNS), "rows": [dict(r) for r in rows]}
    if meta:
        data.update(dict(meta))
    jpath = write_json_atomic(out / "comparison.json", data)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(COLUMNS), extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in COLUMNS})
    cpath = write_text_atomic(out / "comparison.csv", buf.getvalue())
    return jpath, cpath


def records_as_dicts(records: Sequence[ScenarioRecord]) -> list[dict]:
    """Plain dicts of records (for result metadata)."""
    return [asdict(r) for r in records]


__all__ = ["ScenarioRecord", "comparison_rows", "format_table", "write_comparison", "COLUMNS", "records_as_dicts"]
