"""NAFEMS LE10 thick plate (NAFEMS TNSB Rev. 3, 1990) with tet10 on a mapped elliptic mesh.

Target sigma_yy at D = (2000, 0, 300) = -5.38 MPa (NAFEMS TNSB Rev. 3). The stress at D
is each surrounding element's own (linear) tet10 stress evaluated at D, averaged.
Measured: shape (4, 8, 2) -5.462 (1.5 %), (6, 12, 4) -5.323 (1.1 %), (8, 16, 6) -5.319 (1.1 %).
"""
from __future__ import annotations

import numpy as np
import pytest

from femur_fe.commands.cli import main
from femur_fe.fe.verification import LE10_TARGET, run_le10


def test_le10_sigma_yy_at_d_within_nafems_band():
    res = run_le10((6, 12, 4))
    # the NAFEMS LE10 benchmark compares sigma_yy at D with -5.38 MPa to within 2 %
    # (-5.49 ... -5.27 MPa); this 6 x 12 x 4 mesh is 1.1 % off
    assert abs(res["sigma_yy_D"] - LE10_TARGET) <= 0.02 * abs(LE10_TARGET)
    # the supports carry the whole pressure load: 1 MPa x quarter annulus area
    area = np.pi / 4 * (3250 * 2750 - 2000 * 1000)
    assert res["load_n"] == pytest.approx(area, rel=1e-5)  # mapped boundary: O(h^4) area error
    # reactions balance the applied load to 1e-8 relative (direct solve: round-off only)
    assert res["reaction_z"] == pytest.approx(res["load_n"], rel=1e-8)


def test_le10_cli(capsys):
    rc = main(["verify", "le10"])
    out = capsys.readouterr().out
    assert rc == 0 and "PASS" in out and "-5.38" in out


@pytest.mark.slow
def test_le10_refined():
    res = run_le10((8, 16, 6))
    assert abs(res["sigma_yy_D"] - LE10_TARGET) <= 0.03 * abs(LE10_TARGET)
