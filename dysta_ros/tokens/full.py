"""`full`: every token of every history frame through the backbone, every step (the baseline)."""

from __future__ import annotations

import torch

from dysta_ros.policy.attention import AttentionPlan
from dysta_ros.tokens.base import PrefixResult, StepContext, Strategy


def full_layout(ctx: StepContext) -> tuple[torch.Tensor, torch.Tensor]:
    """The whole context [frame slot 0 .. T-1 | language | state] (L, W) and positions 0..L-1."""
    tail, _ = ctx.tail()
    embeds = torch.cat([frame.tokens for frame in ctx.frames] + [tail])  # (L, W)
    return embeds, ctx.arange(0, embeds.shape[0])


class FullStrategy(Strategy):
    name = "full"

    def build_prefix(self, ctx: StepContext) -> PrefixResult:
        embeds, positions = full_layout(ctx)
        plan = ctx.run(embeds, positions, AttentionPlan(query_order=positions))
        return PrefixResult(
            records=plan.records,
            context_tokens=embeds.shape[0],
            dynamic_tokens=ctx.frames_length,
            frames_attended=ctx.history,
        )
