"""Tests of femur_fe.viz.report.write_report: self-contained HTML from real results.

Runs, comparison and sweep inputs are real (block results of the run pipeline, a
comparison written by femur_fe.studies.compare, a serial sweep of the column task). Checks:
the file is self-contained (every image a decodable base64 PNG, no external references),
the numbers and provenance (input hashes, version, resolved case) appear, and errors are
clear.
"""
from __future__ import annotations

import base64
import copy
import hashlib
import io
import json
import re

import numpy as np
import pytest

iio = pytest.importorskip("imageio.v3")

from test_plotting import content_fraction, run_block  # noqa: E402
from test_report_render import REPR, cell_texts  # noqa: E402

import femur_fe  # noqa: E402
from femur_fe.errors import FemurFeError  # noqa: E402
from femur_fe.studies.compare import ScenarioRecord, comparison_rows, write_comparison  # noqa: E402

IMG = re.compile(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"')


def images(doc: str) -> list[np.ndarray]:
    out = []
    for b64 in IMG.findall(doc):
        out.append(iio.imread(io.BytesIO(base64.b64decode(b64)), extension=".png")[..., :3])
    return out


def assert_self_contained(doc: str) -> None:
    assert doc.startswith("<!DOCTYPE html>") and doc.rstrip().endswith("</html>")
    assert not re.search(r'(src|href)="(?!data:)', doc), "external reference in the report"
    bad = [c for c in cell_texts(doc) if REPR.search(c)]
    assert not bad, f"table cells holding a Python value: {bad[:3]}"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    d = tmp_path_factory.mktemp("rep")
    # the model records its input file with its hash, as Model.from_ct does for the CT
    src = d / "density_source.txt"
    src.write_text("block density: 0.15 + 0.1 exp(-r^2/60) g/cm^3\n")
    inputs = {str(src): hashlib.sha256(src.read_bytes()).hexdigest()}
    run_block(d / "baseline", inputs=inputs)
    run_block(d / "denser_left", left_factor=1.3, inputs=inputs)
    s = {k: json.loads((d / k / "summary.json").read_text()) for k in ("baseline", "denser_left")}
    rows = comparison_rows(ScenarioRecord.from_summary("baseline", s["baseline"]),
                           [ScenarioRecord.from_summary("denser_left", s["denser_left"])])
    write_comparison(rows, d, meta={"strength": "linear"})
    return d, s, inputs


def test_comparison_report(runs, tmp_path):
    d, s, inputs = runs
    out = femur_fe.viz.write_report(tmp_path / "report.html", run_dirs=[d / "baseline", d / "denser_left"],
                                comparison=d / "comparison.json", title="Block scenarios", window_size=(240, 180))
    doc = out.read_text(encoding="utf-8")
    assert_self_contained(doc)
    assert "<title>Block scenarios</title>" in doc
    # comparison table: both scenarios and the strength change in percent, to 0.1 %
    pct = 100 * (s["denser_left"]["strength_linear_N"] / s["baseline"]["strength_linear_N"] - 1)
    assert f">{pct:+.1f}<" in doc and "denser_left" in doc
    # provenance: input hash, version, resolved case, solver
    path, sha = next(iter(inputs.items()))
    assert sha in doc and path in doc
    assert f"femur_fe {femur_fe.__version__}" in doc
    assert "resolved load case" in doc and "&quot;name&quot;: &quot;block&quot;" in doc
    # figures: gain chart + 2 comparison views (density, risk) + 3 fields of the baseline + the scenario's
    # von Mises (its density and risk are in the comparison views) = 7, all with content
    imgs = images(doc)
    assert len(imgs) == 1 + 2 + 3 + 1
    assert all(content_fraction(im) > 0.03 for im in imgs)
    assert sum(im.shape[1] == 3 * 240 for im in imgs) == 2  # the side-by-side views are three panels wide


def test_run_report_without_3d(runs, tmp_path):
    d, s, _ = runs
    out = femur_fe.viz.write_report(tmp_path / "run.html", run_dirs={"base": d / "baseline"}, render_3d=False)
    doc = out.read_text(encoding="utf-8")
    assert_self_contained(doc)
    # key numbers in whole N/mm and N
    assert "Run: base" in doc and f">{s['baseline']['stiffness_N_per_mm']:.0f}<" in doc
    assert f">{s['baseline']['strength_linear_N']:.0f}<" in doc
    assert images(doc) == []


def test_sweep_report(tmp_path):
    from femur_fe.studies.sweep import COLUMN_CASE, SweepSpec, run_sweep

    base = copy.deepcopy(COLUMN_CASE)
    base["geometry"] = {"size_mm": [10.0, 10.0, 20.0], "divisions": [2, 2, 4]}
    spec = SweepSpec(base=base, parameters={"density.scale": {"values": [0.8, 1.2]},
                                            "loading.angle_deg": {"values": [0.0, 20.0]}}, method="grid")
    run_sweep(spec, tmp_path / "sw", scheduler="serial", progress=False)
    out = femur_fe.viz.write_report(tmp_path / "sweep.html", sweep=tmp_path / "sw", output="stiffness_N_per_mm")
    doc = out.read_text(encoding="utf-8")
    assert_self_contained(doc)
    assert "Sensitivity of stiffness (N/mm)" in doc and "density.scale" in doc
    assert len(images(doc)) == 2  # tornado + scatter
    assert "sweep.json" in doc


def test_report_errors(runs, tmp_path):
    d, _, _ = runs
    with pytest.raises(FemurFeError, match="kind must be one of"):
        femur_fe.viz.write_report(tmp_path / "x.html", kind="movie", run_dirs=[d / "baseline"])
    with pytest.raises(FemurFeError, match="run_dirs"):
        femur_fe.viz.write_report(tmp_path / "x.html")
    with pytest.raises(FemurFeError, match=r"\.html"):
        femur_fe.viz.write_report(tmp_path / "x.pdf", run_dirs=[d / "baseline"])
    with pytest.raises(FemurFeError, match="does not exist"):
        femur_fe.viz.write_report(tmp_path / "x.html", run_dirs=[tmp_path / "missing"])
    assert not (tmp_path / "x.html").exists()
