"""A reduced run of benchmarks/real_bones.py on the shared real data: the clinical L3 (HU CT,
TotalSegmentator mask, internal calibration, default element size) and the femur STL with its
stated density, each at the default element size, through the command line in a fresh process, checked against the
published ranges (femoral strength 1.5-8 kN, vertebral 1.5-10 kN, lumbar stiffness 5-40 kN/mm)."""
from __future__ import annotations

import importlib.util
import sys

import pytest
from conftest import ROOT, require_shared


def _benchmark():
    path = ROOT / "benchmarks" / "real_bones.py"
    spec = importlib.util.spec_from_file_location("real_bones", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["real_bones"] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory):
    require_shared("ct_totalseg_example")
    require_shared("femur_gfxmorph", "femur.stl")
    rb = _benchmark()
    rb.SHARED = require_shared()  # the data folder the tests use (FEMUR_FE_SHARED or ../shared)
    rb.CT_DIR, rb.VERSE = rb.SHARED / "ct_totalseg_example", rb.SHARED / "ct_verse004_L2_density"
    work = tmp_path_factory.mktemp("real_bones")
    return {o.row.name.split(",")[0]: o for o in (rb.run_row(r, work) for r in rb.reduced_rows(work))}, rb


def test_clinical_vertebra_runs_with_defaults_inside_the_published_ranges(outcomes):
    outs, rb = outcomes
    o = outs["L3"]
    assert o.rc == 0, o.stderr[-2000:]
    assert rb.check(o) == [], rb.check(o)
    s = o.summary
    assert s["material"]["calibration"]["method"] == "internal"
    assert s["element_size_mm"] > 0 and s["specimen"].get("element_size_mm") is None  # the size rule chose it
    # every stage printed one timed line
    for stage in ("CT:", "meshed", "metal:", "calibration: internal", "mapping:", "regions:", "solved:",
                  "strength: linear"):
        assert any(ln.strip().startswith(stage) and ln.rstrip().endswith(" s)") for ln in o.stdout.splitlines()), stage


def test_femur_surface_with_stated_density_runs(outcomes):
    outs, rb = outcomes
    o = outs["femur STL + stated density"]
    assert o.rc == 0, o.stderr[-2000:]
    assert rb.check(o) == [], rb.check(o)
    # the size rule: 0.8 x the 3 mm cortical shell of the stated density
    assert o.summary["element_size_mm"] == pytest.approx(2.4)
    assert o.summary["factor_of_risk"] > 0  # the example subject's fall on this femur
