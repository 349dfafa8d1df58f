"""Flow-matching action expert (pi0 / SmolVLA shape), read top to bottom like nanoGPT.

H action tokens attend, at each expert layer, to the backbone's post-RoPE K/V of one mapped
backbone layer (the prefix: whatever the strategy put in context) concatenated with their own
K/V, and to each other. Euler integration from t=1 (noise) to t=0; the training target is
v = noise - actions (pi0's convention).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from dysta_ros.policy.config import BackboneConfig, ExpertConfig


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """Llama's RoPE convention: the halves of the head dimension swap and one is negated."""
    first, second = x.chunk(2, dim=-1)
    return torch.cat([-second, first], dim=-1)


def rope_tables(positions: torch.Tensor, head_dim: int, theta: float, dtype: torch.dtype):
    """cos, sin (n, D) for positions (n,), matching the backbone's default rotary embedding."""
    exponents = torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float32) / head_dim
    inv_freq = 1.0 / (theta**exponents)  # (D/2,)
    angles = positions.float()[:, None] * inv_freq[None, :]  # (n, D/2)
    emb = torch.cat([angles, angles], dim=-1)  # (n, D)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x (B, H, n, D) by the tables (n, D)."""
    return x * cos + rotate_half(x) * sin


def sinusoidal_time(t: torch.Tensor, width: int, min_period: float = 4e-3, max_period: float = 4.0):
    """Embed flow times t (B,) in [0, 1] as (B, width) sines and cosines (pi0's periods)."""
    fraction = torch.linspace(0.0, 1.0, width // 2, device=t.device, dtype=torch.float32)
    period = min_period * (max_period / min_period) ** fraction  # (width/2,)
    angles = t.float()[:, None] * (2 * math.pi / period)[None, :]  # (B, width/2)
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


class ExpertAttention(nn.Module):
    """Action-token queries over [prefix K/V | action K/V]; heads match the backbone's KV."""

    def __init__(self, cfg: ExpertConfig, backbone: BackboneConfig):
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = backbone.heads, backbone.kv_heads, backbone.head_dim
        self.theta = backbone.rope_theta
        self.q_proj = nn.Linear(cfg.width, self.heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(cfg.width, self.kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(cfg.width, self.kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.heads * self.head_dim, cfg.width, bias=False)

    def forward(self, x, keys, values, cos, sin):
        """Attend from x (B, n, We) over keys/values (B, Hkv, P+n, D): the prefix, then n free rows."""
        b, n, _ = x.shape
        groups = self.heads // self.kv_heads
        q = self.q_proj(x).view(b, n, self.heads, self.head_dim).transpose(1, 2)  # (B, H, n, D)
        k = self.k_proj(x).view(b, n, self.kv_heads, self.head_dim).transpose(1, 2)  # (B, Hkv, n, D)
        v = self.v_proj(x).view(b, n, self.kv_heads, self.head_dim).transpose(1, 2)
        q, k = rope(q, cos, sin), rope(k, cos, sin)
        keys[:, :, -n:] = k  # the prefix rows are never copied again, whatever its length
        values[:, :, -n:] = v
        # GQA without repeating K/V: the query heads of one KV head become one longer query block.
        grouped = q.reshape(b, self.kv_heads, groups * n, self.head_dim)  # (B, Hkv, groups*n, D)
        out = F.scaled_dot_product_attention(grouped, keys, values)  # prefix + each other, no mask
        out = out.view(b, self.heads, n, self.head_dim)  # (B, H, n, D)
        return self.o_proj(out.transpose(1, 2).reshape(b, n, -1))  # (B, n, We)


class ExpertMLP(nn.Module):
    def __init__(self, cfg: ExpertConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.width, cfg.mlp_width, bias=False)
        self.up_proj = nn.Linear(cfg.width, cfg.mlp_width, bias=False)
        self.down_proj = nn.Linear(cfg.mlp_width, cfg.width, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class ExpertLayer(nn.Module):
    def __init__(self, cfg: ExpertConfig, backbone: BackboneConfig):
        super().__init__()
        self.input_norm = nn.RMSNorm(cfg.width, eps=1e-6)
        self.self_attn = ExpertAttention(cfg, backbone)
        self.post_attention_norm = nn.RMSNorm(cfg.width, eps=1e-6)
        self.mlp = ExpertMLP(cfg)

    def forward(self, x, keys, values, cos, sin):
        x = x + self.self_attn(self.input_norm(x), keys, values, cos, sin)
        return x + self.mlp(self.post_attention_norm(x))


class ActionExpert(nn.Module):
    """Velocity field v(x_t, t | prefix) over an action chunk (B, horizon, action_dim)."""

    def __init__(self, cfg: ExpertConfig, backbone: BackboneConfig, action_dim: int, horizon: int):
        super().__init__()
        self.cfg, self.horizon, self.action_dim = cfg, horizon, action_dim
        # Expert layer j reads backbone layer (j + 1) * B // E - 1: evenly spread and ending at
        # the last layer, so no backbone layer is computed for nobody.
        self.layer_map = [(j + 1) * backbone.layers // cfg.layers - 1 for j in range(cfg.layers)]
        self.action_in_proj = nn.Linear(action_dim, cfg.width)
        self.time_mlp_in = nn.Linear(cfg.width, cfg.width)
        self.time_mlp_out = nn.Linear(cfg.width, cfg.width)
        self.layers = nn.ModuleList(ExpertLayer(cfg, backbone) for _ in range(cfg.layers))
        self.norm = nn.RMSNorm(cfg.width, eps=1e-6)
        self.action_out_proj = nn.Linear(cfg.width, action_dim)

    def prepare(self, prefix, prefix_length: int, batch: int, dtype: torch.dtype):
        """Per expert layer, K/V buffers holding the mapped backbone layer's prefix, and RoPE tables.

        Done once per chunk: every Euler step writes only its action rows into the buffers.
        """
        kv = []
        for mapped in self.layer_map:
            k, v = prefix[mapped]  # (1 or B, Hkv, P, D)
            free = k.new_zeros(k.shape[0], k.shape[1], self.horizon, k.shape[3])  # (., Hkv, H, D)
            kv.append(
                (
                    torch.cat([k, free], dim=2).expand(batch, -1, -1, -1).clone(),
                    torch.cat([v, free], dim=2).expand(batch, -1, -1, -1).clone(),
                )
            )
        # RoPE positions after the whole full-layout prefix, the same for every strategy.
        attn = self.layers[0].self_attn
        positions = torch.arange(prefix_length, prefix_length + self.horizon, device=kv[0][0].device)
        return kv, rope_tables(positions, attn.head_dim, attn.theta, dtype)

    def velocity(self, x_t, t, prepared):
        """Predict v (B, H, A) at flow time t (B,) given `prepare`'s prefix."""
        kv, (cos, sin) = prepared
        time = self.time_mlp_out(
            F.silu(self.time_mlp_in(sinusoidal_time(t, self.cfg.width).to(x_t.dtype)))
        )  # (B, We)
        x = self.action_in_proj(x_t) + time[:, None, :]  # (B, H, We)
        for layer, (keys, values) in zip(self.layers, kv):
            x = layer(x, keys, values, cos, sin)
        return self.action_out_proj(self.norm(x))  # (B, H, A)

    def sample(self, prefix, prefix_length: int, noise: torch.Tensor) -> torch.Tensor:
        """Integrate from noise (B, H, A) at t=1 to actions at t=0 (Euler, flow_steps steps)."""
        b = noise.shape[0]
        prepared = self.prepare(prefix, prefix_length, b, noise.dtype)
        if self.cfg.head == "regression":
            return self.velocity(torch.zeros_like(noise), noise.new_ones(b), prepared)
        steps = self.cfg.flow_steps
        x = noise
        for i in range(steps):
            t = noise.new_full((b,), 1.0 - i / steps)
            x = x - self.velocity(x, t, prepared) / steps  # dt = -1/steps
        return x

    def loss(
        self, prefix, prefix_length: int, actions: torch.Tensor, generator: torch.Generator | None = None
    ):
        """Flow-matching loss: || v(x_t, t) - (noise - actions) ||^2 at random t (pi0)."""
        b = actions.shape[0]
        prepared = self.prepare(prefix, prefix_length, b, actions.dtype)
        if self.cfg.head == "regression":
            pred = self.velocity(torch.zeros_like(actions), actions.new_ones(b), prepared)
            return F.mse_loss(pred, actions)
        noise = torch.randn(actions.shape, generator=generator).to(actions.device, actions.dtype)
        # pi0 favours noisy times: t = 0.999 * Beta(1.5, 1) + 0.001, by inverse CDF (u^(2/3)).
        u = torch.rand(b, generator=generator).to(actions.device, actions.dtype)
        t = u ** (2.0 / 3.0) * 0.999 + 0.001
        x_t = t[:, None, None] * noise + (1 - t[:, None, None]) * actions  # (B, H, A)
        target = noise - actions
        return F.mse_loss(self.velocity(x_t, t, prepared), target)
