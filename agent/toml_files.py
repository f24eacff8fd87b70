"""Reading the project's TOML files (config, call flows, evals) with the same two one-line errors."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any


def read_toml(path: str | Path, what: str, error: type[Exception] = ValueError,
              missing: type[Exception] | None = None) -> dict[str, Any]:
    """The parsed file; `missing` (default `error`) names a file that is not there, `error` one that is
    not valid TOML, both with the path."""
    p = Path(path)
    if not p.is_file():
        raise (missing or error)(f"{what} file not found: {p}")
    try:
        return tomllib.loads(p.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise error(f"{p}: not valid TOML: {exc}") from None
