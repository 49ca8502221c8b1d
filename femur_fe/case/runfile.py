"""Run files: one run of one load case on one bone, complete, in one TOML file.

Every run folder holds one (``case.toml``); ``femur-fe run case.toml -o again`` runs it
again with the same numbers. The file holds the load case as validated (every key, defaults
resolved, the bone's calibration applied), the ``[bone]`` table
(:meth:`femur_fe.Specimen.to_dict`, absolute paths), the subject when there is one and
whether the nonlinear analysis ran::

    schema_version = 1
    kind = "run"
    nonlinear = false
    [case]                   # the resolved load case (docs/schemas.md "load case")
    name = "vertebral_compression"
    bone = "vertebra"
    ...
    [bone]                   # docs/schemas.md "bone [bone]"
    bundled = "vertebra"
    state = "osteoporotic"
    [subject]                # optional
    sex = "female"
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from ..analysis.subject import Subject
from ..bone.specimen import Specimen
from ..errors import LoadCaseError
from ..io.tables import Table, plain
from ..io.toml_io import read_toml
from .loadcase import LoadCase, dumps_toml, load_case

#: the ``kind`` of a run file
KIND = "run"
#: the file name in a run folder
FILE_NAME = "case.toml"


@dataclass(frozen=True)
class RunFile:
    """A parsed run file: load case, bone, subject and the nonlinear switch."""

    case: LoadCase
    specimen: Specimen
    subject: Subject | None = None
    nonlinear: bool = False
    source: str = "<dict>"

    def to_dict(self) -> dict[str, Any]:
        """The run file's tables (plain TOML types); :func:`load_run_file` reads them back."""
        d: dict[str, Any] = {"schema_version": 1, "kind": KIND, "nonlinear": bool(self.nonlinear),
                             "case": self.case.to_dict(), "bone": self.specimen.to_dict()}
        if self.subject is not None:
            d["subject"] = self.subject.to_dict()
        return plain(d)

    def to_toml(self) -> str:
        """The run file as TOML text, with a first comment saying how to run it again."""
        head = ("# femur_fe run file: the load case as validated, the bone and the subject of one run.\n"
                "# Run it again with: femur-fe run case.toml -o OUT\n")
        return head + dumps_toml(self.to_dict())


def is_run_file(path: str | os.PathLike) -> bool:
    """True for a TOML file whose top level says ``kind = "run"`` (cheap: the file is parsed once)."""
    p = Path(path)
    if not p.is_file() or p.suffix.lower() != ".toml":
        return False
    try:
        data = read_toml(p, LoadCaseError, "run file")
    except LoadCaseError:
        return False
    return data.get("kind") == KIND


def load_run_file(path_or_dict: str | os.PathLike | Mapping[str, Any], *, base: Path | None = None) -> RunFile:
    """Read and validate a run file (TOML path or dict); unknown keys are refused.

    Relative paths of the ``[bone]`` table are relative to the file's folder (``base`` for a dict).
    """
    if isinstance(path_or_dict, Mapping):
        data, src = dict(path_or_dict), "<dict>"
    else:
        p = Path(path_or_dict)
        data = read_toml(p, LoadCaseError, "run file")
        src, base = str(p), p.parent
    top = Table(data, "top level", src, LoadCaseError, schema="run file (top level)")
    top.get("schema_version", "int", 1, choices=(1,))
    top.get("kind", "str", KIND, choices=(KIND,), note="marks a run file (case.toml of a run folder)")
    nonlinear = top.get("nonlinear", "bool", False, note="also run the nonlinear strength")
    case_raw = top.get("case", "table", note="the load case, every key (load case top level)")
    bone = top.get("bone", "table", note="the bone: bone [bone]")
    subject = top.get("subject", "table", None, note="subject [subject]")
    top.finish()
    case = load_case(case_raw, source=f"{src} [case]")
    specimen = Specimen.from_dict(bone, base=base, source=src)
    return RunFile(case, specimen, Subject.from_dict(subject, where=f"{src}: [subject]"), nonlinear, src)


def run_file_of(result: Any, *, nonlinear: bool | None = None) -> RunFile | None:
    """The run file of a solved :class:`femur_fe.analysis.Result` (None when its bone is not a
    :class:`Specimen`, e.g. a model passed directly)."""
    spec = result.extra.get("specimen")
    if spec is None:
        return None
    if nonlinear is None:
        nonlinear = result.nonlinear is not None
    return RunFile(result.case, Specimen.from_dict(spec, source="run"), result.subject, bool(nonlinear))


def write_run_file(result: Any, folder: str | os.PathLike, *, nonlinear: bool | None = None) -> Path | None:
    """Write ``folder/case.toml`` for ``result``; returns its path (None when there is no specimen)."""
    rf = run_file_of(result, nonlinear=nonlinear)
    if rf is None:
        return None
    path = Path(folder) / FILE_NAME
    path.write_text(rf.to_toml(), encoding="utf-8")
    return path


__all__ = ["RunFile", "is_run_file", "load_run_file", "run_file_of", "write_run_file", "KIND", "FILE_NAME"]
