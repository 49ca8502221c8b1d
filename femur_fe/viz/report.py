"""Self-contained HTML reports: one file, images embedded as base64, tables, provenance.

One call writes the report of a run, of a comparison or of a sweep folder as a single HTML
file with its figures embedded.

The method in full (equations, parameters, choices, sources): ``docs/report.md``, section
``femur_fe.viz.report``.
"""
from __future__ import annotations

import base64
import datetime as _dt
import json
import logging
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from .._version import __version__
from ..errors import FemurFeError
from ..io import write_text_atomic
from ..io.results import as_result
from .charts import (
    _sweep_table,
    plot_load_displacement,
    plot_strength_gain,
    plot_strength_time,
    plot_sweep_scatter,
    plot_tornado,
    sensitivity_table,
)
from .charts import _table as read_table
from .palette import BASELINE_NAME, scenario_colours
from .tables import (
    MISSING,
    Column,
    esc,
    format_value,
    html_table,
    human_name,
    is_missing,
    key_value_table,
    plain_text,
)
from .views import FIELDS, clip_plane, plot, plot_comparison

log = logging.getLogger(__name__)

KINDS = ("run", "comparison", "sweep")
#: 3-D fields shown for each run (those absent from a result are noted and skipped)
RUN_FIELDS = ("von_mises", "risk", "density")
#: fields of the baseline/scenario views in comparison reports (scenario run sections skip them)
COMPARISON_FIELDS = ("density", "risk")
#: comparison fields drawn in a section (density inside the bone: grafts, trabecular change)
SECTION_FIELDS = ("density",)
#: file names of the charts :func:`write_comparison_report` saves beside the report
CHART_FILES = {"strength_gain_png": "strength_gain.png", "strength_per_gram_png": "strength_per_gram.png",
               "strength_vs_time_png": "strength_vs_time.png"}

_CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;max-width:1250px;color:#222;
line-height:1.4;padding:0 1em}
h1{border-bottom:2px solid #444;padding-bottom:.2em}h2{margin-top:1.6em;border-bottom:1px solid #bbb}
table{border-collapse:collapse;margin:.6em 0;font-size:.9em;max-width:100%}th,td{border:1px solid #ccc;
padding:3px 8px}th{background:#f0f0f0;vertical-align:bottom;font-weight:600}td.n,th.n{text-align:right}
td.n{white-space:nowrap;font-variant-numeric:tabular-nums}td.l,th.l{text-align:left}
tr>td.l:first-child{white-space:nowrap}table.kv td.l:last-child,table.code td{overflow-wrap:anywhere}
table.kv td.l:first-child{color:#444}table.code td{font-family:monospace;font-size:.95em}
caption{caption-side:bottom;text-align:left;font-size:.85em;color:#555;padding-top:.3em}
.sw{display:inline-block;width:.8em;height:.8em;margin-right:.4em;border:1px solid #333;vertical-align:-.05em}
img{max-width:100%;border:1px solid #ddd;margin:4px 0}figure{display:inline-block;margin:.3em;vertical-align:top;
max-width:100%}figure.chart{max-width:calc(50% - 1em)}figure.chart img{width:100%}
figcaption{font-size:.85em;color:#555}
.note{color:#8a4b00;background:#fff6e5;padding:.3em .6em;border-left:3px solid #e0a030}
p.foot{font-size:.85em;color:#444;margin-top:0}
pre{background:#f6f6f6;padding:.6em;overflow:auto;font-size:.8em;max-height:30em}
.meta{color:#666;font-size:.85em}
"""


# =========================================================================== HTML helpers
def _fmt(v: Any) -> str:
    """Cell text of a value without a column format (4 significant digits, en dash if missing)."""
    return format_value(v)


def _table(rows: Sequence[Sequence[Any]], header: Sequence[str] | None = None, left: int = 1) -> str:
    """A table of plain rows (the first ``left`` columns are text)."""
    header = list(header or [])
    rows = [list(r) for r in rows]
    n = max([len(header)] + [len(r) for r in rows]) if rows or header else 0
    cols = [Column(i, header[i] if i < len(header) else "", text=i < left) for i in range(n)]
    cols = [Column((lambda r, i=i: r[i] if i < len(r) else None), c.header, text=c.text) for i, c in enumerate(cols)]
    return html_table(rows, cols)


def _img(path: Path, caption: str, css: str = "") -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    mime = "image/svg+xml" if path.suffix == ".svg" else "image/png"
    cls = f' class="{css}"' if css else ""
    return (f'<figure{cls}><img src="data:{mime};base64,{data}" alt="{esc(caption)}">'
            f"<figcaption>{esc(caption)}</figcaption></figure>")


def _note(text: str) -> str:
    return f'<p class="note">{esc(text)}</p>'


def _foot(text: str) -> str:
    return f'<p class="foot">{esc(text)}</p>'


def _details(summary: str, content: Any) -> str:
    text = content if isinstance(content, str) else json.dumps(content, indent=2, default=str)
    return f"<details><summary>{esc(summary)}</summary><pre>{esc(text)}</pre></details>"


class _Progress:
    """Progress lines (``progress`` callback, else logging at INFO) with the time since the start."""

    def __init__(self, progress: Callable[[str], None] | None, views: int) -> None:
        self.say = progress or (lambda msg: log.info("%s", msg))
        self.t0 = time.perf_counter()
        self.views = views
        self.done = 0

    def section(self, what: str) -> None:
        self.say(f"report: {what} ({time.perf_counter() - self.t0:.1f} s)")

    def view(self, caption: str) -> None:
        self.done += 1
        self.say(f"report: 3-D view {self.done}/{self.views}, {caption} ({time.perf_counter() - self.t0:.1f} s)")


class _Images:
    """Renders figures into a folder and embeds them; notes failures once."""

    def __init__(self, tmp: Path, render_3d: bool, progress: _Progress) -> None:
        self.tmp = tmp
        self.n = 0
        self.render_3d = render_3d
        self.gl_error: str | None = None
        self.progress = progress
        self.kept: list[Path] = []

    def path(self, suffix: str = ".png") -> Path:
        self.n += 1
        return self.tmp / f"fig{self.n:03d}{suffix}"

    def plot2d(self, fn: Callable[[Path], Any], caption: str, keep: Path | None = None) -> str:
        """Draw with ``fn(path)`` (into ``keep`` when given, else a temporary file) and embed it."""
        p = keep if keep is not None else self.path()
        try:
            fn(p)
        except FemurFeError as exc:
            return _note(f"{caption}: not available ({exc})")
        if keep is not None:
            self.kept.append(keep)
        return _img(p, caption, "chart")

    def view3d(self, fn: Callable[[Path], Any], caption: str, wide: bool = False, short: str | None = None) -> str:
        """Render with ``fn(path)`` and embed it; ``short``: the progress line's text (default the caption)."""
        if not self.render_3d:
            return ""
        if self.gl_error is not None:
            return ""
        p = self.path()
        try:
            fn(p)
        except FemurFeError as exc:
            self.progress.view(f"{short or caption}: not available")
            return _note(f"{caption}: not available ({exc})")
        except Exception as exc:  # VTK/OpenGL failures: keep the report, say why the views are missing
            self.gl_error = f"{type(exc).__name__}: {exc}"
            log.warning("3-D rendering failed (%s); the report is written without 3-D views", self.gl_error)
            return _note(f"3-D views could not be rendered on this machine ({self.gl_error}); open the result "
                         "folders with `femur-fe view DIR` or ParaView instead")
        self.progress.view(short or caption)
        return _img(p, caption, "wide" if wide else "")


# =========================================================================== run sections
#: (summary key, name, unit, format) of the key numbers of a run
_KEY_NUMBERS = (
    ("stiffness_N_per_mm", "stiffness", "N/mm", "{:.0f}"),
    ("load_force_N", "force at the applied load", "N", "{:.0f}"),
    ("plate_displacement_mm", "loaded plate displacement", "mm", "{:.3g}"),
    ("strength_linear_N", "strength (linear)", "N", "{:.0f}"),
    ("strength_nonlinear_N", "strength (nonlinear)", "N", "{:.0f}"),
    ("impact_force_N", "fall impact force", "N", "{:.0f}"),
    ("factor_of_risk", "factor of risk (fall impact / strength)", "", "{:.2f}"),
    ("equilibrium_residual_N", "equilibrium residual", "N", "{:.1e}"),
    ("n_elements", "elements", "", "{:,}"),
    ("n_dofs", "degrees of freedom", "", "{:,}"),
)


def _strength_used_text(value: Any) -> str:
    """``"linear:max_principal_strain"`` -> ``"linear (max principal strain)"``."""
    if not isinstance(value, str):
        return plain_text(value)
    kind, _, crit = value.partition(":")
    return f"{kind} ({crit.replace('_', ' ')})" if crit else kind


def _param_text(key: str, value: Any) -> str:
    """``radius_mm``, 8 -> ``radius 8 mm``; ``percent_per_year``, 3.6 -> ``3.6 %/yr``; ``at``, node -> ``at node``."""
    if key == "percent_per_year":
        return f"{plain_text(value)} %/yr"
    if key == "percent":
        return f"{plain_text(value)} %"
    name = human_name(key)
    if name.endswith(")"):
        head, unit = name[:-1].rsplit(" (", 1)
        return f"{head} {plain_text(value)}" + ("" if isinstance(value, str) else f" {unit}")
    return f"{name} {plain_text(value)}"


def _criterion_text(crit: Any) -> str:
    """Failure criterion name with its parameters, e.g. ``max principal strain (tension 0.0073, ...)``."""
    if not isinstance(crit, Mapping):
        return plain_text(crit)
    name = str(crit.get("name", "")).replace("_", " ")
    params = {k: v for k, v in (crit.get("parameters") or {}).items() if not is_missing(v)}
    if not params:
        return name
    return f"{name} ({', '.join(_param_text(str(k), v) for k, v in params.items())})"


def _source_short(source: Any) -> str:
    """First reference of a classification source text (before its description)."""
    text = str(source or "")
    return text.split(" fragile")[0].split(";")[0].strip()


def _classification_rows(c: Mapping[str, Any]) -> list[tuple[str, Any, str, str]]:
    """Key-number rows (name, value, unit, format) of a ``classification`` summary entry."""
    rows: list[tuple[str, Any, str, str]] = [("classification", c.get("label"), "", "{}")]
    if c.get("band"):
        rows.append(("strength band", c.get("band"), "", "{}"))
    if c.get("threshold_N") is not None:
        who = ", ".join(str(x) for x in (c.get("site"), c.get("sex")) if x)
        rows.append((f"fragility threshold ({who})" if who else "fragility threshold", c.get("threshold_N"), "N",
                     "{:.0f}"))
    if c.get("strength_source"):
        rows.append(("strength compared with the threshold", _strength_used_text(c["strength_source"]), "", "{}"))
    if c.get("source"):
        rows.append(("classification source", c.get("source"), "", "{}"))
    return rows


def _run_section(label: str, res, images: _Images, fields: Sequence[str], window_size,
                 colours: Mapping[str, str] | None = None) -> str:
    s = res.summary
    parts = [f"<h2>Run: {esc(label)}</h2>",
             f'<p class="meta">folder {esc(res.path)}; case {esc(res.case_name)}; bone {esc(res.bone)}</p>']
    rows: list[tuple[str, Any, str, str]] = []
    for key, name, unit, fmt in _KEY_NUMBERS:
        v = s.get(key)
        if key == "impact_force_N" and v is None and isinstance(s.get("impact_force"), Mapping):
            v = s["impact_force"].get("force_N")
        if v is not None:
            rows.append((name, v, unit, fmt))
    if isinstance(s.get("classification"), Mapping):
        rows.extend(_classification_rows(s["classification"]))
    crit = s.get("criterion")
    if crit:
        rows.append(("failure criterion", _criterion_text(crit), "", "{}"))
    if s.get("strength_used"):
        rows.append(("strength used for the factor of risk and the classification",
                     _strength_used_text(s["strength_used"]), "", "{}"))
    if s.get("strength_used_note"):
        rows.append(("note on the strength used", s["strength_used_note"], "", "{}"))
    parts.append(html_table([{"q": n, "v": v if isinstance(v, str) else format_value(v, f), "u": u}
                             for n, v, u, f in rows],
                            (Column("q", "quantity", text=True), Column("v", "value", text=True),
                             Column("u", "unit", text=True))))
    rf = s.get("reaction_forces_N") or {}
    if rf:
        parts.append("<h3>Reaction forces on the bone (N)</h3>")
        rrows = [{"region": k.replace("_", " "), "fx": v[0], "fy": v[1], "fz": v[2],
                  "f": math.sqrt(sum(x * x for x in v))} for k, v in rf.items()]
        parts.append(html_table(rrows, (Column("region", "region", text=True), Column("fx", "Fx (N)", "{:.1f}"),
                                        Column("fy", "Fy (N)", "{:.1f}"), Column("fz", "Fz (N)", "{:.1f}"),
                                        Column("f", "|F| (N)", "{:.1f}"))))
    figs = []
    for f in fields:
        figs.append(images.view3d(lambda p, f=f: plot(res, f, screenshot=p, window_size=window_size),
                                  f"{label}: {FIELDS[f].label if f in FIELDS else f.replace('_', ' ')}",
                                  short=f"{label}, {f.replace('_', ' ')}"))
    if s.get("nonlinear_curve"):
        figs.append(images.plot2d(lambda p: plot_load_displacement([(label, res)], p, colours=colours),
                                  f"{label}: load against displacement of the loaded plate (N, mm)"))
    parts.append("\n".join(x for x in figs if x))
    inputs = s.get("inputs") or {}
    prov = []
    if inputs:
        prov.append(html_table([{"file": k, "sha": v} for k, v in sorted(inputs.items())],
                               (Column("file", "input file", text=True), Column("sha", "SHA-256", text=True)),
                               css="code"))
    else:
        prov.append(_note("no input files recorded (the model was built in memory)"))
    solver = s.get("solver")
    prov.append(key_value_table([("femur_fe version", s.get("femur_fe_version")),
                                 ("solver", solver.get("method") if isinstance(solver, Mapping) else solver)]))
    parts.append("<details><summary>Provenance: input files, solver report, material, resolved load case"
                 "</summary>" + "\n".join(prov))
    parts.append(_details("solver report (JSON)", solver))
    parts.append(_details("material (JSON)", s.get("material")))
    parts.append(_details("resolved load case (JSON)", s.get("case")))
    parts.append("</details>")
    return "\n".join(parts)


def _runs(run_dirs) -> list[tuple[str, Any]]:
    if run_dirs is None:
        return []
    items = list(run_dirs.items()) if isinstance(run_dirs, Mapping) else [(None, d) for d in run_dirs]
    out = []
    for label, d in items:
        res = as_result(d)
        out.append((str(label) if label is not None else res.name, res))
    return out


def _baseline_index(runs: Sequence[tuple[str, Any]]) -> int:
    names = [n for n, _ in runs]
    return names.index(BASELINE_NAME) if BASELINE_NAME in names else 0


def _run_fields(kind: str, runs, fields: Sequence[str]) -> list[list[str]]:
    """3-D fields of each run section: in comparisons the scenarios skip the fields of the change views."""
    if kind != "comparison" or len(runs) < 2:
        return [list(fields)] * len(runs)
    bi = _baseline_index(runs)
    return [list(fields) if i == bi else [f for f in fields if f not in COMPARISON_FIELDS]
            for i in range(len(runs))]


# =========================================================================== comparison
def _comparison_meta(comparison) -> dict[str, Any]:
    """Everything of comparison.json except its rows (empty for CSV files and in-memory rows)."""
    data = None
    if isinstance(comparison, (str, os.PathLike)):
        p = Path(comparison)
        if p.is_dir():
            p = p / "comparison.json"
        if p.suffix == ".json" and p.exists():
            data = json.loads(p.read_text(encoding="utf-8"))
    elif isinstance(comparison, Mapping):
        data = comparison
    if not isinstance(data, Mapping):
        return {}
    return {k: v for k, v in data.items() if k not in ("rows", "columns")}


def _operator_text(op: Mapping[str, Any]) -> str:
    """``{"type": "injection", "radius_mm": 8, ...}`` -> ``injection: radius 8 mm, ...``."""
    op = dict(op)
    kind = str(op.pop("type", "change")).replace("_", " ")
    parts = [_param_text(str(k), v) for k, v in op.items() if not is_missing(v)]
    return f"{kind}: {', '.join(parts)}" if parts else kind


def _bone_text(bone: Any) -> str:
    """Short name of a ``[bone]`` table (its ``name``, the bundled bone, or the mask/mesh file)."""
    if not isinstance(bone, Mapping):
        return plain_text(bone)
    if bone.get("name"):
        return str(bone["name"])
    if bone.get("bundled"):
        return f"bundled {bone['bundled']} ({bone.get('state') or 'osteoporotic'})"
    for key in ("mask", "mesh"):
        if bone.get(key):
            return Path(str(bone[key])).name
    return "bone"


def _calibration_text(cal: Any) -> str:
    """How the CT became density: a phantom line or the phantomless (internal) calibration; '' if unknown."""
    if not isinstance(cal, Mapping):
        return "" if cal is None else plain_text(cal)
    if cal.get("method") == "internal":
        lin = cal.get("hu_to_k2hpo4_linear") or {}
        text = "internal (phantomless"
        text += f", {cal['reference']})" if cal.get("reference") else ")"
        if cal.get("effective_energy_kev") is not None:
            text += f": effective energy {float(cal['effective_energy_kev']):.0f} keV"
        if cal.get("r_squared") is not None:
            text += f", R\u00b2 {float(cal['r_squared']):.4f}"
        if cal.get("tissues_used"):
            text += f", tissues {', '.join(str(t) for t in cal['tissues_used'])}"
        if lin.get("slope") is not None:
            text += (f"; close to K2HPO4 = {float(lin['slope']):.3g} g/cm\u00b3 per HU x HU + "
                     f"{float(lin['intercept']):.3g} g/cm\u00b3")
        return text
    if cal.get("slope") is None:
        return ""
    unit = str(cal.get("unit") or "g/cm3").replace("g/cm3", "g/cm\u00b3")
    text = (f"{cal.get('ct_density_type') or cal.get('mineral') or 'density'} = {float(cal['slope']):g} {unit} per "
            f"{cal.get('ct_unit') or 'HU'} x CT value + {float(cal.get('intercept') or 0.0):g} {unit}")
    if cal.get("mineral"):
        text += f" ({cal['mineral']})"
    if cal.get("source"):
        text += f"; {cal['source']}"
    return text


def _subject_text(subject: Any) -> str:
    if not isinstance(subject, Mapping):
        return MISSING
    bits = []
    if subject.get("sex"):
        bits.append(str(subject["sex"]))
    if subject.get("body_mass_kg") is not None:
        bits.append(f"{float(subject['body_mass_kg']):g} kg")
    if subject.get("height_cm") is not None:
        bits.append(f"{float(subject['height_cm']):g} cm")
    if subject.get("soft_tissue_mm") is not None:
        bits.append(f"trochanteric soft tissue {float(subject['soft_tissue_mm']):g} mm")
    return ", ".join(bits) or MISSING


def _threshold(classification: Any, strength_definition: str | None) -> tuple[float | None, str]:
    """(threshold N or None, label or the reason it is not drawn) for the strength-over-time chart."""
    if not isinstance(classification, Mapping) or classification.get("threshold_N") is None:
        return None, ("no fragility threshold: the classification needs the subject's sex "
                      "([subject] sex = \"female\" or \"male\" in the comparison file)")
    thr = float(classification["threshold_N"])
    used = str(classification.get("strength_source") or "").partition(":")[0]
    who = ", ".join(str(x) for x in (classification.get("site"), classification.get("sex")) if x)
    label = f"fragility threshold {thr:.0f} N ({who}; {_source_short(classification.get('source'))})"
    if strength_definition and used and used != strength_definition:
        return None, (f"the fragility threshold ({thr:.0f} N) applies to the {used} strength; the time course "
                      f"shows the {strength_definition} strength, so it is not drawn")
    return thr, label


def _per_gram(row: Mapping[str, Any]) -> Any:
    """Strength gained per gram of bone added (N/g) where bone was added; a text where it was lost."""
    m = row.get("added_mass_g")
    dn = row.get("strength_change_N")
    if is_missing(m) or is_missing(dn) or row.get("scenario") == BASELINE_NAME or m == 0:
        return None
    if m < 0:
        return "not a gain: bone lost"
    return float(dn) / float(m)


def _contribution_tables(rows: Sequence[Mapping[str, Any]], colours, method: str | None) -> str:
    with_c = [r for r in rows if isinstance(r.get("strength_contributions"), Mapping)]
    if not with_c:
        return ""
    zones = list(with_c[0]["strength_contributions"].get("zones") or {})
    comps = list(with_c[0]["strength_contributions"].get("compartments") or {})
    flat_n, flat_g = [], []
    for r in with_c:
        c = r["strength_contributions"]
        a = {"scenario": r["scenario"], "total": c.get("first_order_total_N"), "fe": c.get("fe_change_N")}
        b = {"scenario": r["scenario"]}
        for group, names in (("zones", zones), ("compartments", comps)):
            for z in names:
                d = (c.get(group) or {}).get(z) or {}
                a[f"{group}:{z}"] = d.get("strength_N")
                b[f"{group}:{z}"] = d.get("added_mass_g")
        b["total"] = sum(float(b[f"zones:{z}"]) for z in zones if not is_missing(b.get(f"zones:{z}")))
        flat_n.append(a)
        flat_g.append(b)
    zcols = [(f"zones:{z}", z.replace("_", " ")) for z in zones]
    ccols = [(f"compartments:{z}", z) for z in comps]
    cn = ([Column("scenario", "scenario", text=True)] + [Column(k, f"{h} (N)", "{:+.1f}") for k, h in zcols + ccols]
          + [Column("total", "first-order total (N)", "{:+.1f}"), Column("fe", "FE change (N)", "{:+.1f}")])
    cg = ([Column("scenario", "scenario", text=True)] + [Column(k, f"{h} (g)", "{:+.2f}") for k, h in zcols + ccols]
          + [Column("total", "total (g)", "{:+.2f}")])
    parts = ["<h3>Where the strength change comes from</h3>",
             html_table(flat_n, cn, colours=colours,
                        caption="Strength change by anatomical zone (nearest landmark) and by compartment "
                                "(cortical: density >= 0.35 g/cm\u00b3), first-order adjoint estimate, N; the "
                                "zones and the compartments are two splits of the same total."),
             html_table(flat_g, cg, colours=colours, caption="Bone mass added (+) or lost (-) in the same zones "
                                                              "and compartments, g.")]
    if method:
        parts.append(_foot("Method: " + " ".join(method.replace("``", "").split())))
    return "\n".join(parts)


def _comparison_section(comparison, runs, images: _Images, time_course, window_size,
                        colours: dict[str, str], chart_dir: Path | None = None) -> str:
    progress = images.progress
    parts = ["<h2>Scenario comparison</h2>"]
    meta = _comparison_meta(comparison)
    spec = meta.get("spec") if isinstance(meta.get("spec"), Mapping) else {}
    definition = meta.get("strength_definition") or meta.get("strength")
    base = runs[_baseline_index(runs)][1] if runs else None
    bsum = base.summary if base is not None else {}
    classification = bsum.get("classification")
    df = read_table(comparison, "comparison") if comparison is not None else None
    rows = [] if df is None else [{k: (None if is_missing(v) else v) for k, v in r.items()}
                                  for r in df.to_dict("records")]
    names = [str(r["scenario"]) for r in rows]
    reference = spec.get("reference")
    if reference not in names:
        reference = "standard_care" if "standard_care" in names else None
    strength_word = definition or "FE"

    # ---- set-up
    setup = []
    bone = spec.get("bone")
    if bone:
        setup.append(("bone", _bone_text(bone)))
    files = dict(bone) if isinstance(bone, Mapping) else {"ct": spec.get("ct")}
    for key, name in (("mesh", "mesh"), ("mask", "mask"), ("ct", "CT")):
        if files.get(key) and not files.get("bundled"):
            labels = files.get("labels") if key == "mask" else None
            setup.append((name, f"{files[key]}" + (f" (labels {plain_text(labels)})" if labels else "")))
    material = bsum.get("material") if isinstance(bsum.get("material"), Mapping) else {}
    cal = material.get("calibration") or (((spec.get("case") or {}).get("material") or {}).get("calibration")
                                          if isinstance(spec.get("case"), Mapping) else None)
    if files.get("ct") or files.get("bundled"):
        text = _calibration_text(cal)
        if text:
            setup.append(("CT calibration", text))
    case = spec.get("case") if isinstance(spec.get("case"), Mapping) else bsum.get("case") or {}
    if case.get("name") or (base is not None and base.case_name):
        setup.append(("load case", case.get("name") or base.case_name))
    crit = meta.get("criterion") or bsum.get("criterion")
    if crit:
        setup.append(("strength", f"{strength_word} FE strength, failure criterion {_criterion_text(crit)}"))
    if spec.get("subject") or bsum.get("subject"):
        setup.append(("subject", _subject_text(spec.get("subject") or bsum.get("subject"))))
    if isinstance(classification, Mapping) and classification.get("threshold_N") is not None:
        note = f" Note: {bsum['strength_used_note']}" if bsum.get("strength_used_note") else ""
        setup.append(("fragility threshold", f"{float(classification['threshold_N']):.0f} N: fragile when the "
                      f"{_strength_used_text(classification.get('strength_source'))} strength is at or below it "
                      f"({', '.join(str(x) for x in (classification.get('site'), classification.get('sex')) if x)}; "
                      f"{classification.get('source', '')}).{note}"))
    if reference:
        setup.append(("reference scenario", reference))
    if spec.get("time_points_months"):
        setup.append(("time points", ", ".join(f"{float(t):g}" for t in spec["time_points_months"]) + " months"))
    if meta.get("source"):
        setup.append(("comparison file", meta["source"]))
    if setup:
        parts.append(key_value_table(setup))

    # ---- scenarios
    scen = spec.get("scenarios") or []
    if scen:
        parts.append("<h3>Scenarios</h3>")
        srows = [{"scenario": sc.get("name"), "months": sc.get("months"), "density": sc.get("density_type"),
                  "change": "; ".join(_operator_text(op) for op in sc.get("operator", []) or []),
                  "description": sc.get("description") or MISSING} for sc in scen]
        parts.append(html_table(srows, (Column("scenario", "scenario", text=True),
                                        Column("months", "time (months)", "{:g}"),
                                        Column("density", "density type", text=True),
                                        Column("change", "density change applied", text=True),
                                        Column("description", "description", text=True)), colours=colours))

    # ---- tables
    if rows:
        parts.append("<h3>Strength</h3>")
        strength_cols = [Column("scenario", "scenario", text=True), Column("months", "time (months)", "{:g}"),
                         Column("strength_N", f"{strength_word} strength (N)", "{:.0f}"),
                         Column("strength_change_N", "change (N)", "{:+.0f}"),
                         Column("strength_change_percent", "change (%)", "{:+.1f}")]
        if reference:
            strength_cols.append(Column("strength_vs_reference_percent", f"against {reference} (%)", "{:+.1f}"))
        strength_cols += [Column("factor_of_risk", "factor of risk (fall impact / strength)", "{:.2f}"),
                          Column("classification", "classification", text=True)]
        strength_cols = [c for c in strength_cols if c.text or any(not is_missing(c.value(r)) for r in rows)
                         or c.key in ("strength_N",)]
        parts.append(html_table(rows, strength_cols, colours=colours))
        if all(is_missing(r.get("factor_of_risk")) and is_missing(r.get("classification")) for r in rows):
            parts.append(_foot("No factor of risk and no classification: both need the subject "
                               "([subject] sex, body_mass_kg, height_cm in the comparison file)."))
        parts.append("<h3>Bone and stiffness</h3>")
        bone_cols = [Column("scenario", "scenario", text=True),
                     Column("added_mass_g", "bone mass change (g)", "{:+.2f}"),
                     Column("vbmd_mg_cm3", "integral vBMD (mg/cm\u00b3)", "{:.1f}"),
                     Column("vbmd_change_percent", "vBMD change (%)", "{:+.1f}"),
                     Column("trabecular_vbmd_mg_cm3", "trabecular vBMD (mg/cm\u00b3)", "{:.1f}"),
                     Column("stiffness_N_per_mm", "stiffness (N/mm)", "{:.0f}"),
                     Column("stiffness_change_percent", "stiffness change (%)", "{:+.1f}"),
                     Column(_per_gram, "strength gained per gram of bone added (N/g)",
                            lambda v: v if isinstance(v, str) else f"{v:.0f}")]
        bone_cols = [c for c in bone_cols if c.text or any(not is_missing(c.value(r)) for r in rows)]
        parts.append(html_table(rows, bone_cols, colours=colours))
        lost = [r for r in rows if not is_missing(r.get("added_mass_g")) and r["added_mass_g"] < 0
                and not is_missing(r.get("strength_change_N"))]
        note = ("Strength gained per gram of bone added = strength change / bone mass added, for the scenarios "
                "that add bone.")
        for r in lost:
            note += (f" {r['scenario']} lost {-r['added_mass_g']:.2f} g of bone and changed strength by "
                     f"{r['strength_change_N']:+.0f} N: {abs(r['strength_change_N'] / r['added_mass_g']):.0f} N "
                     "per gram lost, which is not a gain.")
        parts.append(_foot(note))
        progress.section("tables")

        # ---- charts
        keep = (lambda key: chart_dir / CHART_FILES[key]) if chart_dir is not None else (lambda key: None)
        figs = [images.plot2d(lambda p: plot_strength_gain(df, p, reference=reference, colours=colours),
                              "Strength change of each scenario against the baseline (%)"
                              + (f"; hatched: the reference, {reference}" if reference else ""),
                              keep("strength_gain_png"))]
        if any(isinstance(_per_gram(r), float) for r in rows):
            per_gram_df = df.copy()
            per_gram_df["strength_gain_per_gram_N_per_g"] = [
                v if isinstance(v, float) else None for v in (_per_gram(r) for r in rows)]
            figs.append(images.plot2d(
                lambda p: plot_strength_gain(per_gram_df, p, metric="strength_gain_per_gram_N_per_g",
                                             reference=reference, colours=colours),
                "Strength gained per gram of bone added (N/g), for the scenarios that add bone",
                keep("strength_per_gram_png")))
        parts.append("\n".join(figs))
        progress.section("bar charts")
    else:
        keep = (lambda key: chart_dir / CHART_FILES[key]) if chart_dir is not None else (lambda key: None)

    # ---- time course
    if time_course is not None:
        tc = read_table(time_course, "strength time course") if not isinstance(time_course, Mapping) else None
        thr, thr_text = _threshold(classification, definition)
        if tc is not None and "scenario" in tc.columns:
            b = tc[tc["scenario"].astype(str) == BASELINE_NAME]
            sc_rows = tc[tc["scenario"].astype(str) != BASELINE_NAME]
            b_strength = float(b["strength_N"].iloc[0]) if len(b) and "strength_N" in b.columns else None
            several = sc_rows.groupby("scenario").size().max() > 1 if len(sc_rows) else False
            if several:
                parts.append("<h3>Strength over time</h3>")
                parts.append(images.plot2d(
                    lambda p: plot_strength_time(sc_rows, p, baseline=b_strength, colours=colours, threshold=thr,
                                                 threshold_label=thr_text if thr is not None else None,
                                                 title=f"{strength_word.capitalize()} strength over time (N)",
                                                 ylabel=f"{strength_word} strength (N)"),
                    f"{strength_word.capitalize()} strength of each scenario over time (N), with the untreated "
                    "baseline" + (f" and the {thr_text}" if thr is not None else ""), keep("strength_vs_time_png")))
                if thr is None:
                    parts.append(_foot(thr_text))
                elif bsum.get("strength_used_note"):
                    parts.append(_foot(f"Fragility threshold: {bsum['strength_used_note']}"))
            else:
                parts.append(_foot("No strength-over-time chart: no scenario was solved at several times "
                                   "(time_points_months in [comparison] and a time-dependent scenario)."))
        else:
            parts.append(images.plot2d(lambda p: plot_strength_time(time_course, p, colours=colours, threshold=thr),
                                       "Strength of each scenario over time (N)", keep("strength_vs_time_png")))
        progress.section("strength over time")

    parts.append(_contribution_tables(rows, colours, meta.get("contribution_method")))

    # ---- 3-D change views
    if len(runs) >= 2:
        bi = _baseline_index(runs)
        base_label, base_res = runs[bi]
        figs = []
        for label, res in runs:
            if res is base_res:
                continue
            for f in COMPARISON_FIELDS:
                section = f in SECTION_FIELDS
                where = f", section through the {clip_plane(base_res)[2]}" if section else ", outer surface"
                unit = {"density": "density (g/cm\u00b3)", "risk": "failure risk (demand / capacity)"}.get(f, f)
                figs.append(images.view3d(
                    lambda p, res=res, f=f, label=label, section=section: plot_comparison(
                        base_res, res, f, screenshot=p, labels=(base_label, label), clip=section,
                        window_size=(3 * window_size[0], window_size[1])),
                    f"{label} against {base_label}: {unit}{where}; left to right: {base_label}, {label}, change "
                    f"({label} - {base_label}) on a colour scale centred on zero", wide=True,
                    short=f"{label} against {base_label}, {f}"))
        parts.append("<h3>Baseline and scenarios in 3-D</h3>")
        parts.append("\n".join(x for x in figs if x))
    return "\n".join(p for p in parts if p)


# =========================================================================== sweeps
def _sweep_section(sweep, images: _Images, output: str) -> str:
    parts = ["<h2>Parameter sweep</h2>"]
    full = read_table(sweep, "sweep results")
    if "status" in full.columns:
        counts = full["status"].value_counts().to_dict()
        parts.append(_table(sorted(counts.items()), ("status", "tasks")))
    try:
        tab = sensitivity_table(sweep, output)
        parts.append("<h3>Sensitivity of " + esc(human_name(output)) + "</h3>")
        parts.append(html_table(tab.to_dict("records"),
                                (Column("input", "input", text=True), Column("low", "output at the low level"),
                                 Column("high", "output at the high level"), Column("swing", "swing (high - low)"),
                                 Column("spearman", "Spearman rho", "{:+.2f}"), Column("n_levels", "levels", "{:d}"))))
        parts.append(images.plot2d(lambda p: plot_tornado(sweep, p, output=output),
                                   f"Tornado chart: {human_name(output)} at the low and high levels of each input"))
        parts.append(images.plot2d(lambda p: plot_sweep_scatter(sweep, p, output=output),
                                   f"{human_name(output)} against each swept input"))
    except FemurFeError as exc:
        parts.append(_note(f"no sensitivity analysis: {exc}"))
    ok = _sweep_table(sweep) if "status" not in full.columns or (full["status"] == "ok").any() else full
    show = [c for c in ok.columns if c not in ("error", "worker", "host", "pid", "started_at", "finished_at",
                                                "task_seed", "sweep_seed", "attempt_id")][:14]
    parts.append("<h3>Results (first 50 rows)</h3>")
    import pandas as pd

    parts.append(html_table(ok[show].head(50).to_dict("records"),
                            [Column(c, human_name(c), text=not pd.api.types.is_numeric_dtype(ok[c])) for c in show]))
    if isinstance(sweep, (str, os.PathLike)):
        root = Path(sweep) if Path(sweep).is_dir() else Path(sweep).parent
        if (root / "sweep.json").exists():
            manifest = json.loads((root / "sweep.json").read_text(encoding="utf-8"))
            parts.append(_details("sweep specification and runs (sweep.json)",
                                  {k: v for k, v in manifest.items() if k != "tasks"}))
    return "\n".join(parts)


# =========================================================================== public API
def write_report(path: str | os.PathLike, *, kind: str | None = None, run_dirs=None, comparison=None,
                 sweep=None, title: str | None = None, time_course=None, fields: Sequence[str] = RUN_FIELDS,
                 output: str = "strength_linear_N", render_3d: bool = True,
                 window_size: Sequence[int] = (480, 360), progress: Callable[[str], None] | None = None,
                 chart_dir: str | os.PathLike | None = None) -> Path:
    """Write a self-contained HTML report (images embedded as base64); returns its path.

    Parameters
    ----------
    path : output ``.html`` (written atomically)
    kind : ``"run"``, ``"comparison"`` or ``"sweep"``; default from the arguments given
        (``sweep`` -> sweep, ``comparison`` -> comparison, else run)
    run_dirs : result folders (``result.vtu`` + ``summary.json``), a list or a mapping
        label -> folder. In a comparison the baseline is ``run_dirs[0]`` (or the entry
        labelled ``"baseline"``) and the others are scenarios on the same mesh.
    comparison : ``comparison.json`` / ``comparison.csv`` (or its folder, or rows)
    sweep : sweep folder (``results.parquet`` + ``sweep.json``), results file or DataFrame
    title : page title (default from the kind)
    time_course : strength over time per scenario (``timecourse.csv`` of
        :func:`femur_fe.studies.compare`, or the inputs of
        :func:`femur_fe.viz.charts.plot_strength_time`)
    fields : 3-D fields drawn for each run (in a comparison the scenarios skip the fields
        shown in the change views)
    output : sweep output column analysed (``strength_linear_N``, ``stiffness_N_per_mm``...)
    render_3d : False skips the PyVista views (tables and 2-D plots only)
    window_size : pixel size of each 3-D view (comparisons are three views wide)
    progress : called with one line per rendered 3-D view and per section (default:
        logging at INFO)
    chart_dir : folder where the comparison charts are also saved as PNG
        (:data:`CHART_FILES`); default: not saved
    """
    return _write_report(path, kind=kind, run_dirs=run_dirs, comparison=comparison, sweep=sweep, title=title,
                         time_course=time_course, fields=fields, output=output, render_3d=render_3d,
                         window_size=window_size, progress=progress, chart_dir=chart_dir)[0]


def _write_report(path, *, kind, run_dirs, comparison, sweep, title, time_course, fields, output, render_3d,
                  window_size, progress, chart_dir) -> tuple[Path, list[Path]]:
    """:func:`write_report`; also returns the charts saved into ``chart_dir``."""
    if kind is None:
        kind = "sweep" if sweep is not None else "comparison" if comparison is not None else "run"
    if kind not in KINDS:
        raise FemurFeError(f"kind must be one of {KINDS}, got {kind!r}")
    out = Path(path)
    if out.suffix.lower() not in (".html", ".htm"):
        raise FemurFeError(f"path must end in .html, got {str(path)!r}")
    t0 = time.perf_counter()
    say = progress or (lambda msg: log.info("%s", msg))
    say(f"report: reading {len(run_dirs) if run_dirs is not None else 0} result folder(s) for {out.name}")
    runs = _runs(run_dirs)
    if kind == "run" and not runs:
        raise FemurFeError("a run report needs run_dirs=[result folder, ...] (folders written by "
                           "femur_fe.run(..., out=DIR))")
    if kind == "comparison" and comparison is None and len(runs) < 2:
        raise FemurFeError("a comparison report needs comparison=PATH (comparison.json/csv) and/or run_dirs with a "
                           "baseline and at least one scenario")
    if kind == "sweep" and sweep is None:
        raise FemurFeError("a sweep report needs sweep=FOLDER (with results.parquet) or a results table")
    title = title or {"run": "femur_fe run report", "comparison": "femur_fe scenario comparison",
                      "sweep": "femur_fe parameter sweep"}[kind]
    run_fields = _run_fields(kind, runs, fields)
    n_views = sum(len(f) for f in run_fields)
    if kind == "comparison" and len(runs) >= 2:
        n_views += (len(runs) - 1) * len(COMPARISON_FIELDS)
    prog = _Progress(progress, n_views if render_3d else 0)
    prog.t0 = t0
    prog.section(f"{len(runs)} result folder(s) read; {n_views if render_3d else 0} 3-D views to render")
    names = [n for n, _ in runs]
    if comparison is not None:
        try:
            names = [str(s) for s in read_table(comparison, "comparison")["scenario"]] + names
        except (FemurFeError, KeyError):
            pass
    colours = scenario_colours(names)
    now = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    body = [f"<h1>{esc(title)}</h1>",
            f'<p class="meta">generated {now} by femur_fe {esc(__version__)}; units mm, N, MPa, g/cm\u00b3</p>']
    with tempfile.TemporaryDirectory(prefix="femur_fe_report_") as tmp:
        images = _Images(Path(tmp), render_3d, prog)
        if kind == "comparison":
            body.append(_comparison_section(comparison, runs, images, time_course, window_size, colours,
                                            None if chart_dir is None else Path(chart_dir)))
        if kind == "sweep":
            body.append(_sweep_section(sweep, images, output))
            prog.section("sweep")
        for (label, res), flds in zip(runs, run_fields):
            body.append(_run_section(label, res, images, flds, window_size, colours))
            prog.section(f"run {label}")
        versions = sorted({str(r.summary.get("femur_fe_version")) for _, r in runs})
        body.append("<h2>Provenance</h2>")
        body.append(key_value_table([("report written by femur_fe", __version__),
                                     ("results written by femur_fe", ", ".join(versions) or MISSING),
                                     ("result folders", ", ".join(str(r.path) for _, r in runs) or MISSING),
                                     ("comparison", str(comparison) if isinstance(comparison, (str, os.PathLike))
                                      else ("in memory" if comparison is not None else MISSING)),
                                     ("sweep", str(sweep) if isinstance(sweep, (str, os.PathLike)) else
                                      ("in memory" if sweep is not None else MISSING))]))
    doc = ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
           f"<title>{esc(title)}</title><style>{_CSS}</style></head><body>\n" + "\n".join(body) +
           "\n</body></html>\n")
    path = write_text_atomic(out, doc)
    prog.section(f"{out.name} written")
    return path, images.kept


def write_comparison_report(out_dir: str | os.PathLike, *, title: str | None = None,
                            progress: Callable[[str], None] | None = None, render_3d: bool = True,
                            window_size: Sequence[int] = (480, 360)) -> dict[str, Path]:
    """Write ``report.html`` of a comparison folder and save its charts as PNG beside it.

    The folder is the output of :func:`femur_fe.studies.compare` (``femur-fe compare`` and
    ``femur-fe demo``): ``comparison.json``, one result folder per row (``baseline/``,
    one per scenario) and optionally ``timecourse.csv``.

    Returns
    -------
    ``{"report_html": ..., "strength_gain_png": ..., "strength_per_gram_png": ...,
    "strength_vs_time_png": ...}`` (the charts that apply).
    """
    out = Path(out_dir)
    cj = out / "comparison.json"
    if not cj.is_file():
        raise FemurFeError(f"{cj} does not exist; a comparison folder is written by `femur-fe compare SPEC -o DIR` "
                           "(femur_fe.studies.compare)")
    data = json.loads(cj.read_text(encoding="utf-8"))
    names = [str(r.get("scenario")) for r in data.get("rows", [])]
    missing = [n for n in names if not (out / n / "summary.json").is_file()]
    if missing:
        raise FemurFeError(f"{out}: result folder(s) {missing} of comparison.json are missing; re-run the comparison")
    spec = data.get("spec") or {}
    case = (spec.get("case") or {}).get("name") if isinstance(spec.get("case"), Mapping) else None
    title = title or ("Scenario comparison: " + ", ".join(
        x for x in (_bone_text(spec.get("bone")) if spec.get("bone") else None, case) if x)).rstrip(": ")
    tc = out / "timecourse.csv"
    report, kept = _write_report(out / "report.html", kind="comparison", comparison=cj,
                                 run_dirs={n: out / n for n in names}, sweep=None, title=title,
                                 time_course=tc if tc.is_file() else None, fields=RUN_FIELDS,
                                 output="strength_linear_N", render_3d=render_3d, window_size=window_size,
                                 progress=progress, chart_dir=out)
    files = {k: out / v for k, v in CHART_FILES.items() if out / v in kept}
    files["report_html"] = report
    return files


__all__ = ["write_report", "write_comparison_report", "KINDS", "RUN_FIELDS", "COMPARISON_FIELDS", "CHART_FILES"]
