"""`gotohunt` as the paper does it: every frame's tokens are queries, only K/V are selected (tiny preset)."""

import numpy as np
import pytest
import torch

from dysta_ros.errors import ConfigError
from dysta_ros.evaluation.scenes import structured_frames
from dysta_ros.policy.attention import AttentionPlan
from dysta_ros.policy.runtime import build_model, build_runtime
from dysta_ros.tokens import build_strategy
from dysta_ros.tokens.base import StepContext
from dysta_ros.tokens.flops import linear_flops_per_token
from dysta_ros.types import Observation

INSTRUCTION = "push the red block"
EVERY_LAYER_GLOBAL = {"local_layers": [], "strided_layers": []}
SCHEDULES = {
    "local": {"local_layers": [0], "strided_layers": []},
    "strided": {"local_layers": [], "strided_layers": [0], "sigma": 2},
    "all": EVERY_LAYER_GLOBAL,
}


@pytest.fixture(scope="module")
def model():
    return build_model("tiny", seed=0)[0]


def obs(image):
    return Observation(stamp=0.0, images={"main": image}, state=np.zeros(6), instruction=INSTRUCTION)


@pytest.fixture(scope="module")
def window(model):
    """32 different vision-encoded frames (oldest first), the instruction and state embeddings."""
    rt = build_runtime(model, "full", None, history=32)
    for image in structured_frames(32, 72, 96, seed=1):
        rt.step(obs(image))
    return list(rt.frames), rt._text_embeds(INSTRUCTION), model.embed_state(torch.zeros(6))


@torch.inference_mode()
def build(model, params, frames, text, state, name="gotohunt"):
    """Return (strategy, context, prefix) of one step of strategy `name` on the given window."""
    strategy = build_strategy(name, params, model.cfg)
    grid = model.cfg.vision.grid
    ctx = StepContext(model=model, frames=frames, text=text, state=state, grid=grid, cameras=1)
    return strategy, ctx, strategy.build_prefix(ctx)


def with_tokens(frame, delta):
    """A copy of frame with delta added to its tokens (features kept: the same anchors)."""
    return type(frame)(features=frame.features, tokens=frame.tokens + delta, index=frame.index)


def changed_rows(a, b):
    """Indices of the rows of a and b (K, D) that differ."""
    return (~torch.isclose(a, b, atol=1e-6, rtol=1e-6).all(dim=-1)).nonzero().flatten().tolist()


def test_every_frame_is_a_query_and_its_records_feed_the_action_head(model, window):
    frames, text, state = window
    t, k, n, tail = 6, 2, model.cfg.tokens_per_frame, text.shape[0] + 1
    _, ctx, result = build(model, {"num_anchors": k}, frames[:t], text, state)
    layers = model.cfg.backbone.layers
    assert ctx.computed_tokens == t * n + tail and ctx.layer_tokens == layers * (t * n + tail)
    assert all(keys.shape[2] == t * n + tail for keys, _ in result.records.values())
    assert result.context_tokens == k * n + tail and result.frames_attended == k  # the global key set
    assert result.dynamic_tokens == t * n
    # FLOPs count the projections and MLP of every query.
    strategy_flops = build_strategy("gotohunt", {"num_anchors": k}, model.cfg).flops(ctx)
    assert strategy_flops > ctx.layer_tokens * linear_flops_per_token(model.cfg.backbone)

    rt = build_runtime(model, "gotohunt", {"num_anchors": k}, history=t)
    subsampling = build_runtime(model, "gotohunt", {"num_anchors": k, "queries": "anchors"}, history=t)
    for image in structured_frames(t, 72, 96, seed=1):
        (chunk, stats), (_, cheaper) = rt.step(obs(image)), subsampling.step(obs(image))
    assert stats.recomputed_tokens == t * n + tail and cheaper.recomputed_tokens == k * n + tail
    assert stats.flops_ratio > cheaper.flops_ratio and np.isfinite(chunk.actions).all()


@pytest.mark.parametrize("params", [{"num_anchors": 1}, {"num_anchors": 0, "anchor_fraction": 0.25}])
def test_with_every_frame_a_query_the_oldest_frame_is_an_anchor_too(model, window, params):
    # K = 1 kept the current frame alone: the older frames' queries then read no key at global layers
    frames, text, state = window
    _, _, result = build(model, params, frames[:4], text, state)
    assert result.extra["anchors"] == [0, 3] and result.frames_attended == 2
    _, _, subsampled = build(model, {**params, "queries": "anchors"}, frames[:4], text, state)
    assert subsampled.extra["anchors"] == [3]  # frame subsampling: the current frame alone is fine


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_a_non_anchor_frame_is_read_by_its_own_queries_only(model, window, schedule):
    frames, text, state = window
    t, n = 6, model.cfg.tokens_per_frame
    params = {"num_anchors": 2, **SCHEDULES[schedule]}
    _, _, base = build(model, params, frames[:t], text, state)
    anchors = base.extra["anchors"]
    slot = next(s for s in range(1, t) if s not in anchors)
    moved = list(frames[:t])
    moved[slot] = with_tokens(frames[slot], 1.0)
    _, _, other = build(model, params, moved, text, state)
    assert other.extra["anchors"] == anchors
    # Layer 1's keys come from layer 0's outputs: only the non-anchor frame's own rows may move.
    changed = changed_rows(base.records[1][0][0, 0], other.records[1][0][0, 0])
    own = list(range(slot * n, (slot + 1) * n))
    assert changed and set(changed) <= set(own)  # computed (its records exist), read by nobody else


def test_global_layers_read_only_anchor_and_tail_keys(model, window):
    frames, text, state = window
    t, n, tail = 6, model.cfg.tokens_per_frame, text.shape[0] + 1
    _, ctx, result = build(model, {"num_anchors": 3, **EVERY_LAYER_GLOBAL}, frames[:t], text, state)
    anchors = result.extra["anchors"]
    assert len(anchors) == 3 and anchors[0] == 0 and anchors[-1] == t - 1
    order = torch.arange(t * n + tail)
    frame_keys = [torch.full((n,), s in anchors) for s in range(t)]
    readable = torch.cat(frame_keys + [torch.ones(tail, dtype=torch.bool)])  # (L,)
    # Each query's causal pairs with the anchor and tail keys; any pair with a non-anchor key adds to it.
    pairs = int(((order[None, :] <= order[:, None]) & readable[None, :]).sum())
    assert ctx.attended_pairs == model.cfg.backbone.layers * pairs


def test_attended_pairs_grow_linearly_in_history_with_fixed_anchors(model, window):
    frames, text, state = window
    n, k, tail, layers = model.cfg.tokens_per_frame, 2, text.shape[0] + 1, model.cfg.backbone.layers
    pairs = {}
    for t in (8, 16, 32):
        _, ctx, _ = build(model, {"num_anchors": k}, frames[:t], text, state)
        pairs[t] = ctx.attended_pairs
        # No query reads more than the K anchors and the tail at any layer.
        assert pairs[t] <= layers * (t * n + tail) * (k * n + tail)
        _, full_ctx, _ = build(model, None, frames[:t], text, state, name="full")
        assert full_ctx.attended_pairs == layers * (t * n + tail) * (t * n + tail + 1) // 2
    assert pairs[32] / pairs[8] < 4.5  # linear: 4x the frames; full's causal pairs grow ~14x here
    assert pairs[32] - pairs[16] < 1.1 * 2 * (pairs[16] - pairs[8])


def test_queries_anchors_is_frame_subsampling_a_plain_causal_forward_of_the_anchor_frames(model, window):
    frames, text, state = window
    t, n = 6, model.cfg.tokens_per_frame
    _, ctx, result = build(model, {"num_anchors": 3, "queries": "anchors", **EVERY_LAYER_GLOBAL},
                           frames[:t], text, state)
    anchors = result.extra["anchors"]
    embeds = torch.cat([frames[s].tokens for s in anchors] + [text, state])
    positions = torch.cat([s * n + torch.arange(n) for s in anchors] + [torch.arange(t * n, ctx.full_length)])
    plan = AttentionPlan(query_order=torch.arange(embeds.shape[0]))
    with torch.inference_mode():
        model.run_backbone(embeds, positions, plan)
    for layer, (keys, values) in plan.records.items():
        assert torch.equal(result.records[layer][0], keys) and torch.equal(result.records[layer][1], values)


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_complete_queries_leave_what_anchors_and_language_compute_unchanged(model, window, schedule):
    frames, text, state = window
    t, n = 6, model.cfg.tokens_per_frame
    params = {"num_anchors": 3, **SCHEDULES[schedule]}
    _, _, complete = build(model, params, frames[:t], text, state)
    _, _, subsampled = build(model, {**params, "queries": "anchors"}, frames[:t], text, state)
    anchors = complete.extra["anchors"]
    tail_rows = torch.arange(t * n, t * n + text.shape[0] + 1)
    rows = torch.cat([s * n + torch.arange(n) for s in anchors] + [tail_rows])
    for layer, (keys, values) in subsampled.records.items():
        torch.testing.assert_close(complete.records[layer][0][:, :, rows], keys, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(complete.records[layer][1][:, :, rows], values, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("value", ["some", "", 1, None])
def test_bad_queries_value_names_the_field_and_the_choices(model, value):
    with pytest.raises(ConfigError, match="queries .* choose one of: all, anchors"):
        build_runtime(model, "gotohunt", {"queries": value}, history=2)
