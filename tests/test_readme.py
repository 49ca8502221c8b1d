"""The README's Python examples run as written: the three-line API (the block after
``<!-- python-example -->``) and the blocks after it, in one namespace."""
from __future__ import annotations

import math
import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_examples_run(capsys):
    text = README.read_text(encoding="utf-8")
    start = text.index("<!-- python-example -->")
    blocks = re.findall(r"```python\n(.*?)```", text[start:], re.S)
    assert blocks, "README has no python block after <!-- python-example -->"
    assert len([ln for ln in blocks[0].splitlines() if ln.strip()]) <= 3  # the API in three lines
    ns: dict = {}
    exec(compile(blocks[0], "README.md", "exec"), ns)
    k, strength, phi = (float(x) for x in capsys.readouterr().out.split())
    # the bundled osteoporotic femur in a sideways fall (README plausibility table: 4112 N/mm, 2987 N)
    assert math.isclose(k, 4112, rel_tol=1e-3) and math.isclose(strength, 2987, rel_tol=1e-3)
    assert 0.5 < phi < 5.0
    for code in blocks[1:]:
        exec(compile(code, "README.md", "exec"), ns)
    assert len(ns["k"]) == 4 and ns["treated"].stiffness_N_per_mm > ns["prep"].analysis.solve().stiffness_N_per_mm
