"""Backbone FLOPs estimate: linear layers of the computed tokens + attention of the pairs attended."""

from __future__ import annotations


def linear_flops_per_token(cfg) -> float:
    """Multiply-adds x2 of one decoder layer's projections and MLP for one token."""
    w, d, h, kv, m = cfg.width, cfg.head_dim, cfg.heads, cfg.kv_heads, cfg.mlp_width
    return 2.0 * (w * h * d + 2 * w * kv * d + h * d * w + 3 * w * m)


def attention_flops(cfg, pairs: int) -> float:
    """QK^T and AV over (query, key) pairs already summed over layers."""
    return 4.0 * cfg.heads * cfg.head_dim * pairs


def backbone_flops(cfg, layer_tokens: int, attended_pairs: int) -> float:
    """FLOPs of `layer_tokens` tokens computed summed over layers, attending `attended_pairs` in all.

    Summed per layer, not tokens x layers: a strategy may compute fewer queries in deeper layers.
    """
    return layer_tokens * linear_flops_per_token(cfg) + attention_flops(cfg, attended_pairs)


def full_flops(cfg, length: int) -> float:
    """FLOPs of `full`: every token of a length-L causal context through every layer."""
    return backbone_flops(cfg, cfg.layers * length, cfg.layers * length * (length + 1) // 2)
