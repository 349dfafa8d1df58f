"""`dysta_gotohunt`: DySta's static cache with GoToHunt's anchors and layer schedule (tiny preset)."""

import numpy as np
import pytest
import torch

from dysta_ros.errors import ConfigError
from dysta_ros.evaluation.scenes import structured_frames
from dysta_ros.policy.runtime import build_model, build_runtime
from dysta_ros.tokens import build_strategy
from dysta_ros.tokens.base import Frame, StepContext
from dysta_ros.tokens.dysta import DystaStrategy
from dysta_ros.tokens.gotohunt import on_stride, select_anchors
from dysta_ros.types import Observation

INSTRUCTION = "push the red block"
# 4 + 4 static patches of the tiny preset's 16: each frame keeps 8 dynamic ones, on and off the stride grid.
SPLIT = {"l1_fraction": 0.25, "l2_fraction": 0.25, "num_anchors": 4}
UNSCHEDULED = {"local_layers": [], "strided_layers": []}


IMAGES = structured_frames(6, 72, 96, seed=1)


@pytest.fixture(scope="module")
def model():
    return build_model("tiny", seed=0)[0]


@pytest.fixture(scope="module")
def window(model):
    """Four different vision-encoded frames (slot 0 oldest), the instruction and state embeddings."""
    rt = build_runtime(model, "full", None, history=4)
    for image in IMAGES[:4]:
        rt.step(obs(image))
    return list(rt.frames), rt._text_embeds(INSTRUCTION), model.embed_state(torch.zeros(6))


def obs(image):
    return Observation(stamp=0.0, images={"main": image}, state=np.zeros(6), instruction=INSTRUCTION)


class AnchorsOnly(DystaStrategy):
    """dysta_gotohunt before its layer schedule: DySta over the anchor frames' dynamic tokens."""

    def frames_for_dynamic(self, ctx):
        return select_anchors(ctx, self.params)


@torch.inference_mode()
def build(model, strategy, params, frames, text, state):
    """Return (strategy, context, prefix) of one first step of `strategy` on the given window."""
    built = build_strategy(strategy, params, model.cfg)
    grid = model.cfg.vision.grid
    ctx = StepContext(model=model, frames=frames, text=text, state=state, grid=grid, cameras=1)
    return built, ctx, built.build_prefix(ctx)


def with_tokens(frame, patches, delta):
    """A copy of frame with delta added to the tokens of patches (features kept: same anchors and gate)."""
    tokens = frame.tokens.clone()
    tokens[patches] += delta
    return Frame(features=frame.features, tokens=tokens, index=frame.index)


def layer1_keys(result):
    """Keys (P+Q, D) of the last layer, head 0: what layer 0's attention fed each token."""
    return result.records[1][0][0, 0]


def changed_rows(a, b):
    """Indices of the rows of a and b that differ."""
    return (~torch.isclose(a, b, atol=1e-6, rtol=1e-6).all(dim=-1)).nonzero().flatten().tolist()


def test_every_layer_all_equals_anchors_only_dysta_gotohunt_exactly(model):
    params = {"num_anchors": 3, **UNSCHEDULED}
    scheduled = build_runtime(model, "dysta_gotohunt", params, history=6)
    reference = build_runtime(model, "dysta_gotohunt", params, history=6)
    reference.strategy = AnchorsOnly(reference.strategy.params, model.cfg)
    for image in IMAGES:
        (chunk, stats), (expected, expected_stats) = scheduled.step(obs(image)), reference.step(obs(image))
        assert np.array_equal(chunk.actions, expected.actions)
        assert stats.flops_ratio == expected_stats.flops_ratio
        assert stats.recached_l1 == expected_stats.recached_l1
    assert stats.frames_attended == 3


def test_local_layer_queries_read_only_their_own_frame_and_the_static_keys(model, window):
    frames, text, state = window
    for local, frame_sees_others in (([0], False), ([], True)):
        params = {**SPLIT, "local_layers": local, "strided_layers": []}
        strategy, _, base = build(model, "dysta_gotohunt", params, frames, text, state)
        dynamic = strategy.groups[2]
        nd, static = len(dynamic), len(strategy.groups[0]) + len(strategy.groups[1])
        moved = list(frames)
        moved[1] = with_tokens(frames[1], dynamic, 1.0)  # slot 1's dynamic tokens only
        _, _, other = build(model, "dysta_gotohunt", params, moved, text, state)
        changed = changed_rows(layer1_keys(base), layer1_keys(other))
        slot = [(row - static) // nd if static <= row < static + 4 * nd else "tail" for row in changed]
        assert 1 in slot and "tail" in slot  # its own tokens, and language/state (they read every frame)
        assert (2 in slot and 3 in slot) == frame_sees_others  # later frames' dynamic queries
        assert 0 not in slot and all(row >= static for row in changed)  # causal; the static prefix is cached
        # Static tokens (taken from the current frame) belong to every frame: all frames' queries read them.
        moved = list(frames)
        moved[3] = with_tokens(frames[3], torch.cat(strategy.groups[:2]), 1.0)
        _, _, other = build(model, "dysta_gotohunt", params, moved, text, state)
        changed = changed_rows(layer1_keys(base), layer1_keys(other))
        assert {(row - static) // nd for row in changed if static <= row < static + 4 * nd} == {0, 1, 2, 3}


def test_strided_layer_reads_static_and_dynamic_keys_on_the_stride_grid_only(model, window):
    frames, text, state = window
    params = {**SPLIT, "local_layers": [], "strided_layers": [0], "sigma": 2}
    strategy, _, base = build(model, "dysta_gotohunt", params, frames, text, state)
    l1, l2, dynamic = strategy.groups
    kept = on_stride(model.cfg.vision.grid, 1, 2)
    static_patches = torch.cat([l1, l2])
    static = len(static_patches)
    cases = {
        "dynamic off grid": (1, dynamic[~kept[dynamic]], False),
        "dynamic on grid": (1, dynamic[kept[dynamic]], True),
        # Static tokens come from the current frame (slot 3).
        "static off grid": (3, static_patches[~kept[static_patches]], False),
    }
    for name, (slot, patches, others_change) in cases.items():
        assert len(patches), name
        moved = list(frames)
        moved[slot] = with_tokens(frames[slot], patches, 1.0)
        _, _, other = build(model, "dysta_gotohunt", params, moved, text, state)
        changed = changed_rows(layer1_keys(base), layer1_keys(other))
        own = {static + slot * len(dynamic) + int((dynamic == p).nonzero()) for p in patches if p in dynamic}
        own |= {i for i in range(static) if static_patches[i] in patches}
        later_queries = [row for row in changed if row >= static and row not in own]
        assert bool(later_queries) == others_change, name
    # The static prefix itself is built with full causal attention: an off-grid static token moves
    # every static key after it, though the step's queries never read it in the strided layer.
    first = min(own)
    assert changed_rows(layer1_keys(base)[:static], layer1_keys(other)[:static]) == list(range(first, static))


def test_static_cache_is_dystas_own_and_the_schedule_cuts_attended_pairs(model, window):
    frames, text, state = window
    split = {"l1_fraction": 0.25, "l2_fraction": 0.25}
    dysta, dysta_ctx, _ = build(model, "dysta", split, frames, text, state)
    ours, ctx, _ = build(model, "dysta_gotohunt", SPLIT, frames, text, state)
    for (k_a, v_a), (k_b, v_b) in zip(dysta.static_kv, ours.static_kv):
        assert torch.equal(k_a, k_b) and torch.equal(v_a, v_b)
    assert ctx.computed_tokens == dysta_ctx.computed_tokens  # all 4 frames are anchors: the same tokens
    assert ctx.attended_pairs < dysta_ctx.attended_pairs
    assert ours.flops(ctx) < dysta.flops(dysta_ctx)
    _, unscheduled_ctx, _ = build(model, "dysta_gotohunt", {**SPLIT, **UNSCHEDULED}, frames, text, state)
    assert unscheduled_ctx.attended_pairs == dysta_ctx.attended_pairs


def test_cached_static_prefix_is_reused_under_the_schedule(model):
    params = {**SPLIT, "delta_l1": 10.0, "delta_l2": 10.0, "cache_language": True}
    rt = build_runtime(model, "dysta_gotohunt", params, history=4)
    rt.step(obs(IMAGES[0]))
    cached = rt.strategy.static_kv
    for image in IMAGES[1:4]:
        chunk, stats = rt.step(obs(image))
        assert not stats.recached_l1 and not stats.recached_l2 and rt.strategy.static_kv is cached
        assert stats.recomputed_tokens == stats.dynamic_tokens + 1  # dynamic tokens and the state
        assert np.isfinite(chunk.actions).all()


@pytest.mark.parametrize(
    "params, message",
    [
        ({"sigma": 0}, "sigma must be >= 1"),
        ({"local_layers": [0], "strided_layers": [0]}, "in both local_layers and strided_layers"),
        ({"strided_layers": [5]}, "outside the backbone's 0..1"),
        ({"num_anchors": -1}, "num_anchors"),
        ({"l1_fraction": 1.5}, "l1_fraction"),
        ({"stride": 2}, "allowed: .*sigma"),
        ({"queries": "frames"}, "queries .* choose one of: all, anchors"),
    ],
)
def test_bad_parameter_is_named(model, params, message):
    with pytest.raises(ConfigError, match=message):
        build_runtime(model, "dysta_gotohunt", params, history=2)


def test_complete_queries_compute_every_frame_and_read_only_static_and_anchor_keys(model):
    rt = build_runtime(model, "full", None, history=6)
    for image in IMAGES:
        rt.step(obs(image))
    frames, text, state = list(rt.frames), rt._text_embeds(INSTRUCTION), model.embed_state(torch.zeros(6))
    params = {**SPLIT, "num_anchors": 3, "queries": "all"}
    strategy, ctx, base = build(model, "dysta_gotohunt", params, frames, text, state)
    l1, l2, dynamic = strategy.groups
    static, nd, tail = len(l1) + len(l2), len(dynamic), text.shape[0] + 1
    anchors = base.extra["anchors"]
    assert len(anchors) == 3 and base.frames_attended == 3
    assert base.records[0][0].shape[2] == static + 6 * nd + tail  # every frame's dynamic records
    assert base.dynamic_tokens == 6 * nd and base.context_tokens == static + 3 * nd + tail
    # Moving a non-anchor frame's dynamic tokens moves only its own records (layer 0: local).
    slot = next(s for s in range(1, 6) if s not in anchors)
    moved = list(frames)
    moved[slot] = with_tokens(frames[slot], dynamic, 1.0)
    _, _, other = build(model, "dysta_gotohunt", params, moved, text, state)
    changed = changed_rows(layer1_keys(base), layer1_keys(other))
    own = set(range(static + slot * nd, static + (slot + 1) * nd))
    assert changed and set(changed) <= own
    # What the static prefix, the anchors and the tail compute is queries: anchors' computation.
    _, _, subsampled = build(model, "dysta_gotohunt", {**params, "queries": "anchors"}, frames, text, state)
    rows = [*range(static)] + [static + s * nd + i for s in anchors for i in range(nd)]
    rows += range(static + 6 * nd, static + 6 * nd + tail)
    for layer, (keys, values) in subsampled.records.items():
        torch.testing.assert_close(base.records[layer][0][:, :, rows], keys, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(base.records[layer][1][:, :, rows], values, atol=1e-5, rtol=1e-5)
