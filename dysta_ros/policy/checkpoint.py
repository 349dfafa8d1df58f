"""Checkpoint directories: config.json (model config + normalisation stats) + model.safetensors.

Never unpickles: a directory holding a pickle-format file is refused, not loaded.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from dysta_ros.errors import CheckpointError, ConfigError
from dysta_ros.policy.config import PolicyConfig
from dysta_ros.policy.model import VLAModel

FORMAT = "dysta_ros.policy/1"
CONFIG_FILE, WEIGHTS_FILE = "config.json", "model.safetensors"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
# Parts a checkpoint may lack: they start random (DySta's learned modules before training).
OPTIONAL_PREFIXES = ("disentangler.", "recache_gate.")
log = logging.getLogger(__name__)


def save_checkpoint(
    directory, model: VLAModel, extra_config: dict[str, Any] | None = None, tokenizer=None
) -> Path:
    """Write model to directory as config.json + model.safetensors (+ tokenizer.json); return it."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if hasattr(tokenizer, "save"):  # a FileTokenizer; the byte tokenizer needs no file
        tokenizer.save(directory / "tokenizer.json")
    config = {"format": FORMAT, "policy": model.cfg.to_dict(), **(extra_config or {})}
    (directory / CONFIG_FILE).write_text(json.dumps(config, indent=2))
    tensors = {name: t.detach().to("cpu").contiguous() for name, t in model.state_dict().items()}
    save_file(tensors, str(directory / WEIGHTS_FILE), metadata={"format": FORMAT})
    return directory


def read_config(directory) -> tuple[PolicyConfig, dict[str, Any]]:
    """Read and validate config.json; return the policy config and the other keys."""
    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(f"{path}: missing (a checkpoint is {CONFIG_FILE} + {WEIGHTS_FILE})")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: not valid JSON: {exc}") from exc
    if not isinstance(data, dict) or "policy" not in data:
        raise CheckpointError(f"{path}: missing key 'policy' (the model config)")
    try:
        config = PolicyConfig.from_dict(data["policy"])
    except (ConfigError, TypeError) as exc:
        raise CheckpointError(f"{path}: invalid policy config: {exc}") from exc
    extra = {k: v for k, v in data.items() if k not in ("policy", "format")}
    return config, extra


def load_checkpoint(directory, device: str = "cpu", overrides_dtype: torch.dtype | None = None):
    """Load a checkpoint directory -> (VLAModel, extra config); shapes and keys are checked."""
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: not a checkpoint directory")
    pickles = sorted(p.name for p in directory.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise CheckpointError(
            f"{directory / pickles[0]}: pickle-format files are refused "
            f"(never unpickled); convert to {WEIGHTS_FILE}"
        )
    config, extra = read_config(directory)
    weights = directory / WEIGHTS_FILE
    if not weights.is_file():
        raise CheckpointError(f"{weights}: missing")
    try:
        tensors = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{weights}: not a readable safetensors file: {exc}") from exc
    torch.manual_seed(0)
    model = VLAModel(config)
    expected = model.state_dict()
    missing = [k for k in expected if k not in tensors and not k.startswith(OPTIONAL_PREFIXES)]
    unexpected = [k for k in tensors if k not in expected]
    if missing or unexpected:
        raise CheckpointError(
            f"{weights}: missing keys {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unexpected keys {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}"
        )
    wrong = [
        f"{k}: {tuple(tensors[k].shape)} != {tuple(v.shape)}"
        for k, v in expected.items()
        if k in tensors and tensors[k].shape != v.shape
    ]
    if wrong:
        raise CheckpointError(f"{weights}: wrong shapes for the config in {CONFIG_FILE}: {wrong[:5]}")
    absent = sorted({k.split(".")[0] for k in expected if k not in tensors})
    if absent:
        log.warning(
            "%s has no weights for %s: randomly initialised (train them for learned DySta)",
            weights,
            ", ".join(absent),
        )
    model.load_state_dict(tensors, strict=False)
    model.has_learned_dysta = not absent
    return model.to(device=device, dtype=overrides_dtype or torch.float32), extra
