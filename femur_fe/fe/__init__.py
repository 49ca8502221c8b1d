"""The bone-agnostic finite-element engine: meshes, elements, assembly (compiled kernels with NumPy
twins), loads, strain/stress recovery, constraints, linear and nonlinear solvers.
"""
from __future__ import annotations

from .assembly import StiffnessAssembler, assemble_stiffness, element_stiffness
from .boxes import box_mesh, hex_grid, structured_mesh
from .constraints import RigidTie, TieResult, rigid_body_modes
from .elements import quadrature, shape_functions, shape_gradients
from .fields import (
    effective_strain,
    element_fields,
    principal_strains,
    strain_energy_density,
    tensor_from_voigt,
    voigt_from_tensor,
    von_mises,
)
from .loads import assemble_body_force, assemble_pressure, assemble_traction
from .mesh import Mesh, MeshReport, remove_orphan_nodes, tet10_from_tet4, validate_mesh
from .nonlinear import NonlinearResult, SecantYield, nonlinear_strength
from .parallel import effective_n_threads, openmp_enabled
from .recovery import node_average, strain, stress
from .reuse import ReusingSolver
from .solvers import LinearSolver, Solution, SolveReport, solve
from .voxel_solver import VoxelGrid, VoxelSolver, is_voxel_mesh

__all__ = [
    "box_mesh",
    "hex_grid",
    "structured_mesh",
    "tet10_from_tet4",
    "LinearSolver",
    "ReusingSolver",
    "Mesh",
    "MeshReport",
    "NonlinearResult",
    "RigidTie",
    "SecantYield",
    "Solution",
    "SolveReport",
    "StiffnessAssembler",
    "TieResult",
    "VoxelGrid",
    "VoxelSolver",
    "assemble_body_force",
    "assemble_pressure",
    "assemble_stiffness",
    "assemble_traction",
    "effective_n_threads",
    "effective_strain",
    "element_fields",
    "element_stiffness",
    "node_average",
    "nonlinear_strength",
    "openmp_enabled",
    "principal_strains",
    "quadrature",
    "is_voxel_mesh",
    "remove_orphan_nodes",
    "rigid_body_modes",
    "shape_functions",
    "shape_gradients",
    "solve",
    "strain",
    "strain_energy_density",
    "stress",
    "tensor_from_voigt",
    "validate_mesh",
    "voigt_from_tensor",
    "von_mises",
]
