"""Self-contained HTML reports: one file, images embedded as base64, tables, provenance.

One call covers the three kinds of output femur_fe writes::

    femur_fe.viz.write_report(out / "report.html", run_dirs=[out / "baseline", out / "teriparatide"],
                          comparison=out / "comparison.json", title="Regeneration scenarios")

* ``kind="run"`` (default when only ``run_dirs`` are given): for each result folder, the key
  numbers (stiffness, strength, factor of risk, classification), the reaction forces, 3-D
  views (von Mises, failure risk, density by default), the load-displacement curve when the
  nonlinear analysis ran, and provenance (input files with SHA-256, femur_fe version,
  solver report, resolved load case).
* ``kind="comparison"`` (default when ``comparison`` is given): the comparison table
  (``comparison.json``/``.csv`` of :func:`femur_fe.studies.table.write_comparison`), the strength
  gain bar charts, an optional strength-over-time chart (``time_course``), side-by-side 3-D
  views with difference maps for every scenario against the baseline (``run_dirs[0]`` is the
  baseline, or the entry named ``"baseline"`` of a mapping), then the run sections.
* ``kind="sweep"`` (default when ``sweep`` is given): status counts, the sensitivity table,
  tornado chart, scatter panels, the first rows of the results and the sweep manifest.

3-D views are rendered off-screen (no display needed). If the machine cannot render at
all (no OpenGL), the report is still written, with a note saying why the views are
missing.
"""
from __future__ import annotations

import base64
import datetime as _dt
import html
import json
import logging
import math
import os
import tempfile
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
from .views import plot, plot_comparison

log = logging.getLogger(__name__)

KINDS = ("run", "comparison", "sweep")
#: 3-D fields shown for each run (those absent from a result are noted and skipped)
RUN_FIELDS = ("von_mises", "risk", "density")
#: fields of the baseline/scenario views in comparison reports
COMPARISON_FIELDS = ("density", "risk")

_CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;max-width:1250px;color:#222;
line-height:1.4;padding:0 1em}
h1{border-bottom:2px solid #444;padding-bottom:.2em}h2{margin-top:1.6em;border-bottom:1px solid #bbb}
table{border-collapse:collapse;margin:.6em 0;font-size:.9em}th,td{border:1px solid #ccc;padding:3px 8px;
text-align:right}th{background:#f0f0f0}td.l,th.l{text-align:left}img{max-width:100%;border:1px solid #ddd;
margin:4px}figure{display:inline-block;margin:.3em;vertical-align:top}figcaption{font-size:.85em;color:#555}
.note{color:#8a4b00;background:#fff6e5;padding:.3em .6em;border-left:3px solid #e0a030}
pre{background:#f6f6f6;padding:.6em;overflow:auto;font-size:.8em;max-height:30em}
.meta{color:#666;font-size:.85em}
"""


# =========================================================================== HTML helpers
def _esc(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        if not math.isfinite(v):
            return "-"
        a = abs(v)
        if v == 0:
            return "0"
        if not 1e-3 <= a < 1e7:
            return f"{v:.3e}"
        text = f"{v:.{max(0, 3 - int(math.floor(math.log10(a))))}f}"  # 4 significant digits, no exponent
        return text.rstrip("0").rstrip(".") if "." in text else text
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_fmt(x) for x in v) + "]"
    return str(v)


def _table(rows: Sequence[Sequence[Any]], header: Sequence[str] | None = None, left: int = 1) -> str:
    out = ["<table>"]
    if header:
        out.append("<tr>" + "".join(f'<th class="{"l" if i < left else ""}">{_esc(h)}</th>'
                                    for i, h in enumerate(header)) + "</tr>")
    for r in rows:
        out.append("<tr>" + "".join(f'<td class="{"l" if i < left else ""}">{_esc(_fmt(v))}</td>'
                                    for i, v in enumerate(r)) + "</tr>")
    out.append("</table>")
    return "\n".join(out)


def _img(path: Path, caption: str) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    mime = "image/svg+xml" if path.suffix == ".svg" else "image/png"
    return (f'<figure><img src="data:{mime};base64,{data}" alt="{_esc(caption)}">'
            f"<figcaption>{_esc(caption)}</figcaption></figure>")


def _note(text: str) -> str:
    return f'<p class="note">{_esc(text)}</p>'


def _details(summary: str, content: Any) -> str:
    text = content if isinstance(content, str) else json.dumps(content, indent=2, default=str)
    return f"<details><summary>{_esc(summary)}</summary><pre>{_esc(text)}</pre></details>"


class _Images:
    """Renders figures into a temporary folder and embeds them; notes failures once."""

    def __init__(self, tmp: Path, render_3d: bool) -> None:
        self.tmp = tmp
        self.n = 0
        self.render_3d = render_3d
        self.gl_error: str | None = None

    def path(self, suffix: str = ".png") -> Path:
        self.n += 1
        return self.tmp / f"fig{self.n:03d}{suffix}"

    def plot2d(self, fn: Callable[[Path], Any], caption: str) -> str:
        p = self.path()
        try:
            fn(p)
        except FemurFeError as exc:
            return _note(f"{caption}: not available ({exc})")
        return _img(p, caption)

    def view3d(self, fn: Callable[[Path], Any], caption: str) -> str:
        if not self.render_3d:
            return ""
        if self.gl_error is not None:
            return ""
        p = self.path()
        try:
            fn(p)
        except FemurFeError as exc:
            return _note(f"{caption}: not available ({exc})")
        except Exception as exc:  # VTK/OpenGL failures: keep the report, say why the views are missing
            self.gl_error = f"{type(exc).__name__}: {exc}"
            log.warning("3-D rendering failed (%s); the report is written without 3-D views", self.gl_error)
            return _note(f"3-D views could not be rendered on this machine ({self.gl_error}); open the result "
                         "folders with `femur-fe view DIR` or ParaView instead")
        return _img(p, caption)


# =========================================================================== sections
_KEY_NUMBERS = (
    ("stiffness_N_per_mm", "stiffness", "N/mm"),
    ("load_force_N", "force at the applied load", "N"),
    ("plate_displacement_mm", "loaded plate displacement", "mm"),
    ("strength_linear_N", "strength (linear)", "N"),
    ("strength_nonlinear_N", "strength (nonlinear)", "N"),
    ("impact_force_N", "fall impact force", "N"),
    ("factor_of_risk", "factor of risk", "-"),
    ("classification", "classification", ""),
    ("equilibrium_residual_N", "equilibrium residual", "N"),
    ("n_elements", "elements", ""),
    ("n_dofs", "degrees of freedom", ""),
)


def _run_section(label: str, res, images: _Images, fields: Sequence[str], window_size) -> str:
    s = res.summary
    parts = [f"<h2>Run: {_esc(label)}</h2>",
             f'<p class="meta">folder {_esc(res.path)}; case {_esc(res.case_name)}; bone {_esc(res.bone)}</p>']
    rows = []
    for key, name, unit in _KEY_NUMBERS:
        v = s.get(key)
        if key == "impact_force_N" and v is None and isinstance(s.get("impact_force"), Mapping):
            v = s["impact_force"].get("force_N")
        if v is not None:
            rows.append((name, v, unit))
    crit = s.get("criterion")
    if crit:
        rows.append(("failure criterion", crit.get("name") if isinstance(crit, Mapping) else crit, ""))
    if s.get("strength_used"):
        rows.append(("strength used for the factor of risk and the classification", s["strength_used"], ""))
    parts.append(_table(rows, ("quantity", "value", "unit")))
    rf = s.get("reaction_forces_N") or {}
    if rf:
        parts.append("<h3>Reaction forces (N, force on the bone)</h3>")
        parts.append(_table([(k, *v, math.sqrt(sum(x * x for x in v))) for k, v in rf.items()],
                            ("region", "Fx", "Fy", "Fz", "|F|")))
    figs = []
    for f in fields:
        figs.append(images.view3d(lambda p, f=f: plot(res, f, screenshot=p, window_size=window_size),
                                  f"{label}: {f.replace('_', ' ')}"))
    if s.get("nonlinear_curve"):
        figs.append(images.plot2d(lambda p: plot_load_displacement([(label, res)], p), f"{label}: load-displacement"))
    parts.append("\n".join(x for x in figs if x))
    parts.append("<h3>Provenance</h3>")
    inputs = s.get("inputs") or {}
    if inputs:
        parts.append(_table(sorted(inputs.items()), ("input file", "sha256"), left=2))
    else:
        parts.append(_note("no input files recorded (the model was built in memory)"))
    parts.append(_table([("femur_fe version", s.get("femur_fe_version")),
                         ("solver", (s.get("solver") or {}).get("method") if isinstance(s.get("solver"), Mapping)
                          else s.get("solver"))], ("item", "value"), left=2))
    parts.append(_details("solver report", s.get("solver")))
    parts.append(_details("material", s.get("material")))
    parts.append(_details("resolved load case", s.get("case")))
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


def _comparison_section(comparison, runs, images: _Images, time_course, window_size) -> str:
    parts = ["<h2>Scenario comparison</h2>"]
    if comparison is not None:
        df = read_table(comparison, "comparison")
        cols = [c for c in df.columns]
        parts.append(_table([[None if (isinstance(v, float) and not math.isfinite(v)) else v for v in r]
                             for r in df.itertuples(index=False)], cols))
        figs = [images.plot2d(lambda p: plot_strength_gain(df, p), "strength change vs baseline (%)")]
        if "strength_gain_per_gram_N_per_g" in df.columns and df["strength_gain_per_gram_N_per_g"].notna().any():
            figs.append(images.plot2d(lambda p: plot_strength_gain(df, p, metric="strength_gain_per_gram_N_per_g"),
                                      "strength gained per gram of bone added"))
        parts.append("\n".join(figs))
        if isinstance(comparison, (str, os.PathLike)) and Path(comparison).suffix == ".json":
            meta = json.loads(Path(comparison).read_text(encoding="utf-8"))
            extra = {k: v for k, v in meta.items() if k not in ("rows", "columns")}
            if extra:
                parts.append(_details("comparison metadata", extra))
    if time_course is not None:
        parts.append(images.plot2d(lambda p: plot_strength_time(time_course, p), "strength over time"))
    if len(runs) >= 2:
        names = [n for n, _ in runs]
        bi = names.index("baseline") if "baseline" in names else 0
        base_label, base = runs[bi]
        figs = []
        for label, res in runs:
            if res is base:
                continue
            for f in COMPARISON_FIELDS:
                figs.append(images.view3d(
                    lambda p, res=res, f=f, label=label: plot_comparison(
                        base, res, f, screenshot=p, labels=(base_label, label),
                        window_size=(3 * window_size[0], window_size[1])),
                    f"{label} vs {base_label}: {f} (left to right: baseline, scenario, change)"))
        parts.append("<h3>Baseline and scenarios</h3>")
        parts.append("\n".join(x for x in figs if x))
    return "\n".join(parts)


def _sweep_section(sweep, images: _Images, output: str) -> str:
    parts = ["<h2>Parameter sweep</h2>"]
    full = read_table(sweep, "sweep results")
    if "status" in full.columns:
        counts = full["status"].value_counts().to_dict()
        parts.append(_table(sorted(counts.items()), ("status", "tasks")))
    try:
        tab = sensitivity_table(sweep, output)
        parts.append("<h3>Sensitivity of " + _esc(output) + "</h3>")
        parts.append(_table(tab[["input", "low", "high", "swing", "spearman", "n_levels"]].itertuples(index=False),
                            ("input", "output at low", "output at high", "swing", "Spearman rho", "levels")))
        parts.append(images.plot2d(lambda p: plot_tornado(sweep, p, output=output), f"tornado chart of {output}"))
        parts.append(images.plot2d(lambda p: plot_sweep_scatter(sweep, p, output=output),
                                   f"{output} against each input"))
    except FemurFeError as exc:
        parts.append(_note(f"no sensitivity analysis: {exc}"))
    ok = _sweep_table(sweep) if "status" not in full.columns or (full["status"] == "ok").any() else full
    show = [c for c in ok.columns if c not in ("error", "worker", "host", "pid", "started_at", "finished_at",
                                                "task_seed", "sweep_seed", "attempt_id")][:14]
    parts.append("<h3>Results (first 50 rows)</h3>")
    parts.append(_table([list(r) for r in ok[show].head(50).itertuples(index=False)], show))
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
                 window_size: Sequence[int] = (480, 360)) -> Path:
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
    time_course : strength over time per scenario for :func:`femur_fe.viz.charts.plot_strength_time`
    fields : 3-D fields drawn for each run
    output : sweep output column analysed (``strength_linear_N``, ``stiffness_N_per_mm``...)
    render_3d : False skips the PyVista views (tables and 2-D plots only)
    window_size : pixel size of each 3-D view (comparisons are three views wide)
    """
    if kind is None:
        kind = "sweep" if sweep is not None else "comparison" if comparison is not None else "run"
    if kind not in KINDS:
        raise FemurFeError(f"kind must be one of {KINDS}, got {kind!r}")
    out = Path(path)
    if out.suffix.lower() not in (".html", ".htm"):
        raise FemurFeError(f"path must end in .html, got {str(path)!r}")
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
    now = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    body = [f"<h1>{_esc(title)}</h1>",
            f'<p class="meta">generated {now} by femur_fe {_esc(__version__)}; units mm, N, MPa, g/cm^3</p>']
    with tempfile.TemporaryDirectory(prefix="femur_fe_report_") as tmp:
        images = _Images(Path(tmp), render_3d)
        if kind == "comparison":
            body.append(_comparison_section(comparison, runs, images, time_course, window_size))
        if kind == "sweep":
            body.append(_sweep_section(sweep, images, output))
        for label, res in runs:
            body.append(_run_section(label, res, images, fields, window_size))
        versions = sorted({str(r.summary.get("femur_fe_version")) for _, r in runs})
        body.append("<h2>Provenance</h2>")
        body.append(_table([("report written by femur_fe", __version__),
                            ("results written by femur_fe", ", ".join(versions) or "-"),
                            ("result folders", ", ".join(str(r.path) for _, r in runs) or "-"),
                            ("comparison", str(comparison) if isinstance(comparison, (str, os.PathLike)) else
                             ("in memory" if comparison is not None else "-")),
                            ("sweep", str(sweep) if isinstance(sweep, (str, os.PathLike)) else
                             ("in memory" if sweep is not None else "-"))], ("item", "value"), left=2))
    doc = ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
           f"<title>{_esc(title)}</title><style>{_CSS}</style></head><body>\n" + "\n".join(body) +
           "\n</body></html>\n")
    return write_text_atomic(out, doc)


__all__ = ["write_report", "KINDS", "RUN_FIELDS", "COMPARISON_FIELDS"]
