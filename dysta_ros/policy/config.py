"""Model configuration: validated dataclasses and the tiny / small / base presets."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from dysta_ros.errors import ConfigError
from dysta_ros.robot import ACTION_SPACES  # what a robot can be commanded in: defined once, there

BACKBONE_FAMILIES = ("llama", "qwen2", "gemma")
ACTION_HEADS = ("flow", "regression")


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


@dataclass
class VisionConfig:
    """SigLIP-style ViT: one square image -> (image_size / patch_size)^2 patch tokens."""

    image_size: int = 64
    patch_size: int = 16
    width: int = 64  # hidden size
    layers: int = 2
    heads: int = 4
    mlp_width: int = 128

    def __post_init__(self):
        _require(
            self.image_size > 0 and self.patch_size > 0 and self.image_size % self.patch_size == 0,
            f"vision.image_size ({self.image_size}) must be a positive multiple of "
            f"vision.patch_size ({self.patch_size})",
        )
        _require(
            self.width % self.heads == 0,
            f"vision.width ({self.width}) must be divisible by vision.heads ({self.heads})",
        )
        _require(self.layers >= 1, f"vision.layers must be >= 1, got {self.layers}")

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size

    @property
    def tokens(self) -> int:
        return self.grid * self.grid


@dataclass
class BackboneConfig:
    """Causal decoder (transformers Llama / Qwen2 / Gemma) driven with inputs_embeds."""

    family: str = "llama"
    width: int = 64
    layers: int = 2
    heads: int = 4
    kv_heads: int = 2
    mlp_width: int = 128
    rope_theta: float = 10000.0
    vocab_size: int = 264  # byte tokenizer: 256 bytes + specials (a loaded tokenizer may raise it)

    def __post_init__(self):
        _require(
            self.family in BACKBONE_FAMILIES,
            f"backbone.family {self.family!r} is not one of {', '.join(BACKBONE_FAMILIES)}",
        )
        _require(
            self.width % self.heads == 0,
            f"backbone.width ({self.width}) must be divisible by backbone.heads ({self.heads})",
        )
        _require(
            self.kv_heads >= 1 and self.heads % self.kv_heads == 0,
            f"backbone.heads ({self.heads}) must be a multiple of backbone.kv_heads ({self.kv_heads})",
        )
        _require(self.layers >= 1, f"backbone.layers must be >= 1, got {self.layers}")

    @property
    def head_dim(self) -> int:
        return self.width // self.heads


@dataclass
class ExpertConfig:
    """Flow-matching action expert: attends to the backbone's prefix K/V of mapped layers."""

    width: int = 32
    layers: int = 2  # expert layer j reads backbone layer (j + 1) * backbone.layers // layers - 1
    mlp_width: int = 64
    flow_steps: int = 10  # Euler steps from t=1 (noise) to t=0
    head: str = "flow"  # "flow" or "regression" (one pass at t=1 without noise)

    def __post_init__(self):
        _require(self.layers >= 1, f"expert.layers must be >= 1, got {self.layers}")
        _require(self.flow_steps >= 1, f"expert.flow_steps must be >= 1, got {self.flow_steps}")
        _require(
            self.head in ACTION_HEADS, f"expert.head {self.head!r} is not one of {', '.join(ACTION_HEADS)}"
        )


@dataclass
class PolicyConfig:
    """Everything that shapes the model, plus the normalisation stats of state and action."""

    preset: str = "tiny"
    camera_names: list[str] = field(default_factory=lambda: ["main"])
    state_dim: int = 6
    action_dim: int = 6
    horizon: int = 8
    dt: float = 0.1  # seconds between actions of a chunk
    action_space: str = "joint_position"
    history: int = 4  # default number of frames T the runtime keeps
    vision: VisionConfig = field(default_factory=VisionConfig)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    expert: ExpertConfig = field(default_factory=ExpertConfig)
    # Normalisation: model space = (x - mean) / std; empty lists mean zeros / ones.
    state_mean: list[float] = field(default_factory=list)
    state_std: list[float] = field(default_factory=list)
    action_mean: list[float] = field(default_factory=list)
    action_std: list[float] = field(default_factory=list)

    def __post_init__(self):
        if isinstance(self.vision, dict):
            self.vision = VisionConfig(**self.vision)
        if isinstance(self.backbone, dict):
            self.backbone = BackboneConfig(**self.backbone)
        if isinstance(self.expert, dict):
            self.expert = ExpertConfig(**self.expert)
        _require(
            len(self.camera_names) >= 1 and len(set(self.camera_names)) == len(self.camera_names),
            f"camera_names must be non-empty and unique, got {self.camera_names}",
        )
        for name in ("state_dim", "action_dim", "horizon", "history"):
            _require(int(getattr(self, name)) >= 1, f"{name} must be >= 1, got {getattr(self, name)}")
        _require(self.dt > 0, f"dt must be > 0, got {self.dt}")
        _require(
            self.action_space in ACTION_SPACES,
            f"action_space {self.action_space!r} is not one of {', '.join(ACTION_SPACES)}",
        )
        for name, dim in (
            ("state_mean", self.state_dim),
            ("state_std", self.state_dim),
            ("action_mean", self.action_dim),
            ("action_std", self.action_dim),
        ):
            values = getattr(self, name)
            _require(len(values) in (0, dim), f"{name} has {len(values)} values, expected {dim}")
        for name in ("state_std", "action_std"):
            _require(all(v > 0 for v in getattr(self, name)), f"{name} must be > 0 everywhere")

    @property
    def tokens_per_frame(self) -> int:
        return self.vision.tokens * len(self.camera_names)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PolicyConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        _require(not unknown, f"unknown config keys {unknown}; known: {sorted(known)}")
        return cls(**data)


PRESETS: dict[str, PolicyConfig] = {
    # Tests: a step in well under a second on CPU.
    "tiny": PolicyConfig(
        preset="tiny",
        camera_names=["main"],
        horizon=8,
        history=4,
        vision=VisionConfig(image_size=64, patch_size=16, width=64, layers=2, heads=4, mlp_width=128),
        backbone=BackboneConfig(width=64, layers=2, heads=4, kv_heads=2, mlp_width=128),
        expert=ExpertConfig(width=32, layers=2, mlp_width=64, flow_steps=10),
    ),
    # CPU benchmark: the backbone dominates, as in real VLAs (a full step ~0.3-1 s at T=1).
    "small": PolicyConfig(
        preset="small",
        camera_names=["main"],
        horizon=10,
        history=1,
        vision=VisionConfig(image_size=224, patch_size=16, width=384, layers=6, heads=6, mlp_width=1536),
        # ~136M-parameter Llama: about 85 % of a `full` step at T=1, as the LLM is in real VLAs.
        backbone=BackboneConfig(width=1024, layers=12, heads=16, kv_heads=4, mlp_width=2816),
        # Reads backbone layers 2, 5, 8, 11.
        expert=ExpertConfig(width=384, layers=4, mlp_width=1024, flow_steps=10),
    ),
    # SmolVLA-sized (SmolLM2-360M-like 16-layer backbone, 0.75x expert): for GPUs.
    "base": PolicyConfig(
        preset="base",
        camera_names=["main", "wrist"],
        horizon=50,
        history=1,
        vision=VisionConfig(image_size=224, patch_size=16, width=768, layers=12, heads=12, mlp_width=3072),
        backbone=BackboneConfig(
            width=960, layers=16, heads=15, kv_heads=5, mlp_width=2560, rope_theta=100000.0, vocab_size=49280
        ),
        expert=ExpertConfig(width=720, layers=16, mlp_width=2048, flow_steps=10),
    ),
}


def preset_config(name: str, overrides: dict[str, Any] | None = None) -> PolicyConfig:
    """Return a fresh copy of a preset with top-level or dotted overrides applied."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)} or a checkpoint dir")
    return apply_overrides(PRESETS[name], overrides)


def apply_overrides(config: PolicyConfig, overrides: dict[str, Any] | None) -> PolicyConfig:
    """Return a copy of config with overrides ({"state_dim": 7, "backbone.layers": 4}) validated."""
    data = config.to_dict()
    for key, value in (overrides or {}).items():
        target, leaf = data, key
        if "." in key:
            section, leaf = key.split(".", 1)
            if not isinstance(data.get(section), dict):
                raise ConfigError(f"override {key!r}: {section!r} is not a config section")
            target = data[section]
        if leaf not in target:
            raise ConfigError(f"override {key!r} names no config field; fields: {sorted(target)}")
        target[leaf] = value
    try:
        return PolicyConfig.from_dict(data)
    except TypeError as exc:
        raise ConfigError(f"invalid config: {exc}") from exc


# How an entropy profile samples each layer (`dysta-ros profile-entropy`, VLA-Cache's measurement);
# here, not in attention.py, so profile-entropy's --help shows them without importing torch.
PROFILE_HEADS, PROFILE_QUERIES = 4, 32
