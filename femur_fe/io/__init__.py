"""Input and output: meshes, CT volumes, results; atomic writes."""
from .atomic import atomic_path, write_json_atomic, write_text_atomic
from .mesh_io import mesh_from_meshio, meshio_from_mesh, read_mesh, write_mesh

__all__ = ["atomic_path", "write_json_atomic", "write_text_atomic", "mesh_from_meshio",
           "meshio_from_mesh", "read_mesh", "write_mesh"]
