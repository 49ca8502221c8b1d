"""Bundled presets: load-case TOML files (``loadcases/``) and scenario files, found in an
installed package (``femur_fe/_loadcases``, copied at build time) or in the source tree."""
from __future__ import annotations

import os
from pathlib import Path

from ..errors import LoadCaseError


def loadcases_dir() -> Path:
    """Folder of the bundled load cases (env ``FEMUR_FE_LOADCASES`` overrides)."""
    env = os.environ.get("FEMUR_FE_LOADCASES")
    here = Path(__file__).resolve().parents[1]  # the femur_fe package folder
    for cand in ([Path(env)] if env else []) + [here / "_loadcases", here.parent / "loadcases"]:
        if cand.is_dir() and any(cand.glob("*.toml")):
            return cand
    raise LoadCaseError("the bundled loadcases/ folder was not found: reinstall femur_fe (pip install .) or set "
                        "FEMUR_FE_LOADCASES to the folder holding sideways_fall.toml")


def preset_names() -> list[str]:
    """Names of the bundled load cases and scenario files (without .toml)."""
    d = loadcases_dir()
    return sorted(p.stem for p in d.glob("*.toml")) + sorted(f"scenarios/{p.stem}" for p in d.glob("scenarios/*.toml"))


def resolve_case_path(name_or_path: str | os.PathLike, base: Path | None = None) -> Path:
    """A load-case path: an existing file (relative to ``base`` if given) or a preset name."""
    p = Path(name_or_path)
    for cand in ([base / p] if base is not None and not p.is_absolute() else []) + [p]:
        if cand.is_file():
            return cand
    stem = str(name_or_path)[:-5] if str(name_or_path).endswith(".toml") else str(name_or_path)
    cand = loadcases_dir() / f"{stem}.toml"
    if cand.is_file():
        return cand
    raise LoadCaseError(f"no load-case file {str(name_or_path)!r} and no preset of that name; presets: "
                        f"{', '.join(preset_names())}")
