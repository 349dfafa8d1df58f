"""`gotohunt`: K diverse anchor frames and layer-aware K/V selection (Good Token Hunting).

Inter-frame: a global descriptor per frame (the L2-normalised mean of its vision features),
cosine similarity C, distance D = max(C) - C, greedy farthest-point sampling of K anchors that
starts at the oldest frame; the current frame is always kept. Intra-frame, per layer (a fixed
schedule, from `dysta-ros profile-entropy`): local layers attend only their own frame
(block-batched), strided layers read one gathered K/V set of anchor tokens strided by sigma on
the patch grid (+ language/state), the rest read all anchor tokens (+ language/state).

Queries stay complete (`queries: all`, the paper): every history frame's tokens, the language
and the state are computed at every layer, and their per-layer K/V feed the action head; only
the K/V that global layers read are selected, after RoPE. Attention then costs ~ T*N x K*N,
linear in T. `queries: anchors` is frame subsampling, cheaper and not the method: only the
anchor frames enter the backbone at all.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from dysta_ros.errors import ConfigError
from dysta_ros.policy.attention import AttentionPlan
from dysta_ros.tokens.base import PrefixResult, StepContext, Strategy, StrategyParams


@dataclass
class AnchorParams(StrategyParams):
    """How many anchor frames to keep."""

    num_anchors: int = 4  # K, fixed as in the paper (25 of 500); 0 = round(anchor_fraction * T)
    anchor_fraction: float = 0.5

    def __post_init__(self):
        super().__post_init__()
        if self.num_anchors < 0:
            raise ConfigError(f"num_anchors must be >= 0 (0 = use anchor_fraction), got {self.num_anchors}")
        if not 0.0 < self.anchor_fraction <= 1.0:
            raise ConfigError(f"anchor_fraction must be in (0, 1], got {self.anchor_fraction}")

    def anchor_count(self, frames: int) -> int:
        wanted = self.num_anchors or round(self.anchor_fraction * frames)
        return max(1, min(frames, int(wanted)))


QUERIES = ("all", "anchors")


@dataclass
class GotohuntParams(AnchorParams):
    """Anchors, the layer schedule, and which frames' tokens are queries."""

    local_layers: list[int] = field(default_factory=lambda: [0])  # per-frame attention
    strided_layers: list[int] = field(default_factory=lambda: [1])  # anchor K/V strided by sigma
    sigma: int = 2  # stride in patch rows and columns (2 keeps 1/4, 3 keeps 1/9)
    # all: every frame's tokens are queries at every layer, only the K/V global layers read are
    # the anchors' (the paper); anchors: only the anchor frames enter the backbone at all (frame
    # subsampling: cheaper, but the other frames never reach the action head).
    queries: str = "all"

    def __post_init__(self):
        super().__post_init__()
        if self.queries not in QUERIES:
            raise ConfigError(f"queries {self.queries!r} is not allowed; choose one of: {', '.join(QUERIES)}")
        if self.sigma < 1:
            raise ConfigError(f"sigma must be >= 1, got {self.sigma}")
        both = sorted(set(self.local_layers) & set(self.strided_layers))
        if both:
            raise ConfigError(f"layers {both} are in both local_layers and strided_layers")

    def layer_modes(self, layers: int) -> list[str]:
        """Per-layer modes for a backbone of `layers` layers, whose indices must all exist."""
        local, strided = self.local_layers, self.strided_layers
        bad = sorted(i for i in [*local, *strided] if not 0 <= i < layers)
        if bad:
            raise ConfigError(f"layer indices {bad} are outside the backbone's 0..{layers - 1}")
        return ["local" if i in local else "strided" if i in strided else "all" for i in range(layers)]


def frame_descriptors(features: torch.Tensor) -> torch.Tensor:
    """One global descriptor per frame: features (T, N, C) -> L2-normalised means (T, C)."""
    return F.normalize(features.float().mean(dim=1), dim=-1)


def farthest_point_sampling(descriptors: torch.Tensor, count: int, keep_last: bool = True) -> list[int]:
    """Greedy K-center over D = max(C) - C, starting at frame 0; the last frame is kept if asked."""
    frames = descriptors.shape[0]
    similarity = descriptors @ descriptors.T  # (T, T)
    distance = similarity.max() - similarity
    chosen = [0]
    if keep_last and frames > 1 and count > 1:
        chosen.append(frames - 1)
    nearest = distance[chosen].min(dim=0).values  # (T,) distance to the closest chosen frame
    while len(chosen) < min(count, frames):
        nearest[chosen] = -1.0
        pick = int(torch.argmax(nearest))
        chosen.append(pick)
        nearest = torch.minimum(nearest, distance[pick])
    if keep_last and frames - 1 not in chosen:  # count == 1: the current frame is the anchor
        chosen = [frames - 1]
    return sorted(chosen)


def on_stride(grid: int, cameras: int, sigma: int, device=None) -> torch.Tensor:
    """Mask (cameras*grid*grid,) of a frame's patches on rows and columns divisible by sigma."""
    rows = torch.arange(grid, device=device)
    keep = ((rows[:, None] % sigma == 0) & (rows[None, :] % sigma == 0)).flatten()  # (grid*grid,)
    return keep.repeat(cameras)


def strided_patches(grid: int, cameras: int, sigma: int, device=None) -> torch.Tensor:
    """Indices within a frame of the patches on rows and columns divisible by sigma, per camera."""
    return on_stride(grid, cameras, sigma, device).nonzero().flatten()


def key_layout(segments: list[tuple[int, torch.Tensor | int]], kept_patches: torch.Tensor):
    """Frame id of each key (K,) and the keys strided layers keep, for keys laid out as segments.

    A segment is (frame id, patch indices) for patch tokens, strided by `kept_patches` (an
    `on_stride` mask), or (-1, count) for tokens every query sees and every layer keeps
    (language, state). Frame id -1 marks keys every frame's queries see.
    """
    groups, strided, start = [], [], 0
    for group, tokens in segments:
        if isinstance(tokens, int):
            length, kept = tokens, torch.arange(tokens, device=kept_patches.device)
        else:
            length, kept = len(tokens), kept_patches[tokens].nonzero().flatten()
        groups.append(torch.full((length,), group, device=kept_patches.device))
        strided.append(start + kept)
        start += length
    return torch.cat(groups), torch.cat(strided)  # (K,), (K_strided,)


def anchor_keys(groups: torch.Tensor, strided: torch.Tensor, anchors: list[int]):
    """Return (strided keys, global keys) restricted to anchor frames and shared keys (None: all keys).

    groups (K,) and strided come from `key_layout` with history slots as frame ids. Global layers
    read one key set shared by every query, as the paper's gathered K/V: the anchors' tokens and
    the shared ones. A non-anchor frame's queries do not also read their own frame there: that
    would give each frame its own key set (per-frame blocks, not one gathered K/V) for (T-K)*N*N
    more pairs; their own frame reaches them through the local layers and the residual stream.
    """
    is_global = (groups < 0) | torch.isin(groups, torch.tensor(anchors, device=groups.device))  # (K,)
    if bool(is_global.all()):  # only anchor frames are in the context, or K = T
        return strided, None
    return strided[is_global[strided]], is_global.nonzero().flatten()


def select_anchors(ctx: StepContext, params: AnchorParams, at_least: int = 1) -> list[int]:
    """History slots of the K (>= at_least, where the window has them) anchor frames, oldest first."""
    descriptors = frame_descriptors(torch.stack([frame.features for frame in ctx.frames]))
    return farthest_point_sampling(descriptors, max(at_least, params.anchor_count(ctx.history)))


class LayerScheduled(Strategy):
    """A strategy whose backbone layers follow GoToHunt's schedule (checked against the backbone)."""

    def __init__(self, params: GotohuntParams, model_config):
        super().__init__(params, model_config)
        self.schedule = params.layer_modes(model_config.backbone.layers)


class GotohuntStrategy(LayerScheduled):
    name = "gotohunt"
    Params = GotohuntParams

    def build_prefix(self, ctx: StepContext) -> PrefixResult:
        every_frame = self.params.queries == "all"
        # With every frame a query, the oldest frame must be an anchor (FPS starts there): in a
        # causal backbone an older frame's queries read no anchor key after them, so with the
        # current frame alone (K = 1) they attended to nothing (zeros here, NaN elsewhere).
        anchors = select_anchors(ctx, self.params, at_least=2 if every_frame else 1)
        slots = list(range(ctx.history)) if every_frame else anchors
        n = ctx.tokens_per_frame
        tail, tail_positions = ctx.tail()
        all_patches = ctx.arange(0, n)
        embeds = torch.cat([ctx.frames[s].tokens for s in slots] + [tail])  # (T'*N + n_tail, W)
        positions = torch.cat([ctx.slot_positions(s, all_patches) for s in slots] + [tail_positions])
        kept = on_stride(ctx.grid, ctx.cameras, self.params.sigma, ctx.device)
        groups, strided = key_layout([(s, all_patches) for s in slots] + [(-1, tail.shape[0])], kept)
        # Language/state read the global keys at local layers too (query group -1), so nothing but
        # a frame's own queries ever reads a non-anchor key. FPS keeps the oldest frame, whose first
        # patch is on every stride grid: under "key order <= query order" every query has a key.
        strided_keys, global_keys = anchor_keys(groups, strided, anchors)
        plan = AttentionPlan(
            query_order=ctx.arange(0, embeds.shape[0]),
            layer_modes=self.schedule,
            strided_keys=strided_keys,
            global_keys=global_keys,
            query_group=groups,
            key_group=groups,
        )
        ctx.run(embeds, positions, plan)
        return PrefixResult(
            records=plan.records,
            context_tokens=len(anchors) * n + tail.shape[0],  # what global layers read; all are computed
            dynamic_tokens=len(slots) * n,
            frames_attended=len(anchors),
            extra={"anchors": anchors},
        )
