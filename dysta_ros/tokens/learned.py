"""DySta's learned parts: the disentangler, the MLP-Mixer recache gate, and their losses.

The modules live inside the policy (saved in its checkpoint); the `dysta` strategy uses them
when its `gate` parameter picks them (`learned`, or `auto` on a checkpoint that trained them).
Training (training/) imports the losses from here.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

GROUPS = ("l1", "l2", "dynamic")


class Disentangler(nn.Module):
    """Score each patch's vision features for the groups [L1 static, L2 static, dynamic]."""

    def __init__(self, vision_width: int, hidden: int = 64):
        super().__init__()
        self.scorer = nn.Sequential(
            nn.LayerNorm(vision_width),
            nn.Linear(vision_width, hidden),
            nn.GELU(),
            nn.Linear(hidden, len(GROUPS)),
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.scorer(features)  # (..., N, 3) group logits

    @torch.no_grad()
    def assign(self, features: torch.Tensor, l1_count: int, l2_count: int):
        """Return patch indices (l1, l2, dynamic) for features (N, C): top-k per level keeps counts fixed."""
        logits = self(features).float()  # (N, 3)
        l1 = torch.topk(logits[:, 0], l1_count).indices
        rest = torch.ones(features.shape[0], dtype=torch.bool, device=features.device)
        rest[l1] = False
        l2_scores = logits[:, 1].masked_fill(~rest, float("-inf"))
        l2 = torch.topk(l2_scores, l2_count).indices
        rest[l2] = False
        return l1.sort().values, l2.sort().values, rest.nonzero().flatten()


class RecacheGate(nn.Module):
    """g_l(Z_ref, Z_t) in [0, 1] per static level: token-wise FFN, transpose, channel-wise FFN, heads."""

    def __init__(self, vision_width: int, tokens: int, hidden: int = 32, mixed: int = 16, levels: int = 2):
        super().__init__()
        self.token_ffn = nn.Sequential(
            nn.Linear(2 * vision_width, hidden), nn.GELU(), nn.Linear(hidden, hidden)
        )
        self.channel_ffn = nn.Sequential(nn.Linear(tokens, mixed), nn.GELU(), nn.Linear(mixed, mixed))
        self.heads = nn.ModuleList(nn.Linear(hidden * mixed, 1) for _ in range(levels))

    def logits(self, z_ref: torch.Tensor, z_t: torch.Tensor) -> torch.Tensor:
        """Return gate logits (B, levels) for features (B, N, C) of the reference and current frame."""
        x = torch.cat([z_ref, z_t], dim=-1)  # (B, N, 2C)
        x = self.token_ffn(x)  # (B, N, hidden): per token, over channels
        x = self.channel_ffn(x.transpose(1, 2))  # (B, hidden, mixed): across tokens
        x = x.flatten(1)  # (B, hidden * mixed)
        return torch.cat([head(x) for head in self.heads], dim=-1)  # (B, levels)

    def forward(self, z_ref: torch.Tensor, z_t: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.logits(z_ref, z_t))


def info_nce(anchor: torch.Tensor, positive: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """InfoNCE over a batch: row i of anchor matches row i of positive; other rows are negatives."""
    a = F.normalize(anchor.flatten(1), dim=-1)  # (B, C)
    p = F.normalize(positive.flatten(1), dim=-1)
    logits = a @ p.T / temperature  # (B, B)
    return F.cross_entropy(logits, torch.arange(a.shape[0], device=a.device))


def gumbel_sigmoid(
    logits: torch.Tensor, tau: float = 1.0, hard: bool = False, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Relaxed Bernoulli (binary Gumbel-softmax) sample of a refresh decision; straight-through if hard."""
    # drawn where the generator lives (a trainer's is on the CPU), then moved
    u = torch.rand(logits.shape, generator=generator, device=generator.device if generator else logits.device)
    u = u.to(logits.device).clamp(1e-6, 1 - 1e-6)
    noise = torch.log(u) - torch.log1p(-u)  # difference of two Gumbels
    soft = torch.sigmoid((logits + noise.to(logits.dtype)) / tau)
    if not hard:
        return soft
    return (soft > 0.5).to(soft.dtype) - soft.detach() + soft


def gate_prior(dt: torch.Tensor, lam: float) -> torch.Tensor:
    """p_dt = 1 - exp(-lambda * dt): the prior probability of a refresh dt steps after caching."""
    return 1.0 - torch.exp(-lam * dt.float())


def gate_loss(
    gate_logits: torch.Tensor,
    dt: torch.Tensor,
    lam: float,
    tau: float = 1.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """BCE of the Gumbel-relaxed gate (B, levels) against p_dt (B,): favours reuse early on."""
    sample = gumbel_sigmoid(gate_logits, tau=tau, generator=generator).clamp(1e-6, 1 - 1e-6)
    target = gate_prior(dt, lam)[:, None].expand_as(sample).to(sample.dtype)
    # in float32 outside autocast: CUDA's autocast refuses binary_cross_entropy (unsafe in float16)
    with torch.autocast(sample.device.type, enabled=False):
        return F.binary_cross_entropy(sample.float(), target.float())


def dysta_loss(task: torch.Tensor, nce_l1: torch.Tensor, nce_l2: torch.Tensor, gate: torch.Tensor):
    """The paper's total: L_task + 0.2 InfoNCE_L1 + 0.1 InfoNCE_L2 + 0.1 L_gate."""
    return task + 0.2 * nce_l1 + 0.1 * nce_l2 + 0.1 * gate


def default_gate_hidden(vision_width: int) -> int:
    """A gate about 1 % of a step's cost: small next to the vision encoder."""
    return max(16, int(math.sqrt(vision_width) * 2))
