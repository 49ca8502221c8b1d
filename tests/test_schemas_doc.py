"""docs/schemas.md is generated from the validators: regenerating it gives the committed file, so the
documented keys, defaults and ranges are the ones the code accepts."""
from __future__ import annotations

from pathlib import Path

from femur_fe.case.schemas import markdown
from femur_fe.io.tables import SCHEMA

DOC = Path(__file__).resolve().parents[1] / "docs" / "schemas.md"


def test_docs_schemas_md_matches_the_validators():
    assert DOC.read_text(encoding="utf-8") == markdown(), ("docs/schemas.md is out of date: regenerate it with "
                                           "`python -m femur_fe.case.schemas > docs/schemas.md`")


def test_every_table_of_every_file_is_documented():
    markdown()
    for name in ("load case [loading]", "load case [failure.params]", "bone [bone]", "bone [bone.density]",
                 "calibration JSON (phantom)", "comparison (top level)", "subject [subject]",
                 "scenario [[scenario]]", "scenario [[scenario.operator]] type = 'injection'"):
        assert name in SCHEMA and SCHEMA[name], name
