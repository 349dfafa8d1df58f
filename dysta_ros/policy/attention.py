"""The one attention function every backbone layer calls, driven by a per-call AttentionPlan.

A strategy decides which tokens the backbone computes (the queries), which cached K/V join
them (DySta's static prefix, VLA-Cache's buffer), which keys each layer reads (GoToHunt's
local / strided / all layers) and, optionally, which queries each layer drops (VLA-Cache's
layer-adaptive reuse: the computed set shrinks with depth). The plan carries those decisions
into transformers' attention through the model's kwargs; the function below executes them with
scaled_dot_product_attention and records each layer's full post-RoPE K/V for the action head
and for the next step's caches; `drop_queries`, a pre-hook on every decoder layer, shrinks the
hidden states to the rows a layer computes. `full` is the same path with nothing cached,
skipped or dropped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import partial

import torch
import torch.nn.functional as F
from transformers import AttentionInterface

ATTENTION_NAME = "dysta_plan"
LAYER_MODES = ("all", "local", "strided")


def repeat_kv(x: torch.Tensor, groups: int) -> torch.Tensor:
    """Repeat K/V heads for grouped-query attention: (B, Hkv, L, D) -> (B, Hkv*groups, L, D)."""
    if groups == 1:
        return x
    b, h, n, d = x.shape
    return x[:, :, None].expand(b, h, groups, n, d).reshape(b, h * groups, n, d)


@dataclass
class AttentionPlan:
    """What one backbone call computes and attends to, layer by layer.

    Orders are places in the strategy's context sequence (not RoPE positions): a query sees a
    key when key order <= query order, so a cached prefix stays exactly reusable.
    """

    query_order: torch.Tensor  # (Q,) long: context order of each computed token
    prefix: list[tuple[torch.Tensor, torch.Tensor]] | None = None  # per layer (1, Hkv, P, D) K, V
    prefix_order: torch.Tensor | None = None  # (P,)
    buffer: list[tuple[torch.Tensor, torch.Tensor]] | None = None  # per layer (1, Hkv, L, D): VLA-Cache
    buffer_order: torch.Tensor | None = None  # (L,)
    write_index: torch.Tensor | None = None  # (Q,) buffer slots the computed tokens overwrite
    layer_modes: list[str] | None = None  # per layer: "all" | "local" | "strided"; None = all
    strided_keys: torch.Tensor | None = None  # indices into the assembled keys kept by strided layers
    # Indices into the assembled keys that "all" layers read, one set shared by every query
    # (GoToHunt: the anchor frames' tokens + language/state); None = every key.
    global_keys: torch.Tensor | None = None
    query_group: torch.Tensor | None = None  # (Q,) frame id of each query, -1 = reads the global keys
    key_group: torch.Tensor | None = None  # (K,) frame id of each key, -1 = seen by every query
    relevance_layer: int | None = None  # layer whose attention from `relevance_queries` is kept
    relevance_queries: torch.Tensor | None = None  # (R,) query rows (language/state tokens)
    entropy_heads: int = 0  # > 0: record normalised attention entropy per layer (profiling)
    entropy_queries: int = 16
    # Per layer (Q_l,) ascending rows of query_order that layer computes, each a subset of the
    # previous layer's, so a computed token always has its hidden state from the layer below;
    # the K/V of a dropped token comes from `buffer`. None: every row at every layer.
    layer_queries: list[torch.Tensor] | None = None
    # Filled in during the call:
    records: dict[int, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    attended_pairs: int = 0  # (query, key) pairs summed over layers, for the FLOPs estimate
    layer_tokens: int = 0  # tokens computed summed over layers (projections and MLP), for FLOPs
    relevance: torch.Tensor | None = None  # (K,) mean attention the relevance queries paid to each key
    entropy: dict[int, float] = field(default_factory=dict)
    _masks: dict = field(default_factory=dict, repr=False)
    _kept: list = field(default_factory=list, repr=False)

    def __post_init__(self):
        if self.layer_queries is None:
            return
        if self.buffer is None:
            raise ValueError("layer_queries needs a buffer: a dropped token's K/V come from it")
        previous = torch.arange(self.query_order.shape[0], device=self.query_order.device)
        for layer, rows in enumerate(self.layer_queries):
            if bool((rows.diff() <= 0).any()):
                raise ValueError(f"layer_queries[{layer}] must be ascending rows")
            kept = torch.searchsorted(previous, rows).clamp_max(max(len(previous) - 1, 0))
            if len(rows) and not bool((previous[kept] == rows).all()):
                raise ValueError(f"layer_queries[{layer}] is not a subset of the layer below's rows")
            self._kept.append(None if len(rows) == len(previous) else kept)
            previous = rows

    def mode(self, layer: int) -> str:
        return "all" if self.layer_modes is None else self.layer_modes[layer]

    def at(self, layer: int, per_query: torch.Tensor) -> torch.Tensor:
        """Return per_query (Q, ...) restricted to the rows this layer computes."""
        return per_query if self.layer_queries is None else per_query[self.layer_queries[layer]]

    def local_rows(self, layer: int, rows: torch.Tensor) -> torch.Tensor:
        """Return where rows of query_order (which this layer computes) sit among its queries."""
        return rows if self.layer_queries is None else torch.searchsorted(self.layer_queries[layer], rows)

    def assemble(self, layer: int, key: torch.Tensor, value: torch.Tensor):
        """Return this layer's keys, values (1, Hkv, K, D) and key orders (K,)."""
        if self.buffer is not None:
            buffer_k, buffer_v = self.buffer[layer]
            write = self.at(layer, self.write_index)
            keys = buffer_k.index_copy(2, write, key)  # (1, Hkv, L, D)
            values = buffer_v.index_copy(2, write, value)
            return keys, values, self.buffer_order
        if self.prefix is not None:
            prefix_k, prefix_v = self.prefix[layer]
            keys = torch.cat([prefix_k, key], dim=2)  # (1, Hkv, P+Q, D)
            values = torch.cat([prefix_v, value], dim=2)
            return keys, values, torch.cat([self.prefix_order, self.query_order])
        return key, value, self.query_order

    def causal_mask(self, name: str, key_order: torch.Tensor, query_order: torch.Tensor):
        """Return (mask, pairs, is_causal) for "key order <= query order".

        Keys that are the queries themselves, in increasing order, need no matrix: SDPA's
        is_causal skips the upper triangle (about twice as fast as a mask on long contexts).
        Cached per mode and query count: nested layer queries of one size are the same rows.
        """
        key = (name, query_order.shape[0])
        if key not in self._masks:
            q = query_order
            square = (
                key_order.shape == q.shape and bool((key_order == q).all()) and bool((q.diff() > 0).all())
            )
            if square:
                n = q.shape[0]
                self._masks[key] = (None, n * (n + 1) // 2, n > 1)
            else:
                mask = key_order[None, :] <= q[:, None]  # (Q, K)
                self._masks[key] = (None if bool(mask.all()) else mask, int(mask.sum()), False)
        return self._masks[key]

    def visible(self, name: str, key_order: torch.Tensor, query_order: torch.Tensor):
        """Return the (Q, K) matrix of keys each query sees, or None if it sees every key.

        For inspection (entropy, relevance) only, so attention itself keeps is_causal.
        """
        mask, _, is_causal = self.causal_mask(name, key_order, query_order)
        if not is_causal:
            return mask
        return key_order[None, :] <= query_order[:, None]  # (Q, K)


def _attend(query, keys, values, mask, scaling, is_causal: bool = False):
    """SDPA with GQA by repeating K/V heads (every backend supports it): -> (B, H, Q, D)."""
    groups = query.shape[1] // keys.shape[1]
    return F.scaled_dot_product_attention(
        query,
        repeat_kv(keys, groups),
        repeat_kv(values, groups),
        attn_mask=mask,
        scale=scaling,
        is_causal=is_causal,
    )


def _local_attention(plan: AttentionPlan, query, keys, values, key_order, query_order, groups, scaling):
    """Frame queries see their own frame's keys (+ shared keys); the others see the global keys."""
    out = query.new_empty(query.shape)  # (1, H, Q, D)
    pairs = 0
    frame_ids = torch.unique(groups[groups >= 0])
    shared = (plan.key_group < 0).nonzero().flatten()
    q_rows = [(groups == f).nonzero().flatten() for f in frame_ids.tolist()]
    k_rows = [torch.cat([shared, (plan.key_group == f).nonzero().flatten()]) for f in frame_ids.tolist()]
    same_shape = len({len(r) for r in q_rows}) == 1 and len({len(r) for r in k_rows}) == 1
    if q_rows and same_shape:
        # Block-batched: every frame is one batch row, so no (Q, K) matrix is ever formed.
        q_index = torch.stack(q_rows)  # (F, n)
        k_index = torch.stack(k_rows)  # (F, m)
        q_blocks = query[0][:, q_index].transpose(0, 1)  # (F, H, n, D)
        k_blocks = keys[0][:, k_index].transpose(0, 1)  # (F, Hkv, m, D)
        v_blocks = values[0][:, k_index].transpose(0, 1)
        mask = key_order[k_index][:, None, :] <= query_order[q_index][:, :, None]  # (F, n, m)
        pairs += int(mask.sum())
        attn = _attend(q_blocks, k_blocks, v_blocks, None if bool(mask.all()) else mask[:, None], scaling)
        out[0][:, q_index.flatten()] = attn.transpose(0, 1).reshape(query.shape[1], -1, query.shape[3])
    else:
        for q_idx, k_idx in zip(q_rows, k_rows):
            mask = key_order[k_idx][None, :] <= query_order[q_idx][:, None]
            pairs += int(mask.sum())
            out[:, :, q_idx] = _attend(
                query[:, :, q_idx], keys[:, :, k_idx], values[:, :, k_idx], mask, scaling
            )
    global_rows = (groups < 0).nonzero().flatten()
    if len(global_rows):
        if plan.global_keys is not None:
            idx = plan.global_keys
            keys, values, key_order = keys[:, :, idx], values[:, :, idx], key_order[idx]
        mask = key_order[None, :] <= query_order[global_rows][:, None]
        pairs += int(mask.sum())
        out[:, :, global_rows] = _attend(query[:, :, global_rows], keys, values, mask, scaling)
    return out, pairs


def _record_entropy(plan: AttentionPlan, layer: int, query, keys, mask, scaling) -> None:
    """Store the mean normalised row entropy over a few heads and queries of this layer."""
    heads = torch.linspace(0, query.shape[1] - 1, min(plan.entropy_heads, query.shape[1])).long()
    rows = torch.linspace(0, query.shape[2] - 1, min(plan.entropy_queries, query.shape[2])).long()
    groups = query.shape[1] // keys.shape[1]
    k = repeat_kv(keys, groups)[0, heads].float()  # (h, K, D)
    q = query[0, heads][:, rows].float()  # (h, r, D)
    logits = q @ k.transpose(1, 2) * scaling  # (h, r, K)
    allowed = torch.ones_like(logits[0], dtype=torch.bool) if mask is None else mask[rows]  # (r, K)
    logits = logits.masked_fill(~allowed, float("-inf"))
    p = logits.softmax(-1)
    entropy = -(p * torch.log(p.clamp_min(1e-12))).sum(-1)  # (h, r)
    counts = allowed.sum(-1).float()  # (r,)
    normalised = entropy / torch.log(counts.clamp_min(2.0))
    keep = counts > 1  # a row with one key has no entropy to speak of
    if bool(keep.any()):
        plan.entropy[layer] = float(normalised[:, keep].mean())


def plan_attention(
    module,
    query,
    key,
    value,
    attention_mask,
    scaling=None,
    dropout=0.0,
    attention_plan: AttentionPlan | None = None,
    **kwargs,
):
    """Attention for one layer: query (B, H, Q, D), key/value (B, Hkv, Q, D) after RoPE."""
    scaling = scaling if scaling is not None else 1.0 / math.sqrt(query.shape[-1])
    plan = attention_plan
    if plan is None:  # plain causal forward (training, batch > 1)
        groups = query.shape[1] // key.shape[1]
        out = F.scaled_dot_product_attention(
            query,
            repeat_kv(key, groups),
            repeat_kv(value, groups),
            is_causal=query.shape[2] > 1,
            scale=scaling,
        )
        return out.transpose(1, 2).contiguous(), None
    layer = module.layer_idx
    query_order = plan.at(layer, plan.query_order)  # (Q_l,) the rows this layer computes
    keys, values, key_order = plan.assemble(layer, key, value)
    plan.records[layer] = (keys, values)
    mode = plan.mode(layer)
    if mode == "local":
        groups = plan.at(layer, plan.query_group)
        out, pairs = _local_attention(plan, query, keys, values, key_order, query_order, groups, scaling)
    else:
        idx = plan.strided_keys if mode == "strided" else plan.global_keys
        if idx is not None:
            keys_used, values_used, order_used = keys[:, :, idx], values[:, :, idx], key_order[idx]
        else:
            keys_used, values_used, order_used = keys, values, key_order
        mask, pairs, is_causal = plan.causal_mask(mode, order_used, query_order)
        out = _attend(query, keys_used, values_used, mask, scaling, is_causal)
        rank_relevance = plan.relevance_layer == layer and plan.relevance_queries is not None
        if plan.entropy_heads > 0 or rank_relevance:
            visible = plan.visible(mode, order_used, query_order)
        if plan.entropy_heads > 0:
            _record_entropy(plan, layer, query, keys_used, visible, scaling)
        if rank_relevance:
            rows = plan.local_rows(layer, plan.relevance_queries)
            groups = query.shape[1] // keys_used.shape[1]
            q = query[0][:, rows]  # (H, R, D)
            logits = q @ repeat_kv(keys_used, groups)[0].transpose(1, 2) * scaling  # (H, R, K)
            if visible is not None:
                logits = logits.masked_fill(~visible[rows], float("-inf"))
            plan.relevance = logits.float().softmax(-1).mean(dim=(0, 1))  # (K,)
    plan.attended_pairs += pairs
    plan.layer_tokens += query.shape[2]
    return out.transpose(1, 2).contiguous(), None  # (1, Q, H, D)


def drop_queries(layer: int, module, args, kwargs):
    """Pre-hook of decoder layer `layer`: keep the hidden rows (and RoPE rows) its plan computes."""
    plan = kwargs.get("attention_plan")
    if plan is None or plan.layer_queries is None:
        return None
    rows = plan.layer_queries[layer]
    if plan._kept[layer] is not None:
        args = (args[0][:, plan._kept[layer]], *args[1:])  # (1, Q_l, W): rows of the layer below's output
    # RoPE tables arrive for every query_order row at every layer.
    cos, sin = kwargs["position_embeddings"]  # (1, Q, D)
    kwargs["position_embeddings"] = (cos[:, rows], sin[:, rows])
    if kwargs.get("position_ids") is not None:
        kwargs["position_ids"] = kwargs["position_ids"][:, rows]
    return args, kwargs


def install_query_dropping(backbone) -> None:
    """Register `drop_queries` on every decoder layer of a transformers backbone."""
    for index, layer in enumerate(backbone.layers):
        layer.register_forward_pre_hook(partial(drop_queries, index), with_kwargs=True)


def register_attention() -> str:
    """Register `plan_attention` with transformers under ATTENTION_NAME; return the name."""
    # Done where a backbone is built, not at import: importing the package changes no library state.
    AttentionInterface.register(ATTENTION_NAME, plan_attention)
    return ATTENTION_NAME
