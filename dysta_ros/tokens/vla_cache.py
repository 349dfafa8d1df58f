"""`vla_cache`: reuse last step's K/V of visual tokens that did not change (VLA-Cache baseline).

Same layout as `full`. A visual token whose patch features have cosine similarity above
`similarity_threshold` to the token in the same slot and patch last step is reusable, unless
it is among the `exclude_top_fraction` most task-relevant patches by last step's attention
from the language and state queries. Reusable tokens take last step's K/V instead of being
computed. With `layer_adaptive` (the paper's layer-adaptive token reusing), how many of them a
layer reuses follows that layer's attention entropy: few where attention is diffuse, more where
it concentrates. The reuse sets are nested by depth (the most similar tokens are reused first,
and a token reused at one layer stays reused below it), so every token a layer computes has its
hidden state from the layer above. Without it every layer reuses every reusable token.
Everything else, language and state included, is recomputed and attends to the buffer with
the fresh K/V scattered in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from dysta_ros.errors import ConfigError
from dysta_ros.policy.attention import AttentionPlan
from dysta_ros.policy.config import PROFILE_HEADS, PROFILE_QUERIES
from dysta_ros.tokens.base import PrefixResult, StepContext, Strategy, StrategyParams
from dysta_ros.tokens.full import full_layout

# Entropy spans below this are sampling noise, not a layer profile: every layer reuses alike.
FLAT_ENTROPY_SPAN = 1e-3


def layer_reuse_ratios(entropy: list[float], growth_factor: float) -> list[float]:
    """Return the share of reusable tokens each layer reuses from its attention entropy.

    As the paper's code: min-max normalise the entropy over layers and reuse 1 - that, so the
    most diffuse layer reuses least and the most concentrated reuses all; a rise from one layer
    to the next is damped by `growth_factor`. A fall is not followed: reuse sets are nested, so
    the shares never decrease with depth.
    """
    low, high = min(entropy), max(entropy)
    span = high - low
    raw = [1.0 if span < FLAT_ENTROPY_SPAN else 1.0 - (e - low) / span for e in entropy]
    ratios = [raw[0]]
    for target in raw[1:]:
        ratios.append(ratios[-1] + growth_factor * max(target - ratios[-1], 0.0))
    return ratios


@dataclass
class VlaCacheParams(StrategyParams):
    """Reuse threshold, the task-relevance filter and the layer-adaptive reuse ratio."""

    similarity_threshold: float = 0.95  # cosine similarity of patch features to reuse K/V (> 1: never)
    exclude_top_fraction: float = 0.1  # most attended visual tokens are always recomputed
    relevance_layer: int = -1  # layer whose language/state attention ranks relevance (-1 = last)
    layer_adaptive: bool = True  # per-layer reuse share from attention entropy; False: all layers reuse all
    growth_factor: float = 0.55  # share of a layer-to-layer rise in reuse ratio applied (paper's code: 0.55)
    # Normalised attention entropy per backbone layer (`dysta-ros profile-entropy`); empty:
    # measured at each episode's first full pass. Numbers or numeric strings (a ROS string array).
    layer_entropy: list = field(default_factory=list)

    def __post_init__(self):
        super().__post_init__()
        if self.similarity_threshold < -1.0:
            raise ConfigError(
                f"similarity_threshold must be >= -1 (> 1 never reuses), got {self.similarity_threshold}"
            )
        if not 0.0 <= self.exclude_top_fraction <= 1.0:
            raise ConfigError(f"exclude_top_fraction must be in [0, 1], got {self.exclude_top_fraction}")
        if not isinstance(self.layer_adaptive, bool):
            raise ConfigError(f"layer_adaptive must be true or false, got {self.layer_adaptive!r}")
        if not 0.0 <= self.growth_factor <= 1.0:
            raise ConfigError(f"growth_factor must be in [0, 1], got {self.growth_factor}")
        try:
            self.layer_entropy = [float(e) for e in self.layer_entropy]
        except (TypeError, ValueError) as exc:
            raise ConfigError(
                f"layer_entropy must be a list of numbers in [0, 1], one per backbone layer, "
                f"got {self.layer_entropy!r}"
            ) from exc
        if not all(math.isfinite(e) and 0.0 <= e <= 1.0 for e in self.layer_entropy):
            raise ConfigError(
                f"layer_entropy values must be normalised entropies in [0, 1], got {self.layer_entropy}"
            )


class VlaCacheStrategy(Strategy):
    name = "vla_cache"
    Params = VlaCacheParams

    def __init__(self, params: VlaCacheParams, model_config):
        super().__init__(params, model_config)
        self.layers = model_config.backbone.layers
        self.relevance_layer = params.relevance_layer % self.layers
        if params.layer_entropy and len(params.layer_entropy) != self.layers:
            raise ConfigError(
                f"layer_entropy has {len(params.layer_entropy)} values; the backbone has "
                f"{self.layers} layers (one value each, or [] to measure)"
            )
        self.reset()

    def reset(self) -> None:
        self.buffer = None  # per layer (1, Hkv, L, D) K/V of last step, full layout
        self.features = None  # (T, N, Cv) features per slot last step
        self.relevance = None  # (T*N,) attention paid to each visual token last step
        self.length = None
        self.text = None  # (n_text, W) the language the buffer was computed with
        self.entropy = self.params.layer_entropy or None  # per layer, normalised
        self.ratios = self.reuse_ratios()  # per layer share of the reusable tokens reused
        self.last_reused_per_layer: list[int] = []  # tokens each layer reused last step

    def reuse_ratios(self) -> list[float] | None:
        if not self.params.layer_adaptive:
            return [1.0] * self.layers
        return None if self.entropy is None else layer_reuse_ratios(self.entropy, self.params.growth_factor)

    def reusable(self, features: torch.Tensor, visual: int) -> torch.Tensor:
        """Return the reusable visual tokens (R,), the most similar to last step's first."""
        similar = F.cosine_similarity(features.float(), self.features.float(), dim=-1).flatten()  # (T*N,)
        reuse = similar > self.params.similarity_threshold
        top = int(round(self.params.exclude_top_fraction * visual))
        if top and self.relevance is not None:
            reuse[torch.topk(self.relevance, top).indices] = False
        candidates = reuse.nonzero().flatten()
        order = torch.sort(similar[candidates], descending=True, stable=True).indices
        return candidates[order]

    def build_prefix(self, ctx: StepContext) -> PrefixResult:
        embeds, positions = full_layout(ctx)
        length, visual = embeds.shape[0], ctx.frames_length
        features = torch.stack([frame.features for frame in ctx.frames])  # (T, N, Cv)
        # A new instruction is a new context even at the same length: in a bidirectional prefix
        # (SmolVLA) every visual token's K/V depend on the language.
        new_context = self.buffer is None or self.length != length or not torch.equal(self.text, ctx.text)
        reused_per_layer = [0] * self.layers
        if new_context:
            recompute, layer_queries = ctx.arange(0, length), None
        else:
            reusable = self.reusable(features, visual)
            # Nested by construction: ratios never decrease, so layer l reuses a prefix of the
            # reusable tokens that contains every shallower layer's.
            reused_per_layer = [round(ratio * len(reusable)) for ratio in self.ratios]
            computed = torch.ones(length, dtype=torch.bool, device=ctx.device)
            computed[reusable[: reused_per_layer[0]]] = False
            recompute = computed.nonzero().flatten()  # layer 0's queries, ascending
            layer_queries = None
            if reused_per_layer[-1] > reused_per_layer[0]:
                layer_queries = []
                for count in reused_per_layer:
                    computed[reusable[:count]] = False
                    layer_queries.append(torch.searchsorted(recompute, computed.nonzero().flatten()))
        tail = length - visual
        reuse = {}
        if len(recompute) < length or layer_queries is not None:
            reuse = dict(buffer=self.buffer, buffer_order=positions, write_index=recompute)
        # The entropy profile is measured once, on the episode's first (full) pass, not per
        # step: on reuse steps most visual queries are not computed, so their entropy is not
        # there to measure; and, as GoToHunt found, a layer's entropy is a property of the
        # model and scene that barely moves between steps, while measuring costs extra logits.
        measure = new_context and self.ratios is None
        plan = AttentionPlan(
            query_order=recompute,
            relevance_layer=self.relevance_layer,
            relevance_queries=ctx.arange(len(recompute) - tail, len(recompute)),
            entropy_heads=PROFILE_HEADS if measure else 0,
            entropy_queries=PROFILE_QUERIES,
            layer_queries=layer_queries,
            **reuse,
        )
        ctx.run(embeds[recompute], positions[recompute], plan)
        if plan.entropy_heads:
            self.entropy = [plan.entropy.get(layer, 1.0) for layer in range(self.layers)]
            self.ratios = self.reuse_ratios()
        self.buffer = [plan.records[i] for i in range(len(plan.records))]
        self.features, self.length, self.text = features, length, ctx.text
        self.last_reused_per_layer = reused_per_layer
        if plan.relevance is not None:
            self.relevance = plan.relevance[:visual].float()
        return PrefixResult(
            records=plan.records,
            context_tokens=length,
            dynamic_tokens=visual,
            frames_attended=ctx.history,
            stats={"reused_tokens": sum(reused_per_layer) / self.layers},  # mean over layers
            extra={"reused_per_layer": reused_per_layer},
        )
