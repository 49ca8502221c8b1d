"""Output folders written as a whole, and names that may become file names.

A run, a comparison or the demo writes one folder. :func:`output_folder` makes that folder
appear complete or not at all:

* before any work, the destination is checked (:func:`check_output_dir`): a file in its
  place, a folder that already holds something (refused unless ``overwrite``; ``overwrite``
  replaces only a folder femur_fe wrote, never one holding other files, the working folder
  or the inputs), a parent that cannot be written;
* the results are written into ``DIR.partial-<pid>`` next to it, then a marker
  (:data:`MARKER`) is written and the folder renamed to ``DIR``; an existing folder is
  replaced whole, never mixed with the new results;
* a run that fails leaves ``DIR.partial-<pid>`` (recognisably incomplete) when anything was
  written, and the error says where it is; when the final rename fails the error says where
  the complete results are.

:func:`safe_name` checks names taken from input files (scenario names) before they name
folders: letters, digits and ``_ . -``, starting with a letter or digit, so no path
separator, no ``..`` and no absolute path can leave the output folder.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from .._version import __version__
from ..errors import FemurFeError, OutputError

log = logging.getLogger(__name__)

#: file that marks a folder as a complete femur_fe output (written last, before the rename)
MARKER = ".femur_fe_output.json"
#: files whose presence marks a folder written by an earlier femur_fe (before the marker existed)
_LEGACY_FILES = ("summary.json", "comparison.json", "run_info.json")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")


def safe_name(name: Any, what: str = "name", *, reserved: Iterable[str] = ()) -> str:
    """``name`` when it can name a file or folder inside an output folder, else OutputError."""
    if not isinstance(name, str) or not _NAME.match(name) or ".." in name:
        raise OutputError(f"{what} {name!r} cannot name an output folder: use 1-100 letters, digits, '_', '.' or "
                          "'-', starting with a letter or digit (no '/', no '..', no absolute path)")
    taken = {r.lower() for r in reserved}
    if name.lower() in taken:
        raise OutputError(f"{what} {name!r} is the name of a file or folder femur_fe writes itself "
                          f"({', '.join(sorted(taken))}); choose another name")
    return name


def _contents(path: Path, n: int = 5) -> str:
    names = sorted(p.name for p in path.iterdir())
    return ", ".join(names[:n]) + (f" and {len(names) - n} more" if len(names) > n else "")


def is_femur_fe_output(path: Path) -> bool:
    """True for a folder femur_fe wrote (its marker, or the summary files of earlier versions)."""
    return (path / MARKER).is_file() or any((path / f).is_file() for f in _LEGACY_FILES)


def _inside(child: Path, parent: Path) -> bool:
    try:
        child.resolve().relative_to(parent.resolve())
        return True
    except ValueError:
        return False


def check_output_dir(out: str | os.PathLike, *, overwrite: bool = False, inputs: Iterable[Any] = (),
                     option: str = "-o") -> Path:
    """Check ``out`` before any work; returns it as a Path (see the module docstring)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OutputError(f"{option} {out}: a file is in the way (not a folder); give a folder name")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise OutputError(f"{option} {out}: the folder exists and holds {_contents(out)}; results are never "
                              "mixed with an earlier run's: use --overwrite to replace it whole, or another folder")
        if not is_femur_fe_output(out):
            raise OutputError(f"{option} {out}: the folder holds files femur_fe did not write ({_contents(out)}); "
                              "--overwrite only replaces a femur_fe output folder: choose another folder")
        if _inside(Path.cwd(), out):
            raise OutputError(f"{option} {out}: --overwrite would delete the working folder; choose another folder")
        for p in inputs:
            if p is not None and _inside(Path(p), out):
                raise OutputError(f"{option} {out}: --overwrite would delete the input {p}; choose another folder")
    parent = out.resolve().parent
    for up in [parent, *parent.parents]:
        if up.exists() and not up.is_dir():
            raise OutputError(f"{option} {out}: {up} is a file, not a folder; give a folder name")
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"{option} {out}: cannot create {parent} ({exc.strerror or exc})") from None
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"{option} {out}: {parent} is not writable")
    return out


@contextlib.contextmanager
def output_folder(out: str | os.PathLike, *, overwrite: bool = False, kind: str = "run",
                  inputs: Iterable[Any] = (), option: str = "-o") -> Iterator[Path]:
    """Yield a fresh ``DIR.partial-<pid>`` folder to write into; on success it becomes ``out``.

    See the module docstring. ``kind`` is recorded in the marker (``run``, ``comparison``...).
    """
    out = check_output_dir(out, overwrite=overwrite, inputs=inputs, option=option)
    partial = out.parent / f"{out.name}.partial-{os.getpid()}"
    if partial.exists():
        shutil.rmtree(partial)
    try:
        partial.mkdir()
    except OSError as exc:
        raise OutputError(f"{option} {out}: cannot create a folder in {out.parent.resolve()} "
                          f"({exc.strerror or exc})") from None
    try:
        yield partial
    except BaseException as exc:
        _keep_or_remove(partial, exc)
        raise
    try:
        (partial / MARKER).write_text(json.dumps({"kind": kind, "femur_fe_version": __version__,
                                                  "finished_at": time.time()}) + "\n", encoding="utf-8")
        _replace(partial, out, overwrite)
    except OSError as exc:
        raise OutputError(f"the results are complete in {partial} but could not be moved to {out} "
                          f"({exc.strerror or exc}); rename that folder yourself") from None


def _keep_or_remove(partial: Path, exc: BaseException) -> None:
    """After a failed run: remove an empty partial folder, else keep it and say where it is."""
    try:
        empty = not any(partial.iterdir())
    except OSError:
        return
    if empty:
        with contextlib.suppress(OSError):
            partial.rmdir()
        return
    note = f"the results written so far are in {partial} (incomplete)"
    if isinstance(exc, OSError) and not isinstance(exc, FemurFeError):
        raise OutputError(f"could not write the results ({exc.strerror or exc}); {note}") from exc
    if isinstance(exc, FemurFeError) and exc.args and isinstance(exc.args[0], str):
        exc.args = (f"{exc.args[0]} ({note})",) + exc.args[1:]
    else:
        log.warning("%s", note)


def _replace(partial: Path, out: Path, overwrite: bool) -> None:
    if out.is_dir():
        if any(out.iterdir()):
            if not overwrite:  # appeared while the run was working
                raise OutputError(f"{out} was created by something else during the run; the complete results are "
                                  f"in {partial}")
            old = out.parent / f"{out.name}.replaced-{os.getpid()}"
            os.rename(out, old)
            os.rename(partial, out)
            shutil.rmtree(old, ignore_errors=True)
            return
        out.rmdir()
    os.rename(partial, out)


def write_or_fallback(write: Callable[[Path], Any], folder: Path) -> Any:
    """``write(folder)``; when that fails on the file system, ``write`` into a new temporary
    folder instead and raise OutputError saying where the results are (nothing is lost)."""
    try:
        return write(folder)
    except OSError as exc:
        spare = Path(tempfile.mkdtemp(prefix="femur_fe_results_"))
        try:
            write(spare)
        except OSError:
            raise OutputError(f"could not write the results into {folder} ({exc.strerror or exc}), nor into "
                              f"{spare}") from None
        raise OutputError(f"could not write the results into {folder} ({exc.strerror or exc}); they were written "
                          f"to {spare} instead") from None


def rebase(paths: dict, old: Path, new: Path) -> dict:
    """``paths`` (name -> path) with the ``old`` folder prefix replaced by ``new``."""
    out = {}
    for k, p in paths.items():
        try:
            out[k] = Path(new) / Path(p).relative_to(old)
        except ValueError:
            out[k] = p
    return out


__all__ = ["safe_name", "check_output_dir", "output_folder", "write_or_fallback", "is_femur_fe_output", "rebase",
           "MARKER"]
