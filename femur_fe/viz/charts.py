"""2-D plots with matplotlib (Agg, no display needed): strength over time, gains, curves, sweeps.

Every function draws on its own :class:`matplotlib.figure.Figure` (no pyplot global state),
writes the file atomically (:func:`femur_fe.io.atomic_path`; format from the suffix:
``.png``, ``.svg``, ``.pdf``) and returns its path.

Inputs are the files other parts of femur_fe write, or their in-memory equivalents:

* :func:`plot_strength_time`: a table with one row per (scenario, time): columns
  ``scenario``, ``months`` (or ``t_months``) and ``strength_N`` -- a CSV/Parquet path, a
  pandas DataFrame, a list of dicts, or a mapping ``{scenario: {"months": [...],
  "strength_N": [...]}}``. ``comparison.csv`` rows with several times per scenario fit.
* :func:`plot_strength_gain`: ``comparison.json`` / ``comparison.csv`` of
  :func:`femur_fe.studies.compare.write_comparison` (or its rows).
* :func:`plot_load_displacement`: result folders / summaries with ``nonlinear_curve``.
* :func:`plot_tornado`, :func:`plot_sweep_scatter`, :func:`sensitivity_table`: a sweep's
  ``results.parquet`` / ``results.csv`` (folder, file or DataFrame; rows with
  ``status != "ok"`` are dropped).

Units: N, N/mm, mm, months.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from ..errors import FemurFeError
from ..io import atomic_path
from ..io.results import StoredResult
from .palette import BASELINE_COLOUR, resolve_colours
from .tables import human_name

log = logging.getLogger(__name__)

#: figure size (inches) and resolution of the default figures (640 x 420 px)
FIGSIZE = (6.4, 4.2)
DPI = 100
#: columns of a sweep table that are never inputs or outputs
SWEEP_META_COLUMNS = ("task_id", "index", "status", "error", "attempts", "run", "seconds", "started_at",
                      "finished_at", "worker", "host", "pid", "cache_hits", "cache_misses", "sweep_seed",
                      "task_seed")


def _figure(figsize=FIGSIZE):
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, dpi=DPI, layout="constrained")
    return fig


def _save(fig, path: str | os.PathLike) -> Path:
    out = Path(path)
    fmt = out.suffix.lower().lstrip(".")
    if fmt not in ("png", "svg", "pdf"):
        raise FemurFeError(f"plot path must end in .png, .svg or .pdf, got {str(path)!r}")
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format=fmt, dpi=DPI, metadata={"Software": None} if fmt == "png" else None)
    return out


def _table(data: Any, what: str):
    """A pandas DataFrame from a DataFrame, CSV/Parquet/JSON path, list of dicts or comparison JSON."""
    import pandas as pd

    if isinstance(data, pd.DataFrame):
        return data.copy()
    if isinstance(data, (str, os.PathLike)):
        p = Path(data)
        if p.is_dir():
            for name in ("results.parquet", "results.csv", "comparison.json", "comparison.csv"):
                if (p / name).exists():
                    p = p / name
                    break
            else:
                raise FemurFeError(f"{p} holds no results.parquet/results.csv/comparison.json/comparison.csv "
                                   f"for the {what}")
        if not p.exists():
            raise FemurFeError(f"{what}: file {p} does not exist")
        if p.suffix == ".parquet":
            return pd.read_parquet(p)
        if p.suffix == ".csv":
            return pd.read_csv(p)
        if p.suffix == ".json":
            d = json.loads(p.read_text(encoding="utf-8"))
            rows = d.get("rows") if isinstance(d, dict) else d
            if not isinstance(rows, list):
                raise FemurFeError(f"{p}: expected {{'rows': [...]}} (comparison.json) or a list of rows")
            return pd.DataFrame(rows)
        raise FemurFeError(f"{what}: unsupported file {p} (use .csv, .parquet or .json)")
    if isinstance(data, Mapping) and "rows" in data:
        return pd.DataFrame(list(data["rows"]))
    if isinstance(data, (list, tuple)):
        return pd.DataFrame(list(data))
    raise FemurFeError(f"{what}: expected a DataFrame, a file path or a list of rows, got {type(data).__name__}")


def _need(df, cols: Iterable[str], what: str) -> None:
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise FemurFeError(f"{what}: column(s) {missing} missing; columns present: {list(df.columns)}")


# =========================================================================== regeneration
#: colour of the fragility threshold line and of the fragile zone below it
THRESHOLD_COLOUR = "#b2182b"


def plot_strength_time(data: Any, path: str | os.PathLike, *, strength: str = "strength_N",
                       time: str | None = None, scenario: str = "scenario", baseline: float | None = None,
                       title: str = "Strength over time (N)", colours: Mapping[str, str] | None = None,
                       threshold: float | None = None, threshold_label: str | None = None,
                       ylabel: str = "strength (N)") -> Path:
    """Strength against time, one line per scenario.

    Parameters
    ----------
    data : rows (scenario, time, strength): DataFrame, CSV/Parquet path, list of dicts, or
        ``{scenario: {"months": [...], "strength_N": [...]}}``
    path : output image
    strength : strength column, N
    time : time column (default ``months``, else ``t_months``), months
    baseline : draw the untreated strength as a horizontal reference line, N
    colours : scenario -> colour (:func:`femur_fe.viz.palette.scenario_colours` of the whole
        comparison); default: the palette in the order of the rows
    threshold : fragility threshold of the classification, N: drawn as a line with the
        fragile zone below it shaded
    threshold_label : legend text of the threshold (default "fragility threshold <N> N")
    """
    import pandas as pd

    if isinstance(data, Mapping) and "rows" not in data:
        rows = []
        for name, course in data.items():
            t = np.asarray(course.get("months", course.get("t_months")), dtype=float)
            s = np.asarray(course.get(strength), dtype=float)
            if t.shape != s.shape or t.ndim != 1:
                raise FemurFeError(f"scenario {name!r}: months and {strength} must be 1-D and equally long, got "
                                   f"{t.shape} and {s.shape}")
            rows += [{scenario: name, "months": a, strength: b} for a, b in zip(t, s)]
        df = pd.DataFrame(rows)
    else:
        df = _table(data, "strength time course")
    tcol = time or ("months" if "months" in df.columns else "t_months")
    _need(df, (scenario, tcol, strength), "strength time course")
    df = df.dropna(subset=[tcol, strength])
    if df.empty:
        raise FemurFeError("strength time course: no rows with both a time and a strength")
    if threshold is not None and not (np.isfinite(threshold) and threshold > 0):
        raise FemurFeError(f"threshold must be a strength > 0 N, got {threshold!r}")
    cols = resolve_colours(pd.unique(df[scenario].astype(str)), colours)
    fig = _figure()
    ax = fig.add_subplot()
    for name, grp in df.groupby(scenario, sort=False):
        g = grp.sort_values(tcol)
        t, y = g[tcol].to_numpy(float), g[strength].to_numpy(float)
        ax.plot(t, y, marker="o", ms=4, label=str(name), color=cols[str(name)])
        ax.annotate(f"{y[-1]:.0f}", (t[-1], y[-1]), textcoords="offset points", xytext=(5, 0), va="center",
                    fontsize=7, color=cols[str(name)])
    if baseline is not None:
        ax.axhline(float(baseline), color=BASELINE_COLOUR, ls="--", lw=1,
                   label=f"baseline (untreated) {float(baseline):.0f}")
    if threshold is not None:
        ax.axhline(float(threshold), color=THRESHOLD_COLOUR, ls=":", lw=1.5,
                   label=threshold_label or f"fragility threshold {float(threshold):.0f}")
        lo, hi = ax.get_ylim()
        lo = min(lo, float(threshold) - 0.05 * (hi - lo))
        ax.axhspan(lo, float(threshold), color=THRESHOLD_COLOUR, alpha=0.07, lw=0)
        ax.set_ylim(lo, hi)
        ax.annotate("fragile", (1.0, float(threshold)), xycoords=("axes fraction", "data"), xytext=(-4, -3),
                    textcoords="offset points", ha="right", va="top", fontsize=7, color=THRESHOLD_COLOUR)
    ax.margins(x=0.08)
    ax.set_xlabel("time (months)")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, frameon=False)
    return _save(fig, path)


#: title and value-label format of each metric of :func:`plot_strength_gain`
GAIN_METRICS = {
    "strength_change_percent": ("Strength change against the baseline (%)", "strength change (%)", "{:+.1f} %"),
    "strength_change_N": ("Strength change against the baseline (N)", "strength change (N)", "{:+.0f} N"),
    "strength_gain_per_gram_N_per_g": ("Strength gained per gram of bone added (N/g)",
                                       "strength gained per gram added (N/g)", "{:.0f} N/g"),
}


def plot_strength_gain(comparison: Any, path: str | os.PathLike, *, metric: str = "strength_change_percent",
                       reference: str | None = "standard_care", title: str | None = None,
                       colours: Mapping[str, str] | None = None) -> Path:
    """Bar chart of one change of each scenario against the baseline, one colour per scenario.

    Parameters
    ----------
    comparison : ``comparison.json``/``.csv`` path, its folder, or rows (first row = baseline)
    metric : ``strength_change_percent`` (%), ``strength_change_N`` (N) or
        ``strength_gain_per_gram_N_per_g`` (N/g). Strength per gram is drawn only for
        scenarios that added bone (``added_mass_g > 0``): for a scenario that lost bone the
        ratio is strength lost per gram lost, not a gain; those scenarios are named under
        the chart with what they lost.
    reference : scenario drawn hatched as the reference (standard care), if present
    colours : scenario -> colour (default: :func:`femur_fe.viz.palette.scenario_colours` of
        the rows)
    """
    import pandas as pd

    df = _table(comparison, "comparison")
    _need(df, ("scenario", metric), "comparison")
    cols = resolve_colours(df["scenario"].astype(str), colours)
    rows = df.iloc[1:] if len(df) > 1 else df  # row 0 is the baseline
    left_out = []
    if metric == "strength_gain_per_gram_N_per_g" and "added_mass_g" in rows.columns:
        mass = pd.to_numeric(rows["added_mass_g"], errors="coerce")
        lost = rows[mass < 0]
        for _, r in lost.iterrows():
            dn = pd.to_numeric(r.get("strength_change_N"), errors="coerce")
            strength = "" if dn is None or not np.isfinite(dn) else (
                f", {-float(dn):.0f} N of strength" if dn < 0 else f", strength {float(dn):+.0f} N")
            left_out.append(f"{r['scenario']} lost {-float(r['added_mass_g']):.2f} g of bone{strength}")
        rows = rows[mass > 0]
    rows = rows[pd.to_numeric(rows[metric], errors="coerce").notna()]
    if rows.empty:
        raise FemurFeError(f"comparison: no scenario has a value for {metric!r}"
                           + (f" ({'; '.join(left_out)})" if left_out else ""))
    names = [str(s) for s in rows["scenario"]]
    vals = rows[metric].to_numpy(float)
    head, ylabel, fmt = GAIN_METRICS.get(metric, (metric, metric, "{:.3g}"))
    fig = _figure()
    ax = fig.add_subplot()
    bars = ax.bar(range(len(vals)), vals, color=[cols[n] for n in names], edgecolor="black", lw=0.6)
    for b, n in zip(bars, names):
        if reference is not None and n == reference:
            b.set_hatch("//")
    ax.bar_label(bars, labels=[fmt.format(v) for v in vals], fontsize=8, padding=2)
    ax.axhline(0.0, color="black", lw=0.8)
    ticks = [f"{n}\n(reference)" if reference is not None and n == reference else n for n in names]
    ax.set_xticks(range(len(vals)), ticks, rotation=30 if len(vals) > 3 else 0,
                  ha="right" if len(vals) > 3 else "center")
    ax.margins(y=0.15)
    ax.set_ylabel(ylabel)
    ax.set_title(title or head)
    ax.grid(True, axis="y", alpha=0.3)
    if left_out:
        fig.text(0.01, 0.005, "not drawn (a loss per gram lost is not a gain): " + "; ".join(left_out),
                 fontsize=7, color="0.3", ha="left", va="bottom", wrap=True)
        fig.get_layout_engine().set(rect=(0, 0.05, 1, 0.95))
    return _save(fig, path)


# =========================================================================== load-displacement
def _curve_of(item: Any) -> tuple[str, np.ndarray, np.ndarray, float | None]:
    label = None
    if isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str):
        label, item = item
    if isinstance(item, (str, os.PathLike)):
        p = Path(item)
        summary_path = p / "summary.json" if p.is_dir() else p
        if not summary_path.exists():
            raise FemurFeError(f"{summary_path} does not exist; a result folder is written by femur_fe.run(..., "
                               "out=DIR)")
        summary = json.loads(summary_path.read_text(encoding="utf-8"))
        label = label or (p.name if p.is_dir() else p.parent.name)
        where = str(summary_path)
    elif isinstance(item, StoredResult):
        summary, label, where = item.summary, label or item.name, str(item.path)
    elif isinstance(item, Mapping):
        summary, where = item, "summary"
        label = label or str(item.get("case_name", "result"))
    else:
        raise FemurFeError(f"expected a result folder, summary.json, StoredResult or summary dict, got "
                           f"{type(item).__name__}")
    curve = summary.get("nonlinear_curve")
    if not curve:
        raise FemurFeError(f"{where} has no nonlinear_curve; it is written by the nonlinear analysis "
                           "(femur_fe.run(..., nonlinear=True) / `femur-fe run --nonlinear`)")
    d = np.asarray(curve.get("displacement_mm"), dtype=float)
    f = np.asarray(curve.get("force_N"), dtype=float)
    if d.ndim != 1 or d.shape != f.shape or d.size < 2:
        raise FemurFeError(f"{where}: nonlinear_curve needs equally long displacement_mm and force_N lists (>= 2 "
                           f"points), got {d.shape} and {f.shape}")
    peak = summary.get("strength_nonlinear_N")
    return label, d, f, None if peak is None else float(peak)


def plot_load_displacement(results: Any, path: str | os.PathLike, *, title: str = "Load-displacement (N, mm)",
                           colours: Mapping[str, str] | None = None) -> Path:
    """Force against displacement of the loaded plate from the nonlinear analysis.

    Parameters
    ----------
    results : one or several result folders / summary.json paths / summary dicts /
        (label, item) pairs, each with ``nonlinear_curve`` {displacement_mm, force_N}
    path : output image

    The peak (``strength_nonlinear_N`` when present, else the curve maximum) is marked.
    ``colours``: label -> colour (default: :func:`femur_fe.viz.palette.scenario_colours` of the labels).
    """
    items = results if isinstance(results, (list, tuple)) and not (
        len(results) == 2 and isinstance(results[0], str) and not Path(results[0]).exists()) else [results]
    fig = _figure()
    ax = fig.add_subplot()
    curves = [_curve_of(item) for item in items]
    cols = resolve_colours([c[0] for c in curves], colours)
    for label, d, f, peak in curves:
        line, = ax.plot(d, f, lw=1.5, label=label, color=cols[label])
        k = int(np.argmax(f))
        ax.plot([d[k]], [peak if peak is not None else f[k]], marker="o", color=line.get_color(), ms=6)
        ax.annotate(f"{(peak if peak is not None else f[k]):.0f} N", (d[k], f[k]), textcoords="offset points",
                    xytext=(4, 4), fontsize=8)
    ax.set_xlabel("displacement (mm)")
    ax.set_ylabel("force (N)")
    ax.set_title(title)
    ax.set_xlim(left=0)
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, frameon=False)
    return _save(fig, path)


# =========================================================================== sweeps
def _sweep_table(data: Any):
    df = _table(data, "sweep results")
    if "status" in df.columns:
        df = df[df["status"] == "ok"]
    if df.empty:
        raise FemurFeError("sweep results: no successful rows (status == 'ok') to plot")
    return df


def _sweep_inputs(df, data: Any, inputs: Sequence[str] | None, output: str) -> list[str]:
    if inputs is not None:
        _need(df, inputs, "sweep results")
        return list(inputs)
    names: list[str] = []
    root = Path(data) if isinstance(data, (str, os.PathLike)) else None
    manifest = (root if root is not None and root.is_dir() else root.parent if root is not None else None)
    if manifest is not None and (manifest / "sweep.json").exists():
        try:
            m = json.loads((manifest / "sweep.json").read_text(encoding="utf-8"))
            for t in m.get("tasks", []) or []:
                for k in (t.get("params") or {}):
                    if k not in names:
                        names.append(k)
        except (json.JSONDecodeError, AttributeError) as exc:
            log.warning("sweep.json unreadable (%s); inputs taken from the column names", exc)
    if not names:  # parameters are TOML key paths (material.a_mpa) or the special mesh/state
        names = [c for c in df.columns if ("." in c and not c.startswith("out.")) or c in ("mesh", "state")]
    names = [c for c in names if c in df.columns and c != output and c not in SWEEP_META_COLUMNS]
    if not names:
        raise FemurFeError("sweep results: cannot tell the input columns; pass inputs=[...] (the swept "
                           f"parameter columns); columns present: {list(df.columns)}")
    return names


def sensitivity_table(data: Any, output: str = "strength_linear_N", *, inputs: Sequence[str] | None = None):
    """One-at-a-time style sensitivity of ``output`` to each swept input (for tornado charts).

    For each input, ``low`` / ``high`` are the mean output over the rows where the input
    is at its lowest / highest level (discrete inputs with <= 10 levels) or in its lowest /
    highest third (continuous inputs, e.g. Latin-hypercube sweeps). ``centre`` is the mean
    output over all rows; ``spearman`` the rank correlation of input and output.
    Non-numeric inputs (mesh, state) are compared by level (low = the level with the
    smallest mean output).

    Returns a DataFrame (input, low, high, swing = high - low, spearman, n_levels) sorted by
    |swing|, largest first.
    """
    import pandas as pd
    from scipy.stats import spearmanr

    df = _sweep_table(data)
    _need(df, (output,), "sweep results")
    names = _sweep_inputs(df, data, inputs, output)
    y = pd.to_numeric(df[output], errors="coerce")
    rows = []
    for name in names:
        x = df[name]
        ok = y.notna() & x.notna()
        xs, ys = x[ok], y[ok]
        levels = xs.nunique()
        if levels < 2:
            continue
        numeric = pd.api.types.is_numeric_dtype(xs)
        if not numeric:
            means = ys.groupby(xs.astype(str)).mean()
            low, high = float(means.min()), float(means.max())
            rho = float("nan")
        else:
            xv = xs.astype(float)
            if levels <= 10:
                low = float(ys[xv == xv.min()].mean())
                high = float(ys[xv == xv.max()].mean())
            else:
                q1, q2 = np.quantile(xv, [1 / 3, 2 / 3])
                low, high = float(ys[xv <= q1].mean()), float(ys[xv >= q2].mean())
            rho = float(spearmanr(xv, ys).statistic)
        rows.append({"input": name, "low": low, "high": high, "swing": high - low, "spearman": rho,
                     "n_levels": int(levels)})
    if not rows:
        raise FemurFeError(f"sweep results: no input varies in the successful rows (inputs {names})")
    out = pd.DataFrame(rows)
    out["centre"] = float(y.mean())
    return out.reindex(out["swing"].abs().sort_values(ascending=False).index).reset_index(drop=True)


def plot_tornado(data: Any, path: str | os.PathLike, *, output: str = "strength_linear_N",
                 inputs: Sequence[str] | None = None, title: str | None = None, max_inputs: int = 12) -> Path:
    """Tornado chart: how far ``output`` moves from its mean between low and high levels of each input.

    ``data``: sweep folder, results.parquet/.csv or DataFrame; see :func:`sensitivity_table`.
    Bars: blue from the mean to the output at the input's low level, orange to the high level.
    """
    tab = sensitivity_table(data, output, inputs=inputs).head(max_inputs)
    centre = float(tab["centre"].iloc[0])
    fig = _figure((6.4, max(2.6, 0.45 * len(tab) + 1.4)))
    ax = fig.add_subplot()
    ypos = np.arange(len(tab))[::-1]
    ax.barh(ypos, tab["low"] - centre, left=centre, color="#1f77b4", label="input low", edgecolor="black", lw=0.5)
    ax.barh(ypos, tab["high"] - centre, left=centre, color="#ff7f0e", label="input high", edgecolor="black", lw=0.5)
    ax.axvline(centre, color="black", lw=0.8)
    ax.set_yticks(ypos, list(tab["input"]))
    ax.set_xlabel(f"{human_name(output)}, mean {centre:.4g}")
    ax.set_title(title or f"Sensitivity of {human_name(output)}")
    ax.grid(True, axis="x", alpha=0.3)
    ax.legend(fontsize=8, frameon=False, loc="lower right")
    return _save(fig, path)


def plot_sweep_scatter(data: Any, path: str | os.PathLike, *, output: str = "strength_linear_N",
                       inputs: Sequence[str] | None = None, colour: str | None = None,
                       title: str | None = None, max_inputs: int = 6) -> Path:
    """Scatter of ``output`` against each swept input (one panel per input, Spearman rho in the title).

    ``colour``: optional column used to colour the points (e.g. a second input).
    """
    import pandas as pd

    df = _sweep_table(data)
    _need(df, (output,), "sweep results")
    names = _sweep_inputs(df, data, inputs, output)[:max_inputs]
    if colour is not None:
        _need(df, (colour,), "sweep results")
    n = len(names)
    ncol = min(n, 3)
    nrow = int(np.ceil(n / ncol))
    fig = _figure((3.2 * ncol + 0.4, 2.8 * nrow + 0.4))
    axes = fig.subplots(nrow, ncol, squeeze=False)
    y = pd.to_numeric(df[output], errors="coerce").to_numpy(float)
    c = None if colour is None else pd.to_numeric(df[colour], errors="coerce").to_numpy(float)
    tab = sensitivity_table(df, output, inputs=names).set_index("input") if n else None
    for k, name in enumerate(names):
        ax = axes[k // ncol][k % ncol]
        x = df[name]
        if pd.api.types.is_numeric_dtype(x):
            sc = ax.scatter(x.to_numpy(float), y, s=14, c=c, cmap="viridis" if c is not None else None,
                            edgecolor="none")
        else:
            cats = sorted(x.astype(str).unique())
            idx = x.astype(str).map({v: i for i, v in enumerate(cats)}).to_numpy(float)
            sc = ax.scatter(idx, y, s=14, c=c, cmap="viridis" if c is not None else None, edgecolor="none")
            ax.set_xticks(range(len(cats)), [Path(v).name for v in cats], rotation=30, ha="right", fontsize=7)
        rho = tab.loc[name, "spearman"] if tab is not None and name in tab.index else float("nan")
        ax.set_title(f"{name}" + ("" if not np.isfinite(rho) else f"  (rho = {rho:+.2f})"), fontsize=9)
        ax.set_xlabel(human_name(name), fontsize=8)
        ax.set_ylabel(human_name(output), fontsize=8)
        ax.grid(True, alpha=0.3)
    for k in range(n, nrow * ncol):
        axes[k // ncol][k % ncol].set_visible(False)
    if c is not None:
        fig.colorbar(sc, ax=axes, label=colour, shrink=0.8)
    fig.suptitle(title or f"{human_name(output)} against the swept inputs", fontsize=10)
    return _save(fig, path)


__all__ = ["GAIN_METRICS", "THRESHOLD_COLOUR", "plot_strength_time", "plot_strength_gain", "plot_load_displacement", "plot_tornado",
           "plot_sweep_scatter", "sensitivity_table"]
