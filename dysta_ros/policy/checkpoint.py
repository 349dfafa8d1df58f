"""Checkpoint directories: config.json (model config + normalisation stats) + model.safetensors.

Never unpickles: a directory holding a pickle-format file is refused, not loaded.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from dysta_ros.errors import CheckpointError, ConfigError
from dysta_ros.policy.config import PolicyConfig
from dysta_ros.policy.checkpoint_files import check_weight_values, read_json_file
from dysta_ros.policy.model import VLAModel
from dysta_ros.policy.tokenizer import TOKENIZER_FILE, load_tokenizer, model_tokenizer, tokenizer_kind
from dysta_ros.tokens.dysta import trained_layout

FORMAT = "dysta_ros.policy/1"
CONFIG_FILE, WEIGHTS_FILE = "config.json", "model.safetensors"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
# Keys with which transformers-style configs ask a loader to import the checkpoint's own code.
CODE_KEYS = ("trust_remote_code", "auto_map", "custom_pipelines")
# Parts a checkpoint may lack: they start random (DySta's learned modules before training).
OPTIONAL_PREFIXES = ("disentangler.", "recache_gate.")
log = logging.getLogger(__name__)


def save_checkpoint(
    directory, model: VLAModel, extra_config: dict[str, Any] | None = None, tokenizer=None
) -> Path:
    """Write model to directory as config.json + model.safetensors (+ tokenizer.json); return it.

    `tokenizer` defaults to the model's own (bytes for a preset); config.json records which kind.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = tokenizer or model_tokenizer(model)
    kind = tokenizer_kind(tokenizer)
    if kind == "file":
        tokenizer.save(directory / TOKENIZER_FILE)
    config = {"format": FORMAT, "policy": model.cfg.to_dict(), "tokenizer": kind, **(extra_config or {})}
    (directory / CONFIG_FILE).write_text(json.dumps(config, indent=2))
    tensors = {name: t.detach().to("cpu").contiguous() for name, t in model.state_dict().items()}
    save_file(tensors, str(directory / WEIGHTS_FILE), metadata={"format": FORMAT})
    return directory


def read_config(directory) -> tuple[PolicyConfig, dict[str, Any]]:
    """Read and validate config.json; return the policy config and the other keys."""
    path = Path(directory) / CONFIG_FILE
    data = read_json_file(path, f" (a checkpoint is {CONFIG_FILE} + {WEIGHTS_FILE})")
    if not isinstance(data, dict) or "policy" not in data:
        raise CheckpointError(f"{path}: missing key 'policy' (the model config)")
    asks = sorted(_code_keys(data))
    if asks:
        raise CheckpointError(f"{path}: asks to run code from the checkpoint ({', '.join(asks)}); refused: "
                              f"a checkpoint is a config and tensors, never code")
    try:
        config = PolicyConfig.from_dict(data["policy"])
    except (ConfigError, TypeError) as exc:
        raise CheckpointError(f"{path}: invalid policy config: {exc}") from exc
    extra = {k: v for k, v in data.items() if k not in ("policy", "format")}
    return config, extra


def _code_keys(data) -> set[str]:
    """Return the keys anywhere in parsed JSON that ask a loader to import or run code."""
    found = set()
    if isinstance(data, dict):
        found |= {k for k in data if k in CODE_KEYS}
        for value in data.values():
            found |= _code_keys(value)
    elif isinstance(data, list):
        for value in data:
            found |= _code_keys(value)
    return found


def _tensor_shapes(weights: Path) -> dict[str, tuple[int, ...]]:
    """Return name -> shape from a safetensors header, reading no tensor data."""
    try:
        with safe_open(str(weights), framework="pt") as handle:
            return {name: tuple(handle.get_slice(name).get_shape()) for name in handle.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{weights}: not a readable safetensors file: {exc}") from exc


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
    tokenizer = load_tokenizer(directory, extra.get("tokenizer"))  # before the weights: a cheap refusal first
    try:
        layout = trained_layout(extra.get("training"))
    except ConfigError as exc:
        raise CheckpointError(f"{directory / CONFIG_FILE}: {exc}") from exc
    weights = directory / WEIGHTS_FILE
    if not weights.is_file():
        raise CheckpointError(f"{weights}: missing")
    # Keys and shapes are checked on the header and a weightless (meta) model first, so a
    # config that disagrees with its tensors is refused before any memory is allocated for it.
    shapes = _tensor_shapes(weights)
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in VLAModel(config).state_dict().items()}
    missing = [k for k in expected if k not in shapes and not k.startswith(OPTIONAL_PREFIXES)]
    unexpected = [k for k in shapes if k not in expected]
    if missing or unexpected:
        raise CheckpointError(
            f"{weights}: missing keys {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unexpected keys {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}"
        )
    wrong = [f"{k}: {shapes[k]} != {shape}" for k, shape in expected.items()
             if k in shapes and shapes[k] != shape]
    if wrong:
        raise CheckpointError(f"{weights}: wrong shapes for the config in {CONFIG_FILE}: {wrong[:5]}")
    try:
        tensors = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{weights}: not a readable safetensors file: {exc}") from exc
    check_weight_values(weights, tensors)
    torch.manual_seed(0)
    model = VLAModel(config)
    absent = sorted({k.split(".")[0] for k in expected if k not in tensors})
    if absent:
        log.warning(
            "%s has no weights for %s: randomly initialised (train them for learned DySta)",
            weights,
            ", ".join(absent),
        )
    model.load_state_dict(tensors, strict=False)
    model.has_learned_dysta = not absent
    model.trained_dysta_layout = layout  # DystaStrategy warns when run on another layout
    model.tokenizer = tokenizer  # it travels with the model: a runtime rebuilt from it keeps it
    return model.to(device=device, dtype=overrides_dtype or torch.float32), extra
