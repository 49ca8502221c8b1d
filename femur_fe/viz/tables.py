"""HTML tables people read: human column names with units, numbers rounded to what they mean.

A table is a list of :class:`Column` (key, header with unit, format) applied to rows
(mappings). Every cell is text made here: missing values (None, NaN, infinite) show as an
en dash, booleans as yes/no, numbers through the column's format, mappings and lists
through :func:`plain_text` -- never a Python representation.

:func:`human_name` turns a machine column name (``strength_linear_N``) into a header
(``strength linear (N)``) for tables whose columns are not known in advance (sweeps).
"""
from __future__ import annotations

import html
import math
import re
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Sequence

#: shown for a missing value
MISSING = "\u2013"

#: machine-name suffix -> unit shown in headers (longest suffixes first)
UNIT_SUFFIXES = (
    ("_N_per_mm", "N/mm"), ("_N_per_g", "N/g"), ("_mg_cm3", "mg/cm\u00b3"), ("_g_cm3", "g/cm\u00b3"),
    ("_percent", "%"), ("_mm3", "mm\u00b3"), ("_mpa", "MPa"), ("_MPa", "MPa"), ("_deg", "\u00b0"),
    ("_months", "months"), ("_mm", "mm"), ("_N", "N"), ("_g", "g"), ("_s", "s"),
)


def esc(x: Any) -> str:
    """HTML-escaped text of ``x``."""
    return html.escape(str(x), quote=True)


def is_missing(v: Any) -> bool:
    """True for None, NaN and infinite numbers (pandas NA included)."""
    if v is None:
        return True
    if isinstance(v, float):
        return not math.isfinite(v)
    try:
        import pandas as pd

        return bool(pd.isna(v)) if not isinstance(v, (str, bytes, Mapping, list, tuple)) else False
    except (ImportError, TypeError, ValueError):
        return False


def plain_text(v: Any) -> str:
    """Readable text of a nested value: ``key value; key value`` for mappings, comma lists."""
    if is_missing(v):
        return MISSING
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, Mapping):
        return "; ".join(f"{str(k).replace('_', ' ')} {plain_text(x)}" for k, x in v.items())
    if isinstance(v, (list, tuple)):
        return ", ".join(plain_text(x) for x in v)
    if isinstance(v, float):
        return significant(v)
    return str(v)


def significant(v: float, digits: int = 4) -> str:
    """``v`` to ``digits`` significant digits, without exponent between 1e-3 and 1e7."""
    if v == 0:
        return "0"
    a = abs(v)
    if not 1e-3 <= a < 1e7:
        return f"{v:.{digits - 1}e}"
    text = f"{v:.{max(0, digits - 1 - int(math.floor(math.log10(a))))}f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def format_value(v: Any, fmt: str | Callable[[Any], str] | None = None) -> str:
    """Cell text of ``v``: missing -> en dash, numbers through ``fmt`` (str.format or a callable)."""
    if is_missing(v):
        return MISSING
    if isinstance(v, bool):
        return "yes" if v else "no"
    if callable(fmt):
        return fmt(v)
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        if fmt is None:
            return significant(float(v)) if isinstance(v, float) else f"{v:,}"
        text = fmt.format(v)
        if re.fullmatch(r"[+-]0(\.0*)?", text):  # no sign on a value that rounds to zero: "0.0", not "-0.0"
            text = text[1:]
        return text
    if isinstance(v, (Mapping, list, tuple)):
        return plain_text(v)
    return str(v)


@dataclass(frozen=True)
class Column:
    """One column of a table.

    Attributes
    ----------
    key : key of the value in each row (or a callable row -> value)
    header : human name with the unit in brackets, e.g. ``"strength (N)"``
    fmt : ``str.format`` pattern of numbers (``"{:.0f}"``, ``"{:+.1f}"``) or a callable
        value -> text; None: 4 significant digits
    text : left-aligned text column (names, labels) instead of right-aligned numbers
    """

    key: str | Callable[[Mapping[str, Any]], Any]
    header: str
    fmt: str | Callable[[Any], str] | None = None
    text: bool = False

    def value(self, row: Mapping[str, Any]) -> Any:
        return self.key(row) if callable(self.key) else row.get(self.key)


def swatch(colour: str) -> str:
    """A small square in ``colour`` (the scenario's colour in the charts)."""
    return f'<span class="sw" style="background:{esc(colour)}"></span>'


def html_table(rows: Iterable[Mapping[str, Any]], columns: Sequence[Column], *, caption: str | None = None,
               colours: Mapping[str, str] | None = None, css: str = "", header: bool = True) -> str:
    """An HTML table of ``rows``; the first column gets a colour swatch from ``colours``."""
    out = [f'<table class="{esc(css)}">' if css else "<table>"]
    if caption:
        out.append(f"<caption>{esc(caption)}</caption>")
    if header:
        out.append("<tr>" + "".join(f'<th class="{"l" if c.text else "n"}">{esc(c.header)}</th>' for c in columns)
                   + "</tr>")
    for row in rows:
        cells = []
        for i, c in enumerate(columns):
            text = esc(format_value(c.value(row), c.fmt))
            if i == 0 and colours is not None and str(c.value(row)) in colours:
                text = swatch(colours[str(c.value(row))]) + text
            cells.append(f'<td class="{"l" if c.text else "n"}">{text}</td>')
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</table>")
    return "\n".join(out)


def key_value_table(items: Iterable[tuple[str, Any]], *, caption: str | None = None, css: str = "kv") -> str:
    """A two-column table (name, value as text) for settings and provenance."""
    rows = [{"name": k, "value": plain_text(v) if not isinstance(v, str) else v} for k, v in items]
    return html_table(rows, (Column("name", "item", text=True), Column("value", "value", text=True)),
                      caption=caption, css=css, header=False)


def human_name(column: str) -> str:
    """Header of a machine column name: unit suffix in brackets, underscores as spaces.

    ``strength_linear_N`` -> ``strength linear (N)``, ``stiffness_N_per_mm`` ->
    ``stiffness (N/mm)``, ``material.a_mpa`` -> ``material a (MPa)``.
    """
    name, unit = str(column), None
    for suffix, u in UNIT_SUFFIXES:
        if name.endswith(suffix) and len(name) > len(suffix):
            name, unit = name[: -len(suffix)], u
            break
    name = re.sub(r"[_.]+", " ", name).strip()
    return f"{name} ({unit})" if unit else name


__all__ = ["MISSING", "Column", "esc", "format_value", "html_table", "human_name", "is_missing", "key_value_table",
           "plain_text", "significant", "swatch"]
