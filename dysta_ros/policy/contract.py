"""The model contract: what the runtime and the token strategies need from a model family.

One runtime (policy/runtime.py) drives every family through these calls, and the strategies
(tokens/) see a model only through them (`StepContext.model`), so nothing in tokens/ imports a
family. A step is: `preprocess` an Observation, `encode_frame` its cameras into tokens,
`embed_text` the instruction's ids from `tokenizer`, `embed_observed_state`, then the strategy
runs `run_backbone` over a token layout under an AttentionPlan (which fills per-layer K/V), and
`sample_actions` integrates the action head from those K/V and a noise tensor;
`actions_to_robot` undoes the normalization.

Layout and positions are the `full` layout of the family, [frame slot 0 .. T-1 | language |
state], slot k's tokens at k*N + token index. What differs between families is said by
`capabilities`: a family without history frames runs with a window of one frame; one whose
prefix is bidirectional makes every strategy that reuses K/V an approximation (a kept token's
K/V depend on tokens that changed), so a strategy either states that form or is refused.

Per-layer K/V records are opaque to strategies: they pass a plan's `records` back as a later
plan's `buffer` / `prefix` and never read inside them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable


@dataclass(frozen=True)
class Capabilities:
    """What a family's model supports, so a strategy that cannot apply is refused with why."""

    history_frames: bool  # keeps a window of past frames (what temporal strategies reuse)
    causal_prefix: bool  # prefix tokens attend only backwards (a cached prefix is then exact)


@dataclass(frozen=True)
class ModelSpec:
    """What feeding a model and using its output needs: cameras, dims, names, chunk, units."""

    camera_keys: tuple[str, ...]  # the checkpoint's own names (LeRobot: observation.images.<name>)
    camera_names: tuple[str, ...]  # the names Observation.images uses
    image_size: tuple[int, int]  # (width, height) the images are brought to before encoding
    state_dim: int
    action_dim: int
    horizon: int  # actions per chunk
    dt: float  # seconds between a chunk's actions
    noise_shape: tuple[int, int]  # the flow noise sample_actions takes (horizon, padded action dims)
    tokens_per_frame: int  # backbone tokens of one frame, all cameras
    grid: int  # tokens per side of one camera image
    action_space: str = "joint_position"
    state_names: tuple[str, ...] = ()
    action_names: tuple[str, ...] = ()
    normalization: dict[str, str] = field(default_factory=dict)  # feature -> MEAN_STD / MIN_MAX / IDENTITY
    default_history: int = 1  # frames in the window unless a strategy or the caller says otherwise
    preset: str = ""  # what RuntimeSpec.preset reports: a preset's name, or the family's


@dataclass(frozen=True)
class BackboneShape:
    """The backbone's sizes, for strategies (layer count) and the FLOPs estimate."""

    layers: int
    width: int
    heads: int
    kv_heads: int
    head_dim: int
    mlp_width: int


@dataclass(frozen=True)
class ModelShape:
    """`model.cfg` as strategies read it: the backbone's sizes and the tokens of one frame."""

    backbone: BackboneShape
    tokens_per_frame: int


@runtime_checkable
class PolicyModel(Protocol):
    """A model family's side of the runtime boundary (see the module docstring)."""

    family_name: str  # a key of policy.families.FAMILIES
    spec: ModelSpec
    capabilities: Capabilities
    cfg: Any  # has .backbone (BackboneShape's fields) and .tokens_per_frame: ModelShape or richer
    # Also read where present: `tokenizer` (.encode(instruction) -> ids; absent: bytes, a preset);
    # with has_learned_dysta, `disentangler`, `recache_gate` and `trained_dysta_layout` (dysta's
    # learned gate, tokens/learned.py), which a family without them never reaches.
    has_learned_dysta: bool  # the checkpoint trained DySta's Disentangler / RecacheGate

    @property
    def device(self): ...

    @property
    def dtype(self): ...

    def preprocess(self, obs) -> tuple[Any, Any, str]:
        """Validate an Observation; return (pixels, state, instruction) for the calls below."""

    def encode_frame(self, pixels) -> tuple[Any, Any]:
        """Encode one frame's cameras -> per-token features (N, Cv) for gates and tokens (N, W)."""

    def embed_text(self, token_ids) -> Any:
        """Language token ids (n,) -> backbone embeddings (n, W)."""

    def embed_observed_state(self, state) -> Any:
        """The observed state in robot units (S,) -> its normalized backbone token (1, W)."""

    def run_backbone(self, embeds, positions, plan):
        """Compute tokens embeds (Q, W) at layout positions (Q,) under an AttentionPlan; fill plan.records."""

    def full_flops(self, length: int) -> float:
        """Backbone FLOPs of `full` on a layout of `length` tokens (what StepStats.flops_ratio divides by)."""

    def sample_actions(self, records, prefix_length: int, noise) -> Any:
        """Integrate the action head from noise (spec.noise_shape) over per-layer K/V -> normalized."""

    def actions_to_robot(self, normalized) -> Any:
        """Normalized actions -> (horizon, action_dim) float32 numpy in robot units."""
