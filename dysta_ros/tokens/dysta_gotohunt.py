"""`dysta_gotohunt`: DySta's static cache, with GoToHunt's anchor frames and layer schedule.

Context: `dysta`'s with only the K anchor frames' dynamic tokens,
[S1 | S2 | D_a1 .. D_aK | language | state] (`queries: anchors`, the default), or with every
frame's dynamic tokens as queries while global layers read only the static keys, the anchors'
dynamic keys and language/state (`queries: all`, GoToHunt's complete queries). The static
prefix is built as `dysta` builds it (full causal attention among the static tokens), so its
K/V are `dysta`'s own tensors and stay reusable until the recache gate fires. The layer
schedule (local / strided / all) acts on the step's queries only: it changes which cached keys
a query reads, never the keys themselves.

What local and strided mean for static keys: a static token is the one copy of a patch that
every frame shares (DySta keeps one because it does not change), so it belongs to every frame.
Local layers: a frame's dynamic queries read the static keys and their own frame's dynamic
keys, i.e. their whole frame; language and state read the global keys (static, anchors',
language/state). Strided layers: static keys are strided on the patch grid like each anchor's
dynamic keys, so what a frame contributes is that frame strided by sigma, as in `gotohunt`;
language and state keys are always kept.
"""

from __future__ import annotations

from dataclasses import dataclass

from dysta_ros.policy.attention import AttentionPlan
from dysta_ros.tokens.base import PrefixResult, StepContext
from dysta_ros.tokens.dysta import DystaParams, DystaStrategy
from dysta_ros.tokens.gotohunt import (
    GotohuntParams,
    LayerScheduled,
    anchor_keys,
    key_layout,
    on_stride,
    select_anchors,
)


@dataclass
class DystaGotohuntParams(DystaParams, GotohuntParams):
    """DySta's parameters plus GoToHunt's anchors and layer schedule, each validated as there."""

    # anchors: only the anchor frames' dynamic tokens are queries (what the README's figures
    # measured); all: every frame's dynamic tokens are, reading static + anchor keys (the paper's form).
    queries: str = "anchors"


class DystaGotohuntStrategy(DystaStrategy, LayerScheduled):
    name = "dysta_gotohunt"
    Params = DystaGotohuntParams

    def reset(self) -> None:
        super().reset()
        self.anchors: list[int] = []  # the last step's anchor slots
        self.slots: list[int] = []  # the last step's slots whose dynamic tokens are queries

    def frames_for_dynamic(self, ctx: StepContext) -> list[int]:
        """Every frame's dynamic tokens are queries (queries: all), or only the anchors'."""
        self.anchors = select_anchors(ctx, self.params)
        self.slots = list(range(ctx.history)) if self.params.queries == "all" else self.anchors
        return self.slots

    def dynamic_plan(self, ctx: StepContext, static: int, queries: int) -> AttentionPlan:
        """Return the step call's plan with the layer schedule.

        Only the step's own call is scheduled: the static prefix is built as `dysta` builds it,
        so its cache stays exact and reusable across steps.
        """
        plan = super().dynamic_plan(ctx, static, queries)
        self.apply_schedule(plan, ctx)
        return plan

    def build_prefix(self, ctx: StepContext) -> PrefixResult:
        result = super().build_prefix(ctx)
        result.extra["anchors"] = self.anchors
        # What global layers read: the static keys, the anchors' dynamic keys, language and state.
        result.context_tokens -= (len(self.slots) - len(self.anchors)) * len(self.groups[2])
        result.frames_attended = len(self.anchors)
        return result

    def apply_schedule(self, plan: AttentionPlan, ctx: StepContext) -> None:
        """Give the dynamic call's plan the layer modes, each key's and query's frame, the strided keys."""
        l1, l2, dynamic = self.groups
        static = []
        if plan.prefix is not None:  # keys: [S1 | S2 (| language)] cached, then this call's tokens
            static = [(-1, l1), (-1, l2)] + ([(-1, ctx.text.shape[0])] if self.params.cache_language else [])
        frames = [(slot, dynamic) for slot in self.slots]
        queries = plan.query_order.shape[0]
        tail = queries - len(self.slots) * len(dynamic)  # language and state, or the state alone
        kept = on_stride(ctx.grid, ctx.cameras, self.params.sigma, ctx.device)
        key_group, strided = key_layout(static + frames + [(-1, tail)], kept)
        plan.layer_modes = self.schedule
        plan.strided_keys, plan.global_keys = anchor_keys(key_group, strided, self.anchors)
        plan.key_group = key_group  # (P+Q,)
        plan.query_group = key_group[key_group.shape[0] - queries :]  # (Q,)
