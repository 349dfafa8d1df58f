"""SmolVLA configuration: LeRobot's config.json plus the backbone's vlm/config.json, validated once."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dysta_ros.errors import CheckpointError
from dysta_ros.policy.checkpoint_files import read_json_file

NORMALIZATION_MODES = ("MEAN_STD", "MIN_MAX", "IDENTITY")
PAD_LANGUAGE_MODES = ("max_length", "longest")
CAMERA_PREFIX = "observation.images."
STATE_KEY = "observation.state"
ACTION_KEY = "action"


def read_json(path: Path) -> dict[str, Any]:
    """Return a JSON object from a file, or raise CheckpointError naming the file."""
    data = read_json_file(path)
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def _get(data: dict, key: str, kind, path: Path):
    if key not in data:
        raise CheckpointError(f"{path}: missing key {key!r}")
    value = data[key]
    if kind is int and isinstance(value, bool) or not isinstance(value, kind):
        raise CheckpointError(
            f"{path}: key {key!r} must be {getattr(kind, '__name__', kind)}, got {value!r}"
        )
    return value


def _positive(data: dict, key: str, path: Path) -> int:
    value = _get(data, key, int, path)
    if value <= 0:
        raise CheckpointError(f"{path}: key {key!r} must be > 0, got {value}")
    return value


def _number(data: dict, key: str, default: float | None, path: Path, where: str = "") -> float:
    """Return a finite number > 0 (an eps, a period, a width multiplier); default None: required."""
    if default is None and key not in data:
        raise CheckpointError(f"{path}: missing key {where}{key!r}")
    value = data.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or value <= 0:
        raise CheckpointError(f"{path}: key {where}{key!r} must be a number > 0, got {value!r}")
    return float(value)


def _feature(features: dict, key: str, section: str, path: Path) -> tuple[str, tuple[int, ...]]:
    """Return a feature's (type, shape); its shape must be a list of positive integers."""
    feature = features[key]
    kind = feature.get("type") if isinstance(feature, dict) else None
    shape = feature.get("shape") if isinstance(feature, dict) else None
    if not isinstance(kind, str) or not isinstance(shape, list) or not shape or not all(
            isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in shape):
        raise CheckpointError(f"{path}: {section}[{key!r}] needs a 'type' (text) and a 'shape' "
                              f"(a list of positive integers), got {feature!r}")
    return kind, tuple(shape)


@dataclass(frozen=True)
class VisionConfig:
    """The SigLIP-like vision tower of the backbone (vlm/config.json vision_config)."""

    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    image_size: int
    patch_size: int
    layer_norm_eps: float
    raw: dict = field(repr=False, compare=False)

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2


@dataclass(frozen=True)
class TextConfig:
    """The Llama-style text model of the backbone (vlm/config.json text_config)."""

    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    vocab_size: int
    rms_norm_eps: float
    pad_token_id: int
    raw: dict = field(repr=False, compare=False)


@dataclass(frozen=True)
class VLMConfig:
    """The backbone description: vision tower, pixel-shuffle factor, text model."""

    vision: VisionConfig
    text: TextConfig
    scale_factor: int
    raw: dict = field(repr=False, compare=False)

    @property
    def image_tokens_per_camera(self) -> int:
        return self.vision.num_patches // self.scale_factor**2


def parse_vlm_config(data: dict, path: Path) -> VLMConfig:
    """Validate a SmolVLM config.json (as transformers writes it)."""
    vision_raw = _get(data, "vision_config", dict, path)
    text_raw = _get(data, "text_config", dict, path)
    vision = VisionConfig(
        **{
            k: _positive(vision_raw, k, path)
            for k in (
                "hidden_size",
                "intermediate_size",
                "num_hidden_layers",
                "num_attention_heads",
                "image_size",
                "patch_size",
            )
        },
        layer_norm_eps=_number(vision_raw, "layer_norm_eps", 1e-6, path, "vision_config "),
        raw=vision_raw,
    )
    heads = _positive(text_raw, "num_attention_heads", path)
    hidden = _positive(text_raw, "hidden_size", path)
    head_dim = _positive(text_raw, "head_dim", path) if text_raw.get("head_dim") else hidden // heads
    text = TextConfig(
        hidden_size=hidden,
        intermediate_size=_positive(text_raw, "intermediate_size", path),
        num_hidden_layers=_positive(text_raw, "num_hidden_layers", path),
        num_attention_heads=heads,
        num_key_value_heads=_positive(text_raw, "num_key_value_heads", path)
        if "num_key_value_heads" in text_raw else heads,
        head_dim=head_dim,
        vocab_size=_positive(text_raw, "vocab_size", path),
        rms_norm_eps=_number(text_raw, "rms_norm_eps", 1e-6, path, "text_config "),
        # the text config's pad id, not the top-level _pad_token_id (which is something else)
        pad_token_id=_get(text_raw, "pad_token_id", int, path),
        raw=text_raw,
    )
    if heads % text.num_key_value_heads:
        raise CheckpointError(
            f"{path}: text_config num_attention_heads {heads} is not a multiple of "
            f"num_key_value_heads {text.num_key_value_heads}"
        )
    scale = _positive(data, "scale_factor", path)
    side = vision.image_size // vision.patch_size
    if side % scale:
        raise CheckpointError(f"{path}: scale_factor {scale} does not divide the {side}x{side} patch grid")
    return VLMConfig(vision=vision, text=text, scale_factor=scale, raw=data)


@dataclass(frozen=True)
class SmolVLAConfig:
    """Every value inference needs from a LeRobot SmolVLA config.json."""

    camera_keys: tuple[str, ...]
    camera_shapes: tuple[tuple[int, ...], ...]
    state_dim: int
    action_dim: int
    state_names: tuple[str, ...]
    action_names: tuple[str, ...]
    chunk_size: int
    n_action_steps: int
    num_steps: int
    max_state_dim: int
    max_action_dim: int
    resize: tuple[int, int]  # (width, height)
    tokenizer_max_length: int
    pad_language_to: str
    num_vlm_layers: int
    self_attn_every_n_layers: int
    expert_width_multiplier: float
    attention_mode: str
    min_period: float
    max_period: float
    normalization_mapping: dict[str, str]
    feature_types: dict[str, str]
    vlm_model_name: str
    raw: dict = field(repr=False, compare=False)
    num_expert_layers: int = 0  # expert layers E (0: one per kept backbone layer); E divides num_vlm_layers
    empty_cameras: int = 0  # LeRobot's placeholder cameras: all-padding images, masked out of the prefix

    @property
    def camera_names(self) -> tuple[str, ...]:
        return tuple(k[len(CAMERA_PREFIX) :] for k in self.camera_keys)

    def normalization_of(self, feature: str) -> str:
        """Return the normalization mode of a feature key (by its LeRobot feature type)."""
        return self.normalization_mapping.get(self.feature_types.get(feature, ""), "IDENTITY")

    def expert_layer_map(self) -> list[tuple[int, int]]:
        """Return (backbone layer, expert layer) pairs: the expert runs beside every m-th backbone layer.

        With E expert layers over V kept backbone layers, m = V / E and expert layer j sits at
        backbone layer j * m, reading that layer's K/V; between them its hidden state passes
        unchanged (as in LeRobot 0.4.4).
        """
        experts = self.num_expert_layers or self.num_vlm_layers
        step = self.num_vlm_layers // experts
        return [(j * step, j) for j in range(experts)]

    def is_self_attention(self, layer: int) -> bool:
        """Say whether layer `layer` attends to the prefix plus itself (else cross-attends).

        LeRobot shapes expert layer j's projections by j and runs backbone layer i's attention by i;
        parse_smolvla_config refuses a checkpoint where the two disagree.
        """
        if "cross" not in self.attention_mode:
            return True
        return self.self_attn_every_n_layers > 0 and layer % self.self_attn_every_n_layers == 0


def _feature_names(feature: dict) -> tuple[str, ...]:
    names = feature.get("names")
    if isinstance(names, dict):  # LeRobot datasets sometimes write {"motors": [...]}
        names = next(iter(names.values()), None)
    if isinstance(names, list) and all(isinstance(n, str) for n in names):
        return tuple(names)
    return ()


def parse_smolvla_config(data: dict, path: Path) -> SmolVLAConfig:
    """Validate a LeRobot SmolVLA config.json."""
    kind = data.get("type")
    if kind != "smolvla":
        raise CheckpointError(f"{path}: key 'type' is {kind!r}; this loader reads 'smolvla' checkpoints")
    inputs = _get(data, "input_features", dict, path)
    outputs = _get(data, "output_features", dict, path)
    cameras, shapes, types = [], [], {}
    for key in inputs:
        types[key], shape = _feature(inputs, key, "input_features", path)
        if types[key] == "VISUAL":
            if not key.startswith(CAMERA_PREFIX):
                raise CheckpointError(
                    f"{path}: camera feature {key!r} does not start with {CAMERA_PREFIX!r}"
                )
            cameras.append(key)
            shapes.append(shape)
    if not cameras:
        raise CheckpointError(f"{path}: input_features has no VISUAL feature (camera)")
    if STATE_KEY not in inputs:
        raise CheckpointError(f"{path}: input_features has no {STATE_KEY!r}")
    if ACTION_KEY not in outputs:
        raise CheckpointError(f"{path}: output_features has no {ACTION_KEY!r}")
    types[ACTION_KEY], action_shape = _feature(outputs, ACTION_KEY, "output_features", path)
    state_dim = math.prod(_feature(inputs, STATE_KEY, "input_features", path)[1])
    action_dim = math.prod(action_shape)
    mapping = _get(data, "normalization_mapping", dict, path)
    for feature_type, mode in mapping.items():
        if mode not in NORMALIZATION_MODES:
            raise CheckpointError(
                f"{path}: normalization_mapping[{feature_type!r}] = {mode!r}; "
                f"supported: {', '.join(NORMALIZATION_MODES)}"
            )
    resize = _get(data, "resize_imgs_with_padding", list, path)
    if len(resize) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in resize):
        raise CheckpointError(f"{path}: resize_imgs_with_padding must be [width, height], got {resize!r}")
    pad_to = _get(data, "pad_language_to", str, path)
    if pad_to not in PAD_LANGUAGE_MODES:
        raise CheckpointError(
            f"{path}: pad_language_to {pad_to!r}; supported: {', '.join(PAD_LANGUAGE_MODES)}"
        )
    num_vlm_layers = _positive(data, "num_vlm_layers", path)
    num_expert_layers = data.get("num_expert_layers", 0)
    if not isinstance(num_expert_layers, int) or isinstance(num_expert_layers, bool):
        raise CheckpointError(f"{path}: num_expert_layers must be an integer, got {num_expert_layers!r}")
    num_expert_layers = max(num_expert_layers, 0)  # <= 0: one expert layer per backbone layer
    if num_expert_layers and num_vlm_layers % num_expert_layers:
        raise CheckpointError(f"{path}: num_expert_layers {num_expert_layers} does not divide num_vlm_layers "
                              f"{num_vlm_layers} (LeRobot requires it)")
    empty_cameras = data.get("empty_cameras", 0)
    if not isinstance(empty_cameras, int) or isinstance(empty_cameras, bool) or empty_cameras < 0:
        raise CheckpointError(f"{path}: empty_cameras must be an integer >= 0, got {empty_cameras!r}")
    # LeRobot adds its placeholder cameras as input features; they never come from a robot.
    # Recognised by name, not enumerated: any count is valid, and range(10**12) would never end.
    numbered = {key: key.removeprefix(f"{CAMERA_PREFIX}empty_camera_") for key in cameras}
    placeholders = {key for key, n in numbered.items()
                    if n != key and n.isdigit() and n == str(int(n)) and int(n) < empty_cameras}
    kept = [(key, shape) for key, shape in zip(cameras, shapes) if key not in placeholders]
    if not kept:
        raise CheckpointError(f"{path}: input_features has only placeholder cameras {sorted(placeholders)}")
    cameras, shapes = [k for k, _ in kept], [s for _, s in kept]
    if data.get("adapt_to_pi_aloha") or data.get("add_image_special_tokens"):
        raise CheckpointError(f"{path}: adapt_to_pi_aloha / add_image_special_tokens are not supported yet")
    attention_mode = _get(data, "attention_mode", str, path)
    max_state_dim = _positive(data, "max_state_dim", path)
    max_action_dim = _positive(data, "max_action_dim", path)
    if state_dim > max_state_dim or action_dim > max_action_dim:
        raise CheckpointError(
            f"{path}: state/action dims {state_dim}/{action_dim} exceed "
            f"max_state_dim/max_action_dim {max_state_dim}/{max_action_dim}"
        )
    config = SmolVLAConfig(
        camera_keys=tuple(cameras),
        camera_shapes=tuple(shapes),
        state_dim=state_dim,
        action_dim=action_dim,
        state_names=_feature_names(inputs[STATE_KEY]),
        action_names=_feature_names(outputs[ACTION_KEY]),
        chunk_size=_positive(data, "chunk_size", path),
        n_action_steps=_positive(data, "n_action_steps", path),
        num_steps=_positive(data, "num_steps", path),
        max_state_dim=max_state_dim,
        max_action_dim=max_action_dim,
        resize=(resize[0], resize[1]),
        tokenizer_max_length=_positive(data, "tokenizer_max_length", path),
        pad_language_to=pad_to,
        num_vlm_layers=num_vlm_layers,
        self_attn_every_n_layers=_get(data, "self_attn_every_n_layers", int, path),
        expert_width_multiplier=_number(data, "expert_width_multiplier", None, path),
        attention_mode=attention_mode,
        min_period=_number(data, "min_period", None, path),
        max_period=_number(data, "max_period", None, path),
        normalization_mapping=dict(mapping),
        feature_types=types,
        vlm_model_name=str(data.get("vlm_model_name", "")),
        raw=data,
        num_expert_layers=num_expert_layers,
        empty_cameras=empty_cameras,
    )
    paired = {backbone_layer for backbone_layer, _ in config.expert_layer_map()}
    lone = [i for i in range(num_vlm_layers) if i not in paired and config.is_self_attention(i)]
    if lone:
        raise CheckpointError(
            f"{path}: num_expert_layers {num_expert_layers} with self_attn_every_n_layers "
            f"{config.self_attn_every_n_layers}: backbone layer {lone[0]} has no expert layer but is a "
            f"self-attention layer (LeRobot cannot run it either)")
    for backbone_layer, expert_layer in config.expert_layer_map():
        if config.is_self_attention(backbone_layer) != config.is_self_attention(expert_layer):
            raise CheckpointError(
                f"{path}: num_expert_layers {num_expert_layers} with self_attn_every_n_layers "
                f"{config.self_attn_every_n_layers}: expert layer {expert_layer} is shaped for "
                f"{'self' if config.is_self_attention(expert_layer) else 'cross'}-attention but runs at "
                f"backbone layer {backbone_layer} as the other kind (LeRobot cannot run it either)")
    return config


def expert_intermediate_size(hidden: int, multiplier: int = 4, multiple_of: int = 256) -> int:
    """Return the expert MLP width LeRobot derives from the expert width (Llama's 2/3 rule)."""
    size = int(multiplier * int(2 * hidden / 3))
    return multiple_of * ((size + multiple_of - 1) // multiple_of)
