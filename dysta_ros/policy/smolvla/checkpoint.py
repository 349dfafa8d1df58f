"""Read a LeRobot SmolVLA checkpoint directory: files, backbone dir, tokenizer, stats, weights.

Nothing is unpickled: weights and stats are safetensors, configs JSON.
"""

from __future__ import annotations

import math
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from dysta_ros.errors import CheckpointError
from dysta_ros.policy.checkpoint_files import check_weight_values
from dysta_ros.policy.smolvla.config import (
    ACTION_KEY,
    STATE_KEY,
    SmolVLAConfig,
    VLMConfig,
    parse_smolvla_config,
    parse_vlm_config,
    read_json,
)

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
PREPROCESSOR_FILE = "policy_preprocessor.json"
POSTPROCESSOR_FILE = "policy_postprocessor.json"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")
WEIGHT_PREFIX = "model."


def _refuse_pickles(directory: Path, wanted: str) -> None:
    """Raise when a pickle stands where a safetensors file is expected."""
    pickles = sorted(p.name for p in directory.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise CheckpointError(
            f"{directory / pickles[0]}: pickle file where {wanted} is expected; "
            f"refused (never unpickled): convert it to safetensors"
        )


def hf_cache_dirs(model_name: str) -> list[Path]:
    """Return the local HF cache snapshot dirs of a hub id, newest first (offline: no network)."""
    hub = Path(
        os.environ.get("HF_HUB_CACHE")
        or Path(os.environ.get("HF_HOME", Path.home() / ".cache/huggingface")) / "hub"
    )
    snapshots = hub / f"models--{model_name.replace('/', '--')}" / "snapshots"
    if not snapshots.is_dir():
        return []
    return sorted(
        (p for p in snapshots.iterdir() if (p / CONFIG_FILE).is_file()),
        key=lambda p: p.stat().st_mtime,
        reverse=True,
    )


def resolve_vlm_dir(checkpoint_dir: Path, model_name: str, vlm_dir=None) -> Path:
    """Return the backbone dir: explicit, else vlm_model_name as a local path, else the HF cache."""
    if vlm_dir is not None:
        path = Path(vlm_dir)
        if not (path / CONFIG_FILE).is_file():
            raise CheckpointError(
                f"{path / CONFIG_FILE}: missing (the backbone dir holds config.json + tokenizer.json)"
            )
        return path
    looked = []
    if model_name:
        for candidate in (checkpoint_dir / model_name, Path(model_name)):
            looked.append(str(candidate))
            if (candidate / CONFIG_FILE).is_file():
                return candidate
        cached = hf_cache_dirs(model_name)
        if cached:
            return cached[0]
        looked.append(f"HF cache models--{model_name.replace('/', '--')}/snapshots/*")
    raise CheckpointError(
        f"{checkpoint_dir / CONFIG_FILE}: backbone {model_name!r} not found "
        f"(looked in: {', '.join(looked)}); pass its directory (vlm=DIR / --vlm DIR), or fetch it "
        f"once with `huggingface-cli download {model_name or 'ORG/NAME'} config.json "
        f"tokenizer.json tokenizer_config.json`"
    )


def load_tokenizer(vlm_dir: Path):
    """Return the backbone's own tokenizer (tokenizers library); no fallback."""
    from tokenizers import Tokenizer

    path = vlm_dir / "tokenizer.json"
    if not path.is_file():
        raise CheckpointError(
            f"{path}: missing (the backbone's tokenizer; no other tokenizer is substituted)"
        )
    try:
        return Tokenizer.from_file(str(path))
    except Exception as exc:  # tokenizers raises a bare Exception on malformed files
        raise CheckpointError(f"{path}: not a readable tokenizer: {exc}") from exc


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        _refuse_pickles(path.parent, path.name)
        if path.with_name(path.name + ".index.json").is_file():
            raise CheckpointError(f"{path}: missing; the directory holds shards ({path.name}.index.json), "
                                  f"and LeRobot saves a policy as one file: save it with save_pretrained")
        raise CheckpointError(f"{path}: missing")
    try:
        with safe_open(str(path), framework="pt") as handle:
            return {k: handle.get_tensor(k) for k in handle.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: not a readable safetensors file: {exc}") from exc


@dataclass(frozen=True)
class Normalizer:
    """Per-feature normalization as LeRobot's normalizer steps apply it (float32)."""

    mode: str
    stats: dict[str, torch.Tensor]
    eps: float

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map robot units to the model's normalized units."""
        if self.mode == "MEAN_STD":
            return (x - self.stats["mean"]) / (self.stats["std"] + self.eps)
        if self.mode == "MIN_MAX":
            span = self.stats["max"] - self.stats["min"]
            span = torch.where(span == 0, torch.tensor(self.eps, dtype=span.dtype), span)
            return 2 * (x - self.stats["min"]) / span - 1
        return x

    def inverse(self, x: torch.Tensor) -> torch.Tensor:
        """Map normalized units back to robot units."""
        if self.mode == "MEAN_STD":
            return x * self.stats["std"] + self.stats["mean"]
        if self.mode == "MIN_MAX":
            span = self.stats["max"] - self.stats["min"]
            span = torch.where(span == 0, torch.tensor(self.eps, dtype=span.dtype), span)
            return (x + 1) / 2 * span + self.stats["min"]
        return x


NEEDED_STATS = {"MEAN_STD": ("mean", "std"), "MIN_MAX": ("min", "max"), "IDENTITY": ()}


def load_normalizer(
    checkpoint_dir: Path, processor_file: str, step_name: str, feature: str, cfg: SmolVLAConfig
) -> Normalizer:
    """Return the normalizer of one feature from a processor JSON and the stats file it names."""
    path = checkpoint_dir / processor_file
    data = read_json(path)
    steps = data.get("steps")
    if not isinstance(steps, list):
        raise CheckpointError(f"{path}: missing key 'steps'")
    step = next((s for s in steps if isinstance(s, dict) and s.get("registry_name") == step_name), None)
    mode = cfg.normalization_of(feature)
    if step is None:
        if mode != "IDENTITY":
            raise CheckpointError(f"{path}: no {step_name!r} step, but {feature} is {mode}")
        return Normalizer("IDENTITY", {}, 1e-8)
    config = step.get("config", {})
    if not isinstance(config, dict):
        raise CheckpointError(f"{path}: step {step_name!r} has a 'config' that is not an object")
    eps = config.get("eps", 1e-8)
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 <= eps < math.inf:
        raise CheckpointError(f"{path}: step {step_name!r} has eps {eps!r}; expected a number >= 0")
    state_file = step.get("state_file")
    if not isinstance(state_file, str):
        raise CheckpointError(f"{path}: step {step_name!r} has no 'state_file'")
    if Path(state_file).name != state_file:
        raise CheckpointError(
            f"{path}: state_file {state_file!r} must be a file name in the checkpoint dir"
        )
    stats_path = checkpoint_dir / state_file
    tensors = _read_safetensors(stats_path)
    stats = {}
    for stat in NEEDED_STATS[mode]:
        key = f"{feature}.{stat}"
        if key not in tensors:
            if stat == NEEDED_STATS[mode][0] and not any(k.startswith(feature + ".") for k in tensors):
                return Normalizer("IDENTITY", {}, eps)  # LeRobot passes a feature without stats unchanged
            raise CheckpointError(f"{stats_path}: missing key {key!r}")
        value = tensors[key].to(torch.float32)
        if not torch.isfinite(value).all():
            raise CheckpointError(f"{stats_path}: key {key!r} holds non-finite values (NaN/inf)")
        dim = cfg.state_dim if feature == STATE_KEY else cfg.action_dim
        if value.numel() != dim:
            raise CheckpointError(
                f"{stats_path}: key {key!r} has shape {tuple(value.shape)}, expected ({dim},)"
            )
        stats[stat] = value.reshape(dim)
    return Normalizer(mode, stats, eps)


def _dtype_name(tensor: torch.Tensor) -> str:
    return str(tensor.dtype).removeprefix("torch.")


@dataclass(frozen=True)
class CheckpointFiles:
    """Everything read from disk, validated, before the network is built."""

    directory: Path
    vlm_dir: Path
    cfg: SmolVLAConfig
    vlm: VLMConfig
    weights: dict[str, torch.Tensor]
    dtype_layout: dict[str, int]
    parameter_count: int
    state_normalizer: Normalizer
    action_normalizer: Normalizer
    tokenizer: object


def read_checkpoint(checkpoint_dir, vlm_dir=None) -> CheckpointFiles:
    """Read and validate every file of a SmolVLA checkpoint directory."""
    directory = Path(checkpoint_dir)
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: not a checkpoint directory")
    cfg_path = directory / CONFIG_FILE
    cfg = parse_smolvla_config(read_json(cfg_path), cfg_path)
    backbone_dir = resolve_vlm_dir(directory, cfg.vlm_model_name, vlm_dir)
    vlm_path = backbone_dir / CONFIG_FILE
    vlm = parse_vlm_config(read_json(vlm_path), vlm_path)
    if cfg.num_vlm_layers > vlm.text.num_hidden_layers:
        raise CheckpointError(
            f"{cfg_path}: num_vlm_layers {cfg.num_vlm_layers} > the backbone's "
            f"{vlm.text.num_hidden_layers} layers ({vlm_path})"
        )
    weights = _read_safetensors(directory / WEIGHTS_FILE)
    layout = Counter(_dtype_name(t) for t in weights.values())
    count = sum(t.numel() for t in weights.values())
    check_weight_values(directory / WEIGHTS_FILE, weights)
    return CheckpointFiles(
        directory=directory,
        vlm_dir=backbone_dir,
        cfg=cfg,
        vlm=vlm,
        weights=weights,
        dtype_layout=dict(layout),
        parameter_count=count,
        state_normalizer=load_normalizer(
            directory, PREPROCESSOR_FILE, "normalizer_processor", STATE_KEY, cfg
        ),
        action_normalizer=load_normalizer(
            directory, POSTPROCESSOR_FILE, "unnormalizer_processor", ACTION_KEY, cfg
        ),
        tokenizer=load_tokenizer(backbone_dir),
    )


def unused_weight_names(cfg: SmolVLAConfig) -> set[str]:
    """Return the saved tensors LeRobot never lets affect actions (so the model has no place for them)."""
    last = f"{WEIGHT_PREFIX}vlm_with_expert.vlm.model.text_model.layers.{cfg.num_vlm_layers - 1}."
    return {
        f"{WEIGHT_PREFIX}vlm_with_expert.vlm.lm_head.weight",
        f"{WEIGHT_PREFIX}vlm_with_expert.vlm.model.text_model.norm.weight",
        *(
            last + p
            for p in (
                "self_attn.q_proj.weight",
                "self_attn.o_proj.weight",
                "mlp.gate_proj.weight",
                "mlp.up_proj.weight",
                "mlp.down_proj.weight",
                "post_attention_layernorm.weight",
            )
        ),
    }


def map_weights(
    expected: dict[str, tuple[int, ...]],
    shapes: dict[str, tuple[int, ...]],
    cfg: SmolVLAConfig,
    source: str,
) -> tuple[dict[str, str], set[str]]:
    """Map module names to file keys with shape checks; return (mapping, ignored file keys).

    Raise CheckpointError naming the file and key on a missing, unexpected or misshaped tensor.
    """
    unused = unused_weight_names(cfg)
    mapping = {}
    for name, shape in expected.items():
        key = WEIGHT_PREFIX + name
        if key not in shapes:
            raise CheckpointError(f"{source}: missing key {key!r} (expected shape {tuple(shape)})")
        if tuple(shapes[key]) != tuple(shape):
            raise CheckpointError(
                f"{source}: key {key!r} has shape {tuple(shapes[key])}, expected {tuple(shape)}"
            )
        mapping[name] = key
    ignored = set(shapes) - set(mapping.values())
    unknown = sorted(ignored - unused)
    if unknown:
        raise CheckpointError(
            f"{source}: unknown key {unknown[0]!r} ({len(unknown)} unexpected tensors) for this config"
        )
    return mapping, ignored
