"""Readers and writers: meshes, CT images, surfaces, TOML, result folders, atomic writes.
"""
from __future__ import annotations

from .atomic import atomic_path, write_json_atomic, write_text_atomic
from .ct import (
    CTImage,
    lps_from_ras,
    ras_from_lps,
    read_ct,
    read_labels,
    read_mask,
    write_ct,
)
from .mesh_io import mesh_from_meshio, meshio_from_mesh, read_mesh, write_mesh
from .results import StoredResult, read_result
from .surface import Surface, read_surface, write_surface

__all__ = [
    "Surface",
    "read_surface",
    "write_surface",
    "atomic_path",
    "write_json_atomic",
    "write_text_atomic",
    "CTImage",
    "StoredResult",
    "lps_from_ras",
    "mesh_from_meshio",
    "meshio_from_mesh",
    "ras_from_lps",
    "read_ct",
    "read_labels",
    "read_mask",
    "read_mesh",
    "read_result",
    "write_ct",
    "write_mesh",
]
