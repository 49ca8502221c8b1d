"""femur_fe: finite-element bone strength for femur and vertebra.

Units everywhere: mm, N, MPa, density in g/cm^3.

The top level holds the nouns and verbs of a study; everything else is reached through its
subpackage, imported top-down (each layer uses only the layers above it in this list):

``fe``        the bone-agnostic engine: mesh, elements, assembly, loads, recovery, solvers
``io``        readers and writers: meshes, CT images, surfaces, TOML, result folders
``bone``      calibration, density-modulus laws, CT mapping, meshing, anatomy, bundled bones
``analysis``  a load case on a bone: regions, caps, Analysis, Result, failure, risk
``therapy``   scenarios, remodeling, cell models, strength sensitivity
``case``      the load-case schema and presets
``viz``       charts, 3-D views, HTML report
``studies``   run, compare, sweep
"""
from __future__ import annotations

import os

# OpenMP threads that finish a parallel loop sleep instead of spinning (read once, when the
# compiled kernels first load the OpenMP runtime; an explicit OMP_WAIT_POLICY wins). On a
# machine whose cores are shared, spinning threads take the time the lagging thread needs:
# AMG-CG at 300k DOFs with 2 threads under load ~10 took 30 s spinning and 14 s sleeping
# (benchmarks/bench_speed.py); on idle cores the difference is a few microseconds per loop.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from . import analysis, bone, case, fe, io, studies, therapy, viz  # noqa: E402  (before the kernels load)
from ._version import __version__
from .analysis import Analysis, Result, Subject, prepare
from .bone import Model, Specimen, bundled_bone
from .case import LoadCase, load_case, load_scenarios
from .errors import FemurFeError
from .fe import Mesh
from .io import read_ct, read_mesh, read_result, read_surface, write_mesh
from .io.abaqus import export_abaqus
from .io.febio import export_febio
from .studies import SweepSpec, compare, run
from .studies import run_sweep as sweep
from .therapy import Scenario

__all__ = [
    "Analysis",
    "FemurFeError",
    "LoadCase",
    "Mesh",
    "Model",
    "Result",
    "Scenario",
    "Specimen",
    "Subject",
    "SweepSpec",
    "__version__",
    "bundled_bone",
    "compare",
    "export_abaqus",
    "export_febio",
    "load_case",
    "load_scenarios",
    "prepare",
    "read_ct",
    "read_mesh",
    "read_result",
    "read_surface",
    "run",
    "sweep",
    "write_mesh",
]
