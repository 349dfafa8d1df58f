"""What every strategy shares: its parameters, the step context it reads, the result it returns.

A strategy turns the frames of the history window (vision-encoded once each), the language
and the state tokens into per-layer backbone K/V (the prefix the action expert reads), by
executing AttentionPlans through one backbone. Positions always follow the `full` layout
[frame slot 0 .. slot T-1 | language | state], so a strategy that skips nothing is `full`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from dysta_ros.errors import ConfigError
from dysta_ros.policy.attention import AttentionPlan
from dysta_ros.policy.speed import SPEED_KEYS
from dysta_ros.tokens.flops import backbone_flops


# Frames a window may hold: far past what any policy here uses (GoToHunt's paper goes to 500),
# but a typo such as 100000000 is refused instead of allocating a context of billions of tokens.
MAX_HISTORY = 1024


def check_history(history, allow_default: bool = False) -> int:
    """Return `history` as an int in [1, MAX_HISTORY] (0 too with allow_default); else ConfigError."""
    low = 0 if allow_default else 1
    if isinstance(history, bool) or not isinstance(history, int) or not low <= history <= MAX_HISTORY:
        default = " (0 = the model's default)" if allow_default else ""
        raise ConfigError(f"history must be an integer in [{low}, {MAX_HISTORY}]{default}, got {history!r}")
    return history


@dataclass
class StrategyParams:
    """Parameters every strategy accepts."""

    history: int = 0  # frames T in the window; 0 = the model's default

    def __post_init__(self):
        check_history(self.history, allow_default=True)
        for name, value in dataclasses.asdict(self).items():
            # NaN passes every range check a subclass makes (each comparison is False) and then
            # silently means "never": dysta.delta_l1 NaN never refreshed the static cache on change.
            if isinstance(value, float) and math.isnan(value):
                raise ConfigError(f"{name} must be a number, got {value}")

    def check_capabilities(self, capabilities) -> None:
        """Raise ConfigError if these values cannot run on a family with `capabilities` (contract)."""

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None, strategy: str):
        """Build from flat keys (YAML / ROS parameters); unknown keys name the allowed ones."""
        # speed options (policy/speed.py) may stand beside a strategy's keys; they are not its own
        values = {k: v for k, v in (values or {}).items() if k not in SPEED_KEYS}
        allowed = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - set(allowed))
        if unknown:
            raise ConfigError(
                f"strategy {strategy!r}: unknown parameter(s) {unknown}; allowed: {sorted(allowed)}"
            )
        try:
            return cls(**values)
        except TypeError as exc:
            raise ConfigError(f"strategy {strategy!r}: {exc}") from exc


@dataclass
class Frame:
    """One history frame, vision-encoded once for its whole life in the window."""

    features: torch.Tensor  # (N, Cv) vision features (what change and similarity are measured on)
    tokens: torch.Tensor  # (N, W) projected to the backbone width
    index: int  # frame counter since reset


@dataclass
class StepContext:
    """The inputs of one step and the means to run the backbone on them."""

    model: Any  # a PolicyModel (policy/contract.py); tokens/ never imports a family
    frames: list[Frame]  # T frames, slot 0 = oldest
    text: torch.Tensor  # (n_text, W)
    state: torch.Tensor  # (1, W)
    grid: int  # patches per side of one camera image
    cameras: int
    layer_tokens: int = 0  # tokens computed summed over layers and calls
    attended_pairs: int = 0  # (query, key) pairs over all layers and calls

    @property
    def computed_tokens(self) -> int:
        """Tokens the backbone computed this step over all calls, as a mean over layers.

        A plan may drop queries at depth (layer_queries), so this is not one layer's count.
        """
        return round(self.layer_tokens / self.model.cfg.backbone.layers)

    @property
    def tokens_per_frame(self) -> int:
        return self.cameras * self.grid * self.grid

    @property
    def history(self) -> int:
        return len(self.frames)

    @property
    def frames_length(self) -> int:
        return self.history * self.tokens_per_frame

    @property
    def full_length(self) -> int:
        return self.frames_length + self.text.shape[0] + 1

    @property
    def device(self) -> torch.device:
        return self.text.device

    def tail(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Language and state tokens (n_text+1, W) and their full-layout positions."""
        embeds = torch.cat([self.text, self.state])
        positions = torch.arange(self.frames_length, self.full_length, device=self.device)
        return embeds, positions

    def slot_positions(self, slot: int, patches: torch.Tensor) -> torch.Tensor:
        """Full-layout positions of patches (n,) of the frame in history slot `slot`."""
        return slot * self.tokens_per_frame + patches

    def arange(self, start: int, stop: int) -> torch.Tensor:
        return torch.arange(start, stop, device=self.device)

    def run(self, embeds: torch.Tensor, positions: torch.Tensor, plan: AttentionPlan) -> AttentionPlan:
        """Run the backbone on embeds (Q, W) at positions (Q,) under plan; count its work."""
        self.model.run_backbone(embeds, positions, plan)
        self.layer_tokens += plan.layer_tokens
        self.attended_pairs += plan.attended_pairs
        return plan


@dataclass
class PrefixResult:
    """Per-layer K/V for the action expert and what producing it cost."""

    records: dict[int, tuple[torch.Tensor, torch.Tensor]]
    context_tokens: int
    dynamic_tokens: int = 0
    frames_attended: int = 0
    gate_ms: float = 0.0
    stats: dict[str, float] = field(default_factory=dict)  # the strategy's own numbers -> StepStats
    extra: dict[str, Any] = field(default_factory=dict)  # the strategy's own non-scalar facts (anchors)


class Strategy:
    """Base of the token strategies: parameters in, per-layer prefix K/V out, caches between."""

    name: ClassVar[str] = ""
    Params: ClassVar[type[StrategyParams]] = StrategyParams

    def __init__(self, params: StrategyParams, model_config):
        self.params = params
        self.model_config = model_config

    def reset(self) -> None:
        """Forget every cache: a new episode or instruction."""

    def build_prefix(self, ctx: StepContext) -> PrefixResult:
        raise NotImplementedError

    def flops(self, ctx: StepContext) -> float:
        return backbone_flops(self.model_config.backbone, ctx.layer_tokens, ctx.attended_pairs)
