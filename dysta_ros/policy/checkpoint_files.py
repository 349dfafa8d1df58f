"""Read a checkpoint's files with errors that name the file (no torch import: `info` uses it)."""

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


def check_weight_values(path: Path, tensors: dict) -> None:
    """Raise CheckpointError naming the first tensor that is not floating point, or not finite.

    Loading would cast an integer tensor (a quantized checkpoint: its scales live elsewhere) to
    float and run a different model, silently; NaN would be copied as is.
    """
    for name, tensor in tensors.items():
        if not tensor.is_floating_point():
            raise CheckpointError(f"{path}: key {name!r} is {str(tensor.dtype).removeprefix('torch.')}, "
                                  f"not floating point (quantized weights are not supported)")
        if not tensor.isfinite().all():
            raise CheckpointError(f"{path}: key {name!r} holds non-finite values (NaN/inf)")
