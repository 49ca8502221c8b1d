"""femur_fe: finite-element bone strength for femur and vertebra.

Units everywhere: mm, N, MPa, density in g/cm^3.

The public API is re-exported here lazily (modules are imported on first use so that
``import femur_fe`` stays cheap). To add a public name, add it to ``_EXPORTS``.
"""
from __future__ import annotations

import importlib
import os
from typing import Any

__version__ = "0.1.0"

# OpenMP threads that finish a parallel loop sleep instead of spinning (read once, when the
# compiled kernels first load the OpenMP runtime; an explicit OMP_WAIT_POLICY wins). On a
# machine whose cores are shared, spinning threads take the time the lagging thread needs:
# AMG-CG at 300k DOFs with 2 threads under load ~10 took 30 s spinning and 14 s sleeping
# (benchmarks/bench_speed.py); on idle cores the difference is a few microseconds per loop.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# public name -> submodule that defines it
_EXPORTS: dict[str, str] = {
    # mesh and I/O
    "Mesh": "mesh",
    "MeshReport": "mesh",
    "validate_mesh": "mesh",
    "remove_orphan_nodes": "mesh",
    "read_mesh": "io.mesh_io",
    "write_mesh": "io.mesh_io",
    "mesh_from_meshio": "io.mesh_io",
    "meshio_from_mesh": "io.mesh_io",
    # elements
    "quadrature": "elements",
    "shape_functions": "elements",
    "shape_gradients": "elements",
    # compiled kernels: assembly, loads, recovery, threads
    "assemble_stiffness": "assembly",
    "StiffnessAssembler": "assembly",
    "element_stiffness": "assembly",
    "assemble_body_force": "loads",
    "assemble_traction": "loads",
    "assemble_pressure": "loads",
    "strain": "recovery",
    "stress": "recovery",
    "node_average": "recovery",
    "openmp_enabled": "_parallel",
    "effective_n_threads": "_parallel",
    # solvers and constraints
    "LinearSolver": "solvers",
    "Solution": "solvers",
    "SolveReport": "solvers",
    "solve": "solvers",
    "rigid_body_modes": "constraints",
    "RigidTie": "constraints",
    "TieResult": "constraints",
    # CT, calibration, materials, mapping, voxel meshes
    "CTImage": "ct",
    "read_ct": "ct",
    "write_ct": "ct",
    "read_mask": "ct",
    "read_labels": "ct",
    "lps_from_ras": "ct",
    "ras_from_lps": "ct",
    "DensityCalibration": "calibration",
    "PhantomFit": "calibration",
    "fit_phantom_calibration": "calibration",
    "qct_from_hu": "calibration",
    "qct_mg_from_hu": "calibration",
    "calibrated_ct": "calibration",
    "ash_from_k2hpo4_keyak1994": "calibration",
    "ash_mg_from_k2hpo4_mg_keyak1994": "calibration",
    "ash_from_k2hpo4_keyak2005": "calibration",
    "ash_from_qct_schileo2008": "calibration",
    "apparent_from_ash": "calibration",
    "ash_from_apparent": "calibration",
    "convert_density": "calibration",
    "DensityModulusLaw": "materials",
    "PowerLaw": "materials",
    "LinearLaw": "materials",
    "PiecewiseLaw": "materials",
    "Morgan2003": "materials",
    "Keller1994": "materials",
    "Keyak1994Chain": "materials",
    "Kopperdahl2002": "materials",
    "KopperdahlKeaveny1998": "materials",
    "Keaveny1997": "materials",
    "Eberle2013": "materials",
    "CarterHayes1977": "materials",
    "material_law": "materials",
    "material_law_from_dict": "materials",
    "material_law_names": "materials",
    "MappingReport": "mapping",
    "MappingResult": "mapping",
    "map_ct": "mapping",
    "map_density": "mapping",
    "map_young_modulus": "mapping",
    "sample_ct": "mapping",
    "hexmesh_from_mask": "voxel",
    # parameter sweeps (femur_fe.sweep is a callable module: femur_fe.sweep(spec, out=...))
    "sweep": "sweep",
    "run_sweep": "sweep",
    "SweepSpec": "sweep",
    "SweepTask": "sweep",
    "TaskInputs": "sweep",
    "load_sweep": "sweep",
    "expand_sweep": "sweep",
    "read_results": "sweep",
    "worker_cache": "sweep",
    # derived fields, failure criteria, nonlinear strength, fracture risk
    "voigt_from_tensor": "fields",
    "tensor_from_voigt": "fields",
    "principal_strains": "fields",
    "von_mises": "fields",
    "strain_energy_density": "fields",
    "effective_strain": "fields",
    "nodal_average": "fields",
    "element_fields": "fields",
    "failure_criterion": "failure",
    "linear_strength": "failure",
    "MaxPrincipalStrain": "failure",
    "Pistoia": "failure",
    "ApparentStrain": "failure",
    "DensityYieldStress": "failure",
    "SiteYieldStrain": "failure",
    "LinearStrength": "failure",
    "RiskField": "failure",
    "nonlinear_strength": "nonlinear",
    "NonlinearResult": "nonlinear",
    "SecantYield": "nonlinear",
    "fall_impact_force": "risk",
    "factor_of_risk": "risk",
    "classify_strength": "risk",
    "summary_fields": "risk",
    "ImpactForce": "risk",
    "Classification": "risk",
    # load cases, anatomical frames, regions
    "LoadCase": "loadcase",
    "load_case": "loadcase",
    "register_section": "loadcase",
    "FemurFrame": "anatomy",
    "VertebraFrame": "anatomy",
    "femur_frame": "anatomy",
    "vertebra_frame": "anatomy",
    "Region": "regions",
    "select_regions": "regions",
    "select_region": "regions",
    "load_direction": "regions",
    "wedge_hinge": "regions",
    "frame_for": "regions",
    "regions_mesh": "regions",
    # regeneration: scenarios, remodeling, cell models, sensitivity
    "Scenario": "scenarios",
    "ScenarioOutcome": "scenarios",
    "load_scenarios": "scenarios",
    "scenarios_from_dict": "scenarios",
    "match_added_mass": "scenarios",
    "UniformChange": "scenarios",
    "CompartmentChange": "scenarios",
    "LocalInjection": "scenarios",
    "DefectFill": "scenarios",
    "CorticalThickening": "scenarios",
    "AnnualChange": "scenarios",
    "CellModelChange": "scenarios",
    "RemodelingModel": "remodeling",
    "RemodelingParameters": "remodeling",
    "RemodelingResult": "remodeling",
    "Therapy": "remodeling",
    "BoundaryConditions": "remodeling",
    "Komarova2003": "cellmodels",
    "CellTherapy": "cellmodels",
    "StrengthProblem": "sensitivity",
    "StrengthSensitivity": "sensitivity",
    "optimal_placement": "sensitivity",
    # results read-back, 3-D views, plots, reports
    "read_result": "results_io",
    "StoredResult": "results_io",
    "plot": "plotting",
    "plot_comparison": "plotting",
    "animate_density": "plotting",
    "available_fields": "plotting",
    "plot_strength_time": "plots",
    "plot_strength_gain": "plots",
    "plot_load_displacement": "plots",
    "plot_tornado": "plots",
    "plot_sweep_scatter": "plots",
    "sensitivity_table": "plots",
    "write_report": "report",
    # errors
    # surfaces -> tet meshes
    "Surface": "surface",
    "RepairReport": "surface",
    "FemurLandmarks": "surface",
    "read_surface": "surface",
    "write_surface": "surface",
    "repair_surface": "surface",
    "remesh_surface": "surface",
    "tetmesh_from_surface": "surface",
    "tet10_from_tet4": "surface",
    "surface_from_mask": "surface",
    "surface_from_mesh": "surface",
    "cut_proximal_femur": "surface",
    "femur_landmarks": "surface",
    "dihedral_angles": "surface",
    # parametric bundled bones
    "BoneModel": "bones",
    "BundledBone": "bones",
    "FemurParams": "bones",
    "VertebraParams": "bones",
    "make_femur": "bones",
    "make_vertebra": "bones",
    "synthetic_qct": "bones",
    "bundled_bone": "bones",
    "load_bundled_qct": "bones",
    "write_bone": "bones",
    "FemurFeError": "errors",
    "MeshError": "errors",
    "SurfaceError": "errors",
    "CTError": "errors",
    "MaterialError": "errors",
    "LoadCaseError": "errors",
    "RegionError": "errors",
    "SolverError": "errors",
    "UnderConstrainedError": "errors",
    "ScenarioError": "errors",
    "SweepError": "errors",
    # pipeline (lead)
    "Model": "model",
    "sha256_of": "model",
    "Analysis": "pipeline",
    "Result": "pipeline",
    "prepare": "pipeline",
    "run_case": "pipeline",
    "run_nonlinear": "pipeline",
    "add_cap": "caps",
    # comparisons (lead)
    "compare": "study",
    "load_comparison": "study",
    "with_ct_calibration": "study",
    "fit_annual_rate": "study",
    "Subject": "subject",
    "loadcases_dir": "presets",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str) -> Any:
    mod = _EXPORTS.get(name)
    if mod is None:
        raise AttributeError(f"module 'femur_fe' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{mod}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
