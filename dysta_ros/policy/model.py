"""The multi-frame VLA: SigLIP ViT -> projector -> causal LM backbone -> flow-matching expert.

Bottom-up, as nanoGPT: vision encoder, backbone builder, then the model. The model itself
knows nothing of strategies: `encode_frame` turns one frame's images into patch tokens,
`embed_text` / `embed_state` give the language and state tokens, `run_backbone` executes an
AttentionPlan, and `sample_actions` integrates the expert over the recorded prefix K/V.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
from transformers import (
    DynamicCache,
    GemmaConfig,
    GemmaModel,
    LlamaConfig,
    LlamaModel,
    Qwen2Config,
    Qwen2Model,
    SiglipVisionConfig,
    SiglipVisionModel,
)

from dysta_ros.policy.action_expert import ActionExpert
from dysta_ros.policy.attention import AttentionPlan, install_query_dropping, register_attention
from dysta_ros.policy.config import BackboneConfig, PolicyConfig, VisionConfig
from dysta_ros.policy.contract import ModelSpec
from dysta_ros.policy.families import FAMILIES
from dysta_ros.policy.preprocess import prepare_observation
from dysta_ros.policy.vision_reuse import encode_full
from dysta_ros.tokens.flops import full_flops
from dysta_ros.tokens.learned import Disentangler, RecacheGate, default_gate_hidden

BACKBONES = {
    "llama": (LlamaConfig, LlamaModel),
    "qwen2": (Qwen2Config, Qwen2Model),
    "gemma": (GemmaConfig, GemmaModel),
}


def build_vision(cfg: VisionConfig) -> SiglipVisionModel:
    """A SigLIP ViT without the pooling head: we want the patch tokens."""
    config = SiglipVisionConfig(
        hidden_size=cfg.width,
        intermediate_size=cfg.mlp_width,
        num_hidden_layers=cfg.layers,
        num_attention_heads=cfg.heads,
        image_size=cfg.image_size,
        patch_size=cfg.patch_size,
        vision_use_head=False,
    )
    config._attn_implementation = "sdpa"
    return SiglipVisionModel(config)


def build_backbone(cfg: BackboneConfig) -> nn.Module:
    """A transformers decoder whose every attention call goes through plan_attention.

    Its decoder layers also drop the queries a plan stops computing at depth (`layer_queries`).
    """
    config_class, model_class = BACKBONES[cfg.family]
    config = config_class(
        hidden_size=cfg.width,
        intermediate_size=cfg.mlp_width,
        num_hidden_layers=cfg.layers,
        num_attention_heads=cfg.heads,
        num_key_value_heads=cfg.kv_heads,
        head_dim=cfg.head_dim,
        vocab_size=cfg.vocab_size,
        max_position_embeddings=1 << 16,
        rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_theta},
    )
    config._attn_implementation = register_attention()
    backbone = model_class(config)
    install_query_dropping(backbone)
    return backbone


class VLAModel(nn.Module):
    """Weights and pure tensor functions of the policy; the runtime owns history and caches.

    The first family behind the model contract (policy/contract.py): multi-frame, causal prefix.
    """

    family_name = "dysta_vla"
    capabilities = FAMILIES["dysta_vla"].capabilities

    def __init__(self, cfg: PolicyConfig):
        super().__init__()
        self.cfg = cfg
        self.vision = build_vision(cfg.vision)
        self.projector = nn.Linear(cfg.vision.width, cfg.backbone.width)
        self.backbone = build_backbone(cfg.backbone)
        self.state_proj = nn.Linear(cfg.state_dim, cfg.backbone.width)
        self.action_expert = ActionExpert(cfg.expert, cfg.backbone, cfg.action_dim, cfg.horizon)
        # DySta's learned parts (used only with `learned: true`; random until trained).
        self.disentangler = Disentangler(cfg.vision.width)
        self.recache_gate = RecacheGate(
            cfg.vision.width, cfg.tokens_per_frame, hidden=default_gate_hidden(cfg.vision.width)
        )
        self.has_learned_dysta = False  # set by load_checkpoint when the checkpoint trained them

    @property
    def device(self) -> torch.device:
        return self.projector.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.projector.weight.dtype

    @property
    def spec(self) -> ModelSpec:
        cfg = self.cfg
        size = cfg.vision.image_size
        return ModelSpec(
            camera_keys=tuple(cfg.camera_names), camera_names=tuple(cfg.camera_names),
            image_size=(size, size), state_dim=cfg.state_dim, action_dim=cfg.action_dim,
            horizon=cfg.horizon, dt=cfg.dt,
            noise_shape=(cfg.horizon, cfg.action_dim), tokens_per_frame=cfg.tokens_per_frame,
            grid=cfg.vision.grid, action_space=cfg.action_space, default_history=cfg.history,
            preset=cfg.preset,
            normalization={"state": "MEAN_STD" if cfg.state_std else "IDENTITY",
                           "action": "MEAN_STD" if cfg.action_std else "IDENTITY"},
        )

    def preprocess(self, obs) -> tuple[torch.Tensor, np.ndarray, str]:
        """Validate obs; return pixels (C, 3, S, S) on the model's device, state (S,), instruction."""
        cfg = self.cfg
        pixels, state, instruction = prepare_observation(
            obs, cfg.camera_names, cfg.vision.image_size, cfg.state_dim
        )
        return torch.from_numpy(pixels).to(self.device, self.dtype), state, instruction

    def normalization_tensors(self, name: str, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
        mean, std = getattr(self.cfg, f"{name}_mean"), getattr(self.cfg, f"{name}_std")
        return (torch.tensor(mean or [0.0] * dim, device=self.device),
                torch.tensor(std or [1.0] * dim, device=self.device))

    def embed_observed_state(self, state: np.ndarray) -> torch.Tensor:
        """State in robot units (S,) -> normalised -> its backbone token (1, W)."""
        mean, std = self.normalization_tensors("state", self.cfg.state_dim)
        normalised = (torch.from_numpy(state).to(self.device) - mean) / std
        return self.embed_state(normalised.to(self.dtype))

    def actions_to_robot(self, normalised: torch.Tensor) -> np.ndarray:
        """Normalised actions (H, A) -> robot units, float32 numpy."""
        mean, std = self.normalization_tensors("action", self.cfg.action_dim)
        return (normalised.float() * std + mean).cpu().numpy().astype(np.float32)

    def full_flops(self, length: int) -> float:
        return full_flops(self.cfg.backbone, length)  # causal: each token attends to those before it

    def encode_frame(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode one frame's cameras (C, 3, S, S) -> vision features (C*n, Cv) and tokens (C*n, W)."""
        features = encode_full(self.vision, pixels)  # (C, n, Cv)
        features = features.reshape(-1, features.shape[-1])  # (C*n, Cv): cameras concatenated
        return features, self.projector(features)  # (N, Cv), (N, W)

    def embed_text(self, token_ids: torch.Tensor) -> torch.Tensor:
        return self.backbone.embed_tokens(token_ids)  # (n_text,) -> (n_text, W)

    def embed_state(self, state: torch.Tensor) -> torch.Tensor:
        return self.state_proj(state)[None]  # (S,) -> (1, W)

    def run_backbone(
        self, embeds: torch.Tensor, positions: torch.Tensor, plan: AttentionPlan
    ) -> AttentionPlan:
        """Compute tokens embeds (Q, W) at RoPE positions (Q,) under plan; fills plan.records."""
        self.backbone(
            inputs_embeds=embeds[None], position_ids=positions[None], attention_plan=plan, use_cache=False
        )
        return plan

    def sample_actions(self, records, prefix_length: int, noise: torch.Tensor) -> torch.Tensor:
        """Integrate the expert from noise (H, A) over the per-layer prefix K/V -> (H, A)."""
        return self.action_expert.sample(records, prefix_length, noise[None])[0]

    def flow_matching_loss(
        self, batch: dict[str, torch.Tensor], generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Return the flow-matching loss of a batch on the full layout.

        batch: pixels (B, T, C, 3, S, S) in [-1, 1], text_ids (B, n), state (B, S) and
        actions (B, H, A), state and actions normalised.
        """
        pixels = batch["pixels"]
        b, t = pixels.shape[:2]
        features = self.vision(pixel_values=pixels.flatten(0, 2)).last_hidden_state  # (B*T*C, n, Cv)
        frames = self.projector(features).reshape(b, -1, self.cfg.backbone.width)  # (B, T*N, W)
        text = self.backbone.embed_tokens(batch["text_ids"])  # (B, n_text, W)
        state = self.state_proj(batch["state"])[:, None]  # (B, 1, W)
        embeds = torch.cat([frames, text, state], dim=1)  # (B, L, W)
        length = embeds.shape[1]
        positions = torch.arange(length, device=embeds.device)[None].expand(b, -1)
        # Causal forward (no plan) with a cache to read each layer's post-RoPE K/V back.
        cache = DynamicCache(config=self.backbone.config)
        self.backbone(inputs_embeds=embeds, position_ids=positions, cache=cache, use_cache=True)
        records = {i: (cache.layers[i].keys, cache.layers[i].values) for i in range(self.cfg.backbone.layers)}
        return self.action_expert.loss(records, length, batch["actions"], generator)
