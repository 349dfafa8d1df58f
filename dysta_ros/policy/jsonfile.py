"""Read a checkpoint's JSON files with errors that name the file (no torch: `info` uses it)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from dysta_ros.errors import CheckpointError


def read_json_file(path: Path, missing_hint: str = "") -> Any:
    """Return the parsed JSON of `path`, or raise CheckpointError naming it (hint: what holds it)."""
    if not path.is_file():
        raise CheckpointError(f"{path}: missing{missing_hint}")
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: not valid JSON: {exc}") from exc
