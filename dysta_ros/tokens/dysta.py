"""`dysta`: one cached copy of the static tokens, then the dynamic tokens of every frame.

Context: [static L1 | static L2 | dynamic tokens of slot 0 .. T-1 | language | state].
Static tokens come first, so in a causal backbone their K/V never depends on anything after
them and is exactly reusable while the recache gate keeps it. Static tokens take the oldest
slot's positions for their patch index (they never move as the window slides); dynamic
tokens of slot k take k*N + patch index, as in `full`.

Training-free form: per-patch change c_i = 1 - cos(z_ref_i, z_t_i) against the cached
reference frame, tracked as an EMA; at an L1 (re)cache the l1_fraction patches with the
lowest EMA change become L1, the next l2_fraction L2, the rest dynamic. Gate: g_l = mean
change over level-l patches; refresh level l when g_l > delta_l; L1 refresh forces L2.
Learned form (`gate: learned`, or `auto` with a checkpoint that trained them): the checkpoint's
Disentangler picks the groups and its RecacheGate (MLP-Mixer over Z_ref, Z_t) decides refreshes.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from dysta_ros.errors import ConfigError
from dysta_ros.policy.attention import AttentionPlan
from dysta_ros.tokens.base import PrefixResult, StepContext, Strategy, StrategyParams

log = logging.getLogger(__name__)


GATES = ("auto", "change", "learned")


@dataclass
class DystaParams(StrategyParams):
    """DySta's split, gate and cache parameters."""

    l1_fraction: float = 0.6  # share of each frame's patches in static level 1 (most persistent)
    l2_fraction: float = 0.3  # share in static level 2 (semi-static)
    delta_l1: float = 0.03  # refresh L1 when its mean change exceeds this (negative: every step)
    delta_l2: float = 0.02  # refresh L2 when its mean change exceeds this
    change_ema: float = 0.7  # weight of the past in the per-patch change EMA
    max_static_age: int = 100  # steps; refresh the static cache at this age regardless (0 = never)
    # Who decides groups and refreshes: "learned" = the checkpoint's Disentangler and RecacheGate,
    # "change" = the training-free per-patch change, "auto" = learned when the checkpoint trained them.
    gate: str = "auto"
    learned_gate_threshold: float = 0.5  # learned: refresh level l when its gate probability exceeds this
    # Put the instruction into the cached static prefix, [S1 | S2 | language | D.. | state]: it is
    # constant within an episode, so each step computes only dynamic tokens and the state. An
    # inference-time layout: a checkpoint trained on the default layout is run as trained.
    cache_language: bool = False

    def __post_init__(self):
        super().__post_init__()
        for name in ("l1_fraction", "l2_fraction", "change_ema"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"{name} must be in [0, 1], got {value}")
        if self.l1_fraction + self.l2_fraction > 1.0:
            raise ConfigError(
                f"l1_fraction + l2_fraction must be <= 1, got {self.l1_fraction} + {self.l2_fraction}"
            )
        if self.max_static_age < 0:
            raise ConfigError(f"max_static_age must be >= 0, got {self.max_static_age}")
        if self.gate not in GATES:
            raise ConfigError(f"gate {self.gate!r} is not allowed; choose one of: {', '.join(GATES)}")


def patch_change(reference: torch.Tensor, current: torch.Tensor) -> torch.Tensor:
    """Per-patch change 1 - cos(z_ref, z_t) for features (N, C) -> (N,)."""
    return 1.0 - F.cosine_similarity(reference.float(), current.float(), dim=-1)


class DystaStrategy(Strategy):
    name = "dysta"
    Params = DystaParams

    def __init__(self, params: DystaParams, model_config):
        super().__init__(params, model_config)
        n = model_config.tokens_per_frame
        self.l1_count = int(round(params.l1_fraction * n))
        self.l2_count = min(int(round(params.l2_fraction * n)), n - self.l1_count)
        self._warned_random = False
        self.learned = False  # resolved from `gate` and the model at each step
        self.reset()

    def reset(self) -> None:
        self.static_kv = None  # per layer (1, Hkv, s1+s2 (+ n_text with cache_language), D)
        self.cached_text = None  # the language tokens in static_kv (cache_language)
        self.reference = None  # (N, Cv) features the gate compares against
        self.change_ema = None  # (N,)
        self.groups = None  # (l1, l2, dynamic) patch indices
        self.age = 0

    # --- groups and gate -------------------------------------------------------------
    def select_groups(self, model, features: torch.Tensor):
        """Patch indices (l1, l2, dynamic), sorted, with exactly the configured counts."""
        if self.learned:
            return model.disentangler.assign(features, self.l1_count, self.l2_count)
        order = torch.argsort(self.change_ema, stable=True)  # least changing first
        l1 = order[: self.l1_count].sort().values
        l2 = order[self.l1_count : self.l1_count + self.l2_count].sort().values
        dynamic = order[self.l1_count + self.l2_count :].sort().values
        return l1, l2, dynamic

    def gate(self, model, current: torch.Tensor) -> tuple[bool, bool]:
        """Decide (refresh L1, refresh L2) against the cached reference frame."""
        change = patch_change(self.reference, current)  # (N,)
        a = self.params.change_ema
        self.change_ema = a * self.change_ema + (1 - a) * change
        if self.learned:
            g1, g2 = model.recache_gate(self.reference[None], current[None])[0].float().tolist()
        else:
            l1, l2, _ = self.groups
            g1 = float(change[l1].mean()) if len(l1) else 0.0
            g2 = float(change[l2].mean()) if len(l2) else 0.0
        if self.learned:  # gate outputs are refresh probabilities
            delta_l1 = delta_l2 = self.params.learned_gate_threshold
        else:
            delta_l1, delta_l2 = self.params.delta_l1, self.params.delta_l2
        aged = self.params.max_static_age > 0 and self.age >= self.params.max_static_age
        refresh_l1 = g1 > delta_l1 or aged
        return refresh_l1, refresh_l1 or g2 > delta_l2

    # --- static cache ------------------------------------------------------------------
    def build_static(self, ctx: StepContext, frame, levels: str) -> None:
        """(Re)compute the static K/V: "l1" rebuilds L1 and L2, "l2" rebuilds L2 on cached L1."""
        l1, l2, _ = self.groups
        if levels == "l1":
            patches, prefix, prefix_order = torch.cat([l1, l2]), None, None
        else:
            patches = l2
            prefix = [(k[:, :, : len(l1)], v[:, :, : len(l1)]) for k, v in self.static_kv]
            prefix_order = ctx.arange(0, len(l1))
        if len(patches) == 0 and not self.params.cache_language:
            if levels == "l1":
                self.static_kv = None
            return
        start = 0 if levels == "l1" else len(l1)
        # The oldest slot's positions: static tokens never move as the window slides.
        embeds, positions = frame.tokens[patches], ctx.slot_positions(0, patches)
        if self.params.cache_language:  # the instruction follows the static levels, at its own positions
            embeds = torch.cat([embeds, ctx.text])
            positions = torch.cat([positions, ctx.text_positions()])
        plan = AttentionPlan(
            query_order=ctx.arange(start, start + embeds.shape[0]), prefix=prefix, prefix_order=prefix_order
        )
        ctx.run(embeds, positions, plan)
        self.static_kv = [plan.records[i] for i in range(len(plan.records))]
        self.cached_text = ctx.text

    def frames_for_dynamic(self, ctx: StepContext) -> list[int]:
        """History slots whose dynamic tokens enter the context (all of them here)."""
        return list(range(ctx.history))

    # --- one step ------------------------------------------------------------------------
    def build_prefix(self, ctx: StepContext) -> PrefixResult:
        model, current = ctx.model, ctx.frames[-1]
        gate_start = time.perf_counter()
        trained = bool(getattr(model, "has_learned_dysta", False))
        self.learned = self.params.gate == "learned" or (self.params.gate == "auto" and trained)
        if self.params.gate == "learned" and not trained and not self._warned_random:
            log.warning(
                "dysta gate=learned but the model has no trained Disentangler/RecacheGate: "
                "using their random initialisation"
            )
            self._warned_random = True
        if self.reference is None:
            self.change_ema = torch.zeros(current.features.shape[0], device=ctx.device)
            refresh_l1 = refresh_l2 = True
        else:
            refresh_l1, refresh_l2 = self.gate(model, current.features)
        if self.params.cache_language and not refresh_l2 and not torch.equal(self.cached_text, ctx.text):
            refresh_l2 = True  # a new instruction: the cached language (after L1) is rebuilt with L2
        if refresh_l1:
            self.groups = self.select_groups(model, current.features)
        gate_ms = (time.perf_counter() - gate_start) * 1e3
        l1, l2, dynamic = self.groups
        if refresh_l1:
            self.reference = current.features.clone()
            self.build_static(ctx, current, "l1")
            self.age = 0
        elif refresh_l2:
            self.reference[l2] = current.features[l2]
            self.build_static(ctx, current, "l2")
        self.age += 1
        static = len(l1) + len(l2)
        slots = self.frames_for_dynamic(ctx)
        tail, tail_positions = ctx.tail()
        if self.params.cache_language:
            static += ctx.text.shape[0]
            tail, tail_positions = tail[-1:], tail_positions[-1:]  # the state alone
        embeds = torch.cat([ctx.frames[k].tokens[dynamic] for k in slots] + [tail])  # (Q, W)
        positions = torch.cat([ctx.slot_positions(k, dynamic) for k in slots] + [tail_positions])
        cached = self.static_kv is not None
        plan = AttentionPlan(
            query_order=ctx.arange(static, static + embeds.shape[0]),
            prefix=self.static_kv,
            prefix_order=ctx.arange(0, static) if cached else None,
        )
        ctx.run(embeds, positions, plan)
        return PrefixResult(
            records=plan.records,
            context_tokens=static + embeds.shape[0],
            static_l1_tokens=len(l1),
            static_l2_tokens=len(l2),
            dynamic_tokens=len(dynamic) * len(slots),
            frames_attended=len(slots),
            recached_l1=refresh_l1,
            recached_l2=refresh_l2,
            gate_ms=gate_ms,
        )
