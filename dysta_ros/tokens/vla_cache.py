"""`vla_cache`: reuse last step's K/V of visual tokens that did not change (VLA-Cache baseline).

Same layout as `full`. A visual token whose patch features have cosine similarity above
`similarity_threshold` to the token in the same slot and patch last step reuses last step's
K/V at every layer (no hidden state is computed for it), unless it is among the
`exclude_top_fraction` most task-relevant patches by last step's attention from the language
and state queries. Everything else, language and state included, is recomputed and attends
to the buffer with the fresh K/V scattered in.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from dysta_ros.errors import ConfigError
from dysta_ros.policy.attention import AttentionPlan
from dysta_ros.tokens.base import PrefixResult, StepContext, Strategy, StrategyParams
from dysta_ros.tokens.full import full_layout


@dataclass
class VlaCacheParams(StrategyParams):
    """Reuse threshold and the task-relevance filter."""

    similarity_threshold: float = 0.95  # cosine similarity of patch features to reuse K/V (> 1: never)
    exclude_top_fraction: float = 0.1  # most attended visual tokens are always recomputed
    relevance_layer: int = -1  # layer whose language/state attention ranks relevance (-1 = last)

    def __post_init__(self):
        super().__post_init__()
        if self.similarity_threshold < -1.0:
            raise ConfigError(
                f"similarity_threshold must be >= -1 (> 1 never reuses), got {self.similarity_threshold}"
            )
        if not 0.0 <= self.exclude_top_fraction <= 1.0:
            raise ConfigError(f"exclude_top_fraction must be in [0, 1], got {self.exclude_top_fraction}")


class VlaCacheStrategy(Strategy):
    name = "vla_cache"
    Params = VlaCacheParams

    def __init__(self, params: VlaCacheParams, model_config):
        super().__init__(params, model_config)
        layers = model_config.backbone.layers
        self.relevance_layer = params.relevance_layer % layers
        self.reset()

    def reset(self) -> None:
        self.buffer = None  # per layer (1, Hkv, L, D) K/V of last step, full layout
        self.features = None  # (T, N, Cv) features per slot last step
        self.relevance = None  # (T*N,) attention paid to each visual token last step
        self.length = None

    def build_prefix(self, ctx: StepContext) -> PrefixResult:
        embeds, positions = full_layout(ctx)
        length, visual = embeds.shape[0], ctx.frames_length
        features = torch.stack([frame.features for frame in ctx.frames])  # (T, N, Cv)
        tail_rows = ctx.arange(visual, length)
        if self.buffer is None or self.length != length:
            recompute = ctx.arange(0, length)
        else:
            similar = F.cosine_similarity(features.float(), self.features.float(), dim=-1).flatten()  # (T*N,)
            reuse = similar > self.params.similarity_threshold
            top = int(round(self.params.exclude_top_fraction * visual))
            if top and self.relevance is not None:
                reuse[torch.topk(self.relevance, top).indices] = False
            recompute = torch.cat([(~reuse).nonzero().flatten(), tail_rows])
        full_pass = len(recompute) == length
        plan = AttentionPlan(
            query_order=recompute,
            relevance_layer=self.relevance_layer,
            relevance_queries=ctx.arange(len(recompute) - len(tail_rows), len(recompute)),
        )
        if not full_pass:
            plan.buffer, plan.buffer_order, plan.write_index = self.buffer, positions, recompute
        ctx.run(embeds[recompute], positions[recompute], plan)
        self.buffer = [plan.records[i] for i in range(len(plan.records))]
        self.features, self.length = features, length
        if plan.relevance is not None:
            self.relevance = plan.relevance[:visual].float()
        return PrefixResult(
            records=plan.records,
            context_tokens=length,
            dynamic_tokens=visual,
            frames_attended=ctx.history,
            extra={"reused": length - len(recompute)},
        )
