"""`dysta`: one cached copy of the static tokens, then the dynamic tokens of every frame.

Context: [static L1 | static L2 | dynamic tokens of slot 0 .. T-1 | language | state]
(`DystaLayout`, which training builds its DySta context with too). Static tokens come first,
so in a causal backbone their K/V never depends on anything after them and is exactly
reusable while the recache gate keeps it. Static tokens take the oldest slot's positions for
their patch index (they never move as the window slides); dynamic tokens of slot k take
k*N + patch index, as in `full`.

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
from dysta_ros.tokens.full import full_layout

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
    # constant within an episode, so each step computes only dynamic tokens and the state. Train
    # with it (`dysta-ros train --param dysta.cache_language=true`) to run it as trained.
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

    def check_capabilities(self, capabilities) -> None:
        # When built or set, not at each step: a node configured, then failed every step.
        if not capabilities.causal_prefix and (self.gate == "learned" or self.cache_language):
            raise ConfigError("dysta on a bidirectional single-frame prefix takes gate change (no trained "
                              "Disentangler/RecacheGate) and cache_language false")

    def static_counts(self, tokens_per_frame: int) -> tuple[int, int]:
        """Return how many of a frame's patches are static L1 and L2."""
        l1 = int(round(self.l1_fraction * tokens_per_frame))
        return l1, min(int(round(self.l2_fraction * tokens_per_frame)), tokens_per_frame - l1)

    def layout_fields(self) -> dict:
        """Return the parameters that shape the context a checkpoint is trained on (LAYOUT_PARAMS)."""
        return {name: getattr(self, name) for name in LAYOUT_PARAMS}


# The DystaParams that decide which tokens sit where in the context: training takes them too and
# a checkpoint records them; the others (gate thresholds, ages) act at inference only.
LAYOUT_PARAMS = ("l1_fraction", "l2_fraction", "cache_language")


@dataclass(frozen=True)
class DystaLayout:
    """DySta's context order and RoPE positions: the one definition inference and training share.

    Order [S1 | S2 | D_0 .. D_T-1 | language | state], or [S1 | S2 | language | D_0 .. D_T-1 | state]
    with cache_language; everything before the dynamic tokens is the static prefix whose K/V the
    strategy caches. Positions are `full`'s: static tokens at the oldest slot's, dynamic tokens of
    slot k at k*N + patch, language and state after the frames. Tensors may lead with batch dims:
    tokens (..., k, W) and their patch indices (..., k).
    """

    tokens_per_frame: int  # N
    history: int  # T
    text_length: int
    cache_language: bool = False

    @property
    def full_length(self) -> int:
        return self.history * self.tokens_per_frame + self.text_length + 1

    def slot_positions(self, slot: int, patches: torch.Tensor) -> torch.Tensor:
        """Positions (..., k) of patches (..., k) of the frame in history slot `slot`."""
        return slot * self.tokens_per_frame + patches

    def _after_frames(self, start: int, stop: int, like: torch.Tensor) -> torch.Tensor:
        """Positions start..stop-1 past the frames, with like's (..., k) leading dims."""
        offset = self.history * self.tokens_per_frame
        positions = torch.arange(offset + start, offset + stop, device=like.device)  # (n,)
        return positions.expand(*like.shape[:-1], -1)

    def static_prefix(self, tokens: torch.Tensor, patches: torch.Tensor, text: torch.Tensor):
        """Return (embeds, positions) of the cached prefix: static tokens (+ the language)."""
        parts = [(tokens, self.slot_positions(0, patches))]
        if self.cache_language:
            parts.append((text, self._after_frames(0, self.text_length, patches)))
        return _join(parts)

    def step_tokens(self, dynamic: list[torch.Tensor], slots: list[int], patches: torch.Tensor,
                    text: torch.Tensor, state: torch.Tensor):
        """Return (embeds, positions) after the prefix: dynamic tokens per slot (+ language), state."""
        parts = [(tokens, self.slot_positions(slot, patches)) for tokens, slot in zip(dynamic, slots)]
        if not self.cache_language:
            parts.append((text, self._after_frames(0, self.text_length, patches)))
        parts.append((state, self._after_frames(self.text_length, self.text_length + 1, patches)))
        return _join(parts)

    def context(self, static: torch.Tensor, static_patches: torch.Tensor, dynamic: list[torch.Tensor],
                slots: list[int], dynamic_patches: torch.Tensor, text: torch.Tensor, state: torch.Tensor):
        """Return (embeds, positions) of the whole context in one piece, as one forward computes it."""
        prefix = self.static_prefix(static, static_patches, text)
        return _join([prefix, self.step_tokens(dynamic, slots, dynamic_patches, text, state)])


def _join(parts: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Concatenate (tokens (..., k, W), positions (..., k)) segments in context order."""
    return torch.cat([tokens for tokens, _ in parts], dim=-2), torch.cat([pos for _, pos in parts], dim=-1)


def layout_params(values, where: str) -> dict:
    """Validate DySta layout parameters {LAYOUT_PARAMS key: value}; return all of them, defaults filled."""
    if not isinstance(values, dict) or set(values) - set(LAYOUT_PARAMS):
        raise ConfigError(f"{where}: expected a mapping of {', '.join(LAYOUT_PARAMS)} (the other DySta "
                          f"parameters act at inference only), got {values!r}")
    return DystaParams.from_dict(values, "dysta").layout_fields()


def trained_layout(training) -> dict | None:
    """Return the layout a checkpoint's `training` record names; None without a record."""
    if training is None:
        return None
    # Runs from before the layout was recorded trained the default one (training took no DySta options).
    recorded = training.get("dysta", {}) if isinstance(training, dict) else None
    return layout_params(recorded, "training.dysta")


def patch_change(reference: torch.Tensor, current: torch.Tensor) -> torch.Tensor:
    """Per-patch change 1 - cos(z_ref, z_t) for features (N, C) -> (N,)."""
    return 1.0 - F.cosine_similarity(reference.float(), current.float(), dim=-1)


class DystaStrategy(Strategy):
    name = "dysta"
    Params = DystaParams

    def __init__(self, params: DystaParams, model_config):
        super().__init__(params, model_config)
        self.l1_count, self.l2_count = params.static_counts(model_config.tokens_per_frame)
        self._warned_random = self._warned_layout = False
        self.learned = False  # resolved from `gate` and the model at each step
        self.reset()

    def reset(self) -> None:
        self.static_kv = None  # per layer (1, Hkv, s1+s2 (+ n_text with cache_language), D)
        self.cached_length = None  # the layout length static_kv was built for (bidirectional form)
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
        embeds, positions = self.context_layout(ctx).static_prefix(frame.tokens[patches], patches, ctx.text)
        plan = AttentionPlan(
            query_order=ctx.arange(start, start + embeds.shape[0]), prefix=prefix, prefix_order=prefix_order
        )
        ctx.run(embeds, positions, plan)
        self.static_kv = [plan.records[i] for i in range(len(plan.records))]
        self.cached_text = ctx.text

    def context_layout(self, ctx: StepContext) -> DystaLayout:
        """Return this step's context layout."""
        return DystaLayout(ctx.tokens_per_frame, ctx.history, ctx.text.shape[0], self.params.cache_language)

    def frames_for_dynamic(self, ctx: StepContext) -> list[int]:
        """History slots whose dynamic tokens enter the context (all of them here)."""
        return list(range(ctx.history))

    def _warn_if_not_trained_layout(self, model) -> None:
        """Warn once when the checkpoint was trained on another layout than these parameters give."""
        self._warned_layout = True
        trained = getattr(model, "trained_dysta_layout", None)  # None: a preset, or no training record
        if trained is None:
            return
        ours = self.params.layout_fields()
        differ = sorted(name for name in ours if trained[name] != ours[name])
        if differ:
            log.warning(
                "dysta: the checkpoint was trained on the layout %s but runs with %s: its context differs "
                "from training's and actions may degrade (train with `--param dysta.KEY=VALUE`)",
                ", ".join(f"{k}={trained[k]}" for k in differ), ", ".join(f"{k}={ours[k]}" for k in differ))

    def step_stats(self, refresh_l1: bool, refresh_l2: bool) -> dict[str, float]:
        """DySta's numbers of a step: static tokens per level and the levels re-cached."""
        l1, l2, _ = self.groups
        return {"static_l1_tokens": len(l1), "static_l2_tokens": len(l2),
                "recached_l1": float(refresh_l1), "recached_l2": float(refresh_l2)}

    # --- one step ------------------------------------------------------------------------
    def dynamic_plan(self, ctx: StepContext, static: int, queries: int) -> AttentionPlan:
        """Return the plan of the step's own call: `queries` tokens after the `static` cached ones."""
        cached = self.static_kv is not None
        return AttentionPlan(query_order=ctx.arange(static, static + queries), prefix=self.static_kv,
                             prefix_order=ctx.arange(0, static) if cached else None)

    def build_prefix(self, ctx: StepContext) -> PrefixResult:
        if not ctx.model.capabilities.causal_prefix:
            return self.build_bidirectional(ctx)
        refresh_l1, refresh_l2, gate_ms = self.decide(ctx)
        current = ctx.frames[-1]
        l1, l2, dynamic = self.groups
        if refresh_l1:
            self.reference = current.features.clone()
            self.build_static(ctx, current, "l1")
            self.age = 0
        elif refresh_l2:
            self.reference[l2] = current.features[l2]
            self.build_static(ctx, current, "l2")
        self.age += 1
        static = len(l1) + len(l2) + (ctx.text.shape[0] if self.params.cache_language else 0)
        slots = self.frames_for_dynamic(ctx)
        dynamic_tokens = [ctx.frames[k].tokens[dynamic] for k in slots]  # T' x (d, W)
        layout = self.context_layout(ctx)
        embeds, positions = layout.step_tokens(dynamic_tokens, slots, dynamic, ctx.text, ctx.state)  # (Q, W)
        plan = self.dynamic_plan(ctx, static, embeds.shape[0])
        ctx.run(embeds, positions, plan)
        return PrefixResult(
            records=plan.records,
            context_tokens=static + embeds.shape[0],
            dynamic_tokens=len(dynamic) * len(slots),
            frames_attended=len(slots),
            gate_ms=gate_ms,
            stats=self.step_stats(refresh_l1, refresh_l2),
        )

    def build_bidirectional(self, ctx: StepContext) -> PrefixResult:
        """DySta on a single-frame family whose prefix is bidirectional (SmolVLA): an approximation.

        The same split, gate and refreshes, across consecutive steps of the one frame. An L1
        refresh runs the whole `full` layout and caches every token's K/V; between refreshes the
        static tokens keep their cached K/V and only the dynamic tokens, the language and the
        state are recomputed, attending to every key (an L2 refresh recomputes L2 too). What is
        approximated: in a bidirectional prefix a static token's K/V depend on every token it
        attends to, the dynamic ones included, which changed since the cache was built. On an
        unchanged frame the cached K/V are what `full` computes, so the step is `full`'s.
        """
        refresh_l1, refresh_l2, gate_ms = self.decide(ctx)
        current = ctx.frames[-1]
        l1, l2, dynamic = self.groups
        embeds, positions = full_layout(ctx)
        length = embeds.shape[0]
        if (self.static_kv is None or self.cached_length != length
                or not torch.equal(self.cached_text, ctx.text)):  # a new instruction of the same length too
            refresh_l1 = refresh_l2 = True  # nothing cached for this layout (first step, new instruction)
        if refresh_l1:
            self.reference = current.features.clone()
            self.age = 0
            recompute, reuse = positions, {}
        else:
            if refresh_l2:
                self.reference[l2] = current.features[l2]
            computed = torch.ones(length, dtype=torch.bool, device=ctx.device)
            computed[l1 if refresh_l2 else torch.cat([l1, l2])] = False  # one frame: patch = position
            recompute = computed.nonzero().flatten()
            reuse = dict(buffer=self.static_kv, buffer_order=positions, write_index=recompute)
        self.age += 1
        plan = ctx.run(embeds[recompute], positions[recompute], AttentionPlan(query_order=recompute, **reuse))
        # Kept for the next step: the static tokens' K/V stay as cached; the rest are overwritten then.
        self.static_kv = [plan.records[i] for i in range(len(plan.records))]
        self.cached_length, self.cached_text = length, ctx.text
        return PrefixResult(
            records=plan.records,
            context_tokens=length,
            dynamic_tokens=len(dynamic),
            frames_attended=1,
            gate_ms=gate_ms,
            stats=self.step_stats(refresh_l1, refresh_l2),
        )

    def decide(self, ctx: StepContext) -> tuple[bool, bool, float]:
        """Run the gate on the newest frame: (refresh L1, refresh L2, its milliseconds); groups set on L1."""
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
        if not self._warned_layout:
            self._warn_if_not_trained_layout(model)
        if self.reference is None:
            self.change_ema = torch.zeros(current.features.shape[0], device=ctx.device)
            refresh_l1 = refresh_l2 = True
        else:
            refresh_l1, refresh_l2 = self.gate(model, current.features)
        if self.params.cache_language and not refresh_l2 and not torch.equal(self.cached_text, ctx.text):
            refresh_l2 = True  # a new instruction: the cached language (after L1) is rebuilt with L2
        if refresh_l1:
            self.groups = self.select_groups(model, current.features)
        return refresh_l1, refresh_l2, (time.perf_counter() - gate_start) * 1e3
