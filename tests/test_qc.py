"""The QC picture of a prepared model (qc.png), written before the solve."""
from __future__ import annotations

import logging

import numpy as np
import pytest

from femur_fe.studies.run import prepare_run
from femur_fe.viz import qc as qcmod

imageio = pytest.importorskip("imageio.v3")
pytest.importorskip("pyvista")


@pytest.fixture(scope="module")
def vertebra():
    return prepare_run("vertebral_compression", {"bundled": "vertebra"})


def colour_pixels(img: np.ndarray, hex_colour: str, tol: int = 30) -> int:
    rgb = np.array([int(hex_colour[i:i + 2], 16) for i in (1, 3, 5)])
    return int((np.abs(img[..., :3].astype(int) - rgb).max(axis=-1) <= tol).sum())


def test_qc_picture_shows_the_model_regions_and_load(vertebra, tmp_path):
    path = qcmod.write_qc_picture(vertebra.analysis, tmp_path / "qc.png")
    assert path == tmp_path / "qc.png"
    img = imageio.imread(path)
    assert img.shape[:2] == (qcmod.QC_WINDOW[1], qcmod.QC_WINDOW[0])
    # the loaded endplate in red, the supported one in blue, the load arrow in black,
    # and the bone in more than a handful of modulus colours
    assert colour_pixels(img, qcmod.LOADED_COLOUR) > 200
    assert colour_pixels(img, qcmod.SUPPORT_COLOURS[0]) > 200
    assert colour_pixels(img, "#000000", tol=10) > 500
    body = img[150:600, 250:700, :3].reshape(-1, 3)
    assert len(np.unique(body // 16, axis=0)) > 40


def test_qc_picture_is_skipped_with_a_warning_when_pyvista_cannot_render(vertebra, tmp_path, monkeypatch, caplog):
    def no_context(*a, **k):
        raise RuntimeError("no OpenGL context")

    monkeypatch.setattr(qcmod, "_new_plotter", no_context)
    with caplog.at_level(logging.WARNING, logger="femur_fe.viz.qc"):
        assert qcmod.write_qc_picture(vertebra.analysis, tmp_path / "qc.png") is None
    assert not (tmp_path / "qc.png").exists()
    assert "cannot render off-screen" in caplog.text
