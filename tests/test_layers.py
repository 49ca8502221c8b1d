"""The package is imported top-down: each subpackage uses only itself and the layers below it, and
imports sit at module level (a function-level import is kept only for an optional heavy library)."""
from __future__ import annotations

import ast
from pathlib import Path

import femur_fe

PKG = Path(femur_fe.__file__).resolve().parent
#: lowest first; a module may import from its own layer and any earlier one
LAYERS = ["errors", "_version", "fe", "io", "bone", "analysis", "therapy", "case", "viz", "studies", "commands"]
#: libraries that may be imported inside functions: optional, or slow to import and needed by few calls
HEAVY = {"pyvista", "vtk", "vtkmodules", "dask", "distributed", "matplotlib", "tetgen", "pymeshfix", "SimpleITK",
         "pandas", "pyarrow", "sksparse", "xraydb", "imageio", "pyamg", "psutil", "meshio", "resource", "scipy",
         "bokeh"}


def _layer(module: str) -> str:
    parts = module.split(".")
    assert parts[0] == "femur_fe", module
    return parts[1] if len(parts) > 1 else "__init__"


def _imports(path: Path):
    """(module-level?, imported module, line) of every import in a file, relative ones resolved."""
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    pkg = parts[:-1] if parts[-1] != "__init__" else parts[:-1]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    inside = set()  # imports inside a function or method
    for fn in ast.walk(tree):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            inside.update(id(n) for n in ast.walk(fn))
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg[: len(pkg) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
                names = [mod + "." + a.name for a in node.names] if not node.module else [mod]
            else:
                names = [node.module]
            for m in names:
                yield id(node) not in inside, m, node.lineno
        elif isinstance(node, ast.Import):
            for a in node.names:
                yield id(node) not in inside, a.name, node.lineno


def _files():
    return sorted(p for p in PKG.rglob("*.py"))


def test_every_subpackage_imports_only_downwards():
    bad = []
    for path in _files():
        rel = path.relative_to(PKG.parent).with_suffix("")
        me = _layer(".".join(p for p in rel.parts if p != "__init__") or "femur_fe")
        if me == "__init__":
            continue  # the top level gathers everything
        for _, mod, line in _imports(path):
            if not mod.startswith("femur_fe"):
                continue
            other = _layer(mod)
            if other in ("__init__",):
                bad.append(f"{path.relative_to(PKG)}:{line} imports the top-level package")
            elif LAYERS.index(other) > LAYERS.index(me):
                bad.append(f"{path.relative_to(PKG)}:{line} ({me}) imports {mod} ({other}, a later layer)")
    assert not bad, "\n".join(bad)


def test_no_function_level_imports_but_heavy_optional_libraries():
    bad = []
    for path in _files():
        for top, mod, line in _imports(path):
            if top or mod.split(".")[0] in HEAVY:
                continue
            bad.append(f"{path.relative_to(PKG)}:{line} imports {mod} inside a function")
    assert not bad, "\n".join(bad)


def test_top_level_api_is_small():
    names = [n for n in femur_fe.__all__ if n != "__version__"]
    assert len(names) <= 30, names
    for n in femur_fe.__all__:
        assert hasattr(femur_fe, n), n
