"""The comparison report as a reader sees it: rendered in headless Chromium.

A real comparison (:func:`femur_fe.studies.compare`, which ends with the report) on a coarse
parametric femur (``make_femur(element_size=7)``, density rising towards the head) in the
sideways fall, with a subject (so the classification and its fragility threshold exist)
and three scenarios: a bone loss, a uniform gain and a time-dependent gain solved at 0 and
12 months.

Chromium (Debian package ``chromium``) opens a copy of ``report.html`` at 1280 px with a
script appended that opens every ``<details>`` and writes the page width and, for every
table, its right edge and scroll width into the DOM; ``--dump-dom`` returns it. No table
may reach past the page or scroll, and no cell may hold a Python representation. Without
Chromium the test skips, unless ``FEMUR_FE_REQUIRE_TOOLS=1`` (CI) makes it fail.

The other checks read the files: one colour per scenario in the tables and in both saved
charts, the fragility threshold line in the strength-over-time chart, per-gram
efficiency only where bone was added, progress lines, ``run_info.json`` listing the
report, and no VTK "bad X server connection" warning when rendering without a display.

``test_report_of_a_clinical_vertebra`` (slow, real data from ../shared/data) repeats the Chromium
and cell checks on L3 of the TotalSegmentator example CT, meshed from its mask with the
phantomless (internal) calibration.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

iio = pytest.importorskip("imageio.v3")
pytest.importorskip("pyvista")

import femur_fe  # noqa: E402
from femur_fe.viz.charts import THRESHOLD_COLOUR  # noqa: E402
from femur_fe.viz.palette import scenario_colours  # noqa: E402
from test_plotting import colour_pixels, hex_rgb  # noqa: E402

HERE = Path(__file__).resolve().parent
PAGE_WIDTH = 1280
#: text that only a Python repr or an unformatted missing value puts in a cell
REPR = re.compile(r"\{'|\[\{|\{\"|\bNone\b|\bnan\b|\bNaN\b|\binf\b|<built-in|object at 0x")

#: appended to a copy of the report: open every <details>, measure, write the numbers into the DOM
MEASURE_JS = """
<script>
for (const d of document.querySelectorAll('details')) d.open = true;
const page = document.documentElement.clientWidth;
const body = document.body.getBoundingClientRect();
const pad = parseFloat(getComputedStyle(document.body).paddingRight);
const out = {page: page, doc_scroll: document.documentElement.scrollWidth, body_right: body.right - pad, tables: []};
document.querySelectorAll('table').forEach((t, i) => {
  const r = t.getBoundingClientRect();
  out.tables.push({i: i, left: r.left, right: r.right, scroll: t.scrollWidth, client: t.clientWidth,
                   head: (t.querySelector('tr') || t).innerText.slice(0, 80)});
});
const pre = document.createElement('pre');
pre.id = 'femur-fe-layout';
pre.textContent = JSON.stringify(out);
document.body.appendChild(pre);
</script>
"""


def require_tool(name: str) -> str:
    """Path of the executable ``name``; skip without it, fail when FEMUR_FE_REQUIRE_TOOLS=1 (CI)."""
    path = shutil.which(name)
    if path is None:
        msg = f"{name} is not installed (Debian: apt-get install {name})"
        if os.environ.get("FEMUR_FE_REQUIRE_TOOLS") == "1":
            pytest.fail(msg + "; FEMUR_FE_REQUIRE_TOOLS=1 forbids skipping")
        pytest.skip(msg)
    return path


class Cells(HTMLParser):
    """Text of every table cell (td/th) of a document."""

    def __init__(self) -> None:
        super().__init__()
        self.cells: list[str] = []
        self._depth = 0

    def handle_starttag(self, tag, attrs):
        if tag in ("td", "th"):
            self._depth += 1
            self.cells.append("")

    def handle_endtag(self, tag):
        if tag in ("td", "th"):
            self._depth -= 1

    def handle_data(self, data):
        if self._depth > 0:
            self.cells[-1] += data


def cell_texts(doc: str) -> list[str]:
    p = Cells()
    p.feed(doc)
    return [c.strip() for c in p.cells]


@pytest.fixture(scope="module")
def comparison(tmp_path_factory):
    """A comparison folder written by femur_fe.studies.compare (report included) and its progress lines."""
    from femur_fe.bone.bundled import make_femur
    from femur_fe.io import write_mesh

    d = tmp_path_factory.mktemp("cmp")
    bone = make_femur(element_size=7.0)
    z = bone.mesh.cell_centroids()[:, 2]
    rho = np.clip(0.3 + 0.5 * np.exp(z / 80.0), 0.2, 1.2)  # apparent density rising towards the head, g/cm^3
    write_mesh(d / "femur.vtu", bone.mesh.with_cell_data(density=rho))
    spec = {
        "schema_version": 1, "case": "sideways_fall", "bone": {"mesh": str(d / "femur.vtu")},
        "subject": {"sex": "female", "body_mass_kg": 65.0, "height_cm": 162.0},
        "comparison": {"reference": "uniform_5", "time_points_months": [0.0, 12.0]},
        "scenario": [
            {"name": "loss_2", "density_type": "apparent", "description": "uniform bone loss",
             "operator": [{"type": "uniform", "percent": -2.0}]},
            {"name": "uniform_5", "density_type": "apparent", "operator": [{"type": "uniform", "percent": 5.0}]},
            {"name": "gain_3_per_year", "months": 12.0, "density_type": "apparent",
             "operator": [{"type": "annual_change", "percent_per_year": 3.0}]},
        ],
    }
    lines: list[str] = []
    res = femur_fe.compare(femur_fe.studies.load_comparison(spec), d / "out", progress=lines.append)
    return d / "out", res, lines


def check_layout_in_chromium(report: Path, tmp_path: Path) -> dict:
    """Open ``report`` in headless Chromium at 1280 px; assert that no table leaves the text column."""
    chromium = require_tool("chromium")
    doc = report.read_text(encoding="utf-8")
    probe = tmp_path / "probe.html"
    probe.write_text(doc.replace("</body>", MEASURE_JS + "</body>"), encoding="utf-8")
    run = subprocess.run([chromium, "--headless", "--disable-gpu", "--no-sandbox", "--hide-scrollbars",
                          f"--window-size={PAGE_WIDTH},900", "--dump-dom", probe.as_uri()],
                         capture_output=True, text=True, encoding="utf-8", errors="replace", timeout=120)
    m = re.search(r'<pre id="femur-fe-layout">(.*?)</pre>', run.stdout, re.S)
    assert m, f"chromium returned no layout (exit {run.returncode}): {run.stderr[-2000:]}"
    layout = json.loads(m.group(1).replace("&quot;", '"').replace("&amp;", "&").replace("&lt;", "<")
                        .replace("&gt;", ">"))
    page = layout["page"]
    assert page == PAGE_WIDTH
    assert layout["doc_scroll"] <= page, "the page scrolls sideways"
    assert len(layout["tables"]) >= 8  # set-up, scenarios, strength, bone, 2 contribution tables, runs, provenance
    assert layout["body_right"] <= page
    for t in layout["tables"]:
        assert t["right"] <= layout["body_right"] + 0.5, (
            f"table {t['i']} ({t['head']!r}) ends at {t['right']} px, past the text column "
            f"({layout['body_right']} px) of a {page} px page")
        assert t["scroll"] <= t["client"] + 1, f"table {t['i']} ({t['head']!r}) scrolls: {t['scroll']} px"
    # the headless render itself: a screenshot of the first screen has content (not a blank page)
    shot = tmp_path / "shot.png"
    subprocess.run([chromium, "--headless", "--disable-gpu", "--no-sandbox", "--hide-scrollbars",
                    f"--window-size={PAGE_WIDTH},1600", f"--screenshot={shot}", probe.as_uri()],
                   capture_output=True, timeout=120)
    img = iio.imread(shot)[..., :3]
    assert img.shape[1] == PAGE_WIDTH and (img < 200).any(axis=-1).mean() > 0.02
    return layout


def test_report_fits_the_page_in_chromium(comparison, tmp_path):
    out, _, _ = comparison
    check_layout_in_chromium(out / "report.html", tmp_path)


def test_cells_are_text_not_python(comparison):
    out, res, _ = comparison
    doc = (out / "report.html").read_text(encoding="utf-8")
    cells = cell_texts(doc)
    assert len(cells) > 100
    bad = [c for c in cells if REPR.search(c)]
    assert not bad, f"cells holding a Python repr or an unformatted missing value: {bad[:5]}"
    # human headers with units, not column names
    for header in ("strength (N)", "change (%)", "bone mass change (g)", "stiffness (N/mm)",
                   "strength gained per gram of bone added (N/g)", "factor of risk (fall impact / strength)"):
        assert any(header in c for c in cells), header
    assert "strength_change_percent" not in cells and "strength_contributions" not in doc
    # numbers rounded to what they mean: the baseline strength in whole newtons
    base = res.rows[0]["strength_N"]
    assert f"{base:.0f}" in cells and f"{base:.3f}" not in doc


def test_one_colour_per_scenario_and_honest_per_gram(comparison):
    out, res, _ = comparison
    doc = (out / "report.html").read_text(encoding="utf-8")
    names = [r["scenario"] for r in res.rows]
    colours = scenario_colours(names)
    assert len(set(colours.values())) == len(names)
    # tables: the swatch of each scenario has its colour
    for name in names:
        assert re.search(rf'background:{re.escape(colours[name])}"></span>{re.escape(name)}<', doc), name
    # both saved charts draw each scenario in its colour (the bars and the lines)
    gain = iio.imread(out / "strength_gain.png")[..., :3]
    course = iio.imread(out / "strength_vs_time.png")[..., :3]
    for name in names[1:]:
        assert colour_pixels(gain, hex_rgb(colours[name]), 12) > 200, f"{name} bar"
    assert colour_pixels(course, hex_rgb(colours["gain_3_per_year"]), 12) > 50
    # the fragility threshold of the run's classification is drawn (dotted line + shaded zone label)
    c = res.baseline.strength_summary["classification"]
    assert c["threshold_N"] > 0
    assert colour_pixels(course, hex_rgb(THRESHOLD_COLOUR), 25) > 30
    assert f"fragility threshold {c['threshold_N']:.0f} N" in doc
    # per gram only where bone was added; the loss is named as a loss, not a gain
    rows = {r["scenario"]: r for r in res.rows}
    assert rows["loss_2"]["added_mass_g"] < 0 and rows["loss_2"]["strength_gain_per_gram_N_per_g"] is None
    assert rows["uniform_5"]["strength_gain_per_gram_N_per_g"] == pytest.approx(
        rows["uniform_5"]["strength_change_N"] / rows["uniform_5"]["added_mass_g"], rel=1e-12)
    assert "not a gain: bone lost" in cell_texts(doc)
    assert (out / "strength_per_gram.png").exists()
    # every chart is titled by what it shows, with its unit (figure captions)
    captions = re.findall(r"<figcaption>(.*?)</figcaption>", doc)
    assert any("(%)" in t for t in captions) and any("(N/g)" in t for t in captions)
    assert any("over time (N)" in t for t in captions)


def test_compare_writes_the_report_with_progress(comparison):
    out, res, lines = comparison
    info = json.loads((out / "run_info.json").read_text())
    assert Path(info["files"]["report_html"]) == out / "report.html" == res.files["report_html"]
    for key in ("strength_gain_png", "strength_vs_time_png"):
        assert Path(info["files"][key]).exists()
    views = [x for x in lines if x.startswith("report: 3-D view")]
    # 3 scenarios x (density, risk) change views + baseline (3 fields) + 3 scenarios (von Mises)
    assert len(views) == 3 * 2 + 3 + 3 and views[-1].startswith("report: 3-D view 12/12")
    assert lines.index(views[0]) < lines.index(next(x for x in lines if "report.html written" in x))
    assert len(re.findall(r'<img src="data:image/png;base64,', (out / "report.html").read_text())) == 12 + 3


def test_no_x_server_warning_off_screen(comparison, tmp_path):
    out, _, _ = comparison
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY", "VTK_DEFAULT_OPENGL_WINDOW")}
    code = ("import sys; from femur_fe.viz.views import plot; "
            f"plot({str(out / 'baseline')!r}, 'density', screenshot={str(tmp_path / 'v.png')!r}, "
            "window_size=(200, 150)); import os; print(os.environ.get('VTK_DEFAULT_OPENGL_WINDOW'))")
    # outside the source tree, so that the installed package (with its compiled kernels) is imported
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, encoding="utf-8",
                         errors="replace", env=env, timeout=300, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-2000:]
    assert (tmp_path / "v.png").stat().st_size > 1000
    assert "X server" not in run.stderr and "vtkXOpenGLRenderWindow" not in run.stderr, run.stderr[-2000:]
    assert run.stdout.strip() == "None"  # the process environment is left as it was


@pytest.mark.slow
def test_report_of_a_clinical_vertebra(shared_data, tmp_path):
    """The same report on real data: L3 of the TotalSegmentator example CT (HU, 3 mm voxels), meshed from
    its mask, phantomless (internal) calibration; checked in Chromium like the fast version above."""
    ct = shared_data("ct_totalseg_example", "example_ct.nii.gz")
    mask = shared_data("ct_totalseg_example", "example_seg", "vertebrae_L3.nii.gz")
    spec = {
        "schema_version": 1, "case": "vertebral_compression",
        "bone": {"name": "L3 of the TotalSegmentator example CT", "ct": str(ct), "mask": str(mask),
                 "calibration": "internal"},
        "subject": {"sex": "female"},
        "comparison": {"reference": "standard_care", "time_points_months": [0.0, 36.0]},
        "scenario": [
            {"name": "no_treatment", "months": 36.0, "density_type": "qct",
             "operator": [{"type": "annual_change", "preset": "postmenopausal_spine"}]},
            {"name": "standard_care", "months": 36.0, "density_type": "qct",
             "operator": [{"type": "annual_change", "percent_per_year": 5.76}]},
        ],
    }
    res = femur_fe.compare(femur_fe.studies.load_comparison(spec), tmp_path / "out")
    report = res.files["report_html"]
    doc = report.read_text(encoding="utf-8")
    cells = cell_texts(doc)
    assert not [c for c in cells if REPR.search(c)]
    # the set-up names the real inputs and the phantomless calibration the model used
    assert str(mask) in cells and str(ct) in cells
    assert any(c.startswith("internal (phantomless") for c in cells)
    assert "not a gain: bone lost" in cells  # no_treatment loses bone
    check_layout_in_chromium(report, tmp_path)
