"""Batches of demonstration windows and the training objective with DySta's layout.

One batch item is a window of T history frames ending at step t (spaced `frame_stride`
control steps apart, as the runtime sees them when it plans every `frame_stride` steps), a
reference frame dt runtime steps older (what DySta's static cache was built from), and one
more frame of the same episode (the InfoNCE positive). The task loss is the flow-matching
loss on two contexts built from the same vision features:

- full layout: [frame slot 0 .. T-1 | language | state], what `full` computes;
- DySta layout: [static L1 | static L2 | dynamic tokens of slot 0 .. T-1 | language | state]
  (the language right after the static levels with `cache_language`), built by the same
  `DystaLayout` the `dysta` strategy runs (groups from the Disentangler on the reference
  frame, static tokens at the oldest slot's positions). Each static token is a gate-weighted mix
  g * current + (1 - g) * reference, g a straight-through Gumbel sample of the RecacheGate
  (refreshing L1 forces L2), so the task loss tells the gate what a stale cache costs.

L = (L_full + L_dysta) / 2 + 0.2 InfoNCE_L1 + 0.1 InfoNCE_L2 + 0.1 L_gate (PAPERS.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from transformers import DynamicCache

from dysta_ros.policy.model import VLAModel
from dysta_ros.policy.tokenizer import ByteTokenizer
from dysta_ros.tokens.dysta import DystaLayout, DystaParams
from dysta_ros.tokens.learned import dysta_loss, gate_loss, gumbel_sigmoid, info_nce
from dysta_ros.training.data import Demo, pixels_to_model


@dataclass
class WindowSampler:
    """Draw training windows from demos; every item of a batch comes from a different episode."""

    demos: list[Demo]
    history: int  # T frames per window
    frame_stride: int  # control steps between history frames
    max_cache_age: int  # largest dt (runtime steps) between the reference frame and now
    norm: dict[str, list[float]]
    tokenizer: ByteTokenizer

    def __post_init__(self):
        # Items of one batch share an instruction, so text lengths (and positions) agree.
        self.by_instruction: dict[str, list[int]] = {}
        for index, demo in enumerate(self.demos):
            self.by_instruction.setdefault(demo.instruction, []).append(index)
        self.instructions = sorted(self.by_instruction)
        sizes = np.array([len(self.by_instruction[i]) for i in self.instructions], dtype=np.float64)
        self.instruction_weights = sizes / sizes.sum()

    def sample(self, rng: np.random.Generator, batch: int) -> dict[str, torch.Tensor]:
        instruction = self.instructions[rng.choice(len(self.instructions), p=self.instruction_weights)]
        pool = self.by_instruction[instruction]
        chosen = rng.choice(pool, size=batch, replace=len(pool) < batch)
        pixels, reference, positive, dts, states, actions = [], [], [], [], [], []
        for index in chosen:
            demo = self.demos[index]
            t = int(rng.integers(len(demo)))
            steps = [max(0, t - (self.history - 1 - k) * self.frame_stride) for k in range(self.history)]
            dt = int(rng.integers(self.max_cache_age + 1))
            ref = max(0, t - dt * self.frame_stride)
            pixels.append(demo.pixels[steps])
            reference.append(demo.pixels[ref])
            positive.append(demo.pixels[int(rng.integers(len(demo)))])
            dts.append((t - ref) / self.frame_stride)
            states.append(demo.states[t])
            actions.append(demo.chunks[t])
        norm = {k: torch.tensor(v) for k, v in self.norm.items()}
        text = torch.tensor(self.tokenizer.encode(instruction))
        return {
            "pixels": pixels_to_model(torch.from_numpy(np.stack(pixels))),  # (B, T, C, 3, S, S)
            "reference": pixels_to_model(torch.from_numpy(np.stack(reference))),  # (B, C, 3, S, S)
            "positive": pixels_to_model(torch.from_numpy(np.stack(positive))),
            "dt": torch.tensor(dts, dtype=torch.float32),  # (B,)
            "state": (torch.from_numpy(np.stack(states)) - norm["state_mean"]) / norm["state_std"],
            "actions": (torch.from_numpy(np.stack(actions)) - norm["action_mean"]) / norm["action_std"],
            "text_ids": text[None].expand(batch, -1),  # (B, n_text)
        }


def encode(model: VLAModel, pixels: torch.Tensor) -> torch.Tensor:
    """Vision features of frames (..., C, 3, S, S) -> (..., C*n, Cv), cameras concatenated."""
    lead = pixels.shape[:-4]
    features = model.vision(pixel_values=pixels.flatten(0, -4)).last_hidden_state  # (F*C, n, Cv)
    return features.reshape(*lead, -1, features.shape[-1])


def backbone_records(model: VLAModel, embeds: torch.Tensor, positions: torch.Tensor) -> dict:
    """Per-layer K/V of one causal forward of embeds (B, L, W) at positions (B, L)."""
    cache = DynamicCache(config=model.backbone.config)
    model.backbone(inputs_embeds=embeds, position_ids=positions, cache=cache, use_cache=True)
    return {i: (cache.layers[i].keys, cache.layers[i].values) for i in range(model.cfg.backbone.layers)}


def prefix_loss(model: VLAModel, embeds, positions, prefix_length: int, actions, generator=None):
    """Flow-matching loss of the expert over the backbone's K/V of embeds (B, L, W) at positions (B, L)."""
    records = backbone_records(model, embeds, positions)
    return model.action_expert.loss(records, prefix_length, actions, generator)


def dysta_context(layout: DystaLayout, static: torch.Tensor, groups, tokens: torch.Tensor,
                  text: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """DySta's context in one piece as the runtime lays it out: embeds (B, L, W), positions (B, L).

    static (B, s1 + s2, W) are the static tokens of groups (l1, l2, dynamic), indices (B, k) each;
    tokens (B, T, N, W) the frames, text (B, n_text, W), state (B, 1, W).
    """
    l1, l2, dynamic = groups
    slots = list(range(layout.history))
    dynamic_tokens = [gather(tokens[:, k], dynamic) for k in slots]  # T x (B, d, W)
    return layout.context(static, torch.cat([l1, l2], dim=1), dynamic_tokens, slots, dynamic, text, state)


def static_descriptor(model: VLAModel, features: torch.Tensor, level: int) -> torch.Tensor:
    """Pool features (B, N, Cv) with the Disentangler's soft weight for `level` -> (B, Cv)."""
    weights = model.disentangler(features).softmax(-1)[..., level]  # (B, N)
    return (weights[..., None] * features).sum(1) / weights.sum(1, keepdim=True).clamp_min(1e-6)


def group_indices(model: VLAModel, reference: torch.Tensor, l1: int, l2: int):
    """The runtime's top-k grouping for each item: (B, l1), (B, l2), (B, N - l1 - l2) indices."""
    groups = [model.disentangler.assign(item.detach(), l1, l2) for item in reference]
    return tuple(torch.stack([g[level] for g in groups]) for level in range(3))


def gather(tokens: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Pick tokens (B, N, W) at per-item indices (B, k) -> (B, k, W)."""
    return torch.gather(tokens, 1, index[..., None].expand(-1, -1, tokens.shape[-1]))


@dataclass
class Losses:
    total: torch.Tensor
    task_full: torch.Tensor
    task_dysta: torch.Tensor
    nce_l1: torch.Tensor
    nce_l2: torch.Tensor
    gate: torch.Tensor
    refresh_rate: float  # share of items whose sampled gate refreshed L1

    def as_floats(self) -> dict[str, float]:
        values = {k: float(v.detach()) for k, v in vars(self).items() if isinstance(v, torch.Tensor)}
        return {**values, "refresh_rate": self.refresh_rate}


def training_losses(
    model: VLAModel,
    batch: dict[str, torch.Tensor],
    gate_lambda: float,
    generator: torch.Generator | None = None,
    dysta: DystaParams | None = None,
) -> Losses:
    """All of DySta's training objective on one batch (see the module docstring); dysta: its layout."""
    dysta = dysta or DystaParams()
    frames = encode(model, batch["pixels"])  # (B, T, N, Cv)
    b, t, n, _ = frames.shape
    z_ref, z_pos, z_now = encode(model, batch["reference"]), encode(model, batch["positive"]), frames[:, -1]
    text = model.backbone.embed_tokens(batch["text_ids"])  # (B, n_text, W)
    state = model.state_proj(batch["state"])[:, None]  # (B, 1, W)
    layout = DystaLayout(n, t, text.shape[1], dysta.cache_language)
    full_length = layout.full_length  # both contexts hold `full`'s positions; the expert reads past them

    # Full layout.
    tokens = model.projector(frames)  # (B, T, N, W)
    embeds = torch.cat([tokens.flatten(1, 2), text, state], dim=1)  # (B, L, W)
    positions = torch.arange(full_length, device=frames.device)[None].expand(b, -1)
    task_full = prefix_loss(model, embeds, positions, full_length, batch["actions"], generator)

    # DySta layout: static levels from the (gate-mixed) reference, dynamic tokens per slot.
    groups = group_indices(model, z_ref, *dysta.static_counts(n))
    l1, l2, _ = groups
    gate_logits = model.recache_gate.logits(z_ref, z_now)  # (B, 2)
    refresh = gumbel_sigmoid(gate_logits, hard=True, generator=generator)  # (B, 2) straight-through
    g1 = refresh[:, :1, None]  # (B, 1, 1)
    g2 = 1 - (1 - g1) * (1 - refresh[:, 1:, None])  # refreshing L1 forces L2
    ref_tokens, now_tokens = model.projector(z_ref), tokens[:, -1]  # (B, N, W)
    static = torch.cat([
        g1 * gather(now_tokens, l1) + (1 - g1) * gather(ref_tokens, l1),
        g2 * gather(now_tokens, l2) + (1 - g2) * gather(ref_tokens, l2),
    ], dim=1)  # (B, s1 + s2, W)
    embeds, positions = dysta_context(layout, static, groups, tokens, text, state)
    task_dysta = prefix_loss(model, embeds, positions, full_length, batch["actions"], generator)

    # Static tokens of one episode at two times agree; other episodes in the batch are negatives.
    nce = [info_nce(static_descriptor(model, z_now, level), static_descriptor(model, z_pos, level))
           for level in (0, 1)]
    gate = gate_loss(gate_logits, batch["dt"], gate_lambda, generator=generator)
    task = 0.5 * (task_full + task_dysta)
    return Losses(
        total=dysta_loss(task, nce[0], nce[1], gate),
        task_full=task_full,
        task_dysta=task_dysta,
        nce_l1=nce[0],
        nce_l2=nce[1],
        gate=gate,
        refresh_rate=float(refresh[:, 0].detach().mean()),
    )
