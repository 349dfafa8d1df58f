"""A LeRobot SmolVLA checkpoint behind the model contract (policy/contract.py).

So the one runtime drives SmolVLA as it drives this package's VLA: one frame (history 1), the
prefix [each camera's image tokens | language | state] with images and language one
bidirectional block and the state a block of its own (SMOLVLA.md). Padded language slots are
left out of the prefix: LeRobot masks them from every query and key, and positions skip them,
so leaving them out changes nothing but the work (the parity tests check it at 1e-5).

AttentionPlans are run with that block mask instead of the causal "key order <= query order":
a plan with a `buffer` (VLA-Cache-style reuse) recomputes only its queries, whose fresh K/V
overwrite their slots, and they attend to every key, cached ones included. A bidirectional
prefix cannot take a causal `prefix` (DySta's static cache), refused here with why.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from dysta_ros.errors import InputError
from dysta_ros.policy.attention import _record_entropy
from dysta_ros.policy.contract import BackboneShape, ModelShape, ModelSpec
from dysta_ros.policy.families import DEFAULT_DT, FAMILIES
from dysta_ros.policy.preprocess import check_image, check_instruction, check_state
from dysta_ros.policy.smolvla.policy import warm_start_noise
from dysta_ros.tokens.flops import backbone_flops
from dysta_ros.types import Observation


class LanguageTokenizer:
    """The checkpoint's tokenization (task + newline, truncated as LeRobot does), pads dropped."""

    def __init__(self, policy):
        self.policy = policy

    def encode(self, instruction: str) -> list[int]:
        tokens, mask = self.policy.tokenize(instruction)
        return tokens[mask].tolist()


class SmolVLABackend:
    """SmolVLAPolicy's stages as the contract's calls."""

    family_name = "smolvla"
    capabilities = FAMILIES["smolvla"].capabilities
    has_learned_dysta = False

    def __init__(self, policy):
        self.policy, self.net = policy, policy.model
        cfg, text = policy.cfg, policy.files.vlm.text
        self.width = text.hidden_size
        per_camera = policy.files.vlm.image_tokens_per_camera
        cameras = len(cfg.camera_names)
        self.cfg = ModelShape(
            backbone=BackboneShape(layers=cfg.num_vlm_layers, width=text.hidden_size,
                                   heads=text.num_attention_heads, kv_heads=text.num_key_value_heads,
                                   head_dim=text.head_dim, mlp_width=text.intermediate_size),
            tokens_per_frame=cameras * per_camera,
        )
        spec = policy.spec
        self.spec = ModelSpec(
            camera_keys=tuple(spec.camera_keys), camera_names=tuple(spec.camera_names),
            image_size=tuple(spec.resize), state_dim=spec.state_dim, action_dim=spec.action_dim,
            horizon=spec.chunk_size, dt=DEFAULT_DT, noise_shape=(spec.chunk_size, spec.max_action_dim),
            tokens_per_frame=cameras * per_camera, grid=math.isqrt(per_camera),
            state_names=tuple(spec.state_names), action_names=tuple(spec.action_names),
            normalization=dict(spec.normalization), default_history=1, preset="smolvla",
        )
        self.tokenizer = LanguageTokenizer(policy)

    @property
    def device(self) -> torch.device:
        return self.policy.device

    @property
    def dtype(self) -> torch.dtype:
        return self.policy.dtype

    @property
    def stored_in_bfloat16(self) -> bool:
        """True for a checkpoint saved mostly in bf16 (LeRobot's real ones): LeRobot computes it in bf16."""
        layout = self.policy.spec.dtype_layout
        return layout.get("bfloat16", 0) > layout.get("float32", 0)

    def eval(self) -> SmolVLABackend:
        return self

    # -- inputs ------------------------------------------------------------------------------
    def preprocess(self, obs: Observation):
        """Validate obs; return each camera's resized-with-padding pixels, the state, the task."""
        if not isinstance(obs, Observation):
            raise InputError(f"expected an Observation, got {type(obs).__name__}")
        images = obs.images if isinstance(obs.images, dict) else {}
        names = list(self.spec.camera_names)
        missing = [n for n in names if n not in images]
        if missing:
            raise InputError(f"missing camera(s) {missing}; the model needs {names}, got {sorted(images)}")
        checked = {n: check_image(n, images[n]) for n in names}
        state = check_state(obs.state, self.spec.state_dim)
        instruction = check_instruction(obs.instruction)
        return self.policy.prepare_pixels(checked), state, instruction

    def encode_frame(self, pixels: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Cameras -> connector tokens (N, W) as gate features, and them scaled as the prefix has them."""
        _, tokens = self.policy.encode_images(pixels)
        features = torch.cat([t[0] for t in tokens])  # (N, W), cameras in model order
        scale = torch.tensor(self.width**0.5, dtype=features.dtype, device=features.device)
        return features, features * scale

    def vision_tower(self):
        """The SigLIP tower (what the runtime's frame cache and changed-token reuse run through)."""
        return self.net.vlm_with_expert.vlm.model.vision_model

    def tokens_from_hidden(self, hidden: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-camera vision hidden states (1, n, Cv) -> what encode_frame returns."""
        features = torch.cat([self.net.connect(h)[0] for h in hidden])  # (N, W), cameras in model order
        scale = torch.tensor(self.width**0.5, dtype=features.dtype, device=features.device)
        return features, features * scale

    def in_dtype(self, dtype: torch.dtype) -> SmolVLABackend:
        """This checkpoint computing in `dtype` (speed option compute_dtype; the copy is made once)."""
        policy = self.policy.in_dtype(dtype)
        return self if policy is self.policy else SmolVLABackend(policy)

    def embed_text(self, token_ids: torch.Tensor) -> torch.Tensor:
        embed = self.net.vlm_with_expert.vlm.model.text_model.embed_tokens
        return embed(token_ids) * math.sqrt(self.width)  # (n, W)

    def embed_observed_state(self, state: np.ndarray) -> torch.Tensor:
        _, padded = self.policy.normalize_state(state)
        token = self.net.state_proj(padded.to(self.net.state_proj.weight.dtype))  # (1, W)
        return token.to(self.dtype)

    # -- backbone ----------------------------------------------------------------------------
    @staticmethod
    def block_mask(key_order: torch.Tensor, query_order: torch.Tensor) -> torch.Tensor:
        """(Q, K): images and language see each other, not the state; the state sees everything.

        The state is the layout's last token (the largest key order).
        """
        state = key_order.max()
        return ~((key_order[None, :] == state) & (query_order[:, None] != state))

    def run_backbone(self, embeds: torch.Tensor, positions: torch.Tensor, plan):
        """Compute embeds (Q, W) at positions (Q,) under plan (module docstring); fill plan.records."""
        if plan.prefix is not None or plan.layer_modes is not None:
            raise ValueError("SmolVLA's prefix is bidirectional: a plan with a causal cached prefix or "
                             "a layer schedule cannot run on it")
        if plan.buffer is None:
            key_order, write = plan.query_order, torch.arange(len(plan.query_order), device=embeds.device)
        else:
            key_order, write = plan.buffer_order, plan.write_index
        allowed = self.block_mask(key_order, plan.query_order)  # (Q, K)
        inspect = plan.entropy_heads > 0 or plan.relevance_queries is not None
        whole = plan.buffer is None and bool(((plan.query_order == torch.arange(
            len(key_order), device=key_order.device)) & (positions == plan.query_order)).all())  # one sync
        if whole and not inspect:  # `full`: LeRobot's own prefix pass
            ones = torch.ones(1, len(key_order), dtype=torch.bool, device=embeds.device)
            flags = torch.zeros_like(ones)
            flags[0, -1] = True
            cache = self.net.prefix_forward(embeds[None], ones, flags)
        else:
            base = plan.buffer
            if base is None:
                shape = (1, len(key_order), self.cfg.backbone.kv_heads, self.cfg.backbone.head_dim)
                zeros = embeds.new_zeros(shape)
                base = [(zeros, zeros)] * self.cfg.backbone.layers
            cache = self.net.prefix_forward_rows(
                embeds[None], positions[None], allowed[None], base, write, plan.layer_queries,
                observe=self._observer(plan, allowed) if inspect else None)
        rows = [len(plan.query_order)] * len(cache) if plan.layer_queries is None else \
            [len(r) for r in plan.layer_queries]
        # Pairs counted once per distinct row set: each int() waits for the device (a GPU's
        # queue drained once per layer was the backbone stage's launches no longer run ahead).
        every_row = int(allowed.sum()) if plan.layer_queries is None else None
        for index, (k, v) in enumerate(cache):
            plan.records[index] = (k, v)
            plan.layer_tokens += rows[index]
            if index < len(cache) - 1:  # the last kept layer only gives K/V
                plan.attended_pairs += every_row if every_row is not None else \
                    int(allowed[plan.layer_queries[index]].sum())
        return plan

    def _observer(self, plan, allowed: torch.Tensor):
        """Record what a plan asks to inspect (relevance, entropy) from each attending layer."""
        attending = self.cfg.backbone.layers - 1  # the last layer has no queries
        # The last layer computes no attention: its relevance is read one layer up.
        relevance_layer = None if plan.relevance_layer is None else min(plan.relevance_layer, attending - 1)

        def observe(index, q, keys, rows):
            query, key = q.transpose(1, 2), keys.transpose(1, 2)  # (1, H, Q_l, D), (1, G, K, D)
            mask = allowed[rows]
            scaling = 1.0 / math.sqrt(query.shape[-1])
            if plan.entropy_heads > 0:
                _record_entropy(plan, index, query, key, mask, scaling)
            if index == relevance_layer and plan.relevance_queries is not None:
                local = plan.local_rows(index, plan.relevance_queries)
                groups = query.shape[1] // key.shape[1]
                full_keys = key[0].repeat_interleave(groups, dim=0)  # (H, K, D): head h reads h // groups
                logits = query[0][:, local].float() @ full_keys.float().transpose(1, 2) * scaling
                logits = logits.masked_fill(~mask[local], float("-inf"))
                plan.relevance = logits.softmax(-1).mean(dim=(0, 1))  # (K,)

        return observe

    def full_flops(self, length: int) -> float:
        """`full` as run_backbone counts it (every layer computes every token; all but the last attend).

        Every token attends to every other, except images and language to the state.
        """
        layers = self.cfg.backbone.layers
        pairs = (layers - 1) * (length * length - (length - 1))
        return backbone_flops(self.cfg.backbone, layers * length, pairs)

    # -- action head -------------------------------------------------------------------------
    def sample_actions(self, records, prefix_length: int, noise: torch.Tensor, options=None,
                       previous: torch.Tensor | None = None) -> torch.Tensor:
        """Denoise noise (chunk, max_action_dim) over the per-layer prefix K/V -> (chunk, max_action_dim).

        `options` (SpeedOptions): denoise_steps, warm_start from `previous` (the last chunk,
        normalized and padded), cuda_graphs. None: the checkpoint's own schedule.
        """
        kv = [records[i] for i in range(len(records))]
        pad = torch.ones(1, kv[0][0].shape[1], dtype=torch.bool, device=self.device)
        context = self.net.expert_context(kv, pad)
        noise = self.policy.make_noise(noise)
        steps, start = (options.denoise_steps if options else 0), 1.0
        if options is not None and options.warm_start and previous is not None:
            start = options.warm_start_time
            noise = warm_start_noise(previous[None].to(noise.dtype), noise, start, options.warm_start_shift)
            steps = steps or max(1, round(self.policy.cfg.num_steps * start))
        if options is not None and options.cuda_graphs:
            steps = steps or self.policy.cfg.num_steps
            x0 = self.policy.graphed_denoiser()(context, pad, noise, steps, start)
        else:
            x0 = self.policy.denoise(context, pad, noise, steps=steps, start_time=start)
        return x0[0]

    def actions_to_robot(self, normalized: torch.Tensor) -> np.ndarray:
        raw, _ = self.policy.postprocess(normalized[None])
        return raw
