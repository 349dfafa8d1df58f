"""`dysta_gotohunt`: DySta's static cache, with GoToHunt's anchor frames over the dynamic history."""

from __future__ import annotations

from dataclasses import dataclass

from dysta_ros.tokens.base import StepContext
from dysta_ros.tokens.dysta import DystaParams, DystaStrategy
from dysta_ros.tokens.gotohunt import AnchorParams, select_anchors


@dataclass
class DystaGotohuntParams(DystaParams):
    """DySta's parameters plus the anchor count."""

    num_anchors: int = 4  # K, fixed as in the paper (25 of 500); 0 = round(anchor_fraction * T)
    anchor_fraction: float = 0.5

    def __post_init__(self):
        super().__post_init__()
        self.anchors = AnchorParams(num_anchors=self.num_anchors, anchor_fraction=self.anchor_fraction)


class DystaGotohuntStrategy(DystaStrategy):
    name = "dysta_gotohunt"
    Params = DystaGotohuntParams

    def frames_for_dynamic(self, ctx: StepContext) -> list[int]:
        """Only the anchor frames' dynamic tokens enter the context."""
        return select_anchors(ctx, self.params.anchors)
