"""Build the Cython kernels in ``ext/`` into extension modules inside ``femur_fe``.

Every ``ext/NAME.pyx`` becomes ``femur_fe.fe.NAME`` (the bottom layer of the engine). OpenMP is used when a
compile-and-link probe succeeds; otherwise the kernels are built serially and
``femur_fe.openmp_enabled()`` reports ``False``. ``FEMUR_FE_NO_OPENMP=1`` forces the
serial build and ``FEMUR_FE_DEBUG_CYTHON=1`` turns bounds checking on.
"""
from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext
from setuptools.command.build_py import build_py

DEBUG = os.environ.get("FEMUR_FE_DEBUG_CYTHON", "0") == "1"


def _openmp_flags(compiler) -> tuple[list[str], list[str]]:
    """Return (compile, link) flags for OpenMP, or ([], []) if the probe fails."""
    if os.environ.get("FEMUR_FE_NO_OPENMP", "0") == "1":
        return [], []
    if compiler.compiler_type == "msvc":
        return ["/openmp"], []
    code = textwrap.dedent(
        """
        #include <omp.h>
        #include <stdio.h>
        int main(void) {
            int n = 0;
            #pragma omp parallel reduction(+:n)
            n += 1;
            printf("%d", n > 0);
            return 0;
        }
        """
    )
    tmp = tempfile.mkdtemp()
    try:
        src = os.path.join(tmp, "probe.c")
        with open(src, "w") as fh:
            fh.write(code)
        objs = compiler.compile([src], output_dir=tmp, extra_postargs=["-fopenmp"])
        exe = os.path.join(tmp, "probe")
        compiler.link_executable(objs, exe, extra_postargs=["-fopenmp"])
        out = subprocess.run([exe], capture_output=True, text=True, timeout=30)
        if out.returncode == 0 and out.stdout.strip() == "1":
            return ["-fopenmp"], ["-fopenmp"]
    except Exception as exc:  # noqa: BLE001 - any failure means "no OpenMP"
        print(f"femur_fe: OpenMP probe failed ({exc}); building serial kernels", file=sys.stderr)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print("femur_fe: WARNING: compiler has no working OpenMP; kernels will run on one thread",
          file=sys.stderr)
    return [], []


class BuildExt(build_ext):
    def build_extensions(self):
        cflags, lflags = _openmp_flags(self.compiler)
        for ext in self.extensions:
            ext.extra_compile_args = list(ext.extra_compile_args or []) + cflags
            ext.extra_link_args = list(ext.extra_link_args or []) + lflags
            if cflags:
                ext.define_macros = list(ext.define_macros or []) + [("FEMUR_FE_OPENMP", "1")]
        super().build_extensions()


# top-level data folders shipped inside the package: (source folder, package sub-folder)
DATA_FOLDERS = [("meshes", "_meshes"), ("loadcases", "_loadcases")]


class BuildPy(build_py):
    """Copy the top-level ``meshes/`` and ``loadcases/`` into the built package.

    The project layout keeps them at the top level; an installed (non-editable) package
    finds them as ``femur_fe/_meshes`` and ``femur_fe/_loadcases``. Editable installs and
    checkouts use the top-level folders directly (see ``femur_fe.bone.bundled.meshes_dir`` and
    ``femur_fe.case.presets.loadcases_dir``).
    """

    def run(self):
        super().run()
        here = os.path.dirname(os.path.abspath(__file__))
        for src, dst in DATA_FOLDERS:
            src_dir = os.path.join(here, src)
            if not os.path.isdir(src_dir):
                continue
            target = os.path.join(self.build_lib, "femur_fe", dst)
            for root, _dirs, files in os.walk(src_dir):
                rel = os.path.relpath(root, src_dir)
                for name in files:
                    if name.endswith((".pyc", ".part")) or name.startswith("."):
                        continue
                    out_dir = os.path.normpath(os.path.join(target, rel))
                    os.makedirs(out_dir, exist_ok=True)
                    self.copy_file(os.path.join(root, name), os.path.join(out_dir, name))


def _extensions() -> list[Extension]:
    exts = []
    for pyx in sorted(glob.glob(os.path.join("ext", "*.pyx"))):
        stem = os.path.splitext(os.path.basename(pyx))[0]
        exts.append(
            Extension(
                f"femur_fe.fe.{stem}",
                sources=[pyx],
                include_dirs=[np.get_include(), "ext"],
                define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_22_API_VERSION")],
                extra_compile_args=["-O3"] if os.name != "nt" else ["/O2"],
            )
        )
    return exts


setup(
    ext_modules=cythonize(
        _extensions(),
        compiler_directives={
            "language_level": 3,
            "boundscheck": DEBUG,
            "wraparound": DEBUG,
            "cdivision": True,
            "initializedcheck": DEBUG,
        },
        include_path=["ext"],
    ),
    cmdclass={"build_ext": BuildExt, "build_py": BuildPy},
)
