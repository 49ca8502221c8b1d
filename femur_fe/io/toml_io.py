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
    """Parse ``path``; a missing, unreadable, non-UTF-8 or invalid TOML file raises ``error`` naming it."""
    p = Path(path)
    if not p.is_file():
        raise error(f"{p}: no such {what}")
    try:
        text = p.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(f"{p}: not a text file in UTF-8 (byte {exc.object[exc.start]:#04x} at offset {exc.start}); "
                    f"a {what} is UTF-8 TOML text") from None
    except OSError as exc:
        raise error(f"{p}: cannot be read ({exc.strerror or exc})") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise error(f"{p}: not valid TOML ({exc})") from None
