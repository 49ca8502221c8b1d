"""Shared test fixtures.

Tests that read real bone data from ``../shared/data`` use the ``shared_data`` fixture:
it skips with a reason when the folder is missing, and fails instead when
``FEMUR_FE_REQUIRE_SHARED=1`` (set in CI) so that CI can never pass by skipping.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("FEMUR_FE_SHARED", ROOT.parent / "shared")) / "data"


def require_shared(*parts: str) -> Path:
    """Return ``../shared/data/<parts>``, skipping (or failing in CI) when it is absent."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        msg = f"shared bone data not found at {path} (clone ../shared beside the project)"
        if os.environ.get("FEMUR_FE_REQUIRE_SHARED") == "1":
            pytest.fail(msg + "; FEMUR_FE_REQUIRE_SHARED=1 forbids skipping")
        pytest.skip(msg)
    return path


@pytest.fixture
def shared_data():
    """Callable fixture: ``shared_data("femur_gfxmorph", "femur.stl")`` -> Path."""
    return require_shared


def gias3_file(name: str) -> Path:
    """Path of a file shipped by the PyPI package gias3.examples (skip/fail like shared data)."""
    try:
        import gias3.examples as ge

        path = Path(list(ge.__path__)[0]) / "data" / name
    except ImportError:
        path = None
    if path is None or not path.exists():
        msg = f"{name} from gias3.examples not found (pip install --no-deps gias3.examples)"
        if os.environ.get("FEMUR_FE_REQUIRE_SHARED") == "1":
            pytest.fail(msg)
        pytest.skip(msg)
    return path


@pytest.fixture
def rng():
    return np.random.default_rng(12345)
