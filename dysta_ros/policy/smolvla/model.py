"""SmolVLA's network as LeRobot 0.4.4 runs it at inference, from transformers parts.

Module names mirror LeRobot's checkpoint keys (`model.vlm_with_expert.vlm.model.vision_model...`),
so loading is a key map with shape checks. Read bottom-up: rotary + attention, the prefix pass
(backbone -> per-layer K/V), the expert's denoising pass, then the model that ties them.
Shapes: B batch, P prefix tokens, C chunk, H query heads, G KV heads, D head_dim.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import LlamaConfig
from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRMSNorm
from transformers.models.smolvlm.configuration_smolvlm import SmolVLMConfig, SmolVLMVisionConfig
from transformers.models.smolvlm.modeling_smolvlm import SmolVLMConnector, SmolVLMVisionTransformer

from dysta_ros.policy import kernels
from dysta_ros.policy.smolvla.config import SmolVLAConfig, VLMConfig, expert_intermediate_size
from dysta_ros.policy.vision_reuse import encode_full

ROPE_BASE = 10_000.0  # SmolVLA's own rotary base; the backbone's rope setting is never read


def rope_tables(positions: torch.Tensor, head_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (cos, sin), each (B, T, 1, D/2) fp32, of positions (B, T): once per chunk, not per layer."""
    half = head_dim // 2
    exponents = (2.0 / head_dim) * torch.arange(half, dtype=torch.float32, device=positions.device)
    timescale = ROPE_BASE**exponents  # (D/2,)
    radians = positions[..., None].float() / timescale[None, None, :]  # (B, T, D/2)
    radians = radians[..., None, :]  # (B, T, 1, D/2)
    return torch.cos(radians), torch.sin(radians)


def rotate(x: torch.Tensor, tables: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Rotate x (B, T, heads, D) by rope_tables' (cos, sin), half-split, in fp32."""
    cos, sin = tables
    half = x.shape[-1] // 2
    dtype = x.dtype
    x = x.float()
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).to(dtype)


def apply_rope(x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Rotate x (B, T, heads, D) by positions (B, T), half-split, in fp32."""
    return rotate(x, rope_tables(positions, x.shape[-1]))


def mask_bias(allowed: torch.Tensor) -> torch.Tensor:
    """Return the additive fp32 bias (B, 1, T, S) of a bool (B, T, S) mask: 0 or the fp32 minimum.

    LeRobot replaces masked scores by the float32 minimum before an fp32 softmax; adding the
    minimum gives the same probabilities (|score| is far below its ulp), and keeps fully masked
    rows (pad queries) finite, as LeRobot's are.
    """
    bias = torch.zeros(allowed.shape, dtype=torch.float32, device=allowed.device)
    bias.masked_fill_(~allowed, torch.finfo(torch.float32).min)
    return bias[:, None]


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """SDPA over (B, T, H, D) queries and (B, S, G, D) keys/values under mask_bias' (B, 1, T, S).

    Scores and softmax in fp32, as LeRobot's. GQA: query head h reads KV head h // (H/G).
    """
    out_dtype = v.dtype
    q, k, v = (t.float().transpose(1, 2) for t in (q, k, v))  # (B, heads, T|S, D)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, enable_gqa=True)  # (B, H, T, D)
    return out.transpose(1, 2).reshape(q.shape[0], q.shape[2], -1).to(out_dtype)  # (B, T, H*D)


def _mlp_block(layer: nn.Module, hidden: torch.Tensor, attn_out: torch.Tensor) -> torch.Tensor:
    """Apply o_proj + residual, then the post-attention norm + gated MLP + residual."""
    o_proj = layer.self_attn.o_proj
    hidden = kernels.linear(attn_out.to(o_proj.weight.dtype), o_proj, residual=hidden)
    normed = kernels.rms_norm(layer.post_attention_layernorm, hidden)
    return kernels.gated_mlp(layer.mlp, normed, residual=hidden)


def _project(layer: nn.Module, hidden: torch.Tensor, head_dim: int, with_query: bool = True):
    """Return the layer's (q, k, v) of normed hidden (B, T, W), each (B, T, heads, D)."""
    x = kernels.rms_norm(layer.input_layernorm, hidden).to(layer.self_attn.k_proj.weight.dtype)
    shape = (*x.shape[:-1], -1, head_dim)
    attn = layer.self_attn
    q = kernels.linear(x, attn.q_proj).view(shape) if with_query else None
    return q, kernels.linear(x, attn.k_proj).view(shape), kernels.linear(x, attn.v_proj).view(shape)


class KVOnlyAttention(nn.Module):
    """The last kept text layer's attention: LeRobot reads only its K/V (q/o never matter)."""

    def __init__(self, width: int, kv_width: int):
        super().__init__()
        self.k_proj = nn.Linear(width, kv_width, bias=False)
        self.v_proj = nn.Linear(width, kv_width, bias=False)


class KVOnlyLayer(nn.Module):
    """The last kept text layer, reduced to what produces its cached K/V."""

    def __init__(self, width: int, kv_width: int, eps: float):
        super().__init__()
        self.input_layernorm = LlamaRMSNorm(width, eps=eps)
        self.self_attn = KVOnlyAttention(width, kv_width)


class TextModel(nn.Module):
    """The backbone's token embedding and its first num_vlm_layers layers (no final norm: unused)."""

    def __init__(self, text: LlamaConfig, num_layers: int):
        super().__init__()
        self.embed_tokens = nn.Embedding(text.vocab_size, text.hidden_size)
        kv_width = text.num_key_value_heads * text.head_dim
        layers = [LlamaDecoderLayer(text, i) for i in range(num_layers - 1)]
        layers.append(KVOnlyLayer(text.hidden_size, kv_width, text.rms_norm_eps))
        self.layers = nn.ModuleList(layers)


class VLMInner(nn.Module):
    """`vlm.model`: vision tower, connector, text model."""

    def __init__(self, vlm: SmolVLMConfig, text: LlamaConfig, num_layers: int):
        super().__init__()
        self.vision_model = SmolVLMVisionTransformer(vlm.vision_config)
        self.connector = SmolVLMConnector(vlm)
        self.text_model = TextModel(text, num_layers)


class VLM(nn.Module):
    """`vlm` (its lm_head is saved but never used)."""

    def __init__(self, vlm: SmolVLMConfig, text: LlamaConfig, num_layers: int):
        super().__init__()
        self.model = VLMInner(vlm, text, num_layers)


class Expert(nn.Module):
    """The action expert: Llama layers at the expert width, cross layers re-projecting prefix K/V."""

    def __init__(self, expert: LlamaConfig, cfg: SmolVLAConfig):
        super().__init__()
        kv_width = expert.num_key_value_heads * expert.head_dim
        layers = []
        for i in range(cfg.num_expert_layers or cfg.num_vlm_layers):
            layer = LlamaDecoderLayer(expert, i)
            if not cfg.is_self_attention(i):  # cross layers read (already rotated) backbone K/V
                layer.self_attn.k_proj = nn.Linear(kv_width, kv_width, bias=expert.attention_bias)
                layer.self_attn.v_proj = nn.Linear(kv_width, kv_width, bias=expert.attention_bias)
            layers.append(layer)
        self.layers = nn.ModuleList(layers)
        self.norm = LlamaRMSNorm(expert.hidden_size, eps=expert.rms_norm_eps)


class VLMWithExpert(nn.Module):
    """`vlm_with_expert`: the backbone and the action expert side by side."""

    def __init__(self, vlm: SmolVLMConfig, text: LlamaConfig, expert: LlamaConfig, cfg: SmolVLAConfig):
        super().__init__()
        self.vlm = VLM(vlm, text, cfg.num_vlm_layers)
        self.lm_expert = Expert(expert, cfg)


def transformers_configs(
    cfg: SmolVLAConfig, vlm: VLMConfig
) -> tuple[SmolVLMConfig, LlamaConfig, LlamaConfig]:
    """Return the transformers configs of the backbone, its text model and the expert."""
    vision_raw = {k: v for k, v in vlm.vision.raw.items() if k != "model_type"}
    vision = SmolVLMVisionConfig(**vision_raw)
    vision._attn_implementation = "sdpa"
    text_kwargs = dict(
        hidden_size=vlm.text.hidden_size,
        intermediate_size=vlm.text.intermediate_size,
        num_hidden_layers=cfg.num_vlm_layers,
        num_attention_heads=vlm.text.num_attention_heads,
        num_key_value_heads=vlm.text.num_key_value_heads,
        head_dim=vlm.text.head_dim,
        vocab_size=vlm.text.vocab_size,
        rms_norm_eps=vlm.text.rms_norm_eps,
        hidden_act=vlm.text.raw.get("hidden_act", "silu"),
        attention_bias=False,
        mlp_bias=False,
        pad_token_id=vlm.text.pad_token_id,
    )
    text = LlamaConfig(**text_kwargs)
    width = int(vlm.text.hidden_size * cfg.expert_width_multiplier)
    expert = LlamaConfig(
        **{**text_kwargs, "hidden_size": width, "intermediate_size": expert_intermediate_size(width)}
    )
    backbone = SmolVLMConfig(
        vision_config=vision.to_dict(), text_config=text.to_dict(), scale_factor=vlm.scale_factor
    )
    backbone.vision_config._attn_implementation = "sdpa"
    return backbone, text, expert


def sinusoidal_time_embedding(
    t: torch.Tensor, width: int, min_period: float, max_period: float
) -> torch.Tensor:
    """Return [sin | cos] of 2 pi t / period (B, width), computed in float64 as LeRobot does."""
    fraction = torch.linspace(0.0, 1.0, width // 2, dtype=torch.float64, device=t.device)
    period = min_period * (max_period / min_period) ** fraction  # (W/2,)
    angle = (1.0 / period * 2 * math.pi)[None, :] * t[:, None]  # (B, W/2)
    return torch.cat([torch.sin(angle), torch.cos(angle)], dim=1)


class SmolVLAModel(nn.Module):
    """LeRobot's `model` (VLAFlowMatching): prefix embedding, prefix pass, denoising."""

    def __init__(self, cfg: SmolVLAConfig, vlm: VLMConfig):
        super().__init__()
        self.cfg, self.vlm_cfg = cfg, vlm
        backbone, text, expert = transformers_configs(cfg, vlm)
        self.head_dim = vlm.text.head_dim
        self.expert_width = expert.hidden_size
        self.vlm_with_expert = VLMWithExpert(backbone, text, expert, cfg)
        self.state_proj = nn.Linear(cfg.max_state_dim, vlm.text.hidden_size)
        self.action_in_proj = nn.Linear(cfg.max_action_dim, expert.hidden_size)
        self.action_out_proj = nn.Linear(expert.hidden_size, cfg.max_action_dim)
        self.action_time_mlp_in = nn.Linear(2 * expert.hidden_size, expert.hidden_size)
        self.action_time_mlp_out = nn.Linear(expert.hidden_size, expert.hidden_size)
        self._time_cache: dict = {}  # step schedule -> time embeddings (they depend on nothing else)

    # -- prefix ------------------------------------------------------------------------------
    def encode_image(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (vision last hidden (B, N, Wv), image tokens (B, N/s^2, W)) of (B, 3, h, w) pixels."""
        hidden = self.vision_hidden(pixels)
        return hidden, self.connect(hidden)

    def vision_hidden(self, pixels: torch.Tensor) -> torch.Tensor:
        """Return the vision tower's last hidden (B, N, Wv) of (B, 3, h, w) pixels (SDPA attention)."""
        return encode_full(self.vlm_with_expert.vlm.model.vision_model, pixels)

    def connect(self, hidden: torch.Tensor) -> torch.Tensor:
        """Return image tokens (B, N/s^2, W): pixel shuffle + projection of the vision hidden."""
        return self.vlm_with_expert.vlm.model.connector(hidden)

    def embed_prefix(
        self,
        image_tokens: list[torch.Tensor],
        lang_tokens: torch.Tensor,
        lang_mask: torch.Tensor,
        state: torch.Tensor,
    ):
        """Return prefix embeddings (B, P, W), pad mask (B, P), block flags (B, P).

        Layout [each camera's tokens | language | state]; images and language form one
        bidirectional block (flag 0), the state starts a new block (flag 1).
        """
        width = self.vlm_cfg.text.hidden_size
        embed = self.vlm_with_expert.vlm.model.text_model.embed_tokens
        batch = lang_tokens.shape[0]
        embs, pads, flags = [], [], []
        for tokens in image_tokens:
            embs.append(tokens * torch.tensor(width**0.5, dtype=tokens.dtype, device=tokens.device))
            pads.append(torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device))
            flags.append(torch.zeros(tokens.shape[:2], dtype=torch.bool, device=tokens.device))
        lang = embed(lang_tokens)  # (B, L, W)
        embs.append(lang * math.sqrt(width))
        pads.append(lang_mask.bool())
        flags.append(torch.zeros_like(lang_mask, dtype=torch.bool))
        state_emb = self.state_proj(state.to(self.state_proj.weight.dtype))[:, None, :]  # (B, 1, W)
        embs.append(state_emb.to(embs[0].dtype))
        pads.append(torch.ones(batch, 1, dtype=torch.bool, device=state.device))
        flags.append(torch.ones(batch, 1, dtype=torch.bool, device=state.device))
        return torch.cat(embs, dim=1), torch.cat(pads, dim=1), torch.cat(flags, dim=1)

    @staticmethod
    def attention_2d(pad_mask: torch.Tensor, block_flags: torch.Tensor) -> torch.Tensor:
        """Return the (B, T, T) mask: a query sees keys of its block and earlier blocks, valid ones only."""
        blocks = torch.cumsum(block_flags.long(), dim=1)  # (B, T)
        allowed = blocks[:, None, :] <= blocks[:, :, None]
        return allowed & (pad_mask[:, None, :] & pad_mask[:, :, None])

    def prefix_forward(self, embs: torch.Tensor, pad_mask: torch.Tensor, block_flags: torch.Tensor):
        """Run the kept text layers over the prefix; return per-layer (key, value), each (B, P, G, D).

        Keys are stored after rotation, as LeRobot caches them. The mask bias and the rotary
        tables are built once for all layers.
        """
        bias = mask_bias(self.attention_2d(pad_mask, block_flags))  # (B, 1, P, P)
        positions = torch.cumsum(pad_mask.long(), dim=1) - 1  # pads repeat the previous id
        tables = rope_tables(positions, self.head_dim)
        layers = self.vlm_with_expert.vlm.model.text_model.layers
        hidden, cache = embs, []
        for index, layer in enumerate(layers):
            last = index == len(layers) - 1
            q, k, v = _project(layer, hidden, self.head_dim, with_query=not last)
            k = rotate(k, tables)
            cache.append((k, v))
            if not last:  # the last layer's output is never read: only its K/V
                out = attention(rotate(q, tables), k, v, bias)
                hidden = _mlp_block(layer, hidden, out)
        return cache

    def prefix_forward_rows(self, embs, positions, allowed, base_kv, write, rows_per_layer=None,
                            observe=None):
        """Recompute some prefix tokens against the others' given K/V; return per-layer (key, value).

        What K/V reuse builds on (policy/smolvla/backend.py): embs (B, Q, W) at positions (B, Q)
        are computed; their rotated keys and values overwrite slots `write` (Q,) of base_kv (per
        layer (B, P, G, D)) and they attend to all P keys under allowed (B, Q, P). rows_per_layer:
        per layer the ascending rows of the Q tokens it computes, each within the layer above's (a
        dropped token keeps base_kv's K/V from there on); None = every row. observe(index, q, keys,
        rows) sees each attending layer's rotated queries (B, Q_l, H, D) and assembled keys.
        """
        layers = self.vlm_with_expert.vlm.model.text_model.layers
        every = torch.arange(embs.shape[1], device=embs.device)
        hidden, cache, previous = embs, [], every
        for index, layer in enumerate(layers):
            rows = every if rows_per_layer is None else rows_per_layer[index]
            if len(rows) != len(previous):
                hidden = hidden[:, torch.searchsorted(previous, rows)]
            previous = rows
            last = index == len(layers) - 1
            q, k, v = _project(layer, hidden, self.head_dim, with_query=not last)
            base_k, base_v = base_kv[index]
            slots = write[rows]
            keys = base_k.index_copy(1, slots, apply_rope(k, positions[:, rows]).to(base_k.dtype))
            values = base_v.index_copy(1, slots, v.to(base_v.dtype))
            cache.append((keys, values))
            if not last:
                q = apply_rope(q, positions[:, rows])
                if observe is not None:
                    observe(index, q, keys, rows)
                hidden = _mlp_block(layer, hidden, attention(q, keys, values, mask_bias(allowed[:, rows])))
        return cache

    # -- action expert -----------------------------------------------------------------------
    def expert_context(self, prefix_kv, prefix_pad_mask: torch.Tensor):
        """Return what denoising needs from the prefix, once per chunk.

        Per expert layer the keys/values it attends to from the prefix: the backbone's own for
        self-attention layers, and for cross-attention layers the expert's re-projection of
        them (LeRobot recomputes it at every step; it depends only on the prefix).
        """
        context = []
        experts = self.vlm_with_expert.lm_expert.layers
        for index, expert_index in self.cfg.expert_layer_map():  # backbone layer, its expert layer
            layer, (key, value) = experts[expert_index], prefix_kv[index]
            if not self.cfg.is_self_attention(index):
                attn = layer.self_attn
                flat_k = key.reshape(*key.shape[:2], -1).to(attn.k_proj.weight.dtype)  # (B, P, G*D)
                flat_v = value.reshape(*value.shape[:2], -1).to(attn.v_proj.weight.dtype)
                key = attn.k_proj(flat_k).view(*key.shape[:2], -1, self.head_dim)
                value = attn.v_proj(flat_v).view(*value.shape[:2], -1, self.head_dim)
            context.append((key, value))
        return context

    def denoise_plan(self, context, prefix_pad_mask: torch.Tensor, chunk: int) -> DenoisePlan:
        """Return everything the denoising steps share, built once per chunk.

        Masks (as fp32 biases), rotary tables, and for self-attention layers a key/value buffer
        holding the prefix part once: each step writes only its action part into it.
        """
        batch, prefix_len = prefix_pad_mask.shape
        device = prefix_pad_mask.device
        causal = torch.ones(chunk, chunk, dtype=torch.bool, device=device).tril()
        self_allowed = torch.cat(
            [
                prefix_pad_mask[:, None, :].expand(batch, chunk, prefix_len),
                causal[None].expand(batch, chunk, chunk),
            ],
            dim=2,
        )  # (B, C, P+C)
        cross_allowed = prefix_pad_mask[:, None, :].expand(batch, chunk, prefix_len)  # (B, C, P)
        offset = prefix_pad_mask.long().sum(dim=1, keepdim=True)  # (B, 1)
        steps = torch.arange(chunk, device=device)[None]  # (1, C)
        buffers = []
        for (index, _), (key, value) in zip(self.cfg.expert_layer_map(), context):
            if self.cfg.is_self_attention(index):
                k_buf = key.new_empty(batch, prefix_len + chunk, *key.shape[2:])
                v_buf = value.new_empty(batch, prefix_len + chunk, *value.shape[2:])
                k_buf[:, :prefix_len], v_buf[:, :prefix_len] = key, value
                buffers.append((k_buf, v_buf))
            else:
                buffers.append((key, value))
        return DenoisePlan(
            buffers=buffers,
            prefix_len=prefix_len,
            self_bias=mask_bias(self_allowed),
            cross_bias=mask_bias(cross_allowed),
            self_rope=rope_tables(offset + steps, self.head_dim),  # continue after the valid prefix
            cross_rope=rope_tables(steps.expand(batch, chunk), self.head_dim),
        )

    def time_embeddings(self, times: tuple[float, ...], device) -> torch.Tensor:
        """Return the sinusoidal embeddings (steps, We) of the step times, cached per schedule."""
        key = (times, str(device), self.action_in_proj.weight.dtype)
        cached = self._time_cache.get(key)
        if cached is None:
            t = torch.tensor(times, dtype=torch.float32, device=device)
            emb = sinusoidal_time_embedding(t, self.expert_width, self.cfg.min_period, self.cfg.max_period)
            cached = self._time_cache[key] = emb.to(self.action_in_proj.weight.dtype)
        return cached

    def embed_suffix(self, x_t: torch.Tensor, t: torch.Tensor, time_emb: torch.Tensor | None = None):
        """Return the expert's input tokens (B, C, We) for noisy actions (B, C, A) at time t (B,)."""
        action_emb = self.action_in_proj(x_t)  # (B, C, We)
        if time_emb is None:
            cfg = self.cfg
            time_emb = sinusoidal_time_embedding(t, self.expert_width, cfg.min_period, cfg.max_period)
        time_emb = time_emb.to(action_emb.dtype)[:, None, :].expand_as(action_emb)
        fused = self.action_time_mlp_in(torch.cat([action_emb, time_emb], dim=2))
        return self.action_time_mlp_out(F.silu(fused))

    def velocity(self, context, prefix_pad_mask: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor):
        """Return the flow velocity (B, C, A) at x_t, t (B,) given the chunk's expert context.

        One call, its own plan (what training differentiates through); denoising builds the plan
        once per chunk and calls planned_velocity.
        """
        cfg = self.cfg
        time_emb = sinusoidal_time_embedding(t, self.expert_width, cfg.min_period, cfg.max_period)
        plan = self.denoise_plan(context, prefix_pad_mask, x_t.shape[1])
        return self.planned_velocity(plan, x_t, time_emb.to(self.action_in_proj.weight.dtype))

    def planned_velocity(self, plan: DenoisePlan, x_t: torch.Tensor, time_emb: torch.Tensor) -> torch.Tensor:
        """Return the flow velocity (B, C, A) at x_t with time embedding (B, We) under the chunk's plan."""
        hidden = self.embed_suffix(x_t, None, time_emb)  # (B, C, We)
        batch, chunk = hidden.shape[:2]
        start = plan.prefix_len
        experts = self.vlm_with_expert.lm_expert.layers
        for (index, expert_index), (key, value) in zip(self.cfg.expert_layer_map(), plan.buffers):
            layer = experts[expert_index]
            if self.cfg.is_self_attention(index):
                q, k, v = _project(layer, hidden, self.head_dim)
                key[:, start:] = rotate(k, plan.self_rope)  # the action part of the step's K/V
                value[:, start:] = v
                out = attention(rotate(q, plan.self_rope), key, value, plan.self_bias)
            else:
                x = kernels.rms_norm(layer.input_layernorm, hidden).to(layer.self_attn.q_proj.weight.dtype)
                q = kernels.linear(x, layer.self_attn.q_proj).view(batch, chunk, -1, self.head_dim)
                out = attention(rotate(q, plan.cross_rope), key, value, plan.cross_bias)
            hidden = _mlp_block(layer, hidden, out)
        hidden = kernels.rms_norm(self.vlm_with_expert.lm_expert.norm, hidden)
        return self.action_out_proj(hidden.to(self.action_out_proj.weight.dtype))  # (B, C, A)

    def denoise(
        self,
        context,
        prefix_pad_mask: torch.Tensor,
        noise: torch.Tensor,
        record=None,
        steps: int = 0,
        start_time: float = 1.0,
    ) -> torch.Tensor:
        """Integrate the flow with Euler from t = start_time (x = noise there) to 0; return x_0 (B, C, A).

        `steps` = 0 takes the checkpoint's num_steps; from t = 1 that is LeRobot's schedule.
        """
        steps = steps or self.cfg.num_steps
        dt = -start_time / steps
        # t afresh each step, in float64 then rounded once: a running float32 sum drifts 1e-7
        times = tuple(start_time + k * dt for k in range(steps))
        time_embs = self.time_embeddings(times, noise.device)
        plan = self.denoise_plan(context, prefix_pad_mask, noise.shape[1])
        x_t = noise.to(self.action_in_proj.weight.dtype)
        batch = noise.shape[0]
        for k in range(steps):
            v_t = self.planned_velocity(plan, x_t, time_embs[k : k + 1].expand(batch, -1))
            if record is not None:
                record.setdefault("v_t", []).append(v_t.clone())
                record.setdefault("timesteps", []).append(
                    torch.full((batch,), times[k], dtype=torch.float32, device=noise.device)
                )
            x_t = x_t + dt * v_t
        return x_t


@dataclass
class DenoisePlan:
    """What every denoising step of one chunk shares (SmolVLAModel.denoise_plan)."""

    buffers: list  # per expert layer (key, value): prefix + action slots, or the cross layer's context
    prefix_len: int
    self_bias: torch.Tensor  # (B, 1, C, P+C)
    cross_bias: torch.Tensor  # (B, 1, C, P)
    self_rope: tuple[torch.Tensor, torch.Tensor]
    cross_rope: tuple[torch.Tensor, torch.Tensor]
