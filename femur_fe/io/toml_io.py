"""Reading TOML files with errors that name the file and the problem."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

try:
    import tomllib
except ModuleNotFoundError:  # Python < 3.11
    import tomli as tomllib  # type: ignore[no-redef]


def read_toml(path: str | os.PathLike, error: type[Exception], what: str = "TOML file") -> dict[str, Any]:
    """Parse ``path``; a missing file or invalid TOML raises ``error`` naming the file."""
    p = Path(path)
    if not p.is_file():
        raise error(f"{p}: no such {what}")
    try:
        return tomllib.loads(p.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise error(f"{p}: not valid TOML ({exc})") from None
