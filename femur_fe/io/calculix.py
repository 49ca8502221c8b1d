"""Run CalculiX (``ccx``) on an exported deck and compare its answer with femur_fe's.

:func:`run_ccx` solves ``NAME.inp`` in its folder; :func:`read_dat` parses the ``*NODE PRINT`` blocks
of ``NAME.dat`` (displacements per node, total forces per set); :func:`agreement` compares them with
the femur_fe result the deck was written from. CalculiX prints 7 significant digits in the ``.dat``
file, so agreement is resolved down to about 5e-7 relative.
"""
from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import FemurFeError
from .deck import Deck

log = logging.getLogger(__name__)

_HEADER = re.compile(r"\s*(displacements|total force|forces)\s*\((\w+),(\w+),(\w+)\)\s*for set\s+(\S+)\s+and time")


def ccx_path() -> str | None:
    """The ``ccx`` executable on PATH, or None."""
    return shutil.which("ccx")


def run_ccx(inp: str | os.PathLike, *, threads: int = 1, timeout: float | None = None) -> dict:
    """Solve ``inp`` (``.inp``) with ``ccx`` in its folder; returns {"dat": path, "seconds": wall time}.

    Raises :class:`femur_fe.errors.FemurFeError` when ccx is missing or reports an error.
    """
    exe = ccx_path()
    if exe is None:
        raise FemurFeError("ccx (CalculiX) is not on PATH; install it (Debian/Ubuntu: apt-get install calculix-ccx)")
    inp = Path(inp)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "CCX_NPROC_STIFFNESS": str(threads),
           "CCX_NPROC_EQUATION_SOLVER": str(threads)}
    t0 = time.perf_counter()
    proc = subprocess.run([exe, "-i", inp.stem], cwd=inp.parent, env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)
    seconds = time.perf_counter() - t0
    out = proc.stdout + proc.stderr
    dat = inp.with_suffix(".dat")
    if proc.returncode != 0 or "*ERROR" in out or not dat.is_file():
        errors = [line.strip() for line in out.splitlines() if "ERROR" in line][:3]
        raise FemurFeError(f"ccx failed on {inp} (exit {proc.returncode}): {' | '.join(errors) or out[-300:]}")
    log.info("ccx solved %s in %.1f s", inp, seconds)
    return {"dat": dat, "seconds": seconds}


def read_dat(path: str | os.PathLike) -> dict:
    """``*NODE PRINT`` blocks of a CalculiX ``.dat`` file.

    Returns {("displacements", SET): (ids (k,) 1-based, values (k, 3)), ("total force", SET): (3,) N}.
    """
    blocks: dict[tuple[str, str], list] = {}
    cur = None
    for line in Path(path).read_text(encoding="ascii", errors="replace").splitlines():
        m = _HEADER.match(line)
        if m:
            cur = (m.group(1), m.group(5).upper())
            blocks[cur] = []
            continue
        parts = line.split()
        if cur is not None and parts:
            blocks[cur].append([float(p) for p in parts])
    out = {}
    for key, rows in blocks.items():
        arr = np.asarray(rows, dtype=np.float64)
        if key[0] == "total force":
            out[key] = arr.reshape(-1)[-3:]
        else:
            out[key] = (arr[:, 0].astype(np.int64), arr[:, 1:4])
    return out


def agreement(deck: Deck, result: Any, dat: str | os.PathLike) -> dict:
    """Relative differences between CalculiX's ``.dat`` and the femur_fe ``result`` of ``deck``.

    * ``displacement``: max over bone nodes of ``|u_ccx - u| / max|u|`` (needs the deck written with
      ``print_displacements=True``), load frame;
    * ``reactions``: per support set and for the plate (its tied nodes, and its reference node),
      ``|F_ccx - F| / |F_load|`` with ``F`` femur_fe's reaction of that region in the load frame;
    * ``plate_displacement``: ``|U_z,ccx - U_z|`` of the reference node along the load, relative to
      ``max(|U_z|, max|u|)``.
    """
    d = read_dat(dat)
    R = deck.rotation
    u_ref = result.displacement @ R.T
    out: dict[str, Any] = {}
    key = ("displacements", "NALL")
    if key in d:
        ids, vals = d[key]
        bone = ids <= len(u_ref)
        diff = vals[bone] - u_ref[ids[bone] - 1]
        if bone.sum() != len(u_ref):
            raise FemurFeError(f"{dat}: displacements of {bone.sum()} bone nodes printed, expected {len(u_ref)}")
        out["displacement"] = float(np.abs(diff).max() / np.abs(u_ref).max())
    scale = abs(float(result.load_force_N))
    reactions = {}
    sets = {s.name: s.region for s in deck.supports}
    sets.update({deck.plate.name: deck.plate.region, deck.plate.name + "_REF": deck.plate.region})
    for name, region in sets.items():
        tot = d.get(("total force", name))
        if tot is not None:
            f = np.asarray(deck.reference["reaction_forces_N"][region])
            reactions[name] = float(np.linalg.norm(tot - f) / scale)
    out["reactions"] = reactions
    ref = d.get(("displacements", deck.plate.name + "_REF"))
    if ref is not None:
        uz = ref[1][0, 2]
        # relative to the plate's own displacement, or to the largest bone displacement when the plate is
        # held along the load (the wedge case rotates it about a hinge)
        scale_u = max(abs(result.plate_displacement_mm), float(np.abs(u_ref).max()))
        out["plate_displacement"] = float(abs(uz - result.plate_displacement_mm) / scale_u)
        tot = d.get(("total force", deck.plate.name))
        out["plate_force_ccx_N"] = None if tot is None else float(tot[2])
        out["plate_displacement_ccx_mm"] = float(uz)
    return out


__all__ = ["agreement", "ccx_path", "read_dat", "run_ccx"]
