"""Changed-token reuse inside a ViT across a camera's frames (after Eventful Transformers).

Eventful Transformers (arXiv 2308.13494) keep, per token-wise operation of every block, the
input each token had when it was last computed and that computation's output. A new frame
recomputes a token-wise operation only for the tokens whose input moved by more than a
threshold (relative L2 change here) since then; the others keep their stored output. Token-wise
here: LayerNorm + Q/K/V projection, the attention output projection, LayerNorm + MLP.
Attention mixes every token: with sparse_queries (the default) only the queries whose input moved
attend afresh, over all keys (the others keep their output, so what a moved key adds to a still
token waits for the refresh); without, every query attends afresh with the (partly stored) Q/K/V.
Every `refresh` frames, a full encode resets the references, so errors cannot accumulate.

Approximate: a token below the threshold keeps an output computed from a slightly different
input. With threshold 0 every changed token is recomputed and the encode is the full one
(test/test_vision_reuse.py checks both). The patch embedding runs on every patch: it is cheap,
and its output is what the first gate compares.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from dysta_ros.policy import kernels


@dataclass
class TowerBlock:
    """The parts of one pre-norm ViT block that changed-token reuse calls."""

    norm1: nn.Module
    q: nn.Linear
    k: nn.Linear
    v: nn.Linear
    out: nn.Linear
    heads: int
    norm2: nn.Module
    mlp: nn.Module  # token-wise (B, N, C) -> (B, N, C)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """The block over x (B, N, C), through policy/kernels' fused paths (the module's numbers)."""
        normed = kernels.layer_norm(self.norm1, x)
        q, k, v = (kernels.linear(normed, linear) for linear in (self.q, self.k, self.v))
        x = kernels.linear(_multi_head_attention(q, k, v, self.heads), self.out, residual=x)
        return kernels.mlp(self.mlp, kernels.layer_norm(self.norm2, x), residual=x)


@dataclass
class Tower:
    """A pre-norm ViT as changed-token reuse sees it: embed -> blocks -> final norm."""

    embed: object  # pixels (B, 3, H, W) -> tokens (B, N, C)
    blocks: list[TowerBlock]
    final_norm: nn.Module

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        """Return the last hidden (B, N, C) of pixels (B, 3, H, W), every token computed (exact)."""
        x = self.embed(pixels)
        for block in self.blocks:
            x = block(x)
        return kernels.layer_norm(self.final_norm, x)


def siglip_tower(vision_model) -> Tower:
    """The SmolVLM/SigLIP vision transformer (transformers' SmolVLMVisionTransformer) as a Tower."""
    embeddings = vision_model.embeddings

    def embed(pixels: torch.Tensor) -> torch.Tensor:
        patches = embeddings.patch_embedding(pixels.to(embeddings.patch_embedding.weight.dtype))
        tokens = patches.flatten(2).transpose(1, 2)  # (B, N, C)
        positions = embeddings.position_embedding.weight
        if tokens.shape[1] != positions.shape[0]:
            raise ValueError(f"{tokens.shape[1]} patches, but the tower was made for {positions.shape[0]}: "
                             f"frames must be the tower's image size")
        # a full, unmasked image has position ids 0..N-1 (transformers' bucketing reduces to that)
        # into row-major tokens: the sum would keep the transposed patch grid's strides, and
        # every later elementwise pass of reuse with them (1.5x slower per frame)
        return torch.add(tokens, positions, out=tokens.new_empty(tokens.shape))

    blocks = [
        TowerBlock(layer.layer_norm1, layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj,
                   layer.self_attn.out_proj, layer.self_attn.num_heads, layer.layer_norm2, layer.mlp)
        for layer in vision_model.encoder.layers
    ]
    return Tower(embed, blocks, vision_model.post_layernorm)


def encode_full(vision_model: nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    """Return the vision model's last hidden (B, N, C) of pixels (B, 3, H, W), every token computed.

    Through the fused Tower (exact) when autograd is off, the frames are the tower's own size
    (what its position table was made for) and no forward hook watches it; otherwise the
    transformers module itself.
    """
    embeddings = vision_model.embeddings
    size = getattr(embeddings, "image_size", None)
    if (torch.is_grad_enabled() or pixels.shape[-2:] != (size, size)
            or any(kernels.hooked(module) for module in vision_model.modules())):
        dtype = embeddings.patch_embedding.weight.dtype
        return vision_model(pixel_values=pixels.to(dtype)).last_hidden_state
    return siglip_tower(vision_model)(pixels)


# Recomputed rows come in multiples of N / ROW_BUCKETS (32 of SigLIP's 1024): each new row count
# costs oneDNN a new primitive (measured ~1.4 ms per product on an AMX Xeon, ~60 products per
# frame), so counts that change every frame would pay that every frame; a few more tokens,
# recomputed exactly, cost less.
ROW_BUCKETS = 32


class _Gate:
    """One token-wise operation with its per-token reference input and stored output."""

    def __init__(self, fn):
        self.fn = fn
        self.reference: torch.Tensor | None = None  # (N, C_in) input when each token was last computed
        self.reference_norm: torch.Tensor | None = None  # (N,) its norm, kept with it
        self.output: torch.Tensor | None = None  # (N, C_out)
        self.fired: torch.Tensor | None = None  # indices recomputed by the last call

    def full(self, x: torch.Tensor) -> torch.Tensor:
        self.reference, self.output = x.clone(), self.fn(x)
        self.reference_norm = torch.linalg.vector_norm(x, dim=-1)
        self.fired = None  # all
        return self.output

    def __call__(self, x: torch.Tensor, threshold: float, counts: list[int]) -> torch.Tensor:
        """Map x (N, C_in) to (N, C_out), recomputing the tokens whose input moved beyond threshold.

        Their count is rounded up to a whole bucket (ROW_BUCKETS) with the tokens nearest to moving.
        """
        # a norm of the difference, not a sum of its squares: one pass less over (N, C), and
        # these elementwise passes cost as much as the recomputed tokens' products
        moved_by = torch.linalg.vector_norm(x - self.reference, dim=-1)
        over = moved_by > threshold * self.reference_norm
        moved = int(over.sum())
        if moved:  # the moved tokens and, up to the next bucket, those nearest to moving (relatively)
            bucket = max(1, x.shape[0] // ROW_BUCKETS)
            share = moved_by / self.reference_norm.clamp_min(torch.finfo(moved_by.dtype).tiny)
            share[over] = float("inf")
            fired = share.topk(min(x.shape[0], -(-moved // bucket) * bucket)).indices.sort().values
        else:
            fired = moved_by.new_empty(0, dtype=torch.long)
        counts[0] += int(fired.numel())
        counts[1] += x.shape[0]
        self.fired = fired
        if moved:
            rows = x[fired]
            self.reference[fired] = rows
            self.reference_norm[fired] = torch.linalg.vector_norm(rows, dim=-1)
            self.output[fired] = self.fn(rows)
        return self.output


@dataclass
class ReuseStats:
    """What the last encode of one camera recomputed."""

    full: bool = True
    recomputed_fraction: float = 1.0  # token-wise operations recomputed / all, over the blocks


@dataclass
class ChangedTokenEncoder:
    """Per-camera state of changed-token reuse over one Tower (one image at a time, batch 1)."""

    tower: Tower
    threshold: float
    refresh: int
    sparse_queries: bool = True  # attention afresh only for moved queries (else for all of them)
    frames_since_full: int = 0
    gates: list | None = None
    attended: list = field(default_factory=list)  # per block: the stored attention output (N, C)
    last: ReuseStats = field(default_factory=ReuseStats)

    def reset(self) -> None:
        self.gates, self.frames_since_full = None, 0

    def _gates(self) -> list[tuple[_Gate, _Gate, _Gate]]:
        gates = []
        for block in self.tower.blocks:
            gates.append((_Gate(lambda x, b=block: _qkv(b, x)),
                          _Gate(lambda x, b=block: kernels.linear(x, b.out)),
                          _Gate(lambda x, b=block: kernels.mlp(b.mlp, kernels.layer_norm(b.norm2, x)))))
        return gates

    @torch.inference_mode()
    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """Return the last hidden (1, N, C) of pixels (1, 3, H, W), reusing unchanged tokens."""
        if pixels.shape[0] != 1:
            raise ValueError(f"changed-token reuse encodes one image at a time, got batch {pixels.shape[0]}")
        x = self.tower.embed(pixels)[0]  # (N, C)
        full = self.gates is None or self.frames_since_full + 1 >= self.refresh
        if full:
            self.gates, self.frames_since_full = self._gates(), 0
            self.attended = [None] * len(self.tower.blocks)
        else:
            self.frames_since_full += 1
        counts = [0, 0]
        for index, (block, (qkv_gate, out_gate, mlp_gate)) in enumerate(zip(self.tower.blocks, self.gates)):
            if full:
                attended = self.attended[index] = _attend(qkv_gate.full(x), block.heads)
                h = x + out_gate.full(attended)
                x = h + mlp_gate.full(h)
                continue
            qkv = qkv_gate(x, self.threshold, counts)
            attended = self.attended[index]
            if self.sparse_queries:
                # only the queries whose input moved attend afresh (over all keys); the others
                # keep their attention output: what the moved keys/values add to them is dropped
                if qkv_gate.fired.numel():
                    attended[qkv_gate.fired] = _attend(qkv, block.heads, qkv_gate.fired)
            else:
                attended = self.attended[index] = _attend(qkv, block.heads)
            h = x + out_gate(attended, self.threshold, counts)
            x = h + mlp_gate(h, self.threshold, counts)
        self.last = ReuseStats(full=full, recomputed_fraction=1.0 if full else counts[0] / max(counts[1], 1))
        return self.tower.final_norm(x)[None]


def _qkv(block: TowerBlock, x: torch.Tensor) -> torch.Tensor:
    normed = kernels.layer_norm(block.norm1, x)
    return torch.cat([kernels.linear(normed, p) for p in (block.q, block.k, block.v)], dim=-1)  # (n, 3C)


def _attend(qkv: torch.Tensor, heads: int, queries: torch.Tensor | None = None) -> torch.Tensor:
    """Unmasked multi-head SDPA over all N tokens of packed (N, 3C) q|k|v; return (Q, C).

    `queries`: the token indices whose rows are wanted (default all).
    """
    q, k, v = qkv.split(qkv.shape[1] // 3, dim=-1)
    if queries is not None:
        q = q[queries]
    return _multi_head_attention(q, k, v, heads)


def _multi_head_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
    """Unmasked multi-head SDPA of ([B,] T, C) queries over ([B,] S, C) keys/values -> ([B,] T, C).

    The heads are strided views of the projections (SDPA reads them in place). Unbatched
    tokens get a batch of one: torch's CPU flash kernel takes only 4-D inputs, and 3-D ones went
    to the math path (one image's 12 heads x 1024 tokens, 1 thread: 143 ms there, 52 ms in flash).
    """
    def heads_first(t):  # (B, heads, T, D)
        return (t if t.dim() == 3 else t[None]).unflatten(-1, (heads, -1)).transpose(1, 2)

    out = F.scaled_dot_product_attention(heads_first(q), heads_first(k), heads_first(v))
    out = out.transpose(1, 2).flatten(-2)
    return out if q.dim() == 3 else out[0]
